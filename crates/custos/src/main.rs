//! The `custos` binary: parses arguments and hands each subcommand to the module (and the
//! library crate) that owns it. It holds no rule of docs/POLICY.md.
//!
//! Exit codes: 0 success; 1 an operational failure (I/O, an internal error, a failed
//! verification); 2 invalid input (a bad policy file, an invalid scenario step, a malformed
//! command line). A closed output pipe is not an error.

use std::io;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use custos_scenario::{Scenario, ScenarioError};

mod cli;
mod demo;
mod export;
mod keys;
mod ledger;
mod retention;
mod serve;
mod write_load;

use cli::{Failure, StoreArgs};

/// mimalloc rather than glibc's allocator: an export's threads hand millions of strings to one
/// another, and glibc's cross-thread frees and consolidations took a fifth of the export's time
/// (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "custos",
    version,
    about = "Keeps the promises an AI assistant makes about its users' training data."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Work with policy files.
    #[command(subcommand)]
    Policy(ledger::PolicyCommand),
    /// Replay timelines through the decision core.
    #[command(subcommand)]
    Scenario(ScenarioCommand),
    /// Inspect and prove the consent ledger.
    #[command(subcommand)]
    Ledger(ledger::LedgerCommand),
    /// Check consent receipts.
    #[command(subcommand)]
    Receipt(ledger::ReceiptCommand),
    /// Fill a data folder with realistic synthetic data.
    Demo(demo::DemoArgs),
    /// Purge every conversation whose retention has ended and that no legal hold covers.
    Sweep(retention::SweepArgs),
    /// Write a consent-clean training snapshot (R10): Parquet or JSONL and a signed manifest.
    #[command(args_conflicts_with_subcommands = true)]
    Export {
        #[command(subcommand)]
        command: Option<export::ExportCommand>,
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        args: export::ExportArgs,
    },
    /// Check retention: recompute every stored expiry with the core.
    #[command(subcommand)]
    Retention(retention::RetentionCommand),
    /// Data-subject rights from the command line.
    #[command(subcommand)]
    Dsr(retention::DsrCommand),
    /// Serve the HTTP API and the pages.
    Serve(serve::ServeArgs),
    /// Manage access tokens.
    #[command(subcommand)]
    Token(serve::TokenCommand),
    /// Make, show and rotate the store's keys.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Tools for custos's own tests; not a stable interface.
    #[command(subcommand, hide = true)]
    Internal(write_load::InternalCommand),
}

#[derive(Subcommand)]
enum ScenarioCommand {
    /// Run a scenario file: one JSON line per query; exit 2 at the first invalid step.
    Run { file: PathBuf },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) if failure.is_broken_pipe() => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("custos: error: {:#}", failure.error);
            ExitCode::from(failure.code)
        }
    }
}

fn run(command: Command) -> Result<(), Failure> {
    match command {
        Command::Policy(command) => ledger::policy(command),
        Command::Scenario(ScenarioCommand::Run { file }) => run_scenario(&file),
        Command::Ledger(command) => ledger::ledger(command),
        Command::Receipt(command) => ledger::receipt(command),
        Command::Demo(args) => demo::command(args),
        Command::Sweep(args) => retention::sweep_command(args),
        Command::Export {
            command,
            store,
            args,
        } => export::command(command, store, args),
        Command::Retention(command) => retention::retention_command(command),
        Command::Dsr(command) => retention::dsr_command(command),
        Command::Serve(args) => serve::serve(args).map_err(Failure::operational),
        Command::Token(command) => serve::token(command),
        Command::Keys(command) => keys::command(command),
        Command::Internal(command) => write_load::command(command),
    }
}

fn run_scenario(file: &std::path::Path) -> Result<(), Failure> {
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    Scenario::load(file)
        .and_then(|s| s.run(&mut out))
        .map_err(|error| match error {
            ScenarioError::Output(_) | ScenarioError::Store(_) => Failure::operational(error),
            _ => Failure::invalid_input(error),
        })
}
