//! The records the core reads, loaded from their rows: account histories rebuilt from the
//! ledger (and cached by ledger length), conversations with their activity.

use custos_core::{AccountHistory, AccountId, Conversation, ConversationId, EventKey, Timestamp};
use std::collections::HashMap;

use crate::codec::{
    CONVERSATION_COLUMNS, LEDGER_COLUMNS, account_id, conversation_from_row, conversation_id,
    entry_from_row, feedback_columns, feedback_from_row, hash32, in_key_order, message_columns,
    message_from_row, seq,
};
use crate::error::StoreError;
use crate::ledger::{AccountKey, Entry, Hmac, PSEUDONYM_PREFIX, Record};
use crate::sql::{Row, Tx};

/// Account histories rebuilt from the ledger, keyed by the ledger length they were built from.
///
/// The ledger is append-only, so an equal length means an equal history; any other writer
/// (another thread, or another server on the same PostgreSQL) changes the length and the next
/// load reads the ledger again. Only histories read from committed rows are kept.
///
/// It also holds the key of account pseudonyms, which every lookup needs: an erased account is
/// stored under its pseudonym only, and found again from its id by recomputing it.
#[derive(Debug)]
pub struct Histories {
    cache: std::sync::Mutex<HashMap<AccountId, (i64, AccountHistory)>>,
    pseudonyms: Hmac,
}

/// More cached histories than this and the cache starts afresh: memory stays bounded.
const HISTORIES_KEPT: usize = 65_536;

impl Histories {
    pub fn new(pseudonym_key: [u8; 32]) -> Histories {
        Histories {
            cache: std::sync::Mutex::default(),
            pseudonyms: Hmac::new(&pseudonym_key),
        }
    }

    /// The account's keyed pseudonym (see `ledger::pseudonym`).
    pub fn pseudonym(&self, account: &str) -> String {
        format!(
            "{PSEUDONYM_PREFIX}{}",
            custos_core::policy::hex(&self.pseudonyms.mac(&[account.as_bytes()]))
        )
    }

    /// The gate index's key of an account as stored (see [`AccountKey`]).
    pub fn account_key(&self, stored_id: &str) -> AccountKey {
        AccountKey::of_stored(&self.pseudonyms, stored_id)
    }

    fn get(&self, id: &AccountId, ledger_len: i64) -> Option<AccountHistory> {
        let cache = self.cache.lock().ok()?;
        cache
            .get(id)
            .filter(|(len, _)| *len == ledger_len)
            .map(|(_, h)| h.clone())
    }

    /// Whether the history of `id` at `ledger_len` is cached already (nothing to keep again).
    pub(crate) fn holds(&self, id: &AccountId, ledger_len: i64) -> bool {
        self.cache
            .lock()
            .is_ok_and(|cache| cache.get(id).is_some_and(|(len, _)| *len == ledger_len))
    }

    pub fn keep(&self, ledger_len: i64, history: &AccountHistory) {
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= HISTORIES_KEPT {
                cache.clear();
            }
            cache.insert(history.id.clone(), (ledger_len, history.clone()));
        }
    }
}

/// A key that sees every recorded event: the stored expiry reflects all of them.
pub(crate) const END: EventKey = EventKey {
    at: Timestamp::MAX,
    seq: u64::MAX,
};

/// The mutable head of an account: its event counter and its ledger chain.
#[derive(Debug, Clone)]
pub struct AccountRow {
    pub id: AccountId,
    /// The next event's place in this account's order (docs/POLICY.md, Terms "order of arrival").
    pub next_seq: i64,
    pub ledger_len: i64,
    pub ledger_head: [u8; 32],
    pub erased_at: Option<i64>,
    /// How the ledger's hashes name this account: its pseudonym.
    pub ledger_name: String,
}

pub(crate) fn next_key(account: &AccountRow, at: Timestamp) -> Result<EventKey, StoreError> {
    Ok(EventKey::new(at, seq(account.next_seq)?))
}

pub fn ledger_entries(tx: &mut dyn Tx, account: &str) -> Result<Vec<Entry>, StoreError> {
    let sql = format!("SELECT {LEDGER_COLUMNS} FROM ledger WHERE account_id = ? ORDER BY idx");
    tx.query(&sql, &[account.into()])?
        .iter()
        .map(entry_from_row)
        .collect()
}

/// Turns ledger entries that come grouped by account, each account's in chain order (as a
/// query ordered by `account_id, idx` gives them), into one history per account.
#[derive(Debug, Default)]
pub(crate) struct HistoriesInOrder {
    /// The current account's entries so far.
    entries: Vec<Entry>,
}

