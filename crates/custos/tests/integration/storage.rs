//! The store under attack: SIGKILL mid-write, tampering with ledger rows, a damaged or truncated
//! database, a folder it may not write, a full disk. Each must lose no acknowledged write and
//! say plainly what is wrong.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::{custos, stderr, stdout};

fn data_arg(folder: &Path) -> [String; 2] {
    ["--data".to_owned(), folder.display().to_string()]
}

fn verify(folder: &Path) -> Output {
    custos()
        .args(["ledger", "verify"])
        .args(data_arg(folder))
        .output()
        .unwrap()
}

fn write_load(folder: &Path, log: &Path, writes: u64) -> Output {
    custos()
        .args(["internal", "write-load"])
        .args(data_arg(folder))
        .arg("--log")
        .arg(log)
        .args(["--writes", &writes.to_string()])
        .output()
        .unwrap()
}

/// What the write log promises: accounts, each account's ledger length, conversations.
#[derive(Default)]
struct Promises {
    accounts: Vec<String>,
    ledger_lengths: BTreeMap<String, usize>,
    conversations: Vec<String>,
}

fn promises(log: &Path) -> Promises {
    let mut promises = Promises::default();
    for line in std::fs::read_to_string(log).unwrap_or_default().lines() {
        let words: Vec<&str> = line.split(' ').collect();
        match words.as_slice() {
            ["account", id] => promises.accounts.push((*id).to_owned()),
            ["choice", id, length] => {
                let length: usize = length.parse().unwrap();
                let known = promises.ledger_lengths.entry((*id).to_owned()).or_default();
                *known = (*known).max(length);
            }
            ["message", id] => promises.conversations.push((*id).to_owned()),
            // A kill can cut the last line short; a torn line was never a complete promise.
            _ => {}
        }
    }
    promises
}

/// Checks every promise against the database with plain SQL, independent of custos's reader.
fn assert_promises_kept(folder: &Path, promises: &Promises) {
    let db = rusqlite::Connection::open(folder.join("custos.sqlite3")).unwrap();
    let count = |sql: &str, id: &str| -> usize {
        db.query_row(sql, [id], |row| row.get::<_, i64>(0))
            .unwrap()
            .try_into()
            .unwrap()
    };
    for account in &promises.accounts {
        assert_eq!(
            count(
                "SELECT count(*) FROM accounts WHERE account_id = ?",
                account
            ),
            1,
            "{account} lost"
        );
    }
    for (account, length) in &promises.ledger_lengths {
        let stored = count("SELECT count(*) FROM ledger WHERE account_id = ?", account);
        assert!(
            stored >= *length,
            "{account}: ledger has {stored} entries, {length} were acknowledged"
        );
    }
    for conversation in &promises.conversations {
        let stored = count(
            "SELECT count(*) FROM messages WHERE conversation_id = ?",
            conversation,
        );
        assert_eq!(stored, 1, "message in {conversation} lost");
    }
}

#[test]
fn no_acknowledged_write_is_lost_when_the_writer_is_killed() {
    let folder = tempfile::tempdir().unwrap();
    let data = folder.path().join("data");
    let log = folder.path().join("acknowledged.log");
    // A fixed seed keeps the kill moments reproducible; they still vary from 20 to 400 ms.
    let mut seed: u64 = 0x5eed_c0de;
    let mut kills = 0;
    for round in 0..24 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = Duration::from_millis(20 + seed % 380);
        let mut child = custos()
            .args(["internal", "write-load"])
            .args(data_arg(&data))
            .arg("--log")
            .arg(&log)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while started.elapsed() < delay {
            if let Some(status) = child.try_wait().unwrap() {
                let mut message = String::new();
                std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut message)
                    .unwrap();
                panic!("round {round}: the writer stopped by itself ({status}): {message}");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;

        let promises = promises(&log);
        assert_promises_kept(&data, &promises);
        let output = verify(&data);
        assert_eq!(
            output.status.code(),
            Some(0),
            "round {round}: {}{}",
            stdout(&output),
            stderr(&output)
        );
    }
    let promises = promises(&log);
    assert!(kills >= 20);
    assert!(
        promises.conversations.len() + promises.ledger_lengths.len() > 40,
        "the writer barely wrote anything; the test proves little"
    );
}

