//! Training exports against real stores: invariants 1 and 4 of docs/POLICY.md on random timelines,
//! exports taken while other writers withdraw and delete, revocations, refusals, redaction, and
//! the Parquet files read back by independent readers (pyarrow and DuckDB).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a test fails loudly on a broken fixture; that is its job"
)]

#[path = "../../custos-core/tests/support/mod.rs"]
mod timelines;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use custos_core::{
    AccountId, Channel, Command, ConversationId, EligibilityReason, Policy, Preference, Role,
    Surface, Timeline, Timestamp, eligibility, expiry,
};
use custos_export::{ExportError, Exports, Format, Request};
use custos_store::{Location, Store};
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::TestRunner;
use serde_json::Value;

fn ts(text: &str) -> Timestamp {
    Timestamp::parse(text).unwrap()
}

fn plus_ms(at: Timestamp, ms: i64) -> Timestamp {
    Timestamp::from_unix_millis(at.unix_millis() + ms).unwrap()
}

const DAY: i64 = 86_400_000;

/// A store in a fresh data folder (SQLite, or PostgreSQL when given a database URL).
struct Fixture {
    folder: tempfile::TempDir,
    store: Store,
}

impl Fixture {
    fn sqlite() -> Fixture {
        let folder = tempfile::tempdir().unwrap();
        let store = Store::open(
            &Location::new(folder.path().join("data"), None),
            Policy::bundled(),
        )
        .unwrap();
        Fixture { folder, store }
    }

    fn postgres(url: String) -> Fixture {
        let folder = tempfile::tempdir().unwrap();
        let store = Store::open(
            &Location::new(folder.path().join("data"), Some(url)),
            Policy::bundled(),
        )
        .unwrap();
        Fixture { folder, store }
    }

    fn data(&self) -> PathBuf {
        self.folder.path().join("data")
    }

    fn exports(&self) -> Exports<'_> {
        Exports::new(&self.store, &self.data(), None)
    }

    fn apply(&self, at: Timestamp, command: Command) {
        self.store.apply(at, &command, "test").unwrap();
    }

    /// Runs an export into `<root>/<name>`; returns the manifest and the folder.
    fn export(
        &self,
        cutoff: Timestamp,
        now: Timestamp,
        format: Format,
        name: &str,
        max_file_bytes: u64,
    ) -> (Value, PathBuf) {
        let exports = self.exports();
        let request = Request {
            purpose: custos_core::Purpose::ModelTraining.as_str().into(),
            cutoff,
            format,
            out: Some(exports.root().join(name)),
            max_file_bytes,
        };
        let prepared = exports.prepare(&request, now).unwrap();
        let manifest = exports.run(&prepared, &mut |_| {}).unwrap();
        (manifest, prepared.out)
    }
}

fn account(id: &str) -> AccountId {
    AccountId::parse(id).unwrap()
}

fn conversation(id: &str) -> ConversationId {
    ConversationId::parse(id).unwrap()
}

fn create(id: &str, plan: &str, allowed: Option<bool>) -> Command {
    Command::CreateAccount {
        account: account(id),
        plan: plan.into(),
        choice: allowed.map(|a| (a, Channel::Signup)),
    }
}

fn message(owner: &str, id: &str, text: &str) -> Command {
    Command::Message {
        account: account(owner),
        conversation: conversation(id),
        surface: Surface::Chat,
        role: Role::User,
        text: text.into(),
        incognito: false,
    }
}

fn choose(id: &str, allowed: bool) -> Command {
    Command::Choose {
        account: account(id),
        allowed,
        channel: Channel::Settings,
    }
}

/// Every row of a JSONL export, in file order.
fn jsonl_rows(manifest: &Value, folder: &Path) -> Vec<Value> {
    let mut rows = Vec::new();
    for file in manifest["files"].as_array().unwrap() {
        let text = std::fs::read_to_string(folder.join(file["name"].as_str().unwrap())).unwrap();
        let before = rows.len();
        rows.extend(
            text.lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap()),
        );
        assert_eq!(
            (rows.len() - before) as u64,
            file["rows"].as_u64().unwrap(),
            "a file's row count"
        );
    }
    rows
}

/// The bytes of every data file, by name.
fn data_files(manifest: &Value, folder: &Path) -> BTreeMap<String, Vec<u8>> {
    manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let name = f["name"].as_str().unwrap().to_owned();
            let bytes = std::fs::read(folder.join(&name)).unwrap();
            (name, bytes)
        })
        .collect()
}

