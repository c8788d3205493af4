use super::*;
use crate::queue::fsio::{Fault, FaultyIo, Op, Target};

fn envelope(id: &QueueId) -> Envelope {
    let mut e = Envelope::new(
        id,
        "alice@example.test",
        "alice@example.test",
        &["bob@example.net".to_string()],
        "client.test",
        1_700_000_000,
    );
    e.size = 5;
    e.content_len = 5;
    e
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn store_then_load_round_trips_in_one_file() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(&dir.path().join("q")).unwrap();
    let id = QueueId::generate();
    spool.store_blocking(&envelope(&id), b"hello").unwrap();
    assert_eq!(spool.load_envelope(&id).unwrap(), envelope(&id));
    assert_eq!(spool.load_message(&id).unwrap(), b"hello");
    assert_eq!(spool.list().unwrap(), vec![id.clone()]);
    assert_eq!(names(spool.dir()), vec![format!("{id}.q")]);
    let mode = fs::metadata(spool.dir()).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o700
    );
    // The file: header, content, one record.
    let bytes = fs::read(spool.path(&id)).unwrap();
    assert!(qfile::is_header(&bytes));
    assert_eq!(&bytes[16..21], b"hello");
}

#[test]
fn the_prefix_goes_in_front_and_sizes_follow_the_content() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let id = QueueId::generate();
    let mut writer = spool.create(&id).unwrap();
    writer.write(b"Subject: x\r\n\r\n").unwrap();
    writer.write(b"body\r\n").unwrap();
    let mut back = [0u8; 9];
    assert_eq!(writer.read_content_at(11, &mut back).unwrap(), 9);
    assert_eq!(&back, b"\n\r\nbody\r\n");
    let mut env = envelope(&id);
    env.prefix = "Received: x\r\n".into();
    let stored = writer.commit(env).unwrap();
    assert_eq!(stored.content_len, 20);
    assert_eq!(stored.size, 33);
    let (loaded, message) = spool.open_message(&id).unwrap();
    assert_eq!(loaded, stored);
    assert_eq!(message.len(), 33);
    assert_eq!(
        message.read_all().unwrap(),
        b"Received: x\r\nSubject: x\r\n\r\nbody\r\n"
    );
    // Reads in small pieces cross the prefix/content seam.
    let mut out = Vec::new();
    let mut buf = [0u8; 4];
    loop {
        let n = message.read_at(out.len() as u64, &mut buf).unwrap();
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    assert_eq!(out, b"Received: x\r\nSubject: x\r\n\r\nbody\r\n");
}

#[test]
fn a_writer_dropped_without_commit_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let mut writer = spool.create(&QueueId::generate()).unwrap();
    writer.write(b"half a message").unwrap();
    assert_eq!(names(dir.path()).len(), 1);
    drop(writer);
    assert!(names(dir.path()).is_empty());
}

#[test]
fn saved_states_are_appended_and_the_last_is_current() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let id = QueueId::generate();
    spool.store_blocking(&envelope(&id), b"hello").unwrap();
    let before = fs::metadata(spool.path(&id)).unwrap().len();
    let _lock = spool.lock(&id).unwrap();
    let mut env = spool.load_envelope(&id).unwrap();
    env.recipients[0].state = RecipientState::Deferred;
    env.recipients[0].attempts = 1;
    spool.save_envelope(&env).unwrap();
    env.held = true;
    spool.save_envelope(&env).unwrap();
    assert_eq!(spool.load_envelope(&id).unwrap(), env);
    assert!(fs::metadata(spool.path(&id)).unwrap().len() > before);
    assert_eq!(spool.load_message(&id).unwrap(), b"hello");
}

