//! `submitd user ...`: the users file and the suspension state.

use std::path::Path;

use anyhow::Context;
use clap::Subcommand;
use submitd::auth::senders::SenderPattern;
use submitd::auth::users::{self, UsersError};
use submitd::config::Settings;

use super::password::{hash, read_password};
use super::{Failure, usage};

#[derive(Debug, Subcommand)]
pub(crate) enum UserCommand {
    /// Add a user (prompts twice on a TTY).
    Add {
        login: String,
        /// An address (alice@example.test) or domain (@example.test) the user may send as;
        /// repeatable; default: the login.
        #[arg(long = "sender", value_name = "PATTERN")]
        senders: Vec<String>,
        /// Read the password as one line from stdin.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Change a user's password.
    Passwd {
        login: String,
        /// Read the password as one line from stdin.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Remove a user.
    Del { login: String },
    /// List users and the senders they may use, and which are suspended.
    List {
        /// Print a JSON array instead, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Suspend a user: AUTH still works, every MAIL FROM gets 550 (effective while the server
    /// runs, at the user's next login).
    Suspend {
        login: String,
        /// Why, kept in the suspension state for the next administrator.
        #[arg(long, default_value = "suspended by the administrator")]
        reason: String,
    },
    /// Lift a suspension (effective while the server runs, at the user's next login).
    Unsuspend { login: String },
}

/// Load the config for the users file and the suspension state, then run the command.
pub(crate) fn user(config: &Path, cmd: UserCommand) -> Result<(), Failure> {
    let settings = Settings::load(config).map_err(Failure::Config)?;
    let suspended = submitd::auth::suspend::state_path(&settings.queue.dir);
    if let Some(shared) = submitd::state::from_settings(&settings.state, None)
        .map_err(|e| Failure::Runtime(e.into()))?
        && matches!(
            cmd,
            UserCommand::Suspend { .. } | UserCommand::Unsuspend { .. } | UserCommand::List { .. }
        )
    {
        return shared_suspensions(&settings, &shared, &suspended, cmd);
    }
    // Whether `login` names an API key; an error when the keys cannot be read.
    let is_key = |login: &str| -> Result<bool, Failure> {
        let (home, runtime) = super::key_home(&settings)?;
        let (keys, _) = runtime.block_on(home.list()).map_err(|e| {
            Failure::Runtime(anyhow::anyhow!(
                "cannot read the API keys in {} to check that {login:?} is not one: {e}",
                home.describe()
            ))
        })?;
        Ok(keys.iter().any(|k| k.name == login))
    };
    // Suspending must work in an outage of the key store: then as a login.
    if let UserCommand::Suspend { login, .. } = &cmd
        && is_key(login).unwrap_or(false)
    {
        // An API key's name: suspended like a login (its MAIL FROM and API posts refused).
        return run(Path::new(""), &suspended, cmd, false);
    }
    // A login named like a key would be shadowed by it at AUTH: refused, also when the keys
    // cannot be read to tell.
    if let UserCommand::Add { login, .. } = &cmd
        && is_key(login)?
    {
        return Err(usage(format!(
            "{login:?} is an API key's name (keys are checked first at AUTH); pick another login"
        )));
    }
    let backend = settings.auth.backend.name();
    match (&settings.auth.users, &cmd) {
        (_, UserCommand::List { json }) if backend != "file" => {
            list_directory_backend(settings.auth.users.as_deref(), &suspended, *json)
        }
        (_, UserCommand::Suspend { .. } | UserCommand::Unsuspend { .. }) if backend != "file" => {
            // Suspension is submitd's own state: any login the directory may know.
            run(Path::new(""), &suspended, cmd, false)
        }
        (Some(path), _) if backend == "file" => run(path, &suspended, cmd, true),
        _ => Err(usage(format!(
            "auth.backend = {backend:?}: accounts and passwords live in that directory, \
             so add, change and remove them there (`user list`, `suspend` and `unsuspend` \
             still work; suspension is submitd's own state)"
        ))),
    }
}

/// `user suspend|unsuspend|list` with `[state] backend = "redis"`: the suspension set is the
/// store's, shared by every replica (which see a change within about a second).
fn shared_suspensions(
    settings: &Settings,
    shared: &submitd::state::Shared,
    suspended_file: &Path,
    cmd: UserCommand,
) -> Result<(), Failure> {
    use submitd::state::StoredSuspension;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Runtime(e.into()))?;
    let store = shared.store();
    let fail = |e: submitd::state::StoreError| {
        Failure::Runtime(anyhow::anyhow!(
            "{e} (state.url {}); nothing changed",
            "in the config"
        ))
    };
    match cmd {
        UserCommand::Suspend { login, reason } => {
            if login.trim().is_empty() || login.chars().any(char::is_control) {
                return Err(usage(format!("bad login {login:?}")));
            }
            let entry = StoredSuspension {
                since: submitd::clock::unix_now(),
                reason,
            };
            if runtime
                .block_on(store.suspend(&login, &entry))
                .map_err(fail)?
            {
                eprintln!("suspended {login} on every replica (shared state store)");
            } else {
                eprintln!("{login} was already suspended");
            }
        }
        UserCommand::Unsuspend { login } => {
            runtime.block_on(store.unsuspend(&login)).map_err(fail)?;
            // A suspension from before the store (this host's file) is lifted too.
            let _ = submitd::auth::suspend::unsuspend(suspended_file, &login);
            eprintln!("lifted the suspension of {login} on every replica (shared state store)");
        }
        UserCommand::List { json } => {
            let set = runtime.block_on(store.suspensions()).map_err(fail)?;
            let mut all = submitd::auth::suspend::load(suspended_file).unwrap_or_default();
            for (login, s) in set {
                all.insert(
                    login,
                    submitd::auth::suspend::Suspension {
                        since: s.since,
                        reason: s.reason,
                    },
                );
            }
            let list = match &settings.auth.users {
                Some(path) if settings.auth.backend.name() == "file" => {
                    users::load(path).map_err(users_failure)?
                }
                Some(path) => users::load_overlay(path).map_err(users_failure)?,
                None => Vec::new(),
            };
            print_list(&list, &all, json)?;
        }
        _ => unreachable!("only suspend, unsuspend and list come here"),
    }
    Ok(())
}

/// The users and every suspended login the users file does not name.
fn print_list(
    list: &[users::User],
    suspensions: &std::collections::BTreeMap<String, submitd::auth::suspend::Suspension>,
    json: bool,
) -> Result<(), Failure> {
    let named: std::collections::HashSet<&str> = list.iter().map(|u| u.login.as_str()).collect();
    if json {
        let mut value = users_json(list, suspensions);
        if let serde_json::Value::Array(items) = &mut value {
            for (login, s) in suspensions
                .iter()
                .filter(|(l, _)| !named.contains(l.as_str()))
            {
                items.push(serde_json::json!({
                    "login": login, "senders": [], "limits": {}, "suspended": s,
                }));
            }
        }
        println!("{}", serde_json::to_string_pretty(&value).context("JSON")?);
        return Ok(());
    }
    for u in list {
        let senders: Vec<String> = u.senders.iter().map(pattern_text).collect();
        match suspensions.get(&u.login) {
            Some(s) => println!(
                "{}\t{}\t(suspended since {}: {})",
                u.login,
                senders.join(" "),
                unix_date(s.since),
                s.reason
            ),
            None => println!("{}\t{}", u.login, senders.join(" ")),
        }
    }
    for (login, s) in suspensions
        .iter()
        .filter(|(l, _)| !named.contains(l.as_str()))
    {
        println!(
            "{login}\t-\t(suspended since {}: {})",
            unix_date(s.since),
            s.reason
        );
    }
    Ok(())
}

/// `user list` beside a directory backend: the users-file entries that add senders or limits
/// (if there is a file), then every suspended login the file does not name.
fn list_directory_backend(
    users: Option<&Path>,
    suspended: &Path,
    json: bool,
) -> Result<(), Failure> {
    let suspensions =
        submitd::auth::suspend::load(suspended).map_err(|e| Failure::Runtime(e.into()))?;
    let list = match users {
        Some(path) => users::load_overlay(path).map_err(users_failure)?,
        None => Vec::new(),
    };
    print_list(&list, &suspensions, json)
}

/// A users-file problem: bad content is a config error (2), the rest runtime (1).
fn users_failure(e: UsersError) -> Failure {
    match e {
        UsersError::Invalid { .. } => Failure::Usage(e.into()),
        _ => Failure::Runtime(e.into()),
    }
}

/// `file_backend`: whether `path` is the users file that holds the accounts (suspending then
/// checks the login exists).
fn run(path: &Path, suspended: &Path, cmd: UserCommand, file_backend: bool) -> Result<(), Failure> {
    use submitd::auth::suspend;
    let suspend_failure = |e: suspend::SuspendError| Failure::Runtime(e.into());
    match cmd {
        UserCommand::Add {
            login,
            senders,
            password_stdin,
        } => {
            if login.trim().is_empty() || login.chars().any(char::is_whitespace) {
                return Err(usage(format!("bad login {login:?}")));
            }
            for s in &senders {
                SenderPattern::parse(s).map_err(|e| usage(format!("--sender {s:?}: {e}")))?;
            }
            // Refuse before asking for a password that would be thrown away.
            match users::load(path) {
                Ok(list) if list.iter().any(|u| u.login == login) => {
                    return Err(users_failure(UsersError::Exists(login)));
                }
                Ok(_) => {}
                Err(UsersError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(users_failure(e)),
            }
            let phc = hash(&read_password(password_stdin)?)?;
            users::add_user(path, &login, &phc, &senders).map_err(users_failure)?;
            eprintln!("added {login} to {}", path.display());
        }
        UserCommand::Passwd {
            login,
            password_stdin,
        } => {
            let list = users::load(path).map_err(users_failure)?;
            if !list.iter().any(|u| u.login == login) {
                return Err(users_failure(UsersError::NoSuchUser(login)));
            }
            let phc = hash(&read_password(password_stdin)?)?;
            users::set_password(path, &login, &phc).map_err(users_failure)?;
            eprintln!("changed the password of {login} in {}", path.display());
        }
        UserCommand::Del { login } => {
            users::remove_user(path, &login).map_err(users_failure)?;
            eprintln!("removed {login} from {}", path.display());
        }
        UserCommand::List { json } => {
            let suspensions = suspend::load(suspended).map_err(suspend_failure)?;
            let list = users::load(path).map_err(users_failure)?;
            if json {
                let value = users_json(&list, &suspensions);
                println!("{}", serde_json::to_string_pretty(&value).context("JSON")?);
                return Ok(());
            }
            for u in list {
                let senders: Vec<String> = u.senders.iter().map(pattern_text).collect();
                match suspensions.get(&u.login) {
                    Some(s) => println!(
                        "{}\t{}\t(suspended since {}: {})",
                        u.login,
                        senders.join(" "),
                        unix_date(s.since),
                        s.reason
                    ),
                    None => println!("{}\t{}", u.login, senders.join(" ")),
                }
            }
        }
        UserCommand::Suspend { login, reason } => {
            if file_backend {
                let list = users::load(path).map_err(users_failure)?;
                if !list.iter().any(|u| u.login == login) {
                    return Err(users_failure(UsersError::NoSuchUser(login)));
                }
            } else if login.trim().is_empty() || login.chars().any(char::is_control) {
                return Err(usage(format!("bad login {login:?}")));
            }
            if suspend::suspend(suspended, &login, &reason).map_err(suspend_failure)? {
                eprintln!("suspended {login} ({})", suspended.display());
            } else {
                eprintln!("{login} was already suspended");
            }
        }
        UserCommand::Unsuspend { login } => {
            suspend::unsuspend(suspended, &login).map_err(suspend_failure)?;
            eprintln!("lifted the suspension of {login} ({})", suspended.display());
        }
    }
    Ok(())
}

/// `user list --json`: an array of `{"login", "senders", "limits", "suspended"}`; `limits`
/// holds only the per-user overrides set in the users file, `suspended` is `null` or
/// `{"since", "reason"}`. Never the password hash.
fn users_json(
    list: &[users::User],
    suspensions: &std::collections::BTreeMap<String, submitd::auth::suspend::Suspension>,
) -> serde_json::Value {
    let items = list
        .iter()
        .map(|u| {
            let l = &u.limits;
            let mut limits = serde_json::Map::new();
            for (key, value) in [
                ("messages_per_hour", l.messages_per_hour),
                ("messages_per_day", l.messages_per_day),
                ("recipients_per_hour", l.recipients_per_hour),
                ("recipients_per_day", l.recipients_per_day),
                ("suspend_recipients_per_hour", l.suspend_recipients_per_hour),
            ] {
                if let Some(v) = value {
                    limits.insert(key.into(), v.into());
                }
            }
            serde_json::json!({
                "login": u.login,
                "senders": u.senders.iter().map(pattern_text).collect::<Vec<_>>(),
                "limits": limits,
                "suspended": suspensions.get(&u.login),
            })
        })
        .collect();
    serde_json::Value::Array(items)
}

pub(super) fn pattern_text(p: &SenderPattern) -> String {
    match p {
        SenderPattern::Address { local, domain } => format!("{local}@{domain}"),
        SenderPattern::Domain(domain) => format!("@{domain}"),
    }
}

/// Unix seconds as an RFC 5322 date (the seconds themselves if out of range).
pub(super) fn unix_date(secs: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs as i64)
        .map(submitd::submission::rfc5322_date)
        .unwrap_or_else(|_| secs.to_string())
}
