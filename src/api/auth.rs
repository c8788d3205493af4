//! Bearer authentication of API requests: `Authorization: Bearer sk_NAME_RANDOM`.
//!
//! The secret names its key ([`keys::name_of_secret`]); [`Key::check`] compares the secret
//! before anything else, so an answer naming the failed check (401 revoked or expired, 403
//! scope or source address) only ever reaches the secret's holder. A missing or malformed header, an unknown key and a
//! wrong secret all get the same 401 body. Failures count in the server's login throttle (per
//! client address and per key name); over it, 429.

use std::net::IpAddr;
use std::sync::Arc;

use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, StatusCode};
use tracing::{info, warn};

use super::problem::Problem;
use crate::auth::keys::{self, Key, KeyStore, Refusal};
use crate::auth::throttle::AuthThrottle;
use crate::auth::users::User;
use crate::logsafe::Escaped;

/// The scope an API request needs.
pub const API_SCOPE: &str = "api";
/// The scope that reads any message and manages any tenant's suppressions.
pub const ADMIN_SCOPE: &str = "admin";
/// Seconds a throttled client is told to wait.
const THROTTLED_RETRY: u64 = 60;

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub key: Arc<Key>,
    /// The key as a sending identity (login = key name, its senders and limits, owner).
    pub user: Arc<User>,
    /// The key has the `admin` scope.
    pub admin: bool,
}

impl Caller {
    /// The tenant the caller acts for (the key's owner, else its name).
    pub fn tenant(&self) -> &str {
        self.user.tenant()
    }
}

/// The secret of an `Authorization: Bearer` header, when it has that shape.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty() && t.len() <= 512)
}

/// Count a failed authentication (in the shared store too, with `[state] backend = "redis"`,
/// so the limit holds across replicas) and log why: the uniform 401.
async fn failed(throttle: Option<&AuthThrottle>, ip: IpAddr, name: &str, why: &str) -> Problem {
    if let Some(t) = throttle {
        t.failed_shared(ip, name).await;
    }
    info!(ip = %ip, key = %Escaped(name), why, "api: authentication failed");
    Problem::unauthorized()
}

/// Authenticate a request from `ip` at `now` (unix seconds).
pub async fn authenticate(
    headers: &HeaderMap,
    ip: IpAddr,
    now: u64,
    keys: Option<&KeyStore>,
    throttle: Option<&AuthThrottle>,
) -> Result<Caller, Problem> {
    let secret = bearer(headers);
    let name = secret.and_then(keys::name_of_secret).unwrap_or("-");
    if let Some(t) = throttle
        && t.check_shared(ip, name).await.is_err()
    {
        warn!(ip = %ip, key = %Escaped(name), "api: too many failed authentications");
        return Err(Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too-many-failures",
            "Too many failed authentications",
        )
        .detail("too many failed authentications from this address; try again later")
        .retry_after(THROTTLED_RETRY));
    }
    let Some(secret) = secret else {
        return Err(failed(throttle, ip, name, "no bearer token").await);
    };
    let Some(key) = keys.and_then(|k| k.get(name)) else {
        return Err(failed(throttle, ip, name, "unknown key").await);
    };
    match key.check(secret, ip, now, API_SCOPE) {
        Ok(()) => {}
        Err(Refusal::WrongSecret) => return Err(failed(throttle, ip, name, "wrong secret").await),
        Err(refusal) => {
            if let Some(t) = throttle {
                t.failed_shared(ip, name).await;
            }
            // Only the secret's holder gets here: naming the check tells nobody else anything.
            // A revoked or expired key is no credential any more (401); a valid key used
            // outside its scope or addresses is a forbidden request (403).
            let (status, kind, title, detail) = match refusal {
                Refusal::Revoked => (
                    StatusCode::UNAUTHORIZED,
                    "key-revoked",
                    "Key revoked",
                    "the key is revoked",
                ),
                Refusal::Expired => (
                    StatusCode::UNAUTHORIZED,
                    "key-expired",
                    "Key expired",
                    "the key has expired",
                ),
                Refusal::NoScope => (
                    StatusCode::FORBIDDEN,
                    "key-scope",
                    "Key not valid for the API",
                    "the key lacks the api scope",
                ),
                Refusal::FromIp => (
                    StatusCode::FORBIDDEN,
                    "key-source-address",
                    "Key not valid from this address",
                    "the key may not be used from this address",
                ),
                Refusal::WrongSecret => return Err(Problem::unauthorized()),
            };
            info!(ip = %ip, key = %Escaped(name), why = detail, "api: key refused");
            return Err(Problem::new(status, kind, title).detail(detail));
        }
    }
    let admin = key.entry.scopes.iter().any(|s| s == ADMIN_SCOPE);
    let user = Arc::new(key.as_user());
    Ok(Caller { key, user, admin })
}
