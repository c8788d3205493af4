//! A real Redis (Debian's `redis-server`) for the state store's tests: in a temp dir, on a free
//! loopback port, no persistence. It can be stopped and started again on the same port (an
//! outage), paused with SIGSTOP (a server that accepts connections and never answers), and
//! started with a password or a TLS port whose certificate comes from a private CA made here.
//! Dropped: killed.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Every wait for the server is bounded by this.
const WAIT: Duration = Duration::from_secs(20);

/// How to start a server.
#[derive(Default, Clone)]
pub struct Options {
    /// `requirepass`.
    pub password: Option<String>,
    /// Also listen with TLS (certificate for localhost and 127.0.0.1 from [`Redis::ca_pem`]).
    pub tls: bool,
}

/// One running (or stopped, or paused) redis-server.
pub struct Redis {
    dir: tempfile::TempDir,
    pub port: u16,
    /// The TLS port, when started with [`Options::tls`].
    pub tls_port: Option<u16>,
    /// The CA that signed the TLS certificate (PEM), written to [`Redis::ca_file`].
    pub ca_pem: Option<String>,
    options: Options,
    child: Option<Child>,
}

impl Redis {
    /// Whether the Debian package is installed.
    pub fn available() -> bool {
        Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// A plain server without a password.
    pub fn start() -> Redis {
        Redis::start_with(Options::default())
    }

    pub fn start_with(options: Options) -> Redis {
        let dir = tempfile::tempdir().unwrap();
        let mut redis = Redis {
            dir,
            port: 0,
            tls_port: None,
            ca_pem: None,
            options,
            child: None,
        };
        if redis.options.tls {
            redis.ca_pem = Some(redis.make_certificates());
        }
        // A port found free may be taken before redis binds it: try a few.
        for _ in 0..5 {
            redis.port = free_port();
            if redis.options.tls {
                redis.tls_port = Some(free_port());
            }
            if redis.try_start() {
                return redis;
            }
        }
        panic!("redis-server would not start:\n{}", redis.log());
    }

    /// `redis://` (with the password, if any) on the plain port.
    pub fn url(&self) -> String {
        match &self.options.password {
            Some(pw) => format!("redis://:{pw}@127.0.0.1:{}/0", self.port),
            None => format!("redis://127.0.0.1:{}/0", self.port),
        }
    }

    /// The CA file written by a TLS start.
    pub fn ca_file(&self) -> std::path::PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Kill the server (SIGKILL: an outage, not a shutdown).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe { libc::kill(child.id() as i32, libc::SIGCONT) };
            let _ = child.kill();
            let _ = wait_bounded(&mut child, WAIT);
        }
    }

    /// Start again on the same port(s) after [`Redis::stop`] (empty: nothing is saved).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "still running");
        // The port may linger a moment after the kill; retry within the bound.
        let deadline = Instant::now() + WAIT;
        while !self.try_start() {
            assert!(
                Instant::now() < deadline,
                "redis-server would not start again:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGSTOP: connections are accepted by the kernel, nothing answers.
    pub fn pause(&self) {
        if let Some(c) = &self.child {
            unsafe { libc::kill(c.id() as i32, libc::SIGSTOP) };
        }
    }

    /// SIGCONT after [`Redis::pause`].
    pub fn resume(&self) {
        if let Some(c) = &self.child {
            unsafe { libc::kill(c.id() as i32, libc::SIGCONT) };
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    /// A private CA and a certificate it signs for localhost and 127.0.0.1; returns the CA.
    fn make_certificates(&self) -> String {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CommonName, "submitd test CA");
        ca_params.distinguished_name = dn;
        let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let leaf_params =
            rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
        let leaf_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let leaf = leaf_params.signed_by(&leaf_key, &*ca).unwrap();
        let dir = self.dir.path();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.join("server.crt"), leaf.pem()).unwrap();
        std::fs::write(dir.join("server.key"), leaf_key.serialize_pem()).unwrap();
        ca.pem()
    }

    /// Spawn and wait until it answers PING; false if it exited (the port was taken).
    fn try_start(&mut self) -> bool {
        let dir = self.dir.path();
        let mut cmd = Command::new("redis-server");
        cmd.args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir)
            .arg("--logfile")
            .arg(dir.join("redis.log"));
        if let Some(pw) = &self.options.password {
            cmd.args(["--requirepass", pw]);
        }
        if let Some(tls) = self.tls_port {
            cmd.args(["--tls-port", &tls.to_string(), "--tls-auth-clients", "no"])
                .arg("--tls-cert-file")
                .arg(dir.join("server.crt"))
                .arg("--tls-key-file")
                .arg(dir.join("server.key"))
                .arg("--tls-ca-cert-file")
                .arg(dir.join("ca.pem"));
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && child.try_wait().unwrap().is_some()
            {
                self.child = None;
                return false;
            }
            if self.answers() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server not ready within {WAIT:?}:\n{}", self.log());
    }

    /// Whether the plain port answers PING (NOAUTH counts: it answered).
    fn answers(&self) -> bool {
        let addr = ([127, 0, 0, 1], self.port).into();
        let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 64];
        s.write_all(b"PING\r\n").is_ok()
            && s.read(&mut buf)
                .is_ok_and(|n| buf[..n].starts_with(b"+PONG") || buf[..n].starts_with(b"-NOAUTH"))
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

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
