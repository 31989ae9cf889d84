//! The storage conformance suite: every backend must pass all of it.
//!
//! Each check takes a factory that opens a fresh, empty store. The first and strongest check
//! replays random timelines through the store and through the in-memory reference model
//! (`custos_core::Timeline`) side by side, and compares every answer after every step.

#![allow(dead_code, reason = "each test binary calls the suite its own way")]

#[path = "../../../custos-core/tests/support/mod.rs"]
mod timelines;

use custos_core::{
    AccountId, Channel, Command, ConversationId, Policy, Preference, Rating, Role, Surface,
    Timeline, Timestamp,
};
use custos_store::{Store, StoreError};
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::TestRunner;

pub type Factory<'a> = &'a dyn Fn() -> Store;

fn ts(text: &str) -> Timestamp {
    Timestamp::parse(text).unwrap()
}

fn account(id: &str) -> AccountId {
    AccountId::parse(id).unwrap()
}

/// A check of the suite: it opens as many fresh stores as it needs through the factory.
pub type Check = fn(Factory<'_>);

/// Names each check by its function, so the list can't drift from the code.
macro_rules! checks {
    ($($check:ident),+ $(,)?) => {
        &[$((stringify!($check), $check as Check)),+]
    };
}

/// Every check of the suite, by name.
pub const CHECKS: &[(&str, Check)] = checks![
    agrees_with_the_reference_model_on_random_timelines,
    batched_sweeps_agree_with_the_reference_model,
    batches_of_many_events_agree_with_the_reference_model,
    every_choice_is_a_verifiable_ledger_entry,
    a_refused_write_leaves_nothing_behind,
    checkpoints_sign_every_chain_head,
    concurrent_writers_are_serialized_per_account,
    the_expiry_index_follows_every_write,
    the_store_signs_checkpoints_by_itself,
    a_refused_event_in_a_batch_rolls_back_alone,
    account_views_and_conversation_lists_are_read_without_locks,
    bulk_loaded_accounts_answer_like_the_reference_model,
    late_activity_is_exported_in_key_order_with_its_own_texts,
    every_concurrent_writer_is_answered_with_its_own_write,
    the_change_feed_misses_no_committed_change,
    one_sweep_runs_at_a_time_and_every_one_is_recorded,
    whole_store_reads_in_parts_read_every_row_once,
    concurrent_batches_are_each_answered_with_their_own_outcomes,
];

/// How many random timelines the differential check replays (each opens a fresh store).
const TIMELINES: u32 = 24;

pub fn agrees_with_the_reference_model_on_random_timelines(open: Factory<'_>) {
    replay_against_the_model(open, None);
}

/// The same, with each sweep run the service's way: in batches of 1 to 3 conversations, each
/// its own transaction, walking the expiry index with a cursor.
pub fn batched_sweeps_agree_with_the_reference_model(open: Factory<'_>) {
    replay_against_the_model(open, Some(3));
}

/// The same timelines sent the product's way: in batches of 1 to 24 events, each with an id,
/// one transaction per batch, and now and then an event delivered twice in the same batch. A
/// second delivery of an accepted event is a duplicate; of a refused one, it is decided again.
/// Every outcome of a batch is compared with the model's, and every answer after each batch.
pub fn batches_of_many_events_agree_with_the_reference_model(open: Factory<'_>) {
    let mut runner = TestRunner::deterministic();
    let strategy = timelines::timeline(60);
    for case in 0..TIMELINES {
        let ops = strategy.new_tree(&mut runner).unwrap().current();
        let store = open();
        let mut model = Timeline::new(Policy::bundled());
        let mut now = timelines::start();
        let mut events = Vec::new();
        for (index, op) in ops.iter().enumerate() {
            now = Timestamp::from_unix_millis(now.unix_millis() + op.advance_ms).unwrap_or(now);
            let event = (format!("e{index}"), now, timelines::command(&op.event));
            if index % 7 == 3 {
                events.push(event.clone());
            }
            events.push(event);
        }
        let mut accepted = std::collections::HashSet::new();
        let mut rest = events.as_slice();
        let mut size = 1 + usize::try_from(case).unwrap() % 5;
        while !rest.is_empty() {
            let (batch, after) = rest.split_at(size.min(rest.len()));
            rest = after;
            size = size * 3 % 24 + 1;
            let sent: Vec<_> = batch
                .iter()
                .map(|(id, at, command)| (Some(id.as_str()), *at, command))
                .collect();
            let outcomes = store.apply_batch(&sent, "conformance").unwrap();
            for ((id, at, command), got) in batch.iter().zip(&outcomes) {
                let context = format!("case {case} event {id} at {at}: {command:?}");
                if accepted.contains(id) {
                    assert!(
                        matches!(got, Ok(custos_store::Applied::Duplicate)),
                        "{context}: a second delivery of an accepted event gave {got:?}"
                    );
                    continue;
                }
                match (model.apply(*at, command.clone()), got) {
                    (Ok(_), Ok(custos_store::Applied::Accepted)) => {
                        accepted.insert(id);
                    }
                    (Err(refusal), Err(StoreError::Refused(stored))) => {
                        assert_eq!(refusal.slug(), stored.slug(), "{context}")
                    }
                    (expected, got) => panic!("{context}: model {expected:?}, store {got:?}"),
                }
            }
            let last = batch.last().map_or(now, |(_, at, _)| *at);
            assert_same_answers(&model, &store, last, &format!("case {case} after a batch"));
        }
        let report = store.verify_ledger().unwrap();
        assert_eq!(report.problem, None, "case {case}");
    }
}

fn replay_against_the_model(open: Factory<'_>, sweep_batches: Option<usize>) {
    let mut runner = TestRunner::deterministic();
    let strategy = timelines::timeline(40);
    for case in 0..TIMELINES {
        let ops = strategy.new_tree(&mut runner).unwrap().current();
        let store = open();
        let mut model = Timeline::new(Policy::bundled());
        let mut now = timelines::start();
        for (index, op) in ops.iter().enumerate() {
            now = Timestamp::from_unix_millis(now.unix_millis() + op.advance_ms).unwrap_or(now);
            let command = timelines::command(&op.event);
            let expected = model.apply(now, command.clone());
            let got = match (sweep_batches, &command) {
                (Some(largest), Command::Sweep) => {
                    let batch = 1 + usize::try_from(case).unwrap() % largest;
                    store
                        .sweep(
                            &custos_store::SweepRun::new("conformance"),
                            now,
                            batch,
                            &mut |_, _| {},
                        )
                        .map(Some)
                }
                _ => store
                    .apply(now, &command, "conformance")
                    .map(|written| written.sweep),
            };
            let context = format!("case {case} step {index} at {now}: {command:?}");
            match (&expected, &got) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{context}: sweep reports differ"),
                (Err(refusal), Err(StoreError::Refused(stored))) => {
                    assert_eq!(refusal.slug(), stored.slug(), "{context}")
                }
                _ => panic!("{context}: model {expected:?}, store {got:?}"),
            }
            assert_same_answers(&model, &store, now, &context);
        }
        let report = store.verify_ledger().unwrap();
        assert_eq!(report.problem, None, "case {case}");
        // Every stored expiry is the core's, and in the sweep's index.
        let check = store.check_retention(&mut |_| {}).unwrap();
        assert_eq!(check.different, 0, "case {case}: {:?}", check.differences);
    }
}

