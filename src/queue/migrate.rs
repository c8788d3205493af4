//! Start-up migration of a version 1 queue (two files per message: `ID.env`, the envelope
//! JSON, and `ID.msg`, the message) to version 2 (one `ID.q`, [`super::qfile`]).
//!
//! Per message, crash-safe at every step (the spool's `FaultyIo` and a test that kills the
//! process at each write prove it):
//!
//! 1. `ID.q` already exists: an earlier run got past its commit; go to 3.
//! 2. Copy `ID.msg` as the content and the envelope as the first record into `ID.q.tmp`,
//!    fsync, rename to `ID.q`, fsync the directory (the same commit as a new message). A crash
//!    before the rename leaves a `.tmp` (removed at start-up) and the version 1 files intact.
//! 3. Remove `ID.env`, then `ID.msg`. A crash between them leaves a `.msg` without `.env`,
//!    which the next start removes as before.
//!
//! A version 1 entry that cannot be read as one (garbage, missing or short `.msg`) is moved to
//! `quarantine/` as it is, as version 1 did at start-up.

use std::fs::{self, File};
use std::io::{self, Read};

use super::id::QueueId;
use super::spool::{Envelope, Spool, SpoolError, io_err};

/// Octets copied per read: bounded memory whatever the message size.
const COPY_CHUNK: usize = 256 << 10;

/// Migrate every version 1 entry in the spool's directory. Returns how many were migrated.
pub fn migrate(spool: &Spool) -> Result<usize, SpoolError> {
    let dir = spool.dir();
    let mut v1 = Vec::new();
    let mut msgs = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir, "read directory"))? {
        let entry = entry.map_err(io_err(dir, "read directory"))?;
        if !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(id) = name.strip_suffix(".env").and_then(QueueId::parse) {
            v1.push(id);
        } else if let Some(id) = name.strip_suffix(".msg").and_then(QueueId::parse) {
            msgs.push(id);
        }
    }
    if v1.is_empty() && msgs.is_empty() {
        return Ok(0);
    }
    v1.sort();
    let mut migrated = 0;
    for id in &v1 {
        if migrate_one(spool, id)? {
            migrated += 1;
        }
    }
    // A `.msg` without `.env`: an interrupted version 1 write, or step 3 cut short.
    for id in msgs {
        let env = dir.join(format!("{id}.env"));
        if !env.exists() {
            let path = dir.join(format!("{id}.msg"));
            tracing::warn!(file = %path.display(), "removing interrupted queue write");
            let _ = spool.io().remove(&path);
        }
    }
    spool
        .io()
        .sync_dir(dir)
        .map_err(io_err(dir, "fsync directory"))?;
    if migrated > 0 {
        tracing::info!(
            messages = migrated,
            dir = %dir.display(),
            "queue: migrated version 1 queue files to version 2"
        );
    }
    Ok(migrated)
}

/// One version 1 entry; whether it became a version 2 file (false: quarantined).
fn migrate_one(spool: &Spool, id: &QueueId) -> Result<bool, SpoolError> {
    let dir = spool.dir();
    let env_path = dir.join(format!("{id}.env"));
    let msg_path = dir.join(format!("{id}.msg"));
    if !spool.path(id).exists() {
        match read_v1(spool, id) {
            Ok(Some(envelope)) => copy(spool, id, envelope, &msg_path)?,
            Ok(None) => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    for path in [&env_path, &msg_path] {
        match spool.io().remove(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(path, "remove")(e)),
        }
    }
    Ok(true)
}

/// The version 1 envelope as version 2, or `None` when the entry was quarantined.
fn read_v1(spool: &Spool, id: &QueueId) -> Result<Option<Envelope>, SpoolError> {
    let dir = spool.dir();
    let env_path = dir.join(format!("{id}.env"));
    let msg_path = dir.join(format!("{id}.msg"));
    let bytes = fs::read(&env_path).map_err(io_err(&env_path, "read"))?;
    let problem = match Envelope::from_v1_bytes(&bytes) {
        Err(e) => Some(format!("version 1 envelope: {e}")),
        Ok(env) if env.id != id.as_str() => Some(format!("envelope names another ID {:?}", env.id)),
        Ok(env) => match fs::metadata(&msg_path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Some("message file missing".into()),
            Err(e) => return Err(io_err(&msg_path, "stat")(e)),
            Ok(meta) if meta.len() < env.size => Some(format!(
                "message file truncated: {} of {} octets",
                meta.len(),
                env.size
            )),
            Ok(_) => return Ok(Some(env)),
        },
    };
    let reason = problem.unwrap_or_default();
    spool.quarantine(&[env_path, msg_path], id, &reason)?;
    Ok(None)
}

/// Step 2: the version 2 file, committed.
fn copy(
    spool: &Spool,
    id: &QueueId,
    envelope: Envelope,
    msg_path: &std::path::Path,
) -> Result<(), SpoolError> {
    let mut src = File::open(msg_path).map_err(io_err(msg_path, "open"))?;
    let mut writer = spool.create(id)?;
    let mut left = envelope.size;
    let mut buf = vec![0u8; COPY_CHUNK];
    while left > 0 {
        let want = left.min(COPY_CHUNK as u64) as usize;
        let n = src
            .read(&mut buf[..want])
            .map_err(io_err(msg_path, "read"))?;
        if n == 0 {
            return Err(io_err(msg_path, "read")(io::Error::from(
                io::ErrorKind::UnexpectedEof,
            )));
        }
        writer.write(&buf[..n])?;
        left -= n as u64;
    }
    writer.commit(envelope).map(|_| ())
}
