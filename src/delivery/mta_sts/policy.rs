//! The two MTA-STS texts, parsed without IO (RFC 8461 sections 3.1 and 3.2): the
//! `_mta-sts` TXT record and the policy file. Strict: anything the grammar does not allow is
//! an error, every size is bounded. Fuzzed (`fuzz/fuzz_targets/mta_sts.rs`).

/// Largest policy body accepted (RFC 8461 section 3.3: 64 KiB).
pub const MAX_POLICY_BYTES: usize = 64 * 1024;
/// Largest `max_age` (RFC 8461 section 3.2: about a year).
pub const MAX_AGE_LIMIT: u64 = 31_557_600;
/// At most this many `mx` patterns in one policy.
pub const MAX_MX_PATTERNS: usize = 64;
/// A TXT record longer than this is not an STS record we accept.
const MAX_TXT_BYTES: usize = 1024;

/// What `_mta-sts.DOMAIN` says (RFC 8461 section 3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StsRecord {
    /// `id=`: 1 to 32 letters and digits; a new id means a new policy.
    pub id: String,
}

/// Why there is no usable STS record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxtError {
    #[error("no v=STSv1 TXT record")]
    None,
    #[error("more than one v=STSv1 TXT record")]
    Several,
    #[error("malformed v=STSv1 TXT record: {0}")]
    Malformed(&'static str),
}

/// The one STS record among the TXT records of `_mta-sts.DOMAIN` (each already the
/// concatenation of its strings). Records not starting with `v=STSv1` are ignored; more than
/// one STS record means no policy (RFC 8461 section 3.1).
pub fn parse_txt(records: &[Vec<u8>]) -> Result<StsRecord, TxtError> {
    let mut sts = records.iter().filter(|r| starts_sts(r));
    let first = sts.next().ok_or(TxtError::None)?;
    if sts.next().is_some() {
        return Err(TxtError::Several);
    }
    parse_txt_record(first)
}

/// `v` *WSP `=` *WSP `STSv1`, the version field must come first.
fn starts_sts(record: &[u8]) -> bool {
    let Some(rest) = record.strip_prefix(b"v") else {
        return false;
    };
    let rest = trim_wsp(rest);
    let Some(rest) = rest.strip_prefix(b"=") else {
        return false;
    };
    let rest = trim_wsp(rest);
    rest.starts_with(b"STSv1") && matches!(rest.get(5), None | Some(b';' | b' ' | b'\t'))
}

/// One STS TXT record: `v=STSv1; id=...;` plus extensions (RFC 8461 section 3.1 grammar).
fn parse_txt_record(record: &[u8]) -> Result<StsRecord, TxtError> {
    if record.len() > MAX_TXT_BYTES {
        return Err(TxtError::Malformed("too long"));
    }
    let mut fields = record.split(|&b| b == b';');
    // The version field was checked by `starts_sts`; only its trailing WSP may remain.
    let version = fields.next().unwrap_or_default();
    if !is_version(version) {
        return Err(TxtError::Malformed("bad version field"));
    }
    let mut id = None;
    let mut fields: Vec<&[u8]> = fields.collect();
    // A single trailing `;` (possibly followed by WSP) is allowed.
    if fields.last().is_some_and(|f| trim_wsp_both(f).is_empty()) {
        fields.pop();
    }
    for field in fields {
        let field = trim_wsp_both(field);
        let eq = field
            .iter()
            .position(|&b| b == b'=')
            .ok_or(TxtError::Malformed("field without '='"))?;
        let name = trim_wsp_both(&field[..eq]);
        let value = trim_wsp_both(&field[eq + 1..]);
        if name == b"id" {
            if id.is_some() {
                return Err(TxtError::Malformed("id given twice"));
            }
            if value.is_empty() || value.len() > 32 || !value.iter().all(u8::is_ascii_alphanumeric)
            {
                return Err(TxtError::Malformed("id must be 1-32 letters and digits"));
            }
            id = Some(String::from_utf8_lossy(value).into_owned());
        } else if !is_ext_name(name) || !is_ext_value(value) {
            return Err(TxtError::Malformed("bad extension field"));
        }
    }
    let id = id.ok_or(TxtError::Malformed("no id field"))?;
    Ok(StsRecord { id })
}

