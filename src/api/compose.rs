//! `POST /v1/messages` bodies to a message and its envelope, with no IO: a JSON request
//! (`application/json`) built into MIME with lettre, or a ready message (`message/rfc822`)
//! with its envelope from `X-Envelope-From`/`X-Envelope-To` or its own headers.
//!
//! Every refusal names the field it is about (`to[1]`, `attachments[0].content`), which the
//! route puts in the problem body's `field` extension.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Attachment, Mailbox, MultiPart, SinglePart};
use serde::Deserialize;

/// Entries in `metadata`.
pub const MAX_METADATA: usize = 32;
/// Octets of a `metadata` key.
pub const MAX_METADATA_KEY: usize = 64;
/// Octets of a `metadata` value.
pub const MAX_METADATA_VALUE: usize = 1024;
/// Entries in `headers`.
pub const MAX_HEADERS: usize = 32;
/// Octets of a `headers` value (RFC 5322 section 2.1.1 line limit).
pub const MAX_HEADER_VALUE: usize = 998;
/// Attachments in a request.
pub const MAX_ATTACHMENTS: usize = 100;
/// Octets of an `envid` (RFC 3461 section 4.4).
pub const MAX_ENVID: usize = 100;
/// Octets of an address (RFC 5321 section 4.5.3.1.3, path).
pub const MAX_ADDRESS: usize = 256;

/// Header fields the JSON fields set, or that submitd sets: not accepted in `headers`.
const RESERVED_HEADERS: [&str; 14] = [
    "from",
    "to",
    "cc",
    "bcc",
    "reply-to",
    "subject",
    "sender",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "received",
    "dkim-signature",
    "return-path",
    "date",
];

/// A refused request: the field at fault and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The JSON path of the field (`to[1]`), or a header name for `message/rfc822`.
    pub field: String,
    pub detail: String,
}

fn bad(field: impl Into<String>, detail: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        detail: detail.into(),
    }
}

/// A message ready for the checks and the spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Composed {
    /// The envelope sender (MAIL FROM).
    pub sender: String,
    /// The envelope recipients, without duplicates (compared without case).
    pub recipients: Vec<String>,
    /// The message, CRLF line endings, without `Bcc:`.
    pub message: Vec<u8>,
    pub envid: Option<String>,
    pub metadata: BTreeMap<String, String>,
}

