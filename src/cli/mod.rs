//! The command line: the clap definitions, one file per command group, and the exit codes.
//!
//! - [`serve`]: load the config, start logging, run the server, drain on SIGTERM/SIGINT.
//! - [`signals`]: every signal handler the server installs, and the loops behind them.
//! - [`check_config`], [`health`], [`reload`], [`tls_report`]: one-shot checks and the control
//!   socket.
//! - [`user`], [`password`]: the users file (add, passwd, del, list, suspend) and password input.
//! - [`key`]: scoped API keys (create, list, revoke, rotate).
//! - [`queue`]: list, show, retry, hold, release, delete.
//! - [`webhook`]: the webhook endpoints' backlogs; new signing secrets.
//! - [`suppression`]: the per-tenant suppression list (list, add, del).
//! - [`dkim`], [`cert`]: key and certificate generation.

mod cert;
mod check_config;
mod dkim;
mod health;
mod key;
mod password;
mod queue;
mod reload;
mod serve;
mod signals;
mod suppression;
mod tls_report;
mod user;
mod webhook;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::anyhow;
use clap::{Parser, Subcommand};
use submitd::config::ConfigErrors;

/// Authenticated SMTP submission server (MSA).
#[derive(Debug, Parser)]
#[command(name = "submitd", version)]
pub(crate) struct Cli {
    /// Config file (relative paths in it resolve against its directory).
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        default_value = "config/submitd.toml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the server until SIGTERM or SIGINT.
    Serve,
    /// Validate the config, the certificate and key, and the users file.
    CheckConfig,
    /// Manage the users file.
    #[command(subcommand)]
    User(user::UserCommand),
    /// Scoped API keys, also SMTP AUTH passwords (login = the key's name).
    #[command(subcommand)]
    Key(key::KeyCommand),
    /// Read a password on stdin, print its argon2id PHC string.
    HashPassword,
    /// Certificates for development.
    #[command(subcommand)]
    Cert(cert::CertCommand),
    /// Inspect and steer the queue (safe while the server runs).
    #[command(subcommand)]
    Queue(queue::QueueCommand),
    /// The per-tenant list of recipients that failed permanently (safe while the server runs).
    #[command(subcommand)]
    Suppression(suppression::SuppressionCommand),
    /// Exit 0 when the server answers a 220 greeting on its first listen address, else 1.
    Health,
    /// DKIM signing keys.
    #[command(subcommand)]
    Dkim(dkim::DkimCommand),
    /// Make the running server re-read its config, certificate, users and limits (through the
    /// control socket <queue.dir>/submitd.sock); open sessions are not dropped.
    Reload,
    /// Make the running server send its TLS-RPT reports (RFC 8460) now rather than at the next
    /// UTC midnight (through the control socket).
    TlsReport,
    /// Webhook endpoints (`[[webhook]]`): backlogs, new secrets.
    #[command(subcommand)]
    Webhook(webhook::WebhookCommand),
}

/// Why a command failed, which decides the exit code.
pub(crate) enum Failure {
    /// Exit 2: every problem of the config file.
    Config(ConfigErrors),
    /// Exit 2: a bad argument, input or file content the user must fix.
    Usage(anyhow::Error),
    /// Exit 1.
    Runtime(anyhow::Error),
    /// Exit with this code; the error is already in the log (in the log's format).
    Logged(u8),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Runtime(e)
    }
}

pub(crate) fn usage(message: impl std::fmt::Display) -> Failure {
    Failure::Usage(anyhow!("{message}"))
}

impl Failure {
    /// Print the error (unless already logged) and give the exit code.
    pub(crate) fn exit_code(self) -> ExitCode {
        match self {
            Failure::Config(errors) => {
                for e in &errors.0 {
                    eprintln!("submitd: {}: {}: {}", e.file.display(), e.key, e.message);
                }
                ExitCode::from(2)
            }
            Failure::Usage(e) => {
                eprintln!("submitd: {e:#}");
                ExitCode::from(2)
            }
            Failure::Runtime(e) => {
                eprintln!("submitd: {e:#}");
                ExitCode::from(1)
            }
            Failure::Logged(code) => ExitCode::from(code),
        }
    }
}

/// Run one command.
pub(crate) fn run(cli: Cli) -> Result<(), Failure> {
    let config = cli.config.as_path();
    match cli.command {
        Command::Serve => serve::serve(config),
        Command::CheckConfig => check_config::check_config(config),
        Command::User(cmd) => user::user(config, cmd),
        Command::Key(cmd) => key::key(config, cmd),
        Command::HashPassword => password::hash_password(),
        Command::Cert(cmd) => cert::cert(cmd),
        Command::Queue(cmd) => queue::queue(config, cmd),
        Command::Suppression(cmd) => suppression::suppression(config, cmd),
        Command::Health => health::health(config),
        Command::Dkim(cmd) => dkim::dkim(cmd),
        Command::Reload => reload::reload(config),
        Command::TlsReport => tls_report::tls_report(config),
        Command::Webhook(cmd) => webhook::webhook(config, cmd),
    }
}

/// The config's API key home and a runtime to talk to it on (`key`, `user`).
pub(crate) fn key_home(
    settings: &submitd::config::Settings,
) -> Result<(submitd::auth::keyhome::KeyHome, tokio::runtime::Runtime), Failure> {
    let home = submitd::auth::keyhome::KeyHome::from_settings(settings)
        .map_err(|e| Failure::Runtime(e.into()))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Runtime(e.into()))?;
    Ok((home, runtime))
}
