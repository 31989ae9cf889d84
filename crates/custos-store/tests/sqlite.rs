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

/// A temporary data folder, and the location of a SQLite store in it.
fn temporary_location() -> (tempfile::TempDir, Location) {
    let folder = tempfile::tempdir().unwrap();
    let location = Location::Sqlite {
        data: folder.path().to_owned(),
    };
    (folder, location)
}

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
    let (folder, location) = temporary_location();
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
fn the_keys_are_made_once_kept_private_and_bound_to_the_store() {
    use custos_store::{KeySource, Purpose};
    use std::os::unix::fs::PermissionsExt;
    let (folder, location) = temporary_location();
    let first = Store::open(&location, Policy::bundled()).unwrap();
    let id = first.signing_key_id().to_owned();
    drop(first);
    let second = Store::open(&location, Policy::bundled()).unwrap();
    assert_eq!(second.signing_key_id(), id, "the keys are made once");
    let recorded = second.recorded_keys().unwrap();
    assert_eq!(recorded.len(), 3, "{recorded:?}");
    assert!(
        recorded
            .iter()
            .any(|k| k.purpose == Purpose::Signing && k.id == id)
    );
    drop(second);
    let keys = folder.path().join(custos_store::keys::KEY_FOLDER);
    let mode =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&keys), 0o700, "the keys folder is its owner's only");
    for purpose in Purpose::ALL {
        assert_eq!(
            mode(&keys.join(purpose.file())),
            0o600,
            "{}",
            purpose.file()
        );
    }
    // Another instance given other keys is refused, names the key the store expects, and
    // changes nothing.
    let other = tempfile::tempdir().unwrap();
    let mut source = KeySource::in_data(folder.path());
    source.folder = other.path().join("keys");
    custos_store::Keys::generate(String::new())
        .unwrap()
        .write_to(&source.folder)
        .unwrap();
    let before = std::fs::read(folder.path().join(SQLITE_FILE)).unwrap();
    let error = Store::open_with(&location, Policy::bundled(), &source, true).unwrap_err();
    assert!(
        error
            .to_string()
            .contains(&format!("expects signing key {id}")),
        "{error}"
    );
    assert_eq!(
        std::fs::read(folder.path().join(SQLITE_FILE)).unwrap(),
        before
    );
    // And with none at all, nothing is made.
    source.folder = other.path().join("none");
    let error = Store::open_with(&location, Policy::bundled(), &source, false).unwrap_err();
    assert!(error.to_string().contains("no keys"), "{error}");
    assert!(!source.folder.exists());
}

#[test]
fn a_store_made_before_keys_had_a_folder_keeps_its_key_and_pseudonyms() {
    let folder = tempfile::tempdir().unwrap();
    let secret = [9u8; 32];
    std::fs::write(
        folder.path().join(custos_store::keys::LEGACY_SIGNING_FILE),
        secret,
    )
    .unwrap();
    let location = Location::Sqlite {
        data: folder.path().to_owned(),
    };
    let store = Store::open(&location, Policy::bundled()).unwrap();
    let public = ed25519_dalek::SigningKey::from_bytes(&secret).verifying_key();
    assert_eq!(
        store.public_key_hex(),
        custos_core::policy::hex(public.as_bytes())
    );
    // Its pseudonym key is the one it derived from the signing key before.
    use sha2::Digest;
    let derived: [u8; 32] = sha2::Sha256::new()
        .chain_update(b"custos.pseudonym-key.v1")
        .chain_update(secret)
        .finalize()
        .into();
    let a = custos_core::AccountId::parse("a").unwrap();
    let hmac = custos_store::ledger::Hmac::new(&derived);
    assert_eq!(
        store.account_key(&a),
        custos_store::AccountKey::of_stored(&hmac, "a")
    );
    assert!(
        !folder.path().join(custos_store::keys::KEY_FOLDER).exists(),
        "no second set of keys"
    );
}

