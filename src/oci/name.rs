//! Repository names, tags and references, validated against the distribution spec's grammar.

use std::fmt;
use std::str::FromStr;

use super::digest::{Digest, DigestError};

/// The longest repository name the spec allows.
const MAX_NAME_LEN: usize = 255;
/// The longest tag the spec allows.
pub const MAX_TAG_LEN: usize = 128;

/// Why a name, tag or reference is invalid.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    /// Not a valid repository name.
    #[error("invalid repository name {0:?}")]
    Name(String),
    /// Not a valid tag.
    #[error("invalid tag {0:?}")]
    Tag(String),
    /// A reference that looks like a digest but isn't a valid one.
    #[error(transparent)]
    Digest(#[from] DigestError),
}

/// A repository name such as `library/alpine` or `org/team/app`.
///
/// Components are `[a-z0-9]+` joined by `.`, `_`, `__` or any run of `-`; components are joined by `/`;
/// at most 255 characters. No component can be `.` or `..`, so names are safe in keys and paths.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepositoryName(String);

impl RepositoryName {
    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// How many `/`-separated components the name has.
    pub fn components(&self) -> usize {
        self.0.split('/').count()
    }

    /// This name with `prefix/` in front (Docker Hub's `library/`).
    pub fn with_prefix(&self, prefix: &str) -> Result<RepositoryName, NameError> {
        format!("{prefix}/{}", self.0).parse()
    }
}

fn valid_component(c: &str) -> bool {
    let bytes = c.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    // Between alphanumeric runs: exactly one of `.`, `_`, `__`, or one or more `-`.
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

impl FromStr for RepositoryName {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || s.len() > MAX_NAME_LEN || !s.split('/').all(valid_component) {
            return Err(NameError::Name(s.to_owned()));
        }
        Ok(RepositoryName(s.to_owned()))
    }
}

impl fmt::Display for RepositoryName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RepositoryName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// A tag: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

impl Tag {
    /// The tag as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Tag {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let b = s.as_bytes();
        let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
        let valid = !b.is_empty()
            && b.len() <= MAX_TAG_LEN
            && word(b[0])
            && b[1..].iter().all(|&c| word(c) || c == b'.' || c == b'-');
        if !valid {
            return Err(NameError::Tag(s.to_owned()));
        }
        Ok(Tag(s.to_owned()))
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// What a manifest request names: a tag, which can move, or a digest, which cannot.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Reference {
    /// A mutable tag.
    Tag(Tag),
    /// An immutable digest.
    Digest(Digest),
}

impl FromStr for Reference {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.contains(':') {
            Ok(Reference::Digest(s.parse()?))
        } else {
            Ok(Reference::Tag(s.parse()?))
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => fmt::Display::fmt(t, f),
            Reference::Digest(d) => fmt::Display::fmt(d, f),
        }
    }
}

/// Whether the first component of an image or repository path names a registry host rather than
/// a namespace: it has a `.` or a port, or is `localhost` (Docker's rule).
pub fn is_registry_host(component: &str) -> bool {
    component.contains('.') || component.contains(':') || component == "localhost"
}

/// An image as people write it: `alpine:3`, `library/alpine`, `ghcr.io/org/app@sha256:…`,
/// `localhost:5000/app:1`. Without a registry host it names Docker Hub; without a tag, `latest`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    /// The registry host (`docker.io` when none was written).
    pub registry: String,
    /// The repository.
    pub name: RepositoryName,
    /// The tag or digest.
    pub reference: Reference,
}

