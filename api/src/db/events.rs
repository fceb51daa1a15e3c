//! The change log behind the live stream: one row per create, edit and delete.

use chrono::NaiveDateTime;
use diesel::dsl::max;
use diesel::prelude::*;

use super::models::MessageRow;
use super::schema::{message_events, messages};
use super::{DbConnection, DbError};
use crate::position::Position;

/// How long events are kept: a client that was away longer reloads instead of resuming.
pub const EVENT_RETENTION: chrono::TimeDelta = chrono::TimeDelta::hours(24);

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

/// Appends an event; call it inside the transaction that makes the change, as its last
/// statement before the commit: the event's number is taken here and is missing from the
/// log until the commit, and readers wait for a missing number only so long
/// (`Db::answer_limit`).
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

/// The events a reader at `position` has not had, oldest first, at most `limit`.
pub fn since(
    conn: &mut DbConnection,
    position: &Position,
    limit: i64,
) -> Result<Vec<EventRow>, DbError> {
    let had: Vec<i64> = position.above().iter().copied().collect();
    let rows: Vec<(i64, String, i64, NaiveDateTime, Option<MessageRow>)> = message_events::table
        .left_join(messages::table.on(messages::id.eq(message_events::message_id)))
        .filter(message_events::seq.gt(position.floor()))
        .filter(message_events::seq.ne_all(had))
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

/// Where a reader that starts now stands: the newest `count` events, oldest first, and the
/// number below them. A number between them that is missing may belong to a change still
/// in flight.
pub fn tail(conn: &mut DbConnection, count: i64) -> Result<(i64, Vec<i64>), DbError> {
    let mut seqs: Vec<i64> = message_events::table
        .select(message_events::seq)
        .order(message_events::seq.desc())
        .limit(count + 1)
        .load(conn)?;
    let below = if seqs.len() as i64 > count { seqs.pop().unwrap_or(0) } else { 0 };
    seqs.reverse();
    Ok((below, seqs))
}

/// The newest event's number (0 in an empty log).
pub fn newest(conn: &mut DbConnection) -> Result<i64, DbError> {
    let newest: Option<i64> = message_events::table.select(max(message_events::seq)).first(conn)?;
    Ok(newest.unwrap_or(0))
}

/// Both ends of the remembered log.
#[derive(Debug, Clone, Copy)]
pub struct LogEnds {
    pub oldest: i64,
    pub oldest_logged_at: NaiveDateTime,
    pub newest: i64,
}

/// `None` for an empty log.
pub fn ends(conn: &mut DbConnection) -> Result<Option<LogEnds>, DbError> {
    let oldest: Option<(i64, NaiveDateTime)> = message_events::table
        .select((message_events::seq, message_events::created_at))
        .order(message_events::seq.asc())
        .first(conn)
        .optional()?;
    match oldest {
        Some((oldest, oldest_logged_at)) => {
            Ok(Some(LogEnds { oldest, oldest_logged_at, newest: newest(conn)? }))
        }
        None => Ok(None),
    }
}

/// Forgets events older than `before`, but the newest of them: that one stays as the
/// horizon, so that a reader whose position is below the oldest event left can tell that
/// events were forgotten (see `ends`). Returns how many were forgotten.
pub fn purge(conn: &mut DbConnection, before: NaiveDateTime) -> Result<usize, DbError> {
    let horizon: Option<i64> = message_events::table
        .filter(message_events::created_at.lt(before))
        .select(max(message_events::seq))
        .first(conn)?;
    let Some(horizon) = horizon else { return Ok(0) };
    Ok(diesel::delete(message_events::table.filter(message_events::seq.lt(horizon)))
        .execute(conn)?)
}
