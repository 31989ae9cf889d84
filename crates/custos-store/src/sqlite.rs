//! SQLite: one file in the data folder, WAL journal, `synchronous=FULL`.
//!
//! Writers take the write lock at `BEGIN IMMEDIATE`, so concurrent writers are serialized by
//! SQLite itself; the write connection sits behind a mutex. Reads run on their own connections
//! (a small pool), so that a long write, such as a sweep's batch, never holds up a read: in WAL
//! mode a reader sees the last committed state and waits for no writer. With
//! `synchronous=FULL` in WAL mode a commit returns only after the WAL is on disk.

use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};

use rusqlite::types::{Value as SqliteValue, ValueRef};
use rusqlite::{Connection, ErrorCode, TransactionBehavior};

use crate::error::StoreError;
use crate::sql::{Backend, Dialect, Row, Rows, Tx, Value, text_of};

pub struct SqliteBackend {
    path: PathBuf,
    connection: Mutex<Connection>,
    readers: Readers,
}

/// At most this many read connections are open; a read beyond them waits for one.
const MAX_READERS: usize = 8;

/// Idle read connections, and how many exist.
#[derive(Default)]
struct Readers {
    pool: Mutex<(Vec<Connection>, usize)>,
    returned: Condvar,
}

/// A connection's settings; readers get a smaller page cache each.
fn configure(connection: &Connection, cache_kib: i64) -> rusqlite::Result<String> {
    connection.busy_timeout(std::time::Duration::from_secs(10))?;
    let mode: String = connection.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
    connection.pragma_update(None, "synchronous", "FULL")?;
    connection.pragma_update(None, "cache_size", -cache_kib)?;
    Ok(mode)
}

impl SqliteBackend {
    pub fn open(path: &Path) -> Result<SqliteBackend, StoreError> {
        check_file(path)?;
        let connection = Connection::open(path).map_err(|e| map_error(path, &e))?;
        // The writer's page cache (64 MiB) holds the hot index pages, instead of SQLite's 2 MiB
        // default.
        let mode = configure(&connection, 65_536).map_err(|e| map_error(path, &e))?;
        // Checkpoint the WAL into the database every ~40 MiB rather than SQLite's 4 MiB: a
        // sweep's or a batch's commits then don't each copy their pages back and sync twice.
        connection
            .pragma_update(None, "wal_autocheckpoint", 10_000)
            .map_err(|e| map_error(path, &e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Database(format!(
                "{}: could not switch to WAL mode (got `{mode}`)",
                path.display()
            )));
        }
        Ok(SqliteBackend {
            path: path.to_owned(),
            connection: Mutex::new(connection),
            readers: Readers::default(),
        })
    }

    /// A read connection from the pool, opened if fewer than [`MAX_READERS`] exist, else the
    /// next one returned.
    fn take_reader(&self) -> Result<Connection, StoreError> {
        let poisoned = || StoreError::Database("a read connection pool lock was poisoned".into());
        let mut pool = self.readers.pool.lock().map_err(|_| poisoned())?;
        loop {
            if let Some(connection) = pool.0.pop() {
                return Ok(connection);
            }
            if pool.1 < MAX_READERS {
                pool.1 += 1;
                drop(pool);
                let opened = Connection::open(&self.path)
                    .and_then(|c| configure(&c, 16_384).map(|_| c))
                    // Reads map the file (up to 1 TiB, see `.cargo/config.toml`): a scan then
                    // reads pages from the OS page cache in place, instead of copying each into
                    // this connection's cache. Writes still go through the WAL.
                    .and_then(|c| c.pragma_update(None, "mmap_size", 1i64 << 40).map(|()| c))
                    .map_err(|e| map_error(&self.path, &e));
                if opened.is_err()
                    && let Ok(mut pool) = self.readers.pool.lock()
                {
                    pool.1 -= 1;
                }
                return opened;
            }
            pool = self.readers.returned.wait(pool).map_err(|_| poisoned())?;
        }
    }

    fn give_back(&self, connection: Connection) {
        if let Ok(mut pool) = self.readers.pool.lock() {
            pool.0.push(connection);
            self.readers.returned.notify_one();
        }
    }

    /// Runs `work` in a read transaction on a pooled read connection. The transaction is
    /// deferred: it takes its snapshot at `work`'s first read.
    fn read_on_pool<R>(
        &self,
        work: &mut dyn FnMut(&mut dyn Tx) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let mut connection = self.take_reader()?;
        let result = self.read_on(&mut connection, work);
        self.give_back(connection);
        result
    }

