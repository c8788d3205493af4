//! The LDAP backend (`auth.backend = "ldap"`), over the `ldap3` crate with rustls.
//!
//! Two modes. Bind mode (`user_dn` set): the login is put into a DN template (RFC 4514-escaped)
//! and that DN binds with the password; the entry is then read (scope base) for its sender
//! attributes. Search mode: the service account (or an anonymous connection) searches `base`
//! with `filter` (the login RFC 4515-escaped), exactly one entry must match, and its DN binds
//! with the password.
//!
//! TLS always (`ldaps://`, or `ldap://` + StartTLS), verified against the system roots plus
//! `ca_file`. An empty password never reaches the server: an empty simple bind is an
//! "unauthenticated bind" (RFC 4513 5.1.2) that many servers answer with success.
//!
//! Connections are pooled (`pool_size`); one that failed is dropped and made anew. Each
//! question runs under the backend timeout as a whole; a connection abandoned by a timeout is
//! dropped, never reused with an answer still in flight.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ldap3::asn1::{PL, StructureTag, TagClass};
use ldap3::{LdapConnAsync, LdapConnSettings, LdapError, LdapResult, Scope, SearchOptions};
use tokio::sync::{Semaphore, SemaphorePermit};

use super::{Answer, AuthRequest, BackendError, Identity};
use crate::config::LdapSettings;
use crate::logsafe::Escaped;

/// Config keys named in errors.
pub(super) const KEY_URL: &str = "auth.ldap.url";
const KEY_STARTTLS: &str = "auth.ldap.starttls";
const KEY_CA: &str = "auth.ldap.ca_file";
pub(super) const KEY_BIND_DN: &str = "auth.ldap.bind_dn";
pub(super) const KEY_PASSWORD_FILE: &str = "auth.ldap.bind_password_file";
const KEY_BASE: &str = "auth.ldap.base";
const KEY_FILTER: &str = "auth.ldap.filter";
const KEY_USER_DN: &str = "auth.ldap.user_dn";
const KEY_ATTRS: &str = "auth.ldap.sender_attributes";

/// Longer logins are nobody's (an address is at most 254 octets, RFC 5321 4.5.3.1.3); they
/// are refused before they reach a filter or a DN.
const MAX_LOGIN: usize = 512;
/// A sender value longer than an address can be is skipped.
const MAX_SENDER_LEN: usize = 320;
/// Senders taken from one entry; the rest are ignored (and logged).
const MAX_SENDERS: usize = 1000;
/// A bind password file larger than this is not a password file.
const MAX_PASSWORD_FILE: u64 = 4096;

/// LDAP result codes (RFC 4511 appendix A.1) this backend and [`super::ldap_keys`] tell
/// apart.
pub(super) mod rc {
    pub const SUCCESS: u32 = 0;
    pub const SIZE_LIMIT_EXCEEDED: u32 = 4;
    pub const NO_SUCH_ATTRIBUTE: u32 = 16;
    pub const NO_SUCH_OBJECT: u32 = 32;
    pub const INVALID_DN_SYNTAX: u32 = 34;
    pub const INVALID_CREDENTIALS: u32 = 49;
    pub const INSUFFICIENT_ACCESS: u32 = 50;
    pub const BUSY: u32 = 51;
    pub const UNAVAILABLE: u32 = 52;
    pub const ENTRY_ALREADY_EXISTS: u32 = 68;
}

/// The LDAP backend.
#[derive(Debug)]
pub struct Ldap {
    // Boxed: `Directory` holds one of each backend inline.
    inner: Box<Inner>,
}

struct Inner {
    url: String,
    starttls: bool,
    tls: Arc<rustls::ClientConfig>,
    /// The service account: DN and password (read from `bind_password_file` at start).
    service: Option<(String, String)>,
    base: String,
    filter: String,
    user_dn: Option<String>,
    /// `sender_attributes`, or `["1.1"]` (no attributes, RFC 4511 4.5.1.8) when empty.
    attrs: Vec<String>,
    timeout: Duration,
    pool: Pool,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not derived: the service password must not reach a log through `{:?}`.
        f.debug_struct("Ldap")
            .field("url", &self.url)
            .field("starttls", &self.starttls)
            .field("bind_dn", &self.service.as_ref().map(|s| &s.0))
            .field("base", &self.base)
            .field("filter", &self.filter)
            .field("user_dn", &self.user_dn)
            .field("attrs", &self.attrs)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// What a pooled connection is bound as. A failed bind leaves it anonymous (RFC 4511 4.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bound {
    Anonymous,
    Service,
    User,
}

