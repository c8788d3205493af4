//! `relay.mode = "capture"`: delivery for development and tests that never leaves the machine.
//!
//! Each attempt writes the message exactly as an SMTP attempt would have sent it (the spooled
//! bytes, `Received:` on top) to `relay.capture_dir/ID.eml`, then `ID.json` with the envelope
//! and one result per recipient, each file atomically (temp file, fsync, rename; then the
//! directory is fsynced). Every recipient is then `Delivered`, so the scheduler removes the
//! message and logs and counts it like any delivery (`relay=capture`). A write that fails
//! defers the recipients, as a failed connection would.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::stored::{self, PIECE};
use super::{DeliveryError, Job, Outcome};
use crate::queue::spool::StoredMessage;

/// The `relay` value in delivery log lines and outcomes.
pub const HOST: &str = "capture";

/// Create the capture directory (mode 0700, missing parents with the default mode).
pub fn create_dir(dir: &Path) -> Result<(), DeliveryError> {
    let fail = |e: io::Error| DeliveryError(format!("relay.capture_dir: {}: {e}", dir.display()));
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(fail)?;
    }
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(fail(e)),
    }
}

/// Write `job` into `dir`; one outcome per recipient, in order.
pub async fn deliver(dir: &Path, job: &Job<'_>) -> Vec<Outcome> {
    let n = job.recipients.len();
    let id = job.queue_id;
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        let reply = format!("451 4.3.0 capture: queue ID {id:?} is not a safe file name");
        return vec![Outcome::Deferred { host: None, reply }; n];
    }
    let json = record(job);
    let (dir, id, message) = (dir.to_path_buf(), id.to_string(), job.message.clone());
    let written = tokio::task::spawn_blocking(move || write(&dir, &id, &message, &json)).await;
    match written {
        Ok(Ok(eml)) => {
            let reply = format!("250 2.0.0 captured as {}", eml.display());
            vec![
                Outcome::Delivered {
                    host: HOST.into(),
                    reply,
                    // The capture directory is no DSN-capable next hop: a NOTIFY=SUCCESS
                    // recipient gets a `relayed` report.
                    dsn_passed: false,
                };
                n
            ]
        }
        Ok(Err(e)) => {
            let reply = format!("451 4.3.0 capture: {e}");
            vec![
                Outcome::Deferred {
                    host: Some(HOST.into()),
                    reply
                };
                n
            ]
        }
        Err(e) => {
            let reply = format!("451 4.3.0 capture task failed: {e}");
            vec![
                Outcome::Deferred {
                    host: Some(HOST.into()),
                    reply
                };
                n
            ]
        }
    }
}

/// `ID.json`: the envelope and a result per recipient.
fn record(job: &Job<'_>) -> Vec<u8> {
    let env = job.envelope;
    let value = serde_json::json!({
        "id": job.queue_id,
        "sender": job.sender,
        "recipients": job.recipients,
        "user": env.map(|e| e.user.as_str()),
        "received_at": env.map(|e| e.received_at),
        "size": env.map(|e| e.size),
        "smtputf8": job.smtputf8,
        "8bitmime": job.eight_bit,
        "results": job
            .recipients
            .iter()
            .map(|r| serde_json::json!({ "recipient": r, "result": "delivered" }))
            .collect::<Vec<_>>(),
    });
    let mut bytes = serde_json::to_vec_pretty(&value).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

/// Blocking: `ID.eml` then `ID.json` (its presence says the capture is complete), then the
/// directory fsync. Returns the `.eml` path.
fn write(dir: &Path, id: &str, message: &StoredMessage, json: &[u8]) -> io::Result<PathBuf> {
    let eml = dir.join(format!("{id}.eml"));
    write_atomic(&eml, |f| copy_message(message, f))?;
    write_atomic(&dir.join(format!("{id}.json")), |f| f.write_all(json))?;
    File::open(dir)?.sync_all()?;
    Ok(eml)
}

/// Copy the message into `out` one piece at a time: never the whole message in memory.
fn copy_message(message: &StoredMessage, out: &mut File) -> io::Result<()> {
    let len = message.len();
    let mut buf = vec![0u8; len.min(PIECE as u64) as usize];
    let mut pos = 0;
    while pos < len {
        let want = (len - pos).min(buf.len() as u64) as usize;
        stored::read_exact_at(message, pos, &mut buf[..want])?;
        out.write_all(&buf[..want])?;
        pos += want as u64;
    }
    Ok(())
}

/// Write a file through `fill` under a temp name, fsync it and rename it into place.
fn write_atomic(path: &Path, fill: impl FnOnce(&mut File) -> io::Result<()>) -> io::Result<()> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        fill(&mut f)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}
