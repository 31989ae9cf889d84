//! The policy file: text → parsed document → validated [`Policy`].
//!
//! Every number and list custos enforces comes from here (docs/POLICY.md). A bad file is refused
//! whole, with the line and column of what is wrong.

use std::collections::BTreeSet;
use std::fmt;
use std::ops::Range;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use toml::Spanned;

use crate::time::{Duration, Timestamp};

/// The bundled default policy (docs/POLICY.md, The bundled default policy), compiled into every binary.
pub const BUNDLED_POLICY_PATH: &str = "policies/consumer-terms-2025.toml";
const BUNDLED_POLICY_TEXT: &str = include_str!("../../../policies/consumer-terms-2025.toml");

/// A validated policy. Built only by [`Policy::parse`], so every instance is consistent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The policy's id; the notice shown to users carries the same id.
    pub id: String,
    pub effective: Timestamp,
    pub choose_by: Timestamp,
    pub notice: Notice,
    consumer_plans: Vec<Plan>,
    business_plans: Vec<Plan>,
    pub retention: Retention,
    pub training: Training,
    /// Who is responsible for the data, as consent receipts name it.
    pub controller: Controller,
    /// SHA-256 of the policy file's bytes, so that evidence can name exactly what was in force.
    pub sha256: [u8; 32],
}

/// The notice users are shown. Either its text is in the file, or only its digest is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub url: Option<String>,
    pub text: Option<String>,
    pub sha256: [u8; 32],
}

/// How long conversations are kept (R6–R8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub extended: Duration,
    pub standard: Duration,
    pub deletion_grace: Duration,
    pub withdrawal_cap: Duration,
}

/// The data controller, for consent receipts (docs/POLICY.md, Beyond the minimum). Optional in the file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Controller {
    pub name: String,
    pub contact: Option<String>,
    /// Where the controller is established, e.g. `EU` or `US-CA`.
    pub jurisdiction: Option<String>,
    /// The language of the notice, e.g. `en`.
    #[serde(default = "default_language")]
    pub language: String,
}

fn default_language() -> String {
    "en".to_owned()
}

