//! The TOML config (DESIGN.md "Config"): serde structs with `deny_unknown_fields`, defaults,
//! and validation into [`Settings`]. Relative paths resolve against the config file's directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Validated settings, ready to run with. Paths are absolute or relative to the working
/// directory (already resolved against the config file's directory).
#[derive(Debug, Clone)]
pub struct Settings {
    /// The config file these settings came from.
    pub config_path: PathBuf,
    /// Greeting, Received, Message-ID domain, HELO on delivery.
    pub hostname: String,
    pub listen: Listen,
    pub tls: TlsFiles,
    pub auth: AuthSettings,
    pub limits: Limits,
    pub queue: QueueSettings,
    pub relay: RelaySettings,
    pub submission: SubmissionSettings,
    /// `[[dkim]]`: signing keys, one entry per domain and selector (empty: no signing).
    pub dkim: Vec<crate::dkim::DkimConfig>,
    pub dev: DevSettings,
    pub metrics: MetricsSettings,
    pub log: LogSettings,
}

/// `[listen]`.
#[derive(Debug, Clone)]
pub struct Listen {
    /// Plaintext submission with STARTTLS (587).
    pub submission: Vec<SocketAddr>,
    /// Implicit TLS submission (465, RFC 8314).
    pub submissions: Vec<SocketAddr>,
    /// Expect a PROXY v1/v2 header first on every connection (`listen.proxy_protocol`).
    pub proxy_protocol: bool,
    /// Peers allowed to send the header; any other peer is closed at once
    /// (`listen.trusted_proxies`, IPs or CIDR blocks; required with `proxy_protocol`).
    pub trusted_proxies: Vec<crate::proxy::Cidr>,
}

/// `[tls]`.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `[auth]`.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    pub users: PathBuf,
    /// How long a verified login is remembered (`cache_ttl`, default 10m); zero = no cache.
    pub cache_ttl: Duration,
}

/// `[limits]`.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_message_size: u64,
    pub max_recipients: usize,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// IPv6 clients are counted per network of this prefix length by `max_connections_per_ip`
    /// and the login throttle (`limits.ipv6_prefix`, default 64, 32..=128).
    pub ipv6_prefix: u8,
    pub command_timeout: Duration,
    pub max_auth_failures: u32,
    /// The sliding window failed AUTHs are counted in (`auth_window`, default 15m).
    pub auth_window: Duration,
    /// Failed AUTHs per client address (IPv6: per /64) in the window; 0 = off (default 20).
    pub auth_failures_per_ip: u32,
    /// Failed AUTHs per login in the window; 0 = off (default 10).
    pub auth_failures_per_login: u32,
    /// argon2 verifications at once; `None` (`auth_parallel = 0`, the default) = CPU cores.
    pub auth_parallel: Option<usize>,
    /// AUTHs that may wait for a verification slot; more get 454 (default 64).
    pub auth_queue: usize,
    /// Per-user sending limits (`user_*`) and `suspend_recipients_per_hour`; 0 = unlimited.
    pub user_limits: crate::auth::quota::SendLimits,
    /// Wait this long before the greeting on 587 (after the handshake on 465); a client that
    /// talks before the greeting gets `554 5.5.0` and is closed (`limits.greet_pause`, default 0).
    pub greet_pause: Duration,
    /// The longest a whole session may last, whatever the client does
    /// (`limits.max_session_time`, default 1h).
    pub max_session_time: Duration,
    /// Protocol errors (5xx replies to bad or out-of-order commands) before `421 4.7.0` and
    /// close (`limits.max_bad_commands`, default 20, like Postfix's `smtpd_hard_error_limit`).
    pub max_bad_commands: u32,
    /// The largest header section (up to the first empty line) of a message
    /// (`limits.max_header_size`, default 262144).
    pub max_header_size: u64,
    /// More `Received:` fields than this and the message is refused with
    /// `554 5.4.6 Too many hops` (`limits.max_hops`, default 50, Postfix's `hopcount_limit`).
    pub max_hops: usize,
}

/// `[queue]`.
#[derive(Debug, Clone)]
pub struct QueueSettings {
    pub dir: PathBuf,
    pub retry: Vec<Duration>,
    pub max_age: Duration,
    /// How many deliveries run at once (`queue.concurrency`, default 16).
    pub concurrency: usize,
}

/// `[relay]` (consumed by the delivery stage).
#[derive(Debug, Clone)]
pub struct RelaySettings {
    pub mode: RelayMode,
    pub port: u16,
    pub tls: RelayTls,
    pub timeout: Duration,
    pub resolver: Vec<SocketAddr>,
    pub smarthost: String,
    pub smarthost_tls: SmarthostTls,
    pub smarthost_user: String,
    pub smarthost_password: String,
    pub ca_file: Option<PathBuf>,
    /// Where `relay.mode = "capture"` writes each message (`ID.eml`) and its envelope and
    /// results (`ID.json`), resolved against the config file's directory; `None` otherwise.
    pub capture_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayMode {
    Mx,
    Smarthost,
    /// Development: nothing leaves the machine; every message is written to
    /// `relay.capture_dir` and counts as delivered.
    Capture,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayTls {
    Opportunistic,
    Required,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmarthostTls {
    Starttls,
    Implicit,
    None,
}

/// `[submission]`: what submitd adds to messages.
#[derive(Debug, Clone, Default)]
pub struct SubmissionSettings {
    /// Put the client's IP address in the Received header (default false, RFC 6409 privacy).
    pub received_client_ip: bool,
}

/// `[metrics]`: the Prometheus scrape endpoint.
#[derive(Debug, Clone, Default)]
pub struct MetricsSettings {
    /// Where to serve `GET /metrics` over plain HTTP; `None` (`listen = ""`) turns it off.
    pub listen: Option<SocketAddr>,
}

/// `[log]`: how the server writes its log (to stderr).
#[derive(Debug, Clone, Default)]
pub struct LogSettings {
    pub format: LogFormat,
}

/// `log.format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// One human-readable line per event, `key=value` fields.
    #[default]
    Text,
    /// One JSON object per line; the event's fields are top-level keys.
    Json,
}

/// `[dev]`: development conveniences, never on in `config/submitd.toml`.
#[derive(Debug, Clone, Default)]
pub struct DevSettings {
    /// Create a self-signed cert and a dev user on first run when they are absent.
    pub bootstrap: bool,
    /// The login of the dev user created by `bootstrap`.
    pub user: String,
}

/// One problem in a config file: which file, which key, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub key: String,
    pub message: String,
}

/// Every problem found in one pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}: {}: {}", e.file.display(), e.key, e.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Collects [`ConfigError`]s for one file.
struct Problems<'a> {
    file: &'a Path,
    errors: Vec<ConfigError>,
}

impl Problems<'_> {
    fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            key: key.into(),
            message: message.into(),
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Raw, as written: serde structs with the documented defaults. Values that need more than a
// type check (durations, addresses, enums, positive numbers) stay strings / i64 here and are
// validated below, so that one bad value does not hide the others.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    hostname: Option<String>,
    #[serde(default)]
    listen: RawListen,
    #[serde(default)]
    tls: RawTls,
    #[serde(default)]
    auth: RawAuth,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    queue: RawQueue,
    #[serde(default)]
    relay: RawRelay,
    #[serde(default)]
    submission: RawSubmission,
    #[serde(default)]
    dkim: Vec<RawDkim>,
    #[serde(default)]
    dev: RawDev,
    #[serde(default)]
    metrics: RawMetrics,
    #[serde(default)]
    log: RawLog,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListen {
    #[serde(default = "default_submission")]
    submission: Vec<String>,
    #[serde(default = "default_submissions")]
    submissions: Vec<String>,
    #[serde(default)]
    proxy_protocol: bool,
    #[serde(default)]
    trusted_proxies: Vec<String>,
}

fn default_submission() -> Vec<String> {
    vec!["0.0.0.0:587".into()]
}
fn default_submissions() -> Vec<String> {
    vec!["0.0.0.0:465".into()]
}

impl Default for RawListen {
    fn default() -> Self {
        RawListen {
            submission: default_submission(),
            submissions: default_submissions(),
            proxy_protocol: false,
            trusted_proxies: Vec::new(),
        }
    }
}

/// `tls.cert` and `tls.key` are required: no default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: Option<String>,
    key: Option<String>,
}

/// `auth.users` is required: no default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    users: Option<String>,
    /// Default [`DEFAULT_CACHE_TTL`].
    cache_ttl: Option<String>,
}

