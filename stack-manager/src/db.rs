//! The metadata store: one sqlx `Any` pool over SQLite or PostgreSQL, with
//! the same migrations and queries for both.
//!
//! SQLite allows one writer at a time and a deferred transaction that reads
//! before it writes fails instead of waiting when another writer got there
//! first. So on SQLite every write transaction first takes an in-process
//! gate: writers queue in order instead of failing, and readers are never
//! blocked (WAL). On PostgreSQL there is no gate; transactions that must
//! serialize lock a row first (see `lock_row`).

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{Any, AnyPool, Transaction};
use tokio::sync::{Mutex, OwnedMutexGuard};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Clone)]
pub struct Db {
    pub pool: AnyPool,
    pub backend: Backend,
    write_gate: Option<Arc<Mutex<()>>>,
    /// SQLite: the lock that keeps a second stack manager off the file,
    /// held while any clone lives.
    _sole_replica: Option<Arc<std::fs::File>>,
}

/// A write transaction, holding the SQLite write gate while it lives.
///
/// Dropping one without committing rolls it back *before* the gate opens:
/// sqlx would otherwise only queue the rollback, and the next writer would
/// find the database still locked by a transaction nobody owns any more.
pub struct WriteTx {
    tx: Option<Transaction<'static, Any>>,
    gate: Option<OwnedMutexGuard<()>>,
    pub backend: Backend,
}

impl WriteTx {
    pub async fn commit(mut self) -> Result<(), sqlx::Error> {
        let result = match self.tx.take() {
            Some(tx) => tx.commit().await,
            None => Ok(()),
        };
        self.gate.take();
        result
    }
}

impl Drop for WriteTx {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            let gate = self.gate.take();
            tokio::spawn(async move {
                if let Err(e) = tx.rollback().await {
                    tracing::warn!(error = %e, "rollback failed");
                }
                drop(gate);
            });
        }
    }
}

impl std::ops::Deref for WriteTx {
    type Target = Transaction<'static, Any>;
    fn deref(&self) -> &Self::Target {
        self.tx
            .as_ref()
            .expect("transaction is live until commit or drop")
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.tx
            .as_mut()
            .expect("transaction is live until commit or drop")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("unsupported database URL `{0}`: use sqlite://path or postgres://...")]
    UnsupportedUrl(String),
    #[error("cannot create state directory {path}: {source}")]
    StateDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("database: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(
        "another stack manager serves the SQLite database {path}: SQLite serves one replica; \
         stop the other one, or run several replicas on PostgreSQL (database_url = \"postgres://...\")"
    )]
    SqliteInUse { path: String },
    #[error("cannot lock {path}: {source}")]
    Lock {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    StaleLease(#[from] crate::lease::StaleLease),
}

/// SQLite writes one transaction at a time and every connection is a
/// thread of its own; past a few readers, more connections only add thread
/// switching (measured: 4 connections 487 creates/s, 16 connections 443).
const SQLITE_MAX_CONNECTIONS: u32 = 4;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

impl Backend {
    /// The backend a database URL names.
    fn of_url(url: &str) -> Result<Self, DbError> {
        if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Ok(Backend::Postgres)
        } else {
            Err(DbError::UnsupportedUrl(url.to_string()))
        }
    }
}

