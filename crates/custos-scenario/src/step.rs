//! One step of a scenario file: raw JSON → a typed [`Step`], or a [`StepError`] that says which
//! field is wrong and why.

use custos_core::{
    AccountId, Channel, Command, ConversationId, HoldId, HoldTarget, Rating, Role, Surface,
    Timestamp,
};
use serde_json::{Map, Value};

/// A validated step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub at: Timestamp,
    pub action: Action,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Do(Command),
    Query(Query),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    Gate(AccountId),
    Conversation(ConversationId),
    Export,
}

/// Why a step is invalid; `label` is its `do` or `query` value when it has one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("step {index}{}: {message}", label.as_ref().map(|l| format!(" ({l})")).unwrap_or_default())]
pub struct StepError {
    pub index: usize,
    pub label: Option<String>,
    pub message: String,
}

const DO_VALUES: &[&str] = &[
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
];
const QUERY_VALUES: &[&str] = &["gate", "conversation", "export"];

/// Reads fields of one step object, turning every mismatch into a message that names the field.
struct Fields<'a> {
    object: &'a Map<String, Value>,
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl<'a> Fields<'a> {
    fn optional_str(&self, name: &str) -> Result<Option<&'a str>, String> {
        match self.object.get(name) {
            None => Ok(None),
            Some(Value::String(text)) => Ok(Some(text)),
            Some(other) => Err(format!(
                "field `{name}` must be a string, not {}",
                type_name(other)
            )),
        }
    }

    fn str(&self, name: &str) -> Result<&'a str, String> {
        self.optional_str(name)?
            .ok_or_else(|| format!("field `{name}` is missing"))
    }

    fn optional_bool(&self, name: &str) -> Result<Option<bool>, String> {
        match self.object.get(name) {
            None => Ok(None),
            Some(Value::Bool(value)) => Ok(Some(*value)),
            Some(other) => Err(format!(
                "field `{name}` must be a boolean, not {}",
                type_name(other)
            )),
        }
    }

    fn bool(&self, name: &str) -> Result<bool, String> {
        self.optional_bool(name)?
            .ok_or_else(|| format!("field `{name}` is missing"))
    }

    /// An optional string field turned into a typed value by `parse`.
    fn optional_parsed<T, E: std::fmt::Display>(
        &self,
        name: &str,
        parse: impl Fn(&str) -> Result<T, E>,
    ) -> Result<Option<T>, String> {
        self.optional_str(name)?
            .map(|text| parse(text).map_err(|e| format!("field `{name}`: {e}")))
            .transpose()
    }

    fn parsed<T, E: std::fmt::Display>(
        &self,
        name: &str,
        parse: impl Fn(&str) -> Result<T, E>,
    ) -> Result<T, String> {
        self.optional_parsed(name, parse)?
            .ok_or_else(|| format!("field `{name}` is missing"))
    }

    /// An optional field with a closed set of values, parsed by `parse`.
    fn optional_choice<T>(
        &self,
        name: &str,
        allowed: &str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<Option<T>, String> {
        self.optional_str(name)?
            .map(|text| {
                parse(text)
                    .ok_or_else(|| format!("field `{name}` must be one of {allowed}, not `{text}`"))
            })
            .transpose()
    }

    fn choice<T>(
        &self,
        name: &str,
        allowed: &str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<T, String> {
        self.optional_choice(name, allowed, parse)?
            .ok_or_else(|| format!("field `{name}` is missing"))
    }
}

/// Parses step `index` of a scenario.
pub fn parse_step(index: usize, value: &Value) -> Result<Step, StepError> {
    let error = |label: Option<&str>, message: String| StepError {
        index,
        label: label.map(str::to_owned),
        message,
    };
    let Value::Object(object) = value else {
        return Err(error(
            None,
            format!("a step must be a JSON object, not {}", type_name(value)),
        ));
    };
    let fields = Fields { object };
    let verb = fields.optional_str("do").map_err(|m| error(None, m))?;
    let query = fields.optional_str("query").map_err(|m| error(None, m))?;
    let label = verb.or(query);
    let at = fields
        .str("at")
        .and_then(|text| Timestamp::parse(text).map_err(|e| format!("field `at`: {e}")))
        .map_err(|m| error(label, m))?;
    let action = match (verb, query) {
        (Some(verb), None) => parse_command(verb, &fields).map(Action::Do),
        (None, Some(query)) => parse_query(query, &fields).map(Action::Query),
        (Some(_), Some(_)) => Err("a step has either `do` or `query`, not both".to_owned()),
        (None, None) => Err("a step needs `do` or `query`".to_owned()),
    }
    .map_err(|m| error(label, m))?;
    Ok(Step { at, action })
}

fn parse_command(verb: &str, f: &Fields<'_>) -> Result<Command, String> {
    let channel = |default| {
        f.optional_choice("channel", "signup, notice, settings", Channel::parse)
            .map(|c| c.unwrap_or(default))
    };
    Ok(match verb {
        "create_account" => Command::CreateAccount {
            account: f.parsed("account", AccountId::parse)?,
            plan: f.str("plan")?.to_owned(),
            choice: match f.optional_bool("allowed")? {
                Some(allowed) => Some((allowed, channel(Channel::Signup)?)),
                None => {
                    channel(Channel::Signup)?;
                    None
                }
            },
        },
        "choose" => Command::Choose {
            account: f.parsed("account", AccountId::parse)?,
            allowed: f.bool("allowed")?,
            channel: channel(Channel::Settings)?,
        },
        "notice_shown" => Command::NoticeShown {
            account: f.parsed("account", AccountId::parse)?,
        },
        "change_plan" => Command::ChangePlan {
            account: f.parsed("account", AccountId::parse)?,
            plan: f.str("plan")?.to_owned(),
        },
        "message" => Command::Message {
            account: f.parsed("account", AccountId::parse)?,
            conversation: f.parsed("conversation", ConversationId::parse)?,
            surface: f
                .optional_choice("surface", "chat, code", Surface::parse)?
                .unwrap_or(Surface::Chat),
            role: f
                .optional_choice("role", "user, assistant", Role::parse)?
                .unwrap_or(Role::User),
            text: f.optional_str("text")?.unwrap_or_default().to_owned(),
            incognito: f.optional_bool("incognito")?.unwrap_or(false),
        },
        "feedback" => Command::Feedback {
            account: f.parsed("account", AccountId::parse)?,
            conversation: f.parsed("conversation", ConversationId::parse)?,
            rating: f.choice("rating", "up, down", Rating::parse)?,
            comment: f.optional_str("comment")?.map(str::to_owned),
        },
        "delete_conversation" => Command::DeleteConversation {
            conversation: f.parsed("conversation", ConversationId::parse)?,
        },
        "legal_hold" => {
            let target = match (
                f.optional_parsed("account", AccountId::parse)?,
                f.optional_parsed("conversation", ConversationId::parse)?,
            ) {
                (Some(account), None) => HoldTarget::Account(account),
                (None, Some(conversation)) => HoldTarget::Conversation(conversation),
                (Some(_), Some(_)) => {
                    return Err(
                        "a legal hold names `account` or `conversation`, not both".to_owned()
                    );
                }
                (None, None) => {
                    return Err("a legal hold needs `account` or `conversation`".to_owned());
                }
            };
            Command::PlaceHold {
                hold: f.parsed("hold", HoldId::parse)?,
                target,
            }
        }
        "release_hold" => Command::ReleaseHold {
            hold: f.parsed("hold", HoldId::parse)?,
        },
        "erase_account" => Command::EraseAccount {
            account: f.parsed("account", AccountId::parse)?,
        },
        "sweep" => Command::Sweep,
        other => {
            return Err(format!(
                "`do` must be one of {}, not `{other}`",
                DO_VALUES.join(", ")
            ));
        }
    })
}

fn parse_query(query: &str, f: &Fields<'_>) -> Result<Query, String> {
    Ok(match query {
        "gate" => Query::Gate(f.parsed("account", AccountId::parse)?),
        "conversation" => Query::Conversation(f.parsed("conversation", ConversationId::parse)?),
        "export" => Query::Export,
        other => {
            return Err(format!(
                "`query` must be one of {}, not `{other}`",
                QUERY_VALUES.join(", ")
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn message_of(value: Value) -> String {
        parse_step(4, &value).unwrap_err().to_string()
    }

    #[test]
    fn invalid_steps_name_the_step_and_the_field() {
        let cases = [
            (
                json!([]),
                "step 4: a step must be a JSON object, not an array",
            ),
            (
                json!({"do": "choose", "account": "a", "allowed": true}),
                "step 4 (choose): field `at` is missing",
            ),
            (
                json!({"at": "2025-01-01T00:00:00", "do": "sweep"}),
                "step 4 (sweep): field `at`: ",
            ),
            (
                json!({"at": "2025-01-01T00:00:00Z"}),
                "needs `do` or `query`",
            ),
            (
                json!({"at": "2025-01-01T00:00:00Z", "do": "sweep", "query": "export"}),
                "not both",
            ),
            (
                json!({"at": "2025-01-01T00:00:00Z", "do": "dance"}),
                "`do` must be one of",
            ),
            (
                json!({"at": "2025-01-01T00:00:00Z", "query": "stats"}),
                "`query` must be one of",
            ),
            (
                json!({"at": "2025-01-01T00:00:00Z", "do": "choose", "account": "a", "allowed": "yes"}),
                "field `allowed` must be a boolean, not a string",
            ),
            (
                json!({"at": "2025-01-01T00:00:00Z", "do": "choose", "account": "a b", "allowed": true}),
                "field `account`: `a b` is not a valid account id",
            ),
            (
                json!({"at": "2025-01-01T00:00:00Z", "do": "choose", "account": "a", "allowed": true, "channel": "email"}),
                "field `channel` must be one of signup, notice, settings",
            ),
            (
                json!({"at": "2025-01-01T00:00:00Z", "do": "message", "account": "a", "conversation": "c", "surface": "web"}),
                "field `surface` must be one of chat, code",
            ),
            (
                json!({"at": "2025-01-01T00:00:00Z", "do": "message", "account": "a", "conversation": "c", "role": "system"}),
                "field `role` must be one of user, assistant",
            ),
            (
                json!({"at": "2025-01-01T00:00:00Z", "do": "message", "account": "a", "conversation": "c", "incognito": null}),
                "field `incognito` must be a boolean, not null",
            ),
            (
                json!({"at": "2025-01-01T00:00:00Z", "do": "feedback", "account": "a", "conversation": "c"}),
                "field `rating` is missing",
            ),
            (
                json!({"at": "2025-01-01T00:00:00Z", "do": "legal_hold", "hold": "h"}),
                "needs `account` or `conversation`",
            ),
            (
                json!({"at": "2025-01-01T00:00:00Z", "do": "legal_hold", "hold": "h", "account": "a", "conversation": "c"}),
                "not both",
            ),
            (
                json!({"at": "2025-01-01T00:00:00Z", "do": "create_account", "account": "a", "plan": 3}),
                "field `plan` must be a string, not a number",
            ),
            (
                json!({"at": 20250101, "query": "export"}),
                "step 4 (export): field `at` must be a string",
            ),
        ];
        for (step, expected) in cases {
            let message = message_of(step.clone());
            assert!(
                message.contains(expected),
                "{step}: got `{message}`, wanted `{expected}`"
            );
        }
    }

    #[test]
    fn defaults_follow_the_api_contract() {
        let step = parse_step(
            0,
            &json!({"at": "2025-01-01T00:00:00Z", "do": "message", "account": "a", "conversation": "c"}),
        )
        .unwrap();
        let Action::Do(Command::Message {
            surface,
            role,
            text,
            incognito,
            ..
        }) = step.action
        else {
            panic!("not a message: {step:?}");
        };
        assert_eq!(
            (surface, role, text.as_str(), incognito),
            (Surface::Chat, Role::User, "", false)
        );

        let step = parse_step(
            0,
            &json!({"at": "2025-01-01T00:00:00Z", "do": "create_account", "account": "a", "plan": "pro", "allowed": true}),
        )
        .unwrap();
        assert!(matches!(
            step.action,
            Action::Do(Command::CreateAccount {
                choice: Some((true, Channel::Signup)),
                ..
            })
        ));
        let step = parse_step(
            0,
            &json!({"at": "2025-01-01T00:00:00Z", "do": "choose", "account": "a", "allowed": false}),
        )
        .unwrap();
        assert!(matches!(
            step.action,
            Action::Do(Command::Choose {
                allowed: false,
                channel: Channel::Settings,
                ..
            })
        ));
    }
}
