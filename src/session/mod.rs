//! The SMTP conversation (RFC 5321, RFC 6409). Everything here but [`driver`] is sans-IO:
//!
//! - [`input`]: the bounded input buffer that yields command lines (512 octets, RFC 5321
//!   4.5.3.1.4) and raw bytes for DATA/BDAT.
//! - [`command`]: command line -> [`command::Command`].
//! - [`data`]: the DATA reader (dot-unstuffing, ends only on CRLF.CRLF, bare CR/LF detection)
//!   and the BDAT chunk accumulator (RFC 3030).
//! - [`reply`]: every reply submititd sends, in one place.
//! - [`state`]: the state machine: commands in, replies and actions out.
//! - [`pump`]: one step of the state machine over the buffered input (the driver's loop body).
//! - [`driver`]: the IO loop: reads, timeouts, STARTTLS, argon2 and spool calls.

pub mod command;
pub mod data;
pub mod driver;
pub mod input;
pub mod pump;
pub mod reply;
pub mod state;
