//! The few things a backend must do: run a statement, run a query, in a transaction.
//!
//! Statements are written once, with `?` placeholders and the portable subset of SQL that both
//! SQLite and PostgreSQL accept; [`Dialect::rewrite`] turns them into each backend's form.

use crate::error::StoreError;

/// A parameter or a column value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Null,
    Int(i64),
    Text(String),
    Bytes(Vec<u8>),
    Bool(bool),
}

impl From<i64> for Value {
    fn from(value: i64) -> Value {
        Value::Int(value)
    }
}

impl From<&str> for Value {
    fn from(value: &str) -> Value {
        Value::Text(value.to_owned())
    }
}

impl From<String> for Value {
    fn from(value: String) -> Value {
        Value::Text(value)
    }
}

impl From<&[u8]> for Value {
    fn from(value: &[u8]) -> Value {
        Value::Bytes(value.to_vec())
    }
}

impl From<bool> for Value {
    fn from(value: bool) -> Value {
        Value::Bool(value)
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(value: Option<T>) -> Value {
        value.map_or(Value::Null, Into::into)
    }
}

/// One result row, read by column index with the type the schema declares.
#[derive(Debug, Clone)]
pub struct Row(pub Vec<Value>);

impl Row {
    fn get(&self, index: usize) -> Result<&Value, StoreError> {
        self.0
            .get(index)
            .ok_or_else(|| StoreError::corrupt(format!("a row has no column {index}")))
    }

    pub fn int(&self, index: usize) -> Result<i64, StoreError> {
        self.optional_int(index)?
            .ok_or_else(|| StoreError::corrupt(format!("column {index} is NULL")))
    }

    pub fn optional_int(&self, index: usize) -> Result<Option<i64>, StoreError> {
        match self.get(index)? {
            Value::Null => Ok(None),
            Value::Int(value) => Ok(Some(*value)),
            other => Err(StoreError::corrupt(format!(
                "column {index} is not an integer: {other:?}"
            ))),
        }
    }

    pub fn text(&self, index: usize) -> Result<String, StoreError> {
        self.optional_text(index)?
            .ok_or_else(|| StoreError::corrupt(format!("column {index} is NULL")))
    }

    pub fn optional_text(&self, index: usize) -> Result<Option<String>, StoreError> {
        match self.get(index)? {
            Value::Null => Ok(None),
            Value::Text(value) => Ok(Some(value.clone())),
            other => Err(StoreError::corrupt(format!(
                "column {index} is not text: {other:?}"
            ))),
        }
    }

    /// Like [`Row::optional_text`], borrowed: no copy for scans.
    pub fn optional_str(&self, index: usize) -> Result<Option<&str>, StoreError> {
        match self.get(index)? {
            Value::Null => Ok(None),
            Value::Text(value) => Ok(Some(value)),
            other => Err(StoreError::corrupt(format!(
                "column {index} is not text: {other:?}"
            ))),
        }
    }

    pub fn bytes(&self, index: usize) -> Result<Vec<u8>, StoreError> {
        match self.get(index)? {
            Value::Bytes(value) => Ok(value.clone()),
            other => Err(StoreError::corrupt(format!(
                "column {index} is not bytes: {other:?}"
            ))),
        }
    }

    /// SQLite keeps booleans as integers; PostgreSQL as booleans.
    pub fn bool(&self, index: usize) -> Result<bool, StoreError> {
        match self.get(index)? {
            Value::Bool(value) => Ok(*value),
            Value::Int(value) => Ok(*value != 0),
            other => Err(StoreError::corrupt(format!(
                "column {index} is not a boolean: {other:?}"
            ))),
        }
    }
}

/// Typed access to a row's columns, by index: a [`Row`], or a row of [`Rows`] read in place.
/// The row parsers are written once against it.
pub trait Columns {
    fn optional_int(&self, index: usize) -> Result<Option<i64>, StoreError>;
    fn optional_str(&self, index: usize) -> Result<Option<&str>, StoreError>;
    fn bytes(&self, index: usize) -> Result<Vec<u8>, StoreError>;
    fn bool(&self, index: usize) -> Result<bool, StoreError>;

    fn int(&self, index: usize) -> Result<i64, StoreError> {
        self.optional_int(index)?
            .ok_or_else(|| StoreError::corrupt(format!("column {index} is NULL")))
    }

    fn optional_text(&self, index: usize) -> Result<Option<String>, StoreError> {
        Ok(self.optional_str(index)?.map(str::to_owned))
    }

