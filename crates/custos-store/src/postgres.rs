//! PostgreSQL (and PostgreSQL-compatible distributed SQL): a pool of connections.
//!
//! Writes run in READ COMMITTED and lock the one account row they change (`FOR UPDATE`), so
//! writers of different accounts never wait for each other. Serialization failures, deadlocks
//! and a concurrent insert of the same key are retried. Reads run in one REPEATABLE READ,
//! read-only snapshot.
//!
//! This uses the blocking `postgres` client, which drives `tokio-postgres` underneath, so that
//! one set of transaction scripts serves both backends; an async caller runs the store on a
//! blocking thread (see ARCHITECTURE.md).
//!
//! Each pooled connection keeps the statements it has prepared: a statement then costs one
//! round trip (bind and execute) instead of two (parse and describe first). Rows written in
//! bulk go through binary `COPY`.

use std::collections::HashMap;
use std::error::Error;

use bytes::BytesMut;
use postgres::binary_copy::BinaryCopyInWriter;
use postgres::error::SqlState;
use postgres::fallible_iterator::FallibleIterator;
use postgres::types::{FromSql, IsNull, ToSql, Type, to_sql_checked};
use postgres::{IsolationLevel, NoTls, Statement};

use crate::error::StoreError;
use crate::snapshot_reader::SnapshotReader;
use crate::sql::{Backend, Dialect, Row, Tx, Value};

const ATTEMPTS: u32 = 8;

/// How many prepared statements a connection keeps. The store's statements are a fixed set of
/// a few dozen; the bound only keeps a caller that formats many distinct ones from growing it.
const PREPARED_PER_CONNECTION: usize = 512;

pub struct PostgresBackend {
    pool: r2d2::Pool<Connections>,
    /// For the readers that stream a whole table, each on a connection of its own
    /// ([`copy_in_snapshot`]).
    config: tokio_postgres::Config,
}

/// A client with the statements prepared on it, keyed by their portable text.
struct Connection {
    client: postgres::Client,
    prepared: HashMap<String, Statement>,
}

/// Opens the pool's connections and checks them before they are lent.
#[derive(Debug)]
struct Connections {
    config: postgres::Config,
}

impl r2d2::ManageConnection for Connections {
    type Connection = Connection;
    type Error = postgres::Error;

    fn connect(&self) -> Result<Connection, postgres::Error> {
        let mut client = self.config.connect(NoTls)?;
        // Every statement of the store reads or writes a few rows by key. JIT compilation
        // pays only for long analytic queries, and a row estimate that is off (a table not
        // yet analyzed after a load) made each 10 ms range query of an export compile for
        // 750 ms; so it is off for the store's sessions, whatever the server's default.
        client.batch_execute("SET jit = off")?;
        Ok(Connection {
            client,
            prepared: HashMap::new(),
        })
    }

    /// A connection to a server that has since stopped, or to a primary since demoted, is
    /// found out here and replaced, before a transaction fails on it.
    fn is_valid(&self, connection: &mut Connection) -> Result<(), postgres::Error> {
        connection.client.simple_query("").map(|_| ())
    }

    fn has_broken(&self, connection: &mut Connection) -> bool {
        connection.client.is_closed()
    }
}

impl PostgresBackend {
    pub fn open(url: &str) -> Result<PostgresBackend, StoreError> {
        let not_a_url = |e: postgres::Error| {
            StoreError::Database(format!("`--database` is not a PostgreSQL URL: {e}"))
        };
        let config: postgres::Config = url.parse().map_err(not_a_url)?;
        let pool = r2d2::Pool::builder()
            .max_size(8)
            .connection_timeout(std::time::Duration::from_secs(2))
            .build(Connections { config })
            .map_err(|e| StoreError::Database(format!("cannot connect to PostgreSQL: {e}")))?;
        Ok(PostgresBackend {
            pool,
            config: url.parse().map_err(not_a_url)?,
        })
    }

