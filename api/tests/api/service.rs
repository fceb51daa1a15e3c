//! Everything around the messages: health, request ids, errors of the HTTP layer, the
//! OpenAPI document, metrics, adoption of a legacy database, outages and shutdown.

use std::time::{Duration, Instant};

use diesel::RunQueryDsl;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{
    Backend, Outage, TestApp, TestDatabase, assert_problem, both_backends, eventually,
};

both_backends!(
    health_reports_the_connected_database,
    every_response_carries_a_request_id,
    unknown_routes_and_methods_get_problem_documents,
    openapi_document_and_swagger_ui_are_served,
    metrics_count_requests_and_show_the_pool,
    limits_report_the_configuration,
    graceful_shutdown_finishes_in_flight_requests,
);

async fn health_reports_the_connected_database(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let response = app.get("/health").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"status": "healthy", "database": "connected"})
    );
    let response = app.get("/health/live").await;
    assert_eq!(response.status(), StatusCode::OK);
}

async fn every_response_carries_a_request_id(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let response = app.get("/api/messages").await;
    let generated = response.headers()["x-request-id"].to_str().unwrap();
    assert_eq!(generated.len(), 36, "a UUID: {generated}");

    let response = app
        .client
        .get(app.url("/api/messages/0"))
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "trace-me-42");
    let problem = assert_problem(response, StatusCode::BAD_REQUEST).await;
    assert_eq!(problem["request_id"], "trace-me-42");
}

async fn unknown_routes_and_methods_get_problem_documents(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    assert_problem(app.get("/nothing/here").await, StatusCode::NOT_FOUND).await;
    let response = app.client.put(app.url("/api/messages")).send().await.unwrap();
    assert!(response.headers()["allow"].to_str().unwrap().contains("POST"));
    assert_problem(response, StatusCode::METHOD_NOT_ALLOWED).await;
    let response = app.client.delete(app.url("/health")).send().await.unwrap();
    assert_problem(response, StatusCode::METHOD_NOT_ALLOWED).await;
}

async fn openapi_document_and_swagger_ui_are_served(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let document: Value = app.get("/api/openapi.json").await.json().await.unwrap();
    assert!(document["openapi"].as_str().unwrap().starts_with("3.1"));
    assert_eq!(document, serde_json::to_value(messages_api::openapi_document()).unwrap());
    let ui = app.get("/api/docs/").await;
    assert_eq!(ui.status(), StatusCode::OK);
    assert!(ui.text().await.unwrap().contains("swagger"));
}

async fn metrics_count_requests_and_show_the_pool(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.create("counted").await;
    let text = app.get("/metrics").await.text().await.unwrap();
    for needle in [
        r#"http_requests_total{method="POST",route="/api/messages",status="201"}"#,
        "http_request_duration_seconds_bucket",
        "db_pool_connections",
        "db_pool_in_use_connections",
        "db_pool_max_connections",
        "db_pool_checkout_seconds",
    ] {
        assert!(text.contains(needle), "metrics lack {needle}:\n{text}");
    }
}

async fn limits_report_the_configuration(backend: Backend) {
    let app = TestApp::spawn_with(backend, &["--max-message-chars", "5"]).await;
    let limits: Value = app.get("/api/limits").await.json().await.unwrap();
    assert_eq!(limits, json!({"max_message_chars": 5, "max_body_bytes": 65536}));
    let response = app.post_json("/api/messages", &json!({"message": "123456"})).await;
    assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
}

