//! The HAProxy PROXY protocol, versions 1 (text) and 2 (binary), in front of 587 and 465
//! (`listen.proxy_protocol`, `listen.trusted_proxies`).
//!
//! [`parse`] is sans-IO: it looks at the bytes received so far and says whether they are a
//! complete header (and how many bytes it used), a valid start of one, or not a header. Because
//! a header's end is decided by its own bytes only, the socket reader
//! ([`crate::listener::proxy_header::read_header`]) never consumes a byte past it: it peeks at what the socket holds, consumes it all while the header is incomplete (every
//! such byte belongs to the header), and once the header is complete consumes exactly the rest
//! of it. The ClientHello on 465, or a pipelined EHLO on 587, stays in the socket.
//!
//! Why not the `ppp` crate: it would bring a second major version of `thiserror` into the
//! tree, and the part that needs care here — never reading past the header — is ours either
//! way. The grammar is small: v1 is one CRLF-terminated line of at most 107 bytes; v2 is a
//! 16-byte fixed part and a length-prefixed block.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

/// The 12-byte signature that starts every v2 header.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 header, CRLF included (the spec's bound).
pub const V1_MAX: usize = 107;
/// The largest v2 address-and-TLV block we accept: the biggest address block (two UNIX paths,
/// 216 bytes) plus 1 KiB of TLVs. HAProxy's own TLVs (unique id, TLS details) fit easily; a
/// larger header is refused rather than buffered.
pub const V2_MAX_PAYLOAD: usize = 216 + 1024;
/// The longest header we ever hold.
pub const MAX_HEADER: usize = 16 + V2_MAX_PAYLOAD;
/// The header must arrive within `limits.command_timeout`, but never more than this: a proxy
/// sends it at once, so a slow header is a stray client or an attack on connection slots.
pub const MAX_HEADER_WAIT: Duration = Duration::from_secs(10);

/// What a complete header says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// A proxied TCP connection: the client's address and the address it connected to.
    Proxied {
        source: SocketAddr,
        destination: SocketAddr,
    },
    /// No client address: v2 LOCAL (the proxy's own health check), v2 with an unspecified or
    /// UNIX address family, or v1 `PROXY UNKNOWN`. The TCP peer is the client.
    Local,
}

impl Header {
    /// The client address to use for limits, logs and Received: the header's source, or the
    /// TCP peer for [`Header::Local`].
    pub fn client(&self, peer: SocketAddr) -> SocketAddr {
        match self {
            Header::Proxied { source, .. } => *source,
            Header::Local => peer,
        }
    }
}

/// Why bytes are not a PROXY header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("not a PROXY protocol header")]
    NotProxy,
    #[error("PROXY v1 header longer than 107 bytes")]
    V1TooLong,
    #[error("malformed PROXY v1 header")]
    V1Malformed,
    #[error("PROXY v2: unsupported version or command")]
    V2Command,
    #[error("PROXY v2: unsupported address family or transport")]
    V2Family,
    #[error("PROXY v2: address block shorter than its family needs")]
    V2Short,
    #[error("PROXY v2 header larger than we accept")]
    V2TooLong,
}

/// The outcome of [`parse`] on the bytes received so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// A complete header that used the first `len` bytes.
    Complete { header: Header, len: usize },
    /// A valid start of a header; more bytes are needed.
    Incomplete,
}

/// Parse the start of a connection's bytes as a PROXY v1 or v2 header.
pub fn parse(buf: &[u8]) -> Result<Parsed, ProxyError> {
    match buf.first() {
        None => Ok(Parsed::Incomplete),
        Some(b'P') => parse_v1(buf),
        Some(b'\r') => parse_v2(buf),
        Some(_) => Err(ProxyError::NotProxy),
    }
}