    fn run<R>(
        &self,
        read_only: bool,
        work: &mut dyn FnMut(&mut dyn Tx) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let mut connection = self
            .pool
            .get()
            .map_err(|e| StoreError::Unavailable(format!("no PostgreSQL connection: {e}")))?;
        let Connection { client, prepared } = &mut *connection;
        for _ in 0..ATTEMPTS {
            let builder = if read_only {
                client
                    .build_transaction()
                    .isolation_level(IsolationLevel::RepeatableRead)
                    .read_only(true)
            } else {
                client
                    .build_transaction()
                    .isolation_level(IsolationLevel::ReadCommitted)
            };
            let mut transaction = builder.start().map_err(|e| map_error(&e))?;
            let outcome = work(&mut PostgresTx {
                read_only,
                transaction: &mut transaction,
                prepared,
            });
            match outcome {
                Ok(result) => match transaction.commit() {
                    Ok(()) => return Ok(result),
                    Err(error) if is_retryable(&error) => continue,
                    Err(error) => return Err(map_error(&error)),
                },
                Err(StoreError::Conflict(_)) => continue,
                Err(error) => return Err(error),
            }
        }
        Err(StoreError::Conflict(ATTEMPTS))
    }
}

fn is_retryable(error: &postgres::Error) -> bool {
    matches!(
        error.code(),
        Some(
            &SqlState::T_R_SERIALIZATION_FAILURE
                | &SqlState::T_R_DEADLOCK_DETECTED
                | &SqlState::UNIQUE_VIOLATION
        )
    )
}

pub(crate) fn map_error(error: &postgres::Error) -> StoreError {
    if is_retryable(error) {
        return StoreError::Conflict(1);
    }
    let Some(db) = error.as_db_error() else {
        // No answer from the server at all: the connection was refused, closed or broken.
        return StoreError::Unavailable(error.to_string());
    };
    if is_unavailable(db.code()) {
        return StoreError::Unavailable(format!("{}: {}", db.code().code(), db.message()));
    }
    match error.code() {
        Some(&SqlState::DISK_FULL) => StoreError::DiskFull(error.to_string()),
        Some(&SqlState::DATA_CORRUPTED | &SqlState::INDEX_CORRUPTED) => {
            StoreError::Corrupt(error.to_string())
        }
        _ => StoreError::Database(error.as_db_error().map_or_else(
            || error.to_string(),
            |db| format!("{}: {}", db.code().code(), db.message()),
        )),
    }
}

/// The server's answers that mean "not now, here": connection exceptions (class 08), a server
/// shutting down or starting, and a standby refusing a write (after a failover, until the
/// connection moves to the new primary).
fn is_unavailable(code: &SqlState) -> bool {
    code.code().starts_with("08")
        || [
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::READ_ONLY_SQL_TRANSACTION,
        ]
        .contains(code)
}

/// NULL for a parameter of any type.
#[derive(Debug)]
struct SqlNull;

