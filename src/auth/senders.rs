//! Which addresses a user may send as (DESIGN.md "Precise points"): an exact address or
//! `@domain`; domain case-insensitive, local part ASCII case-insensitive, no subdomains.
//!
//! Both sides are reduced to a comparison key before comparing: the domain is Unicode
//! lowercased with one trailing dot removed; the local part is ASCII lowercased, and a quoted
//! local part whose content is a plain dot-atom loses its quotes (RFC 5321 section 4.1.2:
//! `"alice"` and `alice` are the same mailbox). Any other quoted local part keeps its quotes,
//! so `"alice@x"@evil.test` can never be mistaken for `alice@x`. Anything malformed has no
//! key and so matches nothing: refusing an odd address is always safe here.

use std::fmt;

/// One entry of a user's `senders`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SenderPattern {
    /// `local@domain`, both as written in the users file.
    Address { local: String, domain: String },
    /// `@domain`: any local part at exactly this domain (as written).
    Domain(String),
}

impl SenderPattern {
    /// Parse `alice@example.test` or `@example.test`.
    pub fn parse(s: &str) -> Result<SenderPattern, String> {
        if s.is_empty() {
            return Err("empty sender pattern".into());
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "sender pattern {s:?} contains whitespace or control characters"
            ));
        }
        let Some((local, domain)) = s.rsplit_once('@') else {
            return Err(format!(
                "sender pattern {s:?} has no '@' (expected local@domain or @domain)"
            ));
        };
        if domain_key(domain).is_none() {
            return Err(format!(
                "sender pattern {s:?} has an empty or invalid domain"
            ));
        }
        if local.is_empty() {
            return Ok(SenderPattern::Domain(domain.to_owned()));
        }
        if local_key(local).is_none() {
            return Err(format!("sender pattern {s:?} has an invalid local part"));
        }
        Ok(SenderPattern::Address {
            local: local.to_owned(),
            domain: domain.to_owned(),
        })
    }

    /// Whether `address` (as written in MAIL FROM or a header, without angle brackets)
    /// is covered by this pattern.
    pub fn matches(&self, address: &str) -> bool {
        let Some((local, domain)) = address_key(address) else {
            return false;
        };
        match self {
            SenderPattern::Address {
                local: p_local,
                domain: p_domain,
            } => {
                local_key(p_local).is_some_and(|k| k == local)
                    && domain_key(p_domain).is_some_and(|k| k == domain)
            }
            SenderPattern::Domain(p_domain) => domain_key(p_domain).is_some_and(|k| k == domain),
        }
    }
}

impl fmt::Display for SenderPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SenderPattern::Address { local, domain } => write!(f, "{local}@{domain}"),
            SenderPattern::Domain(domain) => write!(f, "@{domain}"),
        }
    }
}

/// `auth.default_senders` for one login: `{login}` is the login itself, `@{login_domain}` any
/// address at the login's domain, anything else a literal pattern. A template that makes no
/// valid pattern for this login (`{login}` when the login is not an address) gives nothing:
/// such a user may send only as what else names them.
pub fn expand_defaults(templates: &[String], login: &str) -> Vec<SenderPattern> {
    templates
        .iter()
        .filter_map(|t| {
            match t.as_str() {
                // Only ever one address: a login such as `@example.test` is not a domain.
                "{login}" => SenderPattern::parse(login)
                    .ok()
                    .filter(|p| matches!(p, SenderPattern::Address { .. })),
                "@{login_domain}" => {
                    let (local, domain) = login.rsplit_once('@')?;
                    if local.is_empty() {
                        return None;
                    }
                    SenderPattern::parse(&format!("@{domain}")).ok()
                }
                literal => SenderPattern::parse(literal).ok(),
            }
        })
        .collect()
}

/// Whether any of `patterns` covers `address`.
pub fn owns(patterns: &[SenderPattern], address: &str) -> bool {
    patterns.iter().any(|p| p.matches(address))
}

/// The (local, domain) comparison keys of an address, `None` when it can never match.
fn address_key(address: &str) -> Option<(String, String)> {
    if address.chars().any(char::is_control) {
        return None;
    }
    // The domain follows the last '@': a quoted local part may itself contain '@'.
    let (local, domain) = address.rsplit_once('@')?;
    Some((local_key(local)?, domain_key(domain)?))
}

