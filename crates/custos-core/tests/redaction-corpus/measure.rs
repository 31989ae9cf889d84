//! Redaction measured on the labeled corpus (see README.md here): shared by the test that holds
//! the goals and by `examples/redaction_corpus`, which prints the figures.

use std::collections::BTreeMap;

use custos_core::redaction::{Counts, Redactor};
use serde_json::Value;

/// Per kind: samples, and how many came out as they should (every value gone, for a positive;
/// the text unchanged, for a look-alike).
pub type Tally = BTreeMap<String, (usize, usize)>;

/// What redaction did with the corpus.
#[derive(Debug, Default)]
pub struct Measured {
    pub positives: Tally,
    /// By the kind each look-alike resembles; the second figure counts those changed.
    pub look_alikes: Tally,
    /// The failures, as (kind or `none`, text, redacted text).
    pub failures: Vec<(String, String, String)>,
}

fn field<'v>(sample: &'v Value, name: &str) -> &'v str {
    sample.get(name).and_then(Value::as_str).unwrap_or_default()
}

/// The corpus file of this repository.
pub fn corpus_path() -> String {
    concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/redaction-corpus/corpus.jsonl"
    )
    .to_owned()
}

pub fn measure(path: &str, redactor: &Redactor) -> Result<Measured, String> {
    let corpus = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    let mut measured = Measured::default();
    for (number, line) in corpus.lines().enumerate() {
        let sample: Value =
            serde_json::from_str(line).map_err(|e| format!("{path}:{}: {e}", number + 1))?;
        let kind = field(&sample, "kind");
        let text = field(&sample, "text");
        let mut counts = Counts::new();
        let redacted = redactor.redact(text, &mut counts);
        let (tally, key, as_it_should) = if kind == "none" {
            (
                &mut measured.look_alikes,
                field(&sample, "near"),
                redacted == text,
            )
        } else {
            let gone = sample
                .get("values")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .all(|value| !redacted.contains(value));
            (&mut measured.positives, kind, gone)
        };
        let entry = tally.entry(key.to_owned()).or_default();
        entry.0 += 1;
        if as_it_should {
            entry.1 += 1;
        } else {
            measured
                .failures
                .push((kind.to_owned(), text.to_owned(), redacted.into_owned()));
        }
    }
    Ok(measured)
}

/// A share in percent.
pub fn percent(part: usize, all: usize) -> f64 {
    100.0 * part as f64 / all.max(1) as f64
}
