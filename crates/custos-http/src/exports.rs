//! Routes of training exports (R10). Every selection is the core's, read from one consistent
//! snapshot of the store; `custos-export` writes it.
//!
//! `POST /v1/exports` checks the request (purpose, cutoff, destination), answers 202 with the
//! snapshot id, and runs the export on a thread of its own; `GET /v1/exports/{id}` shows its
//! progress, then its manifest.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use custos_core::Timestamp;
use custos_export::{ExportError, Exports, Format, Progress, Request};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::access::{Allowed, Role};
use crate::problem::Problem;
use crate::routes::{admit, blocking, body};

/// Where exports go: the data folder (records and the key secret) and the configured output
/// location, outside which nothing is written (R9).
#[derive(Debug, Clone)]
pub struct ExportPlace {
    pub data: PathBuf,
    pub root: Option<PathBuf>,
}

/// Exports started by this process that have not finished well: running, or failed.
#[derive(Debug, Default)]
pub struct Running {
    exports: Mutex<HashMap<String, Run>>,
    /// Set at shutdown: running exports stop between two chunks and remove what they wrote.
    stop: AtomicBool,
    /// The export threads, so that shutdown can wait for them to end cleanly.
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

#[derive(Debug, Clone)]
enum Run {
    Running(Progress),
    Failed(String),
}

impl Running {
    fn set(&self, id: &str, run: Option<Run>) {
        if let Ok(mut exports) = self.exports.lock() {
            match run {
                Some(run) => exports.insert(id.to_owned(), run),
                None => exports.remove(id),
            };
        }
    }

    fn get(&self, id: &str) -> Option<Run> {
        self.exports.lock().ok()?.get(id).cloned()
    }

    /// Stops every running export and waits until each has ended: none leaves partial files
    /// behind, and each stays recorded as incomplete. Called once the server stops serving.
    pub fn stop_all(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let threads = self
            .threads
            .lock()
            .map(|mut threads| std::mem::take(&mut *threads))
            .unwrap_or_default();
        for thread in threads {
            let _ = thread.join();
        }
    }
}

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
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["purpose"],
        "properties": {
            "purpose": {"type": "string", "enum": [custos_export::PURPOSE]},
            "cutoff": {"type": "string", "format": "date-time"},
            "format": {"type": "string", "enum": ["parquet", "jsonl"]},
            "destination": {"type": "string", "description": "a folder inside the configured export root"},
            "max_file_bytes": {"type": "integer", "minimum": 1},
        },
    })
}

pub(crate) fn refusal(state: &AppState, error: ExportError) -> Problem {
    let kind = match &error {
        ExportError::Purpose(_) => "purpose-refused",
        ExportError::Destination { .. } => "destination-refused",
        ExportError::CutoffInFuture { .. } => "cutoff-in-future",
        ExportError::UnknownSnapshot(_) => {
            return Problem::not_found("unknown-export", error.to_string());
        }
        ExportError::Incomplete(_) => {
            return Problem::new(StatusCode::CONFLICT, "export-incomplete", error.to_string());
        }
        // Only a running export stops; a request is refused before one runs.
        ExportError::Stopped
        | ExportError::Store(_)
        | ExportError::Io { .. }
        | ExportError::Parquet { .. }
        | ExportError::Invalid { .. }
        | ExportError::Internal(_) => {
            return Problem::internal();
        }
    };
    state.metrics.export("refused");
    // The destination's full path names the server's folders; the refusal says only why.
    let detail = match &error {
        ExportError::Destination { why, .. } => format!(
            "the destination is refused: {why}. Exports are written only inside the configured export root (R9)"
        ),
        other => other.to_string(),
    };
    Problem::new(StatusCode::UNPROCESSABLE_ENTITY, kind, detail)
}

