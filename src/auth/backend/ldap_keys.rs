//! API keys kept in the LDAP directory (`auth.ldap.keys_base`): one `submitdApiKey` entry per
//! key, `cn=NAME,KEYS_BASE`, one attribute per field of [`KeyEntry`] (the schema ships in
//! `contrib/ldap/submitd.schema` and `submitd.ldif`). Every replica reads the same keys, and
//! `submitd key` on any host changes them for all.
//!
//! The server only reads: a one-level search of the base as the service account (or
//! anonymously), on one kept connection made anew when it fails. `submitd key` writes as
//! `keys_bind_dn` (its password file is read only then, so the server never needs it), or as
//! the service account when that is not set, on a connection of its own per operation.
//!
//! Every value goes to the directory through ldap3's add and modify requests, never spliced
//! into a filter; the key's name (already `[A-Za-z0-9._-]`) is RFC 4514-escaped in the DN
//! all the same. Multi-valued attributes come back in the directory's order, which need not
//! be the order they were written in.

use std::collections::HashSet;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ldap3::{Mod, Scope, SearchOptions};
use tokio::time::{Instant, timeout_at};

use super::BackendError;
use super::ldap::{
    Attrs, KEY_BIND_DN, KEY_PASSWORD_FILE, KEY_URL, check_url, connect,
    describe as describe_result, escape_dn, op_error, parse_entry, rc, read_password, result_error,
    tls_config,
};
use crate::auth::keys::{KeyEntry, KeysError, valid_name};
use crate::config::LdapSettings;
use crate::logsafe::Escaped;

const KEY_BASE: &str = "auth.ldap.keys_base";
const KEY_WRITER: &str = "auth.ldap.keys_bind_dn";
const KEY_WRITER_PASSWORD: &str = "auth.ldap.keys_bind_password_file";

/// More entries than this are not read (and are logged): a bound on what one refresh holds.
/// The directory's own size limit for the service account may be lower (slapd: 500).
pub const MAX_KEYS: usize = 100_000;

/// The object class of a key entry, and the search for them.
const OBJECT_CLASS: &str = "submitdApiKey";
const FILTER: &str = "(objectClass=submitdApiKey)";

/// The attributes of `submitdApiKey` (contrib/ldap/submitd.schema).
mod attr {
    pub const NAME: &str = "cn";
    pub const HASH: &str = "submitdKeyHash";
    pub const OWNER: &str = "submitdKeyOwner";
    pub const SENDER: &str = "submitdKeySender";
    pub const SCOPE: &str = "submitdKeyScope";
    pub const FROM_IP: &str = "submitdKeyFromIP";
    pub const EXPIRES: &str = "submitdKeyExpires";
    pub const RATE: &str = "submitdKeyMessagesPerHour";
    pub const CREATED: &str = "submitdKeyCreated";
    pub const REVOKED: &str = "submitdKeyRevoked";
    pub const PREVIOUS_HASH: &str = "submitdKeyPreviousHash";
    pub const PREVIOUS_UNTIL: &str = "submitdKeyPreviousUntil";
    /// Asked for by name in every search, in [`super::KeyEntry`]'s order.
    pub const ALL: [&str; 12] = [
        NAME,
        HASH,
        OWNER,
        SENDER,
        SCOPE,
        FROM_IP,
        EXPIRES,
        RATE,
        CREATED,
        REVOKED,
        PREVIOUS_HASH,
        PREVIOUS_UNTIL,
    ];
}

/// The keys under `auth.ldap.keys_base`.
pub struct LdapKeys {
    url: String,
    starttls: bool,
    tls: Arc<rustls::ClientConfig>,
    /// The service account (`bind_dn` and its password, read at start); none: anonymous.
    service: Option<(String, String)>,
    /// `keys_bind_dn` and `keys_bind_password_file` (read when a write needs it).
    writer: Option<(String, PathBuf)>,
    base: String,
    timeout: Duration,
    /// The server's reading connection, kept between refreshes.
    conn: tokio::sync::Mutex<Option<ldap3::Ldap>>,
}

