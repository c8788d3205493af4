//! SASL PLAIN (RFC 4616) and LOGIN decoding. Pure functions: no IO, no secrets logged.

/// A SASL mechanism submitd offers (`AUTH PLAIN LOGIN`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    Login,
}

impl Mechanism {
    /// Case-insensitive mechanism name; `None` for mechanisms we do not offer (504 5.5.4).
    pub fn parse(_name: &str) -> Option<Mechanism> {
        todo!("auth helper")
    }
}

/// A login and password taken from a SASL exchange.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub login: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("login", &self.login).finish_non_exhaustive()
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

/// Decode a PLAIN response (base64 of `authzid NUL authcid NUL passwd`). The input is the raw
/// base64 line (no CRLF); `*` gives `Cancelled`, `=` is an empty response (malformed for PLAIN).
pub fn decode_plain(_b64: &[u8]) -> Result<Credentials, SaslError> {
    todo!("auth helper")
}

/// Decode one LOGIN response line (the username or the password). `*` gives `Cancelled`.
pub fn decode_login_field(_b64: &[u8]) -> Result<String, SaslError> {
    todo!("auth helper")
}
