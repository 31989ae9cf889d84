//! The route table of docs/API.md §2, each route with who may call it, what it takes and what it
//! answers; the router and the OpenAPI 3.1 document at `/openapi.json` are both built from it,
//! so neither can list a route the other lacks.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{MethodRouter, delete, get, patch, post, put};
use custos_core::Policy;
use serde_json::{Map, Value, json};

use crate::api::{accounts, conversations, events, exports, operations, reports, retention};
use crate::clock::Clock;
use crate::middleware;
use crate::problem::Problem;
use crate::schemas;
use crate::state::AppState;

/// Bodies larger than this are refused with 413.
const BODY_LIMIT: usize = 1 << 20;

/// One route: how it is served and how it is documented.
pub struct RouteSpec {
    pub method: &'static str,
    pub path: &'static str,
    /// The OpenAPI `operationId`.
    pub operation: &'static str,
    pub summary: &'static str,
    /// Who may call it, as documentation; the handler enforces it. `anyone` needs no token.
    pub access: &'static str,
    /// JSON Schema of the request body, if it takes one.
    pub body: Option<Value>,
    /// The success status.
    pub ok: u16,
    /// JSON Schema of the success body, if it has a JSON one.
    pub response: Option<Value>,
    /// The problems it answers besides those every route of its kind can (431 on every route;
    /// 401, 403, 500 and 503 with a token; 400 with path ids; 400, 413, 415 and 422 with a
    /// body).
    pub refusals: &'static [u16],
    /// Links from its success answer to other operations (for clients and stateful tests).
    pub links: Value,
    /// The schema of each path parameter (an id of the syntax of docs/POLICY.md, Terms unless said otherwise).
    pub parameters: Vec<(&'static str, Value)>,
    pub handler: MethodRouter<Arc<AppState>>,
}

impl RouteSpec {
    fn new(
        method: &'static str,
        path: &'static str,
        operation: &'static str,
        summary: &'static str,
        access: &'static str,
        handler: MethodRouter<Arc<AppState>>,
    ) -> RouteSpec {
        RouteSpec {
            method,
            path,
            operation,
            summary,
            access,
            body: None,
            ok: 200,
            response: None,
            refusals: &[],
            links: Value::Null,
            parameters: Vec::new(),
            handler,
        }
    }

    /// The schema of path parameter `name`.
    fn parameter(mut self, name: &'static str, schema: Value) -> RouteSpec {
        self.parameters.push((name, schema));
        self
    }

    fn ok(self, status: u16) -> RouteSpec {
        RouteSpec { ok: status, ..self }
    }

    fn takes(self, schema: Value) -> RouteSpec {
        RouteSpec {
            body: Some(schema),
            ..self
        }
    }

    fn returns(self, schema: Value) -> RouteSpec {
        RouteSpec {
            response: Some(schema),
            ..self
        }
    }

    fn refuses(self, statuses: &'static [u16]) -> RouteSpec {
        RouteSpec {
            refusals: statuses,
            ..self
        }
    }

    fn links(self, links: Value) -> RouteSpec {
        RouteSpec { links, ..self }
    }

    fn is_public(&self) -> bool {
        self.access == "anyone"
    }
}

/// A link to the operation `operation`, filling its parameter `name` from the answer's `field`.
fn link(operation: &str, parameter: &str, field: &str) -> Value {
    json!({"operationId": operation, "parameters": {parameter: format!("$response.body#/{field}")}})
}

/// An account, conversation or hold id (docs/POLICY.md, Terms).
fn id_schema() -> Value {
    json!({"type": "string", "pattern": "^[A-Za-z0-9._:@-]{1,128}$"})
}

/// A snapshot id, as `POST /v1/exports` makes them.
fn export_id_schema() -> Value {
    json!({"type": "string", "pattern": "^exp-[0-9a-f]{16}$"})
}

/// A receipt id: the hash of its choice's ledger entry.
fn receipt_id_schema() -> Value {
    json!({"type": "string", "pattern": "^[0-9a-fA-F]{64}$"})
}

/// A plan of the policy in force, consumer or business.
fn plan_schema(policy: &Policy) -> Value {
    let plans: Vec<&str> = policy
        .consumer_plans()
        .iter()
        .chain(policy.business_plans())
        .map(|p| p.as_str())
        .collect();
    json!({"enum": plans})
}

/// A choice; `notice` must be the notice in force.
fn choice_schema(policy: &Policy) -> Value {
    json!({"type": "object", "additionalProperties": false, "required": ["allowed", "channel", "notice"],
        "properties": {"allowed": {"type": "boolean"}, "channel": {"enum": ["signup", "notice", "settings"]},
            "notice": {"const": policy.id, "description": "The id of the notice the user answered: the one in force"}}})
}

/// What the route table is made for: the policy in force, and whether the clock is settable.
struct Service<'a> {
    policy: &'a Policy,
    manual_clock: bool,
}