impl std::fmt::Debug for LdapKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not derived: the service password must not reach a log through `{:?}`.
        f.debug_struct("LdapKeys")
            .field("url", &self.url)
            .field("base", &self.base)
            .field("bind_dn", &self.service.as_ref().map(|s| &s.0))
            .field("keys_bind_dn", &self.writer.as_ref().map(|w| &w.0))
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// A connection bound as the writer, and who that is (for messages).
struct Writer {
    ldap: ldap3::Ldap,
    who: String,
}

impl LdapKeys {
    /// From `[auth.ldap]` and its `keys_base`: reads `ca_file`, the system roots and
    /// `bind_password_file`; connects to nothing yet. `timeout` bounds each operation whole.
    pub fn new(
        settings: &LdapSettings,
        base: &str,
        timeout: Duration,
    ) -> Result<LdapKeys, BackendError> {
        check_url(&settings.url)?;
        let service = match (&settings.bind_dn, &settings.bind_password_file) {
            (Some(dn), Some(file)) => Some((dn.clone(), read_password(file, KEY_PASSWORD_FILE)?)),
            _ => None,
        };
        let writer = match (&settings.keys_bind_dn, &settings.keys_bind_password_file) {
            (Some(dn), Some(file)) => Some((dn.clone(), file.clone())),
            _ => None,
        };
        Ok(LdapKeys {
            url: settings.url.trim().to_owned(),
            starttls: settings.starttls,
            tls: tls_config(settings.ca_file.as_deref())?,
            service,
            writer,
            base: base.trim().to_owned(),
            timeout,
            conn: tokio::sync::Mutex::new(None),
        })
    }

    /// `entries under BASE at URL`, for messages.
    pub fn describe(&self) -> String {
        format!("entries under {} at {}", self.base, self.url)
    }

    fn timed_out(&self) -> BackendError {
        BackendError::Timeout {
            key: KEY_URL,
            limit: self.timeout,
        }
    }

    /// `op` within the timeout, as a whole.
    async fn bounded<T>(
        &self,
        op: impl Future<Output = Result<T, KeysError>>,
    ) -> Result<T, KeysError> {
        tokio::time::timeout(self.timeout, op)
            .await
            .unwrap_or_else(|_| Err(self.timed_out().into()))
    }

    fn dn(&self, name: &str) -> String {
        format!("cn={},{}", escape_dn(name), self.base)
    }

    /// Every key (at most [`MAX_KEYS`]); a base that does not exist holds none. Entries that
    /// cannot be read as keys are left out and described in the second list.
    pub async fn list(&self) -> Result<(Vec<KeyEntry>, Vec<String>), KeysError> {
        let deadline = Instant::now() + self.timeout;
        let mut guard = timeout_at(deadline, self.conn.lock())
            .await
            .map_err(|_| self.timed_out())?;
        let mut retry = true;
        loop {
            // Taken out while in use: only a connection that answered goes back.
            let kept = guard.take().and_then(|mut c| (!c.is_closed()).then_some(c));
            let (mut ldap, reused) = match kept {
                Some(kept) => (kept, true),
                None => {
                    let fresh = timeout_at(deadline, self.open_as_service())
                        .await
                        .map_err(|_| self.timed_out())??;
                    (fresh, false)
                }
            };
            match timeout_at(deadline, self.search(&mut ldap)).await {
                Ok(Ok(entries)) => {
                    *guard = Some(ldap);
                    return Ok(entries);
                }
                // The kept connection died with a directory restart: one more on a new one.
                Ok(Err(BackendError::Unreachable { .. })) if reused && retry => {
                    tracing::debug!("ldap keys: kept connection failed, reconnecting");
                    retry = false;
                }
                Ok(Err(e)) => return Err(e.into()),
                // An answer may still be in flight: the connection is dropped, never reused.
                Err(_) => return Err(self.timed_out().into()),
            }
        }
    }

    /// A connection bound as the service account (anonymous without one).
    async fn open_as_service(&self) -> Result<ldap3::Ldap, BackendError> {
        let mut ldap = connect(&self.url, self.starttls, &self.tls, self.timeout).await?;
        if let Some((dn, password)) = &self.service {
            bind(&mut ldap, dn, password, KEY_BIND_DN).await?;
        }
        Ok(ldap)
    }

