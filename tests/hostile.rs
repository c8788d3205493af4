//! Protocol hostility against the real server over raw sockets: clients that talk out of turn,
//! pipeline where RFC 2920 forbids it, make error after error, trickle, never read, send huge
//! headers, bad ESMTP parameters, lying BDAT sizes and smuggling sequences. Each test names the
//! defence it proves; without that defence it fails.

mod common;

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::*;

const SYNC_ERROR: &str = "554 5.5.0 Protocol synchronization error\r\n";

/// MAIL and RCPT for alice, ready for DATA or BDAT.
async fn envelope(c: &mut Client) {
    c.cmd(&format!("MAIL FROM:<{ALICE}>"), "250 2.1.0").await;
    c.cmd("RCPT TO:<x@example.net>", "250 2.1.5").await;
}

/// A smuggled second transaction, as public SMTP smuggling scanners send it.
const SMUGGLED: &[u8] =
    b"MAIL FROM:<alice@example.test>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\n\
      From: alice@example.test\r\n\r\nsmuggled\r\n.\r\n";

// 1. Talking before the greeting.

#[tokio::test]
async fn client_talking_before_the_greeting_on_587_is_refused() {
    let server = TestServer::start_with("greet_pause = \"300ms\"").await;
    let mut c = Client::connect_raw(server.submission).await;
    c.send(b"EHLO client.test\r\n").await;
    assert_eq!(c.reply().await, SYNC_ERROR);
    c.expect_closed().await;

    // A client that waits gets the greeting, after the pause.
    let started = Instant::now();
    let mut c = server.plain().await;
    assert!(started.elapsed() >= Duration::from_millis(290));
    c.cmd("EHLO client.test", "250").await;
}

#[tokio::test]
async fn client_talking_right_after_the_handshake_on_465_is_refused() {
    let server = TestServer::start_with("greet_pause = \"300ms\"").await;
    let mut c = Client::connect_raw(server.submissions).await;
    c.upgrade().await.unwrap();
    c.send(b"EHLO client.test\r\n").await;
    assert_eq!(c.reply().await, SYNC_ERROR);
    c.expect_closed().await;
    // A patient client is served.
    let mut c = server.tls().await;
    c.cmd("EHLO client.test", "250").await;
}

// 2. Input pipelined after a command that must end a group (RFC 2920 section 3.1).

#[tokio::test]
async fn body_pipelined_after_a_failing_data_never_runs_as_commands() {
    let server = TestServer::start().await;
    let mut c = server.alice().await;
    c.cmd(&format!("MAIL FROM:<{ALICE}>"), "250").await;
    c.cmd("RCPT TO:<nodomain>", "501").await;
    // Every RCPT failed, so DATA fails too; the body sent with it must not become commands.
    let mut batch = b"DATA\r\nFrom: alice@example.test\r\n\r\nhello\r\n".to_vec();
    batch.extend_from_slice(b"RSET\r\n");
    batch.extend_from_slice(SMUGGLED);
    c.send(&batch).await;
    assert_eq!(c.reply().await, SYNC_ERROR);
    c.expect_closed().await;
    assert!(server.queued().is_empty());
}

#[tokio::test]
async fn input_after_a_group_end_is_a_synchronization_error() {
    let server = TestServer::start().await;
    let auth = format!("AUTH PLAIN {}", plain(ALICE, ALICE_PASSWORD));
    let cases: Vec<(&str, String)> = vec![
        ("EHLO", "EHLO client.test\r\nNOOP\r\n".to_string()),
        ("HELO", "HELO client.test\r\nRSET\r\n".to_string()),
        ("NOOP", "NOOP\r\nRSET\r\n".to_string()),
        ("VRFY", "VRFY bob\r\nRSET\r\n".to_string()),
        ("EXPN", "EXPN list\r\nRSET\r\n".to_string()),
        ("AUTH", format!("{auth}\r\nMAIL FROM:<{ALICE}>\r\n")),
        // A SASL response must wait for its challenge.
        (
            "AUTH LOGIN",
            "AUTH LOGIN\r\nYWxpY2U=\r\ncHc=\r\n".to_string(),
        ),
        ("malformed DATA", "DATA now\r\nRSET\r\n".to_string()),
    ];
    for (name, batch) in cases {
        let mut c = server.tls().await;
        if !batch.starts_with("EHLO") && !batch.starts_with("HELO") {
            c.cmd("EHLO client.test", "250").await;
        }
        c.send(batch.as_bytes()).await;
        assert_eq!(c.reply().await, SYNC_ERROR, "{name}");
        c.expect_closed().await;
    }
    // Allowed: MAIL, RCPT, RSET and BDAT anywhere in a group; QUIT ends the session anyway.
    let mut c = server.alice().await;
    c.send(format!("RSET\r\nMAIL FROM:<{ALICE}>\r\nRCPT TO:<x@example.net>\r\nBDAT 5\r\nhelloRSET\r\nQUIT\r\nNOOP\r\n").as_bytes())
        .await;
    for expected in [
        "250 2.0.0",
        "250 2.1.0",
        "250 2.1.5",
        "250 2.0.0 Ok: 5",
        "250 2.0.0",
        "221",
    ] {
        c.expect(expected).await;
    }
    c.expect_closed().await;
}