#[test]
fn a_failed_append_leaves_the_previous_state() {
    for op in [Op::Open, Op::Write, Op::Sync] {
        let dir = tempfile::tempdir().unwrap();
        let io = FaultyIo::new();
        let spool = Spool::open_with_io(dir.path(), Arc::new(io.clone())).unwrap();
        let id = QueueId::generate();
        spool.store_blocking(&envelope(&id), b"hello").unwrap();
        let mut env = envelope(&id);
        env.held = true;
        io.fail(Fault {
            op,
            target: Target::Queue,
            nth: 1,
            errno: libc::EIO,
        });
        assert!(spool.save_envelope(&env).is_err(), "{op:?}");
        if op == Op::Sync {
            // Written but not known to be durable: either state may be read.
            continue;
        }
        assert_eq!(spool.load_envelope(&id).unwrap(), envelope(&id), "{op:?}");
        // The next save works, after the torn bytes.
        spool.save_envelope(&env).unwrap();
        assert_eq!(spool.load_envelope(&id).unwrap(), env, "{op:?}");
    }
}

#[test]
fn open_removes_interrupted_writes() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let done = QueueId::generate();
    spool.store_blocking(&envelope(&done), b"hello").unwrap();
    let mut half = spool.create(&QueueId::generate()).unwrap();
    half.write(b"half").unwrap();
    std::mem::forget(half);
    fs::write(dir.path().join("X.q.tmp"), b"SUBMITDQ").unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    assert_eq!(names(dir.path()), vec![format!("{done}.q")]);
    assert_eq!(spool.list().unwrap(), vec![done]);
}

#[test]
fn every_failed_step_leaves_nothing_and_classifies_the_errno() {
    let steps = [
        (Op::Create, Target::Queue),
        (Op::Write, Target::Queue),
        (Op::Sync, Target::Queue),
        (Op::Rename, Target::Queue),
        (Op::SyncDir, Target::Any),
    ];
    for (op, target) in steps {
        for (errno, want) in [
            (libc::EIO, SpoolFailure::WriteError),
            (libc::ENOSPC, SpoolFailure::DiskFull),
            (libc::EDQUOT, SpoolFailure::DiskFull),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let io = FaultyIo::new();
            let spool = Spool::open_with_io(dir.path(), Arc::new(io.clone())).unwrap();
            io.fail(Fault {
                op,
                target,
                nth: 1,
                errno,
            });
            let id = QueueId::generate();
            let err = spool.store_blocking(&envelope(&id), b"hello").unwrap_err();
            assert_eq!(io.injected(), 1, "{op:?} {target:?}");
            assert_eq!(err.failure(), want, "{op:?} {target:?} {errno}: {err}");
            assert!(names(dir.path()).is_empty(), "{op:?} {target:?}");
            // The next store works.
            spool.store_blocking(&envelope(&id), b"hello").unwrap();
            assert_eq!(spool.list().unwrap(), vec![id]);
        }
    }
}

#[test]
fn envelope_bytes_round_trip_and_reject_garbage() {
    let env = envelope(&QueueId::generate());
    assert_eq!(Envelope::from_bytes(&env.to_bytes()), Ok(env.clone()));
    let mut v9 = env.clone();
    v9.version = 9;
    assert_eq!(
        Envelope::from_bytes(&v9.to_bytes()),
        Err(EnvelopeError::Version(9))
    );
    let mut sizes = env.clone();
    sizes.size = 4;
    assert!(Envelope::from_bytes(&sizes.to_bytes()).is_err());
    for garbage in [&b""[..], b"{", b"\x00\xff", b"[]", b"{\"version\":2}"] {
        assert!(Envelope::from_bytes(garbage).is_err(), "{garbage:?}");
    }
}

#[test]
fn damaged_entries_are_found_and_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let good = QueueId::generate();
    spool.store_blocking(&envelope(&good), b"hello").unwrap();
    // Garbage, another ID inside, truncated content.
    let garbage = QueueId::generate();
    fs::write(spool.path(&garbage), b"SUBMITDQ garbage").unwrap();
    let other = QueueId::generate();
    fs::copy(spool.path(&good), spool.path(&other)).unwrap();
    let short = QueueId::generate();
    let mut env = envelope(&short);
    env.content_len = 50;
    env.size = 50;
    let mut bytes = qfile::header().to_vec();
    bytes.extend_from_slice(b"hello");
    let at = bytes.len() as u64;
    bytes.extend_from_slice(&qfile::record(at, &env.to_bytes()));
    fs::write(spool.path(&short), bytes).unwrap();

    assert_eq!(spool.check(&good), None);
    for id in [&garbage, &other, &short] {
        let reason = spool.check(id).expect("damaged");
        spool.quarantine_entry(id, &reason).unwrap();
    }
    assert_eq!(spool.list().unwrap(), vec![good]);
    let q = spool.quarantine_dir();
    let mode = fs::metadata(&q).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o700
    );
    assert_eq!(fs::read_dir(&q).unwrap().count(), 3);
    // A restart leaves the quarantine alone.
    let spool = Spool::open(dir.path()).unwrap();
    assert_eq!(spool.list().unwrap().len(), 1);
    assert_eq!(fs::read_dir(&q).unwrap().count(), 3);
}