    /// The one-level search of the base, entries parsed; problems described.
    async fn search(
        &self,
        ldap: &mut ldap3::Ldap,
    ) -> Result<(Vec<KeyEntry>, Vec<String>), BackendError> {
        let limit = i32::try_from(MAX_KEYS).unwrap_or(i32::MAX);
        let res = ldap
            .with_search_options(SearchOptions::new().sizelimit(limit))
            .search(&self.base, Scope::OneLevel, FILTER, attr::ALL.to_vec())
            .await
            .map_err(|e| op_error(e, KEY_BASE))?;
        let mut problems = Vec::new();
        match res.1.rc {
            rc::SUCCESS => {}
            rc::SIZE_LIMIT_EXCEEDED => problems.push(format!(
                "{}: more API keys than the size limit (submitd's {MAX_KEYS}, or the \
                 directory's for this account): the rest are left out",
                Escaped(&self.base)
            )),
            rc::NO_SUCH_OBJECT => return Ok((Vec::new(), Vec::new())),
            _ => return Err(result_error(&res.1, KEY_BASE)),
        }
        let mut entries = Vec::with_capacity(res.0.len().min(MAX_KEYS));
        for raw in res.0.iter().filter(|e| !e.is_ref() && !e.is_intermediate()) {
            if entries.len() >= MAX_KEYS {
                break;
            }
            let Some((dn, attrs)) = parse_entry(&raw.0) else {
                problems.push(format!(
                    "{}: a malformed search result entry",
                    Escaped(&self.base)
                ));
                continue;
            };
            match entry_of(&dn, &attrs) {
                Ok(e) => entries.push(e),
                Err(e) => problems.push(format!("{}: {}", Escaped(&dn), Escaped(&e))),
            }
        }
        Ok((entries, problems))
    }

    /// A new connection bound as `keys_bind_dn`, or the service account, or anonymous.
    async fn open_as_writer(&self) -> Result<Writer, KeysError> {
        let mut ldap = connect(&self.url, self.starttls, &self.tls, self.timeout).await?;
        let who = match (&self.writer, &self.service) {
            (Some((dn, file)), _) => {
                let password = read_password(file, KEY_WRITER_PASSWORD)?;
                bind(&mut ldap, dn, &password, KEY_WRITER).await?;
                format!("keys_bind_dn {}", Escaped(dn))
            }
            (None, Some((dn, password))) => {
                bind(&mut ldap, dn, password, KEY_BIND_DN).await?;
                format!(
                    "the service account {} (keys_bind_dn is not set)",
                    Escaped(dn)
                )
            }
            (None, None) => {
                "an anonymous connection (neither keys_bind_dn nor bind_dn is set)".to_owned()
            }
        };
        Ok(Writer { ldap, who })
    }

    /// Insufficient access on a write: the writer is the one to change.
    fn cannot_write(&self, who: &str, res: &ldap3::LdapResult) -> KeysError {
        KeysError::Backend(BackendError::Refused {
            key: KEY_WRITER,
            detail: format!(
                "{who} has no write access to {}; set keys_bind_dn and \
                 keys_bind_password_file to an account that has ({})",
                Escaped(&self.base),
                describe_result(res)
            ),
        })
    }

    /// The key `name` as stored; `None` when there is no such entry.
    async fn read(
        &self,
        ldap: &mut ldap3::Ldap,
        name: &str,
    ) -> Result<Option<KeyEntry>, KeysError> {
        let dn = self.dn(name);
        let res = ldap
            .search(&dn, Scope::Base, FILTER, attr::ALL.to_vec())
            .await
            .map_err(|e| op_error(e, KEY_BASE))?;
        match res.1.rc {
            rc::SUCCESS => {}
            rc::NO_SUCH_OBJECT => return Ok(None),
            _ => return Err(result_error(&res.1, KEY_BASE).into()),
        }
        let Some(raw) = res.0.iter().find(|e| !e.is_ref() && !e.is_intermediate()) else {
            return Ok(None);
        };
        let parsed = parse_entry(&raw.0)
            .ok_or_else(|| "a malformed search result entry".to_owned())
            .and_then(|(dn, attrs)| entry_of(&dn, &attrs));
        parsed.map(Some).map_err(|message| KeysError::Invalid {
            path: PathBuf::from(&dn),
            message,
        })
    }

