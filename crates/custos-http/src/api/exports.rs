//! Training exports (R10). Every selection is the core's, read from one consistent snapshot of
//! the store; `custos-export` writes it.
//!
//! `POST /v1/exports` checks the request (purpose, cutoff, destination), answers 202 with the
//! snapshot id, and runs the export on a thread of its own; `GET /v1/exports/{id}` shows its
//! progress, then its manifest.

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use custos_core::{Purpose, Timestamp};
use custos_export::{ExportError, Format, Prepared, Progress, Request};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::access::{Allowed, Caller, Role};
use crate::extract::{ApiJson, ApiPath};
use crate::jobs::Run;
use crate::problem::Problem;
use crate::schemas::or_null;
use crate::state::AppState;

type Shared = State<Arc<AppState>>;

const TRAINER: Allowed = Allowed::roles(&[Role::Trainer]);
const TRAINER_OR_AUDITOR: Allowed = Allowed::roles(&[Role::Trainer, Role::Auditor]);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewExport {
    purpose: String,
    #[serde(default)]
    cutoff: Option<String>,
    #[serde(default)]
    format: Option<String>,
    /// A folder inside the export root (relative); a new one named after the snapshot if absent.
    #[serde(default)]
    destination: Option<String>,
    #[serde(default)]
    max_file_bytes: Option<u64>,
}

/// The JSON Schema of `POST /v1/exports`.
pub fn new_export_schema() -> Value {
    let purposes: Vec<&str> = Purpose::ALL.iter().map(|p| p.as_str()).collect();
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["purpose"],
        "properties": {
            "purpose": {"type": "string", "enum": purposes},
            "cutoff": or_null(json!({"type": "string", "format": "date-time"})),
            "format": or_null(json!({"type": "string", "enum": ["parquet", "jsonl"]})),
            "destination": or_null(json!({"type": "string", "description": "a folder inside the configured export root"})),
            "max_file_bytes": or_null(json!({"type": "integer", "minimum": 1})),
        },
    })
}

impl NewExport {
    /// The request it makes, or a problem naming the field.
    fn parse(self, state: &AppState, now: Timestamp) -> Result<Request, Problem> {
        let cutoff = match &self.cutoff {
            Some(text) => Timestamp::parse(text)
                .map_err(|e| Problem::invalid_body(format!("`cutoff`: {e}")))?,
            None => now,
        };
        let format = match self.format.as_deref() {
            None => Format::Parquet,
            Some(text) => Format::parse(text).ok_or_else(|| {
                Problem::invalid_body(format!(
                    "`format`: `{text}` is neither `parquet` nor `jsonl`"
                ))
            })?,
        };
        let max_file_bytes = match self.max_file_bytes {
            None => custos_export::DEFAULT_MAX_FILE_BYTES,
            Some(0) => {
                return Err(Problem::invalid_body("`max_file_bytes` must be at least 1"));
            }
            Some(bytes) => bytes,
        };
        Ok(Request {
            purpose: self.purpose,
            cutoff,
            format,
            out: self.destination.map(|d| state.exports.root().join(d)),
            max_file_bytes,
        })
    }
}

/// Starts a training export (trainer).
pub async fn start(
    State(state): Shared,
    caller: Caller,
    body: Result<ApiJson<NewExport>, Problem>,
) -> Result<(StatusCode, Json<Value>), Problem> {
    TRAINER.check(&caller, None)?;
    let ApiJson(request) = body?;
    let now = state.now();
    let request = request.parse(&state, now)?;
    let prepared = state
        .on_exports(move |exports| exports.prepare(&request, now))
        .await
        .inspect_err(|problem| {
            if problem.status == StatusCode::UNPROCESSABLE_ENTITY {
                state.metrics.export("refused");
            }
        })?;
    state
        .running
        .set(&prepared.id, Some(Run::Running(Progress::default())));
    let worker = Arc::clone(&state);
    let job = prepared.clone();
    let thread = std::thread::Builder::new()
        .name(format!("export {}", job.id))
        .spawn(move || run(&worker, &job))
        .map_err(|_| Problem::internal())?;
    state.running.track(thread);
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "snapshot_id": prepared.id,
            "status": "running",
            "cutoff": prepared.cutoff.to_string(),
            "snapshot_at": prepared.now.to_string(),
            "data_format": prepared.format.as_str(),
        })),
    ))
}

