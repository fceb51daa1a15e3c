//! Migrations with several replicas: they take turns through a lock row, which works across
//! the nodes of a Galera cluster (the cluster tests run these apps against one).

use std::time::Duration;

use diesel::RunQueryDsl;
use diesel::sql_types::BigInt;

use crate::support::{Backend, TestApp, TestDatabase};

const HEALTHY: Duration = Duration::from_secs(30);

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

fn count(db: &TestDatabase, sql: &str) -> i64 {
    diesel::sql_query(sql).get_result::<Count>(&mut db.mysql()).expect(sql).n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_together_migrate_the_database_once() {
    let db = TestDatabase::new(Backend::Mysql);
    let url = db.url();
    let shared = || TestDatabase::SharedWith { url: url.clone() };
    let (first, second, third) = tokio::join!(
        TestApp::start(shared(), &url, &[]),
        TestApp::start(shared(), &url, &[]),
        TestApp::start(shared(), &url, &[]),
    );
    for app in [&first, &second, &third] {
        app.wait_healthy(HEALTHY).await;
    }
    let migrations = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations/mysql"))
        .unwrap()
        .count() as i64;
    assert_eq!(
        count(&db, "SELECT COUNT(*) AS n FROM __diesel_schema_migrations"),
        migrations,
        "each migration applied once"
    );
    assert_eq!(count(&db, "SELECT COUNT(*) AS n FROM migration_lock"), 0, "the lock is released");
    assert_eq!(first.create("after").await["message"], "after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_left_by_a_replica_that_died_while_migrating_is_taken_over() {
    let db = TestDatabase::new(Backend::Mysql);
    db.execute(
        "CREATE TABLE migration_lock (
            id TINYINT UNSIGNED NOT NULL PRIMARY KEY,
            holder VARCHAR(100) NOT NULL,
            heartbeat_at DATETIME(6) NOT NULL
        ) ENGINE = InnoDB;
        INSERT INTO migration_lock VALUES (1, 'a replica that died', UTC_TIMESTAMP(6) - INTERVAL 1 MINUTE);",
    );
    let url = db.url();
    let app = TestApp::start(db, &url, &[]).await;
    app.wait_healthy(HEALTHY).await;
    assert_eq!(count(&app.db, "SELECT COUNT(*) AS n FROM migration_lock"), 0);
}
