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