/// A small store with several accounts, a signed checkpoint, then more entries after it.
fn sample_store() -> (tempfile::TempDir, PathBuf) {
    let folder = tempfile::tempdir().unwrap();
    let data = folder.path().join("data");
    let log = folder.path().join("log");
    assert!(write_load(&data, &log, 40).status.success());
    let output = custos()
        .args(["ledger", "checkpoint"])
        .args(data_arg(&data))
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(write_load(&data, &log, 10).status.success());
    (folder, data)
}

fn copy_of(data: &Path, into: &Path) -> PathBuf {
    let copy = into.join(format!("copy-{}", rand_suffix()));
    copy_folder(data, &copy);
    copy
}

/// Copies a folder and everything in it (the data folder holds its keys in `keys/`).
fn copy_folder(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_folder(&path, &target);
        } else {
            std::fs::copy(&path, target).unwrap();
        }
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn ledger_rows(data: &Path) -> Vec<(String, i64)> {
    let db = rusqlite::Connection::open(data.join("custos.sqlite3")).unwrap();
    let mut statement = db
        .prepare("SELECT account_id, idx FROM ledger ORDER BY account_id, idx")
        .unwrap();
    statement
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn tamper(data: &Path, sql: &str, account: &str, idx: i64) {
    let db = rusqlite::Connection::open(data.join("custos.sqlite3")).unwrap();
    db.execute_batch("PRAGMA foreign_keys = OFF").unwrap();
    for statement in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        let changed = db
            .execute(statement, rusqlite::params![account, idx])
            .unwrap();
        assert!(changed >= 1, "the tampering `{statement}` changed nothing");
    }
}

#[test]
fn changing_deleting_or_swapping_any_ledger_row_is_detected() {
    let (folder, data) = sample_store();
    let output = verify(&data);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(stdout(&output).contains("ledger verified"));

    let rows = ledger_rows(&data);
    assert!(rows.len() > 20, "{rows:?}");
    let tamperings: &[(&str, &str)] = &[
        (
            "changed actor",
            "UPDATE ledger SET actor = 'someone-else' WHERE account_id = ?1 AND idx = ?2",
        ),
        (
            "changed time",
            "UPDATE ledger SET at = at + 1 WHERE account_id = ?1 AND idx = ?2",
        ),
        (
            "changed choice",
            "UPDATE ledger SET preference = CASE preference WHEN 'allowed' THEN 'declined' ELSE 'allowed' END, channel = 'settings' WHERE account_id = ?1 AND idx = ?2",
        ),
        (
            "rehashed alone",
            "UPDATE ledger SET hash = zeroblob(32) WHERE account_id = ?1 AND idx = ?2",
        ),
        (
            "deleted",
            "DELETE FROM ledger WHERE account_id = ?1 AND idx = ?2",
        ),
        (
            "swapped with the next",
            "UPDATE ledger SET idx = -1 WHERE account_id = ?1 AND idx = ?2; \
             UPDATE ledger SET idx = ?2 WHERE account_id = ?1 AND idx = ?2 + 1; \
             UPDATE ledger SET idx = ?2 + 1 WHERE account_id = ?1 AND idx = -1",
        ),
    ];
    for (account, idx) in &rows {
        let is_last = !rows.contains(&(account.clone(), idx + 1));
        for (what, sql) in tamperings {
            if *what == "swapped with the next" && is_last {
                continue; // the last entry has no next to swap with; "deleted" covers it
            }
            let copy = copy_of(&data, folder.path());
            tamper(&copy, sql, account, *idx);
            let output = verify(&copy);
            let err = stderr(&output);
            assert_eq!(
                output.status.code(),
                Some(1),
                "{what} {account}#{idx} went unnoticed: {}",
                stdout(&output)
            );
            assert!(
                err.contains("ledger verification FAILED") && err.contains(account.as_str()),
                "{what} {account}#{idx}: {err}"
            );
            std::fs::remove_dir_all(&copy).unwrap();
        }
    }
}

#[test]
fn changing_an_accounts_gate_columns_outside_custos_is_detected() {
    let (folder, data) = sample_store();
    for sql in [
        "UPDATE accounts SET preference = CASE preference WHEN 'allowed' THEN 'declined' ELSE 'allowed' END WHERE rowid = 1",
        "UPDATE accounts SET plan = 'team' WHERE rowid = 2",
    ] {
        let copy = copy_of(&data, folder.path());
        let db = rusqlite::Connection::open(copy.join("custos.sqlite3")).unwrap();
        assert_eq!(db.execute(sql, []).unwrap(), 1);
        drop(db);
        let output = verify(&copy);
        assert_eq!(output.status.code(), Some(1), "{sql} went unnoticed");
        assert!(
            stderr(&output).contains("gate columns"),
            "{}",
            stderr(&output)
        );
    }
}

