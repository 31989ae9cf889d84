//! The router without a socket (`Router::oneshot`): every documented operation checks its
//! caller's role, and every refusal, whichever layer makes it, is a problem+json body with the
//! fields RFC 9457 gives it. The end-to-end tests of the binary cover the same routes over TCP.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a test fails loudly on a broken fixture; that is its job"
)]

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use custos_core::{AccountId, Channel, Command, Policy, Timestamp};
use custos_http::{AppState, Clock, ExportPlace};
use custos_store::{Location, Store};
use serde_json::{Value, json};
use tower::ServiceExt;

const NOW: &str = "2025-10-01T00:00:00Z";

/// A service on a fresh SQLite store with accounts `u1` and `u2` and a token per caller.
struct Service {
    state: Arc<AppState>,
    tokens: HashMap<&'static str, String>,
    _folder: tempfile::TempDir,
}

fn at() -> Timestamp {
    Timestamp::parse(NOW).unwrap()
}

impl Service {
    fn start() -> Service {
        let folder = tempfile::tempdir().unwrap();
        let data = folder.path().to_owned();
        let store =
            Store::open(&Location::Sqlite { data: data.clone() }, Policy::bundled()).unwrap();
        for id in ["u1", "u2"] {
            let create = Command::CreateAccount {
                account: AccountId::parse(id).unwrap(),
                plan: "pro".into(),
                choice: Some((true, Channel::Signup)),
            };
            store.apply(at(), &create, "service").unwrap();
        }
        let mut tokens = HashMap::new();
        for (name, role, account) in [
            ("service", "service", None),
            ("trainer", "trainer", None),
            ("auditor", "auditor", None),
            ("admin", "admin", None),
            ("user", "user", Some("u1")),
            ("other-user", "user", Some("u2")),
        ] {
            let account = account.map(|a| AccountId::parse(a).unwrap());
            let token = store
                .create_token(role, account.as_ref(), at(), None)
                .unwrap();
            tokens.insert(name, token);
        }
        let clock = Clock::Manual(std::sync::Mutex::new(at()));
        let exports = ExportPlace { data, root: None };
        let state = Arc::new(AppState::open(Arc::new(store), clock, exports).unwrap());
        Service {
            state,
            tokens,
            _folder: folder,
        }
    }

    /// One request through the router; `caller` names a token, or sends none.
    async fn call(
        &self,
        method: &str,
        path: &str,
        caller: Option<&str>,
        body: Option<(&str, String)>,
    ) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(caller) = caller {
            request = request.header(
                header::AUTHORIZATION,
                format!("Bearer {}", self.tokens[caller]),
            );
        }
        let request = match body {
            Some((content_type, body)) => request
                .header(header::CONTENT_TYPE, content_type)
                .body(Body::from(body)),
            None => request.body(Body::empty()),
        }
        .unwrap();
        let response = custos_http::router(Arc::clone(&self.state))
            .oneshot(request)
            .await
            .unwrap();
        let (parts, body) = response.into_parts();
        let bytes = axum::body::to_bytes(body, 1 << 24).await.unwrap();
        (parts.status, parts.headers, bytes.to_vec())
    }
}

/// The problem in an answer, checked to be one: its media type, and every field RFC 9457 gives
/// it, its status the answer's own.
fn problem(
    status: StatusCode,
    headers: &axum::http::HeaderMap,
    body: &[u8],
    context: &str,
) -> Value {
    assert_eq!(
        headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
        Some("application/problem+json"),
        "{context}: {status} without a problem body"
    );
    let problem: Value = serde_json::from_slice(body).unwrap_or_else(|e| panic!("{context}: {e}"));
    for field in ["type", "title", "detail"] {
        assert!(
            problem[field].as_str().is_some_and(|s| !s.is_empty()),
            "{context}: the problem lacks `{field}`: {problem}"
        );
    }
    assert_eq!(problem["status"], status.as_u16(), "{context}: {problem}");
    problem
}

/// Who may call a documented operation, from its description ("Who may call it: …").
fn allowed(operation: &Value) -> Vec<&'static str> {
    let description = operation["description"].as_str().unwrap();
    let who = description
        .strip_prefix("Who may call it: ")
        .and_then(|rest| rest.split_once('.'))
        .map(|(who, _)| who)
        .unwrap();
    let mut callers = vec!["admin"];
    for part in who.split(", ") {
        callers.extend(match part {
            "anyone" => vec![
                "none",
                "service",
                "user",
                "other-user",
                "trainer",
                "auditor",
            ],
            "service" => vec!["service"],
            "trainer" => vec!["trainer"],
            "auditor" => vec!["auditor"],
            "admin" => vec![],
            "user (self)" | "user (owner)" => vec!["user"],
            other => panic!("unknown caller `{other}` in `{description}`"),
        });
    }
    callers
}

