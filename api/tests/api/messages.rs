//! The HTTP contract of /api/messages and /submit, on both backends.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use serde_json::{Value, json};

use crate::idempotency::fresh_key;
use crate::support::{Backend, TestApp, assert_problem, both_backends};

both_backends!(
    create_returns_201_with_location_and_edit_token,
    create_trims_the_text,
    create_rejects_blank_message,
    create_accepts_exactly_the_limit_and_rejects_one_more,
    create_rejects_unknown_fields_and_wrong_types,
    create_rejects_wrong_content_type,
    create_rejects_malformed_json,
    create_rejects_oversized_body,
    create_rejects_nul_bytes,
    unicode_round_trips_exactly,
    list_is_newest_first_and_pages_without_duplicates_or_gaps,
    list_rejects_bad_limit_and_cursor,
    get_returns_the_message_or_404_or_400,
    patch_with_edit_token_updates_text_and_moves_updated_at,
    patch_and_delete_require_the_right_token,
    the_token_is_checked_before_the_body,
    delete_with_edit_token_removes_the_message,
    admin_token_may_edit_and_delete_any_message,
    idempotent_retry_returns_the_original_response,
    idempotency_key_reused_with_another_body_is_rejected,
    concurrent_creates_get_distinct_ids_and_none_is_lost,
    concurrent_retries_with_one_key_create_one_message,
    submit_form_creates_a_message_like_the_flask_app,
    sql_and_markup_are_stored_as_plain_text,
);

const ADMIN: &str = "an admin secret for the tests, 32+ characters";

async fn create_returns_201_with_location_and_edit_token(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let response = app.post_json("/api/messages", &json!({"message": "Hello"})).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let body: Value = response.json().await.unwrap();
    let id = body["id"].as_i64().unwrap();
    assert_eq!(location, format!("/api/messages/{id}"));
    assert_eq!(body["message"], "Hello");
    assert_eq!(body["created_at"], body["updated_at"]);
    assert!(body["created_at"].as_str().unwrap().ends_with('Z'));
    assert!(body["edit_token"].as_str().unwrap().len() >= 22, "≥ 128 bits of token");

    let fetched: Value = app.get(&location).await.json().await.unwrap();
    assert_eq!(fetched["message"], "Hello");
    assert_eq!(fetched["created_at"], body["created_at"]);
    assert!(fetched.get("edit_token").is_none(), "the token is returned only on create");
}

async fn create_trims_the_text(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let body = app.create("  \n spaced out \t ").await;
    assert_eq!(body["message"], "spaced out");
}

async fn create_rejects_blank_message(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for blank in ["", "   ", "\n\t "] {
        let response = app.post_json("/api/messages", &json!({"message": blank})).await;
        let problem = assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(problem["errors"]["message"], "must not be empty");
    }
    assert_eq!(list(&app, "").await["items"], json!([]), "nothing was stored");
}

async fn create_accepts_exactly_the_limit_and_rejects_one_more(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let at_limit = "é".repeat(1000);
    assert_eq!(app.create(&at_limit).await["message"], at_limit.as_str());
    let over = "🙂".repeat(1001);
    let response = app.post_json("/api/messages", &json!({"message": over})).await;
    let problem = assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert!(problem["errors"]["message"].as_str().unwrap().contains("at most 1000"), "{problem}");
    let huge = "x".repeat(10_000);
    let response = app.post_json("/api/messages", &json!({"message": huge})).await;
    assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
}

async fn create_rejects_unknown_fields_and_wrong_types(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let response = app.post_json("/api/messages", &json!({"message": "hi", "admin": true})).await;
    let problem = assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(problem["errors"], json!({"admin": "is not a known field"}));

    let response = app.post_json("/api/messages", &json!({"message": 42})).await;
    let problem = assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(problem["errors"]["message"], "must be a string");

    let response = app.post_json("/api/messages", &json!({})).await;
    let problem = assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(problem["errors"]["message"], "is required");

    let response = app.post_json("/api/messages", &json!(["hi"])).await;
    assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(list(&app, "").await["items"], json!([]));
}

