//! `[relay]`: how the delivery stage sends mail on (MX, a smarthost, or captured to files).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use super::value::{addresses, check_hostname, one_of, positive, positive_duration};
use super::{Context, Problems};

/// `[relay]` (consumed by the delivery stage).
#[derive(Debug, Clone)]
pub struct RelaySettings {
    pub mode: RelayMode,
    pub port: u16,
    pub tls: RelayTls,
    pub timeout: Duration,
    pub resolver: Vec<SocketAddr>,
    /// `relay.smarthost`, parsed; `Some` exactly when `mode` is [`RelayMode::Smarthost`] (in
    /// the other modes the key is kept in the file, unused and unchecked).
    pub smarthost: Option<Smarthost>,
    pub smarthost_tls: SmarthostTls,
    pub smarthost_user: String,
    pub smarthost_password: String,
    pub ca_file: Option<PathBuf>,
    /// `relay.dnssec_trust_anchor`: DNSKEY records (zone-file form) that DNSSEC validation
    /// starts from; `None` = the IANA root keys built into hickory. Checked to parse here.
    pub dnssec_trust_anchor: Option<PathBuf>,
    /// Where `relay.mode = "capture"` writes each message (`ID.eml`) and its envelope and
    /// results (`ID.json`), resolved against the config file's directory; `None` otherwise.
    pub capture_dir: Option<PathBuf>,
    /// Polite delivery: per-destination concurrency, rate and throttling backoff.
    pub polite: super::polite::PoliteSettings,
    /// `relay.mta_sts`: look up and apply MTA-STS policies (RFC 8461) in MX mode.
    pub mta_sts: bool,
    /// `relay.mta_sts_port`: the HTTPS port policies are fetched from (443; tests only).
    pub mta_sts_port: u16,
}

/// `relay.mode`: where messages go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayMode {
    Mx,
    Smarthost,
    /// Development: nothing leaves the machine; every message is written to
    /// `relay.capture_dir` and counts as delivered.
    Capture,
}

/// `relay.tls`: TLS toward MX hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayTls {
    /// DANE (RFC 7672) where a DNSSEC-authenticated TLSA RRset exists, otherwise
    /// opportunistic (the default).
    Dane,
    /// STARTTLS required, the certificate verified against the WebPKI roots plus
    /// `relay.ca_file` for the MX host name.
    Verify,
    Opportunistic,
    Required,
    None,
}

/// `relay.smarthost_tls`: TLS toward the smarthost (always verified when on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmarthostTls {
    Starttls,
    Implicit,
    None,
}

/// `relay.smarthost`: `host:port`, the host a domain name, an IPv4 address or `[IPv6]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Smarthost {
    /// As written, without the brackets of an IPv6 literal (the name TLS verifies).
    pub host: String,
    /// 1-65535.
    pub port: u16,
}

impl FromStr for Smarthost {
    type Err = String;