    fn read_on<R>(
        &self,
        connection: &mut Connection,
        work: &mut dyn FnMut(&mut dyn Tx) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let transaction = connection
            .transaction_with_behavior(TransactionBehavior::Deferred)
            .map_err(|e| map_error(&self.path, &e))?;
        let result = work(&mut SqliteTx {
            path: &self.path,
            read_only: true,
            transaction: &transaction,
        })?;
        transaction
            .commit()
            .map_err(|e| map_error(&self.path, &e))?;
        Ok(result)
    }

    fn run<R>(
        &self,
        behavior: TransactionBehavior,
        work: &mut dyn FnMut(&mut dyn Tx) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let mut connection = self.connection.lock().map_err(|_| {
            StoreError::Database("a previous write panicked; restart custos".into())
        })?;
        let transaction = connection
            .transaction_with_behavior(behavior)
            .map_err(|e| map_error(&self.path, &e))?;
        let result = work(&mut SqliteTx {
            path: &self.path,
            read_only: matches!(behavior, TransactionBehavior::Deferred),
            transaction: &transaction,
        })?;
        transaction
            .commit()
            .map_err(|e| map_error(&self.path, &e))?;
        Ok(result)
    }
}

/// The write-ahead log's own header; frames follow it.
const WAL_HEADER_BYTES: u64 = 32;

/// Refuses a file that is not an SQLite database, or whose header promises more pages than it
/// holds (a truncated file). SQLite itself would open an empty file as a new database, and would
/// only notice missing pages when it reads them.
fn check_file(path: &Path) -> Result<(), StoreError> {
    use std::io::Read;
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(StoreError::io(path, error)),
    };
    let length = file.metadata().map_err(|e| StoreError::io(path, e))?.len();
    let mut header = [0u8; 100];
    let corrupt = |what: String| Err(StoreError::Corrupt(format!("{}: {what}", path.display())));
    if length < 100 || file.read_exact(&mut header).is_err() {
        return corrupt(format!(
            "the file is only {length} bytes; a custos database is never that small (was it truncated?)"
        ));
    }
    if header.get(..16) != Some(b"SQLite format 3\0".as_slice()) {
        return corrupt("it is not an SQLite database".to_owned());
    }
    let page_size = match u16::from_be_bytes([header[16], header[17]]) {
        1 => 65_536,
        size => u64::from(size),
    };
    let pages = u64::from(u32::from_be_bytes([
        header[28], header[29], header[30], header[31],
    ]));
    // A write-ahead log with frames may hold the pages the header counts: a checkpoint copies
    // them into the file in page order, page 1 (with the new size) first, so a process killed
    // during one leaves the file shorter than its header until SQLite replays the log on open.
    // The header's count is then no evidence of truncation.
    let mut log = path.as_os_str().to_owned();
    log.push("-wal");
    let log_has_frames = std::fs::metadata(&log).is_ok_and(|m| m.len() > WAL_HEADER_BYTES);
    if !log_has_frames && length < page_size * pages {
        return corrupt(format!(
            "the file is {length} bytes but its header says {} (it was truncated)",
            page_size * pages
        ));
    }
    Ok(())
}

fn map_error(path: &Path, error: &rusqlite::Error) -> StoreError {
    let where_ = path.display();
    match error.sqlite_error_code() {
        Some(ErrorCode::DiskFull) => StoreError::DiskFull(format!("{where_}: {error}")),
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => {
            StoreError::Corrupt(format!("{where_}: {error}"))
        }
        Some(ErrorCode::ReadOnly | ErrorCode::CannotOpen | ErrorCode::PermissionDenied) => {
            StoreError::Database(format!(
                "{where_}: {error} (can custos write to the data folder?)"
            ))
        }
        Some(ErrorCode::SystemIoFailure) => StoreError::Database(format!(
            "{where_}: {error} (the disk may be full or failing)"
        )),
        _ => StoreError::Database(format!("{where_}: {error}")),
    }
}

struct SqliteTx<'a> {
    path: &'a Path,
    read_only: bool,
    transaction: &'a rusqlite::Transaction<'a>,
}

fn to_sqlite(value: &Value) -> SqliteValue {
    match value {
        Value::Null => SqliteValue::Null,
        Value::Int(v) => SqliteValue::Integer(*v),
        Value::Text(v) => SqliteValue::Text(v.clone()),
        Value::Bytes(v) => SqliteValue::Blob(v.clone()),
        Value::Bool(v) => SqliteValue::Integer(i64::from(*v)),
    }
}

/// A column as SQLite gave it, checked that no column holds a float. Text is not checked for
/// UTF-8 here: a `Row` checks each value, and flat buffers check a whole buffer at once when
/// they are read (`Rows::replay`), on the thread that parses them.
enum Cell<'a> {
    Null,
    Int(i64),
    Text(&'a [u8]),
    Bytes(&'a [u8]),
}

/// A result row, read cell by cell.
struct Cells<'r> {
    row: &'r rusqlite::Row<'r>,
    path: &'r Path,
}

