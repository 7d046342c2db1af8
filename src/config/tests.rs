//! The configuration's tests: whole files in, a [`Config`] or a one-line error out.

use super::*;

fn load(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml(text, &Overrides::default(), Path::new("."))
}

#[test]
fn defaults_mirror_docker_hub() {
    let c = load("").unwrap();
    assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
    assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
    assert_eq!(c.upstreams.len(), 1);
    assert_eq!(c.upstreams[0].name, "docker.io");
    assert_eq!(c.upstreams[0].url.as_str(), "https://registry-1.docker.io/");
    assert!(c.upstreams[0].name.is_docker_hub());
}

#[test]
fn full_example() {
    let c = load(
        r#"
listen = "0.0.0.0:5001"
data_dir = "/var/lib/regcache"
[[upstream]]
name = "docker.io"
url = "https://registry-1.docker.io"
username = "ci"
password = "s3cret"
"#,
    )
    .unwrap();
    assert_eq!(c.listen.port(), 5001);
    let creds = c.upstreams[0].credentials.clone().unwrap();
    assert_eq!(creds.username, "ci");
    assert!(!format!("{:?}", c).contains("s3cret"), "passwords never appear in Debug");
}

#[test]
fn unknown_key_names_key_and_line() {
    let err = load("listen = \"127.0.0.1:1\"\n\n[[upstream]]\nname = \"a\"\nurl = \"http://a\"\nbogus = 1\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("bogus"), "{err}");
    assert!(err.contains("line 6"), "{err}");
    assert!(!err.contains('\n'));
}

#[test]
fn rejects_bad_values() {
    let cases = [
        ("listen = \"nope\"", "listen address"),
        ("[[upstream]]\nname = \"x\"\nurl = \"not a url\"", "url"),
        ("[[upstream]]\nname = \"x\"\nurl = \"ftp://x\"", "http"),
        ("[[upstream]]\nname = \"x\"\nurl = \"https://x\"\nca_file = \"/nonexistent/ca.pem\"", "upstream x: cannot read ca_file /nonexistent/ca.pem"),
        ("[[upstream]]\nname = \"x\"\nurl = \"https://x\"\nca_file = \"/dev/null\"", "upstream x: ca_file /dev/null holds no PEM certificate"),
        ("[[upstream]]\nname = \"x\"\nurl = \"https://x\"\nusername = \"u\"", "together"),
        ("[[upstream]]\nname = \"x\"\nurl = \"https://x\"\n[[upstream]]\nname = \"x\"\nurl = \"https://y\"", "twice"),
        // An upstream's name is part of the shared bucket's record keys: a plain host name only.
        ("[[upstream]]\nname = \"my_registry\"\nurl = \"https://x\"", "must be a registry host"),
        ("[[upstream]]\nname = \"ghcr.io/org\"\nurl = \"https://x\"", "must be a registry host"),
        ("[[upstream]]\nname = \"evil\\u001bhost\"\nurl = \"https://x\"", "must be a registry host"),
        ("[[upstream]]\nname = \"\"\nurl = \"https://x\"", "must be a registry host"),
        ("[[upstream]]\nname = \"..\"\nurl = \"https://x\"", "must be a registry host"),
    ];
    for (text, want) in cases {
        let err = load(text).unwrap_err().to_string();
        assert!(err.contains(want), "{text:?}: {err}");
    }
}

#[test]
fn credentials_in_the_url_are_refused_without_repeating_them() {
    let cases = [
        "https://ci:hunter2pw@registry.example",
        "https://ci:hunter2pw@registry.example/",
        "https://:hunter2pw@registry.example",
        "https://ci@registry.example",
        "https://ci:hunter2pw@registry.example:99999",
        "https://ci:hunter2pw@registry.example/v2/",
    ];
    for url in cases {
        let err = load(&format!("[[upstream]]\nname = \"x\"\nurl = \"{url}\"")).unwrap_err().to_string();
        assert!(!err.contains("hunter2pw"), "{url}: the password is repeated: {err}");
        if !url.contains("99999") {
            assert!(err.contains("password_file") && err.contains("username"), "{url}: {err}");
        }
    }
    let over = Overrides { upstream_url: Some("https://ci:hunter2pw@registry.example".into()), ..Default::default() };
    let err = Config::from_toml("", &over, Path::new(".")).unwrap_err().to_string();
    assert!(err.contains("password_file") && !err.contains("hunter2pw"), "--upstream: {err}");
}

#[test]
fn redirect_hosts_are_hosts() {
    let c = load("[[upstream]]\nname = \"x\"\nurl = \"https://x\"\nredirect_hosts = [\"Minio.Corp\", \"10.0.0.7\", \"[FD00::5]\"]")
        .unwrap();
    assert_eq!(c.upstreams[0].redirect_hosts, ["minio.corp", "10.0.0.7", "[fd00::5]"]);
    assert_eq!(c.upstreams[0].private_network, None, "a file never decides it");
    assert!(c.describe().contains("redirect_hosts = minio.corp, 10.0.0.7, [fd00::5]"));
    for bad in ["https://minio.corp", "minio.corp:9000", "", "a b"] {
        let err = load(&format!("[[upstream]]\nname = \"x\"\nurl = \"https://x\"\nredirect_hosts = [\"{bad}\"]"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("redirect_hosts"), "{bad:?}: {err}");
    }
}

#[test]
fn access_and_admin() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("htpasswd"), "# users\nci:$2y$05$abcdefghijklmnopqrstuu5KhjzQ0hXm9yJm8eWbJ0mYlQwq7G3Wi\n").unwrap();
    let text = "admin_listen = \"127.0.0.1:9090\"\n[access]\nhtpasswd = \"htpasswd\"\nallow = [\"10.0.0.0/8\", \"127.0.0.1\"]\n";
    let c = Config::from_toml(text, &Overrides::default(), dir.path()).unwrap();
    assert_eq!(c.admin_listen.unwrap().port(), 9090);
    assert_eq!(c.access.users[0].0, "ci");
    assert_eq!(c.access.allow.len(), 2);
    assert!(!format!("{:?}", c.access).contains("$2y$"));
    std::fs::write(dir.path().join("htpasswd"), "ci:{SHA}plain\n").unwrap();
    let err = Config::from_toml(text, &Overrides::default(), dir.path()).unwrap_err().to_string();
    assert!(err.contains("line 1") && err.contains("bcrypt"), "{err}");
    let err = load("[access]\nallow = [\"10.0.0.0/33\"]").unwrap_err().to_string();
    assert!(err.contains("allow"), "{err}");
    let err = load("[tls]\ncert = \"/nonexistent/c.pem\"\nkey = \"/nonexistent/k.pem\"").unwrap_err().to_string();
    assert!(err.contains("tls cert"), "{err}");
}

