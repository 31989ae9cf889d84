//! What a receiver runs on an export: the manifest's signature, then every file's size and
//! hash.

use std::path::Path;

use custos_store::ledger::verify_signature;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::ExportError;
use crate::files::{MANIFEST, SIGNATURE};

/// What `verify` found in an export folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub snapshot: String,
    pub files: usize,
    pub rows: u64,
}

/// Checks an export folder as its receiver would: the manifest's signature by the trusted
/// public key, and every listed file's size and SHA-256.
pub fn verify(folder: &Path, trusted_public_key: &str) -> Result<Verified, ExportError> {
    let manifest_path = folder.join(MANIFEST);
    let signature_path = folder.join(SIGNATURE);
    let bytes = std::fs::read(&manifest_path).map_err(|e| ExportError::io(&manifest_path, e))?;
    let signature: Value = std::fs::read(&signature_path)
        .map_err(|e| ExportError::io(&signature_path, e))
        .and_then(|b| {
            serde_json::from_slice(&b)
                .map_err(|e| ExportError::invalid(&signature_path, e.to_string()))
        })?;
    let signed = signature
        .get("signature")
        .and_then(Value::as_str)
        .and_then(custos_core::policy::from_hex::<64>);
    if !signed.is_some_and(|s| verify_signature(trusted_public_key, &bytes, &s)) {
        return Err(ExportError::invalid(
            &signature_path,
            "the manifest's signature does not verify with the trusted public key",
        ));
    }
    let manifest: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ExportError::invalid(&manifest_path, e.to_string()))?;
    let files = manifest
        .get("files")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut rows = 0;
    for file in &files {
        let name = file["name"].as_str().unwrap_or("");
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return Err(ExportError::invalid(
                &manifest_path,
                format!("a file name `{name}` that is not a plain name"),
            ));
        }
        let path = folder.join(name);
        let data = std::fs::read(&path).map_err(|e| ExportError::io(&path, e))?;
        let digest = custos_core::policy::hex(&Sha256::digest(&data));
        if Some(digest.as_str()) != file["sha256"].as_str()
            || Some(data.len() as u64) != file["bytes"].as_u64()
        {
            return Err(ExportError::invalid(
                &path,
                "its size or SHA-256 differs from the manifest's",
            ));
        }
        rows += file["rows"].as_u64().unwrap_or(0);
    }
    Ok(Verified {
        snapshot: manifest
            .get("snapshot_id")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
        files: files.len(),
        rows,
    })
}
