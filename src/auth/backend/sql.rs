//! `auth.backend = "sql"`: the stored hash comes from a PostgreSQL query, the senders from a
//! second one, and the hash is checked here ([`super::scheme`]).
//!
//! Only prepared statements reach the server: the login is `$1`, sent as a bound parameter,
//! never spliced into SQL text, so a login such as `' OR '1'='1` is just a login that matches
//! no row. Each pooled connection prepares both queries once, when it is opened.
//!
//! TLS follows the connection string's `sslmode`: `require`, `verify-ca` and `verify-full` all
//! mean TLS with the certificate and host name verified (rustls: system roots plus
//! `ca_file`); absent or `disable` means plaintext, for loopback and unix socket deployments.
//! `prefer` is refused: it falls back to plaintext whenever TLS fails.

use std::collections::VecDeque;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::TryStreamExt;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::{Instant, timeout_at};
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::types::{FromSql, ToSql};
use tokio_postgres::{Client, Config, NoTls, Socket, Statement};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::scheme::{self, Refusal, Stored, Verified};
use super::{Answer, AuthRequest, BackendError, Identity};
use crate::config::{SqlSettings, SqlUrl};
use crate::logsafe::Escaped;

/// Rows of the senders query kept for one login; more are ignored (and logged once).
pub const MAX_SENDERS: usize = 1000;
/// Longer sender values are not addresses (RFC 5321 allows 254 octets and a path of 256).
pub const MAX_SENDER_LEN: usize = 320;
/// A connection string file larger than this is not one.
const MAX_URL_FILE: u64 = 64 * 1024;

const KEY_URL: &str = "auth.sql.url";
const KEY_URL_FILE: &str = "auth.sql.url_file";
const KEY_PASSWORD_QUERY: &str = "auth.sql.password_query";
const KEY_SENDERS_QUERY: &str = "auth.sql.senders_query";
const KEY_CA_FILE: &str = "auth.sql.ca_file";
const KEY_TIMEOUT: &str = "auth.backend_timeout";

/// The sql backend: a parsed connection string, the two queries and a connection pool.
pub struct Sql {
    /// Where and how to connect. Boxed, like the pool: both are large and `Directory` holds
    /// one backend by value.
    target: Box<Target>,
    /// `user@host:port/db`, for messages: the connection string without its password.
    described: String,
    password_query: String,
    senders_query: Option<String>,
    timeout: Duration,
    pool: Box<Pool>,
    /// Checked instead of a hash that is missing or refused, so that those logins cost what
    /// a wrong password costs.
    dummy: Arc<Stored>,
    /// Bounds the hash verifications running at once (each may take ~1 s or 256 MiB).
    verifying: Arc<Semaphore>,
}

impl std::fmt::Debug for Sql {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sql")
            .field("target", &self.described)
            .field("tls", &self.target.tls.is_some())
            .field("pool_size", &self.pool.size)
            .finish_non_exhaustive()
    }
}

/// A connection ready for logins: both statements prepared.
struct Conn {
    client: Client,
    password: Statement,
    senders: Option<Statement>,
    /// The task driving the socket; aborted when the connection is dropped, so a connection to
    /// a server that stopped answering does not linger.
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// At most `size` connections in use or idle; idle ones are reused, broken ones dropped.
struct Pool {
    size: usize,
    slots: Semaphore,
    idle: Mutex<VecDeque<Conn>>,
}

/// A connection taken from the pool; dropped unless [`Lease::release`]d (after an error the
/// connection is not trusted again).
struct Lease<'a> {
    conn: Conn,
    pool: &'a Pool,
    /// Whether it came from the idle list (it may have died since).
    reused: bool,
    _slot: SemaphorePermit<'a>,
}

impl Lease<'_> {
    fn release(self) {
        if !self.conn.client.is_closed() {
            let mut idle = self.pool.idle.lock().unwrap_or_else(|p| p.into_inner());
            idle.push_back(self.conn);
        }
    }
}

/// Where and how to connect: the parsed connection string and its TLS.
pub(super) struct Target {
    pub config: Config,
    /// `Some` when the connection string asks for TLS.
    pub tls: Option<MakeRustlsConnect>,
    /// Which key holds the connection string (`url` or `url_file`), for messages.
    pub url_key: &'static str,
}

