//! Asking a directory backend, with what every backend shares: the `auth.backend_timeout`
//! bound, per-backend metrics, outage logging once per burst, and turning the directory's
//! answer into the [`User`] the session works with (its senders, or `auth.default_senders`,
//! plus what a users-file entry of the same login adds).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::backend::{AuthRequest, BackendError, Directory, Identity};
use super::senders::{SenderPattern, expand_defaults};
use super::users::{SendOverrides, User};
use crate::logsafe::Escaped;
use crate::metrics::Metrics;

/// The most sender patterns taken from one directory entry.
const MAX_SENDERS: usize = 1000;

/// A directory and the rules around asking it.
#[derive(Debug)]
pub struct DirectoryAuth {
    directory: Directory,
    timeout: Duration,
    default_senders: Vec<String>,
    metrics: Option<Arc<Metrics>>,
    outage: crate::outage::OutageLog,
    /// What the cache and single-flight keys use in place of a stored hash: one per backend.
    marker: String,
}

impl DirectoryAuth {
    /// Ask `directory`, each question bounded by `timeout`; users it names no senders for get
    /// `default_senders` (templates, see [`expand_defaults`]).
    pub fn new(
        directory: Directory,
        timeout: Duration,
        default_senders: Vec<String>,
        metrics: Option<Arc<Metrics>>,
    ) -> DirectoryAuth {
        let marker = format!("!directory:{}", directory.name());
        if let Some(m) = &metrics {
            m.auth_backend_configured(directory.name());
        }
        DirectoryAuth {
            directory,
            timeout,
            default_senders,
            metrics,
            outage: crate::outage::OutageLog::default(),
            marker,
        }
    }

    /// The backend's name (`auth.backend`).
    pub fn name(&self) -> &'static str {
        self.directory.name()
    }

    /// The stand-in for a stored hash in cache and single-flight keys, and the `password` of
    /// the users this builds (never a valid PHC string, so never verifiable by argon2).
    pub fn marker(&self) -> &str {
        &self.marker
    }

    /// The longest one question may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Ask the directory, within `auth.backend_timeout`; counted in the backend metrics, an
    /// outage logged (once per burst) and its end logged too.
    pub async fn ask(&self, req: &AuthRequest<'_>) -> Result<Option<Identity>, BackendError> {
        let started = Instant::now();
        let answer =
            match tokio::time::timeout(self.timeout, self.directory.authenticate(req)).await {
                Ok(answer) => answer,
                Err(_) => Err(BackendError::Timeout {
                    key: "auth.backend_timeout",
                    limit: self.timeout,
                }),
            };
        let took = started.elapsed();
        if let Some(m) = &self.metrics {
            m.auth_backend(
                self.name(),
                took,
                answer.as_ref().err().map(BackendError::label),
            );
        }
        match &answer {
            Err(e) => self.outage.failed(
                self.name(),
                &format!("{} ({})", e, e.label()),
                "authentication backend unavailable; clients get 454 4.7.0",
            ),
            Ok(_) => self
                .outage
                .answered(self.name(), "authentication backend answers again"),
        }
        answer
    }

    /// What the directory says about `login` without a password (`submitd key create
    /// --owner`), within `auth.backend_timeout`.
    pub async fn lookup(&self, login: &str) -> Result<Option<Identity>, BackendError> {
        match tokio::time::timeout(self.timeout, self.directory.lookup(login)).await {
            Ok(answer) => answer,
            Err(_) => Err(BackendError::Timeout {
                key: "auth.backend_timeout",
                limit: self.timeout,
            }),
        }
    }

    /// `submitd check-config` and the start-up probe: the backend's own check, bounded.
    pub async fn check(&self) -> Result<(), BackendError> {
        match tokio::time::timeout(self.timeout, self.directory.check()).await {
            Ok(result) => result,
            Err(_) => Err(BackendError::Timeout {
                key: "auth.backend_timeout",
                limit: self.timeout,
            }),
        }
    }

    /// The user `login` is, from the directory's `identity` and the users-file entry of the
    /// same login (`overlay`), if any: the directory's senders (else the default senders), plus
    /// the entry's senders; the entry's limits.
    pub fn user(&self, login: &str, identity: &Identity, overlay: Option<&User>) -> User {
        let mut senders: Vec<SenderPattern> = Vec::new();
        for text in identity.senders.iter().take(MAX_SENDERS) {
            match SenderPattern::parse(text.trim()) {
                Ok(p) => senders.push(p),
                Err(e) => tracing::warn!(login = %Escaped(login), backend = self.name(),
                    value = %Escaped(text), error = %Escaped(&e),
                    "directory sender value is not an address or @domain; ignored"),
            }
        }
        if senders.is_empty() {
            senders = expand_defaults(&self.default_senders, login);
        }
        let mut limits = SendOverrides::default();
        if let Some(entry) = overlay {
            senders.extend(entry.senders.iter().cloned());
            limits = entry.limits;
        }
        User {
            login: login.to_owned(),
            password: self.marker.clone(),
            senders,
            senders_given: true,
            limits,
            owner: None,
        }
    }
}
