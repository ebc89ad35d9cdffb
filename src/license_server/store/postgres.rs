//! PostgreSQL: a small pool of connections; each transaction runs on a blocking
//! thread. Several license server replicas can share one database: every write that
//! must not race (serials, entitlement seats) is a single conditional UPDATE.

use std::sync::{Condvar, Mutex};

use postgres::types::{ToSql, Type};
use postgres::{Client, NoTls};

use super::sql::{Row, Sql, StoreError, Value};

fn db_err(e: postgres::Error) -> StoreError {
    StoreError::Database(e.to_string())
}

pub struct Pool {
    url: String,
    size: usize,
    idle: Mutex<(Vec<Client>, usize)>,
    freed: Condvar,
}

impl Pool {
    pub fn connect(url: &str, size: usize) -> Result<Pool, StoreError> {
        let first = Client::connect(url, NoTls).map_err(|e| {
            StoreError::Database(format!(
                "cannot connect to PostgreSQL at {}: {e}",
                redact(url)
            ))
        })?;
        Ok(Pool {
            url: url.to_string(),
            size: size.max(1),
            idle: Mutex::new((vec![first], 1)),
            freed: Condvar::new(),
        })
    }

    fn take(&self) -> Result<Client, StoreError> {
        let mut idle = self.idle.lock().unwrap();
        loop {
            if let Some(client) = idle.0.pop() {
                return Ok(client);
            }
            if idle.1 < self.size {
                idle.1 += 1;
                drop(idle);
                return Client::connect(&self.url, NoTls).map_err(|e| {
                    self.idle.lock().unwrap().1 -= 1;
                    StoreError::Database(format!(
                        "cannot connect to PostgreSQL at {}: {e}",
                        redact(&self.url)
                    ))
                });
            }
            idle = self.freed.wait(idle).unwrap();
        }
    }

    fn give(&self, client: Client) {
        let mut idle = self.idle.lock().unwrap();
        if client.is_closed() {
            idle.1 -= 1;
        } else {
            idle.0.push(client);
        }
        self.freed.notify_one();
    }

    /// Run `f` in one transaction; commit when it succeeds.
    pub fn transact<T>(
        &self,
        f: impl FnOnce(&mut dyn Sql) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut client = self.take()?;
        let result = (|| {
            let mut tx = client.transaction().map_err(db_err)?;
            let value = f(&mut Tx(&mut tx))?;
            tx.commit().map_err(db_err)?;
            Ok(value)
        })();
        self.give(client);
        result
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // Closing a sync client blocks on its own runtime, which must not happen on an
        // async worker: close them on a plain thread.
        let clients = std::mem::take(&mut self.idle.get_mut().unwrap().0);
        if !clients.is_empty() {
            let _ = std::thread::spawn(move || drop(clients)).join();
        }
    }
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{}:***{}", &url[..s + 3], user, &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

struct Tx<'a, 'b>(&'a mut postgres::Transaction<'b>);

fn params(values: &[Value]) -> Result<Vec<&(dyn ToSql + Sync)>, StoreError> {
    values
        .iter()
        .map(|v| match v {
            Value::Int(i) => Ok(i as &(dyn ToSql + Sync)),
            Value::Text(t) => Ok(t as &(dyn ToSql + Sync)),
            Value::Blob(b) => Ok(b as &(dyn ToSql + Sync)),
            Value::Null => Ok(&SqlNull as &(dyn ToSql + Sync)),
        })
        .collect()
}

/// A NULL parameter of whatever type the statement expects.
#[derive(Debug)]
struct SqlNull;

impl ToSql for SqlNull {
    fn to_sql(
        &self,
        _: &Type,
        _: &mut bytes::BytesMut,
    ) -> Result<postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        Ok(postgres::types::IsNull::Yes)
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    postgres::types::to_sql_checked!();
}

impl Sql for Tx<'_, '_> {
    fn execute(&mut self, sql: &str, values: &[Value]) -> Result<u64, StoreError> {
        let p = params(values)?;
        self.0.execute(sql, &p).map_err(db_err)
    }

    fn query(&mut self, sql: &str, values: &[Value]) -> Result<Vec<Row>, StoreError> {
        let p = params(values)?;
        let rows = self.0.query(sql, &p).map_err(db_err)?;
        rows.iter()
            .map(|row| {
                (0..row.len())
                    .map(|i| {
                        let ty = row.columns()[i].type_().clone();
                        Ok(if ty == Type::INT8 {
                            row.try_get::<_, Option<i64>>(i)
                                .map_err(db_err)?
                                .map_or(Value::Null, Value::Int)
                        } else if ty == Type::INT4 {
                            row.try_get::<_, Option<i32>>(i)
                                .map_err(db_err)?
                                .map_or(Value::Null, |v| Value::Int(v.into()))
                        } else if ty == Type::BYTEA {
                            row.try_get::<_, Option<Vec<u8>>>(i)
                                .map_err(db_err)?
                                .map_or(Value::Null, Value::Blob)
                        } else {
                            row.try_get::<_, Option<String>>(i)
                                .map_err(db_err)?
                                .map_or(Value::Null, Value::Text)
                        })
                    })
                    .collect::<Result<Vec<_>, StoreError>>()
                    .map(Row)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            super::redact("postgres://lh:secret@127.0.0.1:5432/db"),
            "postgres://lh:***@127.0.0.1:5432/db"
        );
        assert_eq!(
            super::redact("postgres://127.0.0.1/db"),
            "postgres://127.0.0.1/db"
        );
    }
}
