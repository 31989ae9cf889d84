//! Retention from the command line: `custos sweep`, `custos retention check` and `custos dsr
//! export` on demo data, and sweeps killed with SIGKILL at random points.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::support::{custos, stderr, stdout};

const NOW: &str = "2026-06-01T00:00:00Z";
/// Every demo conversation made before `NOW` has expired by then (5 years at most).
const LATER: &str = "2032-01-01T00:00:00Z";

fn demo(data: &Path, accounts: u32, conversations: u32) {
    let output = custos()
        .args(["demo", "--data"])
        .arg(data)
        .args(["--accounts", &accounts.to_string()])
        .args(["--conversations", &conversations.to_string()])
        .args(["--now", NOW])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
}

fn run(data: &Path, args: &[&str]) -> std::process::Output {
    let (command, rest) = args.split_first().unwrap();
    let mut invocation = custos();
    invocation.arg(command);
    let mut rest = rest.iter().peekable();
    // Subcommands first, then `--data`.
    while let Some(word) = rest.next_if(|w| !w.starts_with("--")) {
        invocation.arg(word);
    }
    invocation.arg("--data").arg(data).args(rest);
    invocation.output().unwrap()
}

fn database(data: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(data.join(custos_store::SQLITE_FILE)).unwrap()
}

fn count(db: &rusqlite::Connection, sql: &str) -> i64 {
    db.query_row(sql, [], |row| row.get(0)).unwrap()
}

