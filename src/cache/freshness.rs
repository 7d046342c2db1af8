//! The tag freshness policy, pure: when a remembered tag answer is served without asking the
//! upstream, when the shared bucket is asked for a newer one, when the upstream is asked, when a
//! stale answer stands in for an upstream that is unavailable, and when an answer that hasn't
//! changed is written to the bucket again. The time is an argument (the cache reads it from its
//! [`Clock`]), so every case is a row of a table.

use std::time::Duration;

use crate::oci::Digest;
use crate::store::TagAnswer;

/// How often an answer (or tag list) that hasn't changed is written to the shared bucket again:
/// every bucket write costs, and the other nodes only see the answer as a little older than it
/// is (and revalidate a little early).
pub const REPUBLISH: Duration = Duration::from_secs(60);

/// Where the cache reads the time: the system's clock in production, one a test moves.
pub trait Clock: Send + Sync {
    /// Unix seconds now.
    fn now_secs(&self) -> u64;
}

/// The system's clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_secs(&self) -> u64 {
        crate::store::now_secs()
    }
}

/// What the shared bucket said of a tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SharedSays<'a> {
    /// It wasn't asked (yet).
    NotAsked,
    /// It was asked (or there is none): its answer, if it had one.
    Answered(Option<&'a TagAnswer>),
}

/// Which of the remembered answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    /// This node's (in the index).
    Local,
    /// The shared bucket's: newer than this node's, so the index takes it.
    Shared,
}

/// What to do next for a request for a tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Serve the remembered answer without asking the upstream (if its manifest is stored and the
    /// client accepts it; if not, revalidate).
    Serve,
    /// Ask the shared bucket for a newer answer, then decide again with what it said.
    AskShared,
    /// Ask the upstream what the tag points at now.
    Revalidate,
}

/// What [`decide`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The answer remembered: the newer of this node's and the bucket's (this node's on a tie).
    pub remembered: Option<Which>,
    /// What to do.
    pub action: Action,
    /// Whether the remembered answer, marked stale, stands in for an upstream that turns out to be
    /// unavailable (it was confirmed within `stale_max`); if not, the upstream's error is the answer.
    pub stale: bool,
}

/// What to do for a tag this node remembers as `local`, the shared tier as `shared`, at `now` (unix
/// seconds): an answer confirmed less than `ttl` ago is served; an older one (or none) is first
/// looked for in the bucket, then revalidated; one confirmed less than `stale_max` ago stands in
/// for an upstream that is unavailable. A time in the future counts as now.
pub fn decide(local: Option<&TagAnswer>, shared: SharedSays<'_>, now: u64, ttl: Duration, stale_max: Duration) -> Decision {
    let age = |a: &TagAnswer| age(a.checked_at, now);
    let (remembered, answer) = match shared {
        SharedSays::NotAsked if local.is_none_or(|l| age(l) >= ttl) => {
            return Decision { remembered: local.map(|_| Which::Local), action: Action::AskShared, stale: false };
        }
        SharedSays::Answered(Some(theirs)) if local.is_none_or(|l| theirs.checked_at > l.checked_at) => (Which::Shared, theirs),
        _ => match local {
            Some(local) => (Which::Local, local),
            None => return Decision { remembered: None, action: Action::Revalidate, stale: false },
        },
    };
    let action = if age(answer) < ttl { Action::Serve } else { Action::Revalidate };
    Decision { remembered: Some(remembered), action, stale: age(answer) < stale_max }
}

/// How long before `now` something learnt `at` was learnt (unix seconds; a time in the future is
/// now).
pub fn age(at: u64, now: u64) -> Duration {
    Duration::from_secs(now.saturating_sub(at))
}

/// Whether an answer the upstream just confirmed (that `tag` names `digest`, at `now`) is written to
/// the shared bucket, given the answer remembered `before`: unless it names the same digest and was
/// written there less than [`REPUBLISH`] ago. Measured from the last write, not from the last
/// confirmation: a tag revalidated more often than that is still written again every
/// [`REPUBLISH`].
pub fn republish_tag(before: Option<&TagAnswer>, digest: &Digest, now: u64) -> bool {
    republish(before.is_some_and(|b| b.digest == *digest), before.and_then(|b| b.published_at), now)
}

