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

#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    #[schema(example = "ready")]
    pub status: &'static str,
}

/// Health: healthy when the database answers now.
///
/// For people, compose health checks and the deploy's smoke test; not for taking a replica
/// out of a load balancer (see `/health/ready`).
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

/// Readiness: this replica has started and is not stopping.
///
/// Started means its schema was checked or migrated. It does not ask the database: when the database blips, every replica is
/// equally affected, and one that stays in the load balancer answers 503 with Retry-After
/// instead of leaving clients the proxy's 502.
#[utoipa::path(
    get,
    path = "/health/ready",
    tag = "health",
    responses(
        (status = 200, description = "This replica serves requests", body = Readiness,
         example = json!({"status": "ready"})),
        (status = 503, description = "This replica is starting or stopping", body = Readiness,
         example = json!({"status": "starting"})),
    )
)]
pub async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    let (status, body) = if *state.stopping.borrow() {
        (StatusCode::SERVICE_UNAVAILABLE, Readiness { status: "stopping" })
    } else if !state.db.is_ready() {
        (StatusCode::SERVICE_UNAVAILABLE, Readiness { status: "starting" })
    } else {
        (StatusCode::OK, Readiness { status: "ready" })
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