impl Target {
    /// From `[auth.sql]`: reads `url_file` and `ca_file` and the system roots (for TLS).
    pub fn new(settings: &SqlSettings, timeout: Duration) -> Result<Target, BackendError> {
        let (text, url_key) = match &settings.url {
            SqlUrl::Inline(u) => (u.clone(), KEY_URL),
            SqlUrl::File(path) => (read_url_file(path)?, KEY_URL_FILE),
        };
        let (mut config, wants_tls) = parse_url(&text).map_err(|detail| BackendError::Config {
            key: url_key,
            detail,
        })?;
        config
            .connect_timeout(timeout)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(60))
            .application_name("submitd");
        let tls = match wants_tls {
            true => Some(MakeRustlsConnect::new(tls_config(
                settings.ca_file.as_deref(),
            )?)),
            false => None,
        };
        Ok(Target {
            config,
            tls,
            url_key,
        })
    }

    /// `user@host:port/db` (no password), for messages.
    pub fn describe(&self) -> String {
        describe(&self.config)
    }

    /// Connect (bounded by `deadline`) and spawn the task that drives the connection.
    pub async fn open(
        &self,
        deadline: Instant,
        limit: Duration,
    ) -> Result<(Client, tokio::task::JoinHandle<()>), BackendError> {
        match &self.tls {
            Some(tls) => timeout_at(deadline, open(&self.config, tls.clone())).await,
            None => timeout_at(deadline, open(&self.config, NoTls)).await,
        }
        .map_err(|_| BackendError::Timeout {
            key: self.url_key,
            limit,
        })?
        .map_err(|e| connect_error(self.url_key, &describe(&self.config), &e))
    }
}

impl Sql {
    /// From `[auth.sql]`: reads `url_file` and `ca_file` and the system roots (for TLS);
    /// connects to nothing.
    pub fn new(settings: &SqlSettings, timeout: Duration) -> Result<Sql, BackendError> {
        let target = Target::new(settings, timeout)?;
        let dummy = Arc::new(scheme::parse(&crate::auth::verify::dummy_phc()));
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        Ok(Sql {
            described: target.describe(),
            target: Box::new(target),
            password_query: settings.password_query.clone(),
            senders_query: settings.senders_query.clone(),
            timeout,
            pool: Box::new(Pool {
                size: settings.pool_size,
                slots: Semaphore::new(settings.pool_size),
                idle: Mutex::new(VecDeque::new()),
            }),
            dummy,
            verifying: Arc::new(Semaphore::new(cpus)),
        })
    }

    /// Check one login: the stored hash, verified here; on success the senders.
    pub async fn authenticate(&self, req: &AuthRequest<'_>) -> Answer {
        let deadline = Instant::now() + self.timeout;
        // PostgreSQL text cannot hold NUL: such a login matches nobody (asking would be a
        // query error, an outage to the client).
        let stored = match req.login.contains('\0') {
            true => None,
            false => self.stored_hash(req.login, deadline).await?,
        };
        let stored = stored.map(|s| scheme::parse(&s));
        if let Some(refusal) = stored.as_ref().and_then(refused_before_verifying) {
            scheme::warn_once(refusal);
        }
        let checkable = stored
            .filter(|s| refused_before_verifying(s).is_none())
            .map(Arc::new);
        let verified = match checkable {
            Some(s) => self.verify(s, req.password, deadline).await?,
            None => {
                self.verify(self.dummy.clone(), req.password, deadline)
                    .await?;
                Verified::No
            }
        };
        match verified {
            Verified::Yes => {}
            Verified::No => return Ok(None),
            Verified::Refused(refusal) => {
                scheme::warn_once(refusal);
                // The refusal was instant: spend what a wrong password would.
                self.verify(self.dummy.clone(), req.password, deadline)
                    .await?;
                return Ok(None);
            }
        }
        let senders = self.senders(req.login, deadline).await?;
        Ok(Some(Identity { senders }))
    }

    /// What the directory says about `login` without checking a password (`submitd key
    /// create --owner`): `None` when the password query has no row (or a NULL) for it.
    pub async fn lookup(&self, login: &str) -> Answer {
        let deadline = Instant::now() + self.timeout;
        if login.contains('\0') || self.stored_hash(login, deadline).await?.is_none() {
            return Ok(None);
        }
        let senders = self.senders(login, deadline).await?;
        Ok(Some(Identity { senders }))
    }

