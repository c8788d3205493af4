//! Delivery: where a message goes next and the SMTP conversation that takes it there.
//!
//! - [`mx`]: MX resolution (RFC 5321 section 5.1, RFC 7505 null MX) with hickory-resolver.
//! - [`outbound`]: one delivery attempt, lettre's `AsyncSmtpConnection` over a stream of ours
//!   (TLS included), with an outcome per recipient (MX mode with `relay.tls`, or the smarthost
//!   with `smarthost_tls` and AUTH).
//! - [`tls`]: the TLS client configs toward the next hop, and what each verifies.
//! - [`policy`]: the TLS policy per MX host (DANE with [`dane`] and [`dnssec`], then
//!   MTA-STS, then `relay.tls`).
//! - [`dotstuff`]: dot-stuffing of the message data without copying (sans-IO).
//! - [`stored`]: reading a queued message in bounded pieces.
//! - [`pool`]: connection reuse, several messages per connection to the same destination.
//! - [`capture`]: `relay.mode = "capture"`, messages written to `relay.capture_dir` (development).
//! - [`mta_sts`]: MTA-STS policies (RFC 8461), fetched through [`https`], cached in
//!   `queue.dir`, applied to the MX targets ([`mta_sts::apply`]).
//!
//! [`Delivery`] is the queue's [`Courier`]: the queue scheduler (`queue::scheduler`) decides
//! when to call it and what the outcomes do (retries, and DSNs in `queue::bounce`); this module
//! only talks to the next hop. It imports the queue's types, never the other way round.
//!
//! Decisions where DESIGN.md is silent:
//!
//! - A smarthost given by name is resolved with the same hickory resolver as MX lookups (A and
//!   AAAA; `relay.resolver` applies; /etc/hosts is consulted first, so `localhost` works). An
//!   IP address is used as it is and needs no resolver.
//! - A STARTTLS that is offered but fails is never followed by clear text, in any policy: the
//!   next host is tried, and when none is left the recipients are deferred (Postfix's `may`
//!   would retry in clear; we prefer not to downgrade on an active failure).
//! - Smarthost AUTH failure defers (an operator error must not bounce users' mail).
//! - A domain that exists but whose hosts have no address at all fails with `5.4.4`.

pub mod capture;
pub mod dane;
pub mod dnssec;
pub mod dotstuff;
pub mod https;
pub mod mta_sts;
pub mod mx;
pub mod outbound;
pub mod policy;
pub mod pool;
pub mod stored;
pub mod tls;
pub mod tlsrpt;

use crate::logsafe::Escaped;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::extension::ClientId;

use crate::config::{RelayMode, Settings, SmarthostTls};
use crate::queue::courier::{Courier, CourierFuture};
pub use crate::queue::courier::{Job, Outcome};
use outbound::{Hop, TlsPolicy, Transaction};
use pool::{Lease, Pool};

/// Why delivery could not be set up (bad CA file, resolver config).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DeliveryError(pub String);

/// Everything needed to deliver: relay settings, the resolver, TLS parameters built once.
#[derive(Clone)]
pub struct Delivery {
    inner: Arc<Inner>,
}

struct Inner {
    /// EHLO name on delivery (`hostname`).
    hello: ClientId,
    /// Each outbound step (`relay.timeout`).
    timeout: Duration,
    route: Route,
    credentials: Option<Credentials>,
    /// Idle connections kept for the next message, and the bound on open connections.
    pool: Pool,
}

/// Where messages go.
enum Route {
    /// MX lookup, delivery on `port` (`relay.mode = "mx"`).
    Mx {
        resolver: mx::Resolver,
        port: u16,
        /// The TLS policy per host (`relay.tls`, DANE).
        tls: policy::MxPolicy,
        /// `relay.mta_sts = true`: the policies, and the TLS-RPT counts.
        mta_sts: Option<StsParts>,
    },
    /// Everything to one host (`relay.mode = "smarthost"`).
    Smarthost {
        /// `None` when the smarthost is an IP address (no resolver needed, none built).
        resolver: Option<mx::Resolver>,
        host: String,
        port: u16,
        tls: TlsPolicy,
    },
    /// Nothing leaves the machine: written to `dir` (`relay.mode = "capture"`).
    Capture { dir: std::path::PathBuf },
}

