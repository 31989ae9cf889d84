//! custos-store: durable storage for custos, on SQLite (the embedded default) or PostgreSQL.
//!
//! It owns the schema, the transaction scripts (`engine`), the hash-chained consent ledger and
//! its signed checkpoints. It decides nothing itself: every admission and retention decision
//! is the core's. A write is acknowledged only after it is committed; a refused or failed write
//! leaves nothing behind.

mod access;
mod apply;
mod bulk;
mod checkpoint;
mod codec;
mod error;
mod holds;
pub mod ledger;
mod postgres;
pub mod receipt;
mod records;
mod reports;
mod scan;
mod schema;
mod sql;
mod sqlite;
mod sweep;
mod tokens;
mod upgrade;
mod views;

use std::path::{Path, PathBuf};

use custos_core::{
    AccountId, Command, ConversationId, ConversationStatus, Gate, HoldId, HoldTarget, Policy,
    Refusal, SweepReport, Timestamp,
};

pub use access::AccessDocument;
pub use apply::Written;
pub use checkpoint::{Checkpoint, VerifyReport};
pub use error::StoreError;
pub use holds::HoldRecord;
pub use ledger::{Entry, EntryKind, LedgerKey};
pub use reports::{ConsentOverTime, ConsentReport, RetentionReport};
pub use scan::{Chunk, RawChunk, Scanned};
pub use schema::SCHEMA_VERSION;
pub use sweep::{RetentionCheck, SWEEP_BATCH};
pub use tokens::{Principal, token_hash};
pub use views::{
    AccountView, ConversationSummary, GateState, IncludedConversation, StoredSnapshot,
};

use crate::postgres::PostgresBackend;
use crate::records::Histories;
use crate::sql::Backend;
use crate::sqlite::SqliteBackend;

/// The store signs a checkpoint by itself after this many ledger appends (per process).
pub const CHECKPOINT_EVERY: u64 = 1000;

/// The SQLite database's file name inside the data folder.
pub const SQLITE_FILE: &str = "custos.sqlite3";

/// The first reads of a training scan, which fix its snapshot: the newest signed checkpoint and
/// how many conversations there are.
fn snapshot_start(tx: &mut dyn sql::Tx) -> Result<(Option<Checkpoint>, u64), StoreError> {
    let checkpoint = checkpoint::latest_checkpoint(tx)?;
    let conversations = tx
        .query_one("SELECT COUNT(*) FROM conversations", &[])?
        .map(|row| row.int(0))
        .transpose()?
        .unwrap_or(0);
    Ok((checkpoint, u64::try_from(conversations).unwrap_or(0)))
}

/// Where the data lives. The data folder always holds the ledger's signing key; with SQLite it
/// also holds the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Sqlite { data: PathBuf },
    Postgres { url: String, data: PathBuf },
}

impl Location {
    /// `--database URL` if given, else SQLite in `--data DIR`.
    pub fn new(data: PathBuf, database: Option<String>) -> Location {
        match database {
            Some(url) => Location::Postgres { url, data },
            None => Location::Sqlite { data },
        }
    }

    pub fn data(&self) -> &Path {
        match self {
            Location::Sqlite { data } | Location::Postgres { data, .. } => data,
        }
    }
}

enum AnyBackend {
    Sqlite(SqliteBackend),
    Postgres(PostgresBackend),
}

/// The store: a backend, the policy in force and the ledger's key.
pub struct Store {
    backend: AnyBackend,
    policy: Policy,
    key: LedgerKey,
    histories: Histories,
    /// Ledger appends committed since this process last signed a checkpoint.
    unsigned_appends: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.backend {
            AnyBackend::Sqlite(_) => "sqlite",
            AnyBackend::Postgres(_) => "postgres",
        };
        f.debug_struct("Store")
            .field("backend", &kind)
            .field("policy", &self.policy.id)
            .finish()
    }
}

macro_rules! with_backend {
    ($store:expr, $method:ident, $work:expr) => {
        match &$store.backend {
            AnyBackend::Sqlite(backend) => backend.$method($work),
            AnyBackend::Postgres(backend) => backend.$method($work),
        }
    };
}

