//! `POST /v1/messages`: authenticate, read the bounded body, compose, check as SMTP does
//! (sender ownership, header From, size, hops, recipients, sending limits), leave suppressed
//! recipients out, then the same admission as SMTP's `250` ([`crate::intake::Intake::accept`]:
//! `Received: ... via HTTP`, DKIM, fsync'd commit). `202` only once the message is durable.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tracing::{info, warn};

use super::ApiState;
use super::auth::{self, Caller};
use super::compose::{self, Composed};
use super::idempotency::{self, Begin, Slot};
use super::problem::Problem;
use crate::auth::quota::Refusal as QuotaRefusal;
use crate::events::DeliveryEvent;
use crate::intake::{AcceptError, Accepted};
use crate::listener::Live;
use crate::logsafe::Escaped;
use crate::outcome::Refusal;
use crate::queue::spool::Origin;
use crate::submission::{self, FromProblem};

/// Seconds a caller over its sending limits is told to wait.
const LIMITED_RETRY: u64 = 60;
/// Seconds a caller is told to wait after a spool failure.
const SPOOL_RETRY: u64 = 30;

/// The largest request body: the largest message, base64-encoded (4/3), plus 64 KiB of JSON.
pub fn max_body(max_message_size: u64) -> usize {
    usize::try_from(max_message_size / 3 * 4 + 4 + (64 << 10)).unwrap_or(usize::MAX)
}

fn too_big(limit: u64) -> Problem {
    Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too-large",
        "Message too large",
    )
    .detail(format!("the message is larger than {limit} octets"))
    .with("max_message_size", json!(limit))
}

/// The handler.
pub async fn post_message(
    State(state): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match submit(&state, peer.ip(), &headers, body).await {
        Ok(r) | Err(r) => r,
    }
}

async fn submit(
    state: &ApiState,
    ip: IpAddr,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, Response> {
    let live = state.live.current();
    let verifier = &live.ctx.verifier;
    let caller = auth::authenticate(
        headers,
        ip,
        crate::clock::unix_now(),
        verifier.keys().map(|k| k.as_ref()),
        verifier.throttle(),
    )
    .await
    .map_err(IntoResponse::into_response)?;
    verifier.refresh_suspensions().await;
    let limit = live.settings.limits.max_message_size;
    let body = read_body(body, headers, max_body(limit))
        .await
        .map_err(|p| {
            if p.status == StatusCode::PAYLOAD_TOO_LARGE {
                too_big(limit).into_response()
            } else {
                p.into_response()
            }
        })?;
    let slot = match idempotency_key(headers).map_err(IntoResponse::into_response)? {
        None => None,
        Some(idem) => match begin(state, &live, &caller, &idem, headers, &body).await? {
            Ok(slot) => Some(slot),
            Err(replay) => return Ok(replay),
        },
    };
    let composed = compose(headers, &body).map_err(IntoResponse::into_response)?;
    drop(body);
    let checked = check(&live, &caller, &composed).map_err(IntoResponse::into_response)?;
    queue(state, &live, caller, composed, checked, ip, slot).await
}

/// The body, at most `limit` octets (413 past it).
async fn read_body(body: Body, headers: &HeaderMap, limit: usize) -> Result<Bytes, Problem> {
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-large",
            "Too large",
        ));
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let inner = e.into_inner();
        if inner.is::<http_body_util::LengthLimitError>() {
            Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "too-large", "Too large")
        } else {
            Problem::new(StatusCode::BAD_REQUEST, "bad-body", "Request body not read")
                .detail(inner.to_string())
        }
    })
}

/// The `Idempotency-Key` header, checked.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    match v.to_str() {
        Ok(v) if idempotency::valid_key(v) => Ok(Some(v.to_owned())),
        _ => Err(Problem::invalid(
            "Idempotency-Key",
            "1 to 255 printable ASCII characters",
        )),
    }
}

