//! When an event is admitted, and what it records (docs/API.md §1 "A step is invalid"; the same
//! rules guard the service).
//!
//! [`admit`] is the one door every event goes through: the reference model, the store's
//! per-event path and the bulk loader each look up the records the event names ([`Named`]), ask
//! it, and carry out the [`Effect`] it answers, or report the [`Refusal`]. None of them checks
//! anything itself, and the order of the checks is written once, here.

use crate::command::Command;
use crate::id::{AccountId, ConversationId, HoldId};
use crate::model::{
    AccountChange, AccountHistory, Conversation, EventKey, Feedback, Hold, HoldTarget, Message,
    Preference, Rating, Role, Surface,
};
use crate::policy::{Plan, PlanClass, Policy, UnknownPlan};
use crate::retention::expiry;
use crate::time::Timestamp;

/// Why an event was refused. Each has a stable slug, used as the problem `type` over HTTP.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("account `{0}` does not exist")]
    UnknownAccount(AccountId),
    #[error("account `{0}` was erased")]
    AccountErased(AccountId),
    #[error("account `{0}` exists or existed; an account id can't be created again")]
    AccountExists(AccountId),
    #[error(transparent)]
    UnknownPlan(#[from] UnknownPlan),
    #[error(
        "account `{account}` is created on consumer plan `{plan}` at or after the policy took effect ({effective}), so it must come with a training choice (R4)"
    )]
    ChoiceRequired {
        account: AccountId,
        plan: Plan,
        effective: Timestamp,
    },
    #[error(
        "account `{account}` is on business plan `{plan}`, which has no training choice to make (R2)"
    )]
    NoChoiceOnBusinessPlan { account: AccountId, plan: Plan },
    #[error("conversation `{0}` does not exist")]
    UnknownConversation(ConversationId),
    #[error("conversation `{conversation}` belongs to another account than `{account}`")]
    NotOwner {
        conversation: ConversationId,
        account: AccountId,
    },
    #[error("conversation `{0}` was deleted")]
    ConversationDeleted(ConversationId),
    #[error("conversation `{0}` was purged")]
    ConversationPurged(ConversationId),
    #[error("conversation `{conversation}` expired at {expired_at}; start a new conversation")]
    ConversationExpired {
        conversation: ConversationId,
        expired_at: Timestamp,
    },
    #[error(
        "this event on account `{account}` is timed at {at}, before the account was created ({created})"
    )]
    BeforeAccountCreated {
        account: AccountId,
        at: Timestamp,
        created: Timestamp,
    },
    #[error("hold id `{0}` is already used; hold ids are unique for the life of the store")]
    HoldExists(HoldId),
    #[error("hold `{0}` is not active (unknown or already released)")]
    HoldNotActive(HoldId),
    #[error(
        "`{field}` holds a NUL character (U+0000) at character {at}; texts custos keeps may hold any character but that one"
    )]
    NulInText { field: &'static str, at: usize },
}

impl Refusal {
    /// The stable slug of this refusal.
    pub fn slug(&self) -> &'static str {
        match self {
            Refusal::UnknownAccount(_) => "unknown-account",
            Refusal::AccountErased(_) => "account-erased",
            Refusal::AccountExists(_) => "account-exists",
            Refusal::UnknownPlan(_) => "unknown-plan",
            Refusal::ChoiceRequired { .. } => "choice-required",
            Refusal::NoChoiceOnBusinessPlan { .. } => "no-choice-on-business-plan",
            Refusal::UnknownConversation(_) => "unknown-conversation",
            Refusal::NotOwner { .. } => "conversation-of-another-account",
            Refusal::ConversationDeleted(_) => "conversation-deleted",
            Refusal::ConversationPurged(_) => "conversation-purged",
            Refusal::ConversationExpired { .. } => "conversation-expired",
            Refusal::BeforeAccountCreated { .. } => "before-account-created",
            Refusal::HoldExists(_) => "hold-exists",
            Refusal::HoldNotActive(_) => "hold-not-active",
            Refusal::NulInText { .. } => "nul-in-text",
        }
    }
}

