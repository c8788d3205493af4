//! `[[webhook]]`: delivery-event endpoints (issue 16), one entry per receiver. The secret file
//! is read by `webhook` (at start and by `check-config`), not here.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::value::{positive, positive_duration};
use super::{Context, Problems};

/// The event names `events` may list (`crate::events::EventKind`'s names; config imports
/// nothing, a test in `webhook` keeps the two lists equal).
pub const WEBHOOK_EVENTS: [&str; 5] = ["delivered", "deferred", "bounced", "suppressed", "delayed"];

/// Where a webhook is sent: `http` or `https`, host, port, path with query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl {
    pub https: bool,
    /// A DNS name or an IP address (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    /// The request target: path and query, at least `/`.
    pub path: String,
}

impl std::fmt::Display for WebhookUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}{}", self.host, self.port, self.path)
        } else {
            write!(f, "{scheme}://{}:{}{}", self.host, self.port, self.path)
        }
    }
}

/// One validated `[[webhook]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookSettings {
    /// Unique; names the backlog directory `queue.dir/webhooks/NAME/` and the metrics label.
    pub name: String,
    pub url: WebhookUrl,
    /// Holds `whsec_` + base64 of at least 24 bytes (the Standard Webhooks secret format).
    pub secret_file: PathBuf,
    /// Extra CA certificates (PEM) trusted for an `https` URL besides the system roots.
    pub ca_file: Option<PathBuf>,
    /// Event names (from [`WEBHOOK_EVENTS`]) sent to this endpoint.
    pub events: Vec<String>,
    /// Only events of messages submitted by these logins or key names, or of these tenants;
    /// empty: every message.
    pub keys: Vec<String>,
    /// Events kept waiting at most; a new event over it is dropped (and counted).
    pub max_backlog: usize,
    /// An event not delivered within this time is dropped (and counted).
    pub max_age: Duration,
    /// One request: connect, TLS, request, response headers.
    pub timeout: Duration,
    /// The first wait after a failure; doubled after each further failure, up to `retry_max`.
    pub retry_min: Duration,
    pub retry_max: Duration,
}

/// One `[[webhook]]` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWebhook {
    url: Option<String>,
    secret_file: Option<String>,
    name: Option<String>,
    ca_file: Option<String>,
    events: Option<Vec<String>>,
    #[serde(default)]
    keys: Vec<String>,
    #[serde(default = "default_max_backlog")]
    max_backlog: i64,
    #[serde(default = "default_max_age")]
    max_age: String,
    #[serde(default = "default_timeout")]
    timeout: String,
    #[serde(default = "default_retry_min")]
    retry_min: String,
    #[serde(default = "default_retry_max")]
    retry_max: String,
}

fn default_max_backlog() -> i64 {
    100_000
}
fn default_max_age() -> String {
    "24h".into()
}
fn default_timeout() -> String {
    "10s".into()
}
fn default_retry_min() -> String {
    "5s".into()
}
fn default_retry_max() -> String {
    "10m".into()
}

/// Parse an `http://` or `https://` URL (no user info, no fragment).
pub fn parse_webhook_url(text: &str) -> Result<WebhookUrl, String> {
    let uri: hyper::Uri = text
        .trim()
        .parse()
        .map_err(|e| format!("{text:?} is not a URL ({e})"))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => {
            return Err(format!(
                "{text:?}: the URL must start with http:// or https://"
            ));
        }
    };
    let authority = uri
        .authority()
        .ok_or_else(|| format!("{text:?}: no host"))?;
    if authority.as_str().contains('@') {
        return Err(format!(
            "{text:?}: user info in the URL is not supported (the signature authenticates us)"
        ));
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("{text:?}: no host"));
    }
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    if port == 0 {
        return Err(format!("{text:?}: port 0"));
    }
    let path = uri
        .path_and_query()
        .map(|p| p.as_str())
        .filter(|p| !p.is_empty())
        .unwrap_or("/");
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    Ok(WebhookUrl {
        https,
        host: host.to_ascii_lowercase(),
        port,
        path,
    })
}

/// A name fit for a directory and a metrics label.
fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?}: 1 to 64 letters, digits, '.', '-' or '_', not starting with '.'"
        ))
    }
}

