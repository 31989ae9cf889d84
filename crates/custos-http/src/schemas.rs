//! JSON Schemas of the success bodies, for `/openapi.json`. The integration tests check every
//! answer the authorization matrix gets against the schema documented for its route.

use serde_json::{Value, json};

/// A string or null.
fn optional_string() -> Value {
    json!({"type": ["string", "null"]})
}

/// An optional field of a request body: absent and `null` mean the same.
pub fn or_null(schema: Value) -> Value {
    json!({"anyOf": [schema, {"type": "null"}]})
}

/// The reason codes of a decision, in rule order.
fn codes<'a>(all: impl Iterator<Item = &'a str>) -> Value {
    Value::Array(all.map(|code| json!(code)).collect())
}

fn time() -> Value {
    json!({"type": "string", "format": "date-time"})
}

/// An object whose every listed property is required and no other is allowed.
fn object(properties: Value) -> Value {
    let required: Vec<Value> = properties
        .as_object()
        .map(|p| p.keys().map(|k| json!(k)).collect())
        .unwrap_or_default();
    json!({"type": "object", "additionalProperties": false, "required": required, "properties": properties})
}

pub fn health() -> Value {
    object(json!({"status": {"const": "ok"}}))
}

pub fn readiness() -> Value {
    object(json!({"status": {"const": "ready"}, "gate_lag_ms": {"type": "integer", "minimum": 0}}))
}

pub fn gate() -> Value {
    object(json!({
        "decision": {"enum": ["allow", "prompt", "block"]},
        "reason": {"enum": codes(custos_core::GateReason::ALL.iter().map(|c| c.as_str()))},
        "notice": object(json!({"id": {"type": "string"}, "choose_by": time()})),
    }))
}

fn preference_properties() -> serde_json::Map<String, Value> {
    let properties = json!({
        "state": {"enum": ["unset", "allowed", "declined"]},
        "decided_at": optional_string(),
        "channel": {"enum": ["signup", "notice", "settings", null]},
        "notice": optional_string(),
    });
    properties.as_object().cloned().unwrap_or_default()
}

pub fn account() -> Value {
    object(json!({
        "id": {"type": "string"},
        "plan": {"type": "string"},
        "preference": object(Value::Object(preference_properties())),
        "gate": gate(),
    }))
}

pub fn preference_set() -> Value {
    let mut properties = preference_properties();
    properties.insert(
        "receipt".into(),
        json!({"type": "string", "description": "The receipt id: the ledger entry's hash"}),
    );
    object(Value::Object(properties))
}

pub fn history() -> Value {
    let hash = json!({"type": "string", "pattern": "^[0-9a-f]{64}$"});
    object(json!({
        "account": {"type": "string"},
        "entries": {"type": "array", "items": object(json!({
            "index": {"type": "integer"},
            "kind": {"enum": ["created", "choice", "notice_shown", "plan_changed", "erased"]},
            "at": time(),
            "preference": {"enum": ["allowed", "declined", null]},
            "channel": {"enum": ["signup", "notice", "settings", null]},
            "plan": optional_string(),
            "notice": {"type": "string"},
            "policy": {"type": "string"},
            "actor": {"type": "string"},
            "prev_hash": hash,
            "hash": hash,
        }))},
    }))
}

pub fn receipt() -> Value {
    json!({"type": "object", "required": ["receipt", "signature"],
    "description": "An ISO/IEC TS 27560 / Kantara v1.1 consent receipt and its Ed25519 signature over the receipt's canonical JSON",
    "properties": {
        "receipt": {"type": "object", "required": ["version", "schema", "piiPrincipalId", "services", "evidence"]},
        "signature": object(json!({"alg": {"const": "Ed25519"}, "keyId": {"type": "string"}, "publicKey": {"type": "string"}, "value": {"type": "string"}})),
    }})
}

