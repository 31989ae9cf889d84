//! Writing training rows to data files: Parquet or JSONL, split at a size, each file hashed as
//! it is written.
//!
//! Everything here is deterministic: the bytes of every file depend only on the rows, in their
//! order, and on the settings (no clock, no random, no snapshot id), so the same selection
//! gives byte-identical files (invariant 4 of docs/POLICY.md).

use std::borrow::Cow;
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

use crate::error::ExportError;

/// One exported conversation, after redaction. Texts are borrowed where redaction left them
/// as they were: the sink copies each once, into its file or its row group's column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainingRow<'a> {
    pub conversation_key: &'a str,
    pub account_key: &'a str,
    pub surface: &'static str,
    pub messages: Vec<TrainingMessage<'a>>,
    pub feedback: Vec<TrainingFeedback<'a>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainingMessage<'a> {
    pub role: &'static str,
    pub text: Cow<'a, str>,
    pub at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainingFeedback<'a> {
    pub rating: &'static str,
    pub comment: Option<Cow<'a, str>>,
    pub at: Timestamp,
}

impl TrainingRow<'_> {
    /// The text bytes the row carries: what row groups and files are sized by.
    fn text_bytes(&self) -> usize {
        let messages: usize = self.messages.iter().map(|m| m.text.len() + 16).sum();
        let feedback: usize = self
            .feedback
            .iter()
            .map(|f| f.comment.as_ref().map_or(0, |c| c.len()) + 16)
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
    /// The next Parquet row group, its columns filled as rows come.
    group: RowGroup,
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
            group: RowGroup::default(),
        }
    }

    fn next_path(&self) -> PathBuf {
        self.folder.join(format!(
            "part-{:05}.{}",
            self.finished.len(),
            self.format.as_str()
        ))
    }

    pub fn write(&mut self, row: &TrainingRow<'_>) -> Result<(), ExportError> {
        match self.format {
            Format::Jsonl => self.write_jsonl(row),
            Format::Parquet => {
                self.group.push(row);
                let limit =
                    ROW_GROUP_BYTES.min(usize::try_from(self.max_file_bytes).unwrap_or(usize::MAX));
                if self.group.text_bytes >= limit {
                    self.flush_group()?;
                }
                Ok(())
            }
        }
    }

    fn write_jsonl(&mut self, row: &TrainingRow<'_>) -> Result<(), ExportError> {
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
        if self.group.rows == 0 {
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
        *rows += self.group.rows as u64;
        self.group
            .write(writer)
            .map_err(|e| ExportError::parquet(path, e))?;
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
fn jsonl_line(row: &TrainingRow<'_>) -> String {
    let mut line = String::with_capacity(row.text_bytes() + 128);
    let quoted = |line: &mut String, text: &str| {
        line.push_str(&serde_json::Value::from(text).to_string());
    };
    line.push_str("{\"conversation_key\":");
    quoted(&mut line, row.conversation_key);
    line.push_str(",\"account_key\":");
    quoted(&mut line, row.account_key);
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
/// three-level LIST layout, which pyarrow, DuckDB and Spark read as `list<struct<…>>`). The
/// field names are the JSONL rows' own, in the chat format (`role`, `content`).
const SCHEMA: &str = "
message training_conversation {
  required binary conversation_key (STRING);
  required binary account_key (STRING);
  required binary surface (STRING);
  required group messages (LIST) {
    repeated group list {
      required group element {
        required binary role (STRING);
        required binary content (STRING);
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
        "messages.list.element.content",
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
    /// Room for as many values and bytes as `like` holds: each row group's buffers are
    /// allocated once, the size of the last one's, instead of doubling (and copying) their way
    /// up to tens of megabytes.
    fn sized_like(like: &Strings) -> Strings {
        Strings {
            buffer: Vec::with_capacity(like.buffer.len()),
            ends: Vec::with_capacity(like.ends.len()),
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
    fn sized_like(like: &ListLevels) -> ListLevels {
        ListLevels {
            definition: Vec::with_capacity(like.definition.len()),
            repetition: Vec::with_capacity(like.repetition.len()),
        }
    }

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

/// The next row group's columns, filled row by row as rows come, so that each text is copied
/// once, straight into its column.
#[derive(Default)]
struct RowGroup {
    rows: usize,
    /// As [`TrainingRow::text_bytes`] counts them: what the group is cut by.
    text_bytes: usize,
    conversation_keys: Strings,
    account_keys: Strings,
    surfaces: Strings,
    message_levels: ListLevels,
    roles: Strings,
    texts: Strings,
    message_times: Vec<i64>,
    feedback_levels: ListLevels,
    ratings: Strings,
    comments: Strings,
    comment_definition: Vec<i16>,
    feedback_times: Vec<i64>,
}

impl RowGroup {
    fn push(&mut self, row: &TrainingRow<'_>) {
        self.rows += 1;
        self.text_bytes += row.text_bytes();
        self.conversation_keys.push(row.conversation_key);
        self.account_keys.push(row.account_key);
        self.surfaces.push(row.surface);
        self.message_levels.list(row.messages.len());
        for message in &row.messages {
            self.roles.push(message.role);
            self.texts.push(&message.text);
            self.message_times.push(message.at.unix_millis());
        }
        self.feedback_levels.list(row.feedback.len());
        if row.feedback.is_empty() {
            self.comment_definition.push(0);
        }
        for feedback in &row.feedback {
            self.ratings.push(feedback.rating);
            self.feedback_times.push(feedback.at.unix_millis());
            match &feedback.comment {
                Some(comment) => {
                    self.comments.push(comment);
                    self.comment_definition.push(2);
                }
                None => self.comment_definition.push(1),
            }
        }
    }

    /// An empty group with room for as much as this one holds.
    fn sized_like(&self) -> RowGroup {
        RowGroup {
            rows: 0,
            text_bytes: 0,
            conversation_keys: Strings::sized_like(&self.conversation_keys),
            account_keys: Strings::sized_like(&self.account_keys),
            surfaces: Strings::sized_like(&self.surfaces),
            message_levels: ListLevels::sized_like(&self.message_levels),
            roles: Strings::sized_like(&self.roles),
            texts: Strings::sized_like(&self.texts),
            message_times: Vec::with_capacity(self.message_times.len()),
            feedback_levels: ListLevels::sized_like(&self.feedback_levels),
            ratings: Strings::sized_like(&self.ratings),
            comments: Strings::sized_like(&self.comments),
            comment_definition: Vec::with_capacity(self.comment_definition.len()),
            feedback_times: Vec::with_capacity(self.feedback_times.len()),
        }
    }

    /// Writes the group's columns as the file's next row group, and starts the next group.
    fn write(
        &mut self,
        writer: &mut SerializedFileWriter<HashingFile>,
    ) -> parquet::errors::Result<()> {
        let next = self.sized_like();
        let group = std::mem::replace(self, next);
        let mut row_group = writer.next_row_group()?;
        let mut column = |values: Leaf<'_>| -> parquet::errors::Result<()> {
            let Some(mut column) = row_group.next_column()? else {
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
        column(Leaf::Strings(group.conversation_keys, None))?;
        column(Leaf::Strings(group.account_keys, None))?;
        column(Leaf::Strings(group.surfaces, None))?;
        let messages = (
            &group.message_levels.definition[..],
            &group.message_levels.repetition[..],
        );
        column(Leaf::Strings(group.roles, Some(messages)))?;
        column(Leaf::Strings(group.texts, Some(messages)))?;
        column(Leaf::Times(group.message_times, Some(messages)))?;
        let feedback = (
            &group.feedback_levels.definition[..],
            &group.feedback_levels.repetition[..],
        );
        column(Leaf::Strings(group.ratings, Some(feedback)))?;
        column(Leaf::Strings(
            group.comments,
            Some((
                &group.comment_definition[..],
                &group.feedback_levels.repetition[..],
            )),
        ))?;
        column(Leaf::Times(group.feedback_times, Some(feedback)))?;
        row_group.close()?;
        Ok(())
    }
}

type Levels<'a> = Option<(&'a [i16], &'a [i16])>;

enum Leaf<'a> {
    Strings(Strings, Levels<'a>),
    Times(Vec<i64>, Levels<'a>),
}
