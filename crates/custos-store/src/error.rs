//! What can go wrong in the store, and how to say it.

use std::path::{Path, PathBuf};

use custos_core::Refusal;

/// Why a store operation failed. A refusal is the core's answer; every other variant is a
/// storage problem, and in every case nothing of the failed operation was written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error(
        "the database has schema version {found}, newer than this custos supports ({supported}); use a newer custos"
    )]
    SchemaTooNew { found: i64, supported: i64 },
    #[error("the database is damaged or is not a custos database: {0}")]
    Corrupt(String),
    #[error(
        "the disk is full (or the file size limit was reached); nothing of this write was kept: {0}"
    )]
    DiskFull(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the ledger signing key: {0}")]
    Key(String),
    /// A scan's visitor stopped it; the visitor holds the reason.
    #[error("the scan was stopped")]
    Stopped,
    #[error("database error: {0}")]
    Database(String),
    /// The database can't be reached (down, restarting, failing over, or a standby that
    /// can't write); nothing of the operation was acknowledged, and it may be tried again.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    #[error("the write conflicted with concurrent writes {0} times in a row; try again")]
    Conflict(u32),
    /// Another sweep holds the store's sweep lease: one sweep runs at a time, across every
    /// instance.
    #[error("a sweep is already running (by {by}, on {instance}); this one did not start")]
    SweepRunning { by: String, instance: String },
}

impl StoreError {
    pub(crate) fn corrupt(message: impl Into<String>) -> StoreError {
        StoreError::Corrupt(message.into())
    }

    pub fn io(path: &Path, source: std::io::Error) -> StoreError {
        StoreError::Io {
            path: path.to_owned(),
            source,
        }
    }
}
