//! The app tier of the two-tier message board.

pub mod config;
pub mod db;
pub mod deadline;
pub mod domain;
pub mod error;
pub mod live;
pub mod openapi;
pub mod position;
pub mod routes;
pub mod server;
pub mod service;
pub mod telemetry;
pub mod views;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::middleware;
use axum::routing::get;
use secrecy::ExposeSecret;
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::compression::CompressionLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::services::ServeDir;
use tower_http::trace::{DefaultOnFailure, DefaultOnResponse, TraceLayer};
use tracing::Level;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use utoipa_swagger_ui::SwaggerUi;

use crate::config::{SealingSecret, Settings};
use crate::db::Db;
use crate::domain::TokenSealer;
use crate::error::ApiError;
use crate::live::EventHub;
use crate::routes::{AppState, Limits, compat, health, messages, meta, stream};
use crate::service::Messages;
use crate::telemetry::REQUEST_ID_HEADER;

/// How often expired idempotency keys and change events are purged.
const PURGE_INTERVAL: Duration = Duration::from_secs(3600);

/// Every documented route, with the document its annotations build.
fn api_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(messages::list_messages, messages::create_message))
        .routes(routes!(messages::get_message, messages::update_message, messages::delete_message))
        .routes(routes!(stream::stream_messages))
        .routes(routes!(compat::submit))
        .routes(routes!(health::health))
        .routes(routes!(health::live))
        .routes(routes!(health::ready))
        .routes(routes!(meta::limits))
}

/// The OpenAPI document, as served at /api/openapi.json.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    api_routes().split_for_parts().1
}

/// Builds the router: the one place routes and layers are wired.
pub fn build_router(state: AppState, settings: &Settings) -> Router {
    let (api, document) = api_routes().split_for_parts();
    let mut router = api
        .route("/metrics", get(meta::metrics))
        .merge(SwaggerUi::new("/api/docs").url("/api/openapi.json", document))
        .with_state(state);
    router = match &settings.web_dir {
        Some(dir) => router.fallback_service(ServeDir::new(dir).fallback(get(not_found))),
        None => router.fallback(not_found),
    };
    with_layers(router, settings)
}

/// The layers every request passes through, outermost first. `Router::layer` wraps each
/// route, so the metrics still see the matched route.
fn with_layers(router: Router, settings: &Settings) -> Router {
    router.layer(
        ServiceBuilder::new()
            // Around the time limit and the panic catcher: their answers are counted too.
            .layer(middleware::from_fn(telemetry::track_metrics))
            .layer(SetRequestIdLayer::new(REQUEST_ID_HEADER, MakeRequestUuid))
            .layer(
                TraceLayer::new_for_http()
                    .make_span_with(|request: &Request| {
                        let id = request.headers().get(REQUEST_ID_HEADER);
                        tracing::info_span!(
                            "request",
                            method = %request.method(),
                            path = %request.uri().path(),
                            request_id = id.and_then(|v| v.to_str().ok()).unwrap_or("-"),
                        )
                    })
                    .on_response(DefaultOnResponse::new().level(Level::INFO))
                    // 5xx are expected during outages; a 500 also logs its cause as an error.
                    .on_failure(DefaultOnFailure::new().level(Level::WARN)),
            )
            .layer(PropagateRequestIdLayer::new(REQUEST_ID_HEADER))
            .layer(middleware::from_fn(telemetry::request_context))
            .layer(middleware::from_fn(error::render_bare_errors))
            .layer(CatchPanicLayer::new())
            .layer(CompressionLayer::new())
            .layer(middleware::from_fn_with_state(settings.request_timeout(), deadline::enforce))
            .layer(RequestBodyLimitLayer::new(settings.max_body_bytes))
            .layer(DefaultBodyLimit::max(settings.max_body_bytes)),
    )
}

async fn not_found() -> ApiError {
    ApiError::NotFound("There is nothing at this address.".into())
}

/// A server bound to its address, ready to run.
pub struct Application {
    listener: TcpListener,
    router: Router,
    db: Db,
    events: EventHub,
    stopping: tokio::sync::watch::Sender<bool>,
    run_migrations: bool,
    grace: Duration,
}