#[test]
fn a_version_1_database_is_upgraded_its_gate_columns_read_and_its_ledger_chained_again() {
    use custos_core::{AccountId, Channel, Command, Timestamp};
    let (folder, location) = temporary_location();
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
        "DROP TABLE exports; DROP TABLE export_row_keys; DROP TABLE sweeps; DROP TABLE store_keys; ALTER TABLE checkpoints DROP COLUMN key_id;
         DROP TRIGGER accounts_mark_inserted; DROP TRIGGER accounts_mark_changed;
         DROP INDEX accounts_by_change; ALTER TABLE accounts DROP COLUMN changed;
         DROP INDEX accounts_unsealed; ALTER TABLE accounts DROP COLUMN plan; ALTER TABLE accounts DROP COLUMN preference;
         DROP TABLE tokens; DROP TABLE event_ids; UPDATE custos_schema SET version = 1;
         ALTER TABLE holds DROP COLUMN reason; ALTER TABLE holds DROP COLUMN released_by;
         DROP TRIGGER conversations_expiry_inserted; DROP TRIGGER conversations_expiry_moved;
         DROP TRIGGER conversations_expiry_deleted; DROP TABLE conversation_expiry;
         CREATE INDEX conversations_by_expiry ON conversations (expires_at) WHERE purged_at IS NULL;",
    )
    .unwrap();
    drop(db);
    let store = Store::open(&location, Policy::bundled()).unwrap();
    let states = std::sync::Mutex::new(Vec::new());
    store
        .for_each_gate_state(&|batch| {
            let mut states = states.lock().unwrap();
            states.extend(
                batch
                    .iter()
                    .map(|(id, state, _version)| (id.to_owned(), *state)),
            );
        })
        .unwrap();
    let states = states.into_inner().unwrap();
    assert_eq!(states.len(), 1);
    let (_, state) = &states[0];
    assert!(
        state.consumer_plan && state.preference == custos_core::Preference::Declined,
        "{state:?}"
    );
    assert_eq!(store.verify_ledger().unwrap().problem, None);
}

/// Rotation: the new key signs from then on, the retired one signs nothing more (an instance
/// still holding it is told to restart), and every checkpoint and receipt of either key still
/// verifies, each naming the key that signed it.
#[test]
fn a_rotated_signing_key_signs_nothing_more_and_everything_still_verifies() {
    use custos_core::{AccountId, Channel, Command, Timestamp};
    use custos_store::{KeySource, Purpose};
    let (folder, location) = temporary_location();
    let at = |text: &str| Timestamp::parse(text).unwrap();
    let a = AccountId::parse("a").unwrap();
    let old = Store::open(&location, Policy::bundled()).unwrap();
    let choose = |store: &Store, allowed: bool, when: &str| {
        let command = Command::Choose {
            account: a.clone(),
            allowed,
            channel: Channel::Settings,
        };
        let written = store.apply(at(when), &command, "test").unwrap();
        custos_core::policy::hex(&written.entries[0].hash)
    };
    let create = Command::CreateAccount {
        account: a.clone(),
        plan: "pro".into(),
        choice: Some((true, Channel::Signup)),
    };
    old.apply(at("2025-10-01T00:00:00Z"), &create, "test")
        .unwrap();
    let first_receipt_id = choose(&old, false, "2025-10-02T00:00:00Z");
    let first_receipt = old.receipt(&a, &first_receipt_id).unwrap().unwrap();
    old.checkpoint(at("2025-10-03T00:00:00Z")).unwrap().unwrap();
    let old_id = old.signing_key_id().to_owned();

    let next = [42u8; 32];
    let new_id = old
        .rotate_signing_key(&next, at("2025-10-04T00:00:00Z"))
        .unwrap();
    assert_ne!(new_id, old_id);
    choose(&old, true, "2025-10-05T00:00:00Z");
    let refused = old.checkpoint(at("2025-10-05T00:00:01Z")).unwrap_err();
    assert!(refused.to_string().contains("was retired"), "{refused}");
    assert!(
        old.sign(b"a manifest").is_err(),
        "a retired key signs no manifest"
    );
    assert!(old.receipt(&a, &first_receipt_id).is_err(), "nor a receipt");
    drop(old);

    // The instance restarted with the new key (the other keys unchanged).
    let keys = folder.path().join(custos_store::keys::KEY_FOLDER);
    std::fs::remove_file(keys.join(Purpose::Signing.file())).unwrap();
    custos_store::keys::write_secret(&keys.join(Purpose::Signing.file()), &next).unwrap();
    let source = KeySource::in_data(folder.path());
    let new = Store::open_with(&location, Policy::bundled(), &source, false).unwrap();
    assert_eq!(new.signing_key_id(), new_id);
    let second_receipt_id = choose(&new, false, "2025-10-06T00:00:00Z");
    let second_receipt = new.receipt(&a, &second_receipt_id).unwrap().unwrap();
    new.checkpoint(at("2025-10-07T00:00:00Z")).unwrap().unwrap();
    let report = new.verify_ledger().unwrap();
    assert_eq!(report.problem, None);
    assert_eq!(report.checkpoints, 2);
    for (receipt, id) in [(&first_receipt, &old_id), (&second_receipt, &new_id)] {
        assert_eq!(receipt["signature"]["keyId"], id.as_str());
        custos_store::receipt::verify(receipt, None).unwrap();
    }
    let recorded = new.recorded_keys().unwrap();
    let signing: Vec<_> = recorded
        .iter()
        .filter(|k| k.purpose == Purpose::Signing)
        .collect();
    assert_eq!(signing.len(), 2);
    assert!(
        signing
            .iter()
            .any(|k| k.id == old_id && k.retired_at.is_some())
    );
    assert!(
        signing
            .iter()
            .any(|k| k.id == new_id && k.previous.as_deref() == Some(old_id.as_str()))
    );
    drop(new);

    // The checkpoints name their keys; one that names a key the store never had, or a forged
    // rotation, is found.
    let db = rusqlite::Connection::open(folder.path().join(SQLITE_FILE)).unwrap();
    let named: Vec<String> = db
        .prepare("SELECT key_id FROM checkpoints ORDER BY id")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(named, [old_id.clone(), new_id.clone()]);
    db.execute("UPDATE checkpoints SET key_id = ?1 WHERE id = 1", [&new_id])
        .unwrap();
    let store = Store::open_with(&location, Policy::bundled(), &source, false).unwrap();
    let problem = store.verify_ledger().unwrap().problem.unwrap();
    assert!(
        problem.contains("checkpoint 1") && problem.contains(&new_id),
        "{problem}"
    );
    db.execute("UPDATE checkpoints SET key_id = ?1 WHERE id = 1", [&old_id])
        .unwrap();
    db.execute(
        "UPDATE store_keys SET certificate = zeroblob(128) WHERE key_id = ?1",
        [&new_id],
    )
    .unwrap();
    let problem = store.verify_ledger().unwrap().problem.unwrap();
    assert!(problem.contains("does not verify"), "{problem}");
}