// 3. Error after error.

#[tokio::test]
async fn twenty_bad_commands_end_the_session() {
    let server = TestServer::start().await;
    let mut c = server.alice().await;
    let bad = [
        "FOO",
        "MAIL FROM:alice@example.test",
        "RCPT TO:<x@example.net>",
        "DATA",
        "AUTH PLAIN",
        "EXPN list",
        "MAIL FROM:<alice@example.test> FOO=BAR",
    ];
    for i in 0..19 {
        c.cmd(bad[i % bad.len()], "5").await;
        // Policy refusals of a well-formed command are not protocol errors.
        c.cmd("MAIL FROM:<bob@example.test>", "553 5.7.1").await;
    }
    c.cmd("MAIL FROM:<alice@example.test>", "250").await;
    c.cmd("RSET", "250").await;
    c.cmd("BAR", "421 4.7.0 Too many errors\r\n").await;
    c.expect_closed().await;
}

// 4. The whole session is bounded in time.

/// A reply the server already sent, if any (checked before writing, so that the client never
/// writes into a connection the server closed).
async fn pending_reply(c: &mut Client) -> Option<String> {
    tokio::time::timeout(Duration::from_millis(5), c.try_reply())
        .await
        .ok()
        .map(|r| r.expect("closed without a reply"))
}

#[tokio::test]
async fn a_busy_session_still_ends_at_max_session_time() {
    let server =
        TestServer::start_with("command_timeout = \"1s\"\nmax_session_time = \"2s\"").await;
    let started = Instant::now();
    let mut c = server.alice().await;
    let reply = loop {
        assert!(started.elapsed() < Duration::from_secs(8), "never cut off");
        tokio::time::sleep(Duration::from_millis(300)).await;
        if let Some(r) = pending_reply(&mut c).await {
            break r;
        }
        c.send(b"NOOP\r\n").await;
        let r = c.reply().await;
        if !r.starts_with("250") {
            break r;
        }
    };
    assert_eq!(
        reply,
        format!("421 4.4.2 {HOSTNAME} Error: session time limit exceeded\r\n")
    );
    c.expect_closed().await;
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(1900), "{elapsed:?}");

    // The same in the middle of a message trickled in below the command timeout.
    let started = Instant::now();
    let mut c = server.alice().await;
    envelope(&mut c).await;
    c.cmd("DATA", "354").await;
    c.send(b"From: alice@example.test\r\n\r\n").await;
    let reply = loop {
        assert!(started.elapsed() < Duration::from_secs(8), "never cut off");
        tokio::time::sleep(Duration::from_millis(300)).await;
        if let Some(r) = pending_reply(&mut c).await {
            break r;
        }
        c.send(b"line\r\n").await;
    };
    assert!(reply.starts_with("421 4.4.2"), "{reply}");
    assert!(server.queued().is_empty());
}

// 5. A client that writes without reading.

