//! The license server's storage: SQLite (embedded default) or PostgreSQL (several
//! replicas), behind one transaction API. Schema changes are numbered migrations,
//! applied in order at start and recorded in `schema_migrations`.

mod postgres;
pub mod sql;
mod sqlite;

use std::sync::{mpsc, Arc};

use tokio::sync::oneshot;

pub use sql::{Row, Sql, StoreError, Value};

/// Which database, from `--db`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DbUrl {
    Sqlite(std::path::PathBuf),
    Postgres(String),
}

impl DbUrl {
    pub fn parse(text: &str) -> Result<DbUrl, String> {
        if let Some(path) = text.strip_prefix("sqlite:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err(
                    "sqlite: needs a file path, like sqlite:/var/lib/leasehold/server.db".into(),
                );
            }
            Ok(DbUrl::Sqlite(path.into()))
        } else if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            Ok(DbUrl::Postgres(text.to_string()))
        } else {
            Err(format!(
                "--db '{text}' is neither sqlite:PATH nor postgres://USER:PASSWORD@HOST/DB"
            ))
        }
    }
}

/// A queued SQLite transaction (see `sqlite.rs`).
pub(crate) trait Job: Send {
    /// Run inside the open transaction; `false` rolls this job back.
    fn run(&mut self, sql: &mut dyn Sql) -> bool;
    /// Deliver the result once the group's commit is decided.
    fn finish(self: Box<Self>, committed: Result<(), StoreError>);
}

struct TypedJob<T, F> {
    f: Option<F>,
    result: Option<Result<T, StoreError>>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> Job for TypedJob<T, F>
where
    T: Send,
    F: FnOnce(&mut dyn Sql) -> Result<T, StoreError> + Send,
{
    fn run(&mut self, sql: &mut dyn Sql) -> bool {
        let f = self.f.take().expect("a job runs once");
        let result = f(sql);
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn finish(mut self: Box<Self>, committed: Result<(), StoreError>) {
        let result = match committed {
            Ok(()) => self
                .result
                .take()
                .unwrap_or_else(|| Err(StoreError::Database("the job did not run".into()))),
            Err(e) => Err(e),
        };
        let _ = self.reply.send(result);
    }
}

enum Backend {
    Sqlite(mpsc::SyncSender<Box<dyn Job>>),
    Postgres(Arc<postgres::Pool>),
}

/// The open database.
#[derive(Clone)]
pub struct Store {
    backend: Arc<Backend>,
}

impl Store {
    /// Open the database and bring its schema up to date.
    pub async fn open(url: &DbUrl) -> Result<Store, StoreError> {
        let backend = match url {
            DbUrl::Sqlite(path) => Backend::Sqlite(sqlite::open(path)?),
            DbUrl::Postgres(url) => {
                let url = url.clone();
                let pool = tokio::task::spawn_blocking(move || postgres::Pool::connect(&url, 16))
                    .await
                    .map_err(|e| StoreError::Database(e.to_string()))??;
                Backend::Postgres(Arc::new(pool))
            }
        };
        let store = Store {
            backend: Arc::new(backend),
        };
        let dialect = store.dialect();
        store.transact(move |sql| migrate(sql, dialect)).await?;
        Ok(store)
    }

    fn dialect(&self) -> Dialect {
        match *self.backend {
            Backend::Sqlite(_) => Dialect::Sqlite,
            Backend::Postgres(_) => Dialect::Postgres,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self.dialect() {
            Dialect::Sqlite => "sqlite",
            Dialect::Postgres => "postgres",
        }
    }

    /// Run `f` in one transaction. It is committed (durably) before this returns
    /// `Ok`; when `f` fails, none of its writes remain. A panic in `f` is a failure
    /// like any other: rolled back and answered as an error, so it cannot take the
    /// database thread (and with it every later request) down.
    pub async fn transact<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn Sql) -> Result<T, StoreError> + Send + 'static,
    {
        let f = move |sql: &mut dyn Sql| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(sql)))
                .unwrap_or_else(|panic| Err(panicked(panic.as_ref())))
        };
        match &*self.backend {
            Backend::Sqlite(jobs) => {
                let (reply, answer) = oneshot::channel();
                let job = Box::new(TypedJob {
                    f: Some(f),
                    result: None,
                    reply,
                });
                let stopped = || StoreError::Database("the database thread stopped".into());
                match jobs.try_send(job) {
                    Ok(()) => {}
                    Err(mpsc::TrySendError::Full(job)) => {
                        // The queue is full: wait for room without blocking the runtime.
                        let jobs = jobs.clone();
                        tokio::task::spawn_blocking(move || jobs.send(job))
                            .await
                            .map_err(|e| StoreError::Database(e.to_string()))?
                            .map_err(|_| stopped())?;
                    }
                    Err(mpsc::TrySendError::Disconnected(_)) => return Err(stopped()),
                }
                answer.await.map_err(|_| stopped())?
            }
            Backend::Postgres(pool) => {
                let pool = pool.clone();
                tokio::task::spawn_blocking(move || pool.transact(f))
                    .await
                    .map_err(|e| StoreError::Database(e.to_string()))?
            }
        }
    }
}