/// Refuses a text that holds U+0000. Every backend must keep the same texts, and PostgreSQL's
/// `text` can't hold that character, so no store keeps it; a product that sends one is told
/// where it is rather than having it dropped or changed unseen.
pub fn check_text(field: &'static str, text: &str) -> Result<(), Refusal> {
    match text.chars().position(|c| c == '\0') {
        Some(at) => Err(Refusal::NulInText { field, at }),
        None => Ok(()),
    }
}

/// The records an event names, as they stand just before it (see [`Command::names`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Named<'r> {
    /// The account the event names, live or erased; for an event that names only a
    /// conversation, the conversation's owner.
    pub account: Option<&'r AccountHistory>,
    pub conversation: Option<&'r Conversation>,
    /// The hold of the id the event names, if that id was ever used.
    pub hold: Option<&'r Hold>,
}

/// What an admitted event records. It borrows its texts and ids from the command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect<'c> {
    /// A new account on `plan`; its ledger starts with its creation, then the signup choice if
    /// it came with one, both at the event's key.
    AccountCreated {
        account: &'c AccountId,
        plan: Plan,
        signup_choice: Option<(Preference, crate::model::Channel)>,
    },
    /// The next entry of a live account's ledger.
    AccountChanged {
        account: &'c AccountId,
        change: AccountChange,
    },
    /// A message; `starts` holds the surface and incognito flag of a conversation it starts.
    Message {
        account: &'c AccountId,
        conversation: &'c ConversationId,
        starts: Option<(Surface, bool)>,
        role: Role,
        text: &'c str,
    },
    Feedback {
        account: &'c AccountId,
        conversation: &'c ConversationId,
        rating: Rating,
        comment: Option<&'c str>,
    },
    ConversationDeleted {
        conversation: &'c ConversationId,
    },
    HoldPlaced {
        hold: &'c HoldId,
        target: &'c HoldTarget,
    },
    HoldReleased {
        hold: &'c HoldId,
    },
    /// A retention sweep as of the event's key; each conversation is decided by
    /// [`crate::retention::sweep_decision`].
    Sweep,
}

/// Whether a conversation's record keeps the texts of its messages and comments: the reference
/// model keeps them; a store, which writes them to their own rows, keeps only what decisions
/// read (keys, roles, ratings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Texts {
    Kept,
    Dropped,
}

impl Effect<'_> {
    /// The conversation an event of a conversation names, if it is one.
    pub fn conversation(&self) -> Option<&ConversationId> {
        match self {
            Effect::Message { conversation, .. }
            | Effect::Feedback { conversation, .. }
            | Effect::ConversationDeleted { conversation } => Some(conversation),
            _ => None,
        }
    }

    /// The conversation a message starts, still empty: [`Effect::record_on`] then records the
    /// message on it.
    pub fn started_conversation(&self) -> Option<Conversation> {
        match self {
            Effect::Message {
                account,
                conversation,
                starts: Some((surface, incognito)),
                ..
            } => Some(Conversation::new(
                (*conversation).clone(),
                (*account).clone(),
                *surface,
                *incognito,
            )),
            _ => None,
        }
    }

    /// Records a conversation event in `conversations`: the conversation it starts, if any,
    /// then the event on the conversation it names ([`Effect::record_on`]).
    pub fn record_in(
        &self,
        conversations: &mut std::collections::BTreeMap<ConversationId, Conversation>,
        key: EventKey,
        texts: Texts,
    ) -> bool {
        if let Some(new) = self.started_conversation() {
            conversations.insert(new.id.clone(), new);
        }
        let named = self.conversation().and_then(|id| conversations.get_mut(id));
        named.is_some_and(|record| self.record_on(record, key, texts))
    }

    /// Records a conversation event on the conversation it names (after the one it starts, if
    /// any, has been stored). Every path that keeps conversations in memory records them here.
    /// Returns false for an effect that is not a conversation event.
    pub fn record_on(&self, record: &mut Conversation, key: EventKey, texts: Texts) -> bool {
        let kept = |text: &str| match texts {
            Texts::Kept => text.to_owned(),
            Texts::Dropped => String::new(),
        };
        match self {
            Effect::Message { role, text, .. } => record.record_message(Message {
                key,
                role: *role,
                text: kept(text),
            }),
            Effect::Feedback {
                rating, comment, ..
            } => record.record_feedback(Feedback {
                key,
                rating: *rating,
                comment: comment.filter(|_| texts == Texts::Kept).map(str::to_owned),
            }),
            Effect::ConversationDeleted { .. } => record.deleted = Some(key),
            _ => return false,
        }
        true
    }
}

