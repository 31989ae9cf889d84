//! A conversation's state as the product and its user see it (docs/API.md §1 `conversation`).

use crate::eligibility::{EligibilityReason, eligibility};
use crate::model::{AccountHistory, Conversation, EventKey, Hold};
use crate::policy::Policy;
use crate::retention::{Expiry, expiry, is_held};
use crate::time::Timestamp;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConversationStatus {
    /// False once purged.
    pub exists: bool,
    /// False once deleted or its account is erased.
    pub visible: bool,
    /// `None` once purged.
    pub expiry: Option<Expiry>,
    pub held: bool,
    pub eligibility: EligibilityReason,
}

impl ConversationStatus {
    /// Whether it is in its owner's history at `at`: visible, and not expired. An expired
    /// conversation is gone for its user (docs/POLICY.md, Terms) even before a sweep purges it.
    pub fn in_owner_history(&self, at: Timestamp) -> bool {
        self.visible && self.expiry.is_some_and(|expiry| !expiry.has_passed(at))
    }
}

/// The status of `conversation` as of `as_of`, given the holds that may cover it.
pub fn conversation_status<'h>(
    policy: &Policy,
    owner: &AccountHistory,
    conversation: &Conversation,
    holds: impl IntoIterator<Item = &'h Hold>,
    as_of: EventKey,
) -> ConversationStatus {
    let exists = conversation.purged_before(as_of).is_none();
    ConversationStatus {
        exists,
        visible: exists
            && conversation.deleted_before(as_of).is_none()
            && owner.erased_before(as_of).is_none(),
        expiry: if exists {
            expiry(policy, owner, conversation, as_of)
        } else {
            None
        },
        held: exists && is_held(holds, conversation, as_of),
        eligibility: eligibility(policy, owner, conversation, as_of),
    }
}
