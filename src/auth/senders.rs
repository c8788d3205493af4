//! Which addresses a user may send as (DESIGN.md "Precise points"): an exact address or
//! `@domain`; domain case-insensitive, local part ASCII case-insensitive, no subdomains.

/// One entry of a user's `senders`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SenderPattern {
    /// `local@domain`.
    Address { local: String, domain: String },
    /// `@domain`: any local part at exactly this domain.
    Domain(String),
}

impl SenderPattern {
    /// Parse `alice@example.test` or `@example.test`.
    pub fn parse(_s: &str) -> Result<SenderPattern, String> {
        todo!("auth helper")
    }

    /// Whether `address` (as written in MAIL FROM or a header, without angle brackets)
    /// is covered by this pattern.
    pub fn matches(&self, _address: &str) -> bool {
        todo!("auth helper")
    }
}

/// Whether any of `patterns` covers `address`.
pub fn owns(patterns: &[SenderPattern], address: &str) -> bool {
    patterns.iter().any(|p| p.matches(address))
}
