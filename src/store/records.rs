//! The shared tier's records (everything the bucket holds besides blobs) and their one typed key,
//! [`RecordKey`]: written with [`Display`], read
//! back (from a listing, where any node, or anyone with the bucket's keys, may have written) with
//! [`FromStr`], which accepts only what regcache writes. Names and tags are validated (no `..`, no
//! empty parts), upstreams are plain host names and node ids are short lowercase words, so a key
//! is never a path outside its folder, and what `ls` prints of one is never a terminal escape.
//!
//! [`Display`]: fmt::Display

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;

use super::index::StoredManifest;
use crate::oci::{Digest, ManifestKind, RegistryHost, Tag, UpstreamRepo};

/// The largest manifest record: the largest manifest regcache keeps, after its media type and a NUL.
pub const MAX_MANIFEST_RECORD: usize = crate::upstream::MAX_MANIFEST + 256;
/// The largest tag record read.
pub const MAX_TAG_RECORD: usize = 4096;

/// A record's key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RecordKey {
    /// A manifest, by digest: `manifests/<algorithm>/<hex>`.
    Manifest(Digest),
    /// What a tag pointed at for clients asking for one kind of answer:
    /// `tags/<upstream>/<repository>/<tag>/<kind>`.
    Tag {
        /// The repository, on its upstream.
        repo: UpstreamRepo,
        /// The tag.
        tag: Tag,
        /// The kind of answer.
        kind: ManifestKind,
    },
    /// The last referrers list of a manifest: `referrers/<upstream>/<repository>/<algorithm>/<hex>`.
    Referrers {
        /// The repository, on its upstream.
        repo: UpstreamRepo,
        /// The manifest whose referrers they are.
        subject: Digest,
    },
    /// The last tag list of a repository: `taglists/<upstream>/<repository>/_list`. It ends in
    /// `_list`, which can't be a repository's component: no repository's key is a folder of
    /// another's (a directory bucket could not hold both `…/org/app` and `…/org/app/sub/…`).
    TagList {
        /// The repository, on its upstream.
        repo: UpstreamRepo,
    },
    /// A node's heartbeat (bucket eviction): `nodes/<node>`.
    Node(String),
    /// One of a node's access summaries (bucket eviction): `access/<node>/<name>`.
    Access {
        /// The node that wrote it.
        node: String,
        /// Its name: when it was written, and its place among the summaries written then.
        name: String,
    },
}

/// The folder of each kind of record, as [`RecordKey`] writes them: what a listing asks for.
pub mod folder {
    /// Manifests.
    pub const MANIFESTS: &str = "manifests";
    /// Tags.
    pub const TAGS: &str = "tags";
    /// Referrers lists.
    pub const REFERRERS: &str = "referrers";
    /// Tag lists.
    pub const TAG_LISTS: &str = "taglists";
    /// Heartbeats.
    pub const NODES: &str = "nodes";
    /// Access summaries.
    pub const ACCESS: &str = "access";
}

/// Why a string is not a record key regcache writes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a record key: {0:?}")]
pub struct NotARecordKey(String);

impl fmt::Display for RecordKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use folder::*;
        let digest = |d: &Digest| format!("{}/{}", d.algorithm().as_str(), d.hex());
        match self {
            RecordKey::Manifest(d) => write!(f, "{MANIFESTS}/{}", digest(d)),
            // `UpstreamRepo` shows as `<upstream>/<repository>`.
            RecordKey::Tag { repo, tag, kind } => write!(f, "{TAGS}/{repo}/{tag}/{}", kind.as_str()),
            RecordKey::Referrers { repo, subject } => write!(f, "{REFERRERS}/{repo}/{}", digest(subject)),
            RecordKey::TagList { repo } => write!(f, "{TAG_LISTS}/{repo}/_list"),
            RecordKey::Node(node) => write!(f, "{NODES}/{node}"),
            RecordKey::Access { node, name } => write!(f, "{ACCESS}/{node}/{name}"),
        }
    }
}

impl FromStr for RecordKey {
    type Err = NotARecordKey;