impl Db {
    /// Opens (creating if needed) the database and runs migrations.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, DbError> {
        sqlx::any::install_default_drivers();
        let backend = Backend::of_url(url)?;
        let mut sole_replica = None;
        let pool = match backend {
            Backend::Sqlite => {
                // Any does not expose SQLite's options, so they go in the URL.
                let path = url
                    .trim_start_matches("sqlite://")
                    .trim_start_matches("sqlite:");
                let path = path.split('?').next().unwrap_or(path);
                if let Some(dir) = std::path::Path::new(path).parent() {
                    if !dir.as_os_str().is_empty() {
                        std::fs::create_dir_all(dir).map_err(|source| DbError::StateDir {
                            path: dir.display().to_string(),
                            source,
                        })?;
                    }
                }
                sole_replica = Some(Arc::new(lock_sole_replica(path)?));
                let full = if url.contains('?') {
                    url.to_string()
                } else {
                    format!("{url}?mode=rwc")
                };
                let opts = AnyConnectOptions::from_str(&full)?;
                // WAL is a property of the file: set it once, before the pool
                // exists, so that no pooled connection ever needs the lock
                // switching modes takes.
                {
                    use sqlx::{ConnectOptions, Executor};
                    let mut conn = opts.connect().await?;
                    conn.execute("PRAGMA busy_timeout = 10000; PRAGMA journal_mode = WAL;")
                        .await?;
                }
                AnyPoolOptions::new()
                    .max_connections(max_connections.clamp(2, SQLITE_MAX_CONNECTIONS))
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            use sqlx::Executor;
                            conn.execute(
                                "PRAGMA busy_timeout = 10000; PRAGMA synchronous = NORMAL; \
                                 PRAGMA foreign_keys = ON;",
                            )
                            .await?;
                            Ok(())
                        })
                    })
                    .connect_with(opts)
                    .await?
            }
            Backend::Postgres => {
                AnyPoolOptions::new()
                    .max_connections(pg_pool_size(url, max_connections))
                    .acquire_timeout(Duration::from_secs(10))
                    .connect(url)
                    .await?
            }
        };
        MIGRATOR.run(&pool).await?;
        Ok(Self {
            pool,
            backend,
            write_gate: (backend == Backend::Sqlite).then(|| Arc::new(Mutex::new(()))),
            _sole_replica: sole_replica,
        })
    }

    /// Opens an existing database to read only: no migrations, no lock
    /// (a SQLite file served by a running stack manager can be read
    /// beside it), one connection. For `stack-manager check`.
    pub async fn connect_read_only(url: &str) -> Result<Self, DbError> {
        sqlx::any::install_default_drivers();
        let backend = Backend::of_url(url)?;
        let url = match backend {
            Backend::Sqlite => format!("{}?mode=ro", url.split('?').next().unwrap_or(url)),
            Backend::Postgres => url.to_string(),
        };
        let pool = AnyPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect(&url)
            .await?;
        Ok(Self {
            pool,
            backend,
            write_gate: None,
            _sole_replica: None,
        })
    }

    /// Runs one write statement (no transaction needed) under the SQLite
    /// gate: `db.gated(query.execute(&db.pool)).await`. Three round trips
    /// fewer than BEGIN/statement/COMMIT on the hot paths that use it.
    /// Not for the writes of a leased task: a statement outside a
    /// transaction cannot check its fence (see `crate::lease`).
    pub async fn gated<F: std::future::Future>(&self, write: F) -> F::Output {
        debug_assert!(
            crate::lease::current_fence().is_none(),
            "a leased task's writes go through begin_write, which checks its fence"
        );
        let _gate = match &self.write_gate {
            Some(g) => Some(g.lock().await),
            None => None,
        };
        write.await
    }

    /// One write statement as [`gated`](Self::gated) runs it, or, inside a
    /// leased run (a host reconciler's, under its replica's membership), in
    /// a transaction that checks the run's fence first.
    pub async fn write_one<'q>(
        &self,
        write: sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>>,
    ) -> Result<sqlx::any::AnyQueryResult, DbError> {
        if crate::lease::current_fence().is_some() {
            let mut tx = self.begin_write().await?;
            let done = write.execute(&mut **tx).await?;
            tx.commit().await?;
            return Ok(done);
        }
        Ok(self.gated(write.execute(&self.pool)).await?)
    }

    /// Begins a write transaction (see the module comment on the SQLite
    /// gate). Inside a leased task's run, the transaction first checks
    /// that the lease is still this replica's (`crate::lease`): a replica
    /// that lost it while paused gets `DbError::StaleLease` and writes
    /// nothing.
    pub async fn begin_write(&self) -> Result<WriteTx, DbError> {
        let gate = match &self.write_gate {
            Some(g) => Some(g.clone().lock_owned().await),
            None => None,
        };
        let tx = self.pool.begin().await?;
        let mut tx = WriteTx {
            tx: Some(tx),
            gate,
            backend: self.backend,
        };
        if let Some(fence) = crate::lease::current_fence() {
            crate::lease::check(&mut tx, &fence).await?;
        }
        Ok(tx)
    }
}

