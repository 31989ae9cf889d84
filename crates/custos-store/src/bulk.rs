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
    AccountHistory, Command, Conversation, ConversationId, Effect, EventKey, Feedback, Message,
    Named, Policy, Rating, Refusal, Role, Timestamp, admit, expiry,
};

use crate::apply::{WrittenHistories, chain_entry, new_account};
use crate::codec::{insert_entry, insert_feedback, insert_message, seq};
use crate::error::StoreError;
use crate::ledger::{Entry, Record};
use crate::records::{AccountRow, END, Histories};
use crate::sql::Tx;

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

/// Admits and writes one new account's history, given in time order, its first command
/// creating it. Returns each command's outcome, in order, and the written history.
pub fn load_new_account(
    tx: &mut dyn Tx,
    policy: &Policy,
    histories: &Histories,
    actor: &str,
    commands: &[(Timestamp, Command)],
    written: &mut WrittenHistories,
) -> Result<Vec<Result<(), Refusal>>, StoreError> {
    let mut loading: Option<Loading<'_>> = None;
    let mut outcomes = Vec::with_capacity(commands.len());
    for (at, command) in commands {
        outcomes.push(admit_in_memory(
            policy,
            histories,
            actor,
            &mut loading,
            *at,
            command,
        )?);
    }
    let Some(loading) = loading else {
        return Ok(outcomes);
    };
    write(tx, policy, &loading)?;
    written.push((loading.row.ledger_len, loading.history));
    Ok(outcomes)
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
        Effect::Message {
            account,
            conversation,
            starts,
            role,
            text,
        } => {
            if let Some((surface, incognito)) = starts {
                let new =
                    Conversation::new(conversation.clone(), account.clone(), surface, incognito);
                state.conversations.insert(conversation.clone(), new);
            }
            if let Some(record) = state.conversations.get_mut(conversation) {
                record.record_message(Message {
                    key,
                    role,
                    text: String::new(),
                });
            }
            state.messages.push((conversation, key, role, text));
        }
        Effect::Feedback {
            conversation,
            rating,
            comment,
            ..
        } => {
            if let Some(record) = state.conversations.get_mut(conversation) {
                record.record_feedback(Feedback {
                    key,
                    rating,
                    comment: None,
                });
            }
            state.feedback.push((conversation, key, rating, comment));
        }
        Effect::ConversationDeleted { conversation } => {
            if let Some(record) = state.conversations.get_mut(conversation) {
                record.deleted = Some(key);
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

/// Writes the admitted account: the same rows the per-event path leaves behind.
fn write(tx: &mut dyn Tx, policy: &Policy, loading: &Loading<'_>) -> Result<(), StoreError> {
    let row = &loading.row;
    let history = &loading.history;
    tx.execute(
        "INSERT INTO accounts (account_id, next_seq, ledger_len, ledger_head, checkpointed_len, erased_at, plan, preference) VALUES (?, ?, ?, ?, 0, ?, ?, ?)",
        &[
            row.id.as_str().into(),
            row.next_seq.into(),
            row.ledger_len.into(),
            row.ledger_head.as_slice().into(),
            row.erased_at.into(),
            history.plan_at(END).as_str().into(),
            history.preference_at(END).as_str().into(),
        ],
    )?;
    for entry in &loading.entries {
        insert_entry(tx, entry)?;
    }
    for conversation in loading.conversations.values() {
        let expiry = expiry(policy, history, conversation, END);
        let deleted = conversation.deleted;
        tx.execute(
            "INSERT INTO conversations (account_id, conversation_id, surface, incognito, deleted_at, deleted_seq, expires_at, retention_class, expiry_bound) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            &[
                row.id.as_str().into(),
                conversation.id.as_str().into(),
                conversation.surface.as_str().into(),
                conversation.incognito.into(),
                deleted.map(|k| k.at.unix_millis()).into(),
                deleted.map(|k| i64::try_from(k.seq).unwrap_or(i64::MAX)).into(),
                expiry.map(|e| e.at.unix_millis()).into(),
                expiry.map(|e| e.class.as_str()).into(),
                expiry.map(|e| e.bound.as_str()).into(),
            ],
        )?;
    }
    for (conversation, key, role, text) in &loading.messages {
        insert_message(tx, &row.id, conversation, *key, *role, text)?;
    }
    for (conversation, key, rating, comment) in &loading.feedback {
        insert_feedback(tx, &row.id, conversation, *key, *rating, *comment)?;
    }
    Ok(())
}
