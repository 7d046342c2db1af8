//! What regcache checks before it keeps or serves a manifest from an upstream: the digest is
//! computed here (for signed schema1, over the JWS payload with the signatures removed) and must
//! match every digest asked for or announced, and the media type comes from the manifest itself.
//! Nothing an upstream merely says is taken on its word.

use base64::Engine as _;
use serde_json::{Map, Value};

use super::media::{ManifestKind, OCI_INDEX, OCI_MANIFEST, SCHEMA1, SCHEMA1_SIGNED};
use super::{Algorithm, Digest};

/// A manifest regcache has verified: its digest and the media type it is served with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedManifest {
    /// The digest: the first one expected, else the sha256 regcache computed.
    pub digest: Digest,
    /// The media type, from the manifest itself.
    pub media_type: String,
}

/// Why a manifest from upstream is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// Not a JSON object.
    #[error("manifest is not a JSON object")]
    NotJson,
    /// No `mediaType` and no shape that names one.
    #[error("manifest has no media type and no known shape")]
    UnknownType,
    /// A `mediaType` that can't be a media type (it would go into a header).
    #[error("manifest names an invalid media type")]
    InvalidMediaType,
    /// A signed schema1 manifest whose JWS can't be read.
    #[error("schema1 signature block unreadable: {0}")]
    Schema1Signature(&'static str),
    /// The content hashes to another digest than the one asked for or announced.
    #[error("manifest expected as {expected} has digest {computed}")]
    DigestMismatch {
        /// What was asked for or announced.
        expected: Digest,
        /// What regcache computed (with the expected digest's algorithm).
        computed: Digest,
    },
    /// The upstream's `Content-Type` names another type than the manifest's own.
    #[error("upstream sent a manifest of type {body} as {upstream}")]
    ContentTypeContradicts {
        /// The upstream's `Content-Type`.
        upstream: String,
        /// The manifest's own type.
        body: String,
    },
}

/// Verify a manifest's `bytes` from upstream: every digest in `expected` (asked for, announced by
/// `Docker-Content-Digest`, given by an earlier `HEAD`) must be the digest regcache computes, and
/// `content_type` (the upstream's header, if any) must not contradict the manifest's own type.
/// `application/json` contradicts nothing: it is JSON, just not specific.
pub fn verify_manifest(
    bytes: &[u8],
    expected: &[Digest],
    content_type: Option<&str>,
) -> Result<VerifiedManifest, ManifestError> {
    let Ok(Value::Object(doc)) = serde_json::from_slice::<Value>(bytes) else { return Err(ManifestError::NotJson) };
    let media_type = media_type_of(&doc)?;
    if let Some(ct) = content_type.map(essence).filter(|ct| !ct.is_empty()) {
        // Both schema1 types name the same format: a signed manifest labelled `…v1+json` is fine.
        let both_schema1 = ManifestKind::of(&ct) == ManifestKind::Schema1 && ManifestKind::of(&media_type) == ManifestKind::Schema1;
        if ct != media_type && ct != "application/json" && !both_schema1 {
            return Err(ManifestError::ContentTypeContradicts { upstream: ct, body: media_type });
        }
    }
    let payload = if media_type == SCHEMA1_SIGNED { Some(schema1_payload(bytes, &doc)?) } else { None };
    let hashed = payload.as_deref().unwrap_or(bytes);
    // Hashed once per algorithm: the digests expected are usually one digest named up to three times.
    let mut computed_by_algorithm: Vec<Digest> = Vec::with_capacity(1);
    for want in expected {
        let computed = match computed_by_algorithm.iter().find(|d| d.algorithm() == want.algorithm()) {
            Some(d) => d.clone(),
            None => {
                let d = Digest::of(want.algorithm(), hashed);
                computed_by_algorithm.push(d.clone());
                d
            }
        };
        if computed != *want {
            return Err(ManifestError::DigestMismatch { expected: want.clone(), computed });
        }
    }
    let digest = match expected.first() {
        Some(d) => d.clone(),
        None => Digest::of(Algorithm::Sha256, hashed),
    };
    Ok(VerifiedManifest { digest, media_type })
}

/// The media type part of a `Content-Type`, lower case, without parameters.
fn essence(content_type: &str) -> String {
    content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase()
}

/// The manifest's own media type: its `mediaType`; else schema1 by `schemaVersion` (signed when it
/// carries `signatures`); else an OCI index or image by shape (OCI made `mediaType` optional;
/// Docker schema2 manifests and lists always carry it).
fn media_type_of(doc: &Map<String, Value>) -> Result<String, ManifestError> {
    if let Some(m) = doc.get("mediaType") {
        let m = m.as_str().map(essence).ok_or(ManifestError::InvalidMediaType)?;
        let token = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b));
        return match m.split_once('/') {
            Some((t, s)) if token(t) && token(s) => Ok(m),
            _ => Err(ManifestError::InvalidMediaType),
        };
    }
    let version = doc.get("schemaVersion").and_then(Value::as_u64);
    let shape = if version == Some(1) {
        if doc.contains_key("signatures") {
            SCHEMA1_SIGNED
        } else {
            SCHEMA1
        }
    } else if doc.contains_key("manifests") {
        OCI_INDEX
    } else if doc.contains_key("config") && doc.contains_key("layers") {
        OCI_MANIFEST
    } else {
        return Err(ManifestError::UnknownType);
    };
    Ok(shape.to_owned())
}

