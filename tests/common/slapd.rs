//! A real OpenLDAP server (Debian's `slapd`) for the ldap backend tests: its own temp
//! directory, an mdb database loaded with `slapadd`, a CA and a server certificate made with
//! rcgen, `ldaps://` and `ldap://` (StartTLS) on free loopback ports. It can be stopped and
//! started again on the same ports and data, and paused (SIGSTOP: it accepts connections but
//! answers nothing). Killed with its process group when dropped.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use submitd::config::LdapSettings;

/// The suffix of the test directory.
pub const BASE: &str = "dc=example,dc=test";
/// The service account that searches.
pub const SERVICE_DN: &str = "cn=submitd,ou=services,dc=example,dc=test";
pub const SERVICE_PASSWORD: &str = "service-secret-pw";
/// Three users: `(login, password, uid)`. Alice has `mailAlternateAddress` values; Carol's
/// password is stored as `{CRYPT}` (SHA-512), the others' as `{SSHA}`.
pub const ALICE: (&str, &str, &str) = ("alice@example.test", "alice-ldap-pw", "alice");
pub const BOB: (&str, &str, &str) = ("bob@example.test", "bob-ldap-pw", "bob");
pub const CAROL: (&str, &str, &str) = ("carol@example.test", "carol-ldap-pw", "carol");
/// Alice's `mailAlternateAddress` values.
pub const ALICE_ALTERNATES: [&str; 2] = ["alias@example.test", "@alice.example.test"];
/// The DN template of bind mode.
pub const USER_DN: &str = "uid={user},ou=people,dc=example,dc=test";
/// With [`Slapd::start_with_keys`]: where the API keys live, and the account that may write
/// there (and nowhere else; the service account only reads).
pub const KEYS_BASE: &str = "ou=keys,dc=example,dc=test";
pub const WRITER_DN: &str = "cn=keywriter,ou=services,dc=example,dc=test";
pub const WRITER_PASSWORD: &str = "keywriter-secret-pw";
/// submitd's own schema for API keys, as shipped.
const SUBMITD_SCHEMA: &str = include_str!("../../contrib/ldap/submitd.schema");

/// Readiness, stop and start waits end after this.
const WAIT: Duration = Duration::from_secs(30);

/// A tiny schema: `mailAlternateAddress` on an auxiliary object class (OIDs under an
/// example arc: this schema never leaves the test directory).
const MAIL_SCHEMA: &str = "\
attributetype ( 1.3.6.1.4.1.99999.1.1 NAME 'mailAlternateAddress'
  EQUALITY caseIgnoreIA5Match SUBSTR caseIgnoreIA5SubstringsMatch
  SYNTAX 1.3.6.1.4.1.1466.115.121.1.26{256} )
objectclass ( 1.3.6.1.4.1.99999.2.1 NAME 'mailAlternateRecipient' SUP top AUXILIARY
  MAY mailAlternateAddress )
";

/// A running slapd.
pub struct Slapd {
    pub dir: tempfile::TempDir,
    /// `ldaps://` (implicit TLS).
    pub ldaps_port: u16,
    /// `ldap://` (StartTLS).
    pub ldap_port: u16,
    /// The CA that signed the server's certificate (PEM file).
    pub ca_file: PathBuf,
    /// A file holding [`SERVICE_PASSWORD`].
    pub password_file: PathBuf,
    /// A file holding [`WRITER_PASSWORD`].
    pub writer_password_file: PathBuf,
    child: Option<Child>,
}

/// A loopback port free right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A CA and a server certificate for 127.0.0.1/localhost signed by it: (ca pem, cert pem,
/// key pem).
pub fn make_ca_and_server_cert() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "submitd test LDAP CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut server =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    server
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let cert = server.signed_by(&key, &issuer).unwrap();
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

