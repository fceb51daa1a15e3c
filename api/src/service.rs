//! What may be done to messages, whichever route asks: creating one, with its idempotent
//! replay (`POST /api/messages` and the Flask app's `POST /submit`), and changing or
//! deleting one by whoever holds its edit token or the admin token.

use crate::db::messages::{self as queries, Created, IdempotencyRecord, NewMessage};
use crate::db::{Db, DbError};
use crate::domain::{
    DomainError, EditToken, IdempotencyKey, MessageText, TokenSealer, hashes_match, now,
    request_hash,
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
    #[error("There is no message with id {0}.")]
    NotFound(i64),
    #[error("This token may not change this message.")]
    Forbidden,
    #[error(transparent)]
    Db(#[from] DbError),
}

/// What the messages' workflows need.
#[derive(Clone)]
pub struct Messages {
    pub db: Db,
    pub events: EventHub,
    pub sealer: std::sync::Arc<TokenSealer>,
    /// The hash of the admin token, which may change every message.
    pub admin_token_hash: Option<std::sync::Arc<Vec<u8>>>,
}

/// Whose say a change is made on.
#[derive(Clone, Debug)]
pub enum Authority {
    Admin,
    /// The hash of the message's edit token, which the change itself checks again: the
    /// UPDATE or DELETE matches the row only while it holds that hash.
    EditToken(Vec<u8>),
}

impl Authority {
    fn token_hash(&self) -> Option<&[u8]> {
        match self {
            Self::Admin => None,
            Self::EditToken(hash) => Some(hash),
        }
    }
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

    /// Who the presented token (its hash) speaks for on message `id`: the admin, or the
    /// holder of the message's edit token. Checked before a request's body is read, so that
    /// whoever may not change the message learns nothing from the body's faults.
    pub async fn authorize(&self, id: i64, presented: Vec<u8>) -> Result<Authority, ServiceError> {
        if self.admin_token_hash.as_deref().is_some_and(|admin| hashes_match(admin, &presented)) {
            let exists = self.db.run(move |conn| queries::get(conn, id)).await?.is_some();
            return if exists { Ok(Authority::Admin) } else { Err(ServiceError::NotFound(id)) };
        }
        let stored = self
            .db
            .run(move |conn| queries::edit_token_hash(conn, id))
            .await?
            .ok_or(ServiceError::NotFound(id))?;
        match stored {
            Some(stored) if hashes_match(&stored, &presented) => {
                Ok(Authority::EditToken(presented))
            }
            _ => Err(ServiceError::Forbidden),
        }
    }

    /// Replaces the text of message `id`.
    pub async fn update(
        &self,
        id: i64,
        text: MessageText,
        authority: &Authority,
    ) -> Result<Message, ServiceError> {
        let token_hash = authority.token_hash().map(<[u8]>::to_vec);
        let changed = self
            .db
            .write(move |conn, gate| {
                queries::update(conn, gate, id, token_hash.as_deref(), text.as_str(), now())
            })
            .await?;
        self.events.wake();
        Ok(self.changed(id, changed).await?.into())
    }

    /// Deletes message `id`.
    pub async fn delete(&self, id: i64, authority: &Authority) -> Result<(), ServiceError> {
        let token_hash = authority.token_hash().map(<[u8]>::to_vec);
        let deleted = self
            .db
            .write(move |conn, gate| queries::delete(conn, gate, id, token_hash.as_deref(), now()))
            .await?;
        self.events.wake();
        self.changed(id, deleted.then_some(())).await
    }

    /// What a change that matched no row means: the message is gone, or (when it is still
    /// there) its edit token no longer fits.
    async fn changed<T>(&self, id: i64, outcome: Option<T>) -> Result<T, ServiceError> {
        match outcome {
            Some(done) => Ok(done),
            None => match self.db.run(move |conn| queries::get(conn, id)).await? {
                Some(_) => Err(ServiceError::Forbidden),
                None => Err(ServiceError::NotFound(id)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use clap::Parser;

    use super::*;
    use crate::config::Cli;
    use crate::domain::hash_token;

    /// The workflows on a migrated SQLite file of their own.
    async fn messages(dir: &tempfile::TempDir) -> Messages {
        let url = format!("sqlite://{}", dir.path().join("messages.db").display());
        let settings = Cli::try_parse_from(["messages-api", "--database-url", &url]).unwrap();
        let db = Db::new(&settings.settings.database, std::time::Duration::from_secs(5)).unwrap();
        db.become_ready(true).await;
        let sealer = TokenSealer::new(b"the service tests' sealing secret, 32+ bytes").unwrap();
        Messages {
            db,
            events: EventHub::default(),
            sealer: Arc::new(sealer),
            admin_token_hash: None,
        }
    }

    fn text(raw: &str) -> MessageText {
        MessageText::parse(raw, 100).unwrap()
    }

    /// The change itself checks the token: an authority that names another token's hash
    /// changes nothing, whatever was checked before.
    #[tokio::test]
    async fn a_change_matches_only_the_row_that_holds_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let messages = messages(&dir).await;
        let created = messages.create(text("first"), None).await.unwrap();
        let id = created.message.id;
        let wrong = Authority::EditToken(hash_token("not this message's token"));

        let refused = messages.update(id, text("stolen"), &wrong).await;
        assert!(matches!(refused, Err(ServiceError::Forbidden)), "{refused:?}");
        let refused = messages.delete(id, &wrong).await;
        assert!(matches!(refused, Err(ServiceError::Forbidden)), "{refused:?}");
        let stored = messages.db.run(move |conn| queries::get(conn, id)).await.unwrap();
        assert_eq!(stored.unwrap().message, "first");

        let holder = messages.authorize(id, hash_token(&created.edit_token)).await.unwrap();
        let updated = messages.update(id, text("second"), &holder).await.unwrap();
        assert_eq!(updated.message, "second");
        messages.delete(id, &Authority::Admin).await.unwrap();
        let gone = messages.update(id, text("third"), &holder).await;
        assert!(matches!(gone, Err(ServiceError::NotFound(gone)) if gone == id), "{gone:?}");
    }
}
