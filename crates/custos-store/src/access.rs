//! Data-subject access and portability (R14; GDPR Art. 15 and 20): one machine-readable JSON
//! document of everything held about an account, read from one consistent snapshot.
//!
//! It holds the account and its plan history, every choice with its signed receipt, every
//! notice shown, the consent ledger with its hashes, and every conversation still visible to
//! the user with its messages, feedback, retention class, expiry and training eligibility (with
//! the reason). Conversations the user deleted are left out: they are no longer the user's to
//! see, and are purged within the grace period.

use custos_core::{AccountId, Policy, Timestamp};
use serde_json::{Value, json};

use crate::StoreError;
use crate::engine::{self, Histories};
use crate::ledger::{EntryKind, LedgerKey};
use crate::receipt;
use crate::sql::Tx;

pub const FORMAT: &str = "custos-data-export/1";

pub fn access_document(
    tx: &mut dyn Tx,
    histories: &Histories,
    policy: &Policy,
    key: &LedgerKey,
    account: &AccountId,
    at: Timestamp,
) -> Result<Value, StoreError> {
    let view = engine::account_view(tx, histories, policy, account, at)?;
    let entries = engine::ledger_entries(tx, account.as_str())?;
    let hex = custos_core::policy::hex;
    let created_at = entries.first().map(|e| e.key.at.to_string());
    let plan_history: Vec<Value> = entries
        .iter()
        .filter(|e| matches!(e.kind, EntryKind::Created | EntryKind::PlanChanged))
        .map(|e| json!({"at": e.key.at.to_string(), "plan": e.plan}))
        .collect();
    let choices: Vec<Value> = entries
        .iter()
        .filter(|e| e.kind == EntryKind::Choice)
        .map(|e| {
            json!({
                "at": e.key.at.to_string(),
                "state": e.preference.map(custos_core::Preference::as_str),
                "channel": e.channel.map(custos_core::Channel::as_str),
                "notice": e.notice_id,
                "receipt_id": hex(&e.hash),
                "receipt": receipt::receipt_of(policy, e).map(|r| receipt::signed(r, key)),
            })
        })
        .collect();
    let notices_shown: Vec<String> = entries
        .iter()
        .filter(|e| e.kind == EntryKind::NoticeShown)
        .map(|e| e.key.at.to_string())
        .collect();
    let ledger: Vec<Value> = entries.iter().map(crate::ledger::Entry::to_json).collect();
    let mut conversations = Vec::new();
    for summary in engine::visible_conversations(tx, histories, policy, account, at)? {
        let Some(conversation) = engine::load_conversation(tx, &summary.id, true)? else {
            continue;
        };
        let status = summary.status;
        conversations.push(json!({
            "id": summary.id.as_str(),
            "surface": conversation.surface.as_str(),
            "incognito": conversation.incognito,
            "retention_class": status.expiry.map(|e| e.class.as_str()),
            "expires_at": status.expiry.map(|e| e.at.to_string()),
            "held": status.held,
            "eligible_for_training": status.eligibility.is_eligible(),
            "reason": status.eligibility.as_str(),
            "messages": conversation.messages.iter().map(|m| json!({
                "at": m.key.at.to_string(), "role": m.role.as_str(), "text": m.text,
            })).collect::<Vec<_>>(),
            "feedback": conversation.feedback.iter().map(|f| json!({
                "at": f.key.at.to_string(), "rating": f.rating.as_str(), "comment": f.comment,
            })).collect::<Vec<_>>(),
        }));
    }
    Ok(json!({
        "format": FORMAT,
        "generated_at": at.to_string(),
        "controller": {
            "name": policy.controller.name,
            "contact": policy.controller.contact,
            "jurisdiction": policy.controller.jurisdiction,
        },
        "account": {
            "id": account.as_str(),
            "created_at": created_at,
            "plan": view.plan,
            "training_preference": view.preference.as_str(),
            "gate": {"decision": view.gate.decision.as_str(), "reason": view.gate.reason.as_str()},
        },
        "plan_history": plan_history,
        "choices": choices,
        "notices_shown": notices_shown,
        "consent_ledger": ledger,
        "ledger_public_key": key.public_hex(),
        "conversations": conversations,
    }))
}
