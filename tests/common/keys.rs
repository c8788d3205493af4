//! `submitd key ...` against a running test server's config: the real binary, as an operator
//! would run it (the server picks up the keys file without a reload).

use std::path::PathBuf;

use super::run::{Output, run_submitd};
use super::{Client, IO_TIMEOUT, TestServer, plain};

/// The server's config file.
pub fn config(server: &TestServer) -> PathBuf {
    server.dir.path().join("submitd.toml")
}

/// `submitd key ARGS... --config <server's>`.
pub fn key_cli(server: &TestServer, args: &[&str]) -> Output {
    let config = config(server);
    let mut full = vec!["key"];
    full.extend(args);
    full.extend(["--config", config.to_str().unwrap()]);
    run_submitd(None, &full, None)
}

/// `key create NAME args...`: the secret it printed.
pub fn create(server: &TestServer, name: &str, args: &[&str]) -> String {
    let mut full = vec!["create", name];
    full.extend(args);
    let out = key_cli(server, &full);
    assert_eq!(out.code, Some(0), "{out:?}");
    let secret = out.stdout.trim().to_owned();
    assert!(
        secret.starts_with(&format!("sk_{name}_")) && secret.len() == 47 + name.len(),
        "{out:?}"
    );
    secret
}

/// 587, EHLO, STARTTLS, EHLO, then AUTH PLAIN as `login`: the client and the reply to AUTH.
pub async fn smtp_auth(server: &TestServer, login: &str, secret: &str) -> (Client, String) {
    let mut c = server.plain().await;
    c.cmd("EHLO client.test", "250").await;
    c.starttls().await;
    c.cmd("EHLO client.test", "250").await;
    c.send(format!("AUTH PLAIN {}\r\n", plain(login, secret)).as_bytes())
        .await;
    let reply = c.reply().await;
    (c, reply)
}

/// `POST /v1/messages` of the JSON `body` with the key `secret`: the status and the JSON body.
pub async fn post_message(
    server: &TestServer,
    secret: &str,
    body: &serde_json::Value,
) -> (u16, serde_json::Value) {
    let url = format!("http://{}/v1/messages", server.api.expect("api on"));
    let response = reqwest::Client::builder()
        .timeout(IO_TIMEOUT)
        .build()
        .unwrap()
        .post(url)
        .bearer_auth(secret)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

/// [`smtp_auth`] again until the reply starts with `want` (the server has caught up with the
/// key store), for at most `limit`: the last reply.
pub async fn auth_until(
    server: &TestServer,
    login: &str,
    secret: &str,
    want: &str,
    limit: std::time::Duration,
) -> String {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let (_, reply) = smtp_auth(server, login, secret).await;
        if reply.starts_with(want) || std::time::Instant::now() > deadline {
            return reply;
        }
        // Not faster: each refused try counts in the login throttle (10 per login by default),
        // and an LDAP key store is read every 2 s.
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}
