//! Manifest media types, the kind of answer each is, and the client's `Accept` list.

use http::HeaderMap;
use serde::{Deserialize, Serialize};

/// Docker's signed schema1 manifest: its digest is the sha256 of its JWS payload, not of its bytes.
pub const SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
/// Docker's unsigned schema1 manifest.
pub const SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
/// Docker's schema2 image manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker's manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// The OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// The OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// What kind of answer a manifest is. A tag is remembered once per kind, because which kind an
/// upstream sends depends on the client's `Accept`: a multi-platform tag is an index to a client
/// that accepts one and a single-platform image (or a schema1 conversion) to one that doesn't.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ManifestKind {
    /// A Docker manifest list or an OCI image index.
    Index,
    /// One image (Docker schema2, OCI image manifest, or any other single manifest).
    Image,
    /// Docker schema1, signed or not.
    Schema1,
}

impl ManifestKind {
    /// Its word, as serde writes it (`index`, `image`, `schema1`).
    pub fn as_str(self) -> &'static str {
        match self {
            ManifestKind::Index => "index",
            ManifestKind::Image => "image",
            ManifestKind::Schema1 => "schema1",
        }
    }

    /// The kind of a manifest of `media_type`.
    pub fn of(media_type: &str) -> ManifestKind {
        let m = media_type.to_ascii_lowercase();
        if m == DOCKER_LIST || m == OCI_INDEX {
            ManifestKind::Index
        } else if m == SCHEMA1 || m == SCHEMA1_SIGNED {
            ManifestKind::Schema1
        } else {
            ManifestKind::Image
        }
    }
}

/// Every manifest type regcache asks for when the client named none.
pub const MANIFEST_MEDIA_TYPES: [&str; 6] = [
    DOCKER_MANIFEST,
    DOCKER_LIST,
    OCI_MANIFEST,
    OCI_INDEX,
    SCHEMA1_SIGNED,
    "application/json",
];

/// Single-image manifest types (and the OCI artifact manifest) a client may name in `Accept`.
const IMAGE_TYPES: [&str; 3] = [DOCKER_MANIFEST, OCI_MANIFEST, "application/vnd.oci.artifact.manifest.v1+json"];

/// The media types a client accepts, gathered from all of its `Accept` header lines.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AcceptList(Vec<String>);

impl AcceptList {
    /// Every type named in every `Accept` line, in order, without parameters or duplicates.
    /// Wildcards (`*/*`, as curl and HTTP libraries send by default) name no type. An empty list
    /// means the client named none.
    pub fn from_headers(headers: &HeaderMap) -> AcceptList {
        let mut types: Vec<String> = Vec::new();
        for value in headers.get_all(http::header::ACCEPT) {
            let Ok(value) = value.to_str() else { continue };
            for item in value.split(',') {
                let media = item.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
                if !media.is_empty() && !media.ends_with("/*") && !types.contains(&media) {
                    types.push(media);
                }
            }
        }
        AcceptList(types)
    }

    /// A list of exactly one type (regcache's own requests, such as referrers).
    pub fn only(media_type: &str) -> AcceptList {
        AcceptList(vec![media_type.to_ascii_lowercase()])
    }

    /// The types the client named, in order (none: it accepts anything).
    pub fn types(&self) -> &[String] {
        &self.0
    }

    /// What to send upstream: the client's list, or every manifest type when it named none.
    pub fn for_upstream(&self) -> Vec<String> {
        if self.0.is_empty() {
            MANIFEST_MEDIA_TYPES.iter().map(|s| s.to_string()).collect()
        } else {
            self.0.clone()
        }
    }

    /// Whether a manifest of `media_type` may be served to this client.
    pub fn allows(&self, media_type: &str) -> bool {
        self.0.is_empty() || self.0.iter().any(|t| t.eq_ignore_ascii_case(media_type))
    }

    /// The kind of answer this client gets for a tag from an upstream that has every kind: an
    /// index if it accepts an index or list type (or names no type), else a single image if it
    /// accepts an image type, else schema1 (what distribution converts to for such clients).
    pub fn asks_for(&self) -> ManifestKind {
        let names = |types: &[&str]| self.0.iter().any(|t| types.contains(&t.as_str()));
        if self.0.is_empty() || names(&[DOCKER_LIST, OCI_INDEX]) {
            ManifestKind::Index
        } else if names(&IMAGE_TYPES) {
            ManifestKind::Image
        } else {
            ManifestKind::Schema1
        }
    }

    /// A stable key for this list, so requests with the same `Accept` can share one upstream call.
    pub fn key(&self) -> String {
        let mut sorted = self.0.clone();
        sorted.sort();
        sorted.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kind_s_word_is_its_serde_name() {
        for kind in [ManifestKind::Index, ManifestKind::Image, ManifestKind::Schema1] {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
        }
    }

    #[test]
    fn gathers_every_line() {
        let mut h = HeaderMap::new();
        h.append("accept", "application/vnd.docker.distribution.manifest.v2+json".parse().unwrap());
        h.append(
            "accept",
            "application/vnd.oci.image.index.v1+json, application/json; q=0.5".parse().unwrap(),
        );
        let a = AcceptList::from_headers(&h);
        assert_eq!(a.for_upstream().len(), 3);
        assert!(a.allows("application/vnd.oci.image.index.v1+json"));
        assert!(a.allows("application/json"));
        assert!(!a.allows("application/vnd.oci.image.manifest.v1+json"));
        let none = AcceptList::from_headers(&HeaderMap::new());
        assert_eq!(none.for_upstream().len(), 6);
        assert!(none.allows("anything"));
        let mut wild = HeaderMap::new();
        wild.append("accept", "*/*".parse().unwrap());
        assert_eq!(AcceptList::from_headers(&wild), none);
    }

    fn accept(lines: &[&str]) -> AcceptList {
        let mut h = HeaderMap::new();
        for l in lines {
            h.append("accept", l.parse().unwrap());
        }
        AcceptList::from_headers(&h)
    }

    #[test]
    fn what_each_client_asks_for() {
        use ManifestKind::*;
        let cases: [(&str, &[&str], ManifestKind); 9] = [
            ("docker", &[DOCKER_MANIFEST, DOCKER_LIST, OCI_INDEX, OCI_MANIFEST], Index),
            ("containerd, one line", &["application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, */*"], Index),
            ("no Accept", &[], Index),
            ("only */*", &["*/*"], Index),
            ("only an OCI index", &[OCI_INDEX], Index),
            ("old docker: schema2 only", &[DOCKER_MANIFEST], Image),
            ("OCI manifest and schema1", &[OCI_MANIFEST, SCHEMA1_SIGNED], Image),
            ("schema1 only", &[SCHEMA1_SIGNED], Schema1),
            ("generic JSON", &["application/json"], Schema1),
        ];
        for (who, lines, want) in cases {
            assert_eq!(accept(lines).asks_for(), want, "{who}");
        }
    }

    #[test]
    fn kind_of_a_media_type() {
        use ManifestKind::*;
        let cases = [
            (DOCKER_LIST, Index),
            (OCI_INDEX, Index),
            ("Application/VND.oci.image.index.v1+json", Index),
            (DOCKER_MANIFEST, Image),
            (OCI_MANIFEST, Image),
            ("application/vnd.oci.artifact.manifest.v1+json", Image),
            (SCHEMA1, Schema1),
            (SCHEMA1_SIGNED, Schema1),
        ];
        for (media_type, want) in cases {
            assert_eq!(ManifestKind::of(media_type), want, "{media_type}");
        }
    }
}
