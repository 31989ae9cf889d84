//! When an event is refused (API.md §1 "A step is invalid"; the same rules guard the service).
//!
//! Each function sees only the records the event names, as they stand just before it, and
//! answers `Ok` or the [`Refusal`] that says what is wrong.

use crate::id::{AccountId, ConversationId, HoldId};
use crate::model::{AccountHistory, Conversation, EventKey, Hold};
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
        }
    }
}

/// An account that exists and was not erased: the only kind most events may name.
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
pub fn admit_create_account(
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

/// Making a choice: only on a consumer plan (SPEC §2).
pub fn admit_choice(
    policy: &Policy,
    account: &AccountHistory,
    key: EventKey,
) -> Result<(), Refusal> {
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
pub fn admit_activity(
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
        && expiry.at <= key.at
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
pub fn admit_new_conversation(account: &AccountHistory, key: EventKey) -> Result<(), Refusal> {
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
pub fn admit_deletion(conversation: &Conversation, key: EventKey) -> Result<(), Refusal> {
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

/// Placing a hold: its id must never have been used.
pub fn admit_hold(id: &HoldId, existing: Option<&Hold>) -> Result<(), Refusal> {
    match existing {
        Some(_) => Err(Refusal::HoldExists(id.clone())),
        None => Ok(()),
    }
}

/// Releasing a hold: it must be active.
pub fn admit_release(id: &HoldId, existing: Option<&Hold>, key: EventKey) -> Result<(), Refusal> {
    match existing {
        Some(hold) if hold.is_active(key) => Ok(()),
        _ => Err(Refusal::HoldNotActive(id.clone())),
    }
}
