//! The transaction scripts: load the records an event names, ask the core, write the result.
//!
//! Written once against [`Tx`], so SQLite and PostgreSQL run the same statements. No rule of
//! SPEC.md is restated here: admission, expiry, eligibility, content and the sweep's decision
//! all come from `custos-core`.

use std::collections::BTreeMap;

use custos_core::admission::{self, Refusal};
use custos_core::{
    AccountHistory, AccountId, Channel, Choice, Command, Conversation, ConversationId,
    ConversationStatus, EligibilityReason, EventKey, Feedback, Gate, Hold, HoldId, HoldTarget,
    Message, Policy, Preference, Rating, Role, Surface, SweepAction, SweepReport, Timestamp,
    eligibility, expiry, gate, sweep_action, training_content,
};
use sha2::{Digest, Sha256};

use crate::StoreError;
use crate::ledger::{
    self, Encoding, Entry, EntryKind, GENESIS, LedgerKey, checkpoint_message, heads_root, pseudonym,
};
use crate::sql::{Columns, Row, Tx};

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
    cache: std::sync::Mutex<std::collections::HashMap<AccountId, (i64, AccountHistory)>>,
    pseudonym_key: [u8; 32],
}

/// More cached histories than this and the cache starts afresh: memory stays bounded.
const HISTORIES_KEPT: usize = 65_536;

impl Histories {
    pub fn new(pseudonym_key: [u8; 32]) -> Histories {
        Histories {
            cache: std::sync::Mutex::default(),
            pseudonym_key,
        }
    }

    /// The account's keyed pseudonym (see `ledger::pseudonym`).
    pub fn pseudonym(&self, account: &str) -> String {
        pseudonym(&self.pseudonym_key, account)
    }

    fn get(&self, id: &AccountId, ledger_len: i64) -> Option<AccountHistory> {
        let cache = self.cache.lock().ok()?;
        cache
            .get(id)
            .filter(|(len, _)| *len == ledger_len)
            .map(|(_, h)| h.clone())
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
    /// The next event's place in this account's order (SPEC §2 "order of arrival").
    pub next_seq: i64,
    pub ledger_len: i64,
    pub ledger_head: [u8; 32],
    pub erased_at: Option<i64>,
    /// How the ledger's hashes name this account: its pseudonym.
    pub ledger_name: String,
}

fn seq(value: i64) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::corrupt(format!("negative sequence {value}")))
}

fn as_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn time(millis: i64) -> Result<Timestamp, StoreError> {
    Timestamp::from_unix_millis(millis)
        .ok_or_else(|| StoreError::corrupt(format!("time {millis} is out of range")))
}

fn hash32(bytes: Vec<u8>) -> Result<[u8; 32], StoreError> {
    bytes
        .try_into()
        .map_err(|_| StoreError::corrupt("a hash is not 32 bytes"))
}

fn account_id(text: String) -> Result<AccountId, StoreError> {
    AccountId::parse(&text).map_err(|e| StoreError::corrupt(e.to_string()))
}

fn conversation_id(text: String) -> Result<ConversationId, StoreError> {
    ConversationId::parse(&text).map_err(|e| StoreError::corrupt(e.to_string()))
}

// ---- reading records ----

pub(crate) const LEDGER_COLUMNS: &str = "account_id, idx, at, seq, kind, plan, preference, channel, \
                              notice_id, policy_id, actor, prev_hash, hash";

pub fn entry_from_row(row: &impl Columns) -> Result<Entry, StoreError> {
    let kind_text = row.text(4)?;
    Ok(Entry {
        account: account_id(row.text(0)?)?,
        idx: row.int(1)?,
        key: EventKey::new(time(row.int(2)?)?, seq(row.int(3)?)?),
        kind: EntryKind::parse(&kind_text)
            .ok_or_else(|| StoreError::corrupt(format!("unknown ledger kind `{kind_text}`")))?,
        plan: row.optional_text(5)?,
        preference: row
            .optional_text(6)?
            .map(|t| parse_or_corrupt(&t, Preference::parse))
            .transpose()?,
        channel: row
            .optional_text(7)?
            .map(|t| parse_or_corrupt(&t, Channel::parse))
            .transpose()?,
        notice_id: row.text(8)?,
        policy_id: row.text(9)?,
        actor: row.text(10)?,
        prev_hash: hash32(row.bytes(11)?)?,
        hash: hash32(row.bytes(12)?)?,
    })
}

fn parse_or_corrupt<T>(text: &str, parse: impl Fn(&str) -> Option<T>) -> Result<T, StoreError> {
    parse(text).ok_or_else(|| StoreError::corrupt(format!("unknown stored value `{text}`")))
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
        let plan = || {
            let name = entry.plan.as_deref().unwrap_or("");
            // A plan dropped from a later policy is kept as recorded; it is simply not consumer.
            Ok::<_, StoreError>(custos_core::policy::Plan::recorded(name))
        };
        match (entry.kind, history.as_mut()) {
            (EntryKind::Created, None) => {
                history = Some(AccountHistory::new(
                    entry.account.clone(),
                    entry.key,
                    plan()?,
                ));
            }
            (EntryKind::Choice, Some(h)) => h.record_choice(Choice {
                key: entry.key,
                preference: entry.preference.unwrap_or(Preference::Unset),
                channel: entry.channel.unwrap_or(Channel::Settings),
            }),
            (EntryKind::NoticeShown, Some(h)) => h.record_notice_shown(entry.key),
            (EntryKind::PlanChanged, Some(h)) => h.record_plan(entry.key, plan()?),
            (EntryKind::Erased, Some(h)) => h.record_erasure(entry.key),
            (kind, _) => {
                return Err(StoreError::corrupt(format!(
                    "ledger of `{}` has `{}` at entry {} out of place",
                    entry.account,
                    kind.as_str(),
                    entry.idx
                )));
            }
        }
    }
    Ok(history)
}

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
    let sql = format!(
        "SELECT next_seq, ledger_len, ledger_head, erased_at FROM accounts WHERE account_id = ?{lock}"
    );
    // An erased account is stored under its pseudonym: found by recomputing it from the id.
    let (stored_id, row) = match tx.query_one(&sql, &[id.as_str().into()])? {
        Some(row) => (id.clone(), row),
        None => {
            let name = histories.pseudonym(id.as_str());
            match tx.query_one(&sql, &[name.as_str().into()])? {
                Some(row) => (account_id(name)?, row),
                None => return Ok(None),
            }
        }
    };
    let erased_at = row.optional_int(3)?;
    let account = AccountRow {
        ledger_name: if erased_at.is_some() {
            stored_id.as_str().to_owned()
        } else {
            histories.pseudonym(id.as_str())
        },
        id: stored_id,
        next_seq: row.int(0)?,
        ledger_len: row.int(1)?,
        ledger_head: hash32(row.bytes(2)?)?,
        erased_at,
    };
    if let Some(history) = histories.get(id, account.ledger_len) {
        return Ok(Some((account, history)));
    }
    let entries = ledger_entries(tx, account.id.as_str())?;
    let mut history = history_from(&entries)?
        .ok_or_else(|| StoreError::corrupt(format!("account `{id}` has no ledger")))?;
    // Answers name the account as it was asked for, not by its pseudonym.
    history.id = id.clone();
    // Only a read-only transaction is sure to have read committed rows; a write transaction
    // may have read its own uncommitted writes (an earlier event of a batch). Writes reach
    // the cache after their commit instead (`Written`).
    if tx.read_only() {
        histories.keep(account.ledger_len, &history);
    }
    Ok(Some((account, history)))
}