    fn from_str(value: &str) -> Result<Smarthost, String> {
        let (host, port) = value
            .rsplit_once(':')
            .ok_or_else(|| format!("{value:?} must be \"host:port\""))?;
        let port = match port.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => return Err(format!("{value:?}: port must be 1-65535")),
        };
        if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            return match v6.parse::<std::net::Ipv6Addr>() {
                Ok(_) => Ok(Smarthost {
                    host: v6.to_string(),
                    port,
                }),
                Err(_) => Err(format!("{value:?}: bad IPv6 address")),
            };
        }
        if host.parse::<std::net::Ipv4Addr>().is_err() {
            check_hostname(host).map_err(|e| format!("{value:?} must be \"host:port\": {e}"))?;
        }
        Ok(Smarthost {
            host: host.to_string(),
            port,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRelay {
    #[serde(default = "default_relay_mode")]
    mode: String,
    #[serde(default = "default_relay_port")]
    port: i64,
    #[serde(default = "default_relay_tls")]
    tls: String,
    #[serde(default = "default_relay_timeout")]
    timeout: String,
    #[serde(default)]
    resolver: Vec<String>,
    #[serde(default)]
    smarthost: String,
    #[serde(default = "default_smarthost_tls")]
    smarthost_tls: String,
    #[serde(default)]
    smarthost_user: String,
    #[serde(default)]
    smarthost_password: String,
    #[serde(default)]
    ca_file: String,
    #[serde(default)]
    capture_dir: String,
    // Polite delivery (`config::polite`).
    #[serde(default = "super::polite::default_destination_concurrency")]
    destination_concurrency: i64,
    #[serde(default)]
    destination_rate: i64,
    #[serde(default = "super::polite::default_throttle_backoff")]
    throttle_backoff: String,
    #[serde(default = "super::polite::default_throttle_backoff_max")]
    throttle_backoff_max: String,
    #[serde(default)]
    dnssec_trust_anchor: String,
    #[serde(default = "default_mta_sts")]
    mta_sts: bool,
    #[serde(default = "default_mta_sts_port")]
    mta_sts_port: i64,
}

fn default_mta_sts() -> bool {
    true
}
fn default_mta_sts_port() -> i64 {
    443
}

fn default_relay_mode() -> String {
    "mx".into()
}
fn default_relay_port() -> i64 {
    25
}
fn default_relay_tls() -> String {
    "dane".into()
}
fn default_relay_timeout() -> String {
    "5m".into()
}
fn default_smarthost_tls() -> String {
    "starttls".into()
}

impl Default for RawRelay {
    fn default() -> Self {
        RawRelay {
            mode: default_relay_mode(),
            port: default_relay_port(),
            tls: default_relay_tls(),
            timeout: default_relay_timeout(),
            resolver: Vec::new(),
            smarthost: String::new(),
            smarthost_tls: default_smarthost_tls(),
            smarthost_user: String::new(),
            smarthost_password: String::new(),
            ca_file: String::new(),
            capture_dir: String::new(),
            destination_concurrency: super::polite::default_destination_concurrency(),
            destination_rate: 0,
            throttle_backoff: super::polite::default_throttle_backoff(),
            throttle_backoff_max: super::polite::default_throttle_backoff_max(),
            dnssec_trust_anchor: String::new(),
            mta_sts: default_mta_sts(),
            mta_sts_port: default_mta_sts_port(),
        }
    }
}

/// Validate `[relay]`.
pub(super) fn parse(r: &RawRelay, p: &mut Problems<'_>, cx: &Context<'_>) -> Option<RelaySettings> {
    let mode = one_of(
        p,
        "relay.mode",
        &r.mode,
        &[
            ("mx", RelayMode::Mx),
            ("smarthost", RelayMode::Smarthost),
            ("capture", RelayMode::Capture),
        ],
    );
    let port = positive(p, "relay.port", r.port, u16::MAX as u64);
    let mta_sts_port = positive(p, "relay.mta_sts_port", r.mta_sts_port, u16::MAX as u64);
    let tls = one_of(
        p,
        "relay.tls",
        &r.tls,
        &[
            ("dane", RelayTls::Dane),
            ("verify", RelayTls::Verify),
            ("opportunistic", RelayTls::Opportunistic),
            ("required", RelayTls::Required),
            ("none", RelayTls::None),
        ],
    );
    let timeout = positive_duration(p, "relay.timeout", &r.timeout);
    let resolver = addresses(p, "relay.resolver", &r.resolver);
    let smarthost_tls = one_of(
        p,
        "relay.smarthost_tls",
        &r.smarthost_tls,
        &[
            ("starttls", SmarthostTls::Starttls),
            ("implicit", SmarthostTls::Implicit),
            ("none", SmarthostTls::None),
        ],
    );
    let smarthost = smarthost(r, mode, smarthost_tls, p);
    let ca_file = (!r.ca_file.trim().is_empty()).then(|| cx.resolve(r.ca_file.trim()));
    let dnssec_trust_anchor = trust_anchor(r, p, cx);
    let capture_dir = match (mode, r.capture_dir.trim()) {
        (Some(RelayMode::Capture), "") => {
            p.push(
                "relay.capture_dir",
                "required when relay.mode = \"capture\" (the directory that receives ID.eml and ID.json)",
            );
            None
        }
        (Some(RelayMode::Capture), dir) => Some(cx.resolve(dir)),
        // Like `smarthost` in MX mode: kept in the file, unused.
        _ => None,
    };
    let polite = super::polite::parse(
        &super::polite::RawPolite {
            concurrency: r.destination_concurrency,
            rate: r.destination_rate,
            backoff: &r.throttle_backoff,
            backoff_max: &r.throttle_backoff_max,
        },
        p,
    );
    Some(RelaySettings {
        mode: mode?,
        port: port? as u16,
        tls: tls?,
        timeout: timeout?,
        resolver,
        smarthost,
        smarthost_tls: smarthost_tls?,
        smarthost_user: r.smarthost_user.clone(),
        smarthost_password: r.smarthost_password.clone(),
        ca_file,
        dnssec_trust_anchor,
        capture_dir,
        polite: polite?,
        mta_sts: r.mta_sts,
        mta_sts_port: mta_sts_port? as u16,
    })
}

/// `relay.dnssec_trust_anchor`: a readable file of DNSKEY records that hickory accepts, with
/// at least one key. (hickory's trust anchor parser takes DNSKEY records only, not DS.)
fn trust_anchor(r: &RawRelay, p: &mut Problems<'_>, cx: &Context<'_>) -> Option<PathBuf> {
    const KEY: &str = "relay.dnssec_trust_anchor";
    let value = r.dnssec_trust_anchor.trim();
    if value.is_empty() {
        return None;
    }
    let path = cx.resolve(value);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            p.push(KEY, format!("{}: {e}", path.display()));
            return None;
        }
    };
    if !text.lines().any(|l| {
        l.split_whitespace()
            .any(|w| w.eq_ignore_ascii_case("DNSKEY"))
    }) {
        p.push(
            KEY,
            format!(
                "{}: no DNSKEY record in it (DS records are not accepted)",
                path.display()
            ),
        );
        return None;
    }
    match hickory_resolver::proto::dnssec::TrustAnchors::from_str(&text) {
        Ok(_) => Some(path),
        Err(e) => {
            p.push(
                KEY,
                format!(
                    "{}: not DNSKEY records in zone-file form: {e}",
                    path.display()
                ),
            );
            None
        }
    }
}

