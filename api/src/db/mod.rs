//! The database tier: one pool over MySQL or SQLite, the blocking helper every query goes
//! through, readiness, and the embedded migrations. SQL lives only under this module.

pub mod events;
pub mod messages;
pub mod schema;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use diesel::connection::SimpleConnection;
use diesel::mysql::MysqlConnection;
use diesel::r2d2::R2D2Connection;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::sqlite::SqliteConnection;
use diesel::{Connection, ConnectionError};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use crate::config::{DatabaseSettings, DatabaseTarget};

const MYSQL_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations/mysql");
const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations/sqlite");

/// Name of the MySQL advisory lock that serialises migrations across replicas.
const MIGRATION_LOCK: &str = "messages_api_migrations";
const MIGRATION_LOCK_WAIT_SECS: u32 = 120;

/// A checkout that takes this long had to wait for a connection to come free.
const CHECKOUT_WAIT: Duration = Duration::from_millis(1);

/// How long SQLite waits for a competing writer before giving up.
const SQLITE_BUSY_TIMEOUT_MS: u32 = 5000;

#[derive(diesel::MultiConnection)]
pub enum DbConnection {
    Mysql(MysqlConnection),
    Sqlite(SqliteConnection),
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The database cannot be reached or is not ready: the client may retry.
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl From<DieselError> for DbError {
    fn from(error: DieselError) -> Self {
        if is_connection_lost(&error) {
            Self::Unavailable("The database is unreachable; try again shortly.".into())
        } else {
            Self::Other(error.into())
        }
    }
}

/// Errors after which the connection is unusable (server gone, restarted, or locked).
fn is_connection_lost(error: &DieselError) -> bool {
    match error {
        DieselError::DatabaseError(
            DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand,
            _,
        )
        | DieselError::BrokenTransactionManager => true,
        DieselError::RollbackErrorOnCommit { rollback_error, commit_error } => {
            is_connection_lost(rollback_error) || is_connection_lost(commit_error)
        }
        DieselError::DatabaseError(DatabaseErrorKind::Unknown, info) => {
            let message = info.message();
            [
                "gone away",
                "Lost connection",
                "Can't connect",
                "server closed the connection",
                "database is locked",
                "Server shutdown in progress",
                "Connection was killed",
            ]
            .iter()
            .any(|needle| message.contains(needle))
        }
        _ => false,
    }
}

/// A pooled connection that remembers whether it failed in a way that makes it unusable.
pub struct PooledConnection {
    conn: DbConnection,
    broken: bool,
}

pub struct ConnectionManager {
    target: DatabaseTarget,
}

impl ConnectionManager {
    fn establish(&self) -> Result<DbConnection, ConnectionError> {
        match &self.target {
            DatabaseTarget::Mysql { url } => {
                MysqlConnection::establish(url).map(DbConnection::Mysql)
            }
            DatabaseTarget::Sqlite { path } => {
                let path = path.to_str().ok_or_else(|| {
                    ConnectionError::InvalidConnectionUrl("SQLite path is not UTF-8".into())
                })?;
                let mut conn = SqliteConnection::establish(path)?;
                // WAL lets readers run beside the writer; synchronous=FULL makes every
                // acknowledged commit durable even on power loss.
                conn.batch_execute(&format!(
                    "PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS};
                     PRAGMA journal_mode = WAL;
                     PRAGMA synchronous = FULL;
                     PRAGMA foreign_keys = ON;"
                ))
                .map_err(ConnectionError::CouldntSetupConfiguration)?;
                Ok(DbConnection::Sqlite(conn))
            }
        }
    }
}

impl r2d2::ManageConnection for ConnectionManager {
    type Connection = PooledConnection;
    type Error = ConnectionError;

    fn connect(&self) -> Result<PooledConnection, ConnectionError> {
        let conn = self.establish()?;
        Ok(PooledConnection { conn, broken: false })
    }

    fn is_valid(&self, conn: &mut PooledConnection) -> Result<(), ConnectionError> {
        conn.conn.ping().map(|_| ()).map_err(ConnectionError::CouldntSetupConfiguration)
    }

    fn has_broken(&self, conn: &mut PooledConnection) -> bool {
        conn.broken || conn.conn.is_broken()
    }
}

/// r2d2 retries failed connects in the background; the readiness task and the request
/// errors already report an outage, so these only go to the debug log.
#[derive(Debug)]
struct QuietErrorHandler;

impl r2d2::HandleError<ConnectionError> for QuietErrorHandler {
    fn handle_error(&self, error: ConnectionError) {
        tracing::debug!(%error, "database connection attempt failed");
    }
}

/// The backend in use, for logs and health reporting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Mysql,
    Sqlite,
}