/// The manifest's conversation counts add up to the total, and the total is every
/// conversation in the store.
fn assert_counts_add_up(manifest: &Value, conversations: usize) {
    let counts = &manifest["conversations"];
    let excluded: u64 = counts["excluded"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum();
    let included = counts["included"].as_u64().unwrap();
    assert_eq!(included + excluded, counts["total"].as_u64().unwrap());
    assert_eq!(counts["total"].as_u64().unwrap(), conversations as u64);
    let rows: u64 = manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["rows"].as_u64().unwrap())
        .sum();
    assert_eq!(rows, included, "every included conversation is one row");
}

/// invariant 1 of docs/POLICY.md, checked from the reference model's records rather than through
/// `eligibility`: nothing of a business plan, incognito, deleted or expired, erased, not allowed
/// at the cutoff (or withdrawn since), or whose every covered activity precedes the latest
/// withdrawal; and no message after the cutoff or sent under a business plan.
fn assert_invariant_1(
    model: &Timeline,
    row: &Value,
    id: &ConversationId,
    cutoff: Timestamp,
    now: Timestamp,
) {
    let policy = model.policy();
    let c = model.conversations().find(|c| &c.id == id).unwrap();
    let owner = model.account(&c.owner).unwrap();
    let (at_cutoff, at_now) = (model.query_key(cutoff), model.query_key(now));
    let context = format!("{id} in an export at {cutoff} taken at {now}");
    assert!(
        policy.is_consumer(owner.plan_at(at_cutoff)),
        "{context}: business plan"
    );
    assert!(
        policy.is_consumer(owner.plan_at(at_now)),
        "{context}: business plan now"
    );
    assert!(!c.incognito, "{context}: incognito");
    assert!(c.deleted_before(at_now).is_none(), "{context}: deleted");
    assert!(c.purged_before(at_now).is_none(), "{context}: purged");
    assert!(owner.erased_before(at_now).is_none(), "{context}: erased");
    assert_eq!(
        owner.preference_at(at_cutoff),
        Preference::Allowed,
        "{context}"
    );
    assert_eq!(
        owner.preference_at(at_now),
        Preference::Allowed,
        "{context}"
    );
    let expires = expiry(policy, owner, c, at_now).unwrap().at;
    assert!(expires > now, "{context}: expired at {expires}");
    let latest_withdrawal = owner.withdrawals_before(policy, at_now).last().copied();
    assert!(
        c.activity_before(at_cutoff)
            .any(|key| c.is_covered(policy, owner, key) && Some(key) > latest_withdrawal),
        "{context}: every covered activity precedes the latest withdrawal"
    );
    let exported = row["messages"].as_array().unwrap();
    for message in exported {
        let at = ts(message["at"].as_str().unwrap());
        assert!(at <= cutoff, "{context}: a message after the cutoff");
        let original = c
            .messages
            .iter()
            .find(|m| m.key.at == at)
            .unwrap_or_else(|| panic!("{context}: a message the store does not hold"));
        assert!(
            policy.is_consumer(owner.plan_at(original.key)),
            "{context}: a message sent under a business plan"
        );
    }
}

/// A timeline made for exports: six accounts created after the policy took effect, most of
/// them allowing training, then activity, choices, plan changes, deletions, erasures and sweeps
/// over weeks, so that many conversations are eligible and many are not, for every reason.
/// (The shared generator's universe is tuned for edge cases, where little is ever eligible.)
fn export_timeline(seed: u64) -> Vec<(i64, Command)> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = move |n: u64| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) % n
    };
    let plans = ["free", "pro", "max", "team", "api"];
    let owner = |c: u64| format!("a{}", c % 6);
    let mut ops = Vec::new();
    for a in 0..6 {
        let plan = plans[usize::try_from(next(5)).unwrap()];
        let choice = [Some(true), Some(true), Some(false), None][usize::try_from(next(4)).unwrap()];
        let advance = if a == 0 { 70 * DAY } else { 0 };
        ops.push((advance, create(&format!("a{a}"), plan, choice)));
    }
    for _ in 0..120 {
        // Mostly short steps; now and then a month, so that 30-day expiries come due.
        let advance =
            [0, 1, 60_000, 3_600_000, DAY, 29 * DAY, 30 * DAY][usize::try_from(next(7)).unwrap()];
        let advance = if advance >= 29 * DAY && next(4) != 0 {
            DAY / 2
        } else {
            advance
        };
        let c = next(12);
        let a = format!("a{}", next(6));
        let command = match next(100) {
            0..60 => Command::Message {
                account: account(&owner(c)),
                conversation: conversation(&format!("c{c}")),
                surface: if c % 3 == 0 {
                    Surface::Code
                } else {
                    Surface::Chat
                },
                role: if next(2) == 0 {
                    Role::User
                } else {
                    Role::Assistant
                },
                text: format!("message {} about c{c}", next(1000)),
                incognito: c == 11,
            },
            60..70 => Command::Feedback {
                account: account(&owner(c)),
                conversation: conversation(&format!("c{c}")),
                rating: custos_core::Rating::Up,
                comment: (next(2) == 0).then(|| "useful".to_owned()),
            },
            70..84 => choose(&a, next(3) != 0),
            84..88 => Command::ChangePlan {
                account: account(&a),
                plan: plans[usize::try_from(next(5)).unwrap()].into(),
            },
            88..93 => Command::DeleteConversation {
                conversation: conversation(&format!("c{c}")),
            },
            93..94 => Command::EraseAccount {
                account: account(&a),
            },
            _ => Command::Sweep,
        };
        ops.push((advance, command));
    }
    ops
}

