//! The `custos` binary: parses arguments and hands each subcommand to the library crate that
//! owns it. It holds no rule of SPEC.md.
//!
//! Exit codes: 0 success; 1 an operational failure (I/O, an internal error); 2 invalid input
//! (a bad policy file, an invalid scenario step, a malformed command line). A closed output pipe
//! is not an error.

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use custos_core::Policy;
use custos_scenario::{Scenario, ScenarioError};
use custos_store::{Location, SQLITE_FILE, Store, StoreError};

mod demo;
mod export;
mod retention;
mod serve;
mod write_load;

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
    Policy(PolicyCommand),
    /// Replay timelines through the decision core.
    #[command(subcommand)]
    Scenario(ScenarioCommand),
    /// Inspect and prove the consent ledger.
    #[command(subcommand)]
    Ledger(LedgerCommand),
    /// Check consent receipts.
    #[command(subcommand)]
    Receipt(ReceiptCommand),
    /// Fill a data folder with realistic synthetic data.
    Demo {
        #[command(flatten)]
        store: StoreArgs,
        /// How many accounts.
        #[arg(long, default_value_t = 1000)]
        accounts: u64,
        /// How many conversations, spread over the accounts.
        #[arg(long, default_value_t = 5000)]
        conversations: u64,
        /// The present of the generated history (RFC 3339) [default: the wall clock].
        #[arg(long)]
        now: Option<String>,
        /// Seed of the generator: the same seed gives the same data.
        #[arg(long, default_value_t = 2025)]
        seed: u64,
    },
    /// Purge every conversation whose retention has ended and that no legal hold covers.
    Sweep {
        #[command(flatten)]
        store: StoreArgs,
        /// Sweep as of this time (RFC 3339) [default: the wall clock].
        #[arg(long)]
        now: Option<String>,
        /// Conversations per transaction: larger is faster, smaller keeps writers waiting less.
        #[arg(long, default_value_t = retention::SWEEP_BATCH)]
        batch: usize,
    },
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
    Retention(RetentionCommand),
    /// Data-subject rights from the command line.
    #[command(subcommand)]
    Dsr(DsrCommand),
    /// Serve the HTTP API (API.md §2).
    Serve(serve::ServeArgs),
    /// Manage access tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Tools for custos's own tests; not a stable interface.
    #[command(subcommand, hide = true)]
    Internal(InternalCommand),
}

/// Where the store is: SQLite in a data folder, or PostgreSQL (the data folder then holds only
/// the ledger's signing key).
#[derive(Args, Clone, Debug)]
struct StoreArgs {
    /// The data folder.
    #[arg(long, env = "CUSTOS_DATA", default_value = "custos-data")]
    data: PathBuf,
    /// A PostgreSQL URL (postgres://… or key=value); SQLite in the data folder when absent.
    #[arg(long, env = "CUSTOS_DATABASE")]
    database: Option<String>,
}

impl StoreArgs {
    fn location(&self) -> Location {
        Location::new(self.data.clone(), self.database.clone())
    }

    /// Opens a store that must already exist: inspecting a folder never creates one.
    fn open_existing(&self) -> Result<Store, Failure> {
        let key = self.data.join(custos_store::ledger::KEY_FILE);
        let missing = if self.database.is_none() && !self.data.join(SQLITE_FILE).exists() {
            Some(self.data.join(SQLITE_FILE))
        } else if !key.exists() {
            Some(key)
        } else {
            None
        };
        if let Some(path) = missing {
            return Err(Failure::invalid_input(anyhow::anyhow!(
                "{} does not exist: is `--data` the folder custos wrote to?",
                path.display()
            )));
        }
        Store::open(&self.location(), Policy::bundled()).map_err(Failure::operational)
    }
}

