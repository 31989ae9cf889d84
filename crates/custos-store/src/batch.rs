//! Many events in one transaction, each decided by the core in order, written together.
//!
//! The events of a conversation (messages, feedback, deletions) are most of what a product
//! sends, and each would otherwise cost several statements: its id, its conversation, its
//! account's lock and counter, its row, the conversation's expiry. Here a batch asks the
//! database once for what it needs to know before deciding:
//!
//! - which of its event ids are recorded already, and which conversations it names exist
//!   (one query per few dozen events);
//! - each account's row, locked, the first time one of its events comes (`FOR UPDATE` on
//!   PostgreSQL), and each existing conversation, read under its owner's lock;
//!
//! keeps what it admitted in memory, so that a later event of the batch sees the earlier ones,
//! and writes it at the end, each table in one go ([`Tx::insert_rows`], binary `COPY` on
//! PostgreSQL): the rows, one counter update per account and one expiry per conversation.
//! Every other command (account changes, holds, sweeps) first writes what is pending, then
//! takes the per-command path of `apply`, which sees it.
//!
//! The core refuses before anything of an event is written, so a refused event needs no
//! savepoint: it leaves nothing behind, and its id stays unrecorded (a later delivery is
//! decided again). Two batches that create the same conversation, or record the same event id,
//! at once meet on the table's unique key, and the later one is retried from the start.

use std::collections::{HashMap, HashSet};

use custos_core::{
    AccountHistory, AccountId, Command, Conversation, ConversationId, Effect, EventKey, Named,
    Policy, Refusal, Texts, Timestamp, admit,
};

use crate::apply::{self, WrittenHistories, expiry_columns};
use crate::codec::{FEEDBACK_ROW, MESSAGE_ROW, as_i64, feedback_values, message_values};
use crate::error::StoreError;
use crate::records::{
    AccountRow, Histories, load_account, load_conversation, load_conversations, lock_accounts,
    next_key,
};
use crate::sql::{Tx, Value, present};

/// What became of one event of a batch.
pub(crate) enum Outcome {
    Applied(apply::Written),
    /// Its id was recorded before: nothing was decided or written again.
    Duplicate,
    Refused(Refusal),
}

/// An account one of the batch's events named: locked by this transaction.
struct Locked {
    row: AccountRow,
    history: AccountHistory,
    /// Whether its counter moved since it was last written.
    moved: bool,
}

/// A conversation as the batch has left it so far.
struct Touched {
    record: Conversation,
    /// Not yet stored at all: written whole at the end.
    new: bool,
    /// Changed since it was last written.
    changed: bool,
}

pub(crate) struct Batch<'t, 'w> {
    tx: &'t mut dyn Tx,
    histories: &'w Histories,
    written: &'w mut WrittenHistories,
    policy: &'w Policy,
    actor: &'w str,
    /// Event ids recorded before the batch, or by one of its events.
    recorded: HashSet<String>,
    /// Conversations the batch named that the store did not have when it began.
    absent: HashSet<ConversationId>,
    accounts: HashMap<AccountId, Locked>,
    conversations: HashMap<ConversationId, Touched>,
    event_rows: Vec<Vec<Value>>,
    message_rows: Vec<Vec<Value>>,
    feedback_rows: Vec<Vec<Value>>,
}

/// The commands a batch decides in memory: those on one conversation.
fn on_a_conversation(command: &Command) -> bool {
    matches!(
        command,
        Command::Message { .. } | Command::Feedback { .. } | Command::DeleteConversation { .. }
    )
}

fn admitted_wrongly(what: &str) -> StoreError {
    StoreError::corrupt(format!("the core admitted {what}"))
}

