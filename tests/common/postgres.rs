//! A real PostgreSQL (Debian's `postgresql`, 15 on bookworm) for the sql backend's tests: its
//! own data directory in a temp dir, run as `nobody` (postgres refuses root), listening on 127.0.0.1 on
//! a free port and on a unix socket in the temp dir. It can be stopped and started again on the
//! same port and data (an outage), and paused with SIGSTOP (a server that accepts connections
//! but never answers). Dropped: the postmaster and its children are killed.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Debian's versioned install directory (15 on bookworm; the newest one present).
fn bin_dir() -> PathBuf {
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|v| Path::new(&format!("/usr/lib/postgresql/{v}/bin/initdb")).exists())
        .max()
        .unwrap_or(15);
    PathBuf::from(format!("/usr/lib/postgresql/{newest}/bin"))
}
/// `nobody`, who owns the data directory and runs the server.
const NOBODY: u32 = 65534;
/// Every wait for the server (start, stop, a psql command) is bounded by this.
const WAIT: Duration = Duration::from_secs(30);

/// The role submitd logs in as, and its password.
pub const ROLE: &str = "submitd";
pub const ROLE_PASSWORD: &str = "pg-role-secret";
/// The database holding the test tables.
pub const DATABASE: &str = "mail";

/// One running (or stopped, or paused) PostgreSQL.
pub struct Postgres {
    dir: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
}

impl Postgres {
    /// Whether the Debian package is installed (tests needing it are `#[ignore]`d otherwise).
    pub fn available() -> bool {
        bin_dir().join("postgres").exists()
    }

    /// initdb, start, and create [`ROLE`] (password login over TCP, scram-sha-256) and
    /// [`DATABASE`].
    pub fn start() -> Postgres {
        let mut dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::chown(dir.path(), Some(NOBODY), Some(NOBODY)).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let status = as_nobody(&bin_dir().join("initdb"))
            .args([
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
            ])
            .args(["-E", "UTF8", "--locale=C", "--no-sync", "-D"])
            .arg(dir.path().join("data"))
            .env("HOME", dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "initdb failed");
        // The port is free when checked; another process may take it before postgres binds,
        // so a failed start tries another one.
        for _ in 0..5 {
            let port = free_port();
            let mut pg = Postgres {
                dir,
                port,
                child: None,
            };
            if pg.try_start() {
                let role = format!("CREATE ROLE {ROLE} LOGIN PASSWORD '{ROLE_PASSWORD}'");
                pg.psql_in("postgres", &role);
                pg.psql_in("postgres", &format!("CREATE DATABASE {DATABASE}"));
                return pg;
            }
            dir = pg.take_dir();
        }
        panic!("postgres would not start (see its log)");
    }

