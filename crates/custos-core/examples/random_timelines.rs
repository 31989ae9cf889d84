//! Replays N random timelines through the core and reports how long it took.
//!
//! `cargo run --release -p custos-core --example random_timelines -- 10000`
//! The timelines are those of the property tests (tests/support), drawn from a fixed seed, so
//! the work is the same on every run. Generation is not timed; applying every event, answering
//! a gate and a conversation query after each event, and one export per timeline are.

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "the shared generator panics only on its own constant ids"
)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Instant;

use custos_core::{Policy, Timeline, Timestamp};
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::TestRunner;

fn main() {
    let count: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000);
    let mut runner = TestRunner::deterministic();
    let strategy = support::timeline(60);
    let timelines: Vec<Vec<support::Op>> = (0..count)
        .map(|_| match strategy.new_tree(&mut runner) {
            Ok(tree) => tree.current(),
            Err(reason) => {
                eprintln!("could not generate a timeline: {reason}");
                std::process::exit(1);
            }
        })
        .collect();

    let policy = Policy::bundled();
    let started = Instant::now();
    let (mut events, mut accepted, mut queries, mut exported) = (0usize, 0usize, 0usize, 0usize);
    let mut reasons = std::collections::BTreeMap::<&str, usize>::new();
    for ops in &timelines {
        let mut timeline = Timeline::new(policy.clone());
        let mut now = support::start();
        for op in ops {
            now = Timestamp::from_unix_millis(now.unix_millis() + op.advance_ms).unwrap_or(now);
            events += 1;
            accepted += usize::from(timeline.apply(now, support::command(&op.event)).is_ok());
            if let Ok(gate) = timeline.gate(&support::account_id(events % 4), now) {
                queries += 1;
                *reasons.entry(gate.reason.as_str()).or_default() += 1;
            }
            let conversation = support::conversation_id(events % 6);
            if let Ok(status) = timeline.conversation_status(&conversation, now) {
                queries += 1;
                *reasons.entry(status.eligibility.as_str()).or_default() += 1;
            }
        }
        exported += timeline.snapshot(now).included.len();
        queries += 1;
    }
    let elapsed = started.elapsed();
    println!(
        "{count} timelines: {events} events ({accepted} accepted), {queries} queries, \
         {exported} conversations exported in {:.3} s ({:.0} events/s)",
        elapsed.as_secs_f64(),
        events as f64 / elapsed.as_secs_f64()
    );
    // Shows that random timelines reach every gate and eligibility reason.
    println!("answers by reason: {reasons:?}");
}