/// The columns [`conversation_from_row`] reads, in its order.
pub(crate) const CONVERSATION_COLUMNS: &str =
    "account_id, conversation_id, surface, incognito, deleted_at, deleted_seq, purged_at";

/// A conversation's row, without its activity.
pub(crate) fn conversation_from_row(row: &impl Columns) -> Result<Conversation, StoreError> {
    let owner = account_id(row.text(0)?)?;
    let id = conversation_id(row.text(1)?)?;
    let surface = parse_or_corrupt(&row.text(2)?, Surface::parse)?;
    let mut conversation = Conversation::new(id, owner, surface, row.bool(3)?);
    if let (Some(at), Some(s)) = (row.optional_int(4)?, row.optional_int(5)?) {
        conversation.deleted = Some(EventKey::new(time(at)?, seq(s)?));
    }
    if let Some(at) = row.optional_int(6)? {
        // A sweep is not an account event; it is ordered by time alone.
        conversation.purged = Some(EventKey::new(time(at)?, 0));
    }
    Ok(conversation)
}

/// The columns after the conversation id that [`message_from_row`] reads; without text, the
/// text is read as empty.
pub(crate) fn message_columns(with_text: bool) -> &'static str {
    if with_text {
        "seq, at, role, text"
    } else {
        "seq, at, role, ''"
    }
}

pub(crate) fn feedback_columns(with_text: bool) -> &'static str {
    if with_text {
        "seq, at, rating, comment"
    } else {
        "seq, at, rating, NULL"
    }
}

/// A message from the columns of [`message_columns`], starting at column `from`.
pub(crate) fn message_from_row(row: &impl Columns, from: usize) -> Result<Message, StoreError> {
    Ok(Message {
        text: row.text(from + MESSAGE_TEXT)?,
        ..message_head(row, from)?
    })
}

/// Where the text is among [`message_columns`] (and the comment among [`feedback_columns`]).
pub(crate) const MESSAGE_TEXT: usize = 3;
pub(crate) const FEEDBACK_COMMENT: usize = 3;

/// A message without its text (left empty), from the columns of [`message_columns`].
pub(crate) fn message_head(row: &impl Columns, from: usize) -> Result<Message, StoreError> {
    Ok(Message {
        key: EventKey::new(time(row.int(from + 1)?)?, seq(row.int(from)?)?),
        role: parse_or_corrupt(row.optional_str(from + 2)?.unwrap_or(""), Role::parse)?,
        text: String::new(),
    })
}

pub(crate) fn feedback_from_row(row: &impl Columns, from: usize) -> Result<Feedback, StoreError> {
    Ok(Feedback {
        comment: row.optional_text(from + FEEDBACK_COMMENT)?,
        ..feedback_head(row, from)?
    })
}

/// Feedback without its comment (left out), from the columns of [`feedback_columns`].
pub(crate) fn feedback_head(row: &impl Columns, from: usize) -> Result<Feedback, StoreError> {
    Ok(Feedback {
        key: EventKey::new(time(row.int(from + 1)?)?, seq(row.int(from)?)?),
        rating: parse_or_corrupt(row.optional_str(from + 2)?.unwrap_or(""), Rating::parse)?,
        comment: None,
    })
}

/// Out-of-order arrival can leave seq and time orders apart; the core wants key order.
pub(crate) fn in_key_order(conversation: &mut Conversation) {
    conversation.messages.sort_by_key(|m| m.key);
    conversation.feedback.sort_by_key(|f| f.key);
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

fn conversations_of(
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

fn hold_from_row(row: &Row) -> Result<Hold, StoreError> {
    let target = match (row.optional_text(1)?, row.optional_text(2)?) {
        (Some(account), None) => HoldTarget::Account(account_id(account)?),
        (None, Some(conversation)) => HoldTarget::Conversation(conversation_id(conversation)?),
        _ => {
            return Err(StoreError::corrupt(
                "a hold must name one account or one conversation",
            ));
        }
    };
    Ok(Hold {
        id: HoldId::parse(&row.text(0)?).map_err(|e| StoreError::corrupt(e.to_string()))?,
        target,
        // Holds are not account events; they are ordered by time alone.
        placed: EventKey::new(time(row.int(3)?)?, 0),
        released: row
            .optional_int(4)?
            .map(|at| time(at).map(|t| EventKey::new(t, 0)))
            .transpose()?,
    })
}

const HOLD_COLUMNS: &str = "hold_id, account_id, conversation_id, placed_at, released_at";

fn hold(tx: &mut dyn Tx, id: &HoldId) -> Result<Option<Hold>, StoreError> {
    let sql = format!("SELECT {HOLD_COLUMNS} FROM holds WHERE hold_id = ?");
    tx.query_one(&sql, &[id.as_str().into()])?
        .as_ref()
        .map(hold_from_row)
        .transpose()
}

/// Holds that name the conversation or its owner.
fn holds_on(tx: &mut dyn Tx, conversation: &Conversation) -> Result<Vec<Hold>, StoreError> {
    let sql = format!(
        "SELECT {HOLD_COLUMNS} FROM holds WHERE released_at IS NULL AND (account_id = ? OR conversation_id = ?)"
    );
    let params = [
        conversation.owner.as_str().into(),
        conversation.id.as_str().into(),
    ];
    tx.query(&sql, &params)?.iter().map(hold_from_row).collect()
}

// ---- writing ----

/// What the next ledger entry says; the chain fields are filled in by [`append_ledger`].
pub(crate) struct NewEntry<'a> {
    pub(crate) key: EventKey,
    pub(crate) kind: EntryKind,
    pub(crate) plan: Option<&'a str>,
    pub(crate) choice: Option<(Preference, Channel)>,
}

/// The next entry of `account`'s chain, with its hash; moves the account's head on to it.
pub(crate) fn chain_entry(
    policy: &Policy,
    account: &mut AccountRow,
    actor: &str,
    new: NewEntry<'_>,
) -> Entry {
    let mut entry = Entry {
        account: account.id.clone(),
        idx: account.ledger_len,
        key: new.key,
        kind: new.kind,
        plan: new.plan.map(str::to_owned),
        preference: new.choice.map(|(p, _)| p),
        channel: new.choice.map(|(_, c)| c),
        notice_id: policy.id.clone(),
        policy_id: policy.id.clone(),
        actor: actor.to_owned(),
        prev_hash: account.ledger_head,
        hash: GENESIS,
    };
    entry.hash = entry.chained_hash(&entry.prev_hash, &account.ledger_name);
    account.ledger_len += 1;
    account.ledger_head = entry.hash;
    entry
}

pub(crate) fn insert_entry(tx: &mut dyn Tx, entry: &Entry) -> Result<(), StoreError> {
    let sql = format!(
        "INSERT INTO ledger ({LEDGER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    );
    tx.execute(
        &sql,
        &[
            entry.account.as_str().into(),
            entry.idx.into(),
            entry.key.at.unix_millis().into(),
            as_i64(entry.key.seq).into(),
            entry.kind.as_str().into(),
            entry.plan.clone().into(),
            entry.preference.map(Preference::as_str).into(),
            entry.channel.map(Channel::as_str).into(),
            entry.notice_id.clone().into(),
            entry.policy_id.clone().into(),
            entry.actor.clone().into(),
            entry.prev_hash.as_slice().into(),
            entry.hash.as_slice().into(),
        ],
    )?;
    Ok(())
}

/// A new account as its creation leaves it, before anything is written: its row, its history,
/// and its first ledger entries (created, then the signup choice if there is one), chained.
pub(crate) fn new_account(
    policy: &Policy,
    histories: &Histories,
    actor: &str,
    account: &AccountId,
    plan: custos_core::policy::Plan,
    choice: Option<(bool, Channel)>,
    at: Timestamp,
) -> (AccountRow, AccountHistory, Vec<Entry>) {
    let mut row = AccountRow {
        id: account.clone(),
        next_seq: 1,
        ledger_len: 0,
        ledger_head: GENESIS,
        erased_at: None,
        ledger_name: histories.pseudonym(account.as_str()),
    };
    let key = EventKey::new(at, 0);
    let created = NewEntry {
        key,
        kind: EntryKind::Created,
        plan: Some(plan.as_str()),
        choice: None,
    };
    let mut entries = vec![chain_entry(policy, &mut row, actor, created)];
    let mut history = AccountHistory::new(account.clone(), key, plan);
    if let Some((allowed, channel)) = choice {
        let preference = Preference::from_allowed(allowed);
        let signup = NewEntry {
            key,
            kind: EntryKind::Choice,
            plan: None,
            choice: Some((preference, channel)),
        };
        entries.push(chain_entry(policy, &mut row, actor, signup));
        history.record_choice(Choice {
            key,
            preference,
            channel,
        });
    }
    (row, history, entries)
}

fn append_ledger(
    tx: &mut dyn Tx,
    policy: &Policy,
    account: &mut AccountRow,
    actor: &str,
    new: NewEntry<'_>,
) -> Result<(), StoreError> {
    insert_entry(tx, &chain_entry(policy, account, actor, new))
}

pub(crate) fn insert_message(
    tx: &mut dyn Tx,
    account: &AccountId,
    conversation: &ConversationId,
    key: EventKey,
    role: Role,
    text: &str,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO messages (account_id, conversation_id, seq, at, role, text) VALUES (?, ?, ?, ?, ?, ?)",
        &[
            account.as_str().into(),
            conversation.as_str().into(),
            as_i64(key.seq).into(),
            key.at.unix_millis().into(),
            role.as_str().into(),
            text.into(),
        ],
    )?;
    Ok(())
}

pub(crate) fn insert_feedback(
    tx: &mut dyn Tx,
    account: &AccountId,
    conversation: &ConversationId,
    key: EventKey,
    rating: Rating,
    comment: Option<&str>,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO feedback (account_id, conversation_id, seq, at, rating, comment) VALUES (?, ?, ?, ?, ?, ?)",
        &[
            account.as_str().into(),
            conversation.as_str().into(),
            as_i64(key.seq).into(),
            key.at.unix_millis().into(),
            rating.as_str().into(),
            comment.into(),
        ],
    )?;
    Ok(())
}