impl Route {
    /// Whether every connection on this route has TLS that is required and verified
    /// ([`TlsPolicy::verifies`]); the capture directory counts (nothing leaves the machine).
    fn verifies(&self) -> bool {
        match self {
            Route::Smarthost { tls, .. } => tls.verifies(),
            // Decided per MX host once its policy is known ([`hops_for`]).
            Route::Mx { .. } | Route::Capture { .. } => true,
        }
    }
}

impl Delivery {
    /// Build from the settings (`relay.*` and `hostname`).
    pub fn new(settings: &Settings) -> Result<Delivery, DeliveryError> {
        let relay = &settings.relay;
        let route = match relay.mode {
            RelayMode::Mx => {
                let resolver = mx::Resolver::new(&relay.resolver)?;
                Route::Mx {
                    mta_sts: mta_sts_service(settings, &resolver)?,
                    resolver,
                    port: relay.port,
                    tls: policy::MxPolicy::new(relay)?,
                }
            }
            RelayMode::Smarthost => {
                let smarthost = relay.smarthost.as_ref().ok_or_else(|| {
                    DeliveryError(
                        "relay.smarthost: required when relay.mode = \"smarthost\"".into(),
                    )
                })?;
                let (host, port) = (smarthost.host.clone(), smarthost.port);
                let tls = match relay.smarthost_tls {
                    SmarthostTls::None => TlsPolicy::None,
                    SmarthostTls::Starttls => {
                        TlsPolicy::StartTlsVerified(smarthost_tls(&host, relay.ca_file.as_deref())?)
                    }
                    SmarthostTls::Implicit => {
                        TlsPolicy::Implicit(smarthost_tls(&host, relay.ca_file.as_deref())?)
                    }
                };
                let resolver = match host.parse::<IpAddr>() {
                    Ok(_) => None,
                    Err(_) => Some(mx::Resolver::new(&relay.resolver)?),
                };
                Route::Smarthost {
                    resolver,
                    host,
                    port,
                    tls,
                }
            }
            RelayMode::Capture => {
                let dir = relay.capture_dir.clone().ok_or_else(|| {
                    DeliveryError(
                        "relay.capture_dir: required when relay.mode = \"capture\"".into(),
                    )
                })?;
                capture::create_dir(&dir)?;
                Route::Capture { dir }
            }
        };
        let credentials = (!relay.smarthost_user.is_empty() && relay.mode == RelayMode::Smarthost)
            .then(|| {
                Credentials::new(
                    relay.smarthost_user.clone(),
                    relay.smarthost_password.clone(),
                )
            });
        Ok(Delivery {
            inner: Arc::new(Inner {
                hello: ClientId::Domain(settings.hostname.clone()),
                timeout: relay.timeout,
                route,
                credentials,
                pool: Pool::new(settings.queue.concurrency),
            }),
        })
    }

    /// Attempt delivery of `job`; returns exactly one outcome per recipient of the job, in
    /// order. Never panics, never hangs longer than the `relay.timeout` steps allow.
    pub async fn attempt(&self, job: &Job<'_>) -> Vec<(String, Outcome)> {
        let n = job.recipients.len();
        if n == 0 {
            return Vec::new();
        }
        // A safety net over a cached connection's transaction, DNS, and every host's bounded
        // session.
        let policy = match &self.inner.route {
            Route::Mx {
                mta_sts: Some(_), ..
            } => mta_sts::MtaSts::bound(),
            _ => Duration::ZERO,
        };
        let bound = mx::Resolver::bound()
            + policy
            + self.inner.timeout
            + outbound::session_bound(self.inner.timeout, job)
                .saturating_mul(outbound::MAX_ADDRESSES as u32 + 1);
        let outcomes = match tokio::time::timeout(bound, self.attempt_inner(job)).await {
            Ok(outcomes) if outcomes.len() == n => outcomes,
            Ok(_) => vec![
                Outcome::Deferred {
                    host: None,
                    reply: "internal error: outcome count mismatch".into(),
                };
                n
            ],
            Err(_) => vec![
                Outcome::Deferred {
                    host: None,
                    reply: format!("delivery attempt timed out after {bound:?}"),
                };
                n
            ],
        };
        job.recipients.iter().cloned().zip(outcomes).collect()
    }

