//! What a manifest points at: child manifests (an index or manifest list) or blobs (an image).
//! Only what regcache needs to walk an image; the bytes themselves are never re-serialised.

use serde::Deserialize;

use super::Digest;

/// A child manifest of an index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Child {
    /// Its digest.
    pub digest: Digest,
    /// `os/arch[/variant]`, when the index says.
    pub platform: Option<String>,
}

/// The references in a manifest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Refs {
    /// Child manifests (index / manifest list).
    pub children: Vec<Child>,
    /// Blobs (config and layers) with their sizes when given.
    pub blobs: Vec<(Digest, Option<u64>)>,
}

#[derive(Deserialize)]
struct Raw {
    #[serde(default)]
    manifests: Vec<RawDescriptor>,
    config: Option<RawDescriptor>,
    #[serde(default)]
    layers: Vec<RawDescriptor>,
    #[serde(default, rename = "fsLayers")]
    fs_layers: Vec<RawFsLayer>,
}

#[derive(Deserialize)]
struct RawDescriptor {
    digest: String,
    size: Option<u64>,
    platform: Option<RawPlatform>,
}

#[derive(Deserialize)]
struct RawPlatform {
    os: String,
    architecture: String,
    variant: Option<String>,
}

#[derive(Deserialize)]
struct RawFsLayer {
    #[serde(rename = "blobSum")]
    blob_sum: String,
}

impl Refs {
    /// The bytes of the blobs whose sizes the manifest gives. Sizes are the upstream's claims, so
    /// the sum saturates at `u64::MAX` rather than overflow.
    pub fn blob_bytes(&self) -> u64 {
        self.blobs.iter().filter_map(|(_, s)| *s).fold(0, u64::saturating_add)
    }
}

/// The references of a manifest; `None` if it isn't JSON of a known shape or names an invalid digest.
pub fn references(bytes: &[u8]) -> Option<Refs> {
    let raw: Raw = serde_json::from_slice(bytes).ok()?;
    let mut refs = Refs::default();
    for m in raw.manifests {
        let platform = m.platform.map(|p| match p.variant {
            Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
            None => format!("{}/{}", p.os, p.architecture),
        });
        refs.children.push(Child { digest: m.digest.parse().ok()?, platform });
    }
    for d in raw.config.into_iter().chain(raw.layers) {
        refs.blobs.push((d.digest.parse().ok()?, d.size));
    }
    for l in raw.fs_layers {
        let d: Digest = l.blob_sum.parse().ok()?;
        if !refs.blobs.iter().any(|(b, _)| *b == d) {
            refs.blobs.push((d, None));
        }
    }
    Some(refs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    #[test]
    fn image_index_and_schema1() {
        let image = format!(r#"{{"schemaVersion":2,"config":{{"digest":"{A}","size":10}},"layers":[{{"digest":"{B}","size":20}}]}}"#);
        let r = references(image.as_bytes()).unwrap();
        assert_eq!(r.blobs, vec![(A.parse().unwrap(), Some(10)), (B.parse().unwrap(), Some(20))]);
        let index = format!(
            r#"{{"manifests":[{{"digest":"{A}","platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}},{{"digest":"{B}","platform":{{"os":"unknown","architecture":"unknown"}}}}]}}"#
        );
        let r = references(index.as_bytes()).unwrap();
        assert_eq!(r.children[0].platform.as_deref(), Some("linux/arm64/v8"));
        assert_eq!(r.children[1].platform.as_deref(), Some("unknown/unknown"));
        let s1 = format!(r#"{{"schemaVersion":1,"fsLayers":[{{"blobSum":"{A}"}},{{"blobSum":"{A}"}}]}}"#);
        assert_eq!(references(s1.as_bytes()).unwrap().blobs.len(), 1);
        assert!(references(b"not json").is_none());
        assert!(references(br#"{"layers":[{"digest":"sha256:zz"}]}"#).is_none());
    }
}
