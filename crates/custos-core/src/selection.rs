//! The training selection (R9, R10): for which purpose data may be selected at all, and what a
//! snapshot carries of each conversation.

use crate::content::{TrainingContent, training_content};
use crate::eligibility::{EligibilityReason, snapshot_eligibility};
use crate::model::{AccountHistory, Conversation, EventKey};
use crate::policy::Policy;

closed_set! {
    /// What selected data may be used for. Only training the models exists: no purpose, role or
    /// destination exists for selling or disclosing data to third parties (R9).
    pub enum Purpose {
        ModelTraining => "model_training",
    }
}

/// What a snapshot does with one conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection<'a> {
    /// Eligible: these of its messages and feedback are carried.
    Included(TrainingContent<'a>),
    /// Left out, by the first rule of Eligible that excluded it.
    Excluded(EligibilityReason),
}

/// The selection of a snapshot taken at `now` with cutoff `cutoff` (see
/// [`snapshot_eligibility`]); with `now == cutoff` it is the selection at the cutoff.
pub fn select<'a>(
    policy: &Policy,
    owner: &AccountHistory,
    conversation: &'a Conversation,
    cutoff: EventKey,
    now: EventKey,
) -> Selection<'a> {
    match snapshot_eligibility(policy, owner, conversation, cutoff, now) {
        EligibilityReason::Eligible => {
            Selection::Included(training_content(policy, owner, conversation, cutoff))
        }
        reason => Selection::Excluded(reason),
    }
}
