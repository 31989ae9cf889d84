//! The schema, as versioned migrations embedded in the binary.
//!
//! Every table keys its rows by account first, so that one account's rows sit together (and, on
//! distributed SQL, in one range). The hot path uses no global sequence: event order within an
//! account comes from the account row's own counter.

use crate::error::StoreError;
use crate::sql::{Dialect, Tx, Value};

/// The newest schema version this build knows.
pub const SCHEMA_VERSION: i64 = 11;

/// Migration N brings the schema from version N-1 to N. Types are written `INT8` and `BYTES`
/// and rewritten per dialect.
const MIGRATIONS: &[&str] = &[
    r"
CREATE TABLE accounts (
    account_id TEXT PRIMARY KEY,
    next_seq INT8 NOT NULL,
    ledger_len INT8 NOT NULL,
    ledger_head BYTES NOT NULL,
    checkpointed_len INT8 NOT NULL,
    erased_at INT8
);
CREATE TABLE ledger (
    account_id TEXT NOT NULL,
    idx INT8 NOT NULL,
    at INT8 NOT NULL,
    seq INT8 NOT NULL,
    kind TEXT NOT NULL,
    plan TEXT,
    preference TEXT,
    channel TEXT,
    notice_id TEXT NOT NULL,
    policy_id TEXT NOT NULL,
    actor TEXT NOT NULL,
    prev_hash BYTES NOT NULL,
    hash BYTES NOT NULL,
    PRIMARY KEY (account_id, idx)
);
CREATE TABLE conversations (
    account_id TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    surface TEXT NOT NULL,
    incognito BOOLEAN NOT NULL,
    deleted_at INT8,
    deleted_seq INT8,
    purged_at INT8,
    expires_at INT8,
    retention_class TEXT,
    expiry_bound TEXT,
    PRIMARY KEY (account_id, conversation_id)
);
CREATE UNIQUE INDEX conversations_by_id ON conversations (conversation_id);
CREATE INDEX conversations_by_expiry ON conversations (expires_at) WHERE purged_at IS NULL;
CREATE TABLE messages (
    account_id TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    seq INT8 NOT NULL,
    at INT8 NOT NULL,
    role TEXT NOT NULL,
    text TEXT NOT NULL,
    PRIMARY KEY (account_id, conversation_id, seq)
);
CREATE TABLE feedback (
    account_id TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    seq INT8 NOT NULL,
    at INT8 NOT NULL,
    rating TEXT NOT NULL,
    comment TEXT,
    PRIMARY KEY (account_id, conversation_id, seq)
);
CREATE TABLE holds (
    hold_id TEXT PRIMARY KEY,
    account_id TEXT,
    conversation_id TEXT,
    placed_at INT8 NOT NULL,
    released_at INT8,
    actor TEXT NOT NULL
);
CREATE TABLE tombstones (
    conversation_hash BYTES PRIMARY KEY,
    purged_at INT8 NOT NULL,
    reason TEXT NOT NULL
);
CREATE TABLE checkpoints (
    id INT8 PRIMARY KEY,
    at INT8 NOT NULL,
    accounts INT8 NOT NULL,
    entries INT8 NOT NULL,
    root BYTES NOT NULL,
    signature BYTES NOT NULL
);
CREATE TABLE checkpoint_heads (
    checkpoint_id INT8 NOT NULL,
    account_id TEXT NOT NULL,
    ledger_len INT8 NOT NULL,
    head BYTES NOT NULL,
    PRIMARY KEY (checkpoint_id, account_id)
);
",
    r"
CREATE TABLE tokens (
    token_hash BYTES PRIMARY KEY,
    role TEXT NOT NULL,
    account_id TEXT,
    created_at INT8 NOT NULL,
    expires_at INT8,
    revoked_at INT8
);
CREATE TABLE event_ids (
    event_id TEXT PRIMARY KEY,
    recorded_at INT8 NOT NULL
);
CREATE INDEX accounts_unsealed ON accounts (account_id) WHERE ledger_len <> checkpointed_len;
ALTER TABLE accounts ADD COLUMN plan TEXT;
ALTER TABLE accounts ADD COLUMN preference TEXT
",
    // A legal hold's audit trail: why it was placed, and who released it.
    r"
ALTER TABLE holds ADD COLUMN reason TEXT NOT NULL DEFAULT '';
ALTER TABLE holds ADD COLUMN released_by TEXT
",
    // Ledger hashes name accounts by keyed pseudonym (`engine::rechain_by_pseudonym` upgrades
    // older ledgers); erased accounts are found by recomputing theirs.
    r"
CREATE INDEX tokens_by_account ON tokens (account_id)
",
    // Tombstones keyed by time first: a sweep appends them at the end of the tree instead of
    // scattering them by hash, and reports read them by time.
    r"
CREATE TABLE tombstones_by_time (
    purged_at INT8 NOT NULL,
    conversation_hash BYTES NOT NULL,
    reason TEXT NOT NULL,
    PRIMARY KEY (purged_at, conversation_hash)
);
INSERT INTO tombstones_by_time (purged_at, conversation_hash, reason)
    SELECT purged_at, conversation_hash, reason FROM tombstones;
DROP TABLE tombstones;
ALTER TABLE tombstones_by_time RENAME TO tombstones
",
    // The tables read by ranges of accounts, clustered by their key (SQLite: WITHOUT ROWID;
    // PostgreSQL keeps its heap): a range is then read in one pass over the tree's leaves,
    // instead of an index walk with a table lookup per row. Exports read every table this way,
    // and an account's ledger is read whole on each of its writes.
    r"
CREATE TABLE ledger_by_key (
    account_id TEXT NOT NULL,
    idx INT8 NOT NULL,
    at INT8 NOT NULL,
    seq INT8 NOT NULL,
    kind TEXT NOT NULL,
    plan TEXT,
    preference TEXT,
    channel TEXT,
    notice_id TEXT NOT NULL,
    policy_id TEXT NOT NULL,
    actor TEXT NOT NULL,
    prev_hash BYTES NOT NULL,
    hash BYTES NOT NULL,
    PRIMARY KEY (account_id, idx)
) WITHOUT ROWID;
INSERT INTO ledger_by_key (account_id, idx, at, seq, kind, plan, preference, channel, notice_id,
    policy_id, actor, prev_hash, hash)
    SELECT account_id, idx, at, seq, kind, plan, preference, channel, notice_id, policy_id, actor,
        prev_hash, hash FROM ledger;
DROP TABLE ledger;
ALTER TABLE ledger_by_key RENAME TO ledger;
CREATE TABLE conversations_by_key (
    account_id TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    surface TEXT NOT NULL,
    incognito BOOLEAN NOT NULL,
    deleted_at INT8,
    deleted_seq INT8,
    purged_at INT8,
    expires_at INT8,
    retention_class TEXT,
    expiry_bound TEXT,
    PRIMARY KEY (account_id, conversation_id)
) WITHOUT ROWID;
INSERT INTO conversations_by_key (account_id, conversation_id, surface, incognito, deleted_at,
    deleted_seq, purged_at, expires_at, retention_class, expiry_bound)
    SELECT account_id, conversation_id, surface, incognito, deleted_at, deleted_seq, purged_at,
        expires_at, retention_class, expiry_bound FROM conversations;
DROP TABLE conversations;
ALTER TABLE conversations_by_key RENAME TO conversations;
CREATE UNIQUE INDEX conversations_by_id ON conversations (conversation_id);
CREATE INDEX conversations_by_expiry ON conversations (expires_at) WHERE purged_at IS NULL;
CREATE TABLE messages_by_key (
    account_id TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    seq INT8 NOT NULL,
    at INT8 NOT NULL,
    role TEXT NOT NULL,
    text TEXT NOT NULL,
    PRIMARY KEY (account_id, conversation_id, seq)
) WITHOUT ROWID;
INSERT INTO messages_by_key (account_id, conversation_id, seq, at, role, text)
    SELECT account_id, conversation_id, seq, at, role, text FROM messages;
DROP TABLE messages;
ALTER TABLE messages_by_key RENAME TO messages;
CREATE TABLE feedback_by_key (
    account_id TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    seq INT8 NOT NULL,
    at INT8 NOT NULL,
    rating TEXT NOT NULL,
    comment TEXT,
    PRIMARY KEY (account_id, conversation_id, seq)
) WITHOUT ROWID;
INSERT INTO feedback_by_key (account_id, conversation_id, seq, at, rating, comment)
    SELECT account_id, conversation_id, seq, at, rating, comment FROM feedback;
DROP TABLE feedback;
ALTER TABLE feedback_by_key RENAME TO feedback
",
    // The gate's change feed: every account row carries the mark of the last write that moved
    // its gate facts (see `views::gate_changes`). A trigger sets it (`feed_triggers`), so that
    // no write path, present or future, can forget to.
    r"
ALTER TABLE accounts ADD COLUMN changed INT8 NOT NULL DEFAULT 0;
CREATE INDEX accounts_by_change ON accounts (changed)
",
    // The keys the store is bound to (see `keys`): every instance must be given these, and
    // each checkpoint names the signing key that signed it (none: the store's first key).
    r"
CREATE TABLE store_keys (
    purpose TEXT NOT NULL,
    key_id TEXT NOT NULL,
    public_key BYTES,
    since INT8 NOT NULL,
    retired_at INT8,
    previous TEXT,
    certificate BYTES,
    PRIMARY KEY (purpose, key_id)
);
ALTER TABLE checkpoints ADD COLUMN key_id TEXT
",
    // Every sweep, whichever instance ran it, and the one lease that lets one sweep run at a
    // time across all of them (`sweep::begin_sweep`).
    r"
CREATE TABLE sweeps (
    id TEXT PRIMARY KEY,
    at INT8 NOT NULL,
    by_whom TEXT NOT NULL,
    instance TEXT NOT NULL,
    started INT8 NOT NULL,
    finished INT8,
    lease_until INT8 NOT NULL,
    purged INT8 NOT NULL,
    held_back INT8 NOT NULL
);
CREATE INDEX sweeps_by_start ON sweeps (started)
",
    // Every training export's record, for every instance (`export_records`).
    r"
CREATE TABLE exports (
    snapshot_id TEXT PRIMARY KEY,
    snapshot_at INT8 NOT NULL,
    request TEXT NOT NULL,
    instance TEXT NOT NULL,
    status TEXT NOT NULL,
    lease_until INT8 NOT NULL,
    manifest TEXT,
    signature TEXT
);
CREATE TABLE export_row_keys (
    snapshot_id TEXT NOT NULL,
    chunk INT8 NOT NULL,
    row_keys BYTES NOT NULL,
    PRIMARY KEY (snapshot_id, chunk)
)
",
    // The sweep's index of expiries, moved out of the conversations table into a table of its
    // own that triggers keep (`expiry_triggers`): a purge, a deletion or a moved expiry then
    // changes no indexed column of a conversation, so PostgreSQL updates the row in place (a
    // HOT update) instead of adding an entry to each of its indexes. Filled when the triggers
    // are created, at the end of the migration (`keep_expiry_index`).
    r"
CREATE TABLE conversation_expiry (
    expires_at INT8 NOT NULL,
    conversation_id TEXT NOT NULL,
    PRIMARY KEY (expires_at, conversation_id)
) WITHOUT ROWID;
DROP INDEX IF EXISTS conversations_by_expiry
",
];

