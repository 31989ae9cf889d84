//! Training exports (R10): consent-clean, point-in-time snapshots for `model_training`, written
//! as Parquet or JSONL with a signed manifest, and the revocations of earlier snapshots.
//!
//! An export reads one consistent snapshot of the store (`Store::scan_training`). The core
//! decides each conversation (`snapshot_eligibility`: eligible at the cutoff and still eligible
//! now) and its content (`training_content`), and redacts every text (`Redactor`) before
//! anything is written. Nothing here restates a rule of docs/POLICY.md.
//!
//! Three threads share the work, joined by bounded channels: the reader (database reads, in
//! chunks of a few hundred accounts, copied as they are), the decider (parsing and the core's
//! decisions) and the writer (keys, redaction, encoding, hashing). Memory stays bounded by a few chunks, batches and a row
//! group, whatever the store's size.

mod destination;
mod error;
mod files;
mod pipeline;
mod request;
mod sink;
mod verify;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, mpsc};

use custos_core::{EligibilityReason, Purpose, RevocationReason, Timestamp, revocation};
use custos_store::ledger::Hmac;
use custos_store::{Checkpoint, ExportRecord, ExportState, RawChunk, Store, StoreError};
use serde_json::{Value, json};

pub use destination::confine;
pub use error::ExportError;
pub use files::{
    DEFAULT_MAX_FILE_BYTES, DEFAULT_ROOT, FORMAT_VERSION, MANIFEST, RECORDS, SIGNATURE,
};
pub use pipeline::Progress;
pub use request::{Prepared, Request};
pub use sink::{Format, TrainingFeedback, TrainingMessage, TrainingRow, WrittenFile};
pub use verify::{Verified, verify};

use files::{KEYS, REQUEST};
use pipeline::{
    BATCHES_IN_FLIGHT, Batch, CHUNKS_IN_FLIGHT, CONVERSATION_LABEL, Counters, KEY_BYTES, Written,
    decide, keyed, row_key, write_file, write_rows,
};

/// The exports of one store: its data folder (records and the key secret) and the export root.
#[derive(Debug)]
pub struct Exports<'a> {
    store: &'a Store,
    data: PathBuf,
    root: PathBuf,
}