/// Domain comparison key: Unicode lowercase, one trailing dot removed (an absolute name).
fn domain_key(domain: &str) -> Option<String> {
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    let bad = |c: char| {
        c.is_whitespace() || c.is_control() || matches!(c, '@' | '"' | '\\' | '<' | '>' | ',' | ';')
    };
    if domain.is_empty() || domain.chars().any(bad) {
        return None;
    }
    Some(domain.to_lowercase())
}

/// Local-part comparison key: ASCII lowercase only (RFC 5321 section 2.4 makes the local part
/// case-sensitive; folding ASCII is the usual and safe relaxation, folding Unicode is not).
fn local_key(local: &str) -> Option<String> {
    if local.is_empty() || local.chars().any(char::is_control) {
        return None;
    }
    if let Some(rest) = local.strip_prefix('"') {
        let inner = rest.strip_suffix('"')?;
        if !quoted_content_ok(inner) {
            return None;
        }
        // `"alice"` is the mailbox `alice`; anything needing the quotes stays quoted and so
        // differs from every unquoted key.
        let key = if is_dot_atom(inner) { inner } else { local };
        return Some(key.to_ascii_lowercase());
    }
    if local
        .chars()
        .any(|c| c.is_whitespace() || matches!(c, '"' | '\\' | '@'))
    {
        return None;
    }
    Some(local.to_ascii_lowercase())
}

/// RFC 5321 quoted-string content: no bare `"`, every `\` escapes one character.
fn quoted_content_ok(inner: &str) -> bool {
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return false,
            '\\' if chars.next().is_none() => return false,
            _ => {}
        }
    }
    true
}

/// RFC 5322 section 3.2.3 dot-atom-text, with RFC 6531 UTF-8 allowed in atext.
fn is_dot_atom(s: &str) -> bool {
    !s.is_empty()
        && s.split('.')
            .all(|atom| !atom.is_empty() && atom.chars().all(is_atext))
}

