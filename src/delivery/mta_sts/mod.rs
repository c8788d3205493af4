//! MTA-STS (RFC 8461): which MX hosts of a domain may receive its mail, and only over TLS
//! with a WebPKI-verified certificate.
//!
//! - [`policy`]: the `_mta-sts` TXT record and the policy file, parsed without IO.
//! - [`cache`]: the policies kept in `queue.dir/mta-sts/`, loaded at start.
//! - [`MtaSts::lookup`]: TXT record, then the cached policy when its `id` is the same, else
//!   `https://mta-sts.DOMAIN/.well-known/mta-sts.txt` (through [`super::https`]: verified,
//!   no redirects, 64 KiB, 10 s). A fetch that fails keeps the cached policy while it is
//!   fresh (section 5.1); no TXT record but a fresh cached policy: the cached policy.
//! - [`apply`]: a policy and the MX targets become the targets and the TLS to use
//!   (`enforce`: matching hosts only, STARTTLS required and verified; `testing`: as without
//!   a policy, verdicts recorded).
//!
//! The HTTPS host is resolved with the MX resolver (`relay.resolver`) and reached on
//! `relay.mta_sts_port` (443; tests use another).

pub mod cache;
pub mod policy;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::https::{self, FetchError};
use super::mx::{Resolver, Target};
use super::outbound::TlsPolicy;
use super::tls::{Judge, WebPki};
use cache::Cached;
use policy::{Mode, Policy, parse_policy, parse_txt};

/// The policy file's path (RFC 8461 section 3.3).
const WELL_KNOWN: &str = "/.well-known/mta-sts.txt";

/// Why no fresh policy could be fetched (RFC 8460 section 4.3.2 result types).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchFailure {
    /// `sts-policy-fetch-error`
    FetchError,
    /// `sts-policy-invalid`
    Invalid,
    /// `sts-webpki-invalid`
    WebPkiInvalid,
}

/// What [`MtaSts::lookup`] found for a domain.
#[derive(Debug, Clone, Default)]
pub struct Found {
    /// The policy in force (any mode), `None` when the domain has none.
    pub cached: Option<Cached>,
    /// A fetch that failed on the way (reported to TLS-RPT), with its detail.
    pub failure: Option<(FetchFailure, String)>,
}

impl Found {
    /// The policy to apply: enforce or testing.
    pub fn policy(&self) -> Option<&Policy> {
        self.cached
            .as_ref()
            .map(|c| &c.policy)
            .filter(|p| p.mode != Mode::None)
    }
}

/// Policy lookups and the cache, built once per [`super::Delivery`].
pub struct MtaSts {
    resolver: Resolver,
    webpki: WebPki,
    port: u16,
    dir: PathBuf,
    cache: Mutex<HashMap<String, Cached>>,
}

impl MtaSts {
    /// Load the cached policies from `queue_dir/mta-sts/` (blocking; at start).
    pub fn new(resolver: Resolver, webpki: WebPki, port: u16, queue_dir: &Path) -> MtaSts {
        let dir = queue_dir.join(cache::DIR);
        let loaded = cache::load(&dir, crate::clock::unix_now());
        MtaSts {
            resolver,
            webpki,
            port,
            dir,
            cache: Mutex::new(loaded.into_iter().collect()),
        }
    }

    /// The WebPKI roots (for [`apply`]).
    pub fn webpki(&self) -> &WebPki {
        &self.webpki
    }

    /// Upper bound on one [`MtaSts::lookup`].
    pub fn bound() -> Duration {
        Resolver::bound() * 2 + https::FETCH_TIMEOUT
    }

    /// The policy of `domain` (A-label form, lower case) per RFC 8461 section 5.1.
    pub async fn lookup(&self, domain: &str) -> Found {
        let now = crate::clock::unix_now();
        let cached = self.cached(domain, now);
        let record = match self.resolver.txt(&format!("_mta-sts.{domain}")).await {
            Ok(records) => parse_txt(&records).ok(),
            Err(_) => None,
        };
        let Some(record) = record else {
            return Found {
                cached,
                failure: None,
            };
        };
        if cached.as_ref().is_some_and(|c| c.id == record.id) {
            return Found {
                cached,
                failure: None,
            };
        }
        match self.fetch(domain).await {
            Ok((policy, text)) => {
                let fresh = Cached {
                    id: record.id,
                    fetched: now,
                    policy,
                    text,
                };
                self.remember(domain, fresh.clone()).await;
                Found {
                    cached: Some(fresh),
                    failure: None,
                }
            }
            Err(failure) => {
                tracing::info!(domain, reason = %crate::logsafe::Escaped(&failure.1), "MTA-STS policy fetch failed");
                Found {
                    cached,
                    failure: Some(failure),
                }
            }
        }
    }

    fn cached(&self, domain: &str, now: u64) -> Option<Cached> {
        let cache = self.cache.lock().ok()?;
        cache.get(domain).filter(|c| c.fresh(now)).cloned()
    }