/// The server reads only when it needs input, and flushes its replies (blocking) before each
/// read: a client that never reads stalls its own writes, and the server holds at most one read
/// of input and 16 KiB of replies.
#[tokio::test]
async fn writer_that_never_reads_is_stalled_and_memory_stays_bounded() {
    // On loopback the kernel autotunes the server's send buffer to megabytes (MSS 64 KiB), so
    // ~3 MB of replies (~1.4 MB of commands) fit in kernel buffers before the server's writes
    // block; 100,000 commands would all be accepted even by a server that stops reading at
    // once. A million commands (6 MB) show the stall with room to spare.
    const COMMANDS: usize = 1_000_000;
    let server = TestServer::start().await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.set_send_buffer_size(4096).unwrap();
    let mut tcp = socket.connect(server.submission).await.unwrap();
    let mut greeting = [0u8; 64];
    let n = tokio::time::timeout(IO_TIMEOUT, tcp.read(&mut greeting))
        .await
        .unwrap()
        .unwrap();
    assert!(greeting[..n].starts_with(b"220 "));
    // RSET may be pipelined anywhere (NOOP may not: it ends a group).
    let all = b"RSET\r\n".repeat(COMMANDS);
    let mut sent = 0;
    while sent < all.len() {
        match tokio::time::timeout(Duration::from_millis(500), tcp.write(&all[sent..])).await {
            Ok(n) => sent += n.unwrap(),
            Err(_) => break,
        }
    }
    assert!(
        sent < all.len() / 2,
        "the server kept reading while its replies were not read: {sent} bytes accepted"
    );

    // Now read: every command gets its reply and the session is fine.
    let (mut rd, mut wr) = tcp.into_split();
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        let reply = b"250 2.0.0 Ok\r\n";
        let want = reply.len() * COMMANDS;
        let mut buf = vec![0u8; 65536];
        while got.len() < want {
            let n = tokio::time::timeout(IO_TIMEOUT, rd.read(&mut buf))
                .await
                .expect("replies stopped")
                .unwrap();
            assert!(n > 0, "closed after {} bytes", got.len());
            got.extend_from_slice(&buf[..n]);
        }
        assert!(got.chunks(reply.len()).all(|r| r == reply));
        assert_eq!(got.len(), want);
        rd
    });
    tokio::time::timeout(IO_TIMEOUT * 2, wr.write_all(&all[sent..]))
        .await
        .unwrap()
        .unwrap();
    let mut rd = reader.await.unwrap();
    wr.write_all(b"NOOP\r\n").await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(IO_TIMEOUT, rd.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..n], b"250 2.0.0 Ok\r\n");
}

// 6. Header section size.

/// A message whose header section holds one header folded over `lines` lines.
fn folded_header_message(lines: usize) -> Vec<u8> {
    let mut m = b"From: alice@example.test\r\nX-Fold: start\r\n".to_vec();
    m.extend_from_slice(&b" folded\r\n".repeat(lines));
    m.extend_from_slice(b"\r\nbody\r\n.\r\n");
    m
}

#[tokio::test]
async fn header_section_over_the_limit_is_refused_quickly() {
    let server = TestServer::start().await;
    let mut c = server.alice().await;
    // ~1 MB of folded header lines, well within max_message_size.
    let message = folded_header_message(115_000);
    assert!(message.len() > 1_000_000);
    envelope(&mut c).await;
    c.cmd("DATA", "354").await;
    let started = Instant::now();
    c.send(&message).await;
    c.expect("552 5.3.4 Message header size exceeds limit\r\n")
        .await;
    assert!(started.elapsed() < Duration::from_secs(10));
    // Just under the limit is fine (262144 by default).
    envelope(&mut c).await;
    c.cmd("DATA", "354").await;
    c.send(&folded_header_message(28_000)).await;
    c.expect("250 2.0.0 Ok: queued").await;
    assert_eq!(server.queued().len(), 1);
}

#[tokio::test]
async fn a_million_folded_header_octets_are_checked_in_linear_time() {
    let server = TestServer::start_with("max_header_size = 4000000").await;
    let mut c = server.alice().await;
    envelope(&mut c).await;
    c.cmd("DATA", "354").await;
    let started = Instant::now();
    c.send(&folded_header_message(115_000)).await;
    c.expect("250 2.0.0 Ok: queued").await;
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
}

// 7. ESMTP parameters and the EHLO argument.

