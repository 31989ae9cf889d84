//! `POST /v1/events`: a batch of activity, each event judged alone, idempotent by event id.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use custos_core::{Command, Rating, Role as MessageRole, Surface, Timestamp};
use custos_store::Applied;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::access::{Allowed, Caller, Role};
use crate::extract::{ApiJson, account_id, conversation_id};
use crate::problem::Problem;
use crate::state::AppState;

/// Events more than this far in the future are refused.
const FUTURE_TOLERANCE_MS: i64 = 5 * 60 * 1000;

/// One event of a batch, as sent.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum EventBody {
    Message {
        id: String,
        at: String,
        account: String,
        conversation: String,
        surface: Option<String>,
        role: Option<String>,
        text: Option<String>,
        incognito: Option<bool>,
    },
    Feedback {
        id: String,
        at: String,
        account: String,
        conversation: String,
        rating: String,
        comment: Option<String>,
    },
    ConversationDeleted {
        id: String,
        at: String,
        conversation: String,
    },
}

/// A field of a closed set of values, `default` when absent, or a problem naming the field.
fn closed<T>(
    field: &str,
    text: Option<String>,
    default: T,
    parse: impl Fn(&str) -> Option<T>,
    allowed: &str,
) -> Result<T, Problem> {
    match text {
        None => Ok(default),
        Some(text) => parse(&text).ok_or_else(|| {
            Problem::invalid_body(format!("`{field}` must be one of {allowed}, not `{text}`"))
        }),
    }
}

/// Turns one event into its id, time and command, or a problem naming the field.
fn parse_event(value: Value, now: Timestamp) -> Result<(String, Timestamp, Command), Problem> {
    let event: EventBody =
        serde_json::from_value(value).map_err(|e| Problem::invalid_body(e.to_string()))?;
    let time = |text: &str| {
        Timestamp::parse(text).map_err(|e| Problem::invalid_body(format!("`at`: {e}")))
    };
    let (id, at, command) = match event {
        EventBody::Message {
            id,
            at,
            account,
            conversation,
            surface,
            role,
            text,
            incognito,
        } => {
            let surface = closed(
                "surface",
                surface,
                Surface::Chat,
                Surface::parse,
                "chat, code",
            )?;
            let role = closed(
                "role",
                role,
                MessageRole::User,
                MessageRole::parse,
                "user, assistant",
            )?;
            let command = Command::Message {
                account: account_id(&account)?,
                conversation: conversation_id(&conversation)?,
                surface,
                role,
                text: text.unwrap_or_default(),
                incognito: incognito.unwrap_or(false),
            };
            (id, time(&at)?, command)
        }
        EventBody::Feedback {
            id,
            at,
            account,
            conversation,
            rating,
            comment,
        } => {
            let rating = Rating::parse(&rating).ok_or_else(|| {
                Problem::invalid_body(format!("`rating` must be one of up, down, not `{rating}`"))
            })?;
            let command = Command::Feedback {
                account: account_id(&account)?,
                conversation: conversation_id(&conversation)?,
                rating,
                comment,
            };
            (id, time(&at)?, command)
        }
        EventBody::ConversationDeleted {
            id,
            at,
            conversation,
        } => {
            let command = Command::DeleteConversation {
                conversation: conversation_id(&conversation)?,
            };
            (id, time(&at)?, command)
        }
    };
    if id.is_empty() || id.len() > 128 {
        return Err(Problem::invalid_body("`id` must be 1 to 128 characters"));
    }
    custos_core::admission::check_text("id", &id)?;
    if at.unix_millis() > now.unix_millis().saturating_add(FUTURE_TOLERANCE_MS) {
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "event-in-future",
            format!("`at` {at} is more than 5 minutes after the server's time {now}"),
        ));
    }
    Ok((id, at, command))
}

/// An event's id as sent (if any) and what parsing made of it.
type ParsedEvent = (
    Option<String>,
    Result<(String, Timestamp, Command), Problem>,
);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventBatch {
    events: Vec<Value>,
}

/// One event's outcome, as answered.
fn outcome(index: usize, id: &Option<String>, result: Result<Applied, &Problem>) -> Value {
    match result {
        Ok(Applied::Accepted) => json!({"index": index, "id": id, "status": "accepted"}),
        Ok(Applied::Duplicate) => json!({"index": index, "id": id, "status": "duplicate"}),
        Err(problem) => {
            json!({"index": index, "id": id, "status": "rejected", "problem": problem.body()})
        }
    }
}

/// Records the batch in one transaction, each event in its own savepoint: one bad event never
/// blocks or partly applies the others. Answers after every accepted event is committed.
pub async fn record(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    body: Result<ApiJson<EventBatch>, Problem>,
) -> Result<Json<Value>, Problem> {
    Allowed::roles(&[Role::Service]).check(&caller, None)?;
    let ApiJson(batch) = body?;
    let actor = caller.actor();
    let now = state.now();
    // Parse every event first; the valid ones are applied together.
    let parsed: Vec<ParsedEvent> = batch
        .events
        .into_iter()
        .map(|raw| {
            let id = raw.get("id").and_then(Value::as_str).map(str::to_owned);
            (id, parse_event(raw, now))
        })
        .collect();
    let (parsed, applied) = state
        .blocking(move |store| {
            let valid: Vec<(Option<&str>, Timestamp, &Command)> = parsed
                .iter()
                .filter_map(|(_, p)| p.as_ref().ok())
                .map(|(id, at, command)| (Some(id.as_str()), *at, command))
                .collect();
            let applied = store.apply_batch(&valid, &actor)?;
            Ok((parsed, applied))
        })
        .await?;
    let mut applied = applied.into_iter();
    let results: Vec<Value> = parsed
        .iter()
        .enumerate()
        .map(|(index, (id, parsed))| {
            let result = match parsed {
                Err(problem) => Err(problem.clone()),
                Ok(_) => match applied.next() {
                    Some(Ok(done)) => Ok(done),
                    Some(Err(error)) => Err(Problem::from(error)),
                    None => Err(Problem::internal()),
                },
            };
            state.metrics.event(match &result {
                Ok(Applied::Accepted) => "accepted",
                Ok(Applied::Duplicate) => "duplicate",
                Err(_) => "rejected",
            });
            outcome(index, id, result.as_ref().map(|done| *done))
        })
        .collect();
    Ok(Json(json!({"results": results})))
}
