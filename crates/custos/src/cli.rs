//! What every subcommand shares: where the store is, the exit code an error deserves, and
//! writing to stdout (a closed pipe is not an error).

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use clap::Args;
use custos_core::{Policy, Timestamp};
use custos_store::{KeySource, Location, Purpose, SQLITE_FILE, Store, StoreError};

/// Where the store is: SQLite in a data folder, or PostgreSQL; and where its keys are.
#[derive(Args, Clone, Debug)]
pub struct StoreArgs {
    /// The data folder.
    #[arg(long, env = "CUSTOS_DATA", default_value = "custos-data")]
    pub data: PathBuf,
    /// A PostgreSQL URL (postgres://… or key=value); SQLite in the data folder when absent.
    #[arg(long, env = "CUSTOS_DATABASE")]
    pub database: Option<String>,
    /// The folder of the store's keys (signing.key, pseudonym.key, export.key) [default:
    /// DATA/keys]; `CUSTOS_SIGNING_KEY`, `CUSTOS_PSEUDONYM_KEY` and `CUSTOS_EXPORT_KEY` (hex)
    /// override its files.
    #[arg(long, env = "CUSTOS_KEYS")]
    pub keys: Option<PathBuf>,
}

/// Where an instance finds the store's keys: the environment's `CUSTOS_*_KEY`, then `keys`
/// (default `DATA/keys`), then the data folder's own key files (stores made before keys had a
/// folder).
pub fn key_source(data: &Path, keys: Option<&Path>) -> KeySource {
    let mut source = KeySource::in_data(data);
    if let Some(keys) = keys {
        source.folder = keys.to_owned();
    }
    source.variables = Purpose::ALL
        .into_iter()
        .filter_map(|purpose| Some((purpose, std::env::var(purpose.variable()).ok()?)))
        .collect();
    source
}

impl StoreArgs {
    pub fn location(&self) -> Location {
        Location::new(self.data.clone(), self.database.clone())
    }

    pub fn key_source(&self) -> KeySource {
        key_source(&self.data, self.keys.as_deref())
    }

    /// Opens the store, creating it (and its keys) if it does not exist yet.
    pub fn open(&self) -> Result<Store, Failure> {
        Store::open_with(
            &self.location(),
            Policy::bundled(),
            &self.key_source(),
            true,
        )
        .map_err(store_failure)
    }

    /// Opens a store that must already exist: inspecting a folder never creates one.
    pub fn open_existing(&self) -> Result<Store, Failure> {
        if self.database.is_none() && !self.data.join(SQLITE_FILE).exists() {
            return Err(Failure::invalid_input(anyhow::anyhow!(
                "{} does not exist: is `--data` the folder custos wrote to?",
                self.data.join(SQLITE_FILE).display()
            )));
        }
        Store::open_with(
            &self.location(),
            Policy::bundled(),
            &self.key_source(),
            false,
        )
        .map_err(Failure::operational)
    }
}

/// An error with the exit code it deserves.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub error: anyhow::Error,
}

impl Failure {
    /// Exit 2: the input was wrong (a file, a step, an argument).
    pub fn invalid_input(error: impl Into<anyhow::Error>) -> Failure {
        Failure {
            code: 2,
            error: error.into(),
        }
    }

    /// Exit 1: the input was fine, and the work failed (I/O, a damaged store, a verification).
    pub fn operational(error: impl Into<anyhow::Error>) -> Failure {
        Failure {
            code: 1,
            error: error.into(),
        }
    }

    /// Whether it is only a closed output pipe, which is not an error.
    pub fn is_broken_pipe(&self) -> bool {
        self.error.chain().any(|cause| {
            cause
                .downcast_ref::<io::Error>()
                .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
        })
    }
}

/// A refusal is the input's fault; anything else the store's.
pub fn store_failure(error: StoreError) -> Failure {
    match error {
        StoreError::Refused(_) => Failure::invalid_input(error),
        _ => Failure::operational(error),
    }
}

pub fn export_failure(error: custos_export::ExportError) -> Failure {
    use custos_export::ExportError;
    match error {
        ExportError::Store(error) => store_failure(error),
        error if error.is_refusal() => Failure::invalid_input(error),
        error @ (ExportError::UnknownSnapshot(_) | ExportError::Incomplete(_)) => {
            Failure::invalid_input(error)
        }
        error => Failure::operational(error),
    }
}

/// `--now`, or the wall clock.
pub fn parse_now(now: Option<String>) -> Result<Timestamp, Failure> {
    match now {
        Some(text) => Timestamp::parse(&text)
            .map_err(|e| Failure::invalid_input(anyhow::anyhow!("--now: {e}"))),
        None => Ok(custos_http::system_now()),
    }
}

/// A file of the command line, read whole; a file that can't be read is the input's fault.
pub fn read_input(file: &std::path::Path) -> Result<String, Failure> {
    std::fs::read_to_string(file).map_err(|e| {
        Failure::invalid_input(anyhow::Error::new(e).context(format!("reading {}", file.display())))
    })
}

pub fn print(text: &str) -> Result<(), Failure> {
    io::stdout()
        .lock()
        .write_all(text.as_bytes())
        .map_err(Failure::operational)
}