/// One address or a list of them.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonAttachment {
    filename: String,
    #[serde(default)]
    content_type: Option<String>,
    content: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonMessage {
    from: String,
    #[serde(default)]
    to: Option<OneOrMany>,
    #[serde(default)]
    cc: Option<OneOrMany>,
    #[serde(default)]
    bcc: Option<OneOrMany>,
    #[serde(default)]
    reply_to: Option<String>,
    #[serde(default)]
    subject: Option<String>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    html: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    attachments: Vec<JsonAttachment>,
    #[serde(default)]
    envid: Option<String>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

/// A mailbox (`Name <a@b>` or `a@b`) of field `field`.
fn mailbox(field: &str, text: &str) -> Result<Mailbox, FieldError> {
    if text.len() > MAX_ADDRESS * 2 {
        return Err(bad(field, "too long"));
    }
    let mailbox: Mailbox = text
        .trim()
        .parse()
        .map_err(|e| bad(field, format!("not an address: {e}")))?;
    if mailbox.email.to_string().len() > MAX_ADDRESS {
        return Err(bad(field, "address too long"));
    }
    Ok(mailbox)
}

/// `metadata`, checked against its bounds.
fn check_metadata(metadata: &BTreeMap<String, String>) -> Result<(), FieldError> {
    if metadata.len() > MAX_METADATA {
        return Err(bad("metadata", format!("at most {MAX_METADATA} entries")));
    }
    for (k, v) in metadata {
        if k.is_empty() || k.len() > MAX_METADATA_KEY {
            return Err(bad(
                format!("metadata.{}", k.chars().take(64).collect::<String>()),
                format!("a key is 1 to {MAX_METADATA_KEY} octets"),
            ));
        }
        if v.len() > MAX_METADATA_VALUE {
            return Err(bad(
                format!("metadata.{k}"),
                format!("a value is at most {MAX_METADATA_VALUE} octets"),
            ));
        }
    }
    Ok(())
}

/// `envid`: xtext-safe printable ASCII (RFC 3461 section 4.4), bounded.
fn check_envid(envid: &Option<String>) -> Result<(), FieldError> {
    match envid {
        Some(e) if e.is_empty() || e.len() > MAX_ENVID => {
            Err(bad("envid", format!("1 to {MAX_ENVID} octets")))
        }
        Some(e)
            if !e
                .bytes()
                .all(|b| (b'!'..=b'~').contains(&b) && b != b'+' && b != b'=') =>
        {
            Err(bad("envid", "printable ASCII without '+', '=' or spaces"))
        }
        _ => Ok(()),
    }
}

/// A JSON request body to a message.
pub fn from_json(body: &[u8]) -> Result<Composed, FieldError> {
    let request: JsonMessage = serde_json::from_slice(body).map_err(|e| {
        let detail = e.to_string();
        bad("body", detail.chars().take(300).collect::<String>())
    })?;
    check_metadata(&request.metadata)?;
    check_envid(&request.envid)?;
    let from = mailbox("from", &request.from)?;
    let mut builder = lettre::Message::builder().from(from.clone());
    let mut recipients: Vec<String> = Vec::new();
    let lists = [("to", request.to), ("cc", request.cc), ("bcc", request.bcc)];
    for (name, list) in lists {
        let list = list.map(OneOrMany::into_vec).unwrap_or_default();
        for (i, text) in list.iter().enumerate() {
            let m = mailbox(&format!("{name}[{i}]"), text)?;
            let address = m.email.to_string();
            if !recipients.iter().any(|r| r.eq_ignore_ascii_case(&address)) {
                recipients.push(address);
            }
            builder = match name {
                "to" => builder.to(m),
                "cc" => builder.cc(m),
                _ => builder.bcc(m),
            };
        }
    }
    if recipients.is_empty() {
        return Err(bad("to", "no recipient in to, cc or bcc"));
    }
    if let Some(r) = &request.reply_to {
        builder = builder.reply_to(mailbox("reply_to", r)?);
    }
    if let Some(s) = &request.subject {
        if s.len() > MAX_HEADER_VALUE || s.contains(['\r', '\n']) {
            return Err(bad("subject", "one line of at most 998 octets"));
        }
        builder = builder.subject(s.clone());
    }
    builder = custom_headers(builder, &request.headers)?;
    let body = mime_body(request.text, request.html, &request.attachments)?;
    let message = builder
        .multipart(body)
        .map_err(|e| bad("body", format!("cannot build the message: {e}")))?;
    Ok(Composed {
        sender: from.email.to_string(),
        recipients,
        message: message.formatted(),
        envid: request.envid,
        metadata: request.metadata,
    })
}

/// `headers`: extra header fields, neither structural nor set by submitd.
fn custom_headers(
    mut builder: lettre::message::MessageBuilder,
    headers: &BTreeMap<String, String>,
) -> Result<lettre::message::MessageBuilder, FieldError> {
    if headers.len() > MAX_HEADERS {
        return Err(bad("headers", format!("at most {MAX_HEADERS} entries")));
    }
    for (name, value) in headers {
        let field = format!("headers.{}", name.chars().take(76).collect::<String>());
        let token = |b: u8| b.is_ascii_graphic() && b != b':';
        if name.is_empty() || name.len() > 76 || !name.bytes().all(token) {
            return Err(bad(field, "not a header field name"));
        }
        if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            return Err(bad(field, "set by its own field or by the server"));
        }
        if value.len() > MAX_HEADER_VALUE || value.contains(['\r', '\n', '\0']) {
            return Err(bad(field, "one line of at most 998 octets"));
        }
        let name = HeaderName::new_from_ascii(name.clone()).map_err(|_| bad(&field, "bad name"))?;
        builder = builder.raw_header(HeaderValue::new(name, value.clone()));
    }
    Ok(builder)
}

/// The MIME body: `text` and/or `html` (alternative), then attachments (mixed).
fn mime_body(
    text: Option<String>,
    html: Option<String>,
    attachments: &[JsonAttachment],
) -> Result<MultiPart, FieldError> {
    if attachments.len() > MAX_ATTACHMENTS {
        return Err(bad(
            "attachments",
            format!("at most {MAX_ATTACHMENTS} attachments"),
        ));
    }
    let content = match (text, html) {
        (Some(t), Some(h)) => Some(MultiPart::alternative_plain_html(t, h)),
        (None, Some(h)) => Some(MultiPart::mixed().singlepart(SinglePart::html(h))),
        (Some(t), None) => Some(MultiPart::mixed().singlepart(SinglePart::plain(t))),
        (None, None) => None,
    };
    let mut parts = Vec::with_capacity(attachments.len());
    for (i, a) in attachments.iter().enumerate() {
        let field = |f: &str| format!("attachments[{i}].{f}");
        if a.filename.is_empty()
            || a.filename.len() > 255
            || a.filename.contains(['\r', '\n', '\0', '/', '\\'])
        {
            return Err(bad(field("filename"), "1 to 255 octets, no path"));
        }
        let content_type = a
            .content_type
            .as_deref()
            .unwrap_or("application/octet-stream");
        let content_type = ContentType::parse(content_type)
            .map_err(|_| bad(field("content_type"), "not a media type"))?;
        let bytes = STANDARD
            .decode(a.content.trim())
            .map_err(|e| bad(field("content"), format!("not base64: {e}")))?;
        parts.push(Attachment::new(a.filename.clone()).body(bytes, content_type));
    }
    let mut parts = parts.into_iter();
    let mut body = match (content, parts.next()) {
        (Some(c), None) => return Ok(c),
        (Some(c), Some(first)) => MultiPart::mixed().multipart(c).singlepart(first),
        (None, Some(first)) => MultiPart::mixed().singlepart(first),
        (None, None) => return Err(bad("text", "a message needs text, html or an attachment")),
    };
    for part in parts {
        body = body.singlepart(part);
    }
    Ok(body)
}