fn operation_routes(service: &Service<'_>) -> Vec<RouteSpec> {
    let mut routes = vec![
        RouteSpec::new(
            "GET",
            "/healthz",
            "healthz",
            "Liveness",
            "anyone",
            get(operations::healthz),
        )
        .returns(schemas::health()),
        RouteSpec::new(
            "GET",
            "/readyz",
            "readyz",
            "Readiness: fails while the gate index is behind the store by more than --max-gate-lag",
            "anyone",
            get(operations::readyz),
        )
        .returns(schemas::readiness())
        .refuses(&[503]),
        RouteSpec::new(
            "GET",
            "/metrics",
            "metrics",
            "Prometheus metrics",
            "anyone",
            get(operations::metrics),
        ),
        RouteSpec::new(
            "GET",
            "/openapi.json",
            "openapi",
            "This document",
            "anyone",
            get(openapi),
        ),
    ];
    // The test clock exists only on a server started with `--clock manual`.
    if service.manual_clock {
        routes.push(
            RouteSpec::new(
                "PUT", "/v1/admin/clock", "setClock", "Set the clock (only with --clock manual)", "admin",
                put(operations::set_clock),
            )
            .takes(json!({"type": "object", "additionalProperties": false, "required": ["now"], "properties": {"now": {"type": "string", "format": "date-time"}}}))
            .returns(schemas::clock()),
        );
    }
    routes
}

