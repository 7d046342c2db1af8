//! The active half of the members' health: every [`PROBE_EVERY`], one task probes the members
//! taken for down (`GET /_fleet/v1/ping` with the secret), so a member that is back is up again
//! within seconds, in the metrics and the status page, without a client's request paying for the
//! first try; and a member still down stays down, so no request pays for trying it either.

use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::future::join_all;
use tokio::time::Instant;

use super::peer::CONNECT_TIMEOUT;
use super::Fleet;

/// How often the members taken for down are probed.
pub const PROBE_EVERY: Duration = Duration::from_secs(2);
/// How long one probe may take: a connection, and an answer that needs no work.
const PROBE_TIMEOUT: Duration = CONNECT_TIMEOUT.saturating_add(Duration::from_secs(1));

/// Probe the members of `fleet` taken for down every [`PROBE_EVERY`], for as long as the fleet
/// exists: the task holds it weakly and ends once the server that owns it is gone.
pub fn spawn_prober(fleet: &Arc<Fleet>) {
    let weak: Weak<Fleet> = Arc::downgrade(fleet);
    tokio::spawn(async move {
        let mut every = tokio::time::interval(PROBE_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let Some(fleet) = weak.upgrade() else { return };
            probe_down(&fleet).await;
        }
    });
}

/// Probe every member taken for down at once: up on an answer, down for a while longer without.
pub async fn probe_down(fleet: &Fleet) {
    let down = fleet.members().down();
    let probes = down.iter().map(|member| fleet.client().ping(member, PROBE_TIMEOUT));
    for (member, answer) in down.iter().zip(join_all(probes).await) {
        match answer {
            Ok(()) => {
                tracing::info!(%member, "a member taken for down answered its probe; it is up");
                fleet.members().answered(member);
            }
            Err(why) => {
                tracing::debug!(%member, error = %why, "a member taken for down failed its probe");
                fleet.members().failed(member, Instant::now());
            }
        }
    }
}
