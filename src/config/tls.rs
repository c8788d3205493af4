//! `[tls]`: the server's certificate and key files (loaded by `artefacts` and `tls`, not here).

use std::path::PathBuf;

use serde::Deserialize;

use super::value::required;
use super::{Context, Problems};

/// `[tls]`.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// `tls.reporting.from`: the sender of TLS-RPT reports (RFC 8460); `None`:
    /// `postmaster@<hostname>`.
    pub reporting_from: Option<String>,
}

/// `tls.cert` and `tls.key` are required: no default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    cert: Option<String>,
    key: Option<String>,
    #[serde(default)]
    reporting: RawReporting,
}

/// `[tls.reporting]`: TLS-RPT (RFC 8460).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReporting {
    from: Option<String>,
}

/// `local@domain`: printable ASCII, no space, angle bracket or quote, one `@`.
fn check_address(value: &str) -> Result<(), &'static str> {
    let (local, domain) = value
        .split_once('@')
        .ok_or("must be an address, local@domain")?;
    let ok = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_graphic() && !b"<>\"@,;()[]\\".contains(&b))
    };
    if !ok(local) || !ok(domain) || value.len() > 254 {
        return Err("must be an address, local@domain, without spaces or brackets");
    }
    Ok(())
}

/// Validate `[tls]`: both paths given, resolved against the config file's directory.
pub(super) fn parse(raw: &RawTls, p: &mut Problems<'_>, cx: &Context<'_>) -> Option<TlsFiles> {
    let cert = required(p, cx.bad, "tls.cert", &raw.cert).map(|v| cx.resolve(v));
    let key = required(p, cx.bad, "tls.key", &raw.key).map(|v| cx.resolve(v));
    let reporting_from = raw.reporting.from.as_deref().map(str::trim);
    if let Some(Err(e)) = reporting_from.map(check_address) {
        p.push("tls.reporting.from", e);
    }
    Some(TlsFiles {
        cert: cert?,
        key: key?,
        reporting_from: reporting_from.map(str::to_string),
    })
}

#[cfg(test)]
mod tests {
    use crate::config::testing::{MINIMAL, assert_error, parse};

    #[test]
    fn reporting_from() {
        assert_eq!(parse(MINIMAL).unwrap().tls.reporting_from, None);
        let with = |v: &str| format!("{MINIMAL}\n[tls.reporting]\nfrom = \"{v}\"\n");
        let s = parse(&with("tlsrpt@mail.example.test")).unwrap();
        assert_eq!(
            s.tls.reporting_from.as_deref(),
            Some("tlsrpt@mail.example.test")
        );
        assert_error(&with("nobody"), "tls.reporting.from", "address");
        assert_error(&with("a b@c.test"), "tls.reporting.from", "address");
        assert_error(&with("<a@c.test>"), "tls.reporting.from", "address");
    }
}