struct Conn {
    ldap: ldap3::Ldap,
    bound: Bound,
}

/// At most `pool_size` live connections (one permit each); idle ones wait in `idle`.
struct Pool {
    idle: Mutex<Vec<Conn>>,
    slots: Semaphore,
}

/// A connection on loan with its permit; put back only after a question went through whole.
struct Lease<'a> {
    conn: Conn,
    reused: bool,
    permit: SemaphorePermit<'a>,
}

impl Ldap {
    /// From `[auth.ldap]`: reads `ca_file`, the system roots and `bind_password_file`;
    /// connects to nothing.
    pub fn new(settings: &LdapSettings, timeout: Duration) -> Result<Ldap, BackendError> {
        check_url(&settings.url)?;
        let tls = tls_config(settings.ca_file.as_deref())?;
        let service = match (&settings.bind_dn, &settings.bind_password_file) {
            (Some(dn), Some(file)) => Some((dn.clone(), read_password(file, KEY_PASSWORD_FILE)?)),
            _ => None,
        };
        // A filter the client library cannot parse would fail every login: say so now.
        if settings.user_dn.is_none() {
            let sample = expand(&settings.filter, "check@example.test", escape_filter);
            ldap3::parse_filter(&sample).map_err(|_| BackendError::Config {
                key: KEY_FILTER,
                detail: format!("{:?} is not a valid LDAP filter", settings.filter),
            })?;
        }
        let attrs = if settings.sender_attributes.is_empty() {
            vec!["1.1".to_owned()]
        } else {
            settings.sender_attributes.clone()
        };
        let pool_size = settings.pool_size.max(1);
        let inner = Inner {
            url: settings.url.trim().to_owned(),
            starttls: settings.starttls,
            tls,
            service,
            base: settings.base.clone(),
            filter: settings.filter.clone(),
            user_dn: settings.user_dn.clone(),
            attrs,
            timeout,
            pool: Pool {
                idle: Mutex::new(Vec::with_capacity(pool_size)),
                slots: Semaphore::new(pool_size),
            },
        };
        Ok(Ldap {
            inner: Box::new(inner),
        })
    }

    /// Check one login: `Ok(Some)` verified, `Ok(None)` wrong password or unknown login.
    pub async fn authenticate(&self, req: &AuthRequest<'_>) -> Answer {
        if req.password.is_empty() || req.login.is_empty() || req.login.len() > MAX_LOGIN {
            return Ok(None);
        }
        let l = &self.inner;
        tokio::time::timeout(l.timeout, l.authenticate_pooled(req))
            .await
            .map_err(|_| l.timed_out())?
    }

    /// Connect, TLS, the service bind (if any), a base-scope search of `base`, and in search
    /// mode the filter once (for a login nobody has).
    pub async fn check(&self) -> Result<(), BackendError> {
        let l = &self.inner;
        tokio::time::timeout(l.timeout, l.check_inner())
            .await
            .map_err(|_| l.timed_out())?
    }

    /// The entry of `login` without its password (`submitd key create --owner`), read as the
    /// service account (or anonymously): found by the filter, or in bind mode at the DN the
    /// template makes. `Ok(None)`: no entry, or more than one.
    pub async fn lookup(&self, login: &str) -> Answer {
        if login.is_empty() || login.len() > MAX_LOGIN {
            return Ok(None);
        }
        let l = &self.inner;
        tokio::time::timeout(l.timeout, l.lookup(login))
            .await
            .map_err(|_| l.timed_out())?
    }
}

impl Inner {
    fn timed_out(&self) -> BackendError {
        BackendError::Timeout {
            key: KEY_URL,
            limit: self.timeout,
        }
    }

