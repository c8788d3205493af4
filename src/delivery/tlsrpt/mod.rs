//! SMTP TLS Reporting (RFC 8460): what happened to the TLS sessions toward domains with an
//! MTA-STS policy (and to the policy fetches) or a DANE MX host (policy type `tlsa`),
//! counted per policy domain and policy, and sent once a day (and on `tls-report` at the
//! control socket) to the domains that ask for it.
//!
//! - [`record`]: the counts, persisted in `queue.dir/tlsrpt/`, bounded.
//! - [`rua`]: the `_smtp._tls` TXT record: where reports go.
//! - [`report`]: the JSON report, gzipped, and the report message.
//! - [`Reporter::send`]: for each counted domain that publishes a record, one report to each
//!   destination: `mailto:` through our own queue (a new message from `tls.reporting.from`),
//!   `https:` POSTed with the bounds of the MTA-STS fetch ([`super::https`]).
//!
//! Only domains with an MTA-STS policy (or a failed policy fetch) or a DANE host are counted:
//! counting every domain would grow without bound and report nothing useful.

pub mod record;
pub mod report;
pub mod rua;

use std::net::SocketAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::dane::RptResult;
use super::https;
use super::mta_sts::{Applied, FetchFailure, Found};
use super::mx::Resolver;
use super::policy::DaneHost;
use super::tls::{CertProblem, WebPki};
use crate::queue::courier::Outcome;
use crate::queue::scheduler::QueueHandle;
use crate::queue::{Envelope, QueueId, Spool};
use record::{PolicyInfo, Recorder, Session};
use rua::Rua;

/// RFC 8460 section 4.3 result types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResultType {
    StarttlsNotSupported,
    CertificateHostMismatch,
    CertificateExpired,
    CertificateNotTrusted,
    ValidationFailure,
    TlsaInvalid,
    DnssecInvalid,
    DaneRequired,
    StsPolicyFetchError,
    StsPolicyInvalid,
    StsWebpkiInvalid,
}

impl ResultType {
    /// The report's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ResultType::StarttlsNotSupported => "starttls-not-supported",
            ResultType::CertificateHostMismatch => "certificate-host-mismatch",
            ResultType::CertificateExpired => "certificate-expired",
            ResultType::CertificateNotTrusted => "certificate-not-trusted",
            ResultType::ValidationFailure => "validation-failure",
            ResultType::TlsaInvalid => "tlsa-invalid",
            ResultType::DnssecInvalid => "dnssec-invalid",
            ResultType::DaneRequired => "dane-required",
            ResultType::StsPolicyFetchError => "sts-policy-fetch-error",
            ResultType::StsPolicyInvalid => "sts-policy-invalid",
            ResultType::StsWebpkiInvalid => "sts-webpki-invalid",
        }
    }
}

impl From<CertProblem> for ResultType {
    fn from(p: CertProblem) -> ResultType {
        match p {
            CertProblem::HostMismatch => ResultType::CertificateHostMismatch,
            CertProblem::Expired => ResultType::CertificateExpired,
            CertProblem::NotTrusted => ResultType::CertificateNotTrusted,
            CertProblem::Other => ResultType::ValidationFailure,
        }
    }
}

impl From<FetchFailure> for ResultType {
    fn from(f: FetchFailure) -> ResultType {
        match f {
            FetchFailure::FetchError => ResultType::StsPolicyFetchError,
            FetchFailure::Invalid => ResultType::StsPolicyInvalid,
            FetchFailure::WebPkiInvalid => ResultType::StsWebpkiInvalid,
        }
    }
}

impl ResultType {
    /// A DANE outcome's result type (`None`: a success).
    pub fn of_dane(r: RptResult) -> Option<ResultType> {
        Some(match r {
            RptResult::Success => return None,
            RptResult::StarttlsNotSupported => ResultType::StarttlsNotSupported,
            RptResult::CertificateExpired => ResultType::CertificateExpired,
            RptResult::ValidationFailure => ResultType::ValidationFailure,
            RptResult::TlsaInvalid => ResultType::TlsaInvalid,
            RptResult::DnssecInvalid => ResultType::DnssecInvalid,
            RptResult::CertificateHostMismatch => ResultType::CertificateHostMismatch,
            RptResult::CertificateNotTrusted => ResultType::CertificateNotTrusted,
        })
    }
}

