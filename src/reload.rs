//! Live reload (SIGHUP, `submitd reload` through the control socket) and the pid file whose
//! lock keeps a second server off the same queue directory. Nothing signals the pid written in
//! that file: the service account writes it, and root's CLI must not trust it (see
//! [`crate::control_socket`]).
//!
//! A reload re-reads the config file, the certificate and key, and the users file, and applies
//! the limits to new sessions. Everything is read and checked off the reactor before anything
//! changes: a config that does not parse, a certificate that does not load or an unreadable
//! users file is refused with an error line naming the file and the problem, and the server
//! goes on with what it had. Open sessions keep the settings they started with.
//!
//! Some keys only take effect at startup, like Postfix's `inet_interfaces`: the listen
//! addresses, `hostname` (the queue and delivery use it too), `queue.*`, `relay.*`,
//! `auth.users` (the file's *path*; its content reloads) and the limits held by long-lived
//! counters (`auth_*`, `user_*`, `suspend_recipients_per_hour`). A change to one of them is
//! logged as "needs restart" and otherwise ignored.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::{ConfigErrors, Settings};
use crate::listener::Shared;

/// The pid file's name inside `queue.dir`.
pub const PID_FILE: &str = "submitd.pid";

/// Reloads a running server. Cheap to clone; reloads run one at a time.
#[derive(Clone)]
pub struct Reloader {
    shared: Arc<Shared>,
    running: Arc<tokio::sync::Mutex<()>>,
}

/// What a successful reload changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// Keys whose new value waits for a restart.
    pub needs_restart: Vec<&'static str>,
    /// Users loaded from the users file.
    pub users: usize,
}

impl Reloader {
    pub(crate) fn new(shared: Arc<Shared>) -> Reloader {
        Reloader {
            shared,
            running: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// Re-read the config file the server started with and apply it to new connections. On
    /// error nothing changes; the reasons are logged and returned.
    pub async fn reload(&self) -> Result<Reloaded, ConfigErrors> {
        let _one_at_a_time = self.running.lock().await;
        let current = self.shared.snapshot();
        let old = current.settings.clone();
        let users = current.ctx.verifier.users().clone();
        let path = old.config_path.clone();
        let prepared = tokio::task::spawn_blocking(move || prepare(&old, &path, &users)).await;
        let result = match prepared {
            Ok(r) => r,
            Err(e) => Err(ConfigErrors(vec![crate::config::ConfigError {
                file: current.settings.config_path.clone(),
                key: "-".into(),
                message: format!("reload task failed: {e}"),
            }])),
        };
        match result {
            Ok((settings, tls, dkim, reloaded)) => {
                // One signer is shared by every session: messages signed from now on use the
                // new keys.
                current.ctx.intake.dkim.replace(dkim);
                self.shared.apply(settings, tls);
                info!(
                    config = %current.settings.config_path.display(),
                    users = reloaded.users,
                    "reloaded: new connections use the new settings"
                );
                Ok(reloaded)
            }
            Err(errors) => {
                for e in &errors.0 {
                    error!(
                        file = %e.file.display(),
                        key = %e.key,
                        "reload refused, keeping the running config: {}",
                        e.message
                    );
                }
                Err(errors)
            }
        }
    }
}

/// Blocking: load and check everything; nothing changes unless all of it is good.
#[allow(clippy::type_complexity)]
fn prepare(
    old: &Settings,
    path: &Path,
    users: &crate::auth::users::UserStore,
) -> Result<
    (
        Settings,
        Arc<rustls::ServerConfig>,
        crate::dkim::DkimSigner,
        Reloaded,
    ),
    ConfigErrors,
> {
    let mut new = Settings::load(path)?;
    let needs_restart = keep_restart_keys(old, &mut new);
    for key in &needs_restart {
        warn!(key, file = %path.display(), "changed value needs restart; keeping the running one");
    }
    crate::artefacts::check_files(&new)?;
    let tls = crate::tls::load_server_config(&new.tls.cert, &new.tls.key).map_err(|e| {
        ConfigErrors(vec![crate::config::ConfigError {
            file: path.to_path_buf(),
            key: "tls".into(),
            message: e.to_string(),
        }])
    })?;
    let dkim = crate::dkim::DkimSigner::load(&new.dkim).map_err(|e| {
        ConfigErrors(vec![crate::config::ConfigError {
            file: path.to_path_buf(),
            key: "dkim".into(),
            message: e.to_string(),
        }])
    })?;
    // The users file was checked above; read it now rather than at the next login's check.
    let count = users.reload().map_err(|e| {
        ConfigErrors(vec![crate::config::ConfigError {
            file: path.to_path_buf(),
            key: "auth.users".into(),
            message: e.to_string(),
        }])
    })?;
    Ok((
        new,
        tls,
        dkim,
        Reloaded {
            needs_restart,
            users: count,
        },
    ))
}

/// Put back into `new` the values of keys that need a restart, and name those that differed.
fn keep_restart_keys(old: &Settings, new: &mut Settings) -> Vec<&'static str> {
    let mut changed = Vec::new();
    macro_rules! keep {
        ($key:literal, $($field:ident).+) => {
            if format!("{:?}", old.$($field).+) != format!("{:?}", new.$($field).+) {
                changed.push($key);
                new.$($field).+ = old.$($field).+.clone();
            }
        };
    }
    keep!("hostname", hostname);
    keep!("listen.submission", listen.submission);
    keep!("listen.submissions", listen.submissions);
    keep!("auth.users", auth.users);
    keep!("queue", queue);
    keep!("relay", relay);
    keep!("dev", dev);
    keep!("auth.cache_ttl", auth.cache_ttl);
    keep!("metrics.listen", metrics.listen);
    keep!("log.format", log.format);
    keep!("limits.auth_window", limits.auth_window);
    keep!("limits.auth_failures_per_ip", limits.auth_failures_per_ip);
    keep!(
        "limits.auth_failures_per_login",
        limits.auth_failures_per_login
    );
    keep!("limits.auth_parallel", limits.auth_parallel);
    keep!("limits.auth_queue", limits.auth_queue);
    keep!("limits.user_*", limits.user_limits);
    changed
}

/// Reload on every SIGHUP until `shutdown`. Install before anything can send SIGHUP (before
/// the pid file exists): the default action of SIGHUP ends the process.
pub fn watch_sighup(reloader: Reloader, shutdown: CancellationToken) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                got = hup.recv() => {
                    if got.is_none() {
                        break;
                    }
                    info!(signal = "SIGHUP", "reloading");
                    // Errors are logged by reload itself.
                    let _ = reloader.reload().await;
                }
            }
        }
    });
    Ok(())
}

