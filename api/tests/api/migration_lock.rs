//! The migration lock when things go wrong: a holder that cannot refresh it stops migrating
//! before another replica may take over, and a failed migration gives the lock up at once.

use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::sql_types::{BigInt, Double, Text};
use diesel::{MysqlConnection, RunQueryDsl};

use crate::support::{Backend, TestApp, TestDatabase};

/// Another replica takes over a lock whose holder has not refreshed it for this long.
const TAKEOVER: Duration = Duration::from_secs(15);

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(diesel::QueryableByName)]
struct Holder {
    #[diesel(sql_type = Text)]
    holder: String,
}

#[derive(diesel::QueryableByName)]
struct Age {
    #[diesel(sql_type = Double)]
    seconds: f64,
}

fn count(conn: &mut MysqlConnection, sql: &str) -> i64 {
    diesel::sql_query(sql).get_result::<Count>(conn).expect(sql).n
}

fn database_name(db: &TestDatabase) -> String {
    db.url().rsplit('/').next().unwrap().to_owned()
}

/// The test database's statements that alter `messages`, running or waiting.
fn alters_running(conn: &mut MysqlConnection, database: &str) -> i64 {
    count(
        conn,
        &format!(
            "SELECT COUNT(*) AS n FROM information_schema.PROCESSLIST \
             WHERE DB = '{database}' AND INFO LIKE 'ALTER TABLE messages%'"
        ),
    )
}

/// A migration that waits for a table lock, while its heartbeat cannot write the lock row:
/// the replica stops the migration before the row is old enough for another replica to take
/// it over, and once the way is clear it migrates after all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_whose_heartbeat_cannot_write_stops_before_another_replica_may_take_over() {
    let db = TestDatabase::new(Backend::Mysql);
    let database = database_name(&db);
    // A legacy table (the first migration keeps it), read by an open transaction: the second
    // migration's ALTER waits for that transaction's table lock.
    db.execute("CREATE TABLE messages (id INT AUTO_INCREMENT PRIMARY KEY, message TEXT)");
    let mut reader = db.mysql();
    reader.batch_execute("START TRANSACTION; SELECT COUNT(*) FROM messages;").unwrap();

    let url = db.url();
    let app = TestApp::start(TestDatabase::SharedWith { url: url.clone() }, &url, &[]).await;
    let mut watch = db.mysql();
    let waiting = Instant::now();
    while alters_running(&mut watch, &database) == 0 {
        assert!(waiting.elapsed() < Duration::from_secs(30), "the migration reached its ALTER");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // From now on the heartbeat's UPDATE cannot get the table.
    let mut blocker = db.mysql();
    blocker.batch_execute("LOCK TABLES migration_lock WRITE").unwrap();
    let heartbeat_age = |conn: &mut MysqlConnection| {
        diesel::sql_query(
            "SELECT TIMESTAMPDIFF(MICROSECOND, heartbeat_at, UTC_TIMESTAMP(6)) / 1e6 AS seconds \
             FROM migration_lock",
        )
        .get_result::<Age>(conn)
        .map(|age| Duration::from_secs_f64(age.seconds))
        .unwrap()
    };
    loop {
        let age = heartbeat_age(&mut blocker);
        if alters_running(&mut watch, &database) == 0 {
            eprintln!("the migration stopped {age:?} after the lock's last refresh");
            break;
        }
        assert!(
            age < TAKEOVER,
            "the migration still runs {age:?} after the lock's last refresh: another replica \
             may take the lock over now"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(app.get("/health").await.status(), 503, "not ready without its migrations");

    blocker.batch_execute("UNLOCK TABLES").unwrap();
    reader.batch_execute("COMMIT").unwrap();
    app.wait_healthy(TAKEOVER * 3).await;
    assert_eq!(app.create("migrated after all").await["message"], "migrated after all");
}

/// A migration whose connection is lost releases the lock at once, on a new connection,
/// instead of leaving it to go stale (and its own next attempt waiting for that).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_that_lost_its_connection_releases_the_lock_at_once() {
    let db = TestDatabase::new(Backend::Mysql);
    let database = database_name(&db);
    db.execute("CREATE TABLE messages (id INT AUTO_INCREMENT PRIMARY KEY, message TEXT)");
    let mut reader = db.mysql();
    reader.batch_execute("START TRANSACTION; SELECT COUNT(*) FROM messages;").unwrap();
    let url = db.url();
    let _app = TestApp::start(TestDatabase::SharedWith { url: url.clone() }, &url, &[]).await;
    let mut conn = db.mysql();
    let waiting = Instant::now();
    while alters_running(&mut conn, &database) == 0 {
        assert!(waiting.elapsed() < Duration::from_secs(30), "the migration reached its ALTER");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let migrating = count(
        &mut conn,
        &format!(
            "SELECT ID AS n FROM information_schema.PROCESSLIST \
             WHERE DB = '{database}' AND INFO LIKE 'ALTER TABLE messages%'"
        ),
    );
    let holder = diesel::sql_query("SELECT holder FROM migration_lock")
        .get_result::<Holder>(&mut conn)
        .unwrap()
        .holder;
    conn.batch_execute(&format!("KILL CONNECTION {migrating}")).unwrap();
    let killed = Instant::now();
    // Its next attempt may take the lock again, as another holder.
    let held = format!("SELECT COUNT(*) AS n FROM migration_lock WHERE holder = '{holder}'");
    while count(&mut conn, &held) > 0 {
        assert!(
            killed.elapsed() < Duration::from_secs(3),
            "the lock of the failed migration is still held"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    reader.batch_execute("COMMIT").unwrap();
}
