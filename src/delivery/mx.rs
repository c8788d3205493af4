//! MX resolution (RFC 5321 section 5.1; RFC 7505 null MX).
//!
//! A recipient domain becomes an ordered list of [`Target`]s (host name plus socket address):
//!
//! - MX records sorted by preference, shuffled among equal preferences (RFC 5321 5.1);
//! - a null MX (one MX with exchange `.`, RFC 7505): permanent, DSN status `5.1.10`;
//! - NXDOMAIN: permanent, `5.1.2` (checked before "no records": hickory reports both);
//! - NOERROR without MX records: the implicit MX, the domain itself;
//! - SERVFAIL, timeouts and every other resolver error: temporary (retry later);
//! - each host: A and AAAA records, IPv4 addresses first (a host with broken IPv6 routing
//!   still gets mail on the first try), on `relay.port`;
//! - a domain literal (`user@[192.0.2.1]`, `user@[IPv6:2001:db8::1]`): that address.
//!
//! Names are looked up in A-label form (`xn--`) and fully qualified (no search list).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError, NoRecords};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::RData;
use rand::Rng;
use rand::seq::SliceRandom;

use super::DeliveryError;

/// How long one DNS query may take, and how often it is tried.
const DNS_TIMEOUT: Duration = Duration::from_secs(5);
const DNS_ATTEMPTS: usize = 2;
/// At most this many MX hosts are looked up for one domain (Postfix uses 5 addresses; a few
/// more hosts leaves room for hosts without addresses).
const MAX_MX_HOSTS: usize = 10;

/// Permanent DSN status for a null MX (RFC 7505 section 4.2).
pub const STATUS_NULL_MX: &str = "5.1.10";
/// Permanent DSN status for a domain that does not exist (RFC 3463 "bad destination system").
pub const STATUS_NO_DOMAIN: &str = "5.1.2";
/// Permanent DSN status when the domain exists but no host of it has an address.
pub const STATUS_NO_ROUTE: &str = "5.4.4";

/// One place to try: the host's name (MX exchange, the domain itself, or the literal) and one
/// of its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub name: String,
    pub addr: SocketAddr,
}

impl Target {
    /// `name[ip]:port`, as recorded in outcomes (e.g. `mx1.example.test[127.0.0.1]:2525`).
    pub fn label(&self) -> String {
        format!("{}[{}]:{}", self.name, self.addr.ip(), self.addr.port())
    }
}

/// Why a domain has no targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MxError {
    /// Never deliverable: fail the recipients with `status`.
    Permanent { status: &'static str, reply: String },
    /// Try again later (SERVFAIL, timeout, network).
    Temporary { reply: String },
}

/// A DNS resolver built once per [`super::Delivery`].
#[derive(Clone)]
pub struct Resolver {
    inner: TokioResolver,
}

impl Resolver {
    /// `servers` empty: the system configuration (resolv.conf); else exactly those servers
    /// over UDP and TCP (`relay.resolver`).
    pub fn new(servers: &[SocketAddr]) -> Result<Resolver, DeliveryError> {
        let inner = builder(servers)?
            .build()
            .map_err(|e| DeliveryError(format!("DNS resolver: {e}")))?;
        Ok(Resolver { inner })
    }

    /// Upper bound on one [`Resolver::targets`] call: MX plus A/AAAA for each host.
    pub fn bound() -> Duration {
        // A query is tried DNS_ATTEMPTS times; hosts are looked up concurrently.
        DNS_TIMEOUT * (DNS_ATTEMPTS as u32) * 3 + Duration::from_secs(5)
    }