/// Replays a random timeline into the store and the reference model; returns the model, the
/// times of its steps and the last one.
fn replay(fixture: &Fixture, ops: &[timelines::Op]) -> (Timeline, Vec<Timestamp>, Timestamp) {
    let commands: Vec<(i64, Command)> = ops
        .iter()
        .map(|op| (op.advance_ms, timelines::command(&op.event)))
        .collect();
    replay_commands(fixture, &commands)
}

fn replay_commands(
    fixture: &Fixture,
    ops: &[(i64, Command)],
) -> (Timeline, Vec<Timestamp>, Timestamp) {
    let mut model = Timeline::new(Policy::bundled());
    let mut now = timelines::start();
    let mut times = Vec::new();
    for (advance, command) in ops {
        now = plus_ms(now, *advance);
        let command = command.clone();
        let expected = model.apply(now, command.clone());
        let got = fixture.store.apply(now, &command, "test");
        assert_eq!(expected.is_ok(), got.is_ok(), "{command:?}");
        times.push(now);
    }
    (model, times, now)
}

#[test]
fn exports_of_random_timelines_hold_invariants_1_and_4() {
    let mut runner = TestRunner::deterministic();
    let strategy = timelines::timeline(80);
    let mut included_somewhere = 0;
    for case in 0..32 {
        // Every other timeline is the shared generator's (edge cases of time and order), the
        // others are made for exports (much is eligible).
        let fixture = Fixture::sqlite();
        let (model, times, _) = if case % 2 == 0 {
            replay_commands(&fixture, &export_timeline(case))
        } else {
            replay(&fixture, &strategy.new_tree(&mut runner).unwrap().current())
        };
        let exports = fixture.exports();
        let keys: HashMap<String, ConversationId> = model
            .conversations()
            .map(|c| {
                (
                    exports.conversation_key(c.id.as_str()).unwrap(),
                    c.id.clone(),
                )
            })
            .collect();
        let conversations = model.conversations().count();
        // Cutoffs along the timeline; each snapshot taken at the cutoff, a few steps later (so
        // that what changed in between must be honored), or at the end.
        let last = times.len() - 1;
        let moments = [
            (last / 4, last / 4),
            (last / 2, (last / 2 + 4).min(last)),
            (last * 3 / 4, last * 3 / 4),
            (last / 3, last),
        ];
        for (n, (cutoff, now)) in moments
            .into_iter()
            .map(|(c, n)| (times[c], times[n]))
            .enumerate()
        {
            let (manifest, folder) =
                fixture.export(cutoff, now, Format::Jsonl, &format!("case{case}-{n}"), 600);
            assert_counts_add_up(&manifest, conversations);
            let rows = jsonl_rows(&manifest, &folder);
            let mut exported = BTreeSet::new();
            for row in &rows {
                let id = &keys[row["conversation_key"].as_str().unwrap()];
                assert_invariant_1(&model, row, id, cutoff, now);
                exported.insert(id.clone());
            }
            // Nothing eligible is left out: the export holds what the core selects.
            let expected: BTreeSet<ConversationId> = model
                .conversations()
                .filter(|c| {
                    let owner = model.account(&c.owner).unwrap();
                    [cutoff, now].iter().all(|t| {
                        eligibility(model.policy(), owner, c, model.query_key(*t))
                            == EligibilityReason::Eligible
                    })
                })
                .map(|c| c.id.clone())
                .collect();
            assert_eq!(exported, expected, "case {case} cutoff {cutoff}");
            included_somewhere += exported.len();

            // Invariant 4: the same cutoff over the same data gives byte-identical files,
            // in both formats.
            let (again, again_folder) = fixture.export(
                cutoff,
                now,
                Format::Jsonl,
                &format!("case{case}-{n}-again"),
                600,
            );
            assert_eq!(
                data_files(&manifest, &folder),
                data_files(&again, &again_folder)
            );
            assert_ne!(manifest["snapshot_id"], again["snapshot_id"]);
            let (first, first_folder) = fixture.export(
                cutoff,
                now,
                Format::Parquet,
                &format!("case{case}-{n}-p"),
                1 << 20,
            );
            let (second, second_folder) = fixture.export(
                cutoff,
                now,
                Format::Parquet,
                &format!("case{case}-{n}-p2"),
                1 << 20,
            );
            assert_eq!(
                data_files(&first, &first_folder),
                data_files(&second, &second_folder)
            );
        }
    }
    assert!(
        included_somewhere >= 40,
        "the timelines must include something: {included_somewhere}"
    );
}