impl HistoriesInOrder {
    /// Takes the next entry; when it starts another account, gives the previous one's history.
    pub(crate) fn push(&mut self, entry: Entry) -> Result<Option<AccountHistory>, StoreError> {
        let done = if self
            .entries
            .first()
            .is_some_and(|e| e.account != entry.account)
        {
            self.finish()?
        } else {
            None
        };
        self.entries.push(entry);
        Ok(done)
    }

    /// The last account's history, once every entry is in.
    pub(crate) fn finish(&mut self) -> Result<Option<AccountHistory>, StoreError> {
        let history = history_from(&self.entries)?;
        self.entries.clear();
        Ok(history)
    }
}

/// Rebuilds the core's view of an account from its ledger.
pub(crate) fn history_from(entries: &[Entry]) -> Result<Option<AccountHistory>, StoreError> {
    let mut history: Option<AccountHistory> = None;
    for entry in entries {
        match (entry.record(), history.as_mut()) {
            (Record::Created(plan), None) => {
                history = Some(AccountHistory::new(entry.account.clone(), entry.key, plan));
            }
            (Record::Changed(change), Some(history)) => history.record(entry.key, &change),
            _ => {
                return Err(StoreError::corrupt(format!(
                    "ledger of `{}` has `{}` at entry {} out of place",
                    entry.account,
                    entry.kind.as_str(),
                    entry.idx
                )));
            }
        }
    }
    Ok(history)
}

/// The columns [`account_from_row`] reads, after the account's stored id.
const ACCOUNT_HEAD: &str = "account_id, next_seq, ledger_len, ledger_head, erased_at";

/// An account's row and history; with `lock`, the row stays locked until the transaction ends,
/// which serializes writers of one account and no others.
pub fn load_account(
    tx: &mut dyn Tx,
    histories: &Histories,
    id: &AccountId,
    lock: bool,
) -> Result<Option<(AccountRow, AccountHistory)>, StoreError> {
    // A read-only transaction reads one snapshot and may not lock (PostgreSQL refuses it).
    let lock = if lock && !tx.read_only() {
        tx.dialect().lock_clause()
    } else {
        ""
    };
    let sql = format!("SELECT {ACCOUNT_HEAD} FROM accounts WHERE account_id = ?{lock}");
    // An erased account is stored under its pseudonym: found by recomputing it from the id.
    let row = match tx.query_one(&sql, &[id.as_str().into()])? {
        Some(row) => row,
        None => {
            let name = histories.pseudonym(id.as_str());
            match tx.query_one(&sql, &[name.as_str().into()])? {
                Some(row) => row,
                None => return Ok(None),
            }
        }
    };
    let account = account_from_row(histories, id, &row)?;
    let history = history_of(tx, histories, id, &account)?;
    Ok(Some((account, history)))
}

/// Locks every one of `ids` that is stored under its own id (not erased), in one order for
/// every transaction (so that two batches never wait on each other in a circle), with a query
/// per few dozen; returns each with its history. An id not returned is left to [`load_account`].
pub(crate) fn lock_accounts(
    tx: &mut dyn Tx,
    histories: &Histories,
    ids: &[&AccountId],
) -> Result<HashMap<AccountId, (AccountRow, AccountHistory)>, StoreError> {
    let ids: Vec<&str> = ids.iter().map(|id| id.as_str()).collect();
    accounts_by_stored_id(tx, histories, &ids, true)
}

