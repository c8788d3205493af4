//! Which TLS policy applies to each MX host, decided after the MX lookup, in the order of
//! RFC 8461 section 2: DANE per MX host first, then MTA-STS per domain (its slot is marked
//! in [`MxPolicy::fallback`]), then `relay.tls`.
//!
//! `relay.tls = "dane"` ([`Mode::Dane`]):
//!
//! - the MX RRset must be authenticated for DANE to apply to its hosts (RFC 7672 section
//!   2.2.1); an insecure one falls back for every host, a bogus one (or a failed validated
//!   lookup) defers the domain;
//! - each host's TLSA RRset ([`super::dnssec::Validator::tlsa`]): usable records make the
//!   host a DANE host ([`TlsPolicy::Dane`]: STARTTLS mandatory, certificate matched); an
//!   authenticated RRset without a usable record makes TLS mandatory, unauthenticated
//!   ([`TlsPolicy::Required`], RFC 7672 section 2.2); no authenticated RRset falls back; a
//!   bogus or failed lookup leaves the host out, and when no host is left the recipients
//!   are deferred with that reason.
//!
//! `relay.tls = "verify"`: STARTTLS mandatory, the certificate verified against the WebPKI
//! roots plus `relay.ca_file` for the MX host name. The other values apply as they are.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::ClientConfig;

use super::DeliveryError;
use super::dane::{self, HostDane, RptResult, Tlsa, Verdicts};
use super::dnssec::{Security, Validator};
use super::mta_sts::Applied;
use super::mx::{Target, parse_domain_literal, to_ascii_domain};
use super::outbound::{Hop, TlsPolicy};
use super::tls::{self, Verified};
use crate::config::{RelaySettings, RelayTls};
use crate::logsafe::Escaped;

/// An MX host DANE decided for in one attempt, for TLS-RPT (policy type `tlsa`, RFC 8460
/// section 4.4).
#[derive(Debug, Clone)]
pub struct DaneHost {
    /// The MX host name.
    pub name: String,
    /// Its usable TLSA records (empty when `failure` is set).
    pub records: Vec<Tlsa>,
    /// The failure DANE already is before any connection (`tlsa-invalid`,
    /// `dnssec-invalid`, [`HostDane::failure`]).
    pub failure: Option<RptResult>,
    /// Each handshake's certificate verdict with this host.
    pub verdicts: Verdicts,
}

/// How TLS is chosen for MX hosts (built once from `relay.*`).
pub struct MxPolicy {
    mode: Mode,
    port: u16,
}

enum Mode {
    /// `opportunistic`, `required` or `none`: the same policy for every host.
    Fixed(TlsPolicy),
    /// `verify`: WebPKI for the MX host name.
    Verify(Arc<ClientConfig>),
    /// `dane`: DANE where authenticated TLSA records exist, else the fallback.
    Dane(Box<Validator>),
}

impl MxPolicy {
    /// From `relay.tls`, `relay.port`, `relay.resolver`, `relay.ca_file` and
    /// `relay.dnssec_trust_anchor`.
    pub fn new(relay: &RelaySettings) -> Result<MxPolicy, DeliveryError> {
        let mode = match relay.tls {
            RelayTls::Opportunistic => Mode::Fixed(TlsPolicy::Opportunistic(tls::unverified())),
            RelayTls::Required => Mode::Fixed(TlsPolicy::Required(tls::unverified())),
            RelayTls::None => Mode::Fixed(TlsPolicy::None),
            RelayTls::Verify => {
                Mode::Verify(tls::verify_mx(relay.ca_file.as_deref()).map_err(DeliveryError)?)
            }
            RelayTls::Dane => Mode::Dane(Box::new(Validator::new(
                &relay.resolver,
                relay.dnssec_trust_anchor.as_deref(),
            )?)),
        };
        Ok(MxPolicy {
            mode,
            port: relay.port,
        })
    }

    /// The policy for a host DANE does not cover: MTA-STS's when the domain has a policy
    /// (`None`: the policy does not allow this host), else `relay.tls`'s ([`Self::base`]).
    fn fallback(&self, target: &Target, sts: Option<&Applied>) -> Option<TlsPolicy> {
        match sts {
            Some(applied) => applied
                .targets
                .iter()
                .any(|t| t.name == target.name && t.addr == target.addr)
                .then(|| applied.tls.clone()),
            None => Some(self.base()),
        }
    }

    /// `relay.tls`'s policy for a host neither DANE nor MTA-STS covers; for `dane` (and
    /// `verify`, which only MTA-STS's base needs) opportunistic.
    pub fn base(&self) -> TlsPolicy {
        match &self.mode {
            Mode::Fixed(p) => p.clone(),
            Mode::Verify(_) | Mode::Dane(_) => TlsPolicy::Opportunistic(tls::unverified()),
        }
    }