#[test]
fn toml_and_duration_errors_are_typed_and_read_as_before() {
    let err = raw::parse_toml("listen = \"x\"\nbogus = 1\n").unwrap_err();
    assert_eq!(err.line, Some(2), "{err}");
    assert!(err.to_string().starts_with("line 2: unknown field `bogus`"), "{err}");
    assert_eq!(parse_duration(" 0 ").unwrap(), Duration::ZERO);
    assert_eq!(parse_duration("1h 30m").unwrap(), Duration::from_secs(5400));
    assert!(parse_duration("soon").is_err());
}

#[test]
fn connection_limits() {
    assert_eq!(load("").unwrap().connections, Connections::default());
    let c = load("header_timeout = \"5s\"\nkeepalive_timeout = \"1m\"\nclient_idle_timeout = \"90s\"\nmax_connections = 7")
        .unwrap()
        .connections;
    assert_eq!(
        c,
        Connections {
            header_timeout: Duration::from_secs(5),
            keepalive_timeout: Duration::from_secs(60),
            client_idle_timeout: Duration::from_secs(90),
            max_connections: 7
        }
    );
    let cases = [
        ("header_timeout = \"0s\"", "header_timeout"),
        ("keepalive_timeout = \"soon\"", "keepalive_timeout"),
        ("client_idle_timeout = \"0\"", "client_idle_timeout"),
        ("max_connections = 0", "max_connections"),
        ("max_connections = 1000001", "max_connections"),
        ("max_connections = -1", "line 1"),
        ("[access]\nmax_failures = 0", "max_failures"),
    ];
    for (text, want) in cases {
        let err = load(text).unwrap_err().to_string();
        assert!(err.contains(want), "{text:?}: {err}");
    }
    assert_eq!(load("").unwrap().access.max_failures, DEFAULT_MAX_FAILURES);
    assert_eq!(load("[access]\nmax_failures = 3").unwrap().access.max_failures, 3);
}

