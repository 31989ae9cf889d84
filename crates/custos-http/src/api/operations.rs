//! For operators and their tools: liveness, readiness, metrics and the test clock.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use custos_core::Timestamp;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::access::{Allowed, Caller};
use crate::clock::Clock;
use crate::extract::ApiJson;
use crate::problem::Problem;
use crate::state::AppState;

type Shared = State<Arc<AppState>>;

pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Readiness, apart from liveness: an instance whose gate index has fallen behind the store by
/// more than the configured limit (its database is unreachable, or it can't keep up) is taken
/// out of the load balancer's rotation until it catches up.
pub async fn readyz(State(state): Shared) -> Result<Json<Value>, Problem> {
    let lag = state.feed.figures().lag;
    if lag > state.max_gate_lag {
        return Err(Problem::unavailable(
            "not-ready",
            format!(
                "the gate index is {} ms behind the store, more than the {} ms allowed",
                lag.as_millis(),
                state.max_gate_lag.as_millis()
            ),
            1,
        ));
    }
    Ok(Json(
        json!({"status": "ready", "gate_lag_ms": u64::try_from(lag.as_millis()).unwrap_or(u64::MAX)}),
    ))
}

pub async fn metrics(State(state): Shared) -> Response {
    let text = state.metrics.render(
        state.gates.len(),
        state.gates.is_loaded(),
        state.feed.figures(),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetClock {
    now: String,
}

/// Sets the manual clock (admin), so that a test can let years pass; on the system clock this
/// route does not exist.
pub async fn set_clock(
    State(state): Shared,
    caller: Result<Caller, Problem>,
    body: Result<ApiJson<SetClock>, Problem>,
) -> Result<Json<Value>, Problem> {
    if matches!(state.clock, Clock::System) {
        return Err(Problem::not_found(
            "no-such-route",
            "the clock can be set only when serving with --clock manual",
        ));
    }
    Allowed::roles(&[]).check(&caller?, None)?;
    let ApiJson(request) = body?;
    let to =
        Timestamp::parse(&request.now).map_err(|e| Problem::invalid_body(format!("`now`: {e}")))?;
    state.clock.set(to);
    Ok(Json(json!({"now": to.to_string()})))
}
