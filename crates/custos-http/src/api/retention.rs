//! Retention and data-subject rights: sweeps, legal holds, erasure, and the account's data.
//! Every decision is the core's, through the store.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use custos_core::HoldTarget;
use custos_store::{AccessDocument, HoldRecord};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::access::{Allowed, Caller};
use crate::actions;
use crate::extract::{ApiJson, ApiPath, account_id, admitted_account, conversation_id, hold_id};
use crate::problem::Problem;
use crate::state::AppState;

type Shared = State<Arc<AppState>>;

/// Only an admin may: holds and sweeps.
const ADMIN: Allowed = Allowed::roles(&[]);

/// Runs a retention sweep now and reports what it did.
pub async fn run_sweep(State(state): Shared, caller: Caller) -> Result<Json<Value>, Problem> {
    ADMIN.check(&caller, None)?;
    let at = state.now();
    let report = actions::sweep_now(&state, at, caller.actor()).await?;
    Ok(Json(json!({
        "at": at.to_string(),
        "purged": report.purged_total(),
        "purged_by_reason": report.purged,
        "held_back": report.held_back,
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewHold {
    id: String,
    account: Option<String>,
    conversation: Option<String>,
    reason: String,
}

pub fn hold_json(hold: &HoldRecord) -> Value {
    let (account, conversation) = match &hold.target {
        HoldTarget::Account(account) => (Some(account.as_str()), None),
        HoldTarget::Conversation(conversation) => (None, Some(conversation.as_str())),
    };
    json!({
        "id": hold.id.as_str(),
        "account": account,
        "conversation": conversation,
        "reason": hold.reason,
        "placed_at": hold.placed_at.to_string(),
        "placed_by": hold.placed_by,
        "released_at": hold.released_at.map(|t| t.to_string()),
        "released_by": hold.released_by,
        "active": hold.released_at.is_none(),
    })
}

/// A field of a body that holds an id: its problem names the field.
fn field<T>(name: &str, parsed: Result<T, Problem>) -> Result<T, Problem> {
    parsed.map_err(|p| Problem::invalid_body(format!("`{name}`: {}", p.detail)))
}

/// Places a legal hold on an account or a conversation (R13), with its reason.
pub async fn place_hold(
    State(state): Shared,
    caller: Caller,
    body: Result<ApiJson<NewHold>, Problem>,
) -> Result<(StatusCode, Json<Value>), Problem> {
    ADMIN.check(&caller, None)?;
    let ApiJson(request) = body?;
    let id = field("id", hold_id(&request.id))?;
    let target = match (&request.account, &request.conversation) {
        (Some(account), None) => HoldTarget::Account(field("account", account_id(account))?),
        (None, Some(conversation)) => {
            HoldTarget::Conversation(field("conversation", conversation_id(conversation))?)
        }
        _ => {
            return Err(Problem::invalid_body(
                "a hold names exactly one of `account` and `conversation`",
            ));
        }
    };
    let reason = request.reason.trim().to_owned();
    if reason.is_empty() {
        return Err(Problem::invalid_body(
            "`reason`: say why the hold is placed (it is kept in the audit trail)",
        ));
    }
    let (at, actor) = (state.now(), caller.actor());
    let hold = state
        .blocking(move |store| store.place_hold(at, &id, &target, &reason, &actor))
        .await?;
    Ok((StatusCode::CREATED, Json(hold_json(&hold))))
}

/// Every legal hold, active or released, with its audit trail.
pub async fn list_holds(State(state): Shared, caller: Caller) -> Result<Json<Value>, Problem> {
    ADMIN.check(&caller, None)?;
    let holds = state.blocking(|store| store.holds()).await?;
    Ok(Json(
        json!({"holds": holds.iter().map(hold_json).collect::<Vec<_>>()}),
    ))
}

/// Releases an active legal hold; what it held is purged by the next sweep once expired.
pub async fn release_hold(
    State(state): Shared,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Value>, Problem> {
    ADMIN.check(&caller, None)?;
    let id = hold_id(&id)?;
    let (at, actor) = (state.now(), caller.actor());
    let hold = state
        .blocking(move |store| store.release_hold(at, &id, &actor))
        .await?;
    Ok(Json(hold_json(&hold)))
}

/// Erases an account (R14): everything is hidden at once and the next sweep purges what no
/// hold covers. The gate and the account's routes then answer 404 `account-erased`.
pub async fn erase_account(
    State(state): Shared,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, Problem> {
    let id = admitted_account(&caller, &id, Allowed::and_user_self(&[]))?;
    actions::erase_account_as(&state, &caller, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// R14 access and portability: everything held about the account, as one JSON document.
pub async fn account_data(
    State(state): Shared,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<AccessDocument>, Problem> {
    let id = admitted_account(&caller, &id, Allowed::and_user_self(&[]))?;
    let at = state.now();
    let document = state
        .blocking(move |store| store.access_document(&id, at))
        .await?;
    Ok(Json(document))
}