/// `[auth] cache_ttl` when not given.
const DEFAULT_CACHE_TTL: &str = "10m";
/// Longer than this and a stolen session of memory would hold HMACs for days: refused.
const MAX_CACHE_TTL: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    #[serde(default = "default_max_message_size")]
    max_message_size: i64,
    #[serde(default = "default_max_recipients")]
    max_recipients: i64,
    #[serde(default = "default_max_connections")]
    max_connections: i64,
    #[serde(default = "default_max_connections_per_ip")]
    max_connections_per_ip: i64,
    #[serde(default = "default_ipv6_prefix")]
    ipv6_prefix: i64,
    #[serde(default = "default_command_timeout")]
    command_timeout: String,
    #[serde(default = "default_max_auth_failures")]
    max_auth_failures: i64,
    #[serde(default = "default_auth_window")]
    auth_window: String,
    #[serde(default = "default_auth_failures_per_ip")]
    auth_failures_per_ip: i64,
    #[serde(default = "default_auth_failures_per_login")]
    auth_failures_per_login: i64,
    #[serde(default)]
    auth_parallel: i64,
    #[serde(default = "default_auth_queue")]
    auth_queue: i64,
    #[serde(default = "default_user_messages_per_hour")]
    user_messages_per_hour: i64,
    #[serde(default = "default_user_messages_per_day")]
    user_messages_per_day: i64,
    #[serde(default = "default_user_recipients_per_hour")]
    user_recipients_per_hour: i64,
    #[serde(default = "default_user_recipients_per_day")]
    user_recipients_per_day: i64,
    #[serde(default)]
    suspend_recipients_per_hour: i64,
    #[serde(default = "default_greet_pause")]
    greet_pause: String,
    #[serde(default = "default_max_session_time")]
    max_session_time: String,
    #[serde(default = "default_max_bad_commands")]
    max_bad_commands: i64,
    #[serde(default = "default_max_header_size")]
    max_header_size: i64,
    #[serde(default = "default_max_hops")]
    max_hops: i64,
}

