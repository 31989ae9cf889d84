//! The `custos` binary: parses arguments and hands each subcommand to the library crate that
//! owns it. It holds no rule of SPEC.md.
//!
//! Exit codes: 0 success; 1 an operational failure (I/O, an internal error); 2 invalid input
//! (a bad policy file, an invalid scenario step, a malformed command line). A closed output pipe
//! is not an error.

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use custos_core::Policy;
use custos_scenario::{Scenario, ScenarioError};

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
    Policy(PolicyCommand),
    /// Replay timelines through the decision core.
    #[command(subcommand)]
    Scenario(ScenarioCommand),
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validate a policy file and print a summary; exit 2 with file:line:column if it is bad.
    Check { file: PathBuf },
    /// Print the bundled default policy.
    Show,
}

#[derive(Subcommand)]
enum ScenarioCommand {
    /// Run a scenario file: one JSON line per query; exit 2 at the first invalid step.
    Run { file: PathBuf },
}

/// An error with the exit code it deserves.
struct Failure {
    code: u8,
    error: anyhow::Error,
}

impl Failure {
    fn invalid_input(error: impl Into<anyhow::Error>) -> Failure {
        Failure {
            code: 2,
            error: error.into(),
        }
    }

    fn operational(error: impl Into<anyhow::Error>) -> Failure {
        Failure {
            code: 1,
            error: error.into(),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) if is_broken_pipe(&failure.error) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("custos: error: {:#}", failure.error);
            ExitCode::from(failure.code)
        }
    }
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
    })
}

fn run(command: Command) -> Result<(), Failure> {
    match command {
        Command::Policy(PolicyCommand::Check { file }) => {
            let text = std::fs::read_to_string(&file).map_err(|e| {
                Failure::invalid_input(
                    anyhow::Error::new(e).context(format!("reading {}", file.display())),
                )
            })?;
            let policy = Policy::parse(&file.display().to_string(), &text)
                .map_err(Failure::invalid_input)?;
            print(&format!("{}: ok\n{}", file.display(), policy.summary()))
        }
        Command::Policy(PolicyCommand::Show) => print(Policy::bundled_text()),
        Command::Scenario(ScenarioCommand::Run { file }) => {
            let stdout = io::stdout();
            let mut out = io::BufWriter::new(stdout.lock());
            Scenario::load(&file)
                .and_then(|s| s.run(&mut out))
                .map_err(|error| match error {
                    ScenarioError::Output(_) | ScenarioError::Store(_) => {
                        Failure::operational(error)
                    }
                    _ => Failure::invalid_input(error),
                })
        }
    }
}

fn print(text: &str) -> Result<(), Failure> {
    io::stdout()
        .lock()
        .write_all(text.as_bytes())
        .map_err(Failure::operational)
}
