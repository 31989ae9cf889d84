//! The names of an export's files and of its record's, and where they lie.

/// The version of the manifest and data file layout. Version 2 names a message's text
/// `content` in Parquet as in JSONL (version 1 called it `text` there).
pub const FORMAT_VERSION: &str = "custos-export/2";
/// Where the default export root lies, inside the data folder.
pub const DEFAULT_ROOT: &str = "exports";
/// Each export's record (manifest, signature, row keys), inside the data folder.
pub const RECORDS: &str = "export-records";
pub const MANIFEST: &str = "manifest.json";
pub const SIGNATURE: &str = "manifest.json.sig";
pub const REQUEST: &str = "request.json";
pub const KEYS: &str = "keys";
pub const DEFAULT_MAX_FILE_BYTES: u64 = 256 << 20;
