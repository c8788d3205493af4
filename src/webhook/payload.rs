//! The JSON body of one event (the Standard Webhooks payload shape: `type`, `timestamp`,
//! `data`).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::events::DeliveryEvent;

#[derive(Serialize)]
struct Body<'a> {
    #[serde(rename = "type")]
    kind: String,
    /// When the event happened, RFC 3339 UTC.
    timestamp: String,
    data: Data<'a>,
}

#[derive(Serialize)]
struct Data<'a> {
    message_id: &'a str,
    recipient: &'a str,
    reply: &'a str,
    status: Option<&'a str>,
    attempt: u32,
    host: Option<&'a str>,
    /// Decoded from the envelope's xtext (RFC 3461 section 4).
    envid: Option<String>,
    metadata: &'a BTreeMap<String, String>,
    user: &'a str,
    tenant: &'a str,
}

/// `message.` + the event's kind: `message.delivered`, `message.bounced`, ...
pub fn event_type(event: &DeliveryEvent) -> String {
    format!("message.{}", event.kind.as_str())
}

/// The body sent for `event` (the same bytes on every retry: the signature covers them).
pub fn body(event: &DeliveryEvent) -> Vec<u8> {
    let body = Body {
        kind: event_type(event),
        timestamp: crate::clock::rfc3339(event.at),
        data: Data {
            message_id: &event.queue_id,
            recipient: &event.recipient,
            reply: &event.reply,
            status: event.status.as_deref(),
            attempt: event.attempt,
            host: event.host.as_deref(),
            envid: event
                .envid
                .as_deref()
                .map(|e| crate::dsn::decode_xtext(e, true).unwrap_or_else(|| e.to_string())),
            metadata: &event.metadata,
            user: &event.user,
            tenant: &event.tenant,
        },
    };
    // Serializing strings, numbers and a string map cannot fail.
    serde_json::to_vec(&body).unwrap_or_default()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::events::EventKind;

    pub(crate) fn sample(kind: EventKind) -> DeliveryEvent {
        DeliveryEvent {
            kind,
            queue_id: "Q1".into(),
            user: "app1".into(),
            tenant: "alice@example.test".into(),
            recipient: "bob@example.net".into(),
            reply: "550 5.1.1 No such user \"bob\"".into(),
            status: Some("5.1.1".into()),
            host: Some("mx.example.net".into()),
            attempt: 2,
            at: 1_700_000_000,
            envid: Some("order+2D42".into()),
            metadata: BTreeMap::from([
                ("order".to_string(), "42".to_string()),
                ("ü".to_string(), "\u{1F600}\n".to_string()),
            ]),
        }
    }

    #[test]
    fn body_carries_every_field() {
        let v: serde_json::Value =
            serde_json::from_slice(&body(&sample(EventKind::Bounced))).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "type": "message.bounced",
                "timestamp": "2023-11-14T22:13:20Z",
                "data": {
                    "message_id": "Q1",
                    "recipient": "bob@example.net",
                    "reply": "550 5.1.1 No such user \"bob\"",
                    "status": "5.1.1",
                    "attempt": 2,
                    "host": "mx.example.net",
                    "envid": "order-42",
                    "metadata": {"order": "42", "ü": "\u{1F600}\n"},
                    "user": "app1",
                    "tenant": "alice@example.test"
                }
            })
        );
        let mut e = sample(EventKind::Delivered);
        e.status = None;
        e.host = None;
        e.envid = None;
        e.metadata.clear();
        let v: serde_json::Value = serde_json::from_slice(&body(&e)).unwrap();
        assert_eq!(v["type"], "message.delivered");
        assert_eq!(v["data"]["status"], serde_json::Value::Null);
        assert_eq!(v["data"]["metadata"], serde_json::json!({}));
    }
}
