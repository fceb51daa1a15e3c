//! The database tier: one pool over MySQL or SQLite, the blocking helper every query goes
//! through, readiness, and the embedded migrations. SQL lives only under this module.

pub mod events;
pub mod messages;
pub mod models;
pub mod schema;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
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

/// How long a replica waits for another one's migrations before it gives up (and retries).
const MIGRATION_LOCK_WAIT: Duration = Duration::from_secs(120);
/// How often the replica that migrates says it is still at it.
const MIGRATION_HEARTBEAT: Duration = Duration::from_secs(2);
/// A migration lock whose holder has not said so for this long belongs to a replica that
/// died while migrating: another one takes it over.
const MIGRATION_LOCK_STALE_SECS: u32 = 15;
/// Galera's causality check for reads (bit 1 of `wsrep_sync_wait`: SELECT, SHOW and BEGIN):
/// a node first applies every change the cluster committed before the read, so a read
/// through any node sees the writes that were acknowledged before it.
const WSREP_SYNC_WAIT_READS: u8 = 1;

/// Connections are replaced after this long (when they come back to the pool, or idle): a
/// load balancer's change of server (a drained Galera node, a failover back) reaches every
/// connection within it, so a node can be stopped without cutting one that is in use.
const CONNECTION_MAX_AGE: Duration = Duration::from_secs(30);

/// A checkout that takes this long had to wait for a connection to come free.
const CHECKOUT_WAIT: Duration = Duration::from_millis(1);

/// The longest SQLite waits for a competing writer, when requests may wait longer.
const SQLITE_BUSY_TIMEOUT_MS: u128 = 5000;

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
    /// Another transaction held what this one needed for too long; it was rolled back and
    /// the connection is fine. The client may retry.
    #[error("{0}")]
    Busy(String),
    /// The transaction lost a deadlock, or a Galera node refused its commit because another
    /// node committed a conflicting change first (error 1213). It was rolled back; running it
    /// again is safe, and is done a few times before the client is asked to retry.
    #[error("{0}")]
    Conflict(String),
    /// The request stopped waiting before the work committed; it was rolled back.
    #[error("the request stopped waiting; the work was rolled back")]
    Abandoned,
    /// The connection failed after the commit was sent: the change may or may not be saved.
    #[error(
        "The database connection failed while the change was being committed: it may or may \
         not have been saved. Repeat a create only with the same Idempotency-Key; read the \
         message back before repeating an edit or a delete."
    )]
    OutcomeUnknown,
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// Failed database calls, by `DbError::kind`.
pub const ERRORS_METRIC: &str = "db_errors_total";

impl DbError {
    /// The values of the `kind` label of `ERRORS_METRIC`.
    pub const KINDS: [&'static str; 5] =
        ["unavailable", "timeout", "conflict", "not_found", "other"];

    /// The error's `kind` label: `unavailable` (unreachable, not ready, no pooled connection
    /// in time, or lost mid-commit), `timeout` (a lock wait ran out, a deadlock, or the
    /// request's time limit passed first), `conflict` (a constraint refused the change),
    /// `not_found` (a row the work required is missing), or `other`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Unavailable(_) | Self::OutcomeUnknown => "unavailable",
            Self::Busy(_) | Self::Conflict(_) | Self::Abandoned => "timeout",
            Self::Other(error) => match error.downcast_ref::<DieselError>() {
                Some(DieselError::NotFound) => "not_found",
                Some(DieselError::DatabaseError(
                    DatabaseErrorKind::UniqueViolation
                    | DatabaseErrorKind::ForeignKeyViolation
                    | DatabaseErrorKind::CheckViolation
                    | DatabaseErrorKind::NotNullViolation,
                    _,
                )) => "conflict",
                _ => "other",
            },
        }
    }
}

impl From<DieselError> for DbError {
    fn from(error: DieselError) -> Self {
        if is_connection_lost(&error) {
            Self::Unavailable("The database is unreachable; try again shortly.".into())
        } else if is_conflict(&error) {
            Self::Conflict(
                "The change collided with a concurrent change and was rolled back; try again \
                 shortly."
                    .into(),
            )
        } else if is_contention(&error) {
            Self::Busy("The database is busy; try again shortly.".into())
        } else if matches!(error, DieselError::RollbackTransaction) {
            // Only `CommitGate::enter` asks for a rollback.
            Self::Abandoned
        } else {
            Self::Other(error.into())
        }
    }
}

