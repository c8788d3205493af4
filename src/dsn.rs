//! The parameters of the DSN extension (RFC 3461) and of REQUIRETLS (RFC 8689) as they travel
//! from the session through the queue to the next hop. A leaf: pure data and pure parsing,
//! shared by `session::command` (which reads them), `queue` (which stores them and writes the
//! reports) and `delivery` (which passes them on).

use serde::{Deserialize, Serialize};

/// The longest `ENVID` value, in characters of its xtext form (RFC 3461 section 4.4).
pub const MAX_ENVID: usize = 100;
/// The longest `ORCPT` value, `addr-type;xtext` (RFC 3461 section 4.2).
pub const MAX_ORCPT: usize = 500;

/// `RET=FULL|HDRS` (RFC 3461 section 4.3): what a failure DSN returns of the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ret {
    /// The whole message.
    Full,
    /// Only its header section.
    Hdrs,
}

impl Ret {
    /// The parameter's value as written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Ret::Full => "FULL",
            Ret::Hdrs => "HDRS",
        }
    }
}

/// `NOTIFY=NEVER` or a list of `SUCCESS`, `FAILURE`, `DELAY` (RFC 3461 section 4.1). `NEVER`
/// is all three false.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notify {
    #[serde(default)]
    pub success: bool,
    #[serde(default)]
    pub failure: bool,
    #[serde(default)]
    pub delay: bool,
}

impl Notify {
    /// Parse the value of `NOTIFY=` (keywords case-insensitive). `NEVER` must stand alone; a
    /// keyword may not repeat; the list may not be empty.
    pub fn parse(value: &str) -> Result<Notify, &'static str> {
        if value.eq_ignore_ascii_case("NEVER") {
            return Ok(Notify::default());
        }
        let mut n = Notify::default();
        for word in value.split(',') {
            let slot = if word.eq_ignore_ascii_case("SUCCESS") {
                &mut n.success
            } else if word.eq_ignore_ascii_case("FAILURE") {
                &mut n.failure
            } else if word.eq_ignore_ascii_case("DELAY") {
                &mut n.delay
            } else if word.eq_ignore_ascii_case("NEVER") {
                return Err("NOTIFY=NEVER must stand alone");
            } else {
                return Err("invalid NOTIFY value");
            };
            if *slot {
                return Err("NOTIFY keyword repeated");
            }
            *slot = true;
        }
        Ok(n)
    }

    /// `NEVER`: no DSN of any kind.
    pub fn is_never(&self) -> bool {
        !self.success && !self.failure && !self.delay
    }

    /// The value as written on the wire, in a canonical order.
    pub fn to_value(&self) -> String {
        if self.is_never() {
            return "NEVER".into();
        }
        let words = [
            (self.success, "SUCCESS"),
            (self.failure, "FAILURE"),
            (self.delay, "DELAY"),
        ];
        words
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, w)| *w)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// ESMTP parameters of RCPT TO (RFC 3461 section 4).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RcptParams {
    /// `NOTIFY=NEVER|SUCCESS,FAILURE,DELAY`.
    pub notify: Option<Notify>,
    /// `ORCPT=addr-type;xtext`, as written (checked, at most 500 characters).
    pub orcpt: Option<String>,
}

/// Whether a failure DSN is wanted for a recipient with this NOTIFY (none given: yes, RFC 3461
/// section 4.1 leaves the default to the MTA and every MTA reports failures).
pub fn wants_failure(notify: Option<Notify>) -> bool {
    notify.is_none_or(|n| n.failure)
}

/// Whether a delay DSN may be sent for a recipient with this NOTIFY (none given: yes).
pub fn wants_delay(notify: Option<Notify>) -> bool {
    notify.is_none_or(|n| n.delay)
}

/// Whether a success DSN was asked for.
pub fn wants_success(notify: Option<Notify>) -> bool {
    notify.is_some_and(|n| n.success)
}