fn body_for(operation: &Value, path: &str) -> Option<(&'static str, String)> {
    operation.get("requestBody")?;
    let body = match path {
        "/v1/accounts" => json!({"id": "n1", "plan": "team"}),
        "/v1/accounts/{id}" => json!({"plan": "max"}),
        "/v1/accounts/{id}/training-preference" => {
            json!({"allowed": true, "channel": "settings", "notice": "consumer-terms-2025"})
        }
        "/v1/events" => json!({"events": []}),
        "/v1/legal-holds" => json!({"id": "h1", "account": "u1", "reason": "court order"}),
        "/v1/exports" => json!({"purpose": "model_training"}),
        "/v1/admin/clock" => json!({"now": NOW}),
        _ => json!({}),
    };
    Some(("application/json", body.to_string()))
}

#[tokio::test]
async fn every_documented_operation_refuses_each_caller_its_role_does_not_allow() {
    let service = Service::start();
    let document = custos_http::openapi_document(&service.state);
    let mut checked = 0;
    let mut wrong = Vec::new();
    for (path, operations) in document["paths"].as_object().unwrap() {
        for (method, operation) in operations.as_object().unwrap() {
            let method = method.to_uppercase();
            let concrete = path.replace("{receipt}", "00").replace("{id}", "u1");
            let allowed = allowed(operation);
            for caller in [
                "none",
                "service",
                "user",
                "other-user",
                "trainer",
                "auditor",
                "admin",
            ] {
                let token = (caller != "none").then_some(caller);
                let (status, headers, body) = service
                    .call(&method, &concrete, token, body_for(operation, path))
                    .await;
                let context = format!("{method} {path} as {caller}");
                checked += 1;
                if allowed.contains(&caller) {
                    if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
                        wrong.push(format!("{context}: refused with {status}"));
                    }
                    continue;
                }
                // Another's conversation looks the same as none at all.
                let expected = match caller {
                    "none" => StatusCode::UNAUTHORIZED,
                    "other-user" if path.starts_with("/v1/conversations/") => StatusCode::NOT_FOUND,
                    _ => StatusCode::FORBIDDEN,
                };
                if status != expected {
                    wrong.push(format!("{context}: {status}, wanted {expected}"));
                    continue;
                }
                let problem = problem(status, &headers, &body, &context);
                let kind = match expected {
                    StatusCode::UNAUTHORIZED => "unauthorized",
                    StatusCode::FORBIDDEN => "forbidden",
                    _ => "unknown-conversation",
                };
                if problem["type"] != kind {
                    wrong.push(format!("{context}: {problem}"));
                }
            }
        }
    }
    assert!(checked > 200, "only {checked} calls");
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// A request and the problem it must get: method, path, caller, body, status, slug.
type Case<'a> = (
    &'a str,
    &'a str,
    Option<&'a str>,
    Option<(&'a str, String)>,
    StatusCode,
    &'a str,
);

