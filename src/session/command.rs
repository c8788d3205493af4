//! The SMTP command parser (RFC 5321 section 4.1, RFC 1870 SIZE, RFC 6152 8BITMIME,
//! RFC 6531 SMTPUTF8, RFC 3030 BDAT, RFC 4954 AUTH, RFC 3461 DSN, RFC 8689 REQUIRETLS).
//! Sans-IO: one line in, one command out.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::dsn::{self, Notify, Ret};

/// A parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `EHLO domain-or-address-literal` (argument validated, RFC 5321 4.1.1.1).
    Ehlo(String),
    /// `HELO domain`.
    Helo(String),
    /// `STARTTLS` (RFC 3207), no argument.
    StartTls,
    /// `AUTH mechanism [initial-response]`; the mechanism as given (the session checks it).
    Auth {
        mechanism: String,
        initial: Option<String>,
    },
    /// `MAIL FROM:<reverse-path> [params]`.
    Mail {
        from: ReversePath,
        params: MailParams,
    },
    /// `RCPT TO:<forward-path> [params]`; the address without angle brackets. `<Postmaster>`
    /// is kept as written. Only the DSN parameters are known (RFC 3461).
    Rcpt { to: String, params: RcptParams },
    /// `DATA`, no argument.
    Data,
    /// `BDAT size [LAST]`.
    Bdat { size: u64, last: bool },
    /// `RSET`, no argument.
    Rset,
    /// `NOOP [string]`; the argument is ignored.
    Noop,
    /// `QUIT`, no argument.
    Quit,
    /// `HELP [string]`; the argument is ignored.
    Help,
    /// `VRFY string`; the argument is ignored (we never verify addresses).
    Vrfy,
    /// `EXPN string`; the argument is ignored.
    Expn,
}

/// The reverse-path of MAIL FROM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReversePath {
    /// `<>`.
    Null,
    /// `<local@domain>`, without angle brackets (source routes stripped, RFC 5321 4.1.2).
    Address(String),
}

/// ESMTP parameters of MAIL FROM.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MailParams {
    /// `SIZE=n` (RFC 1870).
    pub size: Option<u64>,
    /// `BODY=7BIT|8BITMIME` (RFC 6152).
    pub body: Option<Body>,
    /// `SMTPUTF8` (RFC 6531).
    pub smtputf8: bool,
    /// `AUTH=<xtext>` (RFC 4954 section 5), decoded; `<>` is `Some("")`.
    pub auth: Option<String>,
    /// `RET=FULL|HDRS` (RFC 3461 section 4.3).
    pub ret: Option<Ret>,
    /// `ENVID=xtext` (RFC 3461 section 4.4), as written (valid xtext, at most 100 characters),
    /// so that it is passed on verbatim.
    pub envid: Option<String>,
    /// `REQUIRETLS` (RFC 8689 section 4), no value.
    pub requiretls: bool,
}

pub use crate::dsn::RcptParams;

/// The BODY= parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// `BODY=7BIT`.
    SevenBit,
    /// `BODY=8BITMIME`.
    EightBitMime,
}

/// Why a command line was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Not a command we know: `500 5.5.1`.
    #[error("unknown command")]
    UnknownCommand,
    /// A known command with bad syntax (including NUL or bare CR in the line, non-UTF-8 where
    /// not allowed, bad address, BDAT size that is not a decimal u64): `501 5.5.4`.
    #[error("syntax error: {0}")]
    Syntax(&'static str),
    /// A MAIL/RCPT parameter we do not implement: `555 5.5.4`.
    #[error("unsupported parameter")]
    UnsupportedParameter,
}

/// Parse one command line (without its CRLF). Verbs are case-insensitive.
///
/// Whitespace between words is one or more SP or HTAB; trailing whitespace is ignored. An empty
/// line is `UnknownCommand` (Postfix answers it with a 500 as well). The rules per verb:
///
/// - `EHLO`/`HELO`: the first word must be a domain (LDH labels of at most 63 octets, at most
///   255 octets in all; UTF-8 U-labels in EHLO only) or an address literal `[1.2.3.4]` /
///   `[IPv6:...]`; any text after it is ignored, like Postfix does. Only the validated word is
///   returned, because it ends up in the Received header.
/// - `STARTTLS`, `DATA`, `RSET`, `QUIT`: no argument. `NOOP`, `HELP`, `VRFY`, `EXPN`: any
///   argument, ignored.
/// - `AUTH mechanism [initial-response]`: the mechanism is a SASL name (RFC 4422 section 3.1,
///   case-insensitive), the initial response a base64 token or `=`.
/// - `MAIL FROM:<path> [params]`, `RCPT TO:<path>`: see [`Command::Mail`]; one space after the
///   colon is tolerated. Addresses are at most 254 octets.
/// - `BDAT size [LAST]`: size in decimal ASCII digits fitting a u64.
pub fn parse(line: &[u8]) -> Result<Command, ParseError> {
    // The input buffer strips CRLF; anything left of it here is an attempt to confuse a later
    // stage (smuggling, header injection), so it is refused before looking at the verb.
    if line.iter().any(|&b| b == 0 || b == b'\r' || b == b'\n') {
        return Err(ParseError::Syntax("NUL, CR or LF in command line"));
    }
    let line = trim_end_ws(line);
    let verb_end = line.iter().position(|&b| is_ws(b)).unwrap_or(line.len());
    let (verb, rest) = line.split_at(verb_end);
    let verb = Verb::from_bytes(verb).ok_or(ParseError::UnknownCommand)?;
    let args = trim_start_ws(rest);
    match verb {
        Verb::Ehlo => parse_hello(args, true).map(Command::Ehlo),
        Verb::Helo => parse_hello(args, false).map(Command::Helo),
        Verb::StartTls => no_args(args, Command::StartTls),
        Verb::Auth => parse_auth(utf8(args)?),
        Verb::Mail => parse_mail(utf8(args)?),
        Verb::Rcpt => parse_rcpt(utf8(args)?),
        Verb::Data => no_args(args, Command::Data),
        Verb::Bdat => parse_bdat(args),
        Verb::Rset => no_args(args, Command::Rset),
        Verb::Noop => Ok(Command::Noop),
        Verb::Quit => no_args(args, Command::Quit),
        Verb::Help => Ok(Command::Help),
        Verb::Vrfy => Ok(Command::Vrfy),
        Verb::Expn => Ok(Command::Expn),
    }
}

