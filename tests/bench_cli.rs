//! The `submitd-bench` load generator against a real test server: the JSON line it prints, the
//! mail the server queued, and its refusal of non-loopback targets.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{ALICE, ALICE_PASSWORD, TestServer};

/// Run `submitd-bench args...` with a deadline; (exit code, stdout, stderr).
async fn bench(args: &[&str]) -> (Option<i32>, String, String) {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_submitd-bench"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn submitd-bench");
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("submitd-bench finished within 120 s")
        .expect("submitd-bench output");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The single JSON line on stdout.
fn json_line(stdout: &str) -> serde_json::Value {
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one line on stdout: {stdout:?}");
    serde_json::from_str(lines[0]).expect("stdout is JSON")
}

fn load_args<'a>(addr: &'a str, tls: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "--connect",
        addr,
        "--tls",
        tls,
        "--user",
        ALICE,
        "--password",
        ALICE_PASSWORD,
        "--from",
        ALICE,
        "--to",
        "bob@example.net",
        "--sessions",
        "2",
        "--size",
        "2000",
        "--timeout",
        "30",
    ];
    args.extend_from_slice(extra);
    args
}

#[tokio::test]
async fn implicit_tls_one_message_per_connection() {
    let server = TestServer::start().await;
    let addr = server.submissions.to_string();
    let args = load_args(
        &addr,
        "implicit",
        &["--messages", "3", "--per-session", "1"],
    );
    let (code, stdout, stderr) = bench(&args).await;
    assert_eq!(code, Some(0), "stderr: {stderr}");
    let line = json_line(&stdout);
    assert_eq!(line["messages"], 3, "{line}");
    assert_eq!(line["errors"], 0, "{line}");
    for key in [
        "seconds",
        "msgs_per_sec",
        "p50_ms",
        "p90_ms",
        "p99_ms",
        "max_ms",
    ] {
        assert!(line[key].as_f64().is_some_and(|v| v > 0.0), "{key}: {line}");
    }
    let queued = server.queued();
    assert_eq!(queued.len(), 3);
    let (_, body) = &queued[0];
    let text = String::from_utf8_lossy(body);
    assert!(text.contains("Subject: submitd-bench"), "{text}");
}

#[tokio::test]
async fn starttls_pipelined_messages_share_a_connection() {
    let server = TestServer::start().await;
    let addr = server.submission.to_string();
    let args = load_args(
        &addr,
        "starttls",
        &["--messages", "4", "--per-session", "2", "--pipelining"],
    );
    let (code, stdout, stderr) = bench(&args).await;
    assert_eq!(code, Some(0), "stderr: {stderr}");
    let line = json_line(&stdout);
    assert_eq!(line["messages"], 4, "{line}");
    assert_eq!(line["errors"], 0, "{line}");
    assert_eq!(line["pipelining"], true, "{line}");
    assert_eq!(server.queued().len(), 4);
}

#[tokio::test]
async fn rejected_messages_are_counted_as_errors() {
    let server = TestServer::start().await;
    let addr = server.submissions.to_string();
    // alice does not own this sender: every MAIL FROM gets 553.
    let mut args = load_args(&addr, "implicit", &["--messages", "2"]);
    let from = args.iter().position(|a| *a == "--from").unwrap();
    args[from + 1] = "mallory@example.net";
    let (code, stdout, stderr) = bench(&args).await;
    assert_eq!(code, Some(1), "stderr: {stderr}");
    let line = json_line(&stdout);
    assert_eq!(line["messages"], 0, "{line}");
    assert_eq!(line["errors"], 2, "{line}");
    assert!(stderr.contains("553"), "{stderr}");
    assert!(server.queued().is_empty());
}

#[tokio::test]
async fn idle_mode_reports_connections_up() {
    let server = TestServer::start().await;
    let addr = server.submission.to_string();
    let (code, stdout, stderr) = bench(&[
        "--connect",
        &addr,
        "--tls",
        "starttls",
        "--idle",
        "5",
        "--hold",
        "0.2",
    ])
    .await;
    assert_eq!(code, Some(0), "stderr: {stderr}");
    let line = json_line(&stdout);
    assert_eq!(line["idle"], 5, "{line}");
    assert_eq!(line["up"], 5, "{line}");
    assert_eq!(line["errors"], 0, "{line}");
}

#[tokio::test]
async fn refuses_a_non_loopback_target() {
    // TEST-NET-1 (RFC 5737): nothing is ever reached; the refusal comes before any connect.
    let (code, stdout, stderr) = bench(&["--connect", "192.0.2.1:465", "--messages", "1"]).await;
    assert_eq!(code, Some(2), "stdout: {stdout} stderr: {stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.contains("non-loopback"), "{stderr}");
    assert!(stderr.contains("--allow-remote"), "{stderr}");
}
