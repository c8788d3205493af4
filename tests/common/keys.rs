//! `submitd key ...` against a running test server's config: the real binary, as an operator
//! would run it (the server picks up the keys file without a reload).

use std::path::PathBuf;

use super::TestServer;
use super::run::{Output, run_submitd};

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
