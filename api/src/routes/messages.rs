//! `/api/messages`: list, create, read, edit and delete messages.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::{ApiJson, ApiQuery, AppState};
use crate::db::messages::{self as queries, Created, IdempotencyRecord, MessageRow, NewMessage};
use crate::domain::{
    Cursor, EditToken, IdempotencyKey, MessageText, hash_token, hashes_match, now, parse_id,
    request_hash,
};
use crate::error::{ApiError, Problem};

const DEFAULT_LIMIT: u32 = 20;
const MAX_LIMIT: u32 = 100;
const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// A message as clients see it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Message {
    #[schema(example = 42)]
    pub id: i64,
    #[schema(example = "Hello from the two-tier app!")]
    pub message: String,
    /// When the message was posted (UTC).
    #[serde(serialize_with = "rfc3339")]
    pub created_at: DateTime<Utc>,
    /// When the text last changed (UTC); equals `created_at` until the first edit.
    #[serde(serialize_with = "rfc3339")]
    pub updated_at: DateTime<Utc>,
}

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
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // Documents the body; requests are parsed field by field for clear errors.
pub struct MessageInput {
    /// The text: trimmed, then 1 to MAX_MESSAGE_CHARS (default 1000) characters; see
    /// `GET /api/limits`.
    #[schema(min_length = 1, example = "Hello from the two-tier app!")]
    pub message: String,
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

fn rfc3339<S: Serializer>(time: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&time.to_rfc3339_opts(SecondsFormat::Micros, true))
}

fn utc(time: NaiveDateTime) -> DateTime<Utc> {
    time.and_utc()
}

