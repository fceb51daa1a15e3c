//! The one API error type. Every failure leaves the service as an RFC 9457 problem document
//! (`application/problem+json`); 5xx details never carry internals, whose cause chain goes
//! to the log together with the request id.

use std::collections::BTreeMap;

use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::db::DbError;
use crate::domain::DomainError;
use crate::service::ServiceError;
use crate::telemetry::current_request_id;

pub const PROBLEM_JSON: &str = "application/problem+json";

/// Seconds a client should wait before retrying a 503.
const RETRY_AFTER_SECS: &str = "1";

/// An RFC 9457 problem document.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({
    "type": "/problems/validation-error",
    "title": "Unprocessable Content",
    "status": 422,
    "detail": "The message is invalid.",
    "request_id": "4f1c2a9e-6a43-4b59-a3c4-2a1f0b8c9d10",
    "errors": {"message": "must not be empty"}
}))]
pub struct Problem {
    /// A URI reference naming the kind of problem.
    #[serde(rename = "type")]
    pub kind: String,
    /// The HTTP reason phrase of `status`.
    pub title: String,
    pub status: u16,
    /// What went wrong, for people.
    pub detail: String,
    /// The request's `x-request-id`, also found in the logs.
    pub request_id: String,
    /// Field name → what is wrong with it (validation failures only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<BTreeMap<String, String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{detail}")]
    Validation { detail: String, errors: BTreeMap<String, String> },
    #[error("{0}")]
    IdempotencyKeyReused(String),
    #[error("{0}")]
    ReplayUnavailable(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    Unavailable(String),
    /// The time limit passed, or the connection failed, while a change was being committed.
    #[error("{0}")]
    OutcomeUnknown(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    /// A validation failure of one field.
    pub fn invalid(field: &str, message: impl ToString) -> Self {
        let message = message.to_string();
        Self::Validation {
            detail: format!("{field} {message}"),
            errors: BTreeMap::from([(field.to_owned(), message)]),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Validation { .. } | Self::IdempotencyKeyReused(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::ReplayUnavailable(_) => StatusCode::CONFLICT,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::OutcomeUnknown(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::Validation { .. } => "/problems/validation-error",
            Self::IdempotencyKeyReused(_) => "/problems/idempotency-key-reused",
            Self::ReplayUnavailable(_) => "/problems/idempotent-replay-unavailable",
            Self::OutcomeUnknown(_) => "/problems/outcome-unknown",
            _ => problem_type(self.status()),
        }
    }
}

/// The problem type URI of a plain HTTP status.
pub fn problem_type(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "/problems/bad-request",
        StatusCode::UNAUTHORIZED => "/problems/unauthorized",
        StatusCode::FORBIDDEN => "/problems/forbidden",
        StatusCode::NOT_FOUND => "/problems/not-found",
        StatusCode::METHOD_NOT_ALLOWED => "/problems/method-not-allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "/problems/payload-too-large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "/problems/unsupported-media-type",
        StatusCode::UNPROCESSABLE_ENTITY => "/problems/validation-error",
        StatusCode::SERVICE_UNAVAILABLE => "/problems/service-unavailable",
        s if s.is_server_error() => "/problems/internal-error",
        _ => "about:blank",
    }
}

/// Renders a problem document for `status` with the current request's id.
pub fn problem_response(
    status: StatusCode,
    kind: &str,
    detail: String,
    errors: Option<BTreeMap<String, String>>,
) -> Response {
    let problem = Problem {
        kind: kind.to_owned(),
        title: status.canonical_reason().unwrap_or("Error").to_owned(),
        status: status.as_u16(),
        detail,
        request_id: current_request_id(),
        errors,
    };
    let mut response = (status, axum::Json(problem)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    if status == StatusCode::SERVICE_UNAVAILABLE {
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECS));
    }
    if status == StatusCode::UNAUTHORIZED {
        headers.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Bearer realm="messages""#),
        );
    }
    response
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let kind = self.kind();
        match self {
            Self::Validation { detail, errors } => {
                problem_response(status, kind, detail, Some(errors))
            }
            Self::Internal(error) => {
                tracing::error!(error = format!("{error:#}"), "request failed");
                problem_response(status, kind, "An unexpected error occurred.".into(), None)
            }
            Self::Unavailable(detail) => {
                tracing::warn!(detail, "service unavailable");
                problem_response(status, kind, detail, None)
            }
            Self::OutcomeUnknown(detail) => {
                tracing::warn!(detail, "the outcome of a commit is unknown");
                problem_response(status, kind, detail, None)
            }
            other => problem_response(status, kind, other.to_string(), None),
        }
    }
}

impl From<DbError> for ApiError {
    fn from(error: DbError) -> Self {
        match error {
            DbError::Unavailable(detail)
            | DbError::Busy(detail)
            | DbError::WriteConflict(detail) => Self::Unavailable(detail),
            // Only a request that stopped waiting abandons work; nobody reads this answer.
            DbError::Abandoned => Self::Unavailable(error.to_string()),
            DbError::OutcomeUnknown => Self::OutcomeUnknown(error.to_string()),
            DbError::Other(error) => Self::Internal(error),
        }
    }
}

impl From<DomainError> for ApiError {
    fn from(error: DomainError) -> Self {
        match error {
            DomainError::SealBroken | DomainError::WeakSealingSecret => {
                Self::Internal(error.into())
            }
            other => Self::BadRequest(other.to_string()),
        }
    }
}

impl From<ServiceError> for ApiError {
    fn from(error: ServiceError) -> Self {
        match error {
            ServiceError::IdempotencyKeyReused => Self::IdempotencyKeyReused(error.to_string()),
            ServiceError::ReplayUnavailable { .. } | ServiceError::SealBroken { .. } => {
                Self::ReplayUnavailable(error.to_string())
            }
            ServiceError::NotFound(_) => Self::NotFound(error.to_string()),
            ServiceError::Forbidden => Self::Forbidden(error.to_string()),
            ServiceError::Db(error) => error.into(),
        }
    }
}

/// Turns every error response that is not JSON yet (axum's 405, tower-http's 413, a caught
/// panic) into a problem document. Runs inside the request id's scope.
pub async fn render_bare_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) || is_json(&response) {
        return response;
    }
    let detail = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "The request body is larger than the server accepts.",
        StatusCode::METHOD_NOT_ALLOWED => "This method is not allowed on this resource.",
        StatusCode::INTERNAL_SERVER_ERROR => "An unexpected error occurred.",
        other => other.canonical_reason().unwrap_or("Error"),
    };
    let mut problem = problem_response(status, problem_type(status), detail.to_owned(), None);
    if let Some(allow) = response.headers().get(header::ALLOW) {
        problem.headers_mut().insert(header::ALLOW, allow.clone());
    }
    problem
}

fn is_json(response: &Response) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json") || ct.starts_with(PROBLEM_JSON))
}
