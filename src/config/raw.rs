//! The TOML file as written: serde types that refuse unknown keys, and the one-line error of a
//! file that doesn't fit them (its line, and the key when serde's message doesn't name it).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::storage::{RawStorage, BACKENDS};
use super::units::{HumanDuration, HumanSize};

/// The file: its top-level keys and tables, with `[storage]` read by its backend
/// ([`RawStorage`], in `storage.rs` with the other backends' types).
#[derive(Debug, Default)]
pub(super) struct RawFile {
    /// Everything but `[storage]`.
    pub config: RawConfig,
    /// `[storage]`.
    pub storage: RawStorage,
}

/// The top-level keys and tables.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub max_size: Option<HumanSize>,
    pub admin_listen: Option<String>,
    pub header_timeout: Option<HumanDuration>,
    pub keepalive_timeout: Option<HumanDuration>,
    pub client_idle_timeout: Option<HumanDuration>,
    pub max_connections: Option<usize>,
    pub log_format: Option<super::LogFormat>,
    pub tls: Option<RawTls>,
    pub access: Option<RawAccess>,
    pub fills: Option<RawFills>,
    /// Read into [`RawStorage`] by [`read_storage`], which knows the backend first.
    storage: Option<toml::Table>,
    #[serde(default)]
    pub upstream: Vec<RawUpstream>,
}

/// `[fills]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFills {
    pub min_free: Option<HumanSize>,
    pub max_temp: Option<HumanSize>,
    pub unread_max: Option<HumanDuration>,
    pub unread_min_rate: Option<HumanSize>,
    pub rate_window: Option<HumanDuration>,
}

/// `[tls]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `[access]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAccess {
    pub htpasswd: Option<PathBuf>,
    #[serde(default)]
    pub allow: Vec<String>,
    pub max_failures: Option<u32>,
}

/// One `[[upstream]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    pub name: String,
    pub url: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub password_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub auth_hosts: Vec<String>,
    #[serde(default)]
    pub redirect_hosts: Vec<String>,
    pub connect_timeout: Option<HumanDuration>,
    pub response_timeout: Option<HumanDuration>,
    pub idle_timeout: Option<HumanDuration>,
    pub tag_ttl: Option<HumanDuration>,
    pub stale_max: Option<HumanDuration>,
}

/// A file that isn't the TOML regcache reads: serde's message on one line, with its line number
/// when known, and the key it is about when the message doesn't name it.
#[derive(Debug, thiserror::Error)]
#[error(
    "{}{message}{}",
    .line.map(|n| format!("line {n}: ")).unwrap_or_default(),
    .key.as_ref().map(|k| format!(" (in {k})")).unwrap_or_default()
)]
pub(super) struct TomlError {
    /// The line (from 1).
    pub line: Option<usize>,
    /// The key, if the message doesn't name it.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl TomlError {
    fn new(line: Option<usize>, key: Option<String>, message: &str) -> TomlError {
        let key = key.filter(|k| !message.contains(&format!("`{k}`")));
        TomlError { line, key, message: message.replace('\n', " ") }
    }
}

/// Parse the file.
pub(super) fn parse_toml(text: &str) -> Result<RawFile, TomlError> {
    let mut config: RawConfig = toml::from_str(text).map_err(|e| {
        let key = e.span().and_then(|s| key_before(text, s.start));
        TomlError::new(e.span().map(|s| line_of(text, s.start)), key, e.message())
    })?;
    let storage = match config.storage.take() {
        Some(table) => read_storage(table, text)?,
        None => RawStorage::default(),
    };
    Ok(RawFile { config, storage })
}

