//! The database tier: one pool over MySQL or SQLite, the blocking helper every query goes
//! through, readiness, and the embedded migrations. SQL lives only under this module.
//!
//! `Db` is the facade; behind it `pool` (connections and their sessions), `mysql_timeouts`
//! (limits on a MySQL connection's waits for its server), `work` (one piece of work as its
//! request waits for it: the commit gate, retries), `error` (failures and their
//! classification) and `migrate` (migrations and their lock).

pub mod events;
pub mod messages;
pub mod models;
pub mod schema;

mod error;
mod migrate;
mod mysql_timeouts;
mod pool;
mod work;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use diesel::r2d2::R2D2Connection;

pub use self::error::{DbError, ERRORS_METRIC};
pub use self::pool::DbConnection;
pub use self::work::{CommitGate, CommitWatch, RETRIES_METRIC};
use crate::config::{DatabaseSettings, DatabaseTarget};

/// The backend in use, for logs and health reporting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Mysql,
    Sqlite,
}

#[derive(Clone)]
pub struct Db {
    pool: r2d2::Pool<pool::ConnectionManager>,
    /// MySQL only: migrations run on connections of their own.
    mysql_url: Option<String>,
    /// The longest a request waits for a connection: queued for a blocking thread and
    /// checking one out, together.
    wait_limit: Duration,
    /// The longest a connection waits for any one answer of the server.
    answer_limit: Duration,
    ready: Arc<AtomicBool>,
    backend: Backend,
}

impl Db {
    /// Creates the pool without connecting: the database may come up later. Statements
    /// waiting for a lock longer than `lock_timeout` are given up by the server.
    pub fn new(settings: &DatabaseSettings, lock_timeout: Duration) -> anyhow::Result<Self> {
        let target = settings.target()?;
        let backend = match &target {
            DatabaseTarget::Mysql { .. } => Backend::Mysql,
            DatabaseTarget::Sqlite { path } => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)
                        .with_context(|| format!("cannot create {}", dir.display()))?;
                }
                Backend::Sqlite
            }
        };
        let mysql_url = match &target {
            DatabaseTarget::Mysql { url } => Some(url.clone()),
            DatabaseTarget::Sqlite { .. } => None,
        };
        let pool = pool::build(settings, target, lock_timeout);
        Ok(Self {
            pool,
            mysql_url,
            wait_limit: settings.pool_timeout(),
            answer_limit: pool::answer_limit(lock_timeout),
            ready: Arc::new(AtomicBool::new(false)),
            backend,
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The longest a connection waits for any one answer of the server (a statement's lock
    /// waits included); past it the connection is given up, and the server rolls back what
    /// did not commit. A write takes its change number in its last statement before the
    /// commit, so the number stays missing from the change log about this long at most.
    pub fn answer_limit(&self) -> Duration {
        self.answer_limit
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Runs blocking diesel work on the blocking thread pool, with a pooled connection.
    /// Every read of the service goes through here.
    pub async fn run<T, F>(&self, mut work: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnMut(&mut DbConnection) -> Result<T, DbError> + Send + 'static,
    {
        self.write(move |conn, _| work(conn)).await
    }

    /// Like `run`, for work that changes data: its transactions end with `CommitGate::enter`,
    /// which rolls them back if the request stopped waiting first.
    pub async fn write<T, F>(&self, work: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnMut(&mut DbConnection, &CommitGate) -> Result<T, DbError> + Send + 'static,
    {
        if !self.is_ready() {
            return Err(DbError::Unavailable("The database is not ready yet.".into()));
        }
        self.run_unchecked(work).await
    }

    async fn run_unchecked<T, F>(&self, work: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnMut(&mut DbConnection, &CommitGate) -> Result<T, DbError> + Send + 'static,
    {
        work::run(&self.pool, self.wait_limit, work).await
    }

    /// True when the database answers a trivial query now.
    pub async fn ping(&self) -> bool {
        self.run_unchecked(|conn, _| conn.ping().map(|_| ()).map_err(DbError::from)).await.is_ok()
    }

    /// Runs pending migrations; replicas starting together take turns. On MySQL they run on
    /// a connection of their own, outside the pool: a schema change may wait and run far
    /// longer than the pool's connections wait for an answer.
    pub async fn migrate(&self) -> Result<Vec<String>, DbError> {
        let Some(url) = self.mysql_url.clone() else {
            return self
                .run_unchecked(|conn, _| migrate::sqlite(conn).map_err(DbError::Other))
                .await;
        };
        tokio::task::spawn_blocking(move || migrate::mysql(&url))
            .await
            .map_err(|e| DbError::Other(anyhow::anyhow!("migration task failed: {e}")))?
            .map_err(DbError::Other)
    }

    /// Waits for the database (with backoff), migrating it if asked, then marks it ready.
    pub async fn become_ready(&self, run_migrations: bool) {
        let mut delay = Duration::from_millis(200);
        loop {
            let result = if run_migrations {
                self.migrate().await.map(|applied| {
                    if !applied.is_empty() {
                        tracing::info!(?applied, "applied database migrations");
                    }
                })
            } else if self.ping().await {
                Ok(())
            } else {
                Err(DbError::Unavailable("no answer".into()))
            };
            match result {
                Ok(()) => {
                    self.ready.store(true, Ordering::Release);
                    tracing::info!(backend = ?self.backend, "database ready");
                    return;
                }
                Err(error) => {
                    tracing::warn!(%error, retry_in = ?delay, "database not ready");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Connections in the pool and how many are idle, for metrics.
    pub fn pool_state(&self) -> (u32, u32, u32) {
        let state = self.pool.state();
        (self.pool.max_size(), state.connections, state.idle_connections)
    }
}