/// A version 1 entry as the two-file format wrote it.
fn write_v1(dir: &Path, id: &QueueId, message: &[u8], held: bool) -> Envelope {
    let mut env = envelope(id);
    env.version = 1;
    env.size = message.len() as u64;
    env.held = held;
    env.content_len = 0;
    let mut json: serde_json::Value = serde_json::from_slice(&env.to_bytes()).unwrap();
    json.as_object_mut().unwrap().remove("content_len");
    fs::write(dir.join(format!("{id}.msg")), message).unwrap();
    fs::write(
        dir.join(format!("{id}.env")),
        serde_json::to_vec(&json).unwrap(),
    )
    .unwrap();
    env.version = FORMAT_VERSION;
    env.content_len = env.size;
    env
}

#[test]
fn a_version_1_queue_is_migrated_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let a = QueueId::generate();
    let b = QueueId::generate();
    let big: Vec<u8> = (0..700_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let env_a = write_v1(dir.path(), &a, b"Subject: a\r\n\r\nA\r\n", false);
    let env_b = write_v1(dir.path(), &b, &big, true);
    // Damaged version 1 entries go to quarantine as they are.
    let bad = QueueId::generate();
    fs::write(dir.path().join(format!("{bad}.env")), b"{garbage").unwrap();
    fs::write(dir.path().join(format!("{bad}.msg")), b"x").unwrap();
    let orphan = QueueId::generate();
    fs::write(dir.path().join(format!("{orphan}.msg")), b"half").unwrap();

    let spool = Spool::open(dir.path()).unwrap();
    let mut want = vec![format!("{a}.q"), format!("{b}.q"), "quarantine".into()];
    want.sort();
    assert_eq!(names(dir.path()), want);
    assert_eq!(spool.load_envelope(&a).unwrap(), env_a);
    assert_eq!(spool.load_envelope(&b).unwrap(), env_b);
    assert_eq!(spool.load_message(&a).unwrap(), b"Subject: a\r\n\r\nA\r\n");
    assert_eq!(spool.load_message(&b).unwrap(), big);
    assert_eq!(fs::read_dir(spool.quarantine_dir()).unwrap().count(), 2);
    // Nothing more to do the second time.
    assert_eq!(super::super::migrate::migrate(&spool).unwrap(), 0);
}

#[test]
fn a_waiting_message_moves_to_deferred_and_stays_reachable() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(&dir.path().join("q")).unwrap();
    let id = QueueId::generate();
    spool.store_blocking(&envelope(&id), b"hello").unwrap();
    let top = spool.dir().join(format!("{id}.q"));
    let hash = &id.as_str()[18..];
    let moved = spool
        .dir()
        .join(DEFERRED_DIR)
        .join(hash)
        .join(format!("{id}.q"));
    {
        let lock = spool.lock(&id).unwrap();
        spool.move_to_deferred(&id, &lock).unwrap();
        // Again: already there, nothing to do.
        spool.move_to_deferred(&id, &lock).unwrap();
    }
    assert!(!top.exists());
    assert!(moved.exists());
    assert_eq!(names(spool.dir()), vec![DEFERRED_DIR.to_string()]);
    let mode = fs::metadata(moved.parent().unwrap()).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o700
    );
    // Everything finds it where it is.
    assert_eq!(spool.path(&id), moved);
    assert_eq!(spool.load_envelope(&id).unwrap(), envelope(&id));
    assert_eq!(spool.load_message(&id).unwrap(), b"hello");
    assert_eq!(spool.list().unwrap(), vec![id.clone()]);
    let mut later = envelope(&id);
    later.recipients[0].attempts = 3;
    spool.save_envelope(&later).unwrap();
    assert_eq!(spool.load_envelope(&id).unwrap(), later);
    assert!(spool.check(&id).is_none());
    // Removed from there, and the removal made durable with the next sync.
    let lock = spool.lock(&id).unwrap();
    spool.remove_unsynced(&id, &lock).unwrap();
    assert!(!moved.exists());
    assert_eq!(spool.unsynced.lock().unwrap().len(), 1);
    spool.sync().unwrap();
    assert!(spool.unsynced.lock().unwrap().is_empty());
    assert!(spool.list().unwrap().is_empty());
}