impl Default for Controller {
    fn default() -> Controller {
        Controller {
            name: "the operator of this custos".to_owned(),
            contact: None,
            jurisdiction: None,
            language: default_language(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Training {
    pub content: ContentRule,
}

closed_set! {
    /// Which parts of an eligible conversation a training export carries (docs/POLICY.md, The decisions).
    pub enum ContentRule {
        /// Every message and feedback made on a consumer plan: a resumed conversation counts whole.
        Whole => "whole",
        /// Only messages and feedback that were themselves covered.
        CoveredOnly => "covered_only",
    }
}

/// A plan's name as the policy file lists it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Plan(String);

impl Plan {
    /// A plan name as recorded in stored history. The policy in force classifies it; one in
    /// neither of its lists counts as out of scope, never as consumer.
    pub fn recorded(name: &str) -> Plan {
        Plan(name.to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether a plan is in scope of the policy (R2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PlanClass {
    Consumer,
    Business,
}

/// A plan name in neither of the policy's lists.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a plan of this policy (consumer or business)")]
pub struct UnknownPlan(pub String);

impl Policy {
    /// The bundled default policy.
    pub fn bundled() -> Policy {
        match Policy::parse(BUNDLED_POLICY_PATH, BUNDLED_POLICY_TEXT) {
            Ok(policy) => policy,
            // The bundled file is checked by a test of this crate, so this cannot happen in a
            // released binary; a panic here would be a build defect, not bad input.
            #[expect(
                clippy::panic,
                reason = "the bundled policy is validated by a unit test"
            )]
            Err(error) => panic!("bundled policy is invalid: {error}"),
        }
    }

    /// The bundled default policy's source text.
    pub fn bundled_text() -> &'static str {
        BUNDLED_POLICY_TEXT
    }

    /// Parses and validates a policy file; `source_name` is used in error locations.
    pub fn parse(source_name: &str, text: &str) -> Result<Policy, PolicyError> {
        let at =
            |span: Range<usize>, message: String| PolicyError::at(source_name, text, span, message);
        let raw: RawPolicy = toml::from_str(text).map_err(|error| {
            at(
                error.span().unwrap_or(0..0),
                error.message().trim_end().to_owned(),
            )
        })?;

        let id = raw.id.get_ref().clone();
        if !is_policy_id(&id) {
            return Err(at(
                raw.id.span(),
                format!(
                    "`{id}` is not a valid policy id: use 1 to 128 characters of A-Z a-z 0-9 . _ : @ -"
                ),
            ));
        }
        let effective = raw_time(&raw.effective).map_err(|m| at(raw.effective.span(), m))?;
        let choose_by = raw_time(&raw.choose_by).map_err(|m| at(raw.choose_by.span(), m))?;
        if choose_by < effective {
            return Err(at(
                raw.choose_by.span(),
                format!(
                    "choose_by ({choose_by}) is before effective ({effective}); users must be given time to choose after the policy takes effect"
                ),
            ));
        }

        let notice = validate_notice(raw.notice, &at)?;
        let (consumer_plans, business_plans) = validate_plans(&raw.plans, &at)?;
        let retention = validate_retention(&raw.retention, effective, &at)?;
        let content = ContentRule::parse(raw.training.content.get_ref()).ok_or_else(|| {
            let other = raw.training.content.get_ref();
            at(
                raw.training.content.span(),
                format!("training.content `{other}` is unknown: use \"whole\" or \"covered_only\""),
            )
        })?;

        Ok(Policy {
            id,
            effective,
            choose_by,
            notice,
            consumer_plans,
            business_plans,
            retention,
            training: Training { content },
            controller: raw.controller,
            sha256: Sha256::digest(text.as_bytes()).into(),
        })
    }

    /// The class of a plan named by an outside request; a plan in neither list is an error.
    pub fn plan(&self, name: &str) -> Result<(Plan, PlanClass), UnknownPlan> {
        let find = |plans: &[Plan]| plans.iter().find(|p| p.as_str() == name).cloned();
        find(&self.consumer_plans)
            .map(|plan| (plan, PlanClass::Consumer))
            .or_else(|| find(&self.business_plans).map(|plan| (plan, PlanClass::Business)))
            .ok_or_else(|| UnknownPlan(name.to_owned()))
    }

    /// Whether `plan` is a consumer plan. A plan unknown to this policy is treated as out of
    /// scope for training, never as consumer: the privacy-protective reading.
    pub fn is_consumer(&self, plan: &Plan) -> bool {
        self.is_consumer_plan_named(plan.as_str())
    }

    /// The same, for a plan name as stored (scans read it without making a `Plan`).
    pub fn is_consumer_plan_named(&self, name: &str) -> bool {
        self.consumer_plans.iter().any(|p| p.as_str() == name)
    }

    pub fn consumer_plans(&self) -> &[Plan] {
        &self.consumer_plans
    }

    pub fn business_plans(&self) -> &[Plan] {
        &self.business_plans
    }

    /// A one-screen summary, as `custos policy check` prints it.
    pub fn summary(&self) -> String {
        let join = |plans: &[Plan]| {
            plans
                .iter()
                .map(Plan::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let r = &self.retention;
        format!(
            "id              {}\n\
             effective       {}\n\
             choose_by       {}\n\
             notice          {} (sha256 {}{})\n\
             consumer plans  {}\n\
             business plans  {}\n\
             retention       extended {}, standard {}, deletion grace {}, withdrawal cap {}\n\
             training        content = {}\n\
             policy sha256   {}\n",
            self.id,
            self.effective,
            self.choose_by,
            self.id,
            hex(&self.notice.sha256),
            if self.notice.text.is_some() {
                ", text included"
            } else {
                ", text not included"
            },
            join(&self.consumer_plans),
            join(&self.business_plans),
            r.extended,
            r.standard,
            r.deletion_grace,
            r.withdrawal_cap,
            self.training.content.as_str(),
            hex(&self.sha256),
        )
    }
}

/// Lower-case hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let digit = |nibble: u8| char::from(*DIGITS.get(usize::from(nibble)).unwrap_or(&b'0'));
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(digit(byte >> 4));
        out.push(digit(byte & 0xf));
    }
    out
}

/// Exactly `N` bytes from `2 × N` hex digits (either case), or `None`.
pub fn from_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(text.as_bytes().chunks(2)) {
        *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out)
}

/// A policy file that is not valid, with the place of the first problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{source_name}:{line}:{column}: {message}")]
pub struct PolicyError {
    pub source_name: String,
    /// 1-based line of the problem.
    pub line: usize,
    /// 1-based column (in characters) of the problem.
    pub column: usize,
    pub message: String,
}

impl PolicyError {
    fn at(source_name: &str, text: &str, span: Range<usize>, message: String) -> PolicyError {
        let before = text.get(..span.start.min(text.len())).unwrap_or(text);
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
        PolicyError {
            source_name: source_name.to_owned(),
            line,
            column,
            message,
        }
    }
}

// ---- the raw document, exactly as written ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    id: Spanned<String>,
    effective: Spanned<toml::Value>,
    choose_by: Spanned<toml::Value>,
    notice: Spanned<RawNotice>,
    plans: RawPlans,
    retention: RawRetention,
    training: RawTraining,
    #[serde(default)]
    controller: Controller,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNotice {
    url: Option<Spanned<String>>,
    text: Option<Spanned<String>>,
    sha256: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlans {
    consumer: Spanned<Vec<Spanned<String>>>,
    business: Spanned<Vec<Spanned<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    extended: Spanned<String>,
    standard: Spanned<String>,
    deletion_grace: Spanned<String>,
    withdrawal_cap: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTraining {
    content: Spanned<String>,
}

fn is_policy_id(text: &str) -> bool {
    crate::id::AccountId::parse(text).is_ok()
}

/// A plan name: lower-case letters, digits and `_`, starting with a letter (`api_bedrock`).
fn is_plan_name(text: &str) -> bool {
    let mut bytes = text.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z'))
        && text.len() <= 64
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// An instant written either as a TOML offset date-time or as an RFC 3339 string.
fn raw_time(value: &Spanned<toml::Value>) -> Result<Timestamp, String> {
    let text = match value.get_ref() {
        toml::Value::Datetime(datetime) => datetime.to_string(),
        toml::Value::String(text) => text.clone(),
        other => {
            return Err(format!(
                "expected a date-time with an offset, found a {}",
                other.type_str()
            ));
        }
    };
    Timestamp::parse(&text).map_err(|error| error.to_string())
}

type Locate<'a> = dyn Fn(Range<usize>, String) -> PolicyError + 'a;

fn validate_notice(raw: Spanned<RawNotice>, at: &Locate<'_>) -> Result<Notice, PolicyError> {
    let span = raw.span();
    let raw = raw.into_inner();
    let sha256 = match (&raw.text, &raw.sha256) {
        (Some(text), None) => Sha256::digest(text.get_ref().as_bytes()).into(),
        (None, Some(digest)) => from_hex::<32>(digest.get_ref()).ok_or_else(|| {
            at(
                digest.span(),
                "notice.sha256 must be 64 hexadecimal characters".to_owned(),
            )
        })?,
        (Some(_), Some(digest)) => {
            return Err(at(
                digest.span(),
                "give the notice's text or its sha256, not both".to_owned(),
            ));
        }
        (None, None) => {
            return Err(at(
                span,
                "the notice needs its `text` or its `sha256`".to_owned(),
            ));
        }
    };
    Ok(Notice {
        url: raw.url.map(Spanned::into_inner),
        text: raw.text.map(Spanned::into_inner),
        sha256,
    })
}

fn validate_plans(raw: &RawPlans, at: &Locate<'_>) -> Result<(Vec<Plan>, Vec<Plan>), PolicyError> {
    let mut seen = BTreeSet::new();
    let mut lists = Vec::new();
    for list in [&raw.consumer, &raw.business] {
        let mut plans = Vec::new();
        for name in list.get_ref() {
            let text = name.get_ref();
            if !is_plan_name(text) {
                return Err(at(
                    name.span(),
                    format!(
                        "`{text}` is not a known kind of plan name: use lower-case letters, digits and `_`, starting with a letter"
                    ),
                ));
            }
            if !seen.insert(text.clone()) {
                let where_else = if raw.consumer.get_ref().iter().any(|p| p.get_ref() == text)
                    && raw.business.get_ref().iter().any(|p| p.get_ref() == text)
                {
                    "is in both the consumer and the business list; a plan is one or the other"
                } else {
                    "is listed twice"
                };
                return Err(at(name.span(), format!("plan `{text}` {where_else}")));
            }
            plans.push(Plan(text.clone()));
        }
        lists.push(plans);
    }
    let business = lists.pop().unwrap_or_default();
    let consumer = lists.pop().unwrap_or_default();
    if consumer.is_empty() {
        return Err(at(
            raw.consumer.span(),
            "plans.consumer is empty: a policy must cover at least one consumer plan".to_owned(),
        ));
    }
    Ok((consumer, business))
}

fn validate_retention(
    raw: &RawRetention,
    effective: Timestamp,
    at: &Locate<'_>,
) -> Result<Retention, PolicyError> {
    let duration = |field: &Spanned<String>, name: &str, may_be_zero: bool| {
        let parsed = Duration::parse(field.get_ref())
            .map_err(|error| at(field.span(), format!("retention.{name}: {error}")))?;
        if parsed.is_zero() && !may_be_zero {
            return Err(at(
                field.span(),
                format!("retention.{name} must be longer than zero"),
            ));
        }
        Ok(parsed)
    };
    let retention = Retention {
        extended: duration(&raw.extended, "extended", false)?,
        standard: duration(&raw.standard, "standard", false)?,
        deletion_grace: duration(&raw.deletion_grace, "deletion_grace", true)?,
        withdrawal_cap: duration(&raw.withdrawal_cap, "withdrawal_cap", true)?,
    };
    if effective.saturating_add(retention.extended) < effective.saturating_add(retention.standard) {
        return Err(at(
            raw.extended.span(),
            format!(
                "retention.extended ({}) is shorter than retention.standard ({})",
                retention.extended, retention.standard
            ),
        ));
    }
    Ok(retention)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bundled_policy_is_the_spec_default() {
        let policy = Policy::bundled();
        assert_eq!(policy.id, "consumer-terms-2025");
        assert_eq!(policy.effective.to_string(), "2025-08-28T00:00:00.000Z");
        assert_eq!(policy.choose_by.to_string(), "2025-09-29T00:00:00.000Z");
        let names = |plans: &[Plan]| {
            plans
                .iter()
                .map(|p| p.as_str().to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(policy.consumer_plans()), ["free", "pro", "max"]);
        assert_eq!(
            names(policy.business_plans()),
            [
                "team",
                "enterprise",
                "gov",
                "education",
                "api",
                "api_bedrock",
                "api_vertex"
            ]
        );
        assert_eq!(policy.retention.extended, Duration::Years(5));
        assert_eq!(policy.retention.standard, Duration::Days(30));
        assert_eq!(policy.retention.deletion_grace, Duration::Days(30));
        assert_eq!(policy.retention.withdrawal_cap, Duration::Days(30));
        assert_eq!(policy.training.content, ContentRule::Whole);
        assert!(policy.notice.text.is_some());
    }

    #[test]
    fn plans_are_classified_and_unknown_plans_refused() {
        let policy = Policy::bundled();
        assert_eq!(policy.plan("pro").map(|(_, c)| c), Ok(PlanClass::Consumer));
        assert_eq!(
            policy.plan("api_vertex").map(|(_, c)| c),
            Ok(PlanClass::Business)
        );
        assert!(policy.plan("platinum").is_err());
        assert!(policy.plan("Pro").is_err());
    }

    /// Replaces `from` with `to` in the bundled text and returns the error it causes.
    fn error_after(from: &str, to: &str) -> PolicyError {
        let text = Policy::bundled_text();
        assert!(text.contains(from), "the bundled policy has no `{from}`");
        Policy::parse("p.toml", &text.replacen(from, to, 1)).unwrap_err()
    }

    fn line_of(needle: &str) -> usize {
        let text = Policy::bundled_text();
        text.get(..text.find(needle).unwrap())
            .unwrap()
            .matches('\n')
            .count()
            + 1
    }

    #[test]
    fn bad_policies_are_refused_with_line_column_and_reason() {
        let cases: &[(&str, &str, &str, &str)] = &[
            (
                "\"pro\"",
                "\"Pro Plan\"",
                "consumer = ",
                "not a known kind of plan name",
            ),
            (
                "\"team\"",
                "\"pro\"",
                "business = ",
                "in both the consumer and the business list",
            ),
            (
                "choose_by = 2025-09-29T00:00:00Z",
                "choose_by = 2025-08-01T00:00:00Z",
                "choose_by = ",
                "before effective",
            ),
            (
                "extended = \"5y\"",
                "extended = \"5 years\"",
                "extended = ",
                "is not a duration",
            ),
            (
                "standard = \"30d\"",
                "standard = \"0d\"",
                "standard = ",
                "longer than zero",
            ),
            (
                "content = \"whole\"",
                "content = \"all\"",
                "content = ",
                "training.content",
            ),
            (
                "[training]",
                "colour = \"blue\"\n[training]",
                "[training]",
                "unknown field",
            ),
            (
                "effective = 2025-08-28T00:00:00Z",
                "effective = 2025-08-28T00:00:00",
                "effective = ",
                "offset",
            ),
            (
                "extended = \"5y\"",
                "extended = \"10d\"",
                "extended = ",
                "shorter than retention.standard",
            ),
        ];
        for (from, to, line_marker, reason) in cases {
            let error = error_after(from, to);
            assert!(error.message.contains(reason), "{from} → {to}: {error}");
            assert_eq!(error.line, line_of(line_marker), "{from} → {to}: {error}");
            assert!(
                error
                    .to_string()
                    .starts_with(&format!("p.toml:{}:", error.line))
            );
        }
    }

    #[test]
    fn a_column_points_at_the_offending_value() {
        let error = error_after("\"team\"", "\"pro\"");
        assert_eq!(error.column, "business = [".len() + 1);
    }

    #[test]
    fn hex_round_trips_and_refuses_wrong_lengths_and_digits() {
        let bytes = [0x00, 0xab, 0xff, 0x10];
        assert_eq!(from_hex::<4>(&hex(&bytes)), Some(bytes));
        assert_eq!(from_hex::<4>("00ABFF10"), Some(bytes));
        for bad in ["00abff1", "00abff100", "00abffzz", "", "é0abff10"] {
            assert_eq!(from_hex::<4>(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn not_toml_is_refused_with_a_location() {
        let error = Policy::parse("x.toml", "id = \n").unwrap_err();
        assert_eq!((error.line, error.source_name.as_str()), (1, "x.toml"));
    }

    #[test]
    fn a_notice_digest_may_stand_in_for_its_text() {
        let text = Policy::bundled_text();
        let start = text.find("text = \"\"\"").unwrap();
        let end = text.get(start + 10..).unwrap().find("\"\"\"").unwrap() + start + 13;
        let digest = hex(&Policy::bundled().notice.sha256);
        let replaced = format!("{}sha256 = \"{digest}\"{}", &text[..start], &text[end..]);
        let policy = Policy::parse("p.toml", &replaced).unwrap();
        assert_eq!(policy.notice.sha256, Policy::bundled().notice.sha256);
        assert!(policy.notice.text.is_none());
    }
}