impl ToSql for SqlNull {
    fn to_sql(&self, _: &Type, _: &mut BytesMut) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        Ok(IsNull::Yes)
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

pub(crate) fn to_postgres(value: &Value) -> Box<dyn ToSql + Sync> {
    match value {
        Value::Null => Box::new(SqlNull),
        Value::Int(v) => Box::new(*v),
        Value::Text(v) => Box::new(v.clone()),
        Value::Bytes(v) => Box::new(v.clone()),
        Value::Bool(v) => Box::new(*v),
    }
}

/// One value of a row as the server sent it, borrowed from the row: the one place that maps
/// PostgreSQL's column types to the store's values.
pub(crate) enum Cell<'r> {
    Null,
    Int(i64),
    Bool(bool),
    /// Not yet checked for UTF-8.
    Text(&'r [u8]),
    Bytes(&'r [u8]),
}

fn cell(row: &postgres::Row, index: usize) -> Result<Cell<'_>, StoreError> {
    let column_type = row.columns().get(index).map(|c| c.type_());
    let raw = row
        .try_get::<_, Option<Raw<'_>>>(index)
        .map_err(|e| StoreError::corrupt(format!("column {index}: {e}")))?;
    decode(column_type, raw.map(|Raw(bytes)| bytes), index)
}

/// A value of column `index` of type `column_type` from its bytes in the binary wire format
/// (`None` for NULL): what a row and a binary `COPY` both carry.
pub(crate) fn decode<'r>(
    column_type: Option<&Type>,
    raw: Option<&'r [u8]>,
    index: usize,
) -> Result<Cell<'r>, StoreError> {
    let Some(raw) = raw else {
        return Ok(Cell::Null);
    };
    let error =
        |e: Box<dyn Error + Sync + Send>| StoreError::corrupt(format!("column {index}: {e}"));
    Ok(match column_type {
        Some(ty @ &Type::INT8) => Cell::Int(i64::from_sql(ty, raw).map_err(error)?),
        Some(ty @ &Type::INT4) => Cell::Int(i64::from(i32::from_sql(ty, raw).map_err(error)?)),
        Some(&(Type::TEXT | Type::VARCHAR | Type::NAME)) => Cell::Text(raw),
        Some(&Type::BYTEA) => Cell::Bytes(raw),
        Some(ty @ &Type::BOOL) => Cell::Bool(bool::from_sql(ty, raw).map_err(error)?),
        other => {
            return Err(StoreError::corrupt(format!(
                "column {index} has an unexpected type {other:?}"
            )));
        }
    })
}

pub(crate) fn from_postgres(row: &postgres::Row, index: usize) -> Result<Value, StoreError> {
    Ok(match cell(row, index)? {
        Cell::Null => Value::Null,
        Cell::Int(value) => Value::Int(value),
        Cell::Bool(value) => Value::Bool(value),
        Cell::Text(text) => Value::Text(
            std::str::from_utf8(text)
                .map_err(|e| StoreError::corrupt(format!("column {index}: {e}")))?
                .to_owned(),
        ),
        Cell::Bytes(bytes) => Value::Bytes(bytes.to_vec()),
    })
}

impl Cell<'_> {
    /// Appends this value to flat buffers (a text unchecked: [`crate::sql::Rows`] checks a
    /// whole buffer of them for UTF-8 at once, so each value needs no check of its own).
    pub(crate) fn push_to(self, rows: &mut crate::sql::Rows) {
        match self {
            Cell::Null => rows.push_null(),
            Cell::Int(value) => rows.push_int(value),
            Cell::Bool(value) => rows.push_bool(value),
            Cell::Text(text) => rows.push_unchecked_text(text),
            Cell::Bytes(bytes) => rows.push_bytes(bytes),
        }
    }
}

/// A value's bytes as the server sent them, whatever its type: [`decode`] reads them.
struct Raw<'a>(&'a [u8]);

impl<'a> FromSql<'a> for Raw<'a> {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn Error + Sync + Send>> {
        Ok(Raw(raw))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

pub(crate) struct PostgresTx<'a, 'b> {
    read_only: bool,
    transaction: &'a mut postgres::Transaction<'b>,
    prepared: &'a mut HashMap<String, Statement>,
}

impl PostgresTx<'_, '_> {
    /// The statement for portable `sql`, prepared on this connection once.
    fn statement(&mut self, sql: &str) -> Result<Statement, StoreError> {
        if let Some(statement) = self.prepared.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self
            .transaction
            .prepare(&Dialect::Postgres.rewrite(sql))
            .map_err(|e| map_error(&e))?;
        if self.prepared.len() >= PREPARED_PER_CONNECTION {
            self.prepared.clear();
        }
        self.prepared.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }

    /// The types of the columns `query` answers, as the server has them.
    fn types_of(&mut self, query: &str) -> Result<Vec<Type>, StoreError> {
        Ok(self
            .statement(query)?
            .columns()
            .iter()
            .map(|column| column.type_().clone())
            .collect())
    }
}