/// A request whose body is still arriving when SIGTERM comes completes; new connections
/// are refused; the server then ends cleanly.
async fn graceful_shutdown_finishes_in_flight_requests(backend: Backend) {
    let mut app = TestApp::spawn(backend).await;
    let body = br#"{"message": "sent slowly"}"#;
    let mut stream = TcpStream::connect(app.address).await.unwrap();
    let head = format!(
        "POST /api/messages HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body[..10]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    app.stop_handle()();
    let server = app.take_server();
    eventually(Duration::from_secs(5), "new connections refused", || async {
        TcpStream::connect(app.address).await.is_err()
    })
    .await;

    stream.write_all(&body[10..]).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 201"), "{response}");
    let ended = tokio::time::timeout(Duration::from_secs(10), server).await;
    ended.expect("server ended").expect("task").expect("clean exit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_flask_database_is_adopted_in_place() {
    let db = TestDatabase::new(Backend::Mysql);
    let mut conn = db.mysql();
    // The original app's table and data, with a gap in the ids, a NULL and a blank row.
    diesel::sql_query(
        "CREATE TABLE messages (id INT AUTO_INCREMENT PRIMARY KEY, message TEXT) \
         DEFAULT CHARSET = latin1",
    )
    .execute(&mut conn)
    .unwrap();
    diesel::sql_query(
        "INSERT INTO messages (id, message) VALUES \
         (1, 'Hello from Flask'), (2, 'Café olé'), (5, NULL), (7, '   '), (9, 'last one')",
    )
    .execute(&mut conn)
    .unwrap();
    drop(conn);

    let url = db.url();
    let app = TestApp::start(db, &url, &[]).await;
    app.wait_healthy(Duration::from_secs(30)).await;
    let page: Value = app.get("/api/messages?limit=100").await.json().await.unwrap();
    let rows: Vec<(i64, &str)> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["id"].as_i64().unwrap(), m["message"].as_str().unwrap()))
        .collect();
    assert_eq!(
        rows,
        vec![(9, "last one"), (7, "   "), (5, ""), (2, "Café olé"), (1, "Hello from Flask")],
        "every legacy row keeps its id and text; NULL becomes empty"
    );
    let created = app.create("new after adoption 🙂").await;
    assert!(created["id"].as_i64().unwrap() > 9);
    assert_eq!(created["message"], "new after adoption 🙂");

    let response = app.delete(2, created["edit_token"].as_str()).await;
    assert_problem(response, StatusCode::FORBIDDEN).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_gives_fast_503_and_service_resumes() {
    let db = TestDatabase::new(Backend::Mysql);
    let outage = Outage::in_front_of(&db.url()).await;
    let url = db.url_via(outage.address);
    let app = TestApp::start(db, &url, &["--db-pool-timeout-ms", "1000"]).await;
    app.wait_healthy(Duration::from_secs(30)).await;
    let before = app.create("before the outage").await;

    outage.cut();
    for path in ["/api/messages", "/api/messages/1"] {
        let started = Instant::now();
        let response = app.get(path).await;
        assert!(started.elapsed() < Duration::from_secs(2), "answered within 2 s");
        assert_eq!(response.headers()["retry-after"], "1");
        assert_problem(response, StatusCode::SERVICE_UNAVAILABLE).await;
    }
    let response = app.post_json("/api/messages", &json!({"message": "during"})).await;
    assert_problem(response, StatusCode::SERVICE_UNAVAILABLE).await;
    let health = app.get("/health").await;
    assert_eq!(health.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        health.json::<Value>().await.unwrap(),
        json!({"status": "unhealthy", "database": "disconnected"})
    );
    assert_eq!(app.get("/health/live").await.status(), StatusCode::OK);
    let ready = app.get("/health/ready").await;
    assert_eq!(ready.status(), StatusCode::OK, "a database outage does not take a replica out");
    assert_eq!(ready.json::<Value>().await.unwrap(), json!({"status": "ready"}));

    outage.restore();
    eventually(Duration::from_secs(5), "service resumes", || async {
        app.get("/api/messages").await.status() == StatusCode::OK
    })
    .await;
    let page: Value = app.get("/api/messages").await.json().await.unwrap();
    assert_eq!(page["items"][0]["id"], before["id"], "the write before the outage is there");
    app.create("after the outage").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_starts_without_its_database_and_serves_once_it_appears() {
    let db = TestDatabase::new(Backend::Mysql);
    let outage = Outage::in_front_of(&db.url()).await;
    outage.cut();
    let url = db.url_via(outage.address);
    let app = TestApp::start(db, &url, &[]).await;

    assert_eq!(app.get("/health/live").await.status(), StatusCode::OK);
    assert_eq!(app.get("/health").await.status(), StatusCode::SERVICE_UNAVAILABLE);
    let ready = app.get("/health/ready").await;
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE, "not ready before it has started");
    assert_eq!(ready.json::<Value>().await.unwrap(), json!({"status": "starting"}));
    let response = app.get("/api/messages").await;
    assert_problem(response, StatusCode::SERVICE_UNAVAILABLE).await;

    outage.restore();
    app.wait_healthy(Duration::from_secs(15)).await;
    assert_eq!(app.get("/health/ready").await.status(), StatusCode::OK);
    app.create("the database arrived").await;
}

/// A create that passes its time limit while it waits for a row lock is answered 503 with
/// Retry-After, and that answer is true: the work is rolled back, so a retry (here with the
/// same Idempotency-Key) creates the message exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_timed_out_behind_a_row_lock_changes_nothing_and_a_retry_creates_once() {
    let app = TestApp::spawn_with(Backend::Mysql, &["--request-timeout-secs", "1"]).await;
    app.create("before").await;
    let mut locker = app.db.mysql();
    // A locking read of every row and of the gap above the last: inserts have to wait.
    diesel::sql_query("BEGIN").execute(&mut locker).unwrap();
    diesel::sql_query("SELECT id FROM messages FOR UPDATE").execute(&mut locker).unwrap();
    let key = crate::idempotency::fresh_key();
    let create = || {
        app.client
            .post(app.url("/api/messages"))
            .header("Idempotency-Key", &key)
            .json(&json!({"message": "exactly once"}))
            .send()
    };
    let started = Instant::now();
    let response = create().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(2), "answered at the time limit");
    assert_eq!(response.headers()["retry-after"], "1");
    let problem = assert_problem(response, StatusCode::SERVICE_UNAVAILABLE).await;
    assert!(problem["detail"].as_str().unwrap().contains("time limit"), "{problem}");

    // The insert goes on once the lock is gone, and must not commit.
    diesel::sql_query("ROLLBACK").execute(&mut locker).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let page: Value = app.get("/api/messages").await.json().await.unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 1, "nothing was created: {page}");

    let retry = create().await.unwrap();
    assert_eq!(retry.status(), StatusCode::CREATED);
    assert!(retry.headers().get("idempotent-replayed").is_none(), "a new create, not a replay");
    let replay = create().await.unwrap();
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    let page: Value = app.get("/api/messages").await.json().await.unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 2, "created once: {page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_database_work_times_out_with_503() {
    let app = TestApp::spawn_with(Backend::Mysql, &["--request-timeout-secs", "1"]).await;
    app.create("locked soon").await;
    let mut locker = app.db.mysql();
    diesel::sql_query("LOCK TABLES messages WRITE").execute(&mut locker).unwrap();
    let started = Instant::now();
    let response = app.get("/api/messages").await;
    assert!(started.elapsed() < Duration::from_secs(3));
    let problem = assert_problem(response, StatusCode::SERVICE_UNAVAILABLE).await;
    assert!(problem["detail"].as_str().unwrap().contains("time limit"), "{problem}");
    diesel::sql_query("UNLOCK TABLES").execute(&mut locker).unwrap();
    eventually(Duration::from_secs(5), "reads work again", || async {
        app.get("/api/messages").await.status() == StatusCode::OK
    })
    .await;
}

#[test]
fn committed_openapi_document_matches_the_code() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../openapi/openapi.json");
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    let generated = messages_api::openapi_document().to_pretty_json().unwrap();
    assert!(
        committed.trim_end() == generated.trim_end(),
        "openapi/openapi.json differs from what the code generates: run `make openapi` and commit it"
    );
}