/// A sweep whose instance died holds the lease only until it lapses: until then no other sweep
/// starts, and after it the next one runs (and finishes the job); the store keeps both.
#[test]
fn a_dead_instances_sweep_lease_lapses_and_the_next_sweep_runs() {
    use custos_core::Timestamp;
    let (folder, location) = temporary_location();
    let store = Store::open(&location, Policy::bundled()).unwrap();
    let db = rusqlite::Connection::open(folder.path().join(SQLITE_FILE)).unwrap();
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    db.execute(
        "INSERT INTO sweeps (id, at, by_whom, instance, started, lease_until, purged, held_back) \
         VALUES ('dead', 0, 'scheduled', 'gone:1', ?1, ?2, 0, 0)",
        [wall, wall + custos_store::SWEEP_LEASE_MS],
    )
    .unwrap();
    let now = Timestamp::parse("2025-12-01T00:00:00Z").unwrap();
    let run = custos_store::SweepRun::new("test");
    match store.sweep(&run, now, 10, &mut |_, _| {}) {
        Err(StoreError::SweepRunning { instance, .. }) => assert_eq!(instance, "gone:1"),
        other => panic!("a sweep started beside a live lease: {other:?}"),
    }
    db.execute(
        "UPDATE sweeps SET lease_until = ?1 WHERE id = 'dead'",
        [wall - 1],
    )
    .unwrap();
    store.sweep(&run, now, 10, &mut |_, _| {}).unwrap();
    let recorded = store.recent_sweeps(10).unwrap();
    assert_eq!(recorded.len(), 2);
    assert!(
        recorded
            .iter()
            .any(|s| s.id == "dead" && s.finished.is_none())
    );
    assert!(
        recorded
            .iter()
            .any(|s| s.by == "test" && s.finished.is_some())
    );
}

