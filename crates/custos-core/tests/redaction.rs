//! The redaction corpus: every kind found where it occurs, and near misses left alone.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a test fails loudly on a broken fixture; that is its job"
)]

use custos_core::redaction::{Counts, Redactor, might_hold_something};

/// (text, what it must become)
const POSITIVES: &[(&str, &str)] = &[
    (
        "key AKIAIOSFODNN7EXAMPLE here",
        "key [REDACTED:aws_key] here",
    ),
    ("ASIAY34FZKBOKMUTVV7A", "[REDACTED:aws_key]"),
    (
        "token ghp_1234567890abcdefghijklmnopqrstuvwxyzAB ok",
        "token [REDACTED:github_token] ok",
    ),
    (
        "github_pat_11ABCDEFG0123456789_abcdefghijklmnop",
        "[REDACTED:github_token]",
    ),
    ("xoxb-123456789012-abcdefghijkl", "[REDACTED:slack_token]"),
    ("sk_live_4eC39HqLyjWDarjtT1zdp7dc", "[REDACTED:stripe_key]"),
    ("rk_test_51H8abcdefghijklmnop", "[REDACTED:stripe_key]"),
    (
        "export OPENAI=sk-proj-abcdefghijklmnopqrstuvwx",
        "export OPENAI=[REDACTED:api_key]",
    ),
    (
        "This config has my key sk-live-51HxQ2bC9dT0Ez7 in it",
        "This config has my key [REDACTED:api_key] in it",
    ),
    (
        "AIzaSyA1234567890abcdefghijklmnopqrstuv",
        "[REDACTED:google_key]",
    ),
    (
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\nabc\n-----END RSA PRIVATE KEY----- done",
        "[REDACTED:private_key] done",
    ),
    (
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk\n-----END OPENSSH PRIVATE KEY-----",
        "[REDACTED:private_key]",
    ),
    (
        "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        "Bearer [REDACTED:jwt]",
    ),
    ("password=hunter2!", "password=[REDACTED:secret]"),
    (
        "API_KEY: \"abcd1234efgh\"",
        "API_KEY: \"[REDACTED:secret]\"",
    ),
    (
        "db_password = 's3cr3t-value'",
        "db_password = '[REDACTED:secret]'",
    ),
    (
        "My email is jane.doe@example.com, thanks",
        "My email is [REDACTED:email], thanks",
    ),
    (
        "write to a.b+tag@mail.example.co.uk",
        "write to [REDACTED:email]",
    ),
    (
        "Call me at +1 415 555 0134 if",
        "Call me at [REDACTED:phone] if",
    ),
    ("tel 030-1234-5678", "tel [REDACTED:phone]"),
    (
        "card 4111 1111 1111 1111 charged",
        "card [REDACTED:card] charged",
    ),
    ("5500-0000-0000-0004", "[REDACTED:card]"),
    ("378282246310005", "[REDACTED:card]"),
    (
        "from 192.168.1.20 and 10.0.0.1",
        "from [REDACTED:ip] and [REDACTED:ip]",
    ),
];

/// Texts that look close to a secret or personal datum but are not one.
const NEAR_MISSES: &[&str] = &[
    "Can you help me plan a week of vegetarian dinners?",
    "AKIA123 is too short to be a key",
    "ghp_short",
    "sk-abc is not a key",
    "sk_live_short",
    "The date is 2025-10-01 and the time 12:30:45.",
    "version 1.2.3 of the library, release 2.10",
    "an address like 999.1.1.1 is not an IP, nor is 1.2.3",
    "4111 1111 1111 1112 fails the Luhn check",
    "order number 12345678",
    "user@localhost is not a full address",
    "the password field is required",
    "eyJhbGciOiJIUzI1NiJ9 alone is not a token",
    "-----BEGIN PUBLIC KEY----- is public",
    "ISBN 978-3-16-148410-0",
];

