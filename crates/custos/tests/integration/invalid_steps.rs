//! Each way a step can be invalid (docs/API.md §1) stops the run with exit 2, names the step on
//! stderr, keeps the lines already printed, and runs nothing after it.

use serde_json::{Value, json};

use crate::support::{run_scenario, run_scenario_text, stderr, stdout};

const T0: &str = "2025-07-01T00:00:00Z";

/// A consumer account `a` (allowed) and a business account `b`, created before `effective`,
/// and a conversation `c` of `a`; then a gate query so that a printed line precedes the case.
fn prelude() -> Vec<Value> {
    vec![
        json!({"at": T0, "do": "create_account", "account": "a", "plan": "pro", "allowed": true}),
        json!({"at": T0, "do": "create_account", "account": "b", "plan": "team"}),
        json!({"at": T0, "do": "message", "account": "a", "conversation": "c"}),
        json!({"at": T0, "query": "gate", "account": "a"}),
    ]
}

const PRELUDE_OUTPUT: &str =
    "{\"step\":3,\"result\":{\"decision\":\"allow\",\"reason\":\"decided\"}}\n";

/// Runs prelude + `setup` + `invalid` + a trailing query that must never run.
fn assert_invalid(name: &str, setup: Vec<Value>, invalid: Value, expected_message: &str) {
    let mut steps = prelude();
    steps.extend(setup);
    let index = steps.len();
    let label = invalid
        .get("do")
        .or_else(|| invalid.get("query"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    steps.push(invalid);
    steps.push(json!({"at": "2030-01-01T00:00:00Z", "query": "export"}));
    let output = run_scenario(&json!({"steps": steps}), &[]);
    let (out, err) = (stdout(&output), stderr(&output));
    assert_eq!(
        output.status.code(),
        Some(2),
        "{name}: exit status; stderr: {err}"
    );
    let prefix = match label {
        Some(label) => format!("step {index} ({label}): "),
        None => format!("step {index}: "),
    };
    assert!(
        err.contains(&prefix),
        "{name}: stderr should name `{prefix}`: {err}"
    );
    assert!(
        err.contains(expected_message),
        "{name}: stderr should say `{expected_message}`: {err}"
    );
    assert!(
        out.starts_with(PRELUDE_OUTPUT),
        "{name}: earlier results must stay printed: {out}"
    );
    assert!(
        !out.contains(&format!("\"step\":{}", index + 1)),
        "{name}: a later step ran: {out}"
    );
}

#[test]
fn invalid_steps_stop_the_run_and_name_the_step() {
    let at = |t: &str, rest: Value| {
        let mut step = rest;
        step["at"] = json!(t);
        step
    };
    let t = "2025-10-01T00:00:00Z";
    let cases: Vec<(&str, Vec<Value>, Value, &str)> = vec![
        (
            "time going backwards",
            vec![],
            at("2025-06-30T23:59:59Z", json!({"query": "export"})),
            "earlier than the step before",
        ),
        (
            "neither do nor query",
            vec![],
            json!({"at": t, "account": "a"}),
            "needs `do` or `query`",
        ),
        (
            "missing field",
            vec![],
            at(t, json!({"do": "choose", "account": "a"})),
            "field `allowed` is missing",
        ),
        (
            "wrong JSON type",
            vec![],
            at(t, json!({"do": "choose", "account": "a", "allowed": 1})),
            "must be a boolean",
        ),
        (
            "value outside its list",
            vec![],
            at(
                t,
                json!({"do": "feedback", "account": "a", "conversation": "c", "rating": "meh"}),
            ),
            "must be one of up, down",
        ),
        (
            "id syntax",
            vec![],
            at(
                t,
                json!({"do": "message", "account": "a", "conversation": "c 2"}),
            ),
            "not a valid conversation id",
        ),
        (
            "bad time",
            vec![],
            json!({"at": "2025-12-31T23:59:60Z", "query": "export"}),
            "second 60",
        ),
        (
            "unknown account",
            vec![],
            at(t, json!({"query": "gate", "account": "zed"})),
            "account `zed` does not exist",
        ),
        (
            "unknown conversation",
            vec![],
            at(t, json!({"query": "conversation", "conversation": "nope"})),
            "conversation `nope` does not exist",
        ),
        (
            "unknown hold",
            vec![],
            at(t, json!({"do": "release_hold", "hold": "h9"})),
            "hold `h9` is not active",
        ),
        (
            "erased account named",
            vec![at(t, json!({"do": "erase_account", "account": "a"}))],
            at(t, json!({"do": "choose", "account": "a", "allowed": false})),
            "account `a` was erased",
        ),
        (
            "gate of an erased account",
            vec![at(t, json!({"do": "erase_account", "account": "a"}))],
            at(t, json!({"query": "gate", "account": "a"})),
            "was erased",
        ),
        (
            "erasing twice",
            vec![at(t, json!({"do": "erase_account", "account": "a"}))],
            at(t, json!({"do": "erase_account", "account": "a"})),
            "was erased",
        ),
        (
            "unknown plan at creation",
            vec![],
            at(
                t,
                json!({"do": "create_account", "account": "n", "plan": "platinum", "allowed": true}),
            ),
            "`platinum` is not a plan",
        ),
        (
            "unknown plan on change",
            vec![],
            at(
                t,
                json!({"do": "change_plan", "account": "a", "plan": "Pro"}),
            ),
            "`Pro` is not a plan",
        ),
        (
            "account exists",
            vec![],
            at(
                t,
                json!({"do": "create_account", "account": "a", "plan": "pro", "allowed": true}),
            ),
            "account `a` exists or existed",
        ),
        (
            "account existed",
            vec![at(t, json!({"do": "erase_account", "account": "a"}))],
            at(
                t,
                json!({"do": "create_account", "account": "a", "plan": "pro", "allowed": true}),
            ),
            "exists or existed",
        ),
        (
            "signup at effective without a choice",
            vec![],
            json!({"at": "2025-08-28T00:00:00Z", "do": "create_account", "account": "n", "plan": "free"}),
            "must come with a training choice",
        ),
        (
            "choice on a business plan",
            vec![],
            at(t, json!({"do": "choose", "account": "b", "allowed": true})),
            "business plan `team`",
        ),
        (
            "signup choice on a business plan",
            vec![],
            at(
                t,
                json!({"do": "create_account", "account": "n", "plan": "enterprise", "allowed": false}),
            ),
            "business plan `enterprise`",
        ),
        (
            "message to another's conversation",
            vec![],
            at(
                t,
                json!({"do": "message", "account": "b", "conversation": "c"}),
            ),
            "belongs to another account",
        ),
        (
            "message to a deleted conversation",
            vec![at(
                t,
                json!({"do": "delete_conversation", "conversation": "c"}),
            )],
            at(
                t,
                json!({"do": "message", "account": "a", "conversation": "c"}),
            ),
            "was deleted",
        ),
        (
            "message to a purged conversation",
            vec![
                at(t, json!({"do": "delete_conversation", "conversation": "c"})),
                at("2025-11-01T00:00:00Z", json!({"do": "sweep"})),
            ],
            at(
                "2025-11-01T00:00:00Z",
                json!({"do": "message", "account": "a", "conversation": "c"}),
            ),
            "was purged",
        ),
        (
            "message to an expired conversation",
            vec![at(
                t,
                json!({"do": "choose", "account": "a", "allowed": false}),
            )],
            at(
                "2025-10-31T00:00:00Z",
                json!({"do": "message", "account": "a", "conversation": "c"}),
            ),
            "expired at 2025-10-31T00:00:00.000Z",
        ),
        (
            "feedback before the conversation exists",
            vec![],
            at(
                t,
                json!({"do": "feedback", "account": "a", "conversation": "new", "rating": "up"}),
            ),
            "conversation `new` does not exist",
        ),
        (
            "feedback to another's conversation",
            vec![],
            at(
                t,
                json!({"do": "feedback", "account": "b", "conversation": "c", "rating": "up"}),
            ),
            "belongs to another account",
        ),
        (
            "deleting twice",
            vec![at(
                t,
                json!({"do": "delete_conversation", "conversation": "c"}),
            )],
            at(t, json!({"do": "delete_conversation", "conversation": "c"})),
            "was deleted",
        ),
        (
            "deleting a purged conversation",
            vec![
                at(t, json!({"do": "erase_account", "account": "a"})),
                at(t, json!({"do": "sweep"})),
            ],
            at(t, json!({"do": "delete_conversation", "conversation": "c"})),
            "was purged",
        ),
        (
            "hold naming both",
            vec![],
            at(
                t,
                json!({"do": "legal_hold", "hold": "h", "account": "a", "conversation": "c"}),
            ),
            "not both",
        ),
        (
            "hold naming neither",
            vec![],
            at(t, json!({"do": "legal_hold", "hold": "h"})),
            "needs `account` or `conversation`",
        ),
        (
            "hold on an unknown conversation",
            vec![],
            at(
                t,
                json!({"do": "legal_hold", "hold": "h", "conversation": "nope"}),
            ),
            "does not exist",
        ),
        (
            "hold id reused",
            vec![at(
                t,
                json!({"do": "legal_hold", "hold": "h", "account": "a"}),
            )],
            at(
                t,
                json!({"do": "legal_hold", "hold": "h", "conversation": "c"}),
            ),
            "already used",
        ),
        (
            "released hold id reused",
            vec![
                at(t, json!({"do": "legal_hold", "hold": "h", "account": "a"})),
                at(t, json!({"do": "release_hold", "hold": "h"})),
            ],
            at(t, json!({"do": "legal_hold", "hold": "h", "account": "a"})),
            "already used",
        ),
        (
            "releasing twice",
            vec![
                at(t, json!({"do": "legal_hold", "hold": "h", "account": "a"})),
                at(t, json!({"do": "release_hold", "hold": "h"})),
            ],
            at(t, json!({"do": "release_hold", "hold": "h"})),
            "not active",
        ),
    ];
    for (name, setup, invalid, message) in cases {
        assert_invalid(name, setup, invalid, message);
    }
}

#[test]
fn a_signup_just_before_effective_needs_no_choice() {
    let steps = json!({"steps": [
        {"at": "2025-08-27T23:59:59.999Z", "do": "create_account", "account": "n", "plan": "free"},
        {"at": "2025-08-28T00:00:00Z", "query": "gate", "account": "n"}
    ]});
    let output = run_scenario(&steps, &[]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(
        stdout(&output),
        "{\"step\":1,\"result\":{\"decision\":\"prompt\",\"reason\":\"choice_pending\"}}\n"
    );
}

#[test]
fn files_that_are_not_scenarios_exit_2_naming_the_file() {
    for (text, message) in [
        ("not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ("{\"about\": \"x\"}", "no `steps` list"),
        ("{\"steps\": {}}", "no `steps` list"),
        ("{\"steps\": [], \"policy\": 7}", "`policy` must be a path"),
        ("", "not valid JSON"),
    ] {
        let (output, path, _folder) = run_scenario_text(text);
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{text:?}: {err}");
        assert!(
            err.contains(&path.display().to_string()),
            "{text:?} should name the file: {err}"
        );
        assert!(
            err.contains(message),
            "{text:?} should say {message}: {err}"
        );
        assert!(stdout(&output).is_empty());
    }
}

#[test]
fn a_missing_scenario_file_exits_2() {
    let output = crate::support::custos()
        .args(["scenario", "run", "/nonexistent/x.json"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("/nonexistent/x.json"));
}

#[test]
fn a_scenario_policy_is_loaded_relative_to_the_file_and_checked() {
    let bad_policy = custos_policy_text().replace(
        "choose_by = 2025-09-29T00:00:00Z",
        "choose_by = 2025-01-01T00:00:00Z",
    );
    let output = run_scenario(
        &json!({"policy": "p.toml", "steps": []}),
        &[("p.toml", &bad_policy)],
    );
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{err}");
    assert!(
        err.contains("p.toml:") && err.contains("before effective"),
        "{err}"
    );

    // A policy with a later deadline changes the gate: the same query prompts instead of blocking.
    let later = custos_policy_text().replace(
        "choose_by = 2025-09-29T00:00:00Z",
        "choose_by = 2026-01-01T00:00:00Z",
    );
    let steps = json!({"policy": "p.toml", "steps": [
        {"at": T0, "do": "create_account", "account": "a", "plan": "pro"},
        {"at": "2025-12-01T00:00:00Z", "query": "gate", "account": "a"}
    ]});
    let output = run_scenario(&steps, &[("p.toml", &later)]);
    assert_eq!(
        stdout(&output),
        "{\"step\":1,\"result\":{\"decision\":\"prompt\",\"reason\":\"choice_pending\"}}\n"
    );
}

fn custos_policy_text() -> String {
    std::fs::read_to_string(crate::support::repo_root().join("policies/consumer-terms-2025.toml"))
        .unwrap()
}