fn default_max_message_size() -> i64 {
    26_214_400
}
fn default_max_recipients() -> i64 {
    100
}
fn default_max_connections() -> i64 {
    1024
}
fn default_max_connections_per_ip() -> i64 {
    32
}
fn default_ipv6_prefix() -> i64 {
    i64::from(crate::ipkey::DEFAULT_IPV6_PREFIX)
}
fn default_command_timeout() -> String {
    "5m".into()
}
fn default_max_auth_failures() -> i64 {
    3
}
fn default_auth_window() -> String {
    "15m".into()
}
fn default_auth_failures_per_ip() -> i64 {
    20
}
fn default_auth_failures_per_login() -> i64 {
    10
}
fn default_auth_queue() -> i64 {
    64
}
fn default_user_messages_per_hour() -> i64 {
    crate::auth::quota::SendLimits::DEFAULT.messages_per_hour as i64
}
fn default_user_messages_per_day() -> i64 {
    crate::auth::quota::SendLimits::DEFAULT.messages_per_day as i64
}
fn default_user_recipients_per_hour() -> i64 {
    crate::auth::quota::SendLimits::DEFAULT.recipients_per_hour as i64
}
fn default_user_recipients_per_day() -> i64 {
    crate::auth::quota::SendLimits::DEFAULT.recipients_per_day as i64
}
fn default_greet_pause() -> String {
    "0s".into()
}
fn default_max_session_time() -> String {
    "1h".into()
}
fn default_max_bad_commands() -> i64 {
    20
}
fn default_max_header_size() -> i64 {
    262_144
}
fn default_max_hops() -> i64 {
    50
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            max_message_size: default_max_message_size(),
            max_recipients: default_max_recipients(),
            max_connections: default_max_connections(),
            max_connections_per_ip: default_max_connections_per_ip(),
            ipv6_prefix: default_ipv6_prefix(),
            command_timeout: default_command_timeout(),
            max_auth_failures: default_max_auth_failures(),
            auth_window: default_auth_window(),
            auth_failures_per_ip: default_auth_failures_per_ip(),
            auth_failures_per_login: default_auth_failures_per_login(),
            auth_parallel: 0,
            auth_queue: default_auth_queue(),
            user_messages_per_hour: default_user_messages_per_hour(),
            user_messages_per_day: default_user_messages_per_day(),
            user_recipients_per_hour: default_user_recipients_per_hour(),
            user_recipients_per_day: default_user_recipients_per_day(),
            suspend_recipients_per_hour: 0,
            greet_pause: default_greet_pause(),
            max_session_time: default_max_session_time(),
            max_bad_commands: default_max_bad_commands(),
            max_header_size: default_max_header_size(),
            max_hops: default_max_hops(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQueue {
    #[serde(default = "default_queue_dir")]
    dir: String,
    #[serde(default = "default_retry")]
    retry: Vec<String>,
    #[serde(default = "default_max_age")]
    max_age: String,
    #[serde(default = "default_concurrency")]
    concurrency: u64,
}

fn default_concurrency() -> u64 {
    16
}

fn default_queue_dir() -> String {
    "var/queue".into()
}
fn default_retry() -> Vec<String> {
    ["1m", "5m", "15m", "30m", "1h", "2h", "4h"]
        .map(String::from)
        .to_vec()
}
fn default_max_age() -> String {
    "5d".into()
}

impl Default for RawQueue {
    fn default() -> Self {
        RawQueue {
            dir: default_queue_dir(),
            retry: default_retry(),
            max_age: default_max_age(),
            concurrency: default_concurrency(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRelay {
    #[serde(default = "default_relay_mode")]
    mode: String,
    #[serde(default = "default_relay_port")]
    port: i64,
    #[serde(default = "default_relay_tls")]
    tls: String,
    #[serde(default = "default_relay_timeout")]
    timeout: String,
    #[serde(default)]
    resolver: Vec<String>,
    #[serde(default)]
    smarthost: String,
    #[serde(default = "default_smarthost_tls")]
    smarthost_tls: String,
    #[serde(default)]
    smarthost_user: String,
    #[serde(default)]
    smarthost_password: String,
    #[serde(default)]
    ca_file: String,
    #[serde(default)]
    capture_dir: String,
}

fn default_relay_mode() -> String {
    "mx".into()
}
fn default_relay_port() -> i64 {
    25
}
fn default_relay_tls() -> String {
    "opportunistic".into()
}
fn default_relay_timeout() -> String {
    "5m".into()
}
fn default_smarthost_tls() -> String {
    "starttls".into()
}

impl Default for RawRelay {
    fn default() -> Self {
        RawRelay {
            mode: default_relay_mode(),
            port: default_relay_port(),
            tls: default_relay_tls(),
            timeout: default_relay_timeout(),
            resolver: Vec::new(),
            smarthost: String::new(),
            smarthost_tls: default_smarthost_tls(),
            smarthost_user: String::new(),
            smarthost_password: String::new(),
            ca_file: String::new(),
            capture_dir: String::new(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSubmission {
    #[serde(default)]
    received_client_ip: bool,
}

/// One `[[dkim]]` entry: `domain`, `selector` and `key` are required.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDkim {
    domain: Option<String>,
    selector: Option<String>,
    key: Option<String>,
    /// Default [`crate::dkim::DEFAULT_HEADERS`].
    headers: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDev {
    #[serde(default)]
    bootstrap: bool,
    #[serde(default = "default_dev_user")]
    user: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    #[serde(default)]
    listen: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    #[serde(default = "default_log_format")]
    format: String,
}

fn default_log_format() -> String {
    "text".into()
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog {
            format: default_log_format(),
        }
    }
}

fn default_dev_user() -> String {
    "dev@localhost".into()
}

impl Default for RawDev {
    fn default() -> Self {
        RawDev {
            bootstrap: false,
            user: default_dev_user(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing: every syntax error, every unknown key and every type error, each with its dotted key.
// ---------------------------------------------------------------------------------------------

/// The dotted key whose name or value covers byte `pos` of `text`, found through toml's
/// spanned document (serde errors carry a span, not a key).
fn key_at(text: &str, pos: usize) -> Option<Vec<String>> {
    fn walk(table: &toml::de::DeTable<'_>, pos: usize, path: &mut Vec<String>) -> bool {
        for (k, v) in table {
            if let toml::de::DeValue::Table(inner) = v.get_ref() {
                path.push(k.get_ref().to_string());
                if walk(inner, pos, path) {
                    return true;
                }
                path.pop();
            }
            // Arrays of tables (`[[dkim]]`): the element is named `dkim[N]`.
            if let toml::de::DeValue::Array(items) = v.get_ref() {
                for (i, item) in items.iter().enumerate() {
                    if let toml::de::DeValue::Table(inner) = item.get_ref() {
                        path.push(format!("{}[{i}]", k.get_ref()));
                        if walk(inner, pos, path) {
                            return true;
                        }
                        path.pop();
                    }
                }
            }
            if k.span().contains(&pos) || v.span().contains(&pos) {
                path.push(k.get_ref().to_string());
                return true;
            }
        }
        false
    }
    let (doc, _) = toml::de::DeTable::parse_recoverable(text);
    let mut path = Vec::new();
    walk(doc.get_ref(), pos, &mut path).then_some(path)
}

/// Line and column (1-based) of byte `pos`, for syntax errors without a key.
fn line_col(text: &str, pos: usize) -> (usize, usize) {
    let before = &text[..pos.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// serde's messages, in the vocabulary of a config file.
fn serde_message(message: &str) -> String {
    let message = message.trim();
    if message.starts_with("unknown field") {
        "unknown key".to_string()
    } else {
        message.to_string()
    }
}

fn remove_key(table: &mut toml::Table, path: &[String]) -> bool {
    match path {
        [] => false,
        [last] => table.remove(last).is_some(),
        [first, rest @ ..] => {
            // `name[N]`: element N of an array of tables.
            let element = first
                .strip_suffix(']')
                .and_then(|f| f.split_once('['))
                .and_then(|(name, i)| Some((name, i.parse::<usize>().ok()?)));
            let inner = match element {
                Some((name, i)) => match table.get_mut(name) {
                    Some(toml::Value::Array(items)) => items.get_mut(i),
                    _ => None,
                },
                None => table.get_mut(first),
            };
            match inner {
                Some(toml::Value::Table(inner)) => remove_key(inner, rest),
                _ => false,
            }
        }
    }
}

/// Parse `text` into the raw structs. Returns the raw config (when the syntax is valid) and the
/// dotted keys that had a type error or were unknown, so that validation does not report them
/// a second time as missing.
fn parse_raw(text: &str, problems: &mut Problems<'_>) -> Option<(RawConfig, Vec<String>)> {
    let (_, syntax) = toml::de::DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        for e in syntax {
            let pos = e.span().map_or(0, |s| s.start);
            let (line, col) = line_col(text, pos);
            let key = key_at(text, pos).map_or_else(|| "-".to_string(), |p| p.join("."));
            problems.push(
                key,
                format!(
                    "TOML syntax error at line {line}, column {col}: {}",
                    e.message().trim()
                ),
            );
        }
        return None;
    }
    // serde stops at the first error: record it, drop the offending key and try again, so that
    // every unknown key and every mistyped value is reported in one run.
    let mut doc: toml::Table = toml::from_str(text).ok()?;
    let mut current = text.to_string();
    let mut bad = Vec::new();
    loop {
        let err = match toml::from_str::<RawConfig>(&current) {
            Ok(raw) => return Some((raw, bad)),
            Err(e) => e,
        };
        let path = err.span().and_then(|s| key_at(&current, s.start));
        let message = serde_message(err.message());
        match path {
            Some(path) if remove_key(&mut doc, &path) => {
                let key = path.join(".");
                let message = if message.starts_with("invalid type: map, expected a sequence") {
                    format!("must be an array of tables: write [[{key}]], one per entry")
                } else {
                    message
                };
                problems.push(key.clone(), message);
                bad.push(key);
                current = toml::to_string(&doc).ok()?;
            }
            other => {
                problems.push(
                    other.map_or_else(|| "-".to_string(), |p| p.join(".")),
                    message,
                );
                return None;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Validation.
// ---------------------------------------------------------------------------------------------

/// Whether `name` is a valid domain name for `hostname` (RFC 1035 labels: letters, digits,
/// hyphens; 1-63 octets each, no leading or trailing hyphen; at most 253 octets). A single label
/// (`localhost`) is allowed; an IP address is not.
pub fn check_hostname(name: &str) -> Result<(), String> {
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if trimmed.is_empty() {
        return Err("must not be empty".into());
    }
    if trimmed.parse::<std::net::IpAddr>().is_ok() {
        return Err(format!(
            "{name:?} is an IP address; a domain name is required"
        ));
    }
    if trimmed.len() > 253 {
        return Err(format!("{name:?} is longer than 253 characters"));
    }
    for label in trimmed.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!(
                "{name:?} is not a valid domain name (bad label {label:?})"
            ));
        }
    }
    if trimmed
        .rsplit('.')
        .next()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!(
            "{name:?} is not a valid domain name (numeric top-level label)"
        ));
    }
    Ok(())
}

fn duration(problems: &mut Problems<'_>, key: &str, value: &str) -> Option<Duration> {
    match humantime::parse_duration(value.trim()) {
        Ok(d) => Some(d),
        Err(e) => {
            problems.push(
                key,
                format!(
                    "{value:?} is not a duration ({e}); write e.g. \"30s\", \"5m\", \"1h\", \"5d\""
                ),
            );
            None
        }
    }
}

/// A duration of at least one second (timeouts: anything shorter cuts off working clients).
fn at_least_1s(problems: &mut Problems<'_>, key: &str, value: &str) -> Option<Duration> {
    let d = duration(problems, key, value)?;
    if d < Duration::from_secs(1) {
        problems.push(key, format!("{value:?} is too short: at least 1s"));
        return None;
    }
    Some(d)
}

fn positive(problems: &mut Problems<'_>, key: &str, value: i64, max: u64) -> Option<u64> {
    if value <= 0 {
        problems.push(key, format!("must be positive, got {value}"));
        None
    } else if value as u64 > max {
        problems.push(key, format!("must be at most {max}, got {value}"));
        None
    } else {
        Some(value as u64)
    }
}

/// A count where 0 has a meaning (off, unlimited, automatic).
fn non_negative(problems: &mut Problems<'_>, key: &str, value: i64, max: u64) -> Option<u64> {
    if value < 0 {
        problems.push(key, format!("must be 0 or more, got {value}"));
        None
    } else if value as u64 > max {
        problems.push(key, format!("must be at most {max}, got {value}"));
        None
    } else {
        Some(value as u64)
    }
}

fn addresses(problems: &mut Problems<'_>, key: &str, values: &[String]) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for v in values {
        match v.trim().parse::<SocketAddr>() {
            Ok(a) => out.push(a),
            Err(_) => problems.push(
                key,
                format!("{v:?} is not an address:port (e.g. \"0.0.0.0:587\", \"[::]:587\")"),
            ),
        }
    }
    out
}

fn required<'a>(
    problems: &mut Problems<'_>,
    bad: &[String],
    key: &str,
    value: &'a Option<String>,
) -> Option<&'a str> {
    match value.as_deref() {
        Some(v) if !v.trim().is_empty() => Some(v),
        Some(_) => {
            problems.push(key, "must not be empty");
            None
        }
        None if bad.iter().any(|b| b == key) => None,
        None => {
            problems.push(key, "required key is missing");
            None
        }
    }
}

fn one_of<T: Copy>(
    problems: &mut Problems<'_>,
    key: &str,
    value: &str,
    allowed: &[(&str, T)],
) -> Option<T> {
    let found = allowed
        .iter()
        .find(|(name, _)| *name == value)
        .map(|(_, v)| *v);
    if found.is_none() {
        let names: Vec<String> = allowed.iter().map(|(n, _)| format!("\"{n}\"")).collect();
        problems.push(key, format!("{value:?} is not one of {}", names.join(", ")));
    }
    found
}

/// `host:port` with a non-empty host (domain, IPv4 or `[IPv6]`) and a port 1-65535.
fn check_host_port(value: &str) -> Result<(), String> {
    let (host, port) = value
        .rsplit_once(':')
        .ok_or_else(|| format!("{value:?} must be \"host:port\""))?;
    let port_ok = port.parse::<u16>().is_ok_and(|p| p > 0);
    if !port_ok {
        return Err(format!("{value:?}: port must be 1-65535"));
    }
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6
            .parse::<std::net::Ipv6Addr>()
            .map(|_| ())
            .map_err(|_| format!("{value:?}: bad IPv6 address"));
    }
    if host.parse::<std::net::Ipv4Addr>().is_ok() {
        return Ok(());
    }
    check_hostname(host).map_err(|e| format!("{value:?} must be \"host:port\": {e}"))
}

/// Resolve a path from the config file against the config file's directory.
fn resolve(base: &Path, value: &str) -> PathBuf {
    let p = Path::new(value);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

impl Settings {
    /// Parse and validate config text; `path` names the file in errors and anchors relative paths.
    pub fn from_toml(text: &str, path: &Path) -> Result<Settings, ConfigErrors> {
        let mut problems = Problems {
            file: path,
            errors: Vec::new(),
        };
        let Some((raw, bad)) = parse_raw(text, &mut problems) else {
            return Err(ConfigErrors(problems.errors));
        };
        let p = &mut problems;
        let base = path.parent().unwrap_or(Path::new(""));

        let hostname = required(p, &bad, "hostname", &raw.hostname).map(|h| {
            if let Err(e) = check_hostname(h) {
                p.push("hostname", e);
            }
            h.to_string()
        });

        let listen = Listen {
            submission: addresses(p, "listen.submission", &raw.listen.submission),
            submissions: addresses(p, "listen.submissions", &raw.listen.submissions),
            proxy_protocol: raw.listen.proxy_protocol,
            trusted_proxies: raw
                .listen
                .trusted_proxies
                .iter()
                .filter_map(|t| {
                    t.trim()
                        .parse()
                        .map_err(|e: String| p.push("listen.trusted_proxies", e))
                        .ok()
                })
                .collect(),
        };
        if raw.listen.proxy_protocol && raw.listen.trusted_proxies.is_empty() {
            p.push(
                "listen.trusted_proxies",
                "must list the proxies' addresses (IPs or CIDR blocks) when listen.proxy_protocol = true",
            );
        }
        if raw.listen.submission.is_empty() && raw.listen.submissions.is_empty() {
            p.push(
                "listen",
                "no listen address: set listen.submission and/or listen.submissions",
            );
        }

        let cert = required(p, &bad, "tls.cert", &raw.tls.cert).map(|v| resolve(base, v));
        let key = required(p, &bad, "tls.key", &raw.tls.key).map(|v| resolve(base, v));
        let users = required(p, &bad, "auth.users", &raw.auth.users).map(|v| resolve(base, v));
        let cache_ttl_text = raw.auth.cache_ttl.as_deref().unwrap_or(DEFAULT_CACHE_TTL);
        let cache_ttl = duration(p, "auth.cache_ttl", cache_ttl_text).and_then(|d| {
            if d > MAX_CACHE_TTL {
                p.push(
                    "auth.cache_ttl",
                    format!(
                        "{cache_ttl_text:?} is too long: at most 24h (\"0s\" turns the cache off)"
                    ),
                );
                return None;
            }
            Some(d)
        });

        let l = &raw.limits;
        let max_message_size = positive(p, "limits.max_message_size", l.max_message_size, u64::MAX);
        let max_recipients = positive(
            p,
            "limits.max_recipients",
            l.max_recipients,
            usize::MAX as u64,
        );
        let max_connections = positive(
            p,
            "limits.max_connections",
            l.max_connections,
            usize::MAX as u64,
        );
        let max_connections_per_ip = positive(
            p,
            "limits.max_connections_per_ip",
            l.max_connections_per_ip,
            usize::MAX as u64,
        );
        let ipv6_prefix = {
            let range = crate::ipkey::IPV6_PREFIX_RANGE;
            if range.contains(&l.ipv6_prefix) {
                Some(l.ipv6_prefix as u8)
            } else {
                p.push(
                    "limits.ipv6_prefix",
                    format!(
                        "must be a prefix length from {} to {}, got {}",
                        range.start(),
                        range.end(),
                        l.ipv6_prefix
                    ),
                );
                None
            }
        };
        let command_timeout = at_least_1s(p, "limits.command_timeout", &l.command_timeout);
        let max_auth_failures = positive(
            p,
            "limits.max_auth_failures",
            l.max_auth_failures,
            u32::MAX as u64,
        );
        // A pause longer than a minute would only hold connection slots; Postfix's postscreen
        // waits 6s.
        let greet_pause = duration(p, "limits.greet_pause", &l.greet_pause).filter(|d| {
            let ok = *d <= Duration::from_secs(60);
            if !ok {
                p.push(
                    "limits.greet_pause",
                    format!("{:?} is too long: at most 1m", l.greet_pause),
                );
            }
            ok
        });
        let max_session_time = at_least_1s(p, "limits.max_session_time", &l.max_session_time);
        let max_bad_commands = positive(
            p,
            "limits.max_bad_commands",
            l.max_bad_commands,
            u32::MAX as u64,
        );
        let max_header_size = positive(p, "limits.max_header_size", l.max_header_size, u64::MAX);
        let max_hops = positive(p, "limits.max_hops", l.max_hops, 10_000);

        let auth_window = positive_duration(p, "limits.auth_window", &l.auth_window);
        let mut count = |key: &str, value: i64| {
            non_negative(p, &format!("limits.{key}"), value, u32::MAX as u64).map(|v| v as u32)
        };
        let auth_failures_per_ip = count("auth_failures_per_ip", l.auth_failures_per_ip);
        let auth_failures_per_login = count("auth_failures_per_login", l.auth_failures_per_login);
        let auth_parallel = count("auth_parallel", l.auth_parallel);
        let auth_queue = count("auth_queue", l.auth_queue);
        let user_limits = (|| {
            Some(crate::auth::quota::SendLimits {
                messages_per_hour: count("user_messages_per_hour", l.user_messages_per_hour)?,
                messages_per_day: count("user_messages_per_day", l.user_messages_per_day)?,
                recipients_per_hour: count("user_recipients_per_hour", l.user_recipients_per_hour)?,
                recipients_per_day: count("user_recipients_per_day", l.user_recipients_per_day)?,
                suspend_recipients_per_hour: count(
                    "suspend_recipients_per_hour",
                    l.suspend_recipients_per_hour,
                )?,
            })
        })();

        let q = &raw.queue;
        if q.dir.trim().is_empty() {
            p.push("queue.dir", "must not be empty");
        }
        if q.retry.is_empty() {
            p.push("queue.retry", "must list at least one interval");
        }
        let mut retry = Vec::new();
        for r in &q.retry {
            match duration(p, "queue.retry", r) {
                Some(d) if d.is_zero() => p.push(
                    "queue.retry",
                    format!("{r:?}: intervals must be longer than 0"),
                ),
                Some(d) => retry.push(d),
                None => {}
            }
        }
        let max_age = positive_duration(p, "queue.max_age", &q.max_age);
        if q.concurrency == 0 || q.concurrency > 10_000 {
            p.push("queue.concurrency", "must be between 1 and 10000");
        }

        let r = &raw.relay;
        let mode = one_of(
            p,
            "relay.mode",
            &r.mode,
            &[
                ("mx", RelayMode::Mx),
                ("smarthost", RelayMode::Smarthost),
                ("capture", RelayMode::Capture),
            ],
        );
        let port = positive(p, "relay.port", r.port, u16::MAX as u64);
        let relay_tls = one_of(
            p,
            "relay.tls",
            &r.tls,
            &[
                ("opportunistic", RelayTls::Opportunistic),
                ("required", RelayTls::Required),
                ("none", RelayTls::None),
            ],
        );
        let timeout = positive_duration(p, "relay.timeout", &r.timeout);
        let resolver = addresses(p, "relay.resolver", &r.resolver);
        let smarthost_tls = one_of(
            p,
            "relay.smarthost_tls",
            &r.smarthost_tls,
            &[
                ("starttls", SmarthostTls::Starttls),
                ("implicit", SmarthostTls::Implicit),
                ("none", SmarthostTls::None),
            ],
        );
        if mode == Some(RelayMode::Smarthost) {
            if r.smarthost.trim().is_empty() {
                p.push(
                    "relay.smarthost",
                    "required when relay.mode = \"smarthost\" (\"host:port\")",
                );
            } else if let Err(e) = check_host_port(r.smarthost.trim()) {
                p.push("relay.smarthost", e);
            }
        }
        if r.smarthost_user.is_empty() != r.smarthost_password.is_empty() {
            p.push(
                "relay.smarthost_user",
                "smarthost_user and smarthost_password go together: set both or neither",
            );
        }
        if mode == Some(RelayMode::Smarthost)
            && smarthost_tls == Some(SmarthostTls::None)
            && !r.smarthost_user.is_empty()
        {
            p.push(
                "relay.smarthost_tls",
                "\"none\" with smarthost credentials: credentials are never sent in clear (use \"starttls\" or \"implicit\")",
            );
        }
        let ca_file = (!r.ca_file.trim().is_empty()).then(|| resolve(base, r.ca_file.trim()));
        let capture_dir = match (mode, r.capture_dir.trim()) {
            (Some(RelayMode::Capture), "") => {
                p.push(
                    "relay.capture_dir",
                    "required when relay.mode = \"capture\" (the directory that receives ID.eml and ID.json)",
                );
                None
            }
            (Some(RelayMode::Capture), dir) => Some(resolve(base, dir)),
            // Like `smarthost` in MX mode: kept in the file, unused.
            _ => None,
        };

        let dkim = dkim_entries(p, base, &raw.dkim);

        if raw.dev.user.trim().is_empty() {
            p.push("dev.user", "must not be empty");
        }

        let metrics_listen = match raw.metrics.listen.trim() {
            "" => None,
            v => match v.parse::<SocketAddr>() {
                Ok(a) => Some(a),
                Err(_) => {
                    p.push(
                        "metrics.listen",
                        format!(
                            "{v:?} is not an address:port (e.g. \"127.0.0.1:9587\"); \"\" turns metrics off"
                        ),
                    );
                    None
                }
            },
        };
        let log_format = one_of(
            p,
            "log.format",
            raw.log.format.trim(),
            &[("text", LogFormat::Text), ("json", LogFormat::Json)],
        );

        if !problems.errors.is_empty() {
            return Err(ConfigErrors(problems.errors));
        }
        // Every Option below is Some: a None always pushed an error above.
        let missing = || ConfigErrors(Vec::new());
        Ok(Settings {
            config_path: path.to_path_buf(),
            hostname: hostname.ok_or_else(missing)?,
            listen,
            tls: TlsFiles {
                cert: cert.ok_or_else(missing)?,
                key: key.ok_or_else(missing)?,
            },
            auth: AuthSettings {
                users: users.ok_or_else(missing)?,
                cache_ttl: cache_ttl.ok_or_else(missing)?,
            },
            limits: Limits {
                max_message_size: max_message_size.ok_or_else(missing)?,
                max_recipients: max_recipients.ok_or_else(missing)? as usize,
                max_connections: max_connections.ok_or_else(missing)? as usize,
                max_connections_per_ip: max_connections_per_ip.ok_or_else(missing)? as usize,
                ipv6_prefix: ipv6_prefix.ok_or_else(missing)?,
                command_timeout: command_timeout.ok_or_else(missing)?,
                max_auth_failures: max_auth_failures.ok_or_else(missing)? as u32,
                auth_window: auth_window.ok_or_else(missing)?,
                auth_failures_per_ip: auth_failures_per_ip.ok_or_else(missing)?,
                auth_failures_per_login: auth_failures_per_login.ok_or_else(missing)?,
                auth_parallel: match auth_parallel.ok_or_else(missing)? {
                    0 => None,
                    n => Some(n as usize),
                },
                auth_queue: auth_queue.ok_or_else(missing)? as usize,
                user_limits: user_limits.ok_or_else(missing)?,
                greet_pause: greet_pause.ok_or_else(missing)?,
                max_session_time: max_session_time.ok_or_else(missing)?,
                max_bad_commands: max_bad_commands.ok_or_else(missing)? as u32,
                max_header_size: max_header_size.ok_or_else(missing)?,
                max_hops: max_hops.ok_or_else(missing)? as usize,
            },
            queue: QueueSettings {
                dir: resolve(base, q.dir.trim()),
                retry,
                max_age: max_age.ok_or_else(missing)?,
                concurrency: q.concurrency.clamp(1, 10_000) as usize,
            },
            relay: RelaySettings {
                mode: mode.ok_or_else(missing)?,
                port: port.ok_or_else(missing)? as u16,
                tls: relay_tls.ok_or_else(missing)?,
                timeout: timeout.ok_or_else(missing)?,
                resolver,
                smarthost: r.smarthost.trim().to_string(),
                smarthost_tls: smarthost_tls.ok_or_else(missing)?,
                smarthost_user: r.smarthost_user.clone(),
                smarthost_password: r.smarthost_password.clone(),
                ca_file,
                capture_dir,
            },
            submission: SubmissionSettings {
                received_client_ip: raw.submission.received_client_ip,
            },
            dkim,
            dev: DevSettings {
                bootstrap: raw.dev.bootstrap,
                user: raw.dev.user.trim().to_string(),
            },
            metrics: MetricsSettings {
                listen: metrics_listen,
            },
            log: LogSettings {
                format: log_format.ok_or_else(missing)?,
            },
        })
    }

    /// Read and validate a config file.
    pub fn load(path: &Path) -> Result<Settings, ConfigErrors> {
        match std::fs::read_to_string(path) {
            Ok(text) => Settings::from_toml(&text, path),
            Err(e) => Err(ConfigErrors(vec![ConfigError {
                file: path.to_path_buf(),
                key: "-".into(),
                message: format!("cannot read config file: {e}"),
            }])),
        }
    }

    /// Check the files the config points to: the certificate and key load into a TLS config,
    /// the users file parses (argon2 hashes only), `relay.ca_file` holds certificates, and the
    /// queue directory (or, when it does not exist yet, its parent) is a directory.
    ///
    /// Kept apart from [`Settings::from_toml`] so that `user add` and the dev bootstrap work
    /// before these files exist.
    pub fn check_files(&self) -> Result<(), ConfigErrors> {
        let mut problems = Problems {
            file: &self.config_path,
            errors: Vec::new(),
        };
        let p = &mut problems;

        let certs =
            crate::tls::load_certs(&self.tls.cert).map_err(|e| p.push("tls.cert", e.to_string()));
        let key = crate::tls::load_key(&self.tls.key).map_err(|e| p.push("tls.key", e.to_string()));
        if certs.is_ok() && key.is_ok() {
            // Both load: what is left is whether they belong together.
            if let Err(e) = crate::tls::load_server_config(&self.tls.cert, &self.tls.key) {
                let k = if e.path() == Some(self.tls.cert.display().to_string().as_str()) {
                    "tls.cert"
                } else {
                    "tls.key"
                };
                p.push(k, e.to_string());
            }
        }

        if let Err(e) = crate::auth::users::load(&self.auth.users) {
            p.push("auth.users", e.to_string());
        }

        if let Some(ca) = &self.relay.ca_file
            && let Err(e) = crate::tls::load_certs(ca)
        {
            p.push("relay.ca_file", e.to_string());
        }

        if let Err(errors) = crate::dkim::DkimSigner::load(&self.dkim) {
            for (i, e) in errors.0 {
                p.push(format!("dkim[{i}].key"), e.to_string());
            }
        }

        let dir = &self.queue.dir;
        match std::fs::metadata(dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => p.push("queue.dir", format!("{}: not a directory", dir.display())),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                // Created at startup (mode 0700, missing parents with the default mode): the
                // nearest existing ancestor must be a directory to hold them.
                let mut ancestor = dir.parent();
                while let Some(a) = ancestor.filter(|a| !a.as_os_str().is_empty()) {
                    match std::fs::metadata(a) {
                        Ok(m) if m.is_dir() => break,
                        Ok(_) => {
                            p.push(
                                "queue.dir",
                                format!(
                                    "{}: cannot be created: {} is not a directory",
                                    dir.display(),
                                    a.display()
                                ),
                            );
                            break;
                        }
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                            ) =>
                        {
                            ancestor = a.parent();
                        }
                        Err(e) => {
                            p.push(
                                "queue.dir",
                                format!("{}: {}: {e}", dir.display(), a.display()),
                            );
                            break;
                        }
                    }
                }
            }
            Err(e) => p.push("queue.dir", format!("{}: {e}", dir.display())),
        }
        // The suspension state (a missing file is fine: nobody is suspended). The server would
        // run with a broken one, ignoring it; check-config says so.
        if dir.is_dir()
            && let Err(e) = crate::auth::suspend::load(&crate::auth::suspend::state_path(dir))
        {
            p.push("queue.dir", e.to_string());
        }

        if problems.errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(problems.errors))
        }
    }
}

/// A DKIM selector (RFC 6376 section 3.1): dot-separated labels of letters, digits and hyphens.
pub fn check_selector(selector: &str) -> Result<(), String> {
    let ok = !selector.is_empty()
        && selector.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{selector:?} is not a valid selector (letters, digits, hyphens; dot-separated labels)"
        ))
    }
}

/// Validate the `[[dkim]]` entries (keys are read by [`Settings::check_files`]). Entries are
/// named `dkim[N]`, counting from 0 in file order.
fn dkim_entries(
    p: &mut Problems<'_>,
    base: &Path,
    raw: &[RawDkim],
) -> Vec<crate::dkim::DkimConfig> {
    let mut out: Vec<crate::dkim::DkimConfig> = Vec::new();
    let mut seen: Vec<(String, String, usize)> = Vec::new();
    for (i, d) in raw.iter().enumerate() {
        let key = |field: &str| format!("dkim[{i}].{field}");
        let mut ok = true;
        let mut field = |p: &mut Problems<'_>, name: &str, value: &Option<String>| match value
            .as_deref()
            .map(str::trim)
        {
            Some(v) if !v.is_empty() => Some(v.to_string()),
            Some(_) => {
                p.push(key(name), "must not be empty");
                ok = false;
                None
            }
            None => {
                p.push(key(name), "required key is missing");
                ok = false;
                None
            }
        };
        let domain = field(p, "domain", &d.domain)
            .map(|v| v.strip_suffix('.').unwrap_or(&v).to_ascii_lowercase());
        let selector = field(p, "selector", &d.selector).map(|v| v.to_ascii_lowercase());
        let key_path = field(p, "key", &d.key).map(|v| resolve(base, &v));
        if let Some(domain) = &domain
            && let Err(e) = check_hostname(domain)
        {
            p.push(key("domain"), e);
            ok = false;
        }
        if let Some(selector) = &selector
            && let Err(e) = check_selector(selector)
        {
            p.push(key("selector"), e);
            ok = false;
        }
        if let (Some(domain), Some(selector)) = (&domain, &selector) {
            if let Some((_, _, first)) = seen.iter().find(|(d, s, _)| d == domain && s == selector)
            {
                p.push(
                    key("selector"),
                    format!(
                        "{selector}._domainkey.{domain} is already configured by dkim[{first}]"
                    ),
                );
                ok = false;
            } else {
                seen.push((domain.clone(), selector.clone(), i));
            }
        }
        let headers: Vec<String> = match &d.headers {
            None => crate::dkim::DEFAULT_HEADERS
                .iter()
                .map(|h| h.to_string())
                .collect(),
            Some(list) => list.iter().map(|h| h.trim().to_ascii_lowercase()).collect(),
        };
        // RFC 5322 field names: printable ASCII but the colon.
        if let Some(bad) = headers
            .iter()
            .find(|h| h.is_empty() || !h.bytes().all(|b| (33..=126).contains(&b) && b != b':'))
        {
            p.push(
                key("headers"),
                format!("{bad:?} is not a header field name"),
            );
            ok = false;
        }
        if !headers.iter().any(|h| h == "from") {
            p.push(
                key("headers"),
                "must include \"from\" (RFC 6376 section 5.4: From is always signed)",
            );
            ok = false;
        }
        if headers.iter().any(|h| h == "dkim-signature") {
            p.push(key("headers"), "\"dkim-signature\" cannot be signed");
            ok = false;
        }
        if let (true, Some(domain), Some(selector), Some(key_path)) =
            (ok, domain, selector, key_path)
        {
            out.push(crate::dkim::DkimConfig {
                domain,
                selector,
                key: key_path,
                headers,
            });
        }
    }
    out
}

/// A duration that must be longer than zero.
fn positive_duration(problems: &mut Problems<'_>, key: &str, value: &str) -> Option<Duration> {
    let d = duration(problems, key, value)?;
    if d.is_zero() {
        problems.push(key, format!("{value:?} must be longer than 0"));
        return None;
    }
    Some(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
hostname = "mail.example.test"
[tls]
cert = "certs/cert.pem"
key = "certs/key.pem"
[auth]
users = "users.toml"
"#;

    fn parse(text: &str) -> Result<Settings, ConfigErrors> {
        Settings::from_toml(text, Path::new("/etc/submitd/submitd.toml"))
    }

    /// The (key, message) pairs of a failed parse.
    fn errors(text: &str) -> Vec<(String, String)> {
        let errs = parse(text).expect_err("config should be rejected");
        for e in &errs.0 {
            assert_eq!(e.file, Path::new("/etc/submitd/submitd.toml"));
        }
        errs.0.into_iter().map(|e| (e.key, e.message)).collect()
    }

    fn assert_error(text: &str, key: &str, needle: &str) {
        let errs = errors(text);
        assert!(
            errs.iter().any(|(k, m)| k == key && m.contains(needle)),
            "expected {key}: ...{needle}... in {errs:#?}"
        );
    }

    fn with(extra: &str) -> String {
        format!("{MINIMAL}\n{extra}")
    }

    #[test]
    fn auth_cache_ttl() {
        assert_eq!(
            parse(MINIMAL).unwrap().auth.cache_ttl,
            Duration::from_secs(600)
        );
        let set = |v: &str| format!("{MINIMAL}cache_ttl = \"{v}\"\n");
        assert_eq!(parse(&set("0s")).unwrap().auth.cache_ttl, Duration::ZERO);
        assert_eq!(
            parse(&set("24h")).unwrap().auth.cache_ttl,
            Duration::from_secs(86400)
        );
        assert_error(&set("soon"), "auth.cache_ttl", "not a duration");
        assert_error(&set("25h"), "auth.cache_ttl", "too long: at most 24h");
    }

    #[test]
    fn capture_mode_needs_capture_dir_resolved_against_the_config_dir() {
        assert_error(
            &with("[relay]\nmode = \"capture\""),
            "relay.capture_dir",
            "required when relay.mode = \"capture\"",
        );
        assert_error(
            &with("[relay]\nmode = \"capture\"\ncapture_dir = \"  \""),
            "relay.capture_dir",
            "required",
        );
        let s = parse(&with(
            "[relay]\nmode = \"capture\"\ncapture_dir = \"../var/outbox\"",
        ))
        .unwrap();
        assert_eq!(s.relay.mode, RelayMode::Capture);
        assert_eq!(
            s.relay.capture_dir.as_deref(),
            Some(Path::new("/etc/submitd/../var/outbox"))
        );
        let s = parse(&with("[relay]\ncapture_dir = \"/tmp/outbox\"")).unwrap();
        assert_eq!(s.relay.capture_dir, None, "unused outside capture mode");
        assert_eq!(parse(MINIMAL).unwrap().relay.capture_dir, None);
    }

    #[test]
    fn defaults() {
        let s = parse(MINIMAL).unwrap();
        assert_eq!(s.hostname, "mail.example.test");
        assert_eq!(
            s.listen.submission,
            vec!["0.0.0.0:587".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(
            s.listen.submissions,
            vec!["0.0.0.0:465".parse::<SocketAddr>().unwrap()]
        );
        assert!(!s.listen.proxy_protocol);
        assert_eq!(s.limits.max_message_size, 26_214_400);
        assert_eq!(s.limits.max_recipients, 100);
        assert_eq!(s.limits.max_connections, 1024);
        assert_eq!(s.limits.max_connections_per_ip, 32);
        assert_eq!(s.limits.command_timeout, Duration::from_secs(300));
        assert_eq!(s.limits.max_auth_failures, 3);
        assert_eq!(s.limits.auth_window, Duration::from_secs(900));
        assert_eq!(s.limits.auth_failures_per_ip, 20);
        assert_eq!(s.limits.auth_failures_per_login, 10);
        assert_eq!(s.limits.auth_parallel, None);
        assert_eq!(s.limits.auth_queue, 64);
        assert_eq!(
            s.limits.user_limits,
            crate::auth::quota::SendLimits {
                messages_per_hour: 500,
                messages_per_day: 2000,
                recipients_per_hour: 2000,
                recipients_per_day: 10_000,
                suspend_recipients_per_hour: 0,
            }
        );
        assert_eq!(s.limits.greet_pause, Duration::ZERO);
        assert_eq!(s.limits.max_session_time, Duration::from_secs(3600));
        assert_eq!(s.limits.max_bad_commands, 20);
        assert_eq!(s.limits.max_header_size, 262_144);
        assert_eq!(s.queue.dir, Path::new("/etc/submitd/var/queue"));
        let mins: Vec<u64> = s.queue.retry.iter().map(|d| d.as_secs() / 60).collect();
        assert_eq!(mins, vec![1, 5, 15, 30, 60, 120, 240]);
        assert_eq!(s.queue.max_age, Duration::from_secs(5 * 86400));
        assert_eq!(s.relay.mode, RelayMode::Mx);
        assert_eq!(s.relay.port, 25);
        assert_eq!(s.relay.tls, RelayTls::Opportunistic);
        assert_eq!(s.relay.timeout, Duration::from_secs(300));
        assert!(s.relay.resolver.is_empty());
        assert_eq!(s.relay.smarthost, "");
        assert_eq!(s.relay.smarthost_tls, SmarthostTls::Starttls);
        assert_eq!(s.relay.smarthost_user, "");
        assert_eq!(s.relay.smarthost_password, "");
        assert_eq!(s.relay.ca_file, None);
        assert!(!s.submission.received_client_ip);
        assert!(!s.dev.bootstrap);
        assert_eq!(s.dev.user, "dev@localhost");
        assert_eq!(s.config_path, Path::new("/etc/submitd/submitd.toml"));
    }

    #[test]
    fn every_key_can_be_set() {
        let s = parse(
            r#"
hostname = "mx.example.test"
[listen]
submission = ["127.0.0.1:2587", "[::1]:2587"]
submissions = []
proxy_protocol = true
trusted_proxies = ["10.0.0.0/8", "2001:db8::1"]
[tls]
cert = "/abs/cert.pem"
key = "key.pem"
[auth]
users = "../users.toml"
[limits]
max_message_size = 1000
max_recipients = 5
max_connections = 10
max_connections_per_ip = 2
command_timeout = "1s"
max_auth_failures = 1
greet_pause = "300ms"
max_session_time = "2s"
max_bad_commands = 5
max_header_size = 500
[queue]
dir = "/var/spool/submitd"
retry = ["30s", "1h 30m"]
max_age = "2d"
[relay]
mode = "smarthost"
port = 2525
tls = "required"
timeout = "10s"
resolver = ["127.0.0.1:5353"]
smarthost = "relay.example.test:465"
smarthost_tls = "implicit"
smarthost_user = "u"
smarthost_password = "p"
ca_file = "ca.pem"
[submission]
received_client_ip = true
[dev]
bootstrap = true
user = "me@localhost"
[metrics]
listen = "127.0.0.1:9587"
[log]
format = "json"
"#,
        )
        .unwrap();
        assert_eq!(s.listen.submission.len(), 2);
        assert!(s.listen.submissions.is_empty());
        assert!(s.listen.proxy_protocol);
        assert_eq!(s.listen.trusted_proxies.len(), 2);
        assert!(crate::proxy::is_trusted(
            &s.listen.trusted_proxies,
            "10.9.8.7".parse().unwrap()
        ));
        assert_eq!(s.limits.command_timeout, Duration::from_secs(1));
        assert_eq!(s.limits.greet_pause, Duration::from_millis(300));
        assert_eq!(s.limits.max_session_time, Duration::from_secs(2));
        assert_eq!(s.limits.max_bad_commands, 5);
        assert_eq!(s.limits.max_header_size, 500);
        assert_eq!(
            s.queue.retry,
            vec![Duration::from_secs(30), Duration::from_secs(5400)]
        );
        assert_eq!(s.relay.mode, RelayMode::Smarthost);
        assert_eq!(s.relay.port, 2525);
        assert_eq!(s.relay.tls, RelayTls::Required);
        assert_eq!(
            s.relay.resolver,
            vec!["127.0.0.1:5353".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(s.relay.smarthost_tls, SmarthostTls::Implicit);
        assert!(s.submission.received_client_ip);
        assert!(s.dev.bootstrap);
        assert_eq!(s.dev.user, "me@localhost");
        assert_eq!(
            s.metrics.listen,
            Some("127.0.0.1:9587".parse::<SocketAddr>().unwrap())
        );
        assert_eq!(s.log.format, LogFormat::Json);
    }

    #[test]
    fn metrics_and_log_defaults_and_checks() {
        let s = parse(&with("")).unwrap();
        assert_eq!(s.metrics.listen, None);
        assert_eq!(s.log.format, LogFormat::Text);
        assert_eq!(
            parse(&with("[metrics]\nlisten = \"\""))
                .unwrap()
                .metrics
                .listen,
            None
        );
        assert_error(
            &with("[metrics]\nlisten = \"localhost:9587\""),
            "metrics.listen",
            "address:port",
        );
        assert_error(
            &with("[metrics]\nlisten = \"9587\""),
            "metrics.listen",
            "address:port",
        );
        assert_error(&with("[log]\nformat = \"xml\""), "log.format", "\"json\"");
        assert_error(
            &with("[log]\nlevel = \"debug\""),
            "log.level",
            "unknown key",
        );
    }

    #[test]
    fn relative_paths_resolve_against_config_dir() {
        let s = parse(&with(
            "[queue]\ndir = \"spool\"\n[relay]\nca_file = \"ca/bundle.pem\"",
        ))
        .unwrap();
        assert_eq!(s.tls.cert, Path::new("/etc/submitd/certs/cert.pem"));
        assert_eq!(s.tls.key, Path::new("/etc/submitd/certs/key.pem"));
        assert_eq!(s.auth.users, Path::new("/etc/submitd/users.toml"));
        assert_eq!(s.queue.dir, Path::new("/etc/submitd/spool"));
        assert_eq!(
            s.relay.ca_file.as_deref(),
            Some(Path::new("/etc/submitd/ca/bundle.pem"))
        );

        let s = Settings::from_toml(MINIMAL, Path::new("config/dev.toml")).unwrap();
        assert_eq!(s.tls.cert, Path::new("config/certs/cert.pem"));
        // A bare file name: relative to the working directory, which is its directory.
        let s = Settings::from_toml(MINIMAL, Path::new("submitd.toml")).unwrap();
        assert_eq!(s.auth.users, Path::new("users.toml"));

        let abs = MINIMAL.replace("certs/cert.pem", "/srv/cert.pem");
        assert_eq!(parse(&abs).unwrap().tls.cert, Path::new("/srv/cert.pem"));
    }

    #[test]
    fn required_keys() {
        let errs = errors("");
        let keys: Vec<&str> = errs.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, vec!["hostname", "tls.cert", "tls.key", "auth.users"]);
        assert!(errs.iter().all(|(_, m)| m.contains("required")));
        assert_error(
            &MINIMAL.replace("\"users.toml\"", "\"\""),
            "auth.users",
            "must not be empty",
        );
    }

    #[test]
    fn hostname_must_be_a_domain() {
        for bad in [
            "-bad.example",
            "a..b",
            "exa mple.test",
            "mail_1.example.test",
            "192.0.2.1",
            "x.123",
        ] {
            assert_error(&MINIMAL.replace("mail.example.test", bad), "hostname", "");
        }
        assert!(parse(&MINIMAL.replace("mail.example.test", "localhost")).is_ok());
        assert!(parse(&MINIMAL.replace("mail.example.test", "Mail-1.Example.test.")).is_ok());
        assert!(check_hostname(&"a".repeat(64)).is_err());
    }

    #[test]
    fn unknown_keys_name_the_dotted_key() {
        assert_error(
            &with("[limits]\nmax_conections = 5"),
            "limits.max_conections",
            "unknown key",
        );
        assert_error(
            &format!("colour = \"blue\"\n{MINIMAL}"),
            "colour",
            "unknown key",
        );
        // A key after [auth] belongs to [auth].
        assert_error(&with("colour = \"blue\""), "auth.colour", "unknown key");
        assert_error(&with("[dkim]\nselector = \"s1\""), "dkim", "write [[dkim]]");
    }

    #[test]
    fn type_errors_name_the_key() {
        assert_error(
            &with("[limits]\nmax_recipients = \"many\""),
            "limits.max_recipients",
            "invalid type",
        );
        assert_error(
            &with("[listen]\nsubmission = \"0.0.0.0:587\""),
            "listen.submission",
            "invalid type",
        );
        // A mistyped required key is reported once, as a type error.
        let errs = errors(&MINIMAL.replace("hostname = \"mail.example.test\"", "hostname = 5"));
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].0, "hostname");
    }

    #[test]
    fn syntax_errors_give_a_location() {
        let errs = errors("hostname = \"a\nb\"\n");
        assert!(errs.iter().any(|(_, m)| m.contains("line 1")), "{errs:?}");
        assert_error(
            &with("[limits]\nmax_recipients = 1\nmax_recipients = 2"),
            "-",
            "TOML syntax error",
        );
    }

    #[test]
    fn listen_addresses() {
        assert_error(
            &with("[listen]\nsubmission = [\"0.0.0.0\"]"),
            "listen.submission",
            "address:port",
        );
        assert_error(
            &with("[listen]\nsubmissions = [\"localhost:465\"]"),
            "listen.submissions",
            "address:port",
        );
        assert_error(
            &with("[listen]\nsubmission = []\nsubmissions = []"),
            "listen",
            "no listen address",
        );
        assert!(parse(&with("[listen]\nsubmission = []")).is_ok());
    }

    #[test]
    fn proxy_protocol_needs_trusted_proxies() {
        assert_error(
            &with("[listen]\nproxy_protocol = true"),
            "listen.trusted_proxies",
            "must list",
        );
        assert_error(
            &with("[listen]\nproxy_protocol = true\ntrusted_proxies = [\"10.0.0.1/8\"]"),
            "listen.trusted_proxies",
            "host bits",
        );
        assert_error(
            &with("[listen]\ntrusted_proxies = [\"haproxy.internal\"]"),
            "listen.trusted_proxies",
            "not an IP address",
        );
        let s = parse(&with(
            "[listen]\nproxy_protocol = true\ntrusted_proxies = [\"127.0.0.1\", \"::1\"]",
        ))
        .unwrap();
        assert_eq!(s.listen.trusted_proxies.len(), 2);
    }

    #[test]
    fn abuse_limits_can_be_set_and_zero_means_off() {
        let s = parse(&with(
            "[limits]\nauth_window = \"1h\"\nauth_failures_per_ip = 0\n\
             auth_failures_per_login = 3\nauth_parallel = 2\nauth_queue = 0\n\
             user_messages_per_hour = 0\nuser_messages_per_day = 7\n\
             user_recipients_per_hour = 8\nuser_recipients_per_day = 9\n\
             suspend_recipients_per_hour = 100",
        ))
        .unwrap();
        let l = &s.limits;
        assert_eq!(l.auth_window, Duration::from_secs(3600));
        assert_eq!((l.auth_failures_per_ip, l.auth_failures_per_login), (0, 3));
        assert_eq!((l.auth_parallel, l.auth_queue), (Some(2), 0));
        let u = l.user_limits;
        assert_eq!(
            (
                u.messages_per_hour,
                u.messages_per_day,
                u.recipients_per_hour
            ),
            (0, 7, 8)
        );
        assert_eq!(
            (u.recipients_per_day, u.suspend_recipients_per_hour),
            (9, 100)
        );
        for key in [
            "auth_failures_per_ip",
            "auth_queue",
            "user_messages_per_hour",
            "suspend_recipients_per_hour",
        ] {
            assert_error(
                &with(&format!("[limits]\n{key} = -1")),
                &format!("limits.{key}"),
                "0 or more",
            );
        }
        assert_error(
            &with("[limits]\nauth_window = \"0s\""),
            "limits.auth_window",
            "longer than 0",
        );
        assert_error(
            &with("[limits]\nauth_parallel = 5000000000"),
            "limits.auth_parallel",
            "at most",
        );
    }

    #[test]
    fn ipv6_prefix_defaults_to_64_and_is_range_checked() {
        assert_eq!(parse(MINIMAL).unwrap().limits.ipv6_prefix, 64);
        for ok in [32, 48, 128] {
            let s = parse(&with(&format!("[limits]\nipv6_prefix = {ok}"))).unwrap();
            assert_eq!(s.limits.ipv6_prefix, ok as u8);
        }
        for bad in [0, 31, 129, -64] {
            assert_error(
                &with(&format!("[limits]\nipv6_prefix = {bad}")),
                "limits.ipv6_prefix",
                "from 32 to 128",
            );
        }
    }

    #[test]
    fn limits_must_be_positive() {
        for key in [
            "max_message_size",
            "max_recipients",
            "max_connections",
            "max_connections_per_ip",
            "max_auth_failures",
            "max_bad_commands",
            "max_header_size",
            "max_hops",
        ] {
            assert_error(
                &with(&format!("[limits]\n{key} = 0")),
                &format!("limits.{key}"),
                "positive",
            );
            assert_error(
                &with(&format!("[limits]\n{key} = -3")),
                &format!("limits.{key}"),
                "positive",
            );
        }
        assert_error(
            &with("[limits]\nmax_auth_failures = 5000000000"),
            "limits.max_auth_failures",
            "at most",
        );
    }

    #[test]
    fn durations() {
        assert_error(
            &with("[limits]\ncommand_timeout = \"5 minutes please\""),
            "limits.command_timeout",
            "not a duration",
        );
        assert_error(
            &with("[limits]\ncommand_timeout = \"500ms\""),
            "limits.command_timeout",
            "at least 1s",
        );
        assert_error(
            &with("[limits]\ngreet_pause = \"2m\""),
            "limits.greet_pause",
            "at most 1m",
        );
        assert_error(
            &with("[limits]\nmax_session_time = \"0s\""),
            "limits.max_session_time",
            "at least 1s",
        );
        assert_error(&with("[queue]\nretry = []"), "queue.retry", "at least one");
        assert_error(
            &with("[queue]\nretry = [\"1m\", \"0s\"]"),
            "queue.retry",
            "longer than 0",
        );
        assert_error(
            &with("[queue]\nretry = [\"1m\", \"soon\"]"),
            "queue.retry",
            "not a duration",
        );
        assert_error(
            &with("[queue]\nmax_age = \"0s\""),
            "queue.max_age",
            "longer than 0",
        );
        assert_error(
            &with("[relay]\ntimeout = \"5x\""),
            "relay.timeout",
            "not a duration",
        );
    }

    #[test]
    fn relay_enums_and_smarthost() {
        assert_error(
            &with("[relay]\nmode = \"direct\""),
            "relay.mode",
            "\"mx\", \"smarthost\"",
        );
        assert_error(&with("[relay]\ntls = \"may\""), "relay.tls", "not one of");
        assert_error(
            &with("[relay]\nsmarthost_tls = \"ssl\""),
            "relay.smarthost_tls",
            "not one of",
        );
        assert_error(
            &with("[relay]\nmode = \"smarthost\""),
            "relay.smarthost",
            "required",
        );
        assert_error(
            &with("[relay]\nmode = \"smarthost\"\nsmarthost = \"relay.example.test\""),
            "relay.smarthost",
            "host:port",
        );
        assert_error(
            &with("[relay]\nmode = \"smarthost\"\nsmarthost = \"relay.example.test:0\""),
            "relay.smarthost",
            "port",
        );
        assert_error(
            &with("[relay]\nmode = \"smarthost\"\nsmarthost = \":25\""),
            "relay.smarthost",
            "",
        );
        for ok in ["relay.example.test:587", "127.0.0.1:2525", "[::1]:25"] {
            assert!(
                parse(&with(&format!(
                    "[relay]\nmode = \"smarthost\"\nsmarthost = \"{ok}\""
                )))
                .is_ok(),
                "{ok}"
            );
        }
        // The smarthost is only checked when it is used.
        assert!(parse(&with("[relay]\nsmarthost = \"junk\"")).is_ok());
        assert_error(&with("[relay]\nport = 0"), "relay.port", "positive");
        assert_error(
            &with("[relay]\nport = 70000"),
            "relay.port",
            "at most 65535",
        );
        assert_error(
            &with("[relay]\nresolver = [\"127.0.0.1\"]"),
            "relay.resolver",
            "address:port",
        );
        assert_error(
            &with("[relay]\nsmarthost_user = \"u\""),
            "relay.smarthost_user",
            "set both",
        );
        assert_error(
            &with(
                "[relay]\nmode = \"smarthost\"\nsmarthost = \"h.test:25\"\nsmarthost_tls = \"none\"\nsmarthost_user = \"u\"\nsmarthost_password = \"p\"",
            ),
            "relay.smarthost_tls",
            "never sent in clear",
        );
    }

    #[test]
    fn every_problem_at_once() {
        let text = r#"
hostname = "bad_host"
[listen]
submission = ["nope"]
[limits]
max_conections = 1
max_recipients = 0
command_timeout = "forever"
[queue]
retry = []
[relay]
mode = "pigeon"
bogus = true
"#;
        let keys: Vec<String> = errors(text).into_iter().map(|(k, _)| k).collect();
        for want in [
            "hostname",
            "listen.submission",
            "limits.max_conections",
            "limits.max_recipients",
            "limits.command_timeout",
            "queue.retry",
            "relay.mode",
            "relay.bogus",
            "tls.cert",
            "tls.key",
            "auth.users",
        ] {
            assert!(
                keys.iter().any(|k| k == want),
                "{want} missing from {keys:?}"
            );
        }
        let display = parse(text).unwrap_err().to_string();
        assert!(display.lines().count() >= 11);
        assert!(
            display.contains("/etc/submitd/submitd.toml: limits.max_conections: unknown key"),
            "{display}"
        );
    }

    #[test]
    fn load_reports_unreadable_file() {
        let errs = Settings::load(Path::new("/nonexistent/submitd.toml")).unwrap_err();
        assert_eq!(errs.0.len(), 1);
        assert_eq!(errs.0[0].key, "-");
        assert_eq!(errs.0[0].file, Path::new("/nonexistent/submitd.toml"));
    }
}

#[cfg(test)]
mod shipped_files {
    use super::*;

    #[test]
    fn production_template_is_valid_and_dev_is_off() {
        let s = Settings::from_toml(
            include_str!("../config/submitd.toml"),
            Path::new("/etc/submitd/submitd.toml"),
        )
        .unwrap();
        assert!(!s.dev.bootstrap);
        assert_eq!(s.tls.cert, Path::new("/etc/submitd/certs/cert.pem"));
        assert_eq!(s.tls.key, Path::new("/etc/submitd/certs/key.pem"));
        assert_eq!(s.auth.users, Path::new("/etc/submitd/users.toml"));
        assert_eq!(s.queue.dir, Path::new("/var/spool/submitd"));
    }

    #[test]
    fn dev_config_is_valid() {
        let s = Settings::from_toml(
            include_str!("../config/dev.toml"),
            Path::new("config/dev.toml"),
        )
        .unwrap();
        assert!(s.dev.bootstrap);
        assert_eq!(s.hostname, "localhost");
        assert_eq!(s.tls.cert, Path::new("config/../var/dev/cert.pem"));
        // Nothing leaves a dev machine: mail lands in var/dev/outbox.
        assert_eq!(s.relay.mode, RelayMode::Capture);
        assert_eq!(
            s.relay.capture_dir.as_deref(),
            Some(Path::new("config/../var/dev/outbox"))
        );
    }
}

#[cfg(test)]
mod dkim_keys {
    use super::*;

    const MINIMAL: &str = "hostname = \"mail.example.test\"\n[tls]\ncert = \"c.pem\"\n\
                           key = \"k.pem\"\n[auth]\nusers = \"u.toml\"\n";

    fn parse(extra: &str) -> Result<Settings, ConfigErrors> {
        Settings::from_toml(
            &format!("{MINIMAL}{extra}"),
            Path::new("/etc/submitd/submitd.toml"),
        )
    }

    fn errors(extra: &str) -> Vec<(String, String)> {
        let e = parse(extra).expect_err("should be rejected");
        e.0.into_iter().map(|e| (e.key, e.message)).collect()
    }

    fn has(errs: &[(String, String)], key: &str, needle: &str) -> bool {
        errs.iter().any(|(k, m)| k == key && m.contains(needle))
    }

    #[test]
    fn entries_defaults_and_paths() {
        let s = parse("").unwrap();
        assert!(s.dkim.is_empty());
        let s = parse(
            "[[dkim]]\ndomain = \"Example.TEST\"\nselector = \"s2026\"\nkey = \"dkim/k.pem\"\n\
             [[dkim]]\ndomain = \"example.test\"\nselector = \"ed\"\nkey = \"/keys/ed.pem\"\n\
             headers = [\"From\", \"Subject\"]\n",
        )
        .unwrap();
        assert_eq!(s.dkim.len(), 2);
        assert_eq!(s.dkim[0].domain, "example.test");
        assert_eq!(s.dkim[0].key, Path::new("/etc/submitd/dkim/k.pem"));
        assert_eq!(s.dkim[0].headers.len(), crate::dkim::DEFAULT_HEADERS.len());
        assert_eq!(s.dkim[1].key, Path::new("/keys/ed.pem"));
        assert_eq!(s.dkim[1].headers, ["from", "subject"]);
    }

    #[test]
    fn bad_entries_name_the_key() {
        let errs = errors("[[dkim]]\nselector = \"s\"\nkey = \"\"\n");
        assert!(
            has(&errs, "dkim[0].domain", "required key is missing"),
            "{errs:?}"
        );
        assert!(has(&errs, "dkim[0].key", "must not be empty"), "{errs:?}");
        let errs = errors(
            "[[dkim]]\ndomain = \"bad_domain\"\nselector = \"-s\"\nkey = \"k\"\n\
             headers = [\"subject\", \"x:y\"]\n",
        );
        assert!(
            has(&errs, "dkim[0].domain", "not a valid domain"),
            "{errs:?}"
        );
        assert!(
            has(&errs, "dkim[0].selector", "not a valid selector"),
            "{errs:?}"
        );
        assert!(has(&errs, "dkim[0].headers", "\"x:y\""), "{errs:?}");
        assert!(
            has(&errs, "dkim[0].headers", "must include \"from\""),
            "{errs:?}"
        );
        let errs = errors(
            "[[dkim]]\ndomain = \"example.test\"\nselector = \"s\"\nkey = \"a\"\n\
             [[dkim]]\ndomain = \"EXAMPLE.test\"\nselector = \"S\"\nkey = \"b\"\n",
        );
        assert!(
            has(&errs, "dkim[1].selector", "already configured by dkim[0]"),
            "{errs:?}"
        );
        let errs = errors(
            "[[dkim]]\ndomain = \"example.test\"\nselector = \"s\"\nkey = \"a\"\nkeyfile = \"x\"\n",
        );
        assert!(has(&errs, "dkim[0].keyfile", "unknown key"), "{errs:?}");
    }
}