    /// `submitd check-config`: connect, log in, prepare both queries and check their types.
    pub async fn check(&self) -> Result<(), BackendError> {
        let deadline = Instant::now() + self.timeout;
        self.connect(deadline).await.map(drop)
    }

    /// The password query's one value for `login`: `None` for no row, NULL, or more than one
    /// row (ambiguous: which one would be the user's?).
    async fn stored_hash(
        &self,
        login: &str,
        deadline: Instant,
    ) -> Result<Option<String>, BackendError> {
        let rows = self
            .run(deadline, KEY_PASSWORD_QUERY, 2, login, |c| &c.password)
            .await?;
        match rows.as_slice() {
            [] => Ok(None),
            [row] => row
                .try_get::<_, Option<String>>(0)
                .map_err(|e| query_error(KEY_PASSWORD_QUERY, &e)),
            _ => {
                static WARNED: AtomicBool = AtomicBool::new(false);
                if !WARNED.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        login = %Escaped(login),
                        "auth.sql.password_query returned more than one row: login refused \
                         (logged once per process; make the query match one row per login)"
                    );
                }
                Ok(None)
            }
        }
    }

    /// The senders query's values for a verified `login` (empty without a senders query).
    async fn senders(&self, login: &str, deadline: Instant) -> Result<Vec<String>, BackendError> {
        if self.senders_query.is_none() {
            return Ok(Vec::new());
        }
        let rows = self
            .run(deadline, KEY_SENDERS_QUERY, MAX_SENDERS + 1, login, |c| {
                c.senders.as_ref().expect("prepared when the query is set")
            })
            .await?;
        let mut senders = Vec::with_capacity(rows.len().min(MAX_SENDERS));
        for row in rows.iter().take(MAX_SENDERS) {
            let value = row
                .try_get::<_, Option<String>>(0)
                .map_err(|e| query_error(KEY_SENDERS_QUERY, &e))?;
            match value.as_deref().map(str::trim) {
                Some(v) if !v.is_empty() && v.len() <= MAX_SENDER_LEN => senders.push(v.to_owned()),
                Some("") | None => {}
                Some(_) => warn_senders_once("a value longer than 320 octets was ignored"),
            }
        }
        if rows.len() > MAX_SENDERS {
            warn_senders_once("more than 1000 rows for one login: the first 1000 are used");
        }
        Ok(senders)
    }

    /// Run one prepared statement for `login`, reading at most `max_rows` rows. A reused
    /// connection that turns out dead is replaced once (the server restarted since it was
    /// opened); any other failure drops the connection.
    async fn run(
        &self,
        deadline: Instant,
        key: &'static str,
        max_rows: usize,
        login: &str,
        statement: impl Fn(&Conn) -> &Statement,
    ) -> Result<Vec<tokio_postgres::Row>, BackendError> {
        let mut retried = false;
        loop {
            let lease = self.lease(deadline).await?;
            let read = read_rows(&lease.conn.client, statement(&lease.conn), login, max_rows);
            let result = timeout_at(deadline, read).await;
            match result {
                Ok(Ok(rows)) => {
                    lease.release();
                    return Ok(rows);
                }
                Ok(Err(e)) if lease.reused && !retried && is_outage(&e) => {
                    tracing::debug!(error = %e, "sql: pooled connection failed, reconnecting");
                    retried = true;
                }
                Ok(Err(e)) if is_outage(&e) => return Err(self.connect_error(&e)),
                Ok(Err(e)) => return Err(query_error(key, &e)),
                Err(_) => {
                    return Err(BackendError::Timeout {
                        key,
                        limit: self.timeout,
                    });
                }
            }
        }
    }

    /// A pooled connection: an idle one that is still open, else a new one.
    async fn lease(&self, deadline: Instant) -> Result<Lease<'_>, BackendError> {
        let slot = timeout_at(deadline, self.pool.slots.acquire())
            .await
            .map_err(|_| BackendError::Timeout {
                key: KEY_TIMEOUT,
                limit: self.timeout,
            })?
            .expect("the pool's semaphore is never closed");
        loop {
            let idle = {
                let mut idle = self.pool.idle.lock().unwrap_or_else(|p| p.into_inner());
                idle.pop_front()
            };
            match idle {
                Some(conn) if conn.client.is_closed() => continue,
                Some(conn) => {
                    return Ok(Lease {
                        conn,
                        pool: &self.pool,
                        reused: true,
                        _slot: slot,
                    });
                }
                None => break,
            }
        }
        Ok(Lease {
            conn: self.connect(deadline).await?,
            pool: &self.pool,
            reused: false,
            _slot: slot,
        })
    }

    /// Open a connection, log in and prepare both statements, all before `deadline`.
    async fn connect(&self, deadline: Instant) -> Result<Conn, BackendError> {
        let (client, driver) = self.target.open(deadline, self.timeout).await?;
        let prepare = async {
            let password = prepare(&client, KEY_PASSWORD_QUERY, &self.password_query).await?;
            let senders = match &self.senders_query {
                Some(q) => Some(prepare(&client, KEY_SENDERS_QUERY, q).await?),
                None => None,
            };
            Ok::<_, BackendError>((password, senders))
        };
        let prepared = timeout_at(deadline, prepare).await;
        match prepared {
            Ok(Ok((password, senders))) => Ok(Conn {
                client,
                password,
                senders,
                driver,
            }),
            Ok(Err(e)) => {
                driver.abort();
                Err(e)
            }
            Err(_) => {
                driver.abort();
                Err(BackendError::Timeout {
                    key: KEY_PASSWORD_QUERY,
                    limit: self.timeout,
                })
            }
        }
    }

    fn connect_error(&self, e: &tokio_postgres::Error) -> BackendError {
        connect_error(self.target.url_key, &self.described, e)
    }

    /// Check `password` against `stored` on the blocking pool, at most one verification per
    /// CPU at once.
    async fn verify(
        &self,
        stored: Arc<Stored>,
        password: &str,
        deadline: Instant,
    ) -> Result<Verified, BackendError> {
        let timed_out = || BackendError::Timeout {
            key: KEY_TIMEOUT,
            limit: self.timeout,
        };
        let permit = timeout_at(deadline, self.verifying.clone().acquire_owned())
            .await
            .map_err(|_| timed_out())?
            .expect("the verification semaphore is never closed");
        let password = password.to_owned();
        let job = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            scheme::verify(&stored, &password)
        });
        match timeout_at(deadline, job).await {
            Ok(Ok(v)) => Ok(v),
            // A panic in a hash crate: no answer, not a wrong password.
            Ok(Err(_)) => Err(BackendError::Protocol {
                key: KEY_PASSWORD_QUERY,
                detail: "hash verification failed unexpectedly".into(),
            }),
            Err(_) => Err(timed_out()),
        }
    }
}