/// Look the idempotency key up: a slot to go on with, or the response to give now.
async fn begin(
    state: &ApiState,
    live: &Live,
    caller: &Caller,
    idem: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Result<Slot, Response>, Response> {
    let store = state.idempotency.clone();
    let spool = live.ctx.intake.spool.clone();
    let key = caller.key.entry.name.clone();
    let idem = idem.to_owned();
    let envelope = envelope_headers(headers);
    let body = body.clone();
    let begun = tokio::task::spawn_blocking(move || {
        // Hashed here, not on the reactor: a body may be tens of megabytes.
        let hash = request_hash(&envelope, &body);
        store.begin(&key, &idem, &hash, crate::clock::unix_now(), |id| {
            // In the spool, or already delivered and gone from it: its status record says so.
            crate::queue::QueueId::parse(id)
                .is_some_and(|id| crate::status::lookup(&spool, &id).is_some())
        })
    })
    .await;
    match begun {
        Ok(Ok(Begin::Fresh(slot))) => Ok(Ok(slot)),
        Ok(Ok(Begin::Replay(record))) => {
            let status = StatusCode::from_u16(record.status).unwrap_or(StatusCode::ACCEPTED);
            let mut r = (status, record.response.to_string()).into_response();
            r.headers_mut()
                .insert(CONTENT_TYPE, "application/json".parse().unwrap());
            r.headers_mut()
                .insert("idempotent-replayed", "true".parse().unwrap());
            Ok(Err(r))
        }
        Ok(Ok(Begin::Mismatch)) => Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency-key-reused",
            "Idempotency key reused",
        )
        .detail("this Idempotency-Key was used with another request body")
        .into_response()),
        Ok(Ok(Begin::Busy)) => Err(Problem::new(
            StatusCode::CONFLICT,
            "idempotency-key-busy",
            "Request in progress",
        )
        .detail("a request with this Idempotency-Key is being processed; retry later")
        .retry_after(1)
        .into_response()),
        Ok(Err(e)) => {
            warn!(error = %e, "api: idempotency record not read");
            Err(spool_unavailable().into_response())
        }
        Err(e) => {
            warn!(error = %e, "api: idempotency task failed");
            Err(spool_unavailable().into_response())
        }
    }
}

/// The headers that change what a body means (media type, envelope): with the body, what
/// makes two requests the same for `Idempotency-Key`.
fn envelope_headers(headers: &HeaderMap) -> [Vec<u8>; 3] {
    ["content-type", "x-envelope-from", "x-envelope-to"].map(|name| {
        headers
            .get(name)
            .map_or(Vec::new(), |v| v.as_bytes().to_vec())
    })
}

/// What an idempotency record compares: SHA-256 over those headers (each length-prefixed)
/// and the body, streamed (no copy of the body).
fn request_hash(envelope: &[Vec<u8>; 3], body: &[u8]) -> String {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for value in envelope {
        ctx.update(&(value.len() as u64).to_be_bytes());
        ctx.update(value);
    }
    ctx.update(body);
    data_encoding::HEXLOWER.encode(ctx.finish().as_ref())
}

fn spool_unavailable() -> Problem {
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "queue-unavailable",
        "Queue unavailable",
    )
    .detail("the message could not be stored; try again")
    .retry_after(SPOOL_RETRY)
}

/// The body by its media type.
fn compose(headers: &HeaderMap, body: &[u8]) -> Result<Composed, Problem> {
    let media = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    // A header that is there must be readable: never fall back to the message's own
    // addresses when the client named an envelope.
    let text = |name: &str| -> Result<Option<&str>, Problem> {
        headers
            .get(name)
            .map(|v| std::str::from_utf8(v.as_bytes()))
            .transpose()
            .map_err(|_| Problem::invalid(name, "not UTF-8"))
    };
    let composed = match media.as_str() {
        "application/json" => compose::from_json(body),
        "message/rfc822" => {
            compose::from_rfc822(body, text("x-envelope-from")?, text("x-envelope-to")?)
        }
        _ => {
            return Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
            )
            .detail("send application/json or message/rfc822"));
        }
    };
    composed.map_err(|e| Problem::invalid(&e.field, e.detail))
}

/// What the checks established.
struct Checked {
    from_domain: Option<String>,
    headers: Vec<u8>,
}