#[test]
fn small_file_limits_split_the_export_and_every_file_is_listed_and_verifies() {
    let fixture = Fixture::sqlite();
    let t0 = ts("2026-01-01T00:00:00Z");
    for a in 0..20 {
        fixture.apply(t0, create(&format!("acct-{a:02}"), "pro", Some(true)));
        for c in 0..5 {
            fixture.apply(
                plus_ms(t0, 1000),
                message(
                    &format!("acct-{a:02}"),
                    &format!("conv-{a:02}-{c}"),
                    "a question about lifetimes in Rust",
                ),
            );
        }
    }
    let now = plus_ms(t0, DAY);
    for format in [Format::Jsonl, Format::Parquet] {
        let (manifest, folder) = fixture.export(now, now, format, format.as_str(), 1_000);
        let files = manifest["files"].as_array().unwrap();
        assert!(files.len() >= 3, "{format:?}: {} files", files.len());
        assert_counts_add_up(&manifest, 100);
        assert_eq!(manifest["conversations"]["included"], 100);
        let verified = custos_export::verify(&folder, &fixture.store.public_key_hex()).unwrap();
        assert_eq!((verified.files, verified.rows), (files.len(), 100));
        // A changed byte, or a signature by another key, fails verification.
        let first = folder.join(files[0]["name"].as_str().unwrap());
        let mut bytes = std::fs::read(&first).unwrap();
        bytes[10] ^= 1;
        std::fs::write(&first, bytes).unwrap();
        assert!(custos_export::verify(&folder, &fixture.store.public_key_hex()).is_err());
        let other_key = "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c";
        assert!(custos_export::verify(&folder, other_key).is_err());
    }
}

/// What shutdown does to a running export: stopped once the snapshot is fixed, it removes its
/// folder and stays recorded as incomplete; the next export runs as usual.
#[test]
fn a_stopped_export_removes_what_it_wrote_and_stays_incomplete() {
    let fixture = Fixture::sqlite();
    let t0 = ts("2026-01-01T00:00:00Z");
    for a in 0..3 {
        fixture.apply(t0, create(&format!("acct-{a}"), "pro", Some(true)));
        fixture.apply(
            plus_ms(t0, 1000),
            message(&format!("acct-{a}"), &format!("conv-{a}"), "hello"),
        );
    }
    let now = plus_ms(t0, DAY);
    let exports = fixture.exports();
    let request = Request {
        purpose: custos_core::Purpose::ModelTraining.as_str().into(),
        cutoff: now,
        format: Format::Parquet,
        out: Some(exports.root().join("stopped")),
        max_file_bytes: 1 << 20,
    };
    let prepared = exports.prepare(&request, now).unwrap();
    assert!(prepared.out.is_dir(), "prepare makes the folder");
    let stop = AtomicBool::new(false);
    // The first report comes once the snapshot is fixed, before any chunk is decided.
    let error = exports
        .run_until(
            &prepared,
            &mut |_| stop.store(true, Ordering::Relaxed),
            &stop,
        )
        .unwrap_err();
    assert!(matches!(error, ExportError::Stopped), "{error}");
    assert!(!prepared.out.exists(), "nothing partial is left behind");
    assert!(matches!(
        exports.manifest_of(&prepared.id),
        Err(ExportError::Incomplete(_))
    ));
    let (manifest, _) = fixture.export(now, now, Format::Parquet, "after", 1 << 20);
    assert_eq!(manifest["conversations"]["included"], 3);
}

