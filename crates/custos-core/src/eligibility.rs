//! Eligible(c, T) for the `model_training` export (docs/POLICY.md, The decisions, R7–R10, R12).

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
        Some(expiry) if !expiry.has_passed(as_of.at) => {}
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

/// Whether a snapshot taken `now` may carry a conversation selected at cutoff T (`cutoff`):
/// eligible at T, and still eligible now. A withdrawal, deletion or erasure committed after the
/// cutoff but before the snapshot is honored (R8: "removes all of the account's data from every
/// future training export at once"). The reason is the first that excludes it: the cutoff's,
/// else now's. With `now == cutoff` this is exactly [`eligibility`].
pub fn snapshot_eligibility(
    policy: &Policy,
    owner: &AccountHistory,
    conversation: &Conversation,
    cutoff: EventKey,
    now: EventKey,
) -> EligibilityReason {
    match eligibility(policy, owner, conversation, cutoff) {
        EligibilityReason::Eligible if now > cutoff => {
            eligibility(policy, owner, conversation, now)
        }
        reason => reason,
    }
}

closed_set! {
    /// Why a row of an earlier snapshot may no longer be used for training (docs/POLICY.md, Beyond the minimum
    /// Revocations).
    pub enum RevocationReason {
        Withdrawn => "withdrawn",
        Deleted => "deleted",
        Erased => "erased",
        Expired => "expired",
    }
}

/// Whether a conversation an earlier snapshot carried is revoked as of `now`, and why. Every
/// rule of Eligible that can turn an eligible conversation ineligible later is one of four
/// causes: the user deleted it, the account was erased, its time ran out, or the user (or a move
/// to a business plan, R8) withdrew the choice.
pub fn revocation(
    policy: &Policy,
    owner: &AccountHistory,
    conversation: &Conversation,
    now: EventKey,
) -> Option<RevocationReason> {
    use EligibilityReason as E;
    use RevocationReason as R;
    Some(match eligibility(policy, owner, conversation, now) {
        E::Eligible => return None,
        // A purge happens for the reason its expiry was set: an erasure, a deletion, or time.
        E::Purged if owner.erased_before(now).is_some() => R::Erased,
        E::Purged if conversation.deleted_before(now).is_some() => R::Deleted,
        // The content is gone, and with it the activity times; a withdrawal the account still
        // stands by (a refusal, or a business plan) is the cause to report.
        E::Purged
            if !policy.is_consumer(owner.plan_at(now))
                || owner.preference_at(now) != Preference::Allowed =>
        {
            R::Withdrawn
        }
        E::Purged | E::Expired => R::Expired,
        E::AccountErased => R::Erased,
        E::Deleted => R::Deleted,
        E::Incognito
        | E::NotConsumerPlan
        | E::TrainingDeclined
        | E::TrainingUndecided
        | E::NotCovered
        | E::Withdrawn => R::Withdrawn,
    })
}