    fn from_str(key: &str) -> Result<RecordKey, NotARecordKey> {
        parse(key).ok_or_else(|| NotARecordKey(key.to_owned()))
    }
}

fn parse(key: &str) -> Option<RecordKey> {
    use folder::*;
    let (folder, rest) = key.split_once('/')?;
    Some(match folder {
        MANIFESTS => RecordKey::Manifest(digest(rest)?),
        TAGS => {
            let (upstream, rest) = rest.split_once('/')?;
            let (rest, kind) = rest.rsplit_once('/')?;
            let (repo, tag) = rest.rsplit_once('/')?;
            RecordKey::Tag { repo: repo_of(upstream, repo)?, tag: tag.parse().ok()?, kind: kind_of(kind)? }
        }
        REFERRERS => {
            let (upstream, rest) = rest.split_once('/')?;
            let (rest, hex) = rest.rsplit_once('/')?;
            let (repo, algorithm) = rest.rsplit_once('/')?;
            RecordKey::Referrers { repo: repo_of(upstream, repo)?, subject: digest(&format!("{algorithm}/{hex}"))? }
        }
        TAG_LISTS => {
            let (upstream, rest) = rest.split_once('/')?;
            let repo = rest.strip_suffix("/_list")?;
            RecordKey::TagList { repo: repo_of(upstream, repo)? }
        }
        NODES => RecordKey::Node(node_of(rest)?),
        ACCESS => {
            let (node, name) = rest.split_once('/')?;
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                return None;
            }
            RecordKey::Access { node: node_of(node)?, name: name.to_owned() }
        }
        _ => return None,
    })
}

/// `<algorithm>/<hex>` as a digest.
fn digest(s: &str) -> Option<Digest> {
    let (algorithm, hex) = s.split_once('/')?;
    format!("{algorithm}:{hex}").parse().ok()
}

/// `repo` on `upstream`, if `upstream` is a plain host name (letters, digits, `.-:[]`: an upstream
/// as the configuration names it) and `repo` a repository name.
fn repo_of(upstream: &str, repo: &str) -> Option<UpstreamRepo> {
    let plain = !upstream.is_empty() && upstream.chars().all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c));
    if !plain {
        return None;
    }
    Some(UpstreamRepo { upstream: RegistryHost::new(upstream), name: repo.parse().ok()? })
}

fn kind_of(s: &str) -> Option<ManifestKind> {
    [ManifestKind::Index, ManifestKind::Image, ManifestKind::Schema1].into_iter().find(|k| k.as_str() == s)
}

/// Whether `id` can be a node's id: 1–64 of `0-9 a-z -` (it is part of record keys).
pub(super) fn is_node_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_lowercase() || b == b'-')
}

fn node_of(s: &str) -> Option<String> {
    is_node_id(s).then(|| s.to_owned())
}

/// The record of manifest `m`: its media type, a NUL, its exact bytes.
pub(super) fn manifest_record(m: &StoredManifest) -> Bytes {
    [m.media_type.as_bytes(), b"\0", &m.bytes].concat().into()
}

