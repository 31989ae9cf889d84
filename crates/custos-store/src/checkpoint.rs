//! Signed checkpoints of every chain head, and the verification of every chain and checkpoint.

use std::collections::BTreeMap;

use custos_core::Timestamp;

use crate::codec::{LEDGER_COLUMNS, entry_from_row, hash32, time};
use crate::error::StoreError;
use crate::ledger::{self, Entry, GENESIS, LedgerKey, checkpoint_message, heads_root};
use crate::records::{END, history_from};
use crate::sql::{Tx, Value};

/// A signed checkpoint of every chain head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub id: i64,
    pub at: Timestamp,
    pub accounts: i64,
    pub entries: i64,
    pub root: [u8; 32],
    /// Ed25519 over [`checkpoint_message`].
    pub signature: Vec<u8>,
}

/// Records a checkpoint if any chain grew since the last one; returns the newest checkpoint.
pub fn checkpoint(
    tx: &mut dyn Tx,
    key: &LedgerKey,
    at: Timestamp,
) -> Result<Option<Checkpoint>, StoreError> {
    // Only the chains that grew since the last checkpoint are read (a partial index finds them),
    // so sealing costs what changed, not what exists.
    let rows = tx.query(
        "SELECT account_id, ledger_len, ledger_head, checkpointed_len, erased_at FROM accounts \
         WHERE ledger_len <> checkpointed_len ORDER BY account_id",
        &[],
    )?;
    let mut changed = Vec::with_capacity(rows.len());
    let mut names = Vec::with_capacity(rows.len());
    let (mut new_accounts, mut new_entries) = (0i64, 0i64);
    for row in &rows {
        let (account, length, head, sealed) =
            (row.text(0)?, row.int(1)?, row.bytes(2)?, row.int(3)?);
        new_accounts += i64::from(sealed == 0);
        new_entries += length - sealed;
        names.push(key.ledger_name(&account, row.optional_int(4)?.is_some()));
        changed.push((account, length, head));
    }
    let last = latest_checkpoint(tx)?;
    if changed.is_empty() {
        return Ok(last);
    }
    crate::keys::ensure_current(tx, key)?;
    let (id, previous_root, accounts, entries) = match &last {
        Some(last) => (last.id + 1, last.root, last.accounts, last.entries),
        None => (1, GENESIS, 0, 0),
    };
    // The root chains the previous checkpoint's root with the heads that changed since, so it
    // commits to every chain head there is.
    let root = heads_root(
        &previous_root,
        changed
            .iter()
            .zip(&names)
            .map(|((_, l, h), name)| (name.as_str(), *l, h.as_slice())),
    );
    let (accounts, entries) = (accounts + new_accounts, entries + new_entries);
    let signature = key.sign(&checkpoint_message(id, at, accounts, entries, &root));
    tx.execute(
        "INSERT INTO checkpoints (id, at, accounts, entries, root, signature, key_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
        &[id.into(), at.unix_millis().into(), accounts.into(), entries.into(), root.as_slice().into(), signature.as_slice().into(), key.id().into()],
    )?;
    // Written in one go (binary `COPY` on PostgreSQL), then the accounts marked sealed from
    // the heads just written: two statements, however many chains grew.
    let heads: Vec<Vec<Value>> = changed
        .iter()
        .map(|(account, length, head)| {
            vec![
                id.into(),
                account.as_str().into(),
                (*length).into(),
                head.as_slice().into(),
            ]
        })
        .collect();
    tx.insert_rows(
        "checkpoint_heads",
        &["checkpoint_id", "account_id", "ledger_len", "head"],
        &heads,
    )?;
    tx.execute(
        "UPDATE accounts SET checkpointed_len = (SELECT h.ledger_len FROM checkpoint_heads h \
         WHERE h.checkpoint_id = ? AND h.account_id = accounts.account_id) \
         WHERE account_id IN (SELECT account_id FROM checkpoint_heads WHERE checkpoint_id = ?)",
        &[id.into(), id.into()],
    )?;
    Ok(Some(Checkpoint {
        id,
        at,
        accounts,
        entries,
        root,
        signature: signature.to_vec(),
    }))
}

/// The newest signed checkpoint, if any.
pub fn latest_checkpoint(tx: &mut dyn Tx) -> Result<Option<Checkpoint>, StoreError> {
    tx.query_one(
        "SELECT id, at, accounts, entries, root, signature FROM checkpoints ORDER BY id DESC LIMIT 1",
        &[],
    )?
    .map(|row| {
        Ok(Checkpoint {
            id: row.int(0)?,
            at: time(row.int(1)?)?,
            accounts: row.int(2)?,
            entries: row.int(3)?,
            root: hash32(row.bytes(4)?)?,
            signature: row.bytes(5)?,
        })
    })
    .transpose()
}

