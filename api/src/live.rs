//! Live change events. Every replica watches the change log table (one indexed range query
//! per poll) and fans new events out in-process to its open streams, so a change made
//! through any replica reaches every stream without a broker.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{NaiveDateTime, Utc};
use serde_json::json;
use tokio::sync::{Notify, broadcast};

use crate::db::Db;
use crate::db::events::{self, EventKind, EventRow};
use crate::position::{self, Position};
use crate::views::Message;

/// How often the change log is read when no local write wakes the watcher earlier.
const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// Events read per poll.
const BATCH: i64 = 500;
/// A sequence number still missing this long after a higher one was read belongs to a
/// transaction that rolled back (or to another Galera node's numbering, and never comes):
/// the watcher stops waiting for it. A write takes its number in its last statement before
/// the commit, and a connection waits for each answer at most `Db::answer_limit`: a number
/// missing longer than that and this margin will not commit.
const GAP_MARGIN: Duration = Duration::from_secs(2);
/// The newest events a starting watcher reads as had (nobody streamed from it before): a
/// number missing between them may belong to a change still in flight, which is streamed
/// when it commits, as if the watcher had always run.
const START_WINDOW: i64 = BATCH;
/// The most events the watcher keeps above a gap: half of what a token may carry, so that
/// a resumed stream's position (the client's and the watcher's together) fits in one.
const MAX_ABOVE_GAP: usize = position::MAX_ABOVE / 2;
/// Events buffered per stream before a slow reader is told to reload.
const CHANNEL_CAPACITY: usize = 1024;

pub const SUBSCRIBERS: &str = "messages_stream_subscribers";
pub const WATCHER_LAST_SUCCESS: &str = "messages_watcher_last_success_timestamp_seconds";
pub const WATCHER_LAG: &str = "messages_watcher_lag_seconds";

/// One change, ready to be sent as a Server-Sent Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeEvent {
    pub seq: i64,
    pub kind: EventKind,
    /// JSON: the message for `created` and `updated`, `{"id": N}` for `deleted`.
    pub data: String,
}

impl ChangeEvent {
    /// `None` for a create or edit of a message that is gone by now: its `deleted` follows.
    pub fn from_row(row: EventRow) -> Option<Self> {
        let data = match row.kind {
            EventKind::Deleted => json!({ "id": row.message_id }).to_string(),
            EventKind::Created | EventKind::Updated => {
                serde_json::to_string(&Message::from(row.message?)).ok()?
            }
        };
        Some(Self { seq: row.seq, kind: row.kind, data })
    }

    /// The event on the wire, with `id` (a stream position) as its id.
    pub fn frame(&self, id: &str) -> Bytes {
        sse_frame(self.kind.as_str(), id, &self.data)
    }
}

/// A live event as the watcher sends it: with the watcher's position once it is had, and
/// the event serialised once with that position as its id (the frame every stream whose
/// position it is sends as it is).
#[derive(Debug)]
pub struct Delivery {
    pub event: ChangeEvent,
    pub position: Arc<Position>,
    pub frame: Bytes,
}

/// What streams receive: changes, and every `HEARTBEAT` a heartbeat, so that proxies and
/// clients do not time out an idle stream (one clock for all streams, not one per stream).
#[derive(Debug)]
pub enum Broadcast {
    Change(Delivery),
    Heartbeat,
}

/// How often streams get a heartbeat.
pub const HEARTBEAT: Duration = Duration::from_secs(10);
/// The heartbeat as it goes on the wire: an SSE comment.
pub const HEARTBEAT_FRAME: &[u8] = b":heartbeat\n\n";

/// One Server-Sent Event on the wire. `data` is JSON, so it has no line breaks.
pub fn sse_frame(kind: &str, id: &str, data: &str) -> Bytes {
    Bytes::from(format!("event: {kind}\nid: {id}\ndata: {data}\n\n"))
}

#[derive(Clone)]
pub struct EventHub {
    sender: broadcast::Sender<Arc<Broadcast>>,
    wake: Arc<Notify>,
    /// What the watcher has sent, once it knows where the log stands; changed together with
    /// each send, so that a new subscriber's starting point matches its first event.
    position: Arc<Mutex<Option<Arc<Position>>>>,
}

impl Default for EventHub {
    fn default() -> Self {
        Self {
            sender: broadcast::channel(CHANNEL_CAPACITY).0,
            wake: Arc::default(),
            position: Arc::default(),
        }
    }
}

