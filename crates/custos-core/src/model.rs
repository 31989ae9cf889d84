//! What custos knows: accounts with their plan and choice histories, and conversations with their
//! activity. Plain data; the decisions in [`crate::gate`], [`crate::retention`],
//! [`crate::eligibility`] and [`crate::content`] read it.

use crate::id::{AccountId, ConversationId, HoldId};
use crate::policy::{Plan, Policy};
use crate::time::Timestamp;

/// The place of an event in the total order of docs/POLICY.md, Terms: by time, then by order of arrival.
///
/// A decision made "as of" a key sees exactly the events whose keys are smaller: those with an
/// earlier time, and those with the same time that arrived before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventKey {
    pub at: Timestamp,
    /// Arrival order; unique per store.
    pub seq: u64,
}

impl EventKey {
    pub fn new(at: Timestamp, seq: u64) -> EventKey {
        EventKey { at, seq }
    }
}

closed_set! {
    /// A user's training choice (R1).
    pub enum Preference {
        Unset => "unset",
        Allowed => "allowed",
        Declined => "declined",
    }
}

impl Preference {
    pub fn from_allowed(allowed: bool) -> Preference {
        if allowed {
            Preference::Allowed
        } else {
            Preference::Declined
        }
    }
}

closed_set! {
    /// Where a choice was made (R11).
    pub enum Channel {
        Signup => "signup",
        Notice => "notice",
        Settings => "settings",
    }
}

/// One recorded choice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub key: EventKey,
    pub preference: Preference,
    pub channel: Channel,
}

/// A change to an account after its creation, as its ledger records it: what admission answers
/// for a choice, a notice shown, a plan change or an erasure, and what a stored ledger entry
/// is read back as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountChange {
    Choice {
        preference: Preference,
        channel: Channel,
    },
    /// The notice was shown and the user chose "Not now": evidence only.
    NoticeShown,
    PlanChanged(Plan),
    Erased,
}

impl AccountChange {
    /// Whether it may move the expiry of the account's conversations: a choice, a plan change
    /// or an erasure may (Expiry steps 1, 2 and 4); a notice shown moves nothing.
    pub fn moves_expiries(&self) -> bool {
        !matches!(self, AccountChange::NoticeShown)
    }
}

/// Everything about an account that decisions depend on.
///
/// INVARIANT: `plan_changes` and `choices` are sorted by key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountHistory {
    pub id: AccountId,
    created: EventKey,
    initial_plan: Plan,
    plan_changes: Vec<(EventKey, Plan)>,
    choices: Vec<Choice>,
    notices_shown: Vec<EventKey>,
    erased: Option<EventKey>,
}

impl AccountHistory {
    pub fn new(id: AccountId, created: EventKey, plan: Plan) -> AccountHistory {
        AccountHistory {
            id,
            created,
            initial_plan: plan,
            plan_changes: Vec::new(),
            choices: Vec::new(),
            notices_shown: Vec::new(),
            erased: None,
        }
    }

    /// An account as its creation at `key` leaves it: on `plan`, with the choice made at signup
    /// if there was one (recorded at the same key).
    pub fn opened(
        id: AccountId,
        key: EventKey,
        plan: Plan,
        signup_choice: Option<(Preference, Channel)>,
    ) -> AccountHistory {
        let mut history = AccountHistory::new(id, key, plan);
        if let Some((preference, channel)) = signup_choice {
            history.record_choice(Choice {
                key,
                preference,
                channel,
            });
        }
        history
    }

    pub fn created(&self) -> EventKey {
        self.created
    }

    pub fn initial_plan(&self) -> &Plan {
        &self.initial_plan
    }