/// The trigger that marks a changed account, installed with migration 7. Whole statements (they
/// hold `;`), one form per backend:
/// - SQLite serializes writers, so a counter one above the highest mark commits in mark order;
/// - PostgreSQL commits in any order, so the mark is the writing transaction's id, and a reader
///   that keeps the oldest id still running when it last read (its snapshot's `xmin`) misses
///   nothing: whatever commits later has an id at least that.
fn feed_triggers(dialect: Dialect) -> &'static [&'static str] {
    match dialect {
        Dialect::Sqlite => &[
            r"CREATE TRIGGER accounts_mark_inserted AFTER INSERT ON accounts
BEGIN
    UPDATE accounts SET changed = (SELECT max(changed) FROM accounts) + 1
        WHERE account_id = NEW.account_id;
END",
            r"CREATE TRIGGER accounts_mark_changed
AFTER UPDATE OF account_id, plan, preference, erased_at, ledger_len ON accounts
WHEN NEW.account_id IS NOT OLD.account_id OR NEW.plan IS NOT OLD.plan
    OR NEW.preference IS NOT OLD.preference OR NEW.erased_at IS NOT OLD.erased_at
    OR NEW.ledger_len IS NOT OLD.ledger_len
BEGIN
    UPDATE accounts SET changed = (SELECT max(changed) FROM accounts) + 1
        WHERE account_id = NEW.account_id;
END",
        ],
        Dialect::Postgres => &[
            r"CREATE FUNCTION custos_mark_account_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' OR NEW.account_id IS DISTINCT FROM OLD.account_id
        OR NEW.plan IS DISTINCT FROM OLD.plan OR NEW.preference IS DISTINCT FROM OLD.preference
        OR NEW.erased_at IS DISTINCT FROM OLD.erased_at
        OR NEW.ledger_len IS DISTINCT FROM OLD.ledger_len THEN
        NEW.changed := pg_current_xact_id()::text::bigint;
    END IF;
    RETURN NEW;
END
$$",
            r"CREATE TRIGGER accounts_mark_changed BEFORE INSERT OR UPDATE ON accounts
FOR EACH ROW EXECUTE FUNCTION custos_mark_account_changed()",
        ],
    }
}