/// Decode `xtext` (RFC 3461 section 4): `+XX` with upper-case hex digits stands for one octet;
/// `=` and anything outside `!`..`~` is refused, except raw UTF-8 when `utf8` (RFC 6533
/// utf-8-xtext). The decoded value must be UTF-8 without control characters, since it is
/// logged and may end up in a header field. `None` when it is not valid.
pub fn decode_xtext(s: &str, utf8: bool) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'+' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let digit = |h: u8| match h {
                    b'0'..=b'9' => Some(h - b'0'),
                    b'A'..=b'F' => Some(h - b'A' + 10),
                    _ => None,
                };
                out.push(digit(hex[0])? << 4 | digit(hex[1])?);
                i += 3;
            }
            b'=' => return None,
            b'!'..=b'~' => {
                out.push(b);
                i += 1;
            }
            0x80.. if utf8 => {
                out.push(b);
                i += 1;
            }
            _ => return None,
        }
    }
    let text = String::from_utf8(out).ok()?;
    if text.chars().any(char::is_control) {
        return None;
    }
    Some(text)
}

/// Check an `ENVID` value: xtext (ASCII), at most [`MAX_ENVID`] characters, not empty.
pub fn check_envid(value: &str) -> Result<(), &'static str> {
    if value.is_empty() || value.len() > MAX_ENVID {
        return Err("ENVID must be 1 to 100 characters");
    }
    decode_xtext(value, false)
        .map(|_| ())
        .ok_or("invalid ENVID xtext")
}

/// Check an `ORCPT` value, `addr-type ";" xtext` (RFC 3461 section 4.2): the type an atom, the
/// address valid xtext and not empty, at most [`MAX_ORCPT`] characters in all.
pub fn check_orcpt(value: &str) -> Result<(), &'static str> {
    if value.len() > MAX_ORCPT {
        return Err("ORCPT longer than 500 characters");
    }
    let (kind, address) = value
        .split_once(';')
        .ok_or("ORCPT must be addr-type;address")?;
    let atom = !kind.is_empty() && kind.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !atom || address.is_empty() {
        return Err("ORCPT must be addr-type;address");
    }
    decode_xtext(address, kind.eq_ignore_ascii_case("utf-8"))
        .map(|_| ())
        .ok_or("invalid ORCPT xtext")
}

/// `ORCPT`'s `addr-type;address` with the address decoded, for `Original-Recipient`
/// (RFC 3464 section 2.3.1); `None` when the stored value is not valid.
pub fn orcpt_for_report(value: &str) -> Option<(String, String)> {
    check_orcpt(value).ok()?;
    let (kind, address) = value.split_once(';')?;
    let decoded = decode_xtext(address, kind.eq_ignore_ascii_case("utf-8"))?;
    Some((kind.to_string(), decoded))
}

