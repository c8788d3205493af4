//! The SMTP command parser (RFC 5321 section 4.1, RFC 1870 SIZE, RFC 6152 8BITMIME,
//! RFC 6531 SMTPUTF8, RFC 3030 BDAT, RFC 4954 AUTH). Sans-IO: one line in, one command out.

/// A parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `EHLO domain-or-address-literal` (argument validated, RFC 5321 4.1.1.1).
    Ehlo(String),
    /// `HELO domain`.
    Helo(String),
    StartTls,
    /// `AUTH mechanism [initial-response]`; the mechanism as given (the session checks it).
    Auth { mechanism: String, initial: Option<String> },
    /// `MAIL FROM:<reverse-path> [params]`.
    Mail { from: ReversePath, params: MailParams },
    /// `RCPT TO:<forward-path>`; the address without angle brackets. `<Postmaster>` is kept
    /// as written. RCPT parameters are refused (we advertise none).
    Rcpt { to: String },
    Data,
    /// `BDAT size [LAST]`.
    Bdat { size: u64, last: bool },
    Rset,
    Noop,
    Quit,
    Help,
    Vrfy,
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
}

/// The BODY= parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    SevenBit,
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
pub fn parse(_line: &[u8]) -> Result<Command, ParseError> {
    todo!("parser helper")
}