/// The query that fixes a feed reader's position in its snapshot: rows marked at or above it
/// are the ones a later read must look at again (see [`feed_triggers`]).
pub(crate) fn feed_position_query(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::Sqlite => "SELECT coalesce(max(changed), 0) + 1 FROM accounts",
        Dialect::Postgres => "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint",
    }
}

/// The trigger that keeps `conversation_expiry` (migration 11) equal to the expiries of the
/// conversations not yet purged: whatever writes a conversation, the sweep's index follows in
/// the same transaction. Whole statements, one form per backend.
fn expiry_triggers(dialect: Dialect) -> &'static [&'static str] {
    match dialect {
        Dialect::Sqlite => &[
            r"CREATE TRIGGER conversations_expiry_inserted AFTER INSERT ON conversations
WHEN NEW.expires_at IS NOT NULL AND NEW.purged_at IS NULL
BEGIN
    INSERT OR IGNORE INTO conversation_expiry (expires_at, conversation_id)
        VALUES (NEW.expires_at, NEW.conversation_id);
END",
            r"CREATE TRIGGER conversations_expiry_moved
AFTER UPDATE OF conversation_id, expires_at, purged_at ON conversations
WHEN NEW.conversation_id IS NOT OLD.conversation_id OR NEW.expires_at IS NOT OLD.expires_at
    OR NEW.purged_at IS NOT OLD.purged_at
BEGIN
    DELETE FROM conversation_expiry
        WHERE expires_at = OLD.expires_at AND conversation_id = OLD.conversation_id;
    INSERT OR IGNORE INTO conversation_expiry (expires_at, conversation_id)
        SELECT NEW.expires_at, NEW.conversation_id
        WHERE NEW.expires_at IS NOT NULL AND NEW.purged_at IS NULL;
END",
            r"CREATE TRIGGER conversations_expiry_deleted AFTER DELETE ON conversations
BEGIN
    DELETE FROM conversation_expiry
        WHERE expires_at = OLD.expires_at AND conversation_id = OLD.conversation_id;
END",
        ],
        // One trigger per statement, with its rows as transition tables: a statement that
        // writes many conversations (a batch's expiries, a sweep's purges, a `COPY`) keeps the
        // index with one set-based delete and insert, not a function call and two statements
        // per row.
        Dialect::Postgres => &[
            r"CREATE OR REPLACE FUNCTION custos_expiry_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO conversation_expiry (expires_at, conversation_id)
        SELECT expires_at, conversation_id FROM new_rows
        WHERE expires_at IS NOT NULL AND purged_at IS NULL
        ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$$",
            r"CREATE OR REPLACE FUNCTION custos_expiry_moved() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM conversation_expiry e USING old_rows o
        WHERE o.purged_at IS NULL AND e.expires_at = o.expires_at
            AND e.conversation_id = o.conversation_id
            AND NOT EXISTS (SELECT 1 FROM new_rows n WHERE n.conversation_id = o.conversation_id
                AND n.expires_at = o.expires_at AND n.purged_at IS NULL);
    INSERT INTO conversation_expiry (expires_at, conversation_id)
        SELECT n.expires_at, n.conversation_id FROM new_rows n
        WHERE n.expires_at IS NOT NULL AND n.purged_at IS NULL
            AND NOT EXISTS (SELECT 1 FROM old_rows o WHERE o.conversation_id = n.conversation_id
                AND o.expires_at = n.expires_at AND o.purged_at IS NULL)
        ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$$",
            r"CREATE OR REPLACE FUNCTION custos_expiry_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM conversation_expiry e USING old_rows o
        WHERE e.expires_at = o.expires_at AND e.conversation_id = o.conversation_id;
    RETURN NULL;
END
$$",
            r"CREATE TRIGGER conversations_expiry_inserted AFTER INSERT ON conversations
REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION custos_expiry_inserted()",
            r"CREATE TRIGGER conversations_expiry_moved AFTER UPDATE ON conversations
REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION custos_expiry_moved()",
            r"CREATE TRIGGER conversations_expiry_deleted AFTER DELETE ON conversations
REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION custos_expiry_deleted()",
        ],
    }
}

