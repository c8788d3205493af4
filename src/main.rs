//! The `submitd` binary (DESIGN.md "Command line"): parse the command line, load the config,
//! and either run the server until SIGTERM/SIGINT or do one admin task and exit.
//!
//! Exit codes: 0 ok, 1 runtime error, 2 usage or config error (clap exits 2 on its own).

use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use clap::{Parser, Subcommand};
use submitd::auth::senders::SenderPattern;
use submitd::auth::users::{self, UsersError};
use submitd::config::{ConfigErrors, LogFormat, Settings};
use tokio_util::sync::CancellationToken;

/// How long sessions get to finish after SIGTERM before main gives up on them.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(30);

/// Authenticated SMTP submission server (MSA).
#[derive(Debug, Parser)]
#[command(name = "submitd", version)]
struct Cli {
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
enum Command {
    /// Run the server until SIGTERM or SIGINT.
    Serve,
    /// Validate the config, the certificate and key, and the users file.
    CheckConfig,
    /// Manage the users file.
    #[command(subcommand)]
    User(UserCommand),
    /// Read a password on stdin, print its argon2id PHC string.
    HashPassword,
    /// Certificates for development.
    #[command(subcommand)]
    Cert(CertCommand),
    /// Inspect and steer the queue (safe while the server runs).
    #[command(subcommand)]
    Queue(QueueCommand),
    /// Exit 0 when the server answers a 220 greeting on its first listen address, else 1.
    Health,
    /// DKIM signing keys.
    #[command(subcommand)]
    Dkim(DkimCommand),
    /// Make the running server re-read its config, certificate, users and limits (through the
    /// control socket <queue.dir>/submitd.sock); open sessions are not dropped.
    Reload,
}

#[derive(Debug, Subcommand)]
enum DkimCommand {
    /// Write a new private key (DIR/DOMAIN.SELECTOR.key, mode 0600) and print its DNS TXT
    /// record and the [[dkim]] config entry.
    Keygen {
        domain: String,
        selector: String,
        #[arg(long, value_enum, default_value = "rsa")]
        algorithm: KeyAlgorithm,
        /// RSA key size: 2048, 3072 or 4096.
        #[arg(long, default_value_t = 2048)]
        bits: usize,
        /// Output directory (created mode 0700 when missing).
        #[arg(long, value_name = "DIR", default_value = "dkim")]
        out: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum KeyAlgorithm {
    Rsa,
    Ed25519,
}

#[derive(Debug, Subcommand)]
enum QueueCommand {
    /// One line per queued message, starting with its ID.
    List {
        /// Print a JSON array instead, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Print a message's envelope and headers.
    Show {
        id: String,
        /// Print one JSON object instead, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Make deferred recipients due now: of one message, or of every message.
    Retry { id: Option<String> },
    /// Remove a message from the queue without delivering it.
    Delete { id: String },
    /// Keep a message from being delivered (even when due or retried) until released.
    Hold { id: String },
    /// Let a held message be delivered again, on its usual schedule.
    Release { id: String },
}

#[derive(Debug, Subcommand)]
enum UserCommand {
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

#[derive(Debug, Subcommand)]
enum CertCommand {
    /// Write a self-signed certificate and PKCS#8 key (cert.pem, key.pem).
    SelfSigned {
        /// The name to put in the certificate's SAN.
        #[arg(long)]
        hostname: String,
        /// Output directory (created when missing).
        #[arg(long, value_name = "DIR", default_value = "certs")]
        out: PathBuf,
    },
}

/// Why a command failed, which decides the exit code.
enum Failure {
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

fn usage(message: impl std::fmt::Display) -> Failure {
    Failure::Usage(anyhow!("{message}"))
}

/// A users-file problem: bad content is a config error (2), the rest runtime (1).
fn users_failure(e: UsersError) -> Failure {
    match e {
        UsersError::Invalid { .. } => Failure::Usage(e.into()),
        _ => Failure::Runtime(e.into()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config(errors)) => {
            for e in &errors.0 {
                eprintln!("submitd: {}: {}: {}", e.file.display(), e.key, e.message);
            }
            ExitCode::from(2)
        }
        Err(Failure::Usage(e)) => {
            eprintln!("submitd: {e:#}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(e)) => {
            eprintln!("submitd: {e:#}");
            ExitCode::from(1)
        }
        Err(Failure::Logged(code)) => ExitCode::from(code),
    }
}

fn run(cli: Cli) -> Result<(), Failure> {
    let config = cli.config.as_path();
    match cli.command {
        Command::Serve => serve(config),
        Command::CheckConfig => {
            let settings = Settings::load(config).map_err(Failure::Config)?;
            submitd::artefacts::check_files(&settings).map_err(Failure::Config)?;
            println!("config OK: {}", config.display());
            Ok(())
        }
        Command::User(cmd) => {
            let settings = Settings::load(config).map_err(Failure::Config)?;
            let suspended = submitd::auth::suspend::state_path(&settings.queue.dir);
            user(&settings.auth.users, &suspended, cmd)
        }
        Command::HashPassword => {
            let password = read_line_stdin()?;
            if password.is_empty() {
                return Err(usage("empty password"));
            }
            println!("{}", hash(&password)?);
            Ok(())
        }
        Command::Cert(CertCommand::SelfSigned { hostname, out }) => {
            submitd::config::check_hostname(&hostname)
                .map_err(|e| usage(format!("--hostname: {e}")))?;
            submitd::tls::write_self_signed(&hostname, &out)
                .map_err(|e| Failure::Runtime(e.into()))?;
            println!(
                "wrote {} and {}",
                out.join("cert.pem").display(),
                out.join("key.pem").display()
            );
            Ok(())
        }
        Command::Queue(cmd) => {
            let settings = Settings::load(config).map_err(Failure::Config)?;
            queue(&settings.queue.dir, cmd)
        }
        Command::Health => {
            let settings = Settings::load(config).map_err(Failure::Config)?;
            let report = submitd::health::check(&settings.listen, submitd::health::TIMEOUT)
                .map_err(|e| Failure::Runtime(anyhow!("unhealthy: {e}")))?;
            println!("healthy: {report}");
            Ok(())
        }
        Command::Dkim(DkimCommand::Keygen {
            domain,
            selector,
            algorithm,
            bits,
            out,
        }) => dkim_keygen(&domain, &selector, algorithm, bits, &out),
        Command::Reload => {
            use submitd::control_socket::{self, Request};
            let settings = Settings::load(config).map_err(Failure::Config)?;
            let reply = control_socket::request(
                &settings.queue.dir,
                Request::Reload,
                control_socket::CLIENT_TIMEOUT,
            )
            .map_err(|e| Failure::Runtime(e.into()))?;
            println!("{reply}");
            Ok(())
        }
    }
}

/// `submitd dkim keygen`: the key file, then on stdout the zone line and the config entry.
fn dkim_keygen(
    domain: &str,
    selector: &str,
    algorithm: KeyAlgorithm,
    bits: usize,
    out: &Path,
) -> Result<(), Failure> {
    use submitd::dkim::{self, Algorithm};
    let domain = domain
        .strip_suffix('.')
        .unwrap_or(domain)
        .to_ascii_lowercase();
    let selector = selector.to_ascii_lowercase();
    submitd::config::check_hostname(&domain).map_err(|e| usage(format!("DOMAIN: {e}")))?;
    submitd::config::check_selector(&selector).map_err(|e| usage(format!("SELECTOR: {e}")))?;
    let algorithm = match algorithm {
        KeyAlgorithm::Rsa => Algorithm::Rsa,
        KeyAlgorithm::Ed25519 => Algorithm::Ed25519,
    };
    if algorithm == Algorithm::Rsa && !dkim::RSA_BITS.contains(&bits) {
        return Err(usage(format!("--bits {bits}: use 2048, 3072 or 4096")));
    }
    let key = dkim::generate(algorithm, bits).map_err(|e| Failure::Runtime(anyhow!(e)))?;
    let path = dkim::write_key(out, &domain, &selector, &key.pem)
        .map_err(|e| Failure::Runtime(e.into()))?;
    let shown = std::path::absolute(&path).unwrap_or(path);
    eprintln!("wrote {}", shown.display());
    println!("; DNS record (publish it before the key signs mail):");
    println!("{}", dkim::zone_line(&domain, &selector, &key.record));
    println!();
    println!("# submitd.toml:");
    println!("[[dkim]]");
    println!("domain = {}", toml_string(&domain));
    println!("selector = {}", toml_string(&selector));
    println!("key = {}", toml_string(&shown.display().to_string()));
    Ok(())
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// `submitd queue ...`: thin wrappers over `submitd::queue::control`, which documents why this
/// is safe beside a running server. Unknown or malformed IDs exit 1.
fn queue(dir: &Path, cmd: QueueCommand) -> Result<(), Failure> {
    use submitd::queue::Spool;
    use submitd::queue::control::{self, ControlError};

    let spool = Spool::attach(dir);
    let now = submitd::clock::unix_now();
    let failed = |e: ControlError| Failure::Runtime(e.into());
    let id = |text: &str| control::parse_id(text).map_err(failed);
    match cmd {
        QueueCommand::List { json } => {
            let entries = control::list(&spool).map_err(|e| Failure::Runtime(e.into()))?;
            if json {
                let value = control::to_json(&entries, now);
                println!("{}", serde_json::to_string_pretty(&value).context("JSON")?);
            } else if entries.is_empty() {
                eprintln!("queue is empty");
            } else {
                for entry in &entries {
                    println!("{}", control::format_line(entry, now));
                }
            }
        }
        QueueCommand::Show { id: text, json } => {
            let shown = control::show(&spool, &id(&text)?).map_err(failed)?;
            if json {
                let value = control::shown_json(&shown, now);
                println!("{}", serde_json::to_string_pretty(&value).context("JSON")?);
            } else {
                print!("{}", show_text(&shown, now));
            }
        }
        QueueCommand::Retry { id: None } => {
            // A running server flushes its queue in memory, like `postqueue -f`: thousands of
            // envelope rewrites (each with an fsync) would delay the very retry asked for.
            use submitd::control_socket::{self, ClientError, Request};
            match control_socket::request(dir, Request::Flush, control_socket::CLIENT_TIMEOUT) {
                Ok(_) => {
                    println!("asked the running server to attempt every deferred message now");
                    return Ok(());
                }
                Err(e @ ClientError::NotRunning { .. }) => {
                    eprintln!("submitd: {e}; making deferred recipients due in the envelopes")
                }
                Err(e) => eprintln!("submitd: {e}; rewriting the envelopes instead"),
            }
            let r = control::retry(&spool, None, now).map_err(failed)?;
            println!(
                "{} recipient(s) of {} message(s) due now",
                r.recipients, r.messages
            );
            if r.skipped > 0 {
                eprintln!("submitd: {} unreadable message(s) skipped", r.skipped);
            }
        }
        QueueCommand::Retry { id: Some(text) } => {
            let id = id(&text)?;
            let r = control::retry(&spool, Some(&id), now).map_err(failed)?;
            if r.recipients == 0 {
                println!("{id}: no deferred recipients");
            } else {
                println!("{id}: {} recipient(s) due now", r.recipients);
            }
            if spool.load_envelope(&id).is_ok_and(|e| e.held) {
                eprintln!("submitd: {id} is on hold: `submitd queue release {id}` to deliver it");
            }
        }
        QueueCommand::Hold { id: text } => {
            let id = id(&text)?;
            if control::set_held(&spool, &id, true).map_err(failed)? {
                println!("{id}: on hold");
            } else {
                println!("{id}: already on hold");
            }
        }
        QueueCommand::Release { id: text } => {
            let id = id(&text)?;
            if control::set_held(&spool, &id, false).map_err(failed)? {
                println!("{id}: released");
            } else {
                println!("{id}: was not on hold");
            }
        }
        QueueCommand::Delete { id: text } => {
            let id = id(&text)?;
            control::delete(&spool, &id).map_err(failed)?;
            println!("{id}: deleted");
        }
    }
    Ok(())
}

/// `queue show`: the envelope fields, one per line, then the header section.
fn show_text(shown: &submitd::queue::control::Shown, now: u64) -> String {
    use std::fmt::Write as _;
    use submitd::queue::control::{human_age, printable, state_name};

    let e = &shown.envelope;
    let date = time::OffsetDateTime::from_unix_timestamp(e.received_at as i64)
        .map(submitd::submission::rfc5322_date)
        .unwrap_or_else(|_| e.received_at.to_string());
    let mut s = String::new();
    let _ = writeln!(s, "id: {}", e.id);
    let _ = writeln!(s, "user: {}", printable(&e.user, usize::MAX));
    let sender = if e.sender.is_empty() { "<>" } else { &e.sender };
    let _ = writeln!(s, "sender: {}", printable(sender, usize::MAX));
    let age = human_age(now.saturating_sub(e.received_at));
    let _ = writeln!(s, "received: {date} ({age} ago)");
    let _ = writeln!(s, "helo: {}", printable(&e.helo, usize::MAX));
    let _ = writeln!(s, "size: {}", e.size);
    let _ = writeln!(s, "smtputf8: {}", e.smtputf8);
    let _ = writeln!(s, "8bitmime: {}", e.eight_bit);
    for r in &e.recipients {
        let _ = write!(
            s,
            "recipient: {} state={} attempts={}",
            printable(&r.address, usize::MAX),
            state_name(r.state),
            r.attempts
        );
        if let Some(t) = r.next_attempt {
            let when = if t <= now {
                "now".to_string()
            } else {
                format!("in {}", human_age(t - now))
            };
            let _ = write!(s, " next={when}");
        }
        if let Some(reply) = &r.last_reply {
            let _ = write!(s, " last={}", printable(reply, usize::MAX));
        }
        s.push('\n');
    }
    s.push('\n');
    for line in String::from_utf8_lossy(&shown.headers).lines() {
        let _ = writeln!(s, "{}", printable(line, usize::MAX));
    }
    s
}

/// Unix seconds as an RFC 5322 date (the seconds themselves if out of range).
fn unix_date(secs: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs as i64)
        .map(submitd::submission::rfc5322_date)
        .unwrap_or_else(|_| secs.to_string())
}

fn user(path: &Path, suspended: &Path, cmd: UserCommand) -> Result<(), Failure> {
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
            let list = users::load(path).map_err(users_failure)?;
            if !list.iter().any(|u| u.login == login) {
                return Err(users_failure(UsersError::NoSuchUser(login)));
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

fn pattern_text(p: &SenderPattern) -> String {
    match p {
        SenderPattern::Address { local, domain } => format!("{local}@{domain}"),
        SenderPattern::Domain(domain) => format!("@{domain}"),
    }
}

fn hash(password: &str) -> Result<String, Failure> {
    submitd::auth::verify::hash_password(password)
        .map_err(|e| Failure::Runtime(anyhow!("hashing the password: {e}")))
}

/// One line from stdin without its trailing CR/LF.
fn read_line_stdin() -> Result<String, Failure> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading stdin")?;
    while line.ends_with('\n') || line.ends_with('\r') {
        line.pop();
    }
    Ok(line)
}

/// `--password-stdin` or a non-TTY: one line from stdin. A TTY: prompt twice, both must match.
fn read_password(from_stdin: bool) -> Result<String, Failure> {
    let password = if !from_stdin && std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ").context("reading the password")?;
        let again =
            rpassword::prompt_password("Password (again): ").context("reading the password")?;
        if first != again {
            return Err(usage("passwords do not match"));
        }
        first
    } else {
        read_line_stdin()?
    };
    if password.is_empty() {
        return Err(usage("empty password"));
    }
    Ok(password)
}

/// `serve`: the config first (its errors go to stderr as plain lines, exit 2), then logging in
/// the configured `log.format`; from then on every error is a log event.
fn serve(config: &Path) -> Result<(), Failure> {
    let settings = Settings::load(config).map_err(Failure::Config)?;
    init_logging(settings.log.format);
    let result = (|| {
        submitd::dev::bootstrap(&settings)?;
        submitd::artefacts::check_files(&settings).map_err(Failure::Config)?;
        raise_open_files_limit(settings.limits.max_connections);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the tokio runtime")?;
        runtime.block_on(run_server(settings.clone()))?;
        Ok(())
    })();
    match result {
        Err(Failure::Runtime(e)) if settings.log.format == LogFormat::Json => {
            tracing::error!(error = format!("{e:#}"), "stopped on an error");
            Err(Failure::Logged(1))
        }
        Err(Failure::Config(errors)) if settings.log.format == LogFormat::Json => {
            for e in &errors.0 {
                tracing::error!(file = %e.file.display(), key = %e.key, error = %e.message, "config error");
            }
            Err(Failure::Logged(2))
        }
        other => other,
    }
}

/// Log to stderr: `text`, human-readable (ANSI colour only on a terminal), or `json`, one object
/// per line with the event's fields as top-level keys and the session's (`conn`, `peer`,
/// `port`) under `span`. `RUST_LOG` sets the filter; default `info`.
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            // Colour only for a person at a terminal: journald, files and pipes get plain text.
            .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
            .init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
}

/// Raise the soft limit on open files to the hard limit: every connection is a descriptor, and
/// the usual soft default (1024) would refuse connections long before `limits.max_connections`.
fn raise_open_files_limit(max_connections: usize) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed by reference.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "cannot read the open files limit");
        return;
    }
    let before = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            tracing::warn!(error = %std::io::Error::last_os_error(), "cannot raise the open files limit");
            lim.rlim_cur = before;
        }
    }
    // Listeners, the spool, outbound connections and logs need descriptors too.
    let needed = max_connections as u64 + 64;
    if lim.rlim_cur < needed {
        tracing::warn!(
            open_files = lim.rlim_cur,
            max_connections,
            "the open files limit is below limits.max_connections; raise the hard limit (LimitNOFILE=)"
        );
    } else {
        tracing::info!(open_files = lim.rlim_cur, was = before, "open files limit");
    }
}

async fn run_server(settings: Settings) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};

