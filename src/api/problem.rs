//! RFC 9457 problem details: every refusal of the API is one of these, as
//! `application/problem+json` with `type`, `title`, `status`, `detail` and, where it helps,
//! an extension (`field`, `recipients`).

use axum::http::header::{CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

/// The media type of a problem body (RFC 9457 section 3).
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Where the problem types are documented (docs/openapi.yaml names each).
const TYPE_BASE: &str = "https://submitd.invalid/problems/";

/// One refusal.
#[derive(Debug, Clone)]
pub struct Problem {
    pub status: StatusCode,
    /// The problem type's last path segment (`unauthorized`, `invalid-field`).
    pub kind: &'static str,
    pub title: &'static str,
    pub detail: String,
    /// Extension members.
    pub extra: Map<String, Value>,
    /// `Retry-After` in seconds (429, 503).
    pub retry_after: Option<u64>,
}

impl Problem {
    pub fn new(status: StatusCode, kind: &'static str, title: &'static str) -> Problem {
        Problem {
            status,
            kind,
            title,
            detail: String::new(),
            extra: Map::new(),
            retry_after: None,
        }
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Problem {
        self.detail = detail.into();
        self
    }

    pub fn with(mut self, name: &str, value: Value) -> Problem {
        self.extra.insert(name.to_owned(), value);
        self
    }

    pub fn retry_after(mut self, seconds: u64) -> Problem {
        self.retry_after = Some(seconds);
        self
    }

    /// 401: no usable credentials. The same body for every cause, so that it never tells
    /// which keys exist.
    pub fn unauthorized() -> Problem {
        Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized")
            .detail("a valid API key is required: Authorization: Bearer sk_NAME_SECRET")
    }

    /// 400 about one field of the request.
    pub fn invalid(field: &str, detail: impl Into<String>) -> Problem {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid-field",
            "Invalid request field",
        )
        .detail(detail)
        .with("field", Value::String(field.to_owned()))
    }

    /// 404 for what does not exist or is not the caller's.
    pub fn not_found() -> Problem {
        Problem::new(StatusCode::NOT_FOUND, "not-found", "Not found")
            .detail("no such resource for this key")
    }

    /// The problem as its JSON body.
    pub fn body(&self) -> Value {
        let mut body = json!({
            "type": format!("{TYPE_BASE}{}", self.kind),
            "title": self.title,
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        if let Value::Object(map) = &mut body {
            for (k, v) in &self.extra {
                map.insert(k.clone(), v.clone());
            }
        }
        body
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut response = (self.status, self.body().to_string()).into_response();
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(s) = self.retry_after {
            headers.insert(RETRY_AFTER, HeaderValue::from(s));
        }
        response
    }
}
