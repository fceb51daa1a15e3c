//! The timed writes: `POST /api/messages`, spaced evenly.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper::{Request, StatusCode};
use serde::Deserialize;

use crate::http::{Body, Connection};

pub struct Write {
    /// When the request was handed to the socket.
    pub sent: Instant,
    /// When its answer's head arrived.
    pub answered: Instant,
    /// The created message's id; `None` when the answer was not a 201.
    pub message_id: Option<i64>,
}

#[derive(Deserialize)]
struct Created {
    id: i64,
}

/// Makes `count` writes at `rate` per second, each on a connection of its own. The
/// schedule does not wait for answers (an open loop): a slow answer delays only its own
/// write, and the rate stays what was asked for.
pub async fn write_spaced(target: SocketAddr, count: usize, rate: f64) -> Vec<Write> {
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    let mut tasks = Vec::with_capacity(count);
    for n in 1..=count {
        ticks.tick().await;
        tasks.push(tokio::spawn(write_one(target, n, count)));
    }
    let mut writes = Vec::with_capacity(count);
    for task in tasks {
        writes.push(task.await.expect("a write never panics"));
    }
    writes
}

async fn write_one(target: SocketAddr, n: usize, count: usize) -> Write {
    let failed = |sent| Write { sent, answered: Instant::now(), message_id: None };
    let Ok(mut connection) = Connection::open(target).await else {
        return failed(Instant::now());
    };
    let body = format!(r#"{{"message":"Fan-out benchmark write {n} of {count}."}}"#);
    let request = Request::post("/api/messages")
        .header(hyper::header::HOST, target.to_string())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .expect("a valid request");
    let sent = Instant::now();
    let Ok(response) = connection.sender.send_request(request).await else {
        return failed(sent);
    };
    let answered = Instant::now();
    let created = response.status() == StatusCode::CREATED;
    let body = response.into_body().collect().await.ok().map(|b| b.to_bytes());
    let id =
        body.filter(|_| created).and_then(|bytes| serde_json::from_slice::<Created>(&bytes).ok());
    Write { sent, answered, message_id: id.map(|c| c.id) }
}
