//! The change log behind the live stream: one row per create, edit and delete.

use chrono::NaiveDateTime;
use diesel::dsl::{max, min};
use diesel::prelude::*;

use super::models::MessageRow;
use super::schema::{message_events, messages};
use super::{DbConnection, DbError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Created,
    Updated,
    Deleted,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Updated => "updated",
            Self::Deleted => "deleted",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [Self::Created, Self::Updated, Self::Deleted].into_iter().find(|k| k.as_str() == s)
    }
}

/// An event with the message as it is now (`None` once the message is gone).
#[derive(Debug, Clone)]
pub struct EventRow {
    pub seq: i64,
    pub kind: EventKind,
    pub message_id: i64,
    pub message: Option<MessageRow>,
    /// When the change was logged (the writing replica's clock, UTC).
    pub logged_at: NaiveDateTime,
}

/// Appends an event; call it inside the transaction that makes the change.
pub fn record(
    conn: &mut DbConnection,
    kind: EventKind,
    message_id: i64,
    now: NaiveDateTime,
) -> QueryResult<()> {
    diesel::insert_into(message_events::table)
        .values((
            message_events::kind.eq(kind.as_str()),
            message_events::message_id.eq(message_id),
            message_events::created_at.eq(now),
        ))
        .execute(conn)
        .map(drop)
}

/// Events after `after`, oldest first, at most `limit`.
pub fn since(conn: &mut DbConnection, after: i64, limit: i64) -> Result<Vec<EventRow>, DbError> {
    let rows: Vec<(i64, String, i64, NaiveDateTime, Option<MessageRow>)> = message_events::table
        .left_join(messages::table.on(messages::id.eq(message_events::message_id)))
        .filter(message_events::seq.gt(after))
        .order(message_events::seq.asc())
        .limit(limit)
        .select((
            message_events::seq,
            message_events::kind,
            message_events::message_id,
            message_events::created_at,
            (messages::id, messages::message, messages::created_at, messages::updated_at)
                .nullable(),
        ))
        .load(conn)?;
    Ok(rows
        .into_iter()
        .filter_map(|(seq, kind, message_id, logged_at, message)| {
            Some(EventRow { seq, kind: EventKind::parse(&kind)?, message_id, message, logged_at })
        })
        .collect())
}

/// The oldest and newest remembered event numbers.
pub fn bounds(conn: &mut DbConnection) -> Result<(Option<i64>, Option<i64>), DbError> {
    Ok(message_events::table
        .select((min(message_events::seq), max(message_events::seq)))
        .first(conn)?)
}

/// Forgets events older than `before`; returns how many.
pub fn purge(conn: &mut DbConnection, before: NaiveDateTime) -> Result<usize, DbError> {
    Ok(diesel::delete(message_events::table.filter(message_events::created_at.lt(before)))
        .execute(conn)?)
}
