//! Real signed schema1 manifests, as distribution 2.x and libtrust make them: a payload printed
//! with three-space indents, signed (JWS, ES256, a fresh EC P-256 key each time) and the
//! signatures spliced in before the payload's closing brace. The digest of such a manifest is the
//! sha256 of the payload, so every signing of one payload has the same digest and other bytes.
#![allow(dead_code)]

use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde::Serialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// The signed schema1 media type.
pub const SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// `value` printed the way distribution prints schema1 payloads (three-space indents).
pub fn pretty3(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, serde_json::ser::PrettyFormatter::with_indent(b"   "));
    value.serialize(&mut ser).expect("serialize JSON");
    out
}

/// The schema1 payload of an image with these layers (newest first, as schema1 lists them).
pub fn payload(name: &str, tag: &str, layers_newest_first: &[String]) -> Vec<u8> {
    let fs_layers: Vec<Value> = layers_newest_first.iter().map(|d| json!({"blobSum": d})).collect();
    let history: Vec<Value> = layers_newest_first
        .iter()
        .map(|d| json!({"v1Compatibility": json!({"id": d.trim_start_matches("sha256:"), "os": "linux"}).to_string()}))
        .collect();
    pretty3(&json!({
        "schemaVersion": 1,
        "name": name,
        "tag": tag,
        "architecture": "amd64",
        "fsLayers": fs_layers,
        "history": history,
    }))
}

/// The payload of a schema2 image manifest converted to schema1, as distribution does for a
/// client that accepts no v2 type.
pub fn converted_payload(name: &str, tag: &str, schema2: &[u8]) -> Option<Vec<u8>> {
    let v: Value = serde_json::from_slice(schema2).ok()?;
    let mut layers: Vec<String> = v["layers"].as_array()?.iter().filter_map(|l| l["digest"].as_str().map(String::from)).collect();
    layers.reverse();
    Some(payload(name, tag, &layers))
}

/// `sha256:<hex>` of a payload: the digest of every signed manifest made from it.
pub fn digest(payload: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(payload)))
}

/// libtrust's key ID: the first 240 bits of the sha256 of the key's DER form, base32 in groups of 4.
fn key_id(public_point: &[u8]) -> String {
    // SubjectPublicKeyInfo of an uncompressed P-256 point.
    let mut der = hex::decode("3059301306072a8648ce3d020106082a8648ce3d030107034200").expect("hex");
    der.extend_from_slice(public_point);
    let hash = Sha256::digest(&der);
    let b32 = base32(&hash[..30]);
    b32.as_bytes().chunks(4).map(|c| String::from_utf8_lossy(c).into_owned()).collect::<Vec<_>>().join(":")
}

fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let (mut out, mut acc, mut bits) = (String::new(), 0u32, 0u32);
    for b in bytes {
        acc = (acc << 8) | u32::from(*b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((acc >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((acc << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// `payload` signed with a fresh EC P-256 key, in libtrust's pretty-signature layout.
pub fn sign(payload: &[u8]) -> Vec<u8> {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("generate key");
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).expect("load key");
    let point = key.public_key().as_ref();
    let close = payload.iter().rposition(|b| *b == b'}').expect("a JSON object");
    let length = payload[..close].iter().rposition(|b| !b.is_ascii_whitespace()).map_or(0, |i| i + 1);
    let tail = &payload[length..];
    let protected = B64.encode(
        json!({"formatLength": length, "formatTail": B64.encode(tail), "time": "2024-01-01T00:00:00Z"}).to_string(),
    );
    let signing_input = format!("{protected}.{}", B64.encode(payload));
    let signature = key.sign(&rng, signing_input.as_bytes()).expect("sign");
    let jwk = json!({
        "crv": "P-256", "kid": key_id(point), "kty": "EC",
        "x": B64.encode(&point[1..33]), "y": B64.encode(&point[33..65]),
    });
    let signatures = json!([{
        "header": {"jwk": jwk, "alg": "ES256"},
        "signature": B64.encode(signature.as_ref()),
        "protected": protected,
    }]);
    let mut out = payload[..length].to_vec();
    out.extend_from_slice(b",\n   \"signatures\": ");
    let sigs = pretty3(&signatures);
    // Indent the signature block one level, as libtrust does.
    out.extend_from_slice(String::from_utf8_lossy(&sigs).replace('\n', "\n   ").as_bytes());
    out.extend_from_slice(tail);
    out
}

/// The payload a signed manifest carries (`formatLength` bytes plus `formatTail`), and whether
/// its first signature verifies: what a schema1 client checks.
pub fn open(signed: &[u8]) -> (Vec<u8>, bool) {
    let v: Value = serde_json::from_slice(signed).expect("JSON");
    let sig = &v["signatures"][0];
    let protected = sig["protected"].as_str().expect("protected");
    let header: Value = serde_json::from_slice(&B64.decode(protected).expect("b64")).expect("JSON");
    let length = header["formatLength"].as_u64().expect("formatLength") as usize;
    let mut payload = signed[..length].to_vec();
    payload.extend_from_slice(&B64.decode(header["formatTail"].as_str().expect("tail")).expect("b64"));
    let jwk = &sig["header"]["jwk"];
    let mut point = vec![4u8];
    point.extend(B64.decode(jwk["x"].as_str().expect("x")).expect("b64"));
    point.extend(B64.decode(jwk["y"].as_str().expect("y")).expect("b64"));
    let input = format!("{protected}.{}", B64.encode(&payload));
    let sig_bytes = B64.decode(sig["signature"].as_str().expect("signature")).expect("b64");
    let ok = ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, &point)
        .verify(input.as_bytes(), &sig_bytes)
        .is_ok()
        && jwk["kid"].as_str() == Some(key_id(&point).as_str());
    (payload, ok)
}
