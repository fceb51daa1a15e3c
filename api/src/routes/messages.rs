//! `/api/messages`: list, create, read, edit and delete messages.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::authorization::MayChange;
use super::{ApiJson, ApiPath, ApiQuery, AppState};
use crate::db::messages as queries;
use crate::domain::{Cursor, IdempotencyKey, MessageId, MessageText, PageSize};
use crate::error::{ApiError, Problem};
use crate::service::ServiceError;
use crate::telemetry::IDEMPOTENT_REPLAYS;
use crate::views::{Message, rfc3339};

const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// The answer to a create: the message and the token that can edit or delete it.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedMessage {
    #[schema(example = 42)]
    pub id: i64,
    #[schema(example = "Hello from the two-tier app!")]
    pub message: String,
    #[serde(serialize_with = "rfc3339")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "rfc3339")]
    pub updated_at: DateTime<Utc>,
    /// Bearer token for PATCH and DELETE of this message. Returned only here; keep it.
    pub edit_token: String,
}

/// A page of messages, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct MessagePage {
    pub items: Vec<Message>,
    /// Pass as `cursor` to get the next (older) page; null on the last page.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

/// The body of a create or edit.
#[derive(Debug, ToSchema)]
// Read by ToSchema (`additionalProperties: false`); the Deserialize below enforces it.
#[serde(deny_unknown_fields)]
pub struct MessageInput {
    /// The text: trimmed, then 1 to MAX_MESSAGE_CHARS (default 1000) characters; see
    /// `GET /api/limits`.
    #[schema(min_length = 1, example = "Hello from the two-tier app!")]
    pub message: String,
}

/// Only a JSON object: serde's derive would also take `["text"]` as a struct.
impl<'de> Deserialize<'de> for MessageInput {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Fields;

        impl<'de> Visitor<'de> for Fields {
            type Value = MessageInput;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("struct MessageInput")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<MessageInput, A::Error> {
                let mut message = None;
                let mut unknown = None;
                while let Some(key) = map.next_key::<String>()? {
                    if key == "message" {
                        message = Some(map.next_value()?);
                    } else {
                        // Read in full (strings checked as UTF-8): malformed JSON anywhere in
                        // the body is a 400 before an unknown field is a 422.
                        map.next_value::<Skipped>()?;
                        unknown.get_or_insert(key);
                    }
                }
                if let Some(key) = unknown {
                    return Err(de::Error::unknown_field(&key, &["message"]));
                }
                let message = message.ok_or_else(|| de::Error::missing_field("message"))?;
                Ok(MessageInput { message })
            }
        }

        deserializer.deserialize_map(Fields)
    }
}

/// A JSON value read in full and kept nowhere: unlike `serde_json::Value` (32 bytes for
/// each `0` of an array), it holds nothing, so a body costs no more memory than its size.
struct Skipped;

impl<'de> Deserialize<'de> for Skipped {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Anything;

        impl<'de> Visitor<'de> for Anything {
            type Value = Skipped;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any JSON value")
            }

            fn visit_bool<E>(self, _: bool) -> Result<Skipped, E> {
                Ok(Skipped)
            }

            fn visit_i64<E>(self, _: i64) -> Result<Skipped, E> {
                Ok(Skipped)
            }

            fn visit_u64<E>(self, _: u64) -> Result<Skipped, E> {
                Ok(Skipped)
            }

            fn visit_f64<E>(self, _: f64) -> Result<Skipped, E> {
                Ok(Skipped)
            }

            fn visit_str<E>(self, _: &str) -> Result<Skipped, E> {
                Ok(Skipped)
            }

            fn visit_unit<E>(self) -> Result<Skipped, E> {
                Ok(Skipped)
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Skipped, A::Error> {
                while seq.next_element::<Skipped>()?.is_some() {}
                Ok(Skipped)
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Skipped, A::Error> {
                while map.next_entry::<Skipped, Skipped>()?.is_some() {}
                Ok(Skipped)
            }
        }

        deserializer.deserialize_any(Anything)
    }
}