    async fn check_inner(&self) -> Result<(), BackendError> {
        let mut conn = Conn {
            ldap: self.connect().await?,
            bound: Bound::Anonymous,
        };
        self.rest(&mut conn).await?;
        let res = conn
            .ldap
            .search(&self.base, Scope::Base, "(objectClass=*)", vec!["1.1"])
            .await
            .map_err(|e| op_error(e, KEY_BASE))?;
        match res.1.rc {
            rc::SUCCESS => {}
            rc::NO_SUCH_OBJECT => {
                return Err(BackendError::Query {
                    key: KEY_BASE,
                    detail: format!("no such object: {}", Escaped(&self.base)),
                });
            }
            _ => return Err(result_error(&res.1, KEY_BASE)),
        }
        if self.user_dn.is_none() {
            let filter = expand(&self.filter, "nobody@check.invalid", escape_filter);
            let res = conn
                .ldap
                .with_search_options(SearchOptions::new().sizelimit(1))
                .search(&self.base, Scope::Subtree, &filter, vec!["1.1"])
                .await
                .map_err(|e| op_error(e, KEY_FILTER))?;
            if !matches!(res.1.rc, rc::SUCCESS | rc::SIZE_LIMIT_EXCEEDED) {
                return Err(result_error(&res.1, KEY_FILTER));
            }
        }
        Ok(())
    }

    async fn lookup(&self, login: &str) -> Answer {
        let mut conn = Conn {
            ldap: self.connect().await?,
            bound: Bound::Anonymous,
        };
        self.rest(&mut conn).await?;
        let (base, scope, filter) = match &self.user_dn {
            Some(t) => (
                expand(t, login, escape_dn),
                Scope::Base,
                "(objectClass=*)".to_owned(),
            ),
            None => (
                self.base.clone(),
                Scope::Subtree,
                expand(&self.filter, login, escape_filter),
            ),
        };
        let res = conn
            .ldap
            .with_search_options(SearchOptions::new().sizelimit(2))
            .search(&base, scope, &filter, self.attrs.clone())
            .await
            .map_err(|e| op_error(e, KEY_FILTER))?;
        match res.1.rc {
            rc::SUCCESS | rc::SIZE_LIMIT_EXCEEDED | rc::NO_SUCH_OBJECT => {}
            _ => return Err(result_error(&res.1, KEY_FILTER)),
        }
        let entries: Vec<_> = res
            .0
            .iter()
            .filter(|e| !e.is_ref() && !e.is_intermediate())
            .collect();
        let [entry] = entries.as_slice() else {
            return Ok(None);
        };
        let Some((_, attrs)) = parse_entry(&entry.0) else {
            return Err(BackendError::Protocol {
                key: KEY_URL,
                detail: "a search result entry that is not one".into(),
            });
        };
        Ok(Some(Identity {
            senders: self.senders(&attrs),
        }))
    }

    /// One try on a pooled connection; if a reused one turns out dead (the server restarted
    /// since it was last used), one more on a fresh connection.
    async fn authenticate_pooled(&self, req: &AuthRequest<'_>) -> Answer {
        let mut lease = self.lease().await?;
        let mut answer = self.verify(&mut lease.conn, req).await;
        if lease.reused && matches!(answer, Err(BackendError::Unreachable { .. })) {
            let permit = lease.permit;
            lease = Lease {
                conn: self.fresh().await?,
                reused: false,
                permit,
            };
            answer = self.verify(&mut lease.conn, req).await;
        }
        if answer.is_ok() {
            self.release(lease);
        }
        answer
    }

    async fn verify(&self, conn: &mut Conn, req: &AuthRequest<'_>) -> Answer {
        match &self.user_dn {
            Some(template) => self.verify_bind_mode(conn, template, req).await,
            None => self.verify_search_mode(conn, req).await,
        }
    }

