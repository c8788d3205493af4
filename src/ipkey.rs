//! The client address as the per-address limits count it: `limits.max_connections_per_ip` in
//! the listener and the per-address login throttle use this one function, so both see the same
//! "client". A host commonly holds a whole IPv6 /64 (SLAAC, privacy addresses) and can rotate
//! through it at will: counted per address, one host could take every slot.

use std::net::{IpAddr, Ipv6Addr};

pub use crate::config::{DEFAULT_IPV6_PREFIX, IPV6_PREFIX_RANGE};

/// The key `ip` is counted under: IPv4 as is (also when mapped into IPv6, `::ffff:a.b.c.d`, as
/// a dual-stack listener sees IPv4 clients), IPv6 as its network of `ipv6_prefix` bits
/// (clamped to 0..=128).
pub fn limit_key(ip: IpAddr, ipv6_prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u32::from(ipv6_prefix.min(128));
                let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ip: &str, prefix: u8) -> String {
        limit_key(ip.parse().unwrap(), prefix).to_string()
    }

    #[test]
    fn ipv6_by_prefix_ipv4_and_mapped_as_ipv4() {
        assert_eq!(key("2001:db8::1", 64), "2001:db8::");
        assert_eq!(key("2001:db8::2", 64), "2001:db8::");
        assert_eq!(key("2001:db8:0:0:ffff:ffff:ffff:ffff", 64), "2001:db8::");
        assert_eq!(key("2001:db8:0:1::1", 64), "2001:db8:0:1::");
        assert_eq!(key("2001:db8:abcd:1234::1", 48), "2001:db8:abcd::");
        assert_eq!(key("2001:db8:ffff::1", 32), "2001:db8::");
        assert_eq!(key("2001:db8::1", 128), "2001:db8::1");
        assert_eq!(key("2001:db8:1:2:3:4:5:7", 127), "2001:db8:1:2:3:4:5:6");
        assert_eq!(key("::1", 64), "::");
        assert_eq!(key("192.0.2.7", 64), "192.0.2.7");
        assert_eq!(key("::ffff:192.0.2.7", 64), "192.0.2.7");
        assert_eq!(key("::ffff:192.0.2.7", 128), "192.0.2.7");
        // Prefix 0 (never configured: the range starts at 32) does not overflow.
        assert_eq!(key("2001:db8::1", 0), "::");
    }
}
