//! DNSSEC-validated lookups for DANE (RFC 7672 section 2): hickory's validating resolver,
//! starting from `relay.dnssec_trust_anchor` (or the IANA root keys built into hickory), on
//! the same servers as MX lookups (`relay.resolver`).
//!
//! Two questions are asked:
//!
//! - [`Validator::mx_security`]: is the domain's MX RRset (or its proven absence, for the
//!   implicit MX) authenticated? RFC 7672 section 2.2.1: when it is not, an attacker could
//!   have chosen the MX host names, so DANE is not applied to them (like Postfix, which looks
//!   TLSA up only for hosts from a secure MX RRset);
//! - [`Validator::tlsa`]: the TLSA RRset at `_PORT._tcp.HOST`, classified into a
//!   [`HostDane`].
//!
//! Secure answers count; insecure answers and authenticated denials mean DANE does not apply;
//! a bogus answer or a failed lookup (SERVFAIL, timeout) is never taken for an absence.
//! The resolver in `relay.resolver` (or resolv.conf) must return DNSSEC records (the DO bit):
//! one that strips them makes every answer bogus, and `relay.tls = "dane"` then defers.
//! CNAMEs on the way to a TLSA record are not followed specially (the TLSA base domain is the
//! MX host name as published).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use hickory_resolver::TokioResolver;
use hickory_resolver::net::{DnsError, NetError, NoRecords};
use hickory_resolver::proto::dnssec::{Proof, TrustAnchors};
use hickory_resolver::proto::rr::{RData, Record, RecordType};

use super::DeliveryError;
use super::dane::{HostDane, Tlsa};
use super::mx::{builder, fqdn};

/// How far DNSSEC vouches for an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Security {
    /// Authenticated (records, or their proven absence).
    Secure,
    /// Provably unsigned (an insecure delegation on the way).
    Insecure,
    /// Bogus, or the lookup failed: the text says how.
    Failed(String),
}

/// A validating resolver built once per [`super::Delivery`] (`relay.tls = "dane"`).
#[derive(Clone)]
pub struct Validator {
    inner: TokioResolver,
}

impl Validator {
    /// On `servers` (see [`super::mx::Resolver::new`]), trusting the DNSKEYs in
    /// `trust_anchor`, or hickory's IANA root keys when `None`.
    pub fn new(
        servers: &[SocketAddr],
        trust_anchor: Option<&Path>,
    ) -> Result<Validator, DeliveryError> {
        let mut b = builder(servers)?;
        b.options_mut().validate = true;
        if let Some(path) = trust_anchor {
            let anchors = TrustAnchors::from_file(path).map_err(|e| {
                DeliveryError(format!(
                    "relay.dnssec_trust_anchor: {}: {e}",
                    path.display()
                ))
            })?;
            b = b.with_trust_anchor(Arc::new(anchors));
        }
        let inner = b
            .build()
            .map_err(|e| DeliveryError(format!("DNSSEC resolver: {e}")))?;
        Ok(Validator { inner })
    }

    /// Whether `domain`'s MX RRset (A-label form) is authenticated; for a domain without MX,
    /// whether that absence is.
    pub async fn mx_security(&self, domain: &str) -> Security {
        match self.inner.lookup(fqdn(domain), RecordType::MX).await {
            Ok(lookup) => proof_of(lookup.answers(), RecordType::MX),
            Err(e) => negative(&e),
        }
    }

    /// The DANE decision for `host` on `port`, from its TLSA RRset at `_PORT._tcp.HOST`.
    pub async fn tlsa(&self, host: &str, port: u16) -> HostDane {
        let name = format!("_{port}._tcp.{}", fqdn(host));
        match self.inner.lookup(name.as_str(), RecordType::TLSA).await {
            Ok(lookup) => match proof_of(lookup.answers(), RecordType::TLSA) {
                Security::Secure => HostDane::from_secure(tlsa_records(lookup.answers())),
                Security::Insecure => HostDane::NotApplicable("TLSA RRset not signed"),
                Security::Failed(e) => HostDane::Defer(format!("TLSA lookup {name}: {e}")),
            },
            Err(e) => match negative(&e) {
                Security::Secure => HostDane::NotApplicable("no TLSA record (authenticated)"),
                Security::Insecure => HostDane::NotApplicable("no TLSA record (insecure)"),
                Security::Failed(why) => HostDane::Defer(format!("TLSA lookup {name}: {why}")),
            },
        }
    }
}

/// The records of type `rtype` in an answer, as TLSA values.
fn tlsa_records(answers: &[Record]) -> Vec<Tlsa> {
    answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::TLSA(t) => Some(Tlsa {
                usage: t.cert_usage.into(),
                selector: t.selector.into(),
                matching: t.matching.into(),
                data: t.cert_data.clone(),
            }),
            _ => None,
        })
        .collect()
}

/// The security of an answer's records of type `rtype`: secure only when every one is.
fn proof_of(answers: &[Record], rtype: RecordType) -> Security {
    let proofs: Vec<Proof> = answers
        .iter()
        .filter(|r| r.record_type() == rtype)
        .map(|r| r.proof)
        .collect();
    if proofs.is_empty() {
        return Security::Failed(format!("no {rtype} record in the answer"));
    }
    if proofs.iter().all(|p| *p == Proof::Secure) {
        Security::Secure
    } else if proofs.contains(&Proof::Bogus) {
        Security::Failed("DNSSEC bogus".into())
    } else if proofs
        .iter()
        .all(|p| *p == Proof::Insecure || *p == Proof::Secure)
    {
        Security::Insecure
    } else {
        Security::Failed("DNSSEC indeterminate".into())
    }
}

/// What a failed validated lookup proves. NXDOMAIN and NODATA are absences, secure when an
/// authenticated NSEC/NSEC3 came with them, insecure otherwise (hickory only lets them
/// through when the zone is provably insecure or the denial validated); a bogus answer
/// and every other error is a failure.
fn negative(e: &NetError) -> Security {
    match e {
        NetError::Dns(DnsError::DnssecBogus) => Security::Failed("DNSSEC bogus".into()),
        NetError::Dns(DnsError::Nsec { proof, .. }) => match proof {
            Proof::Insecure => Security::Insecure,
            p => Security::Failed(format!("DNSSEC denial of existence {p}")),
        },
        NetError::Dns(DnsError::NoRecordsFound(NoRecords { authorities, .. })) => {
            let secure = authorities.as_deref().is_some_and(|a| {
                a.iter().any(|r| {
                    r.proof == Proof::Secure
                        && matches!(r.record_type(), RecordType::NSEC | RecordType::NSEC3)
                })
            });
            if secure {
                Security::Secure
            } else {
                Security::Insecure
            }
        }
        other => Security::Failed(other.to_string()),
    }
}