#[test]
fn secrets_and_personal_data_never_reach_the_files() {
    let fixture = Fixture::sqlite();
    let t0 = ts("2026-01-01T00:00:00Z");
    fixture.apply(t0, create("dev", "max", Some(true)));
    let texts = [
        "my key is AKIAIOSFODNN7EXAMPLE and it fails",
        "export GITHUB_TOKEN=ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789",
        "mail me at jane.doe@example.com or call +1 415 555 0132",
        "password=hunter2hunter2 in config.yaml",
        "card 4111 1111 1111 1111 was charged from 192.168.10.24",
    ];
    for (i, text) in texts.iter().enumerate() {
        fixture.apply(
            plus_ms(t0, 1000 + i as i64),
            message("dev", "session", text),
        );
    }
    fixture.apply(
        plus_ms(t0, 9000),
        Command::Feedback {
            account: account("dev"),
            conversation: conversation("session"),
            rating: custos_core::Rating::Down,
            comment: Some("reach me at jane.doe@example.com".into()),
        },
    );
    let now = plus_ms(t0, DAY);
    for format in [Format::Jsonl, Format::Parquet] {
        let (manifest, folder) = fixture.export(now, now, format, format.as_str(), 1 << 20);
        let everything: Vec<u8> = data_files(&manifest, &folder)
            .into_values()
            .flatten()
            .collect();
        let haystack = String::from_utf8_lossy(&everything);
        // In Parquet, compression could hide a literal (never make one up), so the JSONL copy
        // is the thorough check; pyarrow reads the Parquet texts back in
        // `parquet_files_read_back_with_pyarrow_and_duckdb`.
        for secret in [
            "AKIAIOSFODNN7EXAMPLE",
            "ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789",
            "jane.doe@example.com",
            "415 555 0132",
            "hunter2hunter2",
            "4111 1111 1111 1111",
            "192.168.10.24",
        ] {
            assert!(!haystack.contains(secret), "{format:?} leaks `{secret}`");
        }
        if format == Format::Jsonl {
            // No account or conversation id either: only keyed pseudonyms.
            assert!(
                !haystack.contains("\"dev\"") && !haystack.contains("session"),
                "{haystack}"
            );
        }
        let redactions = &manifest["redactions"];
        for kind in [
            "aws_key",
            "github_token",
            "email",
            "phone",
            "secret",
            "card",
            "ip",
        ] {
            assert!(
                redactions[kind].as_u64().unwrap_or(0) >= 1,
                "{kind}: {redactions}"
            );
        }
        assert_eq!(redactions["email"], 2, "the message's and the comment's");
    }
    let (manifest, folder) = fixture.export(now, now, Format::Jsonl, "text", 1 << 20);
    let rows = jsonl_rows(&manifest, &folder);
    assert_eq!(
        rows[0]["messages"][2]["content"],
        "mail me at [REDACTED:email] or call [REDACTED:phone]"
    );
    assert_eq!(
        rows[0]["feedback"][0]["comment"],
        "reach me at [REDACTED:email]"
    );
}

#[test]
fn revocations_name_each_row_no_longer_eligible_with_its_reason() {
    let fixture = Fixture::sqlite();
    let t0 = ts("2026-01-01T00:00:00Z");
    for (id, text) in [
        ("withdraws", "w"),
        ("deletes", "d"),
        ("erased", "e"),
        ("stays", "s"),
        ("switches", "b"),
    ] {
        fixture.apply(t0, create(id, "pro", Some(true)));
        fixture.apply(
            plus_ms(t0, 1000),
            message(id, &format!("{text}-1"), "hello"),
        );
    }
    fixture.apply(t0, create("late", "free", Some(true)));
    fixture.apply(plus_ms(t0, 2000), message("late", "l-1", "hi"));
    let cutoff = plus_ms(t0, DAY);
    let (manifest, _) = fixture.export(cutoff, cutoff, Format::Jsonl, "first", 1 << 20);
    assert_eq!(manifest["conversations"]["included"], 6);
    let id = manifest["snapshot_id"].as_str().unwrap();

    let later = plus_ms(cutoff, DAY);
    fixture.apply(later, choose("withdraws", false));
    fixture.apply(
        later,
        Command::DeleteConversation {
            conversation: conversation("d-1"),
        },
    );
    fixture.apply(
        later,
        Command::EraseAccount {
            account: account("erased"),
        },
    );
    fixture.apply(
        later,
        Command::ChangePlan {
            account: account("switches"),
            plan: "team".into(),
        },
    );
    let exports = fixture.exports();
    let revocations = exports.revocations(id, plus_ms(later, 1)).unwrap();
    let key = |c: &str| exports.conversation_key(c).unwrap();
    let expected: BTreeMap<String, &str> = [
        (key("w-1"), "withdrawn"),
        (key("d-1"), "deleted"),
        (key("e-1"), "erased"),
        (key("b-1"), "withdrawn"),
    ]
    .into_iter()
    .collect();
    let got: BTreeMap<String, &str> = revocations
        .revoked
        .iter()
        .map(|(k, r)| (k.clone(), r.as_str()))
        .collect();
    assert_eq!(got, expected);
    assert_eq!(revocations.rows, 6);

    // After a sweep purges them, and after five years without activity, the reasons hold.
    fixture
        .store
        .sweep(
            &custos_store::SweepRun::new("test"),
            plus_ms(later, 40 * DAY),
            100,
            &mut |_, _| {},
        )
        .unwrap();
    let years_on = ts("2031-06-01T00:00:00Z");
    let revocations = exports.revocations(id, years_on).unwrap();
    let got: BTreeMap<String, &str> = revocations
        .revoked
        .iter()
        .map(|(k, r)| (k.clone(), r.as_str()))
        .collect();
    assert_eq!(got[&key("d-1")], "deleted");
    assert_eq!(got[&key("e-1")], "erased");
    assert_eq!(got[&key("s-1")], "expired");
    assert_eq!(
        got[&key("w-1")],
        "withdrawn",
        "purged after the withdrawal's 30 days"
    );
    assert_eq!(
        got[&key("b-1")],
        "withdrawn",
        "purged after the move to a business plan"
    );
    assert_eq!(got[&key("l-1")], "expired");
    assert_eq!(got.len(), 6);

    // An unknown or malformed snapshot id names no record and no path.
    for bad in ["exp-0000000000000000", "../../etc", "exp-zz"] {
        assert!(
            matches!(
                exports.revocations(bad, years_on),
                Err(ExportError::UnknownSnapshot(_))
            ),
            "{bad}"
        );
    }
}

