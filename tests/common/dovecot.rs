//! A real Dovecot auth service (Debian's dovecot-core) for the dovecot backend tests: one
//! instance per test in its own temp directory (its own `base_dir`, so instances run side by
//! side), auth-client listening on a unix socket and on a free loopback TCP port, with a
//! passwd-file holding a `{SHA512-CRYPT}` and an `{ARGON2ID}` user (hashed by `doveadm pw`).
//! A second passdb, checkpassword, answers "temporary failure" (exit 111) for [`TEMP_USER`]
//! so the tests see Dovecot's own `code=temp_fail`.
//!
//! Dovecot runs as root here (it drops to `nobody` for its internal processes) in its own
//! process group: stop/pause/drop signal the whole group, so no process is left behind.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The `{SHA512-CRYPT}` user.
pub const SHA_USER: &str = "dana@example.test";
pub const SHA_PASSWORD: &str = "dana-Secret-1";
/// The `{ARGON2ID}` user.
pub const ARGON_USER: &str = "erin@example.test";
pub const ARGON_PASSWORD: &str = "erin-Secret-2";
/// A login the checkpassword passdb answers with a temporary failure.
pub const TEMP_USER: &str = "temp@example.test";
/// Readiness polling stops here.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// The passwd-file lines (hashed once per test binary: argon2id is slow).
fn passwd_file() -> &'static str {
    static FILE: OnceLock<String> = OnceLock::new();
    FILE.get_or_init(|| {
        let sha = doveadm_pw("SHA512-CRYPT", SHA_PASSWORD);
        let argon = doveadm_pw("ARGON2ID", ARGON_PASSWORD);
        assert!(sha.starts_with("{SHA512-CRYPT}$6$"), "{sha}");
        assert!(argon.starts_with("{ARGON2ID}$argon2id$"), "{argon}");
        format!("{SHA_USER}:{sha}::::::\n{ARGON_USER}:{argon}::::::\n")
    })
}

fn doveadm_pw(scheme: &str, password: &str) -> String {
    let out = Command::new("doveadm")
        .args(["pw", "-s", scheme, "-p", password])
        .output()
        .expect("doveadm (dovecot-core) is installed");
    assert!(out.status.success(), "doveadm pw: {out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// How to configure an instance.
#[derive(Debug, Clone)]
pub struct Options {
    /// Dovecot's `auth_mechanisms`.
    pub mechanisms: &'static str,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            mechanisms: "plain login",
        }
    }
}

/// A running Dovecot; killed (whole process group) when dropped.
pub struct Dovecot {
    pub dir: tempfile::TempDir,
    /// The auth-client unix socket (`unix_listener auth-submitd` in `base_dir`, as README's
    /// example, with `nogroup` for submitd's group).
    pub socket: PathBuf,
    /// The auth-client TCP port on 127.0.0.1.
    pub port: u16,
    child: Mutex<Option<Child>>,
}

impl Dovecot {
    /// Start with the default options and wait until both listeners answer a handshake.
    pub fn start() -> Dovecot {
        Dovecot::start_with(Options::default())
    }

    pub fn start_with(options: Options) -> Dovecot {
        let dir = tempfile::tempdir().unwrap();
        // Dovecot's unprivileged processes (nobody) read the files and enter the directory.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let port = free_port();
        write_files(dir.path(), port, &options);
        let dovecot = Dovecot {
            socket: dir.path().join("run/auth-submitd"),
            dir,
            port,
            child: Mutex::new(None),
        };
        dovecot.start_again();
        dovecot
    }

    /// `socket = ...` for `[auth.dovecot]` over the unix socket.
    pub fn unix_setting(&self) -> String {
        self.socket.display().to_string()
    }

