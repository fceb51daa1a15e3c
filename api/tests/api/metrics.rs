//! The metrics the alerts and the dashboard use, read from an API process of their own so
//! that the other tests' streams and writes do not move them.

use std::time::Duration;

use diesel::Connection;
use diesel::connection::SimpleConnection;
use reqwest::StatusCode;
use serde_json::json;

use crate::idempotency::fresh_key;
use crate::support::{ApiProcess, Backend, TestDatabase, both_backends, eventually};

both_backends!(
    alerted_metrics_have_values_from_the_start,
    stream_subscribers_follow_open_streams,
    idempotent_replays_are_counted,
    watcher_timestamp_advances_while_it_polls,
);

const SUBSCRIBERS: &str = "messages_stream_subscribers";
const REPLAYS: &str = r#"messages_idempotent_replays_total{route="/api/messages"}"#;
const LAST_POLL: &str = "messages_watcher_last_success_timestamp_seconds";
const LAG: &str = "messages_watcher_lag_seconds";

async fn alerted_metrics_have_values_from_the_start(backend: Backend) {
    let api = &ApiProcess::spawn(backend).await;
    assert_eq!(api.metric(SUBSCRIBERS).await, Some(0.0));
    assert_eq!(api.metric(REPLAYS).await, Some(0.0));
    for kind in ["unavailable", "timeout", "write_conflict", "constraint", "not_found", "other"] {
        let series = format!(r#"db_errors_total{{kind="{kind}"}}"#);
        assert_eq!(api.metric(&series).await, Some(0.0), "{series}");
    }
    eventually(Duration::from_secs(10), "the watcher's first poll", || async move {
        api.metric(LAST_POLL).await.is_some() && api.metric(LAG).await.is_some()
    })
    .await;
}

async fn stream_subscribers_follow_open_streams(backend: Backend) {
    let api = &ApiProcess::spawn(backend).await;
    let open = || async move {
        let response = api.client.get(api.url("/api/messages/stream")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response
    };
    let first = open().await;
    let second = open().await;
    assert_eq!(api.metric(SUBSCRIBERS).await, Some(2.0));
    drop(first);
    // The server notices a closed stream when it reads the end or writes the next heartbeat.
    eventually(Duration::from_secs(15), "one stream left", || async move {
        api.metric(SUBSCRIBERS).await == Some(1.0)
    })
    .await;
    drop(second);
    eventually(Duration::from_secs(15), "no stream left", || async move {
        api.metric(SUBSCRIBERS).await == Some(0.0)
    })
    .await;
}

async fn idempotent_replays_are_counted(backend: Backend) {
    let api = &ApiProcess::spawn(backend).await;
    let key = &fresh_key();
    let create = || async move {
        api.client
            .post(api.url("/api/messages"))
            .header("Idempotency-Key", key)
            .json(&json!({"message": "once"}))
            .send()
            .await
            .unwrap()
    };
    let first = create().await;
    assert_eq!(first.status(), StatusCode::CREATED);
    assert!(first.headers().get("idempotent-replayed").is_none());
    assert_eq!(api.metric(REPLAYS).await, Some(0.0), "a first create is no replay");
    let again = create().await;
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(api.metric(REPLAYS).await, Some(1.0));
}

async fn watcher_timestamp_advances_while_it_polls(backend: Backend) {
    let api = &ApiProcess::spawn(backend).await;
    eventually(Duration::from_secs(10), "the watcher's first poll", || async move {
        api.metric(LAST_POLL).await.is_some()
    })
    .await;
    let first = api.metric(LAST_POLL).await.unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    assert!((now.as_secs_f64() - first).abs() < 60.0, "a unix time: {first}");
    eventually(Duration::from_secs(10), "a later poll", || async move {
        api.metric(LAST_POLL).await.unwrap() > first
    })
    .await;
    let created = api.client.post(api.url("/api/messages")).json(&json!({"message": "hi"}));
    assert_eq!(created.send().await.unwrap().status(), StatusCode::CREATED);
    let lag = api.metric(LAG).await.unwrap();
    assert!((0.0..5.0).contains(&lag), "a caught-up watcher lags little: {lag}");
}

/// Takes the write lock on the messages table from a connection of its own; dropping the
/// connection gives it back.
fn lock_messages(db: &TestDatabase) -> Box<dyn std::any::Any> {
    let url = db.url();
    match url.strip_prefix("sqlite://") {
        Some(path) => {
            let mut conn = diesel::SqliteConnection::establish(path).unwrap();
            conn.batch_execute("BEGIN IMMEDIATE").unwrap();
            Box::new(conn)
        }
        None => {
            let mut conn = db.mysql();
            conn.batch_execute("LOCK TABLES messages WRITE").unwrap();
            Box::new(conn)
        }
    }
}

// Not in both_backends' `mysql` module, which the cluster suite runs through HAProxy: table
// locks are a single server's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_cut_by_the_time_limit_are_counted_on_sqlite() {
    requests_cut_by_the_time_limit_are_counted_with_their_status(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_cut_by_the_time_limit_are_counted_on_mysql() {
    requests_cut_by_the_time_limit_are_counted_with_their_status(Backend::Mysql).await;
}

/// The time limit answers outside the routes' own code (the deadline layer): such an
/// answer is counted, and timed, all the same.
async fn requests_cut_by_the_time_limit_are_counted_with_their_status(backend: Backend) {
    let api = &ApiProcess::spawn_with(backend, &["--request-timeout-secs", "1"]).await;
    let lock = lock_messages(&api.db);
    let create = api.client.post(api.url("/api/messages")).json(&json!({"message": "cut"}));
    let status = create.send().await.unwrap().status();
    drop(lock);
    assert!(
        [StatusCode::SERVICE_UNAVAILABLE, StatusCode::GATEWAY_TIMEOUT].contains(&status),
        "cut by the time limit: {status}"
    );
    let labels = format!(r#"{{method="POST",route="/api/messages",status="{}"}}"#, status.as_u16());
    assert_eq!(api.metric(&format!("http_requests_total{labels}")).await, Some(1.0));
    let timed = api.metric(&format!("http_request_duration_seconds_count{labels}")).await;
    assert_eq!(timed, Some(1.0));
}
