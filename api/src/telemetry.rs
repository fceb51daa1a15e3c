//! Logging, metrics and the request id that ties a response to its log lines.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderMap, HeaderName};
use axum::middleware::Next;
use axum::response::Response;
use metrics::Unit;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;
use crate::db::{DbError, ERRORS_METRIC};
use crate::live::{SUBSCRIBERS, WATCHER_LAG, WATCHER_LAST_SUCCESS};

pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

tokio::task_local! {
    static REQUEST_ID: String;
}

/// The id of the request being served, or "-" outside of one.
pub fn current_request_id() -> String {
    REQUEST_ID.try_with(Clone::clone).unwrap_or_else(|_| "-".to_owned())
}

pub fn init_logging(format: LogFormat, filter: &str) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(filter)?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).try_init(),
        LogFormat::Pretty => builder.try_init(),
    }
    .map_err(|e| anyhow::anyhow!("cannot initialise logging: {e}"))
}

const LATENCY_BUCKETS: &[f64] =
    &[0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The process-wide Prometheus recorder (one per process, shared by every app instance).
pub fn metrics_handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let handle = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .expect("buckets are not empty")
            .install_recorder()
            .expect("no other metrics recorder is installed");
        describe_metrics();
        handle
    })
}

pub const IDEMPOTENT_REPLAYS: &str = "messages_idempotent_replays_total";

/// Describes the metrics the alerts and the dashboard rely on, and starts their series at 0
/// so that they exist before the first event (`rate()` needs a sample before it).
fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge};
    describe_gauge!(SUBSCRIBERS, "Open live-stream (SSE) connections.");
    metrics::gauge!(SUBSCRIBERS).increment(0.0);
    describe_gauge!(
        WATCHER_LAST_SUCCESS,
        Unit::Seconds,
        "Unix time of the change-log watcher's last successful poll."
    );
    describe_gauge!(
        WATCHER_LAG,
        Unit::Seconds,
        "At the watcher's last successful poll: how long ago the newest change it delivered \
         was logged (by the writing replica's clock), or 0 if it found nothing new."
    );
    describe_counter!(
        IDEMPOTENT_REPLAYS,
        "Creates answered from an earlier request with the same Idempotency-Key. Only \
         /api/messages takes the header (the form route /submit cannot replay)."
    );
    metrics::counter!(IDEMPOTENT_REPLAYS, "route" => "/api/messages").absolute(0);
    describe_counter!(
        ERRORS_METRIC,
        "Failed database calls by kind: unavailable, timeout, write_conflict, constraint, \
         not_found or other."
    );
    for kind in DbError::KINDS {
        metrics::counter!(ERRORS_METRIC, "kind" => kind).absolute(0);
    }
}

/// How often recorded histogram samples are folded into their buckets.
const METRICS_UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Folds histogram samples into buckets now and then: without it the recorder keeps every
/// sample until the next scrape, and memory grows with traffic when nobody scrapes.
pub async fn metrics_upkeep() {
    let mut interval = tokio::time::interval(METRICS_UPKEEP_INTERVAL);
    loop {
        interval.tick().await;
        metrics_handle().run_upkeep();
    }
}

/// Runs the request with its id in scope, for its log lines and its problem documents.
pub async fn request_context(request: Request, next: Next) -> Response {
    let id = request_id(request.headers());
    REQUEST_ID.scope(id, next.run(request)).await
}

fn request_id(headers: &HeaderMap) -> String {
    headers.get(&REQUEST_ID_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("-").to_owned()
}

/// Counts every answer by method, route and status, and records its latency: requests that
/// match no route as `unmatched`.
pub async fn track_metrics(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().to_string();
    let response = next.run(request).await;
    let labels =
        [("method", method), ("route", route), ("status", response.status().as_u16().to_string())];
    metrics::counter!("http_requests_total", &labels).increment(1);
    metrics::histogram!("http_request_duration_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
    response
}
