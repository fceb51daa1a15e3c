//! The message as the API shows it, shared by the handlers and the live stream.

use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};
use serde::{Serialize, Serializer};
use utoipa::ToSchema;

use crate::db::models::MessageRow;

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

/// Times as RFC 3339 in UTC with microseconds, the precision both databases store.
pub fn rfc3339<S: Serializer>(time: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&time.to_rfc3339_opts(SecondsFormat::Micros, true))
}

pub fn utc(time: NaiveDateTime) -> DateTime<Utc> {
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
