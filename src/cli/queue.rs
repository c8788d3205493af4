//! `submitd queue ...`.

use std::path::Path;

use anyhow::Context;
use clap::Subcommand;
use submitd::config::Settings;

use super::Failure;

#[derive(Debug, Subcommand)]
pub(crate) enum QueueCommand {
    /// One line per queued message, starting with its ID.
    List {
        /// Print JSON Lines instead (one JSON object per message and line), for scripts.
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

/// Load the config for `queue.dir`, then run the command.
pub(crate) fn queue(config: &Path, cmd: QueueCommand) -> Result<(), Failure> {
    let settings = Settings::load(config).map_err(Failure::Config)?;
    run(&settings.queue.dir, cmd)
}

/// `submitd queue ...`: thin wrappers over `submitd::queue::control`, which documents why this
/// is safe beside a running server. Unknown or malformed IDs exit 1.
fn run(dir: &Path, cmd: QueueCommand) -> Result<(), Failure> {
    use submitd::queue::Spool;
    use submitd::queue::control::{self, ControlError};

    let spool = Spool::attach(dir);
    let now = submitd::clock::unix_now();
    let failed = |e: ControlError| Failure::Runtime(e.into());
    let id = |text: &str| control::parse_id(text).map_err(failed);
    match cmd {
        QueueCommand::List { json } => list(&spool, json, now)?,
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
            tell_server(dir);
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
            if r.messages > 0 {
                tell_server(dir);
            }
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
                tell_server(dir);
                println!("{id}: on hold");
            } else {
                println!("{id}: already on hold");
            }
        }
        QueueCommand::Release { id: text } => {
            let id = id(&text)?;
            if control::set_held(&spool, &id, false).map_err(failed)? {
                tell_server(dir);
                println!("{id}: released");
            } else {
                println!("{id}: was not on hold");
            }
        }
        QueueCommand::Delete { id: text } => {
            let id = id(&text)?;
            control::delete(&spool, &id).map_err(failed)?;
            tell_server(dir);
            println!("{id}: deleted");
        }
    }
    Ok(())
}

/// After a change to the queue files: ask a running server to scan the queue now (its
/// periodic scan would notice too, later on a big queue). No server running is fine: it reads
/// the queue when it starts.
fn tell_server(dir: &Path) {
    use submitd::control_socket::{self, ClientError, Request};
    match control_socket::request(dir, Request::Rescan, control_socket::CLIENT_TIMEOUT) {
        Ok(_) | Err(ClientError::NotRunning { .. }) => {}
        Err(e) => eprintln!(
            "submitd: {e}; a running server sees the change at its next periodic queue scan"
        ),
    }
}

/// `queue list`: one line per message, written as each envelope is read (a million-message
/// queue is never held in memory). A reader that goes away (`| head`) ends the listing quietly.
fn list(spool: &submitd::queue::Spool, json: bool, now: u64) -> Result<(), Failure> {
    use std::io::Write as _;
    use submitd::queue::control;

    let entries = control::entries(spool).map_err(|e| Failure::Runtime(e.into()))?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut any = false;
    let written = (|| {
        for entry in entries {
            any = true;
            if json {
                serde_json::to_writer(&mut out, &control::entry_json(&entry, now))?;
                out.write_all(b"\n")?;
            } else {
                writeln!(out, "{}", control::format_line(&entry, now))?;
            }
        }
        out.flush()
    })();
    match written {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
        other => other.context("writing the listing")?,
    }
    if !any && !json {
        eprintln!("queue is empty");
    }
    if !json {
        print_throttled(spool.dir(), now);
    }
    Ok(())
}

/// The trailing section of `queue list`: the destinations the running server holds or slows
/// (asked over the control socket). Nothing when no server runs or none is throttled.
fn print_throttled(dir: &Path, now: u64) {
    use submitd::control_socket::{self, Request, decode_throttled};
    use submitd::queue::control::{human_age, printable};

    let Ok(reply) =
        control_socket::request(dir, Request::Throttled, control_socket::CLIENT_TIMEOUT)
    else {
        return;
    };
    let (list, more) = decode_throttled(&reply);
    if list.is_empty() && more == 0 {
        return;
    }
    println!("throttled destinations:");
    for t in list {
        let name = printable(&t.destination, 255);
        match t.until {
            Some(until) => {
                let date = time::OffsetDateTime::from_unix_timestamp(until as i64)
                    .ok()
                    .and_then(|d| {
                        d.format(&time::format_description::well_known::Rfc3339)
                            .ok()
                    })
                    .unwrap_or_else(|| until.to_string());
                let left = human_age(until.saturating_sub(now));
                println!(
                    "  {name} until {date} (in {left}) (concurrency {})",
                    t.concurrency
                );
            }
            None => println!("  {name} recovering (concurrency {})", t.concurrency),
        }
    }
    if more > 0 {
        println!("  ... and {more} more");
    }
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
