//! What every answer passes through: a request id for the log, metrics by route template, and the guarantee that every error answer is problem+json, whichever layer made
//! it (a 405 of the router, a rejection of an extractor this crate did not wrap).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::problem::{Cause, PROBLEM_JSON, Problem};
use crate::state::AppState;
use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// The header that carries a request's id, both ways.
pub const REQUEST_ID: &str = "x-request-id";

/// A request id the client sent, if it is one we can log and echo as it is.
fn sent_id(request: &Request) -> Option<HeaderValue> {
    let value = request.headers().get(REQUEST_ID)?;
    let text = value.to_str().ok()?;
    let fine = !text.is_empty()
        && text.len() <= 64
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    fine.then(|| value.clone())
}

/// A new request id: this process's random prefix and a counter.
fn new_id() -> HeaderValue {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static PREFIX: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let prefix = PREFIX.get_or_init(|| {
        let mut bytes = [0u8; 4];
        let _ = getrandom::fill(&mut bytes);
        custos_core::policy::hex(&bytes)
    });
    let number = NEXT.fetch_add(1, Ordering::Relaxed);
    HeaderValue::from_str(&format!("{prefix}-{number:x}"))
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

fn method_label(method: &axum::http::Method) -> &'static str {
    match *method {
        axum::http::Method::GET => "GET",
        axum::http::Method::POST => "POST",
        axum::http::Method::PUT => "PUT",
        axum::http::Method::PATCH => "PATCH",
        axum::http::Method::DELETE => "DELETE",
        _ => "OTHER",
    }
}

/// Gives every request an id (the client's `X-Request-Id` if well formed) and answers it back;
/// counts and times the request by its route template; logs an internal failure's cause with
/// the id, method and route template (never the path, which holds ids), and at `debug` every
/// answer. Events name the request by fields rather than by a span: a span per request would
/// cost the gate's hot path more than everything else it does.
pub async fn observe(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let id = sent_id(&request).unwrap_or_else(new_id);
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = method_label(request.method());
    let started = std::time::Instant::now();
    let mut response = as_problem(next.run(request).await).await;
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    state.metrics.request(&route, method, status, elapsed);
    let request_id = id.to_str().unwrap_or_default();
    if let Some(Cause(cause)) = response.extensions().get::<Cause>() {
        tracing::error!(id = request_id, method, route, status, cause, "failed");
    }
    tracing::debug!(
        id = request_id,
        method,
        route,
        status,
        micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
        "answered"
    );
    response.headers_mut().insert(REQUEST_ID, id);
    response
}

/// The slug of an error answer made by a layer that gives no slug of its own.
fn slug_of(status: StatusCode) -> &'static str {
    match status {
        StatusCode::METHOD_NOT_ALLOWED => "method-not-allowed",
        StatusCode::NOT_FOUND => "no-such-route",
        StatusCode::PAYLOAD_TOO_LARGE => "body-too-large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported-media-type",
        StatusCode::UNPROCESSABLE_ENTITY => "invalid-body",
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "headers-too-large",
        status if status.is_server_error() => "internal",
        _ => "bad-request",
    }
}

/// Whether an error answer already has a body a person or a client can read as it is: a
/// problem, or a page.
fn readable(response: &Response) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with(PROBLEM_JSON) || t.starts_with("text/html"))
}

/// Turns an error answer that is neither a problem nor a page (a rejection of a layer that gives
/// no problem of its own) into problem+json with the same status and headers, keeping its text
/// as the detail.
async fn as_problem(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) || readable(&response) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096)
        .await
        .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_owned())
        .unwrap_or_default();
    let detail = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("the request was refused")
            .to_owned()
    } else {
        text
    };
    let problem = Problem::new(status, slug_of(status), detail).into_response();
    let (problem_parts, problem_body) = problem.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    for (name, value) in &problem_parts.headers {
        parts.headers.insert(name, value.clone());
    }
    Response::from_parts(parts, Body::new(problem_body))
}

/// The answer to a method a route does not take (the router adds the `Allow` header).
pub async fn method_not_allowed() -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "this route does not take that method; see /openapi.json",
    )
}