/// A DANE host's policy as the report names it (RFC 8460 section 4.4): type `tlsa`, the
/// TLSA records in presentation form, the MX host.
pub fn dane_policy_info(host: &DaneHost) -> PolicyInfo {
    PolicyInfo {
        policy_type: "tlsa".into(),
        policy_string: host.records.iter().map(|r| r.presentation()).collect(),
        mx_host: vec![host.name.trim_end_matches('.').to_string()],
    }
}

/// The sessions of one attempt with a DANE host: the DANE failure decided before any
/// connection (bogus or unusable TLSA), else each handshake's verdict; without a handshake, a
/// deferral for a missing STARTTLS is a `starttls-not-supported` session.
pub fn dane_sessions(host: &DaneHost, outcomes: &[Outcome]) -> Vec<Session> {
    let mx = host.name.trim_end_matches('.').to_string();
    if let Some(failure) = host.failure {
        return vec![Session {
            failure: ResultType::of_dane(failure),
            mx,
            reason: failure.as_str().into(),
        }];
    }
    let verdicts = host.verdicts.all();
    if verdicts.is_empty() {
        let stripped = outcomes.iter().any(|o| match o {
            Outcome::Deferred {
                host: Some(h),
                reply,
            } => host_of(h) == host.name && reply.contains("TLS required but not offered"),
            _ => false,
        });
        return match stripped {
            true => vec![Session {
                failure: Some(ResultType::StarttlsNotSupported),
                mx,
                reason: "STARTTLS not offered".into(),
            }],
            false => Vec::new(),
        };
    }
    verdicts
        .into_iter()
        .map(|v| Session {
            failure: ResultType::of_dane(v),
            mx: mx.clone(),
            reason: match v {
                RptResult::Success => String::new(),
                _ => format!("DANE: {}", v.as_str()),
            },
        })
        .collect()
}

/// The host name of an outcome's `host` (`name[address]:port`).
pub fn host_of(host: &str) -> &str {
    host.split('[').next().unwrap_or(host)
}

/// The policy a domain's sessions ran under, as the report names it.
pub fn policy_info(found: &Found) -> PolicyInfo {
    match found.cached.as_ref().filter(|_| found.policy().is_some()) {
        Some(c) => PolicyInfo {
            policy_type: "sts".into(),
            policy_string: c.text.lines().map(|l| l.trim_end().to_string()).collect(),
            mx_host: c.policy.mx.clone(),
        },
        None => PolicyInfo {
            policy_type: "no-policy-found".into(),
            ..PolicyInfo::default()
        },
    }
}

/// The sessions of one attempt on new connections under `applied` (an MTA-STS policy), plus
/// a failed policy fetch. Each handshake's WebPKI verdict is a session; without a handshake,
/// a deferral for a missing STARTTLS (enforce) or a delivery in clear (testing) is a
/// `starttls-not-supported` session.
pub fn sessions(found: &Found, applied: Option<&Applied>, outcomes: &[Outcome]) -> Vec<Session> {
    let mut out = Vec::new();
    if let Some((failure, reason)) = &found.failure {
        out.push(Session {
            failure: Some((*failure).into()),
            mx: String::new(),
            reason: reason.clone(),
        });
    }
    let Some(applied) = applied else {
        return out;
    };
    for name in &applied.mismatched {
        out.push(Session {
            failure: Some(ResultType::ValidationFailure),
            mx: name.clone(),
            reason: "MX host not in the MTA-STS policy".into(),
        });
    }
    let verdicts = applied.judge.verdicts();
    for (mx, problem) in &verdicts {
        out.push(Session {
            failure: problem.map(ResultType::from),
            mx: mx.clone(),
            reason: problem.map(|p| format!("{p:?}")).unwrap_or_default(),
        });
    }
    if verdicts.is_empty() {
        let clear = outcomes.iter().find_map(|o| match o {
            Outcome::Deferred {
                host: Some(h),
                reply,
            } if reply.contains("TLS required but not offered") => Some(h),
            Outcome::Delivered { host, .. } => Some(host),
            _ => None,
        });
        if let Some(host) = clear {
            out.push(Session {
                failure: Some(ResultType::StarttlsNotSupported),
                mx: host.split('[').next().unwrap_or(host).to_string(),
                reason: "STARTTLS not offered".into(),
            });
        }
    }
    out
}

