//! custos-core: the rules of custos, written once.
//!
//! It owns the policy file's meaning, the domain types, and the four decisions of docs/POLICY.md, The decisions —
//! Gate, Expiry, Eligible and training content — plus the admission rules that refuse invalid
//! events. Every other part of custos (store, HTTP, sweeps, exports, pages, the scenario runner)
//! calls these functions instead of restating a rule.
//!
//! This crate must never do I/O, spawn threads or tasks, or read the clock: every time is a
//! parameter. CI fails if it ever depends on tokio, rusqlite, postgres or axum.

/// A closed set of values that travel as fixed strings (reason codes, channels, roles): one
/// place for each value's spelling, with `as_str`, `parse` and `ALL` in declaration order.
macro_rules! closed_set {
    (
        $(#[$doc:meta])*
        pub enum $name:ident {
            $( $(#[$variant_doc:meta])* $variant:ident => $text:literal, )+
        }
    ) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum $name {
            $( $(#[$variant_doc])* $variant, )+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            pub fn parse(text: &str) -> Option<$name> {
                Self::ALL.iter().copied().find(|value| value.as_str() == text)
            }
        }

        /// As its fixed string.
        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }
    };
}

pub mod admission;
pub mod command;
pub mod content;
pub mod eligibility;
pub mod gate;
pub mod id;
pub mod model;
pub mod policy;
pub mod redaction;
pub mod retention;
pub mod selection;
pub mod status;
pub mod time;
pub mod timeline;

pub use admission::{Effect, Named, Refusal, Texts, admit};
pub use command::{Command, Names};
pub use content::{TrainingContent, training_content};
pub use eligibility::{
    EligibilityReason, RevocationReason, eligibility, revocation, snapshot_eligibility,
};
pub use gate::{Deadline, Gate, GateDecision, GateReason, deadline, gate};
pub use id::{AccountId, ConversationId, HoldId, IdError};
pub use model::{
    AccountChange, AccountHistory, Channel, Choice, Conversation, EventKey, Feedback, Hold,
    HoldTarget, Message, Preference, Rating, Role, Surface,
};
pub use policy::{ContentRule, Plan, PlanClass, Policy, PolicyError};
pub use retention::{
    Expiry, ExpiryBound, RetentionClass, SweepAction, SweepReport, expiry, sweep_action,
    sweep_decision,
};
pub use selection::{Purpose, Selection, select};
pub use status::{ConversationStatus, conversation_status};
pub use time::{Duration, Timestamp, TimestampError};
pub use timeline::{Snapshot, Timeline};