    /// Close the connections kept for reuse (shutdown).
    pub async fn close_idle(&self) {
        self.inner.pool.close_all().await;
    }

    async fn attempt_inner(&self, job: &Job<'_>) -> Vec<Outcome> {
        let inner = &*self.inner;
        let n = job.recipients.len();
        if job.requiretls && !inner.route.verifies() {
            // RFC 8689 section 4.2.1: no verified TLS toward this destination, so no attempt.
            let failed = Outcome::Failed {
                host: None,
                reply: format!(
                    "{} REQUIRETLS: no TLS that is both required and verified toward the next hop",
                    outbound::STATUS_REQUIRETLS
                ),
                status: outbound::STATUS_REQUIRETLS.into(),
            };
            return vec![failed; n];
        }
        // MTA-STS first: a domain under a policy gets its own pooled connections (made under
        // that policy), never one made without it.
        let found = match &inner.route {
            Route::Mx {
                mta_sts: Some((sts, _)),
                ..
            } => Some(sts_lookup(sts, job.domain).await),
            _ => None,
        };
        let key = match &inner.route {
            Route::Mx { .. } => {
                mx_pool_key(job, found.as_ref().is_some_and(|f| f.policy().is_some()))
            }
            Route::Smarthost { .. } => String::new(),
            Route::Capture { dir } => return capture::deliver(dir, job).await,
        };
        // A connection kept from an earlier message to the same destination.
        if let Some(mut lease) = inner.pool.checkout(&key) {
            let bound = outbound::session_bound(inner.timeout, job);
            match tokio::time::timeout(bound, outbound::transaction(&mut lease.conn, job)).await {
                Ok(Transaction::Done(outcomes)) => {
                    inner.pool.checkin(key, lease).await;
                    return outcomes;
                }
                Ok(Transaction::MailRefused { reply, .. }) => {
                    // Nothing happened to the message: a new connection takes it now.
                    tracing::debug!(
                        queue_id = job.queue_id,
                        host = %Escaped(lease.conn.host()),
                        reply = %Escaped(&reply),
                        "cached connection not usable; opening a new one"
                    );
                    tokio::spawn(lease.conn.close());
                }
                Err(_) => {
                    let reply = format!(
                        "session with {} timed out after {bound:?}",
                        lease.conn.host()
                    );
                    let host = Some(lease.conn.host().to_string());
                    return vec![Outcome::Deferred { host, reply }; n];
                }
            }
        }
        let permit = inner.pool.permit().await;
        let plan = match &inner.route {
            Route::Mx {
                resolver,
                port,
                tls,
                mta_sts,
            } => {
                let sts = mta_sts.as_ref().map(|(s, _)| &**s);
                mx_plan(resolver, *port, tls, sts, found.as_ref(), job).await
            }
            Route::Smarthost {
                resolver,
                host,
                port,
                tls,
            } => smarthost_plan(resolver.as_ref(), host, *port, tls, n).await,
            Route::Capture { dir } => return capture::deliver(dir, job).await,
        };
        let plan = match plan {
            Ok(plan) => plan,
            Err((outcomes, sts, dane)) => {
                self.report(job.domain, found.as_ref(), sts.as_ref(), &dane, &outcomes)
                    .await;
                return outcomes;
            }
        };
        let mx = matches!(inner.route, Route::Mx { .. });
        let hops = match hops_for(job, plan.hops, mx) {
            Ok(hops) => hops,
            Err(failed) => return vec![failed; n],
        };
        let any_tls = hops.iter().any(|h| !matches!(h.tls, TlsPolicy::None));
        let session = outbound::Session {
            hello: &inner.hello,
            credentials: inner.credentials.as_ref(),
            timeout: inner.timeout,
        };
        let (outcomes, conn) = outbound::deliver(&hops, job, &session).await;
        if let Some(conn) = conn {
            inner.pool.checkin(key, Lease::new(conn, permit)).await;
        }
        if any_tls {
            self.report(
                job.domain,
                found.as_ref(),
                plan.sts.as_ref(),
                &plan.dane,
                &outcomes,
            )
            .await;
        }
        outcomes
    }

