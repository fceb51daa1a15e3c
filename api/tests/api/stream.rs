//! The live stream: events in order, resume after a reconnect, fan-out across replicas.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;

use crate::support::{Backend, SseReader, TestApp, assert_problem, both_backends};

const WAIT: Duration = Duration::from_secs(5);

both_backends!(
    stream_announces_creates_edits_and_deletes_in_order,
    stream_resumes_after_a_reconnect_without_loss,
    stream_ends_when_the_server_shuts_down,
);

async fn stream_announces_creates_edits_and_deletes_in_order(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.create("before the stream").await;
    let mut stream = SseReader::open(&app, None).await;
    let ready = stream.next(WAIT).await.unwrap();
    assert_eq!(ready.event, "ready");

    let created = app.create("live 🙂").await;
    let id = created["id"].as_i64().unwrap();
    let event = stream.next(WAIT).await.unwrap();
    assert_eq!(event.event, "created");
    assert_eq!(
        event.json(),
        json!({"id": id, "message": "live 🙂", "created_at": created["created_at"], "updated_at": created["updated_at"]})
    );
    let created_seq: i64 = event.id.unwrap().parse().unwrap();

    let token = created["edit_token"].as_str().unwrap();
    let response = app.patch(id, Some(token), &json!({"message": "edited"})).await;
    assert_eq!(response.status(), StatusCode::OK);
    let event = stream.next(WAIT).await.unwrap();
    assert_eq!(event.event, "updated");
    assert_eq!(event.json()["message"], "edited");
    let updated_seq: i64 = event.id.unwrap().parse().unwrap();
    assert!(updated_seq > created_seq);

    let response = app.delete(id, Some(token)).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let event = stream.next(WAIT).await.unwrap();
    assert_eq!(event.event, "deleted");
    assert_eq!(event.json(), json!({"id": id}));
}

async fn stream_resumes_after_a_reconnect_without_loss(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let mut stream = SseReader::open(&app, None).await;
    app.create("seen live").await;
    let seen = stream.next(WAIT).await.unwrap();
    let seen = if seen.event == "ready" { stream.next(WAIT).await.unwrap() } else { seen };
    assert_eq!(seen.event, "created");
    drop(stream);

    let missed: Vec<i64> = {
        let mut ids = Vec::new();
        for i in 0..3 {
            ids.push(app.create(&format!("missed {i}")).await["id"].as_i64().unwrap());
        }
        ids
    };
    let mut resumed = SseReader::open(&app, seen.id.as_deref()).await;
    for id in missed {
        let event = resumed.next(WAIT).await.unwrap();
        assert_eq!((event.event.as_str(), event.json()["id"].as_i64()), ("created", Some(id)));
    }
    let after = app.create("after the resume").await;
    let event = resumed.next(WAIT).await.unwrap();
    assert_eq!(event.json()["id"], after["id"], "live again, with nothing repeated");

    let mut too_old = SseReader::open(&app, Some("999999")).await;
    assert_eq!(too_old.next(WAIT).await.unwrap().event, "reset");
    let response = app
        .client
        .get(app.url("/api/messages/stream"))
        .header("Last-Event-ID", "abc")
        .send()
        .await
        .unwrap();
    assert_problem(response, StatusCode::BAD_REQUEST).await;
}

async fn stream_ends_when_the_server_shuts_down(backend: Backend) {
    let mut app = TestApp::spawn(backend).await;
    let mut stream = SseReader::open(&app, None).await;
    assert_eq!(stream.next(WAIT).await.unwrap().event, "ready");
    let started = Instant::now();
    app.stop_handle()();
    assert_eq!(stream.next(WAIT).await, None, "the stream ends");
    let server = app.take_server();
    tokio::time::timeout(WAIT, server).await.expect("server ends").unwrap().unwrap();
    assert!(started.elapsed() < WAIT, "open streams do not hold the shutdown up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_through_one_replica_reaches_streams_on_another() {
    let first = TestApp::spawn(Backend::Mysql).await;
    let second = first.replica().await;

    let mut on_second = SseReader::open(&second, None).await;
    assert_eq!(on_second.next(WAIT).await.unwrap().event, "ready");
    let created = first.create("posted through replica one").await;
    let event = on_second.next(WAIT).await.unwrap();
    assert_eq!(event.event, "created");
    assert_eq!(event.json()["id"], created["id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_sends_heartbeats() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let mut stream = SseReader::open(&app, None).await;
    assert_eq!(stream.next(WAIT).await.unwrap().event, "ready");
    assert!(stream.heartbeat(Duration::from_secs(12)).await, "a heartbeat within 12 s");
}
