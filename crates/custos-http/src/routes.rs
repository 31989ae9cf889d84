//! The routes of API.md §2, each with the roles that may call it.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, patch, post, put};
use axum::{Json, Router};
use custos_core::{
    AccountId, Channel, Command, ConversationId, Gate, Rating, Role as MessageRole, Surface,
    Timestamp,
};
use custos_store::{AccountView, Applied, Store, StoreError};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::access::{Allowed, Caller, Role, bearer};
use crate::gate_index::Lookup;
use crate::problem::Problem;
use crate::{exports, retention, schemas};

type Shared = State<Arc<AppState>>;

/// Bodies larger than this are refused with 413.
const BODY_LIMIT: usize = 1 << 20;
/// Events more than this far in the future are refused.
const FUTURE_TOLERANCE_MS: i64 = 5 * 60 * 1000;

/// One route: how it is served and how it is documented. The router and `/openapi.json` are
/// both built from [`routes`], so neither can list a route the other lacks.
pub struct RouteSpec {
    pub method: &'static str,
    pub path: &'static str,
    pub summary: &'static str,
    /// Who may call it, as documentation; the handler enforces it.
    pub access: &'static str,
    /// JSON Schema of the request body, if it takes one.
    pub body: Option<Value>,
    /// The success status.
    pub ok: u16,
    /// JSON Schema of the success body, if it has a JSON one.
    pub response: Option<Value>,
    pub handler: MethodRouter<Arc<AppState>>,
}

fn spec(
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    access: &'static str,
    ok: u16,
    handler: MethodRouter<Arc<AppState>>,
) -> RouteSpec {
    RouteSpec {
        method,
        path,
        summary,
        access,
        body: None,
        ok,
        response: None,
        handler,
    }
}

impl RouteSpec {
    fn returns(self, schema: Value) -> RouteSpec {
        RouteSpec {
            response: Some(schema),
            ..self
        }
    }
}

fn choice_schema() -> Value {
    json!({"type": "object", "additionalProperties": false, "required": ["allowed", "channel", "notice"],
        "properties": {"allowed": {"type": "boolean"}, "channel": {"enum": ["signup", "notice", "settings"]}, "notice": {"type": "string"}}})
}

