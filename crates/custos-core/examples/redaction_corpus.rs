//! Redaction measured on the labeled corpus of `tests/redaction-corpus` (see its README): per
//! kind, the share of samples whose every labeled value is gone after redaction (recall), and
//! the share of look-alikes that redaction changed (false positives).
//!
//! `cargo run --release -p custos-core --example redaction_corpus [CORPUS] [--misses KIND]`

use std::collections::BTreeMap;

use custos_core::redaction::{Counts, Redactor};
use serde_json::Value;

/// Samples of a kind, and how many of them came out as they should.
type Tally = BTreeMap<String, (usize, usize)>;

fn field<'v>(sample: &'v Value, name: &str) -> &'v str {
    sample.get(name).and_then(Value::as_str).unwrap_or_default()
}

fn main() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let mut path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/redaction-corpus/corpus.jsonl"
    )
    .to_owned();
    let mut show_misses = None;
    while let Some(arg) = args.next() {
        if arg == "--misses" {
            show_misses = args.next();
        } else {
            path = arg;
        }
    }
    let corpus = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    let redactor = Redactor::new();
    let mut positives = Tally::new();
    let mut negatives = Tally::new();
    for (number, line) in corpus.lines().enumerate() {
        let sample: Value =
            serde_json::from_str(line).map_err(|e| format!("{path}:{}: {e}", number + 1))?;
        let kind = field(&sample, "kind");
        let text = field(&sample, "text");
        let mut counts = Counts::new();
        let redacted = redactor.redact(text, &mut counts);
        if kind == "none" {
            let near = field(&sample, "near");
            let changed = redacted != text;
            let entry = negatives.entry(near.to_owned()).or_default();
            entry.0 += 1;
            entry.1 += usize::from(changed);
            if changed && show_misses.as_deref() == Some("none") {
                println!("changed ({near}): {text:?}\n     -> {redacted:?}");
            }
        } else {
            let gone = sample
                .get("values")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .all(|value| !redacted.contains(value));
            let entry = positives.entry(kind.to_owned()).or_default();
            entry.0 += 1;
            entry.1 += usize::from(gone);
            if !gone && show_misses.as_deref() == Some(kind) {
                println!("missed: {text:?}\n     -> {redacted:?}");
            }
        }
    }
    let percent = |part: usize, all: usize| 100.0 * part as f64 / all.max(1) as f64;
    println!("{:<14} {:>8} {:>8}", "kind", "samples", "recall");
    for (kind, (samples, found)) in &positives {
        println!(
            "{kind:<14} {samples:>8} {:>7.1}%",
            percent(*found, *samples)
        );
    }
    println!("\n{:<14} {:>8} {:>8}", "look-alikes", "samples", "changed");
    let (mut all, mut changed) = (0, 0);
    for (near, (samples, hit)) in &negatives {
        all += samples;
        changed += hit;
        println!(
            "near {near:<9} {samples:>8} {:>7.1}%",
            percent(*hit, *samples)
        );
    }
    println!("all            {all:>8} {:>7.1}%", percent(changed, all));
    Ok(())
}