#[test]
fn a_changed_checkpoint_or_a_foreign_key_is_detected() {
    let (folder, data) = sample_store();
    let copy = copy_of(&data, folder.path());
    let db = rusqlite::Connection::open(copy.join("custos.sqlite3")).unwrap();
    db.execute("UPDATE checkpoints SET entries = entries + 1", [])
        .unwrap();
    drop(db);
    let output = verify(&copy);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("checkpoint 1"),
        "{}",
        stderr(&output)
    );

    let forged = copy_of(&data, folder.path());
    let db = rusqlite::Connection::open(forged.join("custos.sqlite3")).unwrap();
    db.execute("UPDATE checkpoints SET signature = zeroblob(64)", [])
        .unwrap();
    drop(db);
    let output = verify(&forged);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("signature does not verify"),
        "{}",
        stderr(&output)
    );

    // Another store's keys cannot vouch for this store's ledger: the store records the ids of
    // its own keys and refuses any other before reading a thing.
    let other = copy_of(&data, folder.path());
    let (_other_folder, foreign) = sample_store();
    std::fs::remove_dir_all(other.join("keys")).unwrap();
    copy_folder(&foreign.join("keys"), &other.join("keys"));
    let output = verify(&other);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("this store expects signing key"),
        "{}",
        stderr(&output)
    );
    // Nor can the same keys with the store's record of them rewritten: the pseudonyms its
    // hashes name accounts by are keyed, so the first entry already fails.
    let db = rusqlite::Connection::open(other.join("custos.sqlite3")).unwrap();
    db.execute("DELETE FROM store_keys", []).unwrap();
    drop(db);
    let output = verify(&other);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("ledger entry 0: its content does not match its hash"),
        "{}",
        stderr(&output)
    );
}

/// A process killed during a checkpoint leaves the database file shorter than its header says:
/// the checkpoint copies pages from the write-ahead log in page order, page 1 (which holds the
/// new size) first. That is no truncation: the log still holds every page, and SQLite replays
/// it on open. Here a writer leaves frames in the log (it never closes, as if killed), and the
/// file's header is given the size a checkpoint would have written first.
#[test]
fn a_checkpoint_cut_short_by_a_kill_is_not_taken_for_a_truncated_file() {
    let (_folder, data) = sample_store();
    let file = data.join("custos.sqlite3");
    let writer = rusqlite::Connection::open(&file).unwrap();
    writer.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
    writer
        .execute_batch(
            "INSERT INTO event_ids (event_id, recorded_at) \
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000) \
             SELECT 'killed-checkpoint-' || i, 0 FROM n",
        )
        .unwrap();
    let pages: u32 = writer
        .query_row("PRAGMA page_count", [], |row| row.get(0))
        .unwrap();
    // As if killed: the connection is never closed, so the log is neither checkpointed nor
    // removed.
    std::mem::forget(writer);
    let mut bytes = std::fs::read(&file).unwrap();
    let page_size = u64::from(u16::from_be_bytes([bytes[16], bytes[17]]));
    assert!(
        (bytes.len() as u64) < page_size * u64::from(pages),
        "the log must hold pages beyond the file's end for this test to mean anything"
    );
    bytes[28..32].copy_from_slice(&pages.to_be_bytes());
    std::fs::write(&file, &bytes).unwrap();

    let output = verify(&data);
    assert!(output.status.success(), "{}", stderr(&output));
    let events: i64 = rusqlite::Connection::open(&file)
        .unwrap()
        .query_row(
            "SELECT COUNT(*) FROM event_ids WHERE event_id LIKE 'killed-checkpoint-%'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(events, 20_000, "every committed row is still there");
}

#[test]
fn a_damaged_or_truncated_database_is_refused_and_left_as_it_was() {
    let (folder, data) = sample_store();
    let file = data.join("custos.sqlite3");
    let original = std::fs::read(&file).unwrap();

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "truncated to half",
            original[..original.len() / 2].to_vec(),
            "truncated",
        ),
        ("emptied", Vec::new(), "truncated"),
        (
            "overwritten",
            b"this is not a database at all, just some text".repeat(100),
            "not an SQLite database",
        ),
        (
            "header damaged",
            [
                b"SQLite format 3\0".as_slice(),
                &[0xff; 84],
                &original[100..],
            ]
            .concat(),
            "damaged",
        ),
    ];
    for (what, bytes, expected) in cases {
        let copy = copy_of(&data, folder.path());
        std::fs::write(copy.join("custos.sqlite3"), &bytes).unwrap();
        let output = verify(&copy);
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(1), "{what}: {err}");
        assert!(
            err.contains(expected) && err.contains("custos.sqlite3"),
            "{what}: {err}"
        );
        assert_eq!(
            std::fs::read(copy.join("custos.sqlite3")).unwrap(),
            bytes,
            "{what}: the file was changed"
        );
    }
    assert_eq!(std::fs::read(&file).unwrap(), original);
}