impl PostgresTx<'_, '_> {
    /// The types of `columns` of `table`, as the server has them.
    fn column_types(&mut self, table: &str, columns: &[&str]) -> Result<Vec<Type>, StoreError> {
        self.types_of(&format!(
            "SELECT {} FROM {table} LIMIT 0",
            columns.join(", ")
        ))
    }
}

/// One column's values as a typed array parameter; a missing value or `Null` is SQL NULL.
fn column_array<'v>(
    kind: &Type,
    values: impl Iterator<Item = Option<&'v Value>>,
) -> Result<Box<dyn ToSql + Sync>, StoreError> {
    fn each<'v, T>(
        values: impl Iterator<Item = Option<&'v Value>>,
        take: impl Fn(&'v Value) -> Option<T>,
    ) -> Result<Vec<Option<T>>, StoreError> {
        values
            .map(|value| match value {
                None | Some(Value::Null) => Ok(None),
                Some(value) => take(value).map(Some).ok_or_else(|| {
                    StoreError::Database(format!("a value of another type: {value:?}"))
                }),
            })
            .collect()
    }
    Ok(match *kind {
        Type::INT8 => Box::new(each(values, |v| match v {
            Value::Int(n) => Some(*n),
            _ => None,
        })?),
        Type::TEXT => Box::new(each(values, |v| match v {
            Value::Text(t) => Some(t.clone()),
            _ => None,
        })?),
        Type::BYTEA => Box::new(each(values, |v| match v {
            Value::Bytes(b) => Some(b.clone()),
            _ => None,
        })?),
        Type::BOOL => Box::new(each(values, |v| match v {
            Value::Bool(b) => Some(*b),
            _ => None,
        })?),
        _ => {
            return Err(StoreError::Database(format!(
                "no array parameter for a column of type {kind}"
            )));
        }
    })
}

impl Tx for PostgresTx<'_, '_> {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, StoreError> {
        let statement = self.statement(sql)?;
        let boxed: Vec<_> = params.iter().map(to_postgres).collect();
        let refs: Vec<&(dyn ToSql + Sync)> = boxed.iter().map(AsRef::as_ref).collect();
        self.transaction
            .execute(&statement, &refs)
            .map_err(|e| map_error(&e))
    }

