//! The HTTP API (`[api] listen`): submit messages as JSON or `message/rfc822`, read their
//! status, manage the suppression list. The routes are an axum [`Router`] served by
//! [`crate::listener::http`] (plain or TLS, bounded).
//!
//! - [`auth`]: `Authorization: Bearer` API keys (`api` scope; `admin` for any tenant);
//! - [`compose`]: request bodies to a message and its envelope (sans-IO, fuzzed);
//! - [`submit`]: `POST /v1/messages`, the same checks and the same durable commit as SMTP;
//! - [`idempotency`]: `Idempotency-Key` records;
//! - [`routes`]: the other endpoints;
//! - [`problem`]: RFC 9457 problem bodies, the shape of every refusal.

pub mod auth;
pub mod compose;
pub mod idempotency;
pub mod problem;
pub mod routes;
pub mod submit;

use std::sync::Arc;

use axum::Router;
use axum::routing::get;

use crate::events::Events;
use crate::listener::Current;
use crate::suppression::Suppressions;

/// What every API request shares.
#[derive(Clone)]
pub struct ApiState {
    /// The server's current settings and session context (intake, verifier, quota).
    pub(crate) live: Arc<dyn Current>,
    /// The suppression list, when the server keeps one.
    pub suppressions: Option<Arc<Suppressions>>,
    /// Where `suppressed` events go (may have no sinks).
    pub events: Events,
    pub idempotency: Arc<idempotency::Idempotency>,
}

impl ApiState {
    /// The state of a server: its live settings and context, the suppression list to check
    /// (per tenant), the event sinks for `suppressed` events, and the idempotency records
    /// under `queue_dir/idempotency/`.
    pub(crate) fn new(
        live: Arc<dyn Current>,
        suppressions: Option<Arc<Suppressions>>,
        events: Events,
        queue_dir: &std::path::Path,
    ) -> ApiState {
        ApiState {
            live,
            suppressions,
            events,
            idempotency: Arc::new(idempotency::Idempotency::new(queue_dir)),
        }
    }
}

/// The API's routes.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/v1/messages", axum::routing::post(submit::post_message))
        .route("/v1/messages/{id}", get(routes::get_message))
        .route("/v1/suppressions", get(routes::list_suppressions))
        .route(
            "/v1/suppressions/{address}",
            get(routes::get_suppression).delete(routes::delete_suppression),
        )
        .fallback(routes::not_found)
        .with_state(state)
}
