//! `GET /api/messages/stream`: changes as Server-Sent Events.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use chrono::NaiveDateTime;
use futures_util::stream::{self, StreamExt};
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;
use utoipa::ToSchema;

use super::AppState;
use crate::db::events::{self, EventRow};
use crate::db::{DbConnection, DbError};
use crate::domain::now;
use crate::error::{ApiError, Problem};
use crate::live::{Broadcast, ChangeEvent, Delivery, HEARTBEAT_FRAME, sse_frame};
use crate::position::Position;

/// The most events replayed to a reconnecting client; further behind, it is told to reload.
const REPLAY_LIMIT: i64 = 1000;
/// The longest a new stream waits for the watcher to read the log up to the present.
const CATCH_UP_WAIT: Duration = Duration::from_secs(1);
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
/// Events: `created` and `updated` carry the Message, `deleted` carries `{"id": N}`. Each
/// event's `id` is the stream's position: send it back as `Last-Event-ID` to resume. It is
/// a number while changes commit in order (every change up to it), and otherwise lists the
/// changes had beyond the gap (`41.2.3x2`: up to 41, then 43, 46 and 49); treat it as an
/// opaque token. A new stream starts with `ready` (its `id` is the current position).
/// Reconnecting with `Last-Event-ID` replays exactly what was missed; when that is no longer
/// possible the stream starts with `reset`, and the client should reload the list. A
/// `:heartbeat` comment comes every 10 seconds.
#[utoipa::path(
    get,
    path = "/api/messages/stream",
    tag = "messages",
    params(("Last-Event-ID" = Option<String>, Header, description = "The id of the last event received", pattern = r"^[0-9]+(\.[0-9]+(x[0-9]+)?)*$", example = "41.2.3x2")),
    responses(
        (status = 200, description = "An endless stream of events", content_type = "text/event-stream", body = StreamEvent),
        (status = 400, description = "Malformed Last-Event-ID", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable, or the stream is starting", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn stream_messages(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let claimed = match headers.get(LAST_EVENT_ID) {
        None => None,
        Some(value) => Some(value.to_str().ok().and_then(Position::parse).ok_or_else(|| {
            ApiError::BadRequest("Last-Event-ID must be an event id of this stream".into())
        })?),
    };
    let (live, current) = match claimed {
        // A new stream starts once the watcher has read what the log held when it was
        // asked for: what committed before then is the client's list, not news.
        None => {
            let newest = state.db.run(events::newest).await?;
            state.events.caught_up_with(newest, CATCH_UP_WAIT).await
        }
        // Subscribe before reading the log, so nothing falls between the two.
        Some(_) => state.events.subscribe(),
    }
    .ok_or_else(|| {
        ApiError::Unavailable("The live stream is starting; try again shortly.".into())
    })?;
    let (first_events, position) = match claimed {
        None => (vec![marker("ready", &current)], StreamPosition::Shared(current)),
        Some(claimed) => {
            let from = claimed.clone();
            let replay = state.db.run(move |conn| replay_since(conn, &from, now())).await?;
            match replay {
                Some(rows) => {
                    let mut had = claimed;
                    let mut events = Vec::with_capacity(rows.len());
                    for row in rows {
                        had.insert(row.seq);
                        if let Some(event) = ChangeEvent::from_row(row) {
                            events.push(event.frame(&had.to_string()));
                        }
                    }
                    // Every event sent before the subscription is had now: it was either
                    // claimed or replayed.
                    had.merge(&current);
                    (events, StreamPosition::Own(had))
                }
                // Too far back to replay: the client must reload.
                None => (vec![marker("reset", &current)], StreamPosition::Shared(current)),
            }
        }
    };
    let live = stream::unfold((live, position), |(mut live, mut position)| async move {
        loop {
            let frame = match live.recv().await.as_deref() {
                Ok(Broadcast::Change(delivery)) => match position.deliver(delivery) {
                    Some(frame) => frame,
                    None => continue,
                },
                Ok(Broadcast::Heartbeat) => Bytes::from_static(HEARTBEAT_FRAME),
                // This reader fell too far behind: it must reload.
                Err(RecvError::Lagged(_)) => Bytes::from_static(b"event: reset\ndata: {}\n\n"),
                Err(RecvError::Closed) => return None,
            };
            return Some((frame, (live, position)));
        }
    });
    // Streams end when the server shuts down, so that they do not hold the shutdown up.
    let mut stopping = state.stopping.clone();
    let frames =
        stream::iter(first_events).chain(live).map(Ok::<_, Infallible>).take_until(async move {
            let _ = stopping.wait_for(|stopping| *stopping).await;
        });
    Ok((
        [
            (CONTENT_TYPE, HeaderValue::from_static("text/event-stream")),
            (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            // Tells nginx not to buffer the stream even where the proxy config forgets to.
            (X_ACCEL_BUFFERING, HeaderValue::from_static("no")),
        ],
        Body::from_stream(frames),
    )
        .into_response())
}

/// What a stream has had. Most streams have had exactly what the watcher has sent, and
/// share its positions and their tokens; a resumed one may have had more (events replayed
/// that the watcher sends later, or a position from a replica further on) until the
/// watcher catches up.
enum StreamPosition {
    Shared(Arc<Position>),
    Own(Position),
}

impl StreamPosition {
    /// The frame to send for a live delivery, or `None` if this stream has had it.
    fn deliver(&mut self, delivery: &Delivery) -> Option<Bytes> {
        match self {
            Self::Shared(position) if position.contains(delivery.event.seq) => None,
            // The watcher's positions only grow: its new one covers the old.
            Self::Shared(position) => {
                *position = delivery.position.clone();
                Some(delivery.frame.clone())
            }
            Self::Own(position) if position.contains(delivery.event.seq) => None,
            Self::Own(position) => {
                position.merge(&delivery.position);
                if *position == *delivery.position {
                    *self = Self::Shared(delivery.position.clone());
                    return Some(delivery.frame.clone());
                }
                Some(delivery.event.frame(&position.to_string()))
            }
        }
    }
}

/// The events a client at `claimed` missed, oldest first; `None` when they cannot all be
/// replayed: too many, forgotten already, or a position this log never reached.
fn replay_since(
    conn: &mut DbConnection,
    claimed: &Position,
    now: NaiveDateTime,
) -> Result<Option<Vec<EventRow>>, DbError> {
    let Some(ends) = events::ends(conn)? else {
        return Ok((claimed.highest() == 0).then(Vec::new));
    };
    // The oldest event is kept as the horizon when older ones are purged (`events::purge`).
    let forgotten =
        claimed.floor() < ends.oldest - 1 && ends.oldest_logged_at < now - events::EVENT_RETENTION;
    if forgotten || claimed.highest() > ends.newest {
        return Ok(None);
    }
    let rows = events::since(conn, claimed, REPLAY_LIMIT + 1)?;
    Ok((rows.len() as i64 <= REPLAY_LIMIT).then_some(rows))
}

fn marker(kind: &str, position: &Position) -> Bytes {
    sse_frame(kind, &position.to_string(), &json!({ "seq": position.floor() }).to_string())
}