/// Runs a prepared export to its end, on its own thread, and records how it ended.
fn run(state: &AppState, job: &Prepared) {
    let started = Instant::now();
    let result = state.export_jobs().run_until(
        job,
        &mut |progress| state.running.set(&job.id, Some(Run::Running(progress))),
        &state.running.stop,
    );
    match result {
        Ok(manifest) => {
            state.metrics.export("done");
            let count = |pointer: &str| {
                manifest
                    .pointer(pointer)
                    .and_then(Value::as_u64)
                    .unwrap_or(0)
            };
            let bytes = manifest
                .get("files")
                .and_then(Value::as_array)
                .map_or(0, |files| {
                    files
                        .iter()
                        .filter_map(|f| f.get("bytes").and_then(Value::as_u64))
                        .sum()
                });
            let included = count("/conversations/included");
            state.metrics.export_written(
                included,
                count("/conversations/total").saturating_sub(included),
                bytes,
                started.elapsed(),
            );
            state.running.set(&job.id, None);
        }
        Err(error) => {
            let stopped = matches!(error, ExportError::Stopped);
            state
                .metrics
                .export(if stopped { "stopped" } else { "failed" });
            tracing::error!(export = %job.id, error = %error, "export failed");
            state
                .running
                .set(&job.id, Some(Run::Failed(error.to_string())));
        }
    }
}

/// An export's status: running (with progress), failed, incomplete, or done with its manifest.
pub async fn read(
    State(state): Shared,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Value>, Problem> {
    TRAINER_OR_AUDITOR.check(&caller, None)?;
    match state.running.get(&id) {
        Some(Run::Running(progress)) => {
            return Ok(Json(json!({
                "snapshot_id": id,
                "status": "running",
                "progress": {"total": progress.total, "scanned": progress.scanned, "included": progress.included},
            })));
        }
        Some(Run::Failed(error)) => {
            return Ok(Json(
                json!({"snapshot_id": id, "status": "failed", "error": error}),
            ));
        }
        None => {}
    }
    // Another instance's export: the store's record says whether it is still being written.
    let asked = id.clone();
    if let Some(custos_store::ExportRecord {
        state: custos_store::ExportState::Running { instance },
        ..
    }) = state
        .blocking(move |store| store.export_record(&asked))
        .await?
    {
        return Ok(Json(
            json!({"snapshot_id": id, "status": "running", "instance": instance}),
        ));
    }
    let wanted = id.clone();
    let manifest = state
        .on_exports(move |exports| match exports.manifest_of(&wanted) {
            Ok(manifest) => Ok(Some(manifest)),
            Err(ExportError::Incomplete(_)) => Ok(None),
            Err(error) => Err(error),
        })
        .await?;
    Ok(Json(match manifest {
        Some(manifest) => json!({
            "snapshot_id": manifest.get("snapshot_id").cloned().unwrap_or(Value::Null),
            "status": "done",
            "manifest": manifest,
        }),
        None => json!({"snapshot_id": id, "status": "incomplete"}),
    }))
}

/// Every finished export's manifest, newest first.
pub async fn list(State(state): Shared, caller: Caller) -> Result<Json<Value>, Problem> {
    TRAINER_OR_AUDITOR.check(&caller, None)?;
    let manifests = state.on_exports(|exports| exports.finished()).await?;
    Ok(Json(json!({"exports": manifests})))
}

/// The rows of an export that may no longer be used, and why, as of now.
pub async fn revocations(
    State(state): Shared,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Value>, Problem> {
    TRAINER.check(&caller, None)?;
    let now = state.now();
    let revocations = state
        .on_exports(move |exports| exports.revocations(&id, now))
        .await?;
    Ok(Json(revocations.to_json()))
}

/// What an export cut now would hold: the eligible conversations (sorted), how many messages
/// and feedback items of them would be included, and how many conversations each rule left
/// out. Ids and counts only, never content.
pub async fn preview(State(state): Shared, caller: Caller) -> Result<Json<Value>, Problem> {
    TRAINER.check(&caller, None)?;
    let cutoff = state.now();
    let snapshot = state.blocking(move |store| store.snapshot(cutoff)).await?;
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
