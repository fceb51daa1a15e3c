//! Rows as the queries hand them out. Response types are built from these, never the other
//! way round.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::schema::messages;

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = messages)]
pub struct MessageRow {
    pub id: i64,
    pub message: String,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}
