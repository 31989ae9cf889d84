//! Bulk loading of new accounts, for `custos demo` and imports of existing histories.
//!
//! The per-event path reads an account and a conversation, asks the core, and writes, for every
//! event. Here each new account's whole history is admitted by the same core functions in
//! memory first, and then written once: one account row, its ledger entries, each conversation
//! with its final expiry, its messages and feedback, through the engine's own row writers. A
//! command the core refuses is skipped alone, exactly as a refused event of a batch is. The
//! conformance suite checks that the result answers like the per-event path on every backend.
//!
//! Only new accounts and their own new conversations can be loaded this way; holds, erasure
//! and sweeps go through the per-event path. A loaded account or conversation
//! that already exists violates a key, and the whole transaction fails with nothing written.

use std::collections::BTreeMap;

use custos_core::{
    AccountHistory, Command, Conversation, ConversationId, Effect, EventKey, Named, Policy, Rating,
    Refusal, Role, Texts, Timestamp, admit,
};

use crate::apply::{WrittenHistories, chain_entry, new_account};
use crate::batch::{CONVERSATION_ROW, conversation_values};
use crate::codec::{
    FEEDBACK_ROW, LEDGER_ROW, MESSAGE_ROW, entry_values, feedback_values, message_values, seq,
};
use crate::error::StoreError;
use crate::ledger::{Entry, Record};
use crate::records::{AccountRow, END, Histories};
use crate::sql::{Tx, Value};

/// One account being loaded: the core's records of it and the rows still to write.
struct Loading<'a> {
    row: AccountRow,
    history: AccountHistory,
    entries: Vec<Entry>,
    conversations: BTreeMap<ConversationId, Conversation>,
    messages: Vec<(&'a ConversationId, EventKey, Role, &'a str)>,
    feedback: Vec<(&'a ConversationId, EventKey, Rating, Option<&'a str>)>,
}

fn unsupported(command: &Command) -> StoreError {
    StoreError::Database(format!(
        "bulk loading takes one new account's own events only, not {command:?}"
    ))
}

/// New accounts' histories admitted by the core in memory, with the rows that record them,
/// ready to be written in one transaction. Admitting needs no database, so a loader can admit
/// the next accounts while the last ones are written.
#[derive(Debug)]
pub struct AdmittedAccounts {
    rows: TableRows,
    pub(crate) written: WrittenHistories,
    /// Each command's outcome, in the order given.
    pub(crate) outcomes: Vec<Vec<Result<(), Refusal>>>,
    /// The time of the latest command.
    pub(crate) last: Timestamp,
}

impl AdmittedAccounts {
    /// Writes the admitted rows, each table in one go.
    pub(crate) fn write(&self, tx: &mut dyn Tx) -> Result<(), StoreError> {
        self.rows.write(tx)
    }
}

/// Admits new accounts' histories, each given in time order with its first command creating
/// the account, and makes the rows that record them.
pub fn admit_new_accounts(
    policy: &Policy,
    histories: &Histories,
    actor: &str,
    accounts: &[Vec<(Timestamp, Command)>],
) -> Result<AdmittedAccounts, StoreError> {
    let mut rows = TableRows::default();
    let mut written = WrittenHistories::new();
    let mut outcomes = Vec::with_capacity(accounts.len());
    let mut last = Timestamp::MIN;
    for commands in accounts {
        let mut loading: Option<Loading<'_>> = None;
        let mut account_outcomes = Vec::with_capacity(commands.len());
        for (at, command) in commands {
            last = last.max(*at);
            account_outcomes.push(admit_in_memory(
                policy,
                histories,
                actor,
                &mut loading,
                *at,
                command,
            )?);
        }
        outcomes.push(account_outcomes);
        if let Some(loading) = loading {
            rows.add(policy, &loading);
            written.push((loading.row.ledger_len, loading.history));
        }
    }
    Ok(AdmittedAccounts {
        rows,
        written,
        outcomes,
        last,
    })
}