/// The error for a transaction that panicked (a bug; logged with its message).
pub(crate) fn panicked(panic: &(dyn std::any::Any + Send)) -> StoreError {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into());
    tracing::error!("a database transaction panicked and was rolled back: {what}");
    StoreError::Database(format!(
        "the transaction failed unexpectedly and was rolled back ({what}); the server goes on"
    ))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    Sqlite,
    Postgres,
}

/// Schema migrations, in order. `{blob}` and `{id}` are spelled per database.
const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        "CREATE TABLE models (
        model_id TEXT PRIMARY KEY,
        header {blob} NOT NULL,
        stored_key {blob} NOT NULL,
        added_at BIGINT NOT NULL
    );
    CREATE TABLE entitlements (
        id TEXT PRIMARY KEY,
        org TEXT NOT NULL,
        models TEXT NOT NULL,
        nodes BIGINT NOT NULL,
        enrolled BIGINT NOT NULL,
        term_end BIGINT NOT NULL,
        lease_seconds BIGINT NOT NULL,
        grace_seconds BIGINT NOT NULL,
        caps TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        revoked_at BIGINT
    );
    CREATE INDEX entitlements_org ON entitlements (org);
    CREATE TABLE enrollments (
        id TEXT PRIMARY KEY,
        node_id TEXT NOT NULL,
        node_key {blob} NOT NULL,
        org TEXT NOT NULL,
        model_id TEXT NOT NULL,
        entitlement_id TEXT NOT NULL REFERENCES entitlements (id),
        document TEXT NOT NULL,
        status TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        decided_at BIGINT,
        note TEXT,
        UNIQUE (node_id, model_id)
    );
    CREATE TABLE licenses (
        license_id TEXT PRIMARY KEY,
        enrollment_id TEXT NOT NULL UNIQUE REFERENCES enrollments (id),
        node_id TEXT NOT NULL,
        org TEXT NOT NULL,
        model_id TEXT NOT NULL,
        entitlement_id TEXT NOT NULL REFERENCES entitlements (id),
        serial BIGINT NOT NULL,
        issued_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
        renewals BIGINT NOT NULL,
        revoked_at BIGINT,
        revoke_reason TEXT
    );
    CREATE INDEX licenses_node ON licenses (node_id);
    CREATE INDEX licenses_org ON licenses (org);
    CREATE TABLE checkpoints (
        id {id},
        node_id TEXT NOT NULL,
        license_id TEXT NOT NULL,
        org TEXT NOT NULL,
        received_at BIGINT NOT NULL,
        since BIGINT,
        requests BIGINT NOT NULL,
        prompt_tokens BIGINT NOT NULL,
        completion_tokens BIGINT NOT NULL
    );
    CREATE INDEX checkpoints_node ON checkpoints (node_id, received_at);",
    ),
    (
        2,
        "ALTER TABLE checkpoints ADD COLUMN ledger_id TEXT;
    ALTER TABLE checkpoints ADD COLUMN ledger_seq BIGINT;
    ALTER TABLE checkpoints ADD COLUMN ledger_hash TEXT;
    ALTER TABLE checkpoints ADD COLUMN finding TEXT",
    ),
    (
        3,
        "ALTER TABLE entitlements ADD COLUMN safeguards TEXT NOT NULL DEFAULT '{}'",
    ),
    (
        // Renewal request nonces, remembered for the request window (replays refused
        // across replicas). Seats are now taken at approval: pending enrollments give
        // back the seat they took at submission.
        4,
        "CREATE TABLE renewal_nonces (
        node_id TEXT NOT NULL,
        nonce TEXT NOT NULL,
        forget_after BIGINT NOT NULL,
        PRIMARY KEY (node_id, nonce)
    );
    CREATE INDEX renewal_nonces_forget ON renewal_nonces (forget_after);
    UPDATE entitlements SET enrolled = enrolled - (SELECT COUNT(*) FROM enrollments
        WHERE enrollments.entitlement_id = entitlements.id AND enrollments.status = 'pending')",
    ),
    (
        // TPM nodes: their count of refused rolled-back states, as each report gave it.
        5,
        "ALTER TABLE checkpoints ADD COLUMN tpm_rollbacks BIGINT;
    CREATE INDEX checkpoints_node_id ON checkpoints (node_id, id)",
    ),
    (
        // The portal: staff tokens, invited organizations and their accounts, sessions
        // (secrets kept as SHA-256 only), applications and their append-only history.
        6,
        "CREATE TABLE staff (
        name TEXT PRIMARY KEY,
        token_hash TEXT NOT NULL UNIQUE,
        created_at BIGINT NOT NULL,
        revoked_at BIGINT
    );
    CREATE TABLE orgs (
        name TEXT PRIMARY KEY,
        created_at BIGINT NOT NULL,
        invited_by TEXT NOT NULL
    );
    CREATE TABLE invitations (
        token_hash TEXT PRIMARY KEY,
        org TEXT NOT NULL REFERENCES orgs (name),
        created_by TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
        used_at BIGINT
    );
    CREATE TABLE org_members (
        token_hash TEXT PRIMARY KEY,
        org TEXT NOT NULL REFERENCES orgs (name),
        contact TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        revoked_at BIGINT
    );
    CREATE TABLE sessions (
        id_hash TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        account TEXT NOT NULL,
        actor TEXT NOT NULL,
        csrf TEXT NOT NULL,
        credential TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
        ended_at BIGINT
    );
    CREATE TABLE applications (
        id TEXT PRIMARY KEY,
        org TEXT NOT NULL,
        status TEXT NOT NULL,
        details TEXT NOT NULL,
        entitlement_id TEXT REFERENCES entitlements (id),
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL
    );
    CREATE INDEX applications_org ON applications (org, created_at);
    CREATE TABLE application_events (
        id {id},
        application_id TEXT NOT NULL REFERENCES applications (id),
        org TEXT NOT NULL,
        recorded_at BIGINT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        note TEXT NOT NULL
    );
    CREATE INDEX application_events_app ON application_events (application_id, id);
    CREATE INDEX checkpoints_org ON checkpoints (org, node_id, id)",
    ),
    (
        // Entitlements whose nodes are approved on enrollment, within their seats, when
        // the enrollment comes with one of the organization's enrollment tokens; which
        // enrollments came with one.
        7,
        "ALTER TABLE entitlements ADD COLUMN auto_approve BIGINT NOT NULL DEFAULT 0;
    ALTER TABLE enrollments ADD COLUMN token_org TEXT;
    CREATE TABLE enrollment_tokens (
        token_hash TEXT PRIMARY KEY,
        org TEXT NOT NULL,
        created_by TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        revoked_at BIGINT
    )",
    ),
    (
        // Audits: the period asked of an organization's nodes, and each node's answer
        // (the ledger records it uploaded, verified).
        8,
        "CREATE TABLE audits (
        id TEXT PRIMARY KEY,
        org TEXT NOT NULL,
        period_from BIGINT NOT NULL,
        period_to BIGINT NOT NULL,
        requested_by TEXT NOT NULL,
        requested_at BIGINT NOT NULL,
        max_renewals BIGINT NOT NULL,
        note TEXT NOT NULL
    );
    CREATE INDEX audits_org ON audits (org, requested_at);
    CREATE TABLE audit_nodes (
        audit_id TEXT NOT NULL REFERENCES audits (id),
        node_id TEXT NOT NULL,
        asked BIGINT NOT NULL,
        first_asked_at BIGINT,
        answered_at BIGINT,
        via TEXT,
        first_seq BIGINT,
        last_seq BIGINT,
        refusals BIGINT NOT NULL,
        last_refusal TEXT,
        findings TEXT,
        totals TEXT,
        records {blob},
        PRIMARY KEY (audit_id, node_id)
    );
    CREATE INDEX audit_nodes_node ON audit_nodes (node_id, answered_at)",
    ),
];

