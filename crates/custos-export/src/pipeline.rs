//! The threads of an export, joined by bounded channels: the decider (parsing and the core's
//! decisions) and the writer (keys, redaction, encoding, hashing). The reader is the calling
//! thread (`Store::scan_training_chunks`). Memory stays bounded by a few chunks, batches and a
//! row group, whatever the store's size.

use std::collections::BTreeMap;
use std::io::Write;
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, mpsc};

use custos_core::redaction::{Counts, Redactor};
use custos_core::{EligibilityReason, Selection, Timestamp, TrainingContent, select};
use custos_store::ledger::Hmac;
use custos_store::{RawChunk, Scanned, StoreError};

use crate::error::ExportError;
use crate::files::KEYS;
use crate::request::Prepared;
use crate::sink::{self, TrainingFeedback, TrainingMessage, TrainingRow, WrittenFile};

/// Conversations per batch handed from the decider to the writer, and batches in flight.
pub(crate) const BATCH: usize = 256;
pub(crate) const BATCHES_IN_FLIGHT: usize = 32;
/// Chunks (a few hundred accounts each) read ahead of the decider.
pub(crate) const CHUNKS_IN_FLIGHT: usize = 8;

/// How far an export has got.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Conversations in the snapshot; known once the snapshot is fixed.
    pub total: u64,
    pub scanned: u64,
    pub included: u64,
}

/// Conversations selected at the cutoff, owned so that they can cross to the writer thread:
/// every text of a batch in one buffer, every message and feedback in one list each, so that a
/// batch costs a few allocations rather than one per text.
pub(crate) struct Batch {
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
pub(crate) struct Written {
    pub(crate) files: Vec<WrittenFile>,
    pub(crate) messages: u64,
    pub(crate) feedback: u64,
    pub(crate) redactions: Counts,
}

pub(crate) const KEY_BYTES: usize = 16;
pub(crate) const CONVERSATION_LABEL: &[u8] = b"custos.export.conversation\0";
pub(crate) const ACCOUNT_LABEL: &[u8] = b"custos.export.account\0";

/// The pseudonymous key of a row: the first 128 bits of HMAC-SHA-256 under the export secret,
/// with a label per kind of id so that a conversation's key never equals an account's.
pub(crate) fn row_key(secret: &[u8; 32], label: &[u8], id: &str) -> [u8; KEY_BYTES] {
    keyed(&Hmac::new(secret), label, id)
}

pub(crate) fn keyed(hmac: &Hmac, label: &[u8], id: &str) -> [u8; KEY_BYTES] {
    let mac = hmac.mac(&[label, id.as_bytes()]);
    let mut key = [0u8; KEY_BYTES];
    key.iter_mut().zip(mac).for_each(|(k, m)| *k = m);
    key
}

/// How far an export has got, shared by its threads.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) total: AtomicU64,
    pub(crate) scanned: AtomicU64,
    pub(crate) included: AtomicU64,
}

pub(crate) type Reporter<'p> = Mutex<&'p mut (dyn FnMut(Progress) + Send)>;

impl Counters {
    pub(crate) fn progress(&self) -> Progress {
        Progress {
            total: self.total.load(Ordering::Relaxed),
            scanned: self.scanned.load(Ordering::Relaxed),
            included: self.included.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn report(&self, reporter: &Reporter<'_>) {
        if let Ok(mut report) = reporter.lock() {
            report(self.progress());
        }
    }
}

/// The decider thread: parses each chunk the reader read, in order, and asks the core about
/// each of its conversations; the selected ones go to the writer in batches. Returns the
/// excluded counts by reason.
pub(crate) fn decide(
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
pub(crate) fn write_rows(
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
pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> Result<(), ExportError> {
    let mut file = std::fs::File::create_new(path).map_err(|e| ExportError::io(path, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| ExportError::io(path, e))
}