fn assert_same_answers(model: &Timeline, store: &Store, at: Timestamp, context: &str) {
    for account in model.accounts() {
        let expected = model.gate(&account.id, at);
        let got = store.gate(&account.id, at);
        match (expected, got) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "{context}: gate of {}", account.id),
            (Err(a), Err(StoreError::Refused(b))) => assert_eq!(a.slug(), b.slug(), "{context}"),
            (a, b) => panic!(
                "{context}: gate of {}: model {a:?}, store {b:?}",
                account.id
            ),
        }
    }
    for conversation in model.conversations() {
        let expected = model.conversation_status(&conversation.id, at).unwrap();
        let got = store.conversation_status(&conversation.id, at).unwrap();
        assert_eq!(expected, got, "{context}: status of {}", conversation.id);
    }
    let expected = model.snapshot(at);
    let got = store.snapshot(at).unwrap();
    let expected_ids: Vec<_> = expected
        .included
        .iter()
        .map(|(id, _)| (*id).clone())
        .collect();
    let got_ids: Vec<_> = got.included.iter().map(|c| c.id.clone()).collect();
    assert_eq!(expected_ids, got_ids, "{context}: export");
    for ((_, content), stored) in expected.included.iter().zip(&got.included) {
        let texts = |m: &[&custos_core::Message]| {
            m.iter()
                .map(|m| (m.key.at, m.text.clone()))
                .collect::<Vec<_>>()
        };
        let stored_texts: Vec<_> = stored
            .messages
            .iter()
            .map(|m| (m.key.at, m.text.clone()))
            .collect();
        assert_eq!(
            texts(&content.messages),
            stored_texts,
            "{context}: content of {}",
            stored.id
        );
        let comments = |f: &mut dyn Iterator<Item = &custos_core::model::Feedback>| {
            // Seqs are numbered apart (the model's count is not the store's): times compare.
            f.map(|f| (f.key.at, f.rating, f.comment.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            comments(&mut content.feedback.iter().copied()),
            comments(&mut stored.feedback.iter()),
            "{context}: feedback of {}",
            stored.id
        );
    }
    assert_eq!(expected.excluded, got.excluded, "{context}: exclusions");
}

/// Messages and feedback that arrive late (an earlier time, a later seq) sit in the store in
/// seq order but go to the core, and to the export, in key order: each keeps its own text and
/// comment through the reordering.
pub fn late_activity_is_exported_in_key_order_with_its_own_texts(open: Factory<'_>) {
    let store = open();
    let mut model = Timeline::new(Policy::bundled());
    let mut apply = |at: &str, command: Command| {
        let at = ts(at);
        let expected = model.apply(at, command.clone());
        let got = store.apply(at, &command, "conformance");
        assert_eq!(expected.is_ok(), got.is_ok(), "{command:?}: {got:?}");
    };
    apply(
        "2025-07-01T00:00:00Z",
        Command::CreateAccount {
            account: account("u"),
            plan: "pro".into(),
            choice: Some((true, Channel::Signup)),
        },
    );
    for (at, text) in [
        ("2025-07-02T12:00:00Z", "second"),
        ("2025-07-02T06:00:00Z", "first, arrived late"),
        ("2025-07-02T18:00:00Z", "third"),
        ("2025-07-02T09:00:00Z", "between, arrived last"),
    ] {
        apply(
            at,
            Command::Message {
                account: account("u"),
                conversation: ConversationId::parse("c-late").unwrap(),
                surface: Surface::Chat,
                role: Role::User,
                text: text.into(),
                incognito: false,
            },
        );
    }
    for (at, up, comment) in [
        ("2025-07-02T20:00:00Z", true, Some("later")),
        ("2025-07-02T19:00:00Z", false, Some("earlier, arrived late")),
        ("2025-07-02T19:30:00Z", true, None),
    ] {
        apply(
            at,
            Command::Feedback {
                account: account("u"),
                conversation: ConversationId::parse("c-late").unwrap(),
                rating: if up { Rating::Up } else { Rating::Down },
                comment: comment.map(str::to_owned),
            },
        );
    }
    let at = ts("2025-07-03T00:00:00Z");
    assert_same_answers(&model, &store, at, "late activity");
    let snapshot = store.snapshot(at).unwrap();
    let texts: Vec<_> = snapshot.included[0]
        .messages
        .iter()
        .map(|m| m.text.as_str())
        .collect();
    assert_eq!(
        texts,
        [
            "first, arrived late",
            "between, arrived last",
            "second",
            "third"
        ]
    );
    let comments: Vec<_> = snapshot.included[0]
        .feedback
        .iter()
        .map(|f| f.comment.as_deref())
        .collect();
    assert_eq!(
        comments,
        [Some("earlier, arrived late"), None, Some("later")]
    );
}

pub fn every_choice_is_a_verifiable_ledger_entry(open: Factory<'_>) {
    let store = open();
    let t = ts("2025-07-01T00:00:00Z");
    store
        .apply(
            t,
            &Command::CreateAccount {
                account: account("u"),
                plan: "pro".into(),
                choice: Some((true, Channel::Signup)),
            },
            "service",
        )
        .unwrap();
    store
        .apply(
            ts("2025-07-02T00:00:00Z"),
            &Command::NoticeShown {
                account: account("u"),
            },
            "service",
        )
        .unwrap();
    store
        .apply(
            ts("2025-07-03T00:00:00Z"),
            &Command::Choose {
                account: account("u"),
                allowed: false,
                channel: Channel::Settings,
            },
            "user:u",
        )
        .unwrap();
    store
        .apply(
            ts("2025-07-04T00:00:00Z"),
            &Command::ChangePlan {
                account: account("u"),
                plan: "team".into(),
            },
            "service",
        )
        .unwrap();
    let entries = store.ledger(&account("u")).unwrap();
    let kinds: Vec<_> = entries.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "created",
            "choice",
            "notice_shown",
            "choice",
            "plan_changed"
        ]
    );
    assert_eq!(entries[3].actor, "user:u");
    assert_eq!(entries[3].channel, Some(Channel::Settings));
    assert_eq!(entries[3].notice_id, "consumer-terms-2025");
    assert_eq!(entries[4].plan.as_deref(), Some("team"));
    for pair in entries.windows(2) {
        assert_eq!(pair[1].prev_hash, pair[0].hash, "entries are chained");
    }
    let report = store.verify_ledger().unwrap();
    assert_eq!(
        (report.accounts, report.entries, report.problem),
        (1, 5, None)
    );
}

