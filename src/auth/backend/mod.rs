//! Directory backends (`auth.backend` other than `"file"`): the password is checked by a
//! directory people already run — Dovecot's auth service, an LDAP server, a PostgreSQL table —
//! instead of `users.toml`. Each answers one [`AuthRequest`] with an [`Answer`]; everything
//! around the question (throttles, the credentials cache, single flight, suspensions, per-user
//! limits, `backend_timeout`) is the same for every backend and lives in [`super::verify`].
//!
//! The three answers are kept apart on purpose: `Ok(Some(_))` is a verified login (`235`),
//! `Ok(None)` a wrong password or unknown user (`535`, counted by the throttle), and `Err(_)` a
//! directory that could not answer (`454 4.7.0`, never counted against the user).

pub mod dovecot;
pub mod ldap;
pub mod ldap_keys;
pub mod scheme;
pub mod sql;
pub mod sql_keys;

use std::net::IpAddr;
use std::time::Duration;

use crate::config::AuthBackend;

/// The SASL mechanism the client used (Dovecot is told; the others only see the password).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    Login,
}

/// One login to check.
#[derive(Debug, Clone, Copy)]
pub struct AuthRequest<'a> {
    /// The SASL authentication identity, exactly as the client sent it.
    pub login: &'a str,
    pub password: &'a str,
    pub mechanism: Mechanism,
    /// The client's address (after PROXY protocol, the real client).
    pub client_ip: IpAddr,
    /// The port the client connected to (587, 465).
    pub local_port: u16,
    /// Whether the connection is TLS (always, for AUTH: submitd offers it only after TLS).
    pub secured: bool,
}

/// What a directory says about a verified login.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// The addresses or `@domain` patterns the directory lets this login send as (LDAP
    /// attributes, the SQL senders query), as the directory wrote them; empty when it names
    /// none (Dovecot never does): then `auth.default_senders` applies.
    pub senders: Vec<String>,
}

/// Why a directory could not answer. Every variant becomes `454 4.7.0` for the client and a
/// log line (once per burst) for the operator; `check-config` prints it with the key to look at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// Could not connect (refused, no such socket, DNS, TLS handshake or certificate).
    #[error("{key}: unreachable: {detail}")]
    Unreachable { key: &'static str, detail: String },
    /// The directory refused submitd itself (LDAP service bind, PostgreSQL login).
    #[error("{key}: refused: {detail}")]
    Refused { key: &'static str, detail: String },
    /// A query or search failed (syntax, missing table or attribute, a type that is not text).
    #[error("{key}: query failed: {detail}")]
    Query { key: &'static str, detail: String },
    /// The directory answered something outside its protocol.
    #[error("{key}: protocol error: {detail}")]
    Protocol { key: &'static str, detail: String },
    /// No answer within the time allowed.
    #[error("{key}: no answer within {0:?}", .limit)]
    Timeout { key: &'static str, limit: Duration },
    /// A file the section names could not be read or used (password file, CA file).
    #[error("{key}: {detail}")]
    Config { key: &'static str, detail: String },
}

impl BackendError {
    /// The config key an operator should look at.
    pub fn key(&self) -> &'static str {
        match self {
            BackendError::Unreachable { key, .. }
            | BackendError::Refused { key, .. }
            | BackendError::Query { key, .. }
            | BackendError::Protocol { key, .. }
            | BackendError::Timeout { key, .. }
            | BackendError::Config { key, .. } => key,
        }
    }

    /// A short fixed label for metrics and log grouping.
    pub fn label(&self) -> &'static str {
        match self {
            BackendError::Unreachable { .. } => "unreachable",
            BackendError::Refused { .. } => "refused",
            BackendError::Query { .. } => "query",
            BackendError::Protocol { .. } => "protocol",
            BackendError::Timeout { .. } => "timeout",
            BackendError::Config { .. } => "config",
        }
    }
}

/// `Ok(Some)`: verified; `Ok(None)`: wrong password or unknown login; `Err`: no answer.
pub type Answer = Result<Option<Identity>, BackendError>;

/// The selected directory. An enum rather than a trait object: three known backends, each
/// with async methods, dispatched by a match.
#[derive(Debug)]
pub enum Directory {
    Dovecot(dovecot::Dovecot),
    Ldap(ldap::Ldap),
    Sql(sql::Sql),
}

impl Directory {
    /// The directory `backend` names, `None` for the file backend. Reads the files the section
    /// names (passwords, CA certificates) and so must run before serving, not on the reactor;
    /// connects to nothing yet (connections are made on first use and kept in a pool).
    /// `timeout` bounds each request the backend makes (`auth.backend_timeout`).
    pub fn from_settings(
        backend: &AuthBackend,
        timeout: Duration,
    ) -> Result<Option<Directory>, BackendError> {
        Ok(Some(match backend {
            AuthBackend::File => return Ok(None),
            AuthBackend::Dovecot(s) => Directory::Dovecot(dovecot::Dovecot::new(s, timeout)?),
            AuthBackend::Ldap(s) => Directory::Ldap(ldap::Ldap::new(s, timeout)?),
            AuthBackend::Sql(s) => Directory::Sql(sql::Sql::new(s, timeout)?),
        }))
    }

    /// `auth.backend`'s name: the `backend` label of the metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Directory::Dovecot(_) => "dovecot",
            Directory::Ldap(_) => "ldap",
            Directory::Sql(_) => "sql",
        }
    }

    /// Check `req` against the directory. Each backend bounds its own network waits by the
    /// timeout it was made with; the caller bounds the whole call too.
    pub async fn authenticate(&self, req: &AuthRequest<'_>) -> Answer {
        match self {
            Directory::Dovecot(d) => d.authenticate(req).await,
            Directory::Ldap(d) => d.authenticate(req).await,
            Directory::Sql(d) => d.authenticate(req).await,
        }
    }

    /// What the directory says about `login` without its password, for `submitd key create
    /// --owner`: `Ok(None)` for no such user. Dovecot's auth protocol cannot look a user up
    /// (it only checks passwords) and names no senders anyway: an empty identity, so the
    /// owner's senders are `auth.default_senders` and the users file's, as at its login.
    pub async fn lookup(&self, login: &str) -> Answer {
        match self {
            Directory::Dovecot(_) => Ok(Some(Identity::default())),
            Directory::Ldap(d) => d.lookup(login).await,
            Directory::Sql(d) => d.lookup(login).await,
        }
    }

    /// `submitd check-config`: connect and do what a login would do short of checking a
    /// password (Dovecot: the handshake, PLAIN offered; LDAP: the service bind and a search of
    /// `base`; SQL: log in and prepare both queries). The error names the key to fix.
    pub async fn check(&self) -> Result<(), BackendError> {
        match self {
            Directory::Dovecot(d) => d.check().await,
            Directory::Ldap(d) => d.check().await,
            Directory::Sql(d) => d.check().await,
        }
    }
}