#[test]
fn refused_purposes_destinations_and_cutoffs_write_nothing() {
    let fixture = Fixture::sqlite();
    let t0 = ts("2026-01-01T00:00:00Z");
    fixture.apply(t0, create("a", "pro", Some(true)));
    fixture.apply(plus_ms(t0, 1), message("a", "c", "hello"));
    let exports = fixture.exports();
    let outside = fixture.folder.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::create_dir_all(exports.root()).unwrap();
    std::os::unix::fs::symlink(
        fixture.folder.path().join("nowhere"),
        exports.root().join("dangling"),
    )
    .unwrap();
    std::os::unix::fs::symlink(&outside, exports.root().join("link")).unwrap();
    std::fs::create_dir_all(exports.root().join("used")).unwrap();
    std::fs::write(exports.root().join("used/file"), "x").unwrap();
    let now = plus_ms(t0, DAY);
    let request = |purpose: &str, out: PathBuf, cutoff: Timestamp| Request {
        purpose: purpose.into(),
        cutoff,
        format: Format::Jsonl,
        out: Some(out),
        max_file_bytes: 1 << 20,
    };
    let root = exports.root().to_owned();
    let cases = [
        request("advertising", root.join("x1"), now),
        request("third_party_sharing", root.join("x2"), now),
        request(
            custos_core::Purpose::ModelTraining.as_str(),
            outside.join("x"),
            now,
        ),
        request(
            custos_core::Purpose::ModelTraining.as_str(),
            root.join("dangling/x"),
            now,
        ),
        request(
            custos_core::Purpose::ModelTraining.as_str(),
            root.join("../escape"),
            now,
        ),
        request(
            custos_core::Purpose::ModelTraining.as_str(),
            root.join("link/inside"),
            now,
        ),
        request(
            custos_core::Purpose::ModelTraining.as_str(),
            root.clone(),
            now,
        ),
        request(
            custos_core::Purpose::ModelTraining.as_str(),
            root.join("used"),
            now,
        ),
        request(
            custos_core::Purpose::ModelTraining.as_str(),
            root.join("future"),
            plus_ms(now, 1),
        ),
    ];
    for case in &cases {
        let error = exports.prepare(case, now).unwrap_err();
        assert!(error.is_refusal(), "{error}");
    }
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        0,
        "nothing was written outside the root"
    );
    assert!(!fixture.folder.path().join("nowhere").exists());
    for name in ["x1", "x2", "escape", "future"] {
        assert!(!root.join(name).exists(), "{name}");
    }
    assert!(
        !fixture.data().join(custos_export::RECORDS).exists(),
        "no export was recorded"
    );
}