fn save_account(tx: &mut dyn Tx, account: &AccountRow) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE accounts SET next_seq = ?, ledger_len = ?, ledger_head = ?, erased_at = ? WHERE account_id = ?",
        &[
            account.next_seq.into(),
            account.ledger_len.into(),
            account.ledger_head.as_slice().into(),
            account.erased_at.into(),
            account.id.as_str().into(),
        ],
    )?;
    Ok(())
}

/// Stores the conversation's expiry as the core computes it over every recorded event, so that
/// sweeps can find due conversations with a range scan.
fn store_expiry(
    tx: &mut dyn Tx,
    policy: &Policy,
    owner: &AccountHistory,
    conversation: &Conversation,
) -> Result<(), StoreError> {
    if conversation.purged.is_some() {
        return Ok(());
    }
    let expiry = expiry(policy, owner, conversation, END);
    tx.execute(
        "UPDATE conversations SET expires_at = ?, retention_class = ?, expiry_bound = ? WHERE conversation_id = ?",
        &[
            expiry.map(|e| e.at.unix_millis()).into(),
            expiry.map(|e| e.class.as_str()).into(),
            expiry.map(|e| e.bound.as_str()).into(),
            conversation.id.as_str().into(),
        ],
    )?;
    Ok(())
}

/// After a change to an account's plan, choices or erasure, every conversation's expiry may move.
fn store_expiries_of(
    tx: &mut dyn Tx,
    policy: &Policy,
    owner: &AccountHistory,
) -> Result<(), StoreError> {
    for id in conversations_of(tx, &owner.id)? {
        if let Some(conversation) = load_conversation(tx, &id, false)? {
            store_expiry(tx, policy, owner, &conversation)?;
        }
    }
    Ok(())
}

/// The end of every event on one conversation: the account's counter moves on, and the
/// conversation's stored expiry follows the change.
fn finish_conversation_event(
    tx: &mut dyn Tx,
    policy: &Policy,
    row: &mut AccountRow,
    owner: &AccountHistory,
    conversation: &Conversation,
) -> Result<(), StoreError> {
    row.next_seq += 1;
    save_account(tx, row)?;
    store_expiry(tx, policy, owner, conversation)
}

fn live_account(
    tx: &mut dyn Tx,
    histories: &Histories,
    id: &AccountId,
) -> Result<(AccountRow, AccountHistory), StoreError> {
    let loaded = load_account(tx, histories, id, true)?;
    admission::live_account(id, loaded.as_ref().map(|(_, h)| h))?;
    loaded.ok_or_else(|| Refusal::UnknownAccount(id.clone()).into())
}

fn next_key(account: &AccountRow, at: Timestamp) -> Result<EventKey, StoreError> {
    Ok(EventKey::new(at, seq(account.next_seq)?))
}

/// Applies one command at `at` on behalf of `actor`, in the caller's transaction.
/// Histories this transaction wrote, to be cached once (and only if) it commits.
pub type Written = Vec<(i64, AccountHistory)>;

pub fn apply(
    tx: &mut dyn Tx,
    histories: &Histories,
    written: &mut Written,
    policy: &Policy,
    at: Timestamp,
    command: &Command,
    actor: &str,
) -> Result<Option<SweepReport>, StoreError> {
    let already_written = written.len();
    let report = apply_command(tx, histories, written, policy, at, command, actor)?;
    // The gate's two facts sit beside the ledger they are derived from, so that the service
    // can load every account's gate with one table scan. `verify` checks they agree.
    for (_, history) in written.iter().skip(already_written) {
        tx.execute(
            "UPDATE accounts SET plan = ?, preference = ? WHERE account_id = ?",
            &[
                history.plan_at(END).as_str().into(),
                history.preference_at(END).as_str().into(),
                history.id.as_str().into(),
            ],
        )?;
    }
    if let Command::EraseAccount { account } = command {
        pseudonymize(tx, histories, account, at)?;
    }
    Ok(report)
}

/// The tables that name an account, each by its `account_id` column.
const ACCOUNT_TABLES: &[&str] = &[
    "accounts",
    "ledger",
    "conversations",
    "messages",
    "feedback",
    "holds",
    "checkpoint_heads",
    "tokens",
];

/// After erasure (R14), the account's id is replaced everywhere by its keyed pseudonym, in the
/// erasure's own transaction. The ledger's hashes and checkpoints name accounts by pseudonym
/// from the start, so every chain still verifies: the evidence of what was chosen, when and
/// under which notice stays, without the person's identity. The account's tokens are revoked.
fn pseudonymize(
    tx: &mut dyn Tx,
    histories: &Histories,
    account: &AccountId,
    at: Timestamp,
) -> Result<(), StoreError> {
    let name = histories.pseudonym(account.as_str());
    tx.execute(
        "UPDATE tokens SET revoked_at = ? WHERE account_id = ? AND revoked_at IS NULL",
        &[at.unix_millis().into(), account.as_str().into()],
    )?;
    for table in ACCOUNT_TABLES {
        tx.execute(
            &format!("UPDATE {table} SET account_id = ? WHERE account_id = ?"),
            &[name.as_str().into(), account.as_str().into()],
        )?;
    }
    Ok(())
}

