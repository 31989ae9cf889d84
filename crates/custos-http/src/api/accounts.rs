//! Accounts: creation, plan, the gate, the training choice, its history and receipts.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use custos_core::{Channel, Gate};
use custos_store::AccountView;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::access::{Allowed, Caller, Role};
use crate::actions;
use crate::extract::{ApiJson, ApiPath, account_id, admitted_account};
use crate::problem::Problem;
use crate::state::AppState;

type Shared = State<Arc<AppState>>;

/// The gate's answer with the notice in force.
pub fn gate_json(gate: Gate, state: &AppState) -> Value {
    let policy = state.store.policy();
    json!({
        "decision": gate.decision.as_str(),
        "reason": gate.reason.as_str(),
        "notice": {"id": policy.id, "choose_by": policy.choose_by.to_string()},
    })
}

fn preference_json(view: &AccountView) -> serde_json::Map<String, Value> {
    let decided = view.decided.as_ref();
    let mut preference = serde_json::Map::new();
    preference.insert("state".into(), json!(view.preference.as_str()));
    preference.insert(
        "decided_at".into(),
        json!(decided.map(|(at, _, _)| at.to_string())),
    );
    preference.insert(
        "channel".into(),
        json!(decided.map(|(_, channel, _)| channel.as_str())),
    );
    preference.insert(
        "notice".into(),
        json!(decided.map(|(_, _, notice)| notice.clone())),
    );
    preference
}

fn account_json(view: &AccountView, state: &AppState) -> Value {
    json!({
        "id": view.id.as_str(),
        "plan": view.plan,
        "preference": preference_json(view),
        "gate": gate_json(view.gate, state),
    })
}

/// A choice as a request carries it; `notice` must name the notice in force.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChoiceBody {
    allowed: bool,
    channel: String,
    notice: String,
}

impl ChoiceBody {
    fn parse(&self, state: &AppState) -> Result<(bool, Channel), Problem> {
        let channel = Channel::parse(&self.channel).ok_or_else(|| {
            Problem::invalid_body("`channel` must be one of signup, notice, settings")
        })?;
        let in_force = &state.store.policy().id;
        if self.notice != *in_force {
            return Err(Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unknown-notice",
                format!(
                    "`notice` is `{}`, but the notice in force is `{in_force}`",
                    self.notice
                ),
            ));
        }
        Ok((self.allowed, channel))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewAccount {
    id: String,
    plan: String,
    choice: Option<ChoiceBody>,
}

pub async fn create(
    State(state): Shared,
    caller: Caller,
    body: Result<ApiJson<NewAccount>, Problem>,
) -> Result<(StatusCode, Json<Value>), Problem> {
    Allowed::roles(&[Role::Service]).check(&caller, None)?;
    let ApiJson(request) = body?;
    let id = account_id(&request.id)?;
    let choice = request
        .choice
        .as_ref()
        .map(|c| c.parse(&state))
        .transpose()?;
    let view = actions::create_account(&state, caller.actor(), id, request.plan, choice).await?;
    Ok((StatusCode::CREATED, Json(account_json(&view, &state))))
}

pub async fn read(
    State(state): Shared,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Value>, Problem> {
    let id = admitted_account(&caller, &id, Allowed::and_user_self(&[Role::Service]))?;
    let at = state.now();
    let view = state
        .blocking(move |store| store.account_view(&id, at))
        .await?;
    Ok(Json(account_json(&view, &state)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewPlan {
    plan: String,
}

pub async fn change_plan(
    State(state): Shared,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    body: Result<ApiJson<NewPlan>, Problem>,
) -> Result<Json<Value>, Problem> {
    let id = admitted_account(&caller, &id, Allowed::roles(&[Role::Service]))?;
    let ApiJson(request) = body?;
    let view = actions::change_plan(&state, &caller, id, request.plan).await?;
    Ok(Json(account_json(&view, &state)))
}

/// The hot path: answered from memory once the caller is known.
pub async fn gate(
    State(state): Shared,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Value>, Problem> {
    let id = admitted_account(&caller, &id, Allowed::and_user_self(&[Role::Service]))?;
    let gate = actions::gate_from_memory(&state, &id).await?;
    state.metrics.gate_decision(gate.reason.as_str());
    Ok(Json(gate_json(gate, &state)))
}

/// Records a training choice; answers the state and the receipt id of this very choice.
pub async fn set_preference(
    State(state): Shared,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    body: Result<ApiJson<ChoiceBody>, Problem>,
) -> Result<Json<Value>, Problem> {
    let id = admitted_account(&caller, &id, Allowed::and_user_self(&[Role::Service]))?;
    let (allowed, channel) = body?.0.parse(&state)?;
    let (view, receipt) = actions::record_choice(&state, &caller, id, allowed, channel).await?;
    let mut result = preference_json(&view);
    result.insert("receipt".into(), json!(receipt));
    Ok(Json(Value::Object(result)))
}

pub async fn preference_history(
    State(state): Shared,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Value>, Problem> {
    let id = admitted_account(
        &caller,
        &id,
        Allowed::and_user_self(&[Role::Service, Role::Auditor]),
    )?;
    actions::known_live(&state, &id).await?;
    let account = id.clone();
    let entries = state.blocking(move |store| store.ledger(&account)).await?;
    Ok(Json(json!({"account": id.as_str(), "entries": entries})))
}

/// The notice was shown and the user chose "Not now": recorded as evidence that it was shown.
pub async fn notice_shown(
    State(state): Shared,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, Problem> {
    let id = admitted_account(&caller, &id, Allowed::and_user_self(&[Role::Service]))?;
    actions::record_notice_shown(&state, &caller, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A signed consent receipt: for the user it belongs to, and for auditors.
pub async fn receipt(
    State(state): Shared,
    caller: Caller,
    ApiPath((id, receipt)): ApiPath<(String, String)>,
) -> Result<Json<Value>, Problem> {
    let id = admitted_account(&caller, &id, Allowed::and_user_self(&[Role::Auditor]))?;
    actions::known_live(&state, &id).await?;
    let (account, wanted) = (id.clone(), receipt.clone());
    state
        .blocking(move |store| store.receipt(&account, &wanted))
        .await?
        .map(Json)
        .ok_or_else(|| {
            Problem::not_found(
                "unknown-receipt",
                format!("account `{id}` has no receipt `{receipt}`"),
            )
        })
}
