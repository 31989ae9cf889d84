//! Writing training rows to data files: Parquet or JSONL, split at a size, each file hashed as
//! it is written.
//!
//! Everything here is deterministic: the bytes of every file depend only on the rows, in their
//! order, and on the settings (no clock, no random, no snapshot id), so the same selection
//! gives byte-identical files (SPEC §4 invariant 4).

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use custos_core::Timestamp;
use parquet::basic::Compression;
use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::{ColumnPath, Type};
use sha2::{Digest, Sha256};

use crate::ExportError;

/// One exported conversation, after redaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainingRow {
    pub conversation_key: String,
    pub account_key: String,
    pub surface: &'static str,
    pub messages: Vec<TrainingMessage>,
    pub feedback: Vec<TrainingFeedback>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainingMessage {
    pub role: &'static str,
    pub text: String,
    pub at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainingFeedback {
    pub rating: &'static str,
    pub comment: Option<String>,
    pub at: Timestamp,
}

impl TrainingRow {
    /// The text bytes the row carries: what row groups and files are sized by.
    fn text_bytes(&self) -> usize {
        let messages: usize = self.messages.iter().map(|m| m.text.len() + 16).sum();
        let feedback: usize = self
            .feedback
            .iter()
            .map(|f| f.comment.as_ref().map_or(0, String::len) + 16)
            .sum();
        self.conversation_key.len() + self.account_key.len() + messages + feedback
    }
}

/// A finished data file, as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenFile {
    pub name: String,
    pub rows: u64,
    pub bytes: u64,
    pub sha256: [u8; 32],
}

/// The data file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Parquet,
    Jsonl,
}

impl Format {
    pub fn parse(text: &str) -> Option<Format> {
        match text {
            "parquet" => Some(Format::Parquet),
            "jsonl" => Some(Format::Jsonl),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Parquet => "parquet",
            Format::Jsonl => "jsonl",
        }
    }
}

/// A file being written: counts and hashes every byte, and is renamed into place only when
/// finished, so a file under its final name is always whole.
struct HashingFile {
    out: BufWriter<File>,
    partial: PathBuf,
    path: PathBuf,
    hasher: Sha256,
    bytes: u64,
}

impl HashingFile {
    fn create(path: PathBuf) -> Result<HashingFile, ExportError> {
        let partial = path.with_extension("partial");
        let file = File::create_new(&partial).map_err(|e| ExportError::io(&partial, e))?;
        Ok(HashingFile {
            out: BufWriter::with_capacity(1 << 20, file),
            partial,
            path,
            hasher: Sha256::new(),
            bytes: 0,
        })
    }

    fn finish(self, rows: u64) -> Result<WrittenFile, ExportError> {
        let file = self
            .out
            .into_inner()
            .map_err(|e| ExportError::io(&self.partial, e.into_error()))?;
        file.sync_all()
            .map_err(|e| ExportError::io(&self.partial, e))?;
        fs::rename(&self.partial, &self.path).map_err(|e| ExportError::io(&self.path, e))?;
        Ok(WrittenFile {
            name: file_name(&self.path),
            rows,
            bytes: self.bytes,
            sha256: self.hasher.finalize().into(),
        })
    }
}

impl Write for HashingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.out.write(buf)?;
        let part = buf.get(..written).unwrap_or_default();
        self.hasher.update(part);
        self.bytes += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Writes rows into numbered files `part-00000.<format>`, … under `folder`, starting a new file
/// once one holds `max_file_bytes`.
pub struct Sink {
    folder: PathBuf,
    format: Format,
    max_file_bytes: u64,
    current: Option<Open>,
    finished: Vec<WrittenFile>,
    /// Rows buffered for the next Parquet row group.
    group: Vec<TrainingRow>,
    group_bytes: usize,
}

enum Open {
    Jsonl {
        file: HashingFile,
        rows: u64,
    },
    Parquet {
        writer: Box<SerializedFileWriter<HashingFile>>,
        path: PathBuf,
        rows: u64,
    },
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink")
            .field("folder", &self.folder)
            .field("format", &self.format)
            .field("files", &self.finished.len())
            .finish()
    }
}

/// Row groups are cut at this many text bytes (or at the file size, if smaller): large enough
/// for good compression, small enough to bound memory.
const ROW_GROUP_BYTES: usize = 32 << 20;