#[test]
fn sizes() {
    assert_eq!(load("").unwrap().max_size, None);
    assert_eq!(load("max_size = \"50GiB\"").unwrap().max_size, Some(50 << 30));
    assert_eq!(load("max_size = \"1 MB\"").unwrap().max_size, Some(1_000_000));
    assert!(load("max_size = \"lots\"").unwrap_err().to_string().contains("lots"));
}

#[test]
fn fill_budgets() {
    let d = load("").unwrap().fills;
    assert_eq!(d.min_free, 1 << 30);
    assert_eq!(d.max_temp, None, "without max_size only free space limits temporaries");
    assert_eq!(d.unread_max, Duration::from_secs(15 * 60));
    assert_eq!(d.unread_min_rate, 64 << 10);
    assert_eq!(d.rate_window, Duration::from_secs(30));
    assert_eq!(load("max_size = \"50GiB\"").unwrap().fills.max_temp, Some(50 << 30), "max_temp follows max_size");
    let ok = [
        ("[fills]\nmin_free = \"5%\"", None),
        ("[fills]\nmax_temp = \"2GiB\"", Some(FillBudget { max_temp: Some(2 << 30), ..d.clone() })),
        ("max_size = \"9GB\"\n[fills]\nmax_temp = \"1GB\"", Some(FillBudget { max_temp: Some(1_000_000_000), ..d.clone() })),
        (
            "[fills]\nmin_free = \"0\"\nunread_max = \"2s\"\nunread_min_rate = \"1KiB\"\nrate_window = \"200ms\"",
            Some(FillBudget {
                min_free: 0,
                unread_max: Duration::from_secs(2),
                unread_min_rate: 1024,
                rate_window: Duration::from_millis(200),
                ..d.clone()
            }),
        ),
    ];
    for (text, want) in ok {
        match want {
            Some(want) => assert_eq!(load(text).unwrap().fills, want, "{text:?}"),
            None => assert!(load(text).unwrap_err().to_string().contains("min_free"), "{text:?}"),
        }
    }
    let bad = [
        ("[fills]\nunread_max = \"0s\"", "unread_max"),
        ("[fills]\nrate_window = \"soon\"", "rate_window"),
        ("[fills]\nunread_min_rate = \"fast\"", "unread_min_rate"),
        ("[fills]\nbogus = 1", "bogus"),
    ];
    for (text, want) in bad {
        let err = load(text).unwrap_err().to_string();
        assert!(err.contains(want), "{text:?}: {err}");
    }
}

#[test]
fn freshness_durations() {
    let c = load("").unwrap();
    assert_eq!(c.upstreams[0].tag_ttl, Duration::ZERO);
    assert_eq!(c.upstreams[0].stale_max, Duration::from_secs(7 * 86400));
    let c = load("[[upstream]]\nname = \"x\"\nurl = \"https://x\"\ntag_ttl = \"5m\"\nstale_max = \"90s\"").unwrap();
    assert_eq!(c.upstreams[0].tag_ttl, Duration::from_secs(300));
    assert_eq!(c.upstreams[0].stale_max, Duration::from_secs(90));
    let err = load("[[upstream]]\nname = \"x\"\nurl = \"https://x\"\ntag_ttl = \"soon\"").unwrap_err().to_string();
    assert!(err.contains("tag_ttl"), "{err}");
}

#[test]
fn storage_defaults_to_local() {
    assert!(matches!(load("").unwrap().storage, Storage::Local));
    assert!(matches!(load("[storage]\nbackend = \"local\"").unwrap().storage, Storage::Local));
    assert!(load("").unwrap().describe().contains("storage = local"));
}

#[test]
fn storage_s3() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), "wJalrXUtnFEMIsecretK7MDENG\n").unwrap();
    let text = r#"
