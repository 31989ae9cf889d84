//! Retention sweeps over the expiry index, and the check that the index says what the core
//! says.

use std::path::Path;

use custos_core::{
    ConversationId, Policy, SweepAction, SweepReport, Timestamp, expiry, sweep_decision,
};
use sha2::{Digest, Sha256};

use crate::codec::{conversation_id, in_key_order};
use crate::error::StoreError;
use crate::holds::active_holds;
use crate::records::{
    ActivityRead, END, Histories, accounts_by_stored_id, conversation_rows, load_account,
    load_conversation, next_key, read_activity,
};
use crate::sql::{Dialect, KEYS_PER_LOOKUP, Tx, Value};

/// Conversations per sweep transaction: writers wait at most one batch behind a sweep, and the
/// batch's changed pages fit the page cache.
pub const SWEEP_BATCH: usize = 1000;

/// Purges every due conversation that no hold covers, in one transaction (the scenario
/// runner's `sweep` step). The service sweeps in batches instead ([`sweep_batch`]).
pub(crate) fn sweep(
    tx: &mut dyn Tx,
    histories: &Histories,
    policy: &Policy,
    now: Timestamp,
) -> Result<SweepReport, StoreError> {
    let mut report = SweepReport::default();
    let mut cursor = None;
    loop {
        let (part, next, _) =
            sweep_batch(tx, histories, policy, now, cursor.as_ref(), SWEEP_BATCH)?;
        report.add(&part);
        match next {
            Some(next) => cursor = Some(next),
            None => return Ok(report),
        }
    }
}

/// Where a batched sweep goes on from: the last conversation it looked at, in expiry order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SweepCursor {
    expires_at: i64,
    conversation: String,
}

/// How many conversations are due at `now` and not purged (for a sweep's progress).
pub fn count_due(tx: &mut dyn Tx, now: Timestamp) -> Result<u64, StoreError> {
    let row = tx.query_one(
        "SELECT COUNT(*) FROM conversation_expiry WHERE expires_at <= ?",
        &[now.unix_millis().into()],
    )?;
    Ok(row.map_or(Ok(0), |r| r.int(0))?.try_into().unwrap_or(0))
}

/// Looks at up to `limit` due conversations after `after`, in (expiry, id) order, through the
/// expiry index, and purges each that no hold covers, whole ([`nominate`], then
/// [`purge_nominated`]). Returns what it did, where the next batch starts (`None` when no due
/// conversation is left) and how many it looked at.
pub fn sweep_batch(
    tx: &mut dyn Tx,
    histories: &Histories,
    policy: &Policy,
    now: Timestamp,
    after: Option<&SweepCursor>,
    limit: usize,
) -> Result<(SweepReport, Option<SweepCursor>, usize), StoreError> {
    let (due, next) = nominate(tx, now, after, limit)?;
    let report = purge_nominated(tx, histories, policy, now, &due)?;
    Ok((report, next, due.len()))
}

