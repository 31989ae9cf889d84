//! `custos policy`, `custos ledger` and `custos receipt`: check a policy file, prove the consent
//! ledger, check a receipt offline.

use std::path::PathBuf;

use clap::Subcommand;
use custos_core::Policy;

use crate::cli::{Failure, StoreArgs, print, read_input};

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy file and print a summary; exit 2 with file:line:column if it is bad.
    Check { file: PathBuf },
    /// Print the bundled default policy.
    Show,
}

#[derive(Subcommand)]
pub enum LedgerCommand {
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
pub enum ReceiptCommand {
    /// Verify a signed consent receipt offline; exit 1 if it was changed.
    Verify {
        file: PathBuf,
        /// Also require that this public key (hex, from `custos ledger public-key`) signed it.
        #[arg(long)]
        public_key: Option<String>,
    },
}

pub fn policy(command: PolicyCommand) -> Result<(), Failure> {
    match command {
        PolicyCommand::Check { file } => {
            let text = read_input(&file)?;
            let policy = Policy::parse(&file.display().to_string(), &text)
                .map_err(Failure::invalid_input)?;
            print(&format!("{}: ok\n{}", file.display(), policy.summary()))
        }
        PolicyCommand::Show => print(Policy::bundled_text()),
    }
}

pub fn ledger(command: LedgerCommand) -> Result<(), Failure> {
    match command {
        LedgerCommand::Verify { store } => {
            let report = store
                .open_existing()?
                .verify_ledger()
                .map_err(Failure::operational)?;
            print(&format!(
                "checked {} accounts, {} ledger entries, {} signed checkpoints\n",
                report.accounts, report.entries, report.checkpoints
            ))?;
            match report.problem {
                None => print("ledger verified: every entry and checkpoint is intact\n"),
                Some(problem) => Err(Failure::operational(anyhow::anyhow!(
                    "ledger verification FAILED: {problem}"
                ))),
            }
        }
        LedgerCommand::Checkpoint { store } => {
            let now = custos_http::system_now();
            let signed = store
                .open_existing()?
                .checkpoint(now)
                .map_err(Failure::operational)?;
            match signed {
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
        LedgerCommand::PublicKey { store } => {
            print(&format!("{}\n", store.open_existing()?.public_key_hex()))
        }
    }
}

pub fn receipt(command: ReceiptCommand) -> Result<(), Failure> {
    let ReceiptCommand::Verify { file, public_key } = command;
    let text = read_input(&file)?;
    let document = serde_json::from_str(&text).map_err(|e| {
        Failure::invalid_input(anyhow::anyhow!("{}: not JSON: {e}", file.display()))
    })?;
    let id =
        custos_store::receipt::verify(&document, public_key.as_deref()).map_err(|problem| {
            Failure::operational(anyhow::anyhow!(
                "{}: receipt verification FAILED: {problem}",
                file.display()
            ))
        })?;
    print(&format!("{}: receipt {id} verified\n", file.display()))
}
