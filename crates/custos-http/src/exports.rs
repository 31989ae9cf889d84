//! Routes of training exports (R10). Every selection is the core's, read from one consistent
//! snapshot of the store.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use serde_json::{Value, json};

use crate::AppState;
use crate::access::{Allowed, Role};
use crate::problem::Problem;
use crate::routes::{admit, blocking};

/// What an export cut now would hold: the eligible conversations (sorted), how many messages
/// and feedback items of them would be included, and how many conversations each rule left
/// out. Ids and counts only, never content.
pub async fn preview(State(state): Shared, headers: HeaderMap) -> Result<Json<Value>, Problem> {
    admit(&state, &headers, Allowed::roles(&[Role::Trainer]), None).await?;
    let cutoff = state.now();
    let snapshot = blocking(&state, move |store| store.snapshot(cutoff)).await?;
    let excluded: serde_json::Map<String, Value> = snapshot
        .excluded
        .iter()
        .map(|(reason, count)| (reason.as_str().to_owned(), json!(count)))
        .collect();
    Ok(Json(json!({
        "cutoff": cutoff.to_string(),
        "conversations": snapshot.included.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        "messages": snapshot.included.iter().map(|c| c.messages.len()).sum::<usize>(),
        "feedback": snapshot.included.iter().map(|c| c.feedback.len()).sum::<usize>(),
        "excluded": excluded,
    })))
}

type Shared = State<Arc<AppState>>;
