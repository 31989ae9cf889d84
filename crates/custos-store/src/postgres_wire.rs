//! PostgreSQL's values and errors as the store sees them: parameters from the store's values,
//! column values from the binary wire format (what a row and a binary `COPY` both carry), and
//! the server's errors as the store's. Shared by the pool's connections (`postgres`) and the
//! snapshot readers (`snapshot_reader`).

use std::error::Error;

use bytes::BytesMut;
use postgres::error::SqlState;
use postgres::types::{FromSql, IsNull, ToSql, Type, to_sql_checked};

use crate::error::StoreError;
use crate::sql::Value;

pub(crate) fn is_retryable(error: &postgres::Error) -> bool {
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

pub(crate) fn cell(row: &postgres::Row, index: usize) -> Result<Cell<'_>, StoreError> {
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
