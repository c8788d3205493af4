//! SASL PLAIN (RFC 4616) and LOGIN decoding. Pure functions: no IO, no secrets logged.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// A SASL mechanism submitd offers (`AUTH PLAIN LOGIN`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    /// RFC 4616.
    Plain,
    /// The de-facto LOGIN mechanism (draft-murchison-sasl-login).
    Login,
}

impl Mechanism {
    /// Case-insensitive mechanism name; `None` for mechanisms we do not offer (504 5.5.4).
    pub fn parse(name: &str) -> Option<Mechanism> {
        // RFC 4422 section 3.1: mechanism names are case-insensitive.
        if name.eq_ignore_ascii_case("PLAIN") {
            Some(Mechanism::Plain)
        } else if name.eq_ignore_ascii_case("LOGIN") {
            Some(Mechanism::Login)
        } else {
            None
        }
    }

    /// The name as advertised in EHLO.
    pub fn as_str(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Login => "LOGIN",
        }
    }
}

impl std::fmt::Display for Mechanism {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A login and password taken from a SASL exchange.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The authentication identity (RFC 4616 authcid).
    pub login: String,
    /// The password, never to be logged.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("login", &self.login)
            .finish_non_exhaustive()
    }
}

/// Why a SASL response was refused (each is answered 501 5.5.2 / 535 by the session).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    /// The client sent `*` (RFC 4954 section 4): 501.
    #[error("authentication cancelled")]
    Cancelled,
    /// Not valid base64: 501.
    #[error("invalid base64")]
    BadBase64,
    /// Decoded but not a valid PLAIN/LOGIN message (missing NULs, empty login, not UTF-8): 501.
    #[error("malformed SASL response")]
    Malformed,
    /// PLAIN authzid present and different from the authcid: refused (535).
    #[error("authorization identity differs from authentication identity")]
    AuthzidMismatch,
}

/// One client response decoded to bytes (RFC 4954 section 4): `*` cancels, `=` is empty.
fn decode_response(b64: &[u8]) -> Result<Vec<u8>, SaslError> {
    match b64 {
        b"*" => Err(SaslError::Cancelled),
        b"=" => Ok(Vec::new()),
        // STANDARD requires canonical padding and rejects whitespace, which is what RFC 4954
        // asks for (RFC 4648 base64, no line breaks).
        _ => STANDARD.decode(b64).map_err(|_| SaslError::BadBase64),
    }
}

/// Decode a PLAIN response (base64 of `authzid NUL authcid NUL passwd`). The input is the raw
/// base64 line (no CRLF); `*` gives `Cancelled`, `=` is an empty response (malformed for PLAIN).
pub fn decode_plain(b64: &[u8]) -> Result<Credentials, SaslError> {
    let bytes = decode_response(b64)?;
    // RFC 4616 section 2: the message is UTF-8 (NUL is valid UTF-8, so check the whole).
    let text = String::from_utf8(bytes).map_err(|_| SaslError::Malformed)?;
    let mut parts = text.split('\0');
    let (Some(authzid), Some(authcid), Some(passwd), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::Malformed);
    };
    if authcid.is_empty() || passwd.is_empty() {
        return Err(SaslError::Malformed);
    }
    // We never let one user act as another, so an authzid is only accepted when it names the
    // authenticating user itself (RFC 4616 section 2 leaves the policy to the server).
    if !authzid.is_empty() && authzid != authcid {
        return Err(SaslError::AuthzidMismatch);
    }
    Ok(Credentials {
        login: authcid.to_owned(),
        password: passwd.to_owned(),
    })
}

