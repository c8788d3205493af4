//! The aggregate report (RFC 8460 section 4) as JSON, gzipped, and the report message
//! (section 5.3) around it. Pure: time and names come in as arguments.

use std::io::Write;

use base64::Engine;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc2822;

use super::record::DomainStats;

/// Who reports and when.
pub struct Meta<'a> {
    /// `organization-name` and the submitter (`hostname`).
    pub submitter: &'a str,
    /// `contact-info` (`tls.reporting.from`).
    pub contact: &'a str,
    pub start: u64,
    pub end: u64,
    /// Unique per report.
    pub report_id: &'a str,
}

/// One entry of the report's `policies` (RFC 8460 section 4.4).
fn policy(domain: &str, stats: &DomainStats) -> Value {
    let details: Vec<Value> = stats
        .details
        .iter()
        .map(|d| {
            json!({
                "result-type": d.result_type.as_str(),
                "receiving-mx-hostname": d.receiving_mx_hostname,
                "failed-session-count": d.count,
                "failure-reason-code": d.failure_reason_code,
            })
        })
        .collect();
    json!({
        "policy": {
            "policy-type": stats.policy.policy_type,
            "policy-string": stats.policy.policy_string,
            "policy-domain": domain,
            "mx-host": stats.policy.mx_host,
        },
        "summary": {
            "total-successful-session-count": stats.success,
            "total-failure-session-count": stats.failure,
        },
        "failure-details": details,
    })
}

/// The JSON report for one policy domain, one `policies` entry per policy it was counted
/// under.
pub fn json(meta: &Meta<'_>, domain: &str, policies: &[DomainStats]) -> Value {
    let policies: Vec<Value> = policies.iter().map(|p| policy(domain, p)).collect();
    json!({
        "organization-name": meta.submitter,
        "date-range": {
            "start-datetime": crate::clock::rfc3339(meta.start),
            "end-datetime": crate::clock::rfc3339(meta.end),
        },
        "contact-info": meta.contact,
        "report-id": meta.report_id,
        "policies": policies,
    })
}

/// `json` gzipped (the `application/tlsrpt+gzip` body).
pub fn gzip(json: &Value) -> std::io::Result<Vec<u8>> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(json.to_string().as_bytes())?;
    enc.finish()
}

/// The report message (RFC 8460 section 5.3) from `from` to `to`, CRLF line ends.
pub fn message(meta: &Meta<'_>, domain: &str, from: &str, to: &str, gz: &[u8]) -> Vec<u8> {
    let date = OffsetDateTime::from_unix_timestamp(meta.end as i64)
        .ok()
        .and_then(|t| t.format(&Rfc2822).ok())
        .unwrap_or_default();
    let boundary = format!("tlsrpt-{}", meta.report_id.replace(['@', '<', '>'], "."));
    let file = format!(
        "{}!{domain}!{}!{}.json.gz",
        meta.submitter, meta.start, meta.end
    );
    let mut b64 = base64::engine::general_purpose::STANDARD.encode(gz);
    let mut wrapped = String::with_capacity(b64.len() + b64.len() / 38);
    while !b64.is_empty() {
        let rest = b64.split_off(b64.len().min(76));
        wrapped.push_str(&b64);
        wrapped.push_str("\r\n");
        b64 = rest;
    }
    let submitter = meta.submitter;
    let id = meta.report_id;
    format!(
        "From: <{from}>\r\n\
         To: <{to}>\r\n\
         Date: {date}\r\n\
         Message-ID: <{id}>\r\n\
         Subject: Report Domain: {domain} Submitter: {submitter} Report-ID: <{id}>\r\n\
         TLS-Report-Domain: {domain}\r\n\
         TLS-Report-Submitter: {submitter}\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=\"tlsrpt\"; boundary=\"{boundary}\"\r\n\
         \r\n\
         This is a multipart message in MIME format.\r\n\
         \r\n\
         --{boundary}\r\n\
         Content-Type: text/plain; charset=\"us-ascii\"\r\n\
         Content-Transfer-Encoding: 7bit\r\n\
         \r\n\
         This is an aggregate TLS report from {submitter} for {domain}.\r\n\
         \r\n\
         --{boundary}\r\n\
         Content-Type: application/tlsrpt+gzip\r\n\
         Content-Transfer-Encoding: base64\r\n\
         Content-Disposition: attachment; filename=\"{file}\"\r\n\
         \r\n\
         {wrapped}\
         \r\n\
         --{boundary}--\r\n"
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::super::ResultType;
    use super::super::record::{Detail, PolicyInfo};
    use super::*;
    use std::io::Read;

    #[test]
    fn report_json_and_message() {
        let stats = DomainStats {
            policy: PolicyInfo {
                policy_type: "sts".into(),
                policy_string: vec!["version: STSv1".into(), "mode: enforce".into()],
                mx_host: vec!["mx.a.test".into()],
            },
            success: 3,
            failure: 1,
            details: vec![Detail {
                result_type: ResultType::CertificateHostMismatch,
                receiving_mx_hostname: "mx.a.test".into(),
                failure_reason_code: "x".into(),
                count: 1,
            }],
        };
        let meta = Meta {
            submitter: "mail.example.test",
            contact: "postmaster@example.test",
            start: 1_700_000_000,
            end: 1_700_086_400,
            report_id: "r1@mail.example.test",
        };
        let tlsa = DomainStats {
            policy: PolicyInfo {
                policy_type: "tlsa".into(),
                policy_string: vec!["3 1 1 00ff".into()],
                mx_host: vec!["mx.a.test".into()],
            },
            success: 2,
            ..DomainStats::default()
        };
        let j = json(&meta, "a.test", &[stats, tlsa]);
        assert_eq!(j["policies"][1]["policy"]["policy-type"], "tlsa");
        assert_eq!(j["policies"][1]["policy"]["policy-domain"], "a.test");
        assert_eq!(
            j["policies"][1]["summary"]["total-successful-session-count"],
            2
        );
        assert_eq!(j["date-range"]["start-datetime"], "2023-11-14T22:13:20Z");
        let p = &j["policies"][0];
        assert_eq!(p["policy"]["policy-domain"], "a.test");
        assert_eq!(p["summary"]["total-successful-session-count"], 3);
        assert_eq!(
            p["failure-details"][0]["result-type"],
            "certificate-host-mismatch"
        );
        let gz = gzip(&j).unwrap();
        let mut back = String::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_string(&mut back)
            .unwrap();
        assert_eq!(serde_json::from_str::<Value>(&back).unwrap(), j);
        let m =
            String::from_utf8(message(&meta, "a.test", "p@example.test", "r@a.test", &gz)).unwrap();
        assert!(m.contains("\r\nTLS-Report-Domain: a.test\r\n"), "{m}");
        assert!(m.contains("Subject: Report Domain: a.test Submitter: mail.example.test Report-ID: <r1@mail.example.test>\r\n"));
        assert!(m.contains("report-type=\"tlsrpt\""));
        assert!(m.contains("Content-Type: application/tlsrpt+gzip\r\n"));
        assert!(!m.replace("\r\n", "").contains('\n'), "CRLF only");
        assert!(m.lines().all(|l| l.len() <= 998));
    }
}
