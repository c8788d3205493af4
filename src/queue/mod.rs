//! The queue: message IDs ([`id`]), the durable spool ([`spool`]) and the file operations it
//! writes through ([`fsio`]); the [`scheduler`] that attempts queued messages through a
//! [`courier::Courier`] and queues DSNs ([`bounce`]) for those that fail; the `queue`
//! commands ([`control`]).
//!
//! # On-disk format, version 2
//!
//! Everything lives in `queue.dir` (mode 0700). One accepted message is one file, `ID.q`
//! ([`qfile`] has the byte layout): a 16-octet header, the content exactly as submitted, then
//! envelope records ([`spool::Envelope`], JSON with `"version": 2`: the sender, the recipients
//! each with a delivery state, the user, times, and the `prefix` of header fields submitd puts
//! in front of the content when relaying), each followed by a trailer with its offset, length
//! and CRC. The last valid record is the current state; a state change appends one. An
//! optional `"held": true` marks a message on hold (`submitd queue hold`).
//!
//! The content is written as it arrives, to `ID.q.tmp`; the commit is: first record, fsync,
//! rename to `ID.q`, directory fsync, and only then `250`. A `.tmp` is an interrupted write and
//! is removed at start-up. A committed file that cannot be delivered as it is is moved to
//! `quarantine/` by the scheduler's start-up load (see [`spool`]). A version 1 queue (`ID.env`
//! and `ID.msg`) is migrated at start-up ([`migrate`]). A message waiting for a later
//! attempt lives in `deferred/XY/ID.q` (`XY`: the ID's last two hex digits), out of the top
//! directory where new mail comes and goes ([`spool::DEFERRED_DIR`]).

pub mod bounce;
pub mod control;
pub mod courier;
pub mod fsio;
pub mod id;
pub mod migrate;
pub mod polite;
pub mod qfile;
pub mod scheduler;
pub mod spool;
pub mod startup;

pub use courier::{Courier, Job, Outcome};
pub use id::QueueId;
pub use spool::{
    Envelope, EnvelopeError, Origin, Recipient, RecipientState, Spool, SpoolError, SpoolFailure,
};