    /// Bind as the DN the template makes of the login, then read that entry's senders.
    async fn verify_bind_mode(
        &self,
        conn: &mut Conn,
        template: &str,
        req: &AuthRequest<'_>,
    ) -> Answer {
        let dn = expand(template, req.login, escape_dn);
        let res = conn
            .ldap
            .simple_bind(&dn, req.password)
            .await
            .map_err(|e| op_error(e, KEY_URL))?;
        match res.rc {
            rc::SUCCESS => conn.bound = Bound::User,
            // The DN came from the login: one that names nothing, or cannot be a DN, is an
            // unknown user, not a broken directory.
            rc::INVALID_CREDENTIALS | rc::NO_SUCH_OBJECT | rc::INVALID_DN_SYNTAX => {
                conn.bound = Bound::Anonymous;
                return Ok(None);
            }
            _ => {
                conn.bound = Bound::Anonymous;
                return Err(result_error(&res, KEY_USER_DN));
            }
        }
        if self.service.is_some() {
            self.rest(conn).await?;
        }
        let res = conn
            .ldap
            .search(&dn, Scope::Base, "(objectClass=*)", self.attrs.clone())
            .await
            .map_err(|e| op_error(e, KEY_ATTRS))?;
        match res.1.rc {
            rc::SUCCESS => {}
            // Bound, but the entry is hidden (ACL) or elsewhere: verified, with no senders of
            // its own (default_senders applies).
            rc::NO_SUCH_OBJECT => {
                tracing::debug!(dn = %Escaped(&dn), "ldap: bound, but the entry cannot be read");
                return Ok(Some(Identity::default()));
            }
            _ => return Err(result_error(&res.1, KEY_ATTRS)),
        }
        let senders = res
            .0
            .iter()
            .filter_map(|e| parse_entry(&e.0))
            .next()
            .map(|(_, attrs)| self.senders(&attrs))
            .unwrap_or_default();
        Ok(Some(Identity { senders }))
    }

    /// Search for the login's entry as the service account, then bind as it.
    async fn verify_search_mode(&self, conn: &mut Conn, req: &AuthRequest<'_>) -> Answer {
        self.rest(conn).await?;
        let filter = expand(&self.filter, req.login, escape_filter);
        // Two are enough to know the filter is ambiguous; the server stops there.
        let res = conn
            .ldap
            .with_search_options(SearchOptions::new().sizelimit(2))
            .search(&self.base, Scope::Subtree, &filter, self.attrs.clone())
            .await
            .map_err(|e| op_error(e, KEY_FILTER))?;
        let entries: Vec<_> = res
            .0
            .iter()
            .filter(|e| !e.is_ref() && !e.is_intermediate())
            .collect();
        match res.1.rc {
            rc::SUCCESS | rc::SIZE_LIMIT_EXCEEDED => {}
            rc::NO_SUCH_OBJECT => {
                return Err(BackendError::Query {
                    key: KEY_BASE,
                    detail: format!("no such object: {}", Escaped(&self.base)),
                });
            }
            _ => return Err(result_error(&res.1, KEY_FILTER)),
        }
        if entries.len() > 1 || res.1.rc == rc::SIZE_LIMIT_EXCEEDED {
            tracing::warn!(
                login = %Escaped(req.login),
                "ldap: auth.ldap.filter matches more than one entry for this login; refused"
            );
            return Ok(None);
        }
        let Some(entry) = entries.first() else {
            return Ok(None);
        };
        let Some((dn, attrs)) = parse_entry(&entry.0) else {
            return Err(BackendError::Protocol {
                key: KEY_URL,
                detail: "a search result entry that is not one".into(),
            });
        };
        if dn.is_empty() {
            // An empty DN with a password is an anonymous bind on some servers.
            tracing::warn!(login = %Escaped(req.login), "ldap: the filter matched an entry with an empty DN; refused");
            return Ok(None);
        }
        let bound = conn
            .ldap
            .simple_bind(&dn, req.password)
            .await
            .map_err(|e| op_error(e, KEY_URL))?;
        match bound.rc {
            rc::SUCCESS => {
                conn.bound = Bound::User;
                Ok(Some(Identity {
                    senders: self.senders(&attrs),
                }))
            }
            rc::INVALID_CREDENTIALS => {
                conn.bound = Bound::Anonymous;
                Ok(None)
            }
            _ => {
                conn.bound = Bound::Anonymous;
                Err(result_error(&bound, KEY_URL))
            }
        }
    }