    /// Each target with its TLS policy, in the targets' order. `Err` (a reply) when no host
    /// may be tried now: the recipients are deferred. The hosts DANE decided for (usable
    /// records, or a DANE failure) are pushed to `dane`, for TLS-RPT.
    pub async fn hops(
        &self,
        queue_id: &str,
        domain: &str,
        targets: Vec<Target>,
        sts: Option<&Applied>,
        dane: &mut Vec<DaneHost>,
    ) -> Result<Vec<Hop>, String> {
        let validator = match &self.mode {
            Mode::Dane(v) => v,
            Mode::Verify(config) => {
                // WebPKI for every host; an MTA-STS policy still says which hosts are allowed.
                let allowed = |t: &Target| self.fallback(t, sts).is_some();
                let targets: Vec<Target> = targets.into_iter().filter(allowed).collect();
                if targets.is_empty() {
                    return Err(refusal(sts));
                }
                let hops = targets.into_iter().map(|target| {
                    let name = tls::mx_server_name(&target);
                    let tls = TlsPolicy::StartTlsVerified(Verified {
                        config: config.clone(),
                        name,
                    });
                    Hop { target, tls }
                });
                return Ok(hops.collect());
            }
            Mode::Fixed(_) => return self.all_fallback(targets, sts),
        };
        let ascii = match to_ascii_domain(domain) {
            Some(d) if parse_domain_literal(domain).is_none() => d,
            _ => return self.all_fallback(targets, sts),
        };
        match validator.mx_security(&ascii).await {
            Security::Secure => {}
            Security::Insecure => {
                tracing::info!(queue_id, domain = %Escaped(&ascii), policy = "fallback", reason = "MX RRset not DNSSEC-signed", "TLS policy");
                return self.all_fallback(targets, sts);
            }
            Security::Failed(e) => {
                tracing::warn!(queue_id, domain = %Escaped(&ascii), policy = "dane", reason = %Escaped(&e), "MX RRset not validated; deferring");
                return Err(format!(
                    "DNSSEC validation of the MX RRset of {ascii} failed: {e}"
                ));
            }
        }
        let decisions = self.tlsa_per_host(queue_id, validator, &targets).await;
        // One config per DANE host, with the recorder of its handshakes' verdicts.
        let mut configs: HashMap<&str, Arc<ClientConfig>> = HashMap::new();
        let mut names: Vec<&&str> = decisions.keys().collect();
        names.sort_unstable();
        for name in names {
            let decision = &decisions[*name];
            let verdicts = Verdicts::default();
            let records = match decision {
                HostDane::Usable(records) => {
                    let config = dane::client_config(records.clone(), verdicts.clone());
                    configs.insert(name, config);
                    records.clone()
                }
                HostDane::Unusable | HostDane::Defer(_) => Vec::new(),
                HostDane::NotApplicable(_) => continue,
            };
            dane.push(DaneHost {
                name: name.to_string(),
                records,
                failure: decision.failure(),
                verdicts,
            });
        }
        let mut hops = Vec::with_capacity(targets.len());
        let mut deferred = None;
        for target in &targets {
            let tls = match decisions.get(target.name.as_str()) {
                Some(HostDane::Usable(_)) => match configs.get(target.name.as_str()) {
                    Some(config) => TlsPolicy::Dane(config.clone()),
                    None => continue,
                },
                Some(HostDane::Unusable) => TlsPolicy::Required(tls::unverified()),
                Some(HostDane::NotApplicable(_)) => match self.fallback(target, sts) {
                    Some(tls) => tls,
                    None => continue,
                },
                Some(HostDane::Defer(reason)) => {
                    deferred = Some(reason.clone());
                    continue;
                }
                // Every host was looked up; never guess for one that was not.
                None => continue,
            };
            hops.push(Hop {
                target: target.clone(),
                tls,
            });
        }
        match deferred {
            Some(reason) if hops.is_empty() => Err(reason),
            None if hops.is_empty() => Err(refusal(sts)),
            _ => Ok(hops),
        }
    }

    /// The TLSA decision for each distinct host of `targets`, looked up concurrently and
    /// logged.
    async fn tlsa_per_host<'t>(
        &self,
        queue_id: &str,
        validator: &Validator,
        targets: &'t [Target],
    ) -> HashMap<&'t str, HostDane> {
        let mut names: Vec<&str> = targets.iter().map(|t| t.name.as_str()).collect();
        names.dedup();
        names.sort_unstable();
        names.dedup();
        let lookups = names.iter().map(|n| validator.tlsa(n, self.port));
        let results = futures_util::future::join_all(lookups).await;
        let mut out = HashMap::new();
        for (name, decision) in names.into_iter().zip(results) {
            let (policy, reason) = match &decision {
                HostDane::Usable(r) => ("dane", format!("{} usable TLSA record(s)", r.len())),
                HostDane::Unusable => (
                    "dane-unusable",
                    "no usable TLSA record: TLS required, unauthenticated".into(),
                ),
                HostDane::NotApplicable(why) => ("fallback", (*why).to_string()),
                HostDane::Defer(why) => ("dane-defer", why.clone()),
            };
            tracing::info!(queue_id, host = %Escaped(name), policy, reason = %Escaped(&reason), "TLS policy");
            out.insert(name, decision);
        }
        out
    }

    /// Every host without DANE: MTA-STS's policy or `relay.tls`'s.
    fn all_fallback(
        &self,
        targets: Vec<Target>,
        sts: Option<&Applied>,
    ) -> Result<Vec<Hop>, String> {
        let hops: Vec<Hop> = targets
            .into_iter()
            .filter_map(|target| {
                let tls = self.fallback(&target, sts)?;
                Some(Hop { target, tls })
            })
            .collect();
        if hops.is_empty() {
            return Err(refusal(sts));
        }
        Ok(hops)
    }
}

/// Why no host is left: MTA-STS `enforce` allowed none (RFC 8461 section 5).
fn refusal(sts: Option<&Applied>) -> String {
    sts.and_then(|a| a.refusal.clone())
        .unwrap_or_else(|| "no MX host may be tried under the domain's TLS policy".into())
}
