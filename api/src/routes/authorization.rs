//! Who may change a message: the holder of its edit token, or of the admin token. Checked
//! from the request's head, before its body is read.

use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::request::Parts;
use axum_extra::headers::authorization::Bearer;
use axum_extra::headers::{Authorization, HeaderMapExt};

use super::{ApiPath, AppState};
use crate::db::messages as queries;
use crate::domain::{MessageId, hash_token, hashes_match};
use crate::error::ApiError;

/// The id of a message that the request's bearer token may change. As an extractor of the
/// request's head it runs before the body's: whoever may not change the message gets 401
/// (no usable token) or 403 (a token that does not fit) whatever the body, and learns
/// nothing from the body's faults. 404 when the message does not exist.
pub struct MayChange(pub i64);

impl FromRequestParts<AppState> for MayChange {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let presented = hash_token(&bearer_token(&parts.headers)?);
        let ApiPath(id) = ApiPath::<i64>::from_request_parts(parts, state).await?;
        let id = MessageId::parse(id)?.get();
        authorize(state, id, presented).await?;
        Ok(Self(id))
    }
}

/// The token of an `Authorization: Bearer` header; 401 when there is none, or another kind.
pub fn bearer_token(headers: &HeaderMap) -> Result<String, ApiError> {
    match headers.typed_try_get::<Authorization<Bearer>>() {
        Ok(Some(Authorization(bearer))) if !bearer.token().is_empty() => {
            Ok(bearer.token().to_owned())
        }
        Ok(None) => Err(ApiError::Unauthorized(
            "An Authorization: Bearer header with the message's edit token is required.".into(),
        )),
        _ => Err(ApiError::Unauthorized(
            "The Authorization header must be \"Bearer <token>\".".into(),
        )),
    }
}

/// Checks the presented token's hash against the admin token and the message's edit token.
async fn authorize(state: &AppState, id: i64, presented: Vec<u8>) -> Result<(), ApiError> {
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

pub fn not_found(id: i64) -> ApiError {
    ApiError::NotFound(format!("There is no message with id {id}."))
}
