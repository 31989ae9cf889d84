//! Data-subject access and portability (R14; GDPR Art. 15 and 20): one machine-readable JSON
//! document of everything held about an account, read from one consistent snapshot.
//!
//! It holds the account and its plan history, every choice with its signed receipt, every
//! notice shown, the consent ledger with its hashes, and every conversation still visible to
//! the user with its messages, feedback, retention class, expiry and training eligibility (with
//! the reason). Conversations the user deleted are left out: they are no longer the user's to
//! see, and are purged within the grace period.

use custos_core::{
    AccountId, Channel, EligibilityReason, GateDecision, GateReason, Policy, Preference, Rating,
    RetentionClass, Role, Surface, Timestamp,
};
use serde::Serialize;

use crate::error::StoreError;
use crate::ledger::{Entry, EntryKind, LedgerKey};
use crate::receipt;
use crate::records::{Histories, ledger_entries, load_conversation};
use crate::sql::Tx;
use crate::views::{account_view, visible_conversations};

pub const FORMAT: &str = "custos-data-export/1";

/// Everything held about one account, as its owner downloads it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AccessDocument {
    pub format: &'static str,
    pub generated_at: Timestamp,
    pub controller: Controller,
    pub account: AccountPart,
    pub plan_history: Vec<PlanFrom>,
    pub choices: Vec<ChoiceRecord>,
    /// When the notice was shown and the user chose "Not now".
    pub notices_shown: Vec<Timestamp>,
    pub consent_ledger: Vec<Entry>,
    /// The key that verifies the receipts and checkpoints (Ed25519, hex).
    pub ledger_public_key: String,
    pub conversations: Vec<ConversationRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Controller {
    pub name: String,
    pub contact: Option<String>,
    pub jurisdiction: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccountPart {
    pub id: AccountId,
    pub created_at: Option<Timestamp>,
    pub plan: String,
    pub training_preference: Preference,
    pub gate: GatePart,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct GatePart {
    pub decision: GateDecision,
    pub reason: GateReason,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlanFrom {
    pub at: Timestamp,
    pub plan: Option<String>,
}

/// A choice, with its signed consent receipt.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChoiceRecord {
    pub at: Timestamp,
    pub state: Option<Preference>,
    pub channel: Option<Channel>,
    pub notice: String,
    pub receipt_id: String,
    /// The signed receipt (docs/POLICY.md, Beyond the minimum): a JSON document whose signature covers its canonical form.
    pub receipt: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConversationRecord {
    pub id: custos_core::ConversationId,
    pub surface: Surface,
    pub incognito: bool,
    pub retention_class: Option<RetentionClass>,
    pub expires_at: Option<Timestamp>,
    pub held: bool,
    pub eligible_for_training: bool,
    pub reason: EligibilityReason,
    pub messages: Vec<MessageRecord>,
    pub feedback: Vec<FeedbackRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MessageRecord {
    pub at: Timestamp,
    pub role: Role,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FeedbackRecord {
    pub at: Timestamp,
    pub rating: Rating,
    pub comment: Option<String>,
}

pub fn access_document(
    tx: &mut dyn Tx,
    histories: &Histories,
    policy: &Policy,
    key: &LedgerKey,
    account: &AccountId,
    at: Timestamp,
) -> Result<AccessDocument, StoreError> {
    let view = account_view(tx, histories, policy, account, at)?;
    let entries = ledger_entries(tx, account.as_str())?;
    let plan_history = entries
        .iter()
        .filter(|e| matches!(e.kind, EntryKind::Created | EntryKind::PlanChanged))
        .map(|e| PlanFrom {
            at: e.key.at,
            plan: e.plan.clone(),
        })
        .collect();
    let choices = entries
        .iter()
        .filter(|e| e.kind == EntryKind::Choice)
        .map(|e| ChoiceRecord {
            at: e.key.at,
            state: e.preference,
            channel: e.channel,
            notice: e.notice_id.clone(),
            receipt_id: custos_core::policy::hex(&e.hash),
            receipt: receipt::receipt_of(policy, e).map(|r| receipt::signed(r, key)),
        })
        .collect();
    let notices_shown = entries
        .iter()
        .filter(|e| e.kind == EntryKind::NoticeShown)
        .map(|e| e.key.at)
        .collect();
    let mut conversations = Vec::new();
    for summary in visible_conversations(tx, histories, policy, account, at)? {
        let Some(conversation) = load_conversation(tx, &summary.id, true)? else {
            continue;
        };
        let status = summary.status;
        conversations.push(ConversationRecord {
            id: summary.id,
            surface: conversation.surface,
            incognito: conversation.incognito,
            retention_class: status.expiry.map(|e| e.class),
            expires_at: status.expiry.map(|e| e.at),
            held: status.held,
            eligible_for_training: status.eligibility.is_eligible(),
            reason: status.eligibility,
            messages: conversation
                .messages
                .into_iter()
                .map(|m| MessageRecord {
                    at: m.key.at,
                    role: m.role,
                    text: m.text,
                })
                .collect(),
            feedback: conversation
                .feedback
                .into_iter()
                .map(|f| FeedbackRecord {
                    at: f.key.at,
                    rating: f.rating,
                    comment: f.comment,
                })
                .collect(),
        });
    }
    Ok(AccessDocument {
        format: FORMAT,
        generated_at: at,
        controller: Controller {
            name: policy.controller.name.clone(),
            contact: policy.controller.contact.clone(),
            jurisdiction: policy.controller.jurisdiction.clone(),
        },
        account: AccountPart {
            id: account.clone(),
            created_at: entries.first().map(|e| e.key.at),
            plan: view.plan,
            training_preference: view.preference,
            gate: GatePart {
                decision: view.gate.decision,
                reason: view.gate.reason,
            },
        },
        plan_history,
        choices,
        notices_shown,
        consent_ledger: entries,
        ledger_public_key: key.public_hex(),
        conversations,
    })
}
