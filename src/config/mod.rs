//! The TOML config (DESIGN.md "Config"): serde structs with `deny_unknown_fields`, defaults,
//! and validation into [`Settings`]. Relative paths resolve against the config file's directory.
//!
//! The floor of the crate: it imports no other module, so every stage can depend on it. One
//! file per section, each with its raw serde struct and a `parse` that validates it into the
//! section's settings, pushing every problem into one [`Problems`] so that a run reports all
//! of them at once:
//!
//! - `raw`: the text to raw structs, naming the dotted key of every syntax, type and unknown-key
//!   error; `value`: the checks shared by sections (durations, counts, addresses, host names).
//! - `listen` (with [`Cidr`]), `tls`, `auth`, `limits` (with [`SendLimits`]), `queue`, `relay`
//!   (with [`Smarthost`]), `submission`, `dkim` (with [`DkimConfig`]), `dev`, `metrics`, `log`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

mod api;
mod auth;
mod dev;
mod dkim;
mod limits;
mod listen;
mod log;
mod metrics;
mod polite;
mod queue;
mod raw;
mod relay;
mod state;
mod submission;
mod suppression;
mod tls;
mod value;
mod webhook;

pub use api::ApiSettings;
pub use auth::{
    AuthBackend, AuthSettings, DovecotSettings, DovecotSocket, LdapSettings, SqlSettings, SqlUrl,
    check_sender_template,
};
pub use dev::DevSettings;
pub use dkim::{DEFAULT_HEADERS, DkimConfig, check_selector};
pub use limits::{DEFAULT_IPV6_PREFIX, IPV6_PREFIX_RANGE, Limits, SendLimits};
pub use listen::{Cidr, Listen};
pub use log::{LogFormat, LogSettings};
pub use metrics::MetricsSettings;
pub use polite::PoliteSettings;
pub use queue::QueueSettings;
pub use relay::{RelayMode, RelaySettings, RelayTls, Smarthost, SmarthostTls};
pub use state::{StateBackend, StateSettings, StateUrl, redact as redact_url};
pub use submission::SubmissionSettings;
pub use suppression::SuppressionSettings;
pub use tls::TlsFiles;
pub use value::check_hostname;
pub use webhook::{WEBHOOK_EVENTS, WebhookSettings, WebhookUrl, parse_webhook_url};

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
    pub dkim: Vec<DkimConfig>,
    pub dev: DevSettings,
    pub metrics: MetricsSettings,
    /// `[state]`: where throttles, sending windows and suspensions live.
    pub state: StateSettings,
    pub log: LogSettings,
    /// `[api]`: the HTTP API.
    pub api: ApiSettings,
    /// `[[webhook]]`: delivery-event endpoints (empty: none).
    pub webhook: Vec<WebhookSettings>,
    /// `[suppression]`: the list of recipients that failed permanently.
    pub suppression: SuppressionSettings,
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

/// Collects [`ConfigError`]s for one file, so that one bad value does not hide the others.
pub struct Problems<'a> {
    file: &'a Path,
    errors: Vec<ConfigError>,
}

impl<'a> Problems<'a> {
    /// No problems yet in `file`.
    pub fn new(file: &'a Path) -> Problems<'a> {
        Problems {
            file,
            errors: Vec::new(),
        }
    }

    /// Record that `key` is wrong.
    pub fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            key: key.into(),
            message: message.into(),
        });
    }

    /// `Ok` when nothing was pushed, else every problem in the order found.
    pub fn finish(self) -> Result<(), ConfigErrors> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(self.errors))
        }
    }
}