fn account_routes(service: &Service<'_>) -> Vec<RouteSpec> {
    let policy = service.policy;
    let to_account = || {
        json!({
            "ReadAccount": link("readAccount", "id", "id"),
            "ReadGate": link("readGate", "id", "id"),
            "ReadHistory": link("readPreferenceHistory", "id", "id"),
            "ListConversations": link("listConversations", "id", "id"),
            "ChangePlan": link("changePlan", "id", "id"),
            "SetPreference": link("setPreference", "id", "id"),
            "RecordNoticeShown": link("recordNoticeShown", "id", "id"),
        })
    };
    vec![
        RouteSpec::new(
            "POST", "/v1/accounts", "createAccount",
            "Create an account (R4: consumer signups carry a choice)", "service", post(accounts::create),
        )
        .ok(201)
        .takes(json!({"type": "object", "additionalProperties": false, "required": ["id", "plan"],
            "properties": {"id": id_schema(), "plan": plan_schema(policy), "choice": schemas::or_null(choice_schema(policy))},
            "description": "A consumer plan needs a choice from the accounts' creation on the policy's effective date (R4); a business plan takes none (R2): else 422"}))
        .returns(schemas::account())
        .refuses(&[409])
        .links(to_account()),
        RouteSpec::new(
            "GET", "/v1/accounts/{id}", "readAccount", "An account: plan, preference, gate",
            "service, user (self)", get(accounts::read),
        )
        .returns(schemas::account())
        .refuses(&[404]),
        RouteSpec::new(
            "PATCH", "/v1/accounts/{id}", "changePlan", "Change an account's plan", "service",
            patch(accounts::change_plan),
        )
        .takes(json!({"type": "object", "additionalProperties": false, "required": ["plan"], "properties": {"plan": plan_schema(policy)}}))
        .returns(schemas::account())
        .refuses(&[404])
        .links(to_account()),
        RouteSpec::new(
            "GET", "/v1/accounts/{id}/gate", "readGate",
            "May this user continue? Answered from memory", "service, user (self)", get(accounts::gate),
        )
        .returns(schemas::gate())
        .refuses(&[404]),
        RouteSpec::new(
            "PUT", "/v1/accounts/{id}/training-preference", "setPreference",
            "Record a training choice; returns the new state and a receipt id", "service, user (self)",
            put(accounts::set_preference),
        )
        .takes(choice_schema(policy))
        .returns(schemas::preference_set())
        .links(json!({"ReadReceipt": {"operationId": "readReceipt",
            "parameters": {"id": "$request.path.id", "receipt": "$response.body#/receipt"}}}))
        .refuses(&[404]),
        RouteSpec::new(
            "GET", "/v1/accounts/{id}/training-preference/history", "readPreferenceHistory",
            "The account's ledger entries with their hashes", "service, user (self), auditor",
            get(accounts::preference_history),
        )
        .returns(schemas::history())
        .refuses(&[404]),
        RouteSpec::new(
            "POST", "/v1/accounts/{id}/notice-shown", "recordNoticeShown",
            "Record that the notice was shown and the user chose \"Not now\"", "service, user (self)",
            post(accounts::notice_shown),
        )
        .ok(204)
        .refuses(&[404]),
        RouteSpec::new(
            "GET", "/v1/accounts/{id}/receipts/{receipt}", "readReceipt", "A signed consent receipt",
            "user (self), auditor", get(accounts::receipt),
        )
        .parameter("receipt", receipt_id_schema())
        .returns(schemas::receipt())
        .refuses(&[404]),
    ]
}

fn conversation_routes() -> Vec<RouteSpec> {
    let or_null = schemas::or_null;
    let event = json!({"type": "object", "required": ["id", "type", "at"], "properties": {
        "id": {"type": "string", "minLength": 1, "maxLength": 128}, "type": {"enum": ["message", "feedback", "conversation_deleted"]},
        "at": {"type": "string", "format": "date-time"}, "account": id_schema(), "conversation": id_schema(),
        "surface": or_null(json!({"enum": ["chat", "code"]})), "role": or_null(json!({"enum": ["user", "assistant"]})),
        "text": or_null(json!({"type": "string"})), "incognito": or_null(json!({"type": "boolean"})),
        "rating": {"enum": ["up", "down"]}, "comment": or_null(json!({"type": "string"}))}});
    vec![
        RouteSpec::new(
            "GET", "/v1/accounts/{id}/conversations", "listConversations",
            "Visible conversations with eligibility and expiry", "service, user (self)",
            get(conversations::list),
        )
        .returns(schemas::conversation_list())
        .refuses(&[404])
        .links(json!({
            "ReadConversation": link("readConversation", "id", "conversations/0/id"),
            "DeleteConversation": link("deleteConversation", "id", "conversations/0/id"),
        })),
        RouteSpec::new(
            "DELETE", "/v1/conversations/{id}", "deleteConversation", "Delete a conversation (R7)",
            "service, user (owner)", delete(conversations::delete),
        )
        .ok(204)
        .refuses(&[404, 409]),
        RouteSpec::new(
            "POST", "/v1/events", "recordEvents",
            "Record activity; idempotent by event id; answers after commit", "service",
            post(events::record),
        )
        // Each event is judged alone: one that is not an Event is answered `rejected` with its
        // problem, and the others are recorded. So the batch takes any item.
        .takes(json!({"type": "object", "additionalProperties": false, "required": ["events"], "properties": {"events": {"type": "array",
            "items": {"anyOf": [event, {"description": "Anything else is answered `rejected`, with its problem"}]}}}}))
        .returns(schemas::event_results()),
        RouteSpec::new(
            "GET", "/v1/conversations/{id}", "readConversation",
            "A conversation's retention and training status (metadata only)",
            "service, user (owner), auditor", get(conversations::status),
        )
        .returns(schemas::conversation_status())
        .refuses(&[404]),
    ]
}