/// Withdrawals and deletions run on another thread while exports run; every one that committed
/// before an export's snapshot was fixed must be honored by that export.
fn concurrent_withdrawals_and_deletions_are_honored(fixture: &Fixture) {
    const ACCOUNTS: usize = 150;
    const PER_ACCOUNT: usize = 4;
    let t0 = ts("2026-01-01T00:00:00Z");
    for a in 0..ACCOUNTS {
        fixture.apply(t0, create(&format!("u{a:03}"), "free", Some(true)));
        for c in 0..PER_ACCOUNT {
            fixture.apply(
                plus_ms(t0, 1000),
                message(
                    &format!("u{a:03}"),
                    &format!("c{a:03}-{c}"),
                    "some text to train on",
                ),
            );
        }
    }
    let cutoff = plus_ms(t0, DAY);
    let writes_at = plus_ms(cutoff, DAY);
    let now = plus_ms(writes_at, DAY);
    let exports = fixture.exports();
    let keys: HashMap<String, (String, String)> = (0..ACCOUNTS)
        .flat_map(|a| (0..PER_ACCOUNT).map(move |c| (format!("u{a:03}"), format!("c{a:03}-{c}"))))
        .map(|(a, c)| (exports.conversation_key(&c).unwrap(), (a, c)))
        .collect();
    // (began, committed, account withdrawn or conversation deleted). A write that began after a
    // snapshot was fixed must not show in it; one that committed before an export began must.
    // A write whose span straddles the moment the snapshot was fixed may go either way.
    #[allow(clippy::type_complexity)]
    let committed: std::sync::Mutex<Vec<(Instant, Instant, Result<String, String>)>> =
        std::sync::Mutex::default();
    let done = AtomicBool::new(false);
    let mut snapshots = Vec::new();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            for a in 0..ACCOUNTS {
                if done.load(Ordering::Relaxed) {
                    break;
                }
                let id = format!("u{a:03}");
                let started = Instant::now();
                if a % 2 == 0 {
                    fixture.apply(writes_at, choose(&id, false));
                    committed
                        .lock()
                        .unwrap()
                        .push((started, Instant::now(), Ok(id)));
                } else {
                    let c = format!("c{a:03}-{}", a % PER_ACCOUNT);
                    fixture.apply(
                        writes_at,
                        Command::DeleteConversation {
                            conversation: conversation(&c),
                        },
                    );
                    committed
                        .lock()
                        .unwrap()
                        .push((started, Instant::now(), Err(c)));
                }
            }
        });
        for round in 0..6 {
            let exports = fixture.exports();
            let request = Request {
                purpose: custos_core::Purpose::ModelTraining.as_str().into(),
                cutoff,
                format: Format::Jsonl,
                out: Some(exports.root().join(format!("round{round}"))),
                max_file_bytes: 1 << 20,
            };
            let prepared = exports.prepare(&request, now).unwrap();
            // Before `run`, no read transaction is open: what committed by now must be honored.
            // The first progress report comes once the snapshot is fixed: what commits after it
            // must not leak in.
            let began = Instant::now();
            let mut fixed = None;
            let manifest = exports
                .run(&prepared, &mut |_| {
                    fixed.get_or_insert_with(Instant::now);
                })
                .unwrap();
            snapshots.push((began, fixed.unwrap(), manifest, prepared.out));
        }
        done.store(true, Ordering::Relaxed);
    });
    let committed = committed.into_inner().unwrap();
    let (mut honored, mut kept_out) = (0, 0);
    for (began, fixed, manifest, folder) in &snapshots {
        let rows = jsonl_rows(manifest, folder);
        let exported: BTreeSet<&(String, String)> = rows
            .iter()
            .map(|r| &keys[r["conversation_key"].as_str().unwrap()])
            .collect();
        let of_account = |a: &str| exported.iter().filter(|(owner, _)| owner == a).count();
        for (started, at, change) in &committed {
            if at < began {
                honored += 1;
                match change {
                    Ok(withdrawn) => assert_eq!(
                        of_account(withdrawn),
                        0,
                        "{withdrawn} withdrew before the snapshot, and is in it"
                    ),
                    Err(deleted) => assert!(
                        !exported.iter().any(|(_, c)| c == deleted),
                        "{deleted} was deleted before the snapshot, and is in it"
                    ),
                }
            } else if started > fixed {
                // Committed after the snapshot was fixed: none of it shows, not even in part.
                kept_out += 1;
                match change {
                    Ok(withdrawn) => assert_eq!(
                        of_account(withdrawn),
                        PER_ACCOUNT,
                        "{withdrawn} withdrew after the snapshot was fixed"
                    ),
                    Err(deleted) => assert!(
                        exported.iter().any(|(_, c)| c == deleted),
                        "{deleted} was deleted after the snapshot was fixed, and is missing"
                    ),
                }
            }
        }
        assert_counts_add_up(manifest, ACCOUNTS * PER_ACCOUNT);
    }
    assert!(honored > 0, "some writes must commit before a snapshot");
    eprintln!("{honored} writes committed before a snapshot began, {kept_out} after one was fixed");
    // The last snapshot, if taken after every write, holds none of them.
    let (began, _, last, folder) = snapshots.last().unwrap();
    if committed.len() == ACCOUNTS && committed.iter().all(|(_, at, _)| at < began) {
        let included = jsonl_rows(last, folder).len();
        assert_eq!(
            included,
            ACCOUNTS / 2 * (PER_ACCOUNT - 1),
            "only the conversations of those who did not withdraw, minus the deleted"
        );
    }
}

#[test]
fn exports_honor_every_withdrawal_and_deletion_committed_before_the_snapshot_sqlite() {
    concurrent_withdrawals_and_deletions_are_honored(&Fixture::sqlite());
}