/// A failed connection attempt: refused (the server said no to submitd's login or database)
/// or unreachable (anything else). Never includes the connection string.
pub(super) fn connect_error(
    url_key: &'static str,
    target: &str,
    e: &tokio_postgres::Error,
) -> BackendError {
    match e.as_db_error() {
        // Class 28: invalid authorization; 3D000: no such database.
        Some(db) if db.code().code().starts_with("28") || db.code().code() == "3D000" => {
            BackendError::Refused {
                key: url_key,
                detail: format!("{target}: {}", Escaped(db.message())),
            }
        }
        Some(db) => BackendError::Unreachable {
            key: url_key,
            detail: format!("{target}: {}", Escaped(db.message())),
        },
        None => BackendError::Unreachable {
            key: url_key,
            detail: format!("{target}: {}", Escaped(error_chain(e))),
        },
    }
}

/// Refusals known from the stored value alone (no hash to run).
fn refused_before_verifying(stored: &Stored) -> Option<Refusal> {
    match stored {
        Stored::Argon2(_) | Stored::Bcrypt { .. } | Stored::ShaCrypt { .. } => None,
        Stored::Plaintext(s) => Some(Refusal::Plaintext(s)),
        Stored::Weak(s) => Some(Refusal::Weak(s)),
        Stored::Unsupported(s) => Some(Refusal::Unsupported(s)),
        Stored::Unknown => Some(Refusal::Unknown),
    }
}

