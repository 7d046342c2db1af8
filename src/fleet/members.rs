//! Who the members are now, and which of them are up: the static list, or what `peers_dns`
//! resolved last; and passive health. A member that fails to answer is down for [`DOWN_FOR`],
//! then tried again; the first answer marks it up. Only members taken for down are probed (by
//! `fleet::probe`): a fleet whose members are all up sends nothing while it is idle.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use tokio::time::Instant;

use super::hrw;
use super::member::MemberId;
use super::settings::{Peers, MAX_MEMBERS};
use crate::metrics::FleetMetrics;
use crate::sync::lock;

/// How long a member that failed to answer is left alone.
pub const DOWN_FOR: Duration = Duration::from_secs(5);
/// How often `peers_dns` is resolved again.
pub const RESOLVE_EVERY: Duration = Duration::from_secs(10);
/// How long one resolution of `peers_dns` may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// The members and their health.
pub struct Members {
    node: MemberId,
    // A std RwLock/Mutex: held only to copy or replace, never across an await.
    list: RwLock<Arc<[MemberId]>>,
    /// Members that failed, until when they are left alone. Bounded: only listed members are
    /// marked, and a new list drops the others.
    down: Mutex<HashMap<MemberId, Instant>>,
    /// Where the members' states are shown, if anywhere.
    metrics: Option<FleetMetrics>,
}

impl Members {
    /// The members of `peers` as far as known now (for `peers_dns`, only this node until the first
    /// resolution: it owns every key meanwhile, as a node alone does).
    pub fn new(node: MemberId, peers: &Peers) -> Members {
        let list: Arc<[MemberId]> = match peers {
            Peers::Static(list) => list.clone().into(),
            Peers::Dns { .. } => Arc::new([node.clone()]),
        };
        Members { node, list: RwLock::new(list), down: Mutex::default(), metrics: None }
    }

    /// These members, their states shown in `metrics` (as they change).
    pub fn with_metrics(mut self, metrics: FleetMetrics) -> Members {
        self.metrics = Some(metrics);
        self.show();
        self
    }

    /// Show the members' states in the metrics.
    fn show(&self) {
        if let Some(metrics) = &self.metrics {
            let states: Vec<(String, bool)> = self.states().into_iter().map(|(m, up)| (m.to_string(), up)).collect();
            metrics.members(&states);
        }
    }

    /// This member.
    pub fn node(&self) -> &MemberId {
        &self.node
    }