/// Up to `limit` conversations due at `now` after `after`, in (expiry, id) order, through the
/// expiry index, and where the next batch starts (`None` when no due conversation is left).
/// The stored expiry only nominates them: [`purge_nominated`] has the core decide each one
/// again. Held conversations stay in the index, so the cursor, not the purges, moves the
/// sweep on.
pub fn nominate(
    tx: &mut dyn Tx,
    now: Timestamp,
    after: Option<&SweepCursor>,
    limit: usize,
) -> Result<(Vec<ConversationId>, Option<SweepCursor>), StoreError> {
    let limit_value = i64::try_from(limit).unwrap_or(i64::MAX);
    let due = match after {
        None => tx.query(
            "SELECT conversation_id, expires_at FROM conversation_expiry WHERE expires_at <= ? \
             ORDER BY expires_at, conversation_id LIMIT ?",
            &[now.unix_millis().into(), limit_value.into()],
        )?,
        Some(cursor) => tx.query(
            // `expires_at >= cursor` bounds the index scan: the entries of the conversations
            // purged before it stay in the index until a vacuum, and a scan from the start
            // would walk past all of them in every batch.
            "SELECT conversation_id, expires_at FROM conversation_expiry WHERE expires_at <= ? \
             AND expires_at >= ? AND (expires_at > ? OR (expires_at = ? AND conversation_id > ?)) \
             ORDER BY expires_at, conversation_id LIMIT ?",
            &[
                now.unix_millis().into(),
                cursor.expires_at.into(),
                cursor.expires_at.into(),
                cursor.expires_at.into(),
                cursor.conversation.as_str().into(),
                limit_value.into(),
            ],
        )?,
    };
    let mut due_ids = Vec::with_capacity(due.len());
    for row in &due {
        due_ids.push(conversation_id(row.text(0)?)?);
    }
    let last = match (due.last(), due_ids.last()) {
        (Some(row), Some(id)) => Some(SweepCursor {
            expires_at: row.int(1)?,
            conversation: id.as_str().to_owned(),
        }),
        _ => None,
    };
    let next = if due.len() == limit { last } else { None };
    Ok((due_ids, next))
}

