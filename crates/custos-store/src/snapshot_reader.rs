//! Readers of one shared snapshot on PostgreSQL, each on a connection of its own: the parts
//! of a whole-store read that run at once (the gate index's load, an export's chunks; see
//! `PostgresBackend::read_shared`).
//!
//! A reader drives tokio-postgres directly, one pass of its runtime per statement, and reads
//! rows by binary `COPY … TO STDOUT`. The blocking client enters its runtime once per message
//! it reads, and a `COPY` sends a message per row; a query's rows cost an object each. Here a
//! row costs its bytes, read in place into flat buffers.

use std::collections::HashMap;

use futures_util::StreamExt;
use postgres::types::{ToSql, Type};
use tokio_postgres::NoTls;

use crate::error::StoreError;
use crate::postgres_wire::{decode, from_postgres, map_error, to_postgres};
use crate::sql::{Dialect, Row, Rows, Tx, Value};

/// A read-only transaction in a snapshot another transaction exported.
pub(crate) struct SnapshotReader {
    runtime: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
    connection: tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
    /// Statements prepared on this connection, by their portable text.
    prepared: HashMap<String, tokio_postgres::Statement>,
}

impl SnapshotReader {
    /// Connects and begins a read-only transaction in `snapshot` (from `pg_export_snapshot`).
    pub(crate) fn open(
        config: &tokio_postgres::Config,
        snapshot: &str,
    ) -> Result<SnapshotReader, StoreError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| {
                StoreError::Unavailable(format!("no runtime for a PostgreSQL reader: {e}"))
            })?;
        let (client, connection) = runtime
            .block_on(async {
                let (client, connection) = config.connect(NoTls).await?;
                // The connection runs while the runtime does: in each statement's pass.
                let connection = tokio::spawn(connection);
                // Literals are written as the standard has them (see `literal`), whatever
                // the server's default; JIT off as on the pool's connections.
                client
                    .batch_execute(&format!(
                        "SET standard_conforming_strings = on; SET jit = off; \
                         BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; \
                         SET TRANSACTION SNAPSHOT '{snapshot}'"
                    ))
                    .await?;
                Ok((client, connection))
            })
            .map_err(|e: tokio_postgres::Error| map_error(&e))?;
        Ok(SnapshotReader {
            runtime,
            client,
            connection,
            prepared: HashMap::new(),
        })
    }

    /// Ends the transaction (it wrote nothing) and the connection.
    pub(crate) fn close(self) -> Result<(), StoreError> {
        let SnapshotReader {
            runtime,
            client,
            connection,
            ..
        } = self;
        runtime.block_on(async {
            client
                .batch_execute("COMMIT")
                .await
                .map_err(|e| map_error(&e))?;
            drop(client);
            let _ = connection.await;
            Ok(())
        })
    }

    fn statement(&mut self, sql: &str) -> Result<tokio_postgres::Statement, StoreError> {
        if let Some(statement) = self.prepared.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self
            .runtime
            .block_on(self.client.prepare(&Dialect::Postgres.rewrite(sql)))
            .map_err(|e| map_error(&e))?;
        self.prepared.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }

    /// The rows of `sql` with `params` written in as literals (a `COPY` takes no parameters),
    /// typed as the prepared statement's columns: into `rows`, handed on `batch` at a time if
    /// batched, else all kept there.
    fn copy(
        &mut self,
        sql: &str,
        params: &[Value],
        batch: Option<usize>,
        rows: &mut Rows,
        each: &mut dyn FnMut(&Rows) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let types: Vec<Type> = self
            .statement(sql)?
            .columns()
            .iter()
            .map(|column| column.type_().clone())
            .collect();
        let copy = format!(
            "COPY ({}) TO STDOUT (FORMAT binary)",
            with_literals(&Dialect::Postgres.rewrite_types(sql), params)?
        );
        let client = &self.client;
        self.runtime.block_on(async {
            let stream = client
                .copy_out(copy.as_str())
                .await
                .map_err(|e| map_error(&e))?;
            let mut stream = std::pin::pin!(stream);
            let mut reader = BinaryCopy::new(&types, batch, rows);
            while let Some(piece) = stream.next().await {
                reader.feed(&piece.map_err(|e| map_error(&e))?, rows, each)?;
            }
            reader.finish(rows, each)
        })
    }
}

