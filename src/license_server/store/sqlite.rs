//! SQLite: one connection owned by one writer thread, WAL journal, `synchronous=FULL`.
//! Transactions queue to the thread and commit in groups: every transaction waiting
//! when a commit starts shares it (each under its own savepoint, so one that fails
//! rolls back alone), and none is acknowledged before its commit is on disk.

use std::path::Path;
use std::sync::mpsc;

use rusqlite::types::{Value as SqlValue, ValueRef};
use rusqlite::Connection;

use super::sql::{Row, Sql, StoreError, Value};
use super::Job;

/// Most transactions committed together.
const MAX_GROUP: usize = 256;

fn db_err(e: rusqlite::Error) -> StoreError {
    StoreError::Database(e.to_string())
}

struct Tx<'a>(&'a Connection);

fn rewrite(sql: &str) -> String {
    sql.replace('$', "?")
}

fn params(values: &[Value]) -> Vec<SqlValue> {
    values
        .iter()
        .map(|v| match v {
            Value::Null => SqlValue::Null,
            Value::Int(i) => SqlValue::Integer(*i),
            Value::Text(t) => SqlValue::Text(t.clone()),
            Value::Blob(b) => SqlValue::Blob(b.clone()),
        })
        .collect()
}

impl Sql for Tx<'_> {
    fn execute(&mut self, sql: &str, values: &[Value]) -> Result<u64, StoreError> {
        let mut stmt = self.0.prepare_cached(&rewrite(sql)).map_err(db_err)?;
        let n = stmt
            .execute(rusqlite::params_from_iter(params(values)))
            .map_err(db_err)?;
        Ok(n as u64)
    }

    fn query(&mut self, sql: &str, values: &[Value]) -> Result<Vec<Row>, StoreError> {
        let mut stmt = self.0.prepare_cached(&rewrite(sql)).map_err(db_err)?;
        let columns = stmt.column_count();
        let mut rows = stmt
            .query(rusqlite::params_from_iter(params(values)))
            .map_err(db_err)?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(db_err)? {
            let mut values = Vec::with_capacity(columns);
            for i in 0..columns {
                values.push(match row.get_ref(i).map_err(db_err)? {
                    ValueRef::Null => Value::Null,
                    ValueRef::Integer(v) => Value::Int(v),
                    ValueRef::Real(v) => Value::Int(v as i64),
                    ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
                    ValueRef::Blob(b) => Value::Blob(b.to_vec()),
                });
            }
            out.push(Row(values));
        }
        Ok(out)
    }
}

/// Open (creating if needed) the database file and start its writer thread.
pub fn open(path: &Path) -> Result<mpsc::SyncSender<Box<dyn Job>>, StoreError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.is_dir() {
            return Err(StoreError::Database(format!(
                "the directory {} does not exist; create it first",
                parent.display()
            )));
        }
    }
    let conn = Connection::open(path)
        .map_err(|e| StoreError::Database(format!("cannot open {}: {e}", path.display())))?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .map_err(db_err)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Database(format!(
            "{} cannot use WAL journaling (got '{mode}'); is it on a network file system?",
            path.display()
        )));
    }
    conn.execute_batch(
        "PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON; PRAGMA busy_timeout=10000;",
    )
    .map_err(db_err)?;
    conn.set_prepared_statement_cache_capacity(64);
    let (tx, rx) = mpsc::sync_channel::<Box<dyn Job>>(4096);
    std::thread::Builder::new()
        .name("leasehold-sqlite".into())
        .spawn(move || writer(conn, rx))
        .map_err(|e| StoreError::Database(format!("cannot start the database thread: {e}")))?;
    Ok(tx)
}

fn writer(conn: Connection, jobs: mpsc::Receiver<Box<dyn Job>>) {
    while let Ok(first) = jobs.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        // Jobs catch their own panics (`Store::transact`); this catches any in between,
        // so the one writer thread never dies.
        let committed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run_group(&conn, &mut group)
        }))
        .unwrap_or_else(|panic| Err(super::panicked(panic.as_ref())));
        if committed.is_err() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        for job in group {
            job.finish(committed.clone());
        }
    }
}

fn run_group(conn: &Connection, group: &mut [Box<dyn Job>]) -> Result<(), StoreError> {
    conn.execute_batch("BEGIN IMMEDIATE").map_err(db_err)?;
    for job in group.iter_mut() {
        conn.execute_batch("SAVEPOINT job").map_err(db_err)?;
        if job.run(&mut Tx(conn)) {
            conn.execute_batch("RELEASE job").map_err(db_err)?;
        } else {
            conn.execute_batch("ROLLBACK TO job; RELEASE job")
                .map_err(db_err)?;
        }
    }
    conn.execute_batch("COMMIT").map_err(db_err)
}
