//! Queries on messages and on the idempotency keys of their creation.

use chrono::{NaiveDateTime, TimeDelta};
use diesel::dsl::sql;
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::sql_types::BigInt;

use super::events::{self, EventKind};
use super::models::MessageRow;
use super::schema::{idempotency_keys, messages};
use super::{CommitGate, DbConnection, DbError};

/// How long an Idempotency-Key is remembered.
pub const IDEMPOTENCY_TTL: TimeDelta = TimeDelta::hours(24);

/// One page, newest first; `has_more` tells whether older rows exist.
#[derive(Debug)]
pub struct Page {
    pub rows: Vec<MessageRow>,
    pub has_more: bool,
}

pub struct NewMessage<'a> {
    pub text: &'a str,
    pub edit_token_hash: &'a [u8],
    pub now: NaiveDateTime,
}

/// What a create with an Idempotency-Key stores, all derived from the key.
pub struct IdempotencyRecord {
    pub key_hash: Vec<u8>,
    pub request_hash: Vec<u8>,
    /// Seals the edit token for the id the new message was given.
    pub seal_token: Box<dyn Fn(i64) -> Vec<u8> + Send>,
}

#[derive(Debug)]
pub enum Created {
    New(MessageRow),
    /// The key was used before with the same request: the original creation.
    Replayed {
        message_id: i64,
        created_at: NaiveDateTime,
        token_cipher: Vec<u8>,
    },
    /// The key was used before with a different request.
    KeyReused,
}

#[derive(Queryable)]
struct KeyRow {
    request_hash: Vec<u8>,
    message_id: i64,
    token_cipher: Vec<u8>,
    created_at: NaiveDateTime,
}

/// Keyset pagination on the primary key: the cost is one index range scan whatever the
/// table size or page depth.
/// Two fixed query shapes rather than one boxed query: diesel caches the prepared statement
/// of each, where a boxed query would be prepared anew on every request.
pub fn list(conn: &mut DbConnection, before: Option<i64>, limit: u32) -> Result<Page, DbError> {
    let page = messages::table
        .select(MessageRow::as_select())
        .order(messages::id.desc())
        .limit(i64::from(limit) + 1);
    let mut rows = match before {
        Some(before) => page.filter(messages::id.lt(before)).load(conn)?,
        None => page.load(conn)?,
    };
    let has_more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    Ok(Page { rows, has_more })
}

pub fn get(conn: &mut DbConnection, id: i64) -> Result<Option<MessageRow>, DbError> {
    Ok(messages::table.find(id).select(MessageRow::as_select()).first(conn).optional()?)
}

/// The hash of the message's edit token: `None` when the message does not exist,
/// `Some(None)` for legacy rows, which have no token.
pub fn edit_token_hash(
    conn: &mut DbConnection,
    id: i64,
) -> Result<Option<Option<Vec<u8>>>, DbError> {
    Ok(messages::table.find(id).select(messages::edit_token_hash).first(conn).optional()?)
}

/// Stores a message, or with an idempotency key that was used before, reports that use.
/// Each transaction starts with its write, so that SQLite's writers queue on the lock
/// instead of failing to upgrade a read lock.
pub fn create(
    conn: &mut DbConnection,
    gate: &CommitGate,
    new: &NewMessage<'_>,
    idempotency: Option<&IdempotencyRecord>,
) -> Result<Created, DbError> {
    // A remembered key can expire and vanish between the failed insert and the lookup.
    const ATTEMPTS: usize = 3;
    for _ in 0..ATTEMPTS {
        match insert(conn, gate, new, idempotency) {
            Ok(row) => return Ok(Created::New(row)),
            Err(DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _)) => {
                let record = idempotency.expect("only idempotency keys are unique");
                if let Some(previous) = earlier_use(conn, record, new.now)? {
                    return Ok(previous);
                }
            }
            Err(error) => return Err(error.into()),
        }
    }
    Err(DbError::Other(anyhow::anyhow!("idempotency key kept changing during the create")))
}

fn insert(
    conn: &mut DbConnection,
    gate: &CommitGate,
    new: &NewMessage<'_>,
    idempotency: Option<&IdempotencyRecord>,
) -> QueryResult<MessageRow> {
    conn.transaction(|conn| {
        diesel::insert_into(messages::table)
            .values((
                messages::message.eq(new.text),
                messages::created_at.eq(new.now),
                messages::updated_at.eq(new.now),
                messages::edit_token_hash.eq(new.edit_token_hash),
            ))
            .execute(conn)?;
        let id = last_insert_id(conn)?;
        if let Some(record) = idempotency {
            diesel::insert_into(idempotency_keys::table)
                .values((
                    idempotency_keys::key_hash.eq(&record.key_hash),
                    idempotency_keys::request_hash.eq(&record.request_hash),
                    idempotency_keys::message_id.eq(id),
                    idempotency_keys::token_cipher.eq((record.seal_token)(id)),
                    idempotency_keys::created_at.eq(new.now),
                ))
                .execute(conn)?;
        }
        // The change number last, after anything that may wait for another transaction's
        // lock: the number stays uncommitted no longer than the commit takes, and the live
        // stream's watcher waits for a missing number only that long (`live::LogCursor`).
        events::record(conn, EventKind::Created, id, new.now)?;
        gate.enter()?;
        Ok(MessageRow {
            id,
            message: new.text.to_owned(),
            created_at: new.now,
            updated_at: new.now,
        })
    })
}

