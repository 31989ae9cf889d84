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
//! round trip (bind and execute) instead of two (parse and describe first). It prepares each
//! again after 16, 64, 256 … uses, so that the server plans it again for the tables as they
//! have grown (see [`Prepared`]). Rows written in bulk go through binary `COPY`.

use std::collections::HashMap;

use postgres::binary_copy::BinaryCopyInWriter;
use postgres::fallible_iterator::FallibleIterator;
use postgres::types::{ToSql, Type};
use postgres::{IsolationLevel, NoTls, Statement};

use crate::error::StoreError;
use crate::postgres_wire::{cell, from_postgres, is_retryable, map_error, to_postgres};
use crate::snapshot_reader::SnapshotReader;
use crate::sql::{Backend, Dialect, Row, Tx, Value};

const ATTEMPTS: u32 = 8;

/// How many prepared statements a connection keeps. The store's statements are a fixed set of
/// a few dozen; the bound only keeps a caller that formats many distinct ones from growing it.
const PREPARED_PER_CONNECTION: usize = 512;

pub struct PostgresBackend {
    pool: r2d2::Pool<Connections>,
    /// For the readers of a shared snapshot, each on a connection of its own
    /// ([`SnapshotReader`]).
    config: tokio_postgres::Config,
}

/// A client with the statements prepared on it, keyed by their portable text.
struct Connection {
    client: postgres::Client,
    prepared: HashMap<String, Prepared>,
}

/// A statement prepared on a connection, and when to prepare it again.
///
/// Why again: after a few runs the server keeps one generic plan for a prepared statement, made
/// for the tables as they were then, and keeps it until the table's statistics change (the next
/// ANALYZE, which autovacuum runs a minute or more later). A store that starts empty and takes
/// events at once had its key lookups planned as scans of tables of one page, then ran them
/// over tens of thousands of rows: each lookup took longer with every row written, and ingest
/// ran at a tenth of its speed. Prepared again each time its uses have grown fourfold, a
/// statement is planned for tables at most about four times smaller than they are, and in the
/// long run almost never.
struct Prepared {
    statement: Statement,
    uses: u64,
    prepare_again_at: u64,
}

/// The uses after which a statement is first prepared again ([`Prepared`]).
const FIRST_PREPARE_AGAIN: u64 = 16;

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
        let mut config: tokio_postgres::Config = url.parse().map_err(not_a_url)?;
        // A snapshot reader gives up on a server that does not answer as soon as the pool does.
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(std::time::Duration::from_secs(2));
        }
        Ok(PostgresBackend { pool, config })
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

pub(crate) struct PostgresTx<'a, 'b> {
    read_only: bool,
    transaction: &'a mut postgres::Transaction<'b>,
    prepared: &'a mut HashMap<String, Prepared>,
}

/// Prepares portable `sql` on the transaction's connection.
fn prepare(
    transaction: &mut postgres::Transaction<'_>,
    sql: &str,
) -> Result<Statement, StoreError> {
    transaction
        .prepare(&Dialect::Postgres.rewrite(sql))
        .map_err(|e| map_error(&e))
}

impl PostgresTx<'_, '_> {
    /// The statement for portable `sql`, prepared on this connection (and again as its uses
    /// grow, see [`Prepared`]).
    fn statement(&mut self, sql: &str) -> Result<Statement, StoreError> {
        if let Some(prepared) = self.prepared.get_mut(sql) {
            prepared.uses += 1;
            if prepared.uses < prepared.prepare_again_at {
                return Ok(prepared.statement.clone());
            }
            prepared.statement = prepare(self.transaction, sql)?;
            prepared.prepare_again_at = prepared.prepare_again_at.saturating_mul(4);
            return Ok(prepared.statement.clone());
        }
        let statement = prepare(self.transaction, sql)?;
        if self.prepared.len() >= PREPARED_PER_CONNECTION {
            self.prepared.clear();
        }
        self.prepared.insert(
            sql.to_owned(),
            Prepared {
                statement: statement.clone(),
                uses: 1,
                prepare_again_at: FIRST_PREPARE_AGAIN,
            },
        );
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
        let (done, mut errors) = match done {
            Ok(done) => (Some(done), Vec::new()),
            Err(error) => (None, vec![error]),
        };
        errors.extend(parted.into_iter().filter_map(Result::err));
        let Some(done) = done.filter(|_| errors.is_empty()) else {
            return Err(cause(errors));
        };
        transaction.commit().map_err(|e| map_error(&e))?;
        Ok((led, done))
    }
}