fn retention_routes() -> Vec<RouteSpec> {
    vec![
        RouteSpec::new(
            "GET", "/v1/accounts/{id}/data", "readAccountData",
            "Everything held about the account, machine-readable (R14 access and portability)",
            "user (self), admin", get(retention::account_data),
        )
        .returns(schemas::access_document())
        .refuses(&[404]),
        RouteSpec::new(
            "DELETE", "/v1/accounts/{id}", "eraseAccount",
            "Erase an account (R14); the next sweep purges what no hold covers", "user (self), admin",
            delete(retention::erase_account),
        )
        .ok(204)
        .refuses(&[404]),
        RouteSpec::new(
            "POST", "/v1/retention/sweeps", "runSweep",
            "Run a retention sweep now and report what it purged (409 while another instance's sweep runs)", "admin", post(retention::run_sweep),
        )
        .returns(schemas::sweep())
        .refuses(&[409]),
        RouteSpec::new(
            "POST", "/v1/legal-holds", "placeHold",
            "Place a legal hold on an account or a conversation (R13)", "admin", post(retention::place_hold),
        )
        .ok(201)
        .takes(json!({"type": "object", "additionalProperties": false, "required": ["id", "reason"],
            "properties": {"id": id_schema(), "account": schemas::or_null(id_schema()), "conversation": schemas::or_null(id_schema()),
                "reason": {"type": "string", "pattern": "\\S", "description": "Why it is placed; kept in the audit trail"}},
            "oneOf": [
                {"required": ["account"], "properties": {"account": id_schema()}},
                {"required": ["conversation"], "properties": {"conversation": id_schema()}},
            ],
            "description": "A hold names exactly one of `account` and `conversation`"}))
        .returns(schemas::hold())
        .refuses(&[404, 409])
        .links(json!({"ReleaseHold": link("releaseHold", "id", "id")})),
        RouteSpec::new(
            "GET", "/v1/legal-holds", "listHolds", "Every legal hold with its audit trail", "admin",
            get(retention::list_holds),
        )
        .returns(schemas::holds()),
        RouteSpec::new(
            "DELETE", "/v1/legal-holds/{id}", "releaseHold", "Release a legal hold", "admin",
            delete(retention::release_hold),
        )
        .returns(schemas::hold())
        .refuses(&[409]),
    ]
}

fn export_routes() -> Vec<RouteSpec> {
    vec![
        RouteSpec::new(
            "GET", "/v1/exports/preview", "previewExport",
            "What a training export cut now would hold: eligible conversations and counts", "trainer",
            get(exports::preview),
        )
        .returns(schemas::export_preview()),
        RouteSpec::new(
            "POST", "/v1/exports", "startExport",
            "Start a training export (purpose model_training only, R9/R10); answers 202 with its snapshot id",
            "trainer", post(exports::start),
        )
        .ok(202)
        .takes(exports::new_export_schema())
        .returns(schemas::export_started())
        .links(json!({
            "ReadExport": link("readExport", "id", "snapshot_id"),
            "ListRevocations": link("listRevocations", "id", "snapshot_id"),
        })),
        RouteSpec::new(
            "GET", "/v1/exports", "listExports", "Every finished export's signed manifest, newest first",
            "trainer, auditor", get(exports::list),
        )
        .returns(schemas::export_list()),
        RouteSpec::new(
            "GET", "/v1/exports/{id}", "readExport",
            "An export's status: its progress while running, then its manifest", "trainer, auditor",
            get(exports::read),
        )
        .parameter("id", export_id_schema())
        .returns(schemas::export_status())
        .refuses(&[404]),
        RouteSpec::new(
            "GET", "/v1/exports/{id}/revocations", "listRevocations",
            "The rows of an export no longer eligible now, with the reason (withdrawn, deleted, erased, expired)",
            "trainer", get(exports::revocations),
        )
        .parameter("id", export_id_schema())
        .returns(schemas::revocations())
        .refuses(&[404, 409]),
    ]
}