/// RFC 5322 atext (plus non-ASCII, RFC 6531 section 3.3).
fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_templates_expand_per_login() {
        let t: Vec<String> = [
            "{login}",
            "@{login_domain}",
            "noreply@example.org",
            "@lists.example.org",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let got = expand_defaults(&t, "alice@example.test");
        assert!(owns(&got, "alice@example.test"));
        assert!(owns(&got, "sales@example.test"));
        assert!(owns(&got, "noreply@example.org"));
        assert!(owns(&got, "x@lists.example.org"));
        assert!(!owns(&got, "alice@example.org"));
        // A login that is not an address: only the literal patterns remain.
        let got = expand_defaults(&t, "alice");
        assert_eq!(got.len(), 2);
        assert!(!owns(&got, "alice@example.test"));
        // An injected pattern in the login is not a pattern.
        let t: Vec<String> = vec!["{login}".into(), "@{login_domain}".into()];
        assert!(expand_defaults(&t, "@example.test").is_empty());
    }

    fn pat(s: &str) -> SenderPattern {
        SenderPattern::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parse_table() {
        let good: &[(&str, SenderPattern)] = &[
            (
                "alice@example.test",
                SenderPattern::Address {
                    local: "alice".into(),
                    domain: "example.test".into(),
                },
            ),
            (
                "@example.test",
                SenderPattern::Domain("example.test".into()),
            ),
            (
                "@Example.Test.",
                SenderPattern::Domain("Example.Test.".into()),
            ),
            (
                "\"alice@x\"@evil.test",
                SenderPattern::Address {
                    local: "\"alice@x\"".into(),
                    domain: "evil.test".into(),
                },
            ),
            (
                "jösé@exämple.test",
                SenderPattern::Address {
                    local: "jösé".into(),
                    domain: "exämple.test".into(),
                },
            ),
        ];
        for (input, want) in good {
            assert_eq!(&pat(input), want, "{input}");
            assert_eq!(pat(input).to_string(), *input);
        }
        let bad = [
            "",
            "alice",
            "example.test",
            "@",
            "alice@",
            "alice@.",
            "@.",
            "@@example.test",
            "a@b@example.test",
            "alice @example.test",
            "alice@example .test",
            " alice@example.test",
            "alice@example.test ",
            "ali\tce@example.test",
            "alice\0@example.test",
            "alice\r\n@example.test",
            "alice@exam\u{7f}ple.test",
            "\"alice@example.test",
            "\"al\"ice\"@example.test",
            "al\"ice@example.test",
            "alice@<example.test>",
        ];
        for input in bad {
            assert!(
                SenderPattern::parse(input).is_err(),
                "{input:?} should be rejected"
            );
        }
    }

    #[test]
    fn matches_table() {
        // (pattern, address, matches)
        let cases: &[(&str, &str, bool)] = &[
            ("alice@example.test", "alice@example.test", true),
            ("alice@example.test", "Alice@EXAMPLE.test", true),
            ("ALICE@Example.TEST", "alice@example.test", true),
            ("alice@example.test", "alice@example.test.", true),
            ("alice@example.test.", "alice@example.test", true),
            ("alice@example.test", "alice@example.test..", false),
            ("alice@example.test", "bob@example.test", false),
            ("alice@example.test", "alice@sub.example.test", false),
            ("alice@example.test", "alice@example.test.evil", false),
            ("alice@example.test", "alice+tag@example.test", false),
            ("alice@example.test", "alice", false),
            ("alice@example.test", "", false),
            ("alice@example.test", "alice@", false),
            ("alice@example.test", "@example.test", false),
            ("alice@example.test", "alice@example.test\0", false),
            ("alice@example.test", "alice\r@example.test", false),
            ("alice@example.test", " alice@example.test", false),
            // Domain patterns: exactly that domain, never a subdomain or a suffix.
            ("@example.test", "anyone@example.test", true),
            ("@example.test", "Anyone@Example.Test", true),
            ("@example.test", "\"odd one\"@example.test", true),
            ("@example.test", "anyone@sub.example.test", false),
            ("@example.test", "anyone@badexample.test", false),
            ("@example.test", "@example.test", false),
            ("@example.test", "anyone@example.test\x01", false),
            ("@example.test", "anyone@", false),
            // Quoted local parts.
            ("alice@example.test", "\"alice\"@example.test", true),
            ("alice@example.test", "\"ALICE\"@example.test", true),
            ("\"alice\"@example.test", "alice@example.test", true),
            ("a.b@example.test", "\"a.b\"@example.test", true),
            ("alice@example.test", "\"al ice\"@example.test", false),
            ("alice@example.test", "\"al\\ice\"@example.test", false),
            ("alice@example.test", "\"alice", false),
            ("alice@example.test", "\"\"@example.test", false),
            ("alice@x", "\"alice@x\"@evil.test", false),
            ("@x", "\"alice@x\"@evil.test", false),
            ("@evil.test", "\"alice@x\"@evil.test", true),
            ("\"alice@x\"@evil.test", "\"alice@x\"@evil.test", true),
            ("\"alice@x\"@evil.test", "\"Alice@X\"@Evil.Test", true),
            ("\"alice@x\"@evil.test", "alice@x@evil.test", false),
            ("alice@example.test", "alice@x\"@example.test", false),
            ("alice@example.test", "\"alice\"\"@example.test", false),
            ("alice@example.test", "\"a\"lice\"@example.test", false),
            // UTF-8: domain folds Unicode case, local part only ASCII case.
            ("jösé@exämple.test", "jösé@EXÄMPLE.TEST", true),
            ("jösé@exämple.test", "jöSé@exämple.test", true),
            ("jösé@exämple.test", "JÖSÉ@EXÄMPLE.TEST", false),
            ("jösé@exämple.test", "JÖSÉ@exämple.test", false),
            ("JÖSÉ@EXÄMPLE.TEST", "JÖSÉ@exämple.test", true),
            ("@exämple.test", "who@EXÄMPLE.TEST", true),
            ("@exämple.test", "who@xn--exmple-cua.test", false),
            // Kelvin sign: ASCII folding must not map it to 'k'.
            ("k@example.test", "\u{212a}@example.test", false),
        ];
        for (p, addr, want) in cases {
            assert_eq!(
                pat(p).matches(addr),
                *want,
                "pattern {p:?} vs address {addr:?}"
            );
        }
    }

    #[test]
    fn owns_any() {
        let pats = vec![pat("alice@example.test"), pat("@alice.example.test")];
        assert!(owns(&pats, "alice@example.test"));
        assert!(owns(&pats, "x@alice.example.test"));
        assert!(!owns(&pats, "bob@example.test"));
        assert!(!owns(&[], "alice@example.test"));
    }

    #[test]
    fn hand_built_patterns_normalise_too() {
        let p = SenderPattern::Address {
            local: "Alice".into(),
            domain: "Example.Test.".into(),
        };
        assert!(p.matches("alice@example.test"));
        let bad = SenderPattern::Domain(String::new());
        assert!(!bad.matches("alice@"));
        assert!(!bad.matches("alice@."));
    }
}
