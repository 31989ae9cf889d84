//! Training exports (R10): consent-clean, point-in-time snapshots for `model_training`, written
//! as Parquet or JSONL with a signed manifest, and the revocations of earlier snapshots.
//!
//! An export reads one consistent snapshot of the store (`Store::scan_training`). The core
//! decides each conversation (`snapshot_eligibility`: eligible at the cutoff and still eligible
//! now) and its content (`training_content`), and redacts every text (`Redactor`) before
//! anything is written. Nothing here restates a rule of SPEC.md.
//!
//! Three threads share the work, joined by bounded channels: the reader (database reads, in
//! chunks of a few hundred accounts, copied as they are), the decider (parsing and the core's
//! decisions) and the writer (keys, redaction, encoding, hashing). Memory stays bounded by a few chunks, batches and a row
//! group, whatever the store's size.

mod destination;
mod sink;

use std::collections::BTreeMap;
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, mpsc};

use custos_core::redaction::{Counts, Redactor};
use custos_core::{
    EligibilityReason, Purpose, RevocationReason, Selection, Timestamp, TrainingContent,
    revocation, select,
};
use custos_store::ledger::{Hmac, load_or_create_secret, verify_signature};
use custos_store::{Checkpoint, RawChunk, Scanned, Store, StoreError};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

pub use destination::confine;
pub use sink::{Format, TrainingFeedback, TrainingMessage, TrainingRow, WrittenFile};

/// The version of the manifest and data file layout.
pub const FORMAT_VERSION: &str = "custos-export/1";
/// Where the default export root lies, inside the data folder.
pub const DEFAULT_ROOT: &str = "exports";
/// Each export's record (manifest, signature, row keys), inside the data folder.
pub const RECORDS: &str = "export-records";
/// The secret that keys the pseudonyms of exported rows, inside the data folder.
pub const SECRET_FILE: &str = "export-keys.secret";
pub const MANIFEST: &str = "manifest.json";
pub const SIGNATURE: &str = "manifest.json.sig";
const REQUEST: &str = "request.json";
const KEYS: &str = "keys";
pub const DEFAULT_MAX_FILE_BYTES: u64 = 256 << 20;

/// Conversations per batch handed from the decider to the writer, and batches in flight.
const BATCH: usize = 256;
const BATCHES_IN_FLIGHT: usize = 32;
/// Chunks (a few hundred accounts each) read ahead of the decider.
const CHUNKS_IN_FLIGHT: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("purpose `{0}` is refused: exports serve `model_training` only (R9)")]
    Purpose(String),
    #[error(
        "destination {destination} is refused: {why}. Exports are written only inside the export root {root} (R9); choose a new folder inside it, or configure another root"
    )]
    Destination {
        destination: PathBuf,
        root: PathBuf,
        why: String,
    },
    #[error("cutoff {cutoff} is later than now ({now}): a snapshot can't hold the future")]
    CutoffInFuture { cutoff: Timestamp, now: Timestamp },
    #[error("no export `{0}` is recorded")]
    UnknownSnapshot(String),
    #[error("export `{0}` did not finish, so it has no manifest")]
    Incomplete(String),
    #[error(
        "the export was stopped before it finished (interrupted, or custos is shutting down); what it had written was removed"
    )]
    Stopped,
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: writing Parquet: {message}")]
    Parquet { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl ExportError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> ExportError {
        ExportError::Io {
            path: path.to_owned(),
            source,
        }
    }

    pub(crate) fn parquet(path: &Path, error: parquet::errors::ParquetError) -> ExportError {
        ExportError::Parquet {
            path: path.to_owned(),
            message: error.to_string(),
        }
    }

    fn invalid(path: &Path, message: impl Into<String>) -> ExportError {
        ExportError::Invalid {
            path: path.to_owned(),
            message: message.into(),
        }
    }

    /// Whether the caller asked for something refused (rather than the export failing).
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            ExportError::Purpose(_)
                | ExportError::Destination { .. }
                | ExportError::CutoffInFuture { .. }
        )
    }
}

/// What a caller asks for.
#[derive(Debug, Clone)]
pub struct Request {
    pub purpose: String,
    pub cutoff: Timestamp,
    pub format: Format,
    /// The folder to write, which must be new or empty and inside the export root; a new
    /// folder named after the snapshot id when absent.
    pub out: Option<PathBuf>,
    pub max_file_bytes: u64,
}

/// An accepted request, with its snapshot id, ready to run.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub id: String,
    pub cutoff: Timestamp,
    pub now: Timestamp,
    pub format: Format,
    pub out: PathBuf,
    pub max_file_bytes: u64,
}

/// How far an export has got.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Conversations in the snapshot; known once the snapshot is fixed.
    pub total: u64,
    pub scanned: u64,
    pub included: u64,
}