    /// Keep `entry` in memory and on disk (bounded by [`cache::MAX_DOMAINS`]).
    async fn remember(&self, domain: &str, entry: Cached) {
        if let Ok(mut cache) = self.cache.lock() {
            let now = crate::clock::unix_now();
            if cache.len() >= cache::MAX_DOMAINS {
                cache.retain(|_, c| c.fresh(now));
            }
            if cache.len() >= cache::MAX_DOMAINS && !cache.contains_key(domain) {
                return;
            }
            cache.insert(domain.to_string(), entry.clone());
        }
        let (dir, domain) = (self.dir.clone(), domain.to_string());
        let stored = tokio::task::spawn_blocking(move || cache::store(&dir, &domain, &entry)).await;
        if let Ok(Err(e)) = stored {
            tracing::warn!(error = %e, "cannot store MTA-STS policy");
        }
    }

    /// Fetch and parse the policy of `domain`.
    async fn fetch(&self, domain: &str) -> Result<(Policy, String), (FetchFailure, String)> {
        let host = format!("mta-sts.{domain}");
        let ips = self
            .resolver
            .addresses(&host)
            .await
            .map_err(|e| (FetchFailure::FetchError, format!("{host}: {e}")))?;
        let addrs: Vec<SocketAddr> = ips
            .into_iter()
            .map(|ip| SocketAddr::new(ip, self.port))
            .collect();
        let req = https::Request1 {
            host: &host,
            addrs: &addrs,
            path: WELL_KNOWN,
            tls: self.webpki.config(),
        };
        let body = https::get_text(&req, policy::MAX_POLICY_BYTES)
            .await
            .map_err(|e| match e {
                FetchError::Certificate { .. } => (FetchFailure::WebPkiInvalid, e.to_string()),
                FetchError::Failed(_) => (FetchFailure::FetchError, e.to_string()),
            })?;
        let policy = parse_policy(&body).map_err(|e| (FetchFailure::Invalid, e.to_string()))?;
        // Valid UTF-8: the parser checked.
        Ok((policy, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// How to deliver under a policy.
pub struct Applied {
    /// The targets to try, in order.
    pub targets: Vec<Target>,
    pub tls: TlsPolicy,
    /// The WebPKI verdict of each handshake (TLS-RPT).
    pub judge: Judge,
    /// MX hosts the policy does not list (refused in `enforce`, only reported in `testing`).
    pub mismatched: Vec<String>,
    /// `enforce` and no MX host matches: the reply of the deferral (RFC 8461 section 5);
    /// `targets` is empty.
    pub refusal: Option<String>,
}

/// Apply `policy` (enforce or testing) to the MX `targets`; `base` is `relay.tls`'s policy.
/// `Err` when the TLS config cannot be built.
pub fn apply(
    policy: &Policy,
    targets: Vec<Target>,
    webpki: &WebPki,
    base: &TlsPolicy,
) -> Result<Applied, String> {
    let mut mismatched: Vec<String> = Vec::new();
    for t in &targets {
        if !policy.matches(&t.name) && !mismatched.contains(&t.name) {
            mismatched.push(t.name.clone());
        }
    }
    match policy.mode {
        Mode::Enforce => {
            let targets: Vec<Target> = targets
                .into_iter()
                .filter(|t| policy.matches(&t.name))
                .collect();
            let refusal = targets.is_empty().then(|| {
                format!(
                    "MTA-STS: no MX host matches the enforced policy (MX: {})",
                    mismatched.join(", ")
                )
            });
            let (config, judge) = webpki.judged(true)?;
            Ok(Applied {
                targets,
                tls: TlsPolicy::StartTlsWebPki(config),
                judge,
                mismatched,
                refusal,
            })
        }
        Mode::Testing | Mode::None => {
            let (config, judge) = webpki.judged(false)?;
            let tls = match base {
                TlsPolicy::Opportunistic(_) => TlsPolicy::Opportunistic(config),
                TlsPolicy::Required(_) => TlsPolicy::Required(config),
                other => other.clone(),
            };
            Ok(Applied {
                targets,
                tls,
                judge,
                mismatched,
                refusal: None,
            })
        }
    }
}

/// `Arc` so that the courier's clones share one cache.
pub type Shared = Arc<MtaSts>;

#[cfg(test)]
mod tests {
    use super::*;

    fn target(name: &str) -> Target {
        Target {
            name: name.into(),
            addr: "127.0.0.1:25".parse().unwrap(),
        }
    }

    #[test]
    fn enforce_keeps_matching_hosts_only() {
        let webpki = WebPki::new(None).unwrap();
        let base = TlsPolicy::Opportunistic(super::super::tls::unverified());
        let p =
            parse_policy(b"version: STSv1\nmode: enforce\nmx: *.good.test\nmax_age: 60\n").unwrap();
        let a = apply(
            &p,
            vec![target("evil.test"), target("mx.good.test")],
            &webpki,
            &base,
        )
        .unwrap();
        assert_eq!(a.targets, vec![target("mx.good.test")]);
        assert_eq!(a.mismatched, vec!["evil.test".to_string()]);
        assert!(matches!(a.tls, TlsPolicy::StartTlsWebPki(_)));
        let a = apply(&p, vec![target("evil.test")], &webpki, &base).unwrap();
        assert!(a.targets.is_empty());
        let e = a.refusal.unwrap();
        assert!(e.contains("no MX host matches"), "{e}");
        let t =
            parse_policy(b"version: STSv1\nmode: testing\nmx: *.good.test\nmax_age: 60\n").unwrap();
        let a = apply(&t, vec![target("evil.test")], &webpki, &base).unwrap();
        assert_eq!(a.targets.len(), 1, "testing delivers anyway");
        assert!(matches!(a.tls, TlsPolicy::Opportunistic(_)));
    }
}
