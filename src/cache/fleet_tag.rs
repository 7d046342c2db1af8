//! A tag revalidated through the fleet: a node that doesn't own `<upstream>/<repository>:<tag>`
//! asks the members ranked above it for the tag (its owner first) what it names now, instead of
//! the upstream; the owner answers from what it remembers or revalidates itself (one upstream
//! request for a burst of clients spread over the fleet). A member's answer is verified as an
//! upstream's is: the manifest's bytes must hash to the digest it claims (`verify_manifest`), and
//! be of a type the client accepts. A member that fails to answer, or whose answer fails, is taken
//! for down and the next is asked; when none answers, the upstream.

use std::time::Duration;

use tokio::time::Instant;

use super::CacheError;
use crate::fleet::peer::{PeerError, PeerTag, TagAsk};
use crate::fleet::{Fleet, MemberId, TagOutcome};
use crate::oci::{verify_manifest, Digest};
use crate::store::{Store, StoredManifest};
use crate::upstream::{ManifestHead, Upstream};

/// What a tag names now, as one revalidation found it.
#[derive(Clone, Debug)]
pub(super) enum Revalidated {
    /// The upstream's `HEAD` (`None`: it gave no digest, or has no `HEAD`).
    Upstream(Option<ManifestHead>),
    /// A member's answer, verified: the digest, and its manifest (stored now) unless the member
    /// said it is still the digest this node knows.
    Member(Digest, Option<StoredManifest>),
}

/// Ask `members` in order what `ask.tag` names now: the first answer that verifies (its manifest
/// stored); `None` when no member answered usably (or one answered about the tag itself, e.g.
/// 404): the caller asks the upstream, as without a fleet.
pub(super) async fn ask_members(
    fleet: &Fleet,
    store: &Store,
    up: &Upstream,
    members: Vec<MemberId>,
    ask: &TagAsk,
) -> Result<Option<Revalidated>, CacheError> {
    // The owner may need a HEAD and a GET of its upstream.
    let response = up.config().response_timeout;
    let header_timeout = response.saturating_mul(2).saturating_add(crate::fleet::peer::CONNECT_TIMEOUT);
    let body_timeout = up.config().idle_timeout.max(Duration::from_secs(1));
    for member in members {
        if !fleet.members().is_up(&member, Instant::now()) {
            continue;
        }
        let outcome = match fleet.client().get_tag(&member, ask, header_timeout, body_timeout).await {
            Ok(answer) => match verified(ask, answer) {
                Ok((digest, manifest)) => {
                    let stored = manifest.map(|m| store.put_manifest(&digest, &m)).transpose()?;
                    fleet.members().answered(&member);
                    fleet.count_tag(TagOutcome::PeerAnswer);
                    return Ok(Some(Revalidated::Member(digest, stored)));
                }
                Err(why) => {
                    tracing::warn!(%member, repo = %ask.repo, tag = %ask.tag, error = %why, "refused a member's answer for a tag; it is taken for down for a while");
                    TagOutcome::Refused
                }
            },
            Err(PeerError::Answered(status)) => {
                tracing::debug!(%member, repo = %ask.repo, tag = %ask.tag, %status, "a member answered about the tag; asking the upstream");
                fleet.members().answered(&member);
                break;
            }
            Err(PeerError::Down(why)) => {
                tracing::warn!(%member, repo = %ask.repo, tag = %ask.tag, error = %why, "a member did not answer; it is taken for down for a while");
                TagOutcome::OwnerDown
            }
        };
        fleet.members().failed(&member, Instant::now());
        fleet.count_tag(outcome);
    }
    fleet.count_tag(TagOutcome::FellBackUpstream);
    Ok(None)
}

/// A member's answer checked as an upstream's would be: a "not modified" only for the digest
/// asked about; bytes that are a manifest hashing to the digest claimed, of a type the client
/// accepts (its media type from the manifest itself). Why not, otherwise.
fn verified(ask: &TagAsk, answer: PeerTag) -> Result<(Digest, Option<StoredManifest>), String> {
    let Some(bytes) = answer.bytes else {
        if ask.known.as_ref() != Some(&answer.digest) {
            return Err(format!("answered \"not modified\" for {}, not the digest asked about", answer.digest));
        }
        return Ok((answer.digest, None));
    };
    let verified = verify_manifest(&bytes, std::slice::from_ref(&answer.digest), answer.content_type.as_deref()).map_err(|e| e.to_string())?;
    if !ask.accept.allows(&verified.media_type) {
        return Err(format!("answered a {} the client does not accept", verified.media_type));
    }
    Ok((verified.digest, Some(StoredManifest { media_type: verified.media_type, bytes })))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::oci::AcceptList;

    const SCHEMA2: &str = "application/vnd.docker.distribution.manifest.v2+json";

    #[test]
    fn a_members_answer_is_verified_as_an_upstreams() {
        let manifest = Bytes::from(format!(r#"{{"schemaVersion":2,"mediaType":"{SCHEMA2}","config":{{}},"layers":[]}}"#));
        let digest = Digest::sha256_of(&manifest);
        let other = Digest::sha256_of(b"another manifest");
        let ask = |known: Option<&Digest>, accept: &str| TagAsk {
            upstream: "docker.io".into(),
            repo: "library/app".parse().unwrap(),
            tag: "1".parse().unwrap(),
            accept: AcceptList::only(accept),
            known: known.cloned(),
            request_id: None,
        };
        let answer = |d: &Digest, bytes: Option<&Bytes>| PeerTag { digest: d.clone(), content_type: Some(SCHEMA2.into()), bytes: bytes.cloned() };
        // The digest known, the type accepted, the answer, the digest taken (`None`: refused).
        let cases: Vec<(Option<&Digest>, &str, PeerTag, Option<&Digest>)> = vec![
            (None, SCHEMA2, answer(&digest, Some(&manifest)), Some(&digest)),
            // Bytes that don't hash to the digest claimed.
            (None, SCHEMA2, answer(&other, Some(&manifest)), None),
            (None, SCHEMA2, answer(&digest, Some(&Bytes::from_static(b"not json"))), None),
            // A type the client doesn't accept.
            (None, "application/vnd.oci.image.index.v1+json", answer(&digest, Some(&manifest)), None),
            // "Not modified": only for the digest asked about.
            (Some(&digest), SCHEMA2, answer(&digest, None), Some(&digest)),
            (Some(&other), SCHEMA2, answer(&digest, None), None),
            (None, SCHEMA2, answer(&digest, None), None),
        ];
        for (known, accept, answer, want) in cases {
            let why = format!("{known:?} {accept} {answer:?}");
            let got = verified(&ask(known, accept), answer);
            assert_eq!(got.as_ref().ok().map(|(d, _)| d), want, "{why}: {got:?}");
            if let Ok((_, Some(m))) = got {
                assert_eq!((m.media_type.as_str(), &m.bytes), (SCHEMA2, &manifest));
            }
        }
    }
}
