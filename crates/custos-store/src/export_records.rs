//! The record of every training export, in the store, so that any instance lists, reads,
//! verifies and revokes any snapshot: its request, its status, its signed manifest, and the
//! keys of the rows it holds (what revocations match).

use crate::error::StoreError;
use crate::sql::{Row, Tx};

/// How long a running export holds its record without renewing it; one whose instance died is
/// then `stopped`.
pub const EXPORT_LEASE_MS: i64 = 30_000;

/// Row keys are stored in chunks of this many bytes.
const KEYS_CHUNK: usize = 1 << 20;

/// Where an export is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportState {
    /// Its instance is writing it (its lease holds).
    Running { instance: String },
    /// It ended without a manifest (it failed, was stopped, or its instance died).
    Stopped,
    /// It finished: its manifest and the manifest's signature (JSON text, as written).
    Done { manifest: String, signature: String },
}

/// An export as the store records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportRecord {
    pub id: String,
    /// The request, as JSON text.
    pub request: String,
    pub state: ExportState,
}

fn record(row: &Row, wall: i64) -> Result<ExportRecord, StoreError> {
    let status = row.text(2)?;
    let state = match status.as_str() {
        "done" => ExportState::Done {
            manifest: row.optional_text(5)?.unwrap_or_default(),
            signature: row.optional_text(6)?.unwrap_or_default(),
        },
        "running" if row.int(4)? > wall => ExportState::Running {
            instance: row.text(3)?,
        },
        "running" | "failed" => ExportState::Stopped,
        other => {
            return Err(StoreError::corrupt(format!(
                "an export has status `{other}`"
            )));
        }
    };
    Ok(ExportRecord {
        id: row.text(0)?,
        request: row.text(1)?,
        state,
    })
}

const COLUMNS: &str = "snapshot_id, request, status, instance, lease_until, manifest, signature";

pub(crate) fn started(
    tx: &mut dyn Tx,
    id: &str,
    snapshot_at: i64,
    request: &str,
    instance: &str,
    wall: i64,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO exports (snapshot_id, snapshot_at, request, instance, status, lease_until) \
         VALUES (?, ?, ?, ?, 'running', ?)",
        &[
            id.into(),
            snapshot_at.into(),
            request.into(),
            instance.into(),
            (wall + EXPORT_LEASE_MS).into(),
        ],
    )?;
    Ok(())
}

pub(crate) fn renew(tx: &mut dyn Tx, id: &str, wall: i64) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE exports SET lease_until = ? WHERE snapshot_id = ? AND status = 'running'",
        &[(wall + EXPORT_LEASE_MS).into(), id.into()],
    )?;
    Ok(())
}

pub(crate) fn failed(tx: &mut dyn Tx, id: &str) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE exports SET status = 'failed' WHERE snapshot_id = ? AND status = 'running'",
        &[id.into()],
    )?;
    Ok(())
}

/// Records the end of an export: its manifest, signature and row keys, in one transaction.
pub(crate) fn done(
    tx: &mut dyn Tx,
    id: &str,
    manifest: &str,
    signature: &str,
    keys: &mut dyn std::io::Read,
) -> Result<(), StoreError> {
    let mut buffer = vec![0u8; KEYS_CHUNK];
    let mut chunk = 0i64;
    loop {
        let mut filled = 0;
        while filled < buffer.len() {
            let read = keys
                .read(buffer.get_mut(filled..).unwrap_or_default())
                .map_err(|e| StoreError::Database(format!("reading an export's row keys: {e}")))?;
            if read == 0 {
                break;
            }
            filled += read;
        }
        if filled == 0 {
            break;
        }
        tx.execute(
            "INSERT INTO export_row_keys (snapshot_id, chunk, row_keys) VALUES (?, ?, ?)",
            &[
                id.into(),
                chunk.into(),
                buffer.get(..filled).unwrap_or_default().into(),
            ],
        )?;
        chunk += 1;
        if filled < buffer.len() {
            break;
        }
    }
    tx.execute(
        "UPDATE exports SET status = 'done', manifest = ?, signature = ? WHERE snapshot_id = ?",
        &[manifest.into(), signature.into(), id.into()],
    )?;
    Ok(())
}

pub(crate) fn find(
    tx: &mut dyn Tx,
    id: &str,
    wall: i64,
) -> Result<Option<ExportRecord>, StoreError> {
    tx.query_one(
        &format!("SELECT {COLUMNS} FROM exports WHERE snapshot_id = ?"),
        &[id.into()],
    )?
    .map(|row| record(&row, wall))
    .transpose()
}

/// Every finished export, newest snapshot first.
pub(crate) fn finished(tx: &mut dyn Tx, wall: i64) -> Result<Vec<ExportRecord>, StoreError> {
    tx.query(
        &format!(
            "SELECT {COLUMNS} FROM exports WHERE status = 'done' \
             ORDER BY snapshot_at DESC, snapshot_id DESC"
        ),
        &[],
    )?
    .iter()
    .map(|row| record(row, wall))
    .collect()
}

/// The row keys of a finished export, in the order they were written.
pub(crate) fn row_keys(tx: &mut dyn Tx, id: &str) -> Result<Vec<u8>, StoreError> {
    let mut keys = Vec::new();
    tx.query_each(
        "SELECT row_keys FROM export_row_keys WHERE snapshot_id = ? ORDER BY chunk",
        &[id.into()],
        &mut |row| {
            keys.extend_from_slice(&row.bytes(0)?);
            Ok(())
        },
    )?;
    Ok(keys)
}
