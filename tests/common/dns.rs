//! A DNS server on loopback (UDP and TCP, same port) for delivery tests: hickory-server with an
//! authoritative in-memory zone `test.`. Names outside the zone's records get NXDOMAIN; names
//! with records but not of the asked type get NOERROR with no answers. [`DnsServer::servfail`]
//! makes a name answer SERVFAIL. Stopped when dropped.
//!
//! [`DnsServer::start_signed`] serves the zone DNSSEC-signed (NSEC, ECDSA P-256, a key made
//! for that server) and writes its trust anchor to a file, for `relay.dnssec_trust_anchor`;
//! [`Signing`] adds unsigned child zones (provably insecure delegations) and corrupted
//! signatures.
#![allow(dead_code)]

use std::collections::HashSet;
use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_server::Server;
use hickory_server::dnssec::NxProofKind;
use hickory_server::net::runtime::Time;
use hickory_server::proto::dnssec::crypto::EcdsaSigningKey;
use hickory_server::proto::dnssec::rdata::{DNSKEY, DNSSECRData, RRSIG};
use hickory_server::proto::dnssec::{Algorithm, DnssecSigner, SigningKey};
use hickory_server::proto::op::{Header, HeaderCounts, Metadata, ResponseCode};
use hickory_server::proto::rr::RecordType;
use hickory_server::proto::rr::rdata::tlsa::{CertUsage, Matching, Selector};
use hickory_server::proto::rr::rdata::{A, AAAA, MX, NS, SOA, TLSA, TXT};
use hickory_server::proto::rr::{LowerName, Name, RData, Record};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, MessageResponseBuilder, ZoneType};
use tokio::net::{TcpListener, UdpSocket};

