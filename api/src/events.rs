//! Live change events. Every replica watches the change log table (one indexed range query
//! per poll) and fans new events out in-process to its open streams, so a change made
//! through any replica reaches every stream without a broker.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{NaiveDateTime, Utc};
use serde_json::json;
use tokio::sync::{Notify, broadcast};

use crate::db::Db;
use crate::db::events::{self, EventKind, EventRow};
use crate::views::Message;

/// How often the change log is read when no local write wakes the watcher earlier.
const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// Events read per poll beyond those already seen.
const BATCH: usize = 500;
/// A sequence number that is still missing after this long belongs to a transaction that
/// rolled back (or never commits); later events no longer wait for it.
const GAP_TIMEOUT: Duration = Duration::from_secs(5);
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
}

#[derive(Clone)]
pub struct EventHub {
    sender: broadcast::Sender<Arc<ChangeEvent>>,
    wake: Arc<Notify>,
}

impl Default for EventHub {
    fn default() -> Self {
        Self { sender: broadcast::channel(CHANNEL_CAPACITY).0, wake: Arc::default() }
    }
}

/// A stream's feed of live events; the `SUBSCRIBERS` gauge counts the open ones.
pub struct Subscription(broadcast::Receiver<Arc<ChangeEvent>>);

impl Subscription {
    fn new(receiver: broadcast::Receiver<Arc<ChangeEvent>>) -> Self {
        metrics::gauge!(SUBSCRIBERS).increment(1.0);
        Self(receiver)
    }

    pub async fn recv(&mut self) -> Result<Arc<ChangeEvent>, broadcast::error::RecvError> {
        self.0.recv().await
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        metrics::gauge!(SUBSCRIBERS).decrement(1.0);
    }
}

impl EventHub {
    pub fn subscribe(&self) -> Subscription {
        Subscription::new(self.sender.subscribe())
    }

    /// Reads the change log now: a local write does not wait for the next poll.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Follows the change log from its current end, forever.
    pub async fn watch(self, db: Db) {
        let mut failures = FailureStreak::default();
        let mut cursor = loop {
            match db.run(events::bounds).await {
                Ok((_, last)) => break LogCursor::new(last.unwrap_or(0)),
                Err(error) => {
                    failures.failed(&error);
                    tokio::time::sleep(POLL_INTERVAL).await;
                }
            }
        };
        failures.succeeded();
        // It starts at the log's current end: nothing is waiting to be delivered.
        record_poll(None);
        loop {
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(POLL_INTERVAL) => {}
            }
            let (floor, limit) = (cursor.floor, (cursor.seen.len() + BATCH) as i64);
            match db.run(move |conn| events::since(conn, floor, limit)).await {
                Ok(rows) => {
                    let mut newest = None;
                    for row in rows {
                        if !cursor.first_sight(row.seq) {
                            continue;
                        }
                        newest = newest.max(Some(row.logged_at));
                        if let Some(event) = ChangeEvent::from_row(row) {
                            // No receivers is fine: nobody is streaming right now.
                            let _ = self.sender.send(Arc::new(event));
                        }
                    }
                    cursor.advance();
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

/// Where the watcher stands in the change log. Sequence numbers are allocated when a
/// transaction inserts but become visible when it commits, so they can appear out of
/// order; the floor only moves past a missing one after `GAP_TIMEOUT`.
struct LogCursor {
    /// Every event up to here has been handled.
    floor: i64,
    /// Events above the floor that have been handled.
    seen: BTreeSet<i64>,
    /// Since when the number right above the floor has been missing.
    gap_since: Option<Instant>,
}

impl LogCursor {
    fn new(floor: i64) -> Self {
        Self { floor, seen: BTreeSet::new(), gap_since: None }
    }

    /// True the first time an event is read.
    fn first_sight(&mut self, seq: i64) -> bool {
        seq > self.floor && self.seen.insert(seq)
    }

    fn advance(&mut self) {
        while let Some(&next) = self.seen.first() {
            if next != self.floor + 1 {
                let since = *self.gap_since.get_or_insert_with(Instant::now);
                if since.elapsed() < GAP_TIMEOUT {
                    return;
                }
            }
            self.seen.pop_first();
            self.floor = next;
            self.gap_since = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_waits_at_a_gap_and_counts_each_event_once() {
        let mut cursor = LogCursor::new(10);
        assert!(cursor.first_sight(11));
        assert!(cursor.first_sight(13));
        assert!(!cursor.first_sight(13));
        assert!(!cursor.first_sight(9));
        cursor.advance();
        assert_eq!(cursor.floor, 11, "waits for 12, which may still commit");
        assert!(cursor.first_sight(12));
        cursor.advance();
        assert_eq!(cursor.floor, 13);
        assert!(cursor.seen.is_empty());
    }

    #[test]
    fn cursor_moves_past_a_gap_that_never_fills() {
        let mut cursor = LogCursor::new(0);
        cursor.first_sight(2);
        cursor.advance();
        assert_eq!(cursor.floor, 0);
        cursor.gap_since = Some(Instant::now() - GAP_TIMEOUT);
        cursor.advance();
        assert_eq!(cursor.floor, 2);
    }
}
