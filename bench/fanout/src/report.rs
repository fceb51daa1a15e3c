//! The run's figures, from the writes and every subscriber's log of events.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::time::Instant;

use serde::Serialize;

use crate::Args;
use crate::subscriber::{Counters, Kind, Seen};
use crate::writer::Write;

#[derive(Serialize)]
pub struct Report {
    subscribers: usize,
    /// Subscribers that received `ready`, and how long until the last of them did.
    ready: usize,
    ready_seconds: f64,
    writes: usize,
    writes_per_second: f64,
    /// From the first write's start to the last one's answer.
    writes_seconds: f64,
    /// Writes answered 201 with a message id: the ones whose delivery is timed.
    writes_created: usize,
    /// Delivery of each write's `created` event, from the arrival of the write's 201 at
    /// this client: at its first, median and last subscriber, as percentiles over the
    /// writes. Negative when the event arrived before the answer.
    latency_ms: Spread,
    /// The same from the moment the write was sent.
    latency_from_send_ms: Spread,
    /// The write's own round trip (sent to 201).
    write_ms: Percentiles,
    errors: Errors,
    /// New stream requests after a subscriber's first.
    reconnects: usize,
    /// `reset` events (the server could not replay what a subscriber missed).
    resets: usize,
    /// (write, subscriber) pairs where the subscriber never received the write's `created`.
    dropped: usize,
    /// Events a subscriber received more than once (same type and message id).
    duplicated: usize,
    /// Change events of messages this run did not write.
    unexpected: usize,
}

#[derive(Serialize)]
struct Spread {
    first: Percentiles,
    median: Percentiles,
    last: Percentiles,
}

#[derive(Serialize, Default)]
struct Percentiles {
    p50: f64,
    p99: f64,
    max: f64,
}

#[derive(Serialize)]
struct Errors {
    connect: usize,
    status: usize,
    stream: usize,
    write: usize,
}

impl Report {
    pub fn build(
        args: &Args,
        ready_seconds: f64,
        writes_seconds: f64,
        writes: &[Write],
        logs: &[Vec<Seen>],
        counters: &Counters,
    ) -> Self {
        let index: HashMap<i64, usize> =
            writes.iter().enumerate().filter_map(|(n, w)| Some((w.message_id?, n))).collect();
        let mut arrivals: Vec<Vec<Instant>> = vec![Vec::new(); writes.len()];
        let (mut duplicated, mut unexpected) = (0, 0);
        for log in logs {
            let mut distinct = HashSet::with_capacity(log.len());
            for seen in log {
                if !distinct.insert((seen.kind, seen.message_id)) {
                    duplicated += 1;
                    continue;
                }
                match index.get(&seen.message_id) {
                    Some(&n) if seen.kind == Kind::Created => arrivals[n].push(seen.at),
                    _ => unexpected += 1,
                }
            }
        }

        let mut from_answer = [Vec::new(), Vec::new(), Vec::new()];
        let mut from_send = [Vec::new(), Vec::new(), Vec::new()];
        let mut write_ms = Vec::new();
        let mut dropped = 0;
        for (write, at) in writes.iter().zip(&mut arrivals) {
            if write.message_id.is_none() {
                continue;
            }
            write_ms.push(millis(write.answered, write.sent));
            dropped += args.subscribers.saturating_sub(at.len());
            if at.is_empty() {
                continue;
            }
            at.sort_unstable();
            let picks = [at[0], at[(at.len() - 1) / 2], at[at.len() - 1]];
            for (slot, pick) in picks.into_iter().enumerate() {
                from_answer[slot].push(millis(pick, write.answered));
                from_send[slot].push(millis(pick, write.sent));
            }
        }
        let spread = |[first, median, last]: [Vec<f64>; 3]| Spread {
            first: Percentiles::of(first),
            median: Percentiles::of(median),
            last: Percentiles::of(last),
        };
        let writes_created = index.len();
        Self {
            subscribers: args.subscribers,
            ready: counters.ready.load(Ordering::Relaxed),
            ready_seconds: round(ready_seconds),
            writes: writes.len(),
            writes_per_second: args.rate,
            writes_seconds: round(writes_seconds),
            writes_created,
            latency_ms: spread(from_answer),
            latency_from_send_ms: spread(from_send),
            write_ms: Percentiles::of(write_ms),
            errors: Errors {
                connect: counters.connect_errors.load(Ordering::Relaxed),
                status: counters.status_errors.load(Ordering::Relaxed),
                stream: counters.stream_errors.load(Ordering::Relaxed),
                write: writes.len() - writes_created,
            },
            reconnects: counters.reconnects.load(Ordering::Relaxed),
            resets: counters.resets.load(Ordering::Relaxed),
            dropped,
            duplicated,
            unexpected,
        }
    }

    pub fn summary(&self) -> String {
        let mut out = String::new();
        let e = &self.errors;
        let _ = writeln!(
            out,
            "{} subscribers, {} ready in {:.1} s; {} writes at {}/s in {:.1} s, {} answered 201",
            self.subscribers,
            self.ready,
            self.ready_seconds,
            self.writes,
            self.writes_per_second,
            self.writes_seconds,
            self.writes_created
        );
        let _ = writeln!(out, "delivery after the write's 201 (ms)   p50      p99      max");
        for (label, p) in [
            ("first subscriber", &self.latency_ms.first),
            ("median subscriber", &self.latency_ms.median),
            ("last subscriber", &self.latency_ms.last),
        ] {
            let _ = writeln!(out, "  {label:<34} {:>8.1} {:>8.1} {:>8.1}", p.p50, p.p99, p.max);
        }
        let _ = writeln!(
            out,
            "write round trip p50 {:.1} ms, p99 {:.1} ms",
            self.write_ms.p50, self.write_ms.p99
        );
        let _ = writeln!(
            out,
            "dropped {}, duplicated {}, unexpected {}; errors: connect {}, status {}, \
             stream {}, write {}; reconnects {}, resets {}",
            self.dropped,
            self.duplicated,
            self.unexpected,
            e.connect,
            e.status,
            e.stream,
            e.write,
            self.reconnects,
            self.resets
        );
        out
    }
}

impl Percentiles {
    /// Nearest-rank percentiles: with at most a few hundred writes, exact values are cheap.
    fn of(mut values: Vec<f64>) -> Self {
        if values.is_empty() {
            return Self::default();
        }
        values.sort_unstable_by(f64::total_cmp);
        let rank = |p: f64| {
            let n = values.len();
            values[((p / 100.0 * n as f64).ceil() as usize).clamp(1, n) - 1]
        };
        Self {
            p50: round(rank(50.0)),
            p99: round(rank(99.0)),
            max: round(values[values.len() - 1]),
        }
    }
}

/// Milliseconds from `from` to `to`, negative when `to` came first.
fn millis(to: Instant, from: Instant) -> f64 {
    match to.checked_duration_since(from) {
        Some(d) => d.as_secs_f64() * 1e3,
        None => -(from - to).as_secs_f64() * 1e3,
    }
}

fn round(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}
