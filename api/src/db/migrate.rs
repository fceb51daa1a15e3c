//! The embedded migrations, and the lock through which replicas take turns running them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail, ensure};
use diesel::RunQueryDsl;
use diesel::connection::SimpleConnection;
use diesel::mysql::MysqlConnection;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::sql_types::{BigInt, Text};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use super::error::DbError;
use super::mysql_timeouts::NetTimeouts;
use super::pool::{CONNECT_TIMEOUT, DbConnection, establish_mysql, mysql_session_limits};

const MYSQL_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations/mysql");
const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations/sqlite");

/// How long a replica waits for another one's migrations before it gives up (and retries).
const LOCK_WAIT: Duration = Duration::from_secs(120);
/// How often the replica that migrates refreshes the lock, and the longest a refresh waits
/// for an answer.
const HEARTBEAT: Duration = Duration::from_secs(2);
/// A lock nobody refreshed for this long belongs to a replica that stopped migrating
/// without releasing it (it died): another one takes it over.
const LOCK_STALE_SECS: u32 = 15;
/// The holder stops migrating when it could not refresh the lock for this long. A refresh
/// begun just before, and the kill of the migration's statement, each wait at most a second
/// to connect and `HEARTBEAT` per answer: the migration has stopped before the lock is
/// stale, so two replicas never migrate at once.
const GIVE_UP: Duration = Duration::from_secs(6);
/// The lock's own connections (refresh, release, stopping the migration) give up on the
/// server after this long to connect, and on a row or table lock after a second.
const LOCK_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// The longest a migration's statement may keep its connection waiting for the server: far
/// beyond a request's limits, for schema changes that rewrite big tables, but not forever,
/// for a server that vanished mid-migration.
const STATEMENT_LIMIT: Duration = Duration::from_secs(3600);

/// Runs the pending migrations on a connection of its own, holding the migration lock.
/// Schema changes may wait for other sessions' table locks and run longer than a request
/// may: the server's default lock waits apply, and `STATEMENT_LIMIT`.
pub(super) fn mysql(url: &str) -> anyhow::Result<Vec<String>> {
    let timeouts = NetTimeouts { connect: CONNECT_TIMEOUT, read_write: STATEMENT_LIMIT };
    let mut conn = establish_mysql(url, timeouts)?;
    let lock = MigrationLock::acquire(&mut conn, url)?;
    lock.while_held(&mut conn, apply_pending)
}

/// Applies the pending migrations one by one, as long as the lock is held.
fn apply_pending(conn: &mut MysqlConnection, lost: &AtomicBool) -> anyhow::Result<Vec<String>> {
    let pending =
        conn.pending_migrations(MYSQL_MIGRATIONS).map_err(|e| anyhow!("migration failed: {e}"))?;
    let mut applied = Vec::new();
    for migration in pending {
        let outcome = (!lost.load(Ordering::Acquire)).then(|| conn.run_migration(&*migration));
        match outcome {
            Some(Ok(version)) => applied.push(version.to_string()),
            Some(Err(error)) if !lost.load(Ordering::Acquire) => {
                bail!("migration {} failed: {error}", migration.name())
            }
            _ => bail!(
                "the migration lock was lost: stopped before completing {} (applied: {applied:?})",
                migration.name()
            ),
        }
    }
    Ok(applied)
}

/// The immediate transaction holds SQLite's write lock: a second process waits.
pub(super) fn sqlite(conn: &mut DbConnection) -> anyhow::Result<Vec<String>> {
    let DbConnection::Sqlite(conn) = conn else { bail!("not a SQLite connection") };
    conn.immediate_transaction(|conn| {
        let applied = conn
            .run_pending_migrations(SQLITE_MIGRATIONS)
            .map_err(|e| anyhow!("migration failed: {e}"))?;
        Ok(applied.into_iter().map(|v| v.to_string()).collect())
    })
}

/// Serialises migrations across replicas with a row that only one of them can insert.
/// `GET_LOCK()` would be local to one server, so two replicas connected to different
/// nodes of a Galera cluster would both hold it; a committed row is cluster-wide (two
/// nodes inserting it at once: one commit fails certification). The holder refreshes the
/// row while it migrates, and stops migrating when it cannot; a row nobody refreshes is a
/// dead replica's and is taken over. Dropping the lock releases it.
struct MigrationLock<'a> {
    holder: String,
    url: &'a str,
}