#[tokio::test]
async fn bad_esmtp_parameters_are_refused() {
    let server = TestServer::start().await;
    let mut c = server.alice().await;
    for (params, expected) in [
        ("AUTH=+00", "501 5.5.4"),
        ("AUTH=a+0Db", "501 5.5.4"),
        ("AUTH=a+0A+0DRCPT", "501 5.5.4"),
        ("AUTH=+1B[31m", "501 5.5.4"),
        ("AUTH=a+2", "501 5.5.4"),
        ("SIZE=abc", "501 5.5.4"),
        ("SIZE=-1", "501 5.5.4"),
        ("SIZE=99999999999999999999999", "501 5.5.4"),
        ("SIZE=", "501 5.5.4"),
        ("BODY=FOO", "501 5.5.4"),
        ("BODY=BINARYMIME", "555 5.5.4"),
        ("SMTPUTF8=x", "501 5.5.4"),
        ("SIZE=1 SIZE=2", "501 5.5.4"),
    ] {
        let line = format!("MAIL FROM:<{ALICE}> {params}");
        c.cmd(&line, expected).await;
    }
    // Control characters written raw never get that far.
    c.send(format!("MAIL FROM:<{ALICE}> AUTH=a\0b\r\n").as_bytes())
        .await;
    c.expect("501").await;
    // Well-formed values are accepted and nothing of them reaches the spool.
    let line = format!("MAIL FROM:<{ALICE}> AUTH=alice+2Bx@example.test SIZE=100 BODY=8BITMIME");
    c.cmd(&line, "250 2.1.0").await;
    c.cmd("RCPT TO:<x@example.net>", "250").await;
    c.cmd("DATA", "354").await;
    c.send(format!("{}.\r\n", message_from(ALICE)).as_bytes())
        .await;
    c.expect("250 2.0.0 Ok: queued").await;
    let (env, msg) = &server.queued()[0];
    assert!(!env.to_string().contains("alice+x"), "{env}");
    assert!(!String::from_utf8_lossy(msg).contains("alice+x"));
}

#[tokio::test]
async fn ehlo_injection_never_reaches_received() {
    let server = TestServer::start().await;
    let mut c = server.tls().await;
    for raw in [
        &b"EHLO foo\rbar\r\n"[..],
        b"EHLO foo\r\r\n",
        b"EHLO foo\rReceived: forged\r\n",
        b"EHLO a\x00b\r\n",
        b"EHLO <script>\r\n",
        b"EHLO foo\x1b[31m\r\n",
        b"EHLO \xff\xfe\r\n",
    ] {
        c.send(raw).await;
        c.expect("501 5.5.4").await;
    }
    c.cmd("EHLO client.test", "250").await;
    c.cmd(
        &format!("AUTH PLAIN {}", plain(ALICE, ALICE_PASSWORD)),
        "235",
    )
    .await;
    envelope(&mut c).await;
    c.cmd("DATA", "354").await;
    c.send(format!("{}.\r\n", message_from(ALICE)).as_bytes())
        .await;
    c.expect("250 2.0.0 Ok: queued").await;
    let (env, msg) = &server.queued()[0];
    assert!(msg.starts_with(b"Received: from client.test by mail.example.test"));
    assert_eq!(env["helo"], "client.test");
}

// 8. BDAT sizes that lie (RFC 3030).

#[tokio::test]
async fn bdat_short_chunk_then_eof_queues_nothing() {
    let server = TestServer::start().await;
    let mut c = server.alice().await;
    envelope(&mut c).await;
    c.send(b"BDAT 100 LAST\r\nFrom: alice").await;
    drop(c);
    // Another session works and sees an empty queue after the first one is gone.
    let mut c = server.alice().await;
    c.cmd("NOOP", "250").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(server.queued().is_empty());
}

#[tokio::test]
async fn bdat_long_chunk_extra_bytes_are_read_as_commands() {
    let server = TestServer::start().await;
    let mut c = server.alice().await;
    envelope(&mut c).await;
    // Declares 5, sends 50: the 45 extra octets are three command lines.
    let mut batch = b"BDAT 5 LAST\r\nhello".to_vec();
    batch.extend_from_slice(&b"XXXXXXXXXXXXX\r\n".repeat(3));
    assert_eq!(batch.len() - "BDAT 5 LAST\r\n".len(), 50);
    c.send(&batch).await;
    c.expect("550 5.6.0 Message has no From header").await;
    for _ in 0..3 {
        c.expect("500 5.5.1").await;
    }
    c.cmd("NOOP", "250").await;
    assert!(server.queued().is_empty());
}

