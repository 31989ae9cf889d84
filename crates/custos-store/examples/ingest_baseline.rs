//! The driver alone writing what one accepted message event writes in custos (its event id, the
//! conversation, the message, the account's counter and the conversation's expiry), with the
//! same durability and one commit per batch. Prints events/s.
//!
//! On SQLite (raw rusqlite, WAL, `synchronous=FULL`) by default; with a PostgreSQL URL, the
//! `postgres` client with prepared statements, in a schema of its own that it drops at the end
//! (the server's own durability: `synchronous_commit` as configured).
//!
//! `cargo run --release -p custos-store --example ingest_baseline -- EVENTS BATCH FOLDER [URL [WRITERS]]`
//!
//! On PostgreSQL, WRITERS connections write at once (as custos's HTTP writers do); SQLite has
//! one writer at a time whatever the count, so it takes one.

#![allow(clippy::unwrap_used, reason = "a benchmark stops on any failure")]

use std::time::Instant;

const BASE_TIME: i64 = 1_764_000_000_000;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let events: u64 = args.get(1).and_then(|n| n.parse().ok()).unwrap_or(100_000);
    let batch: u64 = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(100);
    let folder = std::path::PathBuf::from(args.get(3).cloned().unwrap_or_else(|| "/tmp".into()));
    let writers: u64 = args.get(5).and_then(|n| n.parse().ok()).unwrap_or(1);
    let rate = match args.get(4).filter(|url| !url.is_empty()) {
        Some(url) => postgres_rate(url, events, batch, writers.max(1)),
        None => sqlite_rate(&folder, events, batch),
    };
    println!("{rate:.0}");
}

fn sqlite_rate(folder: &std::path::Path, events: u64, batch: u64) -> f64 {
    let path = folder.join(format!("ingest-baseline-{}.sqlite3", std::process::id()));
    let mut db = rusqlite::Connection::open(&path).unwrap();
    let _: String = db
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .unwrap();
    db.pragma_update(None, "synchronous", "FULL").unwrap();
    db.execute_batch(
        "CREATE TABLE accounts (account_id TEXT PRIMARY KEY, next_seq INTEGER NOT NULL);
         CREATE TABLE conversations (account_id TEXT NOT NULL, conversation_id TEXT NOT NULL, surface TEXT NOT NULL,
             incognito INTEGER NOT NULL, expires_at INTEGER, retention_class TEXT, expiry_bound TEXT,
             PRIMARY KEY (account_id, conversation_id));
         CREATE UNIQUE INDEX conversations_by_id ON conversations (conversation_id);
         CREATE INDEX conversations_by_expiry ON conversations (expires_at);
         CREATE TABLE messages (account_id TEXT NOT NULL, conversation_id TEXT NOT NULL, seq INTEGER NOT NULL,
             at INTEGER NOT NULL, role TEXT NOT NULL, text TEXT NOT NULL, PRIMARY KEY (account_id, conversation_id, seq));
         CREATE TABLE event_ids (event_id TEXT PRIMARY KEY, recorded_at INTEGER NOT NULL);",
    )
    .unwrap();
    for a in 0..1000 {
        db.execute(
            "INSERT INTO accounts VALUES (?1, 1)",
            [format!("demo-{a:08}")],
        )
        .unwrap();
    }
    let started = Instant::now();
    let mut i = 0u64;
    while i < events {
        let tx = db
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .unwrap();
        for _ in 0..batch.min(events - i) {
            let account = format!("demo-{:08}", i % 1000);
            let conversation = format!("bench-{i}");
            let at = BASE_TIME + i64::try_from(i).unwrap();
            tx.prepare_cached("INSERT INTO event_ids VALUES (?1, ?2)")
                .unwrap()
                .execute(rusqlite::params![format!("e{i}"), at])
                .unwrap();
            let seq: i64 = tx
                .prepare_cached("SELECT next_seq FROM accounts WHERE account_id = ?1")
                .unwrap()
                .query_row([&account], |r| r.get(0))
                .unwrap();
            tx.prepare_cached("INSERT INTO conversations (account_id, conversation_id, surface, incognito) VALUES (?1, ?2, 'chat', 0)").unwrap().execute([&account, &conversation]).unwrap();
            tx.prepare_cached(
                "INSERT INTO messages VALUES (?1, ?2, ?3, ?4, 'user', 'hello there')",
            )
            .unwrap()
            .execute(rusqlite::params![account, conversation, seq, at])
            .unwrap();
            tx.prepare_cached("UPDATE accounts SET next_seq = ?1 WHERE account_id = ?2")
                .unwrap()
                .execute(rusqlite::params![seq + 1, account])
                .unwrap();
            tx.prepare_cached(
                "UPDATE conversations SET expires_at = ?1, retention_class = 'standard', expiry_bound = 'retention' WHERE conversation_id = ?2",
            )
            .unwrap()
            .execute(rusqlite::params![at + 30 * 86_400_000, conversation])
            .unwrap();
            i += 1;
        }
        tx.commit().unwrap();
    }
    let rate = events as f64 / started.elapsed().as_secs_f64();
    drop(db);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    rate
}