/// Reads the nominated conversations and their owners as they are now, asks the core about
/// each as of `now`, and purges, whole, each the core says to purge.
///
/// A few dozen conversations at a time. On PostgreSQL their activity is read by deleting it
/// (`DELETE … RETURNING`) inside a savepoint, so the pages of their messages are visited once,
/// not once to decide and again to delete; if the core keeps any conversation whose activity
/// was deleted (a hold, an expiry that moved since it was nominated), the savepoint is undone
/// and only the conversations it purges are deleted. On SQLite, where that was slower than
/// reading and then deleting (40.7–49.9 s against 27.1–30.0 s for one sweep), the activity is
/// read first.
pub fn purge_nominated(
    tx: &mut dyn Tx,
    histories: &Histories,
    policy: &Policy,
    now: Timestamp,
    due_ids: &[ConversationId],
) -> Result<SweepReport, StoreError> {
    // Active holds are few: read once per batch, not once per conversation.
    let active = active_holds(tx)?;
    // The batch's conversations and their owners, read a few dozen per query.
    let ids: Vec<&str> = due_ids.iter().map(|id| id.as_str()).collect();
    let mut conversations = conversation_rows(tx, &ids)?;
    let owner_ids: Vec<&str> = conversations.values().map(|c| c.owner.as_str()).collect();
    let owners = accounts_by_stored_id(tx, histories, &owner_ids, false)?;
    // Those not purged yet, in the order nominated: (owner, conversation).
    let live: Vec<(String, String)> = due_ids
        .iter()
        .filter_map(|id| conversations.get(id))
        .filter(|c| c.purged.is_none())
        .map(|c| (c.owner.as_str().to_owned(), c.id.as_str().to_owned()))
        .collect();
    let delete_as_read = tx.dialect() == Dialect::Postgres;
    let mut report = SweepReport::default();
    let mut purged: Vec<(String, &'static str)> = Vec::new();
    for chunk in live.chunks(KEYS_PER_LOOKUP) {
        if delete_as_read {
            tx.execute("SAVEPOINT sweep_chunk", &[])?;
            read_activity(tx, &mut conversations, chunk, ActivityRead::Delete)?;
        } else {
            read_activity(tx, &mut conversations, chunk, ActivityRead::Select)?;
        }
        let mut kept_with_activity = false;
        let mut purged_here = Vec::with_capacity(chunk.len());
        for pair in chunk {
            let Some(conversation) = conversations.get_mut(&conversation_id(pair.1.clone())?)
            else {
                continue;
            };
            in_key_order(conversation);
            let action = match owners.get(&conversation.owner) {
                Some((account, owner)) => {
                    let as_of = next_key(account, now)?;
                    sweep_decision(policy, owner, conversation, &active, as_of)
                }
                None => SweepAction::Keep,
            };
            match action {
                SweepAction::Purge(bound) => {
                    purged_here.push(pair.clone());
                    purged.push((pair.1.clone(), bound.as_str()));
                }
                SweepAction::Keep | SweepAction::HeldBack => {
                    kept_with_activity |=
                        !conversation.messages.is_empty() || !conversation.feedback.is_empty();
                }
            }
            report.count(action);
        }
        if !delete_as_read {
            delete_activity(tx, &purged_here)?;
        } else {
            if kept_with_activity {
                tx.execute("ROLLBACK TO SAVEPOINT sweep_chunk", &[])?;
                delete_activity(tx, &purged_here)?;
            }
            tx.execute("RELEASE SAVEPOINT sweep_chunk", &[])?;
        }
    }
    mark_purged(tx, &purged, now)?;
    Ok(report)
}

/// Deletes the messages and feedback of up to [`KEYS_PER_LOOKUP`] (owner, conversation) pairs.
fn delete_activity(tx: &mut dyn Tx, pairs: &[(String, String)]) -> Result<(), StoreError> {
    if pairs.is_empty() {
        return Ok(());
    }
    let list = crate::sql::tuple_list(2);
    let keys = crate::sql::pair_params(pairs);
    for table in ["messages", "feedback"] {
        tx.execute(
            &format!("DELETE FROM {table} WHERE (account_id, conversation_id) IN ({list})"),
            &keys,
        )?;
    }
    Ok(())
}

/// Purged = content gone; a tombstone (id hash, time, reason) remains (docs/POLICY.md, The
/// decisions): marks each conversation (whose activity is deleted) purged, and writes its
/// tombstone, a few dozen conversations per statement.
fn mark_purged(
    tx: &mut dyn Tx,
    purged: &[(String, &'static str)],
    now: Timestamp,
) -> Result<(), StoreError> {
    let triples = crate::sql::tuple_list(3);
    let now_ms: Value = now.unix_millis().into();
    for chunk in purged.chunks(KEYS_PER_LOOKUP) {
        let mut ids = Vec::with_capacity(KEYS_PER_LOOKUP + 1);
        ids.push(now_ms.clone());
        let mut tombstones = Vec::with_capacity(3 * KEYS_PER_LOOKUP);
        for (id, reason) in crate::sql::padded(chunk) {
            ids.push(id.as_str().into());
            let hash: [u8; 32] = Sha256::digest(id.as_bytes()).into();
            tombstones.extend([hash.as_slice().into(), now_ms.clone(), (*reason).into()]);
        }
        tx.execute(
            &format!(
                "UPDATE conversations SET purged_at = ?, expires_at = NULL WHERE conversation_id IN ({})",
                crate::sql::key_list()
            ),
            &ids,
        )?;
        tx.execute(
            &format!(
                "INSERT INTO tombstones (conversation_hash, purged_at, reason) VALUES {triples} ON CONFLICT DO NOTHING"
            ),
            &tombstones,
        )?;
    }
    Ok(())
}

/// What `retention check` found: every stored expiry recomputed by the core.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RetentionCheck {
    pub checked: u64,
    /// Conversation, stored (at, class, bound), recomputed (at, class, bound); at most 100.
    pub differences: Vec<(String, String, String)>,
    pub different: u64,
}

/// Recomputes the expiry of every conversation not yet purged, `page` at a time in id order,
/// and compares it with the stored one that sweeps rely on.
pub fn check_retention(
    tx: &mut dyn Tx,
    histories: &Histories,
    policy: &Policy,
    after: &str,
    page: usize,
    check: &mut RetentionCheck,
) -> Result<Option<String>, StoreError> {
    let rows = tx.query(
        "SELECT conversation_id, expires_at, retention_class, expiry_bound FROM conversations \
         WHERE purged_at IS NULL AND conversation_id > ? ORDER BY conversation_id LIMIT ?",
        &[after.into(), i64::try_from(page).unwrap_or(i64::MAX).into()],
    )?;
    // A stored expiry that the sweep's index lacks would never be swept.
    let unindexed: std::collections::HashSet<String> = match rows.last() {
        None => Default::default(),
        Some(last) => tx
            .query(
                "SELECT c.conversation_id FROM conversations c WHERE c.purged_at IS NULL \
                 AND c.expires_at IS NOT NULL AND c.conversation_id > ? AND c.conversation_id <= ? \
                 AND NOT EXISTS (SELECT 1 FROM conversation_expiry e \
                     WHERE e.expires_at = c.expires_at AND e.conversation_id = c.conversation_id)",
                &[after.into(), last.text(0)?.into()],
            )?
            .iter()
            .map(|row| row.text(0))
            .collect::<Result<_, _>>()?,
    };
    let describe = |at: Option<i64>, class: Option<String>, bound: Option<String>| match (
        at.and_then(Timestamp::from_unix_millis),
        class,
        bound,
    ) {
        (Some(at), Some(class), Some(bound)) => format!("{at} {class} ({bound})"),
        (None, None, None) => "none".to_owned(),
        (at, class, bound) => format!("incomplete: {at:?} {class:?} {bound:?}"),
    };
    let mut last = None;
    for row in &rows {
        let id = conversation_id(row.text(0)?)?;
        last = Some(id.as_str().to_owned());
        check.checked += 1;
        let mut stored = describe(
            row.optional_int(1)?,
            row.optional_text(2)?,
            row.optional_text(3)?,
        );
        if unindexed.contains(id.as_str()) {
            stored.push_str(", missing from the sweep's index");
        }
        let conversation = load_conversation(tx, &id, false)?
            .ok_or_else(|| StoreError::corrupt(format!("conversation `{id}` vanished")))?;
        let (_, owner) = load_account(tx, histories, &conversation.owner, false)?
            .ok_or_else(|| StoreError::corrupt(format!("conversation `{id}` has no account")))?;
        let computed = expiry(policy, &owner, &conversation, END);
        let recomputed = describe(
            computed.map(|e| e.at.unix_millis()),
            computed.map(|e| e.class.as_str().to_owned()),
            computed.map(|e| e.bound.as_str().to_owned()),
        );
        if stored != recomputed {
            check.different += 1;
            if check.differences.len() < 100 {
                check
                    .differences
                    .push((id.as_str().to_owned(), stored, recomputed));
            }
        }
    }
    Ok(if rows.len() == page { last } else { None })
}

/// Who runs a sweep: `by` is `scheduled` or the actor who asked; `instance` names the process
/// (host and process id), so that the dashboard shows whose sweep it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SweepRun {
    pub by: String,
    pub instance: String,
}

impl SweepRun {
    pub fn new(by: impl Into<String>) -> SweepRun {
        SweepRun {
            by: by.into(),
            instance: this_instance(),
        }
    }
}

/// Whether `instance` names a process of this host that no longer runs. An instance of
/// another host is never taken for dead: its lease lapses instead.
fn died_on_this_host(instance: &str) -> bool {
    let Some((host, pid)) = instance.rsplit_once(':') else {
        return false;
    };
    let this = this_instance();
    let this_host = this.rsplit_once(':').map_or("", |(host, _)| host);
    host == this_host
        && pid.parse::<u32>().is_ok_and(|pid| {
            pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
        })
}

/// This process: its host's name and its id.
pub fn this_instance() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into());
    format!("{host}:{}", std::process::id())
}

