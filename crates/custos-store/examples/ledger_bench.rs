//! Ledger appends per second: through the store, and through raw rusqlite writing the same rows
//! with the same durability (WAL, `synchronous=FULL`, one commit per append), in one run. With
//! a PostgreSQL URL (of an empty database), the store writes there and the baseline writes the
//! same rows through the `postgres` driver with prepared statements, in a schema of its own.
//!
//! `cargo run --release -p custos-store --example ledger_bench -- [APPENDS] [FOLDER] [URL]`

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    reason = "a benchmark stops on any failure; its indices are taken modulo the length"
)]

use std::path::PathBuf;
use std::time::Instant;

use custos_core::{AccountId, Channel, Command, Policy, Timestamp};
use custos_store::{Location, Store};
use sha2::{Digest, Sha256};

const ACCOUNTS: usize = 100;

fn main() {
    let appends: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(2000);
    let folder = std::env::args()
        .nth(2)
        .map_or_else(std::env::temp_dir, PathBuf::from);
    let url = std::env::args().nth(3).filter(|url| !url.is_empty());
    let root = folder.join(format!("custos-ledger-bench-{}", std::process::id()));
    let accounts: Vec<AccountId> = (0..ACCOUNTS)
        .map(|i| AccountId::parse(&format!("bench-{i}")).unwrap())
        .collect();
    let start = Timestamp::parse("2025-07-01T00:00:00Z").unwrap();
    let at = |i: usize| {
        Timestamp::from_unix_millis(start.unix_millis() + i64::try_from(i).unwrap()).unwrap()
    };

    // custos: every append is a choice through the store (admission, ledger chain, commit).
    let store = Store::open(
        &Location::new(root.join("custos"), url.clone()),
        Policy::bundled(),
    )
    .unwrap();
    for account in &accounts {
        let create = Command::CreateAccount {
            account: account.clone(),
            plan: "pro".into(),
            choice: None,
        };
        store.apply(start, &create, "bench").unwrap();
    }
    let timer = Instant::now();
    for i in 0..appends {
        let choice = Command::Choose {
            account: accounts[i % ACCOUNTS].clone(),
            allowed: i % 3 != 0,
            channel: Channel::Settings,
        };
        store.apply(at(i + 1), &choice, "bench").unwrap();
    }
    let custos_rate = appends as f64 / timer.elapsed().as_secs_f64();
    assert_eq!(store.verify_ledger().unwrap().problem, None);

    let raw_rate = match &url {
        Some(url) => postgres_rate(url, &accounts, appends, at),
        None => sqlite_rate(&root, &accounts, appends, at),
    };
    drop(store);
    std::fs::remove_dir_all(&root).unwrap();

    let (durability, baseline) = match url {
        Some(_) => ("PostgreSQL as configured", "postgres driver"),
        None => ("WAL, synchronous=FULL", "raw rusqlite "),
    };
    println!("ledger appends, {appends} each, one durable commit per append ({durability})");
    println!("  custos store    : {custos_rate:>9.0} appends/s");
    println!("  {baseline} : {raw_rate:>9.0} appends/s");
    println!(
        "  ratio           : {:.2}x (goal >= 0.70x)",
        custos_rate / raw_rate
    );
}

/// The SHA-256 chain entry the baseline writes for append `i`, after `prev`.
fn chain_hash(prev: [u8; 32], account: &str, idx: i64, at: i64, preference: &str) -> [u8; 32] {
    Sha256::new()
        .chain_update(prev)
        .chain_update(format!("{account}{idx}{at}{preference}settings"))
        .finalize()
        .into()
}