/// The default name: the URL's host, and its port when it is not the scheme's default.
fn default_name(url: &WebhookUrl) -> String {
    let host: String = url
        .host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let default_port = if url.https { 443 } else { 80 };
    let name = if url.port == default_port {
        host
    } else {
        format!("{host}-{}", url.port)
    };
    name.trim_start_matches('.').chars().take(64).collect()
}

/// Validate the `[[webhook]]` entries, named `webhook[N]` in errors.
pub(super) fn parse(
    raw: &[RawWebhook],
    p: &mut Problems<'_>,
    cx: &Context<'_>,
) -> Vec<WebhookSettings> {
    let mut out: Vec<WebhookSettings> = Vec::new();
    for (i, w) in raw.iter().enumerate() {
        if let Some(entry) = parse_one(i, w, p, cx) {
            if let Some(first) = out.iter().position(|o| o.name == entry.name) {
                p.push(
                    format!("webhook[{i}].name"),
                    format!(
                        "{:?} is already the name of webhook[{first}]; set a unique `name`",
                        entry.name
                    ),
                );
                continue;
            }
            out.push(entry);
        }
    }
    out
}

fn parse_one(
    i: usize,
    w: &RawWebhook,
    p: &mut Problems<'_>,
    cx: &Context<'_>,
) -> Option<WebhookSettings> {
    let key = |field: &str| format!("webhook[{i}].{field}");
    let url = match w.url.as_deref().map(str::trim) {
        None => {
            p.push(key("url"), "required key is missing");
            None
        }
        Some(u) => parse_webhook_url(u).map_err(|e| p.push(key("url"), e)).ok(),
    };
    let secret_file = match w.secret_file.as_deref().map(str::trim) {
        None => {
            p.push(key("secret_file"), "required key is missing");
            None
        }
        Some("") => {
            p.push(key("secret_file"), "must not be empty");
            None
        }
        Some(s) => Some(cx.resolve(s)),
    };
    let ca_file = match w.ca_file.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(s) => Some(cx.resolve(s)),
    };
    let mut events = Vec::new();
    let mut events_ok = true;
    for name in w
        .events
        .clone()
        .unwrap_or_else(|| WEBHOOK_EVENTS.iter().map(|e| e.to_string()).collect())
    {
        let name = name.trim().to_ascii_lowercase();
        if !WEBHOOK_EVENTS.contains(&name.as_str()) {
            p.push(
                key("events"),
                format!(
                    "{name:?} is not an event; known: {}",
                    WEBHOOK_EVENTS.join(", ")
                ),
            );
            events_ok = false;
        } else if !events.contains(&name) {
            events.push(name);
        }
    }
    if events_ok && events.is_empty() {
        p.push(key("events"), "lists no event: remove the webhook instead");
        events_ok = false;
    }
    let keys: Vec<String> = w.keys.iter().map(|k| k.trim().to_string()).collect();
    if keys.iter().any(String::is_empty) {
        p.push(key("keys"), "an empty name");
    }
    let max_backlog = positive(p, &key("max_backlog"), w.max_backlog, 100_000_000);
    let max_age = positive_duration(p, &key("max_age"), &w.max_age);
    let timeout = positive_duration(p, &key("timeout"), &w.timeout);
    let retry_min = positive_duration(p, &key("retry_min"), &w.retry_min);
    let retry_max = positive_duration(p, &key("retry_max"), &w.retry_max);
    if let (Some(min), Some(max)) = (retry_min, retry_max)
        && min > max
    {
        p.push(key("retry_max"), "must not be shorter than retry_min");
    }
    let name = match (w.name.as_deref().map(str::trim), &url) {
        (Some(n), _) => check_name(n)
            .map(|()| n.to_string())
            .map_err(|e| p.push(key("name"), e))
            .ok(),
        (None, Some(url)) => Some(default_name(url)),
        (None, None) => None,
    };
    if !events_ok {
        return None;
    }
    Some(WebhookSettings {
        name: name?,
        url: url?,
        secret_file: secret_file?,
        ca_file,
        events,
        keys,
        max_backlog: max_backlog? as usize,
        max_age: max_age?,
        timeout: timeout?,
        retry_min: retry_min?,
        retry_max: retry_max?,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::super::testing::{MINIMAL, assert_error, parse, with};
    use super::{WEBHOOK_EVENTS, WebhookUrl};

    #[test]
    fn defaults_and_every_key() {
        let s = parse(&with(
            "[[webhook]]\nurl = \"https://Hooks.Example.test/in?x=1\"\nsecret_file = \"wh.secret\"",
        ))
        .unwrap();
        let w = &s.webhook[0];
        assert_eq!(w.name, "hooks.example.test");
        assert_eq!(
            w.url,
            WebhookUrl {
                https: true,
                host: "hooks.example.test".into(),
                port: 443,
                path: "/in?x=1".into()
            }
        );
        assert_eq!(w.secret_file, Path::new("/etc/submitd/wh.secret"));
        assert_eq!(w.events, WEBHOOK_EVENTS.map(String::from).to_vec());
        assert!(w.keys.is_empty());
        assert_eq!(w.max_backlog, 100_000);
        assert_eq!(w.max_age, Duration::from_secs(86_400));
        assert_eq!(w.timeout, Duration::from_secs(10));
        assert_eq!(w.retry_min, Duration::from_secs(5));
        assert_eq!(w.retry_max, Duration::from_secs(600));
        assert_eq!(w.ca_file, None);

        let s = parse(&with(
            "[[webhook]]\nurl = \"http://127.0.0.1:8080\"\nsecret_file = \"/s\"\n\
             events = [\"bounced\", \"delivered\"]\nkeys = [\"app1\"]\nmax_backlog = 5\n\
             max_age = \"1h\"\ntimeout = \"2s\"\nretry_min = \"200ms\"\nretry_max = \"1m\"\n\
             ca_file = \"ca.pem\"\n\
             [[webhook]]\nurl = \"http://[::1]/x\"\nsecret_file = \"/s\"\nname = \"second\"",
        ))
        .unwrap();
        let w = &s.webhook[0];
        assert_eq!(w.name, "127.0.0.1-8080");
        assert_eq!(w.url.path, "/");
        assert_eq!(w.events, vec!["bounced", "delivered"]);
        assert_eq!(w.keys, vec!["app1"]);
        assert_eq!(w.max_backlog, 5);
        assert_eq!(w.retry_min, Duration::from_millis(200));
        assert_eq!(w.ca_file.as_deref(), Some(Path::new("/etc/submitd/ca.pem")));
        assert_eq!(s.webhook[1].name, "second");
        assert_eq!(s.webhook[1].url.host, "::1");
        assert_eq!(s.webhook[1].url.to_string(), "http://[::1]:80/x");
        assert!(parse(MINIMAL).unwrap().webhook.is_empty());
    }

    #[test]
    fn bad_entries() {
        let one = |lines: &str| with(&format!("[[webhook]]\n{lines}"));
        assert_error(&one("secret_file = \"s\""), "webhook[0].url", "required");
        assert_error(
            &one("url = \"http://a.test/\""),
            "webhook[0].secret_file",
            "required",
        );
        assert_error(
            &one("url = \"ftp://a.test/\"\nsecret_file = \"s\""),
            "webhook[0].url",
            "http:// or https://",
        );
        assert_error(
            &one("url = \"https://u:p@a.test/\"\nsecret_file = \"s\""),
            "webhook[0].url",
            "user info",
        );
        assert_error(
            &one("url = \"http://a.test/\"\nsecret_file = \"s\"\nevents = [\"opened\"]"),
            "webhook[0].events",
            "not an event",
        );
        assert_error(
            &one("url = \"http://a.test/\"\nsecret_file = \"s\"\nevents = []"),
            "webhook[0].events",
            "no event",
        );
        assert_error(
            &one("url = \"http://a.test/\"\nsecret_file = \"s\"\nmax_backlog = 0"),
            "webhook[0].max_backlog",
            "positive",
        );
        assert_error(
            &one("url = \"http://a.test/\"\nsecret_file = \"s\"\nmax_age = \"soon\""),
            "webhook[0].max_age",
            "not a duration",
        );
        assert_error(
            &one("url = \"http://a.test/\"\nsecret_file = \"s\"\nname = \"../x\""),
            "webhook[0].name",
            "letters",
        );
        assert_error(
            &one("url = \"http://a.test/\"\nsecret_file = \"s\"\ncolour = 1"),
            "webhook[0].colour",
            "unknown key",
        );
        assert_error(
            &with(
                "[[webhook]]\nurl = \"http://a.test/1\"\nsecret_file = \"s\"\n\
                 [[webhook]]\nurl = \"http://a.test/2\"\nsecret_file = \"s\"",
            ),
            "webhook[1].name",
            "already the name of webhook[0]",
        );
    }
}