impl MessageInput {
    fn text(&self, max_chars: u32) -> Result<MessageText, ApiError> {
        MessageText::parse(&self.message, max_chars).map_err(|e| ApiError::invalid("message", e))
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Page size, 1 to 100.
    #[param(minimum = 1, maximum = 100, default = 20)]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Lists messages newest first, one page at a time.
#[utoipa::path(
    get,
    path = "/api/messages",
    tag = "messages",
    params(ListParams),
    responses(
        (status = 200, description = "A page of messages", body = MessagePage),
        (status = 400, description = "Bad limit or cursor", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_messages(
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<MessagePage>, ApiError> {
    let limit = PageSize::parse(params.limit)?.get();
    let before = params.cursor.as_deref().map(Cursor::decode).transpose()?;
    let page =
        state.db.run(move |conn| queries::list(conn, before.map(Cursor::before_id), limit)).await?;
    let next_cursor = match page.rows.last() {
        Some(last) if page.has_more => Some(Cursor::after(last.id).encode()),
        _ => None,
    };
    Ok(Json(MessagePage { items: page.rows.into_iter().map(Message::from).collect(), next_cursor }))
}

/// Posts a message. With an `Idempotency-Key`, a retry of the same request within 24 hours
/// returns the original response, edit token included, instead of posting again: the key
/// must be unguessable.
#[utoipa::path(
    post,
    path = "/api/messages",
    tag = "messages",
    request_body = MessageInput,
    params(
        ("Idempotency-Key" = Option<String>, Header,
         description = "Makes retries safe. A random UUID (e.g. `crypto.randomUUID()`), or 32 to 255 random characters from A-Z, a-z, 0-9, `-` and `_`: 128 bits or more from a secure random source, since a replay hands the edit token to whoever sends the key. A key that is shorter, has other characters, or fewer than 6 different ones is refused (400).",
         min_length = 32, max_length = 255, pattern = "^[A-Za-z0-9_-]{32,255}$",
         example = "0b7e2a3c-5d41-4f6a-9c2e-8a1b3c4d5e6f"),
    ),
    responses(
        (status = 201, description = "Created (or replayed: header Idempotent-Replayed)", body = CreatedMessage,
         headers(("Location" = String, description = "The new message's URL"))),
        (status = 400, description = "Malformed JSON, or a guessable Idempotency-Key", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The Idempotency-Key created a message before an upgrade, and its edit token can no longer be replayed", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid message, or an Idempotency-Key used within 24 hours for another text (problem type /problems/idempotency-key-reused; it says only that)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable or busy, or the time limit passed before anything was saved: nothing changed, retry after Retry-After", body = Problem, content_type = "application/problem+json",
         headers(("Retry-After" = String, description = "Seconds to wait before retrying"))),
        (status = 504, description = "The time limit passed, or the database connection failed, while the message was being committed: it may or may not exist. Retry only with the same Idempotency-Key (problem type /problems/outcome-unknown)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_message(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<MessageInput>,
) -> Result<Response, ApiError> {
    let key =
        headers.get(IDEMPOTENCY_KEY).map(|v| IdempotencyKey::parse(v.as_bytes())).transpose()?;
    let text = body.text(state.limits.max_message_chars)?;
    let created = state.messages.create(text, key).await?;
    let message = created.message;
    let location = HeaderValue::try_from(format!("/api/messages/{}", message.id))
        .map_err(|e| ApiError::Internal(e.into()))?;
    let mut response = (
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(CreatedMessage {
            id: message.id,
            message: message.message,
            created_at: message.created_at,
            updated_at: message.updated_at,
            edit_token: created.edit_token,
        }),
    )
        .into_response();
    if created.replayed {
        metrics::counter!(IDEMPOTENT_REPLAYS, "route" => "/api/messages").increment(1);
        response.headers_mut().insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// Reads one message.
#[utoipa::path(
    get,
    path = "/api/messages/{id}",
    tag = "messages",
    params(("id" = i64, Path, description = "Message id", minimum = 1)),
    responses(
        (status = 200, description = "The message", body = Message),
        (status = 400, description = "The id is not a positive integer", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such message", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_message(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<Message>, ApiError> {
    let id = MessageId::parse(id)?.get();
    let row = state.db.run(move |conn| queries::get(conn, id)).await?;
    row.map(|row| Json(row.into())).ok_or_else(|| ServiceError::NotFound(id).into())
}

/// Replaces a message's text. Needs the message's edit token or the admin token, checked
/// before the body: without a fitting token the answer is 401 or 403 whatever the body.
#[utoipa::path(
    patch,
    path = "/api/messages/{id}",
    tag = "messages",
    params(("id" = i64, Path, description = "Message id", minimum = 1)),
    request_body = MessageInput,
    security(("edit_token" = [])),
    responses(
        (status = 200, description = "The updated message", body = Message),
        (status = 400, description = "Malformed JSON or id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No bearer token", body = Problem, content_type = "application/problem+json",
         headers(("WWW-Authenticate" = String))),
        (status = 403, description = "The token does not open this message", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such message", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid message", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable or busy, or the edit kept colliding with concurrent edits of the message (on a Galera cluster: another node's; each collision is retried a few times first): nothing changed, retry after Retry-After", body = Problem, content_type = "application/problem+json",
         headers(("Retry-After" = String, description = "Seconds to wait before retrying"))),
        (status = 504, description = "The time limit passed, or the database connection failed, while the edit was being committed: read the message back to see whether it took effect (problem type /problems/outcome-unknown)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn update_message(
    State(state): State<AppState>,
    MayChange { id, authority }: MayChange,
    ApiJson(body): ApiJson<MessageInput>,
) -> Result<Json<Message>, ApiError> {
    let text = body.text(state.limits.max_message_chars)?;
    Ok(Json(state.messages.update(id, text, &authority).await?))
}

/// Deletes a message. Needs the message's edit token or the admin token.
#[utoipa::path(
    delete,
    path = "/api/messages/{id}",
    tag = "messages",
    params(("id" = i64, Path, description = "Message id", minimum = 1)),
    security(("edit_token" = [])),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "The id is not a positive integer", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No bearer token", body = Problem, content_type = "application/problem+json",
         headers(("WWW-Authenticate" = String))),
        (status = 403, description = "The token does not open this message", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such message", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable or busy, or the delete kept colliding with concurrent changes of the message (each collision is retried a few times first): nothing changed, retry after Retry-After", body = Problem, content_type = "application/problem+json",
         headers(("Retry-After" = String, description = "Seconds to wait before retrying"))),
        (status = 504, description = "The time limit passed, or the database connection failed, while the delete was being committed: read the message back to see whether it took effect (problem type /problems/outcome-unknown)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delete_message(
    State(state): State<AppState>,
    MayChange { id, authority }: MayChange,
) -> Result<StatusCode, ApiError> {
    state.messages.delete(id, &authority).await?;
    Ok(StatusCode::NO_CONTENT)
}
