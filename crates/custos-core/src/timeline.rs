//! An in-memory timeline of events, judged by the decisions of this crate.
//!
//! It is the reference model of custos: each command goes through [`admission::admit`], which
//! answers the effect to record; state is kept as [`crate::model`] records, and every answer
//! comes from the decision functions. It holds no clock: every command and query names its time.

use std::collections::{BTreeMap, HashMap};

use crate::admission::{self, Effect, Named, Refusal, Texts};
use crate::command::Command;
use crate::content::TrainingContent;
use crate::eligibility::EligibilityReason;
use crate::gate::{Gate, gate};
use crate::id::{AccountId, ConversationId, HoldId};
use crate::model::{AccountHistory, Conversation, EventKey, Hold};
use crate::policy::Policy;
use crate::retention::{SweepReport, sweep_decision};
use crate::selection::{Selection, select};
use crate::status::{ConversationStatus, conversation_status};
use crate::time::Timestamp;

/// A point-in-time training selection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot<'a> {
    /// Eligible conversations, sorted by id, with the content selected for training.
    pub included: Vec<(&'a ConversationId, TrainingContent<'a>)>,
    /// Conversations left out, counted by the rule that excluded them.
    pub excluded: BTreeMap<EligibilityReason, usize>,
}

#[derive(Debug, Clone)]
pub struct Timeline {
    policy: Policy,
    accounts: HashMap<AccountId, AccountHistory>,
    conversations: BTreeMap<ConversationId, Conversation>,
    holds: HashMap<HoldId, Hold>,
    next_seq: u64,
}

impl Timeline {
    pub fn new(policy: Policy) -> Timeline {
        Timeline {
            policy,
            accounts: HashMap::new(),
            conversations: BTreeMap::new(),
            holds: HashMap::new(),
            next_seq: 0,
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn accounts(&self) -> impl Iterator<Item = &AccountHistory> {
        self.accounts.values()
    }

    pub fn account(&self, id: &AccountId) -> Option<&AccountHistory> {
        self.accounts.get(id)
    }

    pub fn conversations(&self) -> impl Iterator<Item = &Conversation> {
        self.conversations.values()
    }

    pub fn holds(&self) -> impl Iterator<Item = &Hold> {
        self.holds.values()
    }

    /// The key a query at `at` is answered as of: it sees every event applied so far.
    pub fn query_key(&self, at: Timestamp) -> EventKey {
        EventKey::new(at, self.next_seq)
    }

    /// Applies one command at `at`; a refused command changes nothing.
    pub fn apply(
        &mut self,
        at: Timestamp,
        command: Command,
    ) -> Result<Option<SweepReport>, Refusal> {
        let key = EventKey::new(at, self.next_seq);
        let report = self.apply_at(key, command)?;
        self.next_seq += 1;
        Ok(report)
    }

    /// The records `command` names, as they stand now.
    fn named(&self, command: &Command) -> Named<'_> {
        let names = command.names();
        let conversation = names.conversation.and_then(|id| self.conversations.get(id));
        let account = names.account.or(conversation.map(|c| &c.owner));
        Named {
            account: account.and_then(|id| self.accounts.get(id)),
            conversation,
            hold: names.hold.and_then(|id| self.holds.get(id)),
        }
    }

    fn apply_at(
        &mut self,
        key: EventKey,
        command: Command,
    ) -> Result<Option<SweepReport>, Refusal> {
        let effect = admission::admit(&self.policy, self.named(&command), key, &command)?;
        match effect {
            Effect::AccountCreated {
                account,
                plan,
                signup_choice,
            } => {
                let history = AccountHistory::opened(account.clone(), key, plan, signup_choice);
                self.accounts.insert(account.clone(), history);
            }
            Effect::AccountChanged { account, change } => {
                if let Some(history) = self.accounts.get_mut(account) {
                    history.record(key, &change);
                }
            }
            Effect::Message { .. }
            | Effect::Feedback { .. }
            | Effect::ConversationDeleted { .. } => {
                effect.record_in(&mut self.conversations, key, Texts::Kept);
            }
            Effect::HoldPlaced { hold, target } => {
                let placed = Hold {
                    id: hold.clone(),
                    target: target.clone(),
                    placed: key,
                    released: None,
                };
                self.holds.insert(hold.clone(), placed);
            }
            Effect::HoldReleased { hold } => {
                if let Some(hold) = self.holds.get_mut(hold) {
                    hold.released = Some(key);
                }
            }
            Effect::Sweep => return Ok(Some(self.sweep(key))),
        }
        Ok(None)
    }

    fn sweep(&mut self, key: EventKey) -> SweepReport {
        let mut report = SweepReport::default();
        for conversation in self.conversations.values_mut() {
            let Some(owner) = self.accounts.get(&conversation.owner) else {
                continue;
            };
            let action =
                sweep_decision(&self.policy, owner, conversation, self.holds.values(), key);
            if let crate::retention::SweepAction::Purge(_) = action {
                purge(conversation, key);
            }
            report.count(action);
        }
        report
    }

    /// Gate(a, t) for a live account.
    pub fn gate(&self, account: &AccountId, at: Timestamp) -> Result<Gate, Refusal> {
        let history = admission::live_account(account, self.accounts.get(account))?;
        Ok(gate(&self.policy, history, self.query_key(at)))
    }

    /// A conversation's status at `at`.
    pub fn conversation_status(
        &self,
        id: &ConversationId,
        at: Timestamp,
    ) -> Result<ConversationStatus, Refusal> {
        let conversation = self
            .conversations
            .get(id)
            .ok_or_else(|| Refusal::UnknownConversation(id.clone()))?;
        let owner = self.owner(conversation)?;
        let as_of = self.query_key(at);
        Ok(conversation_status(
            &self.policy,
            owner,
            conversation,
            self.holds.values(),
            as_of,
        ))
    }

    fn owner(&self, conversation: &Conversation) -> Result<&AccountHistory, Refusal> {
        self.accounts
            .get(&conversation.owner)
            .ok_or_else(|| Refusal::UnknownAccount(conversation.owner.clone()))
    }

    /// The `model_training` selection at cutoff `at`.
    pub fn snapshot(&self, at: Timestamp) -> Snapshot<'_> {
        let as_of = self.query_key(at);
        let mut snapshot = Snapshot {
            included: Vec::new(),
            excluded: BTreeMap::new(),
        };
        for (id, conversation) in &self.conversations {
            let Ok(owner) = self.owner(conversation) else {
                continue;
            };
            match select(&self.policy, owner, conversation, as_of, as_of) {
                Selection::Included(content) => snapshot.included.push((id, content)),
                Selection::Excluded(reason) => *snapshot.excluded.entry(reason).or_default() += 1,
            }
        }
        snapshot
    }
}

/// Purged = content gone (docs/POLICY.md, The decisions). The record keeps only what a tombstone keeps: that it was
/// purged and when, so that later events naming it are refused rather than starting afresh.
fn purge(conversation: &mut Conversation, key: EventKey) {
    conversation.messages = Vec::new();
    conversation.feedback = Vec::new();
    conversation.purged = Some(key);
}
