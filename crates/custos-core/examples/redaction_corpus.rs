//! Redaction measured on the labeled corpus of `tests/redaction-corpus` (see its README): per
//! kind, the share of samples whose every labeled value is gone after redaction (recall), and
//! the share of look-alikes that redaction changed (false positives).
//!
//! `cargo run --release -p custos-core --example redaction_corpus [CORPUS] [--misses KIND]`

use std::collections::BTreeMap;

use custos_core::redaction::{Counts, Redactor};
use serde_json::Value;

fn main() {
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
    let corpus = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let redactor = Redactor::new();
    // kind -> (samples, redacted or changed)
    let mut positives: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut negatives: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for (number, line) in corpus.lines().enumerate() {
        let sample: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{path}:{}: {e}", number + 1));
        let kind = sample["kind"].as_str().unwrap_or_default().to_owned();
        let text = sample["text"].as_str().unwrap_or_default();
        let mut counts = Counts::new();
        let redacted = redactor.redact(text, &mut counts);
        if kind == "none" {
            let near = sample["near"].as_str().unwrap_or_default().to_owned();
            let changed = redacted != text;
            let entry = negatives.entry(near.clone()).or_default();
            entry.0 += 1;
            entry.1 += usize::from(changed);
            if changed && show_misses.as_deref() == Some("none") {
                println!("changed ({near}): {text:?}\n     -> {redacted:?}");
            }
        } else {
            let values = sample["values"].as_array().cloned().unwrap_or_default();
            let gone = values
                .iter()
                .filter_map(Value::as_str)
                .all(|value| !redacted.contains(value));
            let entry = positives.entry(kind.clone()).or_default();
            entry.0 += 1;
            entry.1 += usize::from(gone);
            if !gone && show_misses.as_deref() == Some(kind.as_str()) {
                println!("missed: {text:?}\n     -> {redacted:?}");
            }
        }
    }
    println!("{:<14} {:>8} {:>8}", "kind", "samples", "recall");
    for (kind, (samples, found)) in &positives {
        println!(
            "{kind:<14} {samples:>8} {:>7.1}%",
            100.0 * *found as f64 / *samples as f64
        );
    }
    println!("\n{:<14} {:>8} {:>8}", "look-alikes", "samples", "changed");
    let (mut all, mut changed) = (0, 0);
    for (near, (samples, hit)) in &negatives {
        all += samples;
        changed += hit;
        println!(
            "near {near:<9} {samples:>8} {:>7.1}%",
            100.0 * *hit as f64 / *samples as f64
        );
    }
    println!(
        "all            {all:>8} {:>7.1}%",
        100.0 * changed as f64 / all.max(1) as f64
    );
}