    /// Every target for `domain` (as written after the `@`), in the order to try them.
    pub async fn targets(&self, domain: &str, port: u16) -> Result<Vec<Target>, MxError> {
        if let Some(ip) = parse_domain_literal(domain) {
            return Ok(vec![Target {
                name: domain.to_string(),
                addr: SocketAddr::new(ip, port),
            }]);
        }
        let Some(ascii) = to_ascii_domain(domain) else {
            return Err(MxError::Permanent {
                status: STATUS_NO_DOMAIN,
                reply: format!("invalid domain name {domain:?}"),
            });
        };
        let hosts = self.mx_hosts(&ascii).await?;
        let implicit = hosts.len() == 1 && hosts[0] == ascii;

        // Hosts are looked up concurrently so that slow DNS costs one timeout, not one per host.
        let mut set = tokio::task::JoinSet::new();
        for (i, host) in hosts.iter().enumerate() {
            let resolver = self.clone();
            let host = host.clone();
            set.spawn(async move { (i, resolver.addresses(&host).await) });
        }
        let mut results: Vec<Result<Vec<IpAddr>, String>> =
            hosts.iter().map(|_| Ok(Vec::new())).collect();
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok((i, r)) => results[i] = r,
                Err(e) => {
                    return Err(MxError::Temporary {
                        reply: format!("DNS lookup task failed: {e}"),
                    });
                }
            }
        }
        let mut targets = Vec::new();
        let mut temporary = None;
        for (host, result) in hosts.iter().zip(results) {
            match result {
                Ok(ips) => targets.extend(ips.into_iter().map(|ip| Target {
                    name: host.clone(),
                    addr: SocketAddr::new(ip, port),
                })),
                Err(e) => temporary = Some(format!("{host}: {e}")),
            }
        }
        dedup_addrs(&mut targets);
        if !targets.is_empty() {
            return Ok(targets);
        }
        match temporary {
            Some(reply) => Err(MxError::Temporary {
                reply: format!("DNS lookup failed: {reply}"),
            }),
            None if implicit => Err(MxError::Permanent {
                status: STATUS_NO_ROUTE,
                reply: format!("{ascii} has no MX and no address records"),
            }),
            None => Err(MxError::Permanent {
                status: STATUS_NO_ROUTE,
                reply: format!("no MX host of {ascii} has an address"),
            }),
        }
    }

    /// The MX host names of `domain` (A-label form) in the order to try them; the domain
    /// itself when it has no MX records.
    async fn mx_hosts(&self, domain: &str) -> Result<Vec<String>, MxError> {
        match self.inner.mx_lookup(fqdn(domain)).await {
            Ok(lookup) => {
                let records: Vec<(u16, String)> = lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::MX(mx) => Some((mx.preference, host_name(&mx.exchange.to_ascii()))),
                        _ => None,
                    })
                    .collect();
                if is_null_mx(&records) {
                    return Err(MxError::Permanent {
                        status: STATUS_NULL_MX,
                        reply: format!("{domain} does not accept mail (null MX)"),
                    });
                }
                let mut hosts = order_mx(records, &mut rand::rng());
                hosts.truncate(MAX_MX_HOSTS);
                if hosts.is_empty() {
                    // Only `.` entries mixed with nothing usable: treat like a null MX.
                    return Err(MxError::Permanent {
                        status: STATUS_NULL_MX,
                        reply: format!("{domain} has no usable MX host"),
                    });
                }
                Ok(hosts)
            }
            Err(e) => match classify(&e) {
                Negative::NxDomain => Err(MxError::Permanent {
                    status: STATUS_NO_DOMAIN,
                    reply: format!("domain {domain} does not exist (NXDOMAIN)"),
                }),
                Negative::NoRecords => Ok(vec![domain.to_string()]),
                Negative::Other => Err(MxError::Temporary {
                    reply: format!("DNS MX lookup for {domain} failed: {e}"),
                }),
            },
        }
    }

    /// A and AAAA of `host`, IPv4 first. `Ok(empty)` when the host has neither (or does not
    /// exist); `Err` on a temporary failure of a lookup that found nothing else.
    pub async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, String> {
        let name = fqdn(host);
        let (v4, v6) = tokio::join!(
            self.inner.ipv4_lookup(name.clone()),
            self.inner.ipv6_lookup(name)
        );
        let mut ips = Vec::new();
        let mut error = None;
        match v4 {
            Ok(l) => ips.extend(l.answers().iter().filter_map(|r| match &r.data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                _ => None,
            })),
            Err(e) if classify(&e) == Negative::Other => error = Some(e.to_string()),
            Err(_) => {}
        }
        match v6 {
            Ok(l) => ips.extend(l.answers().iter().filter_map(|r| match &r.data {
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            })),
            Err(e) if classify(&e) == Negative::Other => error = Some(e.to_string()),
            Err(_) => {}
        }
        match error {
            Some(e) if ips.is_empty() => Err(e),
            _ => Ok(ips),
        }
    }
}