fn apply_command(
    tx: &mut dyn Tx,
    histories: &Histories,
    written: &mut Written,
    policy: &Policy,
    at: Timestamp,
    command: &Command,
    actor: &str,
) -> Result<Option<SweepReport>, StoreError> {
    match command {
        Command::CreateAccount {
            account,
            plan,
            choice,
        } => {
            let existing = load_account(tx, histories, account, true)?;
            let plan = admission::admit_create_account(
                policy,
                account,
                existing.as_ref().map(|(_, h)| h),
                plan,
                choice.is_some(),
                at,
            )?;
            tx.execute(
                "INSERT INTO accounts (account_id, next_seq, ledger_len, ledger_head, checkpointed_len) VALUES (?, 1, 0, ?, 0)",
                &[account.as_str().into(), GENESIS.as_slice().into()],
            )?;
            let (row, history, entries) =
                new_account(policy, histories, actor, account, plan, *choice, at);
            for entry in &entries {
                insert_entry(tx, entry)?;
            }
            save_account(tx, &row)?;
            written.push((row.ledger_len, history));
        }
        Command::Choose {
            account,
            allowed,
            channel,
        } => {
            let (mut row, mut history) = live_account(tx, histories, account)?;
            let key = next_key(&row, at)?;
            admission::admit_choice(policy, &history, key)?;
            let preference = Preference::from_allowed(*allowed);
            let choice = Some((preference, *channel));
            append_ledger(
                tx,
                policy,
                &mut row,
                actor,
                NewEntry {
                    key,
                    kind: EntryKind::Choice,
                    plan: None,
                    choice,
                },
            )?;
            history.record_choice(Choice {
                key,
                preference,
                channel: *channel,
            });
            row.next_seq += 1;
            save_account(tx, &row)?;
            store_expiries_of(tx, policy, &history)?;
            written.push((row.ledger_len, history));
        }
        Command::NoticeShown { account } => {
            let (mut row, mut history) = live_account(tx, histories, account)?;
            let key = next_key(&row, at)?;
            append_ledger(
                tx,
                policy,
                &mut row,
                actor,
                NewEntry {
                    key,
                    kind: EntryKind::NoticeShown,
                    plan: None,
                    choice: None,
                },
            )?;
            history.record_notice_shown(key);
            row.next_seq += 1;
            save_account(tx, &row)?;
            written.push((row.ledger_len, history));
        }
        Command::ChangePlan { account, plan } => {
            let (mut row, mut history) = live_account(tx, histories, account)?;
            let (plan, _) = policy.plan(plan).map_err(Refusal::from)?;
            let key = next_key(&row, at)?;
            let new = NewEntry {
                key,
                kind: EntryKind::PlanChanged,
                plan: Some(plan.as_str()),
                choice: None,
            };
            append_ledger(tx, policy, &mut row, actor, new)?;
            history.record_plan(key, plan);
            row.next_seq += 1;
            save_account(tx, &row)?;
            store_expiries_of(tx, policy, &history)?;
            written.push((row.ledger_len, history));
        }
        Command::Message {
            account,
            conversation,
            surface,
            role,
            text,
            incognito,
        } => {
            let (mut row, history) = live_account(tx, histories, account)?;
            let key = next_key(&row, at)?;
            let mut record = match load_conversation(tx, conversation, false)? {
                Some(existing) => {
                    admission::admit_activity(policy, &history, &existing, key)?;
                    existing
                }
                None => {
                    admission::admit_new_conversation(&history, key)?;
                    tx.execute(
                        "INSERT INTO conversations (account_id, conversation_id, surface, incognito) VALUES (?, ?, ?, ?)",
                        &[account.as_str().into(), conversation.as_str().into(), surface.as_str().into(), (*incognito).into()],
                    )?;
                    Conversation::new(conversation.clone(), account.clone(), *surface, *incognito)
                }
            };
            insert_message(tx, account, conversation, key, *role, text)?;
            record.record_message(Message {
                key,
                role: *role,
                text: String::new(),
            });
            finish_conversation_event(tx, policy, &mut row, &history, &record)?;
        }
        Command::Feedback {
            account,
            conversation,
            rating,
            comment,
        } => {
            let (mut row, history) = live_account(tx, histories, account)?;
            let key = next_key(&row, at)?;
            let mut record = load_conversation(tx, conversation, false)?
                .ok_or_else(|| Refusal::UnknownConversation(conversation.clone()))?;
            admission::admit_activity(policy, &history, &record, key)?;
            insert_feedback(tx, account, conversation, key, *rating, comment.as_deref())?;
            record.record_feedback(Feedback {
                key,
                rating: *rating,
                comment: None,
            });
            finish_conversation_event(tx, policy, &mut row, &history, &record)?;
        }
        Command::DeleteConversation { conversation } => {
            let mut record = load_conversation(tx, conversation, false)?
                .ok_or_else(|| Refusal::UnknownConversation(conversation.clone()))?;
            let (mut row, history) =
                load_account(tx, histories, &record.owner, true)?.ok_or_else(|| {
                    StoreError::corrupt(format!("conversation `{conversation}` has no account"))
                })?;
            let key = next_key(&row, at)?;
            admission::admit_deletion(&record, key)?;
            tx.execute(
                "UPDATE conversations SET deleted_at = ?, deleted_seq = ? WHERE conversation_id = ?",
                &[at.unix_millis().into(), as_i64(key.seq).into(), conversation.as_str().into()],
            )?;
            record.deleted = Some(key);
            finish_conversation_event(tx, policy, &mut row, &history, &record)?;
        }
        Command::PlaceHold { hold: id, target } => {
            admission::admit_hold(id, hold(tx, id)?.as_ref())?;
            let (account, conversation) = match target {
                HoldTarget::Account(account) => {
                    // An erased account is held under its pseudonym: the id is not stored again.
                    let Some((row, _)) = load_account(tx, histories, account, false)? else {
                        return Err(Refusal::UnknownAccount(account.clone()).into());
                    };
                    (Some(row.id.as_str().to_owned()), None)
                }
                HoldTarget::Conversation(conversation) => {
                    if load_conversation(tx, conversation, false)?.is_none() {
                        return Err(Refusal::UnknownConversation(conversation.clone()).into());
                    }
                    (None, Some(conversation.as_str()))
                }
            };
            tx.execute(
                "INSERT INTO holds (hold_id, account_id, conversation_id, placed_at, actor) VALUES (?, ?, ?, ?, ?)",
                &[id.as_str().into(), account.into(), conversation.into(), at.unix_millis().into(), actor.into()],
            )?;
        }
        Command::ReleaseHold { hold: id } => {
            admission::admit_release(id, hold(tx, id)?.as_ref(), EventKey::new(at, u64::MAX))?;
            tx.execute(
                "UPDATE holds SET released_at = ? WHERE hold_id = ?",
                &[at.unix_millis().into(), id.as_str().into()],
            )?;
        }
        Command::EraseAccount { account } => {
            let (mut row, mut history) = live_account(tx, histories, account)?;
            let key = next_key(&row, at)?;
            append_ledger(
                tx,
                policy,
                &mut row,
                actor,
                NewEntry {
                    key,
                    kind: EntryKind::Erased,
                    plan: None,
                    choice: None,
                },
            )?;
            history.record_erasure(key);
            row.erased_at = Some(at.unix_millis());
            row.next_seq += 1;
            save_account(tx, &row)?;
            store_expiries_of(tx, policy, &history)?;
            written.push((row.ledger_len, history));
        }
        Command::Sweep => return sweep(tx, histories, policy, at).map(Some),
    }
    Ok(None)
}