/// `v` *WSP `=` *WSP `STSv1` *WSP.
fn is_version(field: &[u8]) -> bool {
    let f = trim_wsp_both(field);
    let Some(rest) = f.strip_prefix(b"v") else {
        return false;
    };
    let Some(rest) = trim_wsp(rest).strip_prefix(b"=") else {
        return false;
    };
    trim_wsp(rest) == b"STSv1"
}

/// `(ALPHA / DIGIT) *31(ALPHA / DIGIT / "_" / "-" / ".")`.
fn is_ext_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name[0].is_ascii_alphanumeric()
        && name
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// `1*(%x21-3A / %x3C / %x3E-7E)`: visible characters but `;` and `=`.
fn is_ext_value(value: &[u8]) -> bool {
    !value.is_empty()
        && value
            .iter()
            .all(|&b| (0x21..=0x7e).contains(&b) && b != b';' && b != b'=')
}

fn trim_wsp(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(s.len());
    &s[start..]
}

fn trim_wsp_both(s: &[u8]) -> &[u8] {
    let s = trim_wsp(s);
    let end = s
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(0, |i| i + 1);
    &s[..end]
}

/// `mode:` (RFC 8461 section 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Deliver only to matching MX hosts over verified TLS.
    Enforce,
    /// Deliver as without a policy; report what enforcement would have refused.
    Testing,
    /// No policy.
    None,
}

impl Mode {
    /// The policy file's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Testing => "testing",
            Mode::None => "none",
        }
    }
}

/// A policy file (RFC 8461 section 3.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub mode: Mode,
    /// Lower-case patterns: `mx.example.com` or `*.example.com`, without a trailing dot.
    pub mx: Vec<String>,
    /// Seconds the policy may be cached.
    pub max_age: u64,
}

/// Why a policy file is refused (`sts-policy-invalid` in TLS-RPT).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid MTA-STS policy: {0}")]
pub struct PolicyError(pub &'static str);

/// Parse a policy file: `key: value` lines ended by LF or CRLF, in any order. `version:
/// STSv1`, `mode` and `max_age` once each; at least one `mx` unless the mode is `none`; other
/// keys (extensions) are ignored when well-formed.
pub fn parse_policy(body: &[u8]) -> Result<Policy, PolicyError> {
    if body.len() > MAX_POLICY_BYTES {
        return Err(PolicyError("larger than 64 KiB"));
    }
    let text = std::str::from_utf8(body).map_err(|_| PolicyError("not UTF-8"))?;
    let mut lines = text.split('\n').peekable();
    let (mut mode, mut max_age, mut mx) = (None, None, Vec::new());
    let mut saw_version = false;
    while let Some(line) = lines.next() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() && lines.peek().is_none() {
            break; // the final line terminator
        }
        let (key, value) = line
            .split_once(':')
            .ok_or(PolicyError("line without ':'"))?;
        if !is_ext_name(key.as_bytes()) {
            return Err(PolicyError("bad field name"));
        }
        let value = value.trim_matches(|c| c == ' ' || c == '\t');
        match key {
            "version" if saw_version => return Err(PolicyError("version given twice")),
            "version" if value != "STSv1" => return Err(PolicyError("version must be STSv1")),
            "version" => saw_version = true,
            "mode" if mode.is_some() => return Err(PolicyError("mode given twice")),
            "mode" => mode = Some(parse_mode(value)?),
            "max_age" if max_age.is_some() => return Err(PolicyError("max_age given twice")),
            "max_age" => max_age = Some(parse_max_age(value)?),
            "mx" if mx.len() >= MAX_MX_PATTERNS => return Err(PolicyError("too many mx lines")),
            "mx" => mx.push(parse_mx(value)?),
            _ if value.chars().all(|c| (' '..='~').contains(&c) || c == '\t') => {}
            _ => return Err(PolicyError("bad extension value")),
        }
    }
    if !saw_version {
        return Err(PolicyError("no version: STSv1"));
    }
    let mode = mode.ok_or(PolicyError("no mode"))?;
    let max_age = max_age.ok_or(PolicyError("no max_age"))?;
    if mx.is_empty() && mode != Mode::None {
        return Err(PolicyError("no mx"));
    }
    Ok(Policy { mode, mx, max_age })
}