#[tokio::test]
async fn every_layer_refuses_with_a_problem_body() {
    let service = Service::start();
    let json = |value: Value| Some(("application/json", value.to_string()));
    let cases: Vec<Case<'_>> = vec![
        // The router: a route that does not exist, and a method a route does not take.
        (
            "GET",
            "/v1/nowhere",
            Some("service"),
            None,
            StatusCode::NOT_FOUND,
            "no-such-route",
        ),
        (
            "PATCH",
            "/v1/accounts/u1/gate",
            Some("service"),
            None,
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
        ),
        (
            "PUT",
            "/healthz",
            None,
            None,
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
        ),
        (
            "POST",
            "/privacy",
            None,
            None,
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
        ),
        // The path: a percent-encoding that is not UTF-8, and an id of the wrong syntax.
        (
            "GET",
            "/v1/accounts/%FF%FE/gate",
            Some("service"),
            None,
            StatusCode::BAD_REQUEST,
            "invalid-path",
        ),
        (
            "GET",
            "/v1/accounts/a%00b/gate",
            Some("service"),
            None,
            StatusCode::BAD_REQUEST,
            "invalid-id",
        ),
        // The body: not JSON, not sent as JSON, too large, of the wrong shape.
        (
            "POST",
            "/v1/accounts",
            Some("service"),
            Some(("application/json", "{not json".into())),
            StatusCode::BAD_REQUEST,
            "invalid-body",
        ),
        (
            "POST",
            "/v1/accounts",
            Some("service"),
            Some(("text/plain", "{}".into())),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
        ),
        (
            "POST",
            "/v1/accounts",
            Some("service"),
            None,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
        ),
        (
            "POST",
            "/v1/accounts",
            Some("service"),
            Some(("application/json", format!("\"{}\"", "a".repeat(2 << 20)))),
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
        ),
        (
            "POST",
            "/v1/accounts",
            Some("service"),
            json(json!({"id": 7})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-body",
        ),
        (
            "POST",
            "/v1/exports",
            Some("trainer"),
            json(json!({"purpose": "model_training", "max_file_bytes": 0})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-body",
        ),
        (
            "POST",
            "/v1/exports",
            Some("trainer"),
            json(json!({"purpose": "model_training", "destination": "a\u{0}b"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "destination-refused",
        ),
        (
            "POST",
            "/v1/exports",
            Some("trainer"),
            json(json!({"purpose": "advertising"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "purpose-refused",
        ),
        // The core's refusals.
        (
            "PATCH",
            "/v1/accounts/nobody",
            Some("service"),
            json(json!({"plan": "pro"})),
            StatusCode::NOT_FOUND,
            "unknown-account",
        ),
        (
            "POST",
            "/v1/accounts",
            Some("service"),
            json(json!({"id": "u1", "plan": "team"})),
            StatusCode::CONFLICT,
            "account-exists",
        ),
        (
            "POST",
            "/v1/accounts",
            Some("service"),
            json(json!({"id": "n", "plan": "pro"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "choice-required",
        ),
        (
            "DELETE",
            "/v1/legal-holds/none",
            Some("admin"),
            None,
            StatusCode::CONFLICT,
            "hold-not-active",
        ),
        // The test clock, which the system clock does not have: here it is manual.
        (
            "PUT",
            "/v1/admin/clock",
            Some("service"),
            json(json!({"now": NOW})),
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
    ];
    for (method, path, caller, body, status, kind) in cases {
        let context = format!("{method} {path}");
        let (got, headers, answer) = service.call(method, path, caller, body).await;
        assert_eq!(
            got,
            status,
            "{context}: {}",
            String::from_utf8_lossy(&answer)
        );
        let problem = problem(got, &headers, &answer, &context);
        assert_eq!(problem["type"], kind, "{context}: {problem}");
        if got == StatusCode::METHOD_NOT_ALLOWED {
            assert!(
                headers.contains_key(header::ALLOW),
                "{context}: no Allow header"
            );
        }
    }
}

#[tokio::test]
async fn a_rejected_event_of_a_batch_carries_a_whole_problem() {
    let service = Service::start();
    let batch = json!({"events": [
        {"id": "e1", "type": "message", "at": NOW, "account": "u1", "conversation": "c1", "text": "hi"},
        {"id": "e2", "type": "message", "at": NOW, "account": "nobody", "conversation": "c2"},
        {"id": "e3", "type": "feedback", "at": NOW, "account": "u1", "conversation": "c1", "rating": "sideways"},
    ]});
    let (status, _, body) = service
        .call(
            "POST",
            "/v1/events",
            Some("service"),
            Some(("application/json", batch.to_string())),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let answer: Value = serde_json::from_slice(&body).unwrap();
    let results = answer["results"].as_array().unwrap();
    assert_eq!(results[0]["status"], "accepted");
    for (index, kind, code) in [(1, "unknown-account", 404), (2, "invalid-body", 422)] {
        let problem = &results[index]["problem"];
        assert_eq!(results[index]["status"], "rejected");
        assert_eq!(problem["type"], kind, "{problem}");
        assert_eq!(problem["status"], code, "{problem}");
        assert!(
            problem["title"].as_str().is_some_and(|t| !t.is_empty()),
            "{problem}"
        );
        assert!(
            problem["detail"].as_str().is_some_and(|t| !t.is_empty()),
            "{problem}"
        );
    }
}

#[tokio::test]
async fn every_answer_carries_a_request_id_and_keeps_a_well_formed_one_sent() {
    let service = Service::start();
    let router = custos_http::router(Arc::clone(&service.state));
    let sent = Request::builder()
        .uri("/healthz")
        .header("x-request-id", "trace-42")
        .body(Body::empty())
        .unwrap();
    let answer = router.clone().oneshot(sent).await.unwrap();
    assert_eq!(answer.headers()["x-request-id"], "trace-42");
    // One that could forge a log line is replaced.
    let forged = Request::builder()
        .uri("/v1/nowhere")
        .header("x-request-id", "a b\tc")
        .body(Body::empty())
        .unwrap();
    let answer = router.oneshot(forged).await.unwrap();
    let id = answer.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(!id.is_empty() && id != "a b\tc", "{id}");
}