impl<'t, 'w> Batch<'t, 'w> {
    /// Starts a batch of `events` (ids, times, commands) in `tx`, asking first which ids are
    /// recorded and which named conversations exist.
    pub(crate) fn new(
        tx: &'t mut dyn Tx,
        histories: &'w Histories,
        written: &'w mut WrittenHistories,
        policy: &'w Policy,
        actor: &'w str,
        events: &[(Option<&str>, Timestamp, &Command)],
    ) -> Result<Batch<'t, 'w>, StoreError> {
        let ids: Vec<&str> = events.iter().filter_map(|(id, _, _)| *id).collect();
        let recorded = present(tx, "event_ids", "event_id", &ids)?;
        let named: Vec<&ConversationId> = events
            .iter()
            .filter(|(_, _, command)| on_a_conversation(command))
            .filter_map(|(_, _, command)| command.names().conversation)
            .collect();
        let named_accounts: Vec<&AccountId> = events
            .iter()
            .filter(|(_, _, command)| on_a_conversation(command))
            .filter_map(|(_, _, command)| command.names().account)
            .collect();
        let accounts: HashMap<AccountId, Locked> = lock_accounts(tx, histories, &named_accounts)?
            .into_iter()
            .map(|(id, (row, history))| {
                keep_after_commit(written, histories, &row, &history);
                let locked = Locked {
                    row,
                    history,
                    moved: false,
                };
                (id, locked)
            })
            .collect();
        // Read after the locks: a conversation of a locked account is read under its lock,
        // and is kept; any other is read again when an event needs it (`owner_of`, `read`).
        let names: Vec<&str> = named.iter().map(|id| id.as_str()).collect();
        let mut existing = load_conversations(tx, &names)?;
        let absent = named
            .into_iter()
            .filter(|id| !existing.contains_key(*id))
            .cloned()
            .collect();
        existing.retain(|_, record| accounts.contains_key(&record.owner));
        let conversations = existing
            .into_iter()
            .map(|(id, record)| {
                let touched = Touched {
                    record,
                    new: false,
                    changed: false,
                };
                (id, touched)
            })
            .collect();
        Ok(Batch {
            tx,
            histories,
            written,
            policy,
            actor,
            recorded,
            absent,
            accounts,
            conversations,
            event_rows: Vec::new(),
            message_rows: Vec::new(),
            feedback_rows: Vec::new(),
        })
    }

    /// Decides one event, after every earlier one, and carries out what the core admits.
    pub(crate) fn apply(
        &mut self,
        event_id: Option<&str>,
        at: Timestamp,
        command: &Command,
    ) -> Result<Outcome, StoreError> {
        if event_id.is_some_and(|id| self.recorded.contains(id)) {
            return Ok(Outcome::Duplicate);
        }
        let outcome = if on_a_conversation(command) {
            self.conversation_event(at, command)?
        } else {
            // The per-command path reads the store: it must see what is pending, and what it
            // writes may change any account or conversation kept here.
            self.flush()?;
            self.accounts.clear();
            self.conversations.clear();
            apply::apply(
                self.tx,
                self.histories,
                self.written,
                self.policy,
                at,
                command,
                self.actor,
            )?
            .map_or_else(Outcome::Refused, Outcome::Applied)
        };
        if let (Some(id), Outcome::Applied(_)) = (event_id, &outcome) {
            self.recorded.insert(id.to_owned());
            self.event_rows
                .push(vec![id.into(), at.unix_millis().into()]);
        }
        Ok(outcome)
    }

    /// Locks the account and keeps it as the batch leaves it, unless the store has none.
    fn lock(&mut self, id: &AccountId) -> Result<(), StoreError> {
        if self.accounts.contains_key(id) {
            return Ok(());
        }
        let Some((row, history)) = load_account(self.tx, self.histories, id, true)? else {
            return Ok(());
        };
        keep_after_commit(self.written, self.histories, &row, &history);
        self.accounts.insert(
            id.clone(),
            Locked {
                row,
                history,
                moved: false,
            },
        );
        Ok(())
    }