/// Baseline: the same rows (with the same SHA-256 chain) inserted by hand into SQLite.
fn sqlite_rate(
    root: &std::path::Path,
    accounts: &[AccountId],
    appends: usize,
    at: impl Fn(usize) -> Timestamp,
) -> f64 {
    std::fs::create_dir_all(root.join("raw")).unwrap();
    let mut db = rusqlite::Connection::open(root.join("raw/raw.sqlite3")).unwrap();
    let _: String = db
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .unwrap();
    db.pragma_update(None, "synchronous", "FULL").unwrap();
    db.execute_batch(
        "CREATE TABLE accounts (account_id TEXT PRIMARY KEY, ledger_len INTEGER NOT NULL, ledger_head BLOB NOT NULL);
         CREATE TABLE ledger (account_id TEXT NOT NULL, idx INTEGER NOT NULL, at INTEGER NOT NULL, seq INTEGER NOT NULL,
             kind TEXT NOT NULL, plan TEXT, preference TEXT, channel TEXT, notice_id TEXT NOT NULL, policy_id TEXT NOT NULL,
             actor TEXT NOT NULL, prev_hash BLOB NOT NULL, hash BLOB NOT NULL, PRIMARY KEY (account_id, idx));",
    )
    .unwrap();
    let mut heads = vec![([0u8; 32], 1i64); ACCOUNTS];
    for account in accounts {
        db.execute(
            "INSERT INTO accounts VALUES (?1, 1, zeroblob(32))",
            [account.as_str()],
        )
        .unwrap();
    }
    let timer = Instant::now();
    for i in 0..appends {
        let (prev, idx) = heads[i % ACCOUNTS];
        let account = accounts[i % ACCOUNTS].as_str();
        let preference = if i % 3 != 0 { "allowed" } else { "declined" };
        let hash = chain_hash(prev, account, idx, at(i + 1).unix_millis(), preference);
        let tx = db
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .unwrap();
        tx.execute(
            "INSERT INTO ledger VALUES (?1, ?2, ?3, ?4, 'choice', NULL, ?5, 'settings', 'consumer-terms-2025', 'consumer-terms-2025', 'bench', ?6, ?7)",
            rusqlite::params![account, idx, at(i + 1).unix_millis(), idx, preference, prev.as_slice(), hash.as_slice()],
        )
        .unwrap();
        tx.execute(
            "UPDATE accounts SET ledger_len = ?1, ledger_head = ?2 WHERE account_id = ?3",
            rusqlite::params![idx + 1, hash.as_slice(), account],
        )
        .unwrap();
        tx.commit().unwrap();
        heads[i % ACCOUNTS] = (hash, idx + 1);
    }
    appends as f64 / timer.elapsed().as_secs_f64()
}

/// Baseline: the same rows through the `postgres` driver, prepared statements, one transaction
/// per append, in a schema of its own that is dropped after.
fn postgres_rate(
    url: &str,
    accounts: &[AccountId],
    appends: usize,
    at: impl Fn(usize) -> Timestamp,
) -> f64 {
    let mut db = postgres::Client::connect(url, postgres::NoTls).unwrap();
    let schema = format!("ledger_baseline_{}", std::process::id());
    db.batch_execute(&format!(
        "CREATE SCHEMA {schema}; SET search_path TO {schema};
         CREATE TABLE accounts (account_id TEXT PRIMARY KEY, ledger_len BIGINT NOT NULL, ledger_head BYTEA NOT NULL);
         CREATE TABLE ledger (account_id TEXT NOT NULL, idx BIGINT NOT NULL, at BIGINT NOT NULL, seq BIGINT NOT NULL,
             kind TEXT NOT NULL, plan TEXT, preference TEXT, channel TEXT, notice_id TEXT NOT NULL, policy_id TEXT NOT NULL,
             actor TEXT NOT NULL, prev_hash BYTEA NOT NULL, hash BYTEA NOT NULL, PRIMARY KEY (account_id, idx));"
    ))
    .unwrap();
    for account in accounts {
        db.execute(
            "INSERT INTO accounts VALUES ($1, 1, '\\x')",
            &[&account.as_str()],
        )
        .unwrap();
    }
    let entry = db
        .prepare("INSERT INTO ledger VALUES ($1, $2, $3, $4, 'choice', NULL, $5, 'settings', 'consumer-terms-2025', 'consumer-terms-2025', 'bench', $6, $7)")
        .unwrap();
    let head = db
        .prepare("UPDATE accounts SET ledger_len = $1, ledger_head = $2 WHERE account_id = $3")
        .unwrap();
    let mut heads = vec![([0u8; 32], 1i64); accounts.len()];
    let timer = Instant::now();
    for i in 0..appends {
        let (prev, idx) = heads[i % accounts.len()];
        let account = accounts[i % accounts.len()].as_str();
        let preference = if i % 3 != 0 { "allowed" } else { "declined" };
        let millis = at(i + 1).unix_millis();
        let hash = chain_hash(prev, account, idx, millis, preference);
        let mut tx = db.transaction().unwrap();
        tx.execute(
            &entry,
            &[
                &account,
                &idx,
                &millis,
                &idx,
                &preference,
                &prev.as_slice(),
                &hash.as_slice(),
            ],
        )
        .unwrap();
        tx.execute(&head, &[&(idx + 1), &hash.as_slice(), &account])
            .unwrap();
        tx.commit().unwrap();
        heads[i % accounts.len()] = (hash, idx + 1);
    }
    let rate = appends as f64 / timer.elapsed().as_secs_f64();
    db.batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .unwrap();
    rate
}