impl Application {
    /// Binds the listener (port 0 picks a free port) and builds the app. Does not need the
    /// database: that is awaited in the background by `run_until`.
    pub async fn build(settings: &Settings) -> anyhow::Result<Self> {
        telemetry::metrics_handle();
        let db = Db::new(&settings.database, settings.db_lock_timeout())?;
        let admin_token_hash =
            settings.admin_token()?.map(|t| Arc::new(domain::hash_token(t.expose_secret())));
        let sealer = token_sealer(settings)?;
        let events = EventHub::default();
        let (stopping, stopping_rx) = tokio::sync::watch::channel(false);
        let state = AppState {
            db: db.clone(),
            messages: Messages { db: db.clone(), events: events.clone(), sealer, admin_token_hash },
            limits: Limits {
                max_message_chars: settings.max_message_chars,
                max_body_bytes: settings.max_body_bytes,
            },
            events: events.clone(),
            stopping: stopping_rx,
        };
        let router = build_router(state, settings);
        let address = SocketAddr::new(settings.host, settings.port);
        let listener = TcpListener::bind(address)
            .await
            .with_context(|| format!("cannot listen on {address}"))?;
        Ok(Self {
            listener,
            router,
            db,
            events,
            stopping,
            run_migrations: settings.database.run_migrations,
            grace: settings.shutdown_grace(),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// Serves until `shutdown` completes, then stops accepting and lets in-flight requests
    /// finish within the grace period.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let db = self.db.clone();
        let run_migrations = self.run_migrations;
        let events = self.events.clone();
        let background = tokio::spawn(async move {
            db.become_ready(run_migrations).await;
            tokio::join!(events.watch(db.clone()), purge_expired(db));
        });
        let upkeep = tokio::spawn(telemetry::metrics_upkeep());
        tracing::info!(address = %self.local_addr(), backend = ?self.db.backend(), "listening");

        let stopping = self.stopping;
        let mut stopped = stopping.subscribe();
        let server = server::serve(self.listener, self.router, async move {
            shutdown.await;
            tracing::info!("shutting down: finishing in-flight requests");
            stopping.send_replace(true);
        });
        let grace = self.grace;
        let deadline = async move {
            let _ = stopped.wait_for(|stopping| *stopping).await;
            tokio::time::sleep(grace).await;
        };
        let result = tokio::select! {
            result = server => result.context("server failed"),
            () = deadline => {
                tracing::warn!(?grace, "grace period over: exiting with requests still in flight");
                Ok(())
            }
        };
        background.abort();
        upkeep.abort();
        result
    }
}

/// The sealer of edit tokens kept for idempotent replay, from the configured secret or, with
/// SQLite, one generated beside the database file.
fn token_sealer(settings: &Settings) -> anyhow::Result<Arc<TokenSealer>> {
    let secret = match settings.token_sealing_secret()? {
        SealingSecret::Configured(secret) | SealingSecret::Generated { secret, .. } => secret,
        SealingSecret::Ephemeral { secret, path, error } => {
            tracing::warn!(
                key_file = %path.display(),
                %error,
                "TOKEN_SEALING_KEY is not set and no key file can be kept: sealing with a key \
                 of this process only; after a restart, replays of earlier creates answer \
                 409. Set TOKEN_SEALING_KEY_FILE"
            );
            secret
        }
    };
    let sealer = TokenSealer::new(secret.expose_secret().as_bytes());
    Ok(Arc::new(sealer.context("TOKEN_SEALING_KEY")?))
}

/// Forgets idempotency keys and change events once they are older than they are needed.
async fn purge_expired(db: Db) {
    let mut interval = tokio::time::interval(PURGE_INTERVAL);
    loop {
        interval.tick().await;
        let purged = db
            .run(|conn| {
                let now = domain::now();
                let keys = db::messages::purge_idempotency_keys(conn, now)?;
                let events = db::events::purge(conn, now - db::events::EVENT_RETENTION)?;
                Ok((keys, events))
            })
            .await;
        match purged {
            Ok((0, 0)) => {}
            Ok((keys, events)) => tracing::info!(keys, events, "purged expired rows"),
            Err(error) => tracing::warn!(%error, "could not purge expired rows"),
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("can listen for SIGTERM");
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use clap::Parser;
    use tower::Service;

    use super::*;

    async fn a_bug() -> &'static str {
        panic!("a bug")
    }

    #[tokio::test]
    async fn a_panic_is_answered_500_and_counted() {
        let metrics = telemetry::metrics_handle();
        let settings = config::Cli::try_parse_from(["messages-api"]).unwrap().settings;
        let panics = Router::new().route("/test/panic", get(a_bug));
        let mut router = with_layers(panics, &settings);
        let request = Request::get("/test/panic").body(Body::empty()).unwrap();
        let response = router.call(request).await.unwrap();
        assert_eq!(response.status(), axum::http::StatusCode::INTERNAL_SERVER_ERROR);
        let exposed = metrics.render();
        let counted = r#"http_requests_total{method="GET",route="/test/panic",status="500"} 1"#;
        assert!(exposed.lines().any(|line| line == counted), "{exposed}");
    }
}