/// Runs the binary as `nobody` when the tests run as root (root ignores file permissions).
fn as_unprivileged(args: &[&str]) -> Command {
    let is_root = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|line| line.starts_with("Uid:") && line.split_whitespace().nth(1) == Some("0"));
    if is_root {
        let mut command = Command::new("setpriv");
        command.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]);
        command.arg(env!("CARGO_BIN_EXE_custos")).args(args);
        command
    } else {
        let mut command = custos();
        command.args(args);
        command
    }
}

#[test]
fn a_data_folder_that_cannot_be_written_is_refused_clearly_and_loses_nothing() {
    use std::os::unix::fs::PermissionsExt;
    let (folder, data) = sample_store();
    // Let the unprivileged user reach the folder and read the database, but not write there.
    std::fs::set_permissions(folder.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    for entry in std::fs::read_dir(&data).unwrap() {
        std::fs::set_permissions(
            entry.unwrap().path(),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
    }
    let before = ledger_rows(&data);
    let log = folder.path().join("denied.log");
    let data_text = data.display().to_string();
    let output = as_unprivileged(&[
        "internal",
        "write-load",
        "--data",
        &data_text,
        "--log",
        "/dev/null",
        "--writes",
        "5",
    ])
    .output()
    .unwrap();
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(
        err.contains("readonly")
            || err.contains("Permission denied")
            || err.contains("write to the data folder"),
        "the error should say the folder can't be written: {err}"
    );
    assert!(!log.exists());

    let fresh = folder.path().join("fresh");
    std::fs::create_dir(&fresh).unwrap();
    std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(0o755)).unwrap();
    let target = fresh.join("data").display().to_string();
    let output = as_unprivileged(&[
        "internal",
        "write-load",
        "--data",
        &target,
        "--log",
        "/dev/null",
        "--writes",
        "1",
    ])
    .output()
    .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("Permission denied") && stderr(&output).contains(&target),
        "{}",
        stderr(&output)
    );

    assert_eq!(
        ledger_rows(&data),
        before,
        "the refused writes changed the ledger"
    );
    assert_eq!(verify(&data).status.code(), Some(0));
}

#[test]
fn a_full_disk_stops_the_writer_with_a_clear_error_and_keeps_every_acknowledged_write() {
    let folder = tempfile::tempdir().unwrap();
    let data = folder.path().join("data");
    let log = folder.path().join("acknowledged.log");
    // A file-size limit (RLIMIT_FSIZE) makes the disk "full" for this one process; with SIGXFSZ
    // ignored, a write past it fails with EFBIG instead of killing the process.
    let script = format!(
        "ulimit -f 1024; trap '' XFSZ; exec '{}' internal write-load --data '{}' --log '{}'",
        env!("CARGO_BIN_EXE_custos"),
        data.display(),
        log.display()
    );
    let output = Command::new("bash").args(["-c", &script]).output().unwrap();
    let err = stderr(&output);
    assert_eq!(
        output.status.code(),
        Some(1),
        "the writer should stop with an error: {err}"
    );
    assert!(
        err.contains("full") || err.contains("disk"),
        "the error should say the disk is full: {err}"
    );
    let promises = promises(&log);
    // Each commit appends a few pages to the WAL, so about 20 messages fit in 1 MiB.
    assert!(
        promises.conversations.len() > 10,
        "the writer should have written until the limit"
    );
    assert_promises_kept(&data, &promises);
    let output = verify(&data);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
}
