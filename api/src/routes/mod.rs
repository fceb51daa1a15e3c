//! HTTP handlers, one file per resource, and the extractors they share.

pub mod compat;
pub mod health;
pub mod messages;
pub mod meta;
pub mod stream;

use std::sync::Arc;

use axum::extract::rejection::{FormRejection, JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts};
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use crate::db::Db;
use crate::error::ApiError;
use crate::events::EventHub;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub limits: Limits,
    /// SHA-256 of the admin token, when one is configured.
    pub admin_token_hash: Option<Arc<Vec<u8>>>,
    /// Live change events for the stream.
    pub events: EventHub,
    /// Turns true when the server starts shutting down.
    pub stopping: tokio::sync::watch::Receiver<bool>,
}

/// The limits clients must respect, as configured.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct Limits {
    /// Longest accepted message, in Unicode scalar values (after trimming).
    #[schema(example = 1000)]
    pub max_message_chars: u32,
    /// Largest accepted request body, in bytes.
    #[schema(example = 65536)]
    pub max_body_bytes: usize,
}

/// `axum::Json` whose rejections are problem documents.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

/// `axum::Form` whose rejections are problem documents.
#[derive(FromRequest)]
#[from_request(via(axum::Form), rejection(ApiError))]
pub struct ApiForm<T>(pub T);

/// `axum::extract::Query` whose rejections are problem documents.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// Maps a body or query rejection to the matching problem, keeping axum's explanation.
fn rejection(status: StatusCode, text: String) -> ApiError {
    match status {
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType(text),
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(text),
        StatusCode::UNPROCESSABLE_ENTITY => ApiError::Validation {
            detail: text.clone(),
            errors: [("body".to_owned(), text)].into(),
        },
        _ => ApiError::BadRequest(text),
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        rejection(r.status(), r.body_text())
    }
}

impl From<FormRejection> for ApiError {
    fn from(r: FormRejection) -> Self {
        rejection(r.status(), r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::BadRequest(r.body_text())
    }
}
