//! API keys kept in PostgreSQL (`auth.sql.keys_table`, default `submitd_keys`), beside the
//! users the sql backend checks: every replica reads the same keys, and `submitd key` on any
//! host changes them for all.
//!
//! One row per key, one column per field of [`KeyEntry`] (so `SELECT name, owner, revoked
//! FROM submitd_keys` reads naturally), plus `updated`: the microseconds of the last change,
//! which the server's cheap change check reads (`count(*)`, `max(updated)`, `sum(updated)`). `submitd key`
//! creates the table when it is missing ([`SCHEMA`]); the server only ever reads it, so its
//! role needs no more than `SELECT` on it. A table that does not exist yet holds no keys.
//!
//! The table name is spliced into the statements (it cannot be a bound parameter); the config
//! accepts only plain identifiers. Every value is a bound parameter.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, timeout_at};
use tokio_postgres::Client;
use tokio_postgres::types::ToSql;

use super::BackendError;
use super::sql::{Target, is_outage, query_error};
use crate::auth::keys::{KeyEntry, KeysError};
use crate::config::SqlSettings;

const KEY_TABLE: &str = "auth.sql.keys_table";
/// More rows than this are not read (and are logged): a bound on what one refresh holds.
pub const MAX_KEYS: usize = 100_000;
/// SQLSTATE `undefined_table`.
const UNDEFINED_TABLE: &str = "42P01";
/// SQLSTATE `unique_violation`.
const UNIQUE_VIOLATION: &str = "23505";

/// The table `submitd key` creates (`{table}` replaced); the README shows the same.
pub const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS {table} (
    name text PRIMARY KEY,
    hash text NOT NULL,
    owner text,
    senders text[] NOT NULL DEFAULT '{}',
    scopes text[] NOT NULL DEFAULT '{}',
    from_ip text[] NOT NULL DEFAULT '{}',
    expires bigint,
    messages_per_hour bigint,
    created bigint NOT NULL,
    revoked bigint,
    previous_hash text,
    previous_until bigint,
    updated bigint NOT NULL
)";

/// The columns of a key, in [`KeyEntry`]'s order.
const COLUMNS: &str = "name, hash, owner, senders, scopes, from_ip, expires, messages_per_hour, \
                       created, revoked, previous_hash, previous_until";

/// The server's clock in microseconds, for `updated` (the server's, so that hosts with
/// skewed clocks still move `max(updated)` forward).
const NOW_MICROS: &str = "(extract(epoch from clock_timestamp()) * 1000000)::bigint";

/// The keys table of `[auth.sql]`, with one connection of its own (not the login pool: a
/// refresh never waits behind logins, nor they behind it).
pub struct SqlKeys {
    target: Target,
    table: String,
    timeout: Duration,
    conn: tokio::sync::Mutex<Option<Conn>>,
}

struct Conn {
    /// Shared with the operation running on it (an owned handle keeps its future free of
    /// borrows, which a spawned task needs).
    client: Arc<Client>,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl std::fmt::Debug for SqlKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlKeys")
            .field("target", &self.target.describe())
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

impl SqlKeys {
    /// From `[auth.sql]` and its `keys_table`; connects to nothing yet.
    pub fn new(
        settings: &SqlSettings,
        table: &str,
        timeout: Duration,
    ) -> Result<SqlKeys, BackendError> {
        Ok(SqlKeys {
            target: Target::new(settings, timeout)?,
            table: table.to_owned(),
            timeout,
            conn: tokio::sync::Mutex::new(None),
        })
    }

    /// `table TABLE at user@host:port/db`, for messages.
    pub fn describe(&self) -> String {
        format!("table {} at {}", self.table, self.target.describe())
    }