/// How long a running sweep holds the store's one sweep lease without renewing it; each batch
/// renews it. A sweep whose instance died lets the lease lapse, and the next sweep, run by any
/// instance, finishes the job (each batch is whole).
pub const SWEEP_LEASE_MS: i64 = 15_000;

/// A sweep as the store records it, for every instance's dashboard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SweepRecord {
    pub id: String,
    /// The sweep's present: conversations due by then are purged.
    pub at: Timestamp,
    pub by: String,
    pub instance: String,
    /// Wall-clock milliseconds when it began, and when it finished (None: running, or stopped
    /// when its instance died, once its lease has lapsed).
    pub started: i64,
    pub finished: Option<i64>,
    pub lease_until: i64,
    pub purged: u64,
    pub held_back: u64,
}

const SWEEP_COLUMNS: &str =
    "id, at, by_whom, instance, started, finished, lease_until, purged, held_back";

fn sweep_record(row: &crate::sql::Row) -> Result<SweepRecord, StoreError> {
    Ok(SweepRecord {
        id: row.text(0)?,
        at: crate::codec::time(row.int(1)?)?,
        by: row.text(2)?,
        instance: row.text(3)?,
        started: row.int(4)?,
        finished: row.optional_int(5)?,
        lease_until: row.int(6)?,
        purged: u64::try_from(row.int(7)?).unwrap_or(0),
        held_back: u64::try_from(row.int(8)?).unwrap_or(0),
    })
}

