//! Manifests of every media type: what they reference, and what regcache verifies before it keeps
//! one (the digest is the sha256 of the exact bytes, a signed schema1 manifest's of its payload).

use proptest::prelude::*;
use regcache::oci::{
    references, verify_manifest, Digest, ManifestError, DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST, SCHEMA1,
    SCHEMA1_SIGNED,
};
use serde_json::{json, Value};

use super::{config, oracle};

/// A sha256 digest of some bytes.
fn digest() -> impl Strategy<Value = Digest> {
    any::<Vec<u8>>().prop_map(|b| Digest::sha256_of(&b))
}

/// A size claim: mostly small, sometimes anything a `u64` holds.
fn size() -> impl Strategy<Value = u64> {
    prop_oneof![4 => 0..1_000_000u64, 1 => any::<u64>(), 1 => Just(u64::MAX)]
}

/// A descriptor (`mediaType`, `digest`, `size`).
fn descriptor(media_type: &'static str) -> impl Strategy<Value = Descriptor> {
    (digest(), size()).prop_map(move |(d, n)| {
        let v = json!({"mediaType": media_type, "digest": d.to_string(), "size": n});
        (d, n, v)
    })
}

/// The kinds of manifest regcache reads.
#[derive(Clone, Copy, Debug)]
enum Kind {
    DockerImage,
    OciImage,
    BareOciImage,
    DockerList,
    OciIndex,
    BareOciIndex,
    Schema1,
    SignedSchema1,
}

/// A manifest of some kind: its bytes, the media type it must verify as, and the references it has.
#[derive(Debug)]
struct Generated {
    bytes: Vec<u8>,
    media_type: &'static str,
    /// The payload whose sha256 is the digest (the bytes themselves but for signed schema1).
    hashed: Vec<u8>,
    children: Vec<(Digest, Option<String>)>,
    blobs: Vec<(Digest, Option<u64>)>,
}

fn platform() -> impl Strategy<Value = Platform> {
    ("[a-z]{1,8}", "[a-z0-9]{1,8}", prop::option::of("v[0-9]"))
}

fn manifest() -> impl Strategy<Value = Generated> {
    manifest_of(prop_oneof![
        Just(Kind::DockerImage),
        Just(Kind::OciImage),
        Just(Kind::BareOciImage),
        Just(Kind::DockerList),
        Just(Kind::OciIndex),
        Just(Kind::BareOciIndex),
        Just(Kind::Schema1),
        Just(Kind::SignedSchema1),
    ])
}

fn manifest_of(kind: impl Strategy<Value = Kind>) -> impl Strategy<Value = Generated> {
    let layers = prop::collection::vec(descriptor("application/vnd.oci.image.layer.v1.tar+gzip"), 0..6);
    let children = prop::collection::vec((descriptor(OCI_MANIFEST), prop::option::of(platform())), 0..5);
    let pretty = any::<bool>();
    (kind, descriptor("application/vnd.oci.image.config.v1+json"), layers, children, pretty)
        .prop_map(|(kind, config, layers, children, pretty)| build(kind, config, layers, children, pretty))
}

/// A descriptor: its digest, its size and its JSON.
type Descriptor = (Digest, u64, Value);
/// A platform: `os`, `architecture`, `variant`.
type Platform = (String, String, Option<String>);