/// Read `[storage]`, `backend = "local"` when the table doesn't say. serde reads an internally
/// tagged enum from a copy of the table, which has no positions: a failure is placed here, on the
/// first key that fails on its own (named with the backend that takes it, if another one does).
fn read_storage(mut table: toml::Table, text: &str) -> Result<RawStorage, TomlError> {
    let backend = table.entry("backend").or_insert_with(|| "local".into()).clone();
    let whole = match RawStorage::deserialize(toml::Value::Table(table.clone())) {
        Ok(storage) => return Ok(storage),
        Err(e) => e,
    };
    let alone = |backend: &toml::Value, key: &str, value: &toml::Value| {
        let single = toml::Table::from_iter([("backend".to_owned(), backend.clone()), (key.to_owned(), value.clone())]);
        RawStorage::deserialize(toml::Value::Table(single))
    };
    let culprit = table
        .iter()
        .filter(|(key, _)| *key != "backend")
        .find_map(|(key, value)| alone(&backend, key, value).err().map(|e| (key, value, e)));
    let Some((key, value, error)) = culprit else {
        return Err(TomlError::new(storage_line(text, "backend"), Some("backend".into()), whole.message()));
    };
    let line = storage_line(text, key);
    match BACKENDS.iter().find(|b| alone(&toml::Value::from(**b), key, value).is_ok()) {
        Some(b) => Err(TomlError::new(line, None, &format!("storage: {key} is for backend = {b:?}; backend is {backend}"))),
        None => Err(TomlError::new(line, Some(key.clone()), error.message())),
    }
}

/// The line of `key` in `[storage]`, from a second reading of the file that keeps positions.
fn storage_line(text: &str, key: &str) -> Option<usize> {
    #[derive(Deserialize)]
    struct Positions {
        #[serde(default)]
        storage: BTreeMap<String, toml::Spanned<serde::de::IgnoredAny>>,
    }
    let positions: Positions = toml::from_str(text).ok()?;
    positions.storage.get(key).map(|v| line_of(text, v.span().start))
}

/// The line (from 1) of byte `at`.
fn line_of(text: &str, at: usize) -> usize {
    text.as_bytes()[..at.min(text.len())].iter().filter(|b| **b == b'\n').count() + 1
}

/// The key of the value that starts at byte `at`: what stands before the `=` in front of it.
fn key_before(text: &str, at: usize) -> Option<String> {
    let before = text.get(..at)?;
    let line = &before[before.rfind('\n').map_or(0, |i| i + 1)..];
    let assigned = line.trim_end().strip_suffix('=')?;
    let key = assigned.rsplit([',', '{']).next()?.trim();
    (!key.is_empty()).then(|| key.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_placed_on_their_line_and_key() {
        let cases = [
            ("listen = \"x\"\nbogus = 1\n", "line 2: unknown field `bogus`"),
            ("keepalive_timeout = \"soon\"", "line 1: invalid duration \"soon\""),
            ("keepalive_timeout = \"soon\"", "(in keepalive_timeout)"),
            ("[fills]\nmin_free = \"5%\"", "(in min_free)"),
            ("listen = \"127.0.0.1:1\"\nfills = { max_temp = \"1GB\", min_free = \"lots\" }", "line 2: invalid value: string \"lots\""),
            ("listen = \"127.0.0.1:1\"\nfills = { max_temp = \"1GB\", min_free = \"lots\" }", "(in min_free)"),
            ("[storage]\nbackend = \"s3\"\nbucket = \"b\"\npath_style = \"yes\"", "line 4: invalid type"),
            ("[storage]\nbackend = \"s3\"\nbucket = \"b\"\npath_style = \"yes\"", "(in path_style)"),
            ("[storage]\nbackend = \"s3\"\n\nbogus = 1", "line 4: unknown field `bogus`"),
            ("[storage]\nbackend = \"local\"\nendpoint = \"http://x\"", "line 3: storage: endpoint is for backend = \"s3\"; backend is \"local\""),
            ("[storage]\nbucket = \"bkt\"", "line 2: storage: bucket is for backend = \"s3\"; backend is \"local\""),
            ("storage = { bucket = \"bkt\" }", "line 1: storage: bucket is for backend"),
            ("[storage]\nbackend = \"gcs\"", "line 2: unknown variant `gcs`, expected `local` or `s3`"),
            ("[storage]\nbackend = \"s3\"\ntimeout = \"soon\"", "line 3: invalid duration \"soon\""),
        ];
        for (text, want) in cases {
            let err = parse_toml(text).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
            assert!(!err.contains('\n'), "{text:?}: {err}");
        }
    }

    #[test]
    fn storage_defaults_to_local() {
        assert!(matches!(parse_toml("").unwrap().storage, RawStorage::Local {}));
        assert!(matches!(parse_toml("[storage]").unwrap().storage, RawStorage::Local {}));
        assert!(matches!(parse_toml("[storage]\nbackend = \"s3\"").unwrap().storage, RawStorage::S3(_)));
    }
}