    /// Run `op` on the connection (opened when there is none), bounded by the timeout; a
    /// connection that fails is dropped and the next call opens another. One retry when a
    /// kept connection turns out dead (the server restarted since).
    async fn with_client<T, F>(&self, op: impl Fn(Arc<Client>) -> F) -> Result<T, KeysError>
    where
        F: Future<Output = Result<T, tokio_postgres::Error>>,
    {
        let deadline = Instant::now() + self.timeout;
        let timed_out = || BackendError::Timeout {
            key: KEY_TABLE,
            limit: self.timeout,
        };
        let mut guard = timeout_at(deadline, self.conn.lock())
            .await
            .map_err(|_| timed_out())?;
        for attempt in 0..2 {
            let reused = guard.as_ref().is_some_and(|c| !c.client.is_closed());
            if !reused {
                let (client, driver) = self.target.open(deadline, self.timeout).await?;
                *guard = Some(Conn {
                    client: Arc::new(client),
                    driver,
                });
            }
            let client = guard.as_ref().expect("opened above").client.clone();
            match timeout_at(deadline, op(client)).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) if reused && attempt == 0 && is_outage(&e) => {
                    tracing::debug!(error = %e, "sql keys: kept connection failed, reconnecting");
                    *guard = None;
                }
                Ok(Err(e)) => {
                    *guard = None;
                    return Err(KeysError::Backend(query_error(KEY_TABLE, &e)));
                }
                Err(_) => {
                    *guard = None;
                    return Err(timed_out().into());
                }
            }
        }
        unreachable!("the second attempt returns")
    }

    /// Every key (at most [`MAX_KEYS`]); a table that does not exist holds none. Rows that
    /// cannot be read as keys are left out and described in the second list.
    pub async fn list(&self) -> Result<(Vec<KeyEntry>, Vec<String>), KeysError> {
        let sql = &format!(
            "SELECT {COLUMNS} FROM {} ORDER BY name LIMIT {}",
            self.table,
            MAX_KEYS + 1
        );
        let rows = self
            .with_client(|c| async move {
                match c.query(sql, &[]).await {
                    Err(e) if sqlstate(&e) == Some(UNDEFINED_TABLE) => Ok(Vec::new()),
                    other => other,
                }
            })
            .await?;
        let mut problems = Vec::new();
        if rows.len() > MAX_KEYS {
            problems.push(format!(
                "{}: more than {MAX_KEYS} keys: the first {MAX_KEYS} by name are used",
                self.table
            ));
        }
        let mut entries = Vec::with_capacity(rows.len().min(MAX_KEYS));
        for row in rows.iter().take(MAX_KEYS) {
            match entry_of(row) {
                Ok(e) => entries.push(e),
                Err(e) => {
                    let name = row.try_get::<_, String>(0).unwrap_or_default();
                    problems.push(format!(
                        "{}: key {:?}: {e}",
                        self.table,
                        crate::logsafe::Escaped(&name).to_string()
                    ));
                }
            }
        }
        Ok((entries, problems))
    }

    /// What changes whenever a key is added, changed or deleted through `submitd key` (or by
    /// hand with `updated` changed): the row count, the latest `updated` and the sum of all of
    /// them. The sum moves whenever any row's `updated` does, also to a value below the
    /// maximum (a writer whose clock is behind, a hand edit that set a future time).
    pub async fn version(&self) -> Result<String, KeysError> {
        let sql = &format!(
            "SELECT count(*), coalesce(max(updated), 0), coalesce(sum(updated), 0)::text FROM {}",
            self.table
        );
        self.with_client(|c| async move {
            match c.query_one(sql, &[]).await {
                Ok(row) => Ok(format!(
                    "{}/{}/{}",
                    row.try_get::<_, i64>(0)?,
                    row.try_get::<_, i64>(1)?,
                    row.try_get::<_, String>(2)?
                )),
                Err(e) if sqlstate(&e) == Some(UNDEFINED_TABLE) => Ok("no table".to_owned()),
                Err(e) => Err(e),
            }
        })
        .await
    }

    /// Add a key (creating the table first when it is missing).
    pub async fn create(&self, entry: &KeyEntry) -> Result<(), KeysError> {
        let schema = &SCHEMA.replace("{table}", &self.table);
        let insert = &format!(
            "INSERT INTO {} ({COLUMNS}, updated) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, {NOW_MICROS}) \
             ON CONFLICT (name) DO NOTHING",
            self.table
        );
        let num = |v: Option<u64>| v.map(|v| i64::try_from(v).unwrap_or(i64::MAX));
        let expires = &num(entry.expires);
        let rate = &num(entry.messages_per_hour.map(u64::from));
        let created = &num(Some(entry.created));
        let revoked = &num(entry.revoked);
        let until = &num(entry.previous_until);
        let inserted = self
            .with_client(|c| async move {
                c.batch_execute(schema).await?;
                let params: [&(dyn ToSql + Sync); 12] = [
                    &entry.name,
                    &entry.hash,
                    &entry.owner,
                    &entry.senders,
                    &entry.scopes,
                    &entry.from_ip,
                    expires,
                    rate,
                    created,
                    revoked,
                    &entry.previous_hash,
                    until,
                ];
                match c.execute(insert, &params).await {
                    Err(e) if sqlstate(&e) == Some(UNIQUE_VIOLATION) => Ok(0),
                    other => other,
                }
            })
            .await?;
        match inserted {
            0 => Err(KeysError::Exists(entry.name.clone())),
            _ => Ok(()),
        }
    }

    /// Mark a key revoked at `now` (kept, so the name stays taken).
    pub async fn revoke(&self, name: &str, now: u64) -> Result<(), KeysError> {
        let sql = &format!(
            "UPDATE {} SET revoked = coalesce(revoked, $2), previous_hash = NULL, \
             previous_until = NULL, updated = {NOW_MICROS} WHERE name = $1",
            self.table
        );
        let now = &i64::try_from(now).unwrap_or(i64::MAX);
        let changed = self
            .with_client(
                |c| async move { missing_table_is_empty(c.execute(sql, &[&name, now]).await) },
            )
            .await?;
        match changed {
            0 => Err(KeysError::NoSuchKey(name.to_owned())),
            _ => Ok(()),
        }
    }

    /// Give a key the new hash; the current one stays valid until `grace_until`. A revoked
    /// key is not rotated.
    pub async fn rotate(&self, name: &str, hash: &str, grace_until: u64) -> Result<(), KeysError> {
        let sql = &format!(
            "UPDATE {} SET previous_hash = hash, hash = $2, previous_until = $3, \
             updated = {NOW_MICROS} WHERE name = $1 AND revoked IS NULL",
            self.table
        );
        let until = &i64::try_from(grace_until).unwrap_or(i64::MAX);
        let changed = self
            .with_client(|c| async move {
                missing_table_is_empty(c.execute(sql, &[&name, &hash, until]).await)
            })
            .await?;
        if changed > 0 {
            return Ok(());
        }
        // Nothing changed: the key is revoked, or not there.
        let exists = &format!("SELECT 1 FROM {} WHERE name = $1", self.table);
        let found = self
            .with_client(|c| async move {
                match c.query_opt(exists, &[&name]).await {
                    Err(e) if sqlstate(&e) == Some(UNDEFINED_TABLE) => Ok(None),
                    other => other,
                }
            })
            .await?;
        match found.is_some() {
            true => Err(KeysError::Invalid {
                path: self.table.clone().into(),
                message: format!("key {name:?} is revoked"),
            }),
            false => Err(KeysError::NoSuchKey(name.to_owned())),
        }
    }
}