/// The checks SMTP makes at MAIL FROM, RCPT TO and the end of DATA.
fn check(live: &Live, caller: &Caller, c: &Composed) -> Result<Checked, Problem> {
    let limits = &live.settings.limits;
    if c.message.len() as u64 > limits.max_message_size {
        return Err(too_big(limits.max_message_size));
    }
    if c.recipients.len() > limits.max_recipients {
        return Err(Problem::invalid(
            "to",
            format!("at most {} recipients", limits.max_recipients),
        ));
    }
    let headers = submission::header_section(&c.message);
    if headers.len() as u64 > limits.max_header_size {
        return Err(Problem::invalid(
            "headers",
            "the header section is too large",
        ));
    }
    if submission::hop_count(headers) > limits.max_hops {
        return Err(Problem::invalid(
            "headers",
            "too many Received headers (a loop?)",
        ));
    }
    let not_owned = |what: &str| {
        warn!(key = %Escaped(&caller.key.entry.name), "api: sender not owned");
        Problem::new(
            StatusCode::FORBIDDEN,
            "sender-not-owned",
            "Sender not owned",
        )
        .detail(format!("this key may not send as the {what}"))
    };
    if !crate::auth::senders::owns(&caller.user.senders, &c.sender) {
        return Err(not_owned("envelope sender").with("field", json!("from")));
    }
    let checked = match submission::check_from(headers, &caller.user.senders) {
        Ok(checked) => checked,
        Err(FromProblem::Missing) => return Err(Problem::invalid("from", "no From header")),
        Err(FromProblem::NotOwned) => {
            return Err(not_owned("From or Sender address").with("field", json!("from")));
        }
        Err(FromProblem::Group) => {
            return Err(Problem::invalid("from", "group syntax in From or Sender"));
        }
    };
    Ok(Checked {
        from_domain: checked.domain,
        headers: headers.to_vec(),
    })
}

/// A sending-limit refusal as a problem.
fn limited(refusal: QuotaRefusal) -> Problem {
    let detail = match refusal {
        QuotaRefusal::Suspended => {
            return Problem::new(StatusCode::FORBIDDEN, "suspended", "Account suspended")
                .detail("this key is suspended; contact the administrator");
        }
        QuotaRefusal::Messages => "message rate limit exceeded",
        QuotaRefusal::Recipients => "recipient rate limit exceeded",
    };
    Problem::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate-limited",
        "Rate limited",
    )
    .detail(detail)
    .retry_after(LIMITED_RETRY)
}

/// Split the recipients by the tenant's suppression list: those kept, and a `suppressed`
/// event for each of the others (sent once the outcome is known, [`emit`]).
fn suppress(state: &ApiState, caller: &Caller, c: &Composed) -> (Vec<String>, Vec<DeliveryEvent>) {
    let Some(list) = &state.suppressions else {
        return (c.recipients.clone(), Vec::new());
    };
    let at = crate::clock::unix_now();
    let (mut kept, mut events) = (Vec::new(), Vec::new());
    for r in &c.recipients {
        match list.check(caller.tenant(), r, at) {
            Some(entry) => events.push(DeliveryEvent::suppressed(
                &caller.user.login,
                caller.tenant(),
                r,
                entry.reply,
                at,
                c.envid.clone(),
                c.metadata.clone(),
            )),
            None => kept.push(r.clone()),
        }
    }
    (kept, events)
}

/// Send the `suppressed` events of message `queue_id` (empty when nothing was queued) to the
/// event sinks, off the reactor.
async fn emit(state: &ApiState, mut events: Vec<DeliveryEvent>, queue_id: &str) {
    if events.is_empty() || state.events.is_empty() {
        return;
    }
    for e in &mut events {
        e.queue_id = queue_id.to_owned();
    }
    // Without a message (all suppressed): once per tenant and recipient lately.
    let events = state.events.fresh(events);
    if events.is_empty() {
        return;
    }
    let sinks = state.events.clone();
    let _ = tokio::task::spawn_blocking(move || sinks.record_blocking(&events)).await;
}