/// The accounts stored under `ids` (an erased account's stored id is its pseudonym), each with
/// its history, a few dozen per query; the histories the cache lacks are read together. With
/// `lock`, in a write transaction, each account's row is locked, in id order.
pub(crate) fn accounts_by_stored_id(
    tx: &mut dyn Tx,
    histories: &Histories,
    ids: &[&str],
    lock: bool,
) -> Result<HashMap<AccountId, (AccountRow, AccountHistory)>, StoreError> {
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    let lock = if lock && !tx.read_only() {
        tx.dialect().lock_clause()
    } else {
        ""
    };
    let keys = crate::sql::key_list();
    let sql = format!(
        "SELECT {ACCOUNT_HEAD} FROM accounts WHERE account_id IN ({keys}) ORDER BY account_id{lock}"
    );
    let mut rows = Vec::new();
    for params in crate::sql::padded_chunks(&ids) {
        rows.extend(tx.query(&sql, &params)?);
    }
    let mut found = HashMap::with_capacity(rows.len());
    let mut unread = Vec::new();
    for row in &rows {
        let id = account_id(row.text(0)?)?;
        let account = account_from_row(histories, &id, row)?;
        match histories.get(&id, account.ledger_len) {
            Some(history) => {
                found.insert(id, (account, history));
            }
            None => unread.push((id, account)),
        }
    }
    // The histories the cache lacks: their ledgers, a few dozen accounts per query.
    let ledgers = format!(
        "SELECT {LEDGER_COLUMNS} FROM ledger WHERE account_id IN ({keys}) ORDER BY account_id, idx"
    );
    let mut read = HashMap::with_capacity(unread.len());
    for chunk in unread.chunks(crate::sql::KEYS_PER_LOOKUP) {
        let stored: Vec<&str> = chunk
            .iter()
            .map(|(_, account)| account.id.as_str())
            .collect();
        let params = crate::sql::padded_chunks(&stored)
            .next()
            .unwrap_or_default();
        let mut in_order = HistoriesInOrder::default();
        tx.query_each(&ledgers, &params, &mut |row| {
            if let Some(history) = in_order.push(entry_from_row(row)?)? {
                read.insert(history.id.clone(), history);
            }
            Ok(())
        })?;
        if let Some(history) = in_order.finish()? {
            read.insert(history.id.clone(), history);
        }
    }
    for (id, account) in unread {
        let history = adopt(tx, histories, &id, &account, read.remove(&account.id))?;
        found.insert(id, (account, history));
    }
    Ok(found)
}

/// An account's head from its row ([`ACCOUNT_HEAD`]), asked for as `id`.
fn account_from_row(
    histories: &Histories,
    id: &AccountId,
    row: &Row,
) -> Result<AccountRow, StoreError> {
    let stored_id = account_id(row.text(0)?)?;
    let erased_at = row.optional_int(4)?;
    Ok(AccountRow {
        ledger_name: if erased_at.is_some() {
            stored_id.as_str().to_owned()
        } else {
            histories.pseudonym(id.as_str())
        },
        id: stored_id,
        next_seq: row.int(1)?,
        ledger_len: row.int(2)?,
        ledger_head: hash32(row.bytes(3)?)?,
        erased_at,
    })
}

/// The history of an account whose row was read: cached by its ledger length, or rebuilt.
fn history_of(
    tx: &mut dyn Tx,
    histories: &Histories,
    id: &AccountId,
    account: &AccountRow,
) -> Result<AccountHistory, StoreError> {
    if let Some(history) = histories.get(id, account.ledger_len) {
        return Ok(history);
    }
    let entries = ledger_entries(tx, account.id.as_str())?;
    adopt(tx, histories, id, account, history_from(&entries)?)
}

/// A history just read from `account`'s ledger, as the answers want it: named as the account
/// was asked for (not by its pseudonym), and cached if the transaction read committed rows.
fn adopt(
    tx: &dyn Tx,
    histories: &Histories,
    id: &AccountId,
    account: &AccountRow,
    history: Option<AccountHistory>,
) -> Result<AccountHistory, StoreError> {
    let mut history =
        history.ok_or_else(|| StoreError::corrupt(format!("account `{id}` has no ledger")))?;
    history.id = id.clone();
    // Only a read-only transaction is sure to have read committed rows; a write transaction
    // may have read its own uncommitted writes (an earlier event of a batch). Writes reach
    // the cache after their commit instead (`Written`).
    if tx.read_only() {
        histories.keep(account.ledger_len, &history);
    }
    Ok(history)
}

/// A conversation with its activity; `with_text` also reads message texts and comments.
pub fn load_conversation(
    tx: &mut dyn Tx,
    id: &ConversationId,
    with_text: bool,
) -> Result<Option<Conversation>, StoreError> {
    let Some(row) = tx.query_one(
        &format!("SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE conversation_id = ?"),
        &[id.as_str().into()],
    )?
    else {
        return Ok(None);
    };
    let mut conversation = conversation_from_row(&row)?;
    if conversation.purged.is_some() {
        return Ok(Some(conversation));
    }
    let params = [conversation.owner.as_str().into(), id.as_str().into()];
    tx.query_each(
        &format!(
            "SELECT {} FROM messages WHERE account_id = ? AND conversation_id = ? ORDER BY seq",
            message_columns(with_text)
        ),
        &params,
        &mut |row| {
            conversation.messages.push(message_from_row(row, 0)?);
            Ok(())
        },
    )?;
    tx.query_each(
        &format!(
            "SELECT {} FROM feedback WHERE account_id = ? AND conversation_id = ? ORDER BY seq",
            feedback_columns(with_text)
        ),
        &params,
        &mut |row| {
            conversation.feedback.push(feedback_from_row(row, 0)?);
            Ok(())
        },
    )?;
    in_key_order(&mut conversation);
    Ok(Some(conversation))
}

