//! A fleet: several regcache nodes that fetch each blob from the upstream once between them.
//!
//! Every blob has an owner among the members that are up, by rendezvous hashing of its digest
//! ([`hrw`], pinned as protocol). A node that misses a blob (not in its hot tier, not in the
//! bucket) and is not its owner asks the owner over the member-to-member API (`/_fleet/` on the
//! main listener, refused without the fleet's secret, [`auth`]); the owner joins or starts its
//! normal fill and streams the bytes as they arrive. A tag is owned the same way, by the key
//! `<upstream>/<repository>:<tag>` ([`tag_key`]): a node that must revalidate a tag it doesn't own
//! asks the owner (`cache::fleet_tag`), so a burst of clients spread over the fleet causes one
//! upstream request. Who the members are and which are up is [`members`]' business (static
//! `peers`, or `peers_dns` resolved every 10 s; passive health).

pub mod auth;
pub mod hrw;
pub mod member;
pub mod members;
pub mod owner;
pub mod peer;
pub mod settings;
pub mod source;

use std::sync::Arc;

use crate::metrics::FleetMetrics;
use crate::oci::{Tag, UpstreamRepo};

pub use member::MemberId;
pub use members::Members;
pub use settings::{FleetSettings, Peers, RawFleet, Secret};

/// How a fill in a fleet got its blob, or what went wrong on the way: the `outcome` label of
/// `regcache_fleet_fills_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FleetOutcome {
    /// A member had the blob stored.
    PeerHit,
    /// A member streamed it from its own fill.
    PeerFill,
    /// A member asked failed to answer, or its stream broke off (it is taken for down).
    OwnerDown,
    /// No member could stream (the rest of) the blob: the upstream was asked.
    FellBackUpstream,
}

impl FleetOutcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            FleetOutcome::PeerHit => "peer_hit",
            FleetOutcome::PeerFill => "peer_fill",
            FleetOutcome::OwnerDown => "owner_down",
            FleetOutcome::FellBackUpstream => "fell_back_upstream",
        }
    }
}

/// How a tag revalidation in a fleet went: the `outcome` label of
/// `regcache_fleet_tag_revalidations_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TagOutcome {
    /// A member (the tag's owner, or the next one up) answered, and its answer verified.
    PeerAnswer,
    /// A member asked failed to answer (it is taken for down).
    OwnerDown,
    /// A member's answer failed verification (bytes not matching the digest it claimed, not a
    /// manifest, not what the client accepts): refused, and the member taken for down.
    Refused,
    /// No member answered usably: this node asked the upstream itself.
    FellBackUpstream,
}

impl TagOutcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            TagOutcome::PeerAnswer => "peer_answer",
            TagOutcome::OwnerDown => "owner_down",
            TagOutcome::Refused => "refused",
            TagOutcome::FellBackUpstream => "fell_back_upstream",
        }
    }
}

/// The key a tag is owned by: `<upstream>/<repository>:<tag>`, the upstream by its configured name
/// and the repository by the name the upstream knows (so `alpine` and `library/alpine` are one).
pub fn tag_key(repo: &UpstreamRepo, tag: &Tag) -> String {
    format!("{repo}:{tag}")
}

/// This node's view of the fleet: the members, their health, and the shared secret.
pub struct Fleet {
    members: Arc<Members>,
    metrics: FleetMetrics,
    secret: Secret,
    client: peer::PeerClient,
}

impl Fleet {
    /// The fleet of `settings`; with `peers_dns`, its resolution runs in the background (on the
    /// current tokio runtime) for as long as the fleet exists.
    pub fn start(settings: &FleetSettings, metrics: FleetMetrics) -> Arc<Fleet> {
        let members = Arc::new(Members::new(settings.node.clone(), &settings.peers).with_metrics(metrics.clone()));
        if let Peers::Dns { host, port } = &settings.peers {
            members::spawn_resolver(&members, host.clone(), *port);
        }
        Arc::new(Fleet { members, metrics, secret: settings.secret.clone(), client: peer::PeerClient::new(settings.secret.clone()) })
    }

    /// The members and their health.
    pub fn members(&self) -> &Arc<Members> {
        &self.members
    }

    /// Count `outcome`.
    pub fn count(&self, outcome: FleetOutcome) {
        self.metrics.outcome(outcome.as_str());
    }

    /// Count a tag revalidation's `outcome`.
    pub fn count_tag(&self, outcome: TagOutcome) {
        self.metrics.tag_outcome(outcome.as_str());
    }

    /// The client for the other members.
    pub fn client(&self) -> &peer::PeerClient {
        &self.client
    }

    /// The shared secret.
    pub fn secret(&self) -> &Secret {
        &self.secret
    }
}