#[test]
fn a_message_left_under_both_names_is_listed_once_and_removed_whole() {
    // A crash between the link into deferred/ and the removal of the top name.
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let id = QueueId::generate();
    spool.store_blocking(&envelope(&id), b"hello").unwrap();
    let other = QueueId::generate();
    spool.store_blocking(&envelope(&other), b"other").unwrap();
    let deferred = spool.deferred_dir(&id);
    fs::create_dir_all(&deferred).unwrap();
    fs::hard_link(spool.top_path(&id), spool.deferred_path(&id)).unwrap();
    let mut want = vec![id.clone(), other.clone()];
    want.sort();
    assert_eq!(spool.list().unwrap(), want);
    // The move completes.
    let lock = spool.lock(&id).unwrap();
    spool.move_to_deferred(&id, &lock).unwrap();
    assert!(!spool.top_path(&id).exists());
    assert_eq!(spool.load_message(&id).unwrap(), b"hello");
    // And under both names again, a removal takes both.
    fs::hard_link(spool.deferred_path(&id), spool.top_path(&id)).unwrap();
    spool.remove(&id, &lock).unwrap();
    assert!(!spool.top_path(&id).exists() && !spool.deferred_path(&id).exists());
    assert_eq!(spool.list().unwrap(), vec![other]);
}

#[test]
fn commit_deferred_writes_straight_into_the_deferred_directory() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let id = QueueId::generate();
    let mut writer = spool.create(&id).unwrap();
    writer.write(b"hello").unwrap();
    writer.commit_deferred(envelope(&id)).unwrap();
    assert_eq!(names(spool.dir()), vec![DEFERRED_DIR.to_string()]);
    assert!(spool.deferred_path(&id).exists());
    assert_eq!(spool.load_message(&id).unwrap(), b"hello");
    // Foreign names under deferred/ are not queue directories.
    fs::create_dir_all(spool.dir().join(DEFERRED_DIR).join("not-hashed")).unwrap();
    fs::write(
        spool
            .dir()
            .join(DEFERRED_DIR)
            .join("not-hashed")
            .join(format!("{}.q", QueueId::generate())),
        b"x",
    )
    .unwrap();
    assert_eq!(spool.list().unwrap(), vec![id]);
}

#[test]
fn dsn_fields_round_trip_and_older_records_still_load() {
    let id = QueueId::generate();
    let plain = envelope(&id);
    let json = String::from_utf8(plain.to_bytes()).unwrap();
    // Unset, they are left out: an older build reads the record.
    for key in [
        "ret",
        "envid",
        "requiretls",
        "tls_optional",
        "notify",
        "orcpt",
        "warned",
    ] {
        assert!(!json.contains(&format!("\"{key}\"")), "{key} in {json}");
    }
    assert_eq!(Envelope::from_bytes(json.as_bytes()).unwrap(), plain);
    let mut env = plain.clone();
    env.ret = Some(crate::dsn::Ret::Full);
    env.envid = Some("QQ+2B1".into());
    env.requiretls = true;
    env.tls_optional = true;
    env.recipients[0].notify = Some(crate::dsn::Notify {
        success: true,
        failure: false,
        delay: true,
    });
    env.recipients[0].orcpt = Some("rfc822;bob@example.net".into());
    env.recipients[0].warned = true;
    assert_eq!(Envelope::from_bytes(&env.to_bytes()).unwrap(), env);
    let json = String::from_utf8(env.to_bytes()).unwrap();
    assert!(
        json.contains("\"ret\":\"full\"") && json.contains("\"warned\":true"),
        "{json}"
    );
}