pub fn a_refused_write_leaves_nothing_behind(open: Factory<'_>) {
    let store = open();
    let t = ts("2025-10-01T00:00:00Z");
    let refused = store.apply(
        t,
        &Command::CreateAccount {
            account: account("n"),
            plan: "max".into(),
            choice: None,
        },
        "service",
    );
    assert!(
        matches!(refused, Err(StoreError::Refused(_))),
        "{refused:?}"
    );
    assert!(matches!(
        store.gate(&account("n"), t),
        Err(StoreError::Refused(_))
    ));
    store
        .apply(
            t,
            &Command::CreateAccount {
                account: account("b"),
                plan: "team".into(),
                choice: None,
            },
            "service",
        )
        .unwrap();
    let refused = store.apply(
        t,
        &Command::Choose {
            account: account("b"),
            allowed: true,
            channel: Channel::Notice,
        },
        "service",
    );
    assert!(matches!(refused, Err(StoreError::Refused(_))));
    assert_eq!(
        store.ledger(&account("b")).unwrap().len(),
        1,
        "the refused choice left no entry"
    );
    let report = store.verify_ledger().unwrap();
    assert_eq!(
        (report.accounts, report.entries, report.problem),
        (1, 1, None)
    );
}

pub fn checkpoints_sign_every_chain_head(open: Factory<'_>) {
    let store = open();
    let t = ts("2025-07-01T00:00:00Z");
    assert_eq!(store.checkpoint(t).unwrap(), None, "nothing to sign yet");
    for id in ["a", "b", "c"] {
        store
            .apply(
                t,
                &Command::CreateAccount {
                    account: account(id),
                    plan: "free".into(),
                    choice: Some((false, Channel::Signup)),
                },
                "service",
            )
            .unwrap();
    }
    let first = store.checkpoint(t).unwrap().unwrap();
    assert_eq!((first.id, first.accounts, first.entries), (1, 3, 6));
    assert_eq!(
        store.checkpoint(t).unwrap().unwrap(),
        first,
        "no growth, no new checkpoint"
    );
    store
        .apply(
            ts("2025-07-02T00:00:00Z"),
            &Command::Choose {
                account: account("b"),
                allowed: true,
                channel: Channel::Settings,
            },
            "service",
        )
        .unwrap();
    let second = store
        .checkpoint(ts("2025-07-02T00:00:00Z"))
        .unwrap()
        .unwrap();
    assert_eq!((second.id, second.entries), (2, 7));
    assert_ne!(first.root, second.root);
    let report = store.verify_ledger().unwrap();
    assert_eq!(
        (report.checkpoints, report.entries, report.problem),
        (2, 7, None)
    );
}

pub fn concurrent_writers_are_serialized_per_account(open: Factory<'_>) {
    let store = open();
    let start = ts("2025-10-01T00:00:00Z");
    for id in ["a", "b", "c", "d"] {
        store
            .apply(
                start,
                &Command::CreateAccount {
                    account: account(id),
                    plan: "pro".into(),
                    choice: Some((true, Channel::Signup)),
                },
                "service",
            )
            .unwrap();
    }
    const PER_THREAD: i64 = 25;
    std::thread::scope(|scope| {
        for thread in 0..4i64 {
            let store = &store;
            scope.spawn(move || {
                for i in 0..PER_THREAD {
                    // Two threads per account: writers of one account contend, others do not.
                    let who = account(["a", "b"][usize::try_from(thread % 2).unwrap()]);
                    let at = Timestamp::from_unix_millis(start.unix_millis() + 1000 + i).unwrap();
                    let command = Command::Message {
                        account: who.clone(),
                        conversation: ConversationId::parse(&format!("t{thread}-{i}")).unwrap(),
                        surface: Surface::Chat,
                        role: Role::User,
                        text: format!("thread {thread} message {i}"),
                        incognito: false,
                    };
                    store.apply(at, &command, "service").unwrap();
                    let choice = Command::Choose {
                        account: who,
                        allowed: i % 2 == 0,
                        channel: Channel::Settings,
                    };
                    store.apply(at, &choice, "service").unwrap();
                }
            });
        }
    });
    let report = store.verify_ledger().unwrap();
    assert_eq!(report.problem, None);
    assert_eq!(
        report.entries,
        8 + 4 * 25,
        "every acknowledged choice is in the ledger"
    );
    let later = ts("2025-10-02T00:00:00Z");
    for thread in 0..4 {
        for i in 0..PER_THREAD {
            let id = ConversationId::parse(&format!("t{thread}-{i}")).unwrap();
            assert!(
                store.conversation_status(&id, later).unwrap().exists,
                "{id}"
            );
        }
    }
}

