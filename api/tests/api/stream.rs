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
    last_event_ids_at_the_edge_of_the_numbers_are_answered_not_crashed_on,
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
    let created_at = position_of(&event);

    let token = created["edit_token"].as_str().unwrap();
    let response = app.patch(id, Some(token), &json!({"message": "edited"})).await;
    assert_eq!(response.status(), StatusCode::OK);
    let event = stream.next(WAIT).await.unwrap();
    assert_eq!(event.event, "updated");
    assert_eq!(event.json()["message"], "edited");
    let updated_at = position_of(&event);
    assert!(
        updated_at.highest() > created_at.highest() && updated_at.contains(created_at.highest())
    );

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

/// Counts and numbers that overflow, or sit at the very top of the sequence numbers: a
/// refusal or a reset, never a panic (a 500 in a debug build; in a release build without
/// overflow checks, a loop that filled the memory).
async fn last_event_ids_at_the_edge_of_the_numbers_are_answered_not_crashed_on(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.create("something to resume after").await;
    let open = |id: &'static str| {
        app.client.get(app.url("/api/messages/stream")).header("Last-Event-ID", id).send()
    };
    for refused in [
        "0.1.1x18446744073709551615",
        "0.1x18446744073709551615",
        "0.1x18446744073709551616",
        "9223372036854775807.1",
        "0.9223372036854775807.1",
        "9223372036854775808",
    ] {
        let response = open(refused).await.unwrap();
        let problem = assert_problem(response, StatusCode::BAD_REQUEST).await;
        assert!(problem["detail"].as_str().unwrap().contains("Last-Event-ID"), "{refused}");
    }
    // Well-formed positions this log never reached: the client is told to reload.
    for beyond in ["9223372036854775807", "0.9223372036854775807", "9223372036854775806.1"] {
        let mut stream = SseReader::open(&app, Some(beyond)).await;
        assert_eq!(stream.next(WAIT).await.unwrap().event, "reset", "{beyond}");
    }
}

/// Logs an edit of `message_id` under the sequence number `seq` directly, as a transaction
/// that was given that number and commits now would.
fn log_edit(app: &TestApp, seq: i64, message_id: i64) {
    app.db.execute(&format!(
        "INSERT INTO message_events (seq, kind, message_id, created_at) \
         VALUES ({seq}, 'updated', {message_id}, CURRENT_TIMESTAMP)"
    ));
}

/// The stream position an event carries as its id.
fn position_of(event: &SseEvent) -> Position {
    Position::parse(event.id.as_deref().expect("an id")).expect("a position")
}

/// The position of an edit of `message_id`, which must be the event.
fn edit_of(event: &SseEvent, message_id: i64) -> Position {
    assert_eq!((event.event.as_str(), event.json()["id"].as_i64()), ("updated", Some(message_id)));
    position_of(event)
}

/// Event N+1 commits before event N, around the opening of a stream and a resume: every
/// stream gets N, once. (Numbers are relative to the log's end: on a Galera cluster the
/// API's own writes step by the cluster size.)
async fn a_change_that_commits_after_a_higher_one_reaches_every_stream(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (a, b) = (app.create("a").await, app.create("b").await);
    let (a, b) = (a["id"].as_i64().unwrap(), b["id"].as_i64().unwrap());
    let mut early = SseReader::open(&app, None).await;
    let n = position_of(&early.next(WAIT).await.unwrap()).highest() + 1;

    // Event N+1 commits while N is still in flight.
    log_edit(&app, n + 1, b);
    let had = edit_of(&early.next(WAIT).await.unwrap(), b);
    assert!(had.contains(n + 1) && !had.contains(n), "{had}");
    let mut late = SseReader::open(&app, None).await;
    let ready = late.next(WAIT).await.unwrap();
    assert_eq!((ready.event.as_str(), position_of(&ready)), ("ready", had.clone()));

    // Then N commits: both streams get it, although a higher number came first.
    log_edit(&app, n, a);
    assert!(edit_of(&early.next(WAIT).await.unwrap(), a).contains(n));
    assert!(edit_of(&late.next(WAIT).await.unwrap(), a).contains(n));

    // A client that had N+1 but not N resumes: it gets N alone, then what is new.
    let mut resumed = SseReader::open(&app, Some(&had.to_string())).await;
    let replayed = edit_of(&resumed.next(WAIT).await.unwrap(), a);
    assert!(replayed.contains(n) && replayed.contains(n + 1));
    let c = app.create("c").await;
    let event = resumed.next(WAIT).await.unwrap();
    assert_eq!((event.event.as_str(), event.json()["id"].clone()), ("created", c["id"].clone()));
    let live = early.next(WAIT).await.unwrap();
    assert_eq!(live.json()["id"], c["id"], "nothing repeated on the live streams");
    assert_eq!(live.id, event.id, "both streams are at the same position again");
}

/// A Galera cluster of three numbers its events 1, 4, 7…: the gaps never fill. Each change
/// is streamed at once (its position lists it above the gaps) and exactly once, and a
/// resume replays exactly the missed ones.
async fn stream_with_an_id_step_of_three_delivers_each_change_once(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let message = app.create("stepped").await["id"].as_i64().unwrap();
    let mut stream = SseReader::open(&app, None).await;
    let base = position_of(&stream.next(WAIT).await.unwrap()).highest();
    let seqs: Vec<i64> = (1..=6).map(|i| base + 3 * i).collect();
    let mut last = None;
    for &seq in &seqs[..3] {
        log_edit(&app, seq, message);
        let had = edit_of(&stream.next(WAIT).await.unwrap(), message);
        // Streamed before the gap below it was given up on: the position lists it above.
        assert!(had.contains(seq) && !had.contains(seq - 1), "{had}");
        last = Some(had);
    }
    drop(stream);

    for &seq in &seqs[3..5] {
        log_edit(&app, seq, message);
    }
    let mut resumed = SseReader::open(&app, Some(&last.unwrap().to_string())).await;
    let first = edit_of(&resumed.next(WAIT).await.unwrap(), message);
    assert!(first.contains(seqs[3]) && !first.contains(seqs[4]), "{first}");
    assert!(edit_of(&resumed.next(WAIT).await.unwrap(), message).contains(seqs[4]));
    // Nothing else is replayed, and the next change comes once, live.
    log_edit(&app, seqs[5], message);
    let next = edit_of(&resumed.next(WAIT).await.unwrap(), message);
    assert!(next.contains(seqs[5]));
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
