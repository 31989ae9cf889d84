//! Whatever a scenario file holds, the runner never panics: it prints valid JSON lines for the
//! queries it reached and stops with an error that names a real step.

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "a test fails loudly on a broken fixture; that is its job"
)]

use std::path::Path;

use custos_scenario::{Scenario, ScenarioError};
use proptest::prelude::*;
use serde_json::{Value, json};

/// A field value: usually of the right shape, sometimes of every other JSON type.
fn value(valid: Vec<&'static str>) -> impl Strategy<Value = Value> {
    prop_oneof![
        6 => prop::sample::select(valid).prop_map(Value::from),
        1 => any::<bool>().prop_map(Value::from),
        1 => any::<i64>().prop_map(Value::from),
        1 => Just(Value::Null),
        1 => ".{0,12}".prop_map(Value::from),
        1 => Just(json!([])),
    ]
}

fn step() -> impl Strategy<Value = Value> {
    let times = vec![
        "2025-07-01T00:00:00Z",
        "2025-08-28T00:00:00Z",
        "2025-10-01T00:00:00+02:00",
        "2025-12-31T23:59:60Z",
        "2031-01-01T00:00:00Z",
        "2025-10-01",
    ];
    let verbs = vec![
        "create_account",
        "choose",
        "notice_shown",
        "change_plan",
        "message",
        "feedback",
        "delete_conversation",
        "legal_hold",
        "release_hold",
        "erase_account",
        "sweep",
        "dance",
    ];
    let queries = vec!["gate", "conversation", "export", "stats"];
    let fields: Vec<(&'static str, Vec<&'static str>)> = vec![
        ("account", vec!["a", "b", "a b"]),
        ("conversation", vec!["c1", "c2", ""]),
        ("hold", vec!["h1", "h2"]),
        ("plan", vec!["free", "pro", "team", "platinum"]),
        ("channel", vec!["signup", "notice", "settings", "email"]),
        ("surface", vec!["chat", "code", "web"]),
        ("role", vec!["user", "assistant", "system"]),
        ("rating", vec!["up", "down", "meh"]),
        ("text", vec!["hello", "key sk-123"]),
        ("comment", vec!["nice"]),
    ];
    let optional_fields: Vec<_> = fields
        .into_iter()
        .map(|(name, valid)| prop::option::weighted(0.5, value(valid)).prop_map(move |v| (name, v)))
        .collect();
    (
        prop::option::weighted(0.97, value(times)),
        prop::option::weighted(0.8, value(verbs)),
        prop::option::weighted(0.25, value(queries)),
        prop::option::weighted(0.5, any::<bool>()),
        prop::option::weighted(0.1, any::<bool>()),
        optional_fields,
    )
        .prop_map(|(at, verb, query, allowed, incognito, fields)| {
            let mut step = serde_json::Map::new();
            let mut put = |k: &str, v: Option<Value>| {
                if let Some(v) = v {
                    step.insert(k.to_owned(), v);
                }
            };
            put("at", at);
            put("do", verb);
            put("query", query);
            put("allowed", allowed.map(Value::from));
            put("incognito", incognito.map(Value::from));
            for (name, v) in fields {
                put(name, v);
            }
            Value::Object(step)
        })
}

fn step_of(line: &str) -> usize {
    let parsed: Value = serde_json::from_str(line).unwrap();
    usize::try_from(parsed["step"].as_u64().unwrap()).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn any_scenario_runs_or_stops_at_a_named_step_without_panicking(
        steps in prop::collection::vec(step(), 0..25),
    ) {
        let text = serde_json::to_string(&json!({"steps": steps})).unwrap();
        let scenario = Scenario::parse(Path::new("random.json"), &text).unwrap();
        let mut out = Vec::new();
        let result = scenario.run(&mut out);
        let printed = String::from_utf8(out).unwrap();
        for line in printed.lines() {
            prop_assert!(steps[step_of(line)].get("query").is_some(), "{line}");
        }
        match result {
            Ok(()) => {}
            Err(ScenarioError::Step(error)) => {
                prop_assert!(error.index < steps.len());
                prop_assert!(
                    printed.lines().all(|line| step_of(line) < error.index),
                    "a result was printed at or after the invalid step"
                );
            }
            Err(other) => prop_assert!(false, "unexpected error: {other}"),
        }
    }

    #[test]
    fn any_text_is_a_scenario_or_a_clear_error_naming_the_file(text in ".{0,64}") {
        if let Err(error) = Scenario::parse(Path::new("random.json"), &text) {
            prop_assert!(error.to_string().starts_with("random.json: "), "{error}");
        }
    }
}