    /// The owner of a conversation that an event names alone (a deletion), locked; the caller
    /// then reads the conversation again, under that lock, unless the batch held it already.
    fn owner_of(&mut self, id: &ConversationId) -> Result<Option<AccountId>, StoreError> {
        if let Some(touched) = self.conversations.get(id)
            && self.accounts.contains_key(&touched.record.owner)
        {
            return Ok(Some(touched.record.owner.clone()));
        }
        // Read without its owner's lock (or not at all): nothing of it was admitted.
        self.conversations.remove(id);
        self.read(id)?;
        let Some(touched) = self.conversations.remove(id) else {
            return Ok(None);
        };
        self.lock(&touched.record.owner)?;
        Ok(Some(touched.record.owner))
    }

    /// Reads a conversation into the batch unless it is there, or known to be absent.
    fn read(&mut self, id: &ConversationId) -> Result<(), StoreError> {
        if self.conversations.contains_key(id) || self.absent.contains(id) {
            return Ok(());
        }
        match load_conversation(self.tx, id, false)? {
            Some(record) => {
                self.conversations.insert(
                    id.clone(),
                    Touched {
                        record,
                        new: false,
                        changed: false,
                    },
                );
            }
            None => {
                self.absent.insert(id.clone());
            }
        }
        Ok(())
    }

    /// A message, feedback or deletion: decided on the records as the batch has left them,
    /// each read under its owner's lock, and carried out in memory.
    fn conversation_event(
        &mut self,
        at: Timestamp,
        command: &Command,
    ) -> Result<Outcome, StoreError> {
        let names = command.names();
        let conversation_id = names
            .conversation
            .ok_or_else(|| admitted_wrongly("a conversation event without a conversation"))?;
        let account_id = match names.account {
            Some(id) => Some(id.clone()),
            None => self.owner_of(conversation_id)?,
        };
        if let Some(id) = &account_id {
            self.lock(id)?;
        }
        self.read(conversation_id)?;
        if let (None, Some(touched)) = (names.account, self.conversations.get(conversation_id))
            && !self.accounts.contains_key(&touched.record.owner)
        {
            // Its owner changed (was erased) between the two reads: decided again from the start.
            return Err(StoreError::Conflict(1));
        }
        let account = account_id.as_ref().and_then(|id| self.accounts.get(id));
        let key = match account {
            Some(locked) => next_key(&locked.row, at)?,
            None => EventKey::new(at, 0),
        };
        let named = Named {
            account: account.map(|locked| &locked.history),
            conversation: self.conversations.get(conversation_id).map(|c| &c.record),
            hold: None,
        };
        let effect = match admit(self.policy, named, key, command) {
            Ok(effect) => effect,
            Err(refusal) => return Ok(Outcome::Refused(refusal)),
        };
        self.carry_out(effect, key)?;
        let locked = account_id
            .and_then(|id| self.accounts.get_mut(&id))
            .ok_or_else(|| admitted_wrongly("an event on a conversation with no account"))?;
        locked.row.next_seq += 1;
        locked.moved = true;
        Ok(Outcome::Applied(apply::Written::default()))
    }

    fn carry_out(&mut self, effect: Effect<'_>, key: EventKey) -> Result<(), StoreError> {
        if let Some(record) = effect.started_conversation() {
            self.absent.remove(&record.id);
            let touched = Touched {
                record,
                new: true,
                changed: true,
            };
            self.conversations
                .insert(touched.record.id.clone(), touched);
        }
        match effect {
            Effect::Message {
                account,
                conversation,
                role,
                text,
                ..
            } => self
                .message_rows
                .push(message_values(account, conversation, key, role, text)),
            Effect::Feedback {
                account,
                conversation,
                rating,
                comment,
            } => self.feedback_rows.push(feedback_values(
                account,
                conversation,
                key,
                rating,
                comment,
            )),
            _ => {}
        }
        let id = effect
            .conversation()
            .ok_or_else(|| admitted_wrongly("another effect for a conversation event"))?;
        let touched = self.touched(id)?;
        // The texts are in their rows; decisions need only keys, roles and ratings.
        effect.record_on(&mut touched.record, key, Texts::Dropped);
        touched.changed = true;
        Ok(())
    }

    fn touched(&mut self, id: &ConversationId) -> Result<&mut Touched, StoreError> {
        self.conversations
            .get_mut(id)
            .ok_or_else(|| admitted_wrongly(&format!("an event on unknown conversation `{id}`")))
    }