    /// Apply `mods` to the key `name` as the writer.
    async fn modify(
        &self,
        w: &mut Writer,
        name: &str,
        mods: Vec<Mod<String>>,
    ) -> Result<(), KeysError> {
        let res = w
            .ldap
            .modify(&self.dn(name), mods)
            .await
            .map_err(|e| op_error(e, KEY_BASE))?;
        match res.rc {
            rc::SUCCESS => Ok(()),
            rc::NO_SUCH_OBJECT => Err(KeysError::NoSuchKey(name.to_owned())),
            rc::INSUFFICIENT_ACCESS => Err(self.cannot_write(&w.who, &res)),
            // The old hash was deleted by value: someone rotated the key meanwhile.
            rc::NO_SUCH_ATTRIBUTE => Err(KeysError::Backend(BackendError::Query {
                key: KEY_BASE,
                detail: format!("key {name:?} changed while this ran; try again"),
            })),
            _ => Err(result_error(&res, KEY_BASE).into()),
        }
    }

    /// Add a key; the base must exist already (it is not created).
    pub async fn create(&self, entry: &KeyEntry) -> Result<(), KeysError> {
        self.bounded(async {
            let mut w = self.open_as_writer().await?;
            let res = w
                .ldap
                .add(&self.dn(&entry.name), attrs_of(entry))
                .await
                .map_err(|e| op_error(e, KEY_BASE))?;
            match res.rc {
                rc::SUCCESS => Ok(()),
                rc::ENTRY_ALREADY_EXISTS => Err(KeysError::Exists(entry.name.clone())),
                rc::NO_SUCH_OBJECT => Err(KeysError::Backend(BackendError::Query {
                    key: KEY_BASE,
                    detail: format!(
                        "{} does not exist: create it (an organizationalUnit, say) before the \
                         first key",
                        Escaped(&self.base)
                    ),
                })),
                rc::INSUFFICIENT_ACCESS => Err(self.cannot_write(&w.who, &res)),
                _ => Err(result_error(&res, KEY_BASE).into()),
            }
        })
        .await
    }

    /// Mark a key revoked at `now` (kept, so the name stays taken); an earlier revocation
    /// stays as it was. A pending rotation grace ends with it.
    pub async fn revoke(&self, name: &str, now: u64) -> Result<(), KeysError> {
        self.bounded(async {
            let mut w = self.open_as_writer().await?;
            let entry = self
                .read(&mut w.ldap, name)
                .await?
                .ok_or_else(|| KeysError::NoSuchKey(name.to_owned()))?;
            let mut mods = Vec::new();
            if entry.revoked.is_none() {
                mods.push(Mod::Replace(attr::REVOKED.into(), one(now.to_string())));
            }
            // Replace with no values deletes, and is no error when there is nothing to delete.
            if entry.previous_hash.is_some() || entry.previous_until.is_some() {
                mods.push(Mod::Replace(attr::PREVIOUS_HASH.into(), HashSet::new()));
                mods.push(Mod::Replace(attr::PREVIOUS_UNTIL.into(), HashSet::new()));
            }
            if mods.is_empty() {
                return Ok(());
            }
            self.modify(&mut w, name, mods).await
        })
        .await
    }

    /// Give a key the new hash; the current one stays valid until `grace_until`. A revoked
    /// key is not rotated.
    pub async fn rotate(&self, name: &str, hash: &str, grace_until: u64) -> Result<(), KeysError> {
        self.bounded(async {
            let mut w = self.open_as_writer().await?;
            let entry = self
                .read(&mut w.ldap, name)
                .await?
                .ok_or_else(|| KeysError::NoSuchKey(name.to_owned()))?;
            if entry.revoked.is_some() {
                return Err(KeysError::Invalid {
                    path: PathBuf::from(&self.base),
                    message: format!("key {name:?} is revoked"),
                });
            }
            // The old hash deleted by value: if another rotation got there first, this one
            // fails instead of dropping that one's secret unnoticed.
            let mods = vec![
                Mod::Delete(attr::HASH.into(), one(entry.hash.clone())),
                Mod::Add(attr::HASH.into(), one(hash.to_owned())),
                Mod::Replace(attr::PREVIOUS_HASH.into(), one(entry.hash)),
                Mod::Replace(attr::PREVIOUS_UNTIL.into(), one(grace_until.to_string())),
            ];
            self.modify(&mut w, name, mods).await
        })
        .await
    }
}