/// Sends the reports: the counts, DNS, HTTPS, and the queue for `mailto:`.
pub struct Reporter {
    pub recorder: Arc<Recorder>,
    pub resolver: Resolver,
    pub webpki: WebPki,
    pub spool: Spool,
    pub queue: QueueHandle,
    /// `hostname`: the submitter and organization.
    pub hostname: String,
    /// `tls.reporting.from`.
    pub from: String,
}

/// What one [`Reporter::send`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Sent {
    pub domains: usize,
    pub mailed: usize,
    pub posted: usize,
    pub failed: usize,
}

impl Reporter {
    /// Report everything counted so far and start counting anew.
    pub async fn send(&self) -> Sent {
        let now = crate::clock::unix_now();
        let counts = self.recorder.take(now).await;
        let mut sent = Sent::default();
        for (domain, policies) in &counts.domains {
            let txt = self.resolver.txt(&format!("_smtp._tls.{domain}")).await;
            let Some(destinations) = txt.ok().and_then(|r| rua::parse_record(&r)) else {
                continue;
            };
            sent.domains += 1;
            let report_id = format!("{}.{}@{}", counts.since, QueueId::generate(), self.hostname);
            let meta = report::Meta {
                submitter: &self.hostname,
                contact: &self.from,
                start: counts.since,
                end: now,
                report_id: &report_id,
            };
            let json = report::json(&meta, domain, policies);
            let Ok(gz) = report::gzip(&json) else {
                sent.failed += 1;
                continue;
            };
            for dest in destinations {
                let ok = match &dest {
                    Rua::Mailto(to) => self.mail(&meta, domain, to, &gz).await,
                    Rua::Https { host, port, path } => self.post(host, *port, path, &gz).await,
                };
                match (ok, &dest) {
                    (Ok(()), Rua::Mailto(_)) => sent.mailed += 1,
                    (Ok(()), Rua::Https { .. }) => sent.posted += 1,
                    (Err(e), _) => {
                        sent.failed += 1;
                        tracing::warn!(domain, error = %crate::logsafe::Escaped(&e), "TLS report not sent");
                    }
                }
            }
        }
        tracing::info!(
            domains = sent.domains,
            mailed = sent.mailed,
            posted = sent.posted,
            failed = sent.failed,
            "TLS reports"
        );
        sent
    }

    /// Queue the report message for `to` (stored durably, then announced to the scheduler).
    async fn mail(
        &self,
        meta: &report::Meta<'_>,
        domain: &str,
        to: &str,
        gz: &[u8],
    ) -> Result<(), String> {
        let message = report::message(meta, domain, &self.from, to, gz);
        let id = QueueId::generate();
        let mut env = Envelope::new(
            &id,
            "tlsrpt",
            &self.from,
            &[to.to_string()],
            &self.hostname,
            crate::clock::unix_now(),
        );
        env.size = message.len() as u64;
        let spool = self.spool.clone();
        tokio::task::spawn_blocking(move || spool.store_blocking(&env, &message))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        self.queue.notify(id);
        Ok(())
    }