    fn text(&self, index: usize) -> Result<String, StoreError> {
        self.optional_text(index)?
            .ok_or_else(|| StoreError::corrupt(format!("column {index} is NULL")))
    }
}

impl Columns for Row {
    fn optional_int(&self, index: usize) -> Result<Option<i64>, StoreError> {
        Row::optional_int(self, index)
    }

    fn optional_str(&self, index: usize) -> Result<Option<&str>, StoreError> {
        Row::optional_str(self, index)
    }

    fn bytes(&self, index: usize) -> Result<Vec<u8>, StoreError> {
        Row::bytes(self, index)
    }

    fn bool(&self, index: usize) -> Result<bool, StoreError> {
        Row::bool(self, index)
    }
}

impl Value {
    /// Sets a text value, reusing this value's buffer when it holds one already.
    pub fn set_text(&mut self, text: &str) {
        match self {
            Value::Text(buffer) => {
                buffer.clear();
                buffer.push_str(text);
            }
            other => *other = Value::Text(text.to_owned()),
        }
    }

    /// Sets a bytes value, reusing this value's buffer when it holds one already.
    pub fn set_bytes(&mut self, bytes: &[u8]) {
        match self {
            Value::Bytes(buffer) => {
                buffer.clear();
                buffer.extend_from_slice(bytes);
            }
            other => *other = Value::Bytes(bytes.to_vec()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// The portable type names of `sql` in this dialect's words; placeholders are left.
    pub fn rewrite_types(self, sql: &str) -> String {
        match self {
            Dialect::Sqlite => sql.replace("BYTES", "BLOB").replace("INT8", "INTEGER"),
            Dialect::Postgres => sql
                .replace("BYTES", "BYTEA")
                .replace("INT8", "BIGINT")
                .replace(" WITHOUT ROWID", ""),
        }
    }

    /// Turns portable SQL into this backend's: `?` → `$n` and the type names of the schema.
    pub fn rewrite(self, sql: &str) -> String {
        match self {
            Dialect::Sqlite => self.rewrite_types(sql),
            Dialect::Postgres => {
                let sql = self.rewrite_types(sql);
                let mut out = String::with_capacity(sql.len() + 8);
                let mut n = 0;
                for c in sql.chars() {
                    if c == '?' {
                        n += 1;
                        out.push('$');
                        out.push_str(&n.to_string());
                    } else {
                        out.push(c);
                    }
                }
                out
            }
        }
    }

    /// The clause that locks a selected row until the transaction ends. SQLite needs none: a
    /// write transaction (`BEGIN IMMEDIATE`) already holds the database's write lock.
    pub fn lock_clause(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR UPDATE",
        }
    }
}

/// An open transaction.
pub trait Tx {
    fn dialect(&self) -> Dialect;
    /// A read-only transaction sees committed rows only; a write transaction also sees its own
    /// uncommitted writes.
    fn read_only(&self) -> bool;
    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, StoreError>;

    /// Inserts many rows into `table`, each with a value for every one of `columns`: a
    /// prepared `INSERT` per row here, binary `COPY` on PostgreSQL.
    fn insert_rows(
        &mut self,
        table: &str,
        columns: &[&str],
        rows: &[Vec<Value>],
    ) -> Result<(), StoreError> {
        let sql = insert_sql(table, columns);
        for row in rows {
            self.execute(&sql, row)?;
        }
        Ok(())
    }

    /// Sets `columns` in the rows of `table` found by `key` (a unique column): each of `rows`
    /// is the key's value, then one per column. An `UPDATE` per row here, one statement on
    /// PostgreSQL.
    fn update_rows(
        &mut self,
        table: &str,
        key: &str,
        columns: &[&str],
        rows: &[Vec<Value>],
    ) -> Result<(), StoreError> {
        let sets: Vec<String> = columns.iter().map(|c| format!("{c} = ?")).collect();
        let sql = format!("UPDATE {table} SET {} WHERE {key} = ?", sets.join(", "));
        for row in rows {
            let Some((key_value, values)) = row.split_first() else {
                continue;
            };
            let mut params = values.to_vec();
            params.push(key_value.clone());
            self.execute(&sql, &params)?;
        }
        Ok(())
    }

    /// Calls `each` for every row without holding them all in memory (for large scans). The
    /// row is lent, and its buffers are reused for the next one: a scan allocates per column,
    /// not per row.
    fn query_each(
        &mut self,
        sql: &str,
        params: &[Value],
        each: &mut dyn FnMut(&Row) -> Result<(), StoreError>,
    ) -> Result<(), StoreError>;

    /// Appends every row to `rows`: flat buffers, for a scan that parses them elsewhere.
    fn query_rows(
        &mut self,
        sql: &str,
        params: &[Value],
        rows: &mut Rows,
    ) -> Result<(), StoreError> {
        self.query_each(sql, params, &mut |row| {
            rows.push(row);
            Ok(())
        })
    }

    /// Streams every row of `sql`, a query without parameters over a whole table, into flat
    /// buffers, and calls `each` with every `batch` rows (and the last few): a pass over
    /// millions of rows allocates per batch, not per row. A PostgreSQL snapshot reader reads
    /// it as one binary `COPY`.
    fn stream_rows(
        &mut self,
        sql: &str,
        batch: usize,
        each: &mut dyn FnMut(&Rows) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut rows = Rows::default();
        let mut in_batch = 0;
        self.query_each(sql, &[], &mut |row| {
            rows.push(row);
            in_batch += 1;
            if in_batch == batch {
                each(&rows)?;
                rows.clear();
                in_batch = 0;
            }
            Ok(())
        })?;
        if in_batch > 0 {
            each(&rows)?;
        }
        Ok(())
    }

    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, StoreError> {
        let mut rows = Vec::new();
        self.query_each(sql, params, &mut |row| {
            rows.push(row.clone());
            Ok(())
        })?;
        Ok(rows)
    }

    fn query_one(&mut self, sql: &str, params: &[Value]) -> Result<Option<Row>, StoreError> {
        Ok(self.query(sql, params)?.into_iter().next())
    }
}

/// `INSERT INTO table (columns…) VALUES (?, …)`.
fn insert_sql(table: &str, columns: &[&str]) -> String {
    let placeholders = vec!["?"; columns.len()].join(", ");
    format!(
        "INSERT INTO {table} ({}) VALUES ({placeholders})",
        columns.join(", ")
    )
}

/// Inserts one row: a value for each of `columns`, in their order.
pub(crate) fn insert_row(
    tx: &mut dyn Tx,
    table: &str,
    columns: &[&str],
    values: &[Value],
) -> Result<(), StoreError> {
    tx.execute(&insert_sql(table, columns), values).map(|_| ())
}

/// How many keys one lookup by a list of keys asks for: a fixed count, so that the statement
/// is prepared once, whatever the batch.
pub(crate) const KEYS_PER_LOOKUP: usize = 32;

/// `?, ?, …`: the placeholders of one lookup by [`KEYS_PER_LOOKUP`] keys.
pub(crate) fn key_list() -> String {
    vec!["?"; KEYS_PER_LOOKUP].join(", ")
}

/// `(?, ?), (?, ?), …`: [`KEYS_PER_LOOKUP`] tuples of `width` placeholders, as in
/// `(account_id, conversation_id) IN (…)` (each pair one index lookup: a pair of `IN` lists
/// instead would make PostgreSQL 15 try every combination of the two) or a multi-row `VALUES`.
pub(crate) fn tuple_list(width: usize) -> String {
    let tuple = format!("({})", vec!["?"; width].join(", "));
    vec![tuple; KEYS_PER_LOOKUP].join(", ")
}

/// One chunk of at most [`KEYS_PER_LOOKUP`] items as exactly that many, the last repeated:
/// every lookup or write by a list then has one statement text, prepared once.
pub(crate) fn padded<T>(chunk: &[T]) -> impl Iterator<Item = &T> {
    (0..KEYS_PER_LOOKUP).filter_map(move |i| chunk.get(i).or(chunk.last()))
}

/// Up to [`KEYS_PER_LOOKUP`] (owner, conversation) pairs as the parameters of a statement on
/// `(account_id, conversation_id) IN (` [`tuple_list`]`(2))`, padded.
pub(crate) fn pair_params(pairs: &[(String, String)]) -> Vec<Value> {
    padded(pairs)
        .flat_map(|(owner, id)| [owner.as_str().into(), id.as_str().into()])
        .collect()
}

/// `keys` as the parameters of lookups by [`key_list`]: chunks of [`KEYS_PER_LOOKUP`], the
/// last padded by repeating its last key.
pub(crate) fn padded_chunks<'k>(keys: &'k [&str]) -> impl Iterator<Item = Vec<Value>> + 'k {
    keys.chunks(KEYS_PER_LOOKUP)
        .map(|chunk| padded(chunk).map(|key| Value::from(*key)).collect())
}

/// Which of `keys` appear in `column` of `table` (a unique text column).
pub(crate) fn present(
    tx: &mut dyn Tx,
    table: &str,
    column: &str,
    keys: &[&str],
) -> Result<std::collections::HashSet<String>, StoreError> {
    let mut found = std::collections::HashSet::new();
    let sql = format!(
        "SELECT {column} FROM {table} WHERE {column} IN ({})",
        key_list()
    );
    for params in padded_chunks(keys) {
        tx.query_each(&sql, &params, &mut |row| {
            found.insert(row.text(0)?);
            Ok(())
        })?;
    }
    Ok(found)
}

/// Database text as a `str`, or the error that says it is not UTF-8.
pub(crate) fn text_of(bytes: &[u8]) -> Result<&str, StoreError> {
    std::str::from_utf8(bytes).map_err(|_| not_utf8())
}

fn not_utf8() -> StoreError {
    StoreError::corrupt("a text column is not UTF-8")
}

/// Rows copied into flat buffers: one slot per value, texts and bytes in one buffer each.
#[derive(Debug, Default)]
pub struct Rows {
    columns: usize,
    slots: Vec<Slot>,
    /// Every text value, one after another; checked for UTF-8 as a whole when read.
    text: Vec<u8>,
    bytes: Vec<u8>,
}

#[derive(Debug, Clone, Copy)]
enum Slot {
    Null,
    Int(i64),
    Bool(bool),
    Text(usize, usize),
    Bytes(usize, usize),
}

impl Rows {
    /// Empties the buffers, keeping their capacity.
    pub fn clear(&mut self) {
        self.slots.clear();
        self.text.clear();
        self.bytes.clear();
    }