/// The verbs we know, matched case-insensitively.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    Ehlo,
    Helo,
    StartTls,
    Auth,
    Mail,
    Rcpt,
    Data,
    Bdat,
    Rset,
    Noop,
    Quit,
    Help,
    Vrfy,
    Expn,
}

impl Verb {
    const ALL: [(&'static [u8], Verb); 14] = [
        (b"EHLO", Verb::Ehlo),
        (b"HELO", Verb::Helo),
        (b"STARTTLS", Verb::StartTls),
        (b"AUTH", Verb::Auth),
        (b"MAIL", Verb::Mail),
        (b"RCPT", Verb::Rcpt),
        (b"DATA", Verb::Data),
        (b"BDAT", Verb::Bdat),
        (b"RSET", Verb::Rset),
        (b"NOOP", Verb::Noop),
        (b"QUIT", Verb::Quit),
        (b"HELP", Verb::Help),
        (b"VRFY", Verb::Vrfy),
        (b"EXPN", Verb::Expn),
    ];

    fn from_bytes(verb: &[u8]) -> Option<Verb> {
        Verb::ALL
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(verb))
            .map(|&(_, v)| v)
    }
}

/// The longest address we accept, in octets (RFC 5321 4.5.3.1.3: a path is at most 256 octets
/// including the angle brackets).
const MAX_ADDRESS: usize = 254;
/// The longest domain, in octets (RFC 5321 4.5.3.1.2).
const MAX_DOMAIN: usize = 255;
/// The longest domain label, in octets (RFC 1035 2.3.4).
const MAX_LABEL: usize = 63;
/// The longest SASL mechanism name (RFC 4422 section 3.1).
const MAX_MECHANISM: usize = 20;

fn is_ws(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn trim_end_ws(mut s: &[u8]) -> &[u8] {
    while let [rest @ .., last] = s {
        if !is_ws(*last) {
            break;
        }
        s = rest;
    }
    s
}

fn trim_start_ws(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if !is_ws(*first) {
            break;
        }
        s = rest;
    }
    s
}

/// The whitespace-separated words of an argument string.
fn words(s: &str) -> impl Iterator<Item = &str> {
    s.split([' ', '\t']).filter(|w| !w.is_empty())
}

fn utf8(args: &[u8]) -> Result<&str, ParseError> {
    std::str::from_utf8(args).map_err(|_| ParseError::Syntax("not valid UTF-8"))
}

fn no_args(args: &[u8], command: Command) -> Result<Command, ParseError> {
    if args.is_empty() {
        Ok(command)
    } else {
        Err(ParseError::Syntax("no parameters allowed"))
    }
}

/// EHLO/HELO argument: the first word, validated; the rest of the line is ignored (Postfix).
fn parse_hello(args: &[u8], allow_utf8: bool) -> Result<String, ParseError> {
    let end = args.iter().position(|&b| is_ws(b)).unwrap_or(args.len());
    let word = &args[..end];
    if word.is_empty() {
        return Err(ParseError::Syntax("domain or address literal required"));
    }
    let word = std::str::from_utf8(word).map_err(|_| ParseError::Syntax("invalid domain"))?;
    // Windows machines often have `_` in their host names; Postfix accepts them and so do
    // we. `_` cannot break out of the Received header, so it is safe to keep.
    let valid = if word.starts_with('[') {
        is_address_literal(word)
    } else {
        is_domain(&word.replace('_', "a"), allow_utf8)
    };
    if valid {
        Ok(word.to_owned())
    } else {
        Err(ParseError::Syntax("invalid domain"))
    }
}

/// A non-ASCII character allowed in U-labels, local parts and parameter values (RFC 6531
/// UTF8-non-ascii), minus what would make a header or a log line lie: control characters (C1),
/// whitespace and invisible formatting characters (zero-width, bidi overrides, BOM).
fn is_utf8_text(c: char) -> bool {
    !c.is_ascii()
        && !c.is_control()
        && !c.is_whitespace()
        && !matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{206F}' | '\u{FEFF}')
}

/// `Domain` of RFC 5321 4.1.2 (sub-domains of letters, digits and inner hyphens), with U-labels
/// when `allow_utf8` (RFC 6531 section 3.3).
fn is_domain(s: &str, allow_utf8: bool) -> bool {
    !s.is_empty() && s.len() <= MAX_DOMAIN && s.split('.').all(|label| is_label(label, allow_utf8))
}

fn is_label(label: &str, allow_utf8: bool) -> bool {
    !label.is_empty()
        && label.len() <= MAX_LABEL
        && !label.starts_with('-')
        && !label.ends_with('-')
        && label
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || (allow_utf8 && is_utf8_text(c)))
}

/// `address-literal` of RFC 5321 4.1.3: `[IPv4]` or `[IPv6:...]`, checked by std's parsers.
/// General address literals (`[tag:...]`) are refused.
fn is_address_literal(s: &str) -> bool {
    let Some(inner) = s.strip_prefix('[').and_then(|s| s.strip_suffix(']')) else {
        return false;
    };
    match inner.as_bytes().get(..5) {
        // The first five bytes are ASCII here, so index 5 is a char boundary.
        Some(tag) if tag.eq_ignore_ascii_case(b"IPv6:") => inner[5..].parse::<Ipv6Addr>().is_ok(),
        _ => inner.parse::<Ipv4Addr>().is_ok(),
    }
}

/// `AUTH mechanism [initial-response]` (RFC 4954 section 4).
fn parse_auth(args: &str) -> Result<Command, ParseError> {
    let mut words = words(args);
    let mechanism = words
        .next()
        .ok_or(ParseError::Syntax("mechanism required"))?;
    let initial = words.next();
    if words.next().is_some() {
        return Err(ParseError::Syntax("too many parameters"));
    }
    // RFC 4422 3.1: sasl-mech = 1*20mech-char (upper-case letters, digits, '-', '_'); we also
    // take lower case since clients vary and the session matches case-insensitively.
    let mech_ok = mechanism.len() <= MAX_MECHANISM
        && mechanism
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !mech_ok {
        return Err(ParseError::Syntax("invalid mechanism name"));
    }
    if let Some(initial) = initial {
        let b64_ok = initial == "="
            || initial
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='));
        if !b64_ok {
            return Err(ParseError::Syntax("invalid initial response"));
        }
    }
    Ok(Command::Auth {
        mechanism: mechanism.to_owned(),
        initial: initial.map(str::to_owned),
    })
}