    /// Writes what the batch has decided so far: new rows table by table, then each changed
    /// conversation's state and expiry, then each account's counter.
    pub(crate) fn flush(&mut self) -> Result<(), StoreError> {
        let tx = &mut *self.tx;
        tx.insert_rows(
            "event_ids",
            &["event_id", "recorded_at"],
            &std::mem::take(&mut self.event_rows),
        )?;
        let mut new_conversations = Vec::new();
        let mut expiries = Vec::new();
        for touched in self.conversations.values_mut().filter(|c| c.changed) {
            let owner = self
                .accounts
                .get(&touched.record.owner)
                .map(|locked| &locked.history)
                .ok_or_else(|| {
                    admitted_wrongly(&format!(
                        "an event on conversation `{}` without its owner's lock",
                        touched.record.id
                    ))
                })?;
            if touched.new {
                new_conversations.push(conversation_values(self.policy, owner, &touched.record));
            } else {
                if let Some(deleted) = touched.record.deleted {
                    tx.execute(
                        "UPDATE conversations SET deleted_at = ?, deleted_seq = ? WHERE conversation_id = ? AND deleted_at IS NULL",
                        &[deleted.at.unix_millis().into(), as_i64(deleted.seq).into(), touched.record.id.as_str().into()],
                    )?;
                }
                if touched.record.purged.is_none() {
                    let mut row = vec![touched.record.id.as_str().into()];
                    row.extend(expiry_columns(self.policy, owner, &touched.record));
                    expiries.push(row);
                }
            }
            touched.new = false;
            touched.changed = false;
        }
        tx.insert_rows("conversations", CONVERSATION_ROW, &new_conversations)?;
        tx.update_rows(
            "conversations",
            "conversation_id",
            &["expires_at", "retention_class", "expiry_bound"],
            &expiries,
        )?;
        tx.insert_rows(
            "messages",
            MESSAGE_ROW,
            &std::mem::take(&mut self.message_rows),
        )?;
        tx.insert_rows(
            "feedback",
            FEEDBACK_ROW,
            &std::mem::take(&mut self.feedback_rows),
        )?;
        // Only the counters moved: conversation events append nothing to a ledger.
        let mut counters = Vec::new();
        for locked in self.accounts.values_mut().filter(|a| a.moved) {
            counters.push(vec![
                locked.row.id.as_str().into(),
                locked.row.next_seq.into(),
            ]);
            locked.moved = false;
        }
        tx.update_rows("accounts", "account_id", &["next_seq"], &counters)?;
        Ok(())
    }
}

/// A conversation row's columns, in the order of [`conversation_values`].
pub(crate) const CONVERSATION_ROW: &[&str] = &[
    "account_id",
    "conversation_id",
    "surface",
    "incognito",
    "deleted_at",
    "deleted_seq",
    "expires_at",
    "retention_class",
    "expiry_bound",
];

/// A new conversation's row, with its expiry as the core computes it over all its activity.
pub(crate) fn conversation_values(
    policy: &Policy,
    owner: &AccountHistory,
    conversation: &Conversation,
) -> Vec<Value> {
    let deleted = conversation.deleted;
    let mut row: Vec<Value> = vec![
        conversation.owner.as_str().into(),
        conversation.id.as_str().into(),
        conversation.surface.as_str().into(),
        conversation.incognito.into(),
        deleted.map(|k| k.at.unix_millis()).into(),
        deleted.map(|k| as_i64(k.seq)).into(),
    ];
    row.extend(expiry_columns(policy, owner, conversation));
    row
}

/// A history read under its account's lock reaches the cache after the commit, unless the
/// cache held it already (it was read from there).
fn keep_after_commit(
    written: &mut WrittenHistories,
    histories: &Histories,
    row: &AccountRow,
    history: &AccountHistory,
) {
    if !histories.holds(&history.id, row.ledger_len) {
        written.read.push((row.ledger_len, history.clone()));
    }
}