/// The exports of one store: its data folder (records and the key secret) and the export root.
#[derive(Debug)]
pub struct Exports<'a> {
    store: &'a Store,
    data: PathBuf,
    root: PathBuf,
}

/// Conversations selected at the cutoff, owned so that they can cross to the writer thread:
/// every text of a batch in one buffer, every message and feedback in one list each, so that a
/// batch costs a few allocations rather than one per text.
struct Batch {
    texts: String,
    rows: Vec<Selected>,
    messages: Vec<SelectedMessage>,
    feedback: Vec<SelectedFeedback>,
}

/// A selected conversation: its ids, and its selected content, as ranges of its batch.
struct Selected {
    conversation: Range<usize>,
    account: Range<usize>,
    surface: &'static str,
    messages: Range<usize>,
    feedback: Range<usize>,
}

struct SelectedMessage {
    role: &'static str,
    at: Timestamp,
    text: Range<usize>,
}

struct SelectedFeedback {
    rating: &'static str,
    at: Timestamp,
    comment: Option<Range<usize>>,
}

impl Batch {
    fn with_capacity(rows: usize) -> Batch {
        Batch {
            texts: String::with_capacity(rows * 256),
            rows: Vec::with_capacity(rows),
            messages: Vec::with_capacity(rows * 4),
            feedback: Vec::with_capacity(rows),
        }
    }

    /// Adds a selected conversation with its selected content, copying their texts.
    fn push(
        &mut self,
        scanned: &Scanned<'_>,
        content: &TrainingContent<'_>,
    ) -> Result<(), StoreError> {
        let conversation = self.keep(scanned.conversation.id.as_str());
        let account = self.keep(scanned.owner.id.as_str());
        let messages = self.messages.len();
        for message in &content.messages {
            let text = self.keep(scanned.message_text(message)?);
            self.messages.push(SelectedMessage {
                role: message.role.as_str(),
                at: message.key.at,
                text,
            });
        }
        let feedback = self.feedback.len();
        for item in &content.feedback {
            let comment = scanned.comment(item)?.map(|c| self.keep(c));
            self.feedback.push(SelectedFeedback {
                rating: item.rating.as_str(),
                at: item.key.at,
                comment,
            });
        }
        self.rows.push(Selected {
            conversation,
            account,
            surface: scanned.conversation.surface.as_str(),
            messages: messages..self.messages.len(),
            feedback: feedback..self.feedback.len(),
        });
        Ok(())
    }

    fn keep(&mut self, text: &str) -> Range<usize> {
        let start = self.texts.len();
        self.texts.push_str(text);
        start..self.texts.len()
    }

    /// A text of the batch; ranges are only ever made by [`Batch::keep`].
    fn text(&self, range: &Range<usize>) -> &str {
        self.texts.get(range.clone()).unwrap_or_default()
    }
}