#[test]
fn every_kind_is_found_and_replaced_by_its_placeholder() {
    let redactor = Redactor::new();
    let mut failures = Vec::new();
    let mut counts = Counts::new();
    for (text, expected) in POSITIVES {
        let got = redactor.redact(text, &mut counts);
        if got != *expected {
            failures.push(format!("{text:?}\n   got {got:?}\n  want {expected:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    for kind in [
        "aws_key",
        "github_token",
        "slack_token",
        "stripe_key",
        "api_key",
        "google_key",
        "private_key",
        "jwt",
        "secret",
        "email",
        "phone",
        "card",
        "ip",
    ] {
        assert!(
            counts.get(kind).copied().unwrap_or(0) > 0,
            "{kind} never counted"
        );
    }
    assert_eq!(counts["ip"], 2);
}

#[test]
fn near_misses_are_left_as_they_are() {
    let redactor = Redactor::new();
    let mut counts = Counts::new();
    let changed: Vec<String> = NEAR_MISSES
        .iter()
        .filter_map(|text| {
            let got = redactor.redact(text, &mut counts);
            (got != *text).then(|| format!("{text:?} became {got:?}"))
        })
        .collect();
    assert!(changed.is_empty(), "{}", changed.join("\n"));
    assert!(counts.is_empty(), "{counts:?}");
}

#[test]
fn a_text_without_anything_to_redact_is_not_copied() {
    let redactor = Redactor::new();
    let mut counts = Counts::new();
    let text = "Explain the difference between TCP and UDP.";
    assert!(matches!(
        redactor.redact(text, &mut counts),
        std::borrow::Cow::Borrowed(_)
    ));
}

/// The prefilter never rules out a text a pattern would find: every positive and near miss of
/// the corpus, and 200,000 random texts over an alphabet rich in the patterns' characters,
/// each checked against the patterns themselves.
#[test]
fn the_prefilter_rules_out_only_texts_no_pattern_finds() {
    let redactor = Redactor::new();
    let mut texts: Vec<String> = POSITIVES.iter().map(|(t, _)| (*t).to_owned()).collect();
    texts.extend(NEAR_MISSES.iter().map(|t| (*t).to_owned()));
    // A small xorshift generator: the test is the same on every run.
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let pieces = [
        "AKIA",
        "ASIA",
        "AIza",
        "xox",
        "b-",
        "sk",
        "-",
        "_",
        "live",
        "proj",
        "eyJ",
        "hbGciOi",
        ".",
        "-----BEGIN RSA PRIVATE KEY-----",
        "-----END RSA PRIVATE KEY-----",
        "@",
        "ex",
        "ample.com",
        " ",
        "password",
        "=",
        ":",
        "1",
        "4111",
        "(",
        ")",
        "+",
        "ghp",
        "gh",
        "p_",
        "ABCDEFGHIJKLMNOP",
        "abcdefghijklmnopqrstuvwxyz",
        "Q",
        "z",
        "é",
        "\n",
    ];
    for _ in 0..200_000 {
        let len = 1 + next() % 12;
        let text: String = (0..len)
            .map(|_| pieces[(next() % pieces.len() as u64) as usize])
            .collect();
        texts.push(text);
    }
    let mut ruled_out = 0;
    for text in &texts {
        if might_hold_something(text) {
            continue;
        }
        ruled_out += 1;
        assert!(
            !redactor.matches_any(text),
            "the prefilter ruled out `{text}`, which a pattern matches"
        );
    }
    assert!(
        ruled_out > 1_000,
        "the random texts must exercise the prefilter: {ruled_out}"
    );
}

mod properties {
    use custos_core::redaction::{Counts, Redactor};
    use proptest::prelude::*;

    /// Values that must never survive redaction, one of each kind.
    const VALUES: &[&str] = &[
        "jane.doe@example.com",
        "+1 415 555 0134",
        "+44 20 7946 0958",
        "030 1234 5678",
        "AKIAIOSFODNN7EXAMPLE",
        "ghp_1234567890abcdefghijklmnopqrstuvwxyzAB",
        "4111 1111 1111 1111",
        "DE89 3704 0044 0532 0130 00",
        "123-45-6789",
        "10.0.0.12",
        "2001:db8::8a2e:370:7334",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    ];

    /// One redactor for every case: building one compiles every pattern.
    fn redactor() -> &'static Redactor {
        static REDACTOR: std::sync::OnceLock<Redactor> = std::sync::OnceLock::new();
        REDACTOR.get_or_init(Redactor::new)
    }

    /// Prose with nothing to redact: letters, spaces and punctuation, no digit, `@`, `:`,
    /// `=` or `_`.
    fn prose() -> impl Strategy<Value = String> {
        proptest::string::string_regex("[a-zA-Z ,.!?'()\\n]{0,80}").expect("a valid pattern")
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

        /// A text with nothing to redact comes back byte for byte, and is not copied.
        #[test]
        fn a_text_with_nothing_to_redact_comes_back_as_it_is(text in prose()) {
            let mut counts = Counts::new();
            let redacted = redactor().redact(&text, &mut counts);
            prop_assert!(matches!(redacted, std::borrow::Cow::Borrowed(_)));
            prop_assert_eq!(redacted.as_ref(), text.as_str());
            prop_assert!(counts.is_empty());
        }

        /// Whatever stands around it, a value of every kind is gone after redaction; and a
        /// redacted text, redacted again, stays as it is.
        #[test]
        fn a_redacted_text_holds_no_value_and_redacting_it_again_changes_nothing(
            before in prose(),
            value in proptest::sample::select(VALUES),
            after in prose(),
        ) {
            let text = format!("{before} {value} {after}");
            let redactor = redactor();
            let mut counts = Counts::new();
            let once = redactor.redact(&text, &mut counts).into_owned();
            prop_assert!(!once.contains(value), "{text:?} became {once:?}");
            let twice = redactor.redact(&once, &mut counts).into_owned();
            prop_assert_eq!(&twice, &once);
        }
    }
}

#[path = "redaction-corpus/measure.rs"]
mod measure;

/// On the labeled corpus (sources in its README), every kind is found at the goal: 95% of its
/// samples lose every labeled value. (The goal for look-alikes, at most 5% changed, is not met
/// yet; the figure is printed.)
#[test]
fn every_kind_of_the_corpus_is_found_at_the_goal() {
    let measured = measure::measure(&measure::corpus_path(), &Redactor::new()).unwrap();
    assert!(
        measured.positives.len() >= 9,
        "{:?}",
        measured.positives.keys()
    );
    let below: Vec<String> = measured
        .positives
        .iter()
        .filter(|(_, (samples, found))| measure::percent(*found, *samples) < 95.0)
        .map(|(kind, (samples, found))| format!("{kind}: {found} of {samples}"))
        .collect();
    assert!(below.is_empty(), "recall below 95%: {below:?}");
    let (all, kept) = measured
        .look_alikes
        .values()
        .fold((0, 0), |(a, k), (samples, kept)| (a + samples, k + kept));
    println!(
        "look-alikes changed: {:.1}% of {all}",
        measure::percent(all - kept, all)
    );
}

/// The numbering plans are shared by every thread and compiled region by region at first use:
/// many threads checking numbers of many regions at once are answered as one thread alone is.
#[test]
fn phone_numbers_checked_by_many_threads_at_once_are_answered_as_by_one() {
    const NUMBERS: &[&str] = &[
        "+1 415 555 0134",
        "+44 20 7946 0958",
        "+49 30 1234567",
        "+33 1 42 68 53 00",
        "+90 532 123 45 67",
        "+81 3-1234-5678",
        "+61 2 9876 5432",
        "+55 11 91234-5678",
        "+91 98765 43210",
        "+27 21 123 4567",
        "+1 242 359 1234",
        "+1 876 555 0123",
        "+7 495 123-45-67",
        "+86 10 1234 5678",
        "+999 123 456 789",
        "+44 12",
    ];
    let redactor = Redactor::new();
    let texts: Vec<String> = NUMBERS.iter().map(|n| format!("call {n} now")).collect();
    let barrier = std::sync::Barrier::new(8);
    let answers: Vec<Vec<String>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..8)
            .map(|worker| {
                let (redactor, texts, barrier) = (&redactor, &texts, &barrier);
                scope.spawn(move || {
                    barrier.wait();
                    // Each thread starts at another number, so that regions are first met by
                    // different threads at once.
                    (0..texts.len())
                        .map(|i| {
                            let text = &texts[(i + worker) % texts.len()];
                            redactor.redact(text, &mut Counts::new()).into_owned()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let alone: Vec<String> = texts
        .iter()
        .map(|text| redactor.redact(text, &mut Counts::new()).into_owned())
        .collect();
    assert_eq!(
        alone
            .iter()
            .filter(|t| t.contains("[REDACTED:phone]"))
            .count(),
        14,
        "{alone:?}"
    );
    for (worker, answer) in answers.iter().enumerate() {
        for (i, redacted) in answer.iter().enumerate() {
            assert_eq!(
                redacted,
                &alone[(i + worker) % texts.len()],
                "thread {worker}"
            );
        }
    }
}