/// Bind `ldap` as `dn`; a refusal names `key`, the setting to fix.
async fn bind(
    ldap: &mut ldap3::Ldap,
    dn: &str,
    password: &str,
    key: &'static str,
) -> Result<(), BackendError> {
    let res = ldap
        .simple_bind(dn, password)
        .await
        .map_err(|e| op_error(e, KEY_URL))?;
    if res.rc != rc::SUCCESS {
        return Err(BackendError::Refused {
            key,
            detail: format!("bind as {} refused: {}", Escaped(dn), describe_result(&res)),
        });
    }
    Ok(())
}

fn one(v: String) -> HashSet<String> {
    HashSet::from([v])
}

/// The attributes of a new key entry (none with no values: LDAP has no empty attribute).
fn attrs_of(e: &KeyEntry) -> Vec<(String, HashSet<String>)> {
    let mut out = vec![
        ("objectClass".to_owned(), one(OBJECT_CLASS.to_owned())),
        (attr::NAME.to_owned(), one(e.name.clone())),
        (attr::HASH.to_owned(), one(e.hash.clone())),
        (attr::CREATED.to_owned(), one(e.created.to_string())),
    ];
    let mut single = |name: &str, v: Option<String>| {
        if let Some(v) = v {
            out.push((name.to_owned(), one(v)));
        }
    };
    single(attr::OWNER, e.owner.clone());
    single(attr::EXPIRES, e.expires.map(|v| v.to_string()));
    single(attr::RATE, e.messages_per_hour.map(|v| v.to_string()));
    single(attr::REVOKED, e.revoked.map(|v| v.to_string()));
    single(attr::PREVIOUS_HASH, e.previous_hash.clone());
    single(
        attr::PREVIOUS_UNTIL,
        e.previous_until.map(|v| v.to_string()),
    );
    for (name, values) in [
        (attr::SENDER, &e.senders),
        (attr::SCOPE, &e.scopes),
        (attr::FROM_IP, &e.from_ip),
    ] {
        if !values.is_empty() {
            out.push((name.to_owned(), values.iter().cloned().collect()));
        }
    }
    out
}

/// The key's name from its DN: the value of a leading `cn=`, which must be a key name.
fn name_of(dn: &str) -> Result<String, String> {
    let rdn = dn.split_once(',').map_or(dn, |(rdn, _)| rdn);
    match rdn.split_once('=') {
        Some((a, v)) if a.trim().eq_ignore_ascii_case(attr::NAME) && valid_name(v) => {
            Ok(v.to_owned())
        }
        _ => Err("the DN does not start with cn=NAME, NAME of A-Z a-z 0-9 . _ -".to_owned()),
    }
}