[storage]
backend = "s3"
endpoint = "http://127.0.0.1:8333"
region = "eu-west-3"
bucket = "regcache-blobs"
prefix = "/mirror/eu/"
path_style = true
access_key_id = "AKIDEXAMPLE"
secret_access_key_file = "secret"
bucket_max_size = "2TiB"
timeout = "10s"
"#;
    let c = Config::from_toml(text, &Overrides::default(), dir.path()).unwrap();
    let Some(BucketTier { backend: BucketBackend::S3(s3), max_size }) = c.storage.bucket() else { panic!("{:?}", c.storage) };
    assert_eq!(s3.endpoint.as_ref().unwrap().as_str(), "http://127.0.0.1:8333/");
    assert_eq!(s3.region, "eu-west-3");
    assert_eq!(s3.bucket, "regcache-blobs");
    assert_eq!(s3.prefix, "mirror/eu", "leading and trailing '/' are dropped");
    assert!(s3.path_style);
    let creds = s3.credentials.as_ref().unwrap();
    assert_eq!(creds.access_key_id, "AKIDEXAMPLE");
    assert_eq!(creds.secret_access_key, "wJalrXUtnFEMIsecretK7MDENG", "the file's newline is dropped");
    assert_eq!(*max_size, Some(2 << 40));
    assert_eq!(s3.timeout, Duration::from_secs(10));
    let shown = c.describe();
    assert!(shown.contains("bucket = regcache-blobs") && shown.contains("secret_access_key = ********"), "{shown}");
    assert!(!shown.contains("wJalrXUtnFEMIsecretK7MDENG"), "{shown}");
    assert!(!format!("{c:?}").contains("wJalrXUtnFEMIsecretK7MDENG"));

    let c = load("[storage]\nbackend = \"s3\"\nbucket = \"b12\"").unwrap();
    let Some(BucketTier { backend: BucketBackend::S3(s3), max_size }) = c.storage.bucket() else { panic!("{:?}", c.storage) };
    assert_eq!((s3.endpoint.as_ref(), s3.region.as_str(), s3.prefix.as_str()), (None, DEFAULT_S3_REGION, ""));
    assert!(!s3.path_style);
    assert_eq!(s3.credentials, None);
    assert_eq!((*max_size, s3.timeout), (None, DEFAULT_S3_TIMEOUT));
    assert!(c.describe().contains("AWS_ACCESS_KEY_ID"), "{}", c.describe());
}

#[test]
fn storage_rejects_bad_values() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), "s3cretvalue\n").unwrap();
    std::fs::write(dir.path().join("empty"), "\n").unwrap();
    std::fs::write(dir.path().join("notpem"), "hello").unwrap();
    let s3 = "[storage]\nbackend = \"s3\"\nbucket = \"bkt\"\n";
    let cases = [
        ("[storage]\nbackend = \"gcs\"".to_owned(), "unknown variant `gcs`, expected `local` or `s3`"),
        ("[storage]\nbucket = \"bkt\"".to_owned(), "bucket is for backend = \"s3\""),
        ("[storage]\nbackend = \"local\"\nendpoint = \"http://x\"".to_owned(), "endpoint is for backend"),
        ("[storage]\nbackend = \"s3\"".to_owned(), "needs bucket"),
        ("[storage]\nbackend = \"s3\"\nbucket = \"Bad_Name\"".to_owned(), "bucket \"Bad_Name\""),
        ("[storage]\nbackend = \"s3\"\nbucket = \"ab\"".to_owned(), "bucket \"ab\""),
        (format!("{s3}bogus = 1"), "bogus"),
        (format!("{s3}endpoint = \"ftp://x\""), "http:// or https://"),
        (format!("{s3}endpoint = \"not a url\""), "endpoint"),
        (format!("{s3}endpoint = \"http://x/some/path\""), "path"),
        (format!("{s3}endpoint = \"http://ak:hunter2pw@x\""), "secret_access_key_file"),
        (format!("{s3}region = \"eu west\""), "region"),
        (format!("{s3}prefix = \"a//b\""), "prefix"),
        (format!("{s3}prefix = \"a/../b\""), "prefix"),
        (format!("{s3}prefix = \"a b\""), "prefix"),
        (format!("{s3}access_key_id = \"AK\""), "go together"),
        (format!("{s3}secret_access_key_file = \"secret\""), "go together"),
        (format!("{s3}access_key_id = \"AK\"\nsecret_access_key_file = \"missing\""), "cannot read secret_access_key_file"),
        (format!("{s3}access_key_id = \"AK\"\nsecret_access_key_file = \"empty\""), "is empty"),
        (format!("{s3}ca_file = \"notpem\""), "holds no PEM certificate"),
        (format!("{s3}ca_file = \"missing.pem\""), "cannot read ca_file"),
        (format!("{s3}bucket_max_size = \"lots\""), "bucket_max_size"),
        (format!("{s3}timeout = \"0s\""), "longer than zero"),
        (format!("{s3}timeout = \"soon\""), "timeout"),
        (format!("{s3}path_style = \"yes\""), "line 4: invalid type"),
    ];
    for (text, want) in cases {
        let err = Config::from_toml(&text, &Overrides::default(), dir.path()).unwrap_err().to_string();
        assert!(err.contains(want), "{text:?}: {err}");
        assert!(!err.contains('\n') && !err.contains("hunter2pw") && !err.contains("s3cretvalue"), "{text:?}: {err}");
    }
}