/// Asks the core's admission about one command, as the per-event path does, and carries out
/// its effect on the account in memory.
fn admit_in_memory<'a>(
    policy: &Policy,
    histories: &Histories,
    actor: &str,
    loading: &mut Option<Loading<'a>>,
    at: Timestamp,
    command: &'a Command,
) -> Result<Result<(), Refusal>, StoreError> {
    // Erasure renames the account everywhere (`apply::pseudonymize`), and holds and sweeps
    // span accounts: they take the per-event path.
    if matches!(
        command,
        Command::EraseAccount { .. }
            | Command::PlaceHold { .. }
            | Command::ReleaseHold { .. }
            | Command::Sweep
    ) {
        return Err(unsupported(command));
    }
    let names = command.names();
    let current = loading.as_ref();
    if let (Some(state), Some(account)) = (current, names.account)
        && state.history.id != *account
    {
        return Err(unsupported(command));
    }
    let named = Named {
        account: current.map(|state| &state.history),
        conversation: current.and_then(|state| state.conversations.get(names.conversation?)),
        hold: None,
    };
    let key = match current {
        Some(state) => EventKey::new(at, seq(state.row.next_seq)?),
        None => EventKey::new(at, 0),
    };
    let effect = match admit(policy, named, key, command) {
        Ok(effect) => effect,
        Err(refusal) => return Ok(Err(refusal)),
    };
    if let Effect::AccountCreated {
        account,
        plan,
        signup_choice,
    } = effect
    {
        let (row, history, entries) =
            new_account(policy, histories, actor, account, plan, signup_choice, at);
        *loading = Some(Loading {
            row,
            history,
            entries,
            conversations: BTreeMap::new(),
            messages: Vec::new(),
            feedback: Vec::new(),
        });
        return Ok(Ok(()));
    }
    let state = loading.as_mut().ok_or_else(|| unsupported(command))?;
    match effect {
        Effect::AccountChanged { change, .. } => {
            let record = Record::Changed(change.clone());
            let entry = chain_entry(policy, &mut state.row, actor, key, &record);
            state.entries.push(entry);
            state.history.record(key, &change);
        }
        Effect::Message { .. } | Effect::Feedback { .. } | Effect::ConversationDeleted { .. } => {
            effect.record_in(&mut state.conversations, key, Texts::Dropped);
            match effect {
                Effect::Message {
                    conversation,
                    role,
                    text,
                    ..
                } => state.messages.push((conversation, key, role, text)),
                Effect::Feedback {
                    conversation,
                    rating,
                    comment,
                    ..
                } => state.feedback.push((conversation, key, rating, comment)),
                _ => {}
            }
        }
        Effect::AccountCreated { .. }
        | Effect::HoldPlaced { .. }
        | Effect::HoldReleased { .. }
        | Effect::Sweep => return Err(unsupported(command)),
    }
    state.row.next_seq += 1;
    Ok(Ok(()))
}

const ACCOUNT_ROW: &[&str] = &[
    "account_id",
    "next_seq",
    "ledger_len",
    "ledger_head",
    "checkpointed_len",
    "erased_at",
    "plan",
    "preference",
];

/// The rows the admitted accounts leave behind, the same the per-event path writes, gathered
/// per table so that each is written in one go (binary `COPY` on PostgreSQL).
#[derive(Debug, Default)]
struct TableRows {
    accounts: Vec<Vec<Value>>,
    ledger: Vec<Vec<Value>>,
    conversations: Vec<Vec<Value>>,
    messages: Vec<Vec<Value>>,
    feedback: Vec<Vec<Value>>,
}

impl TableRows {
    fn add(&mut self, policy: &Policy, loading: &Loading<'_>) {
        let row = &loading.row;
        let history = &loading.history;
        self.accounts.push(vec![
            row.id.as_str().into(),
            row.next_seq.into(),
            row.ledger_len.into(),
            row.ledger_head.as_slice().into(),
            Value::Int(0),
            row.erased_at.into(),
            history.plan_at(END).as_str().into(),
            history.preference_at(END).as_str().into(),
        ]);
        self.ledger.extend(loading.entries.iter().map(entry_values));
        self.conversations.extend(
            loading
                .conversations
                .values()
                .map(|conversation| conversation_values(policy, history, conversation)),
        );
        for (conversation, key, role, text) in &loading.messages {
            self.messages
                .push(message_values(&row.id, conversation, *key, *role, text));
        }
        for (conversation, key, rating, comment) in &loading.feedback {
            self.feedback.push(feedback_values(
                &row.id,
                conversation,
                *key,
                *rating,
                *comment,
            ));
        }
    }

    /// Accounts first, so that every later row's account exists when it arrives.
    fn write(&self, tx: &mut dyn Tx) -> Result<(), StoreError> {
        tx.insert_rows("accounts", ACCOUNT_ROW, &self.accounts)?;
        tx.insert_rows("ledger", LEDGER_ROW, &self.ledger)?;
        tx.insert_rows("conversations", CONVERSATION_ROW, &self.conversations)?;
        tx.insert_rows("messages", MESSAGE_ROW, &self.messages)?;
        tx.insert_rows("feedback", FEEDBACK_ROW, &self.feedback)
    }
}
