//! Every parser of outside text refuses bad input with an error and never panics; what it
//! accepts prints back to the same value.

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "a test fails loudly on a broken fixture; that is its job"
)]

use custos_core::{AccountId, Duration, Policy, Timestamp};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    #[test]
    fn timestamps_parse_or_refuse_and_round_trip(text in "([0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,12})?([Zz]|[+-][0-9]{2}:[0-9]{2})?)|.{0,40}") {
        if let Ok(at) = Timestamp::parse(&text) {
            let printed = at.to_string();
            prop_assert_eq!(Timestamp::parse(&printed).unwrap(), at);
            prop_assert!(printed.ends_with('Z') && printed.len() == 24);
        }
    }

    #[test]
    fn milliseconds_round_trip_through_text(millis in Timestamp::MIN.unix_millis()..=Timestamp::MAX.unix_millis()) {
        let at = Timestamp::from_unix_millis(millis).unwrap();
        prop_assert_eq!(Timestamp::parse(&at.to_string()).unwrap(), at);
    }

    #[test]
    fn durations_parse_or_refuse_and_round_trip(text in "[0-9]{0,12}[dymh]?|.{0,10}") {
        if let Ok(duration) = Duration::parse(&text) {
            prop_assert_eq!(Duration::parse(&duration.to_string()).unwrap(), duration);
        }
    }

    #[test]
    fn ids_accept_exactly_their_alphabet(text in ".{0,10}|[A-Za-z0-9._:@-]{1,130}") {
        let valid = (1..=128).contains(&text.len())
            && text.bytes().all(|b| b.is_ascii_alphanumeric() || b".:_@-".contains(&b));
        prop_assert_eq!(AccountId::parse(&text).is_ok(), valid);
    }

    #[test]
    fn an_edited_policy_parses_or_points_inside_the_file(at in 0usize..3000, cut in 0usize..40, insert in ".{0,8}") {
        let original = Policy::bundled_text();
        let mut start = at.min(original.len());
        while !original.is_char_boundary(start) { start -= 1; }
        let mut end = (start + cut).min(original.len());
        while !original.is_char_boundary(end) { end -= 1; }
        let text = format!("{}{insert}{}", &original[..start], &original[end..]);
        if let Err(error) = Policy::parse("edited.toml", &text) {
            let lines = text.lines().count() + 1;
            prop_assert!((1..=lines).contains(&error.line), "{error}");
            prop_assert!(error.column >= 1, "{error}");
            prop_assert!(!error.message.is_empty());
        }
    }
}
