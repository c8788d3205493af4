//! `submitd suppression ...`: the per-tenant suppression list in `queue.dir/suppressions`
//! (`submitd::suppression`). Safe while the server runs: every write takes the store's lock
//! and is fsynced, and the server re-reads the journal within about a second.

use std::path::Path;

use anyhow::Context as _;
use clap::Subcommand;
use submitd::config::Settings;
use submitd::logsafe::Escaped;
use submitd::suppression::{Entry, Suppressions};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{Failure, usage};

#[derive(Debug, Subcommand)]
pub(crate) enum SuppressionCommand {
    /// The entries in force, one per line: tenant, address, added, expires, reply
    /// (tab-separated).
    List {
        /// Only this tenant's entries (a user's login, or the owner of an API key).
        #[arg(long)]
        tenant: Option<String>,
        /// Print JSON Lines instead (one object per entry), for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Suppress ADDRESS for TENANT for `suppression.ttl`.
    Add {
        tenant: String,
        address: String,
        /// Kept as the entry's reply.
        #[arg(long, default_value = "added by an operator")]
        reason: String,
    },
    /// Lift the suppression of ADDRESS for TENANT.
    Del { tenant: String, address: String },
}

/// Load the config for `queue.dir` and `[suppression]`, then run the command.
pub(crate) fn suppression(config: &Path, cmd: SuppressionCommand) -> Result<(), Failure> {
    let settings = Settings::load(config).map_err(Failure::Config)?;
    let s = &settings.suppression;
    let store = Suppressions::open_in_queue(&settings.queue.dir, s.ttl, s.max_entries)
        .context("cannot open the suppression list")?;
    let now = submitd::clock::unix_now();
    match cmd {
        SuppressionCommand::List { tenant, json } => {
            for e in store.list(tenant.as_deref(), now) {
                if json {
                    println!("{}", serde_json::to_string(&e).context("JSON")?);
                } else {
                    println!("{}", line(&e));
                }
            }
        }
        SuppressionCommand::Add {
            tenant,
            address,
            reason,
        } => {
            check_name("tenant", &tenant)?;
            check_name("address", &address)?;
            store
                .add(&tenant, &address, &reason, now)
                .context("cannot add")?;
            println!(
                "suppressed {} for {} until {}",
                Escaped(&address.to_ascii_lowercase()),
                Escaped(&tenant),
                rfc3339(now.saturating_add(s.ttl.as_secs()))
            );
        }
        SuppressionCommand::Del { tenant, address } => {
            if !store.remove(&tenant, &address).context("cannot remove")? {
                return Err(Failure::Runtime(anyhow::anyhow!(
                    "{} is not suppressed for {}",
                    Escaped(&address),
                    Escaped(&tenant)
                )));
            }
            println!(
                "removed {} for {}",
                Escaped(&address.to_ascii_lowercase()),
                Escaped(&tenant)
            );
        }
    }
    Ok(())
}

/// A tenant or address as given on the command line: 1 to 512 bytes, no spaces or controls.
fn check_name(what: &str, value: &str) -> Result<(), Failure> {
    if value.is_empty() || value.len() > 512 {
        return Err(usage(format!("the {what} must be 1 to 512 bytes")));
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(usage(format!(
            "the {what} must not contain spaces or control characters"
        )));
    }
    if what == "address" && !value.contains('@') {
        return Err(usage("the address must be local@domain"));
    }
    Ok(())
}

fn line(e: &Entry) -> String {
    format!(
        "{}\t{}\t{}\t{}\t{}",
        Escaped(&e.tenant),
        Escaped(&e.address),
        rfc3339(e.added),
        rfc3339(e.expires),
        Escaped(&e.reply)
    )
}

fn rfc3339(t: u64) -> String {
    OffsetDateTime::from_unix_timestamp(i64::try_from(t).unwrap_or(i64::MAX))
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| t.to_string())
}
