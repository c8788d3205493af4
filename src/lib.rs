//! submitd — an authenticated SMTP submission server (MSA, RFC 6409).
//!
//! # Layout
//!
//! The modules follow the path a message takes:
//!
//! ```text
//! listener ──> session ──> auth ──> submission fixes ──> queue (spool) ──> "250 queued as ID"
//! ```
//!
//! - [`config`]: the TOML config, its defaults and validation (`Settings`).
//! - [`tls`]: PEM files to a rustls `ServerConfig`; self-signed development certificates.
//! - [`listener`]: binds the submission (587, STARTTLS) and submissions (465, implicit TLS)
//!   sockets, enforces connection limits and spawns one session task per connection.
//! - [`session`]: the SMTP conversation. Everything in it but `driver` is sans-IO: the command
//!   parser, the line buffer, the DATA and BDAT readers, the state machine and the replies.
//! - [`auth`]: SASL PLAIN and LOGIN decoding (pure), the users file, argon2id verification off
//!   the reactor, sender ownership.
//! - [`submission`]: the RFC 6409 section 8 fixes (Received, Message-ID, Date) and the header
//!   From check.
//! - [`queue`]: queue IDs and the durable spool (temp file, fsync, rename, directory fsync).
//! - [`dev`]: conveniences for `config/dev.toml` only (self-signed cert, dev user on first run).

pub mod auth;
pub mod config;
pub mod delivery;
pub mod dev;
pub mod listener;
pub mod queue;
pub mod session;
pub mod submission;
pub mod tls;