/// An `UPDATE` of a table that does not exist changed no row.
fn missing_table_is_empty(
    r: Result<u64, tokio_postgres::Error>,
) -> Result<u64, tokio_postgres::Error> {
    match r {
        Err(e) if sqlstate(&e) == Some(UNDEFINED_TABLE) => Ok(0),
        other => other,
    }
}

fn sqlstate(e: &tokio_postgres::Error) -> Option<&str> {
    e.as_db_error().map(|db| db.code().code())
}

/// One row as a [`KeyEntry`]; a NULL array is empty, a negative number is refused.
fn entry_of(row: &tokio_postgres::Row) -> Result<KeyEntry, String> {
    let num = |i: usize| -> Result<Option<u64>, String> {
        let v: Option<i64> = row.try_get(i).map_err(|e| e.to_string())?;
        v.map(|v| u64::try_from(v).map_err(|_| format!("column {i} is negative")))
            .transpose()
    };
    let list = |i: usize| -> Result<Vec<String>, String> {
        let v: Option<Vec<String>> = row.try_get(i).map_err(|e| e.to_string())?;
        Ok(v.unwrap_or_default())
    };
    let text = |i: usize| -> Result<Option<String>, String> {
        row.try_get(i)
            .map_err(|e: tokio_postgres::Error| e.to_string())
    };
    Ok(KeyEntry {
        name: text(0)?.ok_or("name is NULL")?,
        hash: text(1)?.ok_or("hash is NULL")?,
        owner: text(2)?,
        senders: list(3)?,
        scopes: list(4)?,
        from_ip: list(5)?,
        expires: num(6)?,
        messages_per_hour: num(7)?
            .map(|v| u32::try_from(v).map_err(|_| "messages_per_hour is too large".to_owned()))
            .transpose()?,
        created: num(8)?.ok_or("created is NULL")?,
        revoked: num(9)?,
        previous_hash: text(10)?,
        previous_until: num(11)?,
    })
}
