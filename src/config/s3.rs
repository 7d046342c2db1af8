//! `[storage] backend = "s3"`: an S3-compatible bucket, as written and as resolved.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use super::units::{HumanDuration, HumanSize};
use super::{mask_userinfo, read_pem_roots};

/// The keys of `[storage]` with `backend = "s3"`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawS3 {
    endpoint: Option<String>,
    region: Option<String>,
    bucket: Option<String>,
    prefix: Option<String>,
    path_style: Option<bool>,
    access_key_id: Option<String>,
    secret_access_key_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    timeout: Option<HumanDuration>,
    /// The bucket tier's limit, written beside the bucket's keys (resolved into
    /// [`super::BucketTier::max_size`], not into [`S3Storage`]).
    pub bucket_max_size: Option<HumanSize>,
}

/// An S3-compatible bucket: what its client needs.
#[derive(Clone)]
pub struct S3Storage {
    /// The service's URL; `None`: AWS's own endpoint for `region`.
    pub endpoint: Option<Url>,
    /// The region requests are signed for.
    pub region: String,
    /// The bucket's name.
    pub bucket: String,
    /// The key prefix everything is kept under, without leading or trailing `/`; may be empty.
    pub prefix: String,
    /// Whether the bucket is named in the path (`endpoint/bucket/key`: MinIO, SeaweedFS, Garage)
    /// rather than in the host name (`bucket.endpoint/key`: AWS).
    pub path_style: bool,
    /// The access key; `None`: the standard AWS environment variables.
    pub credentials: Option<S3Credentials>,
    /// Extra PEM trust roots, already read.
    pub ca_pem: Option<Vec<u8>>,
    /// The longest a bucket request may take to connect, or go without any progress.
    pub timeout: Duration,
}

/// `[storage] region` when not set.
pub const DEFAULT_S3_REGION: &str = "us-east-1";
/// `[storage] timeout` when not set.
pub const DEFAULT_S3_TIMEOUT: Duration = Duration::from_secs(30);

/// An S3 access key. `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Credentials {
    /// The access key id.
    pub access_key_id: String,
    /// The secret access key, read from `secret_access_key_file`.
    pub secret_access_key: String,
}

impl fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "S3Credentials({}, ***)", self.access_key_id)
    }
}

impl fmt::Debug for S3Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Storage")
            .field("endpoint", &self.endpoint.as_ref().map(Url::as_str))
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("path_style", &self.path_style)
            .field("credentials", &self.credentials)
            .field("ca_file", &self.ca_pem.is_some())
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl S3Storage {
    /// Resolve `raw`; files are read relative to `base`. Messages say what is wrong without
    /// repeating a secret.
    pub(super) fn resolve(raw: RawS3, base: &Path) -> Result<S3Storage, String> {
        let endpoint = raw.endpoint.as_deref().map(s3_endpoint).transpose()?;
        let region = raw.region.unwrap_or_else(|| DEFAULT_S3_REGION.to_owned());
        if region.is_empty() || !region.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(format!("region {region:?}: letters, digits and '-' only"));
        }
        let bucket = raw.bucket.ok_or("backend = \"s3\" needs bucket")?;
        if !is_bucket_name(&bucket) {
            return Err(format!(
                "bucket {bucket:?}: 3 to 63 lowercase letters, digits, '.' and '-', starting and ending with a letter or digit"
            ));
        }
        let timeout = match raw.timeout {
            None => DEFAULT_S3_TIMEOUT,
            Some(HumanDuration(d)) if d.is_zero() => return Err("timeout must be longer than zero".into()),
            Some(HumanDuration(d)) => d,
        };
        Ok(S3Storage {
            endpoint,
            region,
            bucket,
            prefix: s3_prefix(raw.prefix.as_deref().unwrap_or(""))?,
            path_style: raw.path_style.unwrap_or(false),
            credentials: s3_credentials(raw.access_key_id, raw.secret_access_key_file, base)?,
            ca_pem: raw.ca_file.map(|f| read_pem_roots(&base.join(f))).transpose()?,
            timeout,
        })
    }

    /// Its effective settings, one per line, the secret masked.
    pub(super) fn describe(&self) -> String {
        let mut s = String::from("[storage] backend = s3 (data_dir is the hot tier)\n");
        match &self.endpoint {
            Some(e) => s.push_str(&format!("  endpoint = {e}\n")),
            None => s.push_str("  endpoint = AWS (by region)\n"),
        }
        s.push_str(&format!("  region = {}\n  bucket = {}\n", self.region, self.bucket));
        if self.prefix.is_empty() {
            s.push_str("  prefix = none\n");
        } else {
            s.push_str(&format!("  prefix = {}\n", self.prefix));
        }
        s.push_str(&format!("  path_style = {}\n", self.path_style));
        match &self.credentials {
            Some(c) => s.push_str(&format!(
                "  access_key_id = {}\n  secret_access_key = ******** (from secret_access_key_file)\n",
                c.access_key_id
            )),
            None => s.push_str("  credentials = from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN\n"),
        }
        s.push_str(&format!("  ca_file = {}\n", if self.ca_pem.is_some() { "loaded" } else { "system roots only" }));
        s.push_str(&format!("  timeout = {}\n", humantime::format_duration(self.timeout)));
        s
    }
}

