//! Applying one command: load the records it names, ask the core's admission, carry out the
//! effect it answers (and nothing else), in the caller's transaction.

use custos_core::policy::Plan;
use custos_core::{
    AccountChange, AccountHistory, AccountId, Channel, Command, Conversation, Effect, EventKey,
    Named, Policy, Preference, Refusal, SweepReport, Timestamp, admit, expiry,
};

use crate::codec::insert_entry;
use crate::error::StoreError;
use crate::holds::hold;
use crate::ledger::{Entry, GENESIS, Record};
use crate::records::{
    AccountRow, END, Histories, conversations_of, load_account, load_conversation, next_key,
};
use crate::sql::{Tx, Value};
use crate::sweep::sweep;
use crate::views::{AccountView, GateState, account_view_of, gate_state_of};

/// Histories to cache, with their ledger lengths, once (and only if) the transaction commits:
/// those it appended to, and those it read under the account's lock (a write transaction may
/// have read its own uncommitted entries, which are committed then too).
#[derive(Debug, Default)]
pub struct WrittenHistories {
    pub appended: Vec<(i64, AccountHistory)>,
    pub read: Vec<(i64, AccountHistory)>,
}

impl WrittenHistories {
    pub fn new() -> WrittenHistories {
        WrittenHistories::default()
    }

    /// Starts over, for a retried transaction.
    pub fn clear(&mut self) {
        self.appended.clear();
        self.read.clear();
    }

    /// A history the transaction appended to.
    pub fn push(&mut self, appended: (i64, AccountHistory)) {
        self.appended.push(appended);
    }
}

/// What one command wrote, as its own transaction left it: a caller answers with this, never
/// with a second read that could see another request's write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Written {
    /// The ledger entries it appended, in chain order (a choice's entry is its receipt).
    pub entries: Vec<Entry>,
    /// The account as it stands after the write, as of its time; for a change to a live
    /// account's ledger (creation, choice, notice shown, plan change).
    pub account: Option<AccountView>,
    /// The account's gate facts after the write, for a change to its ledger (erasure too),
    /// with the ledger's length then: of two such answers for one account, the one with the
    /// longer ledger is the newer, whichever reaches a reader first.
    pub gate: Option<(AccountId, GateState, u64)>,
    /// What a sweep did.
    pub sweep: Option<SweepReport>,
}

