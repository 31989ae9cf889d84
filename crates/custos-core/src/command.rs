//! The events custos is told of (docs/API.md §1 `do` steps; the service's writes are the same).

use crate::id::{AccountId, ConversationId, HoldId};
use crate::model::{Channel, HoldTarget, Rating, Role, Surface};

/// A change to the timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    CreateAccount {
        account: AccountId,
        plan: String,
        choice: Option<(bool, Channel)>,
    },
    Choose {
        account: AccountId,
        allowed: bool,
        channel: Channel,
    },
    NoticeShown {
        account: AccountId,
    },
    ChangePlan {
        account: AccountId,
        plan: String,
    },
    Message {
        account: AccountId,
        conversation: ConversationId,
        surface: Surface,
        role: Role,
        text: String,
        incognito: bool,
    },
    Feedback {
        account: AccountId,
        conversation: ConversationId,
        rating: Rating,
        comment: Option<String>,
    },
    DeleteConversation {
        conversation: ConversationId,
    },
    PlaceHold {
        hold: HoldId,
        target: HoldTarget,
    },
    ReleaseHold {
        hold: HoldId,
    },
    EraseAccount {
        account: AccountId,
    },
    Sweep,
}

/// The ids of the records a command names: what a carrier of [`crate::admission::admit`] looks
/// up before asking it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Names<'c> {
    /// The account the command names. A command on a conversation that names no account (a
    /// deletion, a hold on a conversation) names the conversation's owner, once it is found.
    pub account: Option<&'c AccountId>,
    pub conversation: Option<&'c ConversationId>,
    pub hold: Option<&'c HoldId>,
}

impl Command {
    /// The ids of the records this command names.
    pub fn names(&self) -> Names<'_> {
        let account = |account| Names {
            account: Some(account),
            ..Names::default()
        };
        match self {
            Command::CreateAccount { account: id, .. }
            | Command::Choose { account: id, .. }
            | Command::NoticeShown { account: id }
            | Command::ChangePlan { account: id, .. }
            | Command::EraseAccount { account: id } => account(id),
            Command::Message {
                account,
                conversation,
                ..
            }
            | Command::Feedback {
                account,
                conversation,
                ..
            } => Names {
                account: Some(account),
                conversation: Some(conversation),
                hold: None,
            },
            Command::DeleteConversation { conversation } => Names {
                conversation: Some(conversation),
                ..Names::default()
            },
            Command::PlaceHold { hold, target } => Names {
                account: match target {
                    HoldTarget::Account(account) => Some(account),
                    HoldTarget::Conversation(_) => None,
                },
                conversation: match target {
                    HoldTarget::Account(_) => None,
                    HoldTarget::Conversation(conversation) => Some(conversation),
                },
                hold: Some(hold),
            },
            Command::ReleaseHold { hold } => Names {
                hold: Some(hold),
                ..Names::default()
            },
            Command::Sweep => Names::default(),
        }
    }

    /// Whether the command is about legal holds, which are ordered by time alone (docs/POLICY.md, Terms
    /// "hold"), not by an account's order of arrival.
    pub fn is_about_a_hold(&self) -> bool {
        matches!(
            self,
            Command::PlaceHold { .. } | Command::ReleaseHold { .. }
        )
    }
}