    /// Binary `COPY … FROM STDIN`: the rows stream in one go, typed by the table's columns.
    fn insert_rows(
        &mut self,
        table: &str,
        columns: &[&str],
        rows: &[Vec<Value>],
    ) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let list = columns.join(", ");
        let types = self.column_types(table, columns)?;
        let sink = self
            .transaction
            .copy_in(&format!("COPY {table} ({list}) FROM STDIN (FORMAT binary)"))
            .map_err(|e| map_error(&e))?;
        let mut writer = BinaryCopyInWriter::new(sink, &types);
        for row in rows {
            let boxed: Vec<_> = row.iter().map(to_postgres).collect();
            let refs: Vec<&(dyn ToSql + Sync)> = boxed.iter().map(AsRef::as_ref).collect();
            writer.write(&refs).map_err(|e| map_error(&e))?;
        }
        writer.finish().map_err(|e| map_error(&e))?;
        Ok(())
    }

    /// One `UPDATE … FROM unnest(…)`: each column's values go as one typed array.
    fn update_rows(
        &mut self,
        table: &str,
        key: &str,
        columns: &[&str],
        rows: &[Vec<Value>],
    ) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let all: Vec<&str> = std::iter::once(key)
            .chain(columns.iter().copied())
            .collect();
        let types = self.column_types(table, &all)?;
        let arrays = types
            .iter()
            .enumerate()
            .map(|(index, kind)| column_array(kind, rows.iter().map(|row| row.get(index))))
            .collect::<Result<Vec<_>, StoreError>>()?;
        let casts: Vec<String> = types.iter().map(|t| format!("?::{}[]", t.name())).collect();
        let sets: Vec<String> = columns.iter().map(|c| format!("{c} = u.{c}")).collect();
        let sql = format!(
            "UPDATE {table} AS t SET {} FROM unnest({}) AS u({}) WHERE t.{key} = u.{key}",
            sets.join(", "),
            casts.join(", "),
            all.join(", ")
        );
        let statement = self.statement(&sql)?;
        let refs: Vec<&(dyn ToSql + Sync)> = arrays.iter().map(AsRef::as_ref).collect();
        self.transaction
            .execute(&statement, &refs)
            .map_err(|e| map_error(&e))?;
        Ok(())
    }

    /// A chunk's rows straight into the flat buffers. They are fetched in one call: the
    /// synchronous client enters its runtime once per call, and per row (as `query_each`
    /// reads) that was most of an export's time. A chunk is small by design (see `scan`).
    fn query_rows(
        &mut self,
        sql: &str,
        params: &[Value],
        rows: &mut crate::sql::Rows,
    ) -> Result<(), StoreError> {
        let statement = self.statement(sql)?;
        let boxed: Vec<_> = params.iter().map(to_postgres).collect();
        let refs: Vec<&(dyn ToSql + Sync)> = boxed.iter().map(AsRef::as_ref).collect();
        let fetched = self
            .transaction
            .query(&statement, &refs)
            .map_err(|e| map_error(&e))?;
        rows.start(statement.columns().len());
        for row in &fetched {
            for index in 0..row.len() {
                cell(row, index)?.push_to(rows);
            }
        }
        Ok(())
    }

    /// Rows are read as they arrive, through a portal: a query of many rows never holds them
    /// all.
    fn query_each(
        &mut self,
        sql: &str,
        params: &[Value],
        each: &mut dyn FnMut(&Row) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let statement = self.statement(sql)?;
        let boxed: Vec<_> = params.iter().map(to_postgres).collect();
        let refs: Vec<&(dyn ToSql + Sync)> = boxed.iter().map(AsRef::as_ref).collect();
        // A portal, read as the rows arrive: a scan of every account never holds them all.
        let mut rows = self
            .transaction
            .query_raw(&statement, refs)
            .map_err(|e| map_error(&e))?;
        while let Some(row) = rows.next().map_err(|e| map_error(&e))? {
            let values = (0..row.len())
                .map(|i| from_postgres(&row, i))
                .collect::<Result<Vec<_>, _>>()?;
            each(&Row(values))?;
        }
        Ok(())
    }
}

impl Backend for PostgresBackend {
    fn write<R>(
        &self,
        work: &mut dyn FnMut(&mut dyn Tx) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        self.run(false, work)
    }

    fn read<R>(
        &self,
        work: &mut dyn FnMut(&mut dyn Tx) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        self.run(true, work)
    }

    /// The table's pages are split between a reader per core, all in one snapshot
    /// ([`PostgresBackend::read_shared`]), each streaming its range of pages (a TID range
    /// scan) by binary `COPY`: one connection alone is bound by the one server process that
    /// sends its rows.
    fn stream_table<R>(
        &self,
        table: &str,
        columns: &str,
        batch: usize,
        first: &mut dyn FnMut(&mut dyn Tx) -> Result<R, StoreError>,
        each: &(dyn Fn(&crate::sql::Rows) -> Result<(), StoreError> + Sync),
    ) -> Result<R, StoreError> {
        let parts = std::thread::available_parallelism().map_or(1, |n| n.get().clamp(1, 4));
        let all = format!("SELECT {columns} FROM {table}");
        let mut before = None;
        self.read_shared(
            parts,
            &mut |tx| {
                before = Some(first(tx)?);
                tx.query_one(
                    &format!(
                        "SELECT pg_relation_size('{table}') / current_setting('block_size')::INT8"
                    ),
                    &[],
                )?
                .map_or(Ok(0), |row| row.int(0))
            },
            &|part, pages, tx| {
                // Part i reads pages [pages·i/parts, pages·(i+1)/parts); the last has no
                // end, so that a page added since the count is read too.
                let bound = |i: usize| {
                    pages * i64::try_from(i).unwrap_or(0) / i64::try_from(parts).unwrap_or(1)
                };
                let from = format!("ctid >= '({},0)'::tid", bound(part));
                let until = format!("ctid < '({},0)'::tid", bound(part + 1));
                let query = match (part == 0, part + 1 == parts) {
                    (true, true) => all.clone(),
                    (false, true) => format!("{all} WHERE {from}"),
                    (true, false) => format!("{all} WHERE {until}"),
                    (false, false) => format!("{all} WHERE {from} AND {until}"),
                };
                tx.stream_rows(&query, batch, &mut |rows| each(rows))
            },
            &mut |_| Ok(()),
        )?;
        before.ok_or_else(|| StoreError::corrupt("a shared read that did not begin"))
    }
}

