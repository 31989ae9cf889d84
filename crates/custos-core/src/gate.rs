//! Gate(a, t): may this user continue? (docs/POLICY.md, The decisions, R3)

use crate::model::{AccountHistory, EventKey, Preference};
use crate::policy::Policy;
use crate::time::Timestamp;

closed_set! {
    /// What the product should do with the user's request.
    pub enum GateDecision {
        Allow => "allow",
        Prompt => "prompt",
        Block => "block",
    }
}

closed_set! {
    /// The rule of Gate that decided.
    pub enum GateReason {
        /// Rule 1: the plan is not a consumer plan.
        NotApplicable => "not_applicable",
        /// Rule 2: the user has chosen (either answer).
        Decided => "decided",
        /// Rule 3: undecided, before the deadline.
        ChoicePending => "choice_pending",
        /// Rule 4: undecided, at or after the deadline.
        ChoiceRequired => "choice_required",
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Gate {
    pub decision: GateDecision,
    pub reason: GateReason,
}

/// Gate(a, t), as of the event key of the request: the first rule that matches.
pub fn gate(policy: &Policy, account: &AccountHistory, as_of: EventKey) -> Gate {
    let consumer = policy.is_consumer(account.plan_at(as_of));
    decide(policy, consumer, account.preference_at(as_of), as_of.at)
}

/// The rule table of Gate, over the two facts it needs: whether the plan in force is a consumer
/// plan, and the choice in force. An in-memory index that keeps only those facts per account
/// answers through this same function.
pub fn decide(policy: &Policy, consumer_plan: bool, preference: Preference, at: Timestamp) -> Gate {
    let (decision, reason) = if !consumer_plan {
        (GateDecision::Allow, GateReason::NotApplicable)
    } else if preference != Preference::Unset {
        (GateDecision::Allow, GateReason::Decided)
    } else if !deadline_passed(policy, at) {
        (GateDecision::Prompt, GateReason::ChoicePending)
    } else {
        (GateDecision::Block, GateReason::ChoiceRequired)
    };
    Gate { decision, reason }
}

/// Whether the deadline to choose has passed at `at`: rule 4 applies from `choose_by` on, rule 3
/// before it.
pub fn deadline_passed(policy: &Policy, at: Timestamp) -> bool {
    at >= policy.choose_by
}

/// How the deadline to choose stands at a time, for reports and pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    pub choose_by: Timestamp,
    /// Whether undecided consumer users are blocked (rule 4) rather than prompted (rule 3).
    pub passed: bool,
    /// Whole days left to choose, counting a part of a day as a day; 0 once passed.
    pub days_left: u64,
}

/// The deadline of `policy` as it stands at `at`.
pub fn deadline(policy: &Policy, at: Timestamp) -> Deadline {
    const DAY_MS: u64 = 86_400_000;
    let remaining = policy
        .choose_by
        .unix_millis()
        .saturating_sub(at.unix_millis());
    let passed = deadline_passed(policy, at);
    Deadline {
        choose_by: policy.choose_by,
        passed,
        days_left: if passed {
            0
        } else {
            u64::try_from(remaining).unwrap_or(0).div_ceil(DAY_MS)
        },
    }
}