/// Decode one LOGIN response line (the username or the password). `*` gives `Cancelled`;
/// `=` or an empty line give an empty string (which then fails verification, 535).
pub fn decode_login_field(b64: &[u8]) -> Result<String, SaslError> {
    let bytes = decode_response(b64)?;
    let text = String::from_utf8(bytes).map_err(|_| SaslError::Malformed)?;
    // A NUL would let a LOGIN username carry a PLAIN-style authzid/authcid split downstream.
    if text.contains('\0') {
        return Err(SaslError::Malformed);
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &[u8]) -> Vec<u8> {
        STANDARD.encode(s).into_bytes()
    }

    #[test]
    fn mechanism_names() {
        let cases: &[(&str, Option<Mechanism>)] = &[
            ("PLAIN", Some(Mechanism::Plain)),
            ("plain", Some(Mechanism::Plain)),
            ("PlAiN", Some(Mechanism::Plain)),
            ("LOGIN", Some(Mechanism::Login)),
            ("login", Some(Mechanism::Login)),
            ("CRAM-MD5", None),
            ("XOAUTH2", None),
            ("", None),
            ("PLAIN ", None),
            ("PLAINX", None),
            ("ſLAIN", None),
        ];
        for (name, want) in cases {
            assert_eq!(Mechanism::parse(name), *want, "{name:?}");
        }
        assert_eq!(Mechanism::Plain.to_string(), "PLAIN");
        assert_eq!(Mechanism::Login.as_str(), "LOGIN");
    }

    #[test]
    fn plain_table() {
        let ok = |l: &str, p: &str| {
            Ok(Credentials {
                login: l.into(),
                password: p.into(),
            })
        };
        let cases: Vec<(Vec<u8>, Result<Credentials, SaslError>)> = vec![
            (b64(b"\0alice\0secret"), ok("alice", "secret")),
            (b64(b"alice\0alice\0secret"), ok("alice", "secret")),
            (
                b64("\0jösé@exämple.test\0pässwörd".as_bytes()),
                ok("jösé@exämple.test", "pässwörd"),
            ),
            (
                b64(b"\0alice\0pass with spaces"),
                ok("alice", "pass with spaces"),
            ),
            (b64(b"bob\0alice\0secret"), Err(SaslError::AuthzidMismatch)),
            (
                b64(b"ALICE\0alice\0secret"),
                Err(SaslError::AuthzidMismatch),
            ),
            (b64(b"\0\0secret"), Err(SaslError::Malformed)),
            (b64(b"\0alice\0"), Err(SaslError::Malformed)),
            (b64(b"alice\0secret"), Err(SaslError::Malformed)),
            (b64(b"alicesecret"), Err(SaslError::Malformed)),
            (b64(b"\0alice\0sec\0ret"), Err(SaslError::Malformed)),
            (b64(b"\0al\xffice\0secret"), Err(SaslError::Malformed)),
            (b64(b"\0alice\0\xc3"), Err(SaslError::Malformed)),
            (b64(b""), Err(SaslError::Malformed)),
            (b"=".to_vec(), Err(SaslError::Malformed)),
            (b"".to_vec(), Err(SaslError::Malformed)),
            (b"*".to_vec(), Err(SaslError::Cancelled)),
            (b"**".to_vec(), Err(SaslError::BadBase64)),
            (b"AGFsaWNlAHNlY3JldA".to_vec(), Err(SaslError::BadBase64)), // padding missing
            (b"AGFsaWNl AHNlY3JldA==".to_vec(), Err(SaslError::BadBase64)),
            (
                b"AGFsaWNlAHNlY3JldA==\r\n".to_vec(),
                Err(SaslError::BadBase64),
            ),
            (b" AGFsaWNlAHNlY3JldA==".to_vec(), Err(SaslError::BadBase64)),
            (b"AGFsaWNlAHNlY3JldA===".to_vec(), Err(SaslError::BadBase64)),
            (b"AGFsaWNl-HNlY3JldA==".to_vec(), Err(SaslError::BadBase64)), // URL-safe alphabet
            (b"\xff\xfe".to_vec(), Err(SaslError::BadBase64)),
        ];
        for (input, want) in cases {
            assert_eq!(
                decode_plain(&input),
                want,
                "{:?}",
                String::from_utf8_lossy(&input)
            );
        }
        // The known-good string from the test table above, spelled out.
        assert_eq!(decode_plain(b"AGFsaWNlAHNlY3JldA=="), ok("alice", "secret"));
    }

    #[test]
    fn login_table() {
        let cases: Vec<(Vec<u8>, Result<String, SaslError>)> = vec![
            (b64(b"alice@example.test"), Ok("alice@example.test".into())),
            (b64("pässwörd".as_bytes()), Ok("pässwörd".into())),
            (b"=".to_vec(), Ok(String::new())),
            (b"".to_vec(), Ok(String::new())),
            (b"*".to_vec(), Err(SaslError::Cancelled)),
            (b64(b"*"), Ok("*".into())),
            (b"YWxpY2U".to_vec(), Err(SaslError::BadBase64)),
            (b"YWxp Y2U=".to_vec(), Err(SaslError::BadBase64)),
            (b"YWxpY2U=\n".to_vec(), Err(SaslError::BadBase64)),
            (b64(b"ali\0ce"), Err(SaslError::Malformed)),
            (b64(b"\xff"), Err(SaslError::Malformed)),
        ];
        for (input, want) in cases {
            assert_eq!(
                decode_login_field(&input),
                want,
                "{:?}",
                String::from_utf8_lossy(&input)
            );
        }
    }

    #[test]
    fn never_panics_on_odd_input() {
        // Every byte value and lengths around the base64 quantum, plus the caller's bound.
        for len in 0..9 {
            for byte in 0..=255u8 {
                let input = vec![byte; len];
                let _ = decode_plain(&input);
                let _ = decode_login_field(&input);
            }
        }
        let big = b"QUFB".repeat(3072); // "AAA" x 3072
        assert_eq!(decode_plain(&big), Err(SaslError::Malformed));
        assert_eq!(decode_login_field(&big).map(|s| s.len()), Ok(9216));
    }

    #[test]
    fn debug_hides_password() {
        let c = Credentials {
            login: "alice".into(),
            password: "hunter2".into(),
        };
        let shown = format!("{c:?}");
        assert!(
            shown.contains("alice") && !shown.contains("hunter2"),
            "{shown}"
        );
    }
}