    /// Put the connection back in its resting bind: the service account, or anonymous.
    async fn rest(&self, conn: &mut Conn) -> Result<(), BackendError> {
        let (dn, password, want) = match &self.service {
            Some((dn, pw)) => (dn.as_str(), pw.as_str(), Bound::Service),
            None => ("", "", Bound::Anonymous),
        };
        if conn.bound == want {
            return Ok(());
        }
        let res = conn
            .ldap
            .simple_bind(dn, password)
            .await
            .map_err(|e| op_error(e, KEY_URL))?;
        if res.rc != rc::SUCCESS {
            conn.bound = Bound::Anonymous;
            return Err(BackendError::Refused {
                key: KEY_BIND_DN,
                detail: format!(
                    "{} bind refused: {}",
                    if self.service.is_some() {
                        "service"
                    } else {
                        "anonymous"
                    },
                    describe(&res)
                ),
            });
        }
        conn.bound = want;
        Ok(())
    }

    /// The values of `sender_attributes` on an entry, in the configured order, deduplicated.
    fn senders(&self, attrs: &[(String, Vec<String>)]) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut dropped = 0usize;
        for want in &self.attrs {
            let values = attrs
                .iter()
                .filter(|(name, _)| name.eq_ignore_ascii_case(want))
                .flat_map(|(_, v)| v);
            for v in values {
                let v = v.trim();
                let usable = !v.is_empty()
                    && v.len() <= MAX_SENDER_LEN
                    && !v.chars().any(|c| c.is_control() || c.is_whitespace());
                if !usable || out.len() >= MAX_SENDERS {
                    dropped += 1;
                } else if !out.iter().any(|o| o.eq_ignore_ascii_case(v)) {
                    out.push(v.to_owned());
                }
            }
        }
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "ldap: sender attribute values skipped (empty, too long, control characters or over {MAX_SENDERS})"
            );
        }
        out
    }

    async fn lease(&self) -> Result<Lease<'_>, BackendError> {
        // The semaphore is never closed; an error here would be a bug, reported, not a panic.
        let permit = self
            .pool
            .slots
            .acquire()
            .await
            .map_err(|_| BackendError::Protocol {
                key: KEY_URL,
                detail: "connection pool closed".into(),
            })?;
        while let Some(mut conn) = self.pool.idle.lock().ok().and_then(|mut v| v.pop()) {
            // Closed: the server went away while it was idle.
            if !conn.ldap.is_closed() {
                return Ok(Lease {
                    conn,
                    reused: true,
                    permit,
                });
            }
        }
        Ok(Lease {
            conn: self.fresh().await?,
            reused: false,
            permit,
        })
    }

    fn release(&self, lease: Lease<'_>) {
        if let Ok(mut idle) = self.pool.idle.lock() {
            idle.push(lease.conn);
        }
    }

    async fn fresh(&self) -> Result<Conn, BackendError> {
        Ok(Conn {
            ldap: self.connect().await?,
            bound: Bound::Anonymous,
        })
    }

    async fn connect(&self) -> Result<ldap3::Ldap, BackendError> {
        connect(&self.url, self.starttls, &self.tls, self.timeout).await
    }
}