    /// `socket = ...` for `[auth.dovecot]` over TCP.
    pub fn tcp_setting(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Start the (stopped) instance again on the same socket, port and files.
    pub fn start_again(&self) {
        let mut slot = self.child.lock().unwrap();
        assert!(slot.is_none(), "already running");
        let log = std::fs::File::create(self.dir.path().join("stderr.log")).unwrap();
        let child = Command::new("dovecot")
            .arg("-F")
            .arg("-c")
            .arg(self.dir.path().join("dovecot.conf"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("dovecot (dovecot-core) is installed");
        *slot = Some(child);
        drop(slot);
        self.wait_ready();
    }

    /// Stop the whole instance (SIGTERM, then SIGKILL after 10 s) and wait for it to be gone.
    pub fn stop(&self) {
        let Some(mut child) = self.child.lock().unwrap().take() else {
            return;
        };
        let group = child.id() as i32;
        signal_group(group, libc::SIGCONT);
        signal_group(group, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        signal_group(group, libc::SIGKILL);
        let _ = child.wait();
        // The children (auth, log, anvil) leave with the master; make sure before a restart.
        let deadline = Instant::now() + Duration::from_secs(10);
        while group_alive(group) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Freeze every Dovecot process: connections are accepted by the kernel, nothing answers.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Undo [`Dovecot::pause`].
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, sig: i32) {
        if let Some(child) = self.child.lock().unwrap().as_ref() {
            signal_group(child.id() as i32, sig);
        }
    }

    /// Dovecot's log (for assertion messages).
    pub fn log(&self) -> String {
        let read =
            |name: &str| std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        format!("{}{}", read("dovecot.log"), read("stderr.log"))
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            let unix = std::os::unix::net::UnixStream::connect(&self.socket)
                .ok()
                .is_some_and(handshake_done);
            let tcp = std::net::TcpStream::connect(("127.0.0.1", self.port))
                .ok()
                .is_some_and(handshake_done);
            if unix && tcp {
                return;
            }
            if let Some(status) = self
                .child
                .lock()
                .unwrap()
                .as_mut()
                .unwrap()
                .try_wait()
                .unwrap()
            {
                panic!("dovecot exited ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "dovecot not ready in 30 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let group = child.id() as i32;
            signal_group(group, libc::SIGCONT);
            signal_group(group, libc::SIGKILL);
            let _ = child.wait();
        }
    }
}

fn signal_group(group: i32, sig: i32) {
    // SAFETY: kill(2) with a negative pid signals the process group we created; no memory
    // is shared.
    unsafe {
        libc::kill(-group, sig);
    }
}

fn group_alive(group: i32) -> bool {
    // SAFETY: signal 0 only checks that the group exists.
    unsafe { libc::kill(-group, 0) == 0 }
}

/// Whether the peer sent a whole auth-client handshake (up to `DONE`) within 2 s.
fn handshake_done<S: Read + Write + SetTimeout>(mut s: S) -> bool {
    s.set_timeout(Duration::from_secs(2));
    if s.write_all(b"VERSION\t1\t2\nCPID\t1\n").is_err() {
        return false;
    }
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while seen.len() < 64 * 1024 {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
        if seen.ends_with(b"DONE\n") {
            return true;
        }
    }
    false
}

/// A read timeout on either kind of std socket.
pub trait SetTimeout {
    fn set_timeout(&self, t: Duration);
}

impl SetTimeout for std::os::unix::net::UnixStream {
    fn set_timeout(&self, t: Duration) {
        let _ = self.set_read_timeout(Some(t));
    }
}

impl SetTimeout for std::net::TcpStream {
    fn set_timeout(&self, t: Duration) {
        let _ = self.set_read_timeout(Some(t));
    }
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn write_files(dir: &Path, port: u16, options: &Options) {
    let d = dir.display();
    std::fs::write(dir.join("passwd"), passwd_file()).unwrap();
    let checkpassword = dir.join("checkpassword.sh");
    std::fs::write(
        &checkpassword,
        format!(
            "#!/bin/sh\n# checkpassword: login NUL password NUL on fd 3; 111 = temporary failure\n\
             user=$(head -c 1024 <&3 | tr '\\0' '\\n' | head -n 1)\n\
             [ \"$user\" = \"{TEMP_USER}\" ] && exit 111\nexit 1\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&checkpassword, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir_all(dir.join("home")).unwrap();
    let config = format!(
        "# The Dovecot of submitd's dovecot backend tests: auth only, no mail protocols.\n\
         base_dir = {d}/run\n\
         state_dir = {d}/state\n\
         log_path = {d}/dovecot.log\n\
         instance_name = submitd-test-{port}\n\
         protocols =\n\
         ssl = no\n\
         listen = 127.0.0.1\n\
         default_internal_user = nobody\n\
         default_internal_group = nogroup\n\
         default_login_user = nobody\n\
         auth_mechanisms = {mechs}\n\
         passdb {{\n  driver = passwd-file\n  args = {d}/passwd\n}}\n\
         passdb {{\n  driver = checkpassword\n  args = {d}/checkpassword.sh\n}}\n\
         userdb {{\n  driver = static\n  args = uid=65534 gid=65534 home={d}/home\n}}\n\
         service auth {{\n\
         \x20 unix_listener auth-submitd {{\n    mode = 0660\n    user = $default_internal_user\n    group = nogroup\n  }}\n\
         \x20 inet_listener auth-client {{\n    address = 127.0.0.1\n    port = {port}\n  }}\n\
         }}\n",
        mechs = options.mechanisms,
    );
    std::fs::write(dir.join("dovecot.conf"), config).unwrap();
}
