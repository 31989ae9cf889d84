//! custos-scenario: the policy as a runnable timeline (docs/API.md §1).
//!
//! It reads a scenario file, replays its steps one by one through the store — a temporary SQLite
//! database, the same path the server takes — and writes one JSON line per query. It stops at
//! the first invalid step; lines already written stay written. It owns the file format and the
//! output format, and no rule of docs/POLICY.md: every answer comes from `custos-core`.

mod step;

use std::io::Write;
use std::path::{Path, PathBuf};

use custos_core::{Policy, PolicyError, Timestamp};
use custos_store::{Location, Store, StoreError};
use serde::Serialize;
use serde_json::Value;

pub use step::{Action, Query, Step, StepError, parse_step};

/// A scenario file, read and with its policy loaded; its steps are parsed as they are reached.
#[derive(Debug)]
pub struct Scenario {
    pub policy: Policy,
    steps: Vec<Value>,
}

/// Why a scenario did not run to its end.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("{path}: {message}")]
    NotAScenario { path: PathBuf, message: String },
    #[error("{0}")]
    Policy(#[from] PolicyError),
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Step(#[from] StepError),
    #[error("writing results: {0}")]
    Output(#[source] std::io::Error),
    #[error("the scenario's temporary store: {0}")]
    Store(#[source] StoreError),
}

impl Scenario {
    /// Reads a scenario file. A `policy` path in it is relative to the file.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.to_owned(),
            source,
        })?;
        Scenario::parse(path, &text)
    }

    /// Parses a scenario's text; `path` names it in errors and anchors a relative `policy`.
    pub fn parse(path: &Path, text: &str) -> Result<Scenario, ScenarioError> {
        let not_a_scenario = |message: String| ScenarioError::NotAScenario {
            path: path.to_owned(),
            message,
        };
        let document: Value = serde_json::from_str(text)
            .map_err(|e| not_a_scenario(format!("not a scenario: not valid JSON ({e})")))?;
        let Value::Object(mut document) = document else {
            return Err(not_a_scenario(
                "not a scenario: expected a JSON object with a `steps` list".into(),
            ));
        };
        let Some(Value::Array(steps)) = document.remove("steps") else {
            return Err(not_a_scenario(
                "not a scenario: it has no `steps` list".into(),
            ));
        };
        let policy = match document.get("policy") {
            None => Policy::bundled(),
            Some(Value::String(relative)) => {
                let policy_path = path.parent().unwrap_or(Path::new(".")).join(relative);
                let text = std::fs::read_to_string(&policy_path).map_err(|source| {
                    ScenarioError::Read {
                        path: policy_path.clone(),
                        source,
                    }
                })?;
                Policy::parse(&policy_path.display().to_string(), &text)?
            }
            Some(_) => {
                return Err(not_a_scenario(
                    "field `policy` must be a path string".into(),
                ));
            }
        };
        Ok(Scenario { policy, steps })
    }

    /// Replays every step through a fresh store in a temporary folder, writing one line per
    /// query to `out`.
    pub fn run(self, out: &mut impl Write) -> Result<(), ScenarioError> {
        let folder = tempfile::tempdir().map_err(|e| {
            ScenarioError::Store(StoreError::Io {
                path: std::env::temp_dir(),
                source: e,
            })
        })?;
        let location = Location::Sqlite {
            data: folder.path().to_owned(),
        };
        let store = Store::open(&location, self.policy).map_err(ScenarioError::Store)?;
        let mut previous: Option<Timestamp> = None;
        for (index, raw) in self.steps.iter().enumerate() {
            let step = parse_step(index, raw)?;
            let invalid = |message: String| StepError {
                index,
                label: raw
                    .get("do")
                    .or_else(|| raw.get("query"))
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                message,
            };
            if let Some(previous) = previous.filter(|previous| step.at < *previous) {
                return Err(invalid(format!(
                    "`at` {} is earlier than the step before it ({previous})",
                    step.at
                ))
                .into());
            }
            previous = Some(step.at);
            match step.action {
                Action::Do(command) => match store.apply(step.at, &command, "scenario") {
                    Ok(_) => {}
                    Err(StoreError::Refused(refusal)) => {
                        return Err(invalid(refusal.to_string()).into());
                    }
                    Err(error) => return Err(ScenarioError::Store(error)),
                },
                Action::Query(query) => {
                    let result = match answer(&store, step.at, &query) {
                        Ok(result) => result,
                        Err(StoreError::Refused(refusal)) => {
                            return Err(invalid(refusal.to_string()).into());
                        }
                        Err(error) => return Err(ScenarioError::Store(error)),
                    };
                    let line = serde_json::to_string(&ResultLine {
                        step: index,
                        result,
                    })
                    .map_err(|e| ScenarioError::Output(e.into()))?;
                    writeln!(out, "{line}").map_err(ScenarioError::Output)?;
                }
            }
        }
        out.flush().map_err(ScenarioError::Output)
    }
}

/// One output line; field order is the order API.md lists.
#[derive(Serialize)]
struct ResultLine {
    step: usize,
    result: QueryResult,
}

#[derive(Serialize)]
#[serde(untagged)]
enum QueryResult {
    Gate {
        decision: &'static str,
        reason: &'static str,
    },
    Conversation {
        exists: bool,
        visible: bool,
        retention_class: Option<&'static str>,
        expires_at: Option<String>,
        held: bool,
        eligible: bool,
        reason: &'static str,
    },
    Export {
        conversations: Vec<String>,
        messages: usize,
        feedback: usize,
    },
}

fn answer(store: &Store, at: Timestamp, query: &Query) -> Result<QueryResult, StoreError> {
    Ok(match query {
        Query::Gate(account) => {
            let gate = store.gate(account, at)?;
            QueryResult::Gate {
                decision: gate.decision.as_str(),
                reason: gate.reason.as_str(),
            }
        }
        Query::Conversation(id) => {
            let status = store.conversation_status(id, at)?;
            QueryResult::Conversation {
                exists: status.exists,
                visible: status.visible,
                retention_class: status.expiry.map(|e| e.class.as_str()),
                expires_at: status.expiry.map(|e| e.at.to_string()),
                held: status.held,
                eligible: status.eligibility.is_eligible(),
                reason: status.eligibility.as_str(),
            }
        }
        Query::Export => {
            let snapshot = store.snapshot(at)?;
            QueryResult::Export {
                messages: snapshot.included.iter().map(|c| c.messages.len()).sum(),
                feedback: snapshot.included.iter().map(|c| c.feedback.len()).sum(),
                conversations: snapshot
                    .included
                    .into_iter()
                    .map(|c| c.id.to_string())
                    .collect(),
            }
        }
    })
}
