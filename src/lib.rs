//! submitd — an authenticated SMTP submission server (MSA, RFC 6409).
//!
//! # Layout
//!
//! The modules follow the path a message takes:
//!
//! ```text
//! listener ──> session ──> auth ──> intake (submission fixes, DKIM, spool) ──> "250 queued as ID"
//!                                                         │ notify, after the commit
//!                               queue scheduler <─────────┘ ──> Courier = delivery (MX | smarthost | capture)
//!                                      └── permanent failure / expiry ──> queue::bounce (DSN, queued too)
//! ```
//!
//! - [`api`]: the HTTP API (`[api] listen`): bearer API keys, `POST /v1/messages` (JSON or
//!   `message/rfc822`) through the same intake as SMTP, status, suppressions, idempotency.
//! - [`config`]: the TOML config, its defaults and validation (`Settings`), one file per
//!   section; the floor of the crate (imports no other module).
//! - [`artefacts`]: the files the config points to (certificate, users, DKIM keys, queue
//!   directory), checked before a start or a reload.
//! - [`tls`]: PEM files to a rustls `ServerConfig`; self-signed development certificates.
//! - [`server`]: the composition root. `Server::bind` loads every artefact, opens the spool,
//!   builds the verifier, quota and queue scheduler and binds the sockets; `run` serves and
//!   drains on shutdown. Holds what new connections are served with, swapped by its `Reloader`.
//! - [`listener`]: accept and admission: binds the submission (587, STARTTLS), submissions
//!   (465, implicit TLS) and metrics sockets, enforces connection limits, spawns one session
//!   task per connection. With the session driver and outbound delivery, the only code that
//!   touches sockets: the PROXY header reader, the `GET /metrics` responder and the control
//!   socket's server side live under it.
//! - [`proxy`]: the HAProxy PROXY protocol v1/v2 header in front of both ports (sans-IO parser
//!   and the reader's decisions, which never consume past the header) and
//!   `listen.trusted_proxies`.
//! - [`session`]: the SMTP conversation. Everything in it but `driver` is sans-IO: the command
//!   parser, the line buffer, the DATA and BDAT readers, the state machine, the replies, and
//!   `pump` (one step of the session over buffered input, shared with the fuzz target).
//! - [`auth`]: SASL PLAIN and LOGIN decoding (pure), the users file, argon2id verification on a
//!   bounded pool off the reactor, sender ownership, and the cross-connection defences (login
//!   throttling, per-user sending limits, suspension).
//! - [`intake`]: message admission between the end of DATA and the `250`: prepare (the
//!   submission headers), sign (DKIM), store (spool), notify (scheduler, sending ledger); a
//!   typed `AcceptError`.
//! - [`submission`]: the RFC 6409 section 8 fixes (Received, Message-ID, Date), the header
//!   From check (no group syntax, every written address owned) and the hop count.
//! - [`outcome`]: what a reply means, as types (`AuthResult`, `Refusal`): carried in the
//!   session's replies, counted by metrics, never read back from reply text.
//! - [`headers`]: where a message's header section ends (the one definition).
//! - [`clock`]: Unix time and RFC 5322 dates.
//! - [`dkim`]: DKIM signing (RFC 6376, RSA and Ed25519) of the fixed message before it is
//!   spooled, and `dkim keygen`.
//! - [`dsn`]: the DSN (RFC 3461) and REQUIRETLS (RFC 8689) parameters, parsed and checked, as
//!   the session, the queue and delivery share them.
//! - [`queue`]: queue IDs, the durable spool (every write through one `fsio::SpoolIo`, so tests
//!   can fail any step), the scheduler (retries, per-recipient state, bounce policy), RFC 3464
//!   DSNs (`bounce`), the `Courier` trait it delivers through, and the `queue` commands
//!   (`control`), which coordinate with a running server through per-message locks.
//! - [`delivery`]: the `Courier`: MX resolution, one outbound SMTP attempt through lettre with
//!   an outcome per recipient, connection reuse, and the capture destination; MTA-STS policies
//!   (`mta_sts`, fetched through `https`) and TLS-RPT counts and reports (`tlsrpt`).
//! - [`ipkey`]: the client address as the per-address limits count it (IPv6 per network).
//! - [`logsafe`]: escaping of network-supplied text before it reaches a log line.
//! - [`control_socket`]: `<queue.dir>/submitd.sock`, how `submitd reload` and `queue retry`
//!   reach a running server (peer credentials checked; never a signal to a pid from a file):
//!   the protocol and the CLI's client.
//! - [`health`]: `submitd health`, one greeting from the first listen address (probes).
//! - [`reload`]: SIGHUP / `submitd reload`: re-read and check config, certificate, DKIM keys
//!   and users (each once) for new sessions, refusing a bad config.
//! - [`pidfile`]: the `<queue.dir>/submitd.pid` lock (one server per queue directory).
//! - [`metrics`]: Prometheus counters, gauges and histograms fed by the stages above (served
//!   at `GET /metrics` on `[metrics] listen` by `listener::metrics_http`).
//! - [`fsown`]: atomic file replacement; rewritten files keep their owner and group (the CLI
//!   runs as root, the server as a service account).
//! - [`dev`]: conveniences for `config/dev.toml` only (self-signed cert, dev user on first run).
//! - [`webhook`]: `[[webhook]]`: delivery events queued durably per endpoint (an `events`
//!   sink) and POSTed, signed the Standard Webhooks way, by one dispatcher per endpoint.

pub mod api;
pub mod artefacts;
pub mod auth;
pub mod clock;
pub mod config;
pub mod control_socket;
pub mod delivery;
pub mod dev;
pub mod dkim;
pub mod dsn;
pub mod events;
pub mod fsown;
pub mod headers;
pub mod health;
pub mod intake;
pub mod ipkey;
pub mod listener;
pub mod logsafe;
pub mod metrics;
pub mod outage;
pub mod outcome;
pub mod pidfile;
pub mod proxy;
pub mod queue;
pub mod reload;
pub mod server;
pub mod session;
pub mod state;
pub mod status;
pub mod submission;
pub mod suppression;
pub mod tls;
pub mod webhook;