#[test]
fn the_cli_sweeps_checks_every_stored_expiry_and_exports_an_account() {
    let folder = tempfile::tempdir().unwrap();
    let data = folder.path().join("data");
    demo(&data, 40, 400);

    let check = run(&data, &["retention", "check"]);
    assert!(check.status.success(), "{}", stderr(&check));
    assert!(
        stdout(&check).contains("of 400 conversations: 0 differ"),
        "{}",
        stdout(&check)
    );

    // A stored expiry that is not the core's is reported, by conversation, with exit 1.
    let db = database(&data);
    let (id, stored): (String, i64) = db
        .query_row(
            "SELECT conversation_id, expires_at FROM conversations ORDER BY conversation_id LIMIT 1",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .unwrap();
    db.execute(
        "UPDATE conversations SET expires_at = expires_at + 1 WHERE conversation_id = ?1",
        [&id],
    )
    .unwrap();
    let check = run(&data, &["retention", "check"]);
    assert_eq!(check.status.code(), Some(1));
    assert!(
        stdout(&check).contains(&format!("{id}: stored ")),
        "{}",
        stdout(&check)
    );
    assert!(stdout(&check).contains("1 differ"), "{}", stdout(&check));
    db.execute(
        "UPDATE conversations SET expires_at = ?1 WHERE conversation_id = ?2",
        rusqlite::params![stored, id],
    )
    .unwrap();

    // Everything a user is owed, in one document.
    let export = run(
        &data,
        &["dsr", "export", "--account", "demo-00000001", "--now", NOW],
    );
    assert!(export.status.success(), "{}", stderr(&export));
    let document: Value = serde_json::from_str(&stdout(&export)).unwrap();
    assert_eq!(document["format"], "custos-data-export/1");
    assert_eq!(document["account"]["id"], "demo-00000001");
    let visible = count(
        &db,
        &format!(
            "SELECT COUNT(*) FROM conversations WHERE account_id = 'demo-00000001' \
             AND deleted_at IS NULL AND expires_at > {}",
            custos_core::Timestamp::parse(NOW).unwrap().unix_millis()
        ),
    );
    let conversations = document["conversations"].as_array().unwrap();
    assert_eq!(conversations.len() as i64, visible, "{document}");
    for conversation in conversations {
        assert!(!conversation["messages"].as_array().unwrap().is_empty());
        assert!(conversation["reason"].is_string() && conversation["expires_at"].is_string());
    }
    for choice in document["choices"].as_array().unwrap() {
        assert_eq!(choice["receipt"]["signature"]["alg"], "Ed25519", "{choice}");
    }
    assert!(!document["consent_ledger"].as_array().unwrap().is_empty());
    let erased = run(&data, &["dsr", "export", "--account", "nobody"]);
    assert_eq!(erased.status.code(), Some(2), "{}", stderr(&erased));

    let sweep = run(&data, &["sweep", "--now", LATER]);
    assert!(sweep.status.success(), "{}", stderr(&sweep));
    assert!(
        stdout(&sweep).contains("purged 400 ("),
        "{}",
        stdout(&sweep)
    );
    assert_eq!(count(&db, "SELECT COUNT(*) FROM messages"), 0);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM tombstones"), 400);
    let again = run(&data, &["sweep", "--now", LATER]);
    assert!(stdout(&again).contains("purged 0;"), "{}", stdout(&again));
    let verify = run(&data, &["ledger", "verify"]);
    assert!(verify.status.success(), "{}", stderr(&verify));
}

/// Conversations that are purged, and the message count of every one that is not.
fn state(db: &rusqlite::Connection) -> (i64, BTreeMap<String, i64>) {
    let purged = count(
        db,
        "SELECT COUNT(*) FROM conversations WHERE purged_at IS NOT NULL",
    );
    let mut statement = db
        .prepare(
            "SELECT c.conversation_id, (SELECT COUNT(*) FROM messages m WHERE m.account_id = c.account_id AND m.conversation_id = c.conversation_id) \
             FROM conversations c WHERE c.purged_at IS NULL",
        )
        .unwrap();
    let live = statement
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    (purged, live)
}

#[test]
fn a_sweep_killed_at_random_points_leaves_every_conversation_whole_and_a_rerun_finishes() {
    let folder = tempfile::tempdir().unwrap();
    let data = folder.path().join("data");
    demo(&data, 800, 40_000);
    let db = database(&data);
    let (_, before) = state(&db);
    let total = before.len() as i64;
    assert_eq!(total, 40_000);

    let mut random = 0x5eed_u64;
    let mut interrupted_midway = 0;
    for round in 0..8 {
        random = random
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let delay = 20 + (random >> 33) % 400;
        let mut child = custos()
            .args(["sweep", "--now", LATER, "--data"])
            .arg(&data)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay));
        let killed = Command::new("kill")
            .args(["-KILL", &child.id().to_string()])
            .status()
            .unwrap();
        let exit = child.wait().unwrap();
        let (purged, live) = state(&db);
        // Whole or not at all: a conversation is purged with all of its content and a
        // tombstone, or keeps every message it had.
        assert_eq!(
            count(
                &db,
                "SELECT COUNT(*) FROM conversations c WHERE c.purged_at IS NOT NULL AND \
                 (EXISTS (SELECT 1 FROM messages m WHERE m.account_id = c.account_id AND m.conversation_id = c.conversation_id) \
                  OR EXISTS (SELECT 1 FROM feedback f WHERE f.account_id = c.account_id AND f.conversation_id = c.conversation_id))"
            ),
            0,
            "round {round}: a purged conversation kept content"
        );
        assert_eq!(count(&db, "SELECT COUNT(*) FROM tombstones"), purged);
        for (id, messages) in &live {
            assert_eq!(
                Some(messages),
                before.get(id),
                "round {round}: {id} lost messages"
            );
        }
        assert_eq!(purged + live.len() as i64, total);
        if killed.success() && !exit.success() && purged > 0 && purged < total {
            interrupted_midway += 1;
        }
        if purged == total {
            break;
        }
    }
    assert!(
        interrupted_midway > 0,
        "no kill landed in the middle of a sweep; the test proved nothing"
    );

    let rerun = run(&data, &["sweep", "--now", LATER]);
    assert!(rerun.status.success(), "{}", stderr(&rerun));
    let (purged, live) = state(&db);
    assert_eq!((purged, live.len()), (total, 0));
    for check in [&["ledger", "verify"][..], &["retention", "check"][..]] {
        let output = run(&data, check);
        assert!(output.status.success(), "{check:?}: {}", stderr(&output));
    }
}