/// Many conversations with their activity (without texts), a few dozen per query: the batched
/// form of [`load_conversation`], for work that reads many at once (batches, sweeps). Ids that
/// name no conversation are left out of the answer.
pub(crate) fn load_conversations(
    tx: &mut dyn Tx,
    ids: &[&str],
) -> Result<HashMap<ConversationId, Conversation>, StoreError> {
    let mut found = conversation_rows(tx, ids)?;
    let live: Vec<(String, String)> = found
        .values()
        .filter(|c| c.purged.is_none())
        .map(|c| (c.owner.as_str().to_owned(), c.id.as_str().to_owned()))
        .collect();
    for chunk in live.chunks(crate::sql::KEYS_PER_LOOKUP) {
        read_activity(tx, &mut found, chunk, ActivityRead::Select)?;
    }
    for conversation in found.values_mut() {
        in_key_order(conversation);
    }
    Ok(found)
}

/// The conversations named by `ids` (those that exist), without their activity.
pub(crate) fn conversation_rows(
    tx: &mut dyn Tx,
    ids: &[&str],
) -> Result<HashMap<ConversationId, Conversation>, StoreError> {
    let keys = crate::sql::key_list();
    let mut found = HashMap::with_capacity(ids.len());
    let by_id = format!(
        "SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE conversation_id IN ({keys})"
    );
    for params in crate::sql::padded_chunks(ids) {
        tx.query_each(&by_id, &params, &mut |row| {
            let conversation = conversation_from_row(row)?;
            found.insert(conversation.id.clone(), conversation);
            Ok(())
        })?;
    }
    Ok(found)
}

/// How [`read_activity`] reads: leaving the rows, or deleting them as it reads them (a sweep's
/// purge on PostgreSQL, which then visits each page once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ActivityRead {
    Select,
    Delete,
}

/// Adds to the conversations of `found` their messages and feedback (without texts), for up to
/// [`crate::sql::KEYS_PER_LOOKUP`] (owner, conversation) pairs; not in key order.
pub(crate) fn read_activity(
    tx: &mut dyn Tx,
    found: &mut HashMap<ConversationId, Conversation>,
    pairs: &[(String, String)],
    how: ActivityRead,
) -> Result<(), StoreError> {
    let list = crate::sql::tuple_list(2);
    let activity = |table: &str, columns: &str| match how {
        ActivityRead::Select => format!(
            "SELECT conversation_id, {columns} FROM {table} \
             WHERE (account_id, conversation_id) IN ({list})"
        ),
        ActivityRead::Delete => format!(
            "DELETE FROM {table} WHERE (account_id, conversation_id) IN ({list}) \
             RETURNING conversation_id, {columns}"
        ),
    };
    let params = crate::sql::pair_params(pairs);
    tx.query_each(
        &activity("messages", message_columns(false)),
        &params,
        &mut |row| {
            let message = crate::codec::message_head(row, 1)?;
            owned_by(found, row)?.messages.push(message);
            Ok(())
        },
    )?;
    tx.query_each(
        &activity("feedback", feedback_columns(false)),
        &params,
        &mut |row| {
            let feedback = crate::codec::feedback_head(row, 1)?;
            owned_by(found, row)?.feedback.push(feedback);
            Ok(())
        },
    )?;
    Ok(())
}

/// The conversation a row of activity (its first column the conversation id) belongs to.
fn owned_by<'c>(
    found: &'c mut HashMap<ConversationId, Conversation>,
    row: &Row,
) -> Result<&'c mut Conversation, StoreError> {
    let id = conversation_id(row.text(0)?)?;
    found
        .get_mut(&id)
        .ok_or_else(|| StoreError::corrupt(format!("activity of an unknown conversation `{id}`")))
}

pub(crate) fn conversations_of(
    tx: &mut dyn Tx,
    account: &AccountId,
) -> Result<Vec<ConversationId>, StoreError> {
    tx.query(
        "SELECT conversation_id FROM conversations WHERE account_id = ? ORDER BY conversation_id",
        &[account.as_str().into()],
    )?
    .into_iter()
    .map(|row| conversation_id(row.text(0)?))
    .collect()
}

/// The account a conversation belongs to, if it was ever recorded.
pub fn conversation_owner(
    tx: &mut dyn Tx,
    id: &ConversationId,
) -> Result<Option<AccountId>, StoreError> {
    tx.query_one(
        "SELECT account_id FROM conversations WHERE conversation_id = ?",
        &[id.as_str().into()],
    )?
    .map(|row| account_id(row.text(0)?))
    .transpose()
}