/// Errors after which the connection is unusable (server gone, restarted, or killed it).
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
        DieselError::DatabaseError(DatabaseErrorKind::Unknown, info) => [
            "gone away",
            "Lost connection",
            "Can't connect",
            "server closed the connection",
            "Server shutdown in progress",
            "Connection was killed",
            // A Galera node that is not synced with its cluster refuses queries (error 1047):
            // a new connection, through the load balancer, reaches one that is.
            "WSREP has not yet prepared node",
        ]
        .iter()
        .any(|needle| info.message().contains(needle)),
        _ => false,
    }
}

/// A lost deadlock or a Galera certification failure (both error 1213, "Deadlock found
/// when trying to get lock"): the transaction was rolled back at once, and running it again
/// usually succeeds.
fn is_conflict(error: &DieselError) -> bool {
    match error {
        DieselError::DatabaseError(DatabaseErrorKind::Unknown, info) => {
            info.message().contains("Deadlock found")
        }
        DieselError::RollbackErrorOnCommit { commit_error, .. } => is_conflict(commit_error),
        _ => false,
    }
}

/// Errors of a transaction that waited too long for a lock: rolled back, worth retrying
/// later, and the connection stays good. SQLite's "database is locked" is one.
fn is_contention(error: &DieselError) -> bool {
    match error {
        DieselError::DatabaseError(DatabaseErrorKind::Unknown, info) => {
            ["database is locked", "database table is locked", "Lock wait timeout exceeded"]
                .iter()
                .any(|needle| info.message().contains(needle))
        }
        DieselError::RollbackErrorOnCommit { commit_error, .. } => is_contention(commit_error),
        _ => false,
    }
}

/// Where one piece of database work stands. The request that waits for it and the blocking
/// thread that does it move it on with compare-and-swap, so exactly one of them decides
/// whether a write commits after its request stopped waiting.
#[derive(Debug, Default)]
struct Ticket(AtomicU8);

const QUEUED: u8 = 0;
const RUNNING: u8 = 1;
const COMMITTING: u8 = 2;
const ABANDONED: u8 = 3;
/// The request gave up while the commit was under way: the work is never run again.
const ABANDONED_COMMITTING: u8 = 4;

