//! `custos sweep`, `custos retention check` and `custos dsr export`: retention and the
//! data-subject rights from the command line, with progress bars and reports.

use clap::{Args, Subcommand};
use custos_core::{SweepReport, Timestamp};
use custos_store::{RetentionCheck, SWEEP_BATCH, Store, StoreError};
use indicatif::{ProgressBar, ProgressStyle};

use crate::cli::{Failure, StoreArgs, parse_now, print, store_failure};

#[derive(Args)]
pub struct SweepArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Sweep as of this time (RFC 3339) [default: the wall clock].
    #[arg(long)]
    now: Option<String>,
    /// Conversations per transaction: larger is faster, smaller keeps writers waiting less.
    #[arg(long, default_value_t = SWEEP_BATCH)]
    batch: usize,
}

#[derive(Subcommand)]
pub enum RetentionCommand {
    /// Recompute every stored expiry with the core; exit 1 listing any difference.
    Check {
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Subcommand)]
pub enum DsrCommand {
    /// Print everything held about an account as one JSON document (R14 access, portability).
    Export {
        #[command(flatten)]
        store: StoreArgs,
        /// The account.
        #[arg(long)]
        account: String,
        /// As of this time (RFC 3339) [default: the wall clock].
        #[arg(long)]
        now: Option<String>,
    },
}

pub fn sweep_command(args: SweepArgs) -> Result<(), Failure> {
    let now = parse_now(args.now)?;
    let opened = args.store.open_existing()?;
    let started = std::time::Instant::now();
    let report = sweep(&opened, now, args.batch.max(1)).map_err(store_failure)?;
    print(&format!(
        "{} in {:.1} s\n",
        describe(now, &report),
        started.elapsed().as_secs_f64()
    ))
}

pub fn retention_command(command: RetentionCommand) -> Result<(), Failure> {
    let RetentionCommand::Check { store } = command;
    let opened = store.open_existing()?;
    let check = check(&opened).map_err(store_failure)?;
    for (id, stored, recomputed) in &check.differences {
        print(&format!(
            "{id}: stored {stored}, the core says {recomputed}\n"
        ))?;
    }
    print(&format!(
        "checked the stored expiry of {} conversations: {} differ\n",
        check.checked, check.different
    ))?;
    if check.different == 0 {
        Ok(())
    } else {
        Err(Failure::operational(anyhow::anyhow!(
            "{} stored expiries differ from the core's",
            check.different
        )))
    }
}

pub fn dsr_command(command: DsrCommand) -> Result<(), Failure> {
    let DsrCommand::Export {
        store,
        account,
        now,
    } = command;
    let now = parse_now(now)?;
    let account = custos_core::AccountId::parse(&account)
        .map_err(|e| Failure::invalid_input(anyhow::anyhow!("--account: {e}")))?;
    let document = store
        .open_existing()?
        .access_document(&account, now)
        .map_err(store_failure)?;
    let text = serde_json::to_string_pretty(&document).map_err(Failure::operational)?;
    print(&format!("{text}\n"))
}

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
    let run = custos_store::SweepRun::new("custos sweep");
    let report = store.sweep(&run, now, batch, &mut |looked_at, so_far| {
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