fn slappasswd(password: &str, crypt: bool) -> String {
    let mut cmd = Command::new("slappasswd");
    cmd.args(["-s", password]);
    if crypt {
        cmd.args(["-h", "{CRYPT}", "-c", "$6$%.16s"]);
    } else {
        cmd.args(["-h", "{SSHA}"]);
    }
    let out = cmd.output().expect("slappasswd (package slapd)");
    assert!(out.status.success(), "slappasswd: {out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn user_ldif(user: (&str, &str, &str), hash: &str, alternates: &[&str]) -> String {
    let (mail, _, uid) = user;
    let mut s = format!(
        "dn: uid={uid},ou=people,{BASE}\nobjectClass: inetOrgPerson\n\
         objectClass: mailAlternateRecipient\nuid: {uid}\ncn: {uid}\nsn: {uid}\n\
         mail: {mail}\nuserPassword: {hash}\n"
    );
    for a in alternates {
        s.push_str(&format!("mailAlternateAddress: {a}\n"));
    }
    s.push('\n');
    s
}

fn write_data(dir: &Path, keys: bool) {
    let service = slappasswd(SERVICE_PASSWORD, false);
    let mut ldif = format!(
        "dn: {BASE}\nobjectClass: dcObject\nobjectClass: organization\no: Example\ndc: example\n\n\
         dn: ou=people,{BASE}\nobjectClass: organizationalUnit\nou: people\n\n\
         dn: ou=services,{BASE}\nobjectClass: organizationalUnit\nou: services\n\n\
         dn: {SERVICE_DN}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\n\
         cn: submitd\nuserPassword: {service}\n\n"
    );
    ldif.push_str(&user_ldif(
        ALICE,
        &slappasswd(ALICE.1, false),
        &ALICE_ALTERNATES,
    ));
    ldif.push_str(&user_ldif(BOB, &slappasswd(BOB.1, false), &[]));
    ldif.push_str(&user_ldif(CAROL, &slappasswd(CAROL.1, true), &[]));
    if keys {
        let writer = slappasswd(WRITER_PASSWORD, false);
        ldif.push_str(&format!(
            "dn: {KEYS_BASE}\nobjectClass: organizationalUnit\nou: keys\n\n\
             dn: {WRITER_DN}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\n\
             cn: keywriter\nuserPassword: {writer}\n\n"
        ));
    }
    std::fs::write(dir.join("data.ldif"), ldif).unwrap();
}

fn write_conf(dir: &Path, keys: bool) {
    let d = dir.display();
    // The key writer may write under the keys base only; everyone else only reads.
    let (schema, keys_acl) = if keys {
        (
            format!("include {d}/submitd.schema\n"),
            format!(
                "access to dn.subtree=\"{KEYS_BASE}\" by dn.exact=\"{WRITER_DN}\" write by * read\n"
            ),
        )
    } else {
        (String::new(), String::new())
    };
    let conf = format!(
        "include /etc/ldap/schema/core.schema\n\
         include /etc/ldap/schema/cosine.schema\n\
         include /etc/ldap/schema/inetorgperson.schema\n\
         include /etc/ldap/schema/nis.schema\n\
         include {d}/mail.schema\n\
         {schema}\
         pidfile {d}/slapd.pid\n\
         modulepath /usr/lib/ldap\n\
         moduleload back_mdb\n\
         TLSCACertificateFile {d}/ca.pem\n\
         TLSCertificateFile {d}/server.pem\n\
         TLSCertificateKeyFile {d}/server.key\n\
         database mdb\n\
         maxsize 10485760\n\
         suffix \"{BASE}\"\n\
         rootdn \"cn=admin,{BASE}\"\n\
         directory {d}/db\n\
         access to attrs=userPassword by anonymous auth by self read by * none\n\
         {keys_acl}\
         access to * by * read\n"
    );
    std::fs::write(dir.join("slapd.conf"), conf).unwrap();
}

impl Slapd {
    /// Write the config, the schema, the certificates and the data; load it; start.
    pub fn start() -> Slapd {
        Slapd::start_opts(false)
    }

    /// [`start`](Self::start), with submitd's schema (`contrib/ldap/submitd.schema`), the
    /// [`KEYS_BASE`] entry and the [`WRITER_DN`] account that alone may write under it.
    pub fn start_with_keys() -> Slapd {
        Slapd::start_opts(true)
    }

    fn start_opts(keys: bool) -> Slapd {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::create_dir(p.join("db")).unwrap();
        std::fs::write(p.join("mail.schema"), MAIL_SCHEMA).unwrap();
        std::fs::write(p.join("submitd.schema"), SUBMITD_SCHEMA).unwrap();
        std::fs::write(p.join("writer.pw"), format!("{WRITER_PASSWORD}\n")).unwrap();
        let (ca, cert, key) = make_ca_and_server_cert();
        std::fs::write(p.join("ca.pem"), ca).unwrap();
        std::fs::write(p.join("server.pem"), cert).unwrap();
        std::fs::write(p.join("server.key"), key).unwrap();
        std::fs::write(p.join("service.pw"), format!("{SERVICE_PASSWORD}\n")).unwrap();
        write_conf(p, keys);
        write_data(p, keys);
        let out = Command::new("slapadd")
            .arg("-f")
            .arg(p.join("slapd.conf"))
            .arg("-l")
            .arg(p.join("data.ldif"))
            .output()
            .expect("slapadd (package slapd)");
        assert!(out.status.success(), "slapadd: {out:?}");
        let mut s = Slapd {
            ca_file: p.join("ca.pem"),
            password_file: p.join("service.pw"),
            writer_password_file: p.join("writer.pw"),
            dir,
            ldaps_port: free_port(),
            ldap_port: free_port(),
            child: None,
        };
        s.start_again();
        s
    }

    /// Start slapd (again, after [`stop`](Self::stop)) on the same ports and data; returns
    /// once the ldaps port accepts connections.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "already running");
        let p = self.dir.path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p.join("slapd.log"))
            .unwrap();
        let urls = format!(
            "ldaps://127.0.0.1:{}/ ldap://127.0.0.1:{}/",
            self.ldaps_port, self.ldap_port
        );
        // `-d 0`: stay in the foreground, so the child is slapd itself (SIGSTOP reaches it).
        let mut child = Command::new("slapd")
            .arg("-f")
            .arg(p.join("slapd.conf"))
            .args(["-h", &urls, "-d", "0"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("slapd (package slapd)");
        let deadline = Instant::now() + WAIT;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.ldaps_port));
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("slapd exited: {status}; log:\n{}", self.log());
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "slapd not ready:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child = Some(child);
    }

    /// Stop slapd (SIGTERM, then SIGKILL after the wait); the data stays.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id() as i32;
        unsafe {
            libc::kill(pid, libc::SIGCONT);
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + WAIT;
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                unsafe { libc::killpg(pid, libc::SIGKILL) };
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // The port must be closed before a test expects "unreachable".
        let addr = SocketAddr::from(([127, 0, 0, 1], self.ldaps_port));
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            assert!(
                Instant::now() < deadline,
                "slapd still listening after stop"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Freeze slapd (SIGSTOP): the kernel still accepts connections, nothing answers.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
        // SIGSTOP takes effect as each thread is next scheduled: on a busy machine one may
        // still answer a request sent right after kill() returns. Wait until all are stopped.
        let pid = self.child.as_ref().expect("slapd running").id();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::time::Instant::now() < deadline && !all_stopped(pid) {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// Undo [`pause`](Self::pause).
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, sig: i32) {
        let child = self.child.as_ref().expect("slapd running");
        unsafe { libc::kill(child.id() as i32, sig) };
    }

    /// slapd's output so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("slapd.log")).unwrap_or_default()
    }

    pub fn ldaps_url(&self) -> String {
        format!("ldaps://127.0.0.1:{}", self.ldaps_port)
    }

    pub fn ldap_url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.ldap_port)
    }

    /// Search mode over ldaps with the service account, trusting the test CA.
    pub fn search_settings(&self) -> LdapSettings {
        LdapSettings {
            url: self.ldaps_url(),
            starttls: false,
            ca_file: Some(self.ca_file.clone()),
            bind_dn: Some(SERVICE_DN.to_owned()),
            bind_password_file: Some(self.password_file.clone()),
            base: BASE.to_owned(),
            filter: "(mail={login})".to_owned(),
            user_dn: None,
            sender_attributes: vec!["mail".to_owned(), "mailAlternateAddress".to_owned()],
            pool_size: 2,
            keys_base: None,
            keys_bind_dn: None,
            keys_bind_password_file: None,
        }
    }

    /// Bind mode over StartTLS, no service account.
    pub fn bind_settings(&self) -> LdapSettings {
        LdapSettings {
            url: self.ldap_url(),
            starttls: true,
            bind_dn: None,
            bind_password_file: None,
            user_dn: Some(USER_DN.to_owned()),
            ..self.search_settings()
        }
    }

    /// The `[auth.ldap]` table of a submitd config for search mode over ldaps (the README's
    /// example, with this server's port and files).
    pub fn auth_toml(&self) -> String {
        format!(
            "[auth.ldap]\nurl = \"{}\"\nca_file = \"{}\"\nbind_dn = \"{SERVICE_DN}\"\n\
             bind_password_file = \"{}\"\nbase = \"{BASE}\"\nfilter = \"(mail={{login}})\"\n\
             sender_attributes = [\"mail\", \"mailAlternateAddress\"]\npool_size = 4\n",
            self.ldaps_url(),
            self.ca_file.display(),
            self.password_file.display()
        )
    }
}