    /// Count an attempt's TLS sessions for TLS-RPT: under the MTA-STS policy (domains with
    /// one, or whose policy fetch failed), and under each DANE host's `tlsa` policy.
    async fn report(
        &self,
        domain: &str,
        found: Option<&mta_sts::Found>,
        applied: Option<&mta_sts::Applied>,
        dane: &[policy::DaneHost],
        outcomes: &[Outcome],
    ) {
        let (
            Route::Mx {
                mta_sts: Some((_, recorder)),
                ..
            },
            Some(found),
        ) = (&self.inner.route, found)
        else {
            return;
        };
        let Some(ascii) = mx::to_ascii_domain(domain) else {
            return;
        };
        // What happened with DANE hosts is never an MTA-STS session (RFC 8461 section 2).
        let sts_outcomes: Vec<Outcome> = outcomes
            .iter()
            .filter(|o| {
                let host = match o {
                    Outcome::Delivered { host, .. } => Some(host.as_str()),
                    Outcome::Deferred { host, .. } | Outcome::Failed { host, .. } => {
                        host.as_deref()
                    }
                };
                host.is_none_or(|h| !dane.iter().any(|d| d.name == tlsrpt::host_of(h)))
            })
            .cloned()
            .collect();
        let mut sessions = tlsrpt::sessions(found, applied, &sts_outcomes);
        // Nor is a DANE host outside the MTA-STS policy's `mx` patterns.
        sessions.retain(|s| !dane.iter().any(|d| d.name.trim_end_matches('.') == s.mx));
        recorder
            .record(&ascii, tlsrpt::policy_info(found), &sessions)
            .await;
        for host in dane {
            let sessions = tlsrpt::dane_sessions(host, outcomes);
            recorder
                .record(&ascii, tlsrpt::dane_policy_info(host), &sessions)
                .await;
        }
    }

    /// What the TLS-RPT reporter needs from delivery: the counts, the resolver and the
    /// WebPKI roots (`None` unless MX mode with `relay.mta_sts`).
    pub fn tls_reporting(&self) -> Option<ReportingParts> {
        match &self.inner.route {
            Route::Mx {
                mta_sts: Some((sts, recorder)),
                resolver,
                ..
            } => Some((recorder.clone(), resolver.clone(), sts.webpki().clone())),
            _ => None,
        }
    }
}

/// The hosts to try and the TLS to use with them.
struct Plan {
    /// Each host to try with its TLS policy.
    hops: Vec<Hop>,
    /// The MTA-STS policy applied, if any (for TLS-RPT).
    sts: Option<mta_sts::Applied>,
    /// The hosts DANE decided for (for TLS-RPT).
    dane: Vec<policy::DaneHost>,
}

/// What the TLS-RPT reporter takes from delivery ([`Delivery::tls_reporting`]).
pub type ReportingParts = (Arc<tlsrpt::record::Recorder>, mx::Resolver, tls::WebPki);

/// The MTA-STS service and the TLS-RPT counts.
type StsParts = (mta_sts::Shared, Arc<tlsrpt::record::Recorder>);

/// No delivery this time: every recipient's outcome, and the MTA-STS policy that refused
/// and the hosts DANE decided for (for TLS-RPT).
type NoPlan = (
    Vec<Outcome>,
    Option<mta_sts::Applied>,
    Vec<policy::DaneHost>,
);

