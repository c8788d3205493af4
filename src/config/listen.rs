//! `[listen]`: the submission sockets and the PROXY protocol's trusted peers.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use serde::Deserialize;

use super::Problems;
use super::value::addresses;

/// `[listen]`.
#[derive(Debug, Clone)]
pub struct Listen {
    /// Plaintext submission with STARTTLS (587).
    pub submission: Vec<SocketAddr>,
    /// Implicit TLS submission (465, RFC 8314).
    pub submissions: Vec<SocketAddr>,
    /// Expect a PROXY v1/v2 header first on every connection (`listen.proxy_protocol`).
    pub proxy_protocol: bool,
    /// Peers allowed to send the header; any other peer is closed at once
    /// (`listen.trusted_proxies`, IPs or CIDR blocks; required with `proxy_protocol`).
    pub trusted_proxies: Vec<Cidr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListen {
    #[serde(default = "default_submission")]
    submission: Vec<String>,
    #[serde(default = "default_submissions")]
    submissions: Vec<String>,
    #[serde(default)]
    proxy_protocol: bool,
    #[serde(default)]
    trusted_proxies: Vec<String>,
}

fn default_submission() -> Vec<String> {
    vec!["0.0.0.0:587".into()]
}
fn default_submissions() -> Vec<String> {
    vec!["0.0.0.0:465".into()]
}

impl Default for RawListen {
    fn default() -> Self {
        RawListen {
            submission: default_submission(),
            submissions: default_submissions(),
            proxy_protocol: false,
            trusted_proxies: Vec::new(),
        }
    }
}

/// Validate `[listen]`.
pub(super) fn parse(raw: &RawListen, p: &mut Problems<'_>) -> Option<Listen> {
    let listen = Listen {
        submission: addresses(p, "listen.submission", &raw.submission),
        submissions: addresses(p, "listen.submissions", &raw.submissions),
        proxy_protocol: raw.proxy_protocol,
        trusted_proxies: raw
            .trusted_proxies
            .iter()
            .filter_map(|t| {
                t.trim()
                    .parse()
                    .map_err(|e: String| p.push("listen.trusted_proxies", e))
                    .ok()
            })
            .collect(),
    };
    if raw.proxy_protocol && raw.trusted_proxies.is_empty() {
        p.push(
            "listen.trusted_proxies",
            "must list the proxies' addresses (IPs or CIDR blocks) when listen.proxy_protocol = true",
        );
    }
    if raw.submission.is_empty() && raw.submissions.is_empty() {
        p.push(
            "listen",
            "no listen address: set listen.submission and/or listen.submissions",
        );
    }
    Some(listen)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` is in this block. IPv4-mapped IPv6 addresses (a dual-stack listener's view
    /// of an IPv4 peer) count as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;

    /// `192.0.2.10`, `10.0.0.0/8`, `2001:db8::/32`; host bits must be zero.
    fn from_str(text: &str) -> Result<Cidr, String> {
        let bad = || format!("{text:?} is not an IP address or CIDR block (e.g. \"10.0.0.0/8\")");
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && p.len() <= 3 => {
                p.parse::<u8>().map_err(|_| bad())?
            }
            Some(_) => return Err(bad()),
        };
        if prefix > max {
            return Err(format!("{text:?}: prefix length above {max}"));
        }
        // Kept as written: an IPv4-mapped IPv6 block never matches (write IPv4 blocks as IPv4).
        let cidr = Cidr { addr, prefix };
        if cidr.masked() != cidr.addr {
            return Err(format!("{text:?}: host bits set after the prefix"));
        }
        Ok(cidr)
    }
}

impl Cidr {
    fn masked(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
            }
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::{assert_error, parse, with};

    #[test]
    fn listen_addresses() {
        assert_error(
            &with("[listen]\nsubmission = [\"0.0.0.0\"]"),
            "listen.submission",
            "address:port",
        );
        assert_error(
            &with("[listen]\nsubmissions = [\"localhost:465\"]"),
            "listen.submissions",
            "address:port",
        );
        assert_error(
            &with("[listen]\nsubmission = []\nsubmissions = []"),
            "listen",
            "no listen address",
        );
        assert!(parse(&with("[listen]\nsubmission = []")).is_ok());
    }

    #[test]
    fn proxy_protocol_needs_trusted_proxies() {
        assert_error(
            &with("[listen]\nproxy_protocol = true"),
            "listen.trusted_proxies",
            "must list",
        );
        assert_error(
            &with("[listen]\nproxy_protocol = true\ntrusted_proxies = [\"10.0.0.1/8\"]"),
            "listen.trusted_proxies",
            "host bits",
        );
        assert_error(
            &with("[listen]\ntrusted_proxies = [\"haproxy.internal\"]"),
            "listen.trusted_proxies",
            "not an IP address",
        );
        let s = parse(&with(
            "[listen]\nproxy_protocol = true\ntrusted_proxies = [\"127.0.0.1\", \"::1\"]",
        ))
        .unwrap();
        assert_eq!(s.listen.trusted_proxies.len(), 2);
    }

    #[test]
    fn cidrs() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains("10.1.2.3".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
        let one: Cidr = "127.0.0.1".parse().unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        let all: Cidr = "::/0".parse().unwrap();
        assert!(all.contains("2001:db8::1".parse().unwrap()));
        assert!(!all.contains("192.0.2.1".parse().unwrap()));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains("2001:db8:ffff::1".parse().unwrap()));
        assert!(!v6.contains("2001:db9::1".parse().unwrap()));
        assert!(
            "0.0.0.0/0"
                .parse::<Cidr>()
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        for bad in [
            "10.0.0.1/8",
            "10.0.0.0/33",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "localhost",
            "2001:db8::/129",
            "",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }
}
