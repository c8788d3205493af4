//! `submitd suppression ...`: the per-tenant suppression list in `queue.dir/suppressions`
//! (`submitd::suppression`). Safe while the server runs: every write takes the store's lock
//! and is fsynced, and the server re-reads the journal within about a second.

use std::path::Path;

use anyhow::Context as _;
use clap::Subcommand;
use submitd::config::Settings;
use submitd::logsafe::Escaped;
use submitd::suppression::{EVERY_TENANT, Entry, Suppressions};

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
    /// Suppress ADDRESS for TENANT (`add [TENANT] ADDRESS`; without a TENANT, for every
    /// tenant) for `suppression.ttl`.
    Add {
        /// `[TENANT] ADDRESS`.
        #[arg(num_args = 1..=2, required = true, value_name = "[TENANT] ADDRESS")]
        names: Vec<String>,
        /// Kept as the entry's reply.
        #[arg(long, default_value = "added by an operator")]
        reason: String,
    },
    /// Lift the suppression of ADDRESS for TENANT (`del [TENANT] ADDRESS`; without a TENANT,
    /// for every tenant that has it).
    Del {
        /// `[TENANT] ADDRESS`.
        #[arg(num_args = 1..=2, required = true, value_name = "[TENANT] ADDRESS")]
        names: Vec<String>,
    },
}

/// `[TENANT] ADDRESS` from the command line: the tenant, when one was given, and the address.
fn tenant_and_address(names: &[String]) -> Result<(Option<&str>, &str), Failure> {
    match names {
        [address] => Ok((None, address)),
        [tenant, address] => Ok((Some(tenant), address)),
        _ => Err(usage("give [TENANT] ADDRESS")),
    }
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
        SuppressionCommand::Add { names, reason } => {
            let (tenant, address) = tenant_and_address(&names)?;
            let tenant = tenant.unwrap_or(EVERY_TENANT);
            check_name("tenant", tenant)?;
            check_name("address", address)?;
            store
                .add(tenant, address, &reason, now)
                .context("cannot add")?;
            println!(
                "suppressed {} for {} until {}",
                Escaped(&address.to_ascii_lowercase()),
                Escaped(&describe(tenant)),
                submitd::clock::rfc3339(now.saturating_add(s.ttl.as_secs()))
            );
        }
        SuppressionCommand::Del { names } => {
            let (tenant, address) = tenant_and_address(&names)?;
            let tenants: Vec<String> = match tenant {
                Some(t) => vec![t.to_owned()],
                None => store
                    .list(None, now)
                    .into_iter()
                    .filter(|e| e.address.eq_ignore_ascii_case(address))
                    .map(|e| e.tenant)
                    .collect(),
            };
            let mut removed = 0;
            for t in &tenants {
                if store.remove(t, address).context("cannot remove")? {
                    removed += 1;
                    println!(
                        "removed {} for {}",
                        Escaped(&address.to_ascii_lowercase()),
                        Escaped(&describe(t))
                    );
                }
            }
            if removed == 0 {
                return Err(Failure::Runtime(anyhow::anyhow!(
                    "{} is not suppressed for {}",
                    Escaped(address),
                    Escaped(&describe(tenant.unwrap_or("any tenant")))
                )));
            }
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

/// A tenant for the operator: `*` reads "every tenant".
fn describe(tenant: &str) -> String {
    if tenant == EVERY_TENANT {
        "every tenant".to_owned()
    } else {
        tenant.to_owned()
    }
}

fn line(e: &Entry) -> String {
    format!(
        "{}\t{}\t{}\t{}\t{}",
        Escaped(&e.tenant),
        Escaped(&e.address),
        submitd::clock::rfc3339(e.added),
        submitd::clock::rfc3339(e.expires),
        Escaped(&e.reply)
    )
}
