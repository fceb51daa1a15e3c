//! The timed writes: `POST /api/messages`, spaced evenly, on one keep-alive connection.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
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

/// Makes `count` writes at `rate` per second; a broken connection is replaced.
pub async fn write_spaced(
    target: SocketAddr,
    count: usize,
    rate: f64,
) -> anyhow::Result<Vec<Write>> {
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut connection = Connection::open(target).await.context("connecting the writer")?;
    let mut writes = Vec::with_capacity(count);
    for n in 1..=count {
        ticks.tick().await;
        if connection.sender.ready().await.is_err() {
            connection = Connection::open(target).await.context("reconnecting the writer")?;
        }
        let body = format!(r#"{{"message":"Fan-out benchmark write {n} of {count}."}}"#);
        let request = Request::post("/api/messages")
            .header(hyper::header::HOST, target.to_string())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Body::from(body))
            .expect("a valid request");
        let sent = Instant::now();
        let (answered, message_id) = match connection.sender.send_request(request).await {
            Ok(response) => {
                let answered = Instant::now();
                let created = response.status() == StatusCode::CREATED;
                let body = response.into_body().collect().await.ok().map(|b| b.to_bytes());
                let id = body
                    .filter(|_| created)
                    .and_then(|bytes| serde_json::from_slice::<Created>(&bytes).ok());
                (answered, id.map(|c| c.id))
            }
            Err(_) => (Instant::now(), None),
        };
        writes.push(Write { sent, answered, message_id });
    }
    Ok(writes)
}