    /// Records a change at `key`. Events may arrive out of time order, so each is inserted in
    /// its place in event order.
    pub fn record(&mut self, key: EventKey, change: &AccountChange) {
        match change {
            AccountChange::Choice {
                preference,
                channel,
            } => self.record_choice(Choice {
                key,
                preference: *preference,
                channel: *channel,
            }),
            AccountChange::NoticeShown => self.record_notice_shown(key),
            AccountChange::PlanChanged(plan) => self.record_plan(key, plan.clone()),
            AccountChange::Erased => self.record_erasure(key),
        }
    }

    fn record_plan(&mut self, key: EventKey, plan: Plan) {
        let at = self.plan_changes.partition_point(|(k, _)| *k < key);
        self.plan_changes.insert(at, (key, plan));
    }

    fn record_choice(&mut self, choice: Choice) {
        let at = self.choices.partition_point(|c| c.key < choice.key);
        self.choices.insert(at, choice);
    }

    fn record_notice_shown(&mut self, key: EventKey) {
        let at = self.notices_shown.partition_point(|k| *k < key);
        self.notices_shown.insert(at, key);
    }

    fn record_erasure(&mut self, key: EventKey) {
        self.erased = Some(self.erased.map_or(key, |earlier| earlier.min(key)));
    }

    /// Plan changes after creation, in event order.
    pub fn plan_changes(&self) -> &[(EventKey, Plan)] {
        &self.plan_changes
    }

    pub fn choices(&self) -> &[Choice] {
        &self.choices
    }

    pub fn notices_shown(&self) -> &[EventKey] {
        &self.notices_shown
    }

    /// When the account was erased, if it was erased before `as_of`.
    pub fn erased_before(&self, as_of: EventKey) -> Option<EventKey> {
        self.erased.filter(|key| *key < as_of)
    }

    pub fn erased(&self) -> Option<EventKey> {
        self.erased
    }

    /// plan(a, e): the plan in force for an event at `as_of` (the latest change before it).
    pub fn plan_at(&self, as_of: EventKey) -> &Plan {
        let index = self.plan_changes.partition_point(|(k, _)| *k < as_of);
        index
            .checked_sub(1)
            .and_then(|i| self.plan_changes.get(i))
            .map_or(&self.initial_plan, |(_, plan)| plan)
    }

    /// pref(a, e): the choice in force for an event at `as_of`; `Unset` before the first one.
    pub fn preference_at(&self, as_of: EventKey) -> Preference {
        self.latest_choice_before(as_of)
            .map_or(Preference::Unset, |c| c.preference)
    }

    pub fn latest_choice_before(&self, as_of: EventKey) -> Option<&Choice> {
        let index = self.choices.partition_point(|c| c.key < as_of);
        index.checked_sub(1).and_then(|i| self.choices.get(i))
    }

    /// covered(e) for an activity of this account at `key` (docs/POLICY.md, Terms), before the conversation's
    /// own incognito flag is considered.
    pub fn training_allowed_at(&self, policy: &Policy, key: EventKey) -> bool {
        policy.is_consumer(self.plan_at(key)) && self.preference_at(key) == Preference::Allowed
    }

