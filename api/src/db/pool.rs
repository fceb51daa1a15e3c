//! The connection pool and each connection's session: timeouts, Galera's read causality,
//! SQLite's pragmas, and checkouts bounded by the request's deadline.

use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::mysql::MysqlConnection;
use diesel::r2d2::R2D2Connection;
use diesel::sqlite::SqliteConnection;
use diesel::{Connection, ConnectionError};

use super::error::DbError;
use super::mysql_timeouts::{self, NetTimeouts};
use crate::config::{DatabaseSettings, DatabaseTarget};

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

/// The longest a MySQL connection waits to connect and for the server's greeting: a healthy
/// server answers in milliseconds; a vanished one must not hold the pool's connecting
/// threads for minutes.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How much longer than the server's own lock wait limit a connection waits for an answer:
/// a statement that waited for a lock gets the server's "lock wait timeout" (rolled back,
/// connection fine) before the connection gives up on the server.
const ANSWER_MARGIN: Duration = Duration::from_secs(2);

/// The limits on a pooled connection's waits for its server. Every statement of a request
/// ends within the server's lock wait limit, so a longer silence means the server or the
/// path to it is gone: the wait fails as a lost connection, and its blocking thread comes
/// free, instead of waiting for TCP to give up (about 15 minutes) or, behind a proxy that
/// keeps the connection open, forever.
fn net_timeouts(lock_timeout: Duration) -> NetTimeouts {
    NetTimeouts { connect: CONNECT_TIMEOUT, read_write: answer_limit(lock_timeout) }
}

/// The longest a pooled connection waits for any one answer of the server.
pub(super) fn answer_limit(lock_timeout: Duration) -> Duration {
    lock_timeout + ANSWER_MARGIN
}

#[derive(diesel::MultiConnection)]
pub enum DbConnection {
    Mysql(MysqlConnection),
    Sqlite(SqliteConnection),
}

/// A pooled connection that remembers whether it failed in a way that makes it unusable.
pub struct PooledConnection {
    pub(super) conn: DbConnection,
    pub(super) broken: bool,
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
                let mut conn = establish_mysql(url, net_timeouts(self.lock_timeout))?;
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

/// Connects to MySQL or MariaDB with limits on its waits for the server; on a Galera node,
/// reads wait for the cluster's earlier commits (read-your-writes through any node). Other
/// servers have no such variable.
pub(super) fn establish_mysql(
    url: &str,
    timeouts: NetTimeouts,
) -> Result<MysqlConnection, ConnectionError> {
    let mut conn = mysql_timeouts::establish(url, timeouts)?;
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
pub(super) fn mysql_session_limits(lock_timeout: Duration) -> String {
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

/// The pool, created without connecting: the database may come up later.
pub(super) fn build(
    settings: &DatabaseSettings,
    target: DatabaseTarget,
    lock_timeout: Duration,
) -> r2d2::Pool<ConnectionManager> {
    r2d2::Pool::builder()
        .max_size(settings.pool_size())
        .min_idle(Some(0))
        .connection_timeout(settings.pool_timeout())
        // Connections are checked by their failures instead (see `has_broken`): a ping
        // on every checkout would double the round trips of every request.
        .test_on_check_out(false)
        .max_lifetime(Some(CONNECTION_MAX_AGE))
        .idle_timeout(Some(CONNECTION_MAX_AGE))
        .error_handler(Box::new(QuietErrorHandler))
        .build_unchecked(ConnectionManager { target, lock_timeout })
}

/// Checks out a connection that answers a ping, discarding dead ones: after a connection
/// was lost, the pool's other idle connections to the same server are likely dead too.
pub(super) fn checkout_tested(
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

pub(super) fn no_connection(reason: impl std::fmt::Display) -> DbError {
    DbError::Unavailable(format!("No database connection is available ({reason})."))
}

/// Checks a connection out, waiting at most until `deadline`.
pub(super) fn checkout(
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