    /// Every member now.
    pub fn list(&self) -> Arc<[MemberId]> {
        self.list.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Replace the list (a new DNS answer): this node is always a member; at most [`MAX_MEMBERS`].
    pub fn set(&self, mut list: Vec<MemberId>) {
        list.sort();
        list.dedup();
        if !list.contains(&self.node) {
            list.push(self.node.clone());
        }
        list.truncate(MAX_MEMBERS);
        if !list.contains(&self.node) {
            list.pop();
            list.push(self.node.clone());
        }
        lock(&self.down).retain(|m, _| list.contains(m));
        *self.list.write().unwrap_or_else(std::sync::PoisonError::into_inner) = list.into();
        self.show();
    }

    /// Whom this node asks for `key`, in order: the members ranked above it for the key that are
    /// up at `now`. Empty: this node owns the key (it is the highest-ranked member that is up).
    /// Asking only members ranked above itself is what keeps requests from going in a circle,
    /// however the members' views of who is up differ.
    pub fn sources(&self, key: &str, now: Instant) -> Vec<MemberId> {
        let list = self.list();
        let ranked = hrw::rank(&list, key);
        let above = ranked.iter().take_while(|m| ***m != self.node);
        above.filter(|m| self.is_up(m, now)).map(|m| (*m).clone()).collect()
    }

    /// Whether `member` is up at `now` (not marked down, or its time out is over).
    pub fn is_up(&self, member: &MemberId, now: Instant) -> bool {
        lock(&self.down).get(member).is_none_or(|until| *until <= now)
    }

    /// `member` failed to answer at `now`: leave it alone for [`DOWN_FOR`].
    pub fn failed(&self, member: &MemberId, now: Instant) {
        if self.list().contains(member) {
            lock(&self.down).insert(member.clone(), now + DOWN_FOR);
            self.show();
        }
    }

    /// `member` answered: it is up.
    pub fn answered(&self, member: &MemberId) {
        let was_down = lock(&self.down).remove(member).is_some();
        if was_down {
            self.show();
        }
    }

    /// The members marked down (whatever their time out), this node never among them.
    pub fn down(&self) -> Vec<MemberId> {
        lock(&self.down).keys().filter(|m| **m != self.node).cloned().collect()
    }

    /// Every member and whether it is up (for the metrics: a member marked down shows as
    /// down until it answers again).
    pub fn states(&self) -> Vec<(MemberId, bool)> {
        let down = lock(&self.down);
        self.list().iter().map(|m| (m.clone(), !down.contains_key(m) || m == &self.node)).collect()
    }
}

/// Resolve `host:port` every [`RESOLVE_EVERY`] into `members`, for as long as they exist. A
/// failed resolution keeps the last list.
pub fn spawn_resolver(members: &Arc<Members>, host: String, port: u16) {
    let weak: Weak<Members> = Arc::downgrade(members);
    tokio::spawn(async move {
        let mut every = tokio::time::interval(RESOLVE_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let resolved = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((host.as_str(), port))).await;
            let Some(members) = weak.upgrade() else { return };
            match resolved {
                Ok(Ok(addrs)) => {
                    let list: Vec<MemberId> = addrs.take(4 * MAX_MEMBERS).map(|a: SocketAddr| MemberId::from_addr(a)).collect();
                    members.set(list);
                }
                Ok(Err(e)) => tracing::warn!(%host, error = %e, "resolving the fleet's members failed; keeping the last list"),
                Err(_) => tracing::warn!(%host, "resolving the fleet's members timed out; keeping the last list"),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(i: u8) -> MemberId {
        format!("http://10.0.0.{i}:5000").parse().unwrap()
    }

    const ZEROS: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

    #[test]
    fn sources_are_the_members_above_this_one_that_are_up() {
        // For ZEROS the order is .1, .3, .2 (the pinned vectors).
        let t0 = Instant::now();
        let peers = Peers::Static(vec![m(1), m(2), m(3)]);
        let two = Members::new(m(2), &peers);
        assert_eq!(two.sources(ZEROS, t0), [m(1), m(3)]);
        assert!(Members::new(m(1), &peers).sources(ZEROS, t0).is_empty(), "the owner asks nobody");
        assert_eq!(Members::new(m(3), &peers).sources(ZEROS, t0), [m(1)]);
        two.failed(&m(1), t0);
        assert_eq!(two.sources(ZEROS, t0), [m(3)], "down: skipped");
        assert_eq!(two.down(), [m(1)], "probed");
        assert_eq!(two.sources(ZEROS, t0 + DOWN_FOR), [m(1), m(3)], "tried again after DOWN_FOR");
        two.failed(&m(1), t0);
        two.answered(&m(1));
        assert_eq!(two.sources(ZEROS, t0), [m(1), m(3)], "up on its first answer");
        assert!(two.down().is_empty(), "no longer probed");
        two.failed(&m(9), t0);
        assert!(lock(&two.down).is_empty(), "only members are marked");
    }

    #[test]
    fn a_dns_list_always_holds_this_node_and_is_bounded() {
        let t0 = Instant::now();
        let members = Members::new(m(2), &Peers::Dns { host: "x".into(), port: 5000 });
        assert_eq!(&*members.list(), [m(2)], "alone until resolved");
        members.failed(&m(1), t0);
        members.set(vec![m(3), m(1), m(3)]);
        assert_eq!(&*members.list(), [m(1), m(3), m(2)]);
        members.failed(&m(1), t0);
        members.set(vec![m(3)]);
        assert!(lock(&members.down).is_empty(), "a member that left is forgotten");
        let many: Vec<MemberId> = (0..=255).map(m).collect();
        members.set(many);
        let list = members.list();
        assert_eq!(list.len(), MAX_MEMBERS);
        assert!(list.contains(&m(2)));
        assert_eq!(members.states().len(), MAX_MEMBERS);
    }
}