/// A `message/rfc822` body and its envelope: `X-Envelope-From` and `X-Envelope-To` (comma
/// separated) when given, else From and To, Cc and Bcc of the message. Bare LF becomes CRLF;
/// `Bcc:` fields are removed.
pub fn from_rfc822(
    body: &[u8],
    envelope_from: Option<&str>,
    envelope_to: Option<&str>,
) -> Result<Composed, FieldError> {
    if body.contains(&0) {
        return Err(bad("body", "the message contains a NUL octet"));
    }
    // As over SMTP (550 5.6.0): a bare CR is refused, never spooled; bare LFs become CRLF.
    if body
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\r' && body.get(i + 1) != Some(&b'\n'))
    {
        return Err(bad("body", "the message contains a bare CR"));
    }
    let crlf = to_crlf(body);
    let parsed = mail_parser::MessageParser::default()
        .parse_headers(&crlf)
        .ok_or_else(|| bad("body", "not a message"))?;
    let sender = match envelope_from {
        Some(f) => mailbox("X-Envelope-From", f)?.email.to_string(),
        None => first_address(parsed.from())
            .ok_or_else(|| bad("From", "the message has no From address"))?,
    };
    let mut recipients: Vec<String> = Vec::new();
    let mut push = |a: String| {
        if !recipients.iter().any(|r| r.eq_ignore_ascii_case(&a)) {
            recipients.push(a);
        }
    };
    match envelope_to {
        Some(list) => {
            for (i, t) in list.split(',').filter(|t| !t.trim().is_empty()).enumerate() {
                push(
                    mailbox(&format!("X-Envelope-To[{i}]"), t)?
                        .email
                        .to_string(),
                );
            }
        }
        None => {
            for a in [parsed.to(), parsed.cc(), parsed.bcc()]
                .into_iter()
                .flatten()
                .flat_map(|a| a.iter())
            {
                if let Some(addr) = a.address() {
                    push(mailbox("To", addr)?.email.to_string());
                }
            }
        }
    }
    if recipients.is_empty() {
        return Err(bad("To", "no recipient"));
    }
    Ok(Composed {
        sender,
        recipients,
        message: drop_bcc(&crlf),
        envid: None,
        metadata: BTreeMap::new(),
    })
}

fn first_address(list: Option<&mail_parser::Address<'_>>) -> Option<String> {
    list?.first()?.address().map(str::to_owned)
}

/// Every bare LF as CRLF.
fn to_crlf(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / 50);
    let mut prev = 0u8;
    for &b in body {
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        prev = b;
    }
    out
}