fn parse_mode(value: &str) -> Result<Mode, PolicyError> {
    match value {
        "enforce" => Ok(Mode::Enforce),
        "testing" => Ok(Mode::Testing),
        "none" => Ok(Mode::None),
        _ => Err(PolicyError("mode must be enforce, testing or none")),
    }
}

/// `1*10DIGIT`, at most [`MAX_AGE_LIMIT`].
fn parse_max_age(value: &str) -> Result<u64, PolicyError> {
    if value.is_empty() || value.len() > 10 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(PolicyError("max_age must be 1-10 digits"));
    }
    let n: u64 = value.parse().map_err(|_| PolicyError("bad max_age"))?;
    if n > MAX_AGE_LIMIT {
        return Err(PolicyError("max_age above 31557600"));
    }
    Ok(n)
}

/// `["*."] Domain`: letters, digits and hyphens in dot-separated labels (A-label form).
fn parse_mx(value: &str) -> Result<String, PolicyError> {
    let lower = value.to_ascii_lowercase();
    let domain = lower.strip_prefix("*.").unwrap_or(&lower);
    let ok_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if domain.is_empty() || domain.len() > 253 || !domain.split('.').all(ok_label) {
        return Err(PolicyError("bad mx pattern"));
    }
    Ok(lower)
}

impl Policy {
    /// Does the MX host `name` match one of the patterns (RFC 8461 section 4.1)? A wildcard
    /// stands for exactly one left-most label.
    pub fn matches(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        self.mx
            .iter()
            .any(|pattern| match pattern.strip_prefix("*.") {
                Some(parent) => name
                    .split_once('.')
                    .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
                None => *pattern == name,
            })
    }

