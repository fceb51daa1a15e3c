//! The original two-tier-flask-app's form route, kept so its clients keep working.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{ApiForm, AppState};
use crate::domain::MessageText;
use crate::error::{ApiError, Problem};

#[derive(Debug, Deserialize, ToSchema)]
pub struct SubmitForm {
    /// The text to post (trimmed; 1 to MAX_MESSAGE_CHARS characters).
    #[schema(min_length = 1, example = "Hello from a form")]
    pub new_message: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Submitted {
    /// The text as stored (trimmed).
    pub message: String,
}

/// Posts a message from an HTML form (the original Flask app's route).
#[utoipa::path(
    post,
    path = "/submit",
    tag = "compatibility",
    request_body(content = SubmitForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "Created", body = Submitted),
        (status = 400, description = "Malformed form body", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not a form body", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid message", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable or busy, or the time limit passed before anything was saved: nothing changed, retry after Retry-After", body = Problem, content_type = "application/problem+json",
         headers(("Retry-After" = String, description = "Seconds to wait before retrying"))),
        (status = 504, description = "The time limit passed, or the database connection failed, while the message was being committed: it may or may not exist (problem type /problems/outcome-unknown)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn submit(
    State(state): State<AppState>,
    ApiForm(form): ApiForm<SubmitForm>,
) -> Result<Json<Submitted>, ApiError> {
    let text = MessageText::parse(&form.new_message, state.limits.max_message_chars)
        .map_err(|e| ApiError::invalid("new_message", e))?;
    let created = state.messages.create(text, None).await?;
    Ok(Json(Submitted { message: created.message.message }))
}