/// A stream's feed of live events; the `SUBSCRIBERS` gauge counts the open ones.
pub struct Subscription(broadcast::Receiver<Arc<Broadcast>>);

impl Subscription {
    fn new(receiver: broadcast::Receiver<Arc<Broadcast>>) -> Self {
        metrics::gauge!(SUBSCRIBERS).increment(1.0);
        Self(receiver)
    }

    pub async fn recv(&mut self) -> Result<Arc<Broadcast>, broadcast::error::RecvError> {
        self.0.recv().await
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        metrics::gauge!(SUBSCRIBERS).decrement(1.0);
    }
}

impl EventHub {
    /// A feed of the events sent from now on, and the position they start from: `None`
    /// until the watcher has read where the log stands.
    pub fn subscribe(&self) -> Option<(Subscription, Arc<Position>)> {
        let position = self.position.lock().expect("hub position");
        let start = position.clone()?;
        Some((Subscription::new(self.sender.subscribe()), start))
    }

    /// Like `subscribe`, once the watcher has had every event up to `newest`, or `within`
    /// has passed.
    pub async fn caught_up_with(
        &self,
        newest: i64,
        within: Duration,
    ) -> Option<(Subscription, Arc<Position>)> {
        let given_up = Instant::now() + within;
        loop {
            let subscribed = self.subscribe();
            let caught_up = subscribed.as_ref().is_some_and(|(_, at)| at.highest() >= newest);
            if caught_up || Instant::now() >= given_up {
                return subscribed;
            }
            drop(subscribed);
            self.wake();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Reads the change log now: a local write does not wait for the next poll.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    fn publish(&self, position: &Position, event: Option<ChangeEvent>) {
        let position = Arc::new(position.clone());
        let mut current = self.position.lock().expect("hub position");
        *current = Some(position.clone());
        if let Some(event) = event {
            let frame = event.frame(&position.to_string());
            // No receivers is fine: nobody is streaming right now.
            let _ =
                self.sender.send(Arc::new(Broadcast::Change(Delivery { event, position, frame })));
        }
    }

    /// Follows the change log from its current end, forever.
    pub async fn watch(self, db: Db) {
        let mut failures = FailureStreak::default();
        let gap_timeout = db.answer_limit() + GAP_MARGIN;
        let mut cursor = loop {
            match db.run(|conn| events::tail(conn, START_WINDOW)).await {
                Ok((below, newest)) => break LogCursor::resume(below, &newest, gap_timeout),
                Err(error) => {
                    failures.failed(&error);
                    tokio::time::sleep(POLL_INTERVAL).await;
                }
            }
        };
        failures.succeeded();
        self.publish(&cursor.position, None);
        // It starts at the log's current end: nothing is waiting to be delivered.
        record_poll(None);
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.reset();
        loop {
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(POLL_INTERVAL) => {}
                _ = heartbeat.tick() => {
                    let _ = self.sender.send(Arc::new(Broadcast::Heartbeat));
                    continue;
                }
            }
            let position = cursor.position.clone();
            match db.run(move |conn| events::since(conn, &position, BATCH)).await {
                Ok(rows) => {
                    let mut newest = None;
                    for row in rows {
                        if !cursor.insert(row.seq) {
                            continue;
                        }
                        newest = newest.max(Some(row.logged_at));
                        let event = ChangeEvent::from_row(row);
                        self.publish(&cursor.position, event);
                    }
                    if cursor.give_up_old_gaps() {
                        self.publish(&cursor.position, None);
                    }
                    failures.succeeded();
                    record_poll(newest);
                }
                Err(error) => failures.failed(&error),
            }
        }
    }
}

/// Records a successful poll (`WATCHER_LAST_SUCCESS`, `WATCHER_LAG`). The lag is how long ago the newest change the poll
/// delivered was logged, and 0 when it found nothing new (the watcher is caught up).
fn record_poll(newest_delivered: Option<NaiveDateTime>) {
    let now = Utc::now();
    metrics::gauge!(WATCHER_LAST_SUCCESS).set(now.timestamp_micros() as f64 / 1e6);
    // Another replica's clock may run ahead of ours: never a negative lag.
    let lag =
        newest_delivered.map_or(0.0, |logged| (now.naive_utc() - logged).as_seconds_f64().max(0.0));
    metrics::gauge!(WATCHER_LAG).set(lag);
}

/// Failed reads of the change log: each is counted (`change_log_read_errors_total`); the
/// first of a run is logged at warn and the recovery at info, so that an outage does not
/// log four lines a second.
#[derive(Default)]
struct FailureStreak(u64);

impl FailureStreak {
    fn failed(&mut self, error: &crate::db::DbError) {
        metrics::counter!("change_log_read_errors_total").increment(1);
        if self.0 == 0 {
            tracing::warn!(%error, "cannot read the change log: live streams stall until it can");
        }
        self.0 += 1;
    }