/// The outcome of an earlier request with the same key, if it is still remembered.
fn earlier_use(
    conn: &mut DbConnection,
    record: &IdempotencyRecord,
    now: NaiveDateTime,
) -> QueryResult<Option<Created>> {
    let key = idempotency_keys::table.find(&record.key_hash);
    let Some(row) = key
        .select((
            idempotency_keys::request_hash,
            idempotency_keys::message_id,
            idempotency_keys::token_cipher,
            idempotency_keys::created_at,
        ))
        .first::<KeyRow>(conn)
        .optional()?
    else {
        return Ok(None);
    };
    if row.created_at + IDEMPOTENCY_TTL <= now {
        diesel::delete(key).execute(conn)?;
        return Ok(None);
    }
    Ok(Some(if row.request_hash == record.request_hash {
        Created::Replayed {
            message_id: row.message_id,
            created_at: row.created_at,
            token_cipher: row.token_cipher,
        }
    } else {
        Created::KeyReused
    }))
}

/// The one read after a write in a transaction, and a safe one (see `update`): the statement
/// is prepared for this call and closed after it, so an abort leaves no cached statement
/// behind, and the transaction holds only the new row's lock, which no other node's write
/// can need (each Galera node numbers rows by its own auto-increment offset).
fn last_insert_id(conn: &mut DbConnection) -> QueryResult<i64> {
    // MySQL has no RETURNING; both backends report the id of the connection's last insert.
    match conn {
        DbConnection::Mysql(conn) => {
            diesel::select(sql::<BigInt>("CAST(LAST_INSERT_ID() AS SIGNED)")).get_result(conn)
        }
        DbConnection::Sqlite(conn) => {
            diesel::select(sql::<BigInt>("last_insert_rowid()")).get_result(conn)
        }
    }
}

/// Replaces the text; `None` when no row matched: the message does not exist (any more) or,
/// with `token_hash` (`None` for the admin), does not hold that edit token's hash.
///
/// Nothing is read once the transaction holds the row's lock: the answer is built from the
/// known values (`created_at` never changes, so it is read first, without a lock). On a
/// Galera node, a write from another node that needs the lock aborts the holder, and a
/// prepared SELECT aborted after its row was sent ends in an error packet that leaves the
/// client library's statement expecting more rows: that cached statement's next run then
/// waits forever for them, holding the connection, a blocking thread and the row's lock.
pub fn update(
    conn: &mut DbConnection,
    gate: &CommitGate,
    id: i64,
    token_hash: Option<&[u8]>,
    text: &str,
    now: NaiveDateTime,
) -> Result<Option<MessageRow>, DbError> {
    let Some(created_at) =
        messages::table.find(id).select(messages::created_at).first(conn).optional()?
    else {
        return Ok(None);
    };
    let changed = conn.transaction(|conn| {
        let changes = (messages::message.eq(text), messages::updated_at.eq(now));
        let row = messages::table.find(id);
        let changed = match token_hash {
            Some(hash) => diesel::update(row.filter(messages::edit_token_hash.eq(hash)))
                .set(changes)
                .execute(conn)?,
            None => diesel::update(row).set(changes).execute(conn)?,
        };
        if changed > 0 {
            events::record(conn, EventKind::Updated, id, now)?;
            gate.enter()?;
        }
        Ok::<_, DieselError>(changed)
    })?;
    Ok((changed > 0).then(|| MessageRow {
        id,
        message: text.to_owned(),
        created_at,
        updated_at: now,
    }))
}

/// Deletes the message; false when no row matched (as for `update`).
pub fn delete(
    conn: &mut DbConnection,
    gate: &CommitGate,
    id: i64,
    token_hash: Option<&[u8]>,
    now: NaiveDateTime,
) -> Result<bool, DbError> {
    Ok(conn.transaction(|conn| {
        let row = messages::table.find(id);
        let deleted = match token_hash {
            Some(hash) => {
                diesel::delete(row.filter(messages::edit_token_hash.eq(hash))).execute(conn)?
            }
            None => diesel::delete(row).execute(conn)?,
        } > 0;
        if deleted {
            events::record(conn, EventKind::Deleted, id, now)?;
            gate.enter()?;
        }
        Ok::<_, DieselError>(deleted)
    })?)
}

/// Forgets idempotency keys older than the TTL; returns how many.
pub fn purge_idempotency_keys(
    conn: &mut DbConnection,
    now: NaiveDateTime,
) -> Result<usize, DbError> {
    Ok(diesel::delete(
        idempotency_keys::table.filter(idempotency_keys::created_at.le(now - IDEMPOTENCY_TTL)),
    )
    .execute(conn)?)
}