/// MX lookup, then the MTA-STS policy `found` (if any) applied to the targets.
async fn mx_plan(
    resolver: &mx::Resolver,
    port: u16,
    tls: &policy::MxPolicy,
    sts: Option<&mta_sts::MtaSts>,
    found: Option<&mta_sts::Found>,
    job: &Job<'_>,
) -> Result<Plan, NoPlan> {
    let n = job.recipients.len();
    let lookup = resolver.targets(job.domain, port);
    let targets = match tokio::time::timeout(mx::Resolver::bound(), lookup).await {
        Ok(Ok(targets)) => targets,
        Ok(Err(mx::MxError::Permanent { status, reply })) => {
            let failed = Outcome::Failed {
                host: None,
                reply,
                status: status.to_string(),
            };
            return Err((vec![failed; n], None, Vec::new()));
        }
        Ok(Err(mx::MxError::Temporary { reply })) => {
            return Err((
                vec![Outcome::Deferred { host: None, reply }; n],
                None,
                Vec::new(),
            ));
        }
        Err(_) => {
            let reply = format!("DNS lookup for {} timed out", job.domain);
            return Err((
                vec![Outcome::Deferred { host: None, reply }; n],
                None,
                Vec::new(),
            ));
        }
    };
    // MTA-STS for the hosts DANE does not cover (RFC 8461 section 2: DANE first, per host).
    // A `TLS-Required: No` message ignores the policy, its MX list included (RFC 8689
    // section 5; [`hops_for`] drops the rest).
    let ignore_sts = job.tls_optional && !job.requiretls;
    let applied = match (sts, found.and_then(|f| f.policy())) {
        (Some(sts), Some(policy)) if !ignore_sts => {
            match mta_sts::apply(policy, targets.clone(), sts.webpki(), &tls.base()) {
                Ok(applied) => Some(applied),
                Err(reply) => {
                    let deferred = vec![Outcome::Deferred { host: None, reply }; n];
                    return Err((deferred, None, Vec::new()));
                }
            }
        }
        _ => None,
    };
    // DANE's validated lookups (MX, then TLSA per host) after the MX lookup, bounded like it.
    let mut dane = Vec::new();
    let decide = tls.hops(
        job.queue_id,
        job.domain,
        targets,
        applied.as_ref(),
        &mut dane,
    );
    let decided = tokio::time::timeout(mx::Resolver::bound(), decide).await;
    let reply = match decided {
        Ok(Ok(hops)) => {
            return Ok(Plan {
                hops,
                sts: applied,
                dane,
            });
        }
        Ok(Err(reply)) => reply,
        Err(_) => format!("DNSSEC lookups for {} timed out", job.domain),
    };
    Err((
        vec![Outcome::Deferred { host: None, reply }; n],
        applied,
        dane,
    ))
}

/// The MTA-STS policy of `domain`, bounded in time (no policy when it cannot be had in time,
/// or for a domain literal).
async fn sts_lookup(sts: &mta_sts::MtaSts, domain: &str) -> mta_sts::Found {
    let Some(ascii) = mx::to_ascii_domain(domain).filter(|d| !d.starts_with('[')) else {
        return mta_sts::Found::default();
    };
    tokio::time::timeout(mta_sts::MtaSts::bound(), sts.lookup(&ascii))
        .await
        .unwrap_or_default()
}

/// The MTA-STS service when `relay.mta_sts` is on: WebPKI roots plus `relay.ca_file`, the
/// cache in `queue.dir`; and the TLS-RPT counts, kept there too.
fn mta_sts_service(
    settings: &Settings,
    resolver: &mx::Resolver,
) -> Result<Option<StsParts>, DeliveryError> {
    let relay = &settings.relay;
    if !relay.mta_sts {
        return Ok(None);
    }
    let webpki = tls::WebPki::new(relay.ca_file.as_deref()).map_err(DeliveryError)?;
    let sts = Arc::new(mta_sts::MtaSts::new(
        resolver.clone(),
        webpki,
        relay.mta_sts_port,
        &settings.queue.dir,
    ));
    let recorder = Arc::new(tlsrpt::record::Recorder::open(
        &settings.queue.dir,
        crate::clock::unix_now(),
    ));
    Ok(Some((sts, recorder)))
}

impl Courier for Delivery {
    fn deliver<'a>(&'a self, job: &'a Job<'a>) -> CourierFuture<'a, Vec<(String, Outcome)>> {
        Box::pin(self.attempt(job))
    }

    fn close_idle(&self) -> CourierFuture<'_, ()> {
        Box::pin(Delivery::close_idle(self))
    }
}

/// The pool key of an MX-mode job: its domain, apart when under an MTA-STS policy
/// (`sts`). Connections are kept per set of usable hops ([`hops_for`]): a `TLS-Required: No`
/// message's skipped DANE, MTA-STS and `verify`, and is never reused for a message that needs
/// them; a REQUIRETLS message never rides on a connection made to a host it may not use (it
/// would fail with 5.7.10).
fn mx_pool_key(job: &Job<'_>, sts: bool) -> String {
    let tls = if job.requiretls {
        "requiretls:"
    } else if job.tls_optional {
        "tls-optional:"
    } else {
        ""
    };
    let sts = if sts { "mta-sts:" } else { "" };
    format!("{tls}{sts}{}", job.domain.to_lowercase())
}

