//! An in-memory timeline of events, judged by the decisions of this crate.
//!
//! It is the reference model of custos: commands go through [`crate::admission`], state is kept
//! as [`crate::model`] records, and every answer comes from the decision functions. It holds no
//! clock: every command and query names its time.

use std::collections::{BTreeMap, HashMap};

use crate::admission::{self, Refusal};
use crate::content::{TrainingContent, training_content};
use crate::eligibility::{EligibilityReason, eligibility};
use crate::gate::{Gate, gate};
use crate::id::{AccountId, ConversationId, HoldId};
use crate::model::{
    AccountHistory, Channel, Choice, Conversation, EventKey, Feedback, Hold, HoldTarget, Message,
    Preference, Rating, Role, Surface,
};
use crate::policy::Policy;
use crate::retention::{Expiry, SweepAction, expiry, is_held, sweep_action};
use crate::time::Timestamp;

/// A change to the timeline (API.md §1 `do` steps).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    CreateAccount {
        account: AccountId,
        plan: String,
        choice: Option<(bool, Channel)>,
    },
    Choose {
        account: AccountId,
        allowed: bool,
        channel: Channel,
    },
    NoticeShown {
        account: AccountId,
    },
    ChangePlan {
        account: AccountId,
        plan: String,
    },
    Message {
        account: AccountId,
        conversation: ConversationId,
        surface: Surface,
        role: Role,
        text: String,
        incognito: bool,
    },
    Feedback {
        account: AccountId,
        conversation: ConversationId,
        rating: Rating,
        comment: Option<String>,
    },
    DeleteConversation {
        conversation: ConversationId,
    },
    PlaceHold {
        hold: HoldId,
        target: HoldTarget,
    },
    ReleaseHold {
        hold: HoldId,
    },
    EraseAccount {
        account: AccountId,
    },
    Sweep,
}

/// What a sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Conversations purged, by the step of Expiry that made them due.
    pub purged: BTreeMap<&'static str, usize>,
    /// Expired conversations kept because a hold covers them.
    pub held_back: usize,
}

impl SweepReport {
    /// Adds another part of the same sweep (sweeps run in batches).
    pub fn add(&mut self, other: &SweepReport) {
        for (reason, count) in &other.purged {
            *self.purged.entry(reason).or_default() += count;
        }
        self.held_back += other.held_back;
    }

    pub fn purged_total(&self) -> usize {
        self.purged.values().sum()
    }
}