pub fn the_expiry_index_follows_every_write(open: Factory<'_>) {
    // A sweep finds due conversations only through the stored expiry, so a withdrawal, a
    // deletion and an erasure must each move it: a sweep at the new expiry purges them.
    let store = open();
    let c = |id: &str| ConversationId::parse(id).unwrap();
    let message = |who: &str, id: &str| Command::Message {
        account: account(who),
        conversation: c(id),
        surface: Surface::Code,
        role: Role::User,
        text: String::new(),
        incognito: false,
    };
    let t0 = ts("2025-10-01T00:00:00Z");
    for who in ["w", "d", "e"] {
        store
            .apply(
                t0,
                &Command::CreateAccount {
                    account: account(who),
                    plan: "pro".into(),
                    choice: Some((true, Channel::Signup)),
                },
                "service",
            )
            .unwrap();
        store
            .apply(t0, &message(who, &format!("{who}1")), "service")
            .unwrap();
    }
    let t1 = ts("2025-10-02T00:00:00Z");
    store
        .apply(
            t1,
            &Command::Choose {
                account: account("w"),
                allowed: false,
                channel: Channel::Settings,
            },
            "user:w",
        )
        .unwrap();
    store
        .apply(
            t1,
            &Command::DeleteConversation {
                conversation: c("d1"),
            },
            "user:d",
        )
        .unwrap();
    store
        .apply(
            t1,
            &Command::EraseAccount {
                account: account("e"),
            },
            "user:e",
        )
        .unwrap();
    let report = store
        .apply(t1, &Command::Sweep, "admin")
        .unwrap()
        .sweep
        .unwrap();
    assert_eq!(report.purged.get("account_erased"), Some(&1));
    let at_cap = ts("2025-11-01T00:00:00Z");
    let report = store
        .apply(at_cap, &Command::Sweep, "admin")
        .unwrap()
        .sweep
        .unwrap();
    assert_eq!(report.purged.get("withdrawal_cap"), Some(&1), "{report:?}");
    assert_eq!(report.purged.get("deletion_grace"), Some(&1), "{report:?}");
    for id in ["w1", "d1", "e1"] {
        assert!(
            !store.conversation_status(&c(id), at_cap).unwrap().exists,
            "{id} was not purged"
        );
    }
}

pub fn the_store_signs_checkpoints_by_itself(open: Factory<'_>) {
    let store = open();
    let t = ts("2025-07-01T00:00:00Z");
    let appends = custos_store::CHECKPOINT_EVERY;
    for i in 0..appends {
        let create = Command::CreateAccount {
            account: account(&format!("p{i}")),
            plan: "team".into(),
            choice: None,
        };
        store.apply(t, &create, "service").unwrap();
    }
    let report = store.verify_ledger().unwrap();
    assert_eq!(report.problem, None);
    assert_eq!(
        report.checkpoints, 1,
        "{appends} appends should have sealed one checkpoint"
    );
}

pub fn a_refused_event_in_a_batch_rolls_back_alone(open: Factory<'_>) {
    let store = open();
    let t = ts("2025-10-01T00:00:00Z");
    let message = |who: &str, id: &str| Command::Message {
        account: account(who),
        conversation: ConversationId::parse(id).unwrap(),
        surface: Surface::Chat,
        role: Role::User,
        text: format!("{who} in {id}"),
        incognito: false,
    };
    let create = Command::CreateAccount {
        account: account("a"),
        plan: "pro".into(),
        choice: Some((true, Channel::Signup)),
    };
    let choose = Command::Choose {
        account: account("a"),
        allowed: false,
        channel: Channel::Settings,
    };
    let (c1, c2, c3) = (message("a", "c1"), message("zed", "c2"), message("a", "c3"));
    let events: Vec<(Option<&str>, Timestamp, &Command)> = vec![
        (None, t, &create),
        (None, t, &create), // refused: exists
        (Some("e1"), t, &c1),
        (Some("e1"), t, &c1), // duplicate id
        (Some("e2"), t, &c2), // refused: unknown account
        (Some("e3"), t, &choose),
        (Some("e4"), t, &c3),
    ];
    let outcomes = store.apply_batch(&events, "service").unwrap();
    let summary: Vec<String> = outcomes
        .iter()
        .map(|o| match o {
            Ok(applied) => format!("{applied:?}"),
            Err(StoreError::Refused(refusal)) => refusal.slug().to_owned(),
            Err(other) => format!("storage: {other}"),
        })
        .collect();
    assert_eq!(
        summary,
        [
            "Accepted",
            "account-exists",
            "Accepted",
            "Duplicate",
            "unknown-account",
            "Accepted",
            "Accepted"
        ]
    );
    assert!(
        store
            .conversation_status(&ConversationId::parse("c1").unwrap(), t)
            .unwrap()
            .exists
    );
    assert!(matches!(
        store.conversation_status(&ConversationId::parse("c2").unwrap(), t),
        Err(StoreError::Refused(_))
    ));
    assert_eq!(
        store.ledger(&account("a")).unwrap().len(),
        3,
        "created, signup choice, declined"
    );
    let gate = store.gate(&account("a"), t).unwrap();
    assert_eq!(gate.reason.as_str(), "decided");
    assert_eq!(store.verify_ledger().unwrap().problem, None);
    // The same ids again: nothing new.
    let again = store.apply_batch(&events[2..], "service").unwrap();
    assert!(matches!(again[0], Ok(custos_store::Applied::Duplicate)));
}

