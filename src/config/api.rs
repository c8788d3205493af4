//! `[api]`: the HTTP API (`POST /v1/messages` and friends).

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use super::Problems;
use super::value::{at_least_1s, positive};

/// `[api]`: where and how the HTTP API listens.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// `listen`: the API's address; `None` (`listen = ""`, the default) turns it off.
    pub listen: Option<SocketAddr>,
    /// `tls`: serve HTTPS with the `[tls]` certificate (ALPN `http/1.1`).
    pub tls: bool,
    /// `max_connections`: API connections served at once; more wait in the kernel backlog.
    pub max_connections: usize,
    /// `request_timeout`: the whole request, from its first octet to the response.
    pub request_timeout: Duration,
    /// `max_header_size`: octets of request head (hyper's read buffer) before `431`.
    pub max_header_size: usize,
    /// `max_headers`: header fields in a request.
    pub max_headers: usize,
}

impl Default for ApiSettings {
    fn default() -> ApiSettings {
        ApiSettings {
            listen: None,
            tls: false,
            max_connections: 256,
            request_timeout: Duration::from_secs(30),
            max_header_size: 16 * 1024,
            max_headers: 64,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApi {
    #[serde(default)]
    listen: String,
    #[serde(default)]
    tls: bool,
    max_connections: Option<i64>,
    request_timeout: Option<String>,
    max_header_size: Option<i64>,
    max_headers: Option<i64>,
}

/// Validate `[api]`.
pub(super) fn parse(raw: &RawApi, p: &mut Problems<'_>) -> Option<ApiSettings> {
    let d = ApiSettings::default();
    let listen = match raw.listen.trim() {
        "" => None,
        v => match v.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                p.push(
                    "api.listen",
                    format!(
                        "{v:?} is not an address:port (e.g. \"127.0.0.1:8025\"); \"\" turns the API off"
                    ),
                );
                return None;
            }
        },
    };
    let count = |p: &mut Problems<'_>, key: &str, v: Option<i64>, def: usize, max: u64| match v {
        None => Some(def),
        Some(v) => positive(p, key, v, max).map(|n| n as usize),
    };
    let max_connections = count(
        p,
        "api.max_connections",
        raw.max_connections,
        d.max_connections,
        100_000,
    );
    let max_header_size = count(
        p,
        "api.max_header_size",
        raw.max_header_size,
        d.max_header_size,
        1 << 20,
    )
    .map(|n| n.max(8192));
    let max_headers = count(p, "api.max_headers", raw.max_headers, d.max_headers, 1000);
    let request_timeout = match &raw.request_timeout {
        None => Some(d.request_timeout),
        Some(v) => at_least_1s(p, "api.request_timeout", v),
    };
    Some(ApiSettings {
        listen,
        tls: raw.tls,
        max_connections: max_connections?,
        request_timeout: request_timeout?,
        max_header_size: max_header_size?,
        max_headers: max_headers?,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::testing::{MINIMAL, assert_error, parse};

    #[test]
    fn off_by_default_and_bounded() {
        let s = parse(MINIMAL).unwrap();
        assert_eq!(s.api.listen, None);
        assert!(!s.api.tls);
        let s = parse(&format!(
            "{MINIMAL}[api]\nlisten = \"127.0.0.1:8025\"\ntls = true\nrequest_timeout = \"5s\"\n\
             max_header_size = 100\nmax_headers = 10\nmax_connections = 3\n"
        ))
        .unwrap();
        assert_eq!(s.api.listen, Some("127.0.0.1:8025".parse().unwrap()));
        assert!(s.api.tls);
        assert_eq!(s.api.request_timeout, std::time::Duration::from_secs(5));
        // hyper reads heads in buffers of at least 8 KiB.
        assert_eq!(s.api.max_header_size, 8192);
        assert_eq!((s.api.max_headers, s.api.max_connections), (10, 3));
        for (line, key, needle) in [
            ("listen = \"8025\"", "api.listen", "not an address"),
            ("max_connections = 0", "api.max_connections", ""),
            ("request_timeout = \"10ms\"", "api.request_timeout", ""),
            ("max_headers = -1", "api.max_headers", ""),
        ] {
            assert_error(&format!("{MINIMAL}[api]\n{line}\n"), key, needle);
        }
    }
}
