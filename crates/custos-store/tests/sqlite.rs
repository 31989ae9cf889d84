//! The conformance suite against SQLite, plus what only SQLite has: a database file.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a test fails loudly on a broken fixture; that is its job"
)]

mod conformance;

use custos_core::Policy;
use custos_store::{Location, SQLITE_FILE, Store, StoreError};

/// Runs one conformance check on a fresh SQLite store in a temporary data folder.
fn check(run: fn(conformance::Factory<'_>)) {
    let folders = std::cell::RefCell::new(Vec::new());
    let open = || {
        let folder = tempfile::tempdir().unwrap();
        let store = Store::open(
            &Location::Sqlite {
                data: folder.path().to_owned(),
            },
            Policy::bundled(),
        )
        .unwrap();
        folders.borrow_mut().push(folder);
        store
    };
    run(&open);
}

#[test]
fn conformance_suite_passes_on_sqlite() {
    for (name, run) in conformance::CHECKS {
        eprintln!("sqlite: {name}");
        check(*run);
    }
}

#[test]
fn a_database_from_a_newer_custos_is_refused() {
    let folder = tempfile::tempdir().unwrap();
    let location = Location::Sqlite {
        data: folder.path().to_owned(),
    };
    drop(Store::open(&location, Policy::bundled()).unwrap());
    let connection = rusqlite::Connection::open(folder.path().join(SQLITE_FILE)).unwrap();
    connection
        .execute("UPDATE custos_schema SET version = 99", [])
        .unwrap();
    drop(connection);
    let error = Store::open(&location, Policy::bundled()).unwrap_err();
    assert!(
        matches!(error, StoreError::SchemaTooNew { found: 99, .. }),
        "{error}"
    );
    assert!(
        error
            .to_string()
            .contains("newer than this custos supports")
    );
}

#[test]
fn the_signing_key_is_made_once_and_kept() {
    let folder = tempfile::tempdir().unwrap();
    let location = Location::Sqlite {
        data: folder.path().to_owned(),
    };
    let first = Store::open(&location, Policy::bundled())
        .unwrap()
        .public_key_hex();
    let second = Store::open(&location, Policy::bundled())
        .unwrap()
        .public_key_hex();
    assert_eq!(first, second);
    let public =
        std::fs::read_to_string(folder.path().join(custos_store::ledger::PUBLIC_KEY_FILE)).unwrap();
    assert_eq!(public, first);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(folder.path().join(custos_store::ledger::KEY_FILE))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "the secret key is readable by its owner only"
    );
}

#[test]
fn a_version_1_database_is_upgraded_its_gate_columns_read_and_its_ledger_chained_again() {
    use custos_core::{AccountId, Channel, Command, Timestamp};
    let folder = tempfile::tempdir().unwrap();
    let location = Location::Sqlite {
        data: folder.path().to_owned(),
    };
    let store = Store::open(&location, Policy::bundled()).unwrap();
    let t = Timestamp::parse("2025-07-01T00:00:00Z").unwrap();
    let a = AccountId::parse("a").unwrap();
    store
        .apply(
            t,
            &Command::CreateAccount {
                account: a.clone(),
                plan: "pro".into(),
                choice: Some((true, Channel::Signup)),
            },
            "test",
        )
        .unwrap();
    store
        .apply(
            t,
            &Command::Choose {
                account: a.clone(),
                allowed: false,
                channel: Channel::Settings,
            },
            "test",
        )
        .unwrap();
    store
        .apply(
            t,
            &Command::ChangePlan {
                account: a.clone(),
                plan: "max".into(),
            },
            "test",
        )
        .unwrap();
    let entries = store.ledger(&a).unwrap();
    drop(store);
    // Make it the version 1 database that custos wrote before the gate columns existed, whose
    // ledger hashes named the account by its id.
    let db = rusqlite::Connection::open(folder.path().join(SQLITE_FILE)).unwrap();
    let mut previous = custos_store::ledger::GENESIS;
    for entry in &entries {
        let hash = entry.chained_hash_as(custos_store::ledger::Encoding::V1, &previous, a.as_str());
        db.execute(
            "UPDATE ledger SET prev_hash = ?1, hash = ?2 WHERE account_id = 'a' AND idx = ?3",
            rusqlite::params![previous.as_slice(), hash.as_slice(), entry.idx],
        )
        .unwrap();
        previous = hash;
    }
    db.execute(
        "UPDATE accounts SET ledger_head = ?1 WHERE account_id = 'a'",
        [previous.as_slice()],
    )
    .unwrap();
    db.execute_batch("DELETE FROM checkpoint_heads; DELETE FROM checkpoints; UPDATE accounts SET checkpointed_len = 0;")
        .unwrap();
    db.execute_batch(
        "DROP INDEX accounts_unsealed; ALTER TABLE accounts DROP COLUMN plan; ALTER TABLE accounts DROP COLUMN preference;
         DROP TABLE tokens; DROP TABLE event_ids; UPDATE custos_schema SET version = 1;
         ALTER TABLE holds DROP COLUMN reason; ALTER TABLE holds DROP COLUMN released_by;",
    )
    .unwrap();
    drop(db);
    let store = Store::open(&location, Policy::bundled()).unwrap();
    let mut states = Vec::new();
    store
        .for_each_gate_state(&mut |id, state, _version| states.push((id.to_owned(), state)))
        .unwrap();
    assert_eq!(states.len(), 1);
    let (_, state) = &states[0];
    assert!(
        state.consumer_plan && state.preference == custos_core::Preference::Declined,
        "{state:?}"
    );
    assert_eq!(store.verify_ledger().unwrap().problem, None);
}
