//! Upgrades of data written by earlier schema versions, beyond what a migration's SQL can do.

use crate::apply::pseudonymize;
use crate::codec::{account_id, time};
use crate::error::StoreError;
use crate::ledger::{Encoding, GENESIS};
use crate::records::{END, Histories, history_from, ledger_entries};
use crate::sql::Tx;

/// Fills the gate columns of accounts written before schema version 2, from each ledger as the
/// core reads it (the latest plan and choice in event order).
pub fn fill_gate_columns(tx: &mut dyn Tx) -> Result<(), StoreError> {
    for row in tx.query("SELECT account_id FROM accounts WHERE plan IS NULL", &[])? {
        let id = row.text(0)?;
        let Some(history) = history_from(&ledger_entries(tx, &id)?)? else {
            continue;
        };
        tx.execute(
            "UPDATE accounts SET plan = ?, preference = ? WHERE account_id = ?",
            &[
                history.plan_at(END).as_str().into(),
                history.preference_at(END).as_str().into(),
                id.into(),
            ],
        )?;
    }
    Ok(())
}

/// Upgrades ledgers written before schema 4, whose hashes named accounts by id: each chain is
/// first verified under that encoding (a chain that does not verify stops the upgrade, and
/// nothing is changed), then chained again naming the account by pseudonym, with users recorded
/// as `user` rather than by id. Erased accounts are then pseudonymized. The old checkpoints
/// covered the old hashes, so they are removed and sealing starts over.
pub fn rechain_by_pseudonym(tx: &mut dyn Tx, histories: &Histories) -> Result<(), StoreError> {
    let accounts = tx.query("SELECT account_id, erased_at FROM accounts", &[])?;
    for row in &accounts {
        let account = account_id(row.text(0)?)?;
        let erased_at = row.optional_int(1)?;
        let mut entries = ledger_entries(tx, account.as_str())?;
        let mut previous = GENESIS;
        for entry in &entries {
            if entry.prev_hash != previous
                || entry.chained_hash_as(Encoding::V1, &previous, account.as_str()) != entry.hash
            {
                return Err(StoreError::corrupt(format!(
                    "cannot upgrade: the ledger of `{account}` does not verify at entry {} (run `custos ledger verify` with the custos that wrote it)",
                    entry.idx
                )));
            }
            previous = entry.hash;
        }
        let name = histories.pseudonym(account.as_str());
        let mut previous = GENESIS;
        for entry in &mut entries {
            if entry.actor.starts_with("user:") {
                entry.actor = "user".to_owned();
            }
            entry.prev_hash = previous;
            entry.hash = entry.chained_hash(&previous, &name);
            previous = entry.hash;
            tx.execute(
                "UPDATE ledger SET actor = ?, prev_hash = ?, hash = ? WHERE account_id = ? AND idx = ?",
                &[
                    entry.actor.as_str().into(),
                    entry.prev_hash.as_slice().into(),
                    entry.hash.as_slice().into(),
                    account.as_str().into(),
                    entry.idx.into(),
                ],
            )?;
        }
        tx.execute(
            "UPDATE accounts SET ledger_head = ?, checkpointed_len = 0 WHERE account_id = ?",
            &[previous.as_slice().into(), account.as_str().into()],
        )?;
        if let Some(at) = erased_at {
            pseudonymize(tx, histories, &account, time(at)?)?;
        }
    }
    tx.execute("DELETE FROM checkpoint_heads", &[])?;
    tx.execute("DELETE FROM checkpoints", &[])?;
    Ok(())
}
