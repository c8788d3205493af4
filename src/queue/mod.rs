//! The queue: message IDs ([`id`]), the durable spool ([`spool`]) and the file operations it
//! writes through ([`fsio`]); the [`scheduler`] that attempts queued messages through a
//! [`courier::Courier`] and queues DSNs ([`bounce`]) for those that fail; the `queue`
//! commands ([`control`]).
//!
//! # On-disk format, version 1
//!
//! Everything lives in `queue.dir` (mode 0700). One accepted message is two files:
//!
//! - `ID.msg`: the message exactly as it will be relayed (submitted bytes with the headers
//!   submitd prepended), CRLF line endings. Never modified after it is written.
//! - `ID.env`: the envelope, one JSON object ([`spool::Envelope`]) with `"version": 1`, the
//!   sender, the recipients each with a delivery state, the user, and times. It is rewritten
//!   whole (temp file, fsync, rename) whenever a recipient's state changes. An optional
//!   `"held": true` marks a message on hold (`submitd queue hold`): the scheduler leaves it
//!   alone until `queue release`. The key is absent when false, and a missing key reads as
//!   false, so files from before holds existed load unchanged (still version 1).
//!
//! The `.env` file is the commit point: it is renamed into place after the `.msg` file, and
//! the directory is fsynced before `250` is sent. A `.msg` without an `.env` is an
//! interrupted write and is removed at start-up; so are `*.tmp` files. A committed entry that
//! cannot be delivered as it is (garbage or foreign-version `.env`, missing or truncated `.msg`)
//! is moved to `quarantine/` at start-up (see [`spool`]).

pub mod bounce;
pub mod control;
pub mod courier;
pub mod fsio;
pub mod id;
pub mod migrate;
pub mod qfile;
pub mod scheduler;
pub mod spool;

pub use courier::{Courier, Job, Outcome};
pub use id::QueueId;
pub use spool::{
    Envelope, EnvelopeError, Recipient, RecipientState, Spool, SpoolError, SpoolFailure,
};