async fn create_rejects_wrong_content_type(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for content_type in [None, Some("text/plain"), Some("application/x-www-form-urlencoded")] {
        let mut request = app.client.post(app.url("/api/messages")).body(r#"{"message":"hi"}"#);
        if let Some(content_type) = content_type {
            request = request.header(CONTENT_TYPE, content_type);
        }
        assert_problem(request.send().await.unwrap(), StatusCode::UNSUPPORTED_MEDIA_TYPE).await;
    }
}

async fn create_rejects_malformed_json(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    // The last: invalid UTF-8 in the value of an unknown field is malformed, not unknown.
    let bodies: [&[u8]; 5] =
        [br#"{"message": "#, b"{'message': 'hi'}", b"\xff\xfe{}", b"", b"{\"m\":\"\xff\xfe\"}"];
    for body in bodies {
        let response = app
            .client
            .post(app.url("/api/messages"))
            .header(CONTENT_TYPE, "application/json")
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        assert_problem(response, StatusCode::BAD_REQUEST).await;
    }
}

async fn create_rejects_oversized_body(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let body = json!({"message": "x".repeat(70_000)});
    let response = app.post_json("/api/messages", &body).await;
    assert_problem(response, StatusCode::PAYLOAD_TOO_LARGE).await;
}

async fn create_rejects_nul_bytes(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let response = app.post_json("/api/messages", &json!({"message": "nul\u{0}byte"})).await;
    let problem = assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert!(problem["errors"]["message"].as_str().unwrap().contains("control characters"));
}

async fn unicode_round_trips_exactly(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let samples = [
        "emoji 🙂🚀 and a family 👨‍👩‍👧‍👦 and a flag 🇺🇦",
        "CJK 漢字かなカナ 한국어",
        "combining e\u{301} vs precomposed é, a\u{30a}",
        "RTL שלום مرحبا",
        "math 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 and astral 𠜎",
        "line one\nline two\r\nline three\ttabbed",
    ];
    for text in samples {
        let created = app.create(text).await;
        assert_eq!(created["message"], text);
        let id = created["id"].as_i64().unwrap();
        let fetched: Value = app.get(&format!("/api/messages/{id}")).await.json().await.unwrap();
        assert_eq!(fetched["message"], text, "read back exactly");
    }
    let listed = list(&app, "?limit=100").await;
    let texts: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["message"].as_str().unwrap())
        .collect();
    let mut expected: Vec<&str> = samples.to_vec();
    expected.reverse();
    assert_eq!(texts, expected);
}

async fn list_is_newest_first_and_pages_without_duplicates_or_gaps(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let mut created = Vec::new();
    for i in 0..45 {
        created.push(app.create(&format!("message {i}")).await["id"].as_i64().unwrap());
    }
    let mut seen = Vec::new();
    let mut query = "?limit=20".to_owned();
    let mut pages = 0;
    loop {
        let page = list(&app, &query).await;
        pages += 1;
        seen.extend(page["items"].as_array().unwrap().iter().map(|m| m["id"].as_i64().unwrap()));
        match page["next_cursor"].as_str() {
            Some(cursor) => query = format!("?limit=20&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    created.reverse();
    assert_eq!(seen, created, "every message once, newest first");

    let default_page = list(&app, "").await;
    assert_eq!(default_page["items"].as_array().unwrap().len(), 20, "default limit is 20");
}

async fn list_rejects_bad_limit_and_cursor(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for query in
        ["?limit=0", "?limit=101", "?limit=-1", "?limit=abc", "?limit=1.5", "?limit=99999999999"]
    {
        assert_problem(app.get(&format!("/api/messages{query}")).await, StatusCode::BAD_REQUEST)
            .await;
    }
    for cursor in ["garbage", "MTI", "djE6LTE", "%00", "djE6MTI0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NA"] {
        let response = app.get(&format!("/api/messages?cursor={cursor}")).await;
        let problem = assert_problem(response, StatusCode::BAD_REQUEST).await;
        assert!(problem["detail"].as_str().unwrap().contains("cursor"), "{problem}");
    }
    assert_eq!(list(&app, "?limit=100").await["items"], json!([]));
}

async fn get_returns_the_message_or_404_or_400(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let id = app.create("find me").await["id"].as_i64().unwrap();
    let found: Value = app.get(&format!("/api/messages/{id}")).await.json().await.unwrap();
    assert_eq!(found["id"], id);
    assert_problem(app.get(&format!("/api/messages/{}", id + 1000)).await, StatusCode::NOT_FOUND)
        .await;
    for bad in ["0", "-1", "abc", "1.5", "99999999999999999999", "%20"] {
        assert_problem(app.get(&format!("/api/messages/{bad}")).await, StatusCode::BAD_REQUEST)
            .await;
    }
}

async fn patch_with_edit_token_updates_text_and_moves_updated_at(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let created = app.create("first draft").await;
    let id = created["id"].as_i64().unwrap();
    let token = created["edit_token"].as_str().unwrap();
    let response = app.patch(id, Some(token), &json!({"message": "  final  "})).await;
    assert_eq!(response.status(), StatusCode::OK);
    let updated: Value = response.json().await.unwrap();
    assert_eq!(updated["message"], "final");
    assert_eq!(updated["created_at"], created["created_at"]);
    assert!(updated["updated_at"].as_str().unwrap() > created["updated_at"].as_str().unwrap());
    let fetched: Value = app.get(&format!("/api/messages/{id}")).await.json().await.unwrap();
    assert_eq!(fetched, updated);

    let response = app.patch(id, Some(token), &json!({"message": " "})).await;
    assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
    let response = app.patch(id, Some(token), &json!({"message": "x", "id": 7})).await;
    assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
    let fetched: Value = app.get(&format!("/api/messages/{id}")).await.json().await.unwrap();
    assert_eq!(fetched["message"], "final", "failed edits change nothing");
}

async fn patch_and_delete_require_the_right_token(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let mine = app.create("mine").await;
    let theirs = app.create("theirs").await;
    let id = mine["id"].as_i64().unwrap();
    let body = json!({"message": "hijacked"});

    let response = app.patch(id, None, &body).await;
    assert!(response.headers()["www-authenticate"].to_str().unwrap().starts_with("Bearer"));
    assert_problem(response, StatusCode::UNAUTHORIZED).await;
    let response = app
        .client
        .patch(app.url(&format!("/api/messages/{id}")))
        .header(AUTHORIZATION, "Basic Zm9vOmJhcg==")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_problem(response, StatusCode::UNAUTHORIZED).await;

    let wrong = theirs["edit_token"].as_str().unwrap();
    assert_problem(app.patch(id, Some(wrong), &body).await, StatusCode::FORBIDDEN).await;
    assert_problem(app.patch(id, Some("not-a-token"), &body).await, StatusCode::FORBIDDEN).await;
    assert_problem(app.delete(id, Some(wrong)).await, StatusCode::FORBIDDEN).await;
    assert_problem(app.delete(id, None).await, StatusCode::UNAUTHORIZED).await;
    let token = mine["edit_token"].as_str().unwrap();
    assert_problem(app.patch(999_999, Some(token), &body).await, StatusCode::NOT_FOUND).await;
    assert_problem(app.delete(999_999, Some(token)).await, StatusCode::NOT_FOUND).await;
    assert_problem(app.delete(0, Some(token)).await, StatusCode::BAD_REQUEST).await;

    let fetched: Value = app.get(&format!("/api/messages/{id}")).await.json().await.unwrap();
    assert_eq!(fetched["message"], "mine", "nothing changed");
}

/// Whoever may not change a message learns nothing about what the body should be: a
/// missing token is a 401 and a wrong one a 403 whatever the body, and only the token's
/// holder is told what is wrong with it.
async fn the_token_is_checked_before_the_body(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let mine = app.create("mine").await;
    let theirs = app.create("theirs").await;
    let id = mine["id"].as_i64().unwrap();
    let patch = |token: Option<&str>, content_type: &str, body: &str| {
        let mut request = app
            .client
            .patch(app.url(&format!("/api/messages/{id}")))
            .header(CONTENT_TYPE, content_type)
            .body(body.to_owned());
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    let bad_bodies = [
        ("application/json", r#"{"message": "#),
        ("text/plain", "hijacked"),
        ("application/json", r#"{"message": "x", "admin": true}"#),
        ("application/json", r#"{"message": "   "}"#),
        ("application/json", &format!(r#"{{"message": "{}"}}"#, "x".repeat(1001))),
    ];
    let wrong = theirs["edit_token"].as_str().unwrap();
    for (content_type, body) in bad_bodies {
        let response = patch(None, content_type, body).await.unwrap();
        assert_problem(response, StatusCode::UNAUTHORIZED).await;
        let response = patch(Some(wrong), content_type, body).await.unwrap();
        assert_problem(response, StatusCode::FORBIDDEN).await;
    }
    let token = mine["edit_token"].as_str().unwrap();
    let response = patch(Some(token), "application/json", r#"{"message": "#).await.unwrap();
    assert_problem(response, StatusCode::BAD_REQUEST).await;
    let response = patch(Some(token), "text/plain", "edited").await.unwrap();
    assert_problem(response, StatusCode::UNSUPPORTED_MEDIA_TYPE).await;
    let fetched: Value = app.get(&format!("/api/messages/{id}")).await.json().await.unwrap();
    assert_eq!(fetched["message"], "mine", "nothing changed");
}

async fn delete_with_edit_token_removes_the_message(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let created = app.create("short-lived").await;
    let id = created["id"].as_i64().unwrap();
    let token = created["edit_token"].as_str().unwrap();
    let response = app.delete(id, Some(token)).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_problem(app.get(&format!("/api/messages/{id}")).await, StatusCode::NOT_FOUND).await;
    assert_problem(app.delete(id, Some(token)).await, StatusCode::NOT_FOUND).await;
    let next = app.create("after").await["id"].as_i64().unwrap();
    assert!(next > id, "ids are not reused");
}

async fn admin_token_may_edit_and_delete_any_message(backend: Backend) {
    let app = TestApp::spawn_with(backend, &["--admin-token", ADMIN]).await;
    let id = app.create("moderate me").await["id"].as_i64().unwrap();
    let response = app.patch(id, Some(ADMIN), &json!({"message": "moderated"})).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(app.delete(id, Some(ADMIN)).await.status(), StatusCode::NO_CONTENT);
    assert_problem(app.delete(id, Some(ADMIN)).await, StatusCode::NOT_FOUND).await;
}

async fn idempotent_retry_returns_the_original_response(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let key = fresh_key();
    let send = || {
        app.client
            .post(app.url("/api/messages"))
            .header("Idempotency-Key", &key)
            .json(&json!({"message": "exactly once"}))
            .send()
    };
    let first = send().await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value = first.json().await.unwrap();
    let second = send().await.unwrap();
    assert_eq!(second.status(), StatusCode::CREATED);
    assert_eq!(second.headers()["idempotent-replayed"], "true");
    let second: Value = second.json().await.unwrap();
    assert_eq!(first, second, "the original response, edit token included");
    assert_eq!(list(&app, "").await["items"].as_array().unwrap().len(), 1);

    let id = first["id"].as_i64().unwrap();
    let token = second["edit_token"].as_str().unwrap();
    assert_eq!(
        app.patch(id, Some(token), &json!({"message": "edited"})).await.status(),
        StatusCode::OK
    );

    for bad_key in ["", "with space", "tab\there", &"k".repeat(256)] {
        let response = app
            .client
            .post(app.url("/api/messages"))
            .header("Idempotency-Key", bad_key)
            .json(&json!({"message": "x"}))
            .send()
            .await
            .unwrap();
        assert_problem(response, StatusCode::BAD_REQUEST).await;
    }
}

async fn idempotency_key_reused_with_another_body_is_rejected(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let key = fresh_key();
    let post = |text: &'static str| {
        app.client
            .post(app.url("/api/messages"))
            .header("Idempotency-Key", &key)
            .json(&json!({ "message": text }))
            .send()
    };
    assert_eq!(post("one").await.unwrap().status(), StatusCode::CREATED);
    let problem =
        assert_problem(post("two").await.unwrap(), StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(problem["type"], "/problems/idempotency-key-reused");
    assert_eq!(list(&app, "").await["items"].as_array().unwrap().len(), 1);
}

/// 60 creates at once overload the pool on purpose: some wait past the pool's limit and are
/// answered 503 with Retry-After. They retry as a client should, with their Idempotency-Key,
/// so each message is created exactly once whatever the machine's speed.
async fn concurrent_creates_get_distinct_ids_and_none_is_lost(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let requests = (0..60).map(|i| {
        let app = &app;
        async move {
            let key = fresh_key();
            let body = json!({ "message": format!("parallel {i}") });
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let response = app
                    .client
                    .post(app.url("/api/messages"))
                    .header("Idempotency-Key", &key)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                if response.status() == StatusCode::SERVICE_UNAVAILABLE && Instant::now() < deadline
                {
                    let wait: u64 =
                        response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
                    tokio::time::sleep(Duration::from_secs(wait)).await;
                    continue;
                }
                assert_eq!(response.status(), StatusCode::CREATED, "create {body}");
                break response.json::<Value>().await.unwrap()["id"].as_i64().unwrap();
            }
        }
    });
    let ids: HashSet<i64> = futures_util::future::join_all(requests).await.into_iter().collect();
    assert_eq!(ids.len(), 60, "distinct ids");
    let listed = list(&app, "?limit=100").await;
    let stored: HashSet<i64> =
        listed["items"].as_array().unwrap().iter().map(|m| m["id"].as_i64().unwrap()).collect();
    assert_eq!(stored, ids, "every acknowledged create is stored");
}

async fn concurrent_retries_with_one_key_create_one_message(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let key = fresh_key();
    let requests = (0..10).map(|_| {
        app.client
            .post(app.url("/api/messages"))
            .header("Idempotency-Key", &key)
            .json(&json!({"message": "only once"}))
            .send()
    });
    let responses = futures_util::future::join_all(requests).await;
    let mut ids = HashSet::new();
    for response in responses {
        let response = response.unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        ids.insert(response.json::<Value>().await.unwrap()["id"].as_i64().unwrap());
    }
    assert_eq!(ids.len(), 1);
    assert_eq!(list(&app, "").await["items"].as_array().unwrap().len(), 1);
}

async fn submit_form_creates_a_message_like_the_flask_app(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let response = app
        .client
        .post(app.url("/submit"))
        .form(&[("new_message", " from a form ")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.json::<Value>().await.unwrap(), json!({"message": "from a form"}));
    assert_eq!(list(&app, "").await["items"][0]["message"], "from a form");

    let response =
        app.client.post(app.url("/submit")).form(&[("new_message", "  ")]).send().await.unwrap();
    let problem = assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(problem["errors"]["new_message"], "must not be empty");
    let response =
        app.client.post(app.url("/submit")).form(&[("other", "x")]).send().await.unwrap();
    assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
    let response = app.post_json("/submit", &json!({"new_message": "json"})).await;
    assert_problem(response, StatusCode::UNSUPPORTED_MEDIA_TYPE).await;
    assert_eq!(list(&app, "").await["items"].as_array().unwrap().len(), 1);
}

async fn sql_and_markup_are_stored_as_plain_text(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for text in [
        "'; DROP TABLE messages; --",
        "\" OR 1=1 --",
        "\\'\\\"%_ backslashes and wildcards",
        "<img src=x onerror=alert(1)>",
        "<script>alert('x')</script>",
    ] {
        let id = app.create(text).await["id"].as_i64().unwrap();
        let fetched: Value = app.get(&format!("/api/messages/{id}")).await.json().await.unwrap();
        assert_eq!(fetched["message"], text);
    }
    assert_eq!(list(&app, "").await["items"].as_array().unwrap().len(), 5);
}

async fn list(app: &TestApp, query: &str) -> Value {
    let response = app.get(&format!("/api/messages{query}")).await;
    assert_eq!(response.status(), StatusCode::OK, "list {query}");
    response.json().await.unwrap()
}