impl<'r> Cells<'r> {
    fn get(&self, index: usize) -> Result<Cell<'r>, StoreError> {
        cell(
            self.row
                .get_ref(index)
                .map_err(|e| map_error(self.path, &e))?,
        )
    }
}

fn cell(value: ValueRef<'_>) -> Result<Cell<'_>, StoreError> {
    Ok(match value {
        ValueRef::Null => Cell::Null,
        ValueRef::Integer(v) => Cell::Int(v),
        ValueRef::Text(v) => Cell::Text(v),
        ValueRef::Blob(v) => Cell::Bytes(v),
        ValueRef::Real(_) => {
            return Err(StoreError::corrupt("a column holds a floating-point value"));
        }
    })
}

impl SqliteTx<'_> {
    fn sql(sql: &str) -> std::borrow::Cow<'_, str> {
        if sql.contains("INT8") || sql.contains("BYTES") {
            std::borrow::Cow::Owned(Dialect::Sqlite.rewrite(sql))
        } else {
            std::borrow::Cow::Borrowed(sql)
        }
    }
}

impl Tx for SqliteTx<'_> {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, StoreError> {
        let error = |e: rusqlite::Error| map_error(self.path, &e);
        let mut statement = self
            .transaction
            .prepare_cached(&Self::sql(sql))
            .map_err(error)?;
        let changed = statement
            .execute(rusqlite::params_from_iter(params.iter().map(to_sqlite)))
            .map_err(error)?;
        Ok(u64::try_from(changed).unwrap_or(u64::MAX))
    }

    fn query_each(
        &mut self,
        sql: &str,
        params: &[Value],
        each: &mut dyn FnMut(&Row) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut buffer = Row(Vec::new());
        self.for_each_row(sql, params, |columns, row| {
            buffer.0.resize(columns, Value::Null);
            for (index, slot) in buffer.0.iter_mut().enumerate() {
                // Each value reuses its slot's buffer.
                match row.get(index)? {
                    Cell::Null => *slot = Value::Null,
                    Cell::Int(v) => *slot = Value::Int(v),
                    Cell::Text(v) => slot.set_text(text_of(v)?),
                    Cell::Bytes(v) => slot.set_bytes(v),
                }
            }
            each(&buffer)
        })
    }

    /// Without a `Row` in between: each value is copied once, from SQLite's buffer into the
    /// flat buffers.
    fn query_rows(
        &mut self,
        sql: &str,
        params: &[Value],
        rows: &mut Rows,
    ) -> Result<(), StoreError> {
        self.for_each_row(sql, params, |columns, row| {
            rows.start(columns);
            for index in 0..columns {
                match row.get(index)? {
                    Cell::Null => rows.push_null(),
                    Cell::Int(v) => rows.push_int(v),
                    Cell::Text(v) => rows.push_unchecked_text(v),
                    Cell::Bytes(v) => rows.push_bytes(v),
                }
            }
            Ok(())
        })
    }
}

impl SqliteTx<'_> {
    /// Runs a query and lends each result row as its column count and a reader of its cells.
    /// Generic over `each`, so that reading a cell is a direct call: an export reads a few
    /// hundred million of them.
    fn for_each_row(
        &mut self,
        sql: &str,
        params: &[Value],
        mut each: impl FnMut(usize, &Cells<'_>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let error = |e: rusqlite::Error| map_error(self.path, &e);
        let mut statement = self
            .transaction
            .prepare_cached(&Self::sql(sql))
            .map_err(error)?;
        let columns = statement.column_count();
        let mut rows = statement
            .query(rusqlite::params_from_iter(params.iter().map(to_sqlite)))
            .map_err(error)?;
        while let Some(row) = rows.next().map_err(error)? {
            each(
                columns,
                &Cells {
                    row,
                    path: self.path,
                },
            )?;
        }
        Ok(())
    }
}

impl Backend for SqliteBackend {
    fn write<R>(
        &self,
        work: &mut dyn FnMut(&mut dyn Tx) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        self.run(TransactionBehavior::Immediate, work)
    }

    fn read<R>(
        &self,
        work: &mut dyn FnMut(&mut dyn Tx) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        self.read_on_pool(work)
    }

    /// On a connection of its own that does not map the file: pages read once go through the
    /// OS page cache and a small page cache of this connection, closed at the end, instead of
    /// staying mapped (and counted resident) in the pooled readers.
    fn read_once<R>(
        &self,
        work: &mut dyn FnMut(&mut dyn Tx) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let mut connection = Connection::open(&self.path)
            .and_then(|c| configure(&c, 2_048).map(|_| c))
            .and_then(|c| c.pragma_update(None, "mmap_size", 0i64).map(|()| c))
            .map_err(|e| map_error(&self.path, &e))?;
        self.read_on(&mut connection, work)
    }
}