fn build(kind: Kind, config: Descriptor, layers: Vec<Descriptor>, children: Vec<(Descriptor, Option<Platform>)>, pretty: bool) -> Generated {
    let print = |v: &Value| if pretty { serde_json::to_vec_pretty(v).unwrap() } else { serde_json::to_vec(v).unwrap() };
    let image = |media_type: Option<&str>| {
        let mut v = json!({"schemaVersion": 2, "config": config.2, "layers": layers.iter().map(|l| &l.2).collect::<Vec<_>>()});
        if let Some(m) = media_type {
            v["mediaType"] = json!(m);
        }
        v
    };
    let index = |media_type: Option<&str>| {
        let manifests: Vec<Value> = children
            .iter()
            .map(|((_, _, d), p)| {
                let mut d = d.clone();
                if let Some((os, arch, variant)) = p {
                    d["platform"] = json!({"os": os, "architecture": arch});
                    if let Some(v) = variant {
                        d["platform"]["variant"] = json!(v);
                    }
                }
                d
            })
            .collect();
        let mut v = json!({"schemaVersion": 2, "manifests": manifests});
        if let Some(m) = media_type {
            v["mediaType"] = json!(m);
        }
        v
    };
    let image_blobs = || std::iter::once(&config).chain(&layers).map(|(d, n, _)| (d.clone(), Some(*n))).collect();
    let index_children = || {
        children
            .iter()
            .map(|((d, _, _), p)| {
                let platform = p.as_ref().map(|(os, arch, variant)| match variant {
                    Some(v) => format!("{os}/{arch}/{v}"),
                    None => format!("{os}/{arch}"),
                });
                (d.clone(), platform)
            })
            .collect()
    };
    // Schema1 lists its layers newest first, and may name one blob twice.
    let fs_layers: Vec<Value> = layers.iter().chain(layers.first()).map(|(d, _, _)| json!({"blobSum": d.to_string()})).collect();
    let mut schema1_blobs: Vec<(Digest, Option<u64>)> = Vec::new();
    for (d, _, _) in &layers {
        if !schema1_blobs.iter().any(|(b, _)| b == d) {
            schema1_blobs.push((d.clone(), None));
        }
    }
    let schema1 = json!({"schemaVersion": 1, "name": "library/x", "tag": "1", "architecture": "amd64", "fsLayers": fs_layers, "history": []});
    let (bytes, media_type, children, blobs) = match kind {
        Kind::DockerImage => (print(&image(Some(DOCKER_MANIFEST))), DOCKER_MANIFEST, vec![], image_blobs()),
        Kind::OciImage => (print(&image(Some(OCI_MANIFEST))), OCI_MANIFEST, vec![], image_blobs()),
        Kind::BareOciImage => (print(&image(None)), OCI_MANIFEST, vec![], image_blobs()),
        Kind::DockerList => (print(&index(Some(DOCKER_LIST))), DOCKER_LIST, index_children(), vec![]),
        Kind::OciIndex => (print(&index(Some(OCI_INDEX))), OCI_INDEX, index_children(), vec![]),
        Kind::BareOciIndex => (print(&index(None)), OCI_INDEX, index_children(), vec![]),
        Kind::Schema1 => (print(&schema1), SCHEMA1, vec![], schema1_blobs),
        Kind::SignedSchema1 => {
            let payload = serde_json::to_string_pretty(&schema1).unwrap();
            let signed = oracle::signed_schema1(&payload).unwrap();
            return Generated { bytes: signed, media_type: SCHEMA1_SIGNED, hashed: payload.into_bytes(), children: vec![], blobs: schema1_blobs };
        }
    };
    Generated { hashed: bytes.clone(), bytes, media_type, children, blobs }
}