#[derive(Subcommand)]
enum LedgerCommand {
    /// Recompute every chain and signed checkpoint; exit 1 naming the first bad entry.
    Verify {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Sign a checkpoint over every chain head now.
    Checkpoint {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Print the store's Ed25519 public key (hex), to verify checkpoints and receipts elsewhere.
    PublicKey {
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Subcommand)]
enum ReceiptCommand {
    /// Verify a signed consent receipt offline; exit 1 if it was changed.
    Verify {
        file: PathBuf,
        /// Also require that this public key (hex, from `custos ledger public-key`) signed it.
        #[arg(long)]
        public_key: Option<String>,
    },
}

#[derive(Subcommand)]
enum RetentionCommand {
    /// Recompute every stored expiry with the core; exit 1 listing any difference.
    Check {
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Subcommand)]
enum DsrCommand {
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

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token and print it on one line; only its hash is stored.
    Create(serve::TokenArgs),
    /// Revoke a token; a running server stops accepting it within 5 seconds.
    Revoke {
        #[command(flatten)]
        store: StoreArgs,
        /// The token to revoke.
        token: String,
    },
}

#[derive(Subcommand)]
enum InternalCommand {
    /// Write choices and messages as fast as possible, logging each one once it is committed.
    WriteLoad {
        #[command(flatten)]
        store: StoreArgs,
        /// Append one line per acknowledged write here.
        #[arg(long)]
        log: PathBuf,
        /// Stop after this many writes (default: never).
        #[arg(long)]
        writes: Option<u64>,
    },
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
        Command::Ledger(LedgerCommand::Verify { store }) => {
            let report = store
                .open_existing()?
                .verify_ledger()
                .map_err(Failure::operational)?;
            let summary = format!(
                "checked {} accounts, {} ledger entries, {} signed checkpoints\n",
                report.accounts, report.entries, report.checkpoints
            );
            print(&summary)?;
            match report.problem {
                None => print("ledger verified: every entry and checkpoint is intact\n"),
                Some(problem) => Err(Failure::operational(anyhow::anyhow!(
                    "ledger verification FAILED: {problem}"
                ))),
            }
        }
        Command::Ledger(LedgerCommand::Checkpoint { store }) => {
            let now = custos_http::system_now();
            match store
                .open_existing()?
                .checkpoint(now)
                .map_err(Failure::operational)?
            {
                Some(c) => print(&format!(
                    "checkpoint {} at {}: {} accounts, {} entries, root {}\n",
                    c.id,
                    c.at,
                    c.accounts,
                    c.entries,
                    custos_core::policy::hex(&c.root)
                )),
                None => print("the ledger is empty; nothing to sign\n"),
            }
        }
        Command::Ledger(LedgerCommand::PublicKey { store }) => {
            print(&format!("{}\n", store.open_existing()?.public_key_hex()))
        }
        Command::Receipt(ReceiptCommand::Verify { file, public_key }) => {
            let text = std::fs::read_to_string(&file).map_err(|e| {
                Failure::invalid_input(
                    anyhow::Error::new(e).context(format!("reading {}", file.display())),
                )
            })?;
            let document = serde_json::from_str(&text).map_err(|e| {
                Failure::invalid_input(anyhow::anyhow!("{}: not JSON: {e}", file.display()))
            })?;
            let id = custos_store::receipt::verify(&document, public_key.as_deref()).map_err(
                |problem| {
                    Failure::operational(anyhow::anyhow!(
                        "{}: receipt verification FAILED: {problem}",
                        file.display()
                    ))
                },
            )?;
            print(&format!("{}: receipt {id} verified\n", file.display()))
        }
        Command::Demo {
            store,
            accounts,
            conversations,
            now,
            seed,
        } => {
            let now = parse_now(now)?;
            let opened =
                Store::open(&store.location(), Policy::bundled()).map_err(store_failure)?;
            let started = std::time::Instant::now();
            let report =
                demo::run(&opened, accounts, conversations, now, seed).map_err(store_failure)?;
            print(&format!(
                "demo data in {}: {} accounts, {} conversations, {} events recorded ({} refused by the rules) in {:.1} s\n",
                store.data.display(),
                report.accounts,
                report.conversations,
                report.events,
                report.refused,
                started.elapsed().as_secs_f64()
            ))
        }
        Command::Sweep { store, now, batch } => {
            let now = parse_now(now)?;
            let opened = store.open_existing()?;
            let started = std::time::Instant::now();
            let report = retention::sweep(&opened, now, batch.max(1)).map_err(store_failure)?;
            print(&format!(
                "{} in {:.1} s\n",
                retention::describe(now, &report),
                started.elapsed().as_secs_f64()
            ))
        }
        Command::Export {
            command: None,
            store,
            args,
        } => {
            let (Some(cutoff), Some(_)) = (&args.cutoff, &args.out) else {
                return Err(Failure::invalid_input(anyhow::anyhow!(
                    "`custos export` needs --cutoff T and --out DIR"
                )));
            };
            let cutoff = custos_core::Timestamp::parse(cutoff)
                .map_err(|e| Failure::invalid_input(anyhow::anyhow!("--cutoff: {e}")))?;
            let now = parse_now(args.now.clone())?;
            let opened = store.open_existing()?;
            let started = std::time::Instant::now();
            let manifest =
                export::run(&opened, &store.data, &args, cutoff, now).map_err(export_failure)?;
            print(&format!(
                "{} in {:.1} s\n",
                export::describe(&manifest),
                started.elapsed().as_secs_f64()
            ))
        }
        Command::Export {
            command:
                Some(export::ExportCommand::Revocations {
                    store,
                    snapshot,
                    now,
                }),
            ..
        } => {
            let now = parse_now(now)?;
            let opened = store.open_existing()?;
            let exports = custos_export::Exports::new(&opened, &store.data, None);
            let revocations = exports
                .revocations(&snapshot, now)
                .map_err(export_failure)?;
            let mut out = String::new();
            for (key, reason) in &revocations.revoked {
                out.push_str(&format!(
                    "{{\"conversation_key\":\"{key}\",\"reason\":\"{}\"}}\n",
                    reason.as_str()
                ));
            }
            print(&out)?;
            eprintln!(
                "{} of {} rows of {snapshot} revoked as of {now}",
                revocations.revoked.len(),
                revocations.rows
            );
            Ok(())
        }
        Command::Export {
            command:
                Some(export::ExportCommand::Verify {
                    store,
                    folder,
                    public_key,
                }),
            ..
        } => {
            let public_key = match public_key {
                Some(key) => key,
                None => {
                    let path = store.data.join(custos_store::ledger::PUBLIC_KEY_FILE);
                    std::fs::read_to_string(&path)
                        .map_err(|e| {
                            Failure::invalid_input(anyhow::anyhow!(
                                "{}: {e} (pass --public-key)",
                                path.display()
                            ))
                        })?
                        .trim()
                        .to_owned()
                }
            };
            let verified = custos_export::verify(&folder, &public_key).map_err(|e| {
                Failure::operational(anyhow::anyhow!("export verification FAILED: {e}"))
            })?;
            print(&format!(
                "{}: signature valid, {} file(s) and {} rows match the manifest\n",
                verified.snapshot, verified.files, verified.rows
            ))
        }
        Command::Retention(RetentionCommand::Check { store }) => {
            let opened = store.open_existing()?;
            let check = retention::check(&opened).map_err(store_failure)?;
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
        Command::Dsr(DsrCommand::Export {
            store,
            account,
            now,
        }) => {
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
        Command::Serve(args) => serve::serve(args).map_err(Failure::operational),
        Command::Token(TokenCommand::Create(args)) => {
            let token = serve::create_token(args).map_err(Failure::invalid_input)?;
            print(&format!("{token}\n"))
        }
        Command::Token(TokenCommand::Revoke { store, token }) => {
            let opened = store.open_existing()?;
            let now = custos_http::system_now();
            if opened
                .revoke_token(&token, now)
                .map_err(Failure::operational)?
            {
                print("revoked\n")
            } else {
                Err(Failure::invalid_input(anyhow::anyhow!(
                    "no such active token"
                )))
            }
        }
        Command::Internal(InternalCommand::WriteLoad { store, log, writes }) => {
            let opened =
                Store::open(&store.location(), Policy::bundled()).map_err(store_failure)?;
            write_load::run(&opened, &log, writes).map_err(store_failure)
        }
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

/// `--now`, or the wall clock.
fn parse_now(now: Option<String>) -> Result<custos_core::Timestamp, Failure> {
    match now {
        Some(text) => custos_core::Timestamp::parse(&text)
            .map_err(|e| Failure::invalid_input(anyhow::anyhow!("--now: {e}"))),
        None => Ok(custos_http::system_now()),
    }
}

fn export_failure(error: custos_export::ExportError) -> Failure {
    match error {
        custos_export::ExportError::Store(error) => store_failure(error),
        error if error.is_refusal() => Failure::invalid_input(error),
        error @ (custos_export::ExportError::UnknownSnapshot(_)
        | custos_export::ExportError::Incomplete(_)) => Failure::invalid_input(error),
        error => Failure::operational(error),
    }
}

fn store_failure(error: StoreError) -> Failure {
    match error {
        StoreError::Refused(_) => Failure::invalid_input(error),
        _ => Failure::operational(error),
    }
}

fn print(text: &str) -> Result<(), Failure> {
    io::stdout()
        .lock()
        .write_all(text.as_bytes())
        .map_err(Failure::operational)
}
