//! Builders that push realistic image content into a [`FakeRegistry`] and return
//! exactly what was pushed (digests, bytes, media types).
//!
//! All content is deterministic: layer bytes come from a pseudo-random generator
//! seeded by repository, tag and platform, so digests are stable across runs and
//! differ between repositories and tags.
#![allow(dead_code)]

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::fake_registry::{sha256_digest, FakeRegistry};

/// Docker schema2 image manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker gzipped layer.
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI gzipped layer.
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// In-toto attestation statement (buildx provenance/SBOM layers).
pub const IN_TOTO: &str = "application/vnd.in-toto+json";

/// One piece of pushed content: a manifest or a blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Content {
    /// `sha256:<hex>` of `bytes`.
    pub digest: String,
    /// Media type it was pushed / referenced with.
    pub media_type: String,
    /// The exact bytes stored in the registry.
    pub bytes: Vec<u8>,
}

impl Content {
    fn new(media_type: &str, bytes: Vec<u8>) -> Content {
        Content {
            digest: sha256_digest(&bytes),
            media_type: media_type.to_string(),
            bytes,
        }
    }

    /// Size in bytes.
    pub fn size(&self) -> usize {
        self.bytes.len()
    }

    /// OCI descriptor (`mediaType`, `digest`, `size`) referencing this content.
    pub fn descriptor(&self) -> Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.size()})
    }
}

/// A pushed single-platform image.
#[derive(Debug, Clone)]
pub struct Image {
    /// Repository it was pushed to.
    pub repo: String,
    /// Tag, or `None` when pushed by digest only (index children).
    pub tag: Option<String>,
    /// `os/arch[/variant]`, e.g. `linux/amd64`, or `unknown/unknown` for attestations.
    pub platform: String,
    /// The image manifest.
    pub manifest: Content,
    /// The config blob.
    pub config: Content,
    /// The layer blobs, in manifest order.
    pub layers: Vec<Content>,
}

impl Image {
    /// Config followed by the layers: every blob the manifest references.
    pub fn blobs(&self) -> Vec<&Content> {
        std::iter::once(&self.config).chain(&self.layers).collect()
    }
}

/// A pushed multi-platform index / manifest list.
#[derive(Debug, Clone)]
pub struct Index {
    /// Repository it was pushed to.
    pub repo: String,
    /// Tag of the index.
    pub tag: String,
    /// The index / list manifest itself.
    pub manifest: Content,
    /// Child manifests in index order, each pushed by digest.
    pub children: Vec<Image>,
}