/// Why the pid file could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum PidError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("another submitd (pid {pid}) is running with this queue directory ({path} is locked)")]
    Running { pid: String, path: PathBuf },
}

/// `<queue.dir>/submitd.pid`, locked (flock) for as long as the server runs.
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
    file: File,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PidError + '_ {
    move |source| PidError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `flock` without waiting; `Ok(false)` when another process holds a conflicting lock.
fn try_flock(file: &File, op: libc::c_int) -> std::io::Result<bool> {
    // SAFETY: flock on a descriptor owned by `file`, borrowed for the call.
    let r = unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) };
    if r == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

impl PidFile {
    /// Take `<dir>/submitd.pid` and write our pid into it; refused while another live server
    /// holds it. A file left by a server that died is simply taken over (its lock died with it).
    pub fn acquire(dir: &Path) -> Result<PidFile, PidError> {
        let path = dir.join(PID_FILE);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err(&path))?;
        if !try_flock(&file, libc::LOCK_EX).map_err(io_err(&path))? {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            return Err(PidError::Running {
                pid: pid.trim().to_string(),
                path,
            });
        }
        file.set_len(0).map_err(io_err(&path))?;
        file.rewind().map_err(io_err(&path))?;
        writeln!(file, "{}", std::process::id()).map_err(io_err(&path))?;
        file.sync_all().map_err(io_err(&path))?;
        Ok(PidFile { path, file })
    }

    /// Remove the file (clean exit); the lock goes with the descriptor.
    pub fn remove(self) {
        let _ = std::fs::remove_file(&self.path);
        drop(self.file);
    }
}

/// Flush the queue on every SIGUSR1 until `shutdown` (ops signal the server directly, e.g.
/// through systemd). Install early, as for SIGHUP: the default action of SIGUSR1 ends the
/// process.
pub fn watch_flush(
    queue: crate::queue::scheduler::QueueHandle,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut usr1 = signal(SignalKind::user_defined1())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                Some(()) = usr1.recv() => {
                    info!(signal = "SIGUSR1", "queue flush requested");
                    queue.flush();
                }
                _ = shutdown.cancelled() => break,
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_file_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let pid = PidFile::acquire(dir.path()).unwrap();
        let text = std::fs::read_to_string(dir.path().join(PID_FILE)).unwrap();
        assert_eq!(text.trim(), std::process::id().to_string());
        // flock locks belong to the open file: a second open in this process conflicts too.
        let err = PidFile::acquire(dir.path()).unwrap_err();
        assert!(
            err.to_string().contains("another submitd") && err.to_string().contains("locked"),
            "{err}"
        );
        pid.remove();
        assert!(!dir.path().join(PID_FILE).exists());
        // A stale file (its server died without removing it) is simply taken over.
        std::fs::write(dir.path().join(PID_FILE), "12345\n").unwrap();
        let taken = PidFile::acquire(dir.path()).unwrap();
        taken.remove();
    }
}