fn report_routes() -> Vec<RouteSpec> {
    vec![
        RouteSpec::new(
            "GET",
            "/v1/reports/retention",
            "retentionReport",
            "Conversations per class, purges due per week, purged per reason per day, holds",
            "auditor",
            get(reports::retention),
        )
        .returns(schemas::retention_report()),
        RouteSpec::new(
            "GET",
            "/v1/reports/consent",
            "consentReport",
            "Accounts per plan and preference, choices per channel per day, undecided accounts",
            "auditor",
            get(reports::consent),
        )
        .returns(schemas::consent_report()),
        RouteSpec::new(
            "GET",
            "/v1/ledger/verify",
            "verifyLedger",
            "Recompute every ledger chain and checkpoint",
            "auditor",
            get(reports::verify_ledger),
        )
        .returns(schemas::ledger_verification()),
    ]
}

/// Every route of the API this server serves.
fn routes(state: &AppState) -> Vec<RouteSpec> {
    let service = Service {
        policy: state.store.policy(),
        manual_clock: matches!(state.clock, Clock::Manual(_)),
    };
    [
        operation_routes(&service),
        account_routes(&service),
        conversation_routes(),
        retention_routes(),
        export_routes(),
        report_routes(),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The service's router: the API's routes and the pages, with the middleware every answer
/// passes through.
pub fn router(state: Arc<AppState>) -> Router {
    // Routes sharing a path share one method router.
    let mut by_path: BTreeMap<&str, MethodRouter<Arc<AppState>>> = BTreeMap::new();
    for route in routes(&state) {
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
        .method_not_allowed_fallback(middleware::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            middleware::observe,
        ))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

async fn openapi(axum::extract::State(state): axum::extract::State<Arc<AppState>>) -> Json<Value> {
    Json(openapi_document(&state))
}

/// The statuses a route can answer, each with its description and body.
fn responses(route: &RouteSpec) -> Map<String, Value> {
    let mut responses = Map::new();
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
    let mut statuses: Vec<u16> = route.refusals.to_vec();
    // Every request's head is held to one limit (see `server::MAX_HEAD_BYTES`).
    statuses.push(431);
    if !route.is_public() {
        statuses.extend([401, 403, 500, 503]);
    }
    if route.path.contains('{') {
        statuses.push(400);
    }
    if route.body.is_some() {
        statuses.extend([400, 413, 415, 422]);
    }
    statuses.sort_unstable();
    statuses.dedup();
    for status in statuses {
        let description = axum::http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Error");
        responses.insert(
            status.to_string(),
            json!({"description": format!("{description} (a problem, RFC 9457)"),
                "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}),
        );
    }
    if !route.links.is_null() {
        if let Some(Value::Object(ok)) = responses.get_mut(&route.ok.to_string()) {
            ok.insert("links".into(), route.links.clone());
        }
    }
    responses
}

/// The OpenAPI 3.1 document of this server (its policy's plans and notice, its clock),
/// generated from the route table.
pub fn openapi_document(state: &AppState) -> Value {
    let mut paths = Map::new();
    for route in routes(state) {
        let parameters: Vec<Value> = route
            .path
            .split('/')
            .filter_map(|part| part.strip_prefix('{').and_then(|p| p.strip_suffix('}')))
            .map(|name| {
                let schema = route
                    .parameters
                    .iter()
                    .find(|(named, _)| *named == name)
                    .map_or_else(id_schema, |(_, schema)| schema.clone());
                json!({"name": name, "in": "path", "required": true, "schema": schema})
            })
            .collect();
        let mut operation = Map::new();
        operation.insert("operationId".into(), json!(route.operation));
        operation.insert("summary".into(), json!(route.summary));
        let access = format!(
            "Who may call it: {}. An admin token may call every route.",
            route.access
        );
        operation.insert("description".into(), json!(access));
        operation.insert("parameters".into(), json!(parameters));
        operation.insert("responses".into(), Value::Object(responses(&route)));
        if !route.is_public() {
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