impl Sink {
    pub fn new(folder: &Path, format: Format, max_file_bytes: u64) -> Sink {
        Sink {
            folder: folder.to_owned(),
            format,
            max_file_bytes: max_file_bytes.max(1),
            current: None,
            finished: Vec::new(),
            group: Vec::new(),
            group_bytes: 0,
        }
    }

    fn next_path(&self) -> PathBuf {
        self.folder.join(format!(
            "part-{:05}.{}",
            self.finished.len(),
            self.format.as_str()
        ))
    }

    pub fn write(&mut self, row: TrainingRow) -> Result<(), ExportError> {
        match self.format {
            Format::Jsonl => self.write_jsonl(&row),
            Format::Parquet => {
                self.group_bytes += row.text_bytes();
                self.group.push(row);
                let limit =
                    ROW_GROUP_BYTES.min(usize::try_from(self.max_file_bytes).unwrap_or(usize::MAX));
                if self.group_bytes >= limit {
                    self.flush_group()?;
                }
                Ok(())
            }
        }
    }

    fn write_jsonl(&mut self, row: &TrainingRow) -> Result<(), ExportError> {
        if self.current.is_none() {
            let file = HashingFile::create(self.next_path())?;
            self.current = Some(Open::Jsonl { file, rows: 0 });
        }
        let Some(Open::Jsonl { file, rows }) = self.current.as_mut() else {
            return Err(ExportError::Internal(
                "a JSONL sink holds another kind of file",
            ));
        };
        let line = jsonl_line(row);
        file.write_all(line.as_bytes())
            .map_err(|e| ExportError::io(&file.partial, e))?;
        *rows += 1;
        if file.bytes >= self.max_file_bytes {
            self.close_file()?;
        }
        Ok(())
    }

    fn flush_group(&mut self) -> Result<(), ExportError> {
        if self.group.is_empty() {
            return Ok(());
        }
        if self.current.is_none() {
            self.open_parquet()?;
        }
        let Some(Open::Parquet { writer, path, rows }) = self.current.as_mut() else {
            return Err(ExportError::Internal(
                "a Parquet sink holds another kind of file",
            ));
        };
        write_row_group(writer, &self.group).map_err(|e| ExportError::parquet(path, e))?;
        *rows += self.group.len() as u64;
        self.group.clear();
        self.group_bytes = 0;
        if writer.bytes_written() as u64 >= self.max_file_bytes {
            self.close_file()?;
        }
        Ok(())
    }

    /// Starts the next Parquet file.
    fn open_parquet(&mut self) -> Result<(), ExportError> {
        let path = self.next_path();
        let file = HashingFile::create(path.clone())?;
        let writer = SerializedFileWriter::new(file, Arc::new(schema()?), Arc::new(properties()))
            .map_err(|e| ExportError::parquet(&path, e))?;
        self.current = Some(Open::Parquet {
            writer: Box::new(writer),
            path,
            rows: 0,
        });
        Ok(())
    }

    fn close_file(&mut self) -> Result<(), ExportError> {
        let written = match self.current.take() {
            None => return Ok(()),
            Some(Open::Jsonl { file, rows }) => file.finish(rows)?,
            Some(Open::Parquet { writer, path, rows }) => {
                let file = writer
                    .into_inner()
                    .map_err(|e| ExportError::parquet(&path, e))?;
                file.finish(rows)?
            }
        };
        self.finished.push(written);
        Ok(())
    }

    /// Writes what is buffered, closes the last file and lists every file written. An export
    /// with no rows still has one (empty) file, so that readers find the schema.
    pub fn finish(mut self) -> Result<Vec<WrittenFile>, ExportError> {
        if self.format == Format::Parquet {
            self.flush_group()?;
        }
        if self.finished.is_empty() && self.current.is_none() {
            match self.format {
                Format::Jsonl => {
                    let file = HashingFile::create(self.next_path())?;
                    self.current = Some(Open::Jsonl { file, rows: 0 });
                }
                Format::Parquet => self.open_parquet()?,
            }
        }
        self.close_file()?;
        Ok(self.finished)
    }
}

