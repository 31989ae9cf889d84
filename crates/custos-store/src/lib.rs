//! custos-store: durable storage for custos, on SQLite (the embedded default) or PostgreSQL.
//!
//! It owns the schema, the transaction scripts (`engine`), the hash-chained consent ledger and
//! its signed checkpoints. It decides nothing itself: every admission and retention decision
//! is the core's. A write is acknowledged only after it is committed; a refused or failed write
//! leaves nothing behind.

mod access;
mod apply;
mod batch;
mod bulk;
pub use bulk::AdmittedAccounts;
mod checkpoint;
mod codec;
mod error;
pub mod export_records;
mod holds;
pub mod keys;
pub mod ledger;
mod postgres;
mod postgres_wire;
pub mod receipt;
mod records;
mod reports;
mod scan;
mod schema;
mod snapshot_reader;
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
pub use export_records::{ExportRecord, ExportState};
pub use holds::HoldRecord;
pub use keys::{KeySource, Keys, Purpose, RecordedKey};
pub use ledger::{AccountKey, Entry, EntryKind, LedgerKey};
pub use reports::{ConsentOverTime, ConsentReport, RetentionReport};
pub use scan::{Chunk, RawChunk, Scanned};
pub use schema::SCHEMA_VERSION;
pub use sweep::{RetentionCheck, SWEEP_BATCH, SWEEP_LEASE_MS, SweepRecord, SweepRun};
pub use tokens::{Principal, token_hash};
pub use views::{
    AccountGateState, AccountView, ConversationSummary, FeedPosition, GateState,
    IncludedConversation, StoredSnapshot,
};

use crate::postgres::PostgresBackend;
use crate::records::Histories;
use crate::sql::{Backend, Dialect, Rows};
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
    export_key: [u8; 32],
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

/// Batches of a sweep purged at once on PostgreSQL ([`Store::sweep`]).
const SWEEP_WORKERS: usize = 4;

/// Connections that read an export's chunks at once on PostgreSQL
/// ([`Store::scan_training_chunks`]).
const SCAN_READERS: usize = 2;

/// Accounts decoded at a time by the gate index's load ([`Store::for_each_gate_state`]).
const GATE_STATES_PER_BATCH: usize = 2_048;

macro_rules! with_backend {
    ($store:expr, $method:ident, $($argument:expr),+) => {
        match &$store.backend {
            AnyBackend::Sqlite(backend) => backend.$method($($argument),+),
            AnyBackend::Postgres(backend) => backend.$method($($argument),+),
        }
    };
}

impl Store {
    /// Opens (creating if needed) the store at `location`, migrating its schema, with the keys
    /// of the data folder's `keys/` (made there on a store's first start).
    pub fn open(location: &Location, policy: Policy) -> Result<Store, StoreError> {
        let source = KeySource::in_data(location.data());
        Store::open_with(location, policy, &source, true)
    }