impl Store {
    /// Opens (creating if needed) the store at `location`, migrating its schema.
    pub fn open(location: &Location, policy: Policy) -> Result<Store, StoreError> {
        let data = location.data();
        std::fs::create_dir_all(data).map_err(|e| StoreError::io(data, e))?;
        let backend = match location {
            Location::Sqlite { data } => {
                AnyBackend::Sqlite(SqliteBackend::open(&data.join(SQLITE_FILE))?)
            }
            Location::Postgres { url, .. } => AnyBackend::Postgres(PostgresBackend::open(url)?),
        };
        let key = LedgerKey::load_or_create(data)?;
        let store = Store {
            backend,
            policy,
            histories: Histories::new(key.pseudonym_key()),
            key,
            unsigned_appends: std::sync::atomic::AtomicU64::new(0),
        };
        let found = store.write(&mut |tx| schema::migrate(tx))?;
        if found == 1 {
            store.write(&mut |tx| upgrade::fill_gate_columns(tx))?;
        }
        if (1..4).contains(&found) {
            store.write(&mut |tx| upgrade::rechain_by_pseudonym(tx, &store.histories))?;
        }
        Ok(store)
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn public_key_hex(&self) -> String {
        self.key.public_hex()
    }

    fn write<R>(
        &self,
        work: &mut dyn FnMut(&mut dyn sql::Tx) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        with_backend!(self, write, work)
    }

    fn read<R>(
        &self,
        work: &mut dyn FnMut(&mut dyn sql::Tx) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        with_backend!(self, read, work)
    }

    /// Applies one command at `at` on behalf of `actor`; returns, once it is committed, what it
    /// wrote (entries, the account as it left it, a sweep's report), from its own transaction.
    pub fn apply(
        &self,
        at: Timestamp,
        command: &Command,
        actor: &str,
    ) -> Result<Written, StoreError> {
        self.apply_then(at, command, actor, &mut |_| Ok(()))
            .map(|(written, ())| written)
    }

    pub fn gate(&self, account: &AccountId, at: Timestamp) -> Result<Gate, StoreError> {
        self.read(&mut |tx| views::gate_of(tx, &self.histories, &self.policy, account, at))
    }

    pub fn conversation_status(
        &self,
        id: &ConversationId,
        at: Timestamp,
    ) -> Result<ConversationStatus, StoreError> {
        self.read(&mut |tx| {
            views::conversation_status_of(tx, &self.histories, &self.policy, id, at)
        })
    }

    /// The training selection at cutoff `at`, read from one consistent snapshot.
    pub fn snapshot(&self, at: Timestamp) -> Result<StoredSnapshot, StoreError> {
        self.read(&mut |tx| views::snapshot(tx, &self.policy, at))
    }

    /// Reads one consistent snapshot for an export: `begin` gets the newest signed checkpoint
    /// and the number of conversations once the snapshot is fixed (what is committed by then is
    /// in it, and nothing committed later is), then `visit` gets every conversation.
    pub fn scan_training(
        &self,
        cutoff: Timestamp,
        now: Timestamp,
        with_text: bool,
        begin: &mut dyn FnMut(Option<Checkpoint>, u64) -> Result<(), StoreError>,
        visit: &mut dyn FnMut(Scanned<'_>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.read(&mut |tx| {
            let (checkpoint, conversations) = snapshot_start(tx)?;
            begin(checkpoint, conversations)?;
            scan::scan_conversations(tx, cutoff, now, with_text, visit)
        })
    }

    /// Like [`Store::scan_training`], handing over chunks as read (a few hundred accounts'
    /// worth each), so that the caller can parse and decide on other threads while the next
    /// chunk is read; `each` may hand back a chunk it is done with, whose buffers are reused. (Two readers sharing one snapshot were measured too, on two cores: slower,
    /// see BENCHMARKS.md.)
    pub fn scan_training_chunks(
        &self,
        cutoff: Timestamp,
        now: Timestamp,
        begin: &mut dyn FnMut(Option<Checkpoint>, u64),
        each: &mut dyn FnMut(scan::RawChunk) -> Result<Option<scan::RawChunk>, StoreError>,
    ) -> Result<(), StoreError> {
        self.read(&mut |tx| {
            let (checkpoint, conversations) = snapshot_start(tx)?;
            begin(checkpoint, conversations);
            scan::scan_chunks(tx, cutoff, now, true, each)
        })
    }

