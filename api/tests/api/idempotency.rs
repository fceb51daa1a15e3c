//! Idempotency keys must be unguessable: a replay hands out the message's edit token to
//! whoever sends the key again, so a key that can be guessed would hand it to a stranger.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Backend, TestApp, assert_problem, both_backends};

both_backends!(
    guessable_keys_are_refused_and_never_hand_out_a_token,
    uuids_and_long_random_keys_are_accepted_and_replayed,
    a_key_reused_for_another_text_is_refused_without_details,
);

/// A fresh key, as clients should make them.
pub fn fresh_key() -> String {
    uuid::Uuid::new_v4().to_string()
}

async fn post(app: &TestApp, key: &str, text: &str) -> reqwest::Response {
    app.client
        .post(app.url("/api/messages"))
        .header("Idempotency-Key", key)
        .json(&json!({ "message": text }))
        .send()
        .await
        .unwrap()
}

async fn guessable_keys_are_refused_and_never_hand_out_a_token(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for (key, why) in [
        ("1", "characters long"),
        ("retry-123", "characters long"),
        ("0123456789abcdef0123456789abcde", "characters long"),
        ("00000000-0000-0000-0000-000000000000", "different characters"),
        ("ffffffff-ffff-ffff-ffff-ffffffffffff", "different characters"),
        (&"ab".repeat(20), "different characters"),
        ("0123456789abcdef0123456789abcdef+/=", "characters other than"),
        ("{0b7e2a3c-5d41-4f6a-9c2e-8a1b3c4d5e6f}", "characters other than"),
    ] {
        let owner = post(&app, key, "a text anyone can read in the list").await;
        let problem = assert_problem(owner, StatusCode::BAD_REQUEST).await;
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains("Idempotency-Key") && detail.contains(why), "{key}: {detail}");
        // Whoever guesses the key and reads the text in the list gets no edit token.
        let stranger = post(&app, key, "a text anyone can read in the list").await;
        let problem = assert_problem(stranger, StatusCode::BAD_REQUEST).await;
        assert!(problem.get("edit_token").is_none(), "{key}");
    }
    let page: Value = app.get("/api/messages").await.json().await.unwrap();
    assert_eq!(page["items"], json!([]), "nothing was created with a guessable key");
}

async fn uuids_and_long_random_keys_are_accepted_and_replayed(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for key in [
        fresh_key(),
        fresh_key().to_uppercase(),
        uuid::Uuid::new_v4().simple().to_string(),
        "hpX1xD_3mQe9-ZrT0uV7wK2yB5nL8sA4cF6gJ".to_owned(),
    ] {
        let first = post(&app, &key, &format!("with {key}")).await;
        assert_eq!(first.status(), StatusCode::CREATED, "{key}");
        let first: Value = first.json().await.unwrap();
        let again = post(&app, &key, &format!("with {key}")).await;
        assert_eq!(again.headers()["idempotent-replayed"], "true", "{key}");
        assert_eq!(again.json::<Value>().await.unwrap(), first, "{key}");
    }
}

/// The IETF draft's answer to a key reused with other content is kept: 422. It tells only
/// that the key was used for something else; which message, and with which text, it keeps.
async fn a_key_reused_for_another_text_is_refused_without_details(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let key = fresh_key();
    let created: Value = post(&app, &key, "the first text").await.json().await.unwrap();
    let problem =
        assert_problem(post(&app, &key, "another text").await, StatusCode::UNPROCESSABLE_ENTITY)
            .await;
    assert_eq!(problem["type"], "/problems/idempotency-key-reused");
    let said = problem.to_string();
    let id = created["id"].to_string();
    assert!(!said.contains("the first text") && !said.contains(&format!(" {id}")), "{said}");
}