fn warn_senders_once(what: &str) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!("auth.sql.senders_query: {what} (logged once per process)");
    }
}

/// Connect and spawn the task that drives the connection.
async fn open<T>(
    config: &Config,
    tls: T,
) -> Result<(Client, tokio::task::JoinHandle<()>), tokio_postgres::Error>
where
    T: MakeTlsConnect<Socket>,
    T::Stream: Send + 'static,
{
    let (client, connection) = config.connect(tls).await?;
    let driver = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "sql: connection closed");
        }
    });
    Ok((client, driver))
}

/// Prepare `query` and check that it takes the login as text and returns text.
async fn prepare(
    client: &Client,
    key: &'static str,
    query: &str,
) -> Result<Statement, BackendError> {
    let stmt = client
        .prepare(query)
        .await
        .map_err(|e| query_error(key, &e))?;
    match stmt.params() {
        [ty] if <&str as ToSql>::accepts(ty) => {}
        [ty] => {
            return Err(BackendError::Query {
                key,
                detail: format!(
                    "$1 is compared as {ty}, but the login is text (cast it: $1::text)"
                ),
            });
        }
        params => {
            return Err(BackendError::Query {
                key,
                detail: format!("takes {} parameters; it must take exactly $1", params.len()),
            });
        }
    }
    match stmt.columns().first() {
        Some(col) if <String as FromSql>::accepts(col.type_()) => Ok(stmt),
        Some(col) => Err(BackendError::Query {
            key,
            detail: format!(
                "its first column {:?} is {}, not text (cast it: ::text)",
                Escaped(col.name()).to_string(),
                col.type_()
            ),
        }),
        None => Err(BackendError::Query {
            key,
            detail: "returns no column".into(),
        }),
    }
}

/// At most `max_rows` rows of `stmt` for `login`; the rest is left unread (the connection
/// discards it).
async fn read_rows(
    client: &Client,
    stmt: &Statement,
    login: &str,
    max_rows: usize,
) -> Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
    let stream = client.query_raw(stmt, [login]).await?;
    let mut stream = std::pin::pin!(stream);
    let mut rows = Vec::new();
    while rows.len() < max_rows {
        match stream.try_next().await? {
            Some(row) => rows.push(row),
            None => break,
        }
    }
    Ok(rows)
}

/// Whether `e` is the connection or the server failing rather than the query: a closed
/// socket, or SQLSTATE class 08 (connection), 53 (resources), 57 (operator intervention, e.g.
/// the server shutting down) or 58 (system error).
pub(super) fn is_outage(e: &tokio_postgres::Error) -> bool {
    match e.as_db_error() {
        None => true,
        Some(db) => ["08", "53", "57", "58"]
            .iter()
            .any(|class| db.code().code().starts_with(class)),
    }
}

/// A failed prepare or query, naming the server's message.
pub(super) fn query_error(key: &'static str, e: &tokio_postgres::Error) -> BackendError {
    let detail = match e.as_db_error() {
        Some(db) => format!("{} ({})", Escaped(db.message()), db.code().code()),
        None => Escaped(error_chain(e)).to_string(),
    };
    BackendError::Query { key, detail }
}

/// An error with its causes, `a: b: c`.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text = format!("{text}: {s_text}");
        }
        source = s.source();
    }
    text
}

/// Parse the connection string; `Ok((config, tls))`. Errors never quote the string (it may
/// hold a password).
fn parse_url(text: &str) -> Result<(Config, bool), String> {
    // tokio-postgres knows disable/prefer/require; here every TLS mode verifies, so libpq's
    // verify-* spellings mean require.
    let text = text
        .replace("sslmode=verify-full", "sslmode=require")
        .replace("sslmode=verify-ca", "sslmode=require");
    let mut config = Config::from_str(&text)
        .map_err(|e| format!("not a PostgreSQL connection string (URL or key=value): {e}"))?;
    if config.get_hosts().is_empty() {
        return Err("names no host (add host=... or postgresql://HOST/...)".into());
    }
    match config.get_ssl_mode() {
        SslMode::Require => Ok((config, true)),
        SslMode::Disable => Ok((config, false)),
        SslMode::Prefer if !text.contains("sslmode") => {
            config.ssl_mode(SslMode::Disable);
            Ok((config, false))
        }
        _ => Err(
            "sslmode=prefer falls back to plaintext when TLS fails: use \
                  sslmode=verify-full (TLS, certificate checked) or sslmode=disable"
                .into(),
        ),
    }
}

