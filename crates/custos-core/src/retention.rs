//! Expiry(c) and the sweep's rule (docs/POLICY.md, The decisions, R6–R8, R12–R13).

use std::collections::BTreeMap;

use crate::model::{AccountHistory, Conversation, EventKey, Hold};
use crate::policy::Policy;
use crate::time::Timestamp;

closed_set! {
    /// Which retention period step 1 of Expiry used.
    pub enum RetentionClass {
        /// The latest activity was covered: kept `retention.extended` (5 years by default).
        Extended => "extended",
        /// Kept `retention.standard` (30 days by default).
        Standard => "standard",
    }
}

closed_set! {
    /// The step of Expiry that set the final time. On a tie the earlier step keeps it.
    pub enum ExpiryBound {
        /// Step 1: the retention period after the latest activity.
        Retention => "retention",
        /// Step 2: the withdrawal cap after a withdrawal later than the latest activity.
        WithdrawalCap => "withdrawal_cap",
        /// Step 3: the deletion grace after deletion.
        DeletionGrace => "deletion_grace",
        /// Step 4: the account was erased.
        AccountErased => "account_erased",
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Expiry {
    pub at: Timestamp,
    pub class: RetentionClass,
    pub bound: ExpiryBound,
}

impl Expiry {
    /// Whether the conversation's time is up at `at`: from its expiry on, inclusive. Then it
    /// is gone for its user, takes no more activity, is not eligible, and a sweep purges it.
    pub fn has_passed(&self, at: Timestamp) -> bool {
        self.at <= at
    }
}

/// Expiry(c) as of `as_of`, or `None` when the conversation has no activity before it (it did
/// not exist yet, or its content was purged).
pub fn expiry(
    policy: &Policy,
    owner: &AccountHistory,
    conversation: &Conversation,
    as_of: EventKey,
) -> Option<Expiry> {
    let latest = conversation.activity_before(as_of).max()?;
    let last_activity = latest.at;

    // Step 1: any activity at the latest activity's time that was covered earns the long period.
    let covered_at_last = conversation
        .activity_before(as_of)
        .filter(|key| key.at == last_activity)
        .any(|key| conversation.is_covered(policy, owner, key));
    let (class, period) = if covered_at_last {
        (RetentionClass::Extended, policy.retention.extended)
    } else {
        (RetentionClass::Standard, policy.retention.standard)
    };
    let mut result = Expiry {
        at: last_activity.saturating_add(period),
        class,
        bound: ExpiryBound::Retention,
    };
    let mut cap = |candidate: Timestamp, bound: ExpiryBound| {
        if candidate < result.at {
            result.at = candidate;
            result.bound = bound;
        }
    };

    // Step 2: withdrawals after the latest activity, in event order.
    for withdrawal in owner.withdrawals_before(policy, as_of) {
        if withdrawal > latest {
            cap(
                withdrawal
                    .at
                    .saturating_add(policy.retention.withdrawal_cap),
                ExpiryBound::WithdrawalCap,
            );
        }
    }
    // Step 3.
    if let Some(deleted) = conversation.deleted_before(as_of) {
        cap(
            deleted.at.saturating_add(policy.retention.deletion_grace),
            ExpiryBound::DeletionGrace,
        );
    }
    // Step 4.
    if let Some(erased) = owner.erased_before(as_of) {
        cap(erased.at, ExpiryBound::AccountErased);
    }
    Some(result)
}

/// Whether any active hold covers the conversation as of `as_of` (R13).
pub fn is_held<'a>(
    holds: impl IntoIterator<Item = &'a Hold>,
    conversation: &Conversation,
    as_of: EventKey,
) -> bool {
    holds
        .into_iter()
        .any(|hold| hold.covers(conversation, as_of))
}

/// What a sweep at `now` does with one conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SweepAction {
    /// Expired and not held: remove its content, leave a tombstone.
    Purge(ExpiryBound),
    /// Expired but under a hold: keep it (hold > retain > delete).
    HeldBack,
    /// Not expired yet, or already purged.
    Keep,
}

/// Purge (docs/POLICY.md, The decisions): a sweep at `now` removes every conversation with expiry ≤ now that is not
/// under an active hold.
pub fn sweep_action(expiry: Option<Expiry>, held: bool, now: Timestamp) -> SweepAction {
    match expiry {
        Some(expiry) if expiry.has_passed(now) => {
            if held {
                SweepAction::HeldBack
            } else {
                SweepAction::Purge(expiry.bound)
            }
        }
        _ => SweepAction::Keep,
    }
}

/// What a sweep as of `as_of` does with one conversation, given the holds that may cover it.
pub fn sweep_decision<'h>(
    policy: &Policy,
    owner: &AccountHistory,
    conversation: &Conversation,
    holds: impl IntoIterator<Item = &'h Hold>,
    as_of: EventKey,
) -> SweepAction {
    sweep_action(
        expiry(policy, owner, conversation, as_of),
        is_held(holds, conversation, as_of),
        as_of.at,
    )
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
    /// Counts what the sweep did with one conversation.
    pub fn count(&mut self, action: SweepAction) {
        match action {
            SweepAction::Purge(bound) => *self.purged.entry(bound.as_str()).or_default() += 1,
            SweepAction::HeldBack => self.held_back += 1,
            SweepAction::Keep => {}
        }
    }

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
