//! The hot tier: this node's blob directory ([`LocalBlobs`]: temporary file, verified, fsynced and
//! renamed into a content-addressed path), reading its files ([`read`]), the disk budget of the
//! fills writing into it ([`TempBudget`]), its repair and verification ([`check`]), and its
//! eviction down to `max_size` ([`evict`]).

pub(super) mod budget;
pub(super) mod check;
pub(super) mod evict;
pub(super) mod local;
pub(super) mod read;

pub use budget::{NoRoom, Reservation, TempBudget};
pub use check::{Reconciled, Verified};
pub use evict::{Evicted, EvictedKind, InUse, Usage, LOW_WATER};
pub use local::LocalBlobs;
