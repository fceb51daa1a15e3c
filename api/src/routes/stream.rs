//! `GET /api/messages/stream`: changes as Server-Sent Events.

use std::collections::HashSet;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, StreamExt};
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;
use utoipa::ToSchema;

use super::AppState;
use crate::db::events;
use crate::error::{ApiError, Problem};
use crate::events::ChangeEvent;

/// Heartbeats keep proxies and clients from timing out an idle stream.
const HEARTBEAT: Duration = Duration::from_secs(10);
/// The most events replayed to a reconnecting client; further behind, it is told to reload.
const REPLAY_LIMIT: i64 = 1000;
const LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");
const X_ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");

/// One Server-Sent Event of the stream, as its fields.
#[derive(ToSchema)]
#[allow(dead_code)] // Documents the wire format; events are written by axum's `Event`.
pub struct StreamEvent {
    /// `created`, `updated`, `deleted`, `ready` or `reset`.
    #[schema(example = "created")]
    event: String,
    /// The change's sequence number: send it back as `Last-Event-ID` to resume.
    #[schema(example = "42")]
    id: Option<String>,
    /// JSON: the Message for `created`/`updated`, `{"id": N}` for `deleted`, `{"seq": N}` for
    /// `ready`/`reset`.
    #[schema(
        example = r#"{"id":7,"message":"hi","created_at":"2026-01-01T00:00:00.000000Z","updated_at":"2026-01-01T00:00:00.000000Z"}"#
    )]
    data: String,
}

/// Streams changes to messages as Server-Sent Events.
///
/// Events: `created` and `updated` carry the Message, `deleted` carries `{"id": N}`; each has
/// the change's sequence number as its `id`. A new stream starts with `ready` (its `id` is
/// the current position). Reconnecting with `Last-Event-ID` replays what was missed; when
/// that is no longer possible the stream starts with `reset`, and the client should reload
/// the list. A `:heartbeat` comment comes every 10 seconds.
#[utoipa::path(
    get,
    path = "/api/messages/stream",
    tag = "messages",
    params(("Last-Event-ID" = Option<i64>, Header, description = "The id of the last event received", minimum = 0)),
    responses(
        (status = 200, description = "An endless stream of events", content_type = "text/event-stream", body = StreamEvent),
        (status = 400, description = "Malformed Last-Event-ID", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn stream_messages(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let last_seen = match headers.get(LAST_EVENT_ID) {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<i64>().ok())
                .filter(|v| *v >= 0)
                .ok_or_else(|| {
                    ApiError::BadRequest("Last-Event-ID must be an event id of this stream".into())
                })?,
        ),
    };
    // Subscribe before reading the log, so nothing falls between the two.
    let live = state.events.subscribe();
    let (first, last) = state.db.run(events::bounds).await?;
    let head = last.unwrap_or(0);
    // Live events at or below `start` were replayed already, or predate the stream.
    let (first_events, start, replayed): (Vec<Event>, i64, HashSet<i64>) = match last_seen {
        None => (vec![marker("ready", head)], head, HashSet::new()),
        Some(seen) if seen == head => (Vec::new(), seen, HashSet::new()),
        Some(seen)
            if seen < head
                && head - seen <= REPLAY_LIMIT
                && first.is_some_and(|f| f <= seen + 1) =>
        {
            let rows = state.db.run(move |conn| events::since(conn, seen, REPLAY_LIMIT)).await?;
            let missed: Vec<ChangeEvent> =
                rows.into_iter().filter_map(ChangeEvent::from_row).collect();
            (missed.iter().map(sse_event).collect(), seen, missed.iter().map(|e| e.seq).collect())
        }
        // Too far back to replay: the client must reload.
        Some(_) => (vec![marker("reset", head)], head, HashSet::new()),
    };
    let live = stream::unfold((live, replayed), move |(mut live, replayed)| async move {
        loop {
            match live.recv().await {
                Ok(event) if event.seq > start && !replayed.contains(&event.seq) => {
                    return Some((sse_event(&event), (live, replayed)));
                }
                Ok(_) => {}
                // This reader fell too far behind: it must reload.
                Err(RecvError::Lagged(_)) => {
                    return Some((Event::default().event("reset").data("{}"), (live, replayed)));
                }
                Err(RecvError::Closed) => return None,
            }
        }
    });
    // Streams end when the server shuts down, so that they do not hold the shutdown up.
    let mut stopping = state.stopping.clone();
    let events =
        stream::iter(first_events).chain(live).map(Ok::<_, Infallible>).take_until(async move {
            let _ = stopping.wait_for(|stopping| *stopping).await;
        });
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(HEARTBEAT).text("heartbeat"))
        .into_response();
    // Tells nginx not to buffer the stream even where the proxy config forgets to.
    response.headers_mut().insert(X_ACCEL_BUFFERING, HeaderValue::from_static("no"));
    Ok(response)
}

fn marker(kind: &str, head: i64) -> Event {
    Event::default().event(kind).id(head.to_string()).data(json!({ "seq": head }).to_string())
}

fn sse_event(event: &ChangeEvent) -> Event {
    Event::default().event(event.kind.as_str()).id(event.seq.to_string()).data(&event.data)
}