/// Takes the store's sweep lease for a new sweep, or answers the sweep that holds it.
pub(crate) fn begin_sweep(
    tx: &mut dyn Tx,
    run: &SweepRun,
    id: &str,
    at: Timestamp,
    wall: i64,
) -> Result<Result<(), SweepRecord>, StoreError> {
    if tx.dialect() == crate::sql::Dialect::Postgres {
        // Two instances beginning at once must not both see the lease free.
        tx.execute("LOCK TABLE sweeps IN SHARE ROW EXCLUSIVE MODE", &[])?;
    }
    let holder = tx.query_one(
        &format!(
            "SELECT {SWEEP_COLUMNS} FROM sweeps WHERE finished IS NULL AND lease_until > ? \
             ORDER BY started DESC LIMIT 1"
        ),
        &[wall.into()],
    )?;
    if let Some(row) = holder {
        let holder = sweep_record(&row)?;
        if !died_on_this_host(&holder.instance) {
            return Ok(Err(holder));
        }
        // Its process is gone (killed mid-sweep): its lease holds nothing.
    }
    tx.execute(
        "INSERT INTO sweeps (id, at, by_whom, instance, started, lease_until, purged, held_back) \
         VALUES (?, ?, ?, ?, ?, ?, 0, 0)",
        &[
            id.into(),
            at.unix_millis().into(),
            run.by.as_str().into(),
            run.instance.as_str().into(),
            wall.into(),
            (wall + SWEEP_LEASE_MS).into(),
        ],
    )?;
    Ok(Ok(()))
}

/// Adds a batch's counts to its sweep's record and renews the lease, in the batch's own
/// transaction (batches may commit in any order).
pub(crate) fn record_progress(
    tx: &mut dyn Tx,
    id: &str,
    part: &SweepReport,
    wall: i64,
) -> Result<(), StoreError> {
    let purged = i64::try_from(part.purged_total()).unwrap_or(i64::MAX);
    let held_back = i64::try_from(part.held_back).unwrap_or(i64::MAX);
    tx.execute(
        "UPDATE sweeps SET purged = purged + ?, held_back = held_back + ?, lease_until = ? WHERE id = ?",
        &[
            purged.into(),
            held_back.into(),
            (wall + SWEEP_LEASE_MS).into(),
            id.into(),
        ],
    )?;
    Ok(())
}

/// Records the end of a sweep whose every batch has committed.
pub(crate) fn record_end(tx: &mut dyn Tx, id: &str, wall: i64) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE sweeps SET finished = ? WHERE id = ?",
        &[wall.into(), id.into()],
    )?;
    Ok(())
}

/// The newest `limit` sweeps, whoever ran them.
pub(crate) fn recent_sweeps(tx: &mut dyn Tx, limit: i64) -> Result<Vec<SweepRecord>, StoreError> {
    tx.query(
        &format!("SELECT {SWEEP_COLUMNS} FROM sweeps ORDER BY started DESC, id LIMIT ?"),
        &[limit.into()],
    )?
    .iter()
    .map(sweep_record)
    .collect()
}
