//! Every scenario fixture replayed over HTTP against a real `custos serve` with a manual clock:
//! each `do` step becomes the request a product, a user or an admin would send, each query the
//! read that answers it, and the answers must equal `custos scenario run`'s line for line.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::http::Server;

/// Fixtures whose own policy file the server (which runs the bundled policy) can't take.
const OWN_POLICY: &[&str] = &["content-covered-only"];

#[test]
fn every_scenario_gives_the_same_answers_over_http_as_the_scenario_runner() {
    let folders = [
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios"),
        crate::support::repo_root().join("examples"),
    ];
    let mut replayed = Vec::new();
    let mut failures = Vec::new();
    for folder in &folders {
        let mut fixtures: Vec<PathBuf> = std::fs::read_dir(folder)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|e| e == "json"))
            .collect();
        fixtures.sort();
        for fixture in fixtures {
            let stem = fixture.file_stem().unwrap().to_str().unwrap().to_owned();
            let scenario: Value =
                serde_json::from_str(&std::fs::read_to_string(&fixture).unwrap()).unwrap();
            if scenario.get("policy").is_some() {
                assert!(OWN_POLICY.contains(&stem.as_str()), "{stem} names a policy");
                continue;
            }
            let expected: Vec<Value> =
                std::fs::read_to_string(folder.join(format!("{stem}.expected.jsonl")))
                    .unwrap()
                    .lines()
                    .map(|line| serde_json::from_str(line).unwrap())
                    .collect();
            let stops = folder.join(format!("{stem}.expected.err")).exists();
            if let Err(failure) = replay(&scenario, &expected, stops) {
                failures.push(format!("{stem}: {failure}"));
            }
            replayed.push(stem);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // All five shared scenarios are among them, and nothing else was left out.
    for shared in [
        "deadline-and-signup",
        "delete-and-withdraw",
        "opt-in-after-notice",
        "signup-without-choice",
        "withdrawal-is-permanent-until-resumed",
    ] {
        assert!(
            replayed.iter().any(|s| s == shared),
            "{shared} not replayed"
        );
    }
    assert!(replayed.len() >= 14, "replayed only {replayed:?}");
}

/// Replays one scenario; `stops` says the runner stops at an invalid step, which over HTTP
/// must be the first request refused with a 4xx.
fn replay(scenario: &Value, expected: &[Value], stops: bool) -> Result<(), String> {
    let steps = scenario["steps"].as_array().unwrap();
    let start = steps[0]["at"].as_str().unwrap();
    let server = Server::start(start);
    let mut now = start.to_owned();
    let mut answers = Vec::new();
    let mut event = 0;
    for (index, step) in steps.iter().enumerate() {
        let at = step["at"].as_str().unwrap();
        if at != now {
            server.set_clock(at);
            now = at.to_owned();
        }
        let field = |name: &str| step[name].as_str().unwrap_or_default().to_owned();
        let (method, path, token, body): (&str, String, &str, Option<Value>) = match (
            step["do"].as_str(),
            step["query"].as_str(),
        ) {
            (Some("create_account"), _) => {
                let mut body = json!({"id": field("account"), "plan": field("plan")});
                if let Some(allowed) = step.get("allowed") {
                    let channel = step["channel"].as_str().unwrap_or("signup");
                    body["choice"] =
                        json!({"allowed": allowed, "channel": channel, "notice": NOTICE});
                }
                ("POST", "/v1/accounts".into(), "service", Some(body))
            }
            (Some("choose"), _) => (
                "PUT",
                format!("/v1/accounts/{}/training-preference", field("account")),
                "service",
                Some(json!({"allowed": step["allowed"],
                        "channel": step["channel"].as_str().unwrap_or("settings"), "notice": NOTICE})),
            ),
            (Some("notice_shown"), _) => (
                "POST",
                format!("/v1/accounts/{}/notice-shown", field("account")),
                "service",
                None,
            ),
            (Some("change_plan"), _) => (
                "PATCH",
                format!("/v1/accounts/{}", field("account")),
                "service",
                Some(json!({"plan": field("plan")})),
            ),
            (Some(kind @ ("message" | "feedback")), _) => {
                event += 1;
                let mut body = step.as_object().unwrap().clone();
                body.remove("do");
                body.insert("type".into(), json!(kind));
                body.insert("id".into(), json!(format!("event-{event}")));
                let batch = json!({"events": [body]});
                let reply = server.call(
                    "POST",
                    "/v1/events",
                    Some("service"),
                    Some(&batch.to_string()),
                );
                let result = &reply.body["results"][0];
                if reply.status != 200 || result["status"] != "accepted" {
                    if stops {
                        break;
                    }
                    return Err(format!("step {index}: {} {}", reply.status, reply.body));
                }
                continue;
            }
            (Some("delete_conversation"), _) => (
                "DELETE",
                format!("/v1/conversations/{}", field("conversation")),
                "service",
                None,
            ),
            (Some("legal_hold"), _) => {
                let mut body = json!({"id": field("hold"), "reason": "scenario replay"});
                for target in ["account", "conversation"] {
                    if let Some(id) = step.get(target) {
                        body[target] = id.clone();
                    }
                }
                ("POST", "/v1/legal-holds".into(), "admin", Some(body))
            }
            (Some("release_hold"), _) => (
                "DELETE",
                format!("/v1/legal-holds/{}", field("hold")),
                "admin",
                None,
            ),
            (Some("erase_account"), _) => (
                "DELETE",
                format!("/v1/accounts/{}", field("account")),
                "admin",
                None,
            ),
            (Some("sweep"), _) => ("POST", "/v1/retention/sweeps".into(), "admin", None),
            (_, Some("gate")) => (
                "GET",
                format!("/v1/accounts/{}/gate", field("account")),
                "service",
                None,
            ),
            (_, Some("conversation")) => (
                "GET",
                format!("/v1/conversations/{}", field("conversation")),
                "auditor",
                None,
            ),
            (_, Some("export")) => ("GET", "/v1/exports/preview".into(), "trainer", None),
            other => return Err(format!("step {index}: no HTTP form for {other:?}")),
        };
        let body = body.map(|b| b.to_string());
        let reply = server.call(method, &path, Some(token), body.as_deref());
        if !(200..300).contains(&reply.status) {
            if stops && (400..500).contains(&reply.status) {
                break;
            }
            return Err(format!(
                "step {index}: {method} {path}: {} {}",
                reply.status, reply.body
            ));
        }
        let result = match step["query"].as_str() {
            Some("gate") => {
                json!({"decision": reply.body["decision"], "reason": reply.body["reason"]})
            }
            Some("conversation") => {
                let mut fields = reply.body.as_object().unwrap().clone();
                fields.remove("id");
                Value::Object(fields)
            }
            Some("export") => json!({"conversations": reply.body["conversations"],
                "messages": reply.body["messages"], "feedback": reply.body["feedback"]}),
            _ => continue,
        };
        answers.push(json!({"step": index, "result": result}));
    }
    if answers != expected {
        return Err(format!(
            "over HTTP:\n{}\nscenario run:\n{}",
            lines(&answers),
            lines(expected)
        ));
    }
    Ok(())
}

const NOTICE: &str = "consumer-terms-2025";

fn lines(values: &[Value]) -> String {
    values
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}
