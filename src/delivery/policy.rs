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
use super::dane::{self, HostDane};
use super::dnssec::{Security, Validator};
use super::mx::{Target, parse_domain_literal, to_ascii_domain};
use super::outbound::{Hop, TlsPolicy};
use super::tls::{self, Verified};
use crate::config::{RelaySettings, RelayTls};
use crate::logsafe::Escaped;

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

    /// The policy when DANE does not apply to a host of `domain`.
    fn fallback(&self, _domain: &str) -> TlsPolicy {
        // MTA-STS (RFC 8461) slots in here: an enforced policy for `_domain` comes before
        // `relay.tls`. For `dane` mode, `relay.tls` means opportunistic.
        match &self.mode {
            Mode::Fixed(p) => p.clone(),
            Mode::Verify(_) | Mode::Dane(_) => TlsPolicy::Opportunistic(tls::unverified()),
        }
    }

    /// Each target with its TLS policy, in the targets' order. `Err` (a reply) when no host
    /// may be tried now: the recipients are deferred.
    pub async fn hops(
        &self,
        queue_id: &str,
        domain: &str,
        targets: Vec<Target>,
    ) -> Result<Vec<Hop>, String> {
        let validator = match &self.mode {
            Mode::Dane(v) => v,
            Mode::Verify(config) => {
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
            Mode::Fixed(_) => return Ok(self.all_fallback(domain, targets)),
        };
        let ascii = match to_ascii_domain(domain) {
            Some(d) if parse_domain_literal(domain).is_none() => d,
            _ => return Ok(self.all_fallback(domain, targets)),
        };
        match validator.mx_security(&ascii).await {
            Security::Secure => {}
            Security::Insecure => {
                tracing::info!(queue_id, domain = %Escaped(&ascii), policy = "fallback", reason = "MX RRset not DNSSEC-signed", "TLS policy");
                return Ok(self.all_fallback(domain, targets));
            }
            Security::Failed(e) => {
                tracing::warn!(queue_id, domain = %Escaped(&ascii), policy = "dane", reason = %Escaped(&e), "MX RRset not validated; deferring");
                return Err(format!(
                    "DNSSEC validation of the MX RRset of {ascii} failed: {e}"
                ));
            }
        }
        let decisions = self.tlsa_per_host(queue_id, validator, &targets).await;
        let mut configs: HashMap<&str, Arc<ClientConfig>> = HashMap::new();
        let mut hops = Vec::with_capacity(targets.len());
        let mut deferred = None;
        for target in &targets {
            let tls = match decisions.get(target.name.as_str()) {
                Some(HostDane::Usable(records)) => TlsPolicy::Dane(
                    configs
                        .entry(target.name.as_str())
                        .or_insert_with(|| dane::client_config(records.clone()))
                        .clone(),
                ),
                Some(HostDane::Unusable) => TlsPolicy::Required(tls::unverified()),
                Some(HostDane::NotApplicable(_)) => self.fallback(domain),
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

    fn all_fallback(&self, domain: &str, targets: Vec<Target>) -> Vec<Hop> {
        let tls = self.fallback(domain);
        targets
            .into_iter()
            .map(|target| Hop {
                target,
                tls: tls.clone(),
            })
            .collect()
    }
}
