//! The service's log on stderr: one structured event a line, each request's events naming its
//! id and route template, and never a token, a cookie, a form or a message text, whatever the
//! requests were.

use serde_json::{Value, json};

use crate::http::{NOTICE, Server, export_and_wait, signup, terminate};
use crate::support::http;

/// A text that must never reach the log: it is sent as a message, a comment and a form field.
const PRIVATE_TEXT: &str = "my-private-words-42";

/// Drives the service through a full run with every kind of secret a request can carry, and
/// answers the secrets sent and the request ids answered.
fn full_run(server: &Server) -> (Vec<String>, Vec<String>) {
    let mut secrets: Vec<String> = server.tokens.values().cloned().collect();
    let mut ids = Vec::new();
    let mut call = |method: &str, path: &str, headers: &[(&str, &str)], body: Option<&str>| {
        let reply = http(&server.address, method, path, headers, body);
        ids.push(reply.header("x-request-id"));
        reply
    };
    let bearer = |name: &str| format!("Bearer {}", server.tokens[name]);
    assert_eq!(signup(server, "u1", "pro", Some(true)).status, 201);
    let choice = json!({"allowed": false, "channel": "settings", "notice": NOTICE}).to_string();
    let path = "/v1/accounts/u1/training-preference";
    assert_eq!(
        call(
            "PUT",
            path,
            &[("Authorization", &bearer("user"))],
            Some(&choice)
        )
        .status,
        200
    );
    assert_eq!(
        call(
            "GET",
            "/v1/accounts/u1/gate",
            &[("Authorization", &bearer("service"))],
            None
        )
        .status,
        200
    );
    let events = json!({"events": [
        {"id": "e1", "type": "message", "at": "2025-10-01T00:00:00Z", "account": "u1", "conversation": "c1", "text": PRIVATE_TEXT},
        {"id": "e2", "type": "feedback", "at": "2025-10-01T00:00:00Z", "account": "u1", "conversation": "c1", "rating": "up", "comment": PRIVATE_TEXT},
    ]});
    let reply = call(
        "POST",
        "/v1/events",
        &[("Authorization", &bearer("service"))],
        Some(&events.to_string()),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    // Refused tokens: unknown, in a header of the wrong form, in a cookie.
    let forged = "custos_forged0123456789abcdef0123456789abcdef".to_owned();
    assert_eq!(
        call(
            "GET",
            "/v1/accounts/u1",
            &[("Authorization", &format!("Bearer {forged}"))],
            None
        )
        .status,
        401
    );
    assert_eq!(
        call(
            "GET",
            "/v1/accounts/u1",
            &[("Authorization", &format!("Basic {forged}"))],
            None
        )
        .status,
        401
    );
    let cookie = format!("custos_session={}", server.tokens["user"]);
    assert_eq!(
        call("GET", "/privacy", &[("Cookie", &cookie)], None).status,
        200
    );
    // Sign-in forms with a good and a forged token, and a form of a page with a private text.
    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    let signin = format!("token={}", server.tokens["user"]);
    assert_eq!(call("POST", "/signin", &form, Some(&signin)).status, 303);
    assert_eq!(
        call("POST", "/signin", &form, Some(&format!("token={forged}"))).status,
        401
    );
    let with_cookie = [
        ("Content-Type", "application/x-www-form-urlencoded"),
        ("Cookie", cookie.as_str()),
    ];
    let forged_form = format!("csrf={PRIVATE_TEXT}&allowed=true");
    assert_eq!(
        call("POST", "/privacy/choice", &with_cookie, Some(&forged_form)).status,
        403
    );
    // Errors of every layer, each with the token sent.
    let auth = [("Authorization", bearer("admin"))];
    let auth: Vec<(&str, &str)> = auth.iter().map(|(n, v)| (*n, v.as_str())).collect();
    assert_eq!(call("GET", "/v1/nowhere", &auth, None).status, 404);
    assert_eq!(call("PATCH", "/healthz", &auth, None).status, 405);
    assert_eq!(
        call("POST", "/v1/accounts", &auth, Some("{not json")).status,
        400
    );
    // Work on threads of their own: an export and a sweep.
    export_and_wait(
        server,
        json!({"purpose": "model_training", "format": "jsonl"}),
    );
    assert_eq!(
        call("POST", "/v1/retention/sweeps", &auth, None).status,
        200
    );
    assert_eq!(
        call(
            "DELETE",
            "/v1/accounts/u1",
            &[("Authorization", &bearer("user"))],
            None
        )
        .status,
        204
    );
    secrets.push(forged);
    secrets.push(PRIVATE_TEXT.to_owned());
    ids.retain(|id| !id.is_empty());
    (secrets, ids)
}

fn assert_nothing_secret(log: &str, secrets: &[String]) {
    assert!(!log.trim().is_empty(), "nothing was logged");
    for secret in secrets {
        assert!(
            !log.contains(secret.as_str()),
            "the log holds a secret: {secret}\n{log}"
        );
    }
    // Nor the raw form of any token, or an account's path (requests are named by template).
    for never in ["Bearer", "custos_session", "/v1/accounts/u1"] {
        assert!(!log.contains(never), "the log holds `{never}`\n{log}");
    }
}

#[test]
fn the_json_log_names_each_request_by_id_and_template_and_holds_no_secret() {
    let folder = tempfile::tempdir().unwrap();
    let log_path = folder.path().join("serve.log");
    let args = ["--log-format", "json", "--log-level", "debug"];
    let mut server = Server::start_with("2025-10-01T00:00:00Z", &args, Some(&log_path));
    let (secrets, ids) = full_run(&server);
    // A storage failure: its cause goes to the log with the request's id, never to the caller.
    server.execute("DROP TABLE event_ids");
    let batch = json!({"events": [{"id": "e9", "type": "message", "at": "2025-10-01T00:00:00Z", "account": "u2", "conversation": "c9"}]});
    let bearer = format!("Bearer {}", server.tokens["service"]);
    let failed = http(
        &server.address,
        "POST",
        "/v1/events",
        &[("Authorization", &bearer)],
        Some(&batch.to_string()),
    );
    assert_eq!(failed.status, 500, "{}", failed.body);
    assert!(
        !failed.body.contains("event_ids"),
        "the cause reached the caller: {}",
        failed.body
    );
    let failed_id = failed.header("x-request-id");
    terminate(&mut server);
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert_nothing_secret(&log, &secrets);
    let events: Vec<Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    for event in &events {
        for field in ["timestamp", "level", "fields"] {
            assert!(!event[field].is_null(), "no `{field}`: {event}");
        }
    }
    let answered: Vec<&Value> = events
        .iter()
        .filter(|e| e["fields"]["message"] == "answered")
        .collect();
    for id in &ids {
        assert!(
            answered.iter().any(|e| e["fields"]["id"] == id.as_str()),
            "request {id} is not in the log"
        );
    }
    let routes: Vec<&str> = answered
        .iter()
        .filter_map(|e| e["fields"]["route"].as_str())
        .collect();
    assert!(
        routes.contains(&"/v1/accounts/{id}/training-preference"),
        "{routes:?}"
    );
    assert!(
        events.iter().any(|e| e["fields"]["message"] == "sweep"),
        "the sweep is not logged"
    );
    assert!(events.iter().any(|e| e["fields"]["message"] == "serving"));
    let failure = events
        .iter()
        .find(|e| e["fields"]["message"] == "failed")
        .unwrap_or_else(|| panic!("the failure is not in the log:\n{log}"));
    assert_eq!(failure["level"], "ERROR");
    assert_eq!(failure["fields"]["id"], failed_id.as_str());
    assert_eq!(failure["fields"]["route"], "/v1/events");
    assert!(
        failure["fields"]["cause"]
            .as_str()
            .is_some_and(|c| c.contains("event_ids")),
        "{failure}"
    );
    assert!(events.iter().any(|e| {
        e["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("stopped"))
    }));
}

#[test]
fn the_human_log_is_a_line_an_event_and_holds_no_secret() {
    let folder = tempfile::tempdir().unwrap();
    let log_path = folder.path().join("serve.log");
    let mut server = Server::start_with(
        "2025-10-01T00:00:00Z",
        &["--log-level", "debug"],
        Some(&log_path),
    );
    let (secrets, ids) = full_run(&server);
    terminate(&mut server);
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert_nothing_secret(&log, &secrets);
    assert!(
        log.lines().all(|line| !line.trim_start().starts_with('{')),
        "{log}"
    );
    for id in &ids {
        assert!(log.contains(id.as_str()), "request {id} is not in the log");
    }
    // At the default level, requests that went well are not logged one by one.
    let quiet_path = folder.path().join("quiet.log");
    let mut quiet = Server::start_with("2025-10-01T00:00:00Z", &[], Some(&quiet_path));
    assert_eq!(signup(&quiet, "u1", "pro", Some(true)).status, 201);
    terminate(&mut quiet);
    let log = std::fs::read_to_string(&quiet_path).unwrap();
    assert!(
        !log.contains("answered") && log.contains("serving"),
        "{log}"
    );
}