/// Locks `<db>.lock` next to a SQLite database for as long as the process
/// lives (the kernel drops the lock of a killed process, so a restart after
/// `kill -9` is never refused).
fn lock_sole_replica(db_path: &str) -> Result<std::fs::File, DbError> {
    let path = format!("{db_path}.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| DbError::Lock {
            path: path.clone(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(DbError::SqliteInUse {
            path: db_path.to_string(),
        }),
        Err(std::fs::TryLockError::Error(source)) => Err(DbError::Lock { path, source }),
    }
}

/// The pool size for a PostgreSQL server at `url`.
///
/// A server on this same machine runs its backends on the cores this
/// process needs too: past a few connections per core, more of them only
/// interleave on the same cores, and each transaction stretches while it
/// holds its row locks. Measured on 2 cores with the placement benchmark
/// (PostgreSQL 15, current statistics): 4 connections 552 creates/s with
/// p99 placement 0.90 ms, 6 connections 679-703/s with p99 1.45-1.48 ms,
/// 8 connections 650/s with p99 2.3 ms. A remote server keeps the
/// configured size: there, connections mostly wait on the network, and
/// more of them help.
fn pg_pool_size(url: &str, configured: u32) -> u32 {
    let host = url
        .split_once("://")
        .map(|(_, rest)| rest)
        .unwrap_or(url)
        .split(['/', '?'])
        .next()
        .unwrap_or("")
        .rsplit('@')
        .next()
        .unwrap_or("");
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.split_once(']'))
        .map(|(h, _)| h)
        .unwrap_or_else(|| host.split(':').next().unwrap_or(""));
    // No host at all means a Unix socket: the same machine too.
    let local = matches!(host, "" | "localhost" | "::1") || host.starts_with("127.");
    let configured = configured.max(2);
    if !local {
        return configured;
    }
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get()) as u32;
    configured.min((3 * cores).max(4))
}

/// Takes a row lock for the rest of the transaction on PostgreSQL
/// (`SELECT ... FOR UPDATE`: the same exclusion as an `UPDATE` of the row,
/// without writing a new row version each time, which on rows every create
/// locks made PostgreSQL wade through dead versions); on SQLite the write
/// gate already serializes, so this only checks the row exists.
/// Returns whether the row exists.
pub async fn lock_row(
    tx: &mut WriteTx,
    table: &'static str,
    id: &str,
) -> Result<bool, sqlx::Error> {
    row_lock(tx, table, id, "FOR UPDATE").await
}

/// Takes a shared row lock for the rest of the transaction on PostgreSQL
/// (`FOR SHARE`): many creates may hold it at once, and it blocks (and is
/// blocked by) a writer that locks the row with an `UPDATE` or
/// [`lock_row`] before checking who still uses it. On SQLite the write gate
/// already serializes. Returns whether the row exists.
pub async fn share_lock_row(
    tx: &mut WriteTx,
    table: &'static str,
    id: &str,
) -> Result<bool, sqlx::Error> {
    row_lock(tx, table, id, "FOR SHARE").await
}

async fn row_lock(
    tx: &mut WriteTx,
    table: &'static str,
    id: &str,
    mode: &'static str,
) -> Result<bool, sqlx::Error> {
    let sql = match tx.backend {
        Backend::Postgres => format!("SELECT 1 AS x FROM {table} WHERE id = $1 {mode}"),
        Backend::Sqlite => format!("SELECT 1 AS x FROM {table} WHERE id = $1"),
    };
    let row = sqlx::query(&sql)
        .bind(id)
        .fetch_optional(&mut ***tx)
        .await?;
    Ok(row.is_some())
}

/// Milliseconds since the Unix epoch, on the database's clock: how every
/// time is stored. Replicas on machines whose clocks disagree write
/// timestamps that other replicas judge (a heartbeat's age decides whether
/// a host is fenced), so each corrects its own clock by the offset
/// [`sync_clock`] last measured. A process serves one database, so the
/// offset is the process's (tests that run several clouds in one process
/// run them on one machine, where it is ~0 for all).
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
        + CLOCK_OFFSET_MS.load(std::sync::atomic::Ordering::Relaxed)
}

static CLOCK_OFFSET_MS: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

/// A measurement is kept only from a round trip this short: its error is
/// at most half of it.
const CLOCK_SYNC_MAX_RTT: Duration = Duration::from_millis(200);

/// The database's clock, milliseconds: PostgreSQL's own, or this
/// process's for SQLite (the only replica).
pub async fn database_clock(db: &Db) -> Result<i64, sqlx::Error> {
    match db.backend {
        Backend::Sqlite => Ok(now_ms()),
        Backend::Postgres => {
            sqlx::query_scalar(
                "SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
            )
            .fetch_one(&db.pool)
            .await
        }
    }
}

/// Measures how far this machine's clock is from PostgreSQL's and corrects
/// [`now_ms`] by it (SQLite: the database's clock is this one). Returns the
/// offset in milliseconds.
pub async fn sync_clock(db: &Db) -> Result<i64, sqlx::Error> {
    if db.backend == Backend::Sqlite {
        return Ok(0);
    }
    let local = || chrono::Utc::now().timestamp_millis();
    let sent = std::time::Instant::now();
    let before = local();
    let theirs = database_clock(db).await?;
    let after = local();
    let offset = theirs - (before + after) / 2;
    let previous = CLOCK_OFFSET_MS.load(std::sync::atomic::Ordering::Relaxed);
    if sent.elapsed() <= CLOCK_SYNC_MAX_RTT {
        CLOCK_OFFSET_MS.store(offset, std::sync::atomic::Ordering::Relaxed);
        if (offset - previous).abs() > 1000 {
            tracing::warn!(
                offset_ms = offset,
                "this machine's clock differs from the database's by over a second; \
                 the stack manager keeps time by the database's"
            );
        }
        return Ok(offset);
    }
    Ok(previous)
}