/// `sql` with each `?` replaced by the next of `params` as an SQL literal.
fn with_literals(sql: &str, params: &[Value]) -> Result<String, StoreError> {
    let mut out = String::with_capacity(sql.len() + 16 * params.len());
    let mut params = params.iter();
    for c in sql.chars() {
        if c == '?' {
            let value = params
                .next()
                .ok_or_else(|| StoreError::Database("a statement with too few values".into()))?;
            out.push_str(&literal(value)?);
        } else {
            out.push(c);
        }
    }
    if params.next().is_some() {
        return Err(StoreError::Database(
            "a statement with too many values".into(),
        ));
    }
    Ok(out)
}

/// A value as an SQL literal, with standard conforming strings: a quote inside a text is
/// doubled, and nothing else is special. A NUL, which no text of PostgreSQL holds, is refused.
fn literal(value: &Value) -> Result<String, StoreError> {
    Ok(match value {
        Value::Null => "NULL".to_owned(),
        Value::Int(n) => format!("{n}::INT8"),
        Value::Bool(b) => if *b { "TRUE" } else { "FALSE" }.to_owned(),
        Value::Text(text) if text.contains('\0') => {
            return Err(StoreError::Database("a text with a NUL in it".into()));
        }
        Value::Text(text) => format!("'{}'", text.replace('\'', "''")),
        Value::Bytes(bytes) => format!("'\\x{}'::BYTEA", custos_core::policy::hex(bytes)),
    })
}

impl Tx for SnapshotReader {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn read_only(&self) -> bool {
        true
    }

    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, StoreError> {
        let statement = self.statement(sql)?;
        let boxed: Vec<_> = params.iter().map(to_postgres).collect();
        let refs: Vec<&(dyn ToSql + Sync)> = boxed.iter().map(AsRef::as_ref).collect();
        self.runtime
            .block_on(self.client.execute(&statement, &refs))
            .map_err(|e| map_error(&e))
    }

    fn query_each(
        &mut self,
        sql: &str,
        params: &[Value],
        each: &mut dyn FnMut(&Row) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let statement = self.statement(sql)?;
        let boxed: Vec<_> = params.iter().map(to_postgres).collect();
        let refs: Vec<&(dyn ToSql + Sync)> = boxed.iter().map(AsRef::as_ref).collect();
        let rows = self
            .runtime
            .block_on(self.client.query(&statement, &refs))
            .map_err(|e| map_error(&e))?;
        for row in &rows {
            let values = (0..row.len())
                .map(|i| from_postgres(row, i))
                .collect::<Result<Vec<_>, _>>()?;
            each(&Row(values))?;
        }
        Ok(())
    }

    fn query_rows(
        &mut self,
        sql: &str,
        params: &[Value],
        rows: &mut Rows,
    ) -> Result<(), StoreError> {
        self.copy(sql, params, None, rows, &mut |_| Ok(()))
    }

    fn stream_rows(
        &mut self,
        sql: &str,
        batch: usize,
        each: &mut dyn FnMut(&Rows) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut rows = Rows::default();
        self.copy(sql, &[], Some(batch), &mut rows, each)
    }
}

/// Reads the rows of a binary `COPY … TO STDOUT` stream fed to it in pieces of any size (the
/// format of PostgreSQL's `COPY` page: a signature, flags and an extension area, then per row
/// a field count and per field a length, -1 for NULL, and the value's bytes; a count of -1
/// ends it) into flat buffers, and hands them on `batch` rows at a time.
struct BinaryCopy<'t> {
    types: &'t [Type],
    /// Rows handed on at a time; `None` keeps them all in the buffers.
    batch: Option<usize>,
    /// Bytes fed and not yet read: at most one row cut short, once a piece has been read.
    pending: Vec<u8>,
    started: bool,
    ended: bool,
    in_batch: usize,
}

/// How many bytes [`BinaryCopy`] gathers before it reads them (each piece is one row or so).
const COPY_READ_AT: usize = 256 * 1024;

