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

use custos_core::admission::{self, Refusal};
use custos_core::{
    AccountHistory, AccountId, Choice, Command, Conversation, ConversationId, EventKey, Feedback,
    Message, Policy, Preference, Rating, Role, Timestamp, expiry,
};

use crate::StoreError;
use crate::engine::{
    AccountRow, END, Histories, NewEntry, Written, chain_entry, insert_entry, insert_feedback,
    insert_message, new_account,
};
use crate::ledger::{Entry, EntryKind};
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
    written: &mut Written,
) -> Result<Vec<Result<(), Refusal>>, StoreError> {
    let mut loading: Option<Loading<'_>> = None;
    let mut outcomes = Vec::with_capacity(commands.len());
    for (at, command) in commands {
        outcomes.push(admit(policy, histories, actor, &mut loading, *at, command)?);
    }
    let Some(loading) = loading else {
        return Ok(outcomes);
    };
    write(tx, policy, &loading)?;
    written.push((loading.row.ledger_len, loading.history));
    Ok(outcomes)
}

/// Applies one command to the account in memory, if the core admits it. The checks and their
/// order are those of `engine::apply_command`.
fn admit<'a>(
    policy: &Policy,
    histories: &Histories,
    actor: &str,
    loading: &mut Option<Loading<'a>>,
    at: Timestamp,
    command: &'a Command,
) -> Result<Result<(), Refusal>, StoreError> {
    if let Command::CreateAccount {
        account,
        plan,
        choice,
    } = command
    {
        let existing = loading.as_ref().map(|l| &l.history);
        if existing.is_some_and(|h| h.id != *account) {
            return Err(unsupported(command));
        }
        let plan = match admission::admit_create_account(
            policy,
            account,
            existing,
            plan,
            choice.is_some(),
            at,
        ) {
            Ok(plan) => plan,
            Err(refusal) => return Ok(Err(refusal)),
        };
        let (row, history, entries) =
            new_account(policy, histories, actor, account, plan, *choice, at);
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
    let Some(state) = loading.as_mut() else {
        // Not created (yet, or its creation was refused): what the per-event path answers.
        return match command {
            Command::Choose { account, .. }
            | Command::NoticeShown { account }
            | Command::ChangePlan { account, .. }
            | Command::Message { account, .. }
            | Command::Feedback { account, .. }
            | Command::EraseAccount { account } => {
                Ok(Err(Refusal::UnknownAccount(account.clone())))
            }
            Command::DeleteConversation { conversation } => {
                Ok(Err(Refusal::UnknownConversation(conversation.clone())))
            }
            _ => Err(unsupported(command)),
        };
    };
    let key = EventKey::new(
        at,
        u64::try_from(state.row.next_seq).map_err(|_| StoreError::corrupt("negative sequence"))?,
    );
    let owned = |id: &AccountId| {
        if *id == state.history.id {
            Ok(())
        } else {
            Err(unsupported(command))
        }
    };
    let outcome = match command {
        Command::CreateAccount { .. } => unreachable!("handled above"),
        Command::Choose {
            account,
            allowed,
            channel,
        } => {
            owned(account)?;
            admission::live_account(account, Some(&state.history))
                .and_then(|history| admission::admit_choice(policy, history, key))
                .map(|()| {
                    let preference = Preference::from_allowed(*allowed);
                    state.entries.push(chain_entry(
                        policy,
                        &mut state.row,
                        actor,
                        NewEntry {
                            key,
                            kind: EntryKind::Choice,
                            plan: None,
                            choice: Some((preference, *channel)),
                        },
                    ));
                    state.history.record_choice(Choice {
                        key,
                        preference,
                        channel: *channel,
                    });
                })
        }
        Command::NoticeShown { account } => {
            owned(account)?;
            admission::live_account(account, Some(&state.history))
                .map(|_| ())
                .map(|()| {
                    state.entries.push(chain_entry(
                        policy,
                        &mut state.row,
                        actor,
                        NewEntry {
                            key,
                            kind: EntryKind::NoticeShown,
                            plan: None,
                            choice: None,
                        },
                    ));
                    state.history.record_notice_shown(key);
                })
        }
        Command::ChangePlan { account, plan } => {
            owned(account)?;
            admission::live_account(account, Some(&state.history))
                .and_then(|_| policy.plan(plan).map_err(Refusal::from))
                .map(|(plan, _)| {
                    state.entries.push(chain_entry(
                        policy,
                        &mut state.row,
                        actor,
                        NewEntry {
                            key,
                            kind: EntryKind::PlanChanged,
                            plan: Some(plan.as_str()),
                            choice: None,
                        },
                    ));
                    state.history.record_plan(key, plan);
                })
        }
        Command::Message {
            account,
            conversation,
            surface,
            role,
            text,
            incognito,
        } => {
            owned(account)?;
            let admitted = admission::live_account(account, Some(&state.history)).and_then(|_| {
                match state.conversations.get(conversation) {
                    Some(existing) => {
                        admission::admit_activity(policy, &state.history, existing, key)
                    }
                    None => admission::admit_new_conversation(&state.history, key),
                }
            });
            admitted.map(|()| {
                state
                    .conversations
                    .entry(conversation.clone())
                    .or_insert_with(|| {
                        Conversation::new(
                            conversation.clone(),
                            account.clone(),
                            *surface,
                            *incognito,
                        )
                    })
                    .record_message(Message {
                        key,
                        role: *role,
                        text: String::new(),
                    });
                state.messages.push((conversation, key, *role, text));
            })
        }
        Command::Feedback {
            account,
            conversation,
            rating,
            comment,
        } => {
            owned(account)?;
            let history = &state.history;
            let admitted = admission::live_account(account, Some(history)).and_then(|_| {
                let record = state
                    .conversations
                    .get_mut(conversation)
                    .ok_or_else(|| Refusal::UnknownConversation(conversation.clone()))?;
                admission::admit_activity(policy, history, record, key)?;
                Ok(record)
            });
            admitted.map(|record| {
                record.record_feedback(Feedback {
                    key,
                    rating: *rating,
                    comment: None,
                });
                state
                    .feedback
                    .push((conversation, key, *rating, comment.as_deref()));
            })
        }
        Command::DeleteConversation { conversation } => state
            .conversations
            .get_mut(conversation)
            .ok_or_else(|| Refusal::UnknownConversation(conversation.clone()))
            .and_then(|record| {
                admission::admit_deletion(record, key)?;
                record.deleted = Some(key);
                Ok(())
            }),
        // Erasure renames the account everywhere (`engine::pseudonymize`); it takes the
        // per-event path.
        Command::EraseAccount { .. }
        | Command::PlaceHold { .. }
        | Command::ReleaseHold { .. }
        | Command::Sweep => {
            return Err(unsupported(command));
        }
    };
    if outcome.is_ok() {
        state.row.next_seq += 1;
    }
    Ok(outcome)
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