    fn succeeded(&mut self) {
        if self.0 > 0 {
            tracing::info!(failed_reads = self.0, "the change log is readable again");
            self.0 = 0;
        }
    }
}

/// Where the watcher stands in the change log: the events it has sent, and since when it
/// has had each one above a gap.
struct LogCursor {
    position: Position,
    seen_at: BTreeMap<i64, Instant>,
    /// How long a missing number is waited for.
    gap_timeout: Duration,
}

impl LogCursor {
    /// At `floor`, with the events `had` above it (ascending); numbers missing between them
    /// are waited for from now on.
    fn resume(floor: i64, had: &[i64], gap_timeout: Duration) -> Self {
        let mut cursor =
            Self { position: Position::at(floor), seen_at: BTreeMap::new(), gap_timeout };
        for &seq in had {
            cursor.insert(seq);
        }
        cursor
    }

    /// Takes an event into the position: true the first time it is read.
    fn insert(&mut self, seq: i64) -> bool {
        if !self.position.insert(seq) {
            return false;
        }
        if seq > self.position.floor() {
            self.seen_at.insert(seq, Instant::now());
        }
        // Far more writes than usual above a gap: stop waiting at the oldest gaps early,
        // so that a position stays small enough to travel as a token.
        if let Some(&oldest) = self.position.above().iter().rev().nth(MAX_ABOVE_GAP) {
            self.position.raise_floor(oldest);
        }
        self.forget_below_floor();
        true
    }

    /// Stops waiting for the numbers missing below events read `gap_timeout` ago or
    /// longer; true if the position moved.
    fn give_up_old_gaps(&mut self) -> bool {
        let Some(last_due) = self
            .seen_at
            .iter()
            .rev()
            .find(|(_, seen)| seen.elapsed() >= self.gap_timeout)
            .map(|(&seq, _)| seq)
        else {
            return false;
        };
        self.position.raise_floor(last_due);
        self.forget_below_floor();
        true
    }

    fn forget_below_floor(&mut self) {
        let floor = self.position.floor();
        self.seen_at = self.seen_at.split_off(&(floor + 1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GAP_TIMEOUT: Duration = Duration::from_secs(15);

    #[test]
    fn cursor_sends_each_event_once_in_any_order() {
        let mut cursor = LogCursor::resume(10, &[], GAP_TIMEOUT);
        assert!(cursor.insert(11));
        assert!(cursor.insert(13));
        assert!(!cursor.insert(13));
        assert!(!cursor.insert(9));
        assert_eq!(cursor.position.to_string(), "11.2", "waits for 12, which may still commit");
        assert!(cursor.insert(12), "a late commit is still sent");
        assert_eq!(cursor.position, Position::at(13));
        assert!(cursor.seen_at.is_empty());
    }

    #[test]
    fn cursor_gives_up_gaps_below_events_read_long_ago() {
        let mut cursor = LogCursor::resume(0, &[], GAP_TIMEOUT);
        for seq in [3, 6, 9] {
            cursor.insert(seq);
        }
        assert!(!cursor.give_up_old_gaps(), "nothing is old yet");
        let long_ago = Instant::now() - GAP_TIMEOUT;
        cursor.seen_at.insert(3, long_ago);
        cursor.seen_at.insert(6, long_ago);
        assert!(cursor.give_up_old_gaps());
        assert_eq!(cursor.position.to_string(), "6.3", "each gap has its own clock");
        assert_eq!(cursor.seen_at.keys().copied().collect::<Vec<_>>(), [9]);
        assert!(!cursor.insert(5), "a gap given up on stays given up");
    }

    #[test]
    fn a_resumed_cursor_waits_for_numbers_missing_among_the_newest_events() {
        let mut cursor = LogCursor::resume(40, &[41, 43, 44], GAP_TIMEOUT);
        assert_eq!(cursor.position.highest(), 44);
        assert!(!cursor.insert(43), "events of the log's tail count as had");
        assert!(cursor.insert(42), "a change in flight at the start is sent when it commits");
        assert_eq!(cursor.position, Position::at(44));
    }
}
