//! Conversations: an account's list, one conversation's status (metadata only), deletion.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use custos_core::{ConversationStatus, Refusal};
use serde_json::{Value, json};

use crate::access::{Allowed, Caller, Role};
use crate::actions;
use crate::extract::{ApiPath, admitted_account, conversation_id};
use crate::problem::Problem;
use crate::state::AppState;

type Shared = State<Arc<AppState>>;

/// The parts of a status every answer about a conversation carries.
fn status_fields(status: &ConversationStatus) -> serde_json::Map<String, Value> {
    let mut fields = serde_json::Map::new();
    fields.insert(
        "retention_class".into(),
        json!(status.expiry.map(|e| e.class.as_str())),
    );
    fields.insert(
        "expires_at".into(),
        json!(status.expiry.map(|e| e.at.to_string())),
    );
    fields.insert("held".into(), json!(status.held));
    fields.insert("eligible".into(), json!(status.eligibility.is_eligible()));
    fields.insert("reason".into(), json!(status.eligibility.as_str()));
    fields
}

/// The conversations in the account's history, with eligibility and expiry.
pub async fn list(
    State(state): Shared,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Value>, Problem> {
    let id = admitted_account(&caller, &id, Allowed::and_user_self(&[Role::Service]))?;
    let at = state.now();
    let account = id.clone();
    let list = state
        .blocking(move |store| store.visible_conversations(&account, at))
        .await?;
    let conversations: Vec<Value> = list
        .iter()
        .map(|c| {
            let mut fields = status_fields(&c.status);
            fields.insert("id".into(), json!(c.id.as_str()));
            fields.insert("surface".into(), json!(c.surface.as_str()));
            Value::Object(fields)
        })
        .collect();
    Ok(Json(
        json!({"account": id.as_str(), "conversations": conversations}),
    ))
}

pub async fn delete(
    State(state): Shared,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, Problem> {
    let id = conversation_id(&id)?;
    actions::delete_conversation_as(&state, &caller, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// docs/API.md §1's `conversation` answer, as of the service's clock: metadata only, never content.
pub async fn status(
    State(state): Shared,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Value>, Problem> {
    let id = conversation_id(&id)?;
    let allowed = Allowed::and_user_self(&[Role::Service, Role::Auditor]);
    // A role that may never ask is refused outright; a user's right depends on the owner.
    if caller.role != Role::User {
        allowed.check(&caller, None)?;
    }
    let at = state.now();
    let lookup = id.clone();
    let (owner, status) = state
        .blocking(move |store| {
            let owner = store.conversation_owner(&lookup)?;
            let status = match owner {
                Some(_) => Some(store.conversation_status(&lookup, at)?),
                None => None,
            };
            Ok((owner, status))
        })
        .await?;
    // A user asking about another's conversation learns no more than about an unknown one.
    let unknown = || Problem::from(Refusal::UnknownConversation(id.clone()));
    let (Some(owner), Some(status)) = (owner, status) else {
        return Err(unknown());
    };
    allowed
        .check(&caller, Some(&owner))
        .map_err(|_| unknown())?;
    let mut fields = status_fields(&status);
    fields.insert("id".into(), json!(id.as_str()));
    fields.insert("exists".into(), json!(status.exists));
    fields.insert("visible".into(), json!(status.visible));
    Ok(Json(Value::Object(fields)))
}