/// The trigger whose presence says that `conversation_expiry` is kept (on both backends).
const EXPIRY_TRIGGER: &str = "conversations_expiry_moved";

/// Stops keeping `conversation_expiry` for a load into an empty store: expiries arrive in no
/// order, and inserting them one by one into an index larger than the page cache is what slowed
/// a large load. [`keep_expiry_index`] fills it once after the load; every open calls it, so a
/// load cut short leaves no conversation out of the index past the next start.
pub(crate) fn suspend_expiry_index(tx: &mut dyn Tx) -> Result<(), StoreError> {
    let dialect = tx.dialect();
    let on_table = match dialect {
        Dialect::Sqlite => "",
        Dialect::Postgres => " ON conversations",
    };
    for trigger in ["inserted", "moved", "deleted"] {
        tx.execute(
            &format!("DROP TRIGGER IF EXISTS conversations_expiry_{trigger}{on_table}"),
            &[],
        )?;
    }
    tx.execute("DELETE FROM conversation_expiry", &[])?;
    Ok(())
}

/// Makes sure `conversation_expiry` is kept: if its trigger is missing (a new schema, or a load
/// that suspended it), fills the index from the conversations, in its own order, and creates the
/// trigger, with writers to conversations held off meanwhile so that none is missed.
pub(crate) fn keep_expiry_index(tx: &mut dyn Tx) -> Result<(), StoreError> {
    let dialect = tx.dialect();
    let present = match dialect {
        Dialect::Sqlite => "SELECT 1 FROM sqlite_master WHERE type = 'trigger' AND name = ?",
        Dialect::Postgres => {
            "SELECT 1 FROM pg_trigger WHERE tgname = ? AND tgrelid = 'conversations'::regclass"
        }
    };
    if tx.query_one(present, &[EXPIRY_TRIGGER.into()])?.is_some() {
        return Ok(());
    }
    if dialect == Dialect::Postgres {
        tx.execute("LOCK TABLE conversations IN SHARE ROW EXCLUSIVE MODE", &[])?;
        if tx.query_one(present, &[EXPIRY_TRIGGER.into()])?.is_some() {
            return Ok(());
        }
    }
    tx.execute("DELETE FROM conversation_expiry", &[])?;
    tx.execute(
        "INSERT INTO conversation_expiry (expires_at, conversation_id) \
         SELECT expires_at, conversation_id FROM conversations \
         WHERE expires_at IS NOT NULL AND purged_at IS NULL ORDER BY expires_at, conversation_id",
        &[],
    )?;
    for trigger in expiry_triggers(dialect) {
        tx.execute(trigger, &[])?;
    }
    Ok(())
}