impl<'a> Exports<'a> {
    /// `root` is the configured output location; `<data>/exports` when none is configured.
    pub fn new(store: &'a Store, data: &Path, root: Option<&Path>) -> Exports<'a> {
        Exports {
            store,
            data: data.to_owned(),
            root: root.map_or_else(|| data.join(DEFAULT_ROOT), Path::to_owned),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn record_folder(&self, id: &str) -> Result<PathBuf, ExportError> {
        // Ids are made here: `exp-` and hex. Anything else names no record (and no path).
        let well_formed = id
            .strip_prefix("exp-")
            .is_some_and(|hex| !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()));
        if !well_formed {
            return Err(ExportError::UnknownSnapshot(id.to_owned()));
        }
        Ok(self.data.join(RECORDS).join(id))
    }

    /// Checks a request (purpose, cutoff, destination), creates its output folder and gives
    /// it a snapshot id. Nothing is read from the store yet.
    pub fn prepare(&self, request: &Request, now: Timestamp) -> Result<Prepared, ExportError> {
        if Purpose::parse(&request.purpose).is_none() {
            return Err(ExportError::Purpose(request.purpose.clone()));
        }
        if request.cutoff > now {
            return Err(ExportError::CutoffInFuture {
                cutoff: request.cutoff,
                now,
            });
        }
        let mut random = [0u8; 8];
        getrandom::fill(&mut random).map_err(|_| ExportError::Internal("no randomness"))?;
        let id = format!("exp-{}", custos_core::policy::hex(&random));
        let out = match &request.out {
            Some(out) => confine(&self.root, out)?,
            None => confine(&self.root, &self.root.join(&id))?,
        };
        let prepared = Prepared {
            id,
            cutoff: request.cutoff,
            now,
            format: request.format,
            out,
            max_file_bytes: request.max_file_bytes,
        };
        let body = json!({
            "snapshot_id": prepared.id,
            "cutoff": prepared.cutoff.to_string(),
            "snapshot_at": prepared.now.to_string(),
            "data_format": prepared.format.as_str(),
            "out": prepared.out.display().to_string(),
        });
        // The record is the store's, so that every instance sees it; the data folder holds
        // only the row keys of a running export, until it is recorded.
        self.store
            .record_export_started(&prepared.id, prepared.now, &body.to_string())?;
        Ok(prepared)
    }

    /// Runs a prepared export to its end: the data files, then the signed manifest (in the
    /// output folder and in the record). Returns the manifest.
    pub fn run(
        &self,
        prepared: &Prepared,
        progress: &mut (dyn FnMut(Progress) + Send),
    ) -> Result<Value, ExportError> {
        self.run_until(prepared, progress, &AtomicBool::new(false))
    }

    /// Like [`Exports::run`], stopping early once `stop` is set (checked between chunks of a
    /// few hundred accounts): then it fails with [`ExportError::Stopped`], and what it wrote is
    /// removed.
    pub fn run_until(
        &self,
        prepared: &Prepared,
        progress: &mut (dyn FnMut(Progress) + Send),
        stop: &AtomicBool,
    ) -> Result<Value, ExportError> {
        let result = self.run_inner(prepared, progress, stop);
        if result.is_err() {
            // The folder was made new and empty for this export: what a failed run left in it
            // is partial, so it goes. The record stays, without a manifest: `Incomplete`.
            let _ = std::fs::remove_dir_all(&prepared.out);
            let _ = self.store.record_export_failed(&prepared.id);
        }
        if let Ok(scratch) = self.record_folder(&prepared.id) {
            let _ = std::fs::remove_dir_all(scratch);
        }
        result
    }

    fn run_inner(
        &self,
        prepared: &Prepared,
        progress: &mut (dyn FnMut(Progress) + Send),
        stop: &AtomicBool,
    ) -> Result<Value, ExportError> {
        let secret = self.secret()?;
        // Scratch space for the row keys, until the store records them with the manifest.
        let record = self.record_folder(&prepared.id)?;
        std::fs::create_dir_all(&record).map_err(|e| ExportError::io(&record, e))?;
        let mut renewed = std::time::Instant::now();
        let policy = self.store.policy();
        let (to_decider, chunks) = mpsc::sync_channel::<RawChunk>(CHUNKS_IN_FLIGHT);
        // Parsed chunks go back to the reader, which fills their buffers again.
        let (to_reader, spent) = mpsc::channel::<RawChunk>();
        let (to_writer, batches) = mpsc::sync_channel::<Batch>(BATCHES_IN_FLIGHT);
        let counts = Counters::default();
        let mut checkpoint = None;
        // The readers report the snapshot's start, the decider the rest.
        let report = Mutex::new(progress);
        let (read, decided, written) = std::thread::scope(|scope| {
            let writer = std::thread::Builder::new()
                .name("export-writer".into())
                .spawn_scoped(scope, || write_rows(batches, prepared, &secret, &record))
                .map_err(|e| ExportError::io(Path::new("a thread"), e))?;
            // The decider owns the writer's only sender: when it ends, the writer's loop ends.
            let decider = std::thread::Builder::new()
                .name("export-decider".into())
                .spawn_scoped(scope, || {
                    decide(policy, chunks, to_reader, to_writer, &counts, &report, stop)
                })
                .map_err(|e| ExportError::io(Path::new("a thread"), e))?;
            let read = self.store.scan_training_chunks(
                prepared.cutoff,
                prepared.now,
                &mut |latest, conversations| {
                    checkpoint = latest;
                    counts.total.store(conversations, Ordering::Relaxed);
                    // The first report: the snapshot is fixed from here on.
                    counts.report(&report);
                },
                // A failed send means the decider stopped; its error says why.
                &mut |chunk| {
                    // The record's lease says this instance is still writing it.
                    if renewed.elapsed() >= EXPORT_RENEW_EVERY {
                        renewed = std::time::Instant::now();
                        self.store.renew_export(&prepared.id)?;
                    }
                    to_decider.send(chunk).map_err(|_| StoreError::Stopped)?;
                    Ok(spent.try_recv().ok())
                },
            );
            drop(to_decider);
            let decided = decider
                .join()
                .unwrap_or(Err(ExportError::Internal("the decider thread panicked")));
            let written = writer
                .join()
                .unwrap_or(Err(ExportError::Internal("the writer thread panicked")));
            Ok::<_, ExportError>((read, decided, written))
        })?;
        // The first error in the pipeline's order is the cause; the later ones follow from it.
        let (excluded, written) = match (read, decided, written) {
            (Ok(()), Ok(excluded), Ok(written)) => (excluded, written),
            (Err(StoreError::Stopped) | Ok(()), Err(error), _)
            | (Err(StoreError::Stopped) | Ok(()), Ok(_), Err(error)) => return Err(error),
            (Err(error), _, _) => return Err(error.into()),
        };
        let counted = counts.progress();
        counts.report(&report);
        let manifest = self.manifest(prepared, checkpoint, counted, &excluded, &written);
        let bytes = serde_json::to_vec_pretty(&manifest)
            .map_err(|_| ExportError::Internal("a manifest that does not serialize"))?;
        let (signed, key_id) = self.store.sign(&bytes)?;
        let signature = json!({
            "algorithm": "ed25519",
            "key_id": key_id,
            "public_key": self.store.public_key_hex(),
            "signature": custos_core::policy::hex(&signed),
        })
        .to_string();
        write_file(&prepared.out.join(MANIFEST), &bytes)?;
        write_file(&prepared.out.join(SIGNATURE), signature.as_bytes())?;
        let text = String::from_utf8(bytes)
            .map_err(|_| ExportError::Internal("a manifest that is not UTF-8"))?;
        self.store
            .record_export_done(&prepared.id, &text, &signature, &record.join(KEYS))?;
        Ok(manifest)
    }

    fn manifest(
        &self,
        prepared: &Prepared,
        checkpoint: Option<Checkpoint>,
        counted: Progress,
        excluded: &BTreeMap<EligibilityReason, u64>,
        written: &Written,
    ) -> Value {
        let policy = self.store.policy();
        let hex = custos_core::policy::hex;
        json!({
            "format_version": FORMAT_VERSION,
            "snapshot_id": prepared.id,
            "purpose": Purpose::ModelTraining.as_str(),
            "cutoff": prepared.cutoff.to_string(),
            "snapshot_at": prepared.now.to_string(),
            "policy": {"id": policy.id, "sha256": hex(&policy.sha256)},
            "ledger_checkpoint": checkpoint.map(|c| json!({
                "id": c.id,
                "at": c.at.to_string(),
                "accounts": c.accounts,
                "entries": c.entries,
                "root": hex(&c.root),
                "signature": hex(&c.signature),
            })),
            "signing_key": self.store.public_key_hex(),
            "signing_key_id": self.store.signing_key_id(),
            "keys": "conversation_key and account_key: hex of the first 128 bits of HMAC-SHA-256 under this store's export secret; no account or conversation id is written",
            "data_format": prepared.format.as_str(),
            "conversations": {
                "total": counted.scanned,
                "included": counted.included,
                "excluded": excluded.iter().map(|(r, n)| (r.as_str().to_owned(), json!(n))).collect::<serde_json::Map<_, _>>(),
            },
            "content": {"messages": written.messages, "feedback": written.feedback},
            "redactions": written.redactions,
            "files": written.files.iter().map(|f| json!({
                "name": f.name,
                "rows": f.rows,
                "bytes": f.bytes,
                "sha256": hex(&f.sha256),
            })).collect::<Vec<_>>(),
        })
    }

    /// The key under which exports name a conversation (for the controller, who holds the
    /// secret: e.g. to find a row of a data-subject request in a snapshot).
    pub fn conversation_key(&self, id: &str) -> Result<String, ExportError> {
        Ok(custos_core::policy::hex(&row_key(
            &self.secret()?,
            CONVERSATION_LABEL,
            id,
        )))
    }

    fn secret(&self) -> Result<[u8; 32], ExportError> {
        Ok(*self.store.export_key())
    }

    /// A finished export's manifest; `Incomplete` for one that started and never finished
    /// (or is still running).
    pub fn manifest_of(&self, id: &str) -> Result<Value, ExportError> {
        let folder = self.record_folder(id)?;
        match self.store.export_record(id)? {
            Some(ExportRecord {
                state: ExportState::Done { manifest, .. },
                ..
            }) => serde_json::from_str(&manifest)
                .map_err(|e| ExportError::invalid(Path::new(id), e.to_string())),
            Some(_) => Err(ExportError::Incomplete(id.to_owned())),
            None => legacy_manifest(&folder, id),
        }
    }

    /// The manifests of every finished export, newest snapshot first: the store's, and those
    /// recorded in the data folder before records moved into the store.
    pub fn finished(&self) -> Result<Vec<Value>, ExportError> {
        let mut manifests: Vec<Value> = Vec::new();
        for record in self.store.finished_exports()? {
            if let ExportState::Done { manifest, .. } = record.state {
                manifests.push(
                    serde_json::from_str(&manifest)
                        .map_err(|e| ExportError::invalid(Path::new(&record.id), e.to_string()))?,
                );
            }
        }
        let folder = self.data.join(RECORDS);
        let entries = match std::fs::read_dir(&folder) {
            Ok(entries) => entries.collect::<Vec<_>>(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(ExportError::io(&folder, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| ExportError::io(&folder, e))?;
            let id = entry.file_name().to_string_lossy().into_owned();
            if manifests
                .iter()
                .any(|m| m.get("snapshot_id").and_then(Value::as_str) == Some(id.as_str()))
            {
                continue;
            }
            match self
                .record_folder(&id)
                .and_then(|f| legacy_manifest(&f, &id))
            {
                Ok(manifest) => manifests.push(manifest),
                Err(ExportError::Incomplete(_) | ExportError::UnknownSnapshot(_)) => {}
                Err(e) => return Err(e),
            }
        }
        manifests.sort_by(|a, b| {
            b["snapshot_at"]
                .as_str()
                .cmp(&a["snapshot_at"].as_str())
                .then(b["snapshot_id"].as_str().cmp(&a["snapshot_id"].as_str()))
        });
        Ok(manifests)
    }

    /// The rows of export `id` that may no longer be used for training as of `now`, and why,
    /// sorted by conversation key.
    pub fn revocations(&self, id: &str, now: Timestamp) -> Result<Revocations, ExportError> {
        self.manifest_of(id)?;
        let path = self.record_folder(id)?.join(KEYS);
        let bytes = match self.store.export_record(id)? {
            Some(_) => self.store.export_row_keys(id)?,
            None => std::fs::read(&path).map_err(|e| ExportError::io(&path, e))?,
        };
        if bytes.len() % KEY_BYTES != 0 {
            return Err(ExportError::invalid(
                &path,
                "its length is not a whole number of keys",
            ));
        }
        let mut keys: Vec<[u8; KEY_BYTES]> = bytes
            .chunks_exact(KEY_BYTES)
            .filter_map(|chunk| chunk.try_into().ok())
            .collect();
        keys.sort_unstable();
        let hmac = Hmac::new(&self.secret()?);
        let policy = self.store.policy();
        let mut revoked = Vec::new();
        self.store
            .scan_training(now, now, false, &mut |_, _| Ok(()), &mut |scanned| {
                let key = keyed(&hmac, CONVERSATION_LABEL, scanned.conversation.id.as_str());
                if keys.binary_search(&key).is_ok()
                    && let Some(reason) =
                        revocation(policy, scanned.owner, scanned.conversation, scanned.now)
                {
                    revoked.push((key, reason));
                }
                Ok(())
            })?;
        revoked.sort_unstable();
        Ok(Revocations {
            snapshot: id.to_owned(),
            as_of: now,
            rows: keys.len() as u64,
            revoked: revoked
                .into_iter()
                .map(|(key, reason)| (custos_core::policy::hex(&key), reason))
                .collect(),
        })
    }
}

/// The rows of a snapshot that are no longer eligible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocations {
    pub snapshot: String,
    pub as_of: Timestamp,
    /// Rows the snapshot holds.
    pub rows: u64,
    /// Conversation key and reason, sorted by key.
    pub revoked: Vec<(String, RevocationReason)>,
}

impl Revocations {
    pub fn counts(&self) -> BTreeMap<&'static str, u64> {
        let mut counts = BTreeMap::new();
        for (_, reason) in &self.revoked {
            *counts.entry(reason.as_str()).or_default() += 1;
        }
        counts
    }

    pub fn to_json(&self) -> Value {
        json!({
            "snapshot_id": self.snapshot,
            "as_of": self.as_of.to_string(),
            "rows": self.rows,
            "counts": self.counts(),
            "revoked": self.revoked.iter().map(|(key, reason)| json!({
                "conversation_key": key,
                "reason": reason.as_str(),
            })).collect::<Vec<_>>(),
        })
    }
}

/// How often a running export renews its record's lease.
const EXPORT_RENEW_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// The manifest of an export recorded in the data folder (before records moved into the store).
fn legacy_manifest(folder: &Path, id: &str) -> Result<Value, ExportError> {
    let path = folder.join(MANIFEST);
    match std::fs::read(&path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).map_err(|e| ExportError::invalid(&path, e.to_string()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if folder.join(REQUEST).exists() {
                Err(ExportError::Incomplete(id.to_owned()))
            } else {
                Err(ExportError::UnknownSnapshot(id.to_owned()))
            }
        }
        Err(e) => Err(ExportError::io(&path, e)),
    }
}