pub fn account_views_and_conversation_lists_are_read_without_locks(open: Factory<'_>) {
    // These run in read-only transactions; a lock taken there is refused by PostgreSQL.
    let store = open();
    let t = ts("2025-10-01T00:00:00Z");
    let create = Command::CreateAccount {
        account: account("v"),
        plan: "pro".into(),
        choice: Some((true, Channel::Signup)),
    };
    store.apply(t, &create, "service").unwrap();
    let message = Command::Message {
        account: account("v"),
        conversation: ConversationId::parse("c1").unwrap(),
        surface: Surface::Chat,
        role: Role::User,
        text: "hello".into(),
        incognito: false,
    };
    store.apply(t, &message, "service").unwrap();
    let choose = Command::Choose {
        account: account("v"),
        allowed: false,
        channel: Channel::Settings,
    };
    store
        .apply(ts("2025-10-02T00:00:00Z"), &choose, "user:v")
        .unwrap();
    let view = store
        .account_view(&account("v"), ts("2025-10-02T00:00:00Z"))
        .unwrap();
    assert_eq!(view.preference.as_str(), "declined");
    let (at, channel, notice) = view.decided.unwrap();
    assert_eq!(
        (at, channel, notice.as_str()),
        (
            ts("2025-10-02T00:00:00Z"),
            Channel::Settings,
            "consumer-terms-2025"
        )
    );
    assert_eq!(view.gate.reason.as_str(), "decided");
    let list = store
        .visible_conversations(&account("v"), ts("2025-10-02T00:00:00Z"))
        .unwrap();
    assert_eq!(list.len(), 1);
    assert!(matches!(
        store.account_view(&account("nobody"), t),
        Err(StoreError::Refused(_))
    ));
}

/// `Store::load_new_accounts` admits each account's history in memory and writes it once; it
/// must refuse the same commands as the reference model and leave a store that answers alike.
/// Erasure, holds and sweeps are not bulk-loaded, so they are left out of these timelines, as are
/// events on a conversation another account started.
pub fn bulk_loaded_accounts_answer_like_the_reference_model(open: Factory<'_>) {
    use std::collections::BTreeMap;
    let mut runner = TestRunner::deterministic();
    let strategy = timelines::timeline(60);
    for case in 0..TIMELINES {
        let ops = strategy.new_tree(&mut runner).unwrap().current();
        let store = open();
        let mut model = Timeline::new(Policy::bundled());
        let mut now = timelines::start();
        let mut histories: BTreeMap<AccountId, Vec<(Timestamp, Command)>> = BTreeMap::new();
        let mut expected: BTreeMap<AccountId, Vec<Option<&'static str>>> = BTreeMap::new();
        let mut owners: BTreeMap<ConversationId, AccountId> = BTreeMap::new();
        for op in &ops {
            now = Timestamp::from_unix_millis(now.unix_millis() + op.advance_ms).unwrap_or(now);
            let command = timelines::command(&op.event);
            let account = match &command {
                Command::CreateAccount { account, .. }
                | Command::Choose { account, .. }
                | Command::NoticeShown { account }
                | Command::ChangePlan { account, .. } => account.clone(),
                Command::Message {
                    account,
                    conversation,
                    ..
                }
                | Command::Feedback {
                    account,
                    conversation,
                    ..
                } => match owners.get(conversation) {
                    Some(owner) if owner != account => continue,
                    _ => account.clone(),
                },
                Command::DeleteConversation { conversation } => match owners.get(conversation) {
                    Some(owner) => owner.clone(),
                    None => continue,
                },
                Command::EraseAccount { .. }
                | Command::PlaceHold { .. }
                | Command::ReleaseHold { .. }
                | Command::Sweep => continue,
            };
            let outcome = model.apply(now, command.clone());
            if let (Ok(_), Command::Message { conversation, .. }) = (&outcome, &command) {
                owners
                    .entry(conversation.clone())
                    .or_insert(account.clone());
            }
            expected
                .entry(account.clone())
                .or_default()
                .push(outcome.err().map(|refusal| refusal.slug()));
            histories.entry(account).or_default().push((now, command));
        }
        let lists: Vec<_> = histories.values().cloned().collect();
        // Into an empty store, as the demo loads: the expiry index is filled after the load.
        let outcomes = store
            .load_into_empty(|store| store.load_new_accounts(&lists, "conformance"))
            .unwrap();
        for ((account, expected), got) in expected.iter().zip(&outcomes) {
            let got: Vec<_> = got
                .iter()
                .map(|outcome| outcome.as_ref().err().map(|refusal| refusal.slug()))
                .collect();
            assert_eq!(expected, &got, "case {case}: outcomes of {account}");
        }
        assert_same_answers(&model, &store, now, &format!("case {case}, bulk-loaded"));
        // Sweeps read the expiries the load stored, through the index built after it.
        for days in [40, 6 * 366] {
            let later = Timestamp::from_unix_millis(now.unix_millis() + days * 86_400_000).unwrap();
            let expected = model.apply(later, Command::Sweep).unwrap();
            let run = custos_store::SweepRun::new("conformance");
            let got = store.sweep(&run, later, 7, &mut |_, _| {}).unwrap();
            assert_eq!(
                expected,
                Some(got),
                "case {case}: a sweep after {days} days"
            );
            assert_same_answers(&model, &store, later, &format!("case {case}, swept"));
        }
        let report = store.verify_ledger().unwrap();
        assert_eq!(report.problem, None, "case {case}");
    }
}