pub fn event_results() -> Value {
    object(json!({"results": {"type": "array", "items": {
    "type": "object", "required": ["index", "id", "status"], "additionalProperties": false,
    "properties": {
        "index": {"type": "integer"},
        "id": optional_string(),
        "status": {"enum": ["accepted", "duplicate", "rejected"]},
        "problem": {"$ref": "#/components/schemas/Problem"},
    }}}}))
}

fn status_properties() -> serde_json::Map<String, Value> {
    let properties = json!({
        "id": {"type": "string"},
        "retention_class": {"enum": ["extended", "standard", null]},
        "expires_at": optional_string(),
        "held": {"type": "boolean"},
        "eligible": {"type": "boolean"},
        "reason": {"enum": codes(custos_core::EligibilityReason::ALL.iter().map(|c| c.as_str()))},
    });
    properties.as_object().cloned().unwrap_or_default()
}

pub fn conversation_list() -> Value {
    let mut properties = status_properties();
    properties.insert("surface".into(), json!({"enum": ["chat", "code"]}));
    object(json!({
        "account": {"type": "string"},
        "conversations": {"type": "array", "items": object(Value::Object(properties))},
    }))
}

pub fn conversation_status() -> Value {
    let mut properties = status_properties();
    properties.insert("exists".into(), json!({"type": "boolean"}));
    properties.insert("visible".into(), json!({"type": "boolean"}));
    object(Value::Object(properties))
}

pub fn ledger_verification() -> Value {
    object(json!({
        "intact": {"type": "boolean"},
        "accounts": {"type": "integer"},
        "entries": {"type": "integer"},
        "checkpoints": {"type": "integer"},
        "problem": optional_string(),
    }))
}

pub fn clock() -> Value {
    object(json!({"now": time()}))
}

pub fn sweep() -> Value {
    object(json!({
        "at": time(),
        "purged": {"type": "integer"},
        "purged_by_reason": {"type": "object", "additionalProperties": {"type": "integer"}},
        "held_back": {"type": "integer"},
    }))
}

pub fn hold() -> Value {
    object(json!({
        "id": {"type": "string"},
        "account": optional_string(),
        "conversation": optional_string(),
        "reason": {"type": "string"},
        "placed_at": time(),
        "placed_by": {"type": "string"},
        "released_at": optional_string(),
        "released_by": optional_string(),
        "active": {"type": "boolean"},
    }))
}

pub fn holds() -> Value {
    object(json!({"holds": {"type": "array", "items": hold()}}))
}

pub fn export_preview() -> Value {
    object(json!({
        "cutoff": time(),
        "conversations": {"type": "array", "items": {"type": "string"}},
        "messages": {"type": "integer"},
        "feedback": {"type": "integer"},
        "excluded": {"type": "object", "additionalProperties": {"type": "integer"}},
    }))
}

/// The manifest of a finished export (custos-export/2: messages carry `role` and `content` in
/// both formats).
fn export_manifest() -> Value {
    let count = json!({"type": "integer", "minimum": 0});
    let counts = json!({"type": "object", "additionalProperties": count});
    object(json!({
        "format_version": {"const": custos_export::FORMAT_VERSION},
        "snapshot_id": {"type": "string"},
        "purpose": {"const": "model_training"},
        "cutoff": time(),
        "snapshot_at": time(),
        "policy": object(json!({"id": {"type": "string"}, "sha256": {"type": "string"}})),
        "ledger_checkpoint": {"type": ["object", "null"]},
        "signing_key": {"type": "string"},
        "signing_key_id": {"type": "string"},
        "keys": {"type": "string"},
        "data_format": {"enum": ["parquet", "jsonl"]},
        "conversations": object(json!({"total": count, "included": count, "excluded": counts})),
        "content": object(json!({"messages": count, "feedback": count})),
        "redactions": counts,
        "files": {"type": "array", "items": object(json!({
            "name": {"type": "string"}, "rows": count, "bytes": count, "sha256": {"type": "string"},
        }))},
    }))
}

