//! MX resolution (RFC 5321 section 5.1; RFC 7505 null MX).