pub fn routes() -> Vec<RouteSpec> {
    let id = json!({"type": "string", "pattern": "^[A-Za-z0-9._:@-]{1,128}$"});
    let event = json!({"type": "object", "required": ["id", "type", "at"], "properties": {
        "id": {"type": "string"}, "type": {"enum": ["message", "feedback", "conversation_deleted"]},
        "at": {"type": "string", "format": "date-time"}, "account": id, "conversation": id,
        "surface": {"enum": ["chat", "code"]}, "role": {"enum": ["user", "assistant"]}, "text": {"type": "string"},
        "incognito": {"type": "boolean"}, "rating": {"enum": ["up", "down"]}, "comment": {"type": "string"}}});
    vec![
        spec("GET", "/healthz", "Liveness", "anyone", 200, get(healthz)).returns(schemas::health()),
        spec(
            "GET",
            "/metrics",
            "Prometheus metrics",
            "anyone",
            200,
            get(metrics),
        ),
        spec(
            "GET",
            "/openapi.json",
            "This document",
            "anyone",
            200,
            get(openapi),
        ),
        RouteSpec {
            body: Some(
                json!({"type": "object", "additionalProperties": false, "required": ["id", "plan"],
                "properties": {"id": id, "plan": {"type": "string"}, "choice": choice_schema()}}),
            ),
            ..spec(
                "POST",
                "/v1/accounts",
                "Create an account (R4: consumer signups carry a choice)",
                "service",
                201,
                post(create_account),
            )
        }
        .returns(schemas::account()),
        spec(
            "GET",
            "/v1/accounts/{id}",
            "An account: plan, preference, gate",
            "service, user (self)",
            200,
            get(read_account),
        )
        .returns(schemas::account()),
        RouteSpec {
            body: Some(
                json!({"type": "object", "additionalProperties": false, "required": ["plan"], "properties": {"plan": {"type": "string"}}}),
            ),
            ..spec(
                "PATCH",
                "/v1/accounts/{id}",
                "Change an account's plan",
                "service",
                200,
                patch(change_plan),
            )
        }
        .returns(schemas::account()),
        spec(
            "GET",
            "/v1/accounts/{id}/gate",
            "May this user continue? Answered from memory",
            "service, user (self)",
            200,
            get(read_gate),
        )
        .returns(schemas::gate()),
        RouteSpec {
            body: Some(choice_schema()),
            ..spec(
                "PUT",
                "/v1/accounts/{id}/training-preference",
                "Record a training choice; returns the new state and a receipt id",
                "service, user (self)",
                200,
                put(set_preference),
            )
        }
        .returns(schemas::preference_set()),
        spec(
            "GET",
            "/v1/accounts/{id}/training-preference/history",
            "The account's ledger entries with their hashes",
            "service, user (self), auditor",
            200,
            get(preference_history),
        )
        .returns(schemas::history()),
        spec(
            "POST",
            "/v1/accounts/{id}/notice-shown",
            "Record that the notice was shown and the user chose \"Not now\"",
            "service, user (self)",
            204,
            post(notice_shown),
        ),
        spec(
            "GET",
            "/v1/exports/preview",
            "What a training export cut now would hold: eligible conversations and counts",
            "trainer",
            200,
            get(exports::preview),
        )
        .returns(schemas::export_preview()),
        RouteSpec {
            body: Some(exports::new_export_schema()),
            ..spec(
                "POST",
                "/v1/exports",
                "Start a training export (purpose model_training only, R9/R10); answers 202 with its snapshot id",
                "trainer",
                202,
                post(exports::start),
            )
        }
        .returns(schemas::export_started()),
        spec(
            "GET",
            "/v1/exports",
            "Every finished export's signed manifest, newest first",
            "trainer, auditor",
            200,
            get(exports::list),
        )
        .returns(schemas::export_list()),
        spec(
            "GET",
            "/v1/exports/{id}",
            "An export's status: its progress while running, then its manifest",
            "trainer, auditor",
            200,
            get(exports::read),
        )
        .returns(schemas::export_status()),
        spec(
            "GET",
            "/v1/exports/{id}/revocations",
            "The rows of an export no longer eligible now, with the reason (withdrawn, deleted, erased, expired)",
            "trainer",
            200,
            get(exports::revocations),
        )
        .returns(schemas::revocations()),
        spec(
            "GET",
            "/v1/accounts/{id}/receipts/{receipt}",
            "A signed consent receipt",
            "user (self), auditor",
            200,
            get(read_receipt),
        )
        .returns(schemas::receipt()),
        spec(
            "GET",
            "/v1/accounts/{id}/conversations",
            "Visible conversations with eligibility and expiry",
            "service, user (self)",
            200,
            get(list_conversations),
        )
        .returns(schemas::conversation_list()),
        spec(
            "DELETE",
            "/v1/conversations/{id}",
            "Delete a conversation (R7)",
            "service, user (owner)",
            204,
            delete(delete_conversation),
        ),
        RouteSpec {
            body: Some(
                json!({"type": "object", "additionalProperties": false, "required": ["events"], "properties": {"events": {"type": "array", "items": event}}}),
            ),
            ..spec(
                "POST",
                "/v1/events",
                "Record activity; idempotent by event id; answers after commit",
                "service",
                200,
                post(record_events),
            )
        }
        .returns(schemas::event_results()),
        spec(
            "GET",
            "/v1/conversations/{id}",
            "A conversation's retention and training status (metadata only)",
            "service, user (owner), auditor",
            200,
            get(retention::conversation_status),
        )
        .returns(schemas::conversation_status()),
        spec(
            "GET",
            "/v1/accounts/{id}/data",
            "Everything held about the account, machine-readable (R14 access and portability)",
            "user (self), admin",
            200,
            get(retention::account_data),
        )
        .returns(schemas::access_document()),
        spec(
            "DELETE",
            "/v1/accounts/{id}",
            "Erase an account (R14); the next sweep purges what no hold covers",
            "user (self), admin",
            204,
            delete(retention::erase_account),
        ),
        spec(
            "POST",
            "/v1/retention/sweeps",
            "Run a retention sweep now and report what it purged",
            "admin",
            200,
            post(retention::run_sweep),
        )
        .returns(schemas::sweep()),
        RouteSpec {
            body: Some(
                json!({"type": "object", "additionalProperties": false, "required": ["id", "reason"],
                "properties": {"id": id, "account": id, "conversation": id, "reason": {"type": "string", "minLength": 1}}}),
            ),
            ..spec(
                "POST",
                "/v1/legal-holds",
                "Place a legal hold on an account or a conversation (R13)",
                "admin",
                201,
                post(retention::place_hold),
            )
        }
        .returns(schemas::hold()),
        spec(
            "GET",
            "/v1/legal-holds",
            "Every legal hold with its audit trail",
            "admin",
            200,
            get(retention::list_holds),
        )
        .returns(schemas::holds()),
        spec(
            "DELETE",
            "/v1/legal-holds/{id}",
            "Release a legal hold",
            "admin",
            200,
            delete(retention::release_hold),
        )
        .returns(schemas::hold()),
        spec(
            "GET",
            "/v1/reports/retention",
            "Conversations per class, purges due per week, purged per reason per day, holds",
            "auditor",
            200,
            get(retention::retention_report),
        )
        .returns(schemas::retention_report()),
        spec(
            "GET",
            "/v1/reports/consent",
            "Accounts per plan and preference, choices per channel per day, undecided accounts",
            "auditor",
            200,
            get(retention::consent_report),
        )
        .returns(schemas::consent_report()),
        spec(
            "GET",
            "/v1/ledger/verify",
            "Recompute every ledger chain and checkpoint",
            "auditor",
            200,
            get(verify_ledger),
        )
        .returns(schemas::ledger_verification()),
        RouteSpec {
            body: Some(
                json!({"type": "object", "additionalProperties": false, "required": ["now"], "properties": {"now": {"type": "string", "format": "date-time"}}}),
            ),
            ..spec(
                "PUT",
                "/v1/admin/clock",
                "Set the clock (only with --clock manual)",
                "admin",
                200,
                put(set_clock),
            )
        }
        .returns(schemas::clock()),
    ]
}