    /// Sets how many values make a row; call before the first value of a query.
    pub fn start(&mut self, columns: usize) {
        self.columns = columns;
    }

    pub fn push(&mut self, row: &Row) {
        self.start(row.0.len());
        for value in &row.0 {
            match value {
                Value::Null => self.push_null(),
                Value::Int(value) => self.push_int(*value),
                Value::Bool(value) => self.push_bool(*value),
                Value::Text(text) => self.push_text(text),
                Value::Bytes(bytes) => self.push_bytes(bytes),
            }
        }
    }

    pub fn push_null(&mut self) {
        self.slots.push(Slot::Null);
    }

    pub fn push_bool(&mut self, value: bool) {
        self.slots.push(Slot::Bool(value));
    }

    pub fn push_int(&mut self, value: i64) {
        self.slots.push(Slot::Int(value));
    }

    pub fn push_text(&mut self, text: &str) {
        self.push_unchecked_text(text.as_bytes());
    }

    /// A text value as the database gave it, not yet checked for UTF-8: [`Rows::replay`]
    /// checks the whole buffer once (one call over megabytes, instead of one per value, and on
    /// the thread that reads the rows rather than the one that queries them).
    pub fn push_unchecked_text(&mut self, text: &[u8]) {
        let start = self.text.len();
        self.text.extend_from_slice(text);
        self.slots.push(Slot::Text(start, self.text.len()));
    }

