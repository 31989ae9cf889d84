//! What the product, its users and the export pipeline read: the gate, a conversation's
//! status, an account as its owner sees it, its conversations, the training selection, and the
//! gate's two facts for the service's index. Every answer is the core's.

use std::collections::BTreeMap;

use custos_core::admission::live_account;
use custos_core::{
    AccountHistory, AccountId, Channel, ConversationId, ConversationStatus, EligibilityReason,
    EventKey, Feedback, Gate, Message, Policy, Preference, Refusal, Selection, Surface, Timestamp,
    conversation_status, gate, select,
};

use crate::codec::parse_or_corrupt;
use crate::error::StoreError;
use crate::holds::holds_on;
use crate::ledger::{AccountKey, Entry, EntryKind};
use crate::records::{
    END, Histories, conversations_of, ledger_entries, load_account, load_conversation, next_key,
};
use crate::scan::scan_conversations;
use crate::sql::{Columns, Tx};

/// Gate(a, t) for a live account.
pub fn gate_of(
    tx: &mut dyn Tx,
    histories: &Histories,
    policy: &Policy,
    id: &AccountId,
    at: Timestamp,
) -> Result<Gate, StoreError> {
    let (row, history) = live(tx, histories, id)?;
    Ok(gate(policy, &history, next_key(&row, at)?))
}

/// A live account's row and history, read without a lock.
fn live(
    tx: &mut dyn Tx,
    histories: &Histories,
    id: &AccountId,
) -> Result<(crate::records::AccountRow, AccountHistory), StoreError> {
    let loaded = load_account(tx, histories, id, false)?;
    live_account(id, loaded.as_ref().map(|(_, history)| history))?;
    loaded.ok_or_else(|| Refusal::UnknownAccount(id.clone()).into())
}

pub fn conversation_status_of(
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
    let holds = holds_on(tx, &conversation)?;
    Ok(conversation_status(
        policy,
        &owner,
        &conversation,
        &holds,
        next_key(&row, at)?,
    ))
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
    scan_conversations(tx, at, at, true, &mut |scanned| {
        let (owner, conversation) = (scanned.owner, scanned.conversation);
        match select(policy, owner, conversation, scanned.cutoff, scanned.now) {
            Selection::Included(content) => result.included.push(IncludedConversation {
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
            }),
            Selection::Excluded(reason) => *result.excluded.entry(reason).or_default() += 1,
        }
        Ok(())
    })?;
    result.included.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(result)
}

/// The two facts Gate needs about an account, kept in memory by the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateState {
    pub consumer_plan: bool,
    pub preference: Preference,
    pub erased: bool,
}

/// The gate facts of an account's history, with every recorded event seen.
pub(crate) fn gate_state_of(policy: &Policy, history: &AccountHistory) -> GateState {
    GateState {
        consumer_plan: policy.is_consumer(history.plan_at(END)),
        preference: history.preference_at(END),
        erased: history.erased().is_some(),
    }
}

/// An account's gate facts and the length of the ledger they are as of (see
/// [`crate::Written::gate`]).
pub fn gate_state(
    tx: &mut dyn Tx,
    histories: &Histories,
    policy: &Policy,
    id: &AccountId,
) -> Result<Option<(GateState, u64)>, StoreError> {
    Ok(
        load_account(tx, histories, id, false)?.map(|(row, history)| {
            let version = u64::try_from(row.ledger_len).unwrap_or(0);
            (gate_state_of(policy, &history), version)
        }),
    )
}

/// Where a reader of the gate's change feed is: rows marked at or above it may be news to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct FeedPosition(pub i64);

/// The change feed's position in this transaction's snapshot (see `schema::feed_triggers`).
pub fn feed_position(tx: &mut dyn Tx) -> Result<FeedPosition, StoreError> {
    Ok(FeedPosition(
        tx.query_one(crate::schema::feed_position_query(tx.dialect()), &[])?
            .map_or(Ok(0), |row| row.int(0))?,
    ))
}