/// The same against PostgreSQL's REPEATABLE READ snapshot. `CUSTOS_TEST_DATABASE_URL` names the
/// server (CI sets it, and then this fails if it can't be reached); without it the local default
/// is tried, and the test says loudly that it did not run if nothing answers.
#[test]
fn exports_honor_every_withdrawal_and_deletion_committed_before_the_snapshot_postgres() {
    let required = std::env::var("CUSTOS_TEST_DATABASE_URL").ok();
    let base = required.clone().unwrap_or_else(|| {
        "host=127.0.0.1 port=5432 user=postgres dbname=test connect_timeout=3".into()
    });
    let mut admin = match postgres::Client::connect(&base, postgres::NoTls) {
        Ok(client) => client,
        Err(error) if required.is_none() => {
            eprintln!(
                "custos-export: the PostgreSQL export test did NOT run: {error}; set CUSTOS_TEST_DATABASE_URL to require it"
            );
            return;
        }
        Err(error) => {
            panic!("CUSTOS_TEST_DATABASE_URL is set but PostgreSQL can't be reached: {error}")
        }
    };
    let name = format!("custos_export_{}", std::process::id());
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
        .unwrap();
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .unwrap();
    let fixture = Fixture::postgres(format!("{base} dbname={name}"));
    concurrent_withdrawals_and_deletions_are_honored(&fixture);
    drop(fixture);
    admin
        .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .unwrap();
}

/// A Python with the independent readers (pyarrow and DuckDB, pinned in
/// `tests/requirements.txt`): `CUSTOS_TEST_PYTHON` if set, else a virtual environment under the
/// target folder, made from PyPI on first use. Fails loudly if it can't be had.
fn readers() -> PathBuf {
    if let Ok(python) = std::env::var("CUSTOS_TEST_PYTHON") {
        return PathBuf::from(python);
    }
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("parquet-readers");
    let python = venv.join("bin/python");
    let ready = || {
        std::process::Command::new(&python)
            .args(["-c", "import pyarrow, duckdb"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !ready() {
        let run = |command: &mut std::process::Command| {
            let output = command.output().unwrap_or_else(|e| {
                panic!("the Parquet read-back test needs python3 with venv and pip: {e}")
            });
            assert!(
                output.status.success(),
                "setting up pyarrow and DuckDB from PyPI failed (the Parquet read-back test can't run):\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        run(std::process::Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv));
        let requirements = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/requirements.txt");
        run(std::process::Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
            .arg(requirements));
        assert!(
            ready(),
            "pyarrow and DuckDB were installed but do not import"
        );
    }
    python
}

/// The Parquet files read back with independent readers, pyarrow and DuckDB; their rows must
/// equal the JSONL export's.
#[test]
fn parquet_files_read_back_with_pyarrow_and_duckdb() {
    let mut runner = TestRunner::deterministic();
    let ops = timelines::timeline(80)
        .new_tree(&mut runner)
        .unwrap()
        .current();
    let fixture = Fixture::sqlite();
    let (_, _, now) = replay(&fixture, &ops);
    // A second account with a bit of everything, so that the file is never trivially empty.
    let t = plus_ms(now, 1);
    fixture.apply(t, create("reader", "max", Some(true)));
    fixture.apply(
        plus_ms(t, 1),
        message(
            "reader",
            "r1",
            "write me a haiku about sqlite, mail x@y.org",
        ),
    );
    fixture.apply(
        plus_ms(t, 2),
        Command::Feedback {
            account: account("reader"),
            conversation: conversation("r1"),
            rating: custos_core::Rating::Up,
            comment: None,
        },
    );
    fixture.apply(
        plus_ms(t, 3),
        message("reader", "r2", "ünïcödé and emoji 🦀 survive"),
    );
    let now = plus_ms(t, DAY);
    let (jsonl, jsonl_folder) = fixture.export(now, now, Format::Jsonl, "json", 1 << 20);
    let (parquet, parquet_folder) = fixture.export(now, now, Format::Parquet, "parquet", 3_000);
    // Both formats name every field alike.
    let expected: Vec<Value> = jsonl_rows(&jsonl, &jsonl_folder);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/read_parquet.py");
    let files: Vec<String> = parquet["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            parquet_folder
                .join(f["name"].as_str().unwrap())
                .display()
                .to_string()
        })
        .collect();
    let output = std::process::Command::new(readers())
        .arg(&script)
        .args(&files)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{} failed:\n{}",
        script.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let read: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        read["pyarrow"].as_array().unwrap(),
        &expected,
        "pyarrow's rows"
    );
    assert_eq!(read["duckdb"]["rows"], expected.len());
    let messages: usize = expected
        .iter()
        .map(|r| r["messages"].as_array().unwrap().len())
        .sum();
    assert_eq!(read["duckdb"]["messages"], messages);
    assert!(expected.len() >= 2);
}