    pub fn push_bytes(&mut self, bytes: &[u8]) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(bytes);
        self.slots.push(Slot::Bytes(start, self.bytes.len()));
    }

    /// Lends each row again, read in place from the buffers. Fails if the text is not UTF-8:
    /// the buffer must be, and each value must start and end on a character's boundary
    /// ([`RowView`] checks that), so every value is.
    pub fn replay<'a>(
        &'a self,
        each: &mut dyn FnMut(&RowView<'a>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        if self.columns == 0 {
            return Ok(());
        }
        let text = text_of(&self.text)?;
        for slots in self.slots.chunks_exact(self.columns) {
            each(&RowView {
                slots,
                text,
                bytes: &self.bytes,
            })?;
        }
        Ok(())
    }
}

/// One row of [`Rows`], read in place.
#[derive(Debug)]
pub struct RowView<'a> {
    slots: &'a [Slot],
    text: &'a str,
    bytes: &'a [u8],
}

impl RowView<'_> {
    fn slot(&self, index: usize) -> Result<Slot, StoreError> {
        self.slots
            .get(index)
            .copied()
            .ok_or_else(|| StoreError::corrupt(format!("a row has no column {index}")))
    }
}

impl<'a> RowView<'a> {
    /// A text value lent from the buffers themselves, for as long as they live (where
    /// [`Columns::optional_str`] lends it only for as long as the row).
    pub fn lent_str(&self, index: usize) -> Result<Option<&'a str>, StoreError> {
        match self.slot(index)? {
            Slot::Null => Ok(None),
            // Off a character's boundary, the value's own bytes were not UTF-8.
            Slot::Text(start, end) => self.text.get(start..end).map(Some).ok_or_else(not_utf8),
            other => Err(StoreError::corrupt(format!(
                "column {index} is not text: {other:?}"
            ))),
        }
    }
}

