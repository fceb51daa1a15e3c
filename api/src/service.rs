//! Workflows that more than one route runs. Creating a message, with its idempotent
//! replay, serves both `POST /api/messages` and the Flask app's `POST /submit`.

use crate::db::messages::{self as queries, Created, IdempotencyRecord, NewMessage};
use crate::db::{Db, DbError};
use crate::domain::{
    DomainError, EditToken, IdempotencyKey, MessageText, TokenSealer, now, request_hash,
};
use crate::live::EventHub;
use crate::views::{Message, utc};

/// A stored message and the edit token handed to its author.
pub struct Creation {
    pub message: Message,
    pub edit_token: String,
    /// True when an earlier request with the same Idempotency-Key created the message.
    pub replayed: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Tells only that the key was used; being unguessable, a key is only ever known to
    /// the client that made it (the IETF draft's 422 for reuse with other content).
    #[error(
        "This Idempotency-Key was used for another message within the last 24 hours: send a \
         new message with a new key."
    )]
    IdempotencyKeyReused,
    /// The key's create happened before tokens were sealed the current way; its token was
    /// erased by the upgrade and cannot be handed out again.
    #[error(
        "This Idempotency-Key already created message {message_id}, but its edit token was \
         kept in a form this version no longer reads, so it cannot be handed out again."
    )]
    ReplayUnavailable { message_id: i64 },
    /// The stored token does not open: the replicas' TOKEN_SEALING_KEY differ, or the row
    /// was altered. Logged as an error; the client learns only that no replay is possible.
    #[error(
        "This Idempotency-Key already created message {message_id}, but its edit token does \
         not open with this server's sealing key, so it cannot be handed out again."
    )]
    SealBroken { message_id: i64, source: DomainError },
    #[error(transparent)]
    Db(#[from] DbError),
}

/// What creating a message needs.
#[derive(Clone)]
pub struct Messages {
    pub db: Db,
    pub events: EventHub,
    pub sealer: std::sync::Arc<TokenSealer>,
}

impl Messages {
    /// Stores a new message, or with an Idempotency-Key used before for the same text,
    /// answers what the first request was answered.
    pub async fn create(
        &self,
        text: MessageText,
        key: Option<IdempotencyKey>,
    ) -> Result<Creation, ServiceError> {
        let token = std::sync::Arc::new(EditToken::generate());
        let record = key.as_ref().map(|key| {
            let (sealer, token, key) = (self.sealer.clone(), token.clone(), key.clone());
            IdempotencyRecord {
                key_hash: key.lookup_hash(),
                request_hash: request_hash(&text),
                seal_token: Box::new(move |message_id| sealer.seal(&token, &key, message_id)),
            }
        });
        let token_hash = token.hash();
        let stored_text = text.clone();
        let outcome = self
            .db
            .write(move |conn, gate| {
                let new = NewMessage {
                    text: stored_text.as_str(),
                    edit_token_hash: &token_hash,
                    now: now(),
                };
                queries::create(conn, gate, &new, record.as_ref())
            })
            .await?;
        match outcome {
            Created::New(row) => {
                self.events.wake();
                Ok(Creation { message: row.into(), edit_token: token.encode(), replayed: false })
            }
            Created::Replayed { message_id, created_at, token_cipher } => {
                if TokenSealer::is_unsealed(&token_cipher) {
                    return Err(ServiceError::ReplayUnavailable { message_id });
                }
                let key = key.expect("only a request with a key is replayed");
                let token =
                    self.sealer.open(&token_cipher, &key, message_id).map_err(|source| {
                        tracing::error!(
                            message_id,
                            error = %source,
                            "cannot replay a create: check that every replica has the same \
                             TOKEN_SEALING_KEY"
                        );
                        ServiceError::SealBroken { message_id, source }
                    })?;
                let message = Message {
                    id: message_id,
                    message: text.as_str().to_owned(),
                    created_at: utc(created_at),
                    updated_at: utc(created_at),
                };
                Ok(Creation { message, edit_token: token.encode(), replayed: true })
            }
            Created::KeyReused => Err(ServiceError::IdempotencyKeyReused),
        }
    }
}
