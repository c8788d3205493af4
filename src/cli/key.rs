//! `submitd key ...`: scoped API keys, which double as SMTP app passwords (login = the key's
//! name), in their home: the keys file (`auth.keys`), or the identity backend's store
//! (`auth.sql.keys_table`, `auth.ldap.keys_base`). Secrets are printed once and never stored.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use clap::Subcommand;
use submitd::auth::backend::BackendError;
use submitd::auth::directory::DirectoryAuth;
use submitd::auth::keys::{self, KeyEntry, KeysError, SCOPES};
use submitd::auth::senders::{SenderPattern, owns};
use submitd::auth::users;
use submitd::config::{Cidr, Settings};

use super::user::{pattern_text, unix_date};
use super::{Failure, key_home, usage};

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
    /// Copy the keys of the `auth.keys` file into the sql or ldap backend's store (names
    /// already there are left alone), then rename the file to FILE.imported.
    Import,
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
        KeysError::Io { .. } | KeysError::Backend(_) => Failure::Runtime(e.into()),
        _ => Failure::Usage(e.into()),
    }
}

/// Run one `key` command against the config's key home.
pub(crate) fn key(config: &Path, cmd: KeyCommand) -> Result<(), Failure> {
    let settings = Settings::load(config).map_err(Failure::Config)?;
    let (home, runtime) = key_home(&settings)?;
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
            let known = Known::read(&settings)?;
            let entry = KeyEntry {
                senders: key_senders(&known, &runtime, owner.as_deref(), senders)?,
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
            refuse_user_login(&known, &runtime, &entry.name)?;
            let secret = keys::new_secret(&entry.name);
            let entry = KeyEntry {
                hash: keys::hash_secret(&secret),
                ..entry
            };
            let name = entry.name.clone();
            runtime.block_on(home.create(entry)).map_err(keys_failure)?;
            println!("{secret}");
            eprintln!(
                "created key {name} in {}; the secret above is shown only now \
                 (HTTP API: Authorization: Bearer SECRET; SMTP AUTH: login {name}, password the secret)",
                home.describe()
            );
        }
        KeyCommand::List { json } => {
            let (entries, problems) = runtime.block_on(home.list()).map_err(keys_failure)?;
            for p in problems {
                eprintln!("left out (the server cannot use it): {p}");
            }
            list(&entries, now, json)?;
        }
        KeyCommand::Revoke { name } => {
            runtime
                .block_on(home.revoke(&name, now))
                .map_err(keys_failure)?;
            eprintln!("revoked key {name} in {}", home.describe());
        }
        KeyCommand::Import => {
            let (imported, skipped) = runtime
                .block_on(submitd::auth::keyhome::import(&settings, &home))
                .map_err(keys_failure)?;
            for name in &skipped {
                eprintln!(
                    "key {name} is already in {}: left as it is",
                    home.describe()
                );
            }
            if imported.is_empty() && skipped.is_empty() {
                eprintln!(
                    "imported 0 key(s): {} holds none",
                    settings.auth.keys.display()
                );
            } else {
                eprintln!(
                    "imported {} key(s) into {}; {} renamed to .imported",
                    imported.len(),
                    home.describe(),
                    settings.auth.keys.display()
                );
            }
        }
        KeyCommand::Rotate { name, grace } => {
            let secret = keys::new_secret(&name);
            let until = now.saturating_add(grace.as_secs());
            runtime
                .block_on(home.rotate(&name, keys::hash_secret(&secret), until))
                .map_err(keys_failure)?;
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
    known: &Known,
    runtime: &tokio::runtime::Runtime,
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
    let user = owner_user(known, runtime, owner)?;
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

/// The logins `key create` checks against: the users file's entries (whole accounts, or a
/// directory's overlay) and the directory backend, if any; each read once.
struct Known<'a> {
    settings: &'a Settings,
    users: Vec<users::User>,
    directory: Option<DirectoryAuth>,
}

impl Known<'_> {
    fn read(settings: &Settings) -> Result<Known<'_>, Failure> {
        let users = match settings.auth.users.as_deref() {
            Some(path) => load_users(settings, path).map_err(|e| Failure::Usage(e.into()))?,
            None => Vec::new(),
        };
        let directory =
            submitd::auth::directory(settings, None).map_err(|e| Failure::Runtime(e.into()))?;
        Ok(Known {
            settings,
            users,
            directory,
        })
    }

    fn users_file(&self) -> &Path {
        self.settings
            .auth
            .users
            .as_deref()
            .unwrap_or(Path::new("auth.users"))
    }
}

/// The owner as a login of theirs would make them: the users file's entry (file backend), or
/// the directory's answer with the users file's overlay entry, if any.
fn owner_user(
    known: &Known,
    runtime: &tokio::runtime::Runtime,
    owner: &str,
) -> Result<users::User, Failure> {
    let entry = known.users.iter().find(|u| u.login == owner);
    let Some(directory) = &known.directory else {
        return entry.cloned().ok_or_else(|| {
            usage(format!(
                "--owner {owner:?}: no such user in {}",
                known.users_file().display()
            ))
        });
    };
    match runtime
        .block_on(directory.lookup(owner))
        .map_err(|e: BackendError| Failure::Runtime(e.into()))?
    {
        Some(identity) => Ok(directory.user(owner, &identity, entry)),
        None => Err(usage(format!(
            "--owner {owner:?}: no such user in the directory (auth.backend = {:?})",
            directory.name()
        ))),
    }
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
fn refuse_user_login(
    known: &Known,
    runtime: &tokio::runtime::Runtime,
    name: &str,
) -> Result<(), Failure> {
    if known.users.iter().any(|u| u.login == name) {
        return Err(usage(format!(
            "{name:?} is a user's login in {}; pick another key name",
            known.users_file().display()
        )));
    }
    // A directory that can look a login up (not Dovecot, whose protocol cannot). One that
    // does not answer refuses the key: it might shadow a user.
    if let Some(directory) = &known.directory
        && matches!(directory.name(), "sql" | "ldap")
    {
        match runtime.block_on(directory.lookup(name)) {
            Ok(None) => {}
            Ok(Some(_)) => {
                return Err(usage(format!(
                    "{name:?} is a user's login in the directory; pick another key name"
                )));
            }
            Err(e) => {
                return Err(Failure::Runtime(anyhow::anyhow!(
                    "cannot ask the directory whether {name:?} is a user's login (a key of \
                     that name would shadow it): {e}"
                )));
            }
        }
    }
    Ok(())
}

/// `key list`: name, owner, scopes, senders, state; `--json` the stored fields but the hashes.
fn list(list: &[KeyEntry], now: u64, json: bool) -> Result<(), Failure> {
    let state = |e: &KeyEntry| match (e.revoked, e.expires) {
        (Some(t), _) => format!("revoked {}", unix_date(t)),
        (None, Some(t)) if now >= t => format!("expired {}", unix_date(t)),
        (None, Some(t)) => format!("expires {}", unix_date(t)),
        (None, None) => "active".to_owned(),
    };
    if json {
        let items: Vec<serde_json::Value> = list
            .iter()
            .map(|e| {
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
    for e in list {
        println!(
            "{}\t{}\t{}\t{}\t{}",
            e.name,
            submitd::logsafe::Escaped(e.owner.as_deref().unwrap_or("-")),
            e.scopes.join(","),
            e.senders.join(" "),
            state(e)
        );
    }
    Ok(())
}
