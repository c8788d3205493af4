//! `submitd webhook ...`: the `[[webhook]]` endpoints' backlogs, read from the queue directory
//! (works whether or not the server runs), and fresh signing secrets.

use std::path::Path;
use submitd::logsafe::Escaped;

use clap::Subcommand;
use submitd::config::Settings;

use super::Failure;

#[derive(Debug, Subcommand)]
pub(crate) enum WebhookCommand {
    /// Per endpoint: events waiting, the oldest one's age, the last error.
    List {
        /// A JSON array instead, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Print a new secret (`whsec_` + base64 of 32 random bytes) for a `secret_file`.
    Secret,
}

pub(crate) fn webhook(config: &Path, cmd: WebhookCommand) -> Result<(), Failure> {
    match cmd {
        WebhookCommand::Secret => {
            println!("{}", submitd::webhook::generate_secret());
            Ok(())
        }
        WebhookCommand::List { json } => {
            let settings = Settings::load(config).map_err(Failure::Config)?;
            let endpoints = submitd::webhook::status(&settings)
                .map_err(|e| Failure::Runtime(anyhow::anyhow!("reading the backlog: {e}")))?;
            if json {
                let text = serde_json::to_string_pretty(&endpoints)
                    .map_err(|e| Failure::Runtime(e.into()))?;
                println!("{text}");
                return Ok(());
            }
            if endpoints.is_empty() {
                println!("no [[webhook]] configured");
            }
            for e in endpoints {
                let oldest = e
                    .oldest_age
                    .map_or_else(|| "-".to_string(), |a| format!("{a}s"));
                let error = match (&e.last_error, e.consecutive_failures) {
                    (Some(err), n) if n > 0 => format!("failing ({n} in a row): {}", Escaped(err)),
                    (Some(err), _) => format!("ok (last error: {})", Escaped(err)),
                    (None, _) => "ok".to_string(),
                };
                println!(
                    "{}\t{}\tbacklog={}\toldest={}\t{}",
                    e.name, e.url, e.backlog, oldest, error
                );
            }
            Ok(())
        }
    }
}
