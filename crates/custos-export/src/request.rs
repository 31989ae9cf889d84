//! What an export is asked for, and the accepted request it becomes.

use std::path::PathBuf;

use custos_core::Timestamp;

use crate::sink::Format;

/// What a caller asks for.
#[derive(Debug, Clone)]
pub struct Request {
    pub purpose: String,
    pub cutoff: Timestamp,
    pub format: Format,
    /// The folder to write, which must be new or empty and inside the export root; a new
    /// folder named after the snapshot id when absent.
    pub out: Option<PathBuf>,
    pub max_file_bytes: u64,
}

/// An accepted request, with its snapshot id, ready to run.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub id: String,
    pub cutoff: Timestamp,
    pub now: Timestamp,
    pub format: Format,
    pub out: PathBuf,
    pub max_file_bytes: u64,
}