/// The whole file as written. Values that need more than a type check (durations, addresses,
/// enums, positive numbers) stay strings / i64 in the sections and are validated by their
/// `parse`, so that one bad value does not hide the others.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    hostname: Option<String>,
    #[serde(default)]
    listen: listen::RawListen,
    #[serde(default)]
    tls: tls::RawTls,
    #[serde(default)]
    auth: auth::RawAuth,
    #[serde(default)]
    limits: limits::RawLimits,
    #[serde(default)]
    queue: queue::RawQueue,
    #[serde(default)]
    relay: relay::RawRelay,
    #[serde(default)]
    submission: submission::RawSubmission,
    #[serde(default)]
    dkim: Vec<dkim::RawDkim>,
    #[serde(default)]
    dev: dev::RawDev,
    #[serde(default)]
    metrics: metrics::RawMetrics,
    #[serde(default)]
    state: state::RawState,
    #[serde(default)]
    log: log::RawLog,
    #[serde(default)]
    api: api::RawApi,
    #[serde(default)]
    webhook: Vec<webhook::RawWebhook>,
    #[serde(default)]
    suppression: suppression::RawSuppression,
}

/// What every section's `parse` gets besides its raw struct.
struct Context<'a> {
    /// The config file's directory: relative paths resolve against it.
    base: &'a Path,
    /// Dotted keys already reported as mistyped or unknown: not reported again as missing.
    bad: &'a [String],
}