/// Any JSON value, a few levels deep, with the keys manifests have.
fn json_value() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("schemaVersion".to_owned()),
        Just("mediaType".to_owned()),
        Just("manifests".to_owned()),
        Just("config".to_owned()),
        Just("layers".to_owned()),
        Just("fsLayers".to_owned()),
        Just("blobSum".to_owned()),
        Just("digest".to_owned()),
        Just("size".to_owned()),
        Just("signatures".to_owned()),
        Just("protected".to_owned()),
        "[a-z]{1,3}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        Just(json!(1)),
        Just(json!(SCHEMA1_SIGNED)),
        Just(json!(OCI_MANIFEST)),
        digest().prop_map(|d| json!(d.to_string())),
        "[ -~]{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map(key.clone(), inner, 0..6).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(config(256, "tests/properties/regressions/manifests.txt"))]

    #[test]
    fn every_format_yields_its_references_and_verifies_as_its_bytes(m in manifest()) {
        let refs = references(&m.bytes).expect("a generated manifest has references");
        let children: Vec<(Digest, Option<String>)> = refs.children.iter().map(|c| (c.digest.clone(), c.platform.clone())).collect();
        prop_assert_eq!(children, m.children.clone());
        prop_assert_eq!(&refs.blobs, &m.blobs);
        let v = verify_manifest(&m.bytes, &[], None).expect("a generated manifest verifies");
        prop_assert_eq!(v.media_type.as_str(), m.media_type);
        prop_assert_eq!(&v.digest, &Digest::sha256_of(&m.hashed));
        oracle::manifest(&m.bytes, None);
        oracle::manifest(&m.bytes, Some(m.media_type));
    }

    #[test]
    fn a_changed_byte_never_verifies_as_the_original(m in manifest(), at in any::<prop::sample::Index>(), to in any::<u8>()) {
        let mut bytes = m.bytes.clone();
        let i = at.index(bytes.len());
        prop_assume!(bytes[i] != to);
        bytes[i] = to;
        oracle::manifest(&bytes, None);
        let original = Digest::sha256_of(&m.hashed);
        if let Ok(v) = verify_manifest(&bytes, std::slice::from_ref(&original), None) {
            // Only a signed schema1 manifest has bytes outside what is hashed: its signatures.
            prop_assert_eq!(m.media_type, SCHEMA1_SIGNED);
            prop_assert_eq!(v.digest, original);
            let unsigned = |b: &[u8]| {
                let mut doc: Value = serde_json::from_slice(b).unwrap();
                doc.as_object_mut().unwrap().remove("signatures");
                doc
            };
            prop_assert_eq!(unsigned(&bytes), unsigned(&m.bytes), "what a client reads is what was hashed");
        }
    }

    #[test]
    fn any_json_is_read_within_bounds(v in json_value(), ct in prop::option::of(prop_oneof![Just(SCHEMA1), Just(OCI_INDEX), Just("application/json"), Just("text/html")])) {
        let bytes = serde_json::to_vec(&v).unwrap();
        oracle::manifest(&bytes, ct);
        if let Some(payload) = v.is_object().then(|| serde_json::to_string_pretty(&v).unwrap()) {
            oracle::schema1(&payload);
        }
    }

    #[test]
    fn any_bytes_are_read_within_bounds(bytes in any::<Vec<u8>>()) {
        oracle::manifest(&bytes, None);
        oracle::schema1(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn content_after_the_signed_payload_is_refused(m in manifest_of(Just(Kind::SignedSchema1)), key in "[a-z]{1,8}") {
        let mut smuggled = String::from_utf8(m.bytes).unwrap();
        let at = smuggled.rfind('}').unwrap();
        smuggled.insert_str(at, &format!(",\"{key}\":[]"));
        let err = verify_manifest(smuggled.as_bytes(), &[], None).unwrap_err();
        prop_assert_eq!(err, ManifestError::Schema1Signature("payload differs from the manifest without its signatures"));
    }
}

/// A schema1 payload whose `formatLength` claims far more than the manifest holds allocates
/// nothing for the claim.
#[test]
fn a_huge_format_length_is_no_allocation() {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    for length in [u64::MAX, 1 << 40, u64::from(u32::MAX), 100_000] {
        let header = b64.encode(format!(r#"{{"formatLength":{length},"formatTail":"fQ"}}"#));
        let doc = format!(r#"{{"schemaVersion":1,"signatures":[{{"protected":"{header}"}}]}}"#);
        oracle::manifest(doc.as_bytes(), None);
    }
}

/// Found by the property tests: blob sizes summing past `u64::MAX` overflowed `Refs::blob_bytes`
/// (a panic in a debug build, a wrapped total in `regcache ls` and `warm`'s progress otherwise).
#[test]
fn sizes_summing_past_u64_max_saturate() {
    let d = Digest::sha256_of(b"");
    let max = u64::MAX;
    let m = format!(r#"{{"schemaVersion":2,"config":{{"digest":"{d}","size":{max}}},"layers":[{{"digest":"{d}","size":1}}]}}"#);
    assert_eq!(references(m.as_bytes()).unwrap().blob_bytes(), u64::MAX);
    oracle::manifest(m.as_bytes(), None);
}
