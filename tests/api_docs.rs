//! The README's "For application developers" examples run as written: every `sh`, `python`
//! and `js` block of that section against a live server (`SUBMITD_URL`, `SUBMITD_KEY`), each
//! answered 202 and its message delivered to the sink. Needs curl, python3 with requests and
//! node (test.sh installs them).

mod common;

use std::time::Duration;

use common::keys::create;
use common::sink::{Sink, SinkOptions};
use common::{IO_TIMEOUT, TestServer, smarthost};

/// The fenced blocks (language, code) of the README section titled `title`.
fn blocks(readme: &str, title: &str) -> Vec<(String, String)> {
    let start = readme
        .find(&format!("\n## {title}\n"))
        .unwrap_or_else(|| panic!("no section {title:?} in README.md"));
    let section = &readme[start + 1..];
    let end = section[3..].find("\n## ").map_or(section.len(), |e| e + 3);
    let mut out = Vec::new();
    let mut lines = section[..end].lines();
    while let Some(line) = lines.next() {
        let Some(lang) = line.strip_prefix("```") else {
            continue;
        };
        let code: Vec<&str> = lines.by_ref().take_while(|l| *l != "```").collect();
        out.push((lang.trim().to_owned(), code.join("\n") + "\n"));
    }
    out
}

#[tokio::test]
async fn the_readme_examples_send_mail() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let examples: Vec<(String, String)> = blocks(&readme, "For application developers")
        .into_iter()
        .filter(|(lang, _)| ["sh", "python", "js"].contains(&lang.as_str()))
        .collect();
    let langs: Vec<&str> = examples.iter().map(|(l, _)| l.as_str()).collect();
    assert!(
        ["sh", "python", "js"].iter().all(|l| langs.contains(l)),
        "curl, Python and Node examples expected: {langs:?}"
    );

    let sink = Sink::start(SinkOptions::default()).await;
    let server = TestServer::start_full(
        "",
        "",
        &smarthost(&sink),
        "[api]\nlisten = \"127.0.0.1:0\"\n",
    )
    .await;
    let secret = create(&server, "docs", &["--sender", "app@example.test"]);
    let url = format!("http://{}", server.api.unwrap());
    for (i, (lang, code)) in examples.iter().enumerate() {
        let mut command = match lang.as_str() {
            "sh" => {
                let mut c = tokio::process::Command::new("sh");
                c.args(["-eu", "-c", code]);
                c
            }
            "python" => {
                let mut c = tokio::process::Command::new("python3");
                c.args(["-c", code]);
                c
            }
            _ => {
                let mut c = tokio::process::Command::new("node");
                c.args(["--input-type=module", "-e", code]);
                c
            }
        };
        command
            .env("SUBMITD_URL", &url)
            .env("SUBMITD_KEY", &secret)
            .kill_on_drop(true);
        let out = tokio::time::timeout(IO_TIMEOUT * 2, command.output())
            .await
            .unwrap_or_else(|_| panic!("example {i} ({lang}) did not finish"))
            .unwrap_or_else(|e| panic!("example {i} ({lang}) not started: {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "example {i} ({lang}):\n{code}\n{stdout}\n{stderr}"
        );
        assert!(
            stdout.contains("202"),
            "example {i} ({lang}):\n{stdout}\n{stderr}"
        );
        let received = sink.wait_for(i + 1, IO_TIMEOUT).await;
        assert_eq!(received[i].from, "app@example.test", "example {i}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sink.received().len(), examples.len());
}