/// One record in the zone. A null MX is `Rr::Mx(0, ".")`.
#[derive(Debug, Clone)]
pub enum Rr {
    Mx(u16, &'static str),
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    /// A TXT record's text, served as character-strings of at most 255 bytes.
    Txt(String),
    /// A TLSA record: usage, selector, matching type, data.
    Tlsa(u8, u8, u8, Vec<u8>),
    /// An NS record (a delegation when not at the zone's apex).
    Ns(&'static str),
}

/// Extras for [`DnsServer::start_signed`].
#[derive(Debug, Default)]
pub struct Signing {
    /// Child zones of `test.` served unsigned, delegated without DS (provably insecure):
    /// (apex, records). The delegation's NS record is added to the parent.
    pub insecure: Vec<(&'static str, Vec<(&'static str, Rr)>)>,
    /// Owner names whose signatures are corrupted after signing: every answer about them is
    /// bogus.
    pub corrupt: Vec<&'static str>,
}

/// The zone's origin.
const ORIGIN: &str = "test.";
const TTL: u32 = 60;

/// A running DNS server; `addr` serves UDP and TCP.
pub struct DnsServer {
    pub addr: SocketAddr,
    servfail: Arc<Mutex<HashSet<LowerName>>>,
    _server: Server<Handler>,
}

impl DnsServer {
    /// Serve `records` (owner names fully qualified, like `"example.test."`).
    pub async fn start(records: Vec<(&'static str, Rr)>) -> DnsServer {
        let origin = Name::from_str(ORIGIN).unwrap();
        let authority = zone(&origin, records, None);
        let mut catalog = Catalog::new();
        catalog.upsert(LowerName::new(&origin), vec![Arc::new(authority)]);
        serve(catalog, None).await
    }

    /// Serve `records` in the zone `test.`, DNSSEC-signed with a key made for this server,
    /// plus `signing`'s extras; write the trust anchor (the zone's DNSKEY, in zone-file form)
    /// to `anchor`.
    pub async fn start_signed(
        records: Vec<(&'static str, Rr)>,
        signing: Signing,
        anchor: &Path,
    ) -> DnsServer {
        let origin = Name::from_str(ORIGIN).unwrap();
        let mut records = records;
        records.push((ORIGIN, Rr::Ns("ns.test.")));
        records.push(("ns.test.", Rr::A(Ipv4Addr::LOCALHOST)));
        for (apex, _) in &signing.insecure {
            records.push((apex, Rr::Ns("ns.test.")));
        }
        let mut parent = zone(&origin, records, Some(NxProofKind::Nsec));
        let alg = Algorithm::ECDSAP256SHA256;
        let pkcs8 = EcdsaSigningKey::generate_pkcs8(alg).unwrap();
        let key = EcdsaSigningKey::from_pkcs8(&pkcs8, alg).unwrap();
        let dnskey = DNSKEY::from_key(&key.to_public_key().unwrap());
        std::fs::write(anchor, format!("{ORIGIN} {TTL} IN DNSKEY {dnskey}\n")).unwrap();
        let signer = DnssecSigner::new(
            dnskey,
            Box::new(key),
            origin.clone(),
            Duration::from_secs(86400),
        );
        parent.add_zone_signing_key_mut(signer).unwrap();
        parent.secure_zone_mut().unwrap();
        for name in &signing.corrupt {
            corrupt(&mut parent, name);
        }
        let parent = Arc::new(parent);
        let mut catalog = Catalog::new();
        catalog.upsert(LowerName::new(&origin), vec![parent.clone()]);
        // DS records live in the parent: DS queries are answered from it alone.
        let mut ds = Catalog::new();
        ds.upsert(LowerName::new(&origin), vec![parent]);
        for (apex, child_records) in signing.insecure {
            let apex = Name::from_str(apex).unwrap();
            let mut child_records = child_records;
            child_records.push((leak(&apex.to_string()), Rr::Ns("ns.test.")));
            let child = zone(&apex, child_records, None);
            catalog.upsert(LowerName::new(&apex), vec![Arc::new(child)]);
        }
        serve(catalog, Some(ds)).await
    }

    /// From now on, every query for `name` (fully qualified) answers SERVFAIL.
    pub fn servfail(&self, name: &str) {
        let name = LowerName::new(&Name::from_str(name).unwrap());
        self.servfail.lock().unwrap().insert(name);
    }
}

/// The catalog, except for names told to fail.
struct Handler {
    catalog: Catalog,
    /// Where DS queries go, when set (the parent zone: signed servers with child zones).
    ds: Option<Catalog>,
    servfail: Arc<Mutex<HashSet<LowerName>>>,
}

// The trait is declared with `#[async_trait]`: this is its desugared form (no async-trait
// dependency for one impl).
impl RequestHandler for Handler {
    fn handle_request<'life0, 'life1, 'async_trait, R, T>(
        &'life0 self,
        request: &'life1 Request,
        response_handle: R,
    ) -> Pin<Box<dyn Future<Output = ResponseInfo> + Send + 'async_trait>>
    where
        R: ResponseHandler + 'async_trait,
        T: Time + 'async_trait,
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(self.handle::<R, T>(request, response_handle))
    }
}

impl Handler {
    async fn handle<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let fail = request
            .request_info()
            .is_ok_and(|info| self.servfail.lock().unwrap().contains(info.query.name()));
        if fail {
            let response = MessageResponseBuilder::from_message_request(request)
                .error_msg(&request.metadata, ResponseCode::ServFail);
            return match response_handle.send_response(response).await {
                Ok(info) => info,
                Err(_) => {
                    let mut metadata = Metadata::response_from_request(&request.metadata);
                    metadata.response_code = ResponseCode::ServFail;
                    Header {
                        metadata,
                        counts: HeaderCounts::default(),
                    }
                    .into()
                }
            };
        }
        let is_ds = request
            .request_info()
            .is_ok_and(|info| info.query.query_type() == RecordType::DS);
        match &self.ds {
            Some(ds) if is_ds => ds.handle_request::<R, T>(request, response_handle).await,
            _ => {
                self.catalog
                    .handle_request::<R, T>(request, response_handle)
                    .await
            }
        }
    }
}

/// A static name for a zone apex (tests make a handful).
fn leak(s: &str) -> &'static str {
    Box::leak(s.to_string().into_boxed_str())
}