/// A load into an empty store stops keeping the sweep's index of expiries while it runs and
/// fills it after, also when the load fails; an open fills it again if a load was cut short
/// before that, so that no conversation is left out of every sweep.
#[test]
fn a_load_into_an_empty_store_fills_the_expiry_index_after_it() {
    use custos_core::{AccountId, Channel, Command, ConversationId, Role, Surface, Timestamp};
    let (folder, location) = temporary_location();
    let file = folder.path().join(SQLITE_FILE);
    let count = |sql: &str| {
        let db = rusqlite::Connection::open(&file).unwrap();
        db.query_row(sql, [], |row| row.get::<_, i64>(0)).unwrap()
    };
    let kept = || {
        count(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'trigger' AND name LIKE 'conversations_expiry_%'",
        ) == 3
    };
    let store = Store::open(&location, Policy::bundled()).unwrap();
    assert!(kept());
    let during = store.load_into_empty(|_| Ok(kept())).unwrap();
    assert!(
        !during,
        "the index is not kept while an empty store is loaded"
    );
    assert!(kept(), "and kept again after the load");
    let failed = store.load_into_empty(|_| -> Result<(), StoreError> {
        Err(StoreError::Database("the load failed".into()))
    });
    assert!(failed.is_err());
    assert!(kept(), "a failed load leaves the index kept");

    let t = Timestamp::parse("2025-10-01T00:00:00Z").unwrap();
    let who = AccountId::parse("u").unwrap();
    let create = Command::CreateAccount {
        account: who.clone(),
        plan: "pro".into(),
        choice: Some((true, Channel::Signup)),
    };
    store.apply(t, &create, "test").unwrap();
    for id in ["c1", "c2"] {
        let message = Command::Message {
            account: who.clone(),
            conversation: ConversationId::parse(id).unwrap(),
            surface: Surface::Chat,
            role: Role::User,
            text: "hello".into(),
            incognito: false,
        };
        store.apply(t, &message, "test").unwrap();
    }
    let indexed = "SELECT COUNT(*) FROM conversation_expiry e JOIN conversations c \
                   ON c.conversation_id = e.conversation_id AND c.expires_at = e.expires_at";
    assert_eq!(count(indexed), 2, "every write is indexed by the trigger");

    // Cut short between the suspension and the fill: the next open fills it.
    let db = rusqlite::Connection::open(&file).unwrap();
    for trigger in ["inserted", "moved", "deleted"] {
        db.execute(&format!("DROP TRIGGER conversations_expiry_{trigger}"), [])
            .unwrap();
    }
    db.execute("DELETE FROM conversation_expiry", []).unwrap();
    drop(db);
    let check = store.check_retention(&mut |_| {}).unwrap();
    assert_eq!(
        check.different, 2,
        "retention check finds the unindexed: {check:?}"
    );
    assert!(
        check
            .differences
            .iter()
            .all(|(_, stored, _)| stored.contains("missing from the sweep's index"))
    );
    drop(store);
    let store = Store::open(&location, Policy::bundled()).unwrap();
    assert!(kept(), "an open creates the missing trigger");
    assert_eq!(count(indexed), 2, "and fills the index");
    assert_eq!(store.check_retention(&mut |_| {}).unwrap().different, 0);
}

/// A ledger whose account row was removed behind custos's back is found by `verify`, and named.
#[test]
fn ledger_entries_without_their_account_are_found() {
    use custos_core::{AccountId, Channel, Command, Timestamp};
    let (folder, location) = temporary_location();
    let store = Store::open(&location, Policy::bundled()).unwrap();
    let t = Timestamp::parse("2025-10-01T00:00:00Z").unwrap();
    for id in ["kept", "orphaned"] {
        store
            .apply(
                t,
                &Command::CreateAccount {
                    account: AccountId::parse(id).unwrap(),
                    plan: "pro".into(),
                    choice: Some((true, Channel::Signup)),
                },
                "test",
            )
            .unwrap();
    }
    assert_eq!(store.verify_ledger().unwrap().problem, None);
    drop(store);
    let db = rusqlite::Connection::open(folder.path().join(SQLITE_FILE)).unwrap();
    db.execute("DELETE FROM accounts WHERE account_id = 'orphaned'", [])
        .unwrap();
    drop(db);
    let store = Store::open(&location, Policy::bundled()).unwrap();
    let problem = store.verify_ledger().unwrap().problem.unwrap_or_default();
    assert!(
        problem.contains("`orphaned`") && problem.contains("no account"),
        "{problem}"
    );
}