/// What `ledger verify` found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub accounts: usize,
    pub entries: usize,
    pub checkpoints: usize,
    /// The first problem found, naming the entry or checkpoint; `None` when all is intact.
    pub problem: Option<String>,
}

/// A problem `verify` found, naming the entry or checkpoint: verification stops at the first.
type Found = String;

/// Every account's chain as verified: its entries' hashes, and the name its hashes use.
#[derive(Default)]
struct Chains {
    hashes: BTreeMap<String, Vec<[u8; 32]>>,
    names: BTreeMap<String, String>,
}

/// Recomputes every chain and every checkpoint. Stops at the first problem.
pub fn verify(tx: &mut dyn Tx, key: &LedgerKey) -> Result<VerifyReport, StoreError> {
    let mut report = VerifyReport::default();
    let found = match verify_chains(tx, key, &mut report)? {
        Ok(chains) => verify_checkpoints(tx, &chains, &mut report)?.err(),
        Err(found) => Some(found),
    };
    report.problem = found;
    Ok(report)
}

/// Every account's chain, link by link, its head, and its gate columns; then that no ledger
/// entry is left without its account.
fn verify_chains(
    tx: &mut dyn Tx,
    key: &LedgerKey,
    report: &mut VerifyReport,
) -> Result<Result<Chains, Found>, StoreError> {
    let mut chains = Chains::default();
    let rows = tx.query(
        "SELECT account_id, ledger_len, ledger_head, plan, preference, erased_at FROM accounts ORDER BY account_id",
        &[],
    )?;
    for row in &rows {
        let account = row.text(0)?;
        let erased = row.optional_int(5)?.is_some();
        if erased != account.starts_with(ledger::PSEUDONYM_PREFIX) {
            return Ok(Err(format!(
                "account `{account}`: erased accounts, and only they, are stored under their pseudonym"
            )));
        }
        let name = key.ledger_name(&account, erased);
        let hashes = match verify_chain(tx, row, &account, &name, report)? {
            Ok(hashes) => hashes,
            Err(found) => return Ok(Err(found)),
        };
        report.accounts += 1;
        chains.hashes.insert(account.clone(), hashes);
        chains.names.insert(account, name);
    }
    // An anti-join: `NOT IN (SELECT …)` over a million accounts is a hashed subplan only while
    // it fits PostgreSQL's work_mem, and past that a scan of the accounts per ledger row (ten
    // minutes and counting on the 1M-account demo store).
    let orphans = tx.query(
        "SELECT l.account_id FROM ledger l WHERE NOT EXISTS \
         (SELECT 1 FROM accounts a WHERE a.account_id = l.account_id) LIMIT 1",
        &[],
    )?;
    if let Some(row) = orphans.first() {
        return Ok(Err(format!(
            "ledger entries of `{}` have no account (its account row was removed)",
            row.text(0)?
        )));
    }
    Ok(Ok(chains))
}

/// One account's chain (its account row is `row`): each entry where it belongs, following the
/// one before, with the hash of its content; the head the row records; the gate columns the
/// ledger implies. Answers the entries' hashes.
fn verify_chain(
    tx: &mut dyn Tx,
    row: &crate::sql::Row,
    account: &str,
    name: &str,
    report: &mut VerifyReport,
) -> Result<Result<Vec<[u8; 32]>, Found>, StoreError> {
    let (length, head) = (row.int(1)?, row.bytes(2)?);
    let (plan_column, preference_column) = (row.optional_text(3)?, row.optional_text(4)?);
    let rows = tx.query(
        &format!("SELECT {LEDGER_COLUMNS} FROM ledger WHERE account_id = ? ORDER BY idx"),
        &[account.into()],
    )?;
    let mut entries: Vec<Entry> = Vec::with_capacity(rows.len());
    let mut previous = GENESIS;
    for (position, row) in rows.iter().enumerate() {
        let found = |what: &str| format!("account `{account}` ledger entry {position}: {what}");
        let entry = match entry_from_row(row) {
            Ok(entry) => entry,
            Err(error) => return Ok(Err(found(&format!("unreadable ({error})")))),
        };
        report.entries += 1;
        if entry.idx != i64::try_from(position).unwrap_or(-1) {
            let what = format!(
                "found entry {} in its place (removed or reordered)",
                entry.idx
            );
            return Ok(Err(found(&what)));
        }
        if entry.prev_hash != previous {
            return Ok(Err(found(
                "does not follow the entry before it (removed, reordered or changed)",
            )));
        }
        if entry.chained_hash(&previous, name) != entry.hash {
            return Ok(Err(found("its content does not match its hash (changed)")));
        }
        previous = entry.hash;
        entries.push(entry);
    }
    if i64::try_from(entries.len()).ok() != Some(length) || previous.as_slice() != head.as_slice() {
        return Ok(Err(format!(
            "account `{account}`: its ledger has {} entries but its head records {length} (an entry was removed or added)",
            entries.len()
        )));
    }
    // The gate's columns must say what the ledger says.
    if let Some(history) = history_from(&entries)? {
        let plan = history.plan_at(END).as_str().to_owned();
        let preference = history.preference_at(END).as_str().to_owned();
        if plan_column.as_deref() != Some(plan.as_str())
            || preference_column.as_deref() != Some(preference.as_str())
        {
            return Ok(Err(format!(
                "account `{account}`: its gate columns say plan {plan_column:?} and choice {preference_column:?}, but its ledger says `{plan}` and `{preference}` (changed outside custos)"
            )));
        }
    }
    Ok(Ok(entries.iter().map(|e| e.hash).collect()))
}