/// Admits `command` at `key`, given the records it names, or says why not. `key` is the
/// event's place in the order of docs/POLICY.md, Terms; where the command names no recorded account, any key
/// at its time will do (nothing then compares with it).
pub fn admit<'c>(
    policy: &Policy,
    named: Named<'_>,
    key: EventKey,
    command: &'c Command,
) -> Result<Effect<'c>, Refusal> {
    let changed = |account, change| Effect::AccountChanged { account, change };
    Ok(match command {
        Command::CreateAccount {
            account,
            plan,
            choice,
        } => {
            let plan = admit_create_account(
                policy,
                account,
                named.account,
                plan,
                choice.is_some(),
                key.at,
            )?;
            Effect::AccountCreated {
                account,
                plan,
                signup_choice: choice
                    .map(|(allowed, channel)| (Preference::from_allowed(allowed), channel)),
            }
        }
        Command::Choose {
            account,
            allowed,
            channel,
        } => {
            admit_choice(policy, live_account(account, named.account)?, key)?;
            let preference = Preference::from_allowed(*allowed);
            changed(
                account,
                AccountChange::Choice {
                    preference,
                    channel: *channel,
                },
            )
        }
        Command::NoticeShown { account } => {
            live_account(account, named.account)?;
            changed(account, AccountChange::NoticeShown)
        }
        Command::ChangePlan { account, plan } => {
            live_account(account, named.account)?;
            let (plan, _) = policy.plan(plan)?;
            changed(account, AccountChange::PlanChanged(plan))
        }
        Command::EraseAccount { account } => {
            live_account(account, named.account)?;
            changed(account, AccountChange::Erased)
        }
        Command::Message {
            account,
            conversation,
            surface,
            role,
            text,
            incognito,
        } => {
            check_text("text", text)?;
            let owner = live_account(account, named.account)?;
            match named.conversation {
                Some(existing) => admit_activity(policy, owner, existing, key)?,
                None => admit_new_conversation(owner, key)?,
            }
            Effect::Message {
                account,
                conversation,
                starts: named
                    .conversation
                    .is_none()
                    .then_some((*surface, *incognito)),
                role: *role,
                text,
            }
        }
        Command::Feedback {
            account,
            conversation,
            rating,
            comment,
        } => {
            if let Some(comment) = comment {
                check_text("comment", comment)?;
            }
            let owner = live_account(account, named.account)?;
            let existing = named
                .conversation
                .ok_or_else(|| Refusal::UnknownConversation(conversation.clone()))?;
            admit_activity(policy, owner, existing, key)?;
            Effect::Feedback {
                account,
                conversation,
                rating: *rating,
                comment: comment.as_deref(),
            }
        }
        Command::DeleteConversation { conversation } => {
            let existing = named
                .conversation
                .ok_or_else(|| Refusal::UnknownConversation(conversation.clone()))?;
            admit_deletion(existing, key)?;
            Effect::ConversationDeleted { conversation }
        }
        Command::PlaceHold { hold, target } => {
            if named.hold.is_some() {
                return Err(Refusal::HoldExists(hold.clone()));
            }
            // A hold may name an erased account: its data may still await the sweep.
            match target {
                HoldTarget::Account(account) if named.account.is_none() => {
                    return Err(Refusal::UnknownAccount(account.clone()));
                }
                HoldTarget::Conversation(conversation) if named.conversation.is_none() => {
                    return Err(Refusal::UnknownConversation(conversation.clone()));
                }
                _ => {}
            }
            Effect::HoldPlaced { hold, target }
        }
        Command::ReleaseHold { hold } => match named.hold {
            Some(existing) if existing.is_active(key) => Effect::HoldReleased { hold },
            _ => return Err(Refusal::HoldNotActive(hold.clone())),
        },
        Command::Sweep => Effect::Sweep,
    })
}