/// Strip a case-insensitive `FROM:`/`TO:` and at most one space after it (Postfix tolerates
/// `MAIL FROM: <a@b>` from old clients).
fn strip_keyword<'a>(args: &'a str, keyword: &str) -> Option<&'a str> {
    let head = args.as_bytes().get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword.as_bytes()) {
        return None;
    }
    // The matched head is ASCII, so this index is a char boundary.
    let rest = &args[keyword.len()..];
    Some(rest.strip_prefix(' ').unwrap_or(rest))
}

/// Split `<path> rest` into the path's content (without brackets) and the rest (parameters).
/// The closing bracket is the first `>` outside a quoted string.
fn split_path(s: &str) -> Result<(&str, &str), ParseError> {
    let body = s
        .strip_prefix('<')
        .ok_or(ParseError::Syntax("path must be in angle brackets"))?;
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in body.char_indices() {
        if escaped {
            escaped = false;
        } else if quoted {
            match c {
                '\\' => escaped = true,
                '"' => quoted = false,
                _ => {}
            }
        } else {
            match c {
                '"' => quoted = true,
                '>' => {
                    let rest = &body[i + 1..];
                    if !rest.is_empty() && !rest.starts_with([' ', '\t']) {
                        return Err(ParseError::Syntax("space required after path"));
                    }
                    return Ok((&body[..i], rest));
                }
                _ => {}
            }
        }
    }
    Err(ParseError::Syntax("path must be in angle brackets"))
}

/// The mailbox of a path, with an optional source route (`@a,@b:`, RFC 5321 4.1.2 and C)
/// validated and removed.
fn path_mailbox(path: &str) -> Result<&str, ParseError> {
    let mailbox = if path.starts_with('@') {
        // The route ends at the first ':' outside an address literal.
        let mut depth = false;
        let colon = path
            .char_indices()
            .find(|&(_, c)| {
                match c {
                    '[' => depth = true,
                    ']' => depth = false,
                    _ => {}
                }
                c == ':' && !depth
            })
            .map(|(i, _)| i)
            .ok_or(ParseError::Syntax("invalid source route"))?;
        for at_domain in path[..colon].split(',') {
            let domain = at_domain
                .strip_prefix('@')
                .ok_or(ParseError::Syntax("invalid source route"))?;
            if !is_domain(domain, true) && !is_address_literal(domain) {
                return Err(ParseError::Syntax("invalid source route"));
            }
        }
        &path[colon + 1..]
    } else {
        path
    };
    if mailbox.len() > MAX_ADDRESS {
        return Err(ParseError::Syntax("address too long"));
    }
    Ok(mailbox)
}

/// `atext` of RFC 5322 3.2.3, with UTF-8 (RFC 6531 section 3.3).
fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || is_utf8_text(c)
}

/// `qtextSMTP` of RFC 5321 4.1.2 (printable ASCII and space but `"` and `\`), with UTF-8.
fn is_qtext(c: char) -> bool {
    matches!(c, ' ' | '!' | '#'..='[' | ']'..='~') || is_utf8_text(c)
}

/// `Mailbox = Local-part "@" ( Domain / address-literal )` (RFC 5321 4.1.2, RFC 6531 3.3).
/// The local part is a dot-atom or a quoted string, kept as written.
fn is_mailbox(mailbox: &str) -> bool {
    let Some(domain_start) = local_part_end(mailbox) else {
        return false;
    };
    let Some(domain) = mailbox[domain_start..].strip_prefix('@') else {
        return false;
    };
    if domain.starts_with('[') {
        is_address_literal(domain)
    } else {
        is_domain(domain, true)
    }
}

/// The byte index just past a valid local part at the start of `s`, or `None`.
fn local_part_end(s: &str) -> Option<usize> {
    if let Some(quoted) = s.strip_prefix('"') {
        let mut escaped = false;
        for (i, c) in quoted.char_indices() {
            if escaped {
                // quoted-pairSMTP = "\" %d32-126
                if !matches!(c, ' '..='~') {
                    return None;
                }
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                return Some(i + 2);
            } else if !is_qtext(c) {
                return None;
            }
        }
        return None;
    }
    let end = s.find('@').unwrap_or(s.len());
    let local = &s[..end];
    let dot_atom = !local.is_empty()
        && local
            .split('.')
            .all(|atom| !atom.is_empty() && atom.chars().all(is_atext));
    dot_atom.then_some(end)
}

/// `esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")` (RFC 5321 4.1.2).
fn is_esmtp_keyword(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// `esmtp-value = 1*(%d33-60 / %d62-126)` (RFC 5321 4.1.2), with UTF-8 (RFC 6531 3.3).
fn is_esmtp_value(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| matches!(c, '!'..='<' | '>'..='~') || is_utf8_text(c))
}

/// Decimal ASCII digits only (no sign, no spaces), fitting a u64.
fn parse_decimal(s: &[u8]) -> Result<u64, ParseError> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return Err(ParseError::Syntax("not a decimal number"));
    }
    s.iter()
        .try_fold(0u64, |n, &d| {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })
        .ok_or(ParseError::Syntax("number too large"))
}

/// Decode `xtext` (RFC 3461 section 4), raw UTF-8 accepted (RFC 6533 utf-8-xtext); see
/// [`dsn::decode_xtext`].
fn decode_xtext(s: &str) -> Result<String, ParseError> {
    dsn::decode_xtext(s, true).ok_or(ParseError::Syntax("invalid xtext"))
}

/// `MAIL FROM:<reverse-path> [params]` (RFC 5321 4.1.1.2).
fn parse_mail(args: &str) -> Result<Command, ParseError> {
    let rest = strip_keyword(args, "FROM:").ok_or(ParseError::Syntax("expected FROM:<address>"))?;
    let (path, params) = split_path(rest)?;
    let from = if path.is_empty() {
        ReversePath::Null
    } else {
        let mailbox = path_mailbox(path)?;
        if !is_mailbox(mailbox) {
            return Err(ParseError::Syntax("invalid address"));
        }
        ReversePath::Address(mailbox.to_owned())
    };
    Ok(Command::Mail {
        from,
        params: parse_mail_params(params)?,
    })
}

