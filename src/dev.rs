//! Development conveniences, active only when `[dev] bootstrap = true` (config/dev.toml):
//! on first run create the self-signed certificate and a dev user when they are absent,
//! printing the generated password once.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use rand::Rng;

use crate::config::{LogFormat, Settings};

/// Length of the generated dev password (alphanumeric: about 119 bits).
const PASSWORD_LEN: usize = 20;

/// The file, next to the users file, that keeps the generated dev password (mode 0600) so that
/// scripts and the README can use it: `$(cat var/dev/dev-password)`.
/// The dev config uses the file backend, so `auth.users` is set; without one the password
/// file goes beside the queue directory.
pub fn password_file(settings: &Settings) -> PathBuf {
    match &settings.auth.users {
        Some(users) => users.with_file_name("dev-password"),
        None => settings.queue.dir.with_file_name("dev-password"),
    }
}

/// Create the missing cert/key and users file for a dev config; no-op unless `dev.bootstrap`.
pub fn bootstrap(settings: &Settings) -> anyhow::Result<()> {
    if !settings.dev.bootstrap {
        return Ok(());
    }
    let (cert, key) = (&settings.tls.cert, &settings.tls.key);
    if !cert.exists() || !key.exists() {
        crate::tls::write_self_signed_to(&settings.hostname, cert, key)?;
        tracing::info!(cert = %cert.display(), key = %key.display(), hostname = %settings.hostname,
            "dev: wrote a self-signed certificate");
    }

    if let Some(parent) = non_empty_parent(&settings.queue.dir) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }

    let Some(users) = &settings.auth.users else {
        // A directory backend: its accounts are not ours to create.
        return Ok(());
    };
    if !users.exists() {
        if let Some(parent) = non_empty_parent(users) {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        let password = random_password();
        let phc = crate::auth::verify::hash_password(&password)
            .map_err(|e| anyhow::anyhow!("hashing the dev password: {e}"))?;
        let pw_file = password_file(settings);
        write_secret(&pw_file, &password)?;
        crate::auth::users::add_user(users, &settings.dev.user, &phc, &[])?;
        tracing::info!(user = %settings.dev.user, users = %users.display(), "dev: created the dev user");
        match settings.log.format {
            // One JSON log line like every other (a collector would choke on the text block).
            // The password is logged on purpose: it is the generated dev credential, shown once,
            // and only with `dev.bootstrap` (never in production configs).
            LogFormat::Json => tracing::warn!(
                login = %settings.dev.user,
                password = %password,
                password_file = %pw_file.display(),
                submit = %curl_command(settings, &password),
                "dev bootstrap: created a user (password shown once; also saved to password_file)"
            ),
            LogFormat::Text => eprintln!("{}", banner(settings, &password, &pw_file)),
        }
    }
    Ok(())
}

fn non_empty_parent(p: &Path) -> Option<&Path> {
    p.parent().filter(|d| !d.as_os_str().is_empty())
}

fn random_password() -> String {
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(PASSWORD_LEN)
        .map(char::from)
        .collect()
}

/// Write `secret` plus a newline to `path`, readable by the owner only.
fn write_secret(path: &Path, secret: &str) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    writeln!(f, "{secret}").with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Where a client on this machine reaches `addr`: a wildcard bind becomes loopback.
fn client_addr(addr: SocketAddr) -> SocketAddr {
    let mut a = addr;
    if a.ip().is_unspecified() {
        a.set_ip(if a.is_ipv4() {
            [127, 0, 0, 1].into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    a
}

/// A curl command that submits a test mail as the dev user (implicit TLS when there is a
/// submissions address, STARTTLS otherwise).
fn curl_command(settings: &Settings, password: &str) -> String {
    let user = &settings.dev.user;
    let url = match (
        settings.listen.submissions.first(),
        settings.listen.submission.first(),
    ) {
        (Some(a), _) => format!("smtps://{}", client_addr(*a)),
        (None, Some(a)) => format!("smtp://{}", client_addr(*a)),
        (None, None) => "smtps://127.0.0.1:465".to_string(),
    };
    format!(
        "curl --ssl-reqd -k --crlf --url {url} --user '{user}:{password}' \\\n    \
         --mail-from {user} --mail-rcpt someone@example.test -T - <<'EOF'\n\
         From: {user}\n\
         To: someone@example.test\n\
         Subject: submitd test\n\
         \n\
         Hello from submitd.\n\
         EOF"
    )
}

/// The one-time message (text logs) with the dev login, its password and a curl command that
/// submits a test mail.
fn banner(settings: &Settings, password: &str, pw_file: &Path) -> String {
    let user = &settings.dev.user;
    let rule = "=".repeat(72);
    format!(
        "\n{rule}\n\
         submitd dev bootstrap: created a user (shown once; also saved to {pw})\n\
         \n  login:    {user}\n  password: {password}\n\n\
         Submit a test message:\n\n\
         {curl}\n\
         {rule}\n",
        pw = pw_file.display(),
        curl = curl_command(settings, password),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev_settings(dir: &Path) -> Settings {
        let text = r#"
hostname = "localhost"
[listen]
submission = ["127.0.0.1:2587"]
submissions = ["0.0.0.0:2465"]
[tls]
cert = "var/dev/cert.pem"
key = "var/dev/key.pem"
[auth]
users = "var/dev/users.toml"
[queue]
dir = "var/dev/queue"
[dev]
bootstrap = true
"#;
        Settings::from_toml(text, &dir.join("dev.toml")).unwrap()
    }

    #[test]
    fn banner_has_a_ready_curl_command() {
        let dir = tempfile::tempdir().unwrap();
        let s = dev_settings(dir.path());
        let b = banner(&s, "Secret123", Path::new("var/dev/dev-password"));
        assert!(b.contains("--url smtps://127.0.0.1:2465"), "{b}");
        assert!(b.contains("--user 'dev@localhost:Secret123'"), "{b}");
        assert!(b.contains("From: dev@localhost\n"), "{b}");
        assert!(b.contains("<<'EOF'") && b.contains("\nEOF\n"), "{b}");
    }

    #[test]
    fn password_is_alphanumeric() {
        let p = random_password();
        assert_eq!(p.len(), PASSWORD_LEN);
        assert!(p.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(p, random_password());
    }

    #[test]
    fn not_enabled_does_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = dev_settings(dir.path());
        s.dev.bootstrap = false;
        bootstrap(&s).unwrap();
        assert!(!dir.path().join("var").exists());
    }

    /// Needs the auth module (hash_password, add_user).
    #[test]
    fn creates_cert_user_and_password_file_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = dev_settings(dir.path());
        bootstrap(&s).unwrap();
        crate::tls::load_server_config(&s.tls.cert, &s.tls.key).unwrap();
        let users = crate::auth::users::load(s.auth.users.as_deref().unwrap()).unwrap();
        assert_eq!(users.len(), 1);
        assert_eq!(users[0].login, "dev@localhost");
        let pw = std::fs::read_to_string(password_file(&s)).unwrap();
        assert_eq!(pw.trim_end().len(), PASSWORD_LEN);
        assert!(s.queue.dir.parent().unwrap().is_dir());
        // Second run: nothing changes.
        let cert_before = std::fs::read(&s.tls.cert).unwrap();
        bootstrap(&s).unwrap();
        assert_eq!(std::fs::read(&s.tls.cert).unwrap(), cert_before);
        assert_eq!(std::fs::read_to_string(password_file(&s)).unwrap(), pw);
    }
}
