//! The running server against `docs/openapi.yaml`: real requests to every endpoint (accepted,
//! refused in each documented way), recorded and checked by `tests/clients/openapi_check.py`
//! (openapi-spec-validator for the spec, jsonschema for every body).

mod common;

use serde_json::{Value, json};

use common::keys::create;
use common::{ALICE, BOB, IO_TIMEOUT, TestServer};

/// The exchanges seen, as the checker reads them.
#[derive(Default)]
struct Recorder {
    base: String,
    client: reqwest::Client,
    exchanges: Vec<Value>,
}

impl Recorder {
    /// Send `request` (built on `method path`), record it: the status.
    async fn send(
        &mut self,
        method: reqwest::Method,
        path: &str,
        build: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
        request_json: Option<&Value>,
    ) -> u16 {
        let mut request = self
            .client
            .request(method.clone(), format!("{}{path}", self.base));
        if let Some(json) = request_json {
            request = request.json(json);
        }
        let response = build(request).send().await.unwrap();
        let status = response.status().as_u16();
        let headers: serde_json::Map<String, Value> = response
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), json!(v.to_str().unwrap_or(""))))
            .collect();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned());
        let text = response.text().await.unwrap();
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        self.exchanges.push(json!({
            "method": method.as_str(), "path": path, "status": status,
            "content_type": content_type, "headers": headers, "body": body,
            "request_json": request_json,
        }));
        status
    }
}

fn message(from: &str) -> Value {
    json!({
        "from": from, "to": ["carol@example.net"], "cc": "dave@example.net",
        "subject": "hi", "text": "hello", "html": "<p>hello</p>",
        "headers": {"X-Campaign": "spring"},
        "attachments": [{"filename": "a.txt", "content_type": "text/plain", "content": "aGk="}],
        "envid": "e-1", "metadata": {"order": "1"},
    })
}

#[tokio::test]
async fn the_server_answers_as_docs_openapi_yaml_says() {
    // Delivery is deferred (nothing listens at the smarthost): messages stay readable by
    // GET /v1/messages/{id} while the spool holds them.
    let server = TestServer::start_full(
        "max_message_size = 20000",
        "",
        "mode = \"smarthost\"\nsmarthost = \"127.0.0.1:1\"\nsmarthost_tls = \"none\"\n",
        "[api]\nlisten = \"127.0.0.1:0\"\n",
    )
    .await;
    let key = create(
        &server,
        "app",
        &["--sender", ALICE, "--messages-per-hour", "3"],
    );
    let admin = create(&server, "ops", &["--sender", ALICE, "--scope", "api,admin"]);
    let smtp = create(&server, "mua", &["--sender", ALICE, "--scope", "smtp"]);
    let mut r = Recorder {
        base: format!("http://{}", server.api.unwrap()),
        client: reqwest::Client::builder()
            .timeout(IO_TIMEOUT)
            .build()
            .unwrap(),
        ..Default::default()
    };
    use reqwest::Method;
    let post = Method::POST;
    let auth = |k: &str| {
        let k = k.to_owned();
        move |b: reqwest::RequestBuilder| b.bearer_auth(k)
    };
    let idem = |k: &str, i: &'static str| {
        let k = k.to_owned();
        move |b: reqwest::RequestBuilder| b.bearer_auth(k).header("Idempotency-Key", i)
    };

    let m = message(ALICE);
    assert_eq!(
        r.send(post.clone(), "/v1/messages", idem(&key, "k1"), Some(&m))
            .await,
        202
    );
    let id = r.exchanges[0]["body"]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        r.send(post.clone(), "/v1/messages", idem(&key, "k1"), Some(&m))
            .await,
        202
    );
    let other = json!({"from": ALICE, "to": "x@example.net", "text": "other"});
    assert_eq!(
        r.send(post.clone(), "/v1/messages", idem(&key, "k1"), Some(&other))
            .await,
        422
    );
    let raw = move |b: reqwest::RequestBuilder| {
        b.header("content-type", "message/rfc822").body(format!(
            "From: {ALICE}\r\nTo: carol@example.net\r\nSubject: raw\r\n\r\nhi\r\n"
        ))
    };
    let k = key.clone();
    assert_eq!(
        r.send(
            post.clone(),
            "/v1/messages",
            move |b| raw(b.bearer_auth(k)),
            None
        )
        .await,
        202
    );
    let bad = json!({"from": ALICE, "to": ["nope"], "text": "x"});
    assert_eq!(
        r.send(post.clone(), "/v1/messages", auth(&key), Some(&bad))
            .await,
        400
    );
    assert_eq!(
        r.send(post.clone(), "/v1/messages", |b| b, Some(&m)).await,
        401
    );
    assert_eq!(
        r.send(
            post.clone(),
            "/v1/messages",
            auth(&key),
            Some(&message(BOB))
        )
        .await,
        403
    );
    assert_eq!(
        r.send(post.clone(), "/v1/messages", auth(&smtp), Some(&m))
            .await,
        403
    );
    let text = |b: reqwest::RequestBuilder| b.header("content-type", "text/plain").body("hi");
    let k = key.clone();
    assert_eq!(
        r.send(
            post.clone(),
            "/v1/messages",
            move |b| text(b.bearer_auth(k)),
            None
        )
        .await,
        415
    );
    let big = json!({"from": ALICE, "to": "c@example.net", "text": "x".repeat(30_000)});
    assert_eq!(
        r.send(post.clone(), "/v1/messages", auth(&key), Some(&big))
            .await,
        413
    );
    // The key's third message this hour is accepted, the fourth is over its rate.
    assert_eq!(
        r.send(post.clone(), "/v1/messages", auth(&key), Some(&m))
            .await,
        202
    );
    assert_eq!(
        r.send(post.clone(), "/v1/messages", auth(&key), Some(&m))
            .await,
        429
    );

    let path = format!("/v1/messages/{id}");
    assert_eq!(r.send(Method::GET, &path, auth(&key), None).await, 200);
    assert_eq!(r.send(Method::GET, &path, auth(&admin), None).await, 200);
    assert_eq!(
        r.send(Method::GET, "/v1/messages/NOSUCH", auth(&key), None)
            .await,
        404
    );
    assert_eq!(r.send(Method::GET, &path, |b| b, None).await, 401);
    assert_eq!(
        r.send(Method::GET, "/v1/suppressions", auth(&key), None)
            .await,
        200
    );
    assert_eq!(
        r.send(Method::GET, "/v1/suppressions", auth(&admin), None)
            .await,
        200
    );
    let s = "/v1/suppressions/gone@example.net";
    assert_eq!(r.send(Method::GET, s, auth(&key), None).await, 404);
    assert_eq!(r.send(Method::DELETE, s, auth(&key), None).await, 404);
    let other_tenant = "/v1/suppressions/gone@example.net?tenant=someone";
    assert_eq!(
        r.send(Method::DELETE, other_tenant, auth(&key), None).await,
        403
    );
    assert_eq!(server.queued().len(), 3);

    let file = server.dir.path().join("exchanges.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&r.exchanges).unwrap()).unwrap();
    let root = env!("CARGO_MANIFEST_DIR");
    let out = tokio::process::Command::new("python3")
        .arg(format!("{root}/tests/clients/openapi_check.py"))
        .arg(format!("{root}/docs/openapi.yaml"))
        .arg(&file)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(IO_TIMEOUT * 2, out)
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