/// The JWS payload of a signed schema1 manifest (libtrust's "pretty signature"): the bytes up to
/// `formatLength` plus the decoded `formatTail` of the first signature's protected header. The
/// payload must be the whole manifest minus its `signatures`, so what a client reads is what was
/// hashed.
pub fn schema1_payload(bytes: &[u8], doc: &Map<String, Value>) -> Result<Vec<u8>, ManifestError> {
    use ManifestError::Schema1Signature as Bad;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let protected = doc
        .get("signatures")
        .and_then(|s| s.get(0))
        .and_then(|s| s.get("protected"))
        .and_then(Value::as_str)
        .ok_or(Bad("no signatures[0].protected"))?;
    let header = b64.decode(protected.trim_end_matches('=')).map_err(|_| Bad("protected header is not base64url"))?;
    let header: Value = serde_json::from_slice(&header).map_err(|_| Bad("protected header is not JSON"))?;
    let length = header.get("formatLength").and_then(Value::as_u64).ok_or(Bad("no formatLength"))?;
    let tail = header.get("formatTail").and_then(Value::as_str).ok_or(Bad("no formatTail"))?;
    let tail = b64.decode(tail.trim_end_matches('=')).map_err(|_| Bad("formatTail is not base64url"))?;
    let length = usize::try_from(length).ok().filter(|n| *n <= bytes.len()).ok_or(Bad("formatLength past the end"))?;
    let mut payload = Vec::with_capacity(length.saturating_add(tail.len()));
    payload.extend_from_slice(&bytes[..length]);
    payload.extend_from_slice(&tail);
    let Ok(Value::Object(canonical)) = serde_json::from_slice::<Value>(&payload) else {
        return Err(Bad("payload is not a JSON object"));
    };
    let mut unsigned = doc.clone();
    unsigned.remove("signatures");
    if canonical != unsigned {
        return Err(Bad("payload differs from the manifest without its signatures"));
    }
    Ok(payload)
}