    /// The policy as RFC 8460 wants it in a report's `policy-string`: one entry per line.
    pub fn lines(&self) -> Vec<String> {
        let mut lines = vec![
            "version: STSv1".to_string(),
            format!("mode: {}", self.mode.as_str()),
        ];
        lines.extend(self.mx.iter().map(|m| format!("mx: {m}")));
        lines.push(format!("max_age: {}", self.max_age));
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn txt(list: &[&str]) -> Result<StsRecord, TxtError> {
        let records: Vec<Vec<u8>> = list.iter().map(|r| r.as_bytes().to_vec()).collect();
        parse_txt(&records)
    }

    #[test]
    fn txt_records() {
        let id = |s: &str| Ok(StsRecord { id: s.into() });
        assert_eq!(
            txt(&["v=STSv1; id=20160831085700Z;"]),
            id("20160831085700Z")
        );
        assert_eq!(txt(&["v=STSv1;id=abc"]), id("abc"));
        assert_eq!(txt(&["v = STSv1 ; id = abc ; ext=1"]), id("abc"));
        assert_eq!(txt(&["spf stuff", "v=STSv1; id=x1;"]), id("x1"));
        assert_eq!(txt(&[]), Err(TxtError::None));
        assert_eq!(txt(&["v=spf1 -all"]), Err(TxtError::None));
        assert_eq!(txt(&["v=STSv10; id=a"]), Err(TxtError::None));
        assert_eq!(
            txt(&["v=STSv1; id=a", "v=STSv1; id=b"]),
            Err(TxtError::Several)
        );
        for bad in [
            "v=STSv1;",
            "v=STSv1; id=",
            "v=STSv1; id=a_b",
            "v=STSv1; id=123456789012345678901234567890123",
            "v=STSv1; id=a; id=b",
            "v=STSv1; id=a;;",
            "v=STSv1; id=a; junk",
            "v=STSv1; id=a; e=v;l",
        ] {
            assert!(matches!(txt(&[bad]), Err(TxtError::Malformed(_))), "{bad}");
        }
    }

    const GOOD: &str = "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\nmax_age: 604800\r\n";

    #[test]
    fn policies() {
        let p = parse_policy(GOOD.as_bytes()).unwrap();
        assert_eq!(p.mode, Mode::Enforce);
        assert_eq!(p.mx, ["mail.example.com", "*.example.net"]);
        assert_eq!(p.max_age, 604800);
        let lf = "version: STSv1\nmode: testing\nmx: MX.Example.COM\nmax_age: 0\nfuture: x";
        let p = parse_policy(lf.as_bytes()).unwrap();
        assert_eq!(
            (p.mode, p.mx.clone()),
            (Mode::Testing, vec!["mx.example.com".into()])
        );
        let none = parse_policy(b"version: STSv1\nmode: none\nmax_age: 86400\n").unwrap();
        let any_order = b"mx: a.b\nmax_age: 5\nversion: STSv1\nmode: enforce\n";
        assert_eq!(parse_policy(any_order).unwrap().mx, ["a.b"]);
        assert_eq!(none.mode, Mode::None);
        for bad in [
            "",
            "mode: enforce\nmx: a.b\nmax_age: 1\n",
            "version: STSv1\nversion: STSv1\nmode: enforce\nmx: a.b\nmax_age: 1\n",
            "version: STSv2\nmode: enforce\nmx: a.b\nmax_age: 1\n",
            "version: STSv1\nmode: enforce\nmax_age: 1\n",
            "version: STSv1\nmode: block\nmx: a.b\nmax_age: 1\n",
            "version: STSv1\nmode: enforce\nmx: a.b\nmax_age: 31557601\n",
            "version: STSv1\nmode: enforce\nmx: a.b\nmax_age: -1\n",
            "version: STSv1\nmode: enforce\nmx: a.b\n",
            "version: STSv1\nmode: enforce\nmode: none\nmx: a.b\nmax_age: 1\n",
            "version: STSv1\nmode: enforce\nmx: a..b\nmax_age: 1\n",
            "version: STSv1\nmode: enforce\nmx: *.*.b\nmax_age: 1\n",
            "version: STSv1\nmode: enforce\nmx: a.b\nmax_age: 1\n\n",
            "version: STSv1\nmode: enforce\nmx: a.b\nmax_age: 1\ngarbage\n",
        ] {
            assert!(parse_policy(bad.as_bytes()).is_err(), "{bad:?}");
        }
        let big = format!("{GOOD}{}", "x: y\n".repeat(MAX_POLICY_BYTES / 5));
        assert!(parse_policy(big.as_bytes()).is_err());
    }

    #[test]
    fn mx_matching() {
        let p = parse_policy(GOOD.as_bytes()).unwrap();
        assert!(p.matches("mail.example.com"));
        assert!(p.matches("MAIL.example.com."));
        assert!(p.matches("mx1.example.net"));
        assert!(!p.matches("example.net"));
        assert!(!p.matches("a.mx1.example.net"));
        assert!(!p.matches("mail.example.com.evil"));
        assert!(!p.matches(".example.net"));
    }

    proptest! {
        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            if let Ok(p) = parse_policy(&bytes) {
                prop_assert_eq!(parse_policy(p.lines().join("\n").as_bytes()), Ok(p));
            }
            let _ = parse_txt(&[bytes.clone(), bytes]);
        }

        #[test]
        fn written_policies_parse_back(
            mode in prop_oneof![Just(Mode::Enforce), Just(Mode::Testing)],
            mx in proptest::collection::vec("(\\*\\.)?[a-z0-9]{1,10}(\\.[a-z0-9]{1,10}){1,3}", 1..5),
            max_age in 0..=MAX_AGE_LIMIT,
            crlf in any::<bool>(),
        ) {
            let p = Policy { mode, mx, max_age };
            let eol = if crlf { "\r\n" } else { "\n" };
            let text = p.lines().join(eol);
            prop_assert_eq!(parse_policy(text.as_bytes()), Ok(p));
        }

        #[test]
        fn txt_ids_round_trip(id in "[A-Za-z0-9]{1,32}", ws in " {0,2}") {
            let record = format!("v=STSv1;{ws}id={id};");
            prop_assert_eq!(parse_txt(&[record.into_bytes()]), Ok(StsRecord { id }));
        }
    }
}