    let queue_dir = settings.queue.dir.clone();
    let server = submitd::server::Server::bind(Arc::new(settings)).await?;
    // Handlers first, so that a signal arriving while the server starts is not lost.
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let shutdown = CancellationToken::new();
    // Every handler before the "listening" lines and the control socket: whoever waits for
    // them may signal at once, and the default action of SIGHUP, SIGUSR1 or SIGTERM would end
    // the process.
    submitd::reload::watch_sighup(server.reloader(), shutdown.clone())
        .context("installing the SIGHUP handler")?;
    submitd::reload::watch_flush(server.queue(), shutdown.clone())
        .context("installing the SIGUSR1 handler")?;
    for a in server.submission_addrs() {
        tracing::info!(kind = "submission", addr = %a, "listening");
    }
    for a in server.submissions_addrs() {
        tracing::info!(kind = "submissions", addr = %a, "listening");
    }
    if let Some(a) = server.metrics_addr() {
        tracing::info!(kind = "metrics", addr = %a, "listening");
    }
    let pid_file = submitd::pidfile::PidFile::acquire(&queue_dir)?;
    // Bound only under the pid file's lock: a socket file already there is stale.
    let control = submitd::listener::control::ControlSocket::bind(&queue_dir, &pid_file)
        .context("creating the control socket")
        .and_then(|socket| {
            socket
                .serve(server.reloader(), server.queue(), shutdown.clone())
                .context("serving the control socket")
        });
    let control = match control {
        Ok(task) => task,
        Err(e) => {
            pid_file.remove();
            return Err(e);
        }
    };
    let result = serve_until_signal(server, shutdown.clone(), &mut term, &mut int).await;
    shutdown.cancel();
    // The task removes the socket file when it sees the cancellation.
    let _ = tokio::time::timeout(Duration::from_secs(5), control).await;
    pid_file.remove();
    result
}

async fn serve_until_signal(
    server: submitd::server::Server,
    shutdown: CancellationToken,
    term: &mut tokio::signal::unix::Signal,
    int: &mut tokio::signal::unix::Signal,
) -> anyhow::Result<()> {
    let mut task = tokio::spawn(server.run(shutdown.clone()));
    tokio::select! {
        _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutting down"),
        _ = int.recv() => tracing::info!(signal = "SIGINT", "shutting down"),
        result = &mut task => {
            // The server stopped without being asked: that is an error even if it says Ok.
            result.context("server task")??;
            return Err(anyhow!("server stopped unexpectedly"));
        }
    }
    shutdown.cancel();
    match tokio::time::timeout(SHUTDOWN_DEADLINE, task).await {
        Ok(result) => result.context("server task")?,
        Err(_) => Err(anyhow!(
            "sessions did not finish within {SHUTDOWN_DEADLINE:?} of shutdown"
        )),
    }
}