/// The common chat format: `messages` with `role` and `content`, plus the keys, the surface,
/// each message's time and the feedback.
fn jsonl_line(row: &TrainingRow) -> String {
    let mut line = String::with_capacity(row.text_bytes() + 128);
    let quoted = |line: &mut String, text: &str| {
        line.push_str(&serde_json::Value::from(text).to_string());
    };
    line.push_str("{\"conversation_key\":");
    quoted(&mut line, &row.conversation_key);
    line.push_str(",\"account_key\":");
    quoted(&mut line, &row.account_key);
    line.push_str(",\"surface\":");
    quoted(&mut line, row.surface);
    line.push_str(",\"messages\":[");
    for (i, message) in row.messages.iter().enumerate() {
        if i > 0 {
            line.push(',');
        }
        line.push_str("{\"role\":");
        quoted(&mut line, message.role);
        line.push_str(",\"content\":");
        quoted(&mut line, &message.text);
        line.push_str(",\"at\":");
        quoted(&mut line, &message.at.to_string());
        line.push('}');
    }
    line.push_str("],\"feedback\":[");
    for (i, feedback) in row.feedback.iter().enumerate() {
        if i > 0 {
            line.push(',');
        }
        line.push_str("{\"rating\":");
        quoted(&mut line, feedback.rating);
        line.push_str(",\"comment\":");
        match &feedback.comment {
            Some(comment) => quoted(&mut line, comment),
            None => line.push_str("null"),
        }
        line.push_str(",\"at\":");
        quoted(&mut line, &feedback.at.to_string());
        line.push('}');
    }
    line.push_str("]}\n");
    line
}

/// One row per conversation; messages and feedback as lists of structs (the standard
/// three-level LIST layout, which pyarrow, DuckDB and Spark read as `list<struct<…>>`).
const SCHEMA: &str = "
message training_conversation {
  required binary conversation_key (STRING);
  required binary account_key (STRING);
  required binary surface (STRING);
  required group messages (LIST) {
    repeated group list {
      required group element {
        required binary role (STRING);
        required binary text (STRING);
        required int64 at (TIMESTAMP(MILLIS,true));
      }
    }
  }
  required group feedback (LIST) {
    repeated group list {
      required group element {
        required binary rating (STRING);
        optional binary comment (STRING);
        required int64 at (TIMESTAMP(MILLIS,true));
      }
    }
  }
}";

fn schema() -> Result<Type, ExportError> {
    parquet::schema::parser::parse_message_type(SCHEMA)
        .map_err(|e| ExportError::parquet(Path::new("schema"), e))
}

fn properties() -> WriterProperties {
    let column =
        |path: &str| ColumnPath::from(path.split('.').map(str::to_owned).collect::<Vec<_>>());
    let mut builder = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        // A fixed writer name: the file's bytes must not depend on anything but the rows.
        .set_created_by(format!("custos {}", env!("CARGO_PKG_VERSION")));
    // Keys and texts are (nearly) unique: a dictionary costs time and saves nothing, and
    // statistics would copy text into the file's metadata.
    for path in [
        "conversation_key",
        "account_key",
        "messages.list.element.text",
        "feedback.list.element.comment",
    ] {
        builder = builder
            .set_column_dictionary_enabled(column(path), false)
            .set_column_statistics_enabled(column(path), EnabledStatistics::None);
    }
    builder.build()
}

/// Byte-array values that share one buffer: one allocation per column, not per value.
#[derive(Default)]
struct Strings {
    buffer: Vec<u8>,
    ends: Vec<usize>,
}

impl Strings {
    /// Room for `count` values of `bytes` bytes in all: the buffers grow once, instead of
    /// doubling (and copying) their way up to a row group's tens of megabytes.
    fn with_capacity(count: usize, bytes: usize) -> Strings {
        Strings {
            buffer: Vec::with_capacity(bytes),
            ends: Vec::with_capacity(count),
        }
    }

    fn push(&mut self, text: &str) {
        self.buffer.extend_from_slice(text.as_bytes());
        self.ends.push(self.buffer.len());
    }

    fn values(self) -> Vec<ByteArray> {
        let buffer = Bytes::from(self.buffer);
        let mut start = 0;
        self.ends
            .into_iter()
            .map(|end| {
                let value = ByteArray::from(buffer.slice(start..end));
                start = end;
                value
            })
            .collect()
    }
}

/// One list column family (messages or feedback): the levels shared by its required leaves.
#[derive(Default)]
struct ListLevels {
    definition: Vec<i16>,
    repetition: Vec<i16>,
}

impl ListLevels {
    /// Records a list of `len` elements: an empty list is one level-0 slot with no value.
    fn list(&mut self, len: usize) {
        if len == 0 {
            self.definition.push(0);
            self.repetition.push(0);
        }
        for i in 0..len {
            self.definition.push(1);
            self.repetition.push(i16::from(i > 0));
        }
    }
}