/// Every checkpoint in order: the heads it records are the chains' own, its root chains the one
/// before with them, its counts add up, and the signing key it names (one of the store's, each
/// handed over by the one before) signed it.
fn verify_checkpoints(
    tx: &mut dyn Tx,
    chains: &Chains,
    report: &mut VerifyReport,
) -> Result<Result<(), Found>, StoreError> {
    let mut heads: BTreeMap<String, (i64, Vec<u8>)> = BTreeMap::new();
    let mut previous_root = GENESIS;
    let crate::keys::SigningKeys {
        first: first_key,
        chain: signers,
    } = match crate::keys::signing_keys(tx)? {
        Ok(keys) => keys,
        Err(problem) => return Ok(Err(format!("the store's signing keys: {problem}"))),
    };
    let checkpoints = tx.query(
        "SELECT id, at, accounts, entries, root, signature, key_id FROM checkpoints ORDER BY id",
        &[],
    )?;
    for (position, row) in checkpoints.iter().enumerate() {
        let id = row.int(0)?;
        let found = |what: &str| format!("checkpoint {id}: {what}");
        if id != i64::try_from(position).unwrap_or(-1) + 1 {
            let what = format!(
                "expected checkpoint {} here (removed or reordered)",
                position + 1
            );
            return Ok(Err(found(&what)));
        }
        let mut delta: Vec<(String, i64, Vec<u8>)> = Vec::new();
        for head in tx.query(
            "SELECT account_id, ledger_len, head FROM checkpoint_heads WHERE checkpoint_id = ?",
            &[id.into()],
        )? {
            let (account, length, hash) = (head.text(0)?, head.int(1)?, head.bytes(2)?);
            let chain_hash = usize::try_from(length - 1)
                .ok()
                .and_then(|i| chains.hashes.get(&account)?.get(i));
            if chain_hash.map(|h| h.as_slice()) != Some(hash.as_slice()) {
                let what = format!(
                    "records entry {} of `{account}` with a hash the ledger no longer has (the ledger was changed after it was signed)",
                    length - 1
                );
                return Ok(Err(found(&what)));
            }
            delta.push((account.clone(), length, hash.clone()));
            heads.insert(account, (length, hash));
        }
        let root = heads_root(
            &previous_root,
            delta.iter().map(|(a, l, h)| {
                let name = chains.names.get(a).map_or(a.as_str(), String::as_str);
                (name, *l, h.as_slice())
            }),
        );
        let (at, accounts, entries) = (time(row.int(1)?)?, row.int(2)?, row.int(3)?);
        let entries_now: i64 = heads.values().map(|(l, _)| *l).sum();
        let accounts_now = i64::try_from(heads.len()).unwrap_or(-1);
        if root.as_slice() != row.bytes(4)?.as_slice()
            || entries != entries_now
            || accounts != accounts_now
        {
            return Ok(Err(found(
                "its root does not match the chain heads it covers",
            )));
        }
        let message = checkpoint_message(id, at, accounts, entries, &root);
        // Checkpoints signed before keys had ids were signed by the store's first key.
        let signer = row.optional_text(6)?.unwrap_or_else(|| first_key.clone());
        let Some((_, public)) = signers.iter().find(|(id, _)| *id == signer) else {
            return Ok(Err(found(&format!(
                "it names signing key {signer}, which is not one of this store's"
            ))));
        };
        if !ledger::verify_signature(&custos_core::policy::hex(public), &message, &row.bytes(5)?) {
            return Ok(Err(found(&format!(
                "its signature does not verify with signing key {signer}"
            ))));
        }
        previous_root = root;
        report.checkpoints += 1;
    }
    Ok(Ok(()))
}
