//! The operator's files: the configuration (TOML) and the htpasswd file it names.

use std::path::Path;
use std::time::Duration;

use proptest::prelude::*;
use regcache::config::{Config, Overrides};

use super::{config, oracle};

/// `text` resolved from a directory that doesn't exist.
fn resolve(text: &str) -> Result<Config, String> {
    Config::from_toml(text, &Overrides::default(), Path::new("/nonexistent/regcache-properties")).map_err(|e| e.to_string())
}

/// Lines near a configuration: its keys and tables, with values of every type.
fn near_config() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("listen"),
        Just("data_dir"),
        Just("max_size"),
        Just("admin_listen"),
        Just("header_timeout"),
        Just("max_connections"),
        Just("log_format"),
        Just("min_free"),
        Just("unread_max"),
        Just("backend"),
        Just("bucket"),
        Just("bucket_max_size"),
        Just("name"),
        Just("url"),
        Just("username"),
        Just("password"),
        Just("tag_ttl"),
        Just("allow"),
        Just("max_failures"),
        Just("htpasswd"),
        Just("\"a\\nb\""),
    ];
    let value = prop_oneof![
        Just("\"127.0.0.1:5000\"".to_owned()),
        Just("\"https://ghcr.io\"".to_owned()),
        Just("\"s3\"".to_owned()),
        Just("\"local\"".to_owned()),
        Just("\"json\"".to_owned()),
        Just("[\"10.0.0.0/8\"]".to_owned()),
        Just("true".to_owned()),
        any::<i64>().prop_map(|n| n.to_string()),
        "\"[0-9]{1,20} ?(B|KB|KiB|MiB|GiB|TiB|PiB|EiB|s|m|h|d|ms|ns|y)?\"",
        "\"[ -~]{0,10}\"",
    ];
    let line = prop_oneof![
        4 => (key, value).prop_map(|(k, v)| format!("{k} = {v}")),
        1 => prop_oneof![Just("[fills]"), Just("[storage]"), Just("[access]"), Just("[[upstream]]"), Just("[tls]"), Just("[x]")]
            .prop_map(String::from),
    ];
    prop::collection::vec(line, 0..10).prop_map(|l| l.join("\n"))
}

/// A size and what it means in bytes.
fn size() -> impl Strategy<Value = (String, u64)> {
    let unit = prop_oneof![
        Just(("", 1u64)),
        Just(("B", 1)),
        Just((" B", 1)),
        Just(("KiB", 1 << 10)),
        Just(("MiB", 1 << 20)),
        Just(("GiB", 1 << 30)),
        Just(("TiB", 1 << 40)),
        Just(("KB", 1000)),
        Just(("MB", 1_000_000)),
        Just(("GB", 1_000_000_000)),
    ];
    // Small enough that every product is exact in the f64 a unit is applied in.
    (0..1u64 << 12, unit).prop_map(|(n, (u, m))| (format!("\"{n}{u}\""), n * m))
}

/// A duration and what it means.
fn duration() -> impl Strategy<Value = (String, Duration)> {
    let unit = prop_oneof![Just(("", 1u64)), Just(("s", 1)), Just(("m", 60)), Just(("h", 3600)), Just(("d", 86400))];
    // Whole seconds are an integer; a string has a unit.
    (1..100_000u64, unit).prop_map(|(n, (u, secs))| {
        let text = if u.is_empty() { n.to_string() } else { format!("\"{n}{u}\"") };
        (text, Duration::from_secs(n * secs))
    })
}

proptest! {
    #![proptest_config(config(256, "tests/properties/regressions/config.txt"))]

    #[test]
    fn any_text_is_a_configuration_or_one_line(text in any::<String>()) {
        oracle::config(&text);
    }

    #[test]
    fn near_configurations_are_a_configuration_or_one_line(text in near_config()) {
        oracle::config(&text);
    }

    #[test]
    fn sizes_and_durations_mean_what_they_say((size_text, bytes) in size(), (timeout_text, timeout) in duration()) {
        let text = format!("max_size = {}\nheader_timeout = {}\n[fills]\nmin_free = {}\n", size_text, timeout_text, size_text);
        oracle::config(&text);
        let c = resolve(&text).map_err(TestCaseError::fail)?;
        prop_assert_eq!(c.max_size, Some(bytes));
        prop_assert_eq!(c.fills.min_free, bytes);
        prop_assert_eq!(c.connections.header_timeout, timeout);
    }

    #[test]
    fn a_password_is_never_described(user in "[a-z]{1,8}", password in "[A-Za-z0-9]{16}") {
        let text = format!("[[upstream]]\nname = \"ghcr.io\"\nurl = \"https://ghcr.io\"\nusername = \"{}\"\npassword = \"{}\"\n", user, password);
        oracle::config(&text);
        let c = resolve(&text).map_err(TestCaseError::fail)?;
        prop_assert!(c.upstreams[0].credentials.is_some());
        prop_assert!(!c.describe().contains(&password));
    }

    #[test]
    fn a_file_that_cant_be_read_is_refused_in_one_line(path in "[a-z]{1,4}[\n\r\t ][a-z]{0,4}", which in 0..5usize) {
        let upstream = "[[upstream]]\nname = \"ghcr.io\"\nurl = \"https://ghcr.io\"\n";
        let text = match which {
            0 => format!("[access]\nhtpasswd = {:?}\n", path),
            1 => format!("[tls]\ncert = {:?}\nkey = \"k\"\n", path),
            2 => format!("{}username = \"u\"\npassword_file = {:?}\n", upstream, path),
            3 => format!("{}ca_file = {:?}\n", upstream, path),
            _ => format!("[storage]\nbackend = \"s3\"\nendpoint = \"http://127.0.0.1:1\"\nbucket = \"b\"\naccess_key_id = \"a\"\nsecret_access_key_file = {:?}\n", path),
        };
        oracle::config(&text);
        prop_assert!(resolve(&text).is_err());
    }

    #[test]
    fn any_htpasswd_text_is_read_as_written(text in any::<String>()) {
        oracle::htpasswd(&text);
    }

    #[test]
    fn htpasswd_files_are_read_as_written(
        lines in prop::collection::vec(prop_oneof![
            4 => ("[a-zA-Z0-9._@-]{1,12}", "\\$2[aby]\\$[0-9]{2}\\$[./A-Za-z0-9]{53}", "[ \t]{0,2}").prop_map(|(u, h, pad)| format!("{pad}{u}:{h}{pad}")),
            1 => Just(String::new()),
            1 => "#[ -~]{0,20}",
            1 => "[ -~]{0,30}",
        ], 0..8),
        crlf in any::<bool>(),
    ) {
        let text = lines.join(if crlf { "\r\n" } else { "\n" });
        oracle::htpasswd(&text);
    }
}


/// Found by the property tests: a file path with a line break (`htpasswd = "a\r"`, a TLS
/// certificate, a password or CA file) made the error that start-up prints more than one line.
#[test]
fn a_path_with_a_line_break_is_refused_in_one_line() {
    for text in ["[access]\nhtpasswd = \"a\\r\"\n", "[tls]\ncert = \"a\\nb\"\nkey = \"k\"\n"] {
        let err = resolve(text).unwrap_err();
        assert!(!err.contains(['\n', '\r']), "{err:?}");
        oracle::config(text);
    }
}
