//! A DNS server on loopback (UDP and TCP, same port) for delivery tests: hickory-server with an
//! authoritative in-memory zone `test.`. Names outside the zone's records get NXDOMAIN; names
//! with records but not of the asked type get NOERROR with no answers. [`DnsServer::servfail`]
//! makes a name answer SERVFAIL. Stopped when dropped.
#![allow(dead_code)]

use std::collections::HashSet;
use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Header, HeaderCounts, Metadata, ResponseCode};
use hickory_server::proto::rr::rdata::{A, AAAA, MX, SOA, TXT};
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
        let mut authority: InMemoryZoneHandler =
            InMemoryZoneHandler::empty(origin.clone(), ZoneType::Primary, AxfrPolicy::Deny);
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
            };
            assert!(
                authority.upsert_mut(Record::from_rdata(name, TTL, rdata), 1),
                "{owner}: record not added"
            );
        }
        let mut catalog = Catalog::new();
        catalog.upsert(LowerName::new(&origin), vec![Arc::new(authority)]);

        let servfail = Arc::new(Mutex::new(HashSet::new()));
        let handler = Handler {
            catalog,
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

    /// From now on, every query for `name` (fully qualified) answers SERVFAIL.
    pub fn servfail(&self, name: &str) {
        let name = LowerName::new(&Name::from_str(name).unwrap());
        self.servfail.lock().unwrap().insert(name);
    }
}

/// The catalog, except for names told to fail.
struct Handler {
    catalog: Catalog,
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
        self.catalog
            .handle_request::<R, T>(request, response_handle)
            .await
    }
}