/// A resolver builder for `servers` (empty: the system configuration, resolv.conf; else exactly
/// those servers over UDP and TCP, `relay.resolver`) with our timeouts. Shared with the
/// validating resolver of [`super::dnssec`].
pub(super) fn builder(
    servers: &[SocketAddr],
) -> Result<hickory_resolver::ResolverBuilder<TokioRuntimeProvider>, DeliveryError> {
    let mut builder = if servers.is_empty() {
        TokioResolver::builder_tokio()
            .map_err(|e| DeliveryError(format!("system resolver configuration: {e}")))?
    } else {
        // One name server per address, over UDP and TCP on that address's port (hickory
        // 0.26 keeps the port in each connection, not in the server).
        let group: Vec<NameServerConfig> = servers
            .iter()
            .map(|addr| {
                let connections = [ConnectionConfig::udp(), ConnectionConfig::tcp()]
                    .into_iter()
                    .map(|mut c| {
                        c.port = addr.port();
                        c
                    })
                    .collect();
                NameServerConfig::new(addr.ip(), true, connections)
            })
            .collect();
        TokioResolver::builder_with_config(
            ResolverConfig::from_parts(None, vec![], group),
            TokioRuntimeProvider::default(),
        )
    };
    let opts: &mut ResolverOpts = builder.options_mut();
    opts.timeout = DNS_TIMEOUT;
    opts.attempts = DNS_ATTEMPTS;
    // Negative answers are cached no longer than 5 minutes: a domain fixed by its owner
    // should not keep bouncing for the record's full SOA minimum.
    opts.negative_max_ttl = Some(Duration::from_secs(300));
    Ok(builder)
}

impl Resolver {
    /// The TXT records of `name` (MTA-STS, TLS-RPT), each the concatenation of its strings;
    /// `Ok(empty)` when the name has none or does not exist, `Err` on a temporary failure.
    /// At most 16 records of at most 4 KiB each are kept.
    pub async fn txt(&self, name: &str) -> Result<Vec<Vec<u8>>, String> {
        match self.inner.txt_lookup(fqdn(name)).await {
            Ok(l) => Ok(l
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::TXT(t) => Some(t.txt_data.concat()),
                    _ => None,
                })
                .filter(|t| t.len() <= 4096)
                .take(16)
                .collect()),
            Err(e) if classify(&e) == Negative::Other => Err(e.to_string()),
            Err(_) => Ok(Vec::new()),
        }
    }
}

/// What a failed lookup means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Negative {
    NxDomain,
    NoRecords,
    Other,
}

/// `is_nx_domain()` first: hickory reports NXDOMAIN as "no records found" too
/// (`NoRecordsFound` with response code NXDOMAIN). Only `NoRecordsFound` with NOERROR is
/// "no records"; SERVFAIL, REFUSED (hickory 0.26: `DnsError::ResponseCode`), timeouts and
/// everything else stay temporary, whatever shape a later hickory gives them.
fn classify(e: &NetError) -> Negative {
    if e.is_nx_domain() {
        return Negative::NxDomain;
    }
    match e {
        NetError::Dns(DnsError::NoRecordsFound(NoRecords { response_code, .. }))
            if *response_code == ResponseCode::NoError =>
        {
            Negative::NoRecords
        }
        _ => Negative::Other,
    }
}

/// `name.` — always fully qualified, so no resolv.conf search list applies.
pub(super) fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    }
}

/// A DNS name as a host name: lower case, no trailing dot (`.` stays `.`).
fn host_name(name: &str) -> String {
    let lower = name.to_ascii_lowercase();
    match lower.strip_suffix('.') {
        Some("") | None => lower,
        Some(s) => s.to_string(),
    }
}

/// RFC 7505: exactly one MX, with exchange `.` (the root).
pub fn is_null_mx(records: &[(u16, String)]) -> bool {
    records.len() == 1 && (records[0].1 == "." || records[0].1.is_empty())
}

/// Host names by ascending preference, shuffled among equal preferences (RFC 5321 5.1);
/// `.` entries dropped, duplicates dropped (first occurrence wins).
pub fn order_mx(mut records: Vec<(u16, String)>, rng: &mut impl Rng) -> Vec<String> {
    records.retain(|(_, h)| h != "." && !h.is_empty());
    records.shuffle(rng);
    // Stable sort keeps the shuffled order inside each preference.
    records.sort_by_key(|(pref, _)| *pref);
    let mut hosts: Vec<String> = Vec::with_capacity(records.len());
    for (_, h) in records {
        if !hosts.contains(&h) {
            hosts.push(h);
        }
    }
    hosts
}

