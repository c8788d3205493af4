//! `[auth]`: which directory verifies passwords (`backend`), the users file, the senders a user
//! gets when the directory names none, the verified-login cache, and one section per directory
//! backend (`[auth.dovecot]`, `[auth.ldap]`, `[auth.sql]`; only the selected one is validated).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::value::{duration, one_of, positive, positive_duration, required};
use super::{Context, Problems};

/// `[auth]`.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// Which directory verifies passwords (`backend`, default `"file"`).
    pub backend: AuthBackend,
    /// The users file: required for the file backend; for a directory backend optional, and
    /// then its entries add senders and per-user limits on top of what the directory says.
    pub users: Option<PathBuf>,
    /// The API keys file (`keys`, default `keys.toml` beside the users file, or beside the
    /// config without one); a missing file has no keys.
    pub keys: PathBuf,
    /// How long a verified login is remembered (`cache_ttl`, default 10m); zero = no cache.
    pub cache_ttl: Duration,
    /// The senders of a user whose directory entry names none (`default_senders`, default
    /// `["{login}"]`): templates checked here, expanded per login by `auth::senders`.
    pub default_senders: Vec<String>,
    /// The longest one question to a directory backend may take (`backend_timeout`, default
    /// 5s); past it the client gets `454 4.7.0`.
    pub backend_timeout: Duration,
}

/// `auth.backend` and the selected backend's section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthBackend {
    /// `users.toml` with argon2id hashes (today's behaviour).
    File,
    Dovecot(DovecotSettings),
    Ldap(LdapSettings),
    Sql(SqlSettings),
}

impl AuthBackend {
    /// The name `auth.backend` gives it, also the `backend` label of its metrics.
    pub fn name(&self) -> &'static str {
        match self {
            AuthBackend::File => "file",
            AuthBackend::Dovecot(_) => "dovecot",
            AuthBackend::Ldap(_) => "ldap",
            AuthBackend::Sql(_) => "sql",
        }
    }
}

/// `[auth.dovecot]`: the client side of Dovecot's auth socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DovecotSettings {
    /// `socket`: a path (unix socket, e.g. `/run/dovecot/auth-client`) or `host:port` (TCP).
    pub socket: DovecotSocket,
    /// `service` sent with every request (default `"smtp"`).
    pub service: String,
}

/// Where Dovecot's auth service listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DovecotSocket {
    Unix(PathBuf),
    Tcp { host: String, port: u16 },
}

/// `[auth.ldap]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LdapSettings {
    /// `url`: `ldaps://host[:port]`, or `ldap://host[:port]` with `starttls = true`.
    pub url: String,
    /// `starttls` (default false): upgrade an `ldap://` connection before anything is sent.
    pub starttls: bool,
    /// `ca_file`: PEM certificates trusted besides the system's roots.
    pub ca_file: Option<PathBuf>,
    /// `bind_dn` and `bind_password_file`: the service account that searches (search mode;
    /// both absent = anonymous search).
    pub bind_dn: Option<String>,
    pub bind_password_file: Option<PathBuf>,
    /// `base`: where the search starts (search mode; also required in bind mode, where the
    /// user's own entry is read for its sender attributes).
    pub base: String,
    /// `filter` (default `"(mail={login})"`): `{login}`, `{user}` (local part) and `{domain}`
    /// are replaced by the RFC 4515-escaped values.
    pub filter: String,
    /// `user_dn` (bind mode): a DN template such as `"uid={user},ou=people,dc=example,dc=org"`;
    /// the values are escaped as RFC 4514 DN values. Absent: search, then bind as the DN found.
    pub user_dn: Option<String>,
    /// `keys_base` (none: the keys stay in `auth.keys`): the entry under which API keys are
    /// kept, one `submitdApiKey` entry each (`cn=NAME,KEYS_BASE`).
    pub keys_base: Option<String>,
    /// `keys_bind_dn` and `keys_bind_password_file`: the account `submitd key` binds as to
    /// write keys (both absent: the service account). The server never reads them.
    pub keys_bind_dn: Option<String>,
    pub keys_bind_password_file: Option<PathBuf>,
    /// `sender_attributes` (default `["mail", "mailAlternateAddress"]`).
    pub sender_attributes: Vec<String>,
    /// `pool_size` (default 4): connections kept to the directory.
    pub pool_size: usize,
}

