//! The read and manage endpoints: `GET /v1/messages/{id}`, `GET /v1/suppressions`,
//! `GET`/`DELETE /v1/suppressions/{address}`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::ApiState;
use super::auth::{self, Caller};
use super::problem::Problem;
use crate::queue::QueueId;
use crate::status::MessageStatus;
use crate::suppression::Suppressions;

/// Authenticate against the server's keys and throttle.
async fn caller(
    state: &ApiState,
    peer: SocketAddr,
    headers: &HeaderMap,
) -> Result<Caller, Problem> {
    let live = state.live.current();
    let verifier = &live.ctx.verifier;
    auth::authenticate(
        headers,
        peer.ip(),
        crate::clock::unix_now(),
        verifier.keys().map(|k| k.as_ref()),
        verifier.throttle(),
    )
    .await
}

/// The overall state of a message from its recipients' states: the least advanced one.
fn overall(status: &MessageStatus) -> &'static str {
    let has = |s: &str| status.recipients.iter().any(|r| r.state == s);
    if has("queued") {
        "queued"
    } else if has("deferred") {
        "deferred"
    } else if has("sent") && !has("bounced") {
        "sent"
    } else if has("bounced") {
        "bounced"
    } else {
        "suppressed"
    }
}

/// `GET /v1/messages/{id}`: 404 for an unknown message and for another tenant's.
pub async fn get_message(
    State(state): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let caller = match caller(&state, peer, &headers).await {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    let Some(id) = QueueId::parse(&id) else {
        return Problem::not_found().into_response();
    };
    let spool = state.live.current().ctx.intake.spool.clone();
    let found = tokio::task::spawn_blocking(move || crate::status::lookup(&spool, &id))
        .await
        .ok()
        .flatten();
    let Some(status) = found else {
        return Problem::not_found().into_response();
    };
    // Only the key that sent it, or an admin key (issue 16): not every key of the tenant.
    if status.user != caller.key.entry.name && !caller.admin {
        return Problem::not_found().into_response();
    }
    Json(json!({
        "id": status.id,
        "state": overall(&status),
        "received_at": status.received_at,
        "recipients": status.recipients,
    }))
    .into_response()
}

/// The tenant a suppression request is about: the caller's, or `?tenant=` for an admin key.
fn tenant(caller: &Caller, query: &HashMap<String, String>) -> Result<Option<String>, Problem> {
    match query.get("tenant") {
        Some(t) if caller.admin => Ok(Some(t.clone())),
        Some(t) if t == caller.tenant() => Ok(Some(t.clone())),
        Some(_) => Err(
            Problem::new(StatusCode::FORBIDDEN, "not-admin", "Admin scope needed")
                .detail("only a key with the admin scope may name another tenant"),
        ),
        None => Ok(Some(caller.tenant().to_owned())),
    }
}

fn no_list() -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "no-suppression-list",
        "No suppression list",
    )
    .detail("this server keeps no suppression list")
}

/// `GET /v1/suppressions`: the tenant's entries (an admin without `?tenant=`: every tenant's).
pub async fn list_suppressions(
    State(state): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let caller = match caller(&state, peer, &headers).await {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    let tenant = if caller.admin && !query.contains_key("tenant") {
        None
    } else {
        match tenant(&caller, &query) {
            Ok(t) => t,
            Err(r) => return r.into_response(),
        }
    };
    let Some(list) = state.suppressions.clone() else {
        return no_list().into_response();
    };
    let entries = list.list(tenant.as_deref(), crate::clock::unix_now());
    Json(json!({ "suppressions": entries })).into_response()
}

/// The checks of a request about one address: the caller, its tenant, the list.
async fn one_address(
    state: &ApiState,
    peer: SocketAddr,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> Result<(String, Arc<Suppressions>), Problem> {
    let caller = caller(state, peer, headers).await?;
    let tenant = tenant(&caller, query)?.unwrap_or_default();
    let list = state.suppressions.clone().ok_or_else(no_list)?;
    Ok((tenant, list))
}

/// `GET /v1/suppressions/{address}`.
pub async fn get_suppression(
    State(state): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(address): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let (tenant, list) = match one_address(&state, peer, &headers, &query).await {
        Ok(found) => found,
        Err(p) => return p.into_response(),
    };
    match list.check(&tenant, &address, crate::clock::unix_now()) {
        Some(entry) => Json(entry).into_response(),
        None => Problem::not_found().into_response(),
    }
}

/// `DELETE /v1/suppressions/{address}`: 204, or 404 when it was not listed.
pub async fn delete_suppression(
    State(state): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(address): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let (tenant, list) = match one_address(&state, peer, &headers, &query).await {
        Ok(found) => found,
        Err(p) => return p.into_response(),
    };
    let store = list.clone();
    let (t, a) = (tenant.clone(), address.clone());
    let removed = tokio::task::spawn_blocking(move || store.remove(&t, &a)).await;
    match removed {
        Ok(Ok(true)) => StatusCode::NO_CONTENT.into_response(),
        Ok(Ok(false)) => match list.check(&tenant, &address, crate::clock::unix_now()) {
            // Still refused: the operator's entry for every tenant, which a tenant's key
            // does not lift (an admin key does, with `?tenant=*`).
            Some(e) if e.tenant == crate::suppression::EVERY_TENANT => Problem::new(
                StatusCode::FORBIDDEN,
                "operator-entry",
                "Suppressed by the operator",
            )
            .detail(
                "the operator suppressed this address for every tenant; an admin key \
                 (?tenant=*) or `submitd suppression del ADDRESS` lifts it",
            )
            .into_response(),
            _ => Problem::not_found().into_response(),
        },
        _ => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store-unavailable",
            "Suppression list unavailable",
        )
        .into_response(),
    }
}

/// Anything else: 404 as a problem.
pub async fn not_found() -> Response {
    Problem::not_found().into_response()
}