impl<'a> MigrationLock<'a> {
    fn acquire(conn: &mut MysqlConnection, url: &'a str) -> anyhow::Result<Self> {
        conn.batch_execute(
            "CREATE TABLE IF NOT EXISTS migration_lock (
                id TINYINT UNSIGNED NOT NULL PRIMARY KEY,
                holder VARCHAR(100) NOT NULL,
                heartbeat_at DATETIME(6) NOT NULL
            ) ENGINE = InnoDB",
        )?;
        let holder = format!("{}:{}", std::process::id(), uuid::Uuid::new_v4());
        let given_up = Instant::now() + LOCK_WAIT;
        loop {
            let inserted = diesel::sql_query(
                "INSERT INTO migration_lock (id, holder, heartbeat_at) \
                 VALUES (1, ?, UTC_TIMESTAMP(6))",
            )
            .bind::<Text, _>(&holder)
            .execute(conn);
            match inserted {
                Ok(_) => return Ok(Self { holder, url }),
                // Held by another replica: a duplicate key, or a certification conflict
                // with the node that inserted it at the same time.
                Err(DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _)) => {}
                Err(error) => match DbError::from(error) {
                    DbError::WriteConflict(_) => {}
                    error => return Err(error.into()),
                },
            }
            let taken_over = diesel::sql_query(format!(
                "DELETE FROM migration_lock WHERE id = 1 \
                 AND heartbeat_at < UTC_TIMESTAMP(6) - INTERVAL {LOCK_STALE_SECS} SECOND"
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
                bail!("another replica held the migration lock for too long");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Runs `work` on `conn` while a thread of its own refreshes the lock. When it cannot
    /// for `GIVE_UP`, or finds the lock taken over, it tells `work` so (the flag) and kills
    /// the statement `work` is waiting for.
    fn while_held<T>(
        &self,
        conn: &mut MysqlConnection,
        work: impl FnOnce(&mut MysqlConnection, &AtomicBool) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let refreshed = Instant::now();
        let session = Session::of(conn).context("cannot identify the migration's session")?;
        let lost = AtomicBool::new(false);
        let (stop, stopped) = mpsc::channel::<()>();
        std::thread::scope(|scope| {
            let lost = &lost;
            let session = &session;
            scope.spawn(move || self.heartbeat(refreshed, &stopped, lost, session));
            let result = work(conn, lost);
            drop(stop);
            result
        })
    }

    fn heartbeat(
        &self,
        mut refreshed: Instant,
        stopped: &mpsc::Receiver<()>,
        lost: &AtomicBool,
        migration: &Session,
    ) {
        let mut conn = None;
        loop {
            if stopped.recv_timeout(HEARTBEAT) != Err(RecvTimeoutError::Timeout) {
                return;
            }
            match self.refresh(&mut conn) {
                Ok(true) => refreshed = Instant::now(),
                Ok(false) => {
                    tracing::error!(
                        "another replica took the migration lock over: stopping the migration"
                    );
                    break;
                }
                Err(error) if refreshed.elapsed() < GIVE_UP => {
                    tracing::warn!(%error, "cannot refresh the migration lock");
                    conn = None;
                }
                Err(error) => {
                    tracing::error!(
                        %error,
                        "cannot refresh the migration lock for {GIVE_UP:?}: stopping the \
                         migration before another replica may take the lock over"
                    );
                    conn = None;
                    break;
                }
            }
        }
        lost.store(true, Ordering::Release);
        if let Err(error) = migration.kill(&mut conn, self.url) {
            tracing::error!(
                %error,
                "cannot stop the migration's statement: the migration stops after it"
            );
        }
    }

    /// True when the lock was still this replica's.
    fn refresh(&self, conn: &mut Option<MysqlConnection>) -> anyhow::Result<bool> {
        let conn = match conn {
            Some(conn) => conn,
            None => conn.insert(lock_connection(self.url)?),
        };
        let refreshed = diesel::sql_query(
            "UPDATE migration_lock SET heartbeat_at = UTC_TIMESTAMP(6) \
             WHERE id = 1 AND holder = ?",
        )
        .bind::<Text, _>(&self.holder)
        .execute(conn)?;
        Ok(refreshed == 1)
    }
}

impl Drop for MigrationLock<'_> {
    /// On a connection of its own: the migration's may be the one that failed.
    fn drop(&mut self) {
        let released = lock_connection(self.url).and_then(|mut conn| {
            diesel::sql_query("DELETE FROM migration_lock WHERE id = 1 AND holder = ?")
                .bind::<Text, _>(&self.holder)
                .execute(&mut conn)?;
            Ok(())
        });
        if let Err(error) = released {
            tracing::warn!(
                %error,
                "cannot release the migration lock: the next migration takes it over once \
                 it is {LOCK_STALE_SECS} s old"
            );
        }
    }
}

/// A connection for the lock's own short statements.
fn lock_connection(url: &str) -> anyhow::Result<MysqlConnection> {
    let timeouts = NetTimeouts { connect: LOCK_CONNECT_TIMEOUT, read_write: HEARTBEAT };
    let mut conn = establish_mysql(url, timeouts)?;
    conn.batch_execute(&mysql_session_limits(LOCK_CONNECT_TIMEOUT))?;
    Ok(conn)
}

/// The server session a migration runs in, so that another connection can stop it.
#[derive(Debug, PartialEq, Eq, diesel::QueryableByName)]
struct Session {
    #[diesel(sql_type = BigInt)]
    id: i64,
    /// Connection ids are per server: on a cluster behind a load balancer another
    /// connection may reach another node, where the same id is someone else's.
    #[diesel(sql_type = Text)]
    server: String,
}

impl Session {
    fn of(conn: &mut MysqlConnection) -> diesel::QueryResult<Self> {
        diesel::sql_query(
            "SELECT CAST(CONNECTION_ID() AS SIGNED) AS id, CONCAT(@@hostname, ':', @@port) AS server",
        )
        .get_result(conn)
    }

    /// Kills the session, through `conn` or a new connection, when it reaches its server.
    fn kill(&self, conn: &mut Option<MysqlConnection>, url: &str) -> anyhow::Result<()> {
        let conn = match conn {
            Some(conn) => conn,
            None => conn.insert(lock_connection(url)?),
        };
        let here = Self::of(conn)?;
        ensure!(here.server == self.server, "reached {} instead of {}", here.server, self.server);
        conn.batch_execute(&format!("KILL CONNECTION {}", self.id))?;
        Ok(())
    }
}