/// Purges every due conversation that no hold covers, in one transaction (the scenario
/// runner's `sweep` step). The service sweeps in batches instead ([`sweep_batch`]).
fn sweep(
    tx: &mut dyn Tx,
    histories: &Histories,
    policy: &Policy,
    now: Timestamp,
) -> Result<SweepReport, StoreError> {
    let mut report = SweepReport::default();
    let mut cursor = None;
    loop {
        let (part, next, _) = sweep_batch(
            tx,
            histories,
            policy,
            now,
            cursor.as_ref(),
            crate::SWEEP_BATCH,
        )?;
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
        "SELECT COUNT(*) FROM conversations WHERE purged_at IS NULL AND expires_at <= ?",
        &[now.unix_millis().into()],
    )?;
    Ok(row.map_or(Ok(0), |r| r.int(0))?.try_into().unwrap_or(0))
}

/// Looks at up to `limit` due conversations after `after`, in (expiry, id) order, through the
/// expiry index, and purges each that no hold covers, whole. The stored expiry only nominates
/// candidates: the core decides each one again as of `now`. Returns what it did, where the
/// next batch starts (`None` when no due conversation is left) and how many it looked at. Held conversations stay in the
/// index, so the cursor, not the purges, moves the sweep on.
pub fn sweep_batch(
    tx: &mut dyn Tx,
    histories: &Histories,
    policy: &Policy,
    now: Timestamp,
    after: Option<&SweepCursor>,
    limit: usize,
) -> Result<(SweepReport, Option<SweepCursor>, usize), StoreError> {
    let limit_value = i64::try_from(limit).unwrap_or(i64::MAX);
    let due = match after {
        None => tx.query(
            "SELECT conversation_id, expires_at FROM conversations WHERE purged_at IS NULL AND expires_at <= ? \
             ORDER BY expires_at, conversation_id LIMIT ?",
            &[now.unix_millis().into(), limit_value.into()],
        )?,
        Some(cursor) => tx.query(
            "SELECT conversation_id, expires_at FROM conversations WHERE purged_at IS NULL AND expires_at <= ? \
             AND (expires_at > ? OR (expires_at = ? AND conversation_id > ?)) \
             ORDER BY expires_at, conversation_id LIMIT ?",
            &[
                now.unix_millis().into(),
                cursor.expires_at.into(),
                cursor.expires_at.into(),
                cursor.conversation.as_str().into(),
                limit_value.into(),
            ],
        )?,
    };
    // Active holds are few: read once per batch, not once per conversation.
    let active = tx
        .query(
            &format!("SELECT {HOLD_COLUMNS} FROM holds WHERE released_at IS NULL"),
            &[],
        )?
        .iter()
        .map(hold_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    let mut report = SweepReport::default();
    let mut last = None;
    for row in &due {
        let id = conversation_id(row.text(0)?)?;
        last = Some(SweepCursor {
            expires_at: row.int(1)?,
            conversation: id.as_str().to_owned(),
        });
        let Some(conversation) = load_conversation(tx, &id, false)? else {
            continue;
        };
        let Some((account, owner)) = load_account(tx, histories, &conversation.owner, false)?
        else {
            continue;
        };
        let as_of = next_key(&account, now)?;
        let holds: Vec<Hold> = active
            .iter()
            .filter(|hold| match &hold.target {
                HoldTarget::Account(held) => *held == conversation.owner,
                HoldTarget::Conversation(held) => *held == conversation.id,
            })
            .cloned()
            .collect();
        let held = custos_core::retention::is_held(&holds, &conversation, as_of);
        match sweep_action(expiry(policy, &owner, &conversation, as_of), held, now) {
            SweepAction::Purge(bound) => {
                purge(tx, &conversation, now, bound.as_str())?;
                *report.purged.entry(bound.as_str()).or_default() += 1;
            }
            SweepAction::HeldBack => report.held_back += 1,
            SweepAction::Keep => {}
        }
    }
    let next = if due.len() == limit { last } else { None };
    Ok((report, next, due.len()))
}

/// Purged = content gone; a tombstone (id hash, time, reason) remains (SPEC §3).
fn purge(
    tx: &mut dyn Tx,
    conversation: &Conversation,
    now: Timestamp,
    reason: &str,
) -> Result<(), StoreError> {
    let params = [
        conversation.owner.as_str().into(),
        conversation.id.as_str().into(),
    ];
    tx.execute(
        "DELETE FROM messages WHERE account_id = ? AND conversation_id = ?",
        &params,
    )?;
    tx.execute(
        "DELETE FROM feedback WHERE account_id = ? AND conversation_id = ?",
        &params,
    )?;
    tx.execute(
        "UPDATE conversations SET purged_at = ?, expires_at = NULL WHERE conversation_id = ?",
        &[now.unix_millis().into(), conversation.id.as_str().into()],
    )?;
    let hash: [u8; 32] = Sha256::digest(conversation.id.as_str().as_bytes()).into();
    tx.execute(
        "INSERT INTO tombstones (conversation_hash, purged_at, reason) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
        &[hash.as_slice().into(), now.unix_millis().into(), reason.into()],
    )?;
    Ok(())
}

// ---- queries ----

pub fn gate_of(
    tx: &mut dyn Tx,
    histories: &Histories,
    policy: &Policy,
    id: &AccountId,
    at: Timestamp,
) -> Result<Gate, StoreError> {
    let loaded = load_account(tx, histories, id, false)?;
    let history = admission::live_account(id, loaded.as_ref().map(|(_, h)| h))?;
    let (row, _) = loaded
        .as_ref()
        .ok_or_else(|| Refusal::UnknownAccount(id.clone()))?;
    Ok(gate(policy, history, next_key(row, at)?))
}

pub fn conversation_status(
    tx: &mut dyn Tx,
    histories: &Histories,
    policy: &Policy,
    id: &ConversationId,
    at: Timestamp,
) -> Result<ConversationStatus, StoreError> {
    let conversation = load_conversation(tx, id, false)?
        .ok_or_else(|| Refusal::UnknownConversation(id.clone()))?;
    let (row, owner) = load_account(tx, histories, &conversation.owner, false)?
        .ok_or_else(|| StoreError::corrupt(format!("conversation `{id}` has no account")))?;
    let as_of = next_key(&row, at)?;
    let exists = conversation.purged_before(as_of).is_none();
    let held = exists
        && custos_core::retention::is_held(&holds_on(tx, &conversation)?, &conversation, as_of);
    Ok(ConversationStatus {
        exists,
        visible: exists
            && conversation.deleted_before(as_of).is_none()
            && owner.erased_before(as_of).is_none(),
        expiry: if exists {
            expiry(policy, &owner, &conversation, as_of)
        } else {
            None
        },
        held,
        eligibility: eligibility(policy, &owner, &conversation, as_of),
    })
}

/// One eligible conversation with the content selected for training.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncludedConversation {
    pub id: ConversationId,
    pub account: AccountId,
    pub surface: Surface,
    pub messages: Vec<Message>,
    pub feedback: Vec<Feedback>,
}