/// Many writers change one account's choice at once. Each is answered with the entry its own
/// transaction wrote (its choice, its place in the chain) and the account as that entry left
/// it; no two are answered with the same entry, and every choice in the ledger was answered to
/// exactly one writer.
pub fn every_concurrent_writer_is_answered_with_its_own_write(open: Factory<'_>) {
    let store = open();
    let start = ts("2025-10-01T00:00:00Z");
    store
        .apply(
            start,
            &Command::CreateAccount {
                account: account("a"),
                plan: "pro".into(),
                choice: Some((true, Channel::Signup)),
            },
            "service",
        )
        .unwrap();
    const WRITERS: usize = 8;
    const EACH: usize = 12;
    let answers = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for writer in 0..WRITERS {
            let (store, answers) = (&store, &answers);
            scope.spawn(move || {
                for i in 0..EACH {
                    let allowed = (writer + i) % 2 == 0;
                    let command = Command::Choose {
                        account: account("a"),
                        allowed,
                        channel: Channel::Settings,
                    };
                    let written = store.apply(start, &command, &format!("w{writer}")).unwrap();
                    answers.lock().unwrap().push((writer, allowed, written));
                }
            });
        }
    });
    let answers = answers.into_inner().unwrap();
    let mut answered = std::collections::BTreeSet::new();
    for (writer, allowed, written) in &answers {
        let [entry] = written.entries.as_slice() else {
            panic!(
                "writer {writer} was answered {} entries",
                written.entries.len()
            );
        };
        let asked = if *allowed {
            Preference::Allowed
        } else {
            Preference::Declined
        };
        assert_eq!(
            entry.preference,
            Some(asked),
            "writer {writer}: another's entry"
        );
        assert_eq!(
            entry.actor,
            format!("w{writer}"),
            "writer {writer}: another's entry"
        );
        let view = written.account.as_ref().unwrap();
        assert_eq!(view.preference, asked, "writer {writer}: another's state");
        assert_eq!(written.gate.as_ref().unwrap().1.preference, asked);
        assert!(answered.insert(entry.hash), "an entry answered twice");
    }
    let choices: std::collections::BTreeSet<[u8; 32]> = store
        .ledger(&account("a"))
        .unwrap()
        .iter()
        .filter(|e| e.kind == custos_store::EntryKind::Choice && e.actor != "service")
        .map(|e| e.hash)
        .collect();
    assert_eq!(choices.len(), WRITERS * EACH);
    assert_eq!(
        choices, answered,
        "every entry answered to exactly one writer"
    );
    assert_eq!(store.verify_ledger().unwrap().problem, None);
}

/// Gate states read from the feed, the newest by ledger length kept (as the service's index).
type Followed = std::collections::HashMap<custos_store::AccountKey, (custos_store::GateState, u64)>;

fn follow(
    followed: &mut Followed,
    key: custos_store::AccountKey,
    state: custos_store::GateState,
    version: u64,
) {
    let entry = followed.entry(key).or_insert((state, version));
    if version >= entry.1 {
        *entry = (state, version);
    }
}

/// The index's full read, batches from any thread, into `followed`; answers the feed's position.
fn read_every_gate_state(store: &Store, followed: &mut Followed) -> custos_store::FeedPosition {
    let read = std::sync::Mutex::new(Vec::new());
    let position = store
        .for_each_gate_state(&|batch| read.lock().unwrap().extend_from_slice(batch))
        .unwrap();
    for (key, state, version) in read.into_inner().unwrap() {
        follow(followed, key, state, version);
    }
    position
}

/// Many writers commit creations, choices, plan changes and erasures at once (commits finish in
/// any order), while a reader follows the change feed; what the reader ends with equals a
/// full read of the store, account by account.
pub fn the_change_feed_misses_no_committed_change(open: Factory<'_>) {
    let store = open();
    let start = ts("2025-10-01T00:00:00Z");
    let mut followed = Followed::new();
    let mut position = read_every_gate_state(&store, &mut followed);
    const WRITERS: usize = 6;
    const ACCOUNTS: usize = 12;
    const EACH: usize = 40;
    let done = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for writer in 0..WRITERS {
            let (store, done) = (&store, &done);
            scope.spawn(move || {
                let mut seed = 0x9e37_79b9_u64.wrapping_mul(writer as u64 + 1);
                for i in 0..EACH {
                    seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                    let id = account(&format!("acct-{}", (seed >> 33) as usize % ACCOUNTS));
                    let command = match (seed >> 20) % 16 {
                        0..=3 => Command::CreateAccount {
                            account: id,
                            plan: if i % 2 == 0 { "free" } else { "api" }.into(),
                            choice: None,
                        },
                        4..=8 => Command::Choose {
                            account: id,
                            allowed: seed % 2 == 0,
                            channel: Channel::Settings,
                        },
                        9..=14 => Command::ChangePlan {
                            account: id,
                            plan: if seed % 2 == 0 { "free" } else { "api" }.into(),
                        },
                        _ => Command::EraseAccount { account: id },
                    };
                    // Refusals (an account not made yet, or already erased) are part of the mix.
                    match store.apply(start, &command, "service") {
                        Ok(_) | Err(StoreError::Refused(_)) => {}
                        Err(other) => panic!("writer {writer}: {other}"),
                    }
                }
                done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            });
        }
        while done.load(std::sync::atomic::Ordering::SeqCst) < WRITERS {
            position = store
                .gate_changes(position, &mut |key, state, version| {
                    follow(&mut followed, key, state, version);
                })
                .unwrap();
        }
    });
    store
        .gate_changes(position, &mut |key, state, version| {
            follow(&mut followed, key, state, version)
        })
        .unwrap();
    let mut stored = Followed::new();
    read_every_gate_state(&store, &mut stored);
    assert!(!stored.is_empty());
    assert_eq!(
        followed, stored,
        "the feed's reader ended where the store is"
    );
    for n in 0..ACCOUNTS {
        let id = account(&format!("acct-{n}"));
        if let Some(facts) = stored.get(&store.account_key(&id)) {
            let (state, version) = store.gate_state(&id).unwrap().unwrap();
            assert_eq!(
                *facts,
                (state, version),
                "{id}: the scan and the account's own history"
            );
        }
    }
}

