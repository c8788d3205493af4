//! Storage faults end to end: the real server over a spool whose writes fail on demand
//! (`queue::fsio::FaultyIo`), and a queue directory with damaged files at start-up.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::sink::{Sink, SinkOptions};
use common::*;
use submitd::queue::fsio::{Fault, FaultyIo, Op, RealIo, Target};
use submitd::queue::{Envelope, QueueId, Recipient, Spool, control, qfile, spool};

/// Delivery to nowhere (127.0.0.1:1); retries far away so the scheduler writes nothing while
/// a case runs.
const NOWHERE: &str =
    "mode = \"smarthost\"\nsmarthost = \"127.0.0.1:1\"\nsmarthost_tls = \"none\"\n";
const SLOW_RETRY: &str = "retry = [\"1h\"]";

/// Send one message on an authenticated connection; returns the reply to the final dot.
async fn send_message(c: &mut Client) -> String {
    c.cmd(&format!("MAIL FROM:<{ALICE}>"), "250").await;
    c.cmd("RCPT TO:<bob@example.net>", "250").await;
    c.cmd("DATA", "354").await;
    c.send(format!("{}.\r\n", message_from(ALICE)).as_bytes())
        .await;
    c.reply().await
}

/// Names of everything in a directory (sorted), `quarantine` excluded, and the suppression
/// list's and status records' directories, which the server keeps in `queue.dir` beside the
/// messages.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != spool::QUARANTINE_DIR && n != "suppressions" && n != "status")
        .collect();
    names.sort();
    names
}

/// Every step of a spool write, failing with EIO and with ENOSPC: the client
/// gets `451 4.3.0` (`452 4.3.1` for a full disk), never a 250; nothing of the message is left
/// in the queue; the same connection then queues a message once the fault is gone.
#[tokio::test]
async fn every_failed_spool_step_is_refused_and_leaves_nothing() {
    let steps = [
        (Op::Create, Target::Queue),
        // The first write is the header, the next ones content, the last the record.
        (Op::Write, Target::Queue),
        (Op::Sync, Target::Queue),
        (Op::Rename, Target::Queue),
        // After the rename: the file is in place but not proven durable.
        (Op::SyncDir, Target::Any),
    ];
    let errnos = [
        (libc::EIO, "451 4.3.0 Error: queue file write error\r\n"),
        (libc::ENOSPC, "452 4.3.1 Insufficient system storage\r\n"),
    ];
    for (op, target) in steps {
        for (errno, want) in errnos {
            let case = format!("{op:?} {target:?} errno {errno}");
            let io = FaultyIo::new();
            let server = TestServer::start_in_with_io(
                tempfile::tempdir().unwrap(),
                SLOW_RETRY,
                NOWHERE,
                Arc::new(io.clone()),
            )
            .await;
            let mut c = server.alice().await;
            io.fail(Fault {
                op,
                target,
                nth: 1,
                errno,
            });
            let reply = send_message(&mut c).await;
            assert_eq!(reply, want, "{case}");
            assert_eq!(io.injected(), 1, "{case}: the fault was not hit");
            assert_eq!(
                entries(&server.queue_dir()),
                Vec::<String>::new(),
                "{case}: half-written queue entry left"
            );
            // The server keeps serving: the same session queues the next message.
            let reply = send_message(&mut c).await;
            assert!(
                reply.starts_with("250 2.0.0 Ok: queued as "),
                "{case}: {reply}"
            );
            assert_eq!(server.queued().len(), 1, "{case}");
            c.cmd("QUIT", "221").await;
        }
    }
}

/// A fault on a later call (the second write: the content, after the header) behaves the
/// same; a disk quota (EDQUOT) counts as a full disk.
#[tokio::test]
async fn quota_on_the_content_write_is_insufficient_storage() {
    let io = FaultyIo::new();
    let server = TestServer::start_in_with_io(
        tempfile::tempdir().unwrap(),
        SLOW_RETRY,
        NOWHERE,
        Arc::new(io.clone()),
    )
    .await;
    let mut c = server.alice().await;
    io.fail(Fault {
        op: Op::Write,
        target: Target::Any,
        nth: 2,
        errno: libc::EDQUOT,
    });
    let reply = send_message(&mut c).await;
    assert_eq!(reply, "452 4.3.1 Insufficient system storage\r\n");
    assert!(entries(&server.queue_dir()).is_empty());
    c.cmd("NOOP", "250").await;
}

fn good_envelope(id: &QueueId, message: &[u8]) -> Envelope {
    Envelope {
        version: spool::FORMAT_VERSION,
        id: id.to_string(),
        user: ALICE.into(),
        sender: ALICE.into(),
        recipients: vec![Recipient::pending("bob@example.net")],
        received_at: 1_700_000_000,
        helo: "client.test".into(),
        smtputf8: false,
        eight_bit: false,
        size: message.len() as u64,
        prefix: String::new(),
        content_len: message.len() as u64,
        held: false,
        ret: None,
        envid: None,
        requiretls: false,
        tls_optional: false,
        origin: None,
    }
}

