//! `submitd key ...`: scoped API keys in the keys file (`auth.keys`), which double as SMTP
//! app passwords (login = the key's name). Secrets are printed once and never stored.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use clap::Subcommand;
use submitd::auth::keys::{self, KeyEntry, KeysError, SCOPES};
use submitd::auth::senders::{SenderPattern, owns};
use submitd::auth::users;
use submitd::config::{Cidr, Settings};

use super::user::{pattern_text, unix_date};
use super::{Failure, usage};

#[derive(Debug, Subcommand)]
pub(crate) enum KeyCommand {
    /// Create a key and print its secret (once: only a hash is stored).
    Create {
        /// The key's name, also its SMTP AUTH login (A-Z a-z 0-9 . _ -).
        name: String,
        /// The user the key belongs to; its senders must lie within the owner's.
        #[arg(long)]
        owner: Option<String>,
        /// An address or @domain the key may send as; repeatable; default: the owner's.
        #[arg(long = "sender", value_name = "PATTERN")]
        senders: Vec<String>,
        /// Comma-separated: smtp, api, admin (reads any message, any tenant's suppressions).
        #[arg(long, default_value = "smtp,api", value_delimiter = ',')]
        scope: Vec<String>,
        /// A CIDR block the key may be used from; repeatable; default: anywhere.
        #[arg(long = "from-ip", value_name = "CIDR")]
        from_ip: Vec<String>,
        /// Lifetime, e.g. 90d; default: no expiry.
        #[arg(long, value_parser = humantime::parse_duration)]
        expires: Option<Duration>,
        /// Messages per hour for this key (default: `[limits]` for users).
        #[arg(long)]
        messages_per_hour: Option<u32>,
    },
    /// List keys (never secrets).
    List {
        /// A JSON array instead, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key: refused from the next AUTH on.
    Revoke { name: String },
    /// Give a key a new secret (printed once); the old one works until the grace ends.
    Rotate {
        name: String,
        /// How long the old secret stays valid.
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        grace: Duration,
    },
}

fn keys_failure(e: KeysError) -> Failure {
    match e {
        KeysError::Io { .. } => Failure::Runtime(e.into()),
        _ => Failure::Usage(e.into()),
    }
}

/// Run one `key` command against the config's keys file.
pub(crate) fn key(config: &Path, cmd: KeyCommand) -> Result<(), Failure> {
    let settings = Settings::load(config).map_err(Failure::Config)?;
    let path = settings.auth.keys.as_path();
    let now = submitd::clock::unix_now();
    match cmd {
        KeyCommand::Create {
            name,
            owner,
            senders,
            scope,
            from_ip,
            expires,
            messages_per_hour,
        } => {
            let entry = KeyEntry {
                senders: key_senders(&settings, owner.as_deref(), senders)?,
                name,
                hash: String::new(),
                owner,
                scopes: scopes(scope)?,
                from_ip: from_ips(from_ip)?,
                expires: expires.map(|d| now.saturating_add(d.as_secs())),
                messages_per_hour,
                created: now,
                revoked: None,
                previous_hash: None,
                previous_until: None,
            };
            if !keys::valid_name(&entry.name) {
                return Err(usage(format!(
                    "bad key name {:?}: 1-64 of A-Z a-z 0-9 . _ -",
                    entry.name
                )));
            }
            refuse_user_login(&settings, &entry.name)?;
            let secret = keys::new_secret(&entry.name);
            let entry = KeyEntry {
                hash: keys::hash_secret(&secret),
                ..entry
            };
            let name = entry.name.clone();
            keys::create(path, settings.auth.users.as_deref(), entry).map_err(keys_failure)?;
            println!("{secret}");
            eprintln!(
                "created key {name} in {}; the secret above is shown only now \
                 (HTTP API: Authorization: Bearer SECRET; SMTP AUTH: login {name}, password the secret)",
                path.display()
            );
        }
        KeyCommand::List { json } => list(path, now, json)?,
        KeyCommand::Revoke { name } => {
            keys::revoke(path, &name, now).map_err(keys_failure)?;
            eprintln!("revoked key {name} in {}", path.display());
        }
        KeyCommand::Rotate { name, grace } => {
            let secret = keys::new_secret(&name);
            let until = now.saturating_add(grace.as_secs());
            keys::rotate(path, &name, keys::hash_secret(&secret), until).map_err(keys_failure)?;
            println!("{secret}");
            eprintln!(
                "rotated key {name}; the old secret works until {}",
                unix_date(until)
            );
        }
    }
    Ok(())
}

/// The key's senders: as given (each within the owner's, when there is an owner), else the
/// owner's. A key with neither is refused: it could send as nobody.
fn key_senders(
    settings: &Settings,
    owner: Option<&str>,
    senders: Vec<String>,
) -> Result<Vec<String>, Failure> {
    let mut parsed = Vec::new();
    for s in &senders {
        parsed.push(SenderPattern::parse(s).map_err(|e| usage(format!("--sender {s:?}: {e}")))?);
    }
    let Some(owner) = owner else {
        if senders.is_empty() {
            return Err(usage("a key needs --sender PATTERN or --owner LOGIN"));
        }
        return Ok(senders);
    };
    let Some(users_file) = settings.auth.users.as_deref() else {
        return Err(usage(
            "--owner needs the users file (auth.users) to know the owner's senders",
        ));
    };
    let list = load_users(settings, users_file).map_err(|e| Failure::Usage(e.into()))?;
    let Some(user) = list.iter().find(|u| u.login == owner) else {
        return Err(usage(format!(
            "--owner {owner:?}: no such user in {}",
            users_file.display()
        )));
    };
    if senders.is_empty() {
        return Ok(user.senders.iter().map(pattern_text).collect());
    }
    for (text, p) in senders.iter().zip(&parsed) {
        let within = match p {
            SenderPattern::Address { .. } => owns(&user.senders, &pattern_text(p)),
            SenderPattern::Domain(_) => user.senders.contains(p),
        };
        if !within {
            let theirs: Vec<String> = user.senders.iter().map(pattern_text).collect();
            return Err(usage(format!(
                "--sender {text:?} is not within the senders of its owner {owner} ({}); \
                 a key cannot send as more than its owner",
                theirs.join(" ")
            )));
        }
    }
    Ok(senders)
}

/// The users file as the backend reads it (whole accounts, or a directory's overlay).
fn load_users(settings: &Settings, path: &Path) -> Result<Vec<users::User>, users::UsersError> {
    if settings.auth.backend.name() == "file" {
        users::load(path)
    } else {
        users::load_overlay(path)
    }
}

fn scopes(scope: Vec<String>) -> Result<Vec<String>, Failure> {
    let mut out: Vec<String> = Vec::new();
    for s in scope.iter().map(|s| s.trim()) {
        if !SCOPES.contains(&s) {
            return Err(usage(format!("--scope {s:?}: one of smtp, api, admin")));
        }
        if !out.iter().any(|o| o == s) {
            out.push(s.to_owned());
        }
    }
    if out.is_empty() {
        return Err(usage("--scope: at least one of smtp, api, admin"));
    }
    Ok(out)
}

fn from_ips(from_ip: Vec<String>) -> Result<Vec<String>, Failure> {
    for c in &from_ip {
        c.parse::<Cidr>()
            .map_err(|e| usage(format!("--from-ip: {e}")))?;
    }
    Ok(from_ip)
}

/// A key named like a user would shadow the user's password at AUTH: refused.
fn refuse_user_login(settings: &Settings, name: &str) -> Result<(), Failure> {
    if let Some(path) = settings.auth.users.as_deref()
        && let Ok(list) = load_users(settings, path)
        && list.iter().any(|u| u.login == name)
    {
        return Err(usage(format!(
            "{name:?} is a user's login in {}; pick another key name",
            path.display()
        )));
    }
    Ok(())
}

/// `key list`: name, owner, scopes, senders, state; `--json` the stored fields but the hashes.
fn list(path: &Path, now: u64, json: bool) -> Result<(), Failure> {
    let list = keys::load(path).map_err(keys_failure)?;
    let state = |e: &KeyEntry| match (e.revoked, e.expires) {
        (Some(t), _) => format!("revoked {}", unix_date(t)),
        (None, Some(t)) if now >= t => format!("expired {}", unix_date(t)),
        (None, Some(t)) => format!("expires {}", unix_date(t)),
        (None, None) => "active".to_owned(),
    };
    if json {
        let items: Vec<serde_json::Value> = list
            .iter()
            .map(|k| {
                let e = &k.entry;
                serde_json::json!({
                    "name": e.name, "owner": e.owner, "senders": e.senders, "scopes": e.scopes,
                    "from_ip": e.from_ip, "expires": e.expires,
                    "messages_per_hour": e.messages_per_hour, "created": e.created,
                    "revoked": e.revoked, "previous_until": e.previous_until,
                    "state": state(e),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&items).context("JSON")?);
        return Ok(());
    }
    for k in &list {
        let e = &k.entry;
        println!(
            "{}\t{}\t{}\t{}\t{}",
            e.name,
            e.owner.as_deref().unwrap_or("-"),
            e.scopes.join(","),
            e.senders.join(" "),
            state(e)
        );
    }
    Ok(())
}
