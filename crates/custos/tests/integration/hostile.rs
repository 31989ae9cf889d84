//! Hostile input, sent as raw bytes over TCP to the real server: NUL bytes, deep nesting,
//! bytes that are not UTF-8, look-alike ids, path tricks, oversized and malformed heads. Every
//! answer is below 500, and every refusal is a whole problem+json body, whatever layer made
//! it; nothing of another account is ever answered.

use std::io::{Read, Write};
use std::time::Duration;

use serde_json::{Value, json};

use crate::http::{NOTICE, Server, assert_ledger_length, signup};

/// An answer as read off the socket.
struct Raw {
    status: u16,
    head: String,
    body: Vec<u8>,
}

/// Sends `request` as it is and reads one answer (the server closes after refusing a head it
/// can't read, and `Connection: close` asks it to close after the others).
fn send(address: &str, request: &[u8]) -> Raw {
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // A server may refuse before reading everything; what it answers is what counts.
    let _ = stream.write_all(request);
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no answer head in {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap();
    Raw {
        status,
        head,
        body: raw[end + 4..].to_vec(),
    }
}

fn request(method: &str, path: &[u8], headers: &[(&str, &[u8])], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path);
    out.extend_from_slice(b" HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    if !body.is_empty() || method != "GET" {
        out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// What is wrong with an answer, if anything: a 5xx, or a refusal that is not a whole problem
/// (or, from a page a person sees, not a page that says what went wrong).
fn fault(raw: &Raw, page: bool) -> Option<String> {
    if raw.status >= 500 {
        return Some(format!(
            "{}: {}",
            raw.status,
            String::from_utf8_lossy(&raw.body)
        ));
    }
    if raw.status < 400 {
        return None;
    }
    let head = raw.head.to_ascii_lowercase();
    if page && head.contains("content-type: text/html") {
        let body = String::from_utf8_lossy(&raw.body);
        let says = body.contains("role=\"alert\"");
        return (!says).then(|| format!("{}: a page that says nothing: {body}", raw.status));
    }
    if !head.contains("content-type: application/problem+json") {
        return Some(format!("{} without problem+json: {}", raw.status, raw.head));
    }
    let problem: Value = match serde_json::from_slice(&raw.body) {
        Ok(problem) => problem,
        Err(error) => return Some(format!("{}: not JSON ({error})", raw.status)),
    };
    let whole = ["type", "title", "detail"]
        .iter()
        .all(|f| problem[f].as_str().is_some_and(|s| !s.is_empty()))
        && problem["status"] == raw.status;
    (!whole).then(|| format!("{}: not a whole problem: {problem}", raw.status))
}

#[test]
fn hostile_input_gets_no_5xx_and_every_refusal_is_a_problem() {
    let server = Server::start("2025-10-01T00:00:00Z");
    assert_eq!(signup(&server, "u1", "pro", Some(true)).status, 201);
    assert_eq!(signup(&server, "u2", "pro", Some(false)).status, 201);
    let service = format!("Bearer {}", server.tokens["service"]);
    let trainer = format!("Bearer {}", server.tokens["trainer"]);
    let user = format!("Bearer {}", server.tokens["user"]);
    let admin = format!("Bearer {}", server.tokens["admin"]);
    let json_as = |token: &str| -> Vec<(&'static str, Vec<u8>)> {
        vec![
            ("Authorization", token.as_bytes().to_vec()),
            ("Content-Type", b"application/json".to_vec()),
        ]
    };
    let nested = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    let mut add = |name: &str,
                   method: &str,
                   path: &[u8],
                   headers: Vec<(&'static str, Vec<u8>)>,
                   body: Vec<u8>| {
        let headers: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (*n, v.as_slice())).collect();
        cases.push((name.to_owned(), request(method, path, &headers, &body)));
    };
    // NUL bytes: in ids, texts and a destination; in a path; in a header value.
    add(
        "NUL in an account id",
        "POST",
        b"/v1/accounts",
        json_as(&service),
        json!({"id": "a\u{0}b", "plan": "pro"})
            .to_string()
            .into_bytes(),
    );
    add(
        "NUL in a plan",
        "POST",
        b"/v1/accounts",
        json_as(&service),
        json!({"id": "n1", "plan": "pro\u{0}"})
            .to_string()
            .into_bytes(),
    );
    add("NUL in a message text", "POST", b"/v1/events", json_as(&service),
        json!({"events": [{"id": "e1", "type": "message", "at": "2025-10-01T00:00:00Z", "account": "u1", "conversation": "c1", "text": "a\u{0}b"}]}).to_string().into_bytes());
    add("NUL in an event id", "POST", b"/v1/events", json_as(&service),
        json!({"events": [{"id": "e\u{0}3", "type": "conversation_deleted", "at": "2025-10-01T00:00:00Z", "conversation": "c1"}]}).to_string().into_bytes());
    add("NUL in a feedback comment", "POST", b"/v1/events", json_as(&service),
        json!({"events": [{"id": "e2", "type": "feedback", "at": "2025-10-01T00:00:00Z", "account": "u1", "conversation": "c1", "rating": "up", "comment": "\u{0}"}]}).to_string().into_bytes());
    add(
        "NUL in a hold reason",
        "POST",
        b"/v1/legal-holds",
        json_as(&admin),
        json!({"id": "h1", "account": "u1", "reason": "litigation\u{0}"})
            .to_string()
            .into_bytes(),
    );
    add(
        "NUL in an export destination",
        "POST",
        b"/v1/exports",
        json_as(&trainer),
        json!({"purpose": "model_training", "destination": "a\u{0}b"})
            .to_string()
            .into_bytes(),
    );
    add(
        "NUL in a notice",
        "PUT",
        b"/v1/accounts/u1/training-preference",
        json_as(&service),
        json!({"allowed": true, "channel": "settings", "notice": "\u{0}"})
            .to_string()
            .into_bytes(),
    );
    add(
        "percent-encoded NUL in a path",
        "GET",
        b"/v1/accounts/u1%00/gate",
        json_as(&service),
        vec![],
    );
    add(
        "raw NUL in a path",
        "GET",
        b"/v1/accounts/u1\x00/gate",
        json_as(&service),
        vec![],
    );
    add(
        "NUL in a header",
        "GET",
        b"/v1/accounts/u1/gate",
        vec![("Authorization", b"Bearer a\x00b".to_vec())],
        vec![],
    );
    // Deep nesting, in the body and in an event.
    add(
        "a body nested 100,000 deep",
        "POST",
        b"/v1/events",
        json_as(&service),
        nested(100_000).into_bytes(),
    );
    add(
        "an event nested 10,000 deep",
        "POST",
        b"/v1/events",
        json_as(&service),
        format!("{{\"events\": [{}]}}", nested(10_000)).into_bytes(),
    );
    add(
        "a hold nested in its reason",
        "POST",
        b"/v1/legal-holds",
        json_as(&format!("Bearer {}", server.tokens["admin"])),
        format!(
            "{{\"id\": \"h1\", \"account\": \"u1\", \"reason\": {}}}",
            nested(5_000)
        )
        .into_bytes(),
    );
    // Bytes that are not UTF-8: in the body, percent-encoded in a path, raw in a path, in a
    // header, in a form.
    add(
        "a body that is not UTF-8",
        "POST",
        b"/v1/accounts",
        json_as(&service),
        b"{\"id\": \"\xff\xfe\", \"plan\": \"pro\"}".to_vec(),
    );
    add(
        "a percent-encoded path that is not UTF-8",
        "GET",
        b"/v1/accounts/%ff%fe/gate",
        json_as(&service),
        vec![],
    );
    add(
        "a raw path that is not UTF-8",
        "GET",
        b"/v1/accounts/\xff\xfe/gate",
        json_as(&service),
        vec![],
    );
    add(
        "a token that is not UTF-8",
        "GET",
        b"/v1/accounts/u1/gate",
        vec![("Authorization", b"Bearer \xff\xfe".to_vec())],
        vec![],
    );
    add(
        "a cookie that is not UTF-8",
        "GET",
        b"/privacy",
        vec![("Cookie", b"custos_session=\xff\xfe".to_vec())],
        vec![],
    );
    add(
        "a sign-in form that is not UTF-8",
        "POST",
        b"/signin",
        vec![(
            "Content-Type",
            b"application/x-www-form-urlencoded".to_vec(),
        )],
        b"token=%ff%fe\xff".to_vec(),
    );
    // Look-alike ids: another script, full width, a trailing dot, another case, spaces.
    for (name, path) in [
        ("a Cyrillic look-alike id", "/v1/accounts/u%D0%B0/gate"),
        ("a full-width id", "/v1/accounts/%EF%BD%951/gate"),
        ("an id with a trailing dot", "/v1/accounts/u1./gate"),
        ("an id of another case", "/v1/accounts/U1/gate"),
        ("an id with a space", "/v1/accounts/u1%20/gate"),
        (
            "an id of 129 characters",
            &format!("/v1/accounts/{}/gate", "a".repeat(129)),
        ),
    ] {
        add(name, "GET", path.as_bytes(), json_as(&user), vec![]);
    }
    // Path tricks: dot segments, doubled and encoded slashes, a query that repeats a field.
    for (name, path) in [
        (
            "dot segments up to the ledger",
            "/v1/accounts/u1/../../ledger/verify",
        ),
        ("an encoded dot segment", "/v1/accounts/%2e%2e/gate"),
        ("an encoded slash", "/v1/accounts/u2%2Fgate"),
        ("a doubled slash", "//v1/accounts/u2/gate"),
        ("a trailing slash", "/v1/accounts/u2/gate/"),
        (
            "another's receipts by a trick",
            "/v1/accounts/u1/receipts/../../u2/data",
        ),
        ("a repeated query field", "/signin?role=a&role=b"),
        ("an absolute URI", "http://evil.example/v1/accounts/u2/gate"),
        ("an asterisk", "*"),
    ] {
        add(name, "GET", path.as_bytes(), json_as(&user), vec![]);
    }
    // Heads: a header too large, too many headers, a request line that is not HTTP.
    add(
        "a header of 100 KiB",
        "GET",
        b"/healthz",
        vec![("X-Padding", vec![b'a'; 100 << 10])],
        vec![],
    );
    let many: Vec<(&'static str, Vec<u8>)> = (0..150).map(|_| ("X-Many", b"1".to_vec())).collect();
    add("150 headers", "GET", b"/healthz", many, vec![]);
    cases.push((
        "a request line that is not HTTP".into(),
        b"HELLO THERE\r\n\r\n".to_vec(),
    ));
    cases.push((
        "no request line".into(),
        b"\r\n\r\n\r\n\x00\x01\x02\r\n\r\n".to_vec(),
    ));
    cases.push((
        "a lying Content-Length".into(),
        b"POST /v1/accounts HTTP/1.1\r\nHost: x\r\nContent-Length: nine\r\n\r\n{}".to_vec(),
    ));
    assert!(cases.len() >= 35, "{} cases", cases.len());
    let mut faults = Vec::new();
    for (name, bytes) in &cases {
        let answer = send(&server.address, bytes);
        let page = [b"GET /privacy".as_slice(), b"POST /signin", b"GET /signin"]
            .iter()
            .any(|start| bytes.starts_with(start));
        if let Some(fault) = fault(&answer, page) {
            faults.push(format!("{name}: {fault}"));
        }
        // A free text holding NUL is refused for what it is, on every backend alike.
        let free_text = [
            "an event id",
            "a message text",
            "a feedback comment",
            "a hold reason",
        ]
        .iter()
        .any(|what| name == &format!("NUL in {what}"));
        // (A batch of events answers 200 and says which event was rejected, and why.)
        let body = String::from_utf8_lossy(&answer.body);
        let says_nul = body.contains("\"nul-in-text\"")
            && (answer.status == 422 || answer.status == 200 && body.contains("\"rejected\""));
        if free_text && !says_nul {
            faults.push(format!("{name}: {} without nul-in-text", answer.status));
        }
        // Nothing of u2 reaches u1's token, whatever the path.
        if answer.status < 300 && String::from_utf8_lossy(&answer.body).contains("\"u2\"") {
            faults.push(format!("{name}: answered u2's data to u1"));
        }
    }
    assert!(faults.is_empty(), "{}", faults.join("\n"));
    // The server is still up and nothing of the refused requests was recorded.
    assert_ledger_length(&server, "u1", 2);
    let conversations = server.call(
        "GET",
        "/v1/accounts/u1/conversations",
        Some("service"),
        None,
    );
    assert_eq!(conversations.status, 200, "{}", conversations.body);
    assert!(
        !conversations.body.to_string().contains("c1"),
        "{}",
        conversations.body
    );
    let holds = server.call("GET", "/v1/legal-holds", Some("admin"), None);
    assert_eq!(holds.status, 200, "{}", holds.body);
    assert!(!holds.body.to_string().contains("h1"), "{}", holds.body);
    let choice = json!({"allowed": true, "channel": "settings", "notice": NOTICE}).to_string();
    let reply = server.call(
        "PUT",
        "/v1/accounts/u1/training-preference",
        Some("user"),
        Some(&choice),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
}