/// `[auth.sql]`: PostgreSQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlSettings {
    /// `url` or `url_file` (exactly one): a `postgresql://` URL or key=value string.
    pub url: SqlUrl,
    /// `password_query`: one row, one column, the stored hash for `$1` = the login.
    pub password_query: String,
    /// `senders_query`: rows of addresses or `@domain` patterns for `$1` = the login.
    pub senders_query: Option<String>,
    /// `ca_file`: PEM certificates trusted for `sslmode=require`/`verify-full` besides the
    /// system's roots.
    pub ca_file: Option<PathBuf>,
    /// `pool_size` (default 4).
    pub pool_size: usize,
    /// `keys_table` (default `"submitd_keys"`; `""` keeps the keys in `auth.keys`): the table
    /// that holds the API keys. `submitd key` creates it when missing and writes it; the
    /// server only reads it. An identifier, optionally schema-qualified (`app.keys`).
    pub keys_table: Option<String>,
}

/// Where the connection string is: in the config, or in a file (which holds a password).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SqlUrl {
    Inline(String),
    File(PathBuf),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuth {
    backend: Option<String>,
    users: Option<String>,
    keys: Option<String>,
    /// Default [`DEFAULT_CACHE_TTL`].
    cache_ttl: Option<String>,
    default_senders: Option<Vec<String>>,
    backend_timeout: Option<String>,
    #[serde(default)]
    dovecot: RawDovecot,
    #[serde(default)]
    ldap: RawLdap,
    #[serde(default)]
    sql: RawSql,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDovecot {
    socket: Option<String>,
    service: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLdap {
    url: Option<String>,
    starttls: Option<bool>,
    ca_file: Option<String>,
    bind_dn: Option<String>,
    bind_password_file: Option<String>,
    base: Option<String>,
    filter: Option<String>,
    user_dn: Option<String>,
    sender_attributes: Option<Vec<String>>,
    pool_size: Option<i64>,
    keys_base: Option<String>,
    keys_bind_dn: Option<String>,
    keys_bind_password_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSql {
    url: Option<String>,
    url_file: Option<String>,
    password_query: Option<String>,
    senders_query: Option<String>,
    ca_file: Option<String>,
    pool_size: Option<i64>,
    keys_table: Option<String>,
}

/// `[auth] cache_ttl` when not given.
const DEFAULT_CACHE_TTL: &str = "10m";
/// Longer than this and a stolen session of memory would hold HMACs for days: refused.
const MAX_CACHE_TTL: Duration = Duration::from_secs(24 * 3600);
/// `[auth] backend_timeout` when not given.
const DEFAULT_BACKEND_TIMEOUT: &str = "5s";
/// A client waits for the AUTH reply; longer than this is a hung session, not a slow directory.
const MAX_BACKEND_TIMEOUT: Duration = Duration::from_secs(60);
/// Connections to one directory.
const MAX_POOL: u64 = 64;

/// Validate `[auth]`.
pub(super) fn parse(raw: &RawAuth, p: &mut Problems<'_>, cx: &Context<'_>) -> Option<AuthSettings> {
    let name = raw.backend.as_deref().unwrap_or("file");
    let kind = one_of(
        p,
        "auth.backend",
        name,
        &[("file", 0), ("dovecot", 1), ("ldap", 2), ("sql", 3)],
    );
    let backend = match kind? {
        0 => Some(AuthBackend::File),
        1 => dovecot(&raw.dovecot, p).map(AuthBackend::Dovecot),
        2 => ldap(&raw.ldap, p, cx).map(AuthBackend::Ldap),
        _ => sql(&raw.sql, p, cx).map(AuthBackend::Sql),
    };
    let users = if matches!(backend, Some(AuthBackend::File)) {
        required(p, cx.bad, "auth.users", &raw.users).map(|v| Some(cx.resolve(v)))
    } else {
        match raw.users.as_deref() {
            Some(v) if v.trim().is_empty() => {
                p.push("auth.users", "must not be empty");
                None
            }
            v => Some(v.map(|v| cx.resolve(v))),
        }
    };
    let keys = match (raw.keys.as_deref(), &users) {
        (Some(v), _) if v.trim().is_empty() => {
            p.push("auth.keys", "must not be empty");
            None
        }
        (Some(v), _) => Some(cx.resolve(v)),
        (None, Some(Some(users))) => Some(users.with_file_name("keys.toml")),
        (None, _) => Some(cx.resolve("keys.toml")),
    };
    let keys_elsewhere = match &backend {
        Some(AuthBackend::Sql(s)) if s.keys_table.is_some() => {
            Some("auth.sql.keys_table (set it to \"\" to keep them in this file)")
        }
        Some(AuthBackend::Ldap(l)) if l.keys_base.is_some() => Some("auth.ldap.keys_base"),
        _ => None,
    };
    if let (Some(_), Some(home)) = (&raw.keys, keys_elsewhere) {
        p.push(
            "auth.keys",
            format!("the API keys live in the directory here: {home}"),
        );
    }
    let cache_ttl_text = raw.cache_ttl.as_deref().unwrap_or(DEFAULT_CACHE_TTL);
    let cache_ttl = duration(p, "auth.cache_ttl", cache_ttl_text).and_then(|d| {
        if d > MAX_CACHE_TTL {
            p.push(
                "auth.cache_ttl",
                format!("{cache_ttl_text:?} is too long: at most 24h (\"0s\" turns the cache off)"),
            );
            return None;
        }
        Some(d)
    });
    let timeout_text = raw
        .backend_timeout
        .as_deref()
        .unwrap_or(DEFAULT_BACKEND_TIMEOUT);
    let backend_timeout =
        positive_duration(p, "auth.backend_timeout", timeout_text).and_then(|d| {
            if d > MAX_BACKEND_TIMEOUT {
                p.push(
                    "auth.backend_timeout",
                    format!("{timeout_text:?} is too long: at most 60s"),
                );
                return None;
            }
            Some(d)
        });
    let default_senders = default_senders(raw.default_senders.as_deref(), p);
    Some(AuthSettings {
        backend: backend?,
        users: users?,
        keys: keys?,
        cache_ttl: cache_ttl?,
        default_senders: default_senders?,
        backend_timeout: backend_timeout?,
    })
}

/// `default_senders`: each `{login}`, `@{login_domain}`, `local@domain` or `@domain`.
fn default_senders(raw: Option<&[String]>, p: &mut Problems<'_>) -> Option<Vec<String>> {
    let Some(list) = raw else {
        return Some(vec!["{login}".to_owned()]);
    };
    if list.is_empty() {
        p.push(
            "auth.default_senders",
            "is empty: a user the directory gives no senders could send as nobody \
             (omit it for [\"{login}\"])",
        );
        return None;
    }
    let mut ok = true;
    for t in list {
        if let Err(e) = check_sender_template(t) {
            p.push("auth.default_senders", e);
            ok = false;
        }
    }
    ok.then(|| list.to_vec())
}

/// Whether `t` is a sender template: `{login}`, `@{login_domain}`, or a literal pattern
/// (`local@domain`, `@domain`) without braces.
pub fn check_sender_template(t: &str) -> Result<(), String> {
    if t == "{login}" || t == "@{login_domain}" {
        return Ok(());
    }
    if t.contains('{') || t.contains('}') {
        return Err(format!(
            "{t:?}: the only placeholders are \"{{login}}\" and \"@{{login_domain}}\", each alone"
        ));
    }
    let Some((_, domain)) = t.rsplit_once('@') else {
        return Err(format!(
            "{t:?} is not {{login}}, @{{login_domain}}, local@domain or @domain"
        ));
    };
    if domain.is_empty() || t.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{t:?} is not a valid sender pattern"));
    }
    Ok(())
}

fn dovecot(raw: &RawDovecot, p: &mut Problems<'_>) -> Option<DovecotSettings> {
    let socket = required(p, &[], "auth.dovecot.socket", &raw.socket).and_then(|s| {
        let s = s.trim();
        if s.starts_with('/') {
            return Some(DovecotSocket::Unix(PathBuf::from(s)));
        }
        let parsed = s.rsplit_once(':').and_then(|(host, port)| {
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let port = port.parse::<u16>().ok().filter(|p| *p != 0)?;
            (!host.is_empty()).then(|| (host.to_owned(), port))
        });
        match parsed {
            Some((host, port)) => Some(DovecotSocket::Tcp { host, port }),
            None => {
                p.push(
                    "auth.dovecot.socket",
                    format!(
                        "{s:?} is neither an absolute socket path nor host:port \
                         (e.g. \"/run/dovecot/auth-client\", \"127.0.0.1:12345\")"
                    ),
                );
                None
            }
        }
    });
    let service = raw.service.as_deref().unwrap_or("smtp");
    let service_ok = !service.is_empty()
        && service
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !service_ok {
        p.push(
            "auth.dovecot.service",
            format!("{service:?} is not a service name (letters, digits, '-', '_')"),
        );
    }
    Some(DovecotSettings {
        socket: socket?,
        service: service_ok.then(|| service.to_owned())?,
    })
}

fn pool_size(p: &mut Problems<'_>, key: &str, raw: Option<i64>) -> Option<usize> {
    positive(p, key, raw.unwrap_or(4), MAX_POOL).map(|n| n as usize)
}

fn ldap(raw: &RawLdap, p: &mut Problems<'_>, cx: &Context<'_>) -> Option<LdapSettings> {
    let starttls = raw.starttls.unwrap_or(false);
    let url = required(p, &[], "auth.ldap.url", &raw.url).and_then(|u| {
        let u = u.trim();
        let lower = u.to_ascii_lowercase();
        if lower.starts_with("ldaps://") {
            if starttls {
                p.push(
                    "auth.ldap.starttls",
                    "ldaps:// is already TLS; starttls = true needs an ldap:// url",
                );
                return None;
            }
            Some(u.to_owned())
        } else if lower.starts_with("ldap://") {
            if !starttls {
                p.push(
                    "auth.ldap.url",
                    format!(
                        "{u:?} without starttls = true would send passwords in the clear; \
                         use ldaps:// or set starttls = true"
                    ),
                );
                return None;
            }
            Some(u.to_owned())
        } else {
            p.push(
                "auth.ldap.url",
                format!("{u:?} is not an ldaps:// or ldap:// url"),
            );
            None
        }
    });
    let base = required(p, &[], "auth.ldap.base", &raw.base).map(str::to_owned);
    let filter = raw.filter.as_deref().unwrap_or("(mail={login})");
    let filter_ok = filter.starts_with('(')
        && filter.ends_with(')')
        && (filter.contains("{login}") || filter.contains("{user}"));
    if !filter_ok {
        p.push(
            "auth.ldap.filter",
            format!("{filter:?} must be a parenthesised filter using {{login}} or {{user}}"),
        );
    }
    if raw.bind_dn.is_some() != raw.bind_password_file.is_some() {
        p.push(
            "auth.ldap.bind_password_file",
            "bind_dn and bind_password_file go together (both absent: anonymous search)",
        );
    }
    if let Some(t) = &raw.user_dn
        && !(t.contains("{login}") || t.contains("{user}"))
    {
        p.push(
            "auth.ldap.user_dn",
            format!("{t:?} must contain {{login}} or {{user}}"),
        );
    }
    let sender_attributes = raw
        .sender_attributes
        .clone()
        .unwrap_or_else(|| vec!["mail".into(), "mailAlternateAddress".into()]);
    let attrs_ok = sender_attributes.iter().all(|a| {
        !a.is_empty()
            && a.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b';')
    });
    if !attrs_ok {
        p.push(
            "auth.ldap.sender_attributes",
            "each must be an attribute name (letters, digits, '-')",
        );
    }
    let pool = pool_size(p, "auth.ldap.pool_size", raw.pool_size);
    let keys_base = ldap_keys_base(raw, p);
    Some(LdapSettings {
        url: url?,
        starttls,
        ca_file: raw.ca_file.as_deref().map(|f| cx.resolve(f)),
        bind_dn: raw.bind_dn.clone(),
        bind_password_file: raw.bind_password_file.as_deref().map(|f| cx.resolve(f)),
        base: base?,
        filter: filter_ok.then(|| filter.to_owned())?,
        user_dn: raw.user_dn.clone(),
        sender_attributes: attrs_ok.then_some(sender_attributes)?,
        pool_size: pool?,
        keys_base: keys_base?,
        keys_bind_dn: raw.keys_bind_dn.clone(),
        keys_bind_password_file: raw
            .keys_bind_password_file
            .as_deref()
            .map(|f| cx.resolve(f)),
    })
}

/// `keys_base` (`Some(None)`: absent, the keys file) and the writer account beside it.
fn ldap_keys_base(raw: &RawLdap, p: &mut Problems<'_>) -> Option<Option<String>> {
    if raw.keys_bind_dn.is_some() != raw.keys_bind_password_file.is_some() {
        p.push(
            "auth.ldap.keys_bind_password_file",
            "keys_bind_dn and keys_bind_password_file go together \
             (both absent: submitd key writes as bind_dn)",
        );
    }
    match raw.keys_base.as_deref().map(str::trim) {
        None => {
            if raw.keys_bind_dn.is_some() {
                p.push(
                    "auth.ldap.keys_bind_dn",
                    "writes API keys under keys_base, which is not set",
                );
            }
            Some(None)
        }
        Some("") => {
            p.push(
                "auth.ldap.keys_base",
                "empty: give the DN the keys are kept under, or leave the key out \
                 (keys in auth.keys)",
            );
            None
        }
        Some(b) => Some(Some(b.to_owned())),
    }
}

fn sql(raw: &RawSql, p: &mut Problems<'_>, cx: &Context<'_>) -> Option<SqlSettings> {
    let url = match (&raw.url, &raw.url_file) {
        (Some(u), None) if !u.trim().is_empty() => Some(SqlUrl::Inline(u.trim().to_owned())),
        (None, Some(f)) if !f.trim().is_empty() => Some(SqlUrl::File(cx.resolve(f.trim()))),
        (Some(_), Some(_)) => {
            p.push("auth.sql.url", "give url or url_file, not both");
            None
        }
        _ => {
            p.push(
                "auth.sql.url",
                "required key is missing (or url_file: a file holding the connection string)",
            );
            None
        }
    };
    let password_query = required(p, &[], "auth.sql.password_query", &raw.password_query)
        .and_then(|q| query(p, "auth.sql.password_query", q));
    // Outer None: the key is there but wrong (reported).
    let senders_query = match &raw.senders_query {
        Some(q) => query(p, "auth.sql.senders_query", q).map(Some),
        None => Some(None),
    };
    let pool = pool_size(p, "auth.sql.pool_size", raw.pool_size);
    let keys_table = match raw.keys_table.as_deref() {
        None => Some(Some(DEFAULT_KEYS_TABLE.to_owned())),
        Some("") => Some(None),
        Some(t) if table_name_ok(t) => Some(Some(t.to_owned())),
        Some(t) => {
            p.push(
                "auth.sql.keys_table",
                format!(
                    "{t:?} is not a table name: [A-Za-z_][A-Za-z0-9_]*, optionally schema.table \
                     (\"\" keeps the keys in auth.keys)"
                ),
            );
            None
        }
    };
    Some(SqlSettings {
        url: url?,
        password_query: password_query?,
        senders_query: senders_query?,
        ca_file: raw.ca_file.as_deref().map(|f| cx.resolve(f)),
        pool_size: pool?,
        keys_table: keys_table?,
    })
}

/// `[auth.sql] keys_table` when not given.
pub const DEFAULT_KEYS_TABLE: &str = "submitd_keys";

/// An unquoted SQL identifier, or two joined by a dot: spliced into statements (a table name
/// cannot be a bound parameter), so nothing else is accepted.
fn table_name_ok(name: &str) -> bool {
    let ident = |s: &str| {
        (1..=63).contains(&s.len())
            && s.bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    };
    match name.split_once('.') {
        Some((schema, table)) => ident(schema) && ident(table),
        None => ident(name),
    }
}

/// A query takes the login as `$1` and nothing else.
fn query(p: &mut Problems<'_>, key: &str, q: &str) -> Option<String> {
    if !q.contains("$1") || q.contains("$2") {
        p.push(
            key,
            format!("{q:?} must use $1 (the login) as its one parameter"),
        );
        return None;
    }
    Some(q.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::{MINIMAL, assert_error, parse, with};

    #[test]
    fn keys_file_defaults_beside_the_users_file() {
        use std::path::Path;
        let keys = |text: &str| parse(text).unwrap().auth.keys;
        assert_eq!(keys(MINIMAL), Path::new("/etc/submitd/keys.toml"));
        let moved = MINIMAL.replace("\"users.toml\"", "\"/srv/u/users.toml\"");
        assert_eq!(keys(&moved), Path::new("/srv/u/keys.toml"));
        assert_eq!(
            keys(&with("keys = \"k/api.toml\"")),
            Path::new("/etc/submitd/k/api.toml")
        );
        assert_error(&with("keys = \" \""), "auth.keys", "must not be empty");
    }

    #[test]
    fn auth_cache_ttl() {
        assert_eq!(
            parse(MINIMAL).unwrap().auth.cache_ttl,
            Duration::from_secs(600)
        );
        let set = |v: &str| format!("{MINIMAL}cache_ttl = \"{v}\"\n");
        assert_eq!(parse(&set("0s")).unwrap().auth.cache_ttl, Duration::ZERO);
        assert_eq!(
            parse(&set("24h")).unwrap().auth.cache_ttl,
            Duration::from_secs(86400)
        );
        assert_error(&set("soon"), "auth.cache_ttl", "not a duration");
        assert_error(&set("25h"), "auth.cache_ttl", "too long: at most 24h");
    }

    #[test]
    fn defaults_are_the_file_backend_with_login_as_sender() {
        let s = parse(MINIMAL).unwrap();
        assert_eq!(s.auth.backend, AuthBackend::File);
        assert_eq!(s.auth.default_senders, vec!["{login}"]);
        assert_eq!(s.auth.backend_timeout, Duration::from_secs(5));
    }

    #[test]
    fn dovecot_socket_is_a_path_or_host_port() {
        let s = parse(&with(
            "backend = \"dovecot\"\n[auth.dovecot]\nsocket = \"/run/dovecot/auth-client\"\n",
        ))
        .unwrap();
        assert_eq!(
            s.auth.backend,
            AuthBackend::Dovecot(DovecotSettings {
                socket: DovecotSocket::Unix("/run/dovecot/auth-client".into()),
                service: "smtp".into(),
            })
        );
        let s = parse(&with(
            "backend = \"dovecot\"\n[auth.dovecot]\nsocket = \"127.0.0.1:12345\"\nservice = \"submission\"\n",
        ))
        .unwrap();
        assert_eq!(
            s.auth.backend,
            AuthBackend::Dovecot(DovecotSettings {
                socket: DovecotSocket::Tcp {
                    host: "127.0.0.1".into(),
                    port: 12345
                },
                service: "submission".into(),
            })
        );
        assert_error(
            &with("backend = \"dovecot\"\n[auth.dovecot]\nsocket = \"dovecot\"\n"),
            "auth.dovecot.socket",
            "neither an absolute socket path",
        );
        assert_error(
            &with("backend = \"dovecot\"\n"),
            "auth.dovecot.socket",
            "required key is missing",
        );
    }

    #[test]
    fn a_directory_backend_does_not_need_a_users_file() {
        let text = "hostname = \"mail.example.test\"\n[tls]\ncert = \"c\"\nkey = \"k\"\n\
                    [auth]\nbackend = \"dovecot\"\n[auth.dovecot]\nsocket = \"/run/a\"\n";
        assert_eq!(parse(text).unwrap().auth.users, None);
        let text = "hostname = \"mail.example.test\"\n[tls]\ncert = \"c\"\nkey = \"k\"\n[auth]\n";
        assert_error(text, "auth.users", "required key is missing");
    }

    #[test]
    fn unselected_sections_are_not_validated() {
        // backend = "file": an incomplete [auth.ldap] is not an error.
        assert!(parse(&with("[auth.ldap]\nfilter = \"(uid={user})\"\n")).is_ok());
    }

    #[test]
    fn ldap_needs_tls() {
        let base = "backend = \"ldap\"\n[auth.ldap]\nbase = \"dc=example,dc=test\"\n";
        assert_error(
            &with(&format!("{base}url = \"ldap://127.0.0.1\"\n")),
            "auth.ldap.url",
            "in the clear",
        );
        let s = parse(&with(&format!(
            "{base}url = \"ldap://127.0.0.1:3890\"\nstarttls = true\n"
        )))
        .unwrap();
        let AuthBackend::Ldap(l) = s.auth.backend else {
            panic!("ldap")
        };
        assert_eq!(l.filter, "(mail={login})");
        assert_eq!(l.sender_attributes, vec!["mail", "mailAlternateAddress"]);
        assert_eq!(l.pool_size, 4);
        assert_error(
            &with(&format!(
                "{base}url = \"ldaps://h\"\nbind_dn = \"cn=admin\"\n"
            )),
            "auth.ldap.bind_password_file",
            "go together",
        );
    }

    #[test]
    fn ldap_keys_base_and_writer() {
        let base = "backend = \"ldap\"\n[auth.ldap]\nbase = \"dc=example,dc=test\"\n\
                    url = \"ldaps://h\"\n";
        let ldap = |extra: &str| {
            let s = parse(&with(&format!("{base}{extra}"))).unwrap();
            let AuthBackend::Ldap(l) = s.auth.backend else {
                panic!("ldap")
            };
            l
        };
        let l = ldap("");
        assert_eq!((l.keys_base, l.keys_bind_dn), (None, None));
        let l = ldap(
            "keys_base = \" ou=keys,dc=example,dc=test \"\nkeys_bind_dn = \"cn=w\"\n\
             keys_bind_password_file = \"w.pw\"\n",
        );
        assert_eq!(l.keys_base.as_deref(), Some("ou=keys,dc=example,dc=test"));
        assert_eq!(l.keys_bind_dn.as_deref(), Some("cn=w"));
        assert_eq!(l.keys_bind_password_file, Some("/etc/submitd/w.pw".into()));
        assert_error(
            &with(&format!("{base}keys_base = \"  \"\n")),
            "auth.ldap.keys_base",
            "empty",
        );
        assert_error(
            &with(&format!(
                "{base}keys_base = \"ou=keys\"\nkeys_bind_dn = \"cn=w\"\n"
            )),
            "auth.ldap.keys_bind_password_file",
            "go together",
        );
        assert_error(
            &with(&format!(
                "{base}keys_bind_dn = \"cn=w\"\nkeys_bind_password_file = \"w.pw\"\n"
            )),
            "auth.ldap.keys_bind_dn",
            "keys_base",
        );
    }

    #[test]
    fn sql_needs_url_and_a_one_parameter_query() {
        let base = "backend = \"sql\"\n[auth.sql]\n";
        let s = parse(&with(&format!(
            "{base}url_file = \"pg-url\"\npassword_query = \"SELECT password FROM users WHERE login = $1\"\n"
        )))
        .unwrap();
        let AuthBackend::Sql(q) = s.auth.backend else {
            panic!("sql")
        };
        assert_eq!(q.url, SqlUrl::File("/etc/submitd/pg-url".into()));
        assert_eq!(q.senders_query, None);
        assert_error(
            &with(&format!("{base}password_query = \"SELECT 1\"\n")),
            "auth.sql.url",
            "required",
        );
        assert_error(
            &with(&format!(
                "{base}url = \"postgresql://x\"\npassword_query = \"SELECT 1\"\n"
            )),
            "auth.sql.password_query",
            "$1",
        );
    }

    #[test]
    fn sql_keys_table_defaults_and_must_be_an_identifier() {
        let sql = |extra: &str| {
            with(&format!(
                "{extra}backend = \"sql\"\n[auth.sql]\nurl = \"host=h\"\n\
                 password_query = \"SELECT p FROM u WHERE l = $1\"\n"
            ))
        };
        let table = |text: &str| match parse(text).unwrap().auth.backend {
            AuthBackend::Sql(q) => q.keys_table,
            _ => panic!("sql"),
        };
        assert_eq!(table(&sql("")).as_deref(), Some("submitd_keys"));
        let t = |v: &str| format!("{}keys_table = \"{v}\"\n", sql(""));
        assert_eq!(table(&t("")), None);
        assert_eq!(table(&t("app.api_keys")).as_deref(), Some("app.api_keys"));
        for bad in ["keys; DROP TABLE users", "a.b.c", "1keys", "\\\"k\\\""] {
            assert_error(&t(bad), "auth.sql.keys_table", "not a table name");
        }
        // A keys file named while the keys live in the table is a mistake, said so.
        assert_error(
            &sql("keys = \"k.toml\"\n"),
            "auth.keys",
            "auth.sql.keys_table",
        );
        assert!(
            parse(&format!(
                "{}keys_table = \"\"\n",
                sql("keys = \"k.toml\"\n")
            ))
            .is_ok()
        );
    }

    #[test]
    fn default_senders_and_timeout_are_checked() {
        let s = parse(&with(
            "default_senders = [\"{login}\", \"@{login_domain}\", \"noreply@example.test\", \"@example.org\"]\nbackend_timeout = \"2s\"\n",
        ))
        .unwrap();
        assert_eq!(s.auth.default_senders.len(), 4);
        assert_eq!(s.auth.backend_timeout, Duration::from_secs(2));
        assert_error(
            &with("default_senders = []\n"),
            "auth.default_senders",
            "empty",
        );
        assert_error(
            &with("default_senders = [\"{user}@x\"]\n"),
            "auth.default_senders",
            "placeholders",
        );
        assert_error(
            &with("backend_timeout = \"0s\"\n"),
            "auth.backend_timeout",
            "longer than 0",
        );
        assert_error(
            &with("backend_timeout = \"2m\"\n"),
            "auth.backend_timeout",
            "too long",
        );
        assert_error(&with("backend = \"nis\"\n"), "auth.backend", "not one of");
    }
}