pub fn export_started() -> Value {
    object(json!({
        "snapshot_id": {"type": "string"},
        "status": {"const": "running"},
        "cutoff": time(),
        "snapshot_at": time(),
        "data_format": {"enum": ["parquet", "jsonl"]},
    }))
}

pub fn export_status() -> Value {
    json!({
        "type": "object",
        "required": ["snapshot_id", "status"],
        "properties": {
            "snapshot_id": {"type": "string"},
            "status": {"enum": ["running", "done", "failed", "incomplete"]},
            "progress": object(json!({"total": {"type": "integer"}, "scanned": {"type": "integer"}, "included": {"type": "integer"}})),
            "manifest": export_manifest(),
            "error": {"type": "string"},
            "instance": {"type": "string", "description": "The instance writing it, when another one is"},
        },
        "additionalProperties": false,
    })
}

pub fn export_list() -> Value {
    object(json!({"exports": {"type": "array", "items": export_manifest()}}))
}

pub fn revocations() -> Value {
    object(json!({
        "snapshot_id": {"type": "string"},
        "as_of": time(),
        "rows": {"type": "integer"},
        "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
        "revoked": {"type": "array", "items": object(json!({
            "conversation_key": {"type": "string"},
            "reason": {"enum": ["withdrawn", "deleted", "erased", "expired"]},
        }))},
    }))
}

pub fn access_document() -> Value {
    json!({"type": "object", "description": "custos-data-export/1: the account, its plan history, every choice with its signed receipt, notices shown, the consent ledger, and every visible conversation with its content, retention and training eligibility",
    "required": ["format", "generated_at", "controller", "account", "plan_history", "choices", "notices_shown", "consent_ledger", "ledger_public_key", "conversations"],
    "properties": {
        "format": {"const": "custos-data-export/1"},
        "generated_at": time(),
        "account": {"type": "object", "required": ["id", "created_at", "plan", "training_preference", "gate"]},
        "plan_history": {"type": "array", "items": {"type": "object", "required": ["at", "plan"]}},
        "choices": {"type": "array", "items": {"type": "object", "required": ["at", "state", "channel", "notice", "receipt_id", "receipt"]}},
        "notices_shown": {"type": "array", "items": time()},
        "consent_ledger": {"type": "array", "items": {"type": "object"}},
        "ledger_public_key": {"type": "string"},
        "conversations": {"type": "array", "items": {"type": "object",
            "required": ["id", "surface", "incognito", "retention_class", "expires_at", "held", "eligible_for_training", "reason", "messages", "feedback"]}},
    }})
}

pub fn retention_report() -> Value {
    object(json!({
        "at": time(),
        "conversations_by_class": {"type": "object", "additionalProperties": {"type": "integer"}},
        "due_now": {"type": "integer"},
        "due_by_week": {"type": "array", "items": object(json!({"week_starting": time(), "due": {"type": "integer"}}))},
        "purged_by_day": {"type": "array", "items": object(json!({"day": {"type": "string"}, "reason": {"type": "string"}, "purged": {"type": "integer"}}))},
        "holds": object(json!({"active_on_accounts": {"type": "integer"}, "active_on_conversations": {"type": "integer"}, "released": {"type": "integer"}})),
    }))
}

pub fn consent_report() -> Value {
    object(json!({
        "at": time(),
        "accounts_by_plan_and_preference": {"type": "array", "items": object(json!({
            "plan": {"type": "string"}, "consumer": {"type": "boolean"},
            "preference": {"enum": ["unset", "allowed", "declined"]}, "accounts": {"type": "integer"}}))},
        "erased_accounts": {"type": "integer"},
        "choices_by_day": {"type": "array", "items": object(json!({
            "day": {"type": "string"}, "channel": optional_string(), "preference": optional_string(), "choices": {"type": "integer"}}))},
        "deadline": object(json!({
            "notice": {"type": "string"}, "choose_by": time(), "passed": {"type": "boolean"},
            "days_left": {"type": "integer"}, "undecided_consumer_accounts": {"type": "integer"}})),
    }))
}
