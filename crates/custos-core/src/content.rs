//! Which messages and feedback of an eligible conversation a training export carries
//! (docs/POLICY.md, The decisions, policy field `training.content`).

use crate::model::{AccountHistory, Conversation, EventKey, Feedback, Message};
use crate::policy::{ContentRule, Policy};

/// The parts of a conversation selected for training, in event order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainingContent<'a> {
    pub messages: Vec<&'a Message>,
    pub feedback: Vec<&'a Feedback>,
}

/// Selects content for an export as of `as_of`. Call it only for conversations that
/// [`crate::eligibility::eligibility`] found eligible; it does not repeat those checks.
pub fn training_content<'a>(
    policy: &Policy,
    owner: &AccountHistory,
    conversation: &'a Conversation,
    as_of: EventKey,
) -> TrainingContent<'a> {
    let include = |key: EventKey| {
        key < as_of
            && match policy.training.content {
                ContentRule::Whole => policy.is_consumer(owner.plan_at(key)),
                ContentRule::CoveredOnly => conversation.is_covered(policy, owner, key),
            }
    };
    TrainingContent {
        messages: conversation
            .messages
            .iter()
            .filter(|m| include(m.key))
            .collect(),
        feedback: conversation
            .feedback
            .iter()
            .filter(|f| include(f.key))
            .collect(),
    }
}