impl From<MessageRow> for Message {
    fn from(row: MessageRow) -> Self {
        Self {
            id: row.id,
            message: row.message,
            created_at: utc(row.created_at),
            updated_at: utc(row.updated_at),
        }
    }
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
    let limit = params.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {MAX_LIMIT}, got {limit}"
        )));
    }
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
/// returns the original response instead of posting again.
#[utoipa::path(
    post,
    path = "/api/messages",
    tag = "messages",
    request_body = MessageInput,
    params(
        ("Idempotency-Key" = Option<String>, Header,
         description = "1 to 255 visible ASCII characters; makes retries safe",
         min_length = 1, max_length = 255),
    ),
    responses(
        (status = 201, description = "Created (or replayed: header Idempotent-Replayed)", body = CreatedMessage,
         headers(("Location" = String, description = "The new message's URL"))),
        (status = 400, description = "Malformed JSON or Idempotency-Key", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid message, or Idempotency-Key reused with another body", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_message(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let key =
        headers.get(IDEMPOTENCY_KEY).map(|v| IdempotencyKey::parse(v.as_bytes())).transpose()?;
    let text = parse_input(body, state.limits.max_message_chars)?;
    let (message, token) = create(&state, text, key).await?;
    let token_replayed = token.replayed;
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
            edit_token: token.value,
        }),
    )
        .into_response();
    if token_replayed {
        response.headers_mut().insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// An edit token handed to the client, and whether it comes from an earlier identical
/// request.
pub struct IssuedToken {
    pub value: String,
    pub replayed: bool,
}

/// Stores a new message (or finds the one an identical earlier request stored).
pub async fn create(
    state: &AppState,
    text: MessageText,
    key: Option<IdempotencyKey>,
) -> Result<(Message, IssuedToken), ApiError> {
    let token = EditToken::generate();
    let record = key.as_ref().map(|key| IdempotencyRecord {
        key_hash: key.lookup_hash(),
        request_hash: request_hash(&text),
        token_cipher: token.seal(key),
    });
    let token_hash = token.hash();
    let stored_text = text.clone();
    let outcome = state
        .db
        .run(move |conn| {
            let new =
                NewMessage { text: stored_text.as_str(), edit_token_hash: &token_hash, now: now() };
            queries::create(conn, &new, record.as_ref())
        })
        .await?;
    match outcome {
        Created::New(row) => {
            state.events.wake();
            Ok((row.into(), IssuedToken { value: token.encode(), replayed: false }))
        }
        Created::Replayed { message_id, created_at, token_cipher } => {
            let key = key.expect("only a request with a key is replayed");
            let token = EditToken::unseal(&token_cipher, &key).ok_or_else(|| {
                ApiError::Internal(anyhow::anyhow!("stored edit token is corrupt"))
            })?;
            let message = Message {
                id: message_id,
                message: text.as_str().to_owned(),
                created_at: utc(created_at),
                updated_at: utc(created_at),
            };
            Ok((message, IssuedToken { value: token.encode(), replayed: true }))
        }
        Created::KeyReused => Err(ApiError::IdempotencyKeyReused(
            "This Idempotency-Key was already used with a different request body.".into(),
        )),
    }
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
    Path(id): Path<String>,
) -> Result<Json<Message>, ApiError> {
    let id = parse_id(&id)?;
    let row = state.db.run(move |conn| queries::get(conn, id)).await?;
    row.map(|row| Json(row.into())).ok_or_else(|| not_found(id))
}

/// Replaces a message's text. Needs the message's edit token or the admin token.
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
        (status = 503, description = "Database unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn update_message(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Value>,
) -> Result<Json<Message>, ApiError> {
    let id = parse_id(&id)?;
    authorize(&state, id, &headers).await?;
    let text = parse_input(body, state.limits.max_message_chars)?;
    let row = state.db.run(move |conn| queries::update(conn, id, text.as_str(), now())).await?;
    state.events.wake();
    row.map(|row| Json(row.into())).ok_or_else(|| not_found(id))
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
        (status = 503, description = "Database unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delete_message(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&id)?;
    authorize(&state, id, &headers).await?;
    if state.db.run(move |conn| queries::delete(conn, id, now())).await? {
        state.events.wake();
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(not_found(id))
    }
}

fn not_found(id: i64) -> ApiError {
    ApiError::NotFound(format!("There is no message with id {id}."))
}

/// Checks the bearer token against the message's edit token and the admin token:
/// 401 without a token, 404 without the message, 403 with a token that does not fit.
async fn authorize(state: &AppState, id: i64, headers: &HeaderMap) -> Result<(), ApiError> {
    let presented = hash_token(bearer_token(headers)?);
    if state.admin_token_hash.as_deref().is_some_and(|admin| hashes_match(admin, &presented)) {
        let exists = state.db.run(move |conn| queries::get(conn, id)).await?.is_some();
        return if exists { Ok(()) } else { Err(not_found(id)) };
    }
    let stored = state
        .db
        .run(move |conn| queries::edit_token_hash(conn, id))
        .await?
        .ok_or_else(|| not_found(id))?;
    match stored {
        Some(stored) if hashes_match(&stored, &presented) => Ok(()),
        _ => Err(ApiError::Forbidden("This token may not change this message.".into())),
    }
}

fn bearer_token(headers: &HeaderMap) -> Result<&str, ApiError> {
    let value = headers.get(header::AUTHORIZATION).ok_or_else(|| {
        ApiError::Unauthorized(
            "An Authorization: Bearer header with the message's edit token is required.".into(),
        )
    })?;
    value
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, token)| scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty())
        .map(|(_, token)| token.trim())
        .ok_or_else(|| {
            ApiError::Unauthorized("The Authorization header must be \"Bearer <token>\".".into())
        })
}

/// Parses `{"message": "..."}`, reporting every problem by field.
fn parse_input(body: Value, max_chars: u32) -> Result<MessageText, ApiError> {
    let Value::Object(mut fields) = body else {
        return Err(ApiError::invalid("body", "must be a JSON object"));
    };
    let message = fields.remove("message");
    let mut errors: BTreeMap<String, String> =
        fields.keys().map(|k| (k.clone(), "is not a known field".to_owned())).collect();
    let text = match message {
        None => {
            errors.insert("message".into(), "is required".into());
            None
        }
        Some(Value::String(raw)) => match MessageText::parse(&raw, max_chars, "message") {
            Ok(text) => Some(text),
            Err(ApiError::Validation { errors: field_errors, .. }) => {
                errors.extend(field_errors);
                None
            }
            Err(other) => return Err(other),
        },
        Some(_) => {
            errors.insert("message".into(), "must be a string".into());
            None
        }
    };
    match text {
        Some(text) if errors.is_empty() => Ok(text),
        _ => Err(ApiError::Validation {
            detail: errors.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join("; "),
            errors,
        }),
    }
}