/// The state of one conversation as the product and the user see it (API.md §1 `conversation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConversationStatus {
    pub exists: bool,
    pub visible: bool,
    /// `None` once purged.
    pub expiry: Option<Expiry>,
    pub held: bool,
    pub eligibility: EligibilityReason,
}

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

    fn live_account(&self, id: &AccountId) -> Result<&AccountHistory, Refusal> {
        admission::live_account(id, self.accounts.get(id))
    }

    fn live_account_mut(&mut self, id: &AccountId) -> Result<&mut AccountHistory, Refusal> {
        self.live_account(id)?;
        self.accounts
            .get_mut(id)
            .ok_or_else(|| Refusal::UnknownAccount(id.clone()))
    }

    fn conversation(&self, id: &ConversationId) -> Result<&Conversation, Refusal> {
        self.conversations
            .get(id)
            .ok_or_else(|| Refusal::UnknownConversation(id.clone()))
    }

    fn conversation_mut(&mut self, id: &ConversationId) -> Result<&mut Conversation, Refusal> {
        self.conversations
            .get_mut(id)
            .ok_or_else(|| Refusal::UnknownConversation(id.clone()))
    }

    fn apply_at(
        &mut self,
        key: EventKey,
        command: Command,
    ) -> Result<Option<SweepReport>, Refusal> {
        match command {
            Command::CreateAccount {
                account,
                plan,
                choice,
            } => {
                let plan = admission::admit_create_account(
                    &self.policy,
                    &account,
                    self.accounts.get(&account),
                    &plan,
                    choice.is_some(),
                    key.at,
                )?;
                let mut history = AccountHistory::new(account.clone(), key, plan);
                if let Some((allowed, channel)) = choice {
                    history.record_choice(Choice {
                        key,
                        preference: Preference::from_allowed(allowed),
                        channel,
                    });
                }
                self.accounts.insert(account, history);
            }
            Command::Choose {
                account,
                allowed,
                channel,
            } => {
                admission::admit_choice(&self.policy, self.live_account(&account)?, key)?;
                let preference = Preference::from_allowed(allowed);
                self.live_account_mut(&account)?.record_choice(Choice {
                    key,
                    preference,
                    channel,
                });
            }
            Command::NoticeShown { account } => {
                self.live_account_mut(&account)?.record_notice_shown(key);
            }
            Command::ChangePlan { account, plan } => {
                self.live_account(&account)?;
                let (plan, _) = self.policy.plan(&plan)?;
                self.live_account_mut(&account)?.record_plan(key, plan);
            }
            Command::Message {
                account,
                conversation,
                surface,
                role,
                text,
                incognito,
            } => {
                let owner = self.live_account(&account)?;
                match self.conversations.get(&conversation) {
                    Some(existing) => {
                        admission::admit_activity(&self.policy, owner, existing, key)?
                    }
                    None => {
                        admission::admit_new_conversation(owner, key)?;
                        let new =
                            Conversation::new(conversation.clone(), account, surface, incognito);
                        self.conversations.insert(conversation.clone(), new);
                    }
                }
                self.conversation_mut(&conversation)?
                    .record_message(Message { key, role, text });
            }
            Command::Feedback {
                account,
                conversation,
                rating,
                comment,
            } => {
                let owner = self.live_account(&account)?;
                admission::admit_activity(
                    &self.policy,
                    owner,
                    self.conversation(&conversation)?,
                    key,
                )?;
                self.conversation_mut(&conversation)?
                    .record_feedback(Feedback {
                        key,
                        rating,
                        comment,
                    });
            }
            Command::DeleteConversation { conversation } => {
                admission::admit_deletion(self.conversation(&conversation)?, key)?;
                self.conversation_mut(&conversation)?.deleted = Some(key);
            }
            Command::PlaceHold { hold, target } => {
                admission::admit_hold(&hold, self.holds.get(&hold))?;
                match &target {
                    // A hold may name an erased account: its data may still await the sweep.
                    HoldTarget::Account(account) if !self.accounts.contains_key(account) => {
                        return Err(Refusal::UnknownAccount(account.clone()));
                    }
                    HoldTarget::Conversation(conversation) => {
                        self.conversation(conversation)?;
                    }
                    HoldTarget::Account(_) => {}
                }
                self.holds.insert(
                    hold.clone(),
                    Hold {
                        id: hold,
                        target,
                        placed: key,
                        released: None,
                    },
                );
            }
            Command::ReleaseHold { hold } => {
                admission::admit_release(&hold, self.holds.get(&hold), key)?;
                if let Some(hold) = self.holds.get_mut(&hold) {
                    hold.released = Some(key);
                }
            }
            Command::EraseAccount { account } => {
                self.live_account_mut(&account)?.record_erasure(key);
            }
            Command::Sweep => return Ok(Some(self.sweep(key))),
        }
        Ok(None)
    }

    fn sweep(&mut self, key: EventKey) -> SweepReport {
        let mut report = SweepReport::default();
        for conversation in self.conversations.values_mut() {
            let Some(owner) = self.accounts.get(&conversation.owner) else {
                continue;
            };
            let due = expiry(&self.policy, owner, conversation, key);
            let held = is_held(self.holds.values(), conversation, key);
            match sweep_action(due, held, key.at) {
                SweepAction::Purge(bound) => {
                    purge(conversation, key);
                    *report.purged.entry(bound.as_str()).or_default() += 1;
                }
                SweepAction::HeldBack => report.held_back += 1,
                SweepAction::Keep => {}
            }
        }
        report
    }

    /// Gate(a, t) for a live account.
    pub fn gate(&self, account: &AccountId, at: Timestamp) -> Result<Gate, Refusal> {
        Ok(gate(
            &self.policy,
            self.live_account(account)?,
            self.query_key(at),
        ))
    }

    /// A conversation's status at `at`.
    pub fn conversation_status(
        &self,
        id: &ConversationId,
        at: Timestamp,
    ) -> Result<ConversationStatus, Refusal> {
        let conversation = self.conversation(id)?;
        let owner = self.owner(conversation)?;
        let as_of = self.query_key(at);
        let exists = conversation.purged_before(as_of).is_none();
        Ok(ConversationStatus {
            exists,
            visible: exists
                && conversation.deleted_before(as_of).is_none()
                && owner.erased_before(as_of).is_none(),
            expiry: if exists {
                expiry(&self.policy, owner, conversation, as_of)
            } else {
                None
            },
            held: exists && is_held(self.holds.values(), conversation, as_of),
            eligibility: eligibility(&self.policy, owner, conversation, as_of),
        })
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
            match eligibility(&self.policy, owner, conversation, as_of) {
                EligibilityReason::Eligible => snapshot.included.push((
                    id,
                    training_content(&self.policy, owner, conversation, as_of),
                )),
                reason => *snapshot.excluded.entry(reason).or_default() += 1,
            }
        }
        snapshot
    }
}

/// Purged = content gone (SPEC §3). The record keeps only what a tombstone keeps: that it was
/// purged and when, so that later events naming it are refused rather than starting afresh.
fn purge(conversation: &mut Conversation, key: EventKey) {
    conversation.messages = Vec::new();
    conversation.feedback = Vec::new();
    conversation.purged = Some(key);
}