/// An access key: `access_key_id` with the secret in `secret_access_key_file` (relative to
/// `base`), or neither.
fn s3_credentials(id: Option<String>, file: Option<PathBuf>, base: &Path) -> Result<Option<S3Credentials>, String> {
    let (access_key_id, file) = match (id, file) {
        (Some(id), Some(file)) => (id, file),
        (None, None) => return Ok(None),
        _ => return Err("access_key_id and secret_access_key_file go together".into()),
    };
    let path = base.join(file);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read secret_access_key_file {}: {e}", path.display()))?;
    let secret_access_key = text.trim().to_owned();
    if secret_access_key.is_empty() {
        return Err(format!("secret_access_key_file {} is empty", path.display()));
    }
    if access_key_id.is_empty() {
        return Err("access_key_id is empty".into());
    }
    Ok(Some(S3Credentials { access_key_id, secret_access_key }))
}

/// An S3 endpoint: `http://` or `https://` with a host, and nothing after the authority but `/`.
fn s3_endpoint(raw: &str) -> Result<Url, String> {
    let shown = mask_userinfo(raw);
    let url = Url::parse(raw).map_err(|e| format!("endpoint {shown:?}: {e}"))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "endpoint {shown:?} must not hold credentials: use access_key_id and secret_access_key_file"
        ));
    }
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!("endpoint {shown:?} must be http:// or https:// with a host"));
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(format!("endpoint {shown:?} must not have a path or query"));
    }
    Ok(url)
}

/// An S3 bucket name: 3–63 of `a-z 0-9 . -`, starting and ending with a letter or digit.
fn is_bucket_name(name: &str) -> bool {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    (3..=63).contains(&name.len())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
        && edge(name.chars().next())
        && edge(name.chars().last())
}

/// A key prefix without leading or trailing `/`: segments of letters, digits and `-_.`, none of
/// them empty, `.` or `..`.
fn s3_prefix(raw: &str) -> Result<String, String> {
    let prefix = raw.trim_matches('/');
    if prefix.is_empty() {
        return Ok(String::new());
    }
    let segment_ok = |seg: &str| {
        !seg.is_empty()
            && seg != "."
            && seg != ".."
            && seg.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    if !prefix.split('/').all(segment_ok) {
        return Err(format!(
            "prefix {raw:?}: '/'-separated segments of letters, digits, '-', '_' and '.' (no empty, '.' or '..' segment)"
        ));
    }
    Ok(prefix.to_owned())
}

