//! Legal holds (R13): the holds a decision needs, and their audit trail (who placed each, why,
//! and who released it).

use custos_core::{Conversation, Hold, HoldId, HoldTarget, Timestamp};

use crate::codec::{HOLD_COLUMNS, hold_from_row};
use crate::error::StoreError;
use crate::sql::{Row, Tx};

pub(crate) fn hold(tx: &mut dyn Tx, id: &HoldId) -> Result<Option<Hold>, StoreError> {
    let sql = format!("SELECT {HOLD_COLUMNS} FROM holds WHERE hold_id = ?");
    tx.query_one(&sql, &[id.as_str().into()])?
        .as_ref()
        .map(hold_from_row)
        .transpose()
}

/// Every active hold: they are few, so a sweep reads them once per batch.
pub(crate) fn active_holds(tx: &mut dyn Tx) -> Result<Vec<Hold>, StoreError> {
    let sql = format!("SELECT {HOLD_COLUMNS} FROM holds WHERE released_at IS NULL");
    tx.query(&sql, &[])?.iter().map(hold_from_row).collect()
}

/// Holds that name the conversation or its owner.
pub(crate) fn holds_on(
    tx: &mut dyn Tx,
    conversation: &Conversation,
) -> Result<Vec<Hold>, StoreError> {
    let sql = format!(
        "SELECT {HOLD_COLUMNS} FROM holds WHERE released_at IS NULL AND (account_id = ? OR conversation_id = ?)"
    );
    let params = [
        conversation.owner.as_str().into(),
        conversation.id.as_str().into(),
    ];
    tx.query(&sql, &params)?.iter().map(hold_from_row).collect()
}

/// A legal hold with its audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldRecord {
    pub id: HoldId,
    pub target: HoldTarget,
    pub placed_at: Timestamp,
    pub placed_by: String,
    pub reason: String,
    pub released_at: Option<Timestamp>,
    pub released_by: Option<String>,
}

/// Every hold, active or released, oldest first.
pub fn hold_records(tx: &mut dyn Tx) -> Result<Vec<HoldRecord>, StoreError> {
    let sql = format!("SELECT {RECORD_COLUMNS} FROM holds ORDER BY placed_at, hold_id");
    tx.query(&sql, &[])?.iter().map(record_from_row).collect()
}

/// A hold's columns and its audit trail's, in [`record_from_row`]'s order.
const RECORD_COLUMNS: &str =
    "hold_id, account_id, conversation_id, placed_at, released_at, actor, reason, released_by";

fn record_from_row(row: &Row) -> Result<HoldRecord, StoreError> {
    let hold = hold_from_row(row)?;
    Ok(HoldRecord {
        id: hold.id,
        target: hold.target,
        placed_at: hold.placed.at,
        placed_by: row.text(5)?,
        reason: row.text(6)?,
        released_at: hold.released.map(|k| k.at),
        released_by: row.optional_text(7)?,
    })
}

/// One hold with its audit trail.
pub(crate) fn hold_record(tx: &mut dyn Tx, id: &HoldId) -> Result<HoldRecord, StoreError> {
    let sql = format!("SELECT {RECORD_COLUMNS} FROM holds WHERE hold_id = ?");
    let row = tx
        .query_one(&sql, &[id.as_str().into()])?
        .ok_or_else(|| StoreError::corrupt(format!("hold `{id}` vanished")))?;
    record_from_row(&row)
}

/// Records why a hold was placed (after `apply` placed it, in the same transaction).
pub fn note_hold_reason(tx: &mut dyn Tx, id: &HoldId, reason: &str) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE holds SET reason = ? WHERE hold_id = ?",
        &[reason.into(), id.as_str().into()],
    )?;
    Ok(())
}

/// Records who released a hold (after `apply` released it, in the same transaction).
pub fn note_hold_release(tx: &mut dyn Tx, id: &HoldId, actor: &str) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE holds SET released_by = ? WHERE hold_id = ?",
        &[actor.into(), id.as_str().into()],
    )?;
    Ok(())
}