/// The hops a job may use. A REQUIRETLS message (RFC 8689 section 4.2.1) only those whose TLS
/// is required and verified (DANE, MTA-STS enforce, `relay.tls = "verify"`, the verified
/// smarthost): none left fails with `5.7.10`. A message with `TLS-Required: No` and no
/// REQUIRETLS (RFC 8689 section 5) ignores DANE, MTA-STS and `verify` for its MX hosts:
/// opportunistic TLS, certificate not checked.
fn hops_for(job: &Job<'_>, hops: Vec<Hop>, mx: bool) -> Result<Vec<Hop>, Outcome> {
    if job.requiretls {
        let verified: Vec<_> = hops.into_iter().filter(|h| h.tls.verifies()).collect();
        if verified.is_empty() {
            return Err(Outcome::Failed {
                host: None,
                reply: format!(
                    "{} REQUIRETLS: no MX host of {} has TLS that is both required and verified",
                    outbound::STATUS_REQUIRETLS,
                    job.domain
                ),
                status: outbound::STATUS_REQUIRETLS.into(),
            });
        }
        return Ok(verified);
    }
    if !job.tls_optional || !mx {
        // The smarthost's TLS is the operator's choice, not the recipient's: it stays.
        return Ok(hops);
    }
    Ok(hops
        .into_iter()
        .map(|mut h| {
            if matches!(
                h.tls,
                TlsPolicy::Dane(_) | TlsPolicy::StartTlsVerified(_) | TlsPolicy::StartTlsWebPki(_)
            ) {
                h.tls = TlsPolicy::Opportunistic(tls::unverified());
            }
            h
        })
        .collect())
}

/// Verified TLS toward the smarthost ([`tls::smarthost`]).
fn smarthost_tls(host: &str, ca_file: Option<&Path>) -> Result<tls::Verified, DeliveryError> {
    tls::smarthost(host, ca_file).map_err(DeliveryError)
}

/// Every address of the smarthost with its TLS policy; `n` deferrals when it cannot be
/// resolved.
async fn smarthost_plan(
    resolver: Option<&mx::Resolver>,
    host: &str,
    port: u16,
    tls: &TlsPolicy,
    n: usize,
) -> Result<Plan, NoPlan> {
    match smarthost_targets(resolver, host, port).await {
        Ok(targets) => Ok(Plan {
            hops: targets
                .into_iter()
                .map(|target| Hop {
                    target,
                    tls: tls.clone(),
                })
                .collect(),
            sts: None,
            dane: Vec::new(),
        }),
        Err(reply) => Err((
            vec![Outcome::Deferred { host: None, reply }; n],
            None,
            Vec::new(),
        )),
    }
}

/// The smarthost's addresses. An IP address is used as it is; a name goes through the same
/// resolver as MX lookups (so `relay.resolver` applies) for A and AAAA records; hickory
/// consults /etc/hosts first, so `localhost` and names from the hosts file work too.
async fn smarthost_targets(
    resolver: Option<&mx::Resolver>,
    host: &str,
    port: u16,
) -> Result<Vec<mx::Target>, String> {
    let target = |ip| mx::Target {
        name: host.to_string(),
        addr: SocketAddr::new(ip, port),
    };
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![target(ip)]);
    }
    let Some(resolver) = resolver else {
        return Err(format!("no resolver for smarthost {host}"));
    };
    let lookup = resolver.addresses(host);
    match tokio::time::timeout(mx::Resolver::bound(), lookup).await {
        Ok(Ok(ips)) if ips.is_empty() => Err(format!("smarthost {host} has no address")),
        Ok(Ok(ips)) => Ok(ips.into_iter().map(target).collect()),
        Ok(Err(e)) => Err(format!("cannot resolve smarthost {host}: {e}")),
        Err(_) => Err(format!("resolving smarthost {host} timed out")),
    }
}