/// One part of a read of a shared snapshot: its number, what the lead transaction made, and
/// the part's reader ([`PostgresBackend::read_shared`]).
type SnapshotPart<'a, L> = dyn Fn(usize, &L, &mut dyn Tx) -> Result<(), StoreError> + Sync + 'a;

/// The first of `errors` that is not [`StoreError::Stopped`], or the first.
fn cause(mut errors: Vec<StoreError>) -> StoreError {
    let at = errors
        .iter()
        .position(|e| !matches!(e, StoreError::Stopped))
        .unwrap_or(0);
    errors.swap_remove(at)
}

impl PostgresBackend {
    /// Reads one snapshot on several connections at once: `lead` runs first, in a read-only
    /// transaction that exports its snapshot (`pg_export_snapshot`); then `part(i, &led, tx)`
    /// runs for each of `parts` on a thread and a connection of its own, a
    /// [`SnapshotReader`] in that snapshot, while `meanwhile(&led)` runs on the calling
    /// thread. Answers what `lead` made and what `meanwhile` did. Of several errors, one that
    /// is not [`StoreError::Stopped`] (what a part sees when its consumer has gone) is the
    /// cause.
    pub(crate) fn read_shared<L: Sync, M>(
        &self,
        parts: usize,
        lead: &mut dyn FnMut(&mut dyn Tx) -> Result<L, StoreError>,
        part: &SnapshotPart<'_, L>,
        meanwhile: &mut dyn FnMut(&L) -> Result<M, StoreError>,
    ) -> Result<(L, M), StoreError> {
        let mut lead_connection = self
            .pool
            .get()
            .map_err(|e| StoreError::Unavailable(format!("no PostgreSQL connection: {e}")))?;
        let Connection { client, prepared } = &mut *lead_connection;
        let mut transaction = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .map_err(|e| map_error(&e))?;
        let mut tx = PostgresTx {
            read_only: true,
            transaction: &mut transaction,
            prepared,
        };
        let led = lead(&mut tx)?;
        let snapshot = match tx.query_one("SELECT pg_export_snapshot()", &[])? {
            Some(row) => row.text(0)?,
            None => return Err(StoreError::corrupt("no snapshot to share")),
        };
        let (parted, done) = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..parts)
                .map(|i| {
                    let (led, snapshot) = (&led, snapshot.as_str());
                    scope.spawn(move || {
                        let mut reader = SnapshotReader::open(&self.config, snapshot)?;
                        part(i, led, &mut reader)?;
                        reader.close()
                    })
                })
                .collect();
            let done = meanwhile(&led);
            let parted: Vec<Result<(), StoreError>> = workers
                .into_iter()
                .map(|worker| {
                    worker
                        .join()
                        .unwrap_or_else(|_| Err(StoreError::corrupt("a reading thread panicked")))
                })
                .collect();
            (parted, done)
        });
        let mut errors: Vec<StoreError> = parted.into_iter().filter_map(Result::err).collect();
        let done = match done {
            Ok(done) => done,
            Err(error) => {
                errors.insert(0, error);
                return Err(cause(errors));
            }
        };
        if !errors.is_empty() {
            return Err(cause(errors));
        }
        transaction.commit().map_err(|e| map_error(&e))?;
        Ok((led, done))
    }
}