/// An account's gate inputs as the index keeps them: its key, its state, and the ledger length
/// the state is as of.
pub type AccountGateState = (AccountKey, GateState, u64);

/// The columns of `accounts` a gate state is read from ([`gate_state_of_row`]).
pub const GATE_STATE_COLUMNS: &str = "account_id, plan, preference, erased_at, ledger_len";

/// An account's gate state from a row of [`GATE_STATE_COLUMNS`], with its index key and the
/// ledger length it is as of.
pub fn gate_state_of_row(
    histories: &Histories,
    policy: &Policy,
    row: &dyn Columns,
) -> Result<AccountGateState, StoreError> {
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
    Ok((
        histories.account_key(id),
        state,
        u64::try_from(row.int(4)?).unwrap_or(0),
    ))
}

/// The gate states of the accounts marked at or after `since`, streamed from one snapshot of
/// the accounts table. Answers the position to read from next, fixed in the same snapshot, so
/// that a write committing at any moment is read by this call or the next one; a row may be
/// read twice, which the index's versions make harmless. (The index built at start reads
/// every account instead: `Store::for_each_gate_state`.)
pub fn gate_changes(
    tx: &mut dyn Tx,
    histories: &Histories,
    policy: &Policy,
    since: FeedPosition,
    each: &mut dyn FnMut(AccountKey, GateState, u64),
) -> Result<FeedPosition, StoreError> {
    let position = feed_position(tx)?;
    tx.query_each(
        &format!("SELECT {GATE_STATE_COLUMNS} FROM accounts WHERE changed >= ?"),
        &[since.0.into()],
        &mut |row| {
            let (key, state, version) = gate_state_of_row(histories, policy, row)?;
            each(key, state, version);
            Ok(())
        },
    )?;
    Ok(position)
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
    let (row, history) = live(tx, histories, id)?;
    account_view_of(tx, policy, &history, next_key(&row, at)?, &[])
}

/// The view of `history` as of `as_of`. The choice in force is the core's; its ledger entry
/// adds the notice it was made under, looked for first among `known` entries (those a write
/// has just appended), then in the ledger.
pub(crate) fn account_view_of(
    tx: &mut dyn Tx,
    policy: &Policy,
    history: &AccountHistory,
    as_of: EventKey,
    known: &[Entry],
) -> Result<AccountView, StoreError> {
    let decided = match history.latest_choice_before(as_of) {
        Some(choice) => {
            let of_choice = |e: &&Entry| e.kind == EntryKind::Choice && e.key == choice.key;
            let notice = match known.iter().find(of_choice) {
                Some(entry) => entry.notice_id.clone(),
                None => ledger_entries(tx, history.id.as_str())?
                    .iter()
                    .find(of_choice)
                    .map(|e| e.notice_id.clone())
                    .unwrap_or_default(),
            };
            Some((choice.key.at, choice.channel, notice))
        }
        None => None,
    };
    Ok(AccountView {
        id: history.id.clone(),
        plan: history.plan_at(as_of).as_str().to_owned(),
        preference: history.preference_at(as_of),
        decided,
        gate: gate(policy, history, as_of),
    })
}

/// A conversation its account still sees (not deleted, not expired), with its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationSummary {
    pub id: ConversationId,
    pub surface: Surface,
    pub status: ConversationStatus,
}

/// The conversations in the account's history at `at` (visible, not expired), with their
/// status.
pub fn visible_conversations(
    tx: &mut dyn Tx,
    histories: &Histories,
    policy: &Policy,
    account: &AccountId,
    at: Timestamp,
) -> Result<Vec<ConversationSummary>, StoreError> {
    live(tx, histories, account)?;
    let mut out = Vec::new();
    for id in conversations_of(tx, account)? {
        let status = conversation_status_of(tx, histories, policy, &id, at)?;
        if status.in_owner_history(at) {
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
