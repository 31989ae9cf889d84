//! Raw rusqlite writing what one accepted message event writes in custos (its event id, the
//! conversation, the message, the account's counter and the conversation's expiry), with the
//! same durability (WAL, `synchronous=FULL`) and one commit per batch. Prints events/s.
//!
//! `cargo run --release -p custos-store --example ingest_baseline -- EVENTS BATCH FOLDER`

#![allow(clippy::unwrap_used, reason = "a benchmark stops on any failure")]

use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let events: u64 = args.get(1).and_then(|n| n.parse().ok()).unwrap_or(100_000);
    let batch: u64 = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(100);
    let folder = std::path::PathBuf::from(args.get(3).cloned().unwrap_or_else(|| "/tmp".into()));
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
            let at = 1_764_000_000_000i64 + i64::try_from(i).unwrap();
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
    println!("{rate:.0}");
}
