//! One stream subscriber: holds `GET /api/messages/stream` open, logs every change event
//! it receives, and reconnects with `Last-Event-ID` when the stream breaks.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use http_body_util::BodyExt;
use hyper::{Request, StatusCode};
use serde::Deserialize;
use tokio::sync::{Semaphore, watch};

use crate::http::{Body, Connection};

/// Counters shared by every subscriber, read while the run goes on.
#[derive(Default)]
pub struct Counters {
    /// Subscribers that have received their first `ready`.
    pub ready: AtomicUsize,
    /// `created` events received, over all subscribers.
    pub created: AtomicUsize,
    /// Connections refused, reset or timed out before the stream began.
    pub connect_errors: AtomicUsize,
    /// Answers other than 200 to the stream request.
    pub status_errors: AtomicUsize,
    /// Streams that broke after they began (a read error or an end before the run's).
    pub stream_errors: AtomicUsize,
    /// New stream requests after the first, for any of the reasons above.
    pub reconnects: AtomicUsize,
    /// `reset` events: the server could not replay what the subscriber missed.
    pub resets: AtomicUsize,
}

/// A change event as a subscriber saw it: its type, the message's id, when it arrived.
#[derive(Clone, Copy)]
pub struct Seen {
    pub kind: Kind,
    pub message_id: i64,
    pub at: Instant,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Kind {
    Created,
    Updated,
    Deleted,
}

/// The part of an event's data that identifies it: every change event carries the
/// message's id. The SSE `id` is only echoed back on reconnect, never interpreted, so it
/// may be any string.
#[derive(Deserialize)]
struct Identity {
    id: i64,
}

pub struct Subscriber {
    pub target: SocketAddr,
    pub counters: Arc<Counters>,
    pub opening: Arc<Semaphore>,
    pub stop: watch::Receiver<bool>,
}

impl Subscriber {
    /// Runs until the stop signal; returns every change event received.
    pub async fn run(self) -> Vec<Seen> {
        let mut seen = Vec::new();
        let mut last_event_id: Option<String> = None;
        let mut was_ready = false;
        let mut attempt = 0u32;
        let mut stop = self.stop.clone();
        loop {
            if attempt > 0 {
                self.counters.reconnects.fetch_add(1, Ordering::Relaxed);
                // Backs off up to 2 s, so that a failing server is not hammered.
                let pause = Duration::from_millis(100 << attempt.min(4));
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    _ = stop.wait_for(|s| *s) => return seen,
                }
            }
            attempt += 1;
            let session = self.session(&mut seen, &mut last_event_id, &mut was_ready, &mut attempt);
            tokio::select! {
                () = session => {}
                _ = stop.wait_for(|s| *s) => return seen,
            }
            if *self.stop.borrow() {
                return seen;
            }
        }
    }

    /// One stream request, until the stream ends or breaks.
    async fn session(
        &self,
        seen: &mut Vec<Seen>,
        last_event_id: &mut Option<String>,
        was_ready: &mut bool,
        attempt: &mut u32,
    ) {
        // A permit limits how many streams are being opened at once; it is held until the
        // stream's first event, so that the server's accept queue never overflows.
        let mut permit = Some(self.opening.clone().acquire_owned().await.expect("never closed"));
        let mut connection = match Connection::open(self.target).await {
            Ok(connection) => connection,
            Err(_) => {
                self.counters.connect_errors.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        let mut request = Request::get("/api/messages/stream")
            .header(hyper::header::HOST, self.target.to_string())
            .header(hyper::header::ACCEPT, "text/event-stream");
        if let Some(id) = last_event_id.as_deref() {
            request = request.header("last-event-id", id);
        }
        let request = request.body(Body::default()).expect("a valid request");
        let response = match connection.sender.send_request(request).await {
            Ok(response) => response,
            Err(_) => {
                self.counters.connect_errors.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        if response.status() != StatusCode::OK {
            self.counters.status_errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut events = response.into_body().into_data_stream().eventsource();
        while let Some(event) = events.next().await {
            let Ok(event) = event else {
                self.counters.stream_errors.fetch_add(1, Ordering::Relaxed);
                return;
            };
            let at = Instant::now();
            permit.take();
            *attempt = 1;
            if !event.id.is_empty() {
                *last_event_id = Some(event.id);
            }
            let kind = match event.event.as_str() {
                "created" => Kind::Created,
                "updated" => Kind::Updated,
                "deleted" => Kind::Deleted,
                "ready" => {
                    if !*was_ready {
                        *was_ready = true;
                        self.counters.ready.fetch_add(1, Ordering::Relaxed);
                    }
                    continue;
                }
                "reset" => {
                    self.counters.resets.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                _ => continue,
            };
            let Ok(Identity { id }) = serde_json::from_str(&event.data) else {
                self.counters.stream_errors.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            if kind == Kind::Created {
                self.counters.created.fetch_add(1, Ordering::Relaxed);
            }
            seen.push(Seen { kind, message_id: id, at });
        }
        // The server ended the stream while the run still wanted it.
        if !*self.stop.borrow() {
            self.counters.stream_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}