    /// POST the gzipped report (RFC 8460 section 5.4).
    async fn post(&self, host: &str, port: u16, path: &str, gz: &[u8]) -> Result<(), String> {
        let ips = self.resolver.addresses(host).await?;
        let addrs: Vec<SocketAddr> = ips
            .into_iter()
            .map(|ip| SocketAddr::new(ip, port))
            .collect();
        let req = https::Request1 {
            host,
            addrs: &addrs,
            path,
            tls: self.webpki.config(),
        };
        https::post(&req, "application/tlsrpt+gzip", gz.to_vec())
            .await
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::super::mta_sts::cache::Cached;
    use super::super::mta_sts::{self, policy::parse_policy};
    use super::super::mx::Target;
    use super::super::outbound::TlsPolicy;
    use super::*;

    fn found(mode: &str, failure: Option<FetchFailure>) -> Found {
        let text = format!("version: STSv1\nmode: {mode}\nmx: mx.a.test\nmax_age: 600\n");
        Found {
            cached: Some(Cached {
                id: "1".into(),
                fetched: 0,
                policy: parse_policy(text.as_bytes()).unwrap(),
                text,
            }),
            failure: failure.map(|f| (f, "why".to_string())),
        }
    }

    fn applied(found: &Found, mx: &str) -> Applied {
        let target = Target {
            name: mx.into(),
            addr: "127.0.0.1:25".parse().unwrap(),
        };
        let webpki = WebPki::new(None).unwrap();
        let base = TlsPolicy::Opportunistic(super::super::tls::unverified());
        mta_sts::apply(found.policy().unwrap(), vec![target], &webpki, &base).unwrap()
    }

    fn types(sessions: &[Session]) -> Vec<(Option<ResultType>, String)> {
        sessions.iter().map(|s| (s.failure, s.mx.clone())).collect()
    }

    #[test]
    fn sessions_of_an_attempt() {
        // testing: a host outside the policy took the message in clear.
        let f = found("testing", None);
        let a = applied(&f, "evil.test");
        let delivered = Outcome::Delivered {
            host: "evil.test[127.0.0.1]:25".into(),
            reply: "250 ok".into(),
            dsn_passed: false,
        };
        assert_eq!(
            types(&sessions(&f, Some(&a), &[delivered])),
            [
                (Some(ResultType::ValidationFailure), "evil.test".to_string()),
                (
                    Some(ResultType::StarttlsNotSupported),
                    "evil.test".to_string()
                ),
            ]
        );
        // enforce: STARTTLS missing, and the policy fetch failed (the cached policy applied).
        let f = found("enforce", Some(FetchFailure::WebPkiInvalid));
        let a = applied(&f, "mx.a.test");
        let deferred = Outcome::Deferred {
            host: Some("mx.a.test[127.0.0.1]:25".into()),
            reply: "TLS required but not offered by mx.a.test[127.0.0.1]:25".into(),
        };
        assert_eq!(
            types(&sessions(&f, Some(&a), &[deferred])),
            [
                (Some(ResultType::StsWebpkiInvalid), String::new()),
                (
                    Some(ResultType::StarttlsNotSupported),
                    "mx.a.test".to_string()
                ),
            ]
        );
        let info = policy_info(&f);
        assert_eq!(info.policy_type, "sts");
        assert_eq!(info.policy_string[1], "mode: enforce");
        // No policy at all: nothing to count but a failed fetch.
        let none = Found::default();
        assert!(sessions(&none, None, &[]).is_empty());
        assert_eq!(policy_info(&none).policy_type, "no-policy-found");
    }

    #[test]
    fn dane_sessions_of_an_attempt() {
        use super::super::dane::{Tlsa, Verdicts};
        let host = |failure| DaneHost {
            name: "mx.d.test".into(),
            records: vec![Tlsa {
                usage: 3,
                selector: 1,
                matching: 1,
                data: vec![0xab; 32],
            }],
            failure,
            verdicts: Verdicts::default(),
        };
        let info = dane_policy_info(&host(None));
        assert_eq!(info.policy_type, "tlsa");
        assert_eq!(info.policy_string, [format!("3 1 1 {}", "ab".repeat(32))]);
        assert_eq!(info.mx_host, ["mx.d.test"]);
        // Bogus DNSSEC: one dnssec-invalid session, whatever the outcomes say.
        let bogus = dane_sessions(&host(Some(RptResult::DnssecInvalid)), &[]);
        assert_eq!(
            types(&bogus),
            [(Some(ResultType::DnssecInvalid), "mx.d.test".to_string())]
        );
        // STARTTLS stripped: no handshake, the deferral names the host.
        let stripped = Outcome::Deferred {
            host: Some("mx.d.test[127.0.0.1]:25".into()),
            reply: "TLS required but not offered by mx.d.test[127.0.0.1]:25".into(),
        };
        assert_eq!(
            types(&dane_sessions(&host(None), &[stripped])),
            [(
                Some(ResultType::StarttlsNotSupported),
                "mx.d.test".to_string()
            )]
        );
        // Another host's deferral says nothing about this one; no handshake, no session.
        let other = Outcome::Deferred {
            host: Some("mx.other.test[127.0.0.1]:25".into()),
            reply: "TLS required but not offered".into(),
        };
        assert!(dane_sessions(&host(None), &[other]).is_empty());
        assert_eq!(ResultType::of_dane(RptResult::Success), None);
        assert_eq!(
            ResultType::of_dane(RptResult::CertificateNotTrusted),
            Some(ResultType::CertificateNotTrusted)
        );
    }

    #[test]
    fn result_types_are_spelled_as_rfc_8460() {
        for t in [
            ResultType::StarttlsNotSupported,
            ResultType::CertificateHostMismatch,
            ResultType::StsPolicyFetchError,
            ResultType::DaneRequired,
        ] {
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(json, format!("\"{}\"", t.as_str()));
        }
    }
}