/// Limits, suppression, then the commit; the 202 (recorded for the idempotency key).
async fn queue(
    state: &ApiState,
    live: &Live,
    caller: Caller,
    c: Composed,
    checked: Checked,
    ip: IpAddr,
    slot: Option<Slot>,
) -> Result<Response, Response> {
    let quota = live.ctx.config.quota.as_ref();
    if let Some(Err(r)) = quota.map(|q| q.check_mail(&caller.user)) {
        return Err(limited(r).into_response());
    }
    let (kept, events) = suppress(state, &caller, &c);
    let suppressed: Vec<String> = events.iter().map(|e| e.recipient.clone()).collect();
    if kept.is_empty() {
        emit(state, events, "").await;
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "all-suppressed",
            "All recipients are suppressed",
        )
        .detail("all recipients are suppressed")
        .with("recipients", json!(suppressed))
        .into_response());
    }
    if let Some(Err(r)) = quota.map(|q| q.check_rcpt(&caller.user, kept.len() - 1)) {
        return Err(limited(r).into_response());
    }
    let mut recipients: Vec<Value> = kept
        .iter()
        .map(|a| json!({"address": a, "state": "queued"}))
        .collect();
    recipients.extend(
        suppressed
            .iter()
            .map(|a| json!({"address": a, "state": "suppressed"})),
    );
    let intake = &live.ctx.intake;
    let eight_bit = !c.message.is_ascii();
    let smtputf8 = !c.sender.is_ascii() || kept.iter().any(|r| !r.is_ascii());
    let draft = intake.in_memory(c.message);
    let id = draft.id().map(|i| i.to_string()).unwrap_or_default();
    let response = json!({"id": id, "recipients": recipients});
    let slot = Arc::new(slot);
    if slot.is_some() {
        record(&slot, &id, &response, false).await?;
    }
    let accepted = Accepted {
        user: caller.user.clone(),
        helo: "api".into(),
        sender: c.sender,
        rcpt_params: vec![Default::default(); kept.len()],
        recipients: kept,
        smtputf8,
        eight_bit,
        ret: None,
        envid: c.envid,
        requiretls: false,
        headers: checked.headers,
        from_domain: checked.from_domain,
        origin: Some(Box::new(Origin {
            owner: caller.user.owner.clone(),
            http: true,
            metadata: c.metadata,
            suppressed,
        })),
    };
    match intake.accept(accepted, draft, ip).await {
        Ok(queued) => {
            info!(queue_id = %queued, key = %Escaped(&caller.key.entry.name), "api: message queued");
            emit(state, events, &id).await;
            if slot.is_some() {
                // The message is durable: a failure here only loses the replay.
                let _ = record(&slot, &id, &response, true).await;
            }
            Ok((StatusCode::ACCEPTED, axum::Json(response)).into_response())
        }
        Err(e) => {
            if slot.is_some() {
                let s = slot.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    if let Some(s) = s.as_ref() {
                        s.remove();
                    }
                })
                .await;
            }
            Err(accept_error(&e).into_response())
        }
    }
}

/// Write the idempotency record, off the reactor.
async fn record(
    slot: &Arc<Option<Slot>>,
    id: &str,
    response: &Value,
    done: bool,
) -> Result<(), Response> {
    let (slot, id, response) = (slot.clone(), id.to_owned(), response.clone());
    let written = tokio::task::spawn_blocking(move || match slot.as_ref() {
        Some(s) => s.write(&id, 202, &response, crate::clock::unix_now(), done),
        None => Ok(()),
    })
    .await;
    match written {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            warn!(error = %e, "api: idempotency record not written");
            Err(spool_unavailable().into_response())
        }
        Err(_) => Err(spool_unavailable().into_response()),
    }
}

/// An admission failure as the problem SMTP's 451/452/450 would be.
fn accept_error(e: &AcceptError) -> Problem {
    match e.refusal() {
        Refusal::InsufficientStorage => Problem::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "insufficient-storage",
            "Insufficient storage",
        )
        .detail("the queue is full; try again later")
        .retry_after(SPOOL_RETRY),
        Refusal::MessageRateLimited => limited(QuotaRefusal::Messages),
        Refusal::RecipientRateLimited => limited(QuotaRefusal::Recipients),
        Refusal::Suspended => limited(QuotaRefusal::Suspended),
        _ => spool_unavailable(),
    }
}