/// The next entry of `account`'s chain at `key`, recording `record`, with its hash; moves the
/// account's head on to it.
pub(crate) fn chain_entry(
    policy: &Policy,
    account: &mut AccountRow,
    actor: &str,
    key: EventKey,
    record: &Record,
) -> Entry {
    let (kind, plan, preference, channel) = record.fields();
    let mut entry = Entry {
        account: account.id.clone(),
        idx: account.ledger_len,
        key,
        kind,
        plan,
        preference,
        channel,
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

/// A new account as its creation leaves it, before anything is written: its row, its history,
/// and its first ledger entries (created, then the signup choice if there is one), chained.
pub(crate) fn new_account(
    policy: &Policy,
    histories: &Histories,
    actor: &str,
    account: &AccountId,
    plan: Plan,
    signup_choice: Option<(Preference, Channel)>,
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
    let history = AccountHistory::opened(account.clone(), key, plan.clone(), signup_choice);
    let mut entries = vec![chain_entry(
        policy,
        &mut row,
        actor,
        key,
        &Record::Created(plan),
    )];
    if let Some((preference, channel)) = signup_choice {
        let choice = Record::Changed(AccountChange::Choice {
            preference,
            channel,
        });
        entries.push(chain_entry(policy, &mut row, actor, key, &choice));
    }
    (row, history, entries)
}

pub(crate) fn save_account(tx: &mut dyn Tx, account: &AccountRow) -> Result<(), StoreError> {
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

/// The expiry columns (`expires_at`, `retention_class`, `expiry_bound`) of a conversation, as
/// the core computes its expiry over every recorded event: stored, so that sweeps find due
/// conversations with a range scan.
pub(crate) fn expiry_columns(
    policy: &Policy,
    owner: &AccountHistory,
    conversation: &Conversation,
) -> [Value; 3] {
    let expiry = expiry(policy, owner, conversation, END);
    [
        expiry.map(|e| e.at.unix_millis()).into(),
        expiry.map(|e| e.class.as_str()).into(),
        expiry.map(|e| e.bound.as_str()).into(),
    ]
}

/// Stores a conversation's expiry columns, unless it was purged.
fn store_expiry(
    tx: &mut dyn Tx,
    policy: &Policy,
    owner: &AccountHistory,
    conversation: &Conversation,
) -> Result<(), StoreError> {
    if conversation.purged.is_some() {
        return Ok(());
    }
    let [at, class, bound] = expiry_columns(policy, owner, conversation);
    tx.execute(
        "UPDATE conversations SET expires_at = ?, retention_class = ?, expiry_bound = ? WHERE conversation_id = ?",
        &[at, class, bound, conversation.id.as_str().into()],
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

/// The gate's two facts sit beside the ledger they are derived from, so that the service can
/// load every account's gate with one table scan. `verify` checks they agree.
fn store_gate_columns(tx: &mut dyn Tx, history: &AccountHistory) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE accounts SET plan = ?, preference = ? WHERE account_id = ?",
        &[
            history.plan_at(END).as_str().into(),
            history.preference_at(END).as_str().into(),
            history.id.as_str().into(),
        ],
    )?;
    Ok(())
}

/// The records `command` names, as the transaction sees them. The account named is locked
/// until the transaction ends, which serializes the writers of one account and no others.
struct Loaded {
    account: Option<(AccountRow, AccountHistory)>,
    conversation: Option<Conversation>,
    hold: Option<custos_core::Hold>,
}

fn load_named(
    tx: &mut dyn Tx,
    histories: &Histories,
    command: &Command,
) -> Result<Loaded, StoreError> {
    let names = command.names();
    let conversation = match names.conversation {
        Some(id) => load_conversation(tx, id, false)?,
        None => None,
    };
    let account = match names.account.or(conversation.as_ref().map(|c| &c.owner)) {
        Some(id) => load_account(tx, histories, id, true)?,
        None => None,
    };
    let hold = match names.hold {
        Some(id) => hold(tx, id)?,
        None => None,
    };
    Ok(Loaded {
        account,
        conversation,
        hold,
    })
}

/// Applies one command at `at` on behalf of `actor`, in the caller's transaction: the core
/// admits it or refuses it, and only what it admits is written. A refusal comes before
/// anything is written. Events on a conversation go through [`crate::batch`] instead.
pub fn apply(
    tx: &mut dyn Tx,
    histories: &Histories,
    written: &mut WrittenHistories,
    policy: &Policy,
    at: Timestamp,
    command: &Command,
    actor: &str,
) -> Result<Result<Written, Refusal>, StoreError> {
    let loaded = load_named(tx, histories, command)?;
    // An account's events are ordered by its own counter; holds by time alone (a hold placed
    // at a time is seen by everything at that time).
    let key = match &loaded.account {
        _ if command.is_about_a_hold() => EventKey::new(at, u64::MAX),
        Some((row, _)) => next_key(row, at)?,
        None => EventKey::new(at, 0),
    };
    let named = Named {
        account: loaded.account.as_ref().map(|(_, history)| history),
        conversation: loaded.conversation.as_ref(),
        hold: loaded.hold.as_ref(),
    };
    let effect = match admit(policy, named, key, command) {
        Ok(effect) => effect,
        Err(refusal) => return Ok(Err(refusal)),
    };
    let mut carrier = Carrier {
        tx,
        histories,
        written,
        policy,
        at,
        key,
        actor,
    };
    carrier.carry_out(effect, loaded).map(Ok)
}

/// The core admitted what it should have refused: a broken invariant, not a refusal, since
/// writing may have begun.
fn admitted_wrongly(what: String) -> StoreError {
    StoreError::corrupt(format!("the core admitted {what}"))
}

/// Writes what an admitted effect records.
struct Carrier<'t, 'w> {
    tx: &'t mut dyn Tx,
    histories: &'w Histories,
    written: &'w mut WrittenHistories,
    policy: &'w Policy,
    at: Timestamp,
    key: EventKey,
    actor: &'w str,
}

impl Carrier<'_, '_> {
    fn carry_out(&mut self, effect: Effect<'_>, loaded: Loaded) -> Result<Written, StoreError> {
        let Loaded { account, .. } = loaded;
        match effect {
            Effect::AccountCreated {
                account,
                plan,
                signup_choice,
            } => self.create_account(account, plan, signup_choice),
            Effect::AccountChanged {
                account: id,
                change,
            } => {
                let (row, history) = account.ok_or_else(|| {
                    admitted_wrongly(format!("a change to unknown account `{id}`"))
                })?;
                self.change_account(row, history, &change)
            }
            Effect::Message { .. }
            | Effect::Feedback { .. }
            | Effect::ConversationDeleted { .. } => Err(admitted_wrongly(
                "an event on a conversation outside a batch".to_owned(),
            )),
            Effect::HoldPlaced { hold, target } => {
                // An erased account is held under its pseudonym: its id is not stored again.
                let (account_column, conversation_column) = match target {
                    custos_core::HoldTarget::Account(id) => {
                        let (row, _) = account.ok_or_else(|| {
                            admitted_wrongly(format!("a hold on unknown account `{id}`"))
                        })?;
                        (Some(row.id.as_str().to_owned()), None)
                    }
                    custos_core::HoldTarget::Conversation(id) => (None, Some(id.as_str())),
                };
                self.tx.execute(
                    "INSERT INTO holds (hold_id, account_id, conversation_id, placed_at, actor) VALUES (?, ?, ?, ?, ?)",
                    &[hold.as_str().into(), account_column.into(), conversation_column.into(), self.at.unix_millis().into(), self.actor.into()],
                )?;
                Ok(Written::default())
            }
            Effect::HoldReleased { hold } => {
                self.tx.execute(
                    "UPDATE holds SET released_at = ? WHERE hold_id = ?",
                    &[self.at.unix_millis().into(), hold.as_str().into()],
                )?;
                Ok(Written::default())
            }
            Effect::Sweep => Ok(Written {
                sweep: Some(sweep(self.tx, self.histories, self.policy, self.at)?),
                ..Written::default()
            }),
        }
    }

    fn create_account(
        &mut self,
        id: &AccountId,
        plan: Plan,
        signup_choice: Option<(Preference, Channel)>,
    ) -> Result<Written, StoreError> {
        self.tx.execute(
            "INSERT INTO accounts (account_id, next_seq, ledger_len, ledger_head, checkpointed_len) VALUES (?, 1, 0, ?, 0)",
            &[id.as_str().into(), GENESIS.as_slice().into()],
        )?;
        let (row, history, entries) = new_account(
            self.policy,
            self.histories,
            self.actor,
            id,
            plan,
            signup_choice,
            self.at,
        );
        for entry in &entries {
            insert_entry(self.tx, entry)?;
        }
        save_account(self.tx, &row)?;
        self.account_written(row, history, entries)
    }

    fn change_account(
        &mut self,
        mut row: AccountRow,
        mut history: AccountHistory,
        change: &AccountChange,
    ) -> Result<Written, StoreError> {
        let record = Record::Changed(change.clone());
        let entry = chain_entry(self.policy, &mut row, self.actor, self.key, &record);
        insert_entry(self.tx, &entry)?;
        history.record(self.key, change);
        if *change == AccountChange::Erased {
            row.erased_at = Some(self.at.unix_millis());
        }
        row.next_seq += 1;
        save_account(self.tx, &row)?;
        if change.moves_expiries() {
            store_expiries_of(self.tx, self.policy, &history)?;
        }
        self.account_written(row, history, vec![entry])
    }

    /// The end of every change to an account's ledger: its gate columns follow, the history is
    /// kept for the cache, and the answer is made from what was written.
    fn account_written(
        &mut self,
        row: AccountRow,
        history: AccountHistory,
        entries: Vec<Entry>,
    ) -> Result<Written, StoreError> {
        store_gate_columns(self.tx, &history)?;
        let gate = gate_state_of(self.policy, &history);
        let account = if history.erased().is_some() {
            // Erasure renames the account everywhere; nothing of it is shown any more.
            pseudonymize(self.tx, self.histories, &history.id, self.at)?;
            None
        } else {
            let as_of = next_key(&row, self.at)?;
            Some(account_view_of(
                self.tx,
                self.policy,
                &history,
                as_of,
                &entries,
            )?)
        };
        let id = history.id.clone();
        let version = u64::try_from(row.ledger_len).unwrap_or(0);
        self.written.push((row.ledger_len, history));
        Ok(Written {
            entries,
            account,
            gate: Some((id, gate, version)),
            sweep: None,
        })
    }
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
pub(crate) fn pseudonymize(
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
