//! Access tokens: only their SHA-256 is stored and compared, never the token.

use custos_core::{AccountId, Timestamp};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::codec::{account_id, time};
use crate::error::StoreError;
use crate::sql::Tx;

/// The SHA-256 of a token: what is stored and compared, never the token itself.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Who a token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub role: String,
    pub account: Option<AccountId>,
    /// When the token stops working, if ever.
    pub expires_at: Option<Timestamp>,
}

pub fn insert_token(
    tx: &mut dyn Tx,
    hash: &[u8; 32],
    role: &str,
    account: Option<&AccountId>,
    created_at: Timestamp,
    expires_at: Option<Timestamp>,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO tokens (token_hash, role, account_id, created_at, expires_at) VALUES (?, ?, ?, ?, ?)",
        &[
            hash.as_slice().into(),
            role.into(),
            account.map(AccountId::as_str).into(),
            created_at.unix_millis().into(),
            expires_at.map(Timestamp::unix_millis).into(),
        ],
    )?;
    Ok(())
}

/// The principal of a token hash that is known, unexpired and unrevoked at `now`.
pub fn principal(
    tx: &mut dyn Tx,
    hash: &[u8; 32],
    now: Timestamp,
) -> Result<Option<Principal>, StoreError> {
    let Some(row) = tx.query_one(
        "SELECT token_hash, role, account_id, expires_at, revoked_at FROM tokens WHERE token_hash = ?",
        &[hash.as_slice().into()],
    )?
    else {
        return Ok(None);
    };
    // The lookup found the row by its hash; compare again in constant time, so that no
    // timing depends on how much of a guess was right.
    let stored = row.bytes(0)?;
    let same = bool::from(stored.as_slice().ct_eq(hash.as_slice()));
    let live = row
        .optional_int(3)?
        .is_none_or(|expires| now.unix_millis() < expires)
        && row.optional_int(4)?.is_none();
    if !same || !live {
        return Ok(None);
    }
    Ok(Some(Principal {
        role: row.text(1)?,
        account: row.optional_text(2)?.map(account_id).transpose()?,
        expires_at: row.optional_int(3)?.map(time).transpose()?,
    }))
}

pub fn revoke_token(tx: &mut dyn Tx, hash: &[u8; 32], now: Timestamp) -> Result<bool, StoreError> {
    let changed = tx.execute(
        "UPDATE tokens SET revoked_at = ? WHERE token_hash = ? AND revoked_at IS NULL",
        &[now.unix_millis().into(), hash.as_slice().into()],
    )?;
    Ok(changed > 0)
}