#[derive(Clone)]
pub struct Db {
    pool: r2d2::Pool<ConnectionManager>,
    ready: Arc<AtomicBool>,
    backend: Backend,
}

impl Db {
    /// Creates the pool without connecting: the database may come up later.
    pub fn new(settings: &DatabaseSettings) -> anyhow::Result<Self> {
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
        let pool = r2d2::Pool::builder()
            .max_size(settings.pool_size())
            .min_idle(Some(0))
            .connection_timeout(settings.pool_timeout())
            // Connections are checked by their failures instead (see `has_broken`): a ping
            // on every checkout would double the round trips of every request.
            .test_on_check_out(false)
            .error_handler(Box::new(QuietErrorHandler))
            .build_unchecked(ConnectionManager { target });
        Ok(Self { pool, ready: Arc::new(AtomicBool::new(false)), backend })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Runs blocking diesel work on the blocking thread pool, with a pooled connection.
    /// Every query of the service goes through here.
    pub async fn run<T, F>(&self, work: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&mut DbConnection) -> Result<T, DbError> + Send + 'static,
    {
        if !self.is_ready() {
            return Err(DbError::Unavailable("The database is not ready yet.".into()));
        }
        self.run_unchecked(work).await
    }

    async fn run_unchecked<T, F>(&self, work: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&mut DbConnection) -> Result<T, DbError> + Send + 'static,
    {
        let pool = self.pool.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = checkout(&pool)?;
            let result = work(&mut conn.conn);
            if matches!(result, Err(DbError::Unavailable(_))) {
                conn.broken = true;
            }
            result
        })
        .await
        .map_err(|e| DbError::Other(anyhow!("database task failed: {e}")))?
    }

    /// True when the database answers a trivial query now.
    pub async fn ping(&self) -> bool {
        self.run_unchecked(|conn| conn.ping().map(|_| ()).map_err(DbError::from)).await.is_ok()
    }

    /// Runs pending migrations; replicas starting together take turns.
    pub async fn migrate(&self) -> Result<Vec<String>, DbError> {
        self.run_unchecked(|conn| run_migrations(conn).map_err(DbError::Other)).await
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

fn checkout(
    pool: &r2d2::Pool<ConnectionManager>,
) -> Result<r2d2::PooledConnection<ConnectionManager>, DbError> {
    let started = Instant::now();
    let conn = pool.get();
    let waited = started.elapsed();
    metrics::histogram!("db_pool_checkout_seconds").record(waited.as_secs_f64());
    if waited >= CHECKOUT_WAIT {
        metrics::counter!("db_pool_checkout_waits_total").increment(1);
    }
    conn.map_err(|error| {
        metrics::counter!("db_pool_checkout_timeouts_total").increment(1);
        DbError::Unavailable(format!("No database connection is available ({error})."))
    })
}

fn run_migrations(conn: &mut DbConnection) -> anyhow::Result<Vec<String>> {
    let names = |versions: Vec<diesel::migration::MigrationVersion<'_>>| {
        versions.into_iter().map(|v| v.to_string()).collect::<Vec<_>>()
    };
    match conn {
        DbConnection::Mysql(conn) => {
            use diesel::RunQueryDsl;
            use diesel::sql_types::{BigInt, Nullable};
            let locked: Option<i64> = diesel::select(diesel::dsl::sql::<Nullable<BigInt>>(
                &format!("GET_LOCK('{MIGRATION_LOCK}', {MIGRATION_LOCK_WAIT_SECS})"),
            ))
            .get_result(conn)?;
            if locked != Some(1) {
                anyhow::bail!("another replica held the migration lock for too long");
            }
            let result = conn.run_pending_migrations(MYSQL_MIGRATIONS).map(names);
            conn.batch_execute(&format!("DO RELEASE_LOCK('{MIGRATION_LOCK}')"))?;
            result.map_err(|e| anyhow!("migration failed: {e}"))
        }
        // The immediate transaction holds SQLite's write lock: a second process waits.
        DbConnection::Sqlite(conn) => conn.immediate_transaction(|conn| {
            conn.run_pending_migrations(SQLITE_MIGRATIONS)
                .map(names)
                .map_err(|e| anyhow!("migration failed: {e}"))
        }),
    }
}
