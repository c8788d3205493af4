//! `relay.mode = "capture"` with the real binary: a submitted message lands in
//! `relay.capture_dir` as `ID.eml` (the bytes an attempt would send) and `ID.json`, counts as
//! delivered and leaves the queue.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::binary::Binary;
use common::*;

fn files_with(dir: &Path, ext: &str) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect()
}

#[tokio::test]
async fn capture_mode_writes_eml_and_json_and_empties_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    // A relative capture_dir resolves against the config file's directory; missing parents too.
    let relay = "mode = \"capture\"\ncapture_dir = \"out/box\"\n";
    let config = write_config_full(dir.path(), "", "", relay, "127.0.0.1:0", "127.0.0.1:0");
    let server = Binary::start(&config);
    let line = server.wait_for(|l| l.contains("listening") && l.contains("kind=\"submissions\""));
    let addr: SocketAddr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .unwrap()
        .trim_matches('"')
        .parse()
        .unwrap();

    let mut c = login_as(addr, ALICE, ALICE_PASSWORD, "235").await;
    let reply = send_message(&mut c, ALICE, &["bob@example.net", "carol@example.org"]).await;
    assert!(reply.starts_with("250"), "{reply}");
    let id = reply.trim().rsplit(' ').next().unwrap().to_string();
    c.cmd("QUIT", "221").await;

    let outbox = dir.path().join("out/box");
    let eml = outbox.join(format!("{id}.eml"));
    let json = outbox.join(format!("{id}.json"));
    let deadline = Instant::now() + IO_TIMEOUT;
    while !(eml.exists() && json.exists()) {
        assert!(
            Instant::now() < deadline,
            "nothing captured; log:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&outbox).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);

    let text = String::from_utf8(std::fs::read(&eml).unwrap()).unwrap();
    assert!(text.starts_with("Received: "), "{text}");
    assert!(text.contains(&format!("with ESMTPSA id {id}")), "{text}");
    assert!(text.contains("\r\n\r\nHello.\r\n"), "{text}");
    assert!(
        !text.ends_with("\r\n.\r\n"),
        "no SMTP dot terminator: {text}"
    );

    let record: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(record["id"], id.as_str());
    assert_eq!(record["sender"], ALICE);
    assert_eq!(record["user"], ALICE);
    assert_eq!(
        record["recipients"],
        serde_json::json!(["bob@example.net", "carol@example.org"])
    );
    assert!(record["received_at"].as_u64().unwrap() > 0);
    // The envelope's size: the queued message, headers added by submitd included.
    assert_eq!(record["size"].as_u64().unwrap(), text.len() as u64);
    assert_eq!(
        record["results"],
        serde_json::json!([
            {"recipient": "bob@example.net", "result": "delivered"},
            {"recipient": "carol@example.org", "result": "delivered"},
        ])
    );

    // Delivered like any other: logged per recipient, then removed from the queue.
    for rcpt in ["bob@example.net", "carol@example.org"] {
        server.wait_for(|l| {
            l.contains("delivery")
                && l.contains(&format!("to={rcpt}"))
                && (l.contains("relay=capture") || l.contains("relay=\"capture\""))
                && l.contains("status=\"sent\"")
        });
    }
    server.wait_for(|l| l.contains(&id) && l.contains("removed"));
    let queue = dir.path().join("queue");
    assert!(files_with(&queue, "env").is_empty() && files_with(&queue, "msg").is_empty());
}
