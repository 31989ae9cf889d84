//! Gate(a, t): may this user continue? (SPEC §3, R3)

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
    } else if at < policy.choose_by {
        (GateDecision::Prompt, GateReason::ChoicePending)
    } else {
        (GateDecision::Block, GateReason::ChoiceRequired)
    };
    Gate { decision, reason }
}
