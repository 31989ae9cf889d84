//! What can go wrong with an export, and how to say it.

use std::path::{Path, PathBuf};

use custos_core::Timestamp;
use custos_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("purpose `{0}` is refused: exports serve `model_training` only (R9)")]
    Purpose(String),
    #[error(
        "destination {destination} is refused: {why}. Exports are written only inside the export root {root} (R9); choose a new folder inside it, or configure another root"
    )]
    Destination {
        destination: PathBuf,
        root: PathBuf,
        why: String,
    },
    #[error("cutoff {cutoff} is later than now ({now}): a snapshot can't hold the future")]
    CutoffInFuture { cutoff: Timestamp, now: Timestamp },
    #[error("no export `{0}` is recorded")]
    UnknownSnapshot(String),
    #[error("export `{0}` did not finish, so it has no manifest")]
    Incomplete(String),
    #[error(
        "the export was stopped before it finished (interrupted, or custos is shutting down); what it had written was removed"
    )]
    Stopped,
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: writing Parquet: {message}")]
    Parquet { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl ExportError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> ExportError {
        ExportError::Io {
            path: path.to_owned(),
            source,
        }
    }

    pub(crate) fn parquet(path: &Path, error: parquet::errors::ParquetError) -> ExportError {
        ExportError::Parquet {
            path: path.to_owned(),
            message: error.to_string(),
        }
    }

    pub(crate) fn invalid(path: &Path, message: impl Into<String>) -> ExportError {
        ExportError::Invalid {
            path: path.to_owned(),
            message: message.into(),
        }
    }

    /// Whether the caller asked for something refused (rather than the export failing).
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            ExportError::Purpose(_)
                | ExportError::Destination { .. }
                | ExportError::CutoffInFuture { .. }
        )
    }
}