/// rustls with the system's roots plus `ca_file`'s certificates.
fn tls_config(ca_file: Option<&std::path::Path>) -> Result<rustls::ClientConfig, BackendError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    // Unreadable system roots are not fatal: ca_file may be all that is needed.
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = ca_file {
        let bad = |detail: String| BackendError::Config {
            key: KEY_CA_FILE,
            detail: format!("{}: {detail}", path.display()),
        };
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| bad(e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(e.to_string()))?;
        if certs.is_empty() {
            return Err(bad("no PEM certificate in it".into()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| bad(e.to_string()))?;
        }
    }
    if roots.is_empty() {
        return Err(BackendError::Config {
            key: KEY_CA_FILE,
            detail: "sslmode asks for TLS but no trusted certificate was found (system roots \
                     unreadable, no ca_file)"
                .into(),
        });
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("the default provider supports the default versions")
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Read `url_file`, bounded, without its trailing newline.
fn read_url_file(path: &std::path::Path) -> Result<String, BackendError> {
    use std::io::Read;
    let bad = |detail: String| BackendError::Config {
        key: KEY_URL_FILE,
        detail: format!("{}: {detail}", path.display()),
    };
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_URL_FILE + 1).read_to_string(&mut text))
        .map_err(|e| bad(e.to_string()))?;
    if text.len() as u64 > MAX_URL_FILE {
        return Err(bad("larger than 64 KiB: not a connection string".into()));
    }
    let text = text.trim_end_matches(['\n', '\r']).to_owned();
    if text.trim().is_empty() {
        return Err(bad("is empty".into()));
    }
    Ok(text)
}

/// `user@host:port/db` (no password), for messages.
fn describe(config: &Config) -> String {
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(p)) => p.display().to_string(),
        None => String::new(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("");
    let db = config.get_dbname().unwrap_or(user);
    format!("{user}@{host}:{port}/{db}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_chooses_tls_and_prefer_is_refused() {
        let tls = |u: &str| parse_url(u).map(|(_, t)| t);
        assert_eq!(tls("host=127.0.0.1 user=u"), Ok(false));
        assert_eq!(tls("host=127.0.0.1 user=u sslmode=disable"), Ok(false));
        assert_eq!(
            tls("postgresql://u@db.example.test/mail?sslmode=require"),
            Ok(true)
        );
        assert_eq!(
            tls("postgresql://u@db.example.test/mail?sslmode=verify-full"),
            Ok(true)
        );
        assert_eq!(tls("host=db user=u sslmode=verify-ca"), Ok(true));
        let e = tls("host=db user=u sslmode=prefer").unwrap_err();
        assert!(e.contains("plaintext"), "{e}");
        assert!(tls("user=u").unwrap_err().contains("no host"));
    }

    #[test]
    fn errors_and_descriptions_never_show_the_password() {
        let (config, _) =
            parse_url("postgresql://mail:s3cret-pw@db.example.test:5433/mail").unwrap();
        assert_eq!(describe(&config), "mail@db.example.test:5433/mail");
        assert!(!format!("{config:?}").contains("s3cret-pw"));
        let e = parse_url("postgresql://mail:s3cret-pw@db/mail?sslmode=bogus").unwrap_err();
        assert!(!e.contains("s3cret-pw"), "{e}");
        let e = parse_url("host=db password=s3cret-pw nosuchkey=1").unwrap_err();
        assert!(!e.contains("s3cret-pw"), "{e}");
    }

    #[test]
    fn url_file_is_read_without_its_newline() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("url");
        std::fs::write(&f, "host=db user=u password=p\n").unwrap();
        assert_eq!(read_url_file(&f).unwrap(), "host=db user=u password=p");
        std::fs::write(&f, "\n").unwrap();
        assert_eq!(read_url_file(&f).unwrap_err().key(), KEY_URL_FILE);
        let e = read_url_file(&dir.path().join("missing")).unwrap_err();
        assert_eq!(e.key(), KEY_URL_FILE);
    }
}