/// A queue with 3 good messages and 2 damaged ones (a file whose record is not JSON, and one
/// whose content is shorter than its record says): the server starts, the 3 are delivered, the 2 are in
/// `quarantine/` and neither the scheduler nor `queue list` sees them.
#[tokio::test]
async fn damaged_queue_files_are_quarantined_and_the_rest_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let queue = dir.path().join("queue");
    let spool = Spool::open(&queue).unwrap();
    let mut good = Vec::new();
    for i in 0..3 {
        let id = QueueId::generate();
        let message = format!("From: {ALICE}\r\nSubject: good {i}\r\n\r\nbody {i}\r\n");
        spool
            .store_blocking(&good_envelope(&id, message.as_bytes()), message.as_bytes())
            .unwrap();
        good.push(id);
    }
    let garbage = QueueId::generate();
    std::fs::write(
        spool.path(&garbage),
        qfile::whole(b"From: x\r\n\r\nlost\r\n", b"{\"version\":2,\"id\":\"tru"),
    )
    .unwrap();
    let truncated = QueueId::generate();
    let whole = format!("From: {ALICE}\r\nSubject: truncated\r\n\r\nthe whole body\r\n");
    std::fs::write(
        spool.path(&truncated),
        qfile::whole(
            &whole.as_bytes()[..20],
            &good_envelope(&truncated, whole.as_bytes()).to_bytes(),
        ),
    )
    .unwrap();

    let sink = Sink::start(SinkOptions::default()).await;
    let relay = format!(
        "mode = \"smarthost\"\nsmarthost = \"{}\"\nsmarthost_tls = \"none\"\ntimeout = \"10s\"\n",
        sink.addr
    );
    let server = TestServer::start_in_with_io(dir, "", &relay, Arc::new(RealIo)).await;

    let got = sink.wait_for(3, IO_TIMEOUT).await;
    let mut subjects: Vec<String> = got
        .iter()
        .map(|r| {
            let text = String::from_utf8_lossy(&r.data).into_owned();
            let line = text.lines().find(|l| l.starts_with("Subject: ")).unwrap();
            line.to_string()
        })
        .collect();
    subjects.sort();
    assert_eq!(
        subjects,
        ["Subject: good 0", "Subject: good 1", "Subject: good 2"]
    );
    let deadline = Instant::now() + IO_TIMEOUT;
    while !server.queued().is_empty() {
        assert!(Instant::now() < deadline, "queue never emptied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Give the scheduler a couple of scans: nothing from quarantine is ever sent.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(sink.received().len(), 3);

    let quarantine = server.queue_dir().join(spool::QUARANTINE_DIR);
    let mut held = entries(&quarantine);
    held.sort();
    let mut want = vec![format!("{garbage}.q"), format!("{truncated}.q")];
    want.sort();
    assert_eq!(held, want);
    let mode = std::fs::metadata(&quarantine).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o700
    );
    assert!(entries(&server.queue_dir()).is_empty());
    let listed = control::list(&Spool::attach(&server.queue_dir())).unwrap();
    assert!(listed.is_empty(), "queue list sees quarantine: {listed:?}");
}

/// The file system, except that the directory fsync, once armed, takes 2.5 s (more than two
/// scan intervals) and then fails with EIO.
#[derive(Debug, Clone, Default)]
struct SlowFailingDirSync {
    armed: Arc<std::sync::atomic::AtomicBool>,
}

impl submitd::queue::fsio::SpoolIo for SlowFailingDirSync {
    fn create(&self, path: &Path) -> std::io::Result<std::fs::File> {
        RealIo.create(path)
    }
    fn open_append(&self, path: &Path) -> std::io::Result<std::fs::File> {
        RealIo.open_append(path)
    }
    fn write_all(
        &self,
        path: &Path,
        file: &mut std::fs::File,
        bytes: &[u8],
    ) -> std::io::Result<()> {
        RealIo.write_all(path, file, bytes)
    }
    fn sync(&self, path: &Path, file: &std::fs::File) -> std::io::Result<()> {
        RealIo.sync(path, file)
    }
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        RealIo.rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        if self.armed.swap(false, std::sync::atomic::Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(2500));
            return Err(std::io::Error::from_raw_os_error(libc::EIO));
        }
        RealIo.sync_dir(dir)
    }
    fn remove(&self, path: &Path) -> std::io::Result<()> {
        RealIo.remove(path)
    }
}

/// A message whose directory fsync fails is refused with 451 and never delivered, although
/// its envelope sat under its final name while the fsync ran: the scheduler learns of new
/// messages only from the session, after the commit, never from a directory scan.
#[tokio::test]
async fn a_message_refused_with_451_is_never_delivered() {
    let sink = Sink::start(SinkOptions::default()).await;
    let io = SlowFailingDirSync::default();
    let relay = format!(
        "mode = \"smarthost\"\nsmarthost = \"{}\"\nsmarthost_tls = \"none\"\n",
        sink.addr
    );
    let server = TestServer::start_in_with_io(
        tempfile::tempdir().unwrap(),
        "",
        &relay,
        Arc::new(io.clone()),
    )
    .await;
    let mut c = server.alice().await;
    io.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    let reply = send_message(&mut c).await;
    assert!(reply.starts_with("451 4.3.0"), "{reply}");
    // Two more scan intervals: nothing may arrive.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        sink.received().is_empty(),
        "a refused message was delivered"
    );
    assert!(server.queued().is_empty());
    // The next message is committed, announced and delivered at once.
    let reply = send_message(&mut c).await;
    assert!(reply.starts_with("250"), "{reply}");
    assert_eq!(sink.wait_for(1, IO_TIMEOUT).await.len(), 1);
}