/// The tables a load fills, whose statistics the planner needs right after it: PostgreSQL's
/// autovacuum analyzes them only later, and until then it plans with the empty tables' figures
/// (bitmap scans in parallel workers for what an index scan reads in a millisecond). SQLite
/// plans by its indexes alone, and its ANALYZE would read every row.
pub(crate) fn analyze_loaded_tables(tx: &mut dyn Tx) -> Result<(), StoreError> {
    if tx.dialect() == Dialect::Postgres {
        tx.execute(
            "ANALYZE accounts, ledger, conversations, messages, feedback",
            &[],
        )?;
    }
    Ok(())
}

/// Brings a database to [`SCHEMA_VERSION`], or refuses one made by a newer custos. Returns the
/// version it found, so that the store can finish what SQL should not decide (version 2's
/// gate columns are filled from each ledger by the core's own reading of it).
pub fn migrate(tx: &mut dyn Tx) -> Result<i64, StoreError> {
    tx.execute(
        "CREATE TABLE IF NOT EXISTS custos_schema (version INT8 NOT NULL)",
        &[],
    )?;
    let found = match tx.query_one("SELECT version FROM custos_schema", &[])? {
        Some(row) => row.int(0)?,
        None => {
            tx.execute("INSERT INTO custos_schema (version) VALUES (0)", &[])?;
            0
        }
    };
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    let pending = MIGRATIONS
        .iter()
        .enumerate()
        .skip(usize::try_from(found).unwrap_or(0));
    for (index, migration) in pending {
        for statement in migration
            .split(';')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            tx.execute(statement, &[])?;
        }
        let version = i64::try_from(index + 1).unwrap_or(i64::MAX);
        if version == 7 {
            for trigger in feed_triggers(tx.dialect()) {
                tx.execute(trigger, &[])?;
            }
        }
        if version == 11 && tx.dialect() == Dialect::Postgres {
            // Room on each page of conversations for its row's next version, so that a purge
            // or a moved expiry stays on the page (HOT); pages written before keep none.
            tx.execute("ALTER TABLE conversations SET (fillfactor = 90)", &[])?;
        }
        tx.execute(
            "UPDATE custos_schema SET version = ?",
            &[Value::Int(version)],
        )?;
    }
    keep_expiry_index(tx)?;
    Ok(found)
}