/// One entry as a [`KeyEntry`]: a missing required attribute, a second value of a
/// single-valued one or a number that is not one is an error, never a panic.
fn entry_of(dn: &str, attrs: &Attrs) -> Result<KeyEntry, String> {
    let values = |name: &str| -> Vec<&str> {
        attrs
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.iter().map(String::as_str))
            .collect()
    };
    let text = |name: &str| -> Result<Option<String>, String> {
        match values(name).as_slice() {
            [] => Ok(None),
            [v] => Ok(Some((*v).to_owned())),
            _ => Err(format!("{name} has more than one value")),
        }
    };
    let num = |name: &str| -> Result<Option<u64>, String> {
        text(name)?
            .map(|v| {
                v.parse::<u64>()
                    .map_err(|_| format!("{name}: {:?} is not a whole number of 0 or more", v))
            })
            .transpose()
    };
    let list =
        |name: &str| -> Vec<String> { values(name).into_iter().map(str::to_owned).collect() };
    let required = |name: &'static str| move || format!("{name} is missing");
    Ok(KeyEntry {
        name: name_of(dn)?,
        hash: text(attr::HASH)?.ok_or_else(required(attr::HASH))?,
        owner: text(attr::OWNER)?,
        senders: list(attr::SENDER),
        scopes: list(attr::SCOPE),
        from_ip: list(attr::FROM_IP),
        expires: num(attr::EXPIRES)?,
        messages_per_hour: num(attr::RATE)?
            .map(|v| u32::try_from(v).map_err(|_| format!("{} is too large", attr::RATE)))
            .transpose()?,
        created: num(attr::CREATED)?.ok_or_else(required(attr::CREATED))?,
        revoked: num(attr::REVOKED)?,
        previous_hash: text(attr::PREVIOUS_HASH)?,
        previous_until: num(attr::PREVIOUS_UNTIL)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(pairs: &[(&str, &[&str])]) -> Attrs {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    fn entry() -> KeyEntry {
        KeyEntry {
            name: "app.1".into(),
            hash: "hmac-sha256$s$m".into(),
            owner: Some("alice@example.test".into()),
            senders: vec!["alice@example.test".into()],
            scopes: vec!["smtp".into(), "api".into()],
            from_ip: vec![],
            expires: Some(1_900_000_000),
            messages_per_hour: Some(10),
            created: 1_800_000_000,
            revoked: None,
            previous_hash: None,
            previous_until: None,
        }
    }

    #[test]
    fn an_entry_written_reads_back_the_same() {
        let e = entry();
        let written: Attrs = attrs_of(&e)
            .into_iter()
            .map(|(n, v)| {
                let mut v: Vec<String> = v.into_iter().collect();
                v.sort();
                // As a directory might: another case for the attribute name.
                (n.to_ascii_lowercase(), v)
            })
            .collect();
        let mut back = entry_of("cn=app.1,ou=keys,dc=t", &written).unwrap();
        back.scopes.sort();
        let mut want = e;
        want.scopes.sort();
        assert_eq!(back, want);
        assert!(!written.iter().any(|(_, v)| v.is_empty()));
    }

    #[test]
    fn bad_entries_are_errors_not_panics() {
        let good: &[(&str, &[&str])] = &[("submitdKeyHash", &["h"]), ("submitdKeyCreated", &["1"])];
        assert!(entry_of("cn=a,ou=k", &attrs(good)).is_ok());
        assert!(entry_of("cn=a", &attrs(good)).is_ok());
        for dn in [
            "uid=a,ou=k",
            "cn=a b,ou=k",
            "cn=,ou=k",
            "",
            "cn=a\\2c,ou=k",
            "cn",
        ] {
            assert!(entry_of(dn, &attrs(good)).is_err(), "{dn}");
        }
        for bad in [
            &[("submitdKeyCreated", &["1"][..])][..],
            &[("submitdKeyHash", &["h"][..])],
            &[
                ("submitdKeyHash", &["h", "i"]),
                ("submitdKeyCreated", &["1"]),
            ],
            &[("submitdKeyHash", &["h"]), ("submitdKeyCreated", &["-1"])],
            &[("submitdKeyHash", &["h"]), ("submitdKeyCreated", &["x"])],
            &[
                ("submitdKeyHash", &["h"]),
                ("submitdKeyCreated", &["1"]),
                ("submitdKeyMessagesPerHour", &["99999999999"]),
            ],
        ] {
            assert!(entry_of("cn=a,ou=k", &attrs(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn names_are_escaped_in_the_dn() {
        let settings = crate::config::LdapSettings {
            url: "ldaps://h".into(),
            starttls: false,
            ca_file: None,
            bind_dn: None,
            bind_password_file: None,
            base: "dc=t".into(),
            filter: "(mail={login})".into(),
            user_dn: None,
            keys_base: Some("ou=keys,dc=t".into()),
            keys_bind_dn: None,
            keys_bind_password_file: None,
            sender_attributes: vec![],
            pool_size: 1,
        };
        // The system may have no roots in a sandbox: then there is nothing to check here.
        let Ok(k) = LdapKeys::new(&settings, "ou=keys,dc=t", Duration::from_secs(1)) else {
            return;
        };
        assert_eq!(k.dn("a,b=c"), "cn=a\\2cb\\3dc,ou=keys,dc=t");
        assert_eq!(k.describe(), "entries under ou=keys,dc=t at ldaps://h");
    }
}