/// Whether `buf` starts with `prefix`, or is itself a start of it (`Ok(false)`: need more).
fn expect_prefix(buf: &[u8], prefix: &[u8]) -> Result<bool, ProxyError> {
    let n = buf.len().min(prefix.len());
    if buf[..n] != prefix[..n] {
        return Err(ProxyError::NotProxy);
    }
    Ok(buf.len() >= prefix.len())
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, ProxyError> {
    if !expect_prefix(buf, b"PROXY ")? {
        return Ok(Parsed::Incomplete);
    }
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
        // A CR anywhere but right before the LF is malformed; say so early. Checked before the
        // length, so that the verdict does not depend on how many bytes have arrived.
        if window[..window.len() - 1].contains(&b'\r') {
            return Err(ProxyError::V1Malformed);
        }
        if buf.len() >= V1_MAX {
            return Err(ProxyError::V1TooLong);
        }
        return Ok(Parsed::Incomplete);
    };
    if lf == 0 || window[lf - 1] != b'\r' {
        return Err(ProxyError::V1Malformed);
    }
    let line = &window[6..lf - 1];
    if line.contains(&b'\r') {
        return Err(ProxyError::V1Malformed);
    }
    let len = lf + 1;
    let line = std::str::from_utf8(line).map_err(|_| ProxyError::V1Malformed)?;
    if line == "UNKNOWN" || line.starts_with("UNKNOWN ") {
        // The rest of an UNKNOWN line is ignored (the spec lets a sender put anything there).
        return Ok(Parsed::Complete {
            header: Header::Local,
            len,
        });
    }
    let fields: Vec<&str> = line.split(' ').collect();
    let [proto, src, dst, sport, dport] = fields[..] else {
        return Err(ProxyError::V1Malformed);
    };
    let (source, destination) = match proto {
        "TCP4" => (
            IpAddr::V4(v1_addr::<Ipv4Addr>(src)?),
            IpAddr::V4(v1_addr::<Ipv4Addr>(dst)?),
        ),
        "TCP6" => (
            IpAddr::V6(v1_addr::<Ipv6Addr>(src)?),
            IpAddr::V6(v1_addr::<Ipv6Addr>(dst)?),
        ),
        _ => return Err(ProxyError::V1Malformed),
    };
    Ok(Parsed::Complete {
        header: Header::Proxied {
            source: SocketAddr::new(source, v1_port(sport)?),
            destination: SocketAddr::new(destination, v1_port(dport)?),
        },
        len,
    })
}

fn v1_addr<T: FromStr>(text: &str) -> Result<T, ProxyError> {
    text.parse().map_err(|_| ProxyError::V1Malformed)
}

/// A port: decimal 0-65535, no sign, no leading zero.
fn v1_port(text: &str) -> Result<u16, ProxyError> {
    let digits = !text.is_empty() && text.len() <= 5 && text.bytes().all(|b| b.is_ascii_digit());
    if !digits || (text.len() > 1 && text.starts_with('0')) {
        return Err(ProxyError::V1Malformed);
    }
    text.parse().map_err(|_| ProxyError::V1Malformed)
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, ProxyError> {
    if !expect_prefix(buf, &V2_SIGNATURE)? {
        return Ok(Parsed::Incomplete);
    }
    // Check each fixed byte as soon as it is there, so junk is refused without waiting.
    let version_command = buf.get(12).copied();
    let command = match version_command {
        None => return Ok(Parsed::Incomplete),
        Some(0x20) => Command::Local,
        Some(0x21) => Command::Proxy,
        Some(_) => return Err(ProxyError::V2Command),
    };
    let Some(&family) = buf.get(13) else {
        return Ok(Parsed::Incomplete);
    };
    let (af, transport) = (family >> 4, family & 0x0f);
    if af > 3 || transport > 2 {
        return Err(ProxyError::V2Family);
    }
    let (Some(&hi), Some(&lo)) = (buf.get(14), buf.get(15)) else {
        return Ok(Parsed::Incomplete);
    };
    let payload_len = usize::from(u16::from_be_bytes([hi, lo]));
    if payload_len > V2_MAX_PAYLOAD {
        return Err(ProxyError::V2TooLong);
    }
    let len = 16 + payload_len;
    // The address block's size is known now: refuse a short one before waiting for it.
    let needed = match af {
        1 => 12,
        2 => 36,
        3 => 216,
        _ => 0,
    };
    if command == Command::Proxy && payload_len < needed {
        return Err(ProxyError::V2Short);
    }
    if command == Command::Proxy && af != 0 && transport != 1 {
        // DGRAM (or unspecified transport with an address): not a stream we can serve.
        return Err(ProxyError::V2Family);
    }
    if buf.len() < len {
        return Ok(Parsed::Incomplete);
    }
    let block = &buf[16..len];
    let header = match (command, af) {
        (Command::Local, _) | (Command::Proxy, 0 | 3) => Header::Local,
        (Command::Proxy, 1) => {
            let ip =
                |at: usize| Ipv4Addr::new(block[at], block[at + 1], block[at + 2], block[at + 3]);
            let port = |at: usize| u16::from_be_bytes([block[at], block[at + 1]]);
            Header::Proxied {
                source: SocketAddr::new(IpAddr::V4(ip(0)), port(8)),
                destination: SocketAddr::new(IpAddr::V4(ip(4)), port(10)),
            }
        }
        (Command::Proxy, _) => {
            let ip = |at: usize| {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&block[at..at + 16]);
                Ipv6Addr::from(octets)
            };
            let port = |at: usize| u16::from_be_bytes([block[at], block[at + 1]]);
            Header::Proxied {
                source: SocketAddr::new(IpAddr::V6(ip(0)), port(32)),
                destination: SocketAddr::new(IpAddr::V6(ip(16)), port(34)),
            }
        }
    };
    Ok(Parsed::Complete { header, len })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Command {
    Local,
    Proxy,
}

/// The reader's decisions without the socket: offered the bytes waiting in the socket (a
/// peek), it says how many of them to consume. Shared by the socket reader
/// ([`crate::listener::proxy_header::read_header`]) and the fuzz target.
#[derive(Debug, Default)]
pub struct HeaderReader {
    seen: Vec<u8>,
}

/// What to do with the bytes offered to [`HeaderReader::offer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Consume all of them and offer what comes next.
    NeedMore,
    /// Consume the first `consume` of them: the header ends there.
    Done { header: Header, consume: usize },
}

