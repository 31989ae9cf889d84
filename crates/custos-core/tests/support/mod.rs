//! Random timelines for property tests and the timeline benchmark.
//!
//! Small universes (4 accounts, 6 conversations, 3 holds) make collisions — ties, reuse,
//! someone else's conversation — frequent, and time steps are drawn around the policy's
//! boundaries (0 ms, 1 ms, 30 days, 5 years) so that `<` versus `≤` matters.

#![allow(dead_code, reason = "each test binary uses a different part")]

use custos_core::{
    AccountId, Channel, Command, ConversationId, HoldId, HoldTarget, Rating, Role, Surface,
    Timestamp,
};
use proptest::prelude::*;

pub const ACCOUNTS: usize = 4;
pub const CONVERSATIONS: usize = 6;
pub const HOLDS: usize = 3;
/// Includes a plan in neither list, which must always be refused.
pub const PLANS: [&str; 6] = ["free", "pro", "max", "team", "api", "platinum"];

/// A step of a random timeline: how far time moves, then what happens.
#[derive(Debug, Clone)]
pub struct Op {
    pub advance_ms: i64,
    pub event: Event,
}

#[derive(Debug, Clone)]
pub enum Event {
    Create {
        account: usize,
        plan: usize,
        choice: Option<bool>,
    },
    Choose {
        account: usize,
        allowed: bool,
    },
    NoticeShown {
        account: usize,
    },
    ChangePlan {
        account: usize,
        plan: usize,
    },
    Message {
        account: usize,
        conversation: usize,
        incognito: bool,
        assistant: bool,
    },
    Feedback {
        account: usize,
        conversation: usize,
        up: bool,
    },
    Delete {
        conversation: usize,
    },
    Hold {
        hold: usize,
        on_account: bool,
        target: usize,
    },
    Release {
        hold: usize,
    },
    Erase {
        account: usize,
    },
    Sweep,
}

const DAY: i64 = 86_400_000;

fn advance() -> impl Strategy<Value = i64> {
    prop_oneof![
        4 => Just(0),
        1 => Just(1),
        3 => 1..DAY,
        3 => Just(DAY),
        4 => (1..40i64).prop_map(|d| d * DAY),
        2 => Just(30 * DAY),
        1 => Just(30 * DAY - 1),
        1 => Just(5 * 365 * DAY + DAY),
        1 => (100..400i64).prop_map(|d| d * DAY),
    ]
}

fn event() -> impl Strategy<Value = Event> {
    let account = 0..ACCOUNTS;
    let conversation = 0..CONVERSATIONS;
    prop_oneof![
        1 => (account.clone(), 0..PLANS.len(), prop::option::of(any::<bool>()))
            .prop_map(|(account, plan, choice)| Event::Create { account, plan, choice }),
        8 => (account.clone(), any::<bool>()).prop_map(|(account, allowed)| Event::Choose { account, allowed }),
        1 => account.clone().prop_map(|account| Event::NoticeShown { account }),
        2 => (account.clone(), 0..PLANS.len()).prop_map(|(account, plan)| Event::ChangePlan { account, plan }),
        10 => (account.clone(), conversation.clone(), prop::bool::weighted(0.15), any::<bool>())
            .prop_map(|(account, conversation, incognito, assistant)| Event::Message { account, conversation, incognito, assistant }),
        3 => (account.clone(), conversation.clone(), any::<bool>())
            .prop_map(|(account, conversation, up)| Event::Feedback { account, conversation, up }),
        2 => conversation.clone().prop_map(|conversation| Event::Delete { conversation }),
        1 => (0..HOLDS, any::<bool>(), 0..CONVERSATIONS)
            .prop_map(|(hold, on_account, target)| Event::Hold { hold, on_account, target }),
        1 => (0..HOLDS).prop_map(|hold| Event::Release { hold }),
        1 => account.prop_map(|account| Event::Erase { account }),
        2 => Just(Event::Sweep),
    ]
}

/// Every account is created first (one may get a plan in neither list and be refused), so that
/// most later events name a live account; then random events follow.
pub fn timeline(max_len: usize) -> impl Strategy<Value = Vec<Op>> {
    let signups =
        prop::collection::vec((0..PLANS.len(), prop::option::of(any::<bool>())), ACCOUNTS);
    let events = prop::collection::vec(
        (advance(), event()).prop_map(|(advance_ms, event)| Op { advance_ms, event }),
        1..max_len,
    );
    (signups, events).prop_map(|(signups, mut events)| {
        let mut ops: Vec<Op> = signups
            .into_iter()
            .enumerate()
            .map(|(account, (plan, choice))| Op {
                advance_ms: 0,
                event: Event::Create {
                    account,
                    plan,
                    choice,
                },
            })
            .collect();
        ops.append(&mut events);
        ops
    })
}

/// Timelines start before the policy takes effect, so that every gate rule can be reached.
pub fn start() -> Timestamp {
    Timestamp::parse("2025-07-01T00:00:00Z").unwrap()
}

pub fn account_id(index: usize) -> AccountId {
    AccountId::parse(&format!("a{index}")).unwrap()
}

pub fn conversation_id(index: usize) -> ConversationId {
    ConversationId::parse(&format!("c{index}")).unwrap()
}

pub fn hold_id(index: usize) -> HoldId {
    HoldId::parse(&format!("h{index}")).unwrap()
}

pub fn command(event: &Event) -> Command {
    match *event {
        Event::Create {
            account,
            plan,
            choice,
        } => Command::CreateAccount {
            account: account_id(account),
            plan: PLANS[plan].to_owned(),
            choice: choice.map(|allowed| (allowed, Channel::Signup)),
        },
        Event::Choose { account, allowed } => Command::Choose {
            account: account_id(account),
            allowed,
            channel: Channel::Settings,
        },
        Event::NoticeShown { account } => Command::NoticeShown {
            account: account_id(account),
        },
        Event::ChangePlan { account, plan } => Command::ChangePlan {
            account: account_id(account),
            plan: PLANS[plan].to_owned(),
        },
        Event::Message {
            account,
            conversation,
            incognito,
            assistant,
        } => Command::Message {
            account: account_id(account),
            conversation: conversation_id(conversation),
            surface: if conversation % 2 == 0 {
                Surface::Chat
            } else {
                Surface::Code
            },
            role: if assistant {
                Role::Assistant
            } else {
                Role::User
            },
            text: format!("message in c{conversation}"),
            incognito,
        },
        Event::Feedback {
            account,
            conversation,
            up,
        } => Command::Feedback {
            account: account_id(account),
            conversation: conversation_id(conversation),
            rating: if up { Rating::Up } else { Rating::Down },
            comment: None,
        },
        Event::Delete { conversation } => Command::DeleteConversation {
            conversation: conversation_id(conversation),
        },
        Event::Hold {
            hold,
            on_account,
            target,
        } => Command::PlaceHold {
            hold: hold_id(hold),
            target: if on_account {
                HoldTarget::Account(account_id(target % ACCOUNTS))
            } else {
                HoldTarget::Conversation(conversation_id(target))
            },
        },
        Event::Release { hold } => Command::ReleaseHold {
            hold: hold_id(hold),
        },
        Event::Erase { account } => Command::EraseAccount {
            account: account_id(account),
        },
        Event::Sweep => Command::Sweep,
    }
}