/// Sweeps started at once (as by several instances' schedules): they never overlap in time,
/// each one that did not start was told another runs, together they purge each due
/// conversation once, and the store records every sweep that ran, finished.
pub fn one_sweep_runs_at_a_time_and_every_one_is_recorded(open: Factory<'_>) {
    let store = open();
    let t0 = ts("2025-10-01T00:00:00Z");
    store
        .apply(
            t0,
            &Command::CreateAccount {
                account: account("s"),
                plan: "free".into(),
                choice: Some((false, Channel::Signup)),
            },
            "service",
        )
        .unwrap();
    const DUE: usize = 60;
    for n in 0..DUE {
        let command = Command::Message {
            account: account("s"),
            conversation: ConversationId::parse(&format!("s-{n}")).unwrap(),
            surface: Surface::Chat,
            role: Role::User,
            text: "hello".into(),
            incognito: false,
        };
        store.apply(t0, &command, "service").unwrap();
    }
    let later = ts("2025-12-01T00:00:00Z");
    let outcomes = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for n in 0..4 {
            let (store, outcomes) = (&store, &outcomes);
            scope.spawn(move || {
                let run = custos_store::SweepRun::new(format!("sweeper {n}"));
                // One conversation a batch: a sweep lasts long enough for the others to meet it.
                let outcome = store.sweep(&run, later, 1, &mut |_, _| {});
                outcomes.lock().unwrap().push(outcome);
            });
        }
    });
    let mut purged = 0;
    let mut ran = 0;
    for outcome in outcomes.into_inner().unwrap() {
        match outcome {
            Ok(report) => {
                ran += 1;
                purged += report.purged_total();
            }
            Err(StoreError::SweepRunning { .. }) => {}
            Err(other) => panic!("a sweep failed: {other}"),
        }
    }
    assert!(ran >= 1);
    assert_eq!(purged, DUE, "each due conversation purged once");
    let mut recorded = store.recent_sweeps(100).unwrap();
    assert_eq!(recorded.len(), ran, "{recorded:?}");
    // Times are in milliseconds: two short sweeps may share one, so ties go by their end.
    recorded.sort_by_key(|s| (s.started, s.finished));
    for sweep in &recorded {
        assert!(sweep.finished.is_some(), "{sweep:?}");
    }
    for pair in recorded.windows(2) {
        assert!(
            pair[0].finished.unwrap() <= pair[1].started,
            "two sweeps overlapped: {pair:?}"
        );
    }
    assert_eq!(
        recorded.iter().map(|s| s.purged).sum::<u64>(),
        DUE as u64,
        "the records say what the sweeps did"
    );
}

/// The reads of a whole store that PostgreSQL splits between connections sharing one snapshot
/// (the gate index's load by ranges of pages, an export's chunks by turns) read every row once:
/// the gate states equal each account's own, each once, and the chunks an export takes, in
/// order, hold what one reader's scan holds, text for text.
pub fn whole_store_reads_in_parts_read_every_row_once(open: Factory<'_>) {
    const ACCOUNTS: usize = 1_500;
    let store = open();
    let start = ts("2025-10-01T00:00:00Z");
    let lists: Vec<Vec<(Timestamp, Command)>> = (0..ACCOUNTS)
        .map(|i| {
            let id = account(&format!("parts-{i:05}"));
            let at = |minutes: i64| {
                Timestamp::from_unix_millis(start.unix_millis() + minutes * 60_000).unwrap()
            };
            let mut list = vec![(
                at(0),
                Command::CreateAccount {
                    account: id.clone(),
                    plan: if i % 7 == 0 { "team" } else { "pro" }.into(),
                    choice: (i % 7 != 0).then_some((i % 2 == 0, Channel::Signup)),
                },
            )];
            for c in 0..(i % 3) {
                for m in 0..2 {
                    list.push((
                        at(1 + m),
                        Command::Message {
                            account: id.clone(),
                            conversation: ConversationId::parse(&format!("parts-{i:05}-{c}"))
                                .unwrap(),
                            surface: Surface::Chat,
                            role: Role::User,
                            text: format!("text {m} of conversation {c} of account {i}"),
                            incognito: false,
                        },
                    ));
                }
            }
            list
        })
        .collect();
    let outcomes = store
        .load_into_empty(|store| store.load_new_accounts(&lists, "conformance"))
        .unwrap();
    for (list, outcomes) in lists.iter().zip(&outcomes) {
        for outcome in outcomes {
            assert!(outcome.is_ok(), "{:?}: {outcome:?}", list[0]);
        }
    }

    let mut read = Followed::new();
    read_every_gate_state(&store, &mut read);
    let batches = std::sync::Mutex::new(0usize);
    store
        .for_each_gate_state(&|batch| *batches.lock().unwrap() += batch.len())
        .unwrap();
    assert_eq!(
        batches.into_inner().unwrap(),
        ACCOUNTS,
        "each account read once"
    );
    assert_eq!(read.len(), ACCOUNTS);
    for list in &lists {
        let Command::CreateAccount { account, .. } = &list[0].1 else {
            unreachable!()
        };
        let alone = store.gate_state(account).unwrap().unwrap();
        assert_eq!(
            read.get(&store.account_key(account)),
            Some(&alone),
            "{account}"
        );
    }

    let now = ts("2025-10-02T00:00:00Z");
    let seen = |scanned: custos_store::Scanned<'_>, out: &mut Vec<String>| {
        let texts: Vec<&str> = scanned
            .conversation
            .messages
            .iter()
            .map(|m| scanned.message_text(m).unwrap())
            .collect();
        out.push(format!(
            "{} {} {}",
            scanned.owner.id,
            scanned.conversation.id,
            texts.join("|")
        ));
    };
    let mut alone = Vec::new();
    store
        .scan_training(now, now, true, &mut |_, _| Ok(()), &mut |scanned| {
            seen(scanned, &mut alone);
            Ok(())
        })
        .unwrap();
    let mut chunked = Vec::new();
    let mut conversations = None;
    store
        .scan_training_chunks(
            now,
            now,
            &mut |_, total| conversations = Some(total),
            &mut |raw| {
                raw.parse()?.visit(&mut |scanned| {
                    seen(scanned, &mut chunked);
                    Ok(())
                })?;
                Ok(Some(raw))
            },
        )
        .unwrap();
    let expected: usize = (0..ACCOUNTS).map(|i| i % 3).sum();
    assert_eq!(alone.len(), expected);
    assert_eq!(conversations, Some(expected as u64));
    assert_eq!(
        chunked, alone,
        "the chunks, in order, hold what one scan holds"
    );
}

