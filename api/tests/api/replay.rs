//! Idempotent replay of a create: the edit token kept for it is sealed, and a seal that
//! does not open, or one kept the old way, is refused without creating a duplicate.

use diesel::RunQueryDsl;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::idempotency::fresh_key;
use crate::support::{Backend, TestApp, assert_problem, both_backends};

both_backends!(a_seal_moved_to_another_message_does_not_open);

/// The key of every test here but one: each has a database of its own.
const KEY: &str = "0b7e2a3c-5d41-4f6a-9c2e-8a1b3c4d5e6f";

async fn create_with_key(app: &TestApp, key: &str) -> reqwest::Response {
    create_text_with_key(app, key, "sealed").await
}

async fn create_text_with_key(app: &TestApp, key: &str, text: &str) -> reqwest::Response {
    app.client
        .post(app.url("/api/messages"))
        .header("Idempotency-Key", key)
        .json(&json!({ "message": text }))
        .send()
        .await
        .unwrap()
}

async fn count(app: &TestApp) -> usize {
    let page: Value = app.get("/api/messages").await.json().await.unwrap();
    page["items"].as_array().unwrap().len()
}

/// Alters the stored seal of every remembered key with `assignment`.
fn alter_seal(app: &TestApp, assignment: &str) {
    diesel::sql_query(format!("UPDATE idempotency_keys SET token_cipher = {assignment}"))
        .execute(&mut app.db.mysql())
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_refuses_a_tampered_seal_and_creates_no_duplicate() {
    let app = TestApp::spawn(Backend::Mysql).await;
    let first = create_with_key(&app, KEY).await;
    assert_eq!(first.status(), StatusCode::CREATED);
    // Version and nonce kept, the sealed token zeroed, the tag kept.
    alter_seal(&app, "CONCAT(LEFT(token_cipher, 13), REPEAT(X'00', 32), RIGHT(token_cipher, 16))");

    let problem = assert_problem(create_with_key(&app, KEY).await, StatusCode::CONFLICT).await;
    assert_eq!(problem["type"], "/problems/idempotent-replay-unavailable", "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("sealing key"), "{problem}");
    assert_eq!(count(&app).await, 1, "no duplicate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_opens_only_with_the_same_sealing_key() {
    let app = TestApp::spawn(Backend::Mysql).await;
    assert_eq!(create_with_key(&app, KEY).await.status(), StatusCode::CREATED);
    let url = app.db.url();
    let other = TestApp::start(
        crate::support::TestDatabase::SharedWith { url: url.clone() },
        &url,
        &["--token-sealing-key", "another sealing secret, also at least 32 bytes"],
    )
    .await;
    other.wait_healthy(std::time::Duration::from_secs(30)).await;
    assert_problem(create_with_key(&other, KEY).await, StatusCode::CONFLICT).await;
    let replayed = create_with_key(&app, KEY).await;
    assert_eq!(replayed.status(), StatusCode::CREATED);
    assert_eq!(replayed.headers()["idempotent-replayed"], "true");
    assert_eq!(count(&app).await, 1);
}

/// The upgrade erases tokens kept the old way (XOR with SHA-256 of the key): a retry with
/// such a key is told its token is gone, and creates nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_erases_tokens_kept_the_old_way() {
    let app = TestApp::spawn(Backend::Mysql).await;
    assert_eq!(create_with_key(&app, KEY).await.status(), StatusCode::CREATED);
    // The row as the previous version left it, and its migration not yet applied.
    alter_seal(&app, "REPEAT(X'AB', 32)");
    diesel::sql_query("DELETE FROM __diesel_schema_migrations WHERE version = '20261202000001'")
        .execute(&mut app.db.mysql())
        .unwrap();
    let upgraded = app.replica().await;

    #[derive(diesel::QueryableByName)]
    struct Length {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        length: i64,
    }
    let lengths = diesel::sql_query("SELECT LENGTH(token_cipher) AS length FROM idempotency_keys")
        .load::<Length>(&mut app.db.mysql())
        .unwrap();
    assert_eq!(lengths.iter().map(|l| l.length).collect::<Vec<_>>(), [0], "erased");

    let problem = assert_problem(create_with_key(&upgraded, KEY).await, StatusCode::CONFLICT).await;
    assert_eq!(problem["type"], "/problems/idempotent-replay-unavailable", "{problem}");
    assert_eq!(count(&upgraded).await, 1, "no duplicate");
}

/// A previous version still running during a deploy writes the old form: it is refused
/// the same way, not taken for a broken seal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_of_a_token_in_the_old_form_is_refused() {
    let app = TestApp::spawn(Backend::Mysql).await;
    assert_eq!(create_with_key(&app, KEY).await.status(), StatusCode::CREATED);
    alter_seal(&app, "REPEAT(X'AB', 32)");
    let problem = assert_problem(create_with_key(&app, KEY).await, StatusCode::CONFLICT).await;
    assert!(problem["detail"].as_str().unwrap().contains("no longer reads"), "{problem}");
    assert_eq!(count(&app).await, 1);
}

/// A remembered key pointed at another message (the row's message id changed in the
/// database) no longer replays: the seal is bound to the message it was made for, so the
/// first message's token is never handed out as the second's.
async fn a_seal_moved_to_another_message_does_not_open(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let key = fresh_key();
    let first: Value = create_text_with_key(&app, &key, "same text").await.json().await.unwrap();
    let second: Value =
        create_text_with_key(&app, &fresh_key(), "same text").await.json().await.unwrap();
    app.db.execute(&format!(
        "UPDATE idempotency_keys SET message_id = {} WHERE message_id = {}",
        second["id"], first["id"]
    ));
    let problem =
        assert_problem(create_text_with_key(&app, &key, "same text").await, StatusCode::CONFLICT)
            .await;
    assert_eq!(problem["type"], "/problems/idempotent-replay-unavailable", "{problem}");
    assert_eq!(count(&app).await, 2, "no duplicate");
}