/// The zone `origin` with its SOA and `records`.
/// `nx`: how a signed zone proves that names or types do not exist (`None` when unsigned).
fn zone(
    origin: &Name,
    records: Vec<(&'static str, Rr)>,
    nx: Option<NxProofKind>,
) -> InMemoryZoneHandler {
    let mut authority: InMemoryZoneHandler =
        InMemoryZoneHandler::empty(origin.clone(), ZoneType::Primary, AxfrPolicy::Deny, nx);
    let soa = SOA::new(
        Name::from_str("ns.test.").unwrap(),
        Name::from_str("hostmaster.test.").unwrap(),
        1,
        3600,
        600,
        86400,
        TTL,
    );
    assert!(authority.upsert_mut(Record::from_rdata(origin.clone(), TTL, RData::SOA(soa)), 1));
    for (owner, rr) in records {
        let name = Name::from_str(owner).unwrap();
        assert!(name.is_fqdn(), "{owner}: owner names end with a dot");
        let rdata = match rr {
            Rr::Mx(pref, exchange) => {
                let exchange = if exchange == "." {
                    Name::root()
                } else {
                    Name::from_str(exchange).unwrap()
                };
                RData::MX(MX::new(pref, exchange))
            }
            Rr::A(ip) => RData::A(A(ip)),
            Rr::Aaaa(ip) => RData::AAAA(AAAA(ip)),
            Rr::Txt(text) => RData::TXT(TXT::new(
                text.as_bytes()
                    .chunks(255)
                    .map(|c| String::from_utf8(c.to_vec()).unwrap())
                    .collect(),
            )),
            Rr::Tlsa(usage, selector, matching, data) => RData::TLSA(TLSA::new(
                CertUsage::from(usage),
                Selector::from(selector),
                Matching::from(matching),
                data,
            )),
            Rr::Ns(host) => RData::NS(NS(Name::from_str(host).unwrap())),
        };
        assert!(
            authority.upsert_mut(Record::from_rdata(name, TTL, rdata), 1),
            "{owner}: record not added"
        );
    }
    authority
}

/// Flip a bit in every signature over the RRsets at `owner` (NSEC ones excepted).
fn corrupt(zone: &mut InMemoryZoneHandler, owner: &str) {
    let name = LowerName::new(&Name::from_str(owner).unwrap());
    let mut hit = false;
    for (key, rrset) in zone.records_get_mut().iter_mut() {
        if key.name != name || key.record_type == RecordType::NSEC {
            continue;
        }
        let rrset = Arc::make_mut(rrset);
        let bad: Vec<Record> = rrset
            .rrsigs()
            .iter()
            .filter_map(|r| match &r.data {
                RData::DNSSEC(DNSSECRData::RRSIG(sig)) => {
                    let mut bytes = sig.sig().to_vec();
                    let last = bytes.len() - 1;
                    bytes[last] ^= 1;
                    let rdata = RRSIG::from_sig(sig.input().clone(), bytes);
                    Some(Record::from_rdata(
                        r.name.clone(),
                        r.ttl,
                        RData::DNSSEC(DNSSECRData::RRSIG(rdata)),
                    ))
                }
                _ => None,
            })
            .collect();
        hit |= !bad.is_empty();
        rrset.set_rrsigs(bad);
    }
    assert!(hit, "{owner}: no signature to corrupt");
}

/// Serve `catalog` on a loopback port pair (UDP and TCP).
async fn serve(catalog: Catalog, ds: Option<Catalog>) -> DnsServer {
    let servfail = Arc::new(Mutex::new(HashSet::new()));
    let handler = Handler {
        catalog,
        ds,
        servfail: servfail.clone(),
    };
    // The same port over UDP and TCP (truncated answers, the resolver's TCP fallback). The
    // UDP port is ephemeral, and its TCP twin may be taken by another test's socket: try
    // again with another port, a bounded number of times.
    let mut attempt = 0;
    let (udp, tcp, addr) = loop {
        attempt += 1;
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = udp.local_addr().unwrap();
        match TcpListener::bind(addr).await {
            Ok(tcp) => break (udp, tcp, addr),
            Err(e) if attempt < 100 => drop((udp, e)),
            Err(e) => panic!("no UDP+TCP port pair after {attempt} tries: {e}"),
        }
    };
    let mut server = Server::new(handler);
    server.register_socket(udp);
    // At most 32 responses queued per TCP connection.
    server.register_listener(tcp, Duration::from_secs(10), 32);
    DnsServer {
        addr,
        servfail,
        _server: server,
    }
}
