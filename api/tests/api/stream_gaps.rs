//! Changes that commit late still reach the live stream: one that waited on another
//! transaction's lock, and one still in flight while a replica starts. Both need a second
//! session holding a transaction open beside the app, which SQLite's single writer forbids.

use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::sql_types::Binary;
use diesel::{MysqlConnection, RunQueryDsl};
use messages_api::domain::IdempotencyKey;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Backend, SseReader, TestApp};

const WAIT: Duration = Duration::from_secs(5);
/// Longer than the watcher once waited for a missing change number (5 s), within the
/// request limit (10 s).
const HELD: Duration = Duration::from_secs(7);

/// The case seen on MariaDB: another session holds an uncommitted row for key K; a create
/// with K waits on it while a create without a key commits and is streamed; the holder rolls
/// back, and the keyed create, answered 201 after seconds, is streamed too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_that_waited_for_another_transactions_key_is_still_streamed() {
    let app = TestApp::spawn(Backend::Mysql).await;
    let mut stream = SseReader::open(&app, None).await;
    assert_eq!(stream.next(WAIT).await.unwrap().event, "ready");

    let key = "9b1deb4d-3b7d-4bad-9bdd-2b0d7b3dcb6d";
    let hash = IdempotencyKey::parse(key.as_bytes()).unwrap().lookup_hash();
    let mut holder = app.db.mysql();
    holder.batch_execute("START TRANSACTION").unwrap();
    diesel::sql_query(
        "INSERT INTO idempotency_keys (key_hash, request_hash, message_id, token_cipher, \
         created_at) VALUES (?, ?, 0, '', UTC_TIMESTAMP(6))",
    )
    .bind::<Binary, _>(&hash)
    .bind::<Binary, _>(&hash)
    .execute(&mut holder)
    .unwrap();

    let keyed = {
        let request = app
            .client
            .post(app.url("/api/messages"))
            .header("Idempotency-Key", key)
            .json(&json!({ "message": "with a key" }));
        tokio::spawn(async move { request.send().await.unwrap() })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let plain = app.create("without a key").await;
    assert_eq!(created_id(&stream.next(WAIT).await.unwrap()), plain["id"]);

    tokio::time::sleep(HELD - Duration::from_secs(1)).await;
    holder.batch_execute("ROLLBACK").unwrap();
    let response = keyed.await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let keyed: Value = response.json().await.unwrap();
    assert_eq!(created_id(&stream.next(WAIT).await.unwrap()), keyed["id"], "streamed late");
}

/// A replica that starts while a change is in flight below the newest one streams that
/// change when it commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_starting_while_a_change_is_in_flight_streams_it() {
    let first = TestApp::spawn(Backend::Mysql).await;
    first.create("before").await;
    let mut in_flight = first.db.mysql();
    let message = write_uncommitted(&mut in_flight, "committed after the replica started");
    first.create("after").await;

    let replica = first.replica().await;
    let mut stream = SseReader::open(&replica, None).await;
    assert_eq!(stream.next(WAIT).await.unwrap().event, "ready");
    in_flight.batch_execute("COMMIT").unwrap();
    assert_eq!(created_id(&stream.next(WAIT).await.unwrap()), json!(message));
}

/// A create as the app makes it, left uncommitted: its change number stays in flight.
fn write_uncommitted(conn: &mut MysqlConnection, text: &str) -> i64 {
    conn.batch_execute(&format!(
        "START TRANSACTION;
         INSERT INTO messages (message, created_at, updated_at)
             VALUES ('{text}', UTC_TIMESTAMP(6), UTC_TIMESTAMP(6));
         INSERT INTO message_events (kind, message_id, created_at)
             VALUES ('created', LAST_INSERT_ID(), UTC_TIMESTAMP(6));"
    ))
    .unwrap();
    #[derive(diesel::QueryableByName)]
    struct Id {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        id: i64,
    }
    diesel::sql_query("SELECT MAX(id) AS id FROM messages").get_result::<Id>(conn).unwrap().id
}

fn created_id(event: &crate::support::SseEvent) -> Value {
    assert_eq!(event.event, "created", "{event:?}");
    event.json()["id"].clone()
}