/// The message without its `Bcc:` fields (with their folded lines), header section only.
fn drop_bcc(message: &[u8]) -> Vec<u8> {
    let headers_len = crate::headers::header_section(message).len();
    let (headers, rest) = message.split_at(headers_len);
    let mut out = Vec::with_capacity(message.len());
    let mut skipping = false;
    for line in headers.split_inclusive(|&b| b == b'\n') {
        let continuation = line.first().is_some_and(|b| *b == b' ' || *b == b'\t');
        if !continuation {
            skipping = line.len() >= 4 && line[..4].eq_ignore_ascii_case(b"bcc:");
        }
        if !skipping {
            out.extend_from_slice(line);
        }
    }
    out.extend_from_slice(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn json_with_attachments() {
        let body = br#"{"from":"Alice <alice@example.test>","to":"bob@example.net",
            "cc":["carol@example.net"],"bcc":"dave@example.net","subject":"Hi",
            "text":"hello","html":"<p>hello</p>","headers":{"X-Tag":"t1"},
            "attachments":[{"filename":"a.bin","content_type":"application/octet-stream","content":"AAEC"}],
            "envid":"e1","metadata":{"k":"v"}}"#;
        let c = from_json(body).unwrap();
        assert_eq!(c.sender, "alice@example.test");
        assert_eq!(
            c.recipients,
            ["bob@example.net", "carol@example.net", "dave@example.net"]
        );
        let text = String::from_utf8(c.message.clone()).unwrap();
        assert!(!text.to_ascii_lowercase().contains("bcc:"), "{text}");
        assert!(text.contains("X-Tag: t1\r\n"));
        let parsed = mail_parser::MessageParser::default()
            .parse(&c.message)
            .unwrap();
        assert_eq!(parsed.subject(), Some("Hi"));
        assert_eq!(parsed.attachment(0).unwrap().contents(), &[0, 1, 2]);
        assert_eq!(c.envid.as_deref(), Some("e1"));
    }

    #[test]
    fn json_refusals_name_the_field() {
        for (body, field) in [
            (&br#"{"from":"a@b.test","to":["c@d.test","nope"],"text":"x"}"#[..], "to[1]"),
            (br#"{"from":"a@b.test","text":"x"}"#, "to"),
            (br#"{"from":"bad","to":"c@d.test","text":"x"}"#, "from"),
            (br#"{"from":"a@b.test","to":"c@d.test"}"#, "text"),
            (br#"{"from":"a@b.test","to":"c@d.test","text":"x","headers":{"Subject":"y"}}"#, "headers.Subject"),
            (br#"{"from":"a@b.test","to":"c@d.test","text":"x","headers":{"X-A":"a\nb"}}"#, "headers.X-A"),
            (br#"{"from":"a@b.test","to":"c@d.test","attachments":[{"filename":"f","content":"!!"}]}"#, "attachments[0].content"),
            (br#"{"from":"a@b.test","to":"c@d.test","text":"x","envid":"a b"}"#, "envid"),
            (br#"{"from":"a@b.test","to":"c@d.test","text":"x","other":1}"#, "body"),
            (br#"[1]"#, "body"),
        ] {
            let e = from_json(body).unwrap_err();
            assert_eq!(e.field, field, "{}", String::from_utf8_lossy(body));
        }
        let mut big = String::from(r#"{"from":"a@b.test","to":"c@d.test","text":"x","metadata":{"#);
        for i in 0..33 {
            big.push_str(&format!("\"k{i}\":\"v\","));
        }
        big.pop();
        big.push_str("}}");
        assert_eq!(from_json(big.as_bytes()).unwrap_err().field, "metadata");
    }

    #[test]
    fn rfc822_bare_cr_is_refused_and_bare_lf_becomes_crlf() {
        let bare_cr = b"From: a@example.test\r\nTo: b@example.net\r\n\r\nhi\rthere\r\n";
        let e = from_rfc822(bare_cr, None, None).unwrap_err();
        assert_eq!(e.field, "body");
        let lf = b"From: a@example.test\nTo: b@example.net\n\nhi\n";
        let c = from_rfc822(lf, None, None).unwrap();
        assert!(!c.message.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r'));
    }

    #[test]
    fn rfc822_envelope_and_bcc() {
        let m = b"From: a@b.test\nTo: c@d.test, e@f.test\nBcc: g@h.test,\n i@j.test\nSubject: s\n\nbody\n";
        let c = from_rfc822(m, None, None).unwrap();
        assert_eq!(c.sender, "a@b.test");
        assert_eq!(
            c.recipients,
            ["c@d.test", "e@f.test", "g@h.test", "i@j.test"]
        );
        assert_eq!(
            c.message,
            b"From: a@b.test\r\nTo: c@d.test, e@f.test\r\nSubject: s\r\n\r\nbody\r\n"
        );
        let c = from_rfc822(m, Some("x@y.test"), Some("p@q.test, r@s.test")).unwrap();
        assert_eq!(c.sender, "x@y.test");
        assert_eq!(c.recipients, ["p@q.test", "r@s.test"]);
        assert_eq!(
            from_rfc822(m, None, Some("p@q.test,bad"))
                .unwrap_err()
                .field,
            "X-Envelope-To[1]"
        );
        assert_eq!(
            from_rfc822(b"To: c@d.test\r\n\r\nx", None, None)
                .unwrap_err()
                .field,
            "From"
        );
    }

    proptest! {
        #[test]
        fn json_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = from_json(&bytes);
            let _ = from_rfc822(&bytes, None, None);
        }

        #[test]
        fn json_text_round_trips(text in "[ -~]{0,200}", subject in "[ -~]{0,60}") {
            let body = serde_json::json!({
                "from": "a@b.test", "to": ["c@d.test"], "subject": subject, "text": text,
            });
            let c = from_json(body.to_string().as_bytes()).unwrap();
            let parsed = mail_parser::MessageParser::default().parse(&c.message).unwrap();
            let got = parsed.body_text(0).unwrap_or_default();
            prop_assert_eq!(got.trim_end(), text.trim_end());
        }
    }
}
