//! Eligible(c, T) for the `model_training` export (SPEC §3, R7–R10, R12).

use crate::model::{AccountHistory, Conversation, EventKey, Preference};
use crate::policy::Policy;
use crate::retention::expiry;

closed_set! {
    /// The rule of Eligible that decided, in the order the rules are tried.
    pub enum EligibilityReason {
        Purged => "purged",
        AccountErased => "account_erased",
        Deleted => "deleted",
        Expired => "expired",
        Incognito => "incognito",
        NotConsumerPlan => "not_consumer_plan",
        TrainingDeclined => "training_declined",
        TrainingUndecided => "training_undecided",
        NotCovered => "not_covered",
        Withdrawn => "withdrawn",
        Eligible => "eligible",
    }
}

impl EligibilityReason {
    pub fn is_eligible(self) -> bool {
        self == EligibilityReason::Eligible
    }
}

/// Eligible(c, T) as of the export's key (cutoff T = `as_of.at`): the first rule that matches.
pub fn eligibility(
    policy: &Policy,
    owner: &AccountHistory,
    conversation: &Conversation,
    as_of: EventKey,
) -> EligibilityReason {
    use EligibilityReason as R;
    if conversation.purged_before(as_of).is_some() {
        return R::Purged;
    }
    if owner.erased_before(as_of).is_some() {
        return R::AccountErased;
    }
    // Events before `as_of` have times ≤ T, so this is `deleted_at ≤ T`.
    if conversation.deleted_before(as_of).is_some() {
        return R::Deleted;
    }
    // A conversation with no activity yet has nothing to train on; it is treated as expired,
    // the privacy-protective reading of a conversation that does not exist at the cutoff.
    match expiry(policy, owner, conversation, as_of) {
        Some(expiry) if expiry.at > as_of.at => {}
        _ => return R::Expired,
    }
    if conversation.incognito {
        return R::Incognito;
    }
    if !policy.is_consumer(owner.plan_at(as_of)) {
        return R::NotConsumerPlan;
    }
    match owner.preference_at(as_of) {
        Preference::Declined => return R::TrainingDeclined,
        Preference::Unset => return R::TrainingUndecided,
        Preference::Allowed => {}
    }
    let mut covered = conversation
        .activity_before(as_of)
        .filter(|key| conversation.is_covered(policy, owner, *key))
        .peekable();
    if covered.peek().is_none() {
        return R::NotCovered;
    }
    if let Some(latest_withdrawal) = owner.withdrawals_before(policy, as_of).last()
        && !covered.any(|key| key > *latest_withdrawal)
    {
        return R::Withdrawn;
    }
    R::Eligible
}