/// Deterministic pseudo-random bytes (splitmix64 seeded from `seed`'s sha256).
pub fn pseudo_random_bytes(seed: &str, len: usize) -> Vec<u8> {
    let hash = Sha256::digest(seed.as_bytes());
    let mut state = u64::from_le_bytes(hash[..8].try_into().expect("sha256 has 8 bytes"));
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

fn pretty(value: &Value) -> Vec<u8> {
    serde_json::to_vec_pretty(value).expect("serialize JSON")
}

/// Manifest, config and layer media types of one image format.
struct Flavor {
    manifest: &'static str,
    config: &'static str,
    layer: &'static str,
}

const DOCKER: Flavor = Flavor {
    manifest: DOCKER_MANIFEST,
    config: DOCKER_CONFIG,
    layer: DOCKER_LAYER,
};
const OCI: Flavor = Flavor {
    manifest: OCI_MANIFEST,
    config: OCI_CONFIG,
    layer: OCI_LAYER,
};

/// Pushes config + layer blobs, then a manifest whose layer descriptors get
/// `layer_annotations` (if any); returns the image.
#[allow(clippy::too_many_arguments)]
fn push(
    reg: &FakeRegistry,
    repo: &str,
    tag: Option<&str>,
    platform: &str,
    manifest_type: &str,
    config: Content,
    layers: Vec<Content>,
    layer_annotations: Option<Value>,
) -> Image {
    for blob in std::iter::once(&config).chain(&layers) {
        reg.add_blob(blob.bytes.clone());
    }
    let layer_descriptors: Vec<Value> = layers
        .iter()
        .map(|l| {
            let mut d = l.descriptor();
            if let Some(a) = &layer_annotations {
                d["annotations"] = a.clone();
            }
            d
        })
        .collect();
    let manifest = Content::new(
        manifest_type,
        pretty(&json!({
            "schemaVersion": 2,
            "mediaType": manifest_type,
            "config": config.descriptor(),
            "layers": layer_descriptors,
        })),
    );
    let digest = reg.put_manifest(repo, tag, manifest_type, manifest.bytes.clone());
    assert_eq!(
        digest, manifest.digest,
        "registry digest is the sha256 of the stored bytes"
    );
    Image {
        repo: repo.into(),
        tag: tag.map(String::from),
        platform: platform.into(),
        manifest,
        config,
        layers,
    }
}

/// A runnable-looking image: `n_layers` pseudo-random layers of `layer_size` bytes.
#[allow(clippy::too_many_arguments)]
fn platform_image(
    reg: &FakeRegistry,
    repo: &str,
    tag: Option<&str>,
    flavor: &Flavor,
    platform: &str,
    seed: &str,
    n_layers: usize,
    layer_size: usize,
) -> Image {
    let layers: Vec<Content> = (0..n_layers)
        .map(|i| {
            Content::new(
                flavor.layer,
                pseudo_random_bytes(&format!("{seed}/layer{i}"), layer_size),
            )
        })
        .collect();
    let mut parts = platform.split('/');
    let (os, arch, variant) = (
        parts.next().unwrap_or("linux"),
        parts.next().unwrap_or("amd64"),
        parts.next(),
    );
    let mut config = json!({
        "architecture": arch,
        "os": os,
        "created": "2024-01-01T00:00:00Z",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/sh"],
            "Labels": {"org.example.seed": seed},
        },
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.digest.clone()).collect::<Vec<_>>()},
        "history": layers.iter().map(|_| json!({"created_by": "ADD layer.tar /"})).collect::<Vec<_>>(),
    });
    if let Some(variant) = variant {
        config["variant"] = json!(variant);
    }
    let config = Content::new(flavor.config, pretty(&config));
    push(
        reg,
        repo,
        tag,
        platform,
        flavor.manifest,
        config,
        layers,
        None,
    )
}

fn platform_json(platform: &str) -> Value {
    let mut parts = platform.split('/');
    let mut p =
        json!({"os": parts.next().unwrap_or(""), "architecture": parts.next().unwrap_or("")});
    if let Some(variant) = parts.next() {
        p["variant"] = json!(variant);
    }
    p
}

fn push_index(
    reg: &FakeRegistry,
    repo: &str,
    tag: &str,
    media_type: &str,
    entries: Vec<Value>,
    children: Vec<Image>,
) -> Index {
    let manifest = Content::new(
        media_type,
        pretty(&json!({"schemaVersion": 2, "mediaType": media_type, "manifests": entries})),
    );
    let digest = reg.put_manifest(repo, Some(tag), media_type, manifest.bytes.clone());
    assert_eq!(
        digest, manifest.digest,
        "registry digest is the sha256 of the stored bytes"
    );
    Index {
        repo: repo.into(),
        tag: tag.into(),
        manifest,
        children,
    }
}

/// Pushes a linux/amd64 Docker schema2 image under `repo:tag`.
pub fn schema2_image(
    reg: &FakeRegistry,
    repo: &str,
    tag: &str,
    n_layers: usize,
    layer_size: usize,
) -> Image {
    let seed = format!("{repo}:{tag}");
    platform_image(
        reg,
        repo,
        Some(tag),
        &DOCKER,
        "linux/amd64",
        &seed,
        n_layers,
        layer_size,
    )
}

/// Pushes a Docker manifest list under `repo:tag` with linux/amd64 and
/// linux/arm64/v8 schema2 children (two 2 KiB layers each), pushed by digest.
pub fn manifest_list(reg: &FakeRegistry, repo: &str, tag: &str) -> Index {
    let children: Vec<Image> = ["linux/amd64", "linux/arm64/v8"]
        .iter()
        .map(|p| {
            platform_image(
                reg,
                repo,
                None,
                &DOCKER,
                p,
                &format!("{repo}:{tag}:{p}"),
                2,
                2048,
            )
        })
        .collect();
    let entries = children
        .iter()
        .map(|c| {
            let mut d = c.manifest.descriptor();
            d["platform"] = platform_json(&c.platform);
            d
        })
        .collect();
    push_index(reg, repo, tag, DOCKER_LIST, entries, children)
}

