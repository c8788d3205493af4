//! Files the CLI rewrites as root keep their owner, group and mode (the server runs as a
//! service account and must still read them); new files in the queue directory take the
//! directory's owner. Needs root (CI runs as root); skipped with a message otherwise.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use common::run::{Output, run_submitd};
use submitd::queue::spool::FORMAT_VERSION;
use submitd::queue::{Envelope, QueueId, Recipient, Spool};

/// The service account the files belong to (nobody) and a group root is not in.
const SERVICE_UID: u32 = 65534;
const SERVICE_GID: u32 = 4242;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn owner_mode(path: &Path) -> (u32, u32, u32) {
    let m = std::fs::metadata(path).unwrap();
    (m.uid(), m.gid(), m.permissions().mode() & 0o7777)
}

fn chown(path: &Path, uid: u32, gid: u32, mode: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn cli(config: &Path, args: &[&str]) -> Output {
    let mut full = args.to_vec();
    full.extend(["--config", config.to_str().unwrap()]);
    run_submitd(None, &full, Some("new-password\n"))
}

#[test]
fn root_cli_keeps_owner_group_and_mode_of_users_file_and_queue_files() {
    if !is_root() {
        eprintln!("skipped: needs root to own files as another user (euid is not 0)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = common::write_config(dir.path(), "", "127.0.0.1:0", "127.0.0.1:0");
    let users = dir.path().join("users.toml");
    chown(&users, 0, SERVICE_GID, 0o640);

    let queue = dir.path().join("queue");
    let spool = Spool::open(&queue).unwrap();
    let id = QueueId::generate();
    let message = b"From: alice@example.test\r\n\r\nbody\r\n";
    let envelope = Envelope {
        version: FORMAT_VERSION,
        id: id.to_string(),
        user: common::ALICE.into(),
        sender: common::ALICE.into(),
        recipients: vec![Recipient::pending("bob@example.net")],
        received_at: 1,
        helo: "client.test".into(),
        smtputf8: false,
        eight_bit: false,
        size: message.len() as u64,
        held: false,
        prefix: String::new(),
        content_len: message.len() as u64,
        ret: None,
        envid: None,
        requiretls: false,
        tls_optional: false,
        origin: None,
    };
    spool.store_blocking(&envelope, message).unwrap();
    chown(&queue, SERVICE_UID, SERVICE_GID, 0o700);
    chown(&spool.path(&id), SERVICE_UID, SERVICE_GID, 0o600);

    // Users file: rewritten by root, still root:SERVICE_GID 0640 (the server reads it by group).
    for args in [
        &["user", "del", common::BOB][..],
        &["user", "add", "carol@example.test", "--password-stdin"][..],
        &["user", "passwd", common::ALICE, "--password-stdin"][..],
    ] {
        let out = cli(&config, args);
        assert_eq!(out.code, Some(0), "{args:?}: {out:?}");
        assert_eq!(
            owner_mode(&users),
            (0, SERVICE_GID, 0o640),
            "after {args:?}"
        );
    }

    // The suspension state is a new file in the queue directory: the directory's owner's.
    let out = cli(&config, &["user", "suspend", common::ALICE]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let state = submitd::auth::suspend::state_path(&queue);
    assert_eq!(owner_mode(&state), (SERVICE_UID, SERVICE_GID, 0o600));
    let out = cli(&config, &["user", "unsuspend", common::ALICE]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(owner_mode(&state), (SERVICE_UID, SERVICE_GID, 0o600));
    assert_eq!(owner_mode(&users), (0, SERVICE_GID, 0o640));

    // Queue hold and release append to the queue file: it stays the service account's.
    let id_text = id.to_string();
    for action in ["hold", "release"] {
        let out = cli(&config, &["queue", action, &id_text]);
        assert_eq!(out.code, Some(0), "{action}: {out:?}");
        assert_eq!(
            owner_mode(&spool.path(&id)),
            (SERVICE_UID, SERVICE_GID, 0o600),
            "after queue {action}"
        );
    }
    let out = cli(&config, &["queue", "retry", &id_text]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(
        owner_mode(&spool.path(&id)).0,
        SERVICE_UID,
        "after queue retry ID"
    );
}