/// Whether what the upstream just confirmed is written to the shared bucket: when it differs
/// from what was remembered (`same` false), was never written (`published_at` `None`), or was
/// written [`REPUBLISH`] or more before `now`.
pub fn republish(same: bool, published_at: Option<u64>, now: u64) -> bool {
    !(same && published_at.is_some_and(|at| now.saturating_sub(at) < REPUBLISH.as_secs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 100_000;

    fn answer(age: u64, published_age: Option<u64>) -> TagAnswer {
        TagAnswer { digest: Digest::sha256_of(b"m"), checked_at: NOW - age, published_at: published_age.map(|a| NOW - a) }
    }

    #[test]
    fn decisions() {
        use Action::*;
        use Which::*;
        let (min, hour) = (Duration::from_secs(60), Duration::from_secs(3600));
        /// This node's answer's age, the bucket's (`None`: not asked; `Some(None)`: none), tag_ttl,
        /// stale_max, and what is decided.
        type Case = (Option<u64>, Option<Option<u64>>, Duration, Duration, Decision);
        let d = |remembered, action, stale| Decision { remembered, action, stale };
        let cases: &[Case] = &[
            // Fresh here: served, the bucket not asked.
            (Some(10), None, min, hour, d(Some(Local), Serve, true)),
            (Some(10), None, min, Duration::ZERO, d(Some(Local), Serve, false)),
            // Not fresh here, or unknown: ask the bucket first.
            (Some(120), None, min, hour, d(Some(Local), AskShared, false)),
            (None, None, min, hour, d(None, AskShared, false)),
            // tag_ttl 0 (the default): nothing is ever fresh.
            (Some(0), None, Duration::ZERO, hour, d(Some(Local), AskShared, false)),
            (Some(0), Some(None), Duration::ZERO, hour, d(Some(Local), Revalidate, true)),
            // The bucket has nothing: revalidate, this node's answer the stale fallback.
            (Some(120), Some(None), min, hour, d(Some(Local), Revalidate, true)),
            (Some(7200), Some(None), min, hour, d(Some(Local), Revalidate, false)),
            (None, Some(None), min, hour, d(None, Revalidate, false)),
            // Another node confirmed it since: the bucket's, served if fresh.
            (Some(120), Some(Some(5)), min, hour, d(Some(Shared), Serve, true)),
            (None, Some(Some(5)), min, hour, d(Some(Shared), Serve, true)),
            (Some(7200), Some(Some(600)), min, hour, d(Some(Shared), Revalidate, true)),
            (Some(9000), Some(Some(7200)), min, hour, d(Some(Shared), Revalidate, false)),
            // The bucket's is older, or as old: this node's.
            (Some(120), Some(Some(600)), min, hour, d(Some(Local), Revalidate, true)),
            (Some(120), Some(Some(120)), min, hour, d(Some(Local), Revalidate, true)),
            // stale_max 0: never stale.
            (Some(120), Some(None), min, Duration::ZERO, d(Some(Local), Revalidate, false)),
        ];
        for (local, shared, ttl, stale_max, want) in cases {
            let local_answer = local.map(|a| answer(a, None));
            let shared_answer = shared.map(|b| b.map(|a| answer(a, None)));
            let says = match &shared_answer {
                None => SharedSays::NotAsked,
                Some(theirs) => SharedSays::Answered(theirs.as_ref()),
            };
            let got = decide(local_answer.as_ref(), says, NOW, *ttl, *stale_max);
            assert_eq!(got, *want, "local {local:?}, shared {shared:?}, ttl {ttl:?}, stale_max {stale_max:?}");
        }
    }

    #[test]
    fn an_answer_confirmed_in_the_future_is_fresh() {
        let future = TagAnswer { checked_at: NOW + 50, ..answer(0, None) };
        let got = decide(Some(&future), SharedSays::NotAsked, NOW, Duration::from_secs(1), Duration::from_secs(1));
        assert_eq!(got, Decision { remembered: Some(Which::Local), action: Action::Serve, stale: true });
    }

    #[test]
    fn republishing() {
        let other = Digest::sha256_of(b"other");
        let same = Digest::sha256_of(b"m");
        /// The answer before (confirmed 5 s ago, written to the bucket so long ago), the digest
        /// confirmed now, whether it is written.
        type Case<'a> = (Option<Option<u64>>, &'a Digest, bool);
        let cases: &[Case] = &[
            (None, &same, true),
            (Some(None), &same, true),
            (Some(Some(5)), &same, false),
            (Some(Some(59)), &same, false),
            (Some(Some(60)), &same, true),
            (Some(Some(5)), &other, true),
        ];
        for (before, digest, want) in cases {
            let before = before.map(|p| answer(5, p));
            assert_eq!(republish_tag(before.as_ref(), digest, NOW), *want, "{before:?} {digest}");
        }
    }

    /// The bug this policy fixed: the throttle measured from the last confirmation, so a tag
    /// revalidated every 30 s was written to the bucket once and never again.
    #[test]
    fn a_tag_revalidated_more_often_than_republish_is_still_written_every_republish() {
        let digest = Digest::sha256_of(b"m");
        let mut before: Option<TagAnswer> = None;
        let mut written = Vec::new();
        for now in (0..=300).step_by(30).map(|s| NOW + s) {
            let publish = republish_tag(before.as_ref(), &digest, now);
            if publish {
                written.push(now - NOW);
            }
            let published_at = if publish { Some(now) } else { before.and_then(|b| b.published_at) };
            before = Some(TagAnswer { digest: digest.clone(), checked_at: now, published_at });
        }
        assert_eq!(written, [0, 60, 120, 180, 240, 300]);
    }
}