/// The manifest in a manifest record (its media type, a NUL, its exact bytes) if the record is
/// well formed and the manifest is `digest`'s and verifies; what is wrong with it otherwise.
pub fn read_manifest_record(record: Bytes, digest: &Digest) -> Result<StoredManifest, String> {
    let split = record.iter().position(|b| *b == 0).ok_or("no media type before a NUL")?;
    let media_type = std::str::from_utf8(&record[..split]).map_err(|_| "a media type that is not UTF-8")?;
    let bytes = record.slice(split + 1..);
    let verified = crate::oci::verify_manifest(&bytes, std::slice::from_ref(digest), Some(media_type)).map_err(|e| e.to_string())?;
    Ok(StoredManifest { media_type: verified.media_type, bytes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_read_back_as_written_and_nothing_else_reads() {
        let d = Digest::sha256_of(b"m");
        let hex = d.hex().to_owned();
        let cases: Vec<(String, Option<RecordKey>)> = vec![
            (format!("manifests/sha256/{hex}"), Some(RecordKey::Manifest(d.clone()))),
            (
                "tags/docker.io/library/alpine/3/image".into(),
                Some(RecordKey::Tag { repo: UpstreamRepo::of("docker.io", "library/alpine"), tag: "3".parse().unwrap(), kind: ManifestKind::Image }),
            ),
            (
                "tags/ghcr.io/org/team/app/v1.2/index".into(),
                Some(RecordKey::Tag { repo: UpstreamRepo::of("ghcr.io", "org/team/app"), tag: "v1.2".parse().unwrap(), kind: ManifestKind::Index }),
            ),
            (
                "tags/localhost:5000/app/latest/schema1".into(),
                Some(RecordKey::Tag { repo: UpstreamRepo::of("localhost:5000", "app"), tag: "latest".parse().unwrap(), kind: ManifestKind::Schema1 }),
            ),
            (
                format!("referrers/docker.io/library/alpine/sha256/{hex}"),
                Some(RecordKey::Referrers { repo: UpstreamRepo::of("docker.io", "library/alpine"), subject: d.clone() }),
            ),
            ("taglists/ghcr.io/org/app/_list".into(), Some(RecordKey::TagList { repo: UpstreamRepo::of("ghcr.io", "org/app") })),
            ("nodes/0123abcd".into(), Some(RecordKey::Node("0123abcd".into()))),
            ("access/n1/0000000001234-c0".into(), Some(RecordKey::Access { node: "n1".into(), name: "0000000001234-c0".into() })),
            ("tags/docker.io/3/image".into(), None),
            ("tags/docker.io/library/alpine/3/other".into(), None),
            ("tags/docker.io/library/alpine/\u{1b}[2J/image".into(), None),
            ("tags/docker.io/Library/Alpine/3/image".into(), None),
            ("tags/evil\nhost/app/3/image".into(), None),
            ("manifests/sha256".into(), None),
            ("manifests/sha256/zz".into(), None),
            ("manifests/md5/00".into(), None),
            ("manifests/sha256/abc".into(), None),
            ("tags/sha256/00".into(), None),
            ("taglists/ghcr.io/org/app".into(), None),
            ("nodes/Upper".into(), None),
            ("nodes/".into(), None),
            ("access/n1/../x".into(), None),
            ("blobs/sha256/00".into(), None),
            ("".into(), None),
        ];
        for (key, want) in cases {
            assert_eq!(key.parse::<RecordKey>().ok(), want, "{key:?}");
            if let Some(want) = want {
                assert_eq!(want.to_string(), key, "written as read");
            }
        }
    }

    #[test]
    fn manifest_records_read_back_only_as_the_manifest_of_their_digest() {
        let manifest = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#;
        let digest = Digest::sha256_of(manifest);
        let media_type = "application/vnd.oci.image.manifest.v1+json";
        let record = |mt: &str, body: &[u8]| Bytes::from([mt.as_bytes(), b"\0", body].concat());
        let m = read_manifest_record(record(media_type, manifest), &digest).expect("a good record");
        assert_eq!((m.media_type.as_str(), &m.bytes[..]), (media_type, &manifest[..]));
        let key = RecordKey::Manifest(digest.clone()).to_string();
        assert_eq!(key.parse::<RecordKey>(), Ok(RecordKey::Manifest(digest.clone())));
        let mut tampered = manifest.to_vec();
        tampered[20] ^= 1;
        for (why, bad) in [
            ("no NUL", Bytes::from_static(b"application/vnd.oci.image.manifest.v1+json")),
            ("not UTF-8", Bytes::from([&[0xff, 0xfe][..], b"\0", manifest].concat())),
            ("other bytes", record(media_type, &tampered)),
            ("another media type", record("application/vnd.docker.distribution.manifest.v2+json", manifest)),
        ] {
            assert!(read_manifest_record(bad, &digest).is_err(), "{why}");
        }
        for key in ["manifests/sha256", "manifests/sha256/zz", "tags/sha256/00", "manifests/md5/00"] {
            assert!(!matches!(key.parse::<RecordKey>(), Ok(RecordKey::Manifest(_))), "{key}");
        }
    }
}
