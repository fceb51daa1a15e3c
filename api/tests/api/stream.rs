//! The live stream: events in order, resume after a reconnect, fan-out across replicas.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;

use messages_api::position::Position;

use crate::support::{Backend, SseEvent, SseReader, TestApp, assert_problem, both_backends};

const WAIT: Duration = Duration::from_secs(5);

both_backends!(
    stream_announces_creates_edits_and_deletes_in_order,
    stream_resumes_after_a_reconnect_without_loss,
    stream_ends_when_the_server_shuts_down,
    a_change_that_commits_after_a_higher_one_reaches_every_stream,
    stream_with_an_id_step_of_three_delivers_each_change_once,
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
    let created_seq: i64 = event.id.unwrap().parse().expect("in order: a plain number");

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

/// Logs an edit of `message_id` under the sequence number `seq` directly, as a transaction
/// that was given that number and commits now would.
fn log_edit(app: &TestApp, seq: i64, message_id: i64) {
    app.db.execute(&format!(
        "INSERT INTO message_events (seq, kind, message_id, created_at) \
         VALUES ({seq}, 'updated', {message_id}, CURRENT_TIMESTAMP)"
    ));
    // The watcher polls on its own; reading the list does not wake it.
}

/// The `(seq, message id)` the event's position and data name.
fn edit_of(event: &SseEvent) -> (String, i64) {
    assert_eq!(event.event, "updated", "{event:?}");
    (event.id.clone().unwrap(), event.json()["id"].as_i64().unwrap())
}

/// Event N+1 commits before event N, around the opening of a stream and a resume: every
/// stream gets N, once.
async fn a_change_that_commits_after_a_higher_one_reaches_every_stream(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (a, b) = (app.create("a").await, app.create("b").await);
    let (a, b) = (a["id"].as_i64().unwrap(), b["id"].as_i64().unwrap());
    let mut early = SseReader::open(&app, None).await;
    assert_eq!(early.next(WAIT).await.unwrap().id.as_deref(), Some("2"));

    // Event 4 commits while 3 is still in flight.
    log_edit(&app, 4, b);
    assert_eq!(edit_of(&early.next(WAIT).await.unwrap()), ("2.2".into(), b));
    let mut late = SseReader::open(&app, None).await;
    let ready = late.next(WAIT).await.unwrap();
    assert_eq!((ready.event.as_str(), ready.id.as_deref()), ("ready", Some("2.2")));

    // Then 3 commits: both streams get it, although a higher number came first.
    log_edit(&app, 3, a);
    assert_eq!(edit_of(&early.next(WAIT).await.unwrap()), ("4".into(), a));
    assert_eq!(edit_of(&late.next(WAIT).await.unwrap()), ("4".into(), a));

    // A client that had 4 but not 3 resumes: it gets 3 alone, then what is new.
    let mut resumed = SseReader::open(&app, Some("2.2")).await;
    assert_eq!(edit_of(&resumed.next(WAIT).await.unwrap()), ("4".into(), a));
    let c = app.create("c").await;
    let event = resumed.next(WAIT).await.unwrap();
    assert_eq!((event.event.as_str(), event.json()["id"].clone()), ("created", c["id"].clone()));
    assert_eq!(event.id.as_deref(), Some("5"));
    let event = early.next(WAIT).await.unwrap();
    assert_eq!(event.json()["id"], c["id"], "nothing repeated on the live streams");
    assert_eq!(event.id.as_deref(), Some("5"));
}

/// A Galera cluster of three numbers its events 1, 4, 7…: the gaps never fill. Each change
/// is streamed at once (its position lists it above the gaps) and exactly once, and a
/// resume replays exactly the missed ones.
async fn stream_with_an_id_step_of_three_delivers_each_change_once(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let message = app.create("stepped").await["id"].as_i64().unwrap();
    let mut stream = SseReader::open(&app, None).await;
    assert_eq!(stream.next(WAIT).await.unwrap().id.as_deref(), Some("1"));
    let mut last_id = String::new();
    for (i, seq) in [4, 7, 10].into_iter().enumerate() {
        log_edit(&app, seq, message);
        let (id, edited) = edit_of(&stream.next(WAIT).await.unwrap());
        assert_eq!(edited, message);
        // Streamed before the gaps were given up on: the position lists it above them.
        assert_eq!(id, ["1.3", "1.3x2", "1.3x3"][i]);
        last_id = id;
    }
    drop(stream);

    for seq in [13, 16] {
        log_edit(&app, seq, message);
    }
    let mut resumed = SseReader::open(&app, Some(&last_id)).await;
    assert_eq!(resumed.next(WAIT).await.unwrap().id.as_deref(), Some("1.3x4"));
    assert_eq!(resumed.next(WAIT).await.unwrap().id.as_deref(), Some("1.3x5"));
    // Nothing else is replayed, and the next change comes once, live.
    log_edit(&app, 19, message);
    let next = resumed.next(WAIT).await.unwrap();
    assert_eq!(edit_of(&next).1, message);
    assert!(Position::parse(next.id.as_deref().unwrap()).unwrap().contains(19));
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
