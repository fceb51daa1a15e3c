//! Who may change a message: the holder of its edit token, or of the admin token. Checked
//! from the request's head, before its body is read (the rule itself is the service's).

use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::request::Parts;
use axum_extra::headers::authorization::Bearer;
use axum_extra::headers::{Authorization, HeaderMapExt};

use super::{ApiPath, AppState};
use crate::domain::{MessageId, hash_token};
use crate::error::ApiError;
use crate::service::Authority;

/// The id of a message that the request's bearer token may change. As an extractor of the
/// request's head it runs before the body's: whoever may not change the message gets 401
/// (no usable token) or 403 (a token that does not fit) whatever the body, and learns
/// nothing from the body's faults. 404 when the message does not exist.
pub struct MayChange {
    pub id: i64,
    pub authority: Authority,
}

impl FromRequestParts<AppState> for MayChange {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let presented = hash_token(&bearer_token(&parts.headers)?);
        let ApiPath(id) = ApiPath::<i64>::from_request_parts(parts, state).await?;
        let id = MessageId::parse(id)?.get();
        let authority = state.messages.authorize(id, presented).await?;
        Ok(Self { id, authority })
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
