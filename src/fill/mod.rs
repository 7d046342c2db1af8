//! Blob fills: one upstream download per digest at a time, written through the storage seam
//! ([`crate::store::BlobBackend`]), hashed on the way, and committed only when size and digest check
//! out. Any number of readers follow a fill ([`FillReader`]) by reading what has been written so far
//! ([`crate::store::PartialBlob`]), so every waiter gets bytes as they arrive. Reading blobs that
//! are stored is the store's business (`Store::read_blob`).
//!
//! A reader of the whole blob gets its last byte only once the digest has checked out, so wrong
//! bytes end in a cut connection, never a complete body. A range can't be checked by its client,
//! so a request for one waits for the fill's verdict instead ([`Fill::verified`]) and then reads
//! the verified file; a fill that passes its bytes through never has them there.
//!
//! The fill runs as its own task: a reader that goes away does not disturb it or the other readers.
//! A failed fill fails every reader (their responses are cut) and stores nothing. The task owns a
//! `FillGuard`: however the fill ends (also by a panic or by its task being cancelled) the fill
//! leaves the map and its readers are told, so no later request waits for a fetch that is gone.
//!
//! Fills keep to a disk budget and a time budget. Whether a blob can be stored is decided up front
//! from its announced size (`max_size`, and room among all temporaries and in free space, see
//! [`crate::store::TempBudget`]); a body without a length is stored batch by batch until the budget
//! runs out. A blob that can't be stored is passed through to its readers from memory and ends
//! when they do. A fill nobody reads any more goes on only while it gets a minimum rate over a
//! window, and for a limited time ([`crate::config::FillBudget`]); at shutdown it is abandoned once
//! the drain time is over ([`Fills::drain`]).
//!
//! Fills are joined per upstream and digest, never across upstreams, so a hostile or stalled upstream
//! hurts only its own requests. Within an upstream a request may join a fill for another repository;
//! if that repository is refused, the request starts its own ([`Join::OwnRepository`]).
//!
//! # Where each concept lives
//! - `map`: the running fills ([`Fills`]) by upstream and digest, which one a request may
//!   [`Join`], what it gets ([`Readable`]: stored, or a fill), and the `FillGuard` that takes a fill
//!   out of the map however its task ends; the drain at shutdown.
//! - `handle`: one running fill as requests and readers see it ([`Fill`]): its state
//!   ([`FillState`]), waiting for it to start, and its [`Verdict`] for a range.
//! - `job`: the fill's task: connect (the bucket or the upstream), decide whether the blob can be
//!   stored, download in batches, hash, write, verify, commit, hand the upload its go-ahead.
//! - `window`: the newest bytes in memory (the recent window) for readers close behind the fill,
//!   and the relay window of a fill that passes its bytes through, which waits for its slowest
//!   reader.
//! - `pace`: when a fill nobody reads is given up (`unread_min_rate`, `rate_window`,
//!   `unread_max`).
//! - `reader`: [`FillReader`], one client following a fill, from memory or the fill's file.
//! - `sink`: [`Sink`], all a fill asks of the store (stored already? room, begin, commit, hold in
//!   use; a copy from a tier behind, publish to it, discard a bad copy), which the store
//!   implements: a fill never sees the store's parts.
//! - `error`: [`FillError`], why a fill failed and who is to blame.

mod error;
mod handle;
mod job;
mod map;
mod pace;
mod reader;
mod sink;
mod window;

pub use error::FillError;
pub use handle::{Fill, FillState, Verdict};
pub use map::{Fills, Join, Readable, Readers, Via};
pub use reader::FillReader;
pub use sink::Sink;