/// `relay.smarthost` and its credentials; the address only in smarthost mode (elsewhere it is
/// unused, so not checked).
fn smarthost(
    r: &RawRelay,
    mode: Option<RelayMode>,
    tls: Option<SmarthostTls>,
    p: &mut Problems<'_>,
) -> Option<Smarthost> {
    let mut parsed = None;
    if mode == Some(RelayMode::Smarthost) {
        if r.smarthost.trim().is_empty() {
            p.push(
                "relay.smarthost",
                "required when relay.mode = \"smarthost\" (\"host:port\")",
            );
        } else {
            parsed = r
                .smarthost
                .trim()
                .parse()
                .map_err(|e: String| p.push("relay.smarthost", e))
                .ok();
        }
    }
    if r.smarthost_user.is_empty() != r.smarthost_password.is_empty() {
        p.push(
            "relay.smarthost_user",
            "smarthost_user and smarthost_password go together: set both or neither",
        );
    }
    if mode == Some(RelayMode::Smarthost)
        && tls == Some(SmarthostTls::None)
        && !r.smarthost_user.is_empty()
    {
        p.push(
            "relay.smarthost_tls",
            "\"none\" with smarthost credentials: credentials are never sent in clear (use \"starttls\" or \"implicit\")",
        );
    }
    parsed
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::testing::{MINIMAL, assert_error, parse, with};

    #[test]
    fn capture_mode_needs_capture_dir_resolved_against_the_config_dir() {
        assert_error(
            &with("[relay]\nmode = \"capture\""),
            "relay.capture_dir",
            "required when relay.mode = \"capture\"",
        );
        assert_error(
            &with("[relay]\nmode = \"capture\"\ncapture_dir = \"  \""),
            "relay.capture_dir",
            "required",
        );
        let s = parse(&with(
            "[relay]\nmode = \"capture\"\ncapture_dir = \"../var/outbox\"",
        ))
        .unwrap();
        assert_eq!(s.relay.mode, RelayMode::Capture);
        assert_eq!(
            s.relay.capture_dir.as_deref(),
            Some(Path::new("/etc/submitd/../var/outbox"))
        );
        let s = parse(&with("[relay]\ncapture_dir = \"/tmp/outbox\"")).unwrap();
        assert_eq!(s.relay.capture_dir, None, "unused outside capture mode");
        assert_eq!(parse(MINIMAL).unwrap().relay.capture_dir, None);
    }

    #[test]
    fn relay_enums_and_smarthost() {
        assert_error(
            &with("[relay]\nmode = \"direct\""),
            "relay.mode",
            "\"mx\", \"smarthost\"",
        );
        assert_error(&with("[relay]\ntls = \"may\""), "relay.tls", "not one of");
        assert_error(
            &with("[relay]\nsmarthost_tls = \"ssl\""),
            "relay.smarthost_tls",
            "not one of",
        );
        assert_error(
            &with("[relay]\nmode = \"smarthost\""),
            "relay.smarthost",
            "required",
        );
        assert_error(
            &with("[relay]\nmode = \"smarthost\"\nsmarthost = \"relay.example.test\""),
            "relay.smarthost",
            "host:port",
        );
        assert_error(
            &with("[relay]\nmode = \"smarthost\"\nsmarthost = \"relay.example.test:0\""),
            "relay.smarthost",
            "port",
        );
        assert_error(
            &with("[relay]\nmode = \"smarthost\"\nsmarthost = \":25\""),
            "relay.smarthost",
            "",
        );
        for ok in ["relay.example.test:587", "127.0.0.1:2525", "[::1]:25"] {
            assert!(
                parse(&with(&format!(
                    "[relay]\nmode = \"smarthost\"\nsmarthost = \"{ok}\""
                )))
                .is_ok(),
                "{ok}"
            );
        }
        // The smarthost is only checked when it is used.
        assert!(parse(&with("[relay]\nsmarthost = \"junk\"")).is_ok());
        assert_error(&with("[relay]\nport = 0"), "relay.port", "positive");
        assert_error(
            &with("[relay]\nmta_sts_port = 0"),
            "relay.mta_sts_port",
            "positive",
        );
        let s = parse(&with("[relay]\nmta_sts = false\nmta_sts_port = 8443")).unwrap();
        assert!(!s.relay.mta_sts);
        assert_eq!(s.relay.mta_sts_port, 8443);
        let s = parse(MINIMAL).unwrap();
        assert!(s.relay.mta_sts, "on by default");
        assert_eq!(s.relay.mta_sts_port, 443);
        assert_error(
            &with("[relay]\nport = 70000"),
            "relay.port",
            "at most 65535",
        );
        assert_error(
            &with("[relay]\nresolver = [\"127.0.0.1\"]"),
            "relay.resolver",
            "address:port",
        );
        assert_error(
            &with("[relay]\nsmarthost_user = \"u\""),
            "relay.smarthost_user",
            "set both",
        );
        assert_error(
            &with(
                "[relay]\nmode = \"smarthost\"\nsmarthost = \"h.test:25\"\nsmarthost_tls = \"none\"\nsmarthost_user = \"u\"\nsmarthost_password = \"p\"",
            ),
            "relay.smarthost_tls",
            "never sent in clear",
        );
    }

    #[test]
    fn dane_is_the_default_and_trust_anchors_are_checked() {
        assert_eq!(parse(MINIMAL).unwrap().relay.tls, RelayTls::Dane);
        assert_eq!(parse(MINIMAL).unwrap().relay.dnssec_trust_anchor, None);
        let s = parse(&with("[relay]\ntls = \"verify\"")).unwrap();
        assert_eq!(s.relay.tls, RelayTls::Verify);
        let dir = tempfile::tempdir().unwrap();
        let key = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            with(&format!(
                "[relay]\ndnssec_trust_anchor = \"{}\"",
                path.display()
            ))
        };
        let good = {
            use hickory_resolver::proto::dnssec::rdata::DNSKEY;
            use hickory_resolver::proto::dnssec::{Algorithm, SigningKey, crypto::EcdsaSigningKey};
            let alg = Algorithm::ECDSAP256SHA256;
            let pkcs8 = EcdsaSigningKey::generate_pkcs8(alg).unwrap();
            let signing = EcdsaSigningKey::from_pkcs8(&pkcs8, alg).unwrap();
            let dnskey = DNSKEY::from_key(&signing.to_public_key().unwrap());
            key("good.key", &format!("test. 3600 IN DNSKEY {dnskey}\n"))
        };
        let s = parse(&good).unwrap();
        assert!(s.relay.dnssec_trust_anchor.unwrap().ends_with("good.key"));
        assert_error(
            &key(
                "ds.key",
                ". 3600 IN DS 20326 8 2 E06D44B80B8F1D39A95C0B0D7C65D08458E880409BBC683457104237C7F8EC8D\n",
            ),
            "relay.dnssec_trust_anchor",
            "no DNSKEY record",
        );
        assert_error(
            &key("junk.key", "test. IN DNSKEY 257 3 13 not-base64!\n"),
            "relay.dnssec_trust_anchor",
            "junk.key",
        );
        assert_error(
            &with("[relay]\ndnssec_trust_anchor = \"/nonexistent/anchor.key\""),
            "relay.dnssec_trust_anchor",
            "/nonexistent/anchor.key",
        );
    }

    /// The host and port delivery connects to, taken apart once with the file.
    #[test]
    fn smarthost_is_parsed_once() {
        let host = |v: &str| v.parse::<Smarthost>().map(|s| (s.host, s.port));
        assert_eq!(
            host("smtp.example.test:587"),
            Ok(("smtp.example.test".into(), 587))
        );
        assert_eq!(host("[::1]:25"), Ok(("::1".into(), 25)));
        assert_eq!(host("127.0.0.1:2525"), Ok(("127.0.0.1".into(), 2525)));
        for bad in ["nohost", ":25", "h:0", "[::1:25", "[nope]:25", "h:65536"] {
            assert!(host(bad).is_err(), "{bad}");
        }
        let s = parse(&with(
            "[relay]\nmode = \"smarthost\"\nsmarthost = \" [2001:db8::1]:2525 \"",
        ))
        .unwrap();
        assert_eq!(
            s.relay.smarthost,
            Some(Smarthost {
                host: "2001:db8::1".into(),
                port: 2525
            })
        );
        let s = parse(&with("[relay]\nsmarthost = \"h.test:25\"")).unwrap();
        assert_eq!(s.relay.smarthost, None, "unused outside smarthost mode");
    }
}
