//! The version 1 to version 2 queue migration survives a crash at every step: a child process
//! (this test binary, re-run with a filter) migrates a version 1 queue over `CrashingIo`, which
//! aborts the process at its Nth write operation (a write: after half of its bytes reached the
//! disk); the parent then opens the queue normally and checks that every message is there
//! exactly once, with its envelope and its bytes, and nothing of version 1 or of the
//! interrupted write is left. N runs from 1 until a child finishes without crashing.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use submitd::queue::fsio::CrashingIo;
use submitd::queue::{Envelope, QueueId, Recipient, RecipientState, Spool};

/// Set in the child: the queue directory and the operation to crash at.
const DIR_VAR: &str = "SUBMITD_MIGRATION_CHILD_DIR";
const AT_VAR: &str = "SUBMITD_MIGRATION_CHILD_AT";
/// More operations than any migration of the test queue takes: the loop's bound.
const MAX_STEPS: u32 = 200;

/// The child: migrate over `CrashingIo`. A no-op in a normal test run.
#[test]
fn migration_child() {
    let (Ok(dir), Ok(at)) = (std::env::var(DIR_VAR), std::env::var(AT_VAR)) else {
        return;
    };
    let at: u32 = at.parse().unwrap();
    Spool::open_with_io(Path::new(&dir), Arc::new(CrashingIo::new(at))).unwrap();
}

/// A version 1 queue: three messages (one large, one held, one half delivered), as the
/// two-file format wrote them. Returns what each must become.
fn version_1_queue(dir: &Path) -> Vec<(QueueId, serde_json::Value, Vec<u8>)> {
    let large: Vec<u8> = (0..600_000u32)
        .flat_map(|i| {
            if i % 70 == 69 {
                b"\r\n".to_vec()
            } else {
                vec![b'a' + (i % 26) as u8]
            }
        })
        .collect();
    let mut out = Vec::new();
    for (n, message) in [
        b"From: a@example.test\r\nSubject: one\r\n\r\nbody\r\n".to_vec(),
        large,
        b"From: a@example.test\r\nSubject: three\r\n\r\n".to_vec(),
    ]
    .into_iter()
    .enumerate()
    {
        let id = QueueId::generate();
        let mut env = Envelope::new(
            &id,
            "alice@example.test",
            "alice@example.test",
            &["bob@example.net".into(), "carol@example.org".into()],
            "client.test",
            1_700_000_000 + n as u64,
        );
        env.size = message.len() as u64;
        env.held = n == 1;
        if n == 2 {
            env.recipients[0] = Recipient {
                state: RecipientState::Delivered,
                attempts: 1,
                last_reply: Some("250 ok".into()),
                ..Recipient::pending("bob@example.net")
            };
        }
        let mut json: serde_json::Value = serde_json::to_value(&env).unwrap();
        let obj = json.as_object_mut().unwrap();
        obj.insert("version".into(), 1.into());
        obj.remove("content_len");
        std::fs::write(dir.join(format!("{id}.msg")), &message).unwrap();
        std::fs::write(
            dir.join(format!("{id}.env")),
            serde_json::to_vec(&json).unwrap(),
        )
        .unwrap();
        out.push((id, json, message));
    }
    out
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn migration_survives_a_crash_at_every_step() {
    let exe = std::env::current_exe().unwrap();
    let started = Instant::now();
    let mut finished = false;
    for at in 1..=MAX_STEPS {
        assert!(started.elapsed() < Duration::from_secs(240), "too slow");
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("queue");
        std::fs::create_dir(&dir).unwrap();
        let want = version_1_queue(&dir);
        let status = Command::new(&exe)
            .args(["--exact", "migration_child", "--test-threads", "1"])
            .env(DIR_VAR, &dir)
            .env(AT_VAR, at.to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        // The next start: no crash.
        let spool = Spool::open(&dir).unwrap();
        let mut expected: Vec<String> = want.iter().map(|(id, _, _)| format!("{id}.q")).collect();
        expected.sort();
        assert_eq!(names(&dir), expected, "crash at {at}");
        for (id, v1, message) in &want {
            let env = spool.load_envelope(id).unwrap();
            assert_eq!(env.version, 2);
            assert_eq!(
                env.recipients,
                serde_json::from_value::<Vec<Recipient>>(v1["recipients"].clone()).unwrap(),
                "crash at {at}"
            );
            assert_eq!(
                env.held,
                v1["held"].as_bool().unwrap_or(false),
                "crash at {at}"
            );
            assert_eq!(env.received_at, v1["received_at"].as_u64().unwrap());
            assert_eq!(&spool.load_message(id).unwrap(), message, "crash at {at}");
        }
        if status.success() {
            // This child ran to the end: every step before it was crashed at.
            assert!(at > 10, "the migration took only {at} steps?");
            finished = true;
            break;
        }
    }
    assert!(
        finished,
        "migration did not finish within {MAX_STEPS} operations"
    );
}