/// Pushes an OCI index under `repo:tag` like `docker buildx` produces: a
/// linux/amd64 OCI image plus an attestation manifest (platform
/// `unknown/unknown`, in-toto layer) annotated as referring to the image.
pub fn oci_index_with_attestations(reg: &FakeRegistry, repo: &str, tag: &str) -> Index {
    let image = platform_image(
        reg,
        repo,
        None,
        &OCI,
        "linux/amd64",
        &format!("{repo}:{tag}:oci"),
        2,
        2048,
    );
    let statement = Content::new(
        IN_TOTO,
        pretty(&json!({
            "_type": "https://in-toto.io/Statement/v0.1",
            "predicateType": "https://slsa.dev/provenance/v0.2",
            "subject": [{
                "name": format!("pkg:docker/{repo}@{tag}?platform=linux%2Famd64"),
                "digest": {"sha256": image.manifest.digest.trim_start_matches("sha256:")},
            }],
            "predicate": {"builder": {"id": ""}, "buildType": "https://mobyproject.org/buildkit@v1"},
        })),
    );
    let config = Content::new(
        OCI_CONFIG,
        pretty(&json!({
            "architecture": "unknown",
            "os": "unknown",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [statement.digest]},
        })),
    );
    let annotations = json!({"in-toto.io/predicate-type": "https://slsa.dev/provenance/v0.2"});
    let attestation = push(
        reg,
        repo,
        None,
        "unknown/unknown",
        OCI_MANIFEST,
        config,
        vec![statement],
        Some(annotations),
    );

    let mut image_entry = image.manifest.descriptor();
    image_entry["platform"] = platform_json(&image.platform);
    let mut attestation_entry = attestation.manifest.descriptor();
    attestation_entry["annotations"] = json!({
        "vnd.docker.reference.digest": image.manifest.digest,
        "vnd.docker.reference.type": "attestation-manifest",
    });
    attestation_entry["platform"] = platform_json(&attestation.platform);
    push_index(
        reg,
        repo,
        tag,
        OCI_INDEX,
        vec![image_entry, attestation_entry],
        vec![image, attestation],
    )
}

/// A signed schema1 image: its manifest's digest is the sha256 of the signed payload.
#[derive(Debug, Clone)]
pub struct Schema1Image {
    /// The signed manifest as the registry stores it; `digest` is the payload's digest.
    pub manifest: Content,
    /// The JWS payload (the manifest without its signatures).
    pub payload: Vec<u8>,
    /// Layer blobs, newest first as schema1 lists them.
    pub layers: Vec<Content>,
}

/// Pushes a signed schema1 image (two 1 KiB layers, signed with a fresh EC P-256 key) under
/// `repo:tag`, stored under its payload digest as distribution does.
pub fn schema1_image(reg: &FakeRegistry, repo: &str, tag: &str) -> Schema1Image {
    let layers: Vec<Content> = (0..2)
        .map(|i| Content::new(DOCKER_LAYER, pseudo_random_bytes(&format!("{repo}:{tag}/s1/{i}"), 1024)))
        .collect();
    for l in &layers {
        reg.add_blob(l.bytes.clone());
    }
    let digests: Vec<String> = layers.iter().map(|l| l.digest.clone()).collect();
    let payload = super::schema1::payload(repo, tag, &digests);
    let digest = super::schema1::digest(&payload);
    let signed = super::schema1::sign(&payload);
    reg.put_manifest_as(repo, Some(tag), super::schema1::SCHEMA1_SIGNED, signed.clone(), &digest);
    let manifest = Content { digest, media_type: super::schema1::SCHEMA1_SIGNED.into(), bytes: signed };
    Schema1Image { manifest, payload, layers }
}