impl Slapd {
    /// [`auth_toml`](Self::auth_toml) with `keys_base` = [`KEYS_BASE`], and with the writer
    /// account when `writer` (else `submitd key` writes as the read-only service account).
    pub fn keys_auth_toml(&self, writer: bool) -> String {
        let mut t = format!("{}keys_base = \"{KEYS_BASE}\"\n", self.auth_toml());
        if writer {
            t.push_str(&format!(
                "keys_bind_dn = \"{WRITER_DN}\"\nkeys_bind_password_file = \"{}\"\n",
                self.writer_password_file.display()
            ));
        }
        t
    }

    /// `ldapsearch` as the service account over ldaps: the LDIF of `base`'s subtree (or of
    /// `base` alone with `scope` "base"), every attribute.
    pub fn ldapsearch(&self, base: &str, scope: &str) -> String {
        let out = Command::new("ldapsearch")
            .env("LDAPTLS_CACERT", &self.ca_file)
            .env("LDAPTLS_REQCERT", "demand")
            .args(["-LLL", "-x", "-o", "nettimeout=10", "-l", "10"])
            .args([
                "-H",
                &self.ldaps_url(),
                "-D",
                SERVICE_DN,
                "-w",
                SERVICE_PASSWORD,
            ])
            .args(["-b", base, "-s", scope, "(objectClass=*)", "*"])
            .output()
            .expect("ldapsearch (package ldap-utils)");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success() || out.status.code() == Some(32),
            "ldapsearch: {out:?}"
        );
        text
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id() as i32;
            unsafe { libc::killpg(pid, libc::SIGKILL) };
            let _ = child.wait();
        }
    }
}

/// Whether every thread of process `pid` is stopped (state `T` in /proc).
fn all_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|t| {
        std::fs::read_to_string(t.path().join("stat")).is_ok_and(|stat| {
            stat.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('T') || rest.starts_with('t'))
        })
    })
}
