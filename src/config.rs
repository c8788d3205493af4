//! The TOML config (DESIGN.md "Config"): serde structs with `deny_unknown_fields`, defaults,
//! and validation into [`Settings`]. Relative paths resolve against the config file's directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

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
    pub dev: DevSettings,
}

/// `[listen]`.
#[derive(Debug, Clone)]
pub struct Listen {
    /// Plaintext submission with STARTTLS (587).
    pub submission: Vec<SocketAddr>,
    /// Implicit TLS submission (465, RFC 8314).
    pub submissions: Vec<SocketAddr>,
    pub proxy_protocol: bool,
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
}

/// `[limits]`.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_message_size: u64,
    pub max_recipients: usize,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub command_timeout: Duration,
    pub max_auth_failures: u32,
}

/// `[queue]`.
#[derive(Debug, Clone)]
pub struct QueueSettings {
    pub dir: PathBuf,
    pub retry: Vec<Duration>,
    pub max_age: Duration,
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayMode {
    Mx,
    Smarthost,
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

impl Settings {
    /// Parse and validate config text; `path` names the file in errors and anchors relative paths.
    pub fn from_toml(_text: &str, _path: &Path) -> Result<Settings, ConfigErrors> {
        todo!("config helper")
    }

    /// Read and validate a config file.
    pub fn load(_path: &Path) -> Result<Settings, ConfigErrors> {
        todo!("config helper")
    }
}