    /// Opens the store at `location` with the keys `source` gives. A store that has recorded
    /// its keys refuses any other (and changes nothing); a new store records those given, or,
    /// with `create` and none given, makes new ones in the source's folder.
    pub fn open_with(
        location: &Location,
        policy: Policy,
        source: &KeySource,
        create: bool,
    ) -> Result<Store, StoreError> {
        let data = location.data();
        std::fs::create_dir_all(data).map_err(|e| StoreError::io(data, e))?;
        let backend = match location {
            Location::Sqlite { data } => {
                AnyBackend::Sqlite(SqliteBackend::open(&data.join(SQLITE_FILE))?)
            }
            Location::Postgres { url, .. } => AnyBackend::Postgres(PostgresBackend::open(url)?),
        };
        let (keys, made) = match source.find()? {
            Some(keys) => (keys, false),
            None if create => (Keys::generate(source.folder.display().to_string())?, true),
            None => {
                return Err(StoreError::Key(format!(
                    "no keys in {} or the environment: give the store's keys with --keys DIR",
                    source.folder.display()
                )));
            }
        };
        let store = Store {
            backend,
            policy,
            histories: Histories::new(*keys.secret(Purpose::Pseudonym)),
            key: LedgerKey::new(
                keys.secret(Purpose::Signing),
                *keys.secret(Purpose::Pseudonym),
            ),
            export_key: *keys.secret(Purpose::Export),
            unsigned_appends: std::sync::atomic::AtomicU64::new(0),
        };
        // New keys are written before the store records them, and removed if it refuses them:
        // a store never records a key that is not on disk.
        if made {
            keys.write_to(&source.folder)?;
        }
        let now = Timestamp::from_unix_millis(wall_millis()).unwrap_or(Timestamp::MIN);
        let bound = store.write(&mut |tx| {
            let found = schema::migrate(tx)?;
            keys::bind(tx, &keys, now)?;
            Ok(found)
        });
        let found = match bound {
            Ok(found) => found,
            Err(error) => {
                if made {
                    for purpose in Purpose::ALL {
                        let _ = std::fs::remove_file(source.folder.join(purpose.file()));
                    }
                }
                return Err(error);
            }
        };
        if found == 1 {
            store.write(&mut |tx| upgrade::fill_gate_columns(tx))?;
        }
        if (1..4).contains(&found) {
            store.write(&mut |tx| upgrade::rechain_by_pseudonym(tx, &store.histories))?;
        }
        Ok(store)
    }

    /// The keys this store records, oldest first (ids and public halves; never a secret).
    pub fn recorded_keys(&self) -> Result<Vec<RecordedKey>, StoreError> {
        self.read(&mut |tx| keys::recorded_keys(tx))
    }

    /// The id of the signing key this instance signs with.
    pub fn signing_key_id(&self) -> &str {
        self.key.id()
    }

    /// Hands signing over to a new key from `at` on (see `keys::rotate`); this instance must
    /// then be restarted with it, and others too: a retired key signs nothing more.
    pub fn rotate_signing_key(&self, next: &[u8; 32], at: Timestamp) -> Result<String, StoreError> {
        let next = LedgerKey::new(next, self.key.pseudonym_key());
        self.write(&mut |tx| keys::rotate(tx, &self.key, &next, at))?;
        Ok(next.id().to_owned())
    }

