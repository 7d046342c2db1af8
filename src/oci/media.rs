//! Manifest media types and the client's `Accept` list.

use http::HeaderMap;

/// Docker's signed schema1 manifest: its digest is not the sha256 of its bytes.
pub const SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// Every manifest type regcache asks for when the client named none.
pub const MANIFEST_MEDIA_TYPES: [&str; 6] = [
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    SCHEMA1_SIGNED,
    "application/json",
];

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
}