fn postgres_rate(url: &str, events: u64, batch: u64, writers: u64) -> f64 {
    let mut db = postgres::Client::connect(url, postgres::NoTls).unwrap();
    let schema = format!("ingest_baseline_{}", std::process::id());
    db.batch_execute(&format!(
        "CREATE SCHEMA {schema}; SET search_path TO {schema};
         CREATE TABLE accounts (account_id TEXT PRIMARY KEY, next_seq BIGINT NOT NULL);
         CREATE TABLE conversations (account_id TEXT NOT NULL, conversation_id TEXT NOT NULL, surface TEXT NOT NULL,
             incognito BOOLEAN NOT NULL, expires_at BIGINT, retention_class TEXT, expiry_bound TEXT,
             PRIMARY KEY (account_id, conversation_id));
         CREATE UNIQUE INDEX conversations_by_id ON conversations (conversation_id);
         CREATE INDEX conversations_by_expiry ON conversations (expires_at);
         CREATE TABLE messages (account_id TEXT NOT NULL, conversation_id TEXT NOT NULL, seq BIGINT NOT NULL,
             at BIGINT NOT NULL, role TEXT NOT NULL, text TEXT NOT NULL, PRIMARY KEY (account_id, conversation_id, seq));
         CREATE TABLE event_ids (event_id TEXT PRIMARY KEY, recorded_at BIGINT NOT NULL);
         INSERT INTO accounts SELECT format('demo-%s', lpad(n::text, 8, '0')), 1 FROM generate_series(0, 999) n;"
    ))
    .unwrap();
    let started = Instant::now();
    std::thread::scope(|scope| {
        for writer in 0..writers {
            let schema = &schema;
            scope.spawn(move || {
                write_postgres(url, schema, writer, events / writers, batch);
            });
        }
    });
    let rate = (events / writers * writers) as f64 / started.elapsed().as_secs_f64();
    db.batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .unwrap();
    rate
}

/// One writer's share: its own connection, its own event ids, the accounts every writer uses.
fn write_postgres(url: &str, schema: &str, writer: u64, events: u64, batch: u64) {
    let mut db = postgres::Client::connect(url, postgres::NoTls).unwrap();
    db.batch_execute(&format!("SET search_path TO {schema}"))
        .unwrap();
    let event_id = db.prepare("INSERT INTO event_ids VALUES ($1, $2)").unwrap();
    let next_seq = db
        .prepare("SELECT next_seq FROM accounts WHERE account_id = $1 FOR UPDATE")
        .unwrap();
    let conversation_row = db
        .prepare("INSERT INTO conversations (account_id, conversation_id, surface, incognito) VALUES ($1, $2, 'chat', false)")
        .unwrap();
    let message = db
        .prepare("INSERT INTO messages VALUES ($1, $2, $3, $4, 'user', 'hello there')")
        .unwrap();
    let counter = db
        .prepare("UPDATE accounts SET next_seq = $1 WHERE account_id = $2")
        .unwrap();
    let expiry = db
        .prepare("UPDATE conversations SET expires_at = $1, retention_class = 'standard', expiry_bound = 'retention' WHERE conversation_id = $2")
        .unwrap();
    let mut i = 0u64;
    while i < events {
        let mut tx = db.transaction().unwrap();
        for _ in 0..batch.min(events - i) {
            // Writers start apart in the accounts, as custos's writers do, and meet as they go.
            let account = format!("demo-{:08}", (i + writer * 250) % 1000);
            let conversation = format!("bench-{writer}-{i}");
            let at = BASE_TIME + i64::try_from(i).unwrap();
            tx.execute(&event_id, &[&format!("e{writer}-{i}"), &at])
                .unwrap();
            let seq: i64 = tx.query_one(&next_seq, &[&account]).unwrap().get(0);
            tx.execute(&conversation_row, &[&account, &conversation])
                .unwrap();
            tx.execute(&message, &[&account, &conversation, &seq, &at])
                .unwrap();
            tx.execute(&counter, &[&(seq + 1), &account]).unwrap();
            tx.execute(&expiry, &[&(at + 30 * 86_400_000), &conversation])
                .unwrap();
            i += 1;
        }
        tx.commit().unwrap();
    }
}