pub fn router(state: Arc<AppState>) -> Router {
    // Routes sharing a path share one method router.
    let mut by_path: std::collections::BTreeMap<&str, MethodRouter<Arc<AppState>>> =
        std::collections::BTreeMap::new();
    for route in routes() {
        let merged = match by_path.remove(route.path) {
            Some(existing) => existing.merge(route.handler),
            None => route.handler,
        };
        by_path.insert(route.path, merged);
    }
    let mut router = crate::pages::router();
    for (path, handler) in by_path {
        router = router.route(path, handler);
    }
    router
        .fallback(|| async {
            Problem::not_found("no-such-route", "there is no such route; see /openapi.json")
        })
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            track,
        ))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

/// Counts and times every request by its route template.
async fn track(
    State(state): Shared,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = match *request.method() {
        axum::http::Method::GET => "GET",
        axum::http::Method::POST => "POST",
        axum::http::Method::PUT => "PUT",
        axum::http::Method::PATCH => "PATCH",
        axum::http::Method::DELETE => "DELETE",
        _ => "OTHER",
    };
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    state.metrics.request(
        &route,
        method,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

async fn metrics(State(state): Shared) -> Response {
    let text = state.metrics.render(state.gates.len());
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        text,
    )
        .into_response()
}

/// The OpenAPI 3.1 document, generated from [`routes`].
pub fn openapi_document() -> Value {
    let mut paths = serde_json::Map::new();
    for route in routes() {
        let parameters: Vec<Value> = route
            .path
            .split('/')
            .filter_map(|part| part.strip_prefix('{').and_then(|p| p.strip_suffix('}')))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        let public = route.access == "anyone";
        let mut responses = serde_json::Map::new();
        let success = match (&route.response, route.path) {
            (Some(schema), _) => {
                json!({"description": "Success", "content": {"application/json": {"schema": schema}}})
            }
            (None, "/metrics") => {
                json!({"description": "Prometheus text exposition", "content": {"text/plain": {"schema": {"type": "string"}}}})
            }
            (None, "/openapi.json") => {
                json!({"description": "This document", "content": {"application/json": {"schema": {"type": "object"}}}})
            }
            (None, _) => json!({"description": "Success, with no body"}),
        };
        responses.insert(route.ok.to_string(), success);
        let problem = json!({"description": "A problem (RFC 9457)", "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}});
        for status in ["400", "401", "403", "404", "409", "413", "422", "500"] {
            if !public || status == "500" {
                responses.insert(status.to_owned(), problem.clone());
            }
        }
        let mut operation = serde_json::Map::new();
        operation.insert("summary".into(), json!(route.summary));
        let access = format!(
            "Who may call it: {}. An admin token may call every route.",
            route.access
        );
        operation.insert("description".into(), json!(access));
        operation.insert("parameters".into(), json!(parameters));
        operation.insert("responses".into(), Value::Object(responses));
        if !public {
            operation.insert("security".into(), json!([{"bearer": []}]));
        }
        if let Some(schema) = route.body {
            let body =
                json!({"required": true, "content": {"application/json": {"schema": schema}}});
            operation.insert("requestBody".into(), body);
        }
        let entry = paths
            .entry(route.path.to_owned())
            .or_insert_with(|| json!({}));
        if let Value::Object(methods) = entry {
            methods.insert(route.method.to_ascii_lowercase(), Value::Object(operation));
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "custos", "version": env!("CARGO_PKG_VERSION"),
            "description": "Keeps the promises an AI assistant makes about its users' training data."},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Problem": {"type": "object", "required": ["type", "title", "status", "detail"], "properties": {
                "type": {"type": "string", "description": "A stable slug, e.g. choice-required"},
                "title": {"type": "string"}, "status": {"type": "integer"}, "detail": {"type": "string"}}}},
        },
    })
}