pub fn from_ms(ms: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// Database columns are signed 64-bit; API integers are checked into range
/// before they get there.
pub fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => {
            matches!(d.kind(), sqlx::error::ErrorKind::UniqueViolation)
                || d.code().as_deref() == Some("23505")
                || d.message().contains("UNIQUE constraint failed")
        }
        _ => false,
    }
}

pub fn is_foreign_key_violation(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => {
            matches!(d.kind(), sqlx::error::ErrorKind::ForeignKeyViolation)
                || d.code().as_deref() == Some("23503")
                || d.message().contains("FOREIGN KEY constraint failed")
        }
        _ => false,
    }
}

/// Terse, typed column access for the `Any` rows every query returns.
pub trait RowExt {
    fn text(&self, col: &str) -> Result<String, sqlx::Error>;
    fn opt_text(&self, col: &str) -> Result<Option<String>, sqlx::Error>;
    fn int(&self, col: &str) -> Result<i64, sqlx::Error>;
    fn opt_int(&self, col: &str) -> Result<Option<i64>, sqlx::Error>;
    fn uint(&self, col: &str) -> Result<u64, sqlx::Error> {
        Ok(self.int(col)?.max(0) as u64)
    }
    fn time(&self, col: &str) -> Result<chrono::DateTime<chrono::Utc>, sqlx::Error> {
        Ok(from_ms(self.int(col)?))
    }
    fn opt_time(&self, col: &str) -> Result<Option<chrono::DateTime<chrono::Utc>>, sqlx::Error> {
        Ok(self.opt_int(col)?.map(from_ms))
    }
    /// A typed id column; a malformed value is a decode error, not a panic.
    fn id<T: std::str::FromStr>(&self, col: &str) -> Result<T, sqlx::Error> {
        let s = self.text(col)?;
        s.parse()
            .map_err(|_| sqlx::Error::Decode(format!("column {col}: bad id `{s}`").into()))
    }
    fn opt_id<T: std::str::FromStr>(&self, col: &str) -> Result<Option<T>, sqlx::Error> {
        match self.opt_text(col)? {
            None => Ok(None),
            Some(s) => s
                .parse()
                .map(Some)
                .map_err(|_| sqlx::Error::Decode(format!("column {col}: bad id `{s}`").into())),
        }
    }
    /// An enum stored as text, parsed with its `parse` function.
    fn parsed<T>(&self, col: &str, parse: fn(&str) -> Option<T>) -> Result<T, sqlx::Error> {
        let s = self.text(col)?;
        parse(&s)
            .ok_or_else(|| sqlx::Error::Decode(format!("column {col}: unknown value `{s}`").into()))
    }
}

impl RowExt for sqlx::any::AnyRow {
    fn text(&self, col: &str) -> Result<String, sqlx::Error> {
        sqlx::Row::try_get(self, col)
    }
    fn opt_text(&self, col: &str) -> Result<Option<String>, sqlx::Error> {
        sqlx::Row::try_get(self, col)
    }
    fn int(&self, col: &str) -> Result<i64, sqlx::Error> {
        sqlx::Row::try_get(self, col)
    }
    fn opt_int(&self, col: &str) -> Result<Option<i64>, sqlx::Error> {
        sqlx::Row::try_get(self, col)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn pool_size_is_capped_only_for_a_local_server() {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get()) as u32;
        let local = 16.min((3 * cores).max(4));
        for url in [
            "postgres://strato:strato@127.0.0.1:5432/postgres",
            "postgres://strato:s@localhost/strato",
            "postgresql://u:p@[::1]:5432/db",
            "postgres:///strato?host=/var/run/postgresql",
        ] {
            assert_eq!(super::pg_pool_size(url, 16), local, "{url}");
        }
        for url in [
            "postgres://strato:strato@10.0.0.5:5432/postgres",
            "postgres://u:p@db.example.com/strato",
        ] {
            assert_eq!(super::pg_pool_size(url, 16), 16, "{url}");
        }
        assert_eq!(super::pg_pool_size("postgres://u:p@127.0.0.1/x", 1), 2);
    }
}
