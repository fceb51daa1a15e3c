//! HTTP handlers, one file per resource, and the extractors they share.

pub mod authorization;
pub mod compat;
pub mod health;
pub mod messages;
pub mod meta;
pub mod stream;

use std::error::Error as _;

use axum::extract::rejection::{FormRejection, JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts};
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use crate::db::Db;
use crate::error::ApiError;
use crate::live::EventHub;
use crate::service::Messages;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    /// The messages' workflows: create (shared with the form route), update, delete.
    pub messages: Messages,
    pub limits: Limits,
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

/// `axum::extract::Path` whose rejections are problem documents.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

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
        let JsonRejection::JsonDataError(data) = &r else {
            return rejection(r.status(), r.body_text());
        };
        // Well-formed JSON of the wrong shape: name the field, as a form would.
        let mut source = data.source();
        while let Some(error) = source {
            if let Some(error) =
                error.downcast_ref::<serde_path_to_error::Error<serde_json::Error>>()
            {
                let (field, problem) =
                    field_problem(&error.path().to_string(), &error.inner().to_string());
                return ApiError::invalid(&field, problem);
            }
            source = error.source();
        }
        rejection(r.status(), r.body_text())
    }
}

/// The field a JSON body fails on and what is wrong with it, in this API's words, from
/// serde's standard messages ("missing field `x`", "invalid type: …, expected …").
fn field_problem(path: &str, message: &str) -> (String, String) {
    let message = message.rsplit_once(" at line ").map_or(message, |(message, _)| message);
    let quoted = message.split('`').nth(1).map(str::to_owned);
    match quoted {
        Some(field) if message.starts_with("unknown field") => {
            (field, "is not a known field".into())
        }
        Some(field) if message.starts_with("missing field") => (field, "is required".into()),
        _ if path == "." => ("body".into(), "must be a JSON object".into()),
        _ => match message.split_once(", expected ") {
            Some((_, expected)) => (path.to_owned(), format!("must be {expected}")),
            None => (path.to_owned(), message.to_owned()),
        },
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

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        use axum::extract::path::ErrorKind;
        // Every path parameter of this API is a message id.
        let not_an_id =
            |key: &str, value: &str| format!("{key} must be a positive integer, got {value:?}");
        match &r {
            PathRejection::FailedToDeserializePathParams(error) => match error.kind() {
                ErrorKind::ParseErrorAtKey { key, value, .. } => {
                    ApiError::BadRequest(not_an_id(key, value))
                }
                ErrorKind::ParseError { value, .. } => ApiError::BadRequest(not_an_id("id", value)),
                _ => ApiError::BadRequest(r.body_text()),
            },
            _ => ApiError::Internal(anyhow::anyhow!("path parameters missing: {}", r.body_text())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::field_problem;

    fn problem(path: &str, message: &str) -> (String, String) {
        field_problem(path, message)
    }

    #[test]
    fn serde_messages_become_field_problems() {
        let own = |field: &str, text: &str| (field.to_owned(), text.to_owned());
        assert_eq!(
            problem(".", "unknown field `admin`, expected `message` at line 1 column 24"),
            own("admin", "is not a known field")
        );
        assert_eq!(
            problem(".", "missing field `message` at line 1 column 2"),
            own("message", "is required")
        );
        assert_eq!(
            problem("message", "invalid type: integer `42`, expected a string at line 1 column 14"),
            own("message", "must be a string")
        );
        assert_eq!(
            problem(".", "invalid type: sequence, expected struct MessageInput at line 1 column 0"),
            own("body", "must be a JSON object")
        );
    }
}