impl Columns for RowView<'_> {
    fn optional_int(&self, index: usize) -> Result<Option<i64>, StoreError> {
        match self.slot(index)? {
            Slot::Null => Ok(None),
            Slot::Int(value) => Ok(Some(value)),
            other => Err(StoreError::corrupt(format!(
                "column {index} is not an integer: {other:?}"
            ))),
        }
    }

    fn optional_str(&self, index: usize) -> Result<Option<&str>, StoreError> {
        self.lent_str(index)
    }

    fn bytes(&self, index: usize) -> Result<Vec<u8>, StoreError> {
        match self.slot(index)? {
            Slot::Bytes(start, end) => Ok(self.bytes.get(start..end).unwrap_or_default().to_vec()),
            other => Err(StoreError::corrupt(format!(
                "column {index} is not bytes: {other:?}"
            ))),
        }
    }

    /// SQLite keeps booleans as integers; PostgreSQL as booleans.
    fn bool(&self, index: usize) -> Result<bool, StoreError> {
        match self.slot(index)? {
            Slot::Bool(value) => Ok(value),
            Slot::Int(value) => Ok(value != 0),
            other => Err(StoreError::corrupt(format!(
                "column {index} is not a boolean: {other:?}"
            ))),
        }
    }
}

/// A database that can run a closure in a transaction, committing only if it returns `Ok`.
pub trait Backend: Send + Sync {
    /// Runs `work` in a write transaction. Retries it on a serialization failure, so it must
    /// have no effect outside the transaction.
    fn write<R>(
        &self,
        work: &mut dyn FnMut(&mut dyn Tx) -> Result<R, StoreError>,
    ) -> Result<R, StoreError>;
    /// Runs `work` in a read-only transaction that sees one consistent snapshot.
    fn read<R>(
        &self,
        work: &mut dyn FnMut(&mut dyn Tx) -> Result<R, StoreError>,
    ) -> Result<R, StoreError>;
    /// Like [`Backend::read`], for one pass over a whole table that nothing reads again soon
    /// (the gate index's load): what it reads must not stay in this process's memory.
    fn read_once<R>(
        &self,
        work: &mut dyn FnMut(&mut dyn Tx) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        self.read(work)
    }

    /// One pass over every row of `columns` of `table` in one snapshot (through
    /// [`Backend::read_once`]): `first` runs in that snapshot before the rows are read, and
    /// `each` takes them a batch of `batch` at a time. `each` may be called from several
    /// threads at once, in no set order: PostgreSQL splits the table's pages between
    /// connections that share the snapshot, so that the pass uses every core.
    fn stream_table<R>(
        &self,
        table: &str,
        columns: &str,
        batch: usize,
        first: &mut dyn FnMut(&mut dyn Tx) -> Result<R, StoreError>,
        each: &(dyn Fn(&Rows) -> Result<(), StoreError> + Sync),
    ) -> Result<R, StoreError> {
        self.read_once(&mut |tx| {
            let before = first(tx)?;
            tx.stream_rows(
                &format!("SELECT {columns} FROM {table}"),
                batch,
                &mut |rows| each(rows),
            )?;
            Ok(before)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Text checked once per buffer still fails on any value that is not UTF-8: alone, or
    /// split so that the buffer as a whole would be.
    #[test]
    fn flat_buffers_refuse_text_that_is_not_utf8() {
        let read = |values: &[&[u8]]| {
            let mut rows = Rows::default();
            rows.start(1);
            for value in values {
                rows.push_unchecked_text(value);
            }
            let mut seen = Vec::new();
            rows.replay(&mut |row| {
                seen.push(row.optional_str(0)?.map(str::to_owned));
                Ok(())
            })
            .map(|()| seen)
        };
        assert_eq!(
            read(&[b"caf\xc3\xa9", b"ok"]).unwrap(),
            [Some("café".to_owned()), Some("ok".to_owned())]
        );
        assert!(read(&[b"ok", b"\xff"]).is_err(), "invalid bytes");
        // "é" cut in two: the buffer is valid UTF-8, each value is not.
        let error = read(&[b"caf\xc3", b"\xa9"]).unwrap_err();
        assert!(error.to_string().contains("not UTF-8"), "{error}");
    }

    #[test]
    fn placeholders_are_numbered_for_postgres() {
        assert_eq!(
            Dialect::Postgres.rewrite("SELECT a FROM t WHERE b = ? AND c = ? -- INT8 BYTES"),
            "SELECT a FROM t WHERE b = $1 AND c = $2 -- BIGINT BYTEA"
        );
        assert_eq!(
            Dialect::Sqlite.rewrite("x INT8, y BYTES"),
            "x INTEGER, y BLOB"
        );
    }
}