impl Context<'_> {
    /// Resolve a path from the config file against the config file's directory.
    fn resolve(&self, value: &str) -> PathBuf {
        resolve(self.base, value)
    }
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
        let mut problems = Problems::new(path);
        let Some((raw, bad)) = raw::parse(text, &mut problems) else {
            return Err(ConfigErrors(problems.errors));
        };
        let cx = Context {
            base: path.parent().unwrap_or(Path::new("")),
            bad: &bad,
        };
        let p = &mut problems;
        // In file order, so that errors come out in the order a reader meets them.
        let hostname = value::required(p, cx.bad, "hostname", &raw.hostname).map(|h| {
            if let Err(e) = check_hostname(h) {
                p.push("hostname", e);
            }
            h.to_string()
        });
        let listen = listen::parse(&raw.listen, p);
        let tls = tls::parse(&raw.tls, p, &cx);
        let auth = auth::parse(&raw.auth, p, &cx);
        let limits = limits::parse(&raw.limits, p);
        let queue = queue::parse(&raw.queue, p, &cx);
        let relay = relay::parse(&raw.relay, p, &cx);
        let dkim = dkim::parse(&raw.dkim, p, &cx);
        let dev = dev::parse(&raw.dev, p);
        let metrics = metrics::parse(&raw.metrics, p);
        let state = state::parse(&raw.state, p, &cx);
        let log = log::parse(&raw.log, p);
        let api = api::parse(&raw.api, p);
        let webhook = webhook::parse(&raw.webhook, p, &cx);
        let suppression = suppression::parse(&raw.suppression, p);

        problems.finish()?;
        // Every Option below is Some: a None always pushed an error above.
        let missing = || ConfigErrors(Vec::new());
        Ok(Settings {
            config_path: path.to_path_buf(),
            hostname: hostname.ok_or_else(missing)?,
            listen: listen.ok_or_else(missing)?,
            tls: tls.ok_or_else(missing)?,
            auth: auth.ok_or_else(missing)?,
            limits: limits.ok_or_else(missing)?,
            queue: queue.ok_or_else(missing)?,
            relay: relay.ok_or_else(missing)?,
            submission: submission::parse(&raw.submission),
            dkim,
            dev,
            metrics: metrics.ok_or_else(missing)?,
            state: state.ok_or_else(missing)?,
            log: log.ok_or_else(missing)?,
            api: api.ok_or_else(missing)?,
            webhook,
            suppression: suppression.ok_or_else(missing)?,
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
}

/// What the section tests share: a minimal valid file and ways to look at its errors.
#[cfg(test)]
mod testing {
    use super::*;

    pub(super) const MINIMAL: &str = r#"
hostname = "mail.example.test"
[tls]
cert = "certs/cert.pem"
key = "certs/key.pem"
[auth]
users = "users.toml"
"#;

    pub(super) fn parse(text: &str) -> Result<Settings, ConfigErrors> {
        Settings::from_toml(text, Path::new("/etc/submitd/submitd.toml"))
    }

    /// The (key, message) pairs of a failed parse.
    pub(super) fn errors(text: &str) -> Vec<(String, String)> {
        let errs = parse(text).expect_err("config should be rejected");
        for e in &errs.0 {
            assert_eq!(e.file, Path::new("/etc/submitd/submitd.toml"));
        }
        errs.0.into_iter().map(|e| (e.key, e.message)).collect()
    }

    pub(super) fn assert_error(text: &str, key: &str, needle: &str) {
        let errs = errors(text);
        assert!(
            errs.iter().any(|(k, m)| k == key && m.contains(needle)),
            "expected {key}: ...{needle}... in {errs:#?}"
        );
    }

    /// MINIMAL followed by `extra` (which starts in the `[auth]` table unless it opens one).
    pub(super) fn with(extra: &str) -> String {
        format!("{MINIMAL}\n{extra}")
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use super::testing::*;
    use super::*;

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
        assert_eq!(s.queue.delay_warning, Some(Duration::from_secs(4 * 3600)));
        assert_eq!(s.relay.mode, RelayMode::Mx);
        assert_eq!(s.relay.port, 25);
        assert_eq!(s.relay.tls, RelayTls::Dane);
        assert_eq!(s.relay.timeout, Duration::from_secs(300));
        assert!(s.relay.resolver.is_empty());
        assert_eq!(s.relay.smarthost, None);
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
delay_warning = "0s"
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
        assert_eq!(
            s.queue.delay_warning, None,
            "\"0s\" turns delay warnings off"
        );
        assert_eq!(s.relay.mode, RelayMode::Smarthost);
        assert_eq!(s.relay.port, 2525);
        assert_eq!(s.relay.tls, RelayTls::Required);
        assert_eq!(
            s.relay.resolver,
            vec!["127.0.0.1:5353".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(
            s.relay.smarthost,
            Some(Smarthost {
                host: "relay.example.test".into(),
                port: 465
            })
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
        assert_eq!(
            s.auth.users.as_deref(),
            Some(Path::new("/etc/submitd/users.toml"))
        );
        assert_eq!(s.queue.dir, Path::new("/etc/submitd/spool"));
        assert_eq!(
            s.relay.ca_file.as_deref(),
            Some(Path::new("/etc/submitd/ca/bundle.pem"))
        );

        let s = Settings::from_toml(MINIMAL, Path::new("config/dev.toml")).unwrap();
        assert_eq!(s.tls.cert, Path::new("config/certs/cert.pem"));
        // A bare file name: relative to the working directory, which is its directory.
        let s = Settings::from_toml(MINIMAL, Path::new("submitd.toml")).unwrap();
        assert_eq!(s.auth.users.as_deref(), Some(Path::new("users.toml")));

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
            &with("[queue]\ndelay_warning = \"soon\""),
            "queue.delay_warning",
            "not a duration",
        );
        assert_error(
            &with("[relay]\ntimeout = \"5x\""),
            "relay.timeout",
            "not a duration",
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
            include_str!("../../config/submitd.toml"),
            Path::new("/etc/submitd/submitd.toml"),
        )
        .unwrap();
        assert!(!s.dev.bootstrap);
        assert_eq!(s.tls.cert, Path::new("/etc/submitd/certs/cert.pem"));
        assert_eq!(s.tls.key, Path::new("/etc/submitd/certs/key.pem"));
        assert_eq!(
            s.auth.users.as_deref(),
            Some(Path::new("/etc/submitd/users.toml"))
        );
        assert_eq!(s.queue.dir, Path::new("/var/spool/submitd"));
    }

    #[test]
    fn dev_config_is_valid() {
        let s = Settings::from_toml(
            include_str!("../../config/dev.toml"),
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