/// Many writers send batches of events at once, naming the same accounts. Each writer is
/// answered with its own events' outcomes, in its order; an
/// event id sent by every writer is accepted for exactly one of them; a refused event is
/// answered to the writer that sent it; and the store holds exactly what was accepted.
pub fn concurrent_batches_are_each_answered_with_their_own_outcomes(open: Factory<'_>) {
    const WRITERS: usize = 8;
    const BATCHES: usize = 15;
    const ACCOUNTS: usize = 10;
    let store = open();
    let at = ts("2025-10-01T00:00:00Z");
    for a in 0..ACCOUNTS {
        let create = Command::CreateAccount {
            account: account(&format!("a{a}")),
            plan: "pro".into(),
            choice: Some((true, Channel::Signup)),
        };
        store.apply(at, &create, "service").unwrap();
    }
    let message = |who: &str, conversation: &str| Command::Message {
        account: account(who),
        conversation: ConversationId::parse(conversation).unwrap(),
        surface: Surface::Chat,
        role: Role::User,
        text: "hello".into(),
        incognito: false,
    };
    // Writer w's batch b: one message to each account, one to an unknown account, and one
    // whose event id every writer sends (each naming a conversation of its own).
    let batch = |w: usize, b: usize| {
        let mut events: Vec<(String, Command)> = (0..ACCOUNTS)
            .map(|a| {
                (
                    format!("e{w}-{b}-{a}"),
                    message(&format!("a{a}"), &format!("c{w}-{b}-{a}")),
                )
            })
            .collect();
        events.push((
            format!("e{w}-{b}-ghost"),
            message("ghost", &format!("g{w}-{b}")),
        ));
        events.push((
            format!("shared-{b}"),
            message(&format!("a{}", b % ACCOUNTS), &format!("s{w}-{b}")),
        ));
        events
    };
    let barrier = std::sync::Barrier::new(WRITERS);
    let answers = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for w in 0..WRITERS {
            let (store, barrier, answers) = (&store, &barrier, &answers);
            scope.spawn(move || {
                barrier.wait();
                for b in 0..BATCHES {
                    let events = batch(w, b);
                    let refs: Vec<_> = events
                        .iter()
                        .map(|(id, command)| (Some(id.as_str()), at, command))
                        .collect();
                    let outcomes = store.apply_batch(&refs, "service").unwrap();
                    answers.lock().unwrap().push((w, b, outcomes));
                }
            });
        }
    });
    let mut shared_accepted = vec![0; BATCHES];
    for (w, b, outcomes) in answers.into_inner().unwrap() {
        assert_eq!(outcomes.len(), ACCOUNTS + 2, "writer {w} batch {b}");
        for (a, outcome) in outcomes.iter().take(ACCOUNTS).enumerate() {
            assert!(
                matches!(outcome, Ok(custos_store::Applied::Accepted)),
                "writer {w} batch {b} event {a}: {outcome:?}"
            );
            let c = ConversationId::parse(&format!("c{w}-{b}-{a}")).unwrap();
            assert!(store.conversation_status(&c, at).unwrap().exists);
        }
        match &outcomes[ACCOUNTS] {
            Err(StoreError::Refused(refusal)) => assert_eq!(refusal.slug(), "unknown-account"),
            other => {
                panic!("writer {w} batch {b}: the unknown account's event was answered {other:?}")
            }
        }
        let shared = ConversationId::parse(&format!("s{w}-{b}")).unwrap();
        let exists = match store.conversation_status(&shared, at) {
            Ok(status) => status.exists,
            Err(StoreError::Refused(refusal)) => {
                assert_eq!(refusal.slug(), "unknown-conversation");
                false
            }
            Err(error) => panic!("writer {w} batch {b}: {error}"),
        };
        match &outcomes[ACCOUNTS + 1] {
            Ok(custos_store::Applied::Accepted) => {
                assert!(exists, "writer {w}: an accepted event left nothing");
                shared_accepted[b] += 1;
            }
            Ok(custos_store::Applied::Duplicate) => {
                assert!(!exists, "writer {w}: a duplicate was written")
            }
            other => panic!("writer {w} batch {b}: the shared event was answered {other:?}"),
        }
    }
    assert_eq!(
        shared_accepted,
        vec![1; BATCHES],
        "each shared id accepted exactly once"
    );
    assert_eq!(store.verify_ledger().unwrap().problem, None);
    // Every expiry the concurrent writers stored is the core's, and in the sweep's index.
    let check = store.check_retention(&mut |_| {}).unwrap();
    assert_eq!(check.different, 0, "{:?}", check.differences);
    assert!(check.checked >= (WRITERS * BATCHES * ACCOUNTS) as u64);
}