fn write_row_group(
    writer: &mut SerializedFileWriter<HashingFile>,
    rows: &[TrainingRow],
) -> parquet::errors::Result<()> {
    // One pass to size every buffer, so that none grows while it is filled.
    let (mut message_count, mut text_bytes, mut feedback_count, mut comment_bytes) = (0, 0, 0, 0);
    for row in rows {
        message_count += row.messages.len();
        text_bytes += row.messages.iter().map(|m| m.text.len()).sum::<usize>();
        feedback_count += row.feedback.len();
        comment_bytes += row
            .feedback
            .iter()
            .map(|f| f.comment.as_ref().map_or(0, String::len))
            .sum::<usize>();
    }
    let keys = |row: &TrainingRow| row.conversation_key.len();
    let key_bytes = rows.iter().map(keys).sum();
    let (mut conversation_keys, mut account_keys, mut surfaces) = (
        Strings::with_capacity(rows.len(), key_bytes),
        Strings::with_capacity(rows.len(), key_bytes),
        Strings::with_capacity(rows.len(), rows.len() * 4),
    );
    let (mut roles, mut texts, mut message_times) = (
        Strings::with_capacity(message_count, message_count * 9),
        Strings::with_capacity(message_count, text_bytes),
        Vec::with_capacity(message_count),
    );
    let (mut ratings, mut comments, mut feedback_times) = (
        Strings::with_capacity(feedback_count, feedback_count * 4),
        Strings::with_capacity(feedback_count, comment_bytes),
        Vec::with_capacity(feedback_count),
    );
    let (mut message_levels, mut feedback_levels) = (ListLevels::default(), ListLevels::default());
    let mut comment_definition = Vec::new();
    for row in rows {
        conversation_keys.push(&row.conversation_key);
        account_keys.push(&row.account_key);
        surfaces.push(row.surface);
        message_levels.list(row.messages.len());
        for message in &row.messages {
            roles.push(message.role);
            texts.push(&message.text);
            message_times.push(message.at.unix_millis());
        }
        feedback_levels.list(row.feedback.len());
        if row.feedback.is_empty() {
            comment_definition.push(0);
        }
        for feedback in &row.feedback {
            ratings.push(feedback.rating);
            feedback_times.push(feedback.at.unix_millis());
            match &feedback.comment {
                Some(comment) => {
                    comments.push(comment);
                    comment_definition.push(2);
                }
                None => comment_definition.push(1),
            }
        }
    }
    let mut group = writer.next_row_group()?;
    let mut column = |values: Leaf<'_>| -> parquet::errors::Result<()> {
        let Some(mut column) = group.next_column()? else {
            return Err(parquet::errors::ParquetError::General(
                "the schema has fewer columns than the writer".into(),
            ));
        };
        match values {
            Leaf::Strings(values, levels) => {
                column.typed::<ByteArrayType>().write_batch(
                    &values.values(),
                    levels.map(|l| l.0),
                    levels.map(|l| l.1),
                )?;
            }
            Leaf::Times(values, levels) => {
                column.typed::<Int64Type>().write_batch(
                    &values,
                    levels.map(|l| l.0),
                    levels.map(|l| l.1),
                )?;
            }
        }
        column.close()
    };
    column(Leaf::Strings(conversation_keys, None))?;
    column(Leaf::Strings(account_keys, None))?;
    column(Leaf::Strings(surfaces, None))?;
    let messages = (
        &message_levels.definition[..],
        &message_levels.repetition[..],
    );
    column(Leaf::Strings(roles, Some(messages)))?;
    column(Leaf::Strings(texts, Some(messages)))?;
    column(Leaf::Times(message_times, Some(messages)))?;
    let feedback = (
        &feedback_levels.definition[..],
        &feedback_levels.repetition[..],
    );
    column(Leaf::Strings(ratings, Some(feedback)))?;
    column(Leaf::Strings(
        comments,
        Some((&comment_definition[..], &feedback_levels.repetition[..])),
    ))?;
    column(Leaf::Times(feedback_times, Some(feedback)))?;
    group.close()?;
    Ok(())
}

type Levels<'a> = Option<(&'a [i16], &'a [i16])>;

enum Leaf<'a> {
    Strings(Strings, Levels<'a>),
    Times(Vec<i64>, Levels<'a>),
}
