//! Signed consent receipts (docs/POLICY.md, Beyond the minimum, R11): the ISO/IEC TS 27560 and Kantara Consent Receipt
//! v1.1 fields for one recorded choice, signed with the store's Ed25519 key.
//!
//! A receipt is made on demand from the choice's ledger entry, so its id is that entry's hash
//! and it always says exactly what the ledger holds. The signature covers the receipt's canonical
//! JSON: compact, keys in sorted order.

use custos_core::policy::{from_hex, hex};
use custos_core::{Channel, Policy, Preference};
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use serde_json::{Value, json};

use crate::ledger::{Entry, EntryKind, LedgerKey};

pub const RECEIPT_VERSION: &str = "KI-CR-v1.1.0";

/// The receipt of a choice entry, unsigned.
pub fn receipt_of(policy: &Policy, entry: &Entry) -> Option<Value> {
    if entry.kind != EntryKind::Choice {
        return None;
    }
    let allowed = entry.preference == Some(Preference::Allowed);
    let r = &policy.retention;
    Some(json!({
        "version": RECEIPT_VERSION,
        "schema": ["ISO/IEC TS 27560:2023", "Kantara Consent Receipt Specification v1.1"],
        "consentReceiptID": hex(&entry.hash),
        "consentTimestamp": entry.key.at.to_string(),
        "collectionMethod": entry.channel.map_or("unknown", Channel::as_str),
        "piiPrincipalId": entry.account.as_str(),
        "piiControllers": [{
            "piiController": policy.controller.name,
            "contact": policy.controller.contact,
            "onBehalf": false,
        }],
        "jurisdiction": policy.controller.jurisdiction,
        "language": policy.controller.language,
        "policyUrl": policy.notice.url,
        "notice": {"id": entry.notice_id, "sha256": hex(&policy.notice.sha256)},
        "policy": {"id": entry.policy_id, "sha256": hex(&policy.sha256)},
        "services": [{
            "service": "model training",
            "purposes": [{
                "purpose": "Use chats, coding sessions and feedback to train and improve models",
                "purposeCategory": ["model_training"],
                "consentType": "EXPLICIT",
                "consentGiven": allowed,
                "piiCategory": ["chat conversations", "coding sessions", "feedback"],
                "primaryPurpose": true,
                "termination": format!(
                    "conversations are kept {} after activity while training is allowed, {} otherwise; deleted ones at most {} after deletion; after a withdrawal at most {}",
                    r.extended, r.standard, r.deletion_grace, r.withdrawal_cap
                ),
                "thirdPartyDisclosure": false,
                "thirdPartyName": Value::Null,
            }],
        }],
        "thirdPartyDisclosure": "none",
        "withdrawalMethod": "Privacy settings, at any time; withdrawing is as easy as allowing",
        "sensitive": false,
        "spiCat": [],
        "evidence": {"ledgerEntry": entry.idx, "ledgerHash": hex(&entry.hash), "prevHash": hex(&entry.prev_hash)},
    }))
}

/// A receipt with its signature, as served and as `custos receipt verify` reads it.
pub fn signed(receipt: Value, key: &LedgerKey) -> Value {
    let signature = key.sign(canonical(&receipt).as_bytes());
    json!({
        "receipt": receipt,
        "signature": {"alg": "Ed25519", "keyId": key.id(), "publicKey": key.public_hex(), "value": hex(&signature)},
    })
}

/// Compact JSON with keys sorted (serde_json's map keeps them sorted).
fn canonical(receipt: &Value) -> String {
    receipt.to_string()
}

/// Checks a signed receipt; with `trusted_key` (hex), also that this key signed it.
pub fn verify(document: &Value, trusted_key: Option<&str>) -> Result<String, String> {
    let receipt = document.get("receipt").ok_or("no `receipt` object")?;
    let signature = document.get("signature").ok_or("no `signature` object")?;
    if signature.get("alg").and_then(Value::as_str) != Some("Ed25519") {
        return Err("the signature's `alg` is not Ed25519".into());
    }
    let key_hex = signature
        .get("publicKey")
        .and_then(Value::as_str)
        .ok_or("no `signature.publicKey`")?;
    if let Some(trusted) = trusted_key
        && !trusted.eq_ignore_ascii_case(key_hex)
    {
        return Err(format!(
            "signed by key {key_hex}, not by the trusted key {trusted}"
        ));
    }
    let public = from_hex::<32>(key_hex).ok_or("`signature.publicKey` is not 32 bytes of hex")?;
    let key = VerifyingKey::from_bytes(&public)
        .map_err(|_| "`signature.publicKey` is not an Ed25519 public key")?;
    // The id a receipt names is the hash of its public key: a receipt can't claim another's.
    if let Some(id) = signature.get("keyId").and_then(Value::as_str)
        && id != crate::ledger::signing_key_id(&public)
    {
        return Err(format!(
            "`signature.keyId` {id} is not the id of the key that signed"
        ));
    }
    let value = signature
        .get("value")
        .and_then(Value::as_str)
        .and_then(from_hex::<64>)
        .ok_or("`signature.value` is not a 64-byte hex signature")?;
    key.verify(
        canonical(receipt).as_bytes(),
        &Signature::from_bytes(&value),
    )
    .map_err(|_| {
        "the signature does not match the receipt: it was changed or signed by another key"
            .to_owned()
    })?;
    Ok(receipt
        .get("consentReceiptID")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned())
}