/// Whether the message's header section says `TLS-Required: No` (RFC 8689 section 5): the
/// sender asks that recipient-side TLS policies (DANE, MTA-STS, `relay.tls = "required"`) be
/// ignored. Only a field at the top level of the header section counts; its value is compared
/// case-insensitively after unfolding and trimming.
pub fn tls_required_no(headers: &[u8]) -> bool {
    let text = String::from_utf8_lossy(headers);
    let mut fields: Vec<String> = Vec::new();
    for line in text.split("\r\n") {
        if line.is_empty() {
            break;
        }
        if line.starts_with([' ', '\t']) {
            if let Some(last) = fields.last_mut() {
                last.push_str(line);
            }
        } else {
            fields.push(line.to_string());
        }
    }
    fields.iter().any(|f| {
        f.split_once(':').is_some_and(|(name, value)| {
            name.trim_end().eq_ignore_ascii_case("TLS-Required")
                && value.trim().eq_ignore_ascii_case("No")
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_values() {
        let n = |s, f, d| Notify {
            success: s,
            failure: f,
            delay: d,
        };
        assert_eq!(Notify::parse("NEVER"), Ok(n(false, false, false)));
        assert_eq!(Notify::parse("never"), Ok(n(false, false, false)));
        assert_eq!(Notify::parse("SUCCESS"), Ok(n(true, false, false)));
        assert_eq!(
            Notify::parse("delay,Success,FAILURE"),
            Ok(n(true, true, true))
        );
        for bad in [
            "",
            ",",
            "SUCCESS,",
            "NEVER,SUCCESS",
            "SUCCESS,NEVER",
            "SUCCESS,SUCCESS",
            "SOMETIMES",
            "SUCCESS FAILURE",
        ] {
            assert!(Notify::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(n(true, false, true).to_value(), "SUCCESS,DELAY");
        assert_eq!(n(false, false, false).to_value(), "NEVER");
        assert!(wants_failure(None) && wants_delay(None) && !wants_success(None));
        assert!(!wants_failure(Some(n(true, false, false))));
    }

    #[test]
    fn xtext_and_bounds() {
        assert_eq!(decode_xtext("a+2Bb", false).as_deref(), Some("a+b"));
        assert_eq!(decode_xtext("a+2b", false), None);
        assert_eq!(decode_xtext("a+0D+0A", false), None);
        assert_eq!(decode_xtext("a=b", false), None);
        assert_eq!(decode_xtext("\u{fc}", false), None);
        assert_eq!(decode_xtext("\u{fc}", true).as_deref(), Some("\u{fc}"));
        assert!(check_envid("QQ314159").is_ok());
        assert!(check_envid(&"x".repeat(100)).is_ok());
        assert!(check_envid(&"x".repeat(101)).is_err());
        assert!(check_envid("").is_err());
        assert!(check_orcpt("rfc822;bob@example.net").is_ok());
        assert!(check_orcpt("rfc822;bob+2Bx@example.net").is_ok());
        assert!(check_orcpt("rfc822;").is_err());
        assert!(check_orcpt("bob@example.net").is_err());
        assert!(check_orcpt(";bob@example.net").is_err());
        assert!(check_orcpt("rfc 822;bob@example.net").is_err());
        assert!(check_orcpt(&format!("rfc822;{}", "b".repeat(494))).is_err());
        assert!(check_orcpt(&format!("rfc822;{}", "b".repeat(493))).is_ok());
        assert_eq!(
            orcpt_for_report("rfc822;a+2Bb@x.test"),
            Some(("rfc822".into(), "a+b@x.test".into()))
        );
    }

    #[test]
    fn tls_required_header() {
        assert!(tls_required_no(
            b"From: a@b\r\nTLS-Required: No\r\n\r\nbody"
        ));
        assert!(tls_required_no(b"tls-required:\r\n  no \r\n\r\n"));
        assert!(!tls_required_no(b"From: a@b\r\nTLS-Required: Yes\r\n\r\n"));
        assert!(!tls_required_no(b"From: a@b\r\n\r\nTLS-Required: No\r\n"));
        assert!(!tls_required_no(b"X-TLS-Required: No\r\n\r\n"));
    }

    proptest::proptest! {
        /// NOTIFY's wire form parses back to the same value.
        #[test]
        fn notify_round_trips(success: bool, failure: bool, delay: bool) {
            let n = Notify { success, failure, delay };
            proptest::prop_assert_eq!(Notify::parse(&n.to_value()), Ok(n));
        }

        /// Whatever the bytes, xtext decoding answers, and what it returns has no control
        /// character; what the checks accept is printable ASCII within the bounds.
        #[test]
        fn xtext_checks_never_panic(s in ".{0,600}") {
            for utf8 in [false, true] {
                if let Some(d) = decode_xtext(&s, utf8) {
                    proptest::prop_assert!(!d.chars().any(char::is_control));
                }
            }
            if check_envid(&s).is_ok() {
                proptest::prop_assert!(s.len() <= MAX_ENVID && s.bytes().all(|b| b.is_ascii_graphic()));
            }
            if check_orcpt(&s).is_ok() {
                proptest::prop_assert!(s.len() <= MAX_ORCPT && orcpt_for_report(&s).is_some());
            }
        }
    }
}
