//! The embedded migrations, and the lock through which replicas take turns running them.

use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use diesel::connection::SimpleConnection;
use diesel::mysql::MysqlConnection;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use super::error::DbError;
use super::pool::{DbConnection, establish_mysql, mysql_session_limits, net_timeouts};

const MYSQL_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations/mysql");
const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations/sqlite");

/// How long a replica waits for another one's migrations before it gives up (and retries).
const MIGRATION_LOCK_WAIT: Duration = Duration::from_secs(120);
/// How often the replica that migrates says it is still at it.
const MIGRATION_HEARTBEAT: Duration = Duration::from_secs(2);
/// A migration lock whose holder has not said so for this long belongs to a replica that
/// died while migrating: another one takes it over.
const MIGRATION_LOCK_STALE_SECS: u32 = 15;

pub(super) fn run(
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
            let result = lock.while_held(url, lock_timeout, || {
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
                    DbError::WriteConflict(_) => {}
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
    fn while_held<T>(&self, url: &str, lock_timeout: Duration, work: impl FnOnce() -> T) -> T {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let holder = &self.holder;
        std::thread::scope(|scope| {
            scope.spawn(move || {
                let Ok(mut conn) = establish_mysql(url, net_timeouts(lock_timeout)) else { return };
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