/// What the writer thread made.
#[derive(Default)]
struct Written {
    files: Vec<WrittenFile>,
    messages: u64,
    feedback: u64,
    redactions: Counts,
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
        let folder = self.record_folder(&prepared.id)?;
        std::fs::create_dir_all(&folder).map_err(|e| ExportError::io(&folder, e))?;
        let body = json!({
            "snapshot_id": prepared.id,
            "cutoff": prepared.cutoff.to_string(),
            "snapshot_at": prepared.now.to_string(),
            "data_format": prepared.format.as_str(),
            "out": prepared.out.display().to_string(),
        });
        write_file(&folder.join(REQUEST), body.to_string().as_bytes())?;
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
        let record = self.record_folder(&prepared.id)?;
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
        let signature = json!({
            "algorithm": "ed25519",
            "public_key": self.store.public_key_hex(),
            "signature": custos_core::policy::hex(&self.store.sign(&bytes)),
        })
        .to_string();
        for folder in [&prepared.out, &record] {
            write_file(&folder.join(MANIFEST), &bytes)?;
            write_file(&folder.join(SIGNATURE), signature.as_bytes())?;
        }
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
        Ok(load_or_create_secret(&self.data.join(SECRET_FILE), "export secret")?.0)
    }

    /// A finished export's manifest; `Incomplete` for one that started and never finished.
    pub fn manifest_of(&self, id: &str) -> Result<Value, ExportError> {
        let folder = self.record_folder(id)?;
        let path = folder.join(MANIFEST);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| ExportError::invalid(&path, e.to_string())),
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

    /// The manifests of every finished export, newest snapshot first.
    pub fn finished(&self) -> Result<Vec<Value>, ExportError> {
        let folder = self.data.join(RECORDS);
        let entries = match std::fs::read_dir(&folder) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(ExportError::io(&folder, e)),
        };
        let mut manifests = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| ExportError::io(&folder, e))?;
            let id = entry.file_name().to_string_lossy().into_owned();
            match self.manifest_of(&id) {
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
        let bytes = std::fs::read(&path).map_err(|e| ExportError::io(&path, e))?;
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

const KEY_BYTES: usize = 16;
const CONVERSATION_LABEL: &[u8] = b"custos.export.conversation\0";
const ACCOUNT_LABEL: &[u8] = b"custos.export.account\0";

/// The pseudonymous key of a row: the first 128 bits of HMAC-SHA-256 under the export secret,
/// with a label per kind of id so that a conversation's key never equals an account's.
fn row_key(secret: &[u8; 32], label: &[u8], id: &str) -> [u8; KEY_BYTES] {
    keyed(&Hmac::new(secret), label, id)
}

fn keyed(hmac: &Hmac, label: &[u8], id: &str) -> [u8; KEY_BYTES] {
    let mac = hmac.mac(&[label, id.as_bytes()]);
    let mut key = [0u8; KEY_BYTES];
    key.iter_mut().zip(mac).for_each(|(k, m)| *k = m);
    key
}

/// How far an export has got, shared by its threads.
#[derive(Default)]
struct Counters {
    total: AtomicU64,
    scanned: AtomicU64,
    included: AtomicU64,
}

type Reporter<'p> = Mutex<&'p mut (dyn FnMut(Progress) + Send)>;

impl Counters {
    fn progress(&self) -> Progress {
        Progress {
            total: self.total.load(Ordering::Relaxed),
            scanned: self.scanned.load(Ordering::Relaxed),
            included: self.included.load(Ordering::Relaxed),
        }
    }

    fn report(&self, reporter: &Reporter<'_>) {
        if let Ok(mut report) = reporter.lock() {
            report(self.progress());
        }
    }
}

/// The decider thread: parses each chunk the reader read, in order, and asks the core about
/// each of its conversations; the selected ones go to the writer in batches. Returns the
/// excluded counts by reason.
fn decide(
    policy: &custos_core::Policy,
    chunks: mpsc::Receiver<RawChunk>,
    to_reader: mpsc::Sender<RawChunk>,
    to_writer: mpsc::SyncSender<Batch>,
    counts: &Counters,
    reporter: &Reporter<'_>,
    stop: &AtomicBool,
) -> Result<BTreeMap<EligibilityReason, u64>, ExportError> {
    let mut excluded: BTreeMap<EligibilityReason, u64> = BTreeMap::new();
    let mut batch = Batch::with_capacity(BATCH);
    for raw in chunks {
        // Dropping the receiver stops the reader too; the writer's sender goes with this.
        if stop.load(Ordering::Relaxed) {
            return Err(ExportError::Stopped);
        }
        let chunk = raw.parse()?;
        let mut writer_stopped = false;
        chunk
            .visit(&mut |scanned| {
                let (owner, conversation) = (scanned.owner, scanned.conversation);
                counts.scanned.fetch_add(1, Ordering::Relaxed);
                match select(policy, owner, conversation, scanned.cutoff, scanned.now) {
                    Selection::Included(content) => {
                        counts.included.fetch_add(1, Ordering::Relaxed);
                        // Only now are texts copied out of the chunk: those of the selected
                        // content of a selected conversation.
                        batch.push(&scanned, &content)?;
                        if batch.rows.len() == BATCH
                            && to_writer
                                .send(std::mem::replace(&mut batch, Batch::with_capacity(BATCH)))
                                .is_err()
                        {
                            writer_stopped = true;
                            return Err(StoreError::Stopped);
                        }
                    }
                    Selection::Excluded(reason) => *excluded.entry(reason).or_default() += 1,
                }
                Ok(())
            })
            .or_else(|error| match error {
                // The writer's own error is the one to report; it comes from its join.
                StoreError::Stopped if writer_stopped => Ok(()),
                error => Err(error),
            })?;
        // The chunk lent its texts from the raw buffers; now the reader may fill them again
        // (or, if it has finished, they are simply dropped).
        drop(chunk);
        let _ = to_reader.send(raw);
        if writer_stopped {
            return Ok(excluded);
        }
        counts.report(reporter);
    }
    if !batch.rows.is_empty() {
        // A failed send means the writer failed, which its join reports.
        let _ = to_writer.send(batch);
    }
    Ok(excluded)
}

/// The writer thread: keys, redaction and encoding of every selected conversation, in the
/// order the scan sent them; the row keys go to the record for later revocations.
fn write_rows(
    batches: mpsc::Receiver<Batch>,
    prepared: &Prepared,
    secret: &[u8; 32],
    record: &Path,
) -> Result<Written, ExportError> {
    let redactor = Redactor::new();
    let hmac = Hmac::new(secret);
    // Rows come grouped by account: its key is computed once per run of its rows.
    let mut account: Option<(String, String)> = None;
    let mut written = Written::default();
    let mut sink = sink::Sink::new(&prepared.out, prepared.format, prepared.max_file_bytes);
    let keys_path = record.join(KEYS);
    let keys_file =
        std::fs::File::create(&keys_path).map_err(|e| ExportError::io(&keys_path, e))?;
    let mut keys = std::io::BufWriter::new(keys_file);
    for batch in batches {
        for selected in &batch.rows {
            let conversation = batch.text(&selected.conversation);
            let conversation_key = keyed(&hmac, CONVERSATION_LABEL, conversation);
            let account_id = batch.text(&selected.account);
            if account.as_ref().is_none_or(|(id, _)| id != account_id) {
                let key = custos_core::policy::hex(&keyed(&hmac, ACCOUNT_LABEL, account_id));
                account = Some((account_id.to_owned(), key));
            }
            let account_key = account.as_ref().map_or("", |(_, key)| key.as_str());
            keys.write_all(&conversation_key)
                .map_err(|e| ExportError::io(&keys_path, e))?;
            let messages = batch
                .messages
                .get(selected.messages.clone())
                .unwrap_or_default();
            let feedback = batch
                .feedback
                .get(selected.feedback.clone())
                .unwrap_or_default();
            written.messages += messages.len() as u64;
            written.feedback += feedback.len() as u64;
            let redactions = &mut written.redactions;
            let row = TrainingRow {
                conversation_key: &custos_core::policy::hex(&conversation_key),
                account_key,
                surface: selected.surface,
                messages: messages
                    .iter()
                    .map(|m| TrainingMessage {
                        role: m.role,
                        text: redactor.redact(batch.text(&m.text), redactions),
                        at: m.at,
                    })
                    .collect(),
                feedback: feedback
                    .iter()
                    .map(|f| TrainingFeedback {
                        rating: f.rating,
                        comment: f
                            .comment
                            .as_ref()
                            .map(|c| redactor.redact(batch.text(c), redactions)),
                        at: f.at,
                    })
                    .collect(),
            };
            sink.write(&row)?;
        }
    }
    let keys_file = keys
        .into_inner()
        .map_err(|e| ExportError::io(&keys_path, e.into_error()))?;
    keys_file
        .sync_all()
        .map_err(|e| ExportError::io(&keys_path, e))?;
    written.files = sink.finish()?;
    Ok(written)
}

/// Writes a whole file and syncs it; an existing file is an error (records are written once).
fn write_file(path: &Path, bytes: &[u8]) -> Result<(), ExportError> {
    let mut file = std::fs::File::create_new(path).map_err(|e| ExportError::io(path, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| ExportError::io(path, e))
}

/// What `verify` found in an export folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub snapshot: String,
    pub files: usize,
    pub rows: u64,
}

/// Checks an export folder as its receiver would: the manifest's signature by the trusted
/// public key, and every listed file's size and SHA-256.
pub fn verify(folder: &Path, trusted_public_key: &str) -> Result<Verified, ExportError> {
    let manifest_path = folder.join(MANIFEST);
    let signature_path = folder.join(SIGNATURE);
    let bytes = std::fs::read(&manifest_path).map_err(|e| ExportError::io(&manifest_path, e))?;
    let signature: Value = std::fs::read(&signature_path)
        .map_err(|e| ExportError::io(&signature_path, e))
        .and_then(|b| {
            serde_json::from_slice(&b)
                .map_err(|e| ExportError::invalid(&signature_path, e.to_string()))
        })?;
    let signed = signature
        .get("signature")
        .and_then(Value::as_str)
        .and_then(custos_core::policy::from_hex::<64>);
    if !signed.is_some_and(|s| verify_signature(trusted_public_key, &bytes, &s)) {
        return Err(ExportError::invalid(
            &signature_path,
            "the manifest's signature does not verify with the trusted public key",
        ));
    }
    let manifest: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ExportError::invalid(&manifest_path, e.to_string()))?;
    let files = manifest
        .get("files")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut rows = 0;
    for file in &files {
        let name = file["name"].as_str().unwrap_or("");
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return Err(ExportError::invalid(
                &manifest_path,
                format!("a file name `{name}` that is not a plain name"),
            ));
        }
        let path = folder.join(name);
        let data = std::fs::read(&path).map_err(|e| ExportError::io(&path, e))?;
        let digest = custos_core::policy::hex(&Sha256::digest(&data));
        if Some(digest.as_str()) != file["sha256"].as_str()
            || Some(data.len() as u64) != file["bytes"].as_u64()
        {
            return Err(ExportError::invalid(
                &path,
                "its size or SHA-256 differs from the manifest's",
            ));
        }
        rows += file["rows"].as_u64().unwrap_or(0);
    }
    Ok(Verified {
        snapshot: manifest
            .get("snapshot_id")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
        files: files.len(),
        rows,
    })
}