impl Ticket {
    /// The blocking thread takes the work up; false once the request gave up on it.
    fn start(&self) -> bool {
        self.0.compare_exchange(QUEUED, RUNNING, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    fn is_abandoned(&self) -> bool {
        self.0.load(Ordering::Acquire) == ABANDONED
    }

    /// The request gives up on work that has not started; false if it has.
    fn abandon_queued(&self) -> bool {
        self.0.compare_exchange(QUEUED, ABANDONED, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    /// A connection lost once the commit was under way leaves its outcome unknown; other
    /// results stand.
    fn settle<T>(&self, result: Result<T, DbError>) -> Result<T, DbError> {
        match result {
            Err(DbError::Unavailable(_)) if self.is_committing() => Err(DbError::OutcomeUnknown),
            other => other,
        }
    }

    /// The request gives up. True when a commit may be under way or done, so that the
    /// outcome of the work is unknown; otherwise the work will not commit.
    fn abandon(&self) -> bool {
        let before =
            self.0.fetch_update(Ordering::AcqRel, Ordering::Acquire, |state| match state {
                COMMITTING => Some(ABANDONED_COMMITTING),
                ABANDONED_COMMITTING => None,
                _ => Some(ABANDONED),
            });
        matches!(before, Ok(COMMITTING) | Err(ABANDONED_COMMITTING))
    }

    fn is_committing(&self) -> bool {
        matches!(self.0.load(Ordering::Acquire), COMMITTING | ABANDONED_COMMITTING)
    }

    /// Work that failed in a way known to have rolled it back runs again, unless its request
    /// gave up on it: true when it may.
    fn rerun(&self) -> bool {
        match self.0.compare_exchange(COMMITTING, RUNNING, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) | Err(RUNNING) => true,
            Err(_) => false,
        }
    }
}

/// When failed work runs again: a lost deadlock or a certification conflict (rolled back at
/// once), and a connection lost before the commit was sent (the server rolls back what it
/// had), a few times, while the request's wait for a connection lasts.
#[derive(Debug, Default)]
struct Retries {
    done: u32,
    /// The last failure lost its connection: the next checkout tests the one it gets.
    connection_lost: bool,
}

/// How many times failed work runs again.
const MAX_RETRIES: u32 = 3;
/// Retries count them by the error's kind.
pub const RETRIES_METRIC: &str = "db_retries_total";

impl Retries {
    /// Whether to run the work again after `error`, which it returned before its commit was
    /// known to be under way (`settle` has not made it `OutcomeUnknown`).
    fn another(&mut self, error: &DbError, committing: bool, deadline: Instant) -> bool {
        let retryable = match error {
            DbError::Conflict(_) => true,
            DbError::Unavailable(_) => !committing,
            _ => false,
        };
        if !retryable || self.done >= MAX_RETRIES || Instant::now() >= deadline {
            return false;
        }
        self.done += 1;
        self.connection_lost = matches!(error, DbError::Unavailable(_));
        metrics::counter!(RETRIES_METRIC, "kind" => error.kind()).increment(1);
        // 10, 20, 40 ms: a conflicting transaction on another node commits in that time.
        std::thread::sleep(Duration::from_millis(10 << (self.done - 1)));
        true
    }
}

/// Handed to write queries: the last step of their transaction, before the commit.
pub struct CommitGate(Arc<Ticket>);

impl CommitGate {
    /// Lets the transaction commit, unless its request gave up on it: then the transaction
    /// rolls back, so that a request that was answered "try again" has changed nothing.
    pub fn enter(&self) -> diesel::QueryResult<()> {
        let ticket = &self.0;
        match ticket.0.compare_exchange(RUNNING, COMMITTING, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => Ok(()),
            Err(_) => Err(DieselError::RollbackTransaction),
        }
    }
}

/// Whether a write of the current request was committing when the request stopped waiting
/// for it (its time limit passed), so that the answer can say the outcome is unknown.
#[derive(Debug, Clone, Default)]
pub struct CommitWatch(Arc<AtomicBool>);

tokio::task_local! {
    static COMMIT_WATCH: CommitWatch;
}

impl CommitWatch {
    /// Runs a request's work with this watch in scope.
    pub async fn scope<F: Future>(&self, work: F) -> F::Output {
        COMMIT_WATCH.scope(self.clone(), work).await
    }

    /// True when a write may have committed although nobody waited for its result.
    pub fn outcome_unknown(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Held by the request while it waits: if the request is dropped (its time limit passed, or
/// the client left), the work is given up, and a commit already under way is reported.
struct Waiting {
    ticket: Arc<Ticket>,
    watch: Option<CommitWatch>,
    done: bool,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if !self.done
            && self.ticket.abandon()
            && let Some(watch) = &self.watch
        {
            watch.0.store(true, Ordering::Release);
        }
    }
}

/// A pooled connection that remembers whether it failed in a way that makes it unusable.
pub struct PooledConnection {
    conn: DbConnection,
    broken: bool,
    born: Instant,
}

pub struct ConnectionManager {
    target: DatabaseTarget,
    /// How long a statement may wait for a lock before the server gives up on it.
    lock_timeout: Duration,
}

impl ConnectionManager {
    fn establish(&self) -> Result<DbConnection, ConnectionError> {
        match &self.target {
            DatabaseTarget::Mysql { url } => {
                let mut conn = establish_mysql(url)?;
                conn.batch_execute(&mysql_session_limits(self.lock_timeout))
                    .map_err(ConnectionError::CouldntSetupConfiguration)?;
                Ok(DbConnection::Mysql(conn))
            }
            DatabaseTarget::Sqlite { path } => {
                let path = path.to_str().ok_or_else(|| {
                    ConnectionError::InvalidConnectionUrl("SQLite path is not UTF-8".into())
                })?;
                let mut conn = SqliteConnection::establish(path)?;
                let busy_timeout_ms = self.lock_timeout.as_millis().min(SQLITE_BUSY_TIMEOUT_MS);
                // WAL lets readers run beside the writer; synchronous=FULL makes every
                // acknowledged commit durable even on power loss.
                conn.batch_execute(&format!(
                    "PRAGMA busy_timeout = {busy_timeout_ms};
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

/// Connects to MySQL or MariaDB; on a Galera node, reads wait for the cluster's earlier
/// commits (read-your-writes through any node). Other servers have no such variable.
fn establish_mysql(url: &str) -> Result<MysqlConnection, ConnectionError> {
    let mut conn = MysqlConnection::establish(url)?;
    if let Err(error) =
        conn.batch_execute(&format!("SET SESSION wsrep_sync_wait = {WSREP_SYNC_WAIT_READS}"))
        && !error.to_string().contains("Unknown system variable")
    {
        return Err(ConnectionError::CouldntSetupConfiguration(error));
    }
    Ok(conn)
}

/// The server gives up a statement that waits longer than a request may for a row lock
/// (InnoDB) or a table lock (metadata), and rolls it back: a request that timed out does
/// not leave work behind that holds a thread and a connection, or commits much later.
fn mysql_session_limits(lock_timeout: Duration) -> String {
    let secs = lock_timeout.as_secs().max(1);
    format!("SET SESSION innodb_lock_wait_timeout = {secs}, lock_wait_timeout = {secs}")
}

impl r2d2::ManageConnection for ConnectionManager {
    type Connection = PooledConnection;
    type Error = ConnectionError;

    fn connect(&self) -> Result<PooledConnection, ConnectionError> {
        let conn = self.establish()?;
        Ok(PooledConnection { conn, broken: false, born: Instant::now() })
    }

    fn is_valid(&self, conn: &mut PooledConnection) -> Result<(), ConnectionError> {
        conn.conn.ping().map(|_| ()).map_err(ConnectionError::CouldntSetupConfiguration)
    }

    /// Checked when a connection comes back to the pool: one past `CONNECTION_MAX_AGE` is
    /// closed too.
    fn has_broken(&self, conn: &mut PooledConnection) -> bool {
        conn.broken || conn.conn.is_broken() || conn.born.elapsed() >= CONNECTION_MAX_AGE
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
    /// MySQL only: the migration lock's heartbeat runs on a connection of its own.
    mysql_url: Option<String>,
    /// The longest a request waits for a connection: queued for a blocking thread and
    /// checking one out, together.
    wait_limit: Duration,
    lock_timeout: Duration,
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
        let pool = r2d2::Pool::builder()
            .max_size(settings.pool_size())
            .min_idle(Some(0))
            .connection_timeout(settings.pool_timeout())
            // Connections are checked by their failures instead (see `has_broken`): a ping
            // on every checkout would double the round trips of every request.
            .test_on_check_out(false)
            .max_lifetime(Some(CONNECTION_MAX_AGE))
            .idle_timeout(Some(CONNECTION_MAX_AGE))
            .error_handler(Box::new(QuietErrorHandler))
            .build_unchecked(ConnectionManager { target, lock_timeout });
        Ok(Self {
            pool,
            mysql_url,
            wait_limit: settings.pool_timeout(),
            lock_timeout,
            ready: Arc::new(AtomicBool::new(false)),
            backend,
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
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

    /// The blocking helper. One deadline covers the wait for a blocking thread and the
    /// checkout: the blocking threads are as many as the connections, so in an outage later
    /// work queues behind checkouts that are timing out, where the pool's timeout alone
    /// would not bound the wait.
    async fn run_unchecked<T, F>(&self, work: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnMut(&mut DbConnection, &CommitGate) -> Result<T, DbError> + Send + 'static,
    {
        self.run_blocking(work).await.inspect_err(|error| {
            metrics::counter!(ERRORS_METRIC, "kind" => error.kind()).increment(1);
        })
    }

    async fn run_blocking<T, F>(&self, mut work: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnMut(&mut DbConnection, &CommitGate) -> Result<T, DbError> + Send + 'static,
    {
        let deadline = Instant::now() + self.wait_limit;
        let ticket = Arc::new(Ticket::default());
        let pool = self.pool.clone();
        let gate = CommitGate(ticket.clone());
        let mut task = tokio::task::spawn_blocking(move || {
            if !gate.0.start() {
                return Err(DbError::Abandoned);
            }
            let mut retries = Retries::default();
            loop {
                let mut conn = if retries.connection_lost {
                    checkout_tested(&pool, deadline)?
                } else {
                    checkout(&pool, deadline)?
                };
                if gate.0.is_abandoned() {
                    return Err(DbError::Abandoned);
                }
                let result = work(&mut conn.conn, &gate);
                if matches!(result, Err(DbError::Unavailable(_))) {
                    conn.broken = true;
                }
                drop(conn);
                match result {
                    Err(error)
                        if retries.another(&error, gate.0.is_committing(), deadline)
                            && gate.0.rerun() => {}
                    result => return gate.0.settle(result),
                }
            }
        });
        let mut waiting =
            Waiting { ticket, watch: COMMIT_WATCH.try_with(Clone::clone).ok(), done: false };
        let joined = tokio::select! {
            biased;
            joined = &mut task => joined,
            () = tokio::time::sleep_until(deadline.into()) => {
                if waiting.ticket.abandon_queued() {
                    waiting.done = true;
                    metrics::counter!("db_pool_checkout_timeouts_total").increment(1);
                    return Err(no_connection("no thread came free in time"));
                }
                (&mut task).await
            }
        };
        waiting.done = true;
        joined.map_err(|e| DbError::Other(anyhow!("database task failed: {e}")))?
    }

    /// True when the database answers a trivial query now.
    pub async fn ping(&self) -> bool {
        self.run_unchecked(|conn, _| conn.ping().map(|_| ()).map_err(DbError::from)).await.is_ok()
    }

    /// Runs pending migrations; replicas starting together take turns.
    pub async fn migrate(&self) -> Result<Vec<String>, DbError> {
        let lock_timeout = self.lock_timeout;
        let url = self.mysql_url.clone();
        self.run_unchecked(move |conn, _| {
            run_migrations(conn, url.as_deref(), lock_timeout).map_err(DbError::Other)
        })
        .await
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

/// Checks out a connection that answers a ping, discarding dead ones: after a connection
/// was lost, the pool's other idle connections to the same server are likely dead too.
fn checkout_tested(
    pool: &r2d2::Pool<ConnectionManager>,
    deadline: Instant,
) -> Result<r2d2::PooledConnection<ConnectionManager>, DbError> {
    loop {
        let mut conn = checkout(pool, deadline)?;
        if conn.conn.ping().is_ok() {
            return Ok(conn);
        }
        conn.broken = true;
    }
}

fn no_connection(reason: impl std::fmt::Display) -> DbError {
    DbError::Unavailable(format!("No database connection is available ({reason})."))
}

/// Checks a connection out, waiting at most until `deadline`.
fn checkout(
    pool: &r2d2::Pool<ConnectionManager>,
    deadline: Instant,
) -> Result<r2d2::PooledConnection<ConnectionManager>, DbError> {
    let started = Instant::now();
    let conn = pool.get_timeout(deadline.saturating_duration_since(started));
    let waited = started.elapsed();
    metrics::histogram!("db_pool_checkout_seconds").record(waited.as_secs_f64());
    if waited >= CHECKOUT_WAIT {
        metrics::counter!("db_pool_checkout_waits_total").increment(1);
    }
    conn.map_err(|error| {
        metrics::counter!("db_pool_checkout_timeouts_total").increment(1);
        no_connection(error)
    })
}

fn run_migrations(
    conn: &mut DbConnection,
    mysql_url: Option<&str>,
    lock_timeout: Duration,
) -> anyhow::Result<Vec<String>> {
    let names = |versions: Vec<diesel::migration::MigrationVersion<'_>>| {
        versions.into_iter().map(|v| v.to_string()).collect::<Vec<_>>()
    };
    match conn {
        DbConnection::Mysql(conn) => {
            let url = mysql_url.context("a MySQL connection without a MySQL URL")?;
            let lock = MigrationLock::acquire(conn)?;
            // Schema changes may wait for other sessions' table locks longer than a
            // request may: the server's defaults apply while migrating.
            conn.batch_execute(
                "SET SESSION innodb_lock_wait_timeout = DEFAULT, lock_wait_timeout = DEFAULT",
            )?;
            let result = lock.while_held(url, || {
                conn.run_pending_migrations(MYSQL_MIGRATIONS)
                    .map(names)
                    .map_err(|e| anyhow!("migration failed: {e}"))
            });
            conn.batch_execute(&mysql_session_limits(lock_timeout))?;
            lock.release(conn)?;
            result
        }
        // The immediate transaction holds SQLite's write lock: a second process waits.
        DbConnection::Sqlite(conn) => conn.immediate_transaction(|conn| {
            conn.run_pending_migrations(SQLITE_MIGRATIONS)
                .map(names)
                .map_err(|e| anyhow!("migration failed: {e}"))
        }),
    }
}

/// Serialises migrations across replicas with a row that only one of them can insert.
/// `GET_LOCK()` would be local to one server, so two replicas connected to different
/// nodes of a Galera cluster would both hold it; a committed row is cluster-wide (two
/// nodes inserting it at once: one commit fails certification). The holder refreshes the
/// row while it migrates; a row nobody refreshes is a dead replica's and is taken over.
struct MigrationLock {
    holder: String,
}

impl MigrationLock {
    fn acquire(conn: &mut MysqlConnection) -> anyhow::Result<Self> {
        use diesel::RunQueryDsl;
        use diesel::sql_types::Text;
        conn.batch_execute(
            "CREATE TABLE IF NOT EXISTS migration_lock (
                id TINYINT UNSIGNED NOT NULL PRIMARY KEY,
                holder VARCHAR(100) NOT NULL,
                heartbeat_at DATETIME(6) NOT NULL
            ) ENGINE = InnoDB",
        )?;
        let holder = format!("{}:{}", std::process::id(), uuid::Uuid::new_v4());
        let given_up = Instant::now() + MIGRATION_LOCK_WAIT;
        loop {
            let inserted = diesel::sql_query(
                "INSERT INTO migration_lock (id, holder, heartbeat_at) \
                 VALUES (1, ?, UTC_TIMESTAMP(6))",
            )
            .bind::<Text, _>(&holder)
            .execute(conn);
            match inserted {
                Ok(_) => return Ok(Self { holder }),
                // Held by another replica: a duplicate key, or a certification conflict
                // with the node that inserted it at the same time.
                Err(DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _)) => {}
                Err(error) => match DbError::from(error) {
                    DbError::Conflict(_) => {}
                    error => return Err(error.into()),
                },
            }
            let taken_over = diesel::sql_query(format!(
                "DELETE FROM migration_lock WHERE id = 1 \
                 AND heartbeat_at < UTC_TIMESTAMP(6) - INTERVAL {MIGRATION_LOCK_STALE_SECS} SECOND"
            ))
            .execute(conn)
            .map_err(DbError::from);
            if let Ok(1) = taken_over {
                tracing::warn!(
                    "took over the migration lock of a replica that stopped migrating \
                     without releasing it"
                );
                continue;
            }
            if Instant::now() >= given_up {
                anyhow::bail!("another replica held the migration lock for too long");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Runs `work` while a connection of its own refreshes the lock.
    fn while_held<T>(&self, url: &str, work: impl FnOnce() -> T) -> T {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let holder = &self.holder;
        std::thread::scope(|scope| {
            scope.spawn(move || {
                let Ok(mut conn) = establish_mysql(url) else { return };
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(MIGRATION_HEARTBEAT)
                {
                    use diesel::RunQueryDsl;
                    let refreshed = diesel::sql_query(
                        "UPDATE migration_lock SET heartbeat_at = UTC_TIMESTAMP(6) \
                         WHERE id = 1 AND holder = ?",
                    )
                    .bind::<diesel::sql_types::Text, _>(holder)
                    .execute(&mut conn);
                    if let Err(error) = refreshed {
                        tracing::warn!(%error, "cannot refresh the migration lock");
                    }
                }
            });
            let result = work();
            drop(stop);
            result
        })
    }

    fn release(self, conn: &mut MysqlConnection) -> anyhow::Result<()> {
        use diesel::RunQueryDsl;
        diesel::sql_query("DELETE FROM migration_lock WHERE id = 1 AND holder = ?")
            .bind::<diesel::sql_types::Text, _>(&self.holder)
            .execute(conn)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn database_error(kind: DatabaseErrorKind, message: &str) -> DieselError {
        DieselError::DatabaseError(kind, Box::new(message.to_owned()))
    }

    #[test]
    fn a_server_that_went_away_is_a_lost_connection() {
        for message in [
            "MySQL server has gone away",
            "Lost connection to MySQL server during query",
            "Can't connect to server on '127.0.0.1' (111)",
            "Server shutdown in progress",
            "Connection was killed",
            // A Galera node that is not synced with its cluster refuses queries (error 1047):
            // a new connection, through the load balancer, reaches one that is.
            "WSREP has not yet prepared node",
        ] {
            let error = database_error(DatabaseErrorKind::Unknown, message);
            assert!(is_connection_lost(&error), "{message}");
            assert!(matches!(DbError::from(error), DbError::Unavailable(_)), "{message}");
        }
        assert!(is_connection_lost(&database_error(DatabaseErrorKind::ClosedConnection, "")));
        assert!(is_connection_lost(&DieselError::BrokenTransactionManager));
        let on_commit = DieselError::RollbackErrorOnCommit {
            rollback_error: Box::new(database_error(DatabaseErrorKind::Unknown, "x")),
            commit_error: Box::new(database_error(DatabaseErrorKind::Unknown, "gone away")),
        };
        assert!(is_connection_lost(&on_commit));
    }

    #[test]
    fn a_locked_sqlite_database_is_contention_not_a_lost_connection() {
        let error = database_error(DatabaseErrorKind::Unknown, "database is locked");
        assert!(!is_connection_lost(&error));
        assert!(is_contention(&error));
        assert!(matches!(DbError::from(error), DbError::Busy(_)));
    }

    #[test]
    fn lock_waits_are_contention_and_deadlocks_conflicts() {
        let wait = database_error(
            DatabaseErrorKind::Unknown,
            "Lock wait timeout exceeded; try restarting transaction",
        );
        assert!(!is_connection_lost(&wait) && is_contention(&wait) && !is_conflict(&wait));
        assert!(matches!(DbError::from(wait), DbError::Busy(_)));
        // A lost deadlock, and a Galera certification failure: the same error 1213.
        let deadlock = database_error(
            DatabaseErrorKind::Unknown,
            "Deadlock found when trying to get lock; try restarting transaction",
        );
        assert!(!is_connection_lost(&deadlock) && is_conflict(&deadlock));
        assert!(matches!(DbError::from(deadlock), DbError::Conflict(_)));
    }

    #[test]
    fn a_galera_node_that_is_not_synced_is_an_unusable_connection() {
        let error = database_error(
            DatabaseErrorKind::Unknown,
            "WSREP has not yet prepared node for application use",
        );
        assert!(matches!(DbError::from(error), DbError::Unavailable(_)));
    }

    #[test]
    fn conflicts_and_connections_lost_before_the_commit_run_again_a_few_times() {
        let far = Instant::now() + Duration::from_secs(60);
        let conflict = DbError::Conflict("1213".into());
        let lost = DbError::Unavailable("gone away".into());
        let mut retries = Retries::default();
        assert!(retries.another(&lost, false, far) && retries.connection_lost);
        assert!(retries.another(&conflict, false, far) && !retries.connection_lost);
        assert!(retries.another(&conflict, true, far), "a refused commit is known rolled back");
        assert!(!retries.another(&conflict, false, far), "at most {MAX_RETRIES} times");

        let mut retries = Retries::default();
        assert!(!retries.another(&lost, true, far), "lost while committing: outcome unknown");
        assert!(!retries.another(&DbError::Busy("lock wait".into()), false, far));
        assert!(!retries.another(&conflict, false, Instant::now()), "the wait is over");
    }

    #[test]
    fn connections_are_replaced_once_old() {
        use r2d2::ManageConnection;
        let manager = ConnectionManager {
            target: DatabaseTarget::Sqlite { path: ":memory:".into() },
            lock_timeout: Duration::from_secs(1),
        };
        let mut conn = manager.connect().unwrap();
        assert!(!manager.has_broken(&mut conn));
        conn.born -= CONNECTION_MAX_AGE;
        assert!(manager.has_broken(&mut conn), "closed when it comes back to the pool");
    }

    #[test]
    fn work_runs_again_only_while_its_request_waits() {
        let gate = CommitGate(Arc::default());
        assert!(gate.0.start());
        assert!(gate.enter().is_ok());
        assert!(gate.0.rerun(), "a commit refused by certification runs again");
        assert!(gate.enter().is_ok(), "and may commit");
        assert!(gate.0.abandon(), "given up while committing");
        assert!(!gate.0.rerun(), "never runs again");
        assert!(gate.0.is_committing());
    }

    #[test]
    fn query_errors_are_neither() {
        for error in [
            DieselError::NotFound,
            database_error(DatabaseErrorKind::UniqueViolation, "Duplicate entry"),
            database_error(DatabaseErrorKind::Unknown, "Table 'messages' doesn't exist"),
        ] {
            assert!(!is_connection_lost(&error) && !is_contention(&error), "{error}");
            assert!(matches!(DbError::from(error), DbError::Other(_)));
        }
    }

    #[test]
    fn errors_are_counted_by_a_kind_of_the_fixed_set() {
        let cases = [
            (DieselError::NotFound, "not_found"),
            (database_error(DatabaseErrorKind::UniqueViolation, "Duplicate entry"), "conflict"),
            (database_error(DatabaseErrorKind::Unknown, "database is locked"), "timeout"),
            (database_error(DatabaseErrorKind::ClosedConnection, "gone"), "unavailable"),
            (DieselError::RollbackTransaction, "timeout"),
            (database_error(DatabaseErrorKind::Unknown, "no such table: messages"), "other"),
        ];
        for (error, kind) in cases {
            let error = DbError::from(error);
            assert_eq!(error.kind(), kind, "{error}");
            assert!(DbError::KINDS.contains(&kind));
        }
        assert_eq!(DbError::OutcomeUnknown.kind(), "unavailable");
    }

    #[test]
    fn a_rollback_requested_by_the_gate_is_abandoned_work() {
        assert!(matches!(DbError::from(DieselError::RollbackTransaction), DbError::Abandoned));
    }

    #[test]
    fn work_given_up_before_it_starts_never_runs() {
        let ticket = Ticket::default();
        assert!(ticket.abandon_queued());
        assert!(!ticket.start());
    }

    #[test]
    fn work_given_up_while_running_rolls_back_at_the_gate() {
        let gate = CommitGate(Arc::default());
        assert!(gate.0.start());
        assert!(!gate.0.abandon_queued(), "running work is not queued any more");
        assert!(!gate.0.abandon(), "nothing committed: the outcome is known");
        assert!(matches!(gate.enter(), Err(DieselError::RollbackTransaction)));
    }

    #[test]
    fn a_connection_lost_during_the_commit_leaves_the_outcome_unknown() {
        let lost = || Err::<(), _>(DbError::Unavailable("gone away".into()));
        let gate = CommitGate(Arc::default());
        assert!(gate.0.start());
        assert!(matches!(gate.0.settle(lost()), Err(DbError::Unavailable(_))), "before the commit");
        assert!(gate.enter().is_ok());
        assert!(matches!(gate.0.settle(lost()), Err(DbError::OutcomeUnknown)));
        let busy = Err::<(), _>(DbError::Busy("rolled back".into()));
        assert!(matches!(gate.0.settle(busy), Err(DbError::Busy(_))), "a refused commit is known");
        assert!(gate.0.settle(Ok(())).is_ok());
    }

    #[test]
    fn work_given_up_while_committing_has_an_unknown_outcome() {
        let gate = CommitGate(Arc::default());
        assert!(gate.0.start());
        assert!(gate.enter().is_ok());
        assert!(gate.0.abandon(), "the commit may land");
    }
}