/// A point-in-time training selection read from the store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredSnapshot {
    /// Sorted by conversation id.
    pub included: Vec<IncludedConversation>,
    pub excluded: BTreeMap<EligibilityReason, usize>,
}

/// The training selection at cutoff `at`, collected from the training scan.
pub fn snapshot(
    tx: &mut dyn Tx,
    policy: &Policy,
    at: Timestamp,
) -> Result<StoredSnapshot, StoreError> {
    let mut result = StoredSnapshot::default();
    crate::scan::scan_conversations(tx, at, at, true, &mut |scanned| {
        let (owner, conversation) = (scanned.owner, scanned.conversation);
        match eligibility(policy, owner, conversation, scanned.cutoff) {
            EligibilityReason::Eligible => {
                let content = training_content(policy, owner, conversation, scanned.cutoff);
                result.included.push(IncludedConversation {
                    id: conversation.id.clone(),
                    account: owner.id.clone(),
                    surface: conversation.surface,
                    messages: content
                        .messages
                        .into_iter()
                        .map(|m| scanned.message(m))
                        .collect::<Result<_, _>>()?,
                    feedback: content
                        .feedback
                        .into_iter()
                        .map(|f| scanned.feedback(f))
                        .collect::<Result<_, _>>()?,
                });
            }
            reason => *result.excluded.entry(reason).or_default() += 1,
        }
        Ok(())
    })?;
    result.included.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(result)
}

// ---- checkpoints and verification ----

/// A signed checkpoint of every chain head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub id: i64,
    pub at: Timestamp,
    pub accounts: i64,
    pub entries: i64,
    pub root: [u8; 32],
    /// Ed25519 over [`checkpoint_message`].
    pub signature: Vec<u8>,
}

/// Records a checkpoint if any chain grew since the last one; returns the newest checkpoint.
pub fn checkpoint(
    tx: &mut dyn Tx,
    key: &LedgerKey,
    at: Timestamp,
) -> Result<Option<Checkpoint>, StoreError> {
    // Only the chains that grew since the last checkpoint are read (a partial index finds them),
    // so sealing costs what changed, not what exists.
    let rows = tx.query(
        "SELECT account_id, ledger_len, ledger_head, checkpointed_len, erased_at FROM accounts \
         WHERE ledger_len <> checkpointed_len ORDER BY account_id",
        &[],
    )?;
    let mut changed = Vec::with_capacity(rows.len());
    let mut names = Vec::with_capacity(rows.len());
    let (mut new_accounts, mut new_entries) = (0i64, 0i64);
    for row in &rows {
        let (account, length, head, sealed) =
            (row.text(0)?, row.int(1)?, row.bytes(2)?, row.int(3)?);
        new_accounts += i64::from(sealed == 0);
        new_entries += length - sealed;
        names.push(key.ledger_name(&account, row.optional_int(4)?.is_some()));
        changed.push((account, length, head));
    }
    let last = latest_checkpoint(tx)?;
    if changed.is_empty() {
        return Ok(last);
    }
    let (id, previous_root, accounts, entries) = match &last {
        Some(last) => (last.id + 1, last.root, last.accounts, last.entries),
        None => (1, GENESIS, 0, 0),
    };
    // The root chains the previous checkpoint's root with the heads that changed since, so it
    // commits to every chain head there is.
    let root = heads_root(
        &previous_root,
        changed
            .iter()
            .zip(&names)
            .map(|((_, l, h), name)| (name.as_str(), *l, h.as_slice())),
    );
    let (accounts, entries) = (accounts + new_accounts, entries + new_entries);
    let signature = key.sign(&checkpoint_message(id, at, accounts, entries, &root));
    tx.execute(
        "INSERT INTO checkpoints (id, at, accounts, entries, root, signature) VALUES (?, ?, ?, ?, ?, ?)",
        &[id.into(), at.unix_millis().into(), accounts.into(), entries.into(), root.as_slice().into(), signature.as_slice().into()],
    )?;
    for (account, length, head) in changed {
        tx.execute(
            "INSERT INTO checkpoint_heads (checkpoint_id, account_id, ledger_len, head) VALUES (?, ?, ?, ?)",
            &[id.into(), account.as_str().into(), length.into(), head.as_slice().into()],
        )?;
        tx.execute(
            "UPDATE accounts SET checkpointed_len = ? WHERE account_id = ?",
            &[length.into(), account.into()],
        )?;
    }
    Ok(Some(Checkpoint {
        id,
        at,
        accounts,
        entries,
        root,
        signature: signature.to_vec(),
    }))
}

/// The newest signed checkpoint, if any.
pub fn latest_checkpoint(tx: &mut dyn Tx) -> Result<Option<Checkpoint>, StoreError> {
    tx.query_one(
        "SELECT id, at, accounts, entries, root, signature FROM checkpoints ORDER BY id DESC LIMIT 1",
        &[],
    )?
    .map(|row| {
        Ok(Checkpoint {
            id: row.int(0)?,
            at: time(row.int(1)?)?,
            accounts: row.int(2)?,
            entries: row.int(3)?,
            root: hash32(row.bytes(4)?)?,
            signature: row.bytes(5)?,
        })
    })
    .transpose()
}

/// What `ledger verify` found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub accounts: usize,
    pub entries: usize,
    pub checkpoints: usize,
    /// The first problem found, naming the entry or checkpoint; `None` when all is intact.
    pub problem: Option<String>,
}