async fn openapi() -> Json<Value> {
    Json(openapi_document())
}

// ---- helpers ----

pub(crate) async fn caller(state: &AppState, headers: &HeaderMap) -> Result<Caller, Problem> {
    let token = bearer(headers)
        .ok_or_else(Problem::unauthorized)?
        .to_owned();
    authenticate(state, token).await
}

/// Who a token speaks for: from the cache of recent answers, or asked of the store.
pub(crate) async fn authenticate(state: &AppState, token: String) -> Result<Caller, Problem> {
    let now = state.now();
    let hash = custos_store::token_hash(&token);
    if let Some(caller) = state.tokens.get(&hash, now) {
        return Ok(caller);
    }
    let principal = blocking(state, move |store| store.authenticate(&token, now))
        .await?
        .ok_or_else(Problem::unauthorized)?;
    let role = Role::parse(&principal.role).ok_or_else(Problem::unauthorized)?;
    let caller = Caller {
        role,
        account: principal.account,
        token: custos_core::policy::hex(hash.get(..6).unwrap_or_default()),
    };
    state
        .tokens
        .keep(hash, caller.clone(), principal.expires_at);
    Ok(caller)
}

/// Authenticates and checks the route's roles, for a request about `account`.
pub(crate) async fn admit(
    state: &AppState,
    headers: &HeaderMap,
    allowed: Allowed,
    account: Option<&AccountId>,
) -> Result<Caller, Problem> {
    let caller = caller(state, headers).await?;
    allowed.check(&caller, account)?;
    Ok(caller)
}

/// Parses the account id of a route and admits the caller for that account.
pub(crate) async fn admit_account(
    state: &AppState,
    headers: &HeaderMap,
    id: &str,
    allowed: Allowed,
) -> Result<(AccountId, Caller), Problem> {
    let id = account_id(id)?;
    let caller = admit(state, headers, allowed, Some(&id)).await?;
    Ok((id, caller))
}

/// Runs store work on a blocking thread: SQLite and the PostgreSQL client both block.
pub(crate) async fn blocking<T: Send + 'static>(
    state: &AppState,
    work: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, Problem> {
    let store = Arc::clone(&state.store);
    tokio::task::spawn_blocking(move || work(&store))
        .await
        .map_err(|_| Problem::internal())?
        .map_err(Problem::from)
}

pub(crate) fn account_id(text: &str) -> Result<AccountId, Problem> {
    AccountId::parse(text)
        .map_err(|e| Problem::new(StatusCode::BAD_REQUEST, "invalid-id", e.to_string()))
}

pub(crate) fn conversation_id(text: &str) -> Result<ConversationId, Problem> {
    ConversationId::parse(text)
        .map_err(|e| Problem::new(StatusCode::BAD_REQUEST, "invalid-id", e.to_string()))
}

/// A JSON body, or a problem that says what was wrong with it and where.
pub(crate) fn body<T>(payload: Result<Json<T>, JsonRejection>) -> Result<T, Problem> {
    payload.map(|Json(value)| value).map_err(|rejection| {
        let status = rejection.status();
        let kind = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "body-too-large"
        } else {
            "invalid-body"
        };
        Problem::new(status, kind, rejection.body_text())
    })
}