    /// The secret that keys exported rows' pseudonyms.
    pub fn export_key(&self) -> &[u8; 32] {
        &self.export_key
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
    /// worth each, in key order), so that the caller can parse and decide on other threads
    /// while the next chunk is read; `each` may hand back a chunk it is done with, whose
    /// buffers are reused.
    ///
    /// On PostgreSQL, where reading a chunk is the server's work (its pages found and sent),
    /// [`SCAN_READERS`] connections that share the snapshot read alternate chunks, so that the
    /// server works on two at once; `each` still takes them in key order. On SQLite the
    /// reading is this process's own work, and two readers were slower on two cores (see
    /// BENCHMARKS.md).
    pub fn scan_training_chunks(
        &self,
        cutoff: Timestamp,
        now: Timestamp,
        begin: &mut dyn FnMut(Option<Checkpoint>, u64),
        each: &mut dyn FnMut(scan::RawChunk) -> Result<Option<scan::RawChunk>, StoreError>,
    ) -> Result<(), StoreError> {
        let AnyBackend::Postgres(backend) = &self.backend else {
            return self.read(&mut |tx| {
                let (checkpoint, conversations) = snapshot_start(tx)?;
                begin(checkpoint, conversations);
                scan::scan_chunks(tx, cutoff, now, true, each)
            });
        };
        // Reader i reads chunks i, i + SCAN_READERS, …, each into a channel of its own; taking
        // from the channels in turn gives the chunks in key order. A reader's sender is its
        // own (taken out of `senders`), and the receivers are dropped with `meanwhile`: when
        // either side stops, the other one's next send or receive fails instead of waiting.
        type Chunks = (
            std::sync::mpsc::SyncSender<scan::RawChunk>,
            std::sync::mpsc::Receiver<scan::RawChunk>,
        );
        let (to_consumer, from_readers): (Vec<_>, Vec<_>) = (0..SCAN_READERS)
            .map(|_| std::sync::mpsc::sync_channel::<scan::RawChunk>(1))
            .unzip();
        let (to_readers, spares): (Vec<_>, Vec<_>) = (0..SCAN_READERS)
            .map(|_| std::sync::mpsc::sync_channel::<scan::RawChunk>(1))
            .unzip();
        let senders: std::sync::Mutex<Vec<Option<Chunks>>> =
            std::sync::Mutex::new(to_consumer.into_iter().zip(spares).map(Some).collect());
        let mut receivers = Some((from_readers, to_readers));
        backend.read_shared(
            SCAN_READERS,
            &mut |tx| {
                let (checkpoint, conversations) = snapshot_start(tx)?;
                begin(checkpoint, conversations);
                scan::chunk_bounds(tx)
            },
            &|reader, bounds, tx| {
                let taken = senders
                    .lock()
                    .ok()
                    .and_then(|mut senders| senders.get_mut(reader).and_then(Option::take));
                let Some((to_consumer, spares)) = taken else {
                    return Err(StoreError::corrupt("a reader without its channel"));
                };
                for index in (reader..bounds.len()).step_by(SCAN_READERS) {
                    let spare = spares.try_recv().ok();
                    let chunk = scan::read_chunk(tx, bounds, index, cutoff, now, spare)?;
                    to_consumer.send(chunk).map_err(|_| StoreError::Stopped)?;
                }
                Ok(())
            },
            &mut |bounds| {
                let Some((from_readers, to_readers)) = receivers.take() else {
                    return Ok(());
                };
                for index in 0..bounds.len() {
                    let reader = index % SCAN_READERS;
                    let chunk = from_readers
                        .get(reader)
                        .and_then(|from| from.recv().ok())
                        .ok_or(StoreError::Stopped)?;
                    if let (Some(spare), Some(to)) = (each(chunk)?, to_readers.get(reader)) {
                        // A reader with a spare already makes do with that one.
                        let _ = to.try_send(spare);
                    }
                }
                Ok(())
            },
        )?;
        Ok(())
    }

    /// Signs `message` with the store's current key (Ed25519), e.g. an export's manifest;
    /// answers the signature and the id of the key that made it. A key the store has retired
    /// signs nothing.
    pub fn sign(&self, message: &[u8]) -> Result<([u8; 64], String), StoreError> {
        self.read(&mut |tx| keys::ensure_current(tx, &self.key))?;
        Ok((self.key.sign(message), self.key.id().to_owned()))
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
        let appended = written.appended.len();
        for (ledger_len, history) in written.appended.iter().chain(&written.read) {
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
        // One pass over the whole ledger: not kept mapped (see `read_once`).
        with_backend!(self, read_once, &mut |tx| checkpoint::verify(tx, &self.key))
    }

    /// Applies many events in one transaction (one commit, one fsync), each decided by the
    /// core in order (see [`batch`]): an event that is refused leaves nothing behind, and the
    /// others still commit. An event with an id is applied at most once. Returns each event's
    /// outcome, in order; a storage failure fails the whole batch and commits none of it.
    pub fn apply_batch(
        &self,
        events: &[(Option<&str>, Timestamp, &Command)],
        actor: &str,
    ) -> Result<Vec<Result<Applied, StoreError>>, StoreError> {
        let mut written = apply::WrittenHistories::new();
        let outcomes = self.write(&mut |tx| {
            written.clear(); // a retried transaction starts over
            let mut batch = batch::Batch::new(
                tx,
                &self.histories,
                &mut written,
                &self.policy,
                actor,
                events,
            )?;
            let mut outcomes = Vec::with_capacity(events.len());
            for (event_id, at, command) in events {
                outcomes.push(match batch.apply(*event_id, *at, command)? {
                    batch::Outcome::Applied(_) => Ok(Applied::Accepted),
                    batch::Outcome::Duplicate => Ok(Applied::Duplicate),
                    batch::Outcome::Refused(refusal) => Err(StoreError::Refused(refusal)),
                });
            }
            batch.flush()?;
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
        self.write_new_accounts(self.admit_new_accounts(accounts, actor)?)
    }

    /// Runs `load` (calls of [`Store::load_new_accounts`] or its halves) with the sweep's index
    /// of expiries, faster filled once than row by row, suspended while it runs
    /// (`schema::suspend_expiry_index`), if the store holds no conversation yet; it is filled
    /// after it, also when it fails. In a store that holds data, `load` runs with every index
    /// in place. Either way the loaded tables are analyzed after it, so that the next query is
    /// planned for their size.
    pub fn load_into_empty<T>(
        &self,
        load: impl FnOnce(&Store) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let empty = self.read(&mut |tx| {
            Ok(tx
                .query_one("SELECT 1 FROM conversations LIMIT 1", &[])?
                .is_none())
        })?;
        if !empty {
            let loaded = load(self)?;
            self.write(&mut |tx| schema::analyze_loaded_tables(tx))?;
            return Ok(loaded);
        }
        self.write(&mut |tx| schema::suspend_expiry_index(tx))?;
        let loaded = load(self);
        let rebuilt = self.write(&mut |tx| {
            schema::keep_expiry_index(tx)?;
            schema::analyze_loaded_tables(tx)
        });
        let loaded = loaded?;
        rebuilt?;
        Ok(loaded)
    }

    /// The first half of [`Store::load_new_accounts`]: the core's decisions and the rows, made
    /// without the database (a loader admits the next accounts while the last are written).
    pub fn admit_new_accounts(
        &self,
        accounts: &[Vec<(Timestamp, Command)>],
        actor: &str,
    ) -> Result<AdmittedAccounts, StoreError> {
        bulk::admit_new_accounts(&self.policy, &self.histories, actor, accounts)
    }

    /// The second half of [`Store::load_new_accounts`]: writes admitted accounts in one
    /// transaction and returns each command's outcome.
    pub fn write_new_accounts(
        &self,
        admitted: AdmittedAccounts,
    ) -> Result<Vec<Vec<Result<(), Refusal>>>, StoreError> {
        self.write(&mut |tx| admitted.write(tx))?;
        let AdmittedAccounts {
            written,
            outcomes,
            last,
            ..
        } = admitted;
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
            let event = [(None, at, command)];
            let mut batch = batch::Batch::new(
                tx,
                &self.histories,
                &mut histories,
                &self.policy,
                actor,
                &event,
            )?;
            let written = match batch.apply(None, at, command)? {
                batch::Outcome::Applied(written) => written,
                batch::Outcome::Refused(refusal) => return Err(refusal.into()),
                batch::Outcome::Duplicate => Written::default(),
            };
            batch.flush()?;
            Ok((written, then(tx)?))
        })?;
        self.after_commit(histories, at)?;
        Ok(answer)
    }

    /// Runs a retention sweep at `now` in batches of `batch` conversations, each batch its own
    /// transaction, so that writers wait at most one batch and a sweep killed at any moment
    /// leaves every conversation whole (purged or not); the next sweep finishes the job.
    /// `progress` hears after each batch how many conversations were looked at so far.
    ///
    /// One sweep runs at a time across every instance of the store: this one takes the store's
    /// sweep lease first (renewed by each batch, in the batch's transaction, with its progress),
    /// or answers [`StoreError::SweepRunning`]. The store records it for every dashboard.
    pub fn sweep(
        &self,
        run: &SweepRun,
        now: Timestamp,
        batch: usize,
        progress: &mut dyn FnMut(u64, &SweepReport),
    ) -> Result<SweepReport, StoreError> {
        let id = random_id()?;
        self.write(&mut |tx| sweep::begin_sweep(tx, run, &id, now, wall_millis()))?
            .map_err(|holder| StoreError::SweepRunning {
                by: holder.by,
                instance: holder.instance,
            })?;
        match self.sweep_batches(&id, now, batch, progress) {
            Ok(report) => {
                self.write(&mut |tx| sweep::record_end(tx, &id, wall_millis()))?;
                Ok(report)
            }
            Err(error) => {
                // Let the next sweep start at once rather than when the lease lapses.
                let _ = self.write(&mut |tx| {
                    tx.execute(
                        "UPDATE sweeps SET lease_until = ? WHERE id = ?",
                        &[wall_millis().into(), id.as_str().into()],
                    )
                });
                Err(error)
            }
        }
    }

    /// The batches of sweep `id`: this thread nominates each batch's due conversations in
    /// expiry order ([`sweep::nominate`]), and [`SWEEP_WORKERS`] threads purge them
    /// ([`sweep::purge_nominated`]), each batch in a write transaction of its own that also
    /// adds its counts to the sweep's record. On PostgreSQL several batches are in the server
    /// at once: a batch mostly waits for the pages it reads and deletes, and the server reads
    /// them for several transactions at a time. SQLite has one writer, and one worker: it
    /// purges a batch while the next is nominated.
    fn sweep_batches(
        &self,
        id: &str,
        now: Timestamp,
        batch: usize,
        progress: &mut dyn FnMut(u64, &SweepReport),
    ) -> Result<SweepReport, StoreError> {
        let workers = match &self.backend {
            AnyBackend::Sqlite(_) => 1,
            AnyBackend::Postgres(_) => SWEEP_WORKERS,
        };
        let (to_workers, nominated) =
            std::sync::mpsc::sync_channel::<Vec<custos_core::ConversationId>>(workers);
        // The workers share the receiving end, and the last to stop drops it: a nominator
        // whose every worker has stopped (each on an error) is then refused, not kept waiting.
        let nominated = std::sync::Arc::new(std::sync::Mutex::new(nominated));
        let (to_nominator, purged) = std::sync::mpsc::channel();
        std::thread::scope(|scope| {
            for _ in 0..workers {
                let (to_nominator, nominated) = (to_nominator.clone(), nominated.clone());
                scope.spawn(move || {
                    loop {
                        let next = nominated
                            .lock()
                            .map_err(|_| ())
                            .and_then(|n| n.recv().map_err(|_| ()));
                        let Ok(due) = next else {
                            return;
                        };
                        let purged = self.write(&mut |tx| {
                            let part = sweep::purge_nominated(
                                tx,
                                &self.histories,
                                &self.policy,
                                now,
                                &due,
                            )?;
                            sweep::record_progress(tx, id, &part, wall_millis())?;
                            Ok(part)
                        });
                        let failed = purged.is_err();
                        if to_nominator
                            .send(purged.map(|part| (part, due.len())))
                            .is_err()
                            || failed
                        {
                            return;
                        }
                    }
                });
            }
            drop((to_nominator, nominated));
            let mut report = SweepReport::default();
            let mut looked_at = 0u64;
            let mut failure = None;
            // Takes in a batch's outcome; answers whether the sweep goes on.
            let mut take = |purged: Result<(SweepReport, usize), StoreError>| match purged {
                Ok((part, due)) => {
                    report.add(&part);
                    looked_at += u64::try_from(due).unwrap_or(u64::MAX);
                    progress(looked_at, &report);
                    true
                }
                Err(error) => {
                    failure.get_or_insert(error);
                    false
                }
            };
            let mut cursor: Option<sweep::SweepCursor> = None;
            let nominating = loop {
                let mut going_on = true;
                while let Ok(done) = purged.try_recv() {
                    going_on &= take(done);
                }
                if !going_on {
                    break Ok(());
                }
                let (due, next) =
                    match self.read(&mut |tx| sweep::nominate(tx, now, cursor.as_ref(), batch)) {
                        Ok(nominated) => nominated,
                        Err(error) => break Err(error),
                    };
                // A failed send means every worker stopped: their results say why.
                if due.is_empty() || to_workers.send(due).is_err() {
                    break Ok(());
                }
                match next {
                    Some(next) => cursor = Some(next),
                    None => break Ok(()),
                }
            };
            drop(to_workers);
            for done in purged {
                take(done);
            }
            match (failure, nominating) {
                (Some(error), _) | (None, Err(error)) => Err(error),
                (None, Ok(())) => Ok(report),
            }
        })
    }

    /// Records that export `id` (a snapshot as of `snapshot_at`) started on this instance.
    pub fn record_export_started(
        &self,
        id: &str,
        snapshot_at: Timestamp,
        request: &str,
    ) -> Result<(), StoreError> {
        let instance = sweep::this_instance();
        self.write(&mut |tx| {
            export_records::started(
                tx,
                id,
                snapshot_at.unix_millis(),
                request,
                &instance,
                wall_millis(),
            )
        })
    }

    /// Renews a running export's lease (its instance is alive).
    pub fn renew_export(&self, id: &str) -> Result<(), StoreError> {
        self.write(&mut |tx| export_records::renew(tx, id, wall_millis()))
    }

    /// Records that an export ended without a manifest.
    pub fn record_export_failed(&self, id: &str) -> Result<(), StoreError> {
        self.write(&mut |tx| export_records::failed(tx, id))
    }

    /// Records a finished export: its manifest, its signature and its rows' keys, at once.
    pub fn record_export_done(
        &self,
        id: &str,
        manifest: &str,
        signature: &str,
        keys: &std::path::Path,
    ) -> Result<(), StoreError> {
        self.write(&mut |tx| {
            let file = std::fs::File::open(keys).map_err(|e| StoreError::io(keys, e))?;
            export_records::done(
                tx,
                id,
                manifest,
                signature,
                &mut std::io::BufReader::new(file),
            )
        })
    }

    /// An export's record, if the store has one.
    pub fn export_record(&self, id: &str) -> Result<Option<ExportRecord>, StoreError> {
        self.read(&mut |tx| export_records::find(tx, id, wall_millis()))
    }

    /// Every finished export, newest snapshot first.
    pub fn finished_exports(&self) -> Result<Vec<ExportRecord>, StoreError> {
        self.read(&mut |tx| export_records::finished(tx, wall_millis()))
    }

    /// The keys of a finished export's rows, as written.
    pub fn export_row_keys(&self, id: &str) -> Result<Vec<u8>, StoreError> {
        self.read(&mut |tx| export_records::row_keys(tx, id))
    }

    /// The newest `limit` sweeps, whichever instance ran them.
    pub fn recent_sweeps(&self, limit: i64) -> Result<Vec<SweepRecord>, StoreError> {
        self.read(&mut |tx| sweep::recent_sweeps(tx, limit))
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

    // The reports read whole tables once (the dashboard's figures, now and then): through
    // `read_once`, so that what they touch does not stay mapped in this process.

    /// Retention figures for auditors (counts only).
    pub fn retention_report(&self, now: Timestamp) -> Result<RetentionReport, StoreError> {
        with_backend!(self, read_once, &mut |tx| reports::retention(tx, now))
    }

    /// Consent figures for auditors (counts only).
    pub fn consent_report(&self, now: Timestamp) -> Result<ConsentReport, StoreError> {
        with_backend!(self, read_once, &mut |tx| reports::consent(
            tx,
            &self.policy,
            now
        ))
    }

    /// Consumer accounts' choices at the end of each of the last `weeks` weeks, by plan, and
    /// the choices made each week by channel, replayed from the ledger (the dashboard's series).
    pub fn consent_over_time(
        &self,
        now: Timestamp,
        weeks: usize,
    ) -> Result<reports::ConsentOverTime, StoreError> {
        with_backend!(self, read_once, &mut |tx| {
            reports::consent_over_time(tx, &self.policy, now, weeks)
        })
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

    /// Calls `each` with every account's gate inputs, a batch at a time, from one snapshot (for
    /// the index built at start); answers where the change feed goes on from, in that
    /// snapshot (see [`Store::gate_changes`]). `each` may be called from several threads at
    /// once: on PostgreSQL the accounts table is read by a connection per core.
    pub fn for_each_gate_state(
        &self,
        each: &(dyn Fn(&[AccountGateState]) + Sync),
    ) -> Result<FeedPosition, StoreError> {
        let decode = |rows: &Rows| -> Result<(), StoreError> {
            let mut states = Vec::with_capacity(GATE_STATES_PER_BATCH);
            rows.replay(&mut |row| {
                states.push(views::gate_state_of_row(
                    &self.histories,
                    &self.policy,
                    row,
                )?);
                Ok(())
            })?;
            each(&states);
            Ok(())
        };
        with_backend!(
            self,
            stream_table,
            "accounts",
            views::GATE_STATE_COLUMNS,
            GATE_STATES_PER_BATCH,
            &mut |tx| views::feed_position(tx),
            &decode
        )
    }

    /// The change feed: calls `each` with the gate inputs of every account whose gate facts a
    /// write committed since `since` changed (whichever process wrote them), and answers the
    /// position to read from next. A change may come twice; none is ever missed.
    pub fn gate_changes(
        &self,
        since: FeedPosition,
        each: &mut dyn FnMut(AccountKey, GateState, u64),
    ) -> Result<FeedPosition, StoreError> {
        self.read(&mut |tx| views::gate_changes(tx, &self.histories, &self.policy, since, each))
    }

    /// About how many accounts the store holds, without counting them (for sizing the gate
    /// index before its load): PostgreSQL's planner estimate, SQLite's highest row id (accounts
    /// are never deleted). `None` where neither is known yet.
    pub fn accounts_estimate(&self) -> Result<Option<u64>, StoreError> {
        self.read(&mut |tx| {
            let sql = match tx.dialect() {
                Dialect::Sqlite => "SELECT MAX(rowid) FROM accounts",
                Dialect::Postgres => {
                    "SELECT reltuples::INT8 FROM pg_class WHERE oid = 'accounts'::regclass"
                }
            };
            Ok(tx
                .query_one(sql, &[])?
                .map(|row| row.optional_int(0))
                .transpose()?
                .flatten()
                .and_then(|n| u64::try_from(n).ok())
                .filter(|&n| n > 0))
        })
    }

    /// Where the change feed stands now: reading from here misses nothing committed after
    /// this call (for a gate index that starts following before its load has finished).
    pub fn feed_position(&self) -> Result<FeedPosition, StoreError> {
        self.read(&mut |tx| views::feed_position(tx))
    }

    /// The gate index's key of an account (see [`AccountKey`]).
    pub fn account_key(&self, account: &AccountId) -> AccountKey {
        self.histories.account_key(account.as_str())
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
        self.read(&mut |tx| keys::ensure_current(tx, &self.key))?;
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

/// The wall clock, in Unix milliseconds: leases are about real time, whatever clock the
/// policy's decisions run on.
fn wall_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// 16 random hex digits.
fn random_id() -> Result<String, StoreError> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes)
        .map_err(|e| StoreError::Database(format!("no randomness for an id: {e}")))?;
    Ok(custos_core::policy::hex(&bytes))
}