/// Recomputes every chain and every checkpoint. Stops at the first problem.
pub fn verify(tx: &mut dyn Tx, key: &LedgerKey) -> Result<VerifyReport, StoreError> {
    let mut report = VerifyReport::default();
    let mut chains: BTreeMap<String, Vec<[u8; 32]>> = BTreeMap::new();
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    let rows = tx.query(
        "SELECT account_id, ledger_len, ledger_head, plan, preference, erased_at FROM accounts ORDER BY account_id",
        &[],
    )?;
    for row in &rows {
        let (account, length, head) = (row.text(0)?, row.int(1)?, row.bytes(2)?);
        let (plan_column, preference_column) = (row.optional_text(3)?, row.optional_text(4)?);
        let erased = row.optional_int(5)?.is_some();
        if erased != account.starts_with(ledger::PSEUDONYM_PREFIX) {
            report.problem = Some(format!(
                "account `{account}`: erased accounts, and only they, are stored under their pseudonym"
            ));
            return Ok(report);
        }
        let name = key.ledger_name(&account, erased);
        let entries = tx.query(
            &format!("SELECT {LEDGER_COLUMNS} FROM ledger WHERE account_id = ? ORDER BY idx"),
            &[account.as_str().into()],
        )?;
        let mut hashes = Vec::with_capacity(entries.len());
        let mut previous = GENESIS;
        for (position, row) in entries.iter().enumerate() {
            let problem = |what: &str| {
                Some(format!(
                    "account `{account}` ledger entry {position}: {what}"
                ))
            };
            let entry = match entry_from_row(row) {
                Ok(entry) => entry,
                Err(error) => {
                    report.problem = problem(&format!("unreadable ({error})"));
                    return Ok(report);
                }
            };
            report.entries += 1;
            if entry.idx != i64::try_from(position).unwrap_or(-1) {
                report.problem = problem(&format!(
                    "found entry {} in its place (removed or reordered)",
                    entry.idx
                ));
            } else if entry.prev_hash != previous {
                report.problem =
                    problem("does not follow the entry before it (removed, reordered or changed)");
            } else if entry.chained_hash(&previous, &name) != entry.hash {
                report.problem = problem("its content does not match its hash (changed)");
            }
            if report.problem.is_some() {
                return Ok(report);
            }
            previous = entry.hash;
            hashes.push(entry.hash);
        }
        if i64::try_from(hashes.len()).ok() != Some(length)
            || previous.as_slice() != head.as_slice()
        {
            report.problem = Some(format!(
                "account `{account}`: its ledger has {} entries but its head records {length} (an entry was removed or added)",
                hashes.len()
            ));
            return Ok(report);
        }
        // The gate's columns must say what the ledger says.
        let entries: Vec<Entry> = entries
            .iter()
            .map(entry_from_row)
            .collect::<Result<_, _>>()?;
        if let Some(history) = history_from(&entries)? {
            let plan = history.plan_at(END).as_str().to_owned();
            let preference = history.preference_at(END).as_str().to_owned();
            if plan_column.as_deref() != Some(plan.as_str())
                || preference_column.as_deref() != Some(preference.as_str())
            {
                report.problem = Some(format!(
                    "account `{account}`: its gate columns say plan {plan_column:?} and choice {preference_column:?}, but its ledger says `{plan}` and `{preference}` (changed outside custos)"
                ));
                return Ok(report);
            }
        }
        report.accounts += 1;
        chains.insert(account.clone(), hashes);
        names.insert(account, name);
    }
    let orphans = tx.query(
        "SELECT DISTINCT account_id FROM ledger WHERE account_id NOT IN (SELECT account_id FROM accounts)",
        &[],
    )?;
    if let Some(row) = orphans.first() {
        report.problem = Some(format!(
            "ledger entries of `{}` have no account (its account row was removed)",
            row.text(0)?
        ));
        return Ok(report);
    }

    let mut heads: BTreeMap<String, (i64, Vec<u8>)> = BTreeMap::new();
    let mut previous_root = GENESIS;
    let checkpoints = tx.query(
        "SELECT id, at, accounts, entries, root, signature FROM checkpoints ORDER BY id",
        &[],
    )?;
    for (position, row) in checkpoints.iter().enumerate() {
        let id = row.int(0)?;
        let problem = |what: String| Some(format!("checkpoint {id}: {what}"));
        if id != i64::try_from(position).unwrap_or(-1) + 1 {
            report.problem = problem(format!(
                "expected checkpoint {} here (removed or reordered)",
                position + 1
            ));
            return Ok(report);
        }
        let mut delta: Vec<(String, i64, Vec<u8>)> = Vec::new();
        for head in tx.query(
            "SELECT account_id, ledger_len, head FROM checkpoint_heads WHERE checkpoint_id = ?",
            &[id.into()],
        )? {
            let (account, length, hash) = (head.text(0)?, head.int(1)?, head.bytes(2)?);
            let chain_hash = usize::try_from(length - 1)
                .ok()
                .and_then(|i| chains.get(&account)?.get(i));
            if chain_hash.map(|h| h.as_slice()) != Some(hash.as_slice()) {
                report.problem = problem(format!(
                    "records entry {} of `{account}` with a hash the ledger no longer has (the ledger was changed after it was signed)",
                    length - 1
                ));
                return Ok(report);
            }
            delta.push((account.clone(), length, hash.clone()));
            heads.insert(account, (length, hash));
        }
        let root = heads_root(
            &previous_root,
            delta.iter().map(|(a, l, h)| {
                let name = names.get(a).map_or(a.as_str(), String::as_str);
                (name, *l, h.as_slice())
            }),
        );
        let (at, accounts, entries) = (time(row.int(1)?)?, row.int(2)?, row.int(3)?);
        let entries_now: i64 = heads.values().map(|(l, _)| *l).sum();
        let accounts_now = i64::try_from(heads.len()).unwrap_or(-1);
        if root.as_slice() != row.bytes(4)?.as_slice()
            || entries != entries_now
            || accounts != accounts_now
        {
            report.problem =
                problem("its root does not match the chain heads it covers".to_owned());
            return Ok(report);
        }
        if !key.verify(
            &checkpoint_message(id, at, accounts, entries, &root),
            &row.bytes(5)?,
        ) {
            report.problem =
                problem("its signature does not verify with this store's public key".to_owned());
            return Ok(report);
        }
        previous_root = root;
        report.checkpoints += 1;
    }
    Ok(report)
}

// ---- what the HTTP service reads and writes besides events ----

/// The two facts Gate needs about an account, kept in memory by the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateState {
    pub consumer_plan: bool,
    pub preference: Preference,
    pub erased: bool,
}

fn gate_state_of(policy: &Policy, history: &AccountHistory) -> GateState {
    GateState {
        consumer_plan: policy.is_consumer(history.plan_at(END)),
        preference: history.preference_at(END),
        erased: history.erased().is_some(),
    }
}

pub fn gate_state(
    tx: &mut dyn Tx,
    histories: &Histories,
    policy: &Policy,
    id: &AccountId,
) -> Result<Option<GateState>, StoreError> {
    Ok(load_account(tx, histories, id, false)?.map(|(_, history)| gate_state_of(policy, &history)))
}

/// Every account's gate state, streamed from one scan of the accounts table, for building the
/// service's in-memory index at start.
pub fn for_each_gate_state(
    tx: &mut dyn Tx,
    policy: &Policy,
    each: &mut dyn FnMut(&str, GateState),
) -> Result<(), StoreError> {
    tx.query_each(
        "SELECT account_id, plan, preference, erased_at FROM accounts",
        &[],
        &mut |row| {
            let plan = row.optional_str(1)?.unwrap_or_default();
            let preference = match row.optional_str(2)? {
                Some(text) => parse_or_corrupt(text, Preference::parse)?,
                None => Preference::Unset,
            };
            let state = GateState {
                consumer_plan: policy.is_consumer_plan_named(plan),
                preference,
                erased: row.optional_int(3)?.is_some(),
            };
            let id = row
                .optional_str(0)?
                .ok_or_else(|| StoreError::corrupt("an account has no id"))?;
            each(id, state);
            Ok(())
        },
    )
}

/// An account as its owner and the product see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountView {
    pub id: AccountId,
    pub plan: String,
    pub preference: Preference,
    /// The latest choice: when, where, and under which notice.
    pub decided: Option<(Timestamp, Channel, String)>,
    pub gate: Gate,
}

pub fn account_view(
    tx: &mut dyn Tx,
    histories: &Histories,
    policy: &Policy,
    id: &AccountId,
    at: Timestamp,
) -> Result<AccountView, StoreError> {
    let (row, history) = live_account(tx, histories, id)?;
    let as_of = next_key(&row, at)?;
    // The choice in force is the core's; the ledger adds the notice it was made under.
    let decided = match history.latest_choice_before(as_of) {
        Some(choice) => {
            let entries = ledger_entries(tx, id.as_str())?;
            let notice = entries
                .iter()
                .find(|e| e.kind == EntryKind::Choice && e.key == choice.key)
                .map(|e| e.notice_id.clone())
                .unwrap_or_default();
            Some((choice.key.at, choice.channel, notice))
        }
        None => None,
    };
    Ok(AccountView {
        id: id.clone(),
        plan: history.plan_at(as_of).as_str().to_owned(),
        preference: history.preference_at(as_of),
        decided,
        gate: gate(policy, &history, as_of),
    })
}