fn gate_json(gate: Gate, state: &AppState) -> Value {
    let policy = state.store.policy();
    json!({
        "decision": gate.decision.as_str(),
        "reason": gate.reason.as_str(),
        "notice": {"id": policy.id, "choose_by": policy.choose_by.to_string()},
    })
}

fn preference_json(view: &AccountView) -> serde_json::Map<String, Value> {
    let mut preference = serde_json::Map::new();
    preference.insert("state".into(), json!(view.preference.as_str()));
    preference.insert(
        "decided_at".into(),
        json!(view.decided.as_ref().map(|(at, _, _)| at.to_string())),
    );
    preference.insert(
        "channel".into(),
        json!(
            view.decided
                .as_ref()
                .map(|(_, channel, _)| channel.as_str())
        ),
    );
    preference.insert(
        "notice".into(),
        json!(view.decided.as_ref().map(|(_, _, notice)| notice.clone())),
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
struct ChoiceBody {
    allowed: bool,
    channel: String,
    notice: String,
}

impl ChoiceBody {
    fn parse(&self, state: &AppState) -> Result<(bool, Channel), Problem> {
        let channel = Channel::parse(&self.channel).ok_or_else(|| {
            Problem::invalid_body("`channel` must be one of signup, notice, settings")
        })?;
        if self.notice != state.store.policy().id {
            return Err(Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unknown-notice",
                format!(
                    "`notice` is `{}`, but the notice in force is `{}`",
                    self.notice,
                    state.store.policy().id
                ),
            ));
        }
        Ok((self.allowed, channel))
    }
}

// ---- handlers ----

async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateAccount {
    id: String,
    plan: String,
    choice: Option<ChoiceBody>,
}

async fn create_account(
    State(state): Shared,
    headers: HeaderMap,
    payload: Result<Json<CreateAccount>, JsonRejection>,
) -> Result<Response, Problem> {
    admit(&state, &headers, Allowed::roles(&[Role::Service]), None).await?;
    let request = body(payload)?;
    let id = account_id(&request.id)?;
    let choice = request
        .choice
        .as_ref()
        .map(|c| c.parse(&state))
        .transpose()?;
    let at = state.now();
    let command = Command::CreateAccount {
        account: id.clone(),
        plan: request.plan,
        choice,
    };
    let account = id.clone();
    let view = blocking(&state, move |store| {
        store.apply(at, &command, "service")?;
        store.account_view(&account, at)
    })
    .await?;
    state.refresh_gate_blocking(&id).await?;
    Ok((StatusCode::CREATED, Json(account_json(&view, &state))).into_response())
}

async fn read_account(
    State(state): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, Problem> {
    let (id, _) = admit_account(
        &state,
        &headers,
        &id,
        Allowed::and_user_self(&[Role::Service]),
    )
    .await?;
    let at = state.now();
    let view = blocking(&state, move |store| store.account_view(&id, at)).await?;
    Ok(Json(account_json(&view, &state)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangePlan {
    plan: String,
}

async fn change_plan(
    State(state): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    payload: Result<Json<ChangePlan>, JsonRejection>,
) -> Result<Json<Value>, Problem> {
    let (id, caller) =
        admit_account(&state, &headers, &id, Allowed::roles(&[Role::Service])).await?;
    let request = body(payload)?;
    let at = state.now();
    let command = Command::ChangePlan {
        account: id.clone(),
        plan: request.plan,
    };
    let account = id.clone();
    let actor = caller.actor();
    let view = blocking(&state, move |store| {
        store.apply(at, &command, &actor)?;
        store.account_view(&account, at)
    })
    .await?;
    state.refresh_gate_blocking(&id).await?;
    Ok(Json(account_json(&view, &state)))
}

/// Records a training choice; answers the account as it now stands and the choice's receipt
/// id. The API and the pages both record choices through this.
pub(crate) async fn record_choice(
    state: &Arc<AppState>,
    caller: &Caller,
    id: &AccountId,
    allowed: bool,
    channel: Channel,
) -> Result<(AccountView, Option<String>), Problem> {
    let at = state.now();
    let actor = caller.actor();
    let command = Command::Choose {
        account: id.clone(),
        allowed,
        channel,
    };
    let account = id.clone();
    let answer = blocking(state, move |store| {
        store.apply(at, &command, &actor)?;
        let receipt = store
            .ledger(&account)?
            .last()
            .map(|e| custos_core::policy::hex(&e.hash));
        Ok((store.account_view(&account, at)?, receipt))
    })
    .await?;
    state.refresh_gate_blocking(id).await?;
    Ok(answer)
}

/// Records that the notice was shown and the user chose "Not now".
pub(crate) async fn record_notice_shown(
    state: &AppState,
    caller: &Caller,
    id: AccountId,
) -> Result<(), Problem> {
    let at = state.now();
    let command = Command::NoticeShown { account: id };
    let actor = caller.actor();
    blocking(state, move |store| store.apply(at, &command, &actor)).await?;
    Ok(())
}

/// The notice was shown and the user chose "Not now": recorded as evidence that it was shown.
async fn notice_shown(
    State(state): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    let (id, caller) = admit_account(
        &state,
        &headers,
        &id,
        Allowed::and_user_self(&[Role::Service]),
    )
    .await?;
    record_notice_shown(&state, &caller, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The hot path: answered from memory once the caller is known.
async fn read_gate(
    State(state): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, Problem> {
    let (id, _) = admit_account(
        &state,
        &headers,
        &id,
        Allowed::and_user_self(&[Role::Service]),
    )
    .await?;
    let gate = gate_from_memory(&state, &id).await?;
    state.metrics.gate_decision(gate.reason.as_str());
    Ok(Json(gate_json(gate, &state)))
}

async fn set_preference(
    State(state): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    payload: Result<Json<ChoiceBody>, JsonRejection>,
) -> Result<Json<Value>, Problem> {
    let (id, caller) = admit_account(
        &state,
        &headers,
        &id,
        Allowed::and_user_self(&[Role::Service]),
    )
    .await?;
    let (allowed, channel) = body(payload)?.parse(&state)?;
    let (view, receipt) = record_choice(&state, &caller, &id, allowed, channel).await?;
    let mut result = preference_json(&view);
    result.insert("receipt".into(), json!(receipt));
    Ok(Json(Value::Object(result)))
}

async fn preference_history(
    State(state): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, Problem> {
    let (id, _) = admit_account(
        &state,
        &headers,
        &id,
        Allowed::and_user_self(&[Role::Service, Role::Auditor]),
    )
    .await?;
    known_live(&state, &id).await?;
    let account = id.clone();
    let entries = blocking(&state, move |store| store.ledger(&account)).await?;
    let entries: Vec<Value> = entries.iter().map(custos_store::Entry::to_json).collect();
    Ok(Json(json!({"account": id.as_str(), "entries": entries})))
}

/// Gate(a, now) from memory, or the problem of an unknown or erased account.
fn remembered_gate(state: &AppState, id: &AccountId) -> Result<Option<Gate>, Problem> {
    match state.gates.gate(state.store.policy(), id, state.now()) {
        Lookup::Live(gate) => Ok(Some(gate)),
        Lookup::Erased => Err(Problem::not_found(
            "account-erased",
            format!("account `{id}` was erased"),
        )),
        Lookup::Unknown => Ok(None),
    }
}

/// Gate(a, now) from memory, or the problem of an unknown or erased account. An id the index
/// does not hold is looked up once in the store: an account erased before this server started
/// is stored only under its pseudonym, and is remembered as erased once found.
pub(crate) async fn gate_from_memory(
    state: &Arc<AppState>,
    id: &AccountId,
) -> Result<Gate, Problem> {
    if let Some(gate) = remembered_gate(state, id)? {
        return Ok(gate);
    }
    state.refresh_gate_blocking(id).await?;
    remembered_gate(state, id)?.ok_or_else(|| {
        Problem::not_found("unknown-account", format!("account `{id}` does not exist"))
    })
}

/// Refuses an unknown or erased account.
async fn known_live(state: &Arc<AppState>, id: &AccountId) -> Result<(), Problem> {
    gate_from_memory(state, id).await.map(|_| ())
}

/// A signed consent receipt: for the user it belongs to, and for auditors.
async fn read_receipt(
    State(state): Shared,
    headers: HeaderMap,
    Path((id, receipt)): Path<(String, String)>,
) -> Result<Json<Value>, Problem> {
    let (id, _) = admit_account(
        &state,
        &headers,
        &id,
        Allowed::and_user_self(&[Role::Auditor]),
    )
    .await?;
    known_live(&state, &id).await?;
    let account = id.clone();
    let wanted = receipt.clone();
    blocking(&state, move |store| store.receipt(&account, &wanted))
        .await?
        .map(Json)
        .ok_or_else(|| {
            Problem::not_found(
                "unknown-receipt",
                format!("account `{id}` has no receipt `{receipt}`"),
            )
        })
}

async fn list_conversations(
    State(state): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, Problem> {
    let (id, _) = admit_account(
        &state,
        &headers,
        &id,
        Allowed::and_user_self(&[Role::Service]),
    )
    .await?;
    let at = state.now();
    let account = id.clone();
    let list = blocking(&state, move |store| {
        store.visible_conversations(&account, at)
    })
    .await?;
    let conversations: Vec<Value> = list
        .iter()
        .map(|c| {
            json!({
                "id": c.id.as_str(),
                "surface": c.surface.as_str(),
                "retention_class": c.status.expiry.map(|e| e.class.as_str()),
                "expires_at": c.status.expiry.map(|e| e.at.to_string()),
                "held": c.status.held,
                "eligible": c.status.eligibility.is_eligible(),
                "reason": c.status.eligibility.as_str(),
            })
        })
        .collect();
    Ok(Json(
        json!({"account": id.as_str(), "conversations": conversations}),
    ))
}

async fn delete_conversation(
    State(state): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    let id = conversation_id(&id)?;
    let caller = caller(&state, &headers).await?;
    delete_conversation_as(&state, &caller, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Deletes a conversation (R7) for a caller that may: the service, an admin, or the user who
/// owns it. Another user's conversation looks the same as none.
pub(crate) async fn delete_conversation_as(
    state: &AppState,
    caller: &Caller,
    id: ConversationId,
) -> Result<(), Problem> {
    let at = state.now();
    let actor = caller.actor();
    let owner_must_be = match caller.role {
        Role::Service | Role::Admin => None,
        Role::User => Some(caller.account.clone().ok_or_else(Problem::forbidden)?),
        _ => return Err(Problem::forbidden()),
    };
    blocking(state, move |store| {
        if let Some(owner) = owner_must_be {
            // A user may delete only its own conversations; another's looks the same as none.
            if store.conversation_owner(&id)? != Some(owner) {
                return Err(custos_core::Refusal::UnknownConversation(id).into());
            }
        }
        store
            .apply(
                at,
                &Command::DeleteConversation { conversation: id },
                &actor,
            )
            .map(|_| ())
    })
    .await
}

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

/// Turns one event into its id, time and command, or a problem naming the field.
fn parse_event(value: Value, now: Timestamp) -> Result<(String, Timestamp, Command), Problem> {
    let event: EventBody =
        serde_json::from_value(value).map_err(|e| Problem::invalid_body(e.to_string()))?;
    let time = |text: &str| {
        Timestamp::parse(text).map_err(|e| Problem::invalid_body(format!("`at`: {e}")))
    };
    let closed = |field: &str,
                  text: Option<String>,
                  allowed: &str,
                  default: &str|
     -> Result<String, Problem> {
        let text = text.unwrap_or_else(|| default.to_owned());
        if allowed.split(", ").any(|a| a == text) {
            Ok(text)
        } else {
            Err(Problem::invalid_body(format!(
                "`{field}` must be one of {allowed}, not `{text}`"
            )))
        }
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
            let surface = closed("surface", surface, "chat, code", "chat")?;
            let role = closed("role", role, "user, assistant", "user")?;
            (
                id,
                time(&at)?,
                Command::Message {
                    account: account_id(&account)?,
                    conversation: conversation_id(&conversation)?,
                    surface: Surface::parse(&surface).ok_or_else(Problem::internal)?,
                    role: MessageRole::parse(&role).ok_or_else(Problem::internal)?,
                    text: text.unwrap_or_default(),
                    incognito: incognito.unwrap_or(false),
                },
            )
        }
        EventBody::Feedback {
            id,
            at,
            account,
            conversation,
            rating,
            comment,
        } => {
            let rating = closed("rating", Some(rating), "up, down", "")?;
            (
                id,
                time(&at)?,
                Command::Feedback {
                    account: account_id(&account)?,
                    conversation: conversation_id(&conversation)?,
                    rating: Rating::parse(&rating).ok_or_else(Problem::internal)?,
                    comment,
                },
            )
        }
        EventBody::ConversationDeleted {
            id,
            at,
            conversation,
        } => (
            id,
            time(&at)?,
            Command::DeleteConversation {
                conversation: conversation_id(&conversation)?,
            },
        ),
    };
    if id.is_empty() || id.len() > 128 {
        return Err(Problem::invalid_body("`id` must be 1 to 128 characters"));
    }
    if at.unix_millis() > now.unix_millis() + FUTURE_TOLERANCE_MS {
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
struct EventBatch {
    events: Vec<Value>,
}

/// Records each event in its own transaction: one bad event never blocks or partly applies the
/// others. Answers after every accepted event is committed.
async fn record_events(
    State(state): Shared,
    headers: HeaderMap,
    payload: Result<Json<EventBatch>, JsonRejection>,
) -> Result<Json<Value>, Problem> {
    let caller = admit(&state, &headers, Allowed::roles(&[Role::Service]), None).await?;
    let actor = caller.actor();
    let batch = body(payload)?;
    let now = state.now();
    // Parse every event first; the valid ones are applied in one transaction (one commit),
    // each in its own savepoint, so a refused event rolls back alone.
    let parsed: Vec<ParsedEvent> = batch
        .events
        .into_iter()
        .map(|raw| {
            (
                raw.get("id").and_then(Value::as_str).map(str::to_owned),
                parse_event(raw, now),
            )
        })
        .collect();
    let outcomes = blocking(&state, move |store| {
        let valid: Vec<(Option<&str>, Timestamp, &Command)> = parsed
            .iter()
            .filter_map(|(_, p)| p.as_ref().ok().map(|(id, at, command)| (Some(id.as_str()), *at, command)))
            .collect();
        let mut applied = store.apply_batch(&valid, &actor)?.into_iter();
        let rejected = |index: usize, id: &Option<String>, problem: Problem| {
            json!({"index": index, "id": id, "status": "rejected",
                "problem": {"type": problem.kind, "status": problem.status.as_u16(), "detail": problem.detail}})
        };
        Ok(parsed
            .iter()
            .enumerate()
            .map(|(index, (id, outcome))| match outcome {
                Err(problem) => rejected(index, id, problem.clone()),
                Ok(_) => match applied.next() {
                    Some(Ok(Applied::Accepted)) => json!({"index": index, "id": id, "status": "accepted"}),
                    Some(Ok(Applied::Duplicate)) => json!({"index": index, "id": id, "status": "duplicate"}),
                    Some(Err(error)) => rejected(index, id, Problem::from(error)),
                    None => rejected(index, id, Problem::internal()),
                },
            })
            .collect::<Vec<_>>())
    })
    .await?;
    for outcome in &outcomes {
        state
            .metrics
            .event(match outcome.get("status").and_then(Value::as_str) {
                Some("accepted") => "accepted",
                Some("duplicate") => "duplicate",
                _ => "rejected",
            });
    }
    Ok(Json(json!({"results": outcomes})))
}

async fn verify_ledger(State(state): Shared, headers: HeaderMap) -> Result<Json<Value>, Problem> {
    admit(&state, &headers, Allowed::roles(&[Role::Auditor]), None).await?;
    let report = blocking(&state, |store| store.verify_ledger()).await?;
    Ok(Json(json!({
        "intact": report.problem.is_none(),
        "accounts": report.accounts,
        "entries": report.entries,
        "checkpoints": report.checkpoints,
        "problem": report.problem,
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SetClock {
    now: String,
}

async fn set_clock(
    State(state): Shared,
    headers: HeaderMap,
    payload: Result<Json<SetClock>, JsonRejection>,
) -> Result<Json<Value>, Problem> {
    if matches!(state.clock, crate::Clock::System) {
        return Err(Problem::not_found(
            "no-such-route",
            "the clock can be set only when serving with --clock manual",
        ));
    }
    admit(&state, &headers, Allowed::roles(&[]), None).await?;
    let request = body(payload)?;
    let to =
        Timestamp::parse(&request.now).map_err(|e| Problem::invalid_body(format!("`now`: {e}")))?;
    state.clock.set(to);
    Ok(Json(json!({"now": to.to_string()})))
}

impl AppState {
    pub(crate) async fn refresh_gate_blocking(
        self: &Arc<Self>,
        account: &AccountId,
    ) -> Result<(), Problem> {
        let state = Arc::clone(self);
        let account = account.clone();
        tokio::task::spawn_blocking(move || state.refresh_gate(&account))
            .await
            .map_err(|_| Problem::internal())?
            .map_err(Problem::from)
    }
}