    /// Signs `message` with the store's key (Ed25519), e.g. an export's manifest.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.key.sign(message)
    }

    /// An account's ledger entries, in chain order.
    pub fn ledger(&self, account: &AccountId) -> Result<Vec<Entry>, StoreError> {
        self.read(&mut |tx| records::ledger_entries(tx, account.as_str()))
    }

    /// After a commit: the histories it wrote may be served from memory (later entries of one
    /// account supersede earlier ones), and the ledger is sealed if enough was appended.
    fn after_commit(
        &self,
        written: apply::WrittenHistories,
        at: Timestamp,
    ) -> Result<(), StoreError> {
        let appended = written.len();
        for (ledger_len, history) in &written {
            self.histories.keep(*ledger_len, history);
        }
        self.checkpoint_periodically(at, appended)
    }

    /// Every [`CHECKPOINT_EVERY`] committed ledger appends, signs a checkpoint as of the latest
    /// event's time, so that the ledger is sealed regularly even without a scheduler.
    fn checkpoint_periodically(&self, at: Timestamp, appended: usize) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering;
        let appended = u64::try_from(appended).unwrap_or(u64::MAX);
        let before = self.unsigned_appends.fetch_add(appended, Ordering::Relaxed);
        if before + appended >= CHECKPOINT_EVERY {
            self.unsigned_appends.store(0, Ordering::Relaxed);
            self.checkpoint(at)?;
        }
        Ok(())
    }

    /// Signs a checkpoint over all chain heads if any grew since the last one.
    pub fn checkpoint(&self, at: Timestamp) -> Result<Option<Checkpoint>, StoreError> {
        self.write(&mut |tx| checkpoint::checkpoint(tx, &self.key, at))
    }

    /// Recomputes every ledger chain and checkpoint.
    pub fn verify_ledger(&self) -> Result<VerifyReport, StoreError> {
        self.read(&mut |tx| checkpoint::verify(tx, &self.key))
    }

    /// Applies many events in one transaction (one commit, one fsync), each inside its own
    /// savepoint: an event that is refused rolls back alone and the others still commit. An
    /// event with an id is applied at most once. Returns each event's outcome, in order; a
    /// storage failure fails the whole batch and commits none of it.
    pub fn apply_batch(
        &self,
        events: &[(Option<&str>, Timestamp, &Command)],
        actor: &str,
    ) -> Result<Vec<Result<Applied, StoreError>>, StoreError> {
        let mut written = apply::WrittenHistories::new();
        let outcomes = self.write(&mut |tx| {
            written.clear();
            let mut outcomes = Vec::with_capacity(events.len());
            for (event_id, at, command) in events {
                tx.execute("SAVEPOINT custos_event", &[])?;
                let mut mine = apply::WrittenHistories::new();
                let outcome = (|| {
                    if let Some(id) = event_id
                        && !apply::first_time(tx, id, *at)?
                    {
                        return Ok(Applied::Duplicate);
                    }
                    apply::apply(
                        tx,
                        &self.histories,
                        &mut mine,
                        &self.policy,
                        *at,
                        command,
                        actor,
                    )?;
                    Ok(Applied::Accepted)
                })();
                match outcome {
                    Ok(applied) => {
                        tx.execute("RELEASE SAVEPOINT custos_event", &[])?;
                        written.append(&mut mine);
                        outcomes.push(Ok(applied));
                    }
                    Err(StoreError::Refused(refusal)) => {
                        tx.execute("ROLLBACK TO SAVEPOINT custos_event", &[])?;
                        tx.execute("RELEASE SAVEPOINT custos_event", &[])?;
                        outcomes.push(Err(StoreError::Refused(refusal)));
                    }
                    Err(error) => return Err(error),
                }
            }
            Ok(outcomes)
        })?;
        let last = events
            .iter()
            .map(|(_, at, _)| *at)
            .max()
            .unwrap_or(Timestamp::MIN);
        self.after_commit(written, last)?;
        Ok(outcomes)
    }

    /// Loads new accounts with their whole histories (each list in time order, starting with
    /// its creation) in one transaction: the core admits every command in memory, and each
    /// account is then written once (see `bulk`). Returns each command's outcome; a refused
    /// command is skipped alone. An account or conversation that exists fails the whole call.
    pub fn load_new_accounts(
        &self,
        accounts: &[Vec<(Timestamp, Command)>],
        actor: &str,
    ) -> Result<Vec<Vec<Result<(), Refusal>>>, StoreError> {
        let mut written = apply::WrittenHistories::new();
        let outcomes = self.write(&mut |tx| {
            written.clear();
            accounts
                .iter()
                .map(|commands| {
                    bulk::load_new_account(
                        tx,
                        &self.policy,
                        &self.histories,
                        actor,
                        commands,
                        &mut written,
                    )
                })
                .collect()
        })?;
        let last = accounts
            .iter()
            .flatten()
            .map(|(at, _)| *at)
            .max()
            .unwrap_or(Timestamp::MIN);
        self.after_commit(written, last)?;
        Ok(outcomes)
    }

    /// Places a legal hold (R13) and records why, in one transaction; returns the hold as it
    /// was recorded.
    pub fn place_hold(
        &self,
        at: Timestamp,
        hold: &HoldId,
        target: &HoldTarget,
        reason: &str,
        actor: &str,
    ) -> Result<HoldRecord, StoreError> {
        custos_core::admission::check_text("reason", reason)?;
        let command = Command::PlaceHold {
            hold: hold.clone(),
            target: target.clone(),
        };
        self.apply_then(at, &command, actor, &mut |tx| {
            holds::note_hold_reason(tx, hold, reason)?;
            holds::hold_record(tx, hold)
        })
        .map(|(_, hold)| hold)
    }

    /// Releases an active legal hold and records who released it, in one transaction; returns
    /// the hold as it now stands.
    pub fn release_hold(
        &self,
        at: Timestamp,
        hold: &HoldId,
        actor: &str,
    ) -> Result<HoldRecord, StoreError> {
        let command = Command::ReleaseHold { hold: hold.clone() };
        self.apply_then(at, &command, actor, &mut |tx| {
            holds::note_hold_release(tx, hold, actor)?;
            holds::hold_record(tx, hold)
        })
        .map(|(_, hold)| hold)
    }

    /// Applies a command, then runs `then` in the same transaction (audit notes, and what to
    /// answer), so that the answer describes this write and no other.
    fn apply_then<R>(
        &self,
        at: Timestamp,
        command: &Command,
        actor: &str,
        then: &mut dyn FnMut(&mut dyn sql::Tx) -> Result<R, StoreError>,
    ) -> Result<(Written, R), StoreError> {
        let mut histories = apply::WrittenHistories::new();
        let answer = self.write(&mut |tx| {
            histories.clear(); // a retried transaction starts over
            let written = apply::apply(
                tx,
                &self.histories,
                &mut histories,
                &self.policy,
                at,
                command,
                actor,
            )?;
            Ok((written, then(tx)?))
        })?;
        self.after_commit(histories, at)?;
        Ok(answer)
    }

    /// Runs a retention sweep at `now` in batches of `batch` conversations, each batch its own
    /// transaction, so that writers wait at most one batch and a sweep killed at any moment
    /// leaves every conversation whole (purged or not); the next sweep finishes the job.
    /// `progress` hears after each batch how many conversations were looked at so far.
    pub fn sweep(
        &self,
        now: Timestamp,
        batch: usize,
        progress: &mut dyn FnMut(u64, &SweepReport),
    ) -> Result<SweepReport, StoreError> {
        let mut report = SweepReport::default();
        let mut cursor: Option<sweep::SweepCursor> = None;
        let mut looked_at = 0u64;
        loop {
            let after = cursor.clone();
            let (part, next, visited) = self.write(&mut |tx| {
                sweep::sweep_batch(
                    tx,
                    &self.histories,
                    &self.policy,
                    now,
                    after.as_ref(),
                    batch,
                )
            })?;
            report.add(&part);
            looked_at += u64::try_from(visited).unwrap_or(u64::MAX);
            progress(looked_at, &report);
            match next {
                Some(next) => cursor = Some(next),
                None => return Ok(report),
            }
        }
    }

    /// How many conversations are due at `now` and not yet purged.
    pub fn due_conversations(&self, now: Timestamp) -> Result<u64, StoreError> {
        self.read(&mut |tx| sweep::count_due(tx, now))
    }

    /// Everything held about an account, as one machine-readable document (R14 access and
    /// portability), read from one consistent snapshot.
    pub fn access_document(
        &self,
        account: &AccountId,
        at: Timestamp,
    ) -> Result<AccessDocument, StoreError> {
        self.read(&mut |tx| {
            access::access_document(tx, &self.histories, &self.policy, &self.key, account, at)
        })
    }

    /// Recomputes every stored expiry with the core and reports each difference (there must be
    /// none: sweeps find due conversations through the stored expiries).
    pub fn check_retention(
        &self,
        progress: &mut dyn FnMut(u64),
    ) -> Result<RetentionCheck, StoreError> {
        let mut check = RetentionCheck::default();
        let mut after = String::new();
        loop {
            let mut page = RetentionCheck::default();
            let next = self.read(&mut |tx| {
                page = RetentionCheck::default();
                sweep::check_retention(tx, &self.histories, &self.policy, &after, 1000, &mut page)
            })?;
            check.checked += page.checked;
            check.different += page.different;
            let room = 100usize.saturating_sub(check.differences.len());
            check
                .differences
                .extend(page.differences.into_iter().take(room));
            progress(check.checked);
            match next {
                Some(next) => after = next,
                None => return Ok(check),
            }
        }
    }

    /// Retention figures for auditors (counts only).
    pub fn retention_report(&self, now: Timestamp) -> Result<RetentionReport, StoreError> {
        self.read(&mut |tx| reports::retention(tx, now))
    }

    /// Consent figures for auditors (counts only).
    pub fn consent_report(&self, now: Timestamp) -> Result<ConsentReport, StoreError> {
        self.read(&mut |tx| reports::consent(tx, &self.policy, now))
    }

    /// Consumer accounts' choices at the end of each of the last `weeks` weeks, by plan, and
    /// the choices made each week by channel, replayed from the ledger (the dashboard's series).
    pub fn consent_over_time(
        &self,
        now: Timestamp,
        weeks: usize,
    ) -> Result<reports::ConsentOverTime, StoreError> {
        self.read(&mut |tx| reports::consent_over_time(tx, &self.policy, now, weeks))
    }

    /// Every legal hold, active or released, with its audit trail.
    pub fn holds(&self) -> Result<Vec<HoldRecord>, StoreError> {
        self.read(&mut |tx| holds::hold_records(tx))
    }

    /// The account a conversation belongs to, if it was ever recorded.
    pub fn conversation_owner(
        &self,
        conversation: &ConversationId,
    ) -> Result<Option<AccountId>, StoreError> {
        self.read(&mut |tx| records::conversation_owner(tx, conversation))
    }

    /// The gate inputs of one account (for the service's in-memory index).
    pub fn gate_state(&self, account: &AccountId) -> Result<Option<(GateState, u64)>, StoreError> {
        self.read(&mut |tx| views::gate_state(tx, &self.histories, &self.policy, account))
    }

    /// Calls `each` with every account's gate inputs, streamed (for the index built at start).
    pub fn for_each_gate_state(
        &self,
        each: &mut dyn FnMut(&str, GateState, u64),
    ) -> Result<(), StoreError> {
        self.read(&mut |tx| views::for_each_gate_state(tx, &self.policy, each))
    }

    pub fn account_view(
        &self,
        account: &AccountId,
        at: Timestamp,
    ) -> Result<AccountView, StoreError> {
        self.read(&mut |tx| views::account_view(tx, &self.histories, &self.policy, account, at))
    }

    /// The account's conversations that are still visible to it, with their status at `at`.
    pub fn visible_conversations(
        &self,
        account: &AccountId,
        at: Timestamp,
    ) -> Result<Vec<ConversationSummary>, StoreError> {
        self.read(&mut |tx| {
            views::visible_conversations(tx, &self.histories, &self.policy, account, at)
        })
    }

    /// Makes a new access token and returns it; only its SHA-256 is stored.
    pub fn create_token(
        &self,
        role: &str,
        account: Option<&AccountId>,
        now: Timestamp,
        expires_at: Option<Timestamp>,
    ) -> Result<String, StoreError> {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret)
            .map_err(|e| StoreError::Key(format!("no randomness for a token: {e}")))?;
        let token = format!("custos_{}", custos_core::policy::hex(&secret));
        let hash = token_hash(&token);
        self.write(&mut |tx| tokens::insert_token(tx, &hash, role, account, now, expires_at))?;
        Ok(token)
    }

    /// Who `token` speaks for at `now`, if it is known, unexpired and unrevoked.
    pub fn authenticate(
        &self,
        token: &str,
        now: Timestamp,
    ) -> Result<Option<Principal>, StoreError> {
        let hash = token_hash(token);
        self.read(&mut |tx| tokens::principal(tx, &hash, now))
    }

    /// Revokes a token; `false` if it was unknown or already revoked.
    pub fn revoke_token(&self, token: &str, now: Timestamp) -> Result<bool, StoreError> {
        let hash = token_hash(token);
        self.write(&mut |tx| tokens::revoke_token(tx, &hash, now))
    }

    /// The signed consent receipt of an account's choice, by receipt id (its ledger hash).
    pub fn receipt(
        &self,
        account: &AccountId,
        receipt_id: &str,
    ) -> Result<Option<serde_json::Value>, StoreError> {
        let entries = self.ledger(account)?;
        let entry = entries
            .iter()
            .find(|e| custos_core::policy::hex(&e.hash).eq_ignore_ascii_case(receipt_id));
        Ok(entry
            .and_then(|entry| receipt::receipt_of(&self.policy, entry))
            .map(|unsigned| receipt::signed(unsigned, &self.key)))
    }
}

/// What became of an event with an id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Accepted,
    Duplicate,
}