/// A schema1 manifest in libtrust's pretty-signature layout around `payload` (the signature value
/// itself is not checked by regcache, so a placeholder stands in). For tests.
#[cfg(test)]
pub(crate) fn signed_schema1(payload: &str) -> Vec<u8> {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let close = payload.rfind('}').unwrap();
        let length = payload[..close].trim_end().len();
        let tail = &payload[length..];
        let protected = b64.encode(format!(r#"{{"formatLength":{length},"formatTail":"{}","time":"2024-01-01T00:00:00Z"}}"#, b64.encode(tail)));
        let sigs = format!(",\n   \"signatures\": [{{\"header\": {{\"alg\": \"ES256\"}}, \"signature\": \"c2ln\", \"protected\": \"{protected}\"}}]");
        format!("{}{sigs}{tail}", &payload[..length]).into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::media::{DOCKER_LIST, DOCKER_MANIFEST};

    const S1_PAYLOAD: &str = "{\n   \"schemaVersion\": 1,\n   \"name\": \"library/old\",\n   \"tag\": \"1\",\n   \"fsLayers\": []\n}";

    #[test]
    fn verifies_every_format() {
        let sha = |b: &[u8]| Digest::sha256_of(b);
        let image = format!(r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{}},"layers":[]}}"#).into_bytes();
        let list = format!(r#"{{"schemaVersion":2,"mediaType":"{DOCKER_LIST}","manifests":[]}}"#).into_bytes();
        let bare_index = br#"{"schemaVersion":2,"manifests":[]}"#.to_vec();
        let bare_image = br#"{"schemaVersion":2,"config":{},"layers":[]}"#.to_vec();
        let unsigned = S1_PAYLOAD.as_bytes().to_vec();
        let signed = signed_schema1(S1_PAYLOAD);
        let payload_digest = sha(S1_PAYLOAD.as_bytes());
        let wrong = sha(b"other");
        let mismatch = |bytes: &[u8], expected: &Digest| ManifestError::DigestMismatch { expected: expected.clone(), computed: sha(bytes) };
        let contradicts = |upstream: &str, body: &str| ManifestError::ContentTypeContradicts { upstream: upstream.into(), body: body.into() };
        let ok = |d: Digest, m: &str| Ok(VerifiedManifest { digest: d, media_type: m.into() });
        type Case<'a> = (&'a str, &'a [u8], Vec<Digest>, Option<&'a str>, Result<VerifiedManifest, ManifestError>);
        let cases: Vec<Case> = vec![
            ("image by tag", &image, vec![], Some(DOCKER_MANIFEST), ok(sha(&image), DOCKER_MANIFEST)),
            ("image asked by digest", &image, vec![sha(&image)], None, ok(sha(&image), DOCKER_MANIFEST)),
            ("parameters and case ignored", &image, vec![], Some("Application/VND.docker.distribution.manifest.v2+json; charset=utf-8"), ok(sha(&image), DOCKER_MANIFEST)),
            ("generic JSON contradicts nothing", &list, vec![], Some("application/json"), ok(sha(&list), DOCKER_LIST)),
            ("OCI index without mediaType", &bare_index, vec![], Some(OCI_INDEX), ok(sha(&bare_index), OCI_INDEX)),
            ("OCI image without mediaType", &bare_image, vec![], None, ok(sha(&bare_image), OCI_MANIFEST)),
            ("unsigned schema1: sha256 of bytes", &unsigned, vec![sha(&unsigned)], Some(SCHEMA1), ok(sha(&unsigned), SCHEMA1)),
            ("signed schema1: sha256 of payload", &signed, vec![payload_digest.clone()], Some(SCHEMA1_SIGNED), ok(payload_digest.clone(), SCHEMA1_SIGNED)),
            ("signed schema1 by tag", &signed, vec![], None, ok(payload_digest.clone(), SCHEMA1_SIGNED)),
            ("signed schema1 labelled v1+json", &signed, vec![payload_digest.clone()], Some(SCHEMA1), ok(payload_digest.clone(), SCHEMA1_SIGNED)),
            ("signed schema1 is not the hash of its bytes", &signed, vec![sha(&signed)], Some(SCHEMA1_SIGNED), Err(ManifestError::DigestMismatch { expected: sha(&signed), computed: payload_digest.clone() })),
            ("wrong digest asked", &image, vec![wrong.clone()], Some(DOCKER_MANIFEST), Err(mismatch(&image, &wrong))),
            ("schema1 type does not vouch for a digest", &image, vec![wrong.clone()], Some(SCHEMA1_SIGNED), Err(contradicts(SCHEMA1_SIGNED, DOCKER_MANIFEST))),
            ("announced digest also checked", &image, vec![sha(&image), wrong.clone()], None, Err(mismatch(&image, &wrong))),
            ("html on an index", &list, vec![], Some("text/html"), Err(contradicts("text/html", DOCKER_LIST))),
            ("another manifest type", &list, vec![], Some(OCI_INDEX), Err(contradicts(OCI_INDEX, DOCKER_LIST))),
            ("not JSON", b"<html></html>", vec![], Some("text/html"), Err(ManifestError::NotJson)),
            ("a JSON array", b"[]", vec![], None, Err(ManifestError::NotJson)),
            ("no type, no shape", br#"{"schemaVersion":2}"#, vec![], None, Err(ManifestError::UnknownType)),
            ("header injection in mediaType", br#"{"mediaType":"a/b\r\nx: y"}"#, vec![], None, Err(ManifestError::InvalidMediaType)),
            ("mediaType not a string", br#"{"mediaType":1}"#, vec![], None, Err(ManifestError::InvalidMediaType)),
        ];
        for (what, bytes, expected, ct, want) in cases {
            assert_eq!(verify_manifest(bytes, &expected, ct), want, "{what}");
        }
        let sha512 = Digest::of(Algorithm::Sha512, &image);
        assert_eq!(verify_manifest(&image, std::slice::from_ref(&sha512), None).unwrap().digest, sha512, "sha512 asked");
    }

    #[test]
    fn schema1_signature_blocks() {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let with_protected = |p: &str| format!(r#"{{"schemaVersion":1,"fsLayers":[],"signatures":[{{"protected":"{p}"}}]}}"#);
        let header = |len: u64, tail: &str| b64.encode(format!(r#"{{"formatLength":{len},"formatTail":"{}"}}"#, b64.encode(tail)));
        let cases = [
            ("not base64", with_protected("***"), "protected header is not base64url"),
            ("not JSON", with_protected(&b64.encode("nope")), "protected header is not JSON"),
            ("no length", with_protected(&b64.encode(r#"{"formatTail":"fQ"}"#)), "no formatLength"),
            ("past the end", with_protected(&header(u64::MAX, "}")), "formatLength past the end"),
            ("payload not JSON", with_protected(&header(3, "}")), "payload is not a JSON object"),
        ];
        for (what, doc, want) in cases {
            let err = verify_manifest(doc.as_bytes(), &[], None).unwrap_err();
            assert_eq!(err, ManifestError::Schema1Signature(want), "{what}");
        }
        let no_sigs = br#"{"schemaVersion":1,"signatures":[]}"#;
        assert_eq!(verify_manifest(no_sigs, &[], None).unwrap_err(), ManifestError::Schema1Signature("no signatures[0].protected"));
        // Content after the signed payload that the payload doesn't have: refused.
        let mut smuggled = String::from_utf8(signed_schema1(S1_PAYLOAD)).unwrap();
        let at = smuggled.rfind('}').unwrap();
        smuggled.insert_str(at, ",\"fsLayers\":[{\"blobSum\":\"sha256:x\"}]");
        let err = verify_manifest(smuggled.as_bytes(), &[], None).unwrap_err();
        assert_eq!(err, ManifestError::Schema1Signature("payload differs from the manifest without its signatures"));
    }
}
