//! The `[metrics] listen` endpoint: `GET /metrics` (Prometheus text) and `GET /health`, an
//! axum router served by [`super::http`], one request per connection.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::prometheus_text;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::http::{self, HttpLimits};
use crate::metrics::Metrics;

/// The largest HTTP request head read; a longer one gets 431 and the connection closes.
pub const MAX_REQUEST: usize = 8 * 1024;
/// Time for a scraper to send its request, and for the response.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// Scrapes served at once; further connections wait in the backlog.
const MAX_SCRAPES: usize = 8;

/// The endpoint's routes: only `GET /metrics` and `GET /health` (any query string) succeed.
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .route("/health", get(health))
        .with_state(metrics)
}

async fn scrape(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(CONTENT_TYPE, prometheus_text::CONTENT_TYPE)],
        metrics.encode(),
    )
}

async fn health(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    ([(CONTENT_TYPE, "application/json")], metrics.health_json())
}

/// Serve the endpoint on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, shutdown: CancellationToken) {
    let limits = HttpLimits {
        max_connections: MAX_SCRAPES,
        max_header_size: MAX_REQUEST,
        max_headers: 100,
        request_timeout: HTTP_TIMEOUT,
        keep_alive: false,
    };
    http::serve(listener, None, router(metrics), limits, shutdown).await;
}
