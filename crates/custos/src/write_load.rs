//! `custos internal write-load`: the writer the crash test kills.
//!
//! It creates accounts and then makes choices and sends messages as fast as the store takes
//! them, appending one line to the log after each write is committed:
//! `account ID`, `choice ID LEDGER_LENGTH`, `message CONVERSATION`. A line in the log is a
//! promise the store must keep after any crash.

use std::io::Write;
use std::path::Path;

use custos_core::{AccountId, Channel, Command, ConversationId, Role, Surface};
use custos_http::system_now as now;
use custos_store::{Store, StoreError};

use crate::cli::{Failure, StoreArgs, store_failure};

#[derive(clap::Subcommand)]
pub enum InternalCommand {
    /// Write choices and messages as fast as possible, logging each one once it is committed.
    WriteLoad {
        #[command(flatten)]
        store: StoreArgs,
        /// Append one line per acknowledged write here.
        #[arg(long)]
        log: std::path::PathBuf,
        /// Stop after this many writes (default: never).
        #[arg(long)]
        writes: Option<u64>,
    },
}

pub fn command(command: InternalCommand) -> Result<(), Failure> {
    let InternalCommand::WriteLoad { store, log, writes } = command;
    run(&store.open()?, &log, writes).map_err(store_failure)
}

fn run(store: &Store, log: &Path, writes: Option<u64>) -> Result<(), StoreError> {
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| StoreError::Io {
            path: log.to_owned(),
            source: e,
        })?;
    let mut acknowledge = |line: String| {
        // One write call per line, after the commit: a kill loses at most the last promise.
        log.write_all(format!("{line}\n").as_bytes())
            .map_err(|e| StoreError::Io {
                path: "write-load log".into(),
                source: e,
            })
    };
    let run = std::process::id();
    let accounts: Vec<AccountId> = (0..8)
        .map(|i| {
            AccountId::parse(&format!("r{run}-a{i}"))
                .map_err(|e| StoreError::Database(e.to_string()))
        })
        .collect::<Result<_, _>>()?;
    for account in &accounts {
        let create = Command::CreateAccount {
            account: account.clone(),
            plan: "pro".into(),
            choice: Some((true, Channel::Signup)),
        };
        store.apply(now(), &create, "write-load")?;
        acknowledge(format!("account {account}"))?;
    }
    for (count, account) in (0_u64..).zip(accounts.iter().cycle()) {
        if writes.is_some_and(|limit| count >= limit) {
            break;
        }
        if count % 2 == 0 {
            let choice = Command::Choose {
                account: account.clone(),
                allowed: count % 4 == 0,
                channel: Channel::Settings,
            };
            store.apply(now(), &choice, "write-load")?;
            let length = store.ledger(account)?.len();
            acknowledge(format!("choice {account} {length}"))?;
        } else {
            let conversation = ConversationId::parse(&format!("r{run}-c{count}"))
                .map_err(|e| StoreError::Database(e.to_string()))?;
            let message = Command::Message {
                account: account.clone(),
                conversation: conversation.clone(),
                surface: Surface::Chat,
                role: Role::User,
                text: format!("message {count}"),
                incognito: false,
            };
            store.apply(now(), &message, "write-load")?;
            acknowledge(format!("message {conversation}"))?;
        }
        if count % 64 == 63 {
            store.checkpoint(now())?;
        }
    }
    Ok(())
}