impl<'t> BinaryCopy<'t> {
    /// A reader of rows of `types` into `rows` (which it starts).
    fn new(types: &'t [Type], batch: Option<usize>, rows: &mut Rows) -> BinaryCopy<'t> {
        rows.start(types.len());
        BinaryCopy {
            types,
            batch: batch.map(|b| b.max(1)),
            pending: Vec::with_capacity(COPY_READ_AT * 2),
            started: false,
            ended: false,
            in_batch: 0,
        }
    }

    fn feed(
        &mut self,
        piece: &[u8],
        rows: &mut Rows,
        each: &mut dyn FnMut(&Rows) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.pending.extend_from_slice(piece);
        if self.pending.len() >= COPY_READ_AT {
            self.read(rows, each)?;
        }
        Ok(())
    }

    /// The stream has ended: it must have ended whole. The last rows of a batched read are
    /// handed on; an unbatched read leaves them all in `rows`.
    fn finish(
        mut self,
        rows: &mut Rows,
        each: &mut dyn FnMut(&Rows) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.read(rows, each)?;
        if !self.ended {
            return Err(copy_broken("ends before its last row"));
        }
        if !self.pending.is_empty() {
            return Err(copy_broken("goes on after its last row"));
        }
        if self.in_batch > 0 && self.batch.is_some() {
            each(rows)?;
        }
        Ok(())
    }

    /// Reads every whole row of `pending`, and keeps the rest.
    fn read(
        &mut self,
        rows: &mut Rows,
        each: &mut dyn FnMut(&Rows) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";
        let pending = std::mem::take(&mut self.pending);
        let mut at = 0;
        if !self.started {
            let Some(extension) = pending.get(15..19) else {
                self.pending = pending;
                return Ok(());
            };
            if pending.get(..11) != Some(SIGNATURE.as_slice()) {
                return Err(copy_broken("has no PGCOPY signature"));
            }
            let extension =
                usize::try_from(u32::from_be_bytes(extension.try_into().unwrap_or_default()))
                    .unwrap_or(usize::MAX);
            if pending.len() < 19 + extension {
                self.pending = pending;
                return Ok(());
            }
            at = 19 + extension;
            self.started = true;
        }
        while !self.ended {
            let Some(count) = pending
                .get(at..at + 2)
                .and_then(|b| <[u8; 2]>::try_from(b).ok())
            else {
                break;
            };
            let count = i16::from_be_bytes(count);
            if count == -1 {
                self.ended = true;
                at += 2;
                break;
            }
            if usize::try_from(count).ok() != Some(self.types.len()) {
                return Err(copy_broken(&format!(
                    "has a row of {count} fields, not {}",
                    self.types.len()
                )));
            }
            // The row's fields, found before any is kept: a row cut short waits whole.
            let mut fields = [(0usize, 0usize, false); 16];
            if self.types.len() > fields.len() {
                return Err(copy_broken("has more fields than a row here holds"));
            }
            let mut end = at + 2;
            let mut whole = true;
            for field in fields.iter_mut().take(self.types.len()) {
                let Some(length) = pending
                    .get(end..end + 4)
                    .and_then(|b| <[u8; 4]>::try_from(b).ok())
                else {
                    whole = false;
                    break;
                };
                let length = i32::from_be_bytes(length);
                end += 4;
                match usize::try_from(length) {
                    Ok(length) if pending.len() >= end + length => {
                        *field = (end, end + length, true);
                        end += length;
                    }
                    Ok(_) => {
                        whole = false;
                        break;
                    }
                    Err(_) if length == -1 => *field = (end, end, false),
                    Err(_) => return Err(copy_broken(&format!("has a field of length {length}"))),
                }
            }
            if !whole {
                break;
            }
            for (index, (column_type, &(from, until, present))) in
                self.types.iter().zip(&fields).enumerate()
            {
                let raw = if present {
                    pending.get(from..until)
                } else {
                    None
                };
                decode(Some(column_type), raw, index)?.push_to(rows);
            }
            at = end;
            self.in_batch += 1;
            if Some(self.in_batch) == self.batch {
                each(rows)?;
                rows.clear();
                self.in_batch = 0;
            }
        }
        self.pending = pending;
        self.pending.drain(..at);
        Ok(())
    }
}

fn copy_broken(what: &str) -> StoreError {
    StoreError::corrupt(format!("a binary COPY stream {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A binary `COPY` stream of `rows`, each a list of fields (`None` for NULL), as the
    /// server writes it.
    fn stream(rows: &[Vec<Option<&[u8]>>]) -> Vec<u8> {
        let mut out = b"PGCOPY\n\xff\r\n\0".to_vec();
        out.extend(0i32.to_be_bytes());
        out.extend(4u32.to_be_bytes());
        out.extend(b"ext!");
        for row in rows {
            out.extend(i16::try_from(row.len()).unwrap_or(0).to_be_bytes());
            for field in row {
                match field {
                    Some(bytes) => {
                        out.extend(i32::try_from(bytes.len()).unwrap_or(0).to_be_bytes());
                        out.extend(*bytes);
                    }
                    None => out.extend((-1i32).to_be_bytes()),
                }
            }
        }
        out.extend((-1i16).to_be_bytes());
        out
    }

    /// A row of the streams these tests read: a text and a number, either of them NULL.
    type TextAndNumber = (Option<String>, Option<i64>);

    /// Reads `input` fed in pieces of `piece` bytes, handed on `batch` rows at a time.
    fn read_in(input: &[u8], piece: usize, batch: usize) -> Result<Vec<TextAndNumber>, StoreError> {
        let mut seen = Vec::new();
        let types = [Type::TEXT, Type::INT8];
        let mut rows = Rows::default();
        let mut reader = BinaryCopy::new(&types, Some(batch), &mut rows);
        let mut each = |rows: &Rows| {
            rows.replay(&mut |row| {
                use crate::sql::Columns;
                seen.push((row.optional_text(0)?, row.optional_int(1)?));
                Ok(())
            })
        };
        for part in input.chunks(piece.max(1)) {
            reader.feed(part, &mut rows, &mut each)?;
        }
        reader.finish(&mut rows, &mut each)?;
        Ok(seen)
    }

    fn read(input: &[u8], batch: usize) -> Result<Vec<TextAndNumber>, StoreError> {
        read_in(input, input.len(), batch)
    }

    #[test]
    fn a_binary_copy_is_read_whole_in_batches() {
        let seven = 7i64.to_be_bytes();
        let input = stream(&[
            vec![Some(b"demo-1"), Some(&seven)],
            vec![None, None],
            vec![Some("é".as_bytes()), Some(&seven)],
        ]);
        for (batch, piece) in [(1, 1), (2, 3), (3, 7), (100, 1_000_000)] {
            assert_eq!(
                read_in(&input, piece, batch).ok(),
                Some(vec![
                    (Some("demo-1".to_owned()), Some(7)),
                    (None, None),
                    (Some("é".to_owned()), Some(7)),
                ]),
                "batch {batch}, pieces of {piece} bytes"
            );
        }
    }

    /// A stream cut short, of the wrong shape or with a bad value is refused with what was
    /// wrong, never read as fewer rows.
    #[test]
    fn values_are_written_in_as_literals_that_say_what_they_are() {
        assert_eq!(
            with_literals(
                "SELECT a FROM t WHERE a > ? AND b = ? AND c = ? AND d IS ? AND e = ?",
                &[
                    "it's".into(),
                    7i64.into(),
                    true.into(),
                    Value::Null,
                    [0u8, 255].as_slice().into()
                ]
            )
            .ok()
            .as_deref(),
            Some(
                "SELECT a FROM t WHERE a > 'it''s' AND b = 7::INT8 AND c = TRUE AND d IS NULL AND e = '\\x00ff'::BYTEA"
            )
        );
        assert!(with_literals("SELECT ?", &[]).is_err());
        assert!(with_literals("SELECT 1", &[1i64.into()]).is_err());
        assert!(with_literals("SELECT ?", &["a\0b".into()]).is_err());
    }

    #[test]
    fn a_broken_binary_copy_is_refused() {
        let seven = 7i64.to_be_bytes();
        let whole = stream(&[vec![Some(b"demo-1"), Some(&seven)]]);
        for cut in 0..whole.len() {
            assert!(
                read(whole.get(..cut).unwrap_or_default(), 10).is_err(),
                "cut at {cut}"
            );
        }
        let mut unsigned = whole.clone();
        unsigned[0] = b'X';
        let error = read(&unsigned, 10)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains("signature"), "{error}");
        let three = stream(&[vec![Some(b"a"), Some(&seven), None]]);
        let error = read(&three, 10)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains("3 fields"), "{error}");
        let short_int = stream(&[vec![Some(b"a"), Some(b"123")]]);
        assert!(read(&short_int, 10).is_err());
        let not_utf8 = stream(&[vec![Some(b"\xff\xfe"), Some(&seven)]]);
        assert!(read(&not_utf8, 10).is_err());
        let mut trailing = whole.clone();
        trailing.push(0);
        let error = read(&trailing, 10)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains("goes on after"), "{error}");
        let negative = stream(&[vec![Some(b"a"), Some(&seven)]]);
        let mut negative = negative.clone();
        let at = negative.len() - 2 - 8 - 4;
        negative[at..at + 4].copy_from_slice(&(-2i32).to_be_bytes());
        assert!(read(&negative, 10).is_err());
    }
}