/// A new connection to `url`, TLS done (ldaps, or StartTLS before anything else is sent);
/// `timeout` bounds the connect.
pub(super) async fn connect(
    url: &str,
    starttls: bool,
    tls: &Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<ldap3::Ldap, BackendError> {
    let settings = LdapConnSettings::new()
        .set_config(tls.clone())
        .set_starttls(starttls)
        .set_conn_timeout(timeout);
    let (conn, ldap) = LdapConnAsync::with_settings(settings, url)
        .await
        .map_err(|e| connect_error(e, timeout))?;
    // The connection task ends when the last handle to it is dropped.
    tokio::spawn(async move {
        if let Err(e) = conn.drive().await {
            tracing::debug!(error = %Escaped(e.to_string()), "ldap: connection closed");
        }
    });
    Ok(ldap)
}

fn connect_error(e: LdapError, timeout: Duration) -> BackendError {
    match e {
        LdapError::Timeout { .. } => BackendError::Timeout {
            key: KEY_URL,
            limit: timeout,
        },
        LdapError::Io { source } => match tls_error(&source) {
            Some(rustls::Error::InvalidCertificate(c)) => {
                let key = match c {
                    rustls::CertificateError::NotValidForName
                    | rustls::CertificateError::NotValidForNameContext { .. } => KEY_URL,
                    _ => KEY_CA,
                };
                BackendError::Unreachable {
                    key,
                    detail: format!("server certificate not accepted: {c:?}"),
                }
            }
            Some(other) => BackendError::Unreachable {
                key: KEY_URL,
                detail: format!("TLS: {other}"),
            },
            None => BackendError::Unreachable {
                key: KEY_URL,
                detail: Escaped(source.to_string()).to_string(),
            },
        },
        LdapError::LdapResult { result } => BackendError::Unreachable {
            key: KEY_STARTTLS,
            detail: format!("StartTLS refused: {}", describe(&result)),
        },
        other => BackendError::Unreachable {
            key: KEY_URL,
            detail: Escaped(other.to_string()).to_string(),
        },
    }
}

/// The rustls error inside an IO error from the handshake, if that is what it is.
fn tls_error(e: &std::io::Error) -> Option<&rustls::Error> {
    e.get_ref()?.downcast_ref::<rustls::Error>()
}

/// An operation's transport failure: the connection is gone or broken.
pub(super) fn op_error(e: LdapError, key: &'static str) -> BackendError {
    match e {
        LdapError::LdapResult { result } => result_error(&result, key),
        LdapError::FilterParsing => BackendError::Query {
            key,
            detail: "invalid filter".into(),
        },
        other => BackendError::Unreachable {
            key: KEY_URL,
            detail: Escaped(other.to_string()).to_string(),
        },
    }
}

/// A result code that is neither success nor an expected refusal.
pub(super) fn result_error(res: &LdapResult, key: &'static str) -> BackendError {
    match res.rc {
        rc::BUSY | rc::UNAVAILABLE => BackendError::Unreachable {
            key: KEY_URL,
            detail: describe(res),
        },
        _ => BackendError::Query {
            key,
            detail: describe(res),
        },
    }
}

/// A result code and the server's text, escaped for a log line.
pub(super) fn describe(res: &LdapResult) -> String {
    if res.text.is_empty() {
        format!("result code {}", res.rc)
    } else {
        format!("result code {}: {}", res.rc, Escaped(&res.text))
    }
}

/// `ldaps://host[:port][/]` or `ldap://…`: a host is needed (the client library would panic
/// on a URL without one), and nothing after it (no base, filter or extensions in the URL).
pub(super) fn check_url(url: &str) -> Result<(), BackendError> {
    let url = url.trim();
    let rest = url
        .split_once("://")
        .map(|(_, r)| r)
        .unwrap_or_default()
        .trim_end_matches('/');
    let bad = |why: &str| BackendError::Config {
        key: KEY_URL,
        detail: format!("{url:?}: {why}"),
    };
    if rest.is_empty() {
        return Err(bad("no host"));
    }
    if rest.contains(['/', '?', '#', '@']) || rest.chars().any(|c| c.is_whitespace()) {
        return Err(bad("only scheme://host[:port] is supported"));
    }
    if rest.starts_with('[') {
        // The client library names the TLS server "[::1]", which no certificate matches.
        return Err(bad("IPv6 literals are not supported: use a host name"));
    }
    Ok(())
}

/// The system's trusted roots plus `ca_file`, aws-lc-rs, TLS 1.2 and 1.3.
pub(super) fn tls_config(
    ca_file: Option<&Path>,
) -> Result<Arc<rustls::ClientConfig>, BackendError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = ca_file {
        let certs = crate::tls::load_certs(path).map_err(|e| BackendError::Config {
            key: KEY_CA,
            detail: e.to_string(),
        })?;
        for cert in certs {
            roots.add(cert).map_err(|e| BackendError::Config {
                key: KEY_CA,
                detail: format!("{}: unusable certificate: {e}", path.display()),
            })?;
        }
    }
    if roots.is_empty() {
        return Err(BackendError::Config {
            key: KEY_CA,
            detail: "no trusted certificates: the system has none; set ca_file".into(),
        });
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| BackendError::Config {
            key: KEY_CA,
            detail: format!("TLS: {e}"),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A bind password (the service account's; `key` names its file's setting): the file's first
/// line, without its line ending.
pub(super) fn read_password(path: &Path, key: &'static str) -> Result<String, BackendError> {
    let bad = |detail: String| BackendError::Config { key, detail };
    let meta = std::fs::metadata(path).map_err(|e| bad(format!("{}: {e}", path.display())))?;
    if meta.len() > MAX_PASSWORD_FILE {
        return Err(bad(format!(
            "{}: too large for a password file",
            path.display()
        )));
    }
    let text =
        std::fs::read_to_string(path).map_err(|e| bad(format!("{}: {e}", path.display())))?;
    let password = text.lines().next().unwrap_or_default();
    if password.is_empty() {
        // An empty password would make the "service" bind an unauthenticated one.
        return Err(bad(format!("{}: empty", path.display())));
    }
    Ok(password.to_owned())
}

/// `template` with `{login}`, `{user}` (the local part) and `{domain}` replaced by the
/// escaped values, in one pass: a value that contains a placeholder is not expanded again.
fn expand(template: &str, login: &str, escape: fn(&str) -> String) -> String {
    let (user, domain) = login.rsplit_once('@').unwrap_or((login, ""));
    let mut out = String::with_capacity(template.len() + login.len() * 3);
    let mut rest = template;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        let (value, len) = if tail.starts_with("{login}") {
            (login, 7)
        } else if tail.starts_with("{user}") {
            (user, 6)
        } else if tail.starts_with("{domain}") {
            (domain, 8)
        } else {
            out.push('{');
            rest = &tail[1..];
            continue;
        };
        out.push_str(&escape(value));
        rest = &tail[len..];
    }
    out.push_str(rest);
    out
}

/// An assertion value in a filter (RFC 4515 3): `*`, `(`, `)`, `\` and NUL as `\XX`.
fn escape_filter(v: &str) -> String {
    ldap3::ldap_escape(v).into_owned()
}

/// An attribute value in a DN (RFC 4514 2.4): `"+,;<=>\` and NUL, a leading space or `#`,
/// a trailing space.
pub(super) fn escape_dn(v: &str) -> String {
    ldap3::dn_escape(v).into_owned()
}

/// An attribute's name and its UTF-8 values (others skipped).
pub(super) type Attrs = Vec<(String, Vec<String>)>;

/// A SearchResultEntry (RFC 4511 4.5.2: `[APPLICATION 4] SEQUENCE { objectName,
/// attributes }`) read without panicking on a malformed one, which ldap3's own
/// `SearchEntry::construct` would do.
pub(super) fn parse_entry(tag: &StructureTag) -> Option<(String, Attrs)> {
    if tag.class != TagClass::Application || tag.id != 4 {
        return None;
    }
    let PL::C(parts) = &tag.payload else {
        return None;
    };
    let [name, list, ..] = parts.as_slice() else {
        return None;
    };
    let PL::P(dn) = &name.payload else {
        return None;
    };
    let dn = String::from_utf8(dn.clone()).ok()?;
    let PL::C(list) = &list.payload else {
        return None;
    };
    let mut attrs = Vec::new();
    for attr in list {
        let PL::C(pair) = &attr.payload else {
            return None;
        };
        let [name, values, ..] = pair.as_slice() else {
            return None;
        };
        let (PL::P(name), PL::C(values)) = (&name.payload, &values.payload) else {
            return None;
        };
        let name = String::from_utf8(name.clone()).ok()?;
        let values = values
            .iter()
            .filter_map(|v| match &v.payload {
                PL::P(bytes) => std::str::from_utf8(bytes).ok().map(str::to_owned),
                PL::C(_) => None,
            })
            .collect();
        attrs.push((name, values));
    }
    Some((dn, attrs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_values_are_escaped() {
        let f = "(&(objectClass=inetOrgPerson)(mail={login}))";
        assert_eq!(
            expand(f, "*)(uid=*", escape_filter),
            "(&(objectClass=inetOrgPerson)(mail=\\2a\\29\\28uid=\\2a))"
        );
        assert_eq!(expand("(mail={login})", "*", escape_filter), "(mail=\\2a)");
        assert_eq!(
            expand("(uid={user})", "a\\b\0c@x", escape_filter),
            "(uid=a\\5cb\\00c)"
        );
        // Every escaped filter still parses as one equality assertion.
        for login in ["*)(uid=*", "*", "(", ")", "\\", "a)(|(uid=*)", "x\0"] {
            let f = expand("(mail={login})", login, escape_filter);
            assert!(ldap3::parse_filter(&f).is_ok(), "{f}");
            assert!(!f[6..f.len() - 1].contains(['*', '(', ')']), "{f}");
        }
    }

    #[test]
    fn placeholders_expand_once() {
        assert_eq!(
            expand(
                "(&(uid={user})(dc={domain}))",
                "{domain}@ex.test",
                escape_filter
            ),
            "(&(uid={domain})(dc=ex.test))"
        );
        assert_eq!(
            expand("(uid={user})", "nodomain", escape_filter),
            "(uid=nodomain)"
        );
        assert_eq!(expand("{nope}{login}", "a", escape_filter), "{nope}a");
        assert_eq!(expand("{", "a", escape_filter), "{");
    }

    #[test]
    fn dn_values_are_escaped() {
        let t = "uid={user},ou=people,dc=example,dc=test";
        assert_eq!(
            expand(t, "a,ou=admins@x", escape_dn),
            "uid=a\\2cou\\3dadmins,ou=people,dc=example,dc=test"
        );
        assert_eq!(
            expand(t, " #x+y@x", escape_dn),
            "uid=\\20#x\\2by,ou=people,dc=example,dc=test"
        );
        assert_eq!(
            expand("uid={login},dc=t", "a ", escape_dn),
            "uid=a\\20,dc=t"
        );
    }

    #[test]
    fn urls_need_a_host_and_nothing_more() {
        assert!(check_url("ldaps://ldap.example.test").is_ok());
        assert!(check_url("ldaps://127.0.0.1:636/").is_ok());
        for bad in [
            "ldaps://",
            "ldaps:///",
            "ldaps://h/dc=x",
            "ldaps://h?x",
            "ldaps://u@h",
            "ldaps://[::1]:636",
        ] {
            assert_eq!(check_url(bad).unwrap_err().key(), KEY_URL, "{bad}");
        }
    }

    #[test]
    fn malformed_entries_are_none_not_panics() {
        let prim = |id, class, bytes: &[u8]| StructureTag {
            id,
            class,
            payload: PL::P(bytes.to_vec()),
        };
        let cons = |id, class, inner: Vec<StructureTag>| StructureTag {
            id,
            class,
            payload: PL::C(inner),
        };
        let u = TagClass::Universal;
        assert!(parse_entry(&prim(4, TagClass::Application, b"x")).is_none());
        assert!(parse_entry(&cons(4, TagClass::Application, vec![])).is_none());
        assert!(parse_entry(&cons(4, TagClass::Application, vec![prim(4, u, b"dn")])).is_none());
        let good = cons(
            4,
            TagClass::Application,
            vec![
                prim(4, u, b"uid=a,dc=t"),
                cons(
                    16,
                    u,
                    vec![cons(
                        16,
                        u,
                        vec![
                            prim(4, u, b"mail"),
                            cons(17, u, vec![prim(4, u, b"a@t"), prim(4, u, b"\xff")]),
                        ],
                    )],
                ),
            ],
        );
        let (dn, attrs) = parse_entry(&good).unwrap();
        assert_eq!(dn, "uid=a,dc=t");
        assert_eq!(attrs, vec![("mail".to_owned(), vec!["a@t".to_owned()])]);
    }
}