    /// The account's withdrawals before `as_of`, in event order: each choice of `declined` while
    /// the choice was `allowed`, and each move from a consumer to a business plan while it was
    /// `allowed` (docs/POLICY.md, Terms).
    pub fn withdrawals_before(&self, policy: &Policy, as_of: EventKey) -> Vec<EventKey> {
        let mut withdrawals = Vec::new();
        let mut preference = Preference::Unset;
        let mut consumer = policy.is_consumer(&self.initial_plan);
        let mut plans = self.plan_changes.iter().peekable();
        let mut choices = self.choices.iter().peekable();
        loop {
            let next_plan = plans.peek().map(|(key, _)| *key);
            let next_choice = choices.peek().map(|c| c.key);
            let take_plan = match (next_plan, next_choice) {
                (Some(p), Some(c)) => p < c,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            if take_plan {
                let Some((key, plan)) = plans.next() else {
                    break;
                };
                if *key >= as_of {
                    break;
                }
                let now_consumer = policy.is_consumer(plan);
                if consumer && !now_consumer && preference == Preference::Allowed {
                    withdrawals.push(*key);
                }
                consumer = now_consumer;
            } else {
                let Some(choice) = choices.next() else { break };
                if choice.key >= as_of {
                    break;
                }
                if preference == Preference::Allowed && choice.preference == Preference::Declined {
                    withdrawals.push(choice.key);
                }
                preference = choice.preference;
            }
        }
        withdrawals
    }
}

closed_set! {
    /// Where a conversation happened.
    pub enum Surface {
        Chat => "chat",
        Code => "code",
    }
}

closed_set! {
    /// Who wrote a message.
    pub enum Role {
        User => "user",
        Assistant => "assistant",
    }
}

closed_set! {
    /// A user's rating of a reply.
    pub enum Rating {
        Up => "up",
        Down => "down",
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub key: EventKey,
    pub role: Role,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Feedback {
    pub key: EventKey,
    pub rating: Rating,
    pub comment: Option<String>,
}

/// A conversation and its activity.
///
/// INVARIANT: `messages` and `feedback` are sorted by key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    pub id: ConversationId,
    pub owner: AccountId,
    pub surface: Surface,
    /// Fixed at the first message (docs/POLICY.md, Terms).
    pub incognito: bool,
    pub messages: Vec<Message>,
    pub feedback: Vec<Feedback>,
    pub deleted: Option<EventKey>,
    pub purged: Option<EventKey>,
}

impl Conversation {
    pub fn new(id: ConversationId, owner: AccountId, surface: Surface, incognito: bool) -> Self {
        Conversation {
            id,
            owner,
            surface,
            incognito,
            messages: Vec::new(),
            feedback: Vec::new(),
            deleted: None,
            purged: None,
        }
    }

    pub fn record_message(&mut self, message: Message) {
        let at = self.messages.partition_point(|m| m.key < message.key);
        self.messages.insert(at, message);
    }

    pub fn record_feedback(&mut self, feedback: Feedback) {
        let at = self.feedback.partition_point(|f| f.key < feedback.key);
        self.feedback.insert(at, feedback);
    }

    /// Keys of every message and feedback before `as_of`, in no particular order.
    pub fn activity_before(&self, as_of: EventKey) -> impl Iterator<Item = EventKey> + '_ {
        let messages = self.messages.iter().map(|m| m.key);
        let feedback = self.feedback.iter().map(|f| f.key);
        messages.chain(feedback).filter(move |key| *key < as_of)
    }

    pub fn deleted_before(&self, as_of: EventKey) -> Option<EventKey> {
        self.deleted.filter(|key| *key < as_of)
    }

    pub fn purged_before(&self, as_of: EventKey) -> Option<EventKey> {
        self.purged.filter(|key| *key < as_of)
    }

    /// covered(e) for an activity of this conversation at `key`.
    pub fn is_covered(&self, policy: &Policy, owner: &AccountHistory, key: EventKey) -> bool {
        !self.incognito && owner.training_allowed_at(policy, key)
    }
}

/// What a legal hold covers: one account (its conversations, present and future) or one
/// conversation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HoldTarget {
    Account(AccountId),
    Conversation(ConversationId),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    pub id: HoldId,
    pub target: HoldTarget,
    pub placed: EventKey,
    pub released: Option<EventKey>,
}

impl Hold {
    pub fn is_active(&self, as_of: EventKey) -> bool {
        self.placed < as_of && self.released.is_none_or(|released| released >= as_of)
    }

    /// Whether this hold, active as of `as_of`, covers `conversation`.
    pub fn covers(&self, conversation: &Conversation, as_of: EventKey) -> bool {
        self.is_active(as_of)
            && match &self.target {
                HoldTarget::Account(account) => *account == conversation.owner,
                HoldTarget::Conversation(id) => *id == conversation.id,
            }
    }
}