/// A conversation its account still sees (not deleted, not expired), with its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationSummary {
    pub id: ConversationId,
    pub surface: Surface,
    pub status: ConversationStatus,
}

pub fn visible_conversations(
    tx: &mut dyn Tx,
    histories: &Histories,
    policy: &Policy,
    account: &AccountId,
    at: Timestamp,
) -> Result<Vec<ConversationSummary>, StoreError> {
    live_account(tx, histories, account)?;
    let mut out = Vec::new();
    for id in conversations_of(tx, account)? {
        let status = conversation_status(tx, histories, policy, &id, at)?;
        // An expired conversation is gone for its user (SPEC §2), even before a sweep.
        let live = status.expiry.is_some_and(|expiry| expiry.at > at);
        if status.visible && live {
            let Some(conversation) = load_conversation(tx, &id, false)? else {
                continue;
            };
            out.push(ConversationSummary {
                id,
                surface: conversation.surface,
                status,
            });
        }
    }
    Ok(out)
}

/// Whether an event id was already recorded; records it if not. Runs in the event's own
/// transaction, so an event and its id commit together or not at all.
pub fn first_time(tx: &mut dyn Tx, event_id: &str, at: Timestamp) -> Result<bool, StoreError> {
    if tx
        .query_one(
            "SELECT 1 FROM event_ids WHERE event_id = ?",
            &[event_id.into()],
        )?
        .is_some()
    {
        return Ok(false);
    }
    tx.execute(
        "INSERT INTO event_ids (event_id, recorded_at) VALUES (?, ?)",
        &[event_id.into(), at.unix_millis().into()],
    )?;
    Ok(true)
}

// ---- access tokens ----

/// Who a token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub role: String,
    pub account: Option<AccountId>,
    /// When the token stops working, if ever.
    pub expires_at: Option<Timestamp>,
}

pub fn insert_token(
    tx: &mut dyn Tx,
    hash: &[u8; 32],
    role: &str,
    account: Option<&AccountId>,
    created_at: Timestamp,
    expires_at: Option<Timestamp>,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO tokens (token_hash, role, account_id, created_at, expires_at) VALUES (?, ?, ?, ?, ?)",
        &[
            hash.as_slice().into(),
            role.into(),
            account.map(AccountId::as_str).into(),
            created_at.unix_millis().into(),
            expires_at.map(Timestamp::unix_millis).into(),
        ],
    )?;
    Ok(())
}

/// The principal of a token hash that is known, unexpired and unrevoked at `now`.
pub fn principal(
    tx: &mut dyn Tx,
    hash: &[u8; 32],
    now: Timestamp,
) -> Result<Option<Principal>, StoreError> {
    let Some(row) = tx.query_one(
        "SELECT token_hash, role, account_id, expires_at, revoked_at FROM tokens WHERE token_hash = ?",
        &[hash.as_slice().into()],
    )?
    else {
        return Ok(None);
    };
    // The lookup found the row by its hash; compare again without an early exit, so that no
    // timing depends on how much of a guess was right.
    let stored = row.bytes(0)?;
    let same = stored.len() == 32
        && stored
            .iter()
            .zip(hash)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    let live = row
        .optional_int(3)?
        .is_none_or(|expires| now.unix_millis() < expires)
        && row.optional_int(4)?.is_none();
    if !same || !live {
        return Ok(None);
    }
    Ok(Some(Principal {
        role: row.text(1)?,
        account: row.optional_text(2)?.map(account_id).transpose()?,
        expires_at: row.optional_int(3)?.map(time).transpose()?,
    }))
}

pub fn revoke_token(tx: &mut dyn Tx, hash: &[u8; 32], now: Timestamp) -> Result<bool, StoreError> {
    let changed = tx.execute(
        "UPDATE tokens SET revoked_at = ? WHERE token_hash = ? AND revoked_at IS NULL",
        &[now.unix_millis().into(), hash.as_slice().into()],
    )?;
    Ok(changed > 0)
}

/// Fills the gate columns of accounts written before schema version 2, from each ledger as the
/// core reads it (the latest plan and choice in event order).
pub fn fill_gate_columns(tx: &mut dyn Tx) -> Result<(), StoreError> {
    for row in tx.query("SELECT account_id FROM accounts WHERE plan IS NULL", &[])? {
        let id = row.text(0)?;
        let Some(history) = history_from(&ledger_entries(tx, &id)?)? else {
            continue;
        };
        tx.execute(
            "UPDATE accounts SET plan = ?, preference = ? WHERE account_id = ?",
            &[
                history.plan_at(END).as_str().into(),
                history.preference_at(END).as_str().into(),
                id.into(),
            ],
        )?;
    }
    Ok(())
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
    let sql = format!(
        "SELECT {HOLD_COLUMNS}, actor, reason, released_by FROM holds ORDER BY placed_at, hold_id"
    );
    tx.query(&sql, &[])?
        .iter()
        .map(|row| {
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
        })
        .collect()
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
        let stored = describe(
            row.optional_int(1)?,
            row.optional_text(2)?,
            row.optional_text(3)?,
        );
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

/// Upgrades ledgers written before schema 4, whose hashes named accounts by id: each chain is
/// first verified under that encoding (a chain that does not verify stops the upgrade, and
/// nothing is changed), then chained again naming the account by pseudonym, with users recorded
/// as `user` rather than by id. Erased accounts are then pseudonymized. The old checkpoints
/// covered the old hashes, so they are removed and sealing starts over.
pub fn rechain_by_pseudonym(tx: &mut dyn Tx, histories: &Histories) -> Result<(), StoreError> {
    let accounts = tx.query("SELECT account_id, erased_at FROM accounts", &[])?;
    for row in &accounts {
        let account = account_id(row.text(0)?)?;
        let erased_at = row.optional_int(1)?;
        let mut entries = ledger_entries(tx, account.as_str())?;
        let mut previous = GENESIS;
        for entry in &entries {
            if entry.prev_hash != previous
                || entry.chained_hash_as(Encoding::V1, &previous, account.as_str()) != entry.hash
            {
                return Err(StoreError::corrupt(format!(
                    "cannot upgrade: the ledger of `{account}` does not verify at entry {} (run `custos ledger verify` with the custos that wrote it)",
                    entry.idx
                )));
            }
            previous = entry.hash;
        }
        let name = histories.pseudonym(account.as_str());
        let mut previous = GENESIS;
        for entry in &mut entries {
            if entry.actor.starts_with("user:") {
                entry.actor = "user".to_owned();
            }
            entry.prev_hash = previous;
            entry.hash = entry.chained_hash(&previous, &name);
            previous = entry.hash;
            tx.execute(
                "UPDATE ledger SET actor = ?, prev_hash = ?, hash = ? WHERE account_id = ? AND idx = ?",
                &[
                    entry.actor.as_str().into(),
                    entry.prev_hash.as_slice().into(),
                    entry.hash.as_slice().into(),
                    account.as_str().into(),
                    entry.idx.into(),
                ],
            )?;
        }
        tx.execute(
            "UPDATE accounts SET ledger_head = ?, checkpointed_len = 0 WHERE account_id = ?",
            &[previous.as_slice().into(), account.as_str().into()],
        )?;
        if let Some(at) = erased_at {
            pseudonymize(tx, histories, &account, time(at)?)?;
        }
    }
    tx.execute("DELETE FROM checkpoint_heads", &[])?;
    tx.execute("DELETE FROM checkpoints", &[])?;
    Ok(())
}
