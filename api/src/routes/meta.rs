//! What the service tells about itself: its limits and its metrics.

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use super::{AppState, Limits};
use crate::telemetry::metrics_handle;

/// The configured limits, so that clients (the web page's character counter) need not
/// repeat them.
#[utoipa::path(
    get,
    path = "/api/limits",
    tag = "meta",
    responses((status = 200, description = "The limits in force", body = Limits))
)]
pub async fn limits(State(state): State<AppState>) -> Json<Limits> {
    Json(state.limits)
}

/// Prometheus text exposition; not part of the public API (nginx does not route it).
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let (max, connections, idle) = state.db.pool_state();
    metrics::gauge!("db_pool_max_connections").set(max);
    metrics::gauge!("db_pool_connections").set(connections);
    metrics::gauge!("db_pool_idle_connections").set(idle);
    metrics::gauge!("db_pool_in_use_connections").set(connections - idle);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], metrics_handle().render())
}