fn migrate(sql: &mut dyn Sql, dialect: Dialect) -> Result<(), StoreError> {
    if dialect == Dialect::Postgres {
        // Replicas starting together take turns.
        sql.execute("SELECT pg_advisory_xact_lock(7470353)", &[])?;
    }
    sql.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
        &[],
    )?;
    let current = sql
        .query_opt("SELECT MAX(version) FROM schema_migrations", &[])?
        .and_then(|r| r.opt_int(0).ok().flatten())
        .unwrap_or(0);
    let newest = MIGRATIONS.last().map_or(0, |m| m.0);
    if current > newest {
        return Err(StoreError::Database(format!(
            "the database schema is version {current}, newer than this build knows ({newest}); upgrade leasehold"
        )));
    }
    for (version, script) in MIGRATIONS.iter().filter(|m| m.0 > current) {
        let (blob, id) = match dialect {
            Dialect::Sqlite => ("BLOB", "INTEGER PRIMARY KEY AUTOINCREMENT"),
            Dialect::Postgres => ("BYTEA", "BIGSERIAL PRIMARY KEY"),
        };
        let script = script.replace("{blob}", blob).replace("{id}", id);
        for statement in script.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            sql.execute(statement, &[])?;
        }
        sql.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)",
            &[
                Value::Int(*version),
                Value::Int(crate::node::clock::system_now().timestamp()),
            ],
        )?;
        tracing::info!("database schema migrated to version {version}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn db_urls() {
        assert_eq!(
            DbUrl::parse("sqlite:/tmp/x.db").unwrap(),
            DbUrl::Sqlite("/tmp/x.db".into())
        );
        assert_eq!(
            DbUrl::parse("sqlite:rel.db").unwrap(),
            DbUrl::Sqlite("rel.db".into())
        );
        assert!(matches!(
            DbUrl::parse("postgres://u:p@127.0.0.1/db").unwrap(),
            DbUrl::Postgres(_)
        ));
        assert!(DbUrl::parse("mysql://x").is_err());
        assert!(DbUrl::parse("sqlite:").is_err());
    }

    #[tokio::test]
    async fn a_panicking_transaction_is_rolled_back_and_the_writer_goes_on() {
        let dir = tempfile::TempDir::new().unwrap();
        let store = Store::open(&DbUrl::Sqlite(dir.path().join("s.db")))
            .await
            .unwrap();
        let count = || {
            store.transact(|sql| {
                sql.query_opt("SELECT COUNT(*) FROM models", &[])?
                    .expect("one row")
                    .int(0)
            })
        };
        let failed = store
            .transact(|sql| -> Result<(), StoreError> {
                sql.execute(
                    "INSERT INTO models (model_id, header, stored_key, added_at) VALUES ('m', x'00', x'00', 0)",
                    &[],
                )?;
                panic!("a hostile value");
            })
            .await;
        assert!(
            matches!(&failed, Err(StoreError::Database(m)) if m.contains("a hostile value")),
            "{failed:?}"
        );
        // Its write is gone, and the same writer thread answers the next transaction.
        assert_eq!(count().await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_nonce_is_taken_once_until_it_is_forgotten() {
        use crate::license_server::registry::{forget_nonces, remember_nonce};
        let dir = tempfile::TempDir::new().unwrap();
        let store = Store::open(&DbUrl::Sqlite(dir.path().join("s.db")))
            .await
            .unwrap();
        let at = |s| chrono::DateTime::from_timestamp(s, 0).unwrap();
        let remember = |node: &'static str, nonce: u8| {
            store.transact(move |sql| remember_nonce(sql, node, &[nonce; 16], at(100)))
        };
        assert!(remember("a", 1).await.unwrap());
        assert!(!remember("a", 1).await.unwrap(), "a replay");
        assert!(remember("b", 1).await.unwrap(), "another node's nonce");
        // Kept until its time has passed.
        let forget = |before| store.transact(move |sql| forget_nonces(sql, at(before)));
        assert_eq!(forget(100).await.unwrap(), 0);
        assert!(!remember("a", 1).await.unwrap());
        assert_eq!(forget(101).await.unwrap(), 2);
        assert!(remember("a", 1).await.unwrap());
    }
}