    /// A key=value connection string for [`ROLE`] over TCP on 127.0.0.1.
    pub fn url(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user={ROLE} password={ROLE_PASSWORD} dbname={DATABASE}",
            self.port
        )
    }

    /// The same as a `postgresql://` URL.
    pub fn url_form(&self) -> String {
        format!(
            "postgresql://{ROLE}:{ROLE_PASSWORD}@127.0.0.1:{}/{DATABASE}",
            self.port
        )
    }

    /// Run `sql` in [`DATABASE`] as the superuser over the unix socket; panics on an error.
    pub fn psql(&self, sql: &str) {
        self.psql_in(DATABASE, sql);
    }

    /// Run `sql` in [`DATABASE`] as the superuser: its rows unaligned, `|` between columns.
    pub fn psql_out(&self, sql: &str) -> String {
        let mut child = Command::new(bin_dir().join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(["-U", "postgres", "-d", DATABASE, "-h"])
            .arg(self.dir.path())
            .args(["-p", &self.port.to_string(), "-c", sql])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let status = wait_bounded(&mut child, WAIT).expect("psql hung");
        let (mut out, mut err) = (String::new(), String::new());
        use std::io::Read;
        child.stdout.take().unwrap().read_to_string(&mut out).ok();
        child.stderr.take().unwrap().read_to_string(&mut err).ok();
        assert!(status.success(), "psql {sql:?}: {err}");
        out
    }

    fn psql_in(&self, db: &str, sql: &str) {
        let mut child = Command::new(bin_dir().join("psql"))
            .args([
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-U",
                "postgres",
                "-d",
                db,
            ])
            .arg("-h")
            .arg(self.dir.path())
            .args(["-p", &self.port.to_string(), "-c", sql])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let status = wait_bounded(&mut child, WAIT).expect("psql hung");
        if !status.success() {
            let mut err = String::new();
            use std::io::Read;
            child.stderr.take().unwrap().read_to_string(&mut err).ok();
            panic!("psql {sql:?}: {err}");
        }
    }

    /// Turn TLS on with a fresh self-signed certificate for localhost and 127.0.0.1; returns
    /// the certificate (PEM) to trust.
    pub fn enable_tls(&mut self) -> String {
        let (cert, key) = submitd::tls::self_signed("localhost").unwrap();
        let (cert_path, key_path) = (
            self.dir.path().join("server.crt"),
            self.dir.path().join("server.key"),
        );
        std::fs::write(&cert_path, &cert).unwrap();
        std::fs::write(&key_path, key).unwrap();
        for p in [&cert_path, &key_path] {
            std::os::unix::fs::chown(p, Some(NOBODY), Some(NOBODY)).unwrap();
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        // ALTER SYSTEM refuses to run inside a transaction: one psql call each.
        self.psql(&format!(
            "ALTER SYSTEM SET ssl_cert_file = '{}'",
            cert_path.display()
        ));
        self.psql(&format!(
            "ALTER SYSTEM SET ssl_key_file = '{}'",
            key_path.display()
        ));
        self.psql("ALTER SYSTEM SET ssl = on");
        // A reload applies it asynchronously; a restart applies it before it answers.
        self.stop();
        self.restart();
        cert
    }

    /// Stop the server (fast shutdown: clients are disconnected).
    pub fn stop(&mut self) {
        self.signal(libc::SIGCONT);
        let Some(mut child) = self.child.take() else {
            return;
        };
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        if wait_bounded(&mut child, WAIT).is_none() {
            self.kill_all(&mut child);
        }
    }

    /// Start again on the same port and data after [`Postgres::stop`].
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "still running");
        assert!(
            self.try_start(),
            "postgres would not start again on its port"
        );
    }

    /// SIGSTOP every process of the server: connections are accepted by the kernel, nothing
    /// answers.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// SIGCONT after [`Postgres::pause`].
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    /// The server's log so far (for a failing test's message).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    /// Signal the postmaster and every process it forked. Its children call setsid(), so
    /// the process group alone would miss the backends serving open connections.
    fn signal(&self, sig: i32) {
        let Some(child) = &self.child else {
            return;
        };
        let postmaster = child.id() as i32;
        unsafe { libc::kill(postmaster, sig) };
        for pid in children_of(postmaster) {
            unsafe { libc::kill(pid, sig) };
        }
    }

    fn kill_all(&self, child: &mut Child) {
        let postmaster = child.id() as i32;
        unsafe { libc::kill(postmaster, libc::SIGKILL) };
        for pid in children_of(postmaster) {
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = wait_bounded(child, WAIT);
    }

    /// Spawn the postmaster and wait until it accepts logins; false if it exited.
    fn try_start(&mut self) -> bool {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("postgres.log"))
            .unwrap();
        let socket_dir: PathBuf = self.dir.path().into();
        let child = as_nobody(&bin_dir().join("postgres"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-p",
                &self.port.to_string(),
            ])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", socket_dir.display()))
            .args(["-c", "fsync=off", "-c", "full_page_writes=off"])
            .args(["-c", "synchronous_commit=off", "-c", "max_connections=50"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            let child = self.child.as_mut().unwrap();
            if child.try_wait().unwrap().is_some() {
                self.child = None;
                return false;
            }
            let ready = Command::new(bin_dir().join("pg_isready"))
                .arg("-h")
                .arg(self.dir.path())
                .args(["-p", &self.port.to_string(), "-U", "postgres", "-t", "2"])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("postgres not ready within {WAIT:?}:\n{}", self.log());
    }

    fn take_dir(mut self) -> tempfile::TempDir {
        if let Some(mut child) = self.child.take() {
            self.kill_all(&mut child);
        }
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // A fast shutdown lets the postmaster reap its backends; stop() kills what is left.
        self.stop();
    }
}

/// `program` run as nobody (setpriv, util-linux).
fn as_nobody(program: &Path) -> Command {
    let mut c = Command::new("setpriv");
    c.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
    ])
    .arg(program);
    c
}

/// The processes whose parent is `parent` (from /proc).
fn children_of(parent: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            // /proc/PID/stat: "pid (comm) state ppid ..."; comm may hold spaces and parens.
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let after = &stat[stat.rfind(')')? + 1..];
                    after.split_whitespace().nth(1)?.parse::<i32>().ok()
                })
                == Some(parent)
        })
        .collect()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Wait for `child` at most `limit`; `None` if it is still running.
fn wait_bounded(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