#[tokio::test]
async fn bdat_unreadable_sizes_close_the_connection() {
    let server = TestServer::start().await;
    for size in ["18446744073709551616", "-1", "0x10", "+5", "5 5", "1e3", ""] {
        let mut c = server.alice().await;
        envelope(&mut c).await;
        c.cmd(&format!("BDAT {size}"), "501 5.5.4").await;
        c.expect_closed().await;
    }
    // The largest u64 is readable; it is refused for size and the connection closes too.
    let mut c = server.alice().await;
    envelope(&mut c).await;
    c.cmd("BDAT 18446744073709551615 LAST", "552 5.3.4").await;
    c.expect_closed().await;
    // DATA after BDAT.
    let mut c = server.alice().await;
    envelope(&mut c).await;
    c.send(b"BDAT 2\r\nab").await;
    c.expect("250 2.0.0 Ok: 2 octets").await;
    c.cmd("DATA", "503 5.5.1 DATA not allowed after BDAT").await;
    assert!(server.queued().is_empty());
}

// 9. Smuggling, in DATA and in BDAT.

const SMUGGLING_VARIANTS: [&[u8]; 11] = [
    b"\n.\n",
    b"\n.\r",
    b"\r.\n",
    b"\r.\r",
    b"\n.\r\n",
    b"\r.\r\n",
    b"\r\n.\n",
    b"\r\n.\r",
    b"\r\n.\r\r\n",
    b"\r\r\n.\r\r\n",
    b"\r\n\x00.\r\n",
];

fn refusal_for(variant: &[u8]) -> &'static str {
    if variant.contains(&0) {
        "550 5.6.0 NUL character in message\r\n"
    } else {
        "550 5.6.0 Bare CR or LF in message\r\n"
    }
}

#[tokio::test]
async fn smuggling_variants_in_data_are_content_and_refused() {
    let server = TestServer::start().await;
    for variant in SMUGGLING_VARIANTS {
        let mut c = server.alice().await;
        envelope(&mut c).await;
        c.cmd("DATA", "354").await;
        let mut data = b"From: alice@example.test\r\n\r\nfirst".to_vec();
        data.extend_from_slice(variant);
        data.extend_from_slice(SMUGGLED);
        c.send(&data).await;
        assert_eq!(c.reply().await, refusal_for(variant), "{variant:?}");
        c.cmd("NOOP", "250 2.0.0 Ok\r\n").await;
    }
    assert!(server.queued().is_empty());
}

#[tokio::test]
async fn smuggling_variants_in_bdat_are_content_and_refused() {
    let server = TestServer::start().await;
    for variant in SMUGGLING_VARIANTS {
        let mut c = server.alice().await;
        envelope(&mut c).await;
        let mut chunk = b"From: alice@example.test\r\n\r\nfirst".to_vec();
        chunk.extend_from_slice(variant);
        chunk.extend_from_slice(SMUGGLED);
        let mut batch = format!("BDAT {} LAST\r\n", chunk.len()).into_bytes();
        batch.extend_from_slice(&chunk);
        c.send(&batch).await;
        assert_eq!(c.reply().await, refusal_for(variant), "{variant:?}");
        c.cmd("NOOP", "250 2.0.0 Ok\r\n").await;
    }
    assert!(server.queued().is_empty());
}

// 10. TLS and sender edge cases.

#[tokio::test]
async fn tls_and_sender_edge_cases() {
    let server = TestServer::start().await;
    let mut c = server.plain().await;
    c.cmd("EHLO client.test", "250").await;
    c.starttls().await;
    c.cmd("EHLO client.test", "250").await;
    c.cmd("STARTTLS", "503 5.5.1 TLS already active").await;
    let mut c = server.tls().await;
    c.cmd("EHLO client.test", "250").await;
    c.cmd("STARTTLS", "503 5.5.1").await;

    let mut c = server.alice().await;
    c.cmd("MAIL FROM:<Alice@EXAMPLE.test>", "250 2.1.0").await;
    c.cmd("RCPT TO:<x@example.net>", "250").await;
    c.cmd("DATA", "354").await;
    c.send(b"From: \"alice@example.test\"@evil.test\r\n\r\nhi\r\n.\r\n")
        .await;
    c.expect("553 5.7.1").await;
    c.cmd("MAIL FROM:<\"alice@example.test\"@evil.test>", "553 5.7.1")
        .await;
    assert!(server.queued().is_empty());
}