/// An account that exists and was not erased: the only kind most events, and the questions
/// asked about an account (its gate, its view, its conversations), may name.
pub fn live_account<'a>(
    id: &AccountId,
    account: Option<&'a AccountHistory>,
) -> Result<&'a AccountHistory, Refusal> {
    let account = account.ok_or_else(|| Refusal::UnknownAccount(id.clone()))?;
    if account.erased().is_some() {
        return Err(Refusal::AccountErased(id.clone()));
    }
    Ok(account)
}

/// Creating an account (R2, R4). `existing` is any account, live or erased, with the same id.
fn admit_create_account(
    policy: &Policy,
    id: &AccountId,
    existing: Option<&AccountHistory>,
    plan: &str,
    with_choice: bool,
    at: Timestamp,
) -> Result<Plan, Refusal> {
    if existing.is_some() {
        return Err(Refusal::AccountExists(id.clone()));
    }
    let (plan, class) = policy.plan(plan)?;
    match class {
        PlanClass::Consumer if !with_choice && at >= policy.effective => {
            Err(Refusal::ChoiceRequired {
                account: id.clone(),
                plan,
                effective: policy.effective,
            })
        }
        PlanClass::Business if with_choice => Err(Refusal::NoChoiceOnBusinessPlan {
            account: id.clone(),
            plan,
        }),
        _ => Ok(plan),
    }
}

/// Making a choice: only on a consumer plan (docs/POLICY.md, Terms).
fn admit_choice(policy: &Policy, account: &AccountHistory, key: EventKey) -> Result<(), Refusal> {
    let plan = account.plan_at(key);
    if policy.is_consumer(plan) {
        Ok(())
    } else {
        Err(Refusal::NoChoiceOnBusinessPlan {
            account: account.id.clone(),
            plan: plan.clone(),
        })
    }
}

/// Activity (a message, or feedback) on an existing conversation: it must be the account's own,
/// and still there for the user (not deleted, purged or expired).
fn admit_activity(
    policy: &Policy,
    account: &AccountHistory,
    conversation: &Conversation,
    key: EventKey,
) -> Result<(), Refusal> {
    admit_new_conversation(account, key)?;
    if conversation.owner != account.id {
        return Err(Refusal::NotOwner {
            conversation: conversation.id.clone(),
            account: account.id.clone(),
        });
    }
    admit_change_to(conversation, key)?;
    if conversation.deleted_before(key).is_some() {
        return Err(Refusal::ConversationDeleted(conversation.id.clone()));
    }
    if let Some(expiry) = expiry(policy, account, conversation, key)
        && expiry.has_passed(key.at)
    {
        return Err(Refusal::ConversationExpired {
            conversation: conversation.id.clone(),
            expired_at: expiry.at,
        });
    }
    Ok(())
}

/// Activity that starts a conversation: it can't be timed before its account was created (an
/// event that arrives late may carry an earlier time, never one before the account existed).
fn admit_new_conversation(account: &AccountHistory, key: EventKey) -> Result<(), Refusal> {
    if key.at < account.created().at {
        return Err(Refusal::BeforeAccountCreated {
            account: account.id.clone(),
            at: key.at,
            created: account.created().at,
        });
    }
    Ok(())
}

/// Deleting a conversation that is still there.
fn admit_deletion(conversation: &Conversation, key: EventKey) -> Result<(), Refusal> {
    admit_change_to(conversation, key)?;
    if conversation.deleted_before(key).is_some() {
        return Err(Refusal::ConversationDeleted(conversation.id.clone()));
    }
    Ok(())
}

fn admit_change_to(conversation: &Conversation, key: EventKey) -> Result<(), Refusal> {
    if conversation.purged_before(key).is_some() {
        return Err(Refusal::ConversationPurged(conversation.id.clone()));
    }
    Ok(())
}