fn parse_mail_params(s: &str) -> Result<MailParams, ParseError> {
    const DUPLICATE: ParseError = ParseError::Syntax("duplicate parameter");
    let mut params = MailParams::default();
    for word in words(s) {
        let (key, value) = match word.split_once('=') {
            Some((key, value)) => (key, Some(value)),
            None => (word, None),
        };
        if !is_esmtp_keyword(key) || value.is_some_and(|v| !is_esmtp_value(v)) {
            return Err(ParseError::Syntax("invalid parameter"));
        }
        if key.eq_ignore_ascii_case("SIZE") {
            if params.size.is_some() {
                return Err(DUPLICATE);
            }
            let value = value.ok_or(ParseError::Syntax("SIZE requires a value"))?;
            params.size = Some(parse_decimal(value.as_bytes())?);
        } else if key.eq_ignore_ascii_case("BODY") {
            if params.body.is_some() {
                return Err(DUPLICATE);
            }
            let value = value.ok_or(ParseError::Syntax("BODY requires a value"))?;
            params.body = Some(if value.eq_ignore_ascii_case("7BIT") {
                Body::SevenBit
            } else if value.eq_ignore_ascii_case("8BITMIME") {
                Body::EightBitMime
            } else if value.eq_ignore_ascii_case("BINARYMIME") {
                return Err(ParseError::UnsupportedParameter);
            } else {
                return Err(ParseError::Syntax("invalid BODY value"));
            });
        } else if key.eq_ignore_ascii_case("SMTPUTF8") {
            if params.smtputf8 {
                return Err(DUPLICATE);
            }
            if value.is_some() {
                return Err(ParseError::Syntax("SMTPUTF8 takes no value"));
            }
            params.smtputf8 = true;
        } else if key.eq_ignore_ascii_case("AUTH") {
            if params.auth.is_some() {
                return Err(DUPLICATE);
            }
            let value = value.ok_or(ParseError::Syntax("AUTH requires a value"))?;
            params.auth = Some(if value == "<>" {
                String::new()
            } else {
                decode_xtext(value)?
            });
        } else if key.eq_ignore_ascii_case("RET") {
            if params.ret.is_some() {
                return Err(DUPLICATE);
            }
            let value = value.ok_or(ParseError::Syntax("RET requires a value"))?;
            params.ret = Some(if value.eq_ignore_ascii_case("FULL") {
                Ret::Full
            } else if value.eq_ignore_ascii_case("HDRS") {
                Ret::Hdrs
            } else {
                return Err(ParseError::Syntax("RET must be FULL or HDRS"));
            });
        } else if key.eq_ignore_ascii_case("ENVID") {
            if params.envid.is_some() {
                return Err(DUPLICATE);
            }
            let value = value.ok_or(ParseError::Syntax("ENVID requires a value"))?;
            dsn::check_envid(value).map_err(ParseError::Syntax)?;
            params.envid = Some(value.to_owned());
        } else if key.eq_ignore_ascii_case("REQUIRETLS") {
            if params.requiretls {
                return Err(DUPLICATE);
            }
            if value.is_some() {
                return Err(ParseError::Syntax("REQUIRETLS takes no value"));
            }
            params.requiretls = true;
        } else {
            return Err(ParseError::UnsupportedParameter);
        }
    }
    Ok(params)
}

/// `RCPT TO:<forward-path>` (RFC 5321 4.1.1.3). `<Postmaster>` needs no domain.
fn parse_rcpt(args: &str) -> Result<Command, ParseError> {
    let rest = strip_keyword(args, "TO:").ok_or(ParseError::Syntax("expected TO:<address>"))?;
    let (path, params) = split_path(rest)?;
    let to = if path.eq_ignore_ascii_case("postmaster") {
        path
    } else {
        let mailbox = path_mailbox(path)?;
        if !is_mailbox(mailbox) {
            return Err(ParseError::Syntax("invalid address"));
        }
        mailbox
    };
    Ok(Command::Rcpt {
        to: to.to_owned(),
        params: parse_rcpt_params(params)?,
    })
}

/// `NOTIFY=` and `ORCPT=` (RFC 3461 sections 4.1 and 4.2); each at most once.
fn parse_rcpt_params(s: &str) -> Result<RcptParams, ParseError> {
    const DUPLICATE: ParseError = ParseError::Syntax("duplicate parameter");
    let mut params = RcptParams::default();
    for word in words(s) {
        let (key, value) = match word.split_once('=') {
            Some((key, value)) => (key, Some(value)),
            None => (word, None),
        };
        if !is_esmtp_keyword(key) || value.is_some_and(|v| !is_esmtp_value(v)) {
            return Err(ParseError::Syntax("invalid parameter"));
        }
        if key.eq_ignore_ascii_case("NOTIFY") {
            if params.notify.is_some() {
                return Err(DUPLICATE);
            }
            let value = value.ok_or(ParseError::Syntax("NOTIFY requires a value"))?;
            params.notify = Some(Notify::parse(value).map_err(ParseError::Syntax)?);
        } else if key.eq_ignore_ascii_case("ORCPT") {
            if params.orcpt.is_some() {
                return Err(DUPLICATE);
            }
            let value = value.ok_or(ParseError::Syntax("ORCPT requires a value"))?;
            dsn::check_orcpt(value).map_err(ParseError::Syntax)?;
            params.orcpt = Some(value.to_owned());
        } else {
            return Err(ParseError::UnsupportedParameter);
        }
    }
    Ok(params)
}

