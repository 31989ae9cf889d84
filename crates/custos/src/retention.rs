//! `custos sweep` and `custos retention check`, with progress bars and reports.

use custos_core::{SweepReport, Timestamp};
use custos_store::{RetentionCheck, Store, StoreError};
use indicatif::{ProgressBar, ProgressStyle};

pub use custos_store::SWEEP_BATCH;

/// One line saying what a sweep did.
pub fn describe(at: Timestamp, report: &SweepReport) -> String {
    let reasons: Vec<String> = report
        .purged
        .iter()
        .map(|(reason, count)| format!("{count} {reason}"))
        .collect();
    let detail = if reasons.is_empty() {
        String::new()
    } else {
        format!(" ({})", reasons.join(", "))
    };
    format!(
        "sweep at {at}: purged {}{detail}; held back by legal holds: {}",
        report.purged_total(),
        report.held_back
    )
}

/// Runs a sweep at `now` with a progress bar on stderr.
pub fn sweep(store: &Store, now: Timestamp, batch: usize) -> Result<SweepReport, StoreError> {
    let due = store.due_conversations(now)?;
    let progress = ProgressBar::new(due.max(1));
    progress.set_style(
        ProgressStyle::with_template(
            "{spinner} sweep [{bar:40}] {pos}/{len} due conversations looked at, {msg} ({eta} left)",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let report = store.sweep(now, batch, &mut |looked_at, so_far| {
        progress.set_position(looked_at);
        progress.set_message(format!("{} purged", so_far.purged_total()));
    })?;
    progress.finish_and_clear();
    Ok(report)
}

/// Recomputes every stored expiry, with a spinner on stderr.
pub fn check(store: &Store) -> Result<RetentionCheck, StoreError> {
    let progress = ProgressBar::new_spinner();
    let check = store.check_retention(&mut |checked| {
        progress.set_message(format!("{checked} conversations checked"));
        progress.tick();
    })?;
    progress.finish_and_clear();
    Ok(check)
}