#[test]
fn overrides_win() {
    let over = Overrides {
        listen: Some("127.0.0.1:6000".into()),
        data_dir: Some("/tmp/x".into()),
        upstream_url: Some("http://127.0.0.1:9".into()),
    };
    let c = Config::from_toml("", &over, Path::new(".")).unwrap();
    assert_eq!(c.listen.port(), 6000);
    assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
    assert_eq!(c.upstreams[0].url.as_str(), "http://127.0.0.1:9/");
    assert_eq!(c.upstreams[0].name, "docker.io");
}

#[test]
fn upstream_timeouts_in_seconds_or_durations() {
    let c = load("").unwrap();
    let u = &c.upstreams[0];
    assert_eq!((u.connect_timeout, u.response_timeout, u.idle_timeout), (Duration::from_secs(10), Duration::from_secs(30), Duration::from_secs(60)));
    let c = load("[[upstream]]\nname = \"x\"\nurl = \"https://x\"\nconnect_timeout = 3\nresponse_timeout = \"45s\"\nidle_timeout = \"2m\"").unwrap();
    let u = &c.upstreams[0];
    assert_eq!((u.connect_timeout, u.response_timeout, u.idle_timeout), (Duration::from_secs(3), Duration::from_secs(45), Duration::from_secs(120)));
    let err = load("[[upstream]]\nname = \"x\"\nurl = \"https://x\"\nconnect_timeout = -1").unwrap_err().to_string();
    assert!(err.contains("line 4") && err.contains("connect_timeout"), "{err}");
}

#[test]
fn the_shipped_examples_are_accepted() {
    for file in ["regcache.toml", "regcache-s3-aws.toml", "regcache-s3-path-style.toml"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy").join(file);
        let c = Config::load(Some(&path), &Overrides::default()).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(c.upstreams.len(), 4, "{file}");
        assert_eq!(c.storage.bucket().is_some(), file.contains("s3"), "{file}");
    }
}

#[test]
fn a_fleet_table() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("fleet.secret"), "s3cret\n").unwrap();
    let text = "listen = \"0.0.0.0:5000\"\n[fleet]\nnode = \"http://10.0.0.1:5000\"\npeers = [\"http://10.0.0.1:5000\", \"http://10.0.0.2:5000\"]\nsecret_file = \"fleet.secret\"\n";
    let c = Config::from_toml(text, &Overrides::default(), dir.path()).unwrap();
    let fleet = c.fleet.as_ref().expect("a fleet");
    assert_eq!(fleet.node.as_str(), "http://10.0.0.1:5000");
    let described = c.describe();
    assert!(described.contains("[fleet]") && !described.contains("s3cret"), "{described}");
    assert!(load("").unwrap().fleet.is_none());
    let err = Config::from_toml("[fleet]\npeers_dns = \"x:5000\"\n", &Overrides::default(), dir.path()).unwrap_err();
    assert!(err.to_string().starts_with("fleet: secret_file is required"), "{err}");
}

#[test]
fn log_format_is_text_or_json() {
    let cases: &[(&str, Result<LogFormat, &str>)] = &[
        ("", Ok(LogFormat::Text)),
        ("log_format = \"text\"", Ok(LogFormat::Text)),
        ("log_format = \"json\"", Ok(LogFormat::Json)),
        ("log_format = \"JSON\"", Err("expected `text` or `json` (in log_format)")),
        ("log_format = 1", Err("line 1")),
    ];
    for (text, want) in cases {
        match (load(text), want) {
            (Ok(c), Ok(format)) => {
                assert_eq!(c.log_format, *format, "{text}");
                assert!(c.describe().contains(&format!("log_format = {}\n", format.as_str())), "{}", c.describe());
            }
            (Err(e), Err(needle)) => assert!(e.to_string().contains(needle), "{text}: {e}"),
            (got, want) => panic!("{text}: {got:?}, want {want:?}"),
        }
    }
}
