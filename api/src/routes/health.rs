//! Health endpoints for load balancers, container health checks and people.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "healthy")]
    pub status: &'static str,
    #[schema(example = "connected")]
    pub database: &'static str,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Liveness {
    #[schema(example = "alive")]
    pub status: &'static str,
}

/// Readiness: healthy when the database answers now.
#[utoipa::path(
    get,
    path = "/health",
    tag = "health",
    responses(
        (status = 200, description = "The service and its database work", body = Health,
         example = json!({"status": "healthy", "database": "connected"})),
        (status = 503, description = "The database does not answer", body = Health,
         example = json!({"status": "unhealthy", "database": "disconnected"})),
    )
)]
pub async fn health(State(state): State<AppState>) -> impl IntoResponse {
    let (status, body) = if state.db.is_ready() && state.db.ping().await {
        (StatusCode::OK, Health { status: "healthy", database: "connected" })
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Health { status: "unhealthy", database: "disconnected" })
    };
    (status, [(header::CACHE_CONTROL, "no-store")], Json(body))
}

/// Liveness: the process serves requests.
#[utoipa::path(
    get,
    path = "/health/live",
    tag = "health",
    responses((status = 200, description = "The process serves requests", body = Liveness))
)]
pub async fn live() -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "no-store")], Json(Liveness { status: "alive" }))
}