/// Keep the first target for each socket address.
fn dedup_addrs(targets: &mut Vec<Target>) {
    let mut seen = std::collections::HashSet::new();
    targets.retain(|t| seen.insert(t.addr));
}

/// `[192.0.2.1]` or `[IPv6:2001:db8::1]` (RFC 5321 4.1.3) to its address.
pub fn parse_domain_literal(domain: &str) -> Option<IpAddr> {
    let inner = domain.strip_prefix('[')?.strip_suffix(']')?;
    if let Some(v6) = inner
        .strip_prefix("IPv6:")
        .or_else(|| inner.strip_prefix("ipv6:"))
        .or_else(|| inner.strip_prefix("IPV6:"))
    {
        return v6.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6);
    }
    inner.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

/// A domain in lower-case A-label form (`Bücher.Example` → `xn--bcher-kva.example`);
/// `None` when it cannot be converted. Domain literals pass through unchanged.
pub fn to_ascii_domain(domain: &str) -> Option<String> {
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    if domain.is_empty() {
        return None;
    }
    if domain.starts_with('[') {
        return Some(domain.to_string());
    }
    if domain.is_ascii() {
        return Some(domain.to_ascii_lowercase());
    }
    idna::domain_to_ascii(domain).ok().filter(|d| !d.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn recs(list: &[(u16, &str)]) -> Vec<(u16, String)> {
        list.iter().map(|(p, h)| (*p, h.to_string())).collect()
    }

    #[test]
    fn order_by_preference() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let hosts = order_mx(recs(&[(30, "c"), (10, "a"), (20, "b")]), &mut rng);
        assert_eq!(hosts, ["a", "b", "c"]);
    }

    #[test]
    fn equal_preferences_are_shuffled() {
        let mut seen = std::collections::HashSet::new();
        for seed in 0..64 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let hosts = order_mx(
                recs(&[(20, "z"), (10, "a"), (10, "b"), (10, "c"), (5, "first")]),
                &mut rng,
            );
            assert_eq!(hosts[0], "first");
            assert_eq!(hosts[4], "z");
            let mut middle = hosts[1..4].to_vec();
            seen.insert(middle.clone());
            middle.sort();
            assert_eq!(middle, ["a", "b", "c"]);
        }
        assert!(seen.len() > 1, "equal preferences never shuffled");
    }

    #[test]
    fn duplicates_and_root_dropped() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let hosts = order_mx(recs(&[(10, "a"), (20, "a"), (5, ".")]), &mut rng);
        assert_eq!(hosts, ["a"]);
    }

    #[test]
    fn null_mx() {
        assert!(is_null_mx(&recs(&[(0, ".")])));
        assert!(!is_null_mx(&recs(&[(0, "."), (10, "mx.example")])));
        assert!(!is_null_mx(&recs(&[(0, "mx.example")])));
        assert_eq!(host_name("."), ".");
        assert_eq!(host_name("MX1.Example.TEST."), "mx1.example.test");
    }

    #[test]
    fn domain_literals() {
        assert_eq!(
            parse_domain_literal("[192.0.2.1]"),
            Some("192.0.2.1".parse().unwrap())
        );
        assert_eq!(
            parse_domain_literal("[IPv6:2001:db8::1]"),
            Some("2001:db8::1".parse().unwrap())
        );
        assert_eq!(parse_domain_literal("[2001:db8::1]"), None);
        assert_eq!(parse_domain_literal("example.test"), None);
        assert_eq!(parse_domain_literal("[999.1.1.1]"), None);
    }

    #[test]
    fn a_labels() {
        assert_eq!(
            to_ascii_domain("Bücher.Example").as_deref(),
            Some("xn--bcher-kva.example")
        );
        assert_eq!(
            to_ascii_domain("Example.TEST.").as_deref(),
            Some("example.test")
        );
        assert_eq!(to_ascii_domain(""), None);
    }

    #[test]
    fn target_label() {
        let t = Target {
            name: "mx1.example.test".into(),
            addr: "127.0.0.1:2525".parse().unwrap(),
        };
        assert_eq!(t.label(), "mx1.example.test[127.0.0.1]:2525");
        let t = Target {
            name: "mx6.example.test".into(),
            addr: "[::1]:25".parse().unwrap(),
        };
        assert_eq!(t.label(), "mx6.example.test[::1]:25");
    }
}