impl HeaderReader {
    pub fn new() -> HeaderReader {
        HeaderReader::default()
    }

    /// At most this many bytes may be offered next (the longest header minus what was seen).
    pub fn room(&self) -> usize {
        MAX_HEADER - self.seen.len()
    }

    /// Look at `available` (at most [`room`](Self::room) bytes waiting in the socket, not yet
    /// consumed) and decide.
    pub fn offer(&mut self, available: &[u8]) -> Result<Offer, ProxyError> {
        let available = &available[..available.len().min(self.room())];
        let had = self.seen.len();
        self.seen.extend_from_slice(available);
        match parse(&self.seen)? {
            Parsed::Complete { header, len } => Ok(Offer::Done {
                header,
                consume: len - had,
            }),
            // parse refuses a header before it reaches MAX_HEADER; a guard, not a path.
            Parsed::Incomplete if self.seen.len() >= MAX_HEADER => Err(ProxyError::V2TooLong),
            Parsed::Incomplete => Ok(Offer::NeedMore),
        }
    }
}

pub use crate::config::Cidr;

/// Whether `ip` is one of the trusted proxies.
pub fn is_trusted(trusted: &[Cidr], ip: IpAddr) -> bool {
    trusted.iter().any(|c| c.contains(ip))
}

/// A v2 header for tests and for `submitd health`: LOCAL when `addrs` is `None`, else PROXY
/// over TCP with these source and destination addresses (same family).
pub fn v2_header(addrs: Option<(SocketAddr, SocketAddr)>) -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    match addrs {
        None => out.extend_from_slice(&[0x20, 0x00, 0, 0]),
        Some((SocketAddr::V4(s), SocketAddr::V4(d))) => {
            out.extend_from_slice(&[0x21, 0x11, 0, 12]);
            out.extend_from_slice(&s.ip().octets());
            out.extend_from_slice(&d.ip().octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
        Some((s, d)) => {
            let v6 = |a: SocketAddr| match a.ip() {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            out.extend_from_slice(&[0x21, 0x21, 0, 36]);
            out.extend_from_slice(&v6(s).octets());
            out.extend_from_slice(&v6(d).octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn complete(buf: &[u8]) -> (Header, usize) {
        match parse(buf) {
            Ok(Parsed::Complete { header, len }) => (header, len),
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(buf)),
        }
    }

    #[test]
    fn v1_tcp4_tcp6_unknown() {
        let line = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 587\r\nEHLO x\r\n";
        let (h, len) = complete(line);
        assert_eq!(len, line.len() - 8);
        assert_eq!(
            h,
            Header::Proxied {
                source: sa("192.0.2.1:56324"),
                destination: sa("198.51.100.2:587")
            }
        );
        let (h, _) = complete(b"PROXY TCP6 2001:db8::1 2001:db8::2 65535 0\r\n");
        assert_eq!(h.client(sa("127.0.0.1:1")), sa("[2001:db8::1]:65535"));
        assert_eq!(complete(b"PROXY UNKNOWN\r\n"), (Header::Local, 15));
        let (h, _) = complete(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n");
        assert_eq!(h.client(sa("127.0.0.1:9")), sa("127.0.0.1:9"));
    }

    #[test]
    fn v1_malformed() {
        for bad in [
            &b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2\n"[..],
            b"PROXY TCP4 192.0.2.1 198.51.100.2 1\r\n",
            b"PROXY TCP4 192.0.2.1  198.51.100.2 1 2\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2 \r\n",
            b"PROXY TCP4 2001:db8::1 198.51.100.2 1 2\r\n",
            b"PROXY TCP6 192.0.2.1 2001:db8::2 1 2\r\n",
            b"PROXY TCP4 192.0.2.01 198.51.100.2 1 2\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 01 2\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 65536 2\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 +1 2\r\n",
            b"PROXY UDP4 192.0.2.1 198.51.100.2 1 2\r\n",
            b"PROXY TCP4 192.0.2.1\r198.51.100.2 1 2\r\n",
            b"PROXY \r\n",
        ] {
            assert_eq!(
                parse(bad),
                Err(ProxyError::V1Malformed),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(parse(b"PROXY\r\n"), Err(ProxyError::NotProxy));
        // Found by the fuzz target: a CR inside a line that is also too long is malformed
        // however many bytes have arrived.
        let mut cr_and_long = b"PROXY TC 2\r0".to_vec();
        cr_and_long.resize(200, 0);
        assert_eq!(parse(&cr_and_long), Err(ProxyError::V1Malformed));
        assert_eq!(parse(&cr_and_long[..20]), Err(ProxyError::V1Malformed));
        assert_eq!(parse(b"EHLO x\r\n"), Err(ProxyError::NotProxy));
        assert_eq!(parse(b"\x16\x03\x01"), Err(ProxyError::NotProxy));
        let long = format!("PROXY UNKNOWN {}\r\n", "x".repeat(100));
        assert_eq!(parse(long.as_bytes()), Err(ProxyError::V1TooLong));
        assert_eq!(
            parse(&long.as_bytes()[..V1_MAX]),
            Err(ProxyError::V1TooLong)
        );
        // 107 bytes exactly, CRLF included, is fine.
        let max = format!("PROXY UNKNOWN {}\r\n", "x".repeat(V1_MAX - 16));
        assert_eq!(complete(max.as_bytes()).1, V1_MAX);
    }

    #[test]
    fn v1_prefixes_are_incomplete() {
        let line = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 587\r\n";
        for n in 0..line.len() {
            assert_eq!(parse(&line[..n]), Ok(Parsed::Incomplete), "{n}");
        }
    }

    #[test]
    fn v2_ipv4_ipv6_local() {
        let h4 = v2_header(Some((sa("203.0.113.7:40000"), sa("192.0.2.1:465"))));
        let mut with_hello = h4.clone();
        with_hello.extend_from_slice(b"\x16\x03\x01\x02\x00");
        let (h, len) = complete(&with_hello);
        assert_eq!(len, 28);
        assert_eq!(h.client(sa("127.0.0.1:1")), sa("203.0.113.7:40000"));
        let h6 = v2_header(Some((sa("[2001:db8::7]:1"), sa("[2001:db8::1]:587"))));
        let (h, len) = complete(&h6);
        assert_eq!(len, 52);
        assert_eq!(
            h,
            Header::Proxied {
                source: sa("[2001:db8::7]:1"),
                destination: sa("[2001:db8::1]:587")
            }
        );
        assert_eq!(complete(&v2_header(None)), (Header::Local, 16));
        for n in 0..h6.len() {
            assert_eq!(parse(&h6[..n]), Ok(Parsed::Incomplete), "{n}");
        }
    }

    #[test]
    fn v2_tlvs_local_with_addresses_and_unspec() {
        // PROXY over IPv4 with a 5-byte TLV after the addresses: skipped, length honoured.
        let mut h = v2_header(Some((sa("203.0.113.7:1"), sa("192.0.2.1:2"))));
        h[15] = 12 + 5;
        h.extend_from_slice(&[0x05, 0x00, 0x02, 0xab, 0xcd]);
        assert_eq!(complete(&h).1, 33);
        // LOCAL may carry addresses; they are ignored.
        let mut local = v2_header(Some((sa("203.0.113.7:1"), sa("192.0.2.1:2"))));
        local[12] = 0x20;
        assert_eq!(complete(&local), (Header::Local, 28));
        // PROXY with the UNSPEC family: no address, the TCP peer is the client.
        let mut unspec = V2_SIGNATURE.to_vec();
        unspec.extend_from_slice(&[0x21, 0x00, 0, 0]);
        assert_eq!(complete(&unspec), (Header::Local, 16));
    }

    #[test]
    fn v2_malformed() {
        let good = v2_header(Some((sa("203.0.113.7:1"), sa("192.0.2.1:2"))));
        let with = |at: usize, byte: u8| {
            let mut h = good.clone();
            h[at] = byte;
            h
        };
        assert_eq!(parse(&with(12, 0x11)), Err(ProxyError::V2Command));
        assert_eq!(parse(&with(12, 0x22)), Err(ProxyError::V2Command));
        assert_eq!(parse(&with(13, 0x41)), Err(ProxyError::V2Family));
        assert_eq!(parse(&with(13, 0x12)), Err(ProxyError::V2Family)); // DGRAM
        assert_eq!(parse(&with(13, 0x13)), Err(ProxyError::V2Family));
        assert_eq!(parse(&with(15, 11)), Err(ProxyError::V2Short));
        assert_eq!(parse(&with(13, 0x21)), Err(ProxyError::V2Short)); // IPv6 needs 36
        assert_eq!(parse(&with(11, b'X')), Err(ProxyError::NotProxy));
        // Refused from the length field alone, before the block arrives.
        let mut big = good[..16].to_vec();
        big[14..16].copy_from_slice(&((V2_MAX_PAYLOAD + 1) as u16).to_be_bytes());
        assert_eq!(parse(&big), Err(ProxyError::V2TooLong));
        big[14..16].copy_from_slice(&(V2_MAX_PAYLOAD as u16).to_be_bytes());
        assert_eq!(parse(&big), Ok(Parsed::Incomplete));
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// The no-over-read property: a header's end is decided by its own bytes. Every
            /// strict prefix of a complete header is incomplete, and what follows changes
            /// nothing. Never panics on any input.
            #[test]
            fn end_is_decided_by_the_header_alone(input in proptest::collection::vec(any::<u8>(), 0..300), tail in proptest::collection::vec(any::<u8>(), 0..40)) {
                check(&input, &tail);
            }

            #[test]
            fn v1_lines(src in any::<[u8; 4]>(), dst in any::<[u8; 4]>(), sp in any::<u16>(), dp in any::<u16>(), tail in proptest::collection::vec(any::<u8>(), 0..40)) {
                let line = format!("PROXY TCP4 {} {} {sp} {dp}\r\n", Ipv4Addr::from(src), Ipv4Addr::from(dst));
                let mut buf = line.clone().into_bytes();
                buf.extend_from_slice(&tail);
                let (h, len) = complete(&buf);
                prop_assert_eq!(len, line.len());
                prop_assert_eq!(h.client(sa("127.0.0.1:1")), SocketAddr::new(Ipv4Addr::from(src).into(), sp));
                check(&line.into_bytes(), &tail);
            }

            #[test]
            fn v2_headers(src in any::<[u8; 16]>(), dst in any::<[u8; 16]>(), sp in any::<u16>(), dp in any::<u16>(), tail in proptest::collection::vec(any::<u8>(), 0..40)) {
                let s = SocketAddr::new(Ipv6Addr::from(src).into(), sp);
                let d = SocketAddr::new(Ipv6Addr::from(dst).into(), dp);
                let h = v2_header(Some((s, d)));
                prop_assert_eq!(complete(&h), (Header::Proxied { source: s, destination: d }, 52));
                check(&h, &tail);
            }
        }

        fn check(input: &[u8], tail: &[u8]) {
            if let Ok(Parsed::Complete { header, len }) = parse(input) {
                assert!(len <= input.len() && len <= MAX_HEADER);
                for n in 0..len {
                    assert_eq!(parse(&input[..n]), Ok(Parsed::Incomplete), "prefix {n}");
                }
                let mut more = input[..len].to_vec();
                more.extend_from_slice(tail);
                assert_eq!(parse(&more), Ok(Parsed::Complete { header, len }));
            }
        }
    }
}
