//! Redaction measured on the labeled corpus of `tests/redaction-corpus` (see its README): per
//! kind, the share of samples whose every labeled value is gone after redaction (recall), and
//! the share of look-alikes that redaction changed (false positives).
//!
//! `cargo run --release -p custos-core --example redaction_corpus [CORPUS] [--misses KIND]`

#[path = "../tests/redaction-corpus/measure.rs"]
mod measure;

use custos_core::redaction::Redactor;
use measure::{corpus_path, measure, percent};

fn main() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let mut path = corpus_path();
    let mut show_misses = None;
    while let Some(arg) = args.next() {
        if arg == "--misses" {
            show_misses = args.next();
        } else {
            path = arg;
        }
    }
    let measured = measure(&path, &Redactor::new())?;
    for (kind, text, redacted) in &measured.failures {
        if show_misses.as_deref() == Some(kind.as_str()) {
            println!("{kind}: {text:?}\n     -> {redacted:?}");
        }
    }
    println!("{:<14} {:>8} {:>8}", "kind", "samples", "recall");
    for (kind, (samples, found)) in &measured.positives {
        println!(
            "{kind:<14} {samples:>8} {:>7.1}%",
            percent(*found, *samples)
        );
    }
    println!("\n{:<14} {:>8} {:>8}", "look-alikes", "samples", "changed");
    let (mut all, mut changed) = (0, 0);
    for (near, (samples, kept)) in &measured.look_alikes {
        all += samples;
        changed += samples - kept;
        println!(
            "near {near:<9} {samples:>8} {:>7.1}%",
            percent(samples - kept, *samples)
        );
    }
    println!("all            {all:>8} {:>7.1}%", percent(changed, all));
    Ok(())
}