/// `BDAT size [LAST]` (RFC 3030 section 2).
fn parse_bdat(args: &[u8]) -> Result<Command, ParseError> {
    let mut words = args.split(|&b| is_ws(b)).filter(|w| !w.is_empty());
    let size = parse_decimal(
        words
            .next()
            .ok_or(ParseError::Syntax("chunk size required"))?,
    )?;
    let last = match words.next() {
        None => false,
        Some(word) if word.eq_ignore_ascii_case(b"LAST") => true,
        Some(_) => return Err(ParseError::Syntax("expected LAST")),
    };
    if words.next().is_some() {
        return Err(ParseError::Syntax("too many parameters"));
    }
    Ok(Command::Bdat { size, last })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYNTAX: fn() -> Result<Command, ParseError> = || Err(ParseError::Syntax(""));

    /// Compare results, ignoring the text inside `Syntax` (the tables say *that* it is a
    /// syntax error, not which message).
    fn same(a: &Result<Command, ParseError>, b: &Result<Command, ParseError>) -> bool {
        match (a, b) {
            (Err(ParseError::Syntax(_)), Err(ParseError::Syntax(_))) => true,
            _ => a == b,
        }
    }

    fn check(table: &[(&[u8], Result<Command, ParseError>)]) {
        for (line, want) in table {
            let got = parse(line);
            assert!(
                same(&got, want),
                "{:?}: got {got:?}, want {want:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    fn mail(from: &str, params: MailParams) -> Result<Command, ParseError> {
        let from = if from.is_empty() {
            ReversePath::Null
        } else {
            ReversePath::Address(from.into())
        };
        Ok(Command::Mail { from, params })
    }

    fn mail_plain(from: &str) -> Result<Command, ParseError> {
        mail(from, MailParams::default())
    }

    fn rcpt(to: &str) -> Result<Command, ParseError> {
        rcpt_with(to, RcptParams::default())
    }

    fn rcpt_with(to: &str, params: RcptParams) -> Result<Command, ParseError> {
        Ok(Command::Rcpt {
            to: to.into(),
            params,
        })
    }

    #[test]
    fn verbs_and_arguments() {
        check(&[
            (b"", Err(ParseError::UnknownCommand)),
            (b"FOO", Err(ParseError::UnknownCommand)),
            (b"EHLOX a.test", Err(ParseError::UnknownCommand)),
            (b" EHLO a.test", Err(ParseError::UnknownCommand)),
            (b"\xff\xfe", Err(ParseError::UnknownCommand)),
            (b"STARTTLS", Ok(Command::StartTls)),
            (b"starttls", Ok(Command::StartTls)),
            (b"StartTls ", Ok(Command::StartTls)),
            (b"STARTTLS x", SYNTAX()),
            (b"DATA", Ok(Command::Data)),
            (b"data\t", Ok(Command::Data)),
            (b"DATA x", SYNTAX()),
            (b"RSET", Ok(Command::Rset)),
            (b"RSET x", SYNTAX()),
            (b"QUIT", Ok(Command::Quit)),
            (b"quit now", SYNTAX()),
            (b"NOOP", Ok(Command::Noop)),
            (b"NOOP anything at all \xff", Ok(Command::Noop)),
            (b"HELP", Ok(Command::Help)),
            (b"help MAIL", Ok(Command::Help)),
            (b"VRFY", Ok(Command::Vrfy)),
            (b"VRFY alice", Ok(Command::Vrfy)),
            (b"EXPN list", Ok(Command::Expn)),
            // NUL, CR and LF are refused anywhere, even after an unknown verb.
            (b"NOOP\0", SYNTAX()),
            (b"NOOP \r", SYNTAX()),
            (b"DA\rTA", SYNTAX()),
            (b"FOO\0", SYNTAX()),
            (b"NOOP \n", SYNTAX()),
        ]);
    }

    #[test]
    fn ehlo_and_helo() {
        let ehlo = |s: &str| Ok(Command::Ehlo(s.into()));
        let helo = |s: &str| Ok(Command::Helo(s.into()));
        let long_label = "a".repeat(63);
        let too_long_label = "a".repeat(64);
        let long_domain = format!("{0}.{0}.{0}.{1}", long_label, "a".repeat(63)); // 255
        let too_long_domain = format!("{long_domain}a");
        check(&[
            (b"EHLO client.example.test", ehlo("client.example.test")),
            (b"ehlo Client-1.Example.TEST", ehlo("Client-1.Example.TEST")),
            (b"EHLO localhost", ehlo("localhost")),
            (b"EHLO 192.0.2.1", ehlo("192.0.2.1")),
            (b"EHLO [192.0.2.1]", ehlo("[192.0.2.1]")),
            (b"EHLO [IPv6:2001:db8::1]", ehlo("[IPv6:2001:db8::1]")),
            (b"EHLO [ipv6:::1]", ehlo("[ipv6:::1]")),
            (b"EHLO  a.test   trailing words ignored", ehlo("a.test")),
            (b"EHLO a.test \x01junk", ehlo("a.test")),
            (
                "EHLO b\u{fc}cher.example".as_bytes(),
                ehlo("b\u{fc}cher.example"),
            ),
            (format!("EHLO {long_domain}").as_bytes(), ehlo(&long_domain)),
            (
                format!("EHLO {long_label}.test").as_bytes(),
                ehlo(&format!("{long_label}.test")),
            ),
            (format!("EHLO {too_long_domain}").as_bytes(), SYNTAX()),
            (format!("EHLO {too_long_label}.test").as_bytes(), SYNTAX()),
            (b"EHLO", SYNTAX()),
            (b"EHLO ", SYNTAX()),
            (b"EHLO a..test", SYNTAX()),
            (b"EHLO .a.test", SYNTAX()),
            (b"EHLO a.test.", SYNTAX()),
            (b"EHLO -a.test", SYNTAX()),
            (b"EHLO a-.test", SYNTAX()),
            (b"EHLO a_b.test", ehlo("a_b.test")),
            (b"EHLO a;b", SYNTAX()),
            (b"EHLO a(b)", SYNTAX()),
            (b"EHLO a\\b", SYNTAX()),
            (b"EHLO \"a\"", SYNTAX()),
            (b"EHLO <a>", SYNTAX()),
            (b"EHLO a\x7fb", SYNTAX()),
            (b"EHLO a\x1bb", SYNTAX()),
            (b"EHLO \xff.test", SYNTAX()),
            ("EHLO a\u{85}b".as_bytes(), SYNTAX()),
            ("EHLO a\u{a0}b".as_bytes(), SYNTAX()),
            ("EHLO a\u{202e}b".as_bytes(), SYNTAX()),
            (b"EHLO [192.0.2.256]", SYNTAX()),
            (b"EHLO [192.0.2]", SYNTAX()),
            (b"EHLO [IPv6:192.0.2.1]", SYNTAX()),
            (b"EHLO [2001:db8::1]", SYNTAX()),
            (b"EHLO [IPv6:fe80::1%eth0]", SYNTAX()),
            (b"EHLO [x-tag:foo]", SYNTAX()),
            (b"EHLO [192.0.2.1", SYNTAX()),
            (b"EHLO [\xc3\xbc]", SYNTAX()),
            (b"HELO client.example.test", helo("client.example.test")),
            (b"HELO [192.0.2.1]", helo("[192.0.2.1]")),
            (b"HELO", SYNTAX()),
            // U-labels only with EHLO (a HELO client cannot have negotiated SMTPUTF8).
            ("HELO b\u{fc}cher.example".as_bytes(), SYNTAX()),
        ]);
    }

    #[test]
    fn auth() {
        let auth = |m: &str, i: Option<&str>| {
            Ok(Command::Auth {
                mechanism: m.into(),
                initial: i.map(Into::into),
            })
        };
        check(&[
            (b"AUTH PLAIN", auth("PLAIN", None)),
            (b"auth login", auth("login", None)),
            (
                b"AUTH PLAIN AGFsaWNlAHNlY3JldA==",
                auth("PLAIN", Some("AGFsaWNlAHNlY3JldA==")),
            ),
            (b"AUTH PLAIN =", auth("PLAIN", Some("="))),
            (b"AUTH SCRAM-SHA-256", auth("SCRAM-SHA-256", None)),
            (b"AUTH X_Y", auth("X_Y", None)),
            (b"AUTH", SYNTAX()),
            (b"AUTH PLAIN a b", SYNTAX()),
            (b"AUTH PL\x01AIN", SYNTAX()),
            (b"AUTH PL.AIN", SYNTAX()),
            (b"AUTH ABCDEFGHIJKLMNOPQRSTU", SYNTAX()),
            (b"AUTH PLAIN *", SYNTAX()),
            (b"AUTH PLAIN a:b", SYNTAX()),
            (b"AUTH PLAIN \xff", SYNTAX()),
        ]);
    }

    #[test]
    fn mail_paths() {
        let addr_254 = format!(
            "{}@{}.{}.{}",
            "l".repeat(64),
            "d".repeat(63),
            "d".repeat(63),
            "d".repeat(61)
        );
        assert_eq!(addr_254.len(), 254);
        let addr_255 = format!("{addr_254}x");
        check(&[
            (b"MAIL FROM:<a@b.test>", mail_plain("a@b.test")),
            (b"mail from:<a@b.test>", mail_plain("a@b.test")),
            (b"MAIL From:<A.B+tag@B.Test>", mail_plain("A.B+tag@B.Test")),
            (b"MAIL FROM: <a@b.test>", mail_plain("a@b.test")),
            (b"MAIL FROM:  <a@b.test>", SYNTAX()),
            (b"MAIL  FROM:<a@b.test>", mail_plain("a@b.test")),
            (b"MAIL FROM:<>", mail_plain("")),
            (
                b"MAIL FROM:<> SIZE=10",
                mail(
                    "",
                    MailParams {
                        size: Some(10),
                        ..Default::default()
                    },
                ),
            ),
            (b"MAIL FROM:<@relay.test:a@b.test>", mail_plain("a@b.test")),
            (
                b"MAIL FROM:<@r1.test,@r2.test:a@b.test>",
                mail_plain("a@b.test"),
            ),
            (b"MAIL FROM:<@[192.0.2.1]:a@b.test>", mail_plain("a@b.test")),
            (b"MAIL FROM:<@r1.test,r2.test:a@b.test>", SYNTAX()),
            (b"MAIL FROM:<@r1..test:a@b.test>", SYNTAX()),
            (b"MAIL FROM:<@r1.test>", SYNTAX()),
            (
                b"MAIL FROM:<\"john doe\"@x.test>",
                mail_plain("\"john doe\"@x.test"),
            ),
            (b"MAIL FROM:<\"a>b\"@x.test>", mail_plain("\"a>b\"@x.test")),
            (
                b"MAIL FROM:<\"a\\\"b\"@x.test>",
                mail_plain("\"a\\\"b\"@x.test"),
            ),
            (b"MAIL FROM:<\"\"@x.test>", mail_plain("\"\"@x.test")),
            (b"MAIL FROM:<\"a\x01\"@x.test>", SYNTAX()),
            (b"MAIL FROM:<\"a\\\x01\"@x.test>", SYNTAX()),
            (b"MAIL FROM:<\"unterminated@x.test>", SYNTAX()),
            (b"MAIL FROM:<\"a\"b@x.test>", SYNTAX()),
            (b"MAIL FROM:<a@[192.0.2.1]>", mail_plain("a@[192.0.2.1]")),
            (
                b"MAIL FROM:<a@[IPv6:2001:db8::1]>",
                mail_plain("a@[IPv6:2001:db8::1]"),
            ),
            (b"MAIL FROM:<a@[300.0.0.1]>", SYNTAX()),
            (
                "MAIL FROM:<j\u{f6}rg@b\u{fc}cher.example>".as_bytes(),
                mail_plain("j\u{f6}rg@b\u{fc}cher.example"),
            ),
            (
                "MAIL FROM:<\"j\u{f6} rg\"@x.test>".as_bytes(),
                mail_plain("\"j\u{f6} rg\"@x.test"),
            ),
            ("MAIL FROM:<a\u{85}b@x.test>".as_bytes(), SYNTAX()),
            (b"MAIL FROM:<a\xff@x.test>", SYNTAX()),
            (b"MAIL FROM:<a\x7f@x.test>", SYNTAX()),
            (b"MAIL FROM:<a b@x.test>", SYNTAX()),
            (b"MAIL FROM:<a@b@x.test>", SYNTAX()),
            (b"MAIL FROM:<.a@x.test>", SYNTAX()),
            (b"MAIL FROM:<a.@x.test>", SYNTAX()),
            (b"MAIL FROM:<a..b@x.test>", SYNTAX()),
            (b"MAIL FROM:<a(b)@x.test>", SYNTAX()),
            (b"MAIL FROM:<@x.test>", SYNTAX()),
            (b"MAIL FROM:<a@>", SYNTAX()),
            (b"MAIL FROM:<a>", SYNTAX()),
            (b"MAIL FROM:<postmaster>", SYNTAX()),
            (b"MAIL FROM:<a@x_y.test>", SYNTAX()),
            (b"MAIL FROM:a@b.test", SYNTAX()),
            (b"MAIL FROM:<a@b.test", SYNTAX()),
            (b"MAIL FROM:<a@b.test>SIZE=1", SYNTAX()),
            (b"MAIL FROM <a@b.test>", SYNTAX()),
            (b"MAIL TO:<a@b.test>", SYNTAX()),
            (b"MAIL", SYNTAX()),
            (
                format!("MAIL FROM:<{addr_254}>").as_bytes(),
                mail_plain(&addr_254),
            ),
            (format!("MAIL FROM:<{addr_255}>").as_bytes(), SYNTAX()),
        ]);
    }

    #[test]
    fn mail_params() {
        let p = |f: fn(&mut MailParams)| {
            let mut params = MailParams::default();
            f(&mut params);
            mail("a@b.test", params)
        };
        check(&[
            (
                b"MAIL FROM:<a@b.test> SIZE=1000",
                p(|p| p.size = Some(1000)),
            ),
            (b"MAIL FROM:<a@b.test> size=0", p(|p| p.size = Some(0))),
            (
                b"MAIL FROM:<a@b.test> SIZE=18446744073709551615",
                p(|p| p.size = Some(u64::MAX)),
            ),
            (b"MAIL FROM:<a@b.test> SIZE=18446744073709551616", SYNTAX()),
            (b"MAIL FROM:<a@b.test> SIZE=+1", SYNTAX()),
            (b"MAIL FROM:<a@b.test> SIZE=-1", SYNTAX()),
            (b"MAIL FROM:<a@b.test> SIZE=0x10", SYNTAX()),
            (b"MAIL FROM:<a@b.test> SIZE=", SYNTAX()),
            (b"MAIL FROM:<a@b.test> SIZE", SYNTAX()),
            (b"MAIL FROM:<a@b.test> SIZE=1 SIZE=1", SYNTAX()),
            (
                b"MAIL FROM:<a@b.test> BODY=7BIT",
                p(|p| p.body = Some(Body::SevenBit)),
            ),
            (
                b"MAIL FROM:<a@b.test> body=8bitmime",
                p(|p| p.body = Some(Body::EightBitMime)),
            ),
            (
                b"MAIL FROM:<a@b.test> BODY=BINARYMIME",
                Err(ParseError::UnsupportedParameter),
            ),
            (b"MAIL FROM:<a@b.test> BODY=9BIT", SYNTAX()),
            (b"MAIL FROM:<a@b.test> BODY", SYNTAX()),
            (b"MAIL FROM:<a@b.test> BODY=7BIT BODY=7BIT", SYNTAX()),
            (b"MAIL FROM:<a@b.test> SMTPUTF8", p(|p| p.smtputf8 = true)),
            (b"MAIL FROM:<a@b.test> smtputf8", p(|p| p.smtputf8 = true)),
            (b"MAIL FROM:<a@b.test> SMTPUTF8=yes", SYNTAX()),
            (b"MAIL FROM:<a@b.test> SMTPUTF8 SMTPUTF8", SYNTAX()),
            (
                b"MAIL FROM:<a@b.test> AUTH=<>",
                p(|p| p.auth = Some(String::new())),
            ),
            (
                b"MAIL FROM:<a@b.test> AUTH=a@b.test",
                p(|p| p.auth = Some("a@b.test".into())),
            ),
            (
                b"MAIL FROM:<a@b.test> AUTH=a+2Bb+3Dc@b.test",
                p(|p| p.auth = Some("a+b=c@b.test".into())),
            ),
            (
                b"MAIL FROM:<a@b.test> AUTH=+22a+20b+22@b.test",
                p(|p| p.auth = Some("\"a b\"@b.test".into())),
            ),
            (
                b"MAIL FROM:<a@b.test> AUTH=+C3+BC@b.test",
                p(|p| p.auth = Some("\u{fc}@b.test".into())),
            ),
            (b"MAIL FROM:<a@b.test> AUTH=a+2b", SYNTAX()),
            (b"MAIL FROM:<a@b.test> AUTH=a+2", SYNTAX()),
            (b"MAIL FROM:<a@b.test> AUTH=a+", SYNTAX()),
            (b"MAIL FROM:<a@b.test> AUTH=a+0D+0Ab", SYNTAX()),
            (b"MAIL FROM:<a@b.test> AUTH=a+00", SYNTAX()),
            (b"MAIL FROM:<a@b.test> AUTH=a+7F", SYNTAX()),
            (b"MAIL FROM:<a@b.test> AUTH=a+FF", SYNTAX()),
            (b"MAIL FROM:<a@b.test> AUTH=a=b", SYNTAX()),
            (b"MAIL FROM:<a@b.test> AUTH=", SYNTAX()),
            (b"MAIL FROM:<a@b.test> AUTH", SYNTAX()),
            (b"MAIL FROM:<a@b.test> AUTH=<> AUTH=<>", SYNTAX()),
            (
                b"MAIL FROM:<a@b.test> X-FOO",
                Err(ParseError::UnsupportedParameter),
            ),
            (b"MAIL FROM:<a@b.test> -X", SYNTAX()),
            (b"MAIL FROM:<a@b.test> =x", SYNTAX()),
            (b"MAIL FROM:<a@b.test> X=a\x01", SYNTAX()),
            (
                b"MAIL FROM:<a@b.test>  SIZE=5\tBODY=8BITMIME SMTPUTF8 AUTH=<>  ",
                p(|p| {
                    p.size = Some(5);
                    p.body = Some(Body::EightBitMime);
                    p.smtputf8 = true;
                    p.auth = Some(String::new());
                }),
            ),
        ]);
    }

    #[test]
    fn mail_dsn_and_requiretls_params() {
        let p = |f: fn(&mut MailParams)| {
            let mut params = MailParams::default();
            f(&mut params);
            mail("a@b.test", params)
        };
        check(&[
            (
                b"MAIL FROM:<a@b.test> RET=HDRS",
                p(|p| p.ret = Some(Ret::Hdrs)),
            ),
            (
                b"MAIL FROM:<a@b.test> ret=full",
                p(|p| p.ret = Some(Ret::Full)),
            ),
            (b"MAIL FROM:<a@b.test> RET=ALL", SYNTAX()),
            (b"MAIL FROM:<a@b.test> RET", SYNTAX()),
            (b"MAIL FROM:<a@b.test> RET=FULL RET=HDRS", SYNTAX()),
            (
                b"MAIL FROM:<a@b.test> ENVID=QQ+2B314159",
                p(|p| p.envid = Some("QQ+2B314159".into())),
            ),
            (
                format!("MAIL FROM:<a@b.test> ENVID={}", "e".repeat(100)).as_bytes(),
                p(|p| p.envid = Some("e".repeat(100))),
            ),
            (
                format!("MAIL FROM:<a@b.test> ENVID={}", "e".repeat(101)).as_bytes(),
                SYNTAX(),
            ),
            (b"MAIL FROM:<a@b.test> ENVID=a+0Ab", SYNTAX()),
            (b"MAIL FROM:<a@b.test> ENVID=a+zz", SYNTAX()),
            ("MAIL FROM:<a@b.test> ENVID=\u{fc}".as_bytes(), SYNTAX()),
            (b"MAIL FROM:<a@b.test> ENVID", SYNTAX()),
            (b"MAIL FROM:<a@b.test> ENVID=a ENVID=a", SYNTAX()),
            (
                b"MAIL FROM:<a@b.test> REQUIRETLS",
                p(|p| p.requiretls = true),
            ),
            (b"MAIL FROM:<a@b.test> REQUIRETLS=yes", SYNTAX()),
            (b"MAIL FROM:<a@b.test> REQUIRETLS requiretls", SYNTAX()),
        ]);
    }

    #[test]
    fn rcpt_paths() {
        check(&[
            (b"RCPT TO:<a@b.test>", rcpt("a@b.test")),
            (b"rcpt to:<a@b.test>", rcpt("a@b.test")),
            (b"RCPT TO: <a@b.test>", rcpt("a@b.test")),
            (b"RCPT TO:<Postmaster>", rcpt("Postmaster")),
            (b"RCPT TO:<postmaster>", rcpt("postmaster")),
            (b"RCPT TO:<postmaster@b.test>", rcpt("postmaster@b.test")),
            (b"RCPT TO:<@r.test:a@b.test>", rcpt("a@b.test")),
            (b"RCPT TO:<\"x y\"@b.test>", rcpt("\"x y\"@b.test")),
            (b"RCPT TO:<>", SYNTAX()),
            (b"RCPT TO:<alice>", SYNTAX()),
            (b"RCPT TO:a@b.test", SYNTAX()),
            (b"RCPT FROM:<a@b.test>", SYNTAX()),
            (
                b"RCPT TO:<a@b.test> NOTIFY=NEVER",
                rcpt_with(
                    "a@b.test",
                    RcptParams {
                        notify: Some(Notify::default()),
                        orcpt: None,
                    },
                ),
            ),
            (
                b"RCPT TO:<a@b.test> ORCPT=rfc822;a+2Bx@b.test notify=success,delay",
                rcpt_with(
                    "a@b.test",
                    RcptParams {
                        notify: Some(Notify {
                            success: true,
                            failure: false,
                            delay: true,
                        }),
                        orcpt: Some("rfc822;a+2Bx@b.test".into()),
                    },
                ),
            ),
            (b"RCPT TO:<a@b.test> NOTIFY=NEVER,SUCCESS", SYNTAX()),
            (b"RCPT TO:<a@b.test> NOTIFY=SUCCESS,SUCCESS", SYNTAX()),
            (b"RCPT TO:<a@b.test> NOTIFY=", SYNTAX()),
            (b"RCPT TO:<a@b.test> NOTIFY", SYNTAX()),
            (b"RCPT TO:<a@b.test> NOTIFY=NEVER NOTIFY=NEVER", SYNTAX()),
            (b"RCPT TO:<a@b.test> ORCPT=a@b.test", SYNTAX()),
            (b"RCPT TO:<a@b.test> ORCPT=rfc822;", SYNTAX()),
            (b"RCPT TO:<a@b.test> ORCPT=rfc822;a+0Db", SYNTAX()),
            (
                b"RCPT TO:<a@b.test> ORCPT=rfc822;a@b ORCPT=rfc822;a@b",
                SYNTAX(),
            ),
            (
                b"RCPT TO:<a@b.test> X-FOO=1",
                Err(ParseError::UnsupportedParameter),
            ),
            (b"RCPT TO:<a@b.test> !!", SYNTAX()),
            (b"RCPT TO:<a@b.test> ", rcpt("a@b.test")),
            (b"RCPT TO:<a\x1b@b.test>", SYNTAX()),
        ]);
    }

    #[test]
    fn bdat() {
        let bdat = |size: u64, last: bool| Ok(Command::Bdat { size, last });
        check(&[
            (b"BDAT 0", bdat(0, false)),
            (b"BDAT 1000", bdat(1000, false)),
            (b"bdat 1000 last", bdat(1000, true)),
            (b"BDAT 1000 LAST", bdat(1000, true)),
            (b"BDAT 007  Last ", bdat(7, true)),
            (b"BDAT 18446744073709551615 LAST", bdat(u64::MAX, true)),
            (b"BDAT 18446744073709551616", SYNTAX()),
            (b"BDAT 99999999999999999999999", SYNTAX()),
            (b"BDAT", SYNTAX()),
            (b"BDAT +1", SYNTAX()),
            (b"BDAT -1", SYNTAX()),
            (b"BDAT 0x10", SYNTAX()),
            (b"BDAT 1 0", SYNTAX()),
            (b"BDAT 1 LAST x", SYNTAX()),
            (b"BDAT 1 LASTX", SYNTAX()),
            (b"BDAT LAST", SYNTAX()),
            (b"BDAT \xd9\xa1", SYNTAX()),
        ]);
    }

    proptest::proptest! {
        /// Whatever the bytes, the parser answers, and what it returns is clean enough for a
        /// header or a log line.
        #[test]
        fn never_panics_and_returns_clean_text(line in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let clean = |s: &str| !s.chars().any(|c| c.is_control() || c.is_whitespace() && c != ' ');
            match parse(&line) {
                Ok(Command::Ehlo(d) | Command::Helo(d)) => proptest::prop_assert!(clean(&d) && !d.contains(' ')),
                Ok(Command::Mail { from: ReversePath::Address(a), params }) => {
                    proptest::prop_assert!(clean(&a) && a.len() <= MAX_ADDRESS);
                    proptest::prop_assert!(params.auth.is_none_or(|s| !s.chars().any(char::is_control)));
                    proptest::prop_assert!(params.envid.is_none_or(|e| e.len() <= dsn::MAX_ENVID && dsn::decode_xtext(&e, false).is_some()));
                }
                Ok(Command::Rcpt { to, params }) => {
                    proptest::prop_assert!(clean(&to) && to.len() <= MAX_ADDRESS);
                    proptest::prop_assert!(params.orcpt.is_none_or(|o| o.len() <= dsn::MAX_ORCPT && o.is_ascii() && dsn::check_orcpt(&o).is_ok()));
                }
                _ => {}
            }
        }

        /// Mutations of valid lines (the interesting neighbourhood) never panic either.
        #[test]
        fn mutated_valid_lines(idx in 0usize..8, pos in 0usize..64, byte in proptest::prelude::any::<u8>()) {
            let lines: [&[u8]; 8] = [
                b"MAIL FROM:<a@b.test> RET=HDRS ENVID=QQ+2B1 REQUIRETLS",
                b"RCPT TO:<a@b.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a+2Bb@b.test",
                b"MAIL FROM:<\"a b\"@[IPv6:2001:db8::1]> SIZE=10 AUTH=a+2Bb",
                b"RCPT TO:<@r.test:a@b.test>",
                b"EHLO [192.0.2.1]",
                b"BDAT 100 LAST",
                b"AUTH PLAIN AGFsaWNlAHNlY3JldA==",
                "MAIL FROM:<j\u{f6}rg@b\u{fc}cher.example> SMTPUTF8".as_bytes(),
            ];
            let mut line = lines[idx].to_vec();
            let pos = pos % line.len();
            line[pos] = byte;
            let _ = parse(&line);
            line.insert(pos, byte);
            let _ = parse(&line);
            line.truncate(pos);
            let _ = parse(&line);
        }
    }
}