impl FromStr for ImageRef {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (r, Some(d.parse::<Digest>()?)),
            None => (s, None),
        };
        // The first component is a registry host if it looks like one (has `.` or `:`, or is localhost).
        let (registry, path) = match rest.split_once('/') {
            Some((first, path)) if is_registry_host(first) => {
                (first.to_ascii_lowercase(), path)
            }
            _ => (super::DOCKER_HUB.to_owned(), rest),
        };
        // A tag is after the last `:` of the last component.
        let last_slash = path.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match path[last_slash..].rfind(':') {
            Some(i) => (&path[..last_slash + i], Some(&path[last_slash + i + 1..])),
            None => (path, None),
        };
        let name: RepositoryName = name.parse()?;
        // A tag written beside a digest names nothing more (the digest wins) but must be a tag.
        let tag = tag.map(str::parse::<Tag>).transpose()?;
        let reference = match (digest, tag) {
            (Some(d), _) => Reference::Digest(d),
            (None, Some(t)) => Reference::Tag(t),
            (None, None) => Reference::Tag(Tag("latest".to_owned())),
        };
        Ok(ImageRef { registry, name, reference })
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sep = if matches!(self.reference, Reference::Digest(_)) { '@' } else { ':' };
        write!(f, "{}/{}{sep}{}", self.registry, self.name, self.reference)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let good = [
            "alpine",
            "library/alpine",
            "org/team/app",
            "a/b/c/d/e",
            "my-app",
            "my--app",
            "my_app",
            "my__app",
            "my.app",
            "a0",
            "0",
        ];
        for n in good {
            assert!(n.parse::<RepositoryName>().is_ok(), "{n} should be valid");
        }
        let long = "a".repeat(256);
        let bad = [
            "", "Alpine", "/alpine", "alpine/", "a//b", "a/../b", "..", ".", "-a", "a-", "a.-b", "a___b",
            "a..b", "a b", "a%2fb", "a\\b", long.as_str(),
        ];
        for n in bad {
            assert!(n.parse::<RepositoryName>().is_err(), "{n:?} should be invalid");
        }
        assert!("a".repeat(255).parse::<RepositoryName>().is_ok());
    }

    #[test]
    fn tags() {
        for t in ["latest", "3", "v1.2.3-rc_1", "_x", "A"] {
            assert!(t.parse::<Tag>().is_ok(), "{t}");
        }
        let long = "a".repeat(129);
        for t in ["", ".x", "-x", "a/b", "a:b", "a b", long.as_str()] {
            assert!(t.parse::<Tag>().is_err(), "{t:?}");
        }
        assert!("a".repeat(128).parse::<Tag>().is_ok());
    }

    #[test]
    fn references() {
        assert!(matches!("3.19".parse::<Reference>(), Ok(Reference::Tag(_))));
        let d = format!("sha256:{}", "a".repeat(64));
        assert!(matches!(d.parse::<Reference>(), Ok(Reference::Digest(_))));
        assert!(matches!("sha256:zz".parse::<Reference>(), Err(NameError::Digest(_))));
        assert!(matches!("bad tag".parse::<Reference>(), Err(NameError::Tag(_))));
    }

    #[test]
    fn image_refs() {
        let d = format!("sha256:{}", "c".repeat(64));
        let cases = [
            ("alpine:3", "docker.io", "alpine", "3"),
            ("alpine", "docker.io", "alpine", "latest"),
            ("library/alpine:3.19", "docker.io", "library/alpine", "3.19"),
            ("ghcr.io/org/app:1.0", "ghcr.io", "org/app", "1.0"),
            ("localhost:5000/app", "localhost:5000", "app", "latest"),
            ("localhost/app:2", "localhost", "app", "2"),
        ];
        for (input, registry, name, reference) in cases {
            let r: ImageRef = input.parse().unwrap();
            assert_eq!((r.registry.as_str(), r.name.as_str(), r.reference.to_string().as_str()), (registry, name, reference), "{input}");
        }
        let r: ImageRef = format!("ghcr.io/org/app@{d}").parse().unwrap();
        assert_eq!(r.reference, Reference::Digest(d.parse().unwrap()));
        assert_eq!(r.to_string(), format!("ghcr.io/org/app@{d}"));
        assert!("Alpine:3".parse::<ImageRef>().is_err());
        assert!("alpine:bad tag".parse::<ImageRef>().is_err());
        assert!("alpine@sha256:1".parse::<ImageRef>().is_err());
        assert!(format!("alpine:bad tag@{d}").parse::<ImageRef>().is_err(), "a tag beside a digest is checked too");
        assert_eq!(format!("alpine:3@{d}").parse::<ImageRef>().unwrap().reference, Reference::Digest(d.parse().unwrap()));
    }

    #[test]
    fn prefix() {
        let n: RepositoryName = "alpine".parse().unwrap();
        assert_eq!(n.components(), 1);
        assert_eq!(n.with_prefix("library").unwrap().as_str(), "library/alpine");
    }
}