/// Starts a training export (trainer).
pub async fn start(
    State(state): Shared,
    headers: HeaderMap,
    payload: Result<Json<NewExport>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), Problem> {
    admit(&state, &headers, Allowed::roles(&[Role::Trainer]), None).await?;
    let request = body(payload)?;
    let now = state.now();
    let cutoff = match &request.cutoff {
        Some(text) => {
            Timestamp::parse(text).map_err(|e| Problem::invalid_body(format!("`cutoff`: {e}")))?
        }
        None => now,
    };
    let format = match request.format.as_deref() {
        None => Format::Parquet,
        Some(text) => Format::parse(text).ok_or_else(|| {
            Problem::invalid_body(format!(
                "`format`: `{text}` is neither `parquet` nor `jsonl`"
            ))
        })?,
    };
    let out = request.destination.as_ref().map(|d| {
        state
            .exports
            .root
            .clone()
            .unwrap_or_else(|| state.exports.data.join(custos_export::DEFAULT_ROOT))
            .join(d)
    });
    let request = Request {
        purpose: request.purpose,
        cutoff,
        format,
        out,
        max_file_bytes: request
            .max_file_bytes
            .unwrap_or(custos_export::DEFAULT_MAX_FILE_BYTES),
    };
    let prepared = on_exports(&state, move |exports| exports.prepare(&request, now))
        .await?
        .map_err(|e| refusal(&state, e))?;
    state
        .running
        .set(&prepared.id, Some(Run::Running(Progress::default())));
    let worker = Arc::clone(&state);
    let job = prepared.clone();
    let thread = std::thread::Builder::new()
        .name(format!("export {}", job.id))
        .spawn(move || {
            let started = Instant::now();
            let exports = Exports::new(
                &worker.store,
                &worker.exports.data,
                worker.exports.root.as_deref(),
            );
            let result = exports.run_until(
                &job,
                &mut |progress| {
                    worker.running.set(&job.id, Some(Run::Running(progress)));
                },
                &worker.running.stop,
            );
            match result {
                Ok(manifest) => {
                    worker.metrics.export("done");
                    let count = |pointer: &str| {
                        manifest
                            .pointer(pointer)
                            .and_then(Value::as_u64)
                            .unwrap_or(0)
                    };
                    let bytes =
                        manifest
                            .get("files")
                            .and_then(Value::as_array)
                            .map_or(0, |files| {
                                files
                                    .iter()
                                    .filter_map(|f| f.get("bytes").and_then(Value::as_u64))
                                    .sum()
                            });
                    let included = count("/conversations/included");
                    worker.metrics.export_written(
                        included,
                        count("/conversations/total").saturating_sub(included),
                        bytes,
                        started.elapsed(),
                    );
                    worker.running.set(&job.id, None);
                }
                Err(error) => {
                    let stopped = matches!(error, ExportError::Stopped);
                    worker
                        .metrics
                        .export(if stopped { "stopped" } else { "failed" });
                    eprintln!("custos: export {} failed: {error}", job.id);
                    worker
                        .running
                        .set(&job.id, Some(Run::Failed(error.to_string())));
                }
            }
        })
        .map_err(|_| Problem::internal())?;
    if let Ok(mut threads) = state.running.threads.lock() {
        // Finished ones are let go of here, so the list stays as long as what runs.
        threads.retain(|t| !t.is_finished());
        threads.push(thread);
    }
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

/// Runs `work` on this server's exports, on a blocking thread (it reads files and the store).
pub(crate) async fn on_exports<T: Send + 'static>(
    state: &Arc<AppState>,
    work: impl FnOnce(&Exports<'_>) -> Result<T, ExportError> + Send + 'static,
) -> Result<Result<T, ExportError>, Problem> {
    let state = Arc::clone(state);
    tokio::task::spawn_blocking(move || {
        work(&Exports::new(
            &state.store,
            &state.exports.data,
            state.exports.root.as_deref(),
        ))
    })
    .await
    .map_err(|_| Problem::internal())
}

/// An export's status: running (with progress), failed, incomplete, or done with its manifest.
pub async fn read(
    State(state): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, Problem> {
    admit(
        &state,
        &headers,
        Allowed::roles(&[Role::Trainer, Role::Auditor]),
        None,
    )
    .await?;
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
    match on_exports(&state, move |exports| exports.manifest_of(&id)).await? {
        Ok(manifest) => Ok(Json(json!({
            "snapshot_id": manifest.get("snapshot_id").cloned().unwrap_or(Value::Null),
            "status": "done",
            "manifest": manifest,
        }))),
        Err(ExportError::Incomplete(id)) => {
            Ok(Json(json!({"snapshot_id": id, "status": "incomplete"})))
        }
        Err(error) => Err(refusal(&state, error)),
    }
}

/// Every finished export's manifest, newest first.
pub async fn list(State(state): Shared, headers: HeaderMap) -> Result<Json<Value>, Problem> {
    admit(
        &state,
        &headers,
        Allowed::roles(&[Role::Trainer, Role::Auditor]),
        None,
    )
    .await?;
    let manifests = on_exports(&state, |exports| exports.finished())
        .await?
        .map_err(|e| refusal(&state, e))?;
    Ok(Json(json!({"exports": manifests})))
}

/// The rows of an export that may no longer be used, and why, as of now.
pub async fn revocations(
    State(state): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, Problem> {
    admit(&state, &headers, Allowed::roles(&[Role::Trainer]), None).await?;
    let now = state.now();
    match on_exports(&state, move |exports| exports.revocations(&id, now)).await? {
        Ok(revocations) => Ok(Json(revocations.to_json())),
        Err(error) => Err(refusal(&state, error)),
    }
}

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
