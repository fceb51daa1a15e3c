//! Database errors and their classification: which failures leave the connection usable,
//! which are worth running again, and the `kind` label they are counted under.

use diesel::result::{DatabaseErrorKind, Error as DieselError};

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The database cannot be reached or is not ready: the client may retry.
    #[error("{0}")]
    Unavailable(String),
    /// Another transaction held what this one needed for too long; it was rolled back and
    /// the connection is fine. The client may retry.
    #[error("{0}")]
    Busy(String),
    /// The transaction lost a deadlock, or a Galera node refused its commit because another
    /// node committed a conflicting change first (error 1213). It was rolled back; running it
    /// again is safe, and is done a few times before the client is asked to retry.
    #[error("{0}")]
    WriteConflict(String),
    /// The request stopped waiting before the work committed; it was rolled back.
    #[error("the request stopped waiting; the work was rolled back")]
    Abandoned,
    /// The connection failed after the commit was sent: the change may or may not be saved.
    #[error(
        "The database connection failed while the change was being committed: it may or may \
         not have been saved. Repeat a create only with the same Idempotency-Key; read the \
         message back before repeating an edit or a delete."
    )]
    OutcomeUnknown,
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// Failed database calls, by `DbError::kind`.
pub const ERRORS_METRIC: &str = "db_errors_total";

impl DbError {
    /// The values of the `kind` label of `ERRORS_METRIC`.
    pub const KINDS: [&'static str; 6] =
        ["unavailable", "timeout", "write_conflict", "constraint", "not_found", "other"];

    /// The error's `kind` label: `unavailable` (unreachable, not ready, no pooled connection
    /// in time, or lost mid-commit), `timeout` (a lock wait ran out, or the request's time
    /// limit passed first), `write_conflict` (a lost deadlock or a Galera certification
    /// failure, after its retries), `constraint` (a constraint refused the change),
    /// `not_found` (a row the work required is missing), or `other`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Unavailable(_) | Self::OutcomeUnknown => "unavailable",
            Self::Busy(_) | Self::Abandoned => "timeout",
            Self::WriteConflict(_) => "write_conflict",
            Self::Other(error) => match error.downcast_ref::<DieselError>() {
                Some(DieselError::NotFound) => "not_found",
                Some(DieselError::DatabaseError(
                    DatabaseErrorKind::UniqueViolation
                    | DatabaseErrorKind::ForeignKeyViolation
                    | DatabaseErrorKind::CheckViolation
                    | DatabaseErrorKind::NotNullViolation,
                    _,
                )) => "constraint",
                _ => "other",
            },
        }
    }
}

impl From<DieselError> for DbError {
    fn from(error: DieselError) -> Self {
        if is_connection_lost(&error) {
            Self::Unavailable("The database is unreachable; try again shortly.".into())
        } else if is_write_conflict(&error) {
            Self::WriteConflict(
                "The change collided with a concurrent change and was rolled back; try again \
                 shortly."
                    .into(),
            )
        } else if is_contention(&error) {
            Self::Busy("The database is busy; try again shortly.".into())
        } else if matches!(error, DieselError::RollbackTransaction) {
            // Only `CommitGate::enter` asks for a rollback.
            Self::Abandoned
        } else {
            Self::Other(error.into())
        }
    }
}

/// Errors after which the connection is unusable (server gone, restarted, or killed it).
fn is_connection_lost(error: &DieselError) -> bool {
    match error {
        DieselError::DatabaseError(
            DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand,
            _,
        )
        | DieselError::BrokenTransactionManager => true,
        DieselError::RollbackErrorOnCommit { rollback_error, commit_error } => {
            is_connection_lost(rollback_error) || is_connection_lost(commit_error)
        }
        DieselError::DatabaseError(DatabaseErrorKind::Unknown, info) => [
            "gone away",
            "Lost connection",
            "Can't connect",
            "server closed the connection",
            "Server shutdown in progress",
            "Connection was killed",
            // A Galera node that is not synced with its cluster refuses queries (error 1047):
            // a new connection, through the load balancer, reaches one that is.
            "WSREP has not yet prepared node",
        ]
        .iter()
        .any(|needle| info.message().contains(needle)),
        _ => false,
    }
}

/// A lost deadlock or a Galera certification failure (both error 1213, "Deadlock found
/// when trying to get lock"): the transaction was rolled back at once, and running it again
/// usually succeeds.
fn is_write_conflict(error: &DieselError) -> bool {
    match error {
        // Prepared statements report 1213 by its kind; plain statements (COMMIT) by text.
        DieselError::DatabaseError(DatabaseErrorKind::SerializationFailure, _) => true,
        DieselError::DatabaseError(DatabaseErrorKind::Unknown, info) => {
            info.message().contains("Deadlock found")
        }
        DieselError::RollbackErrorOnCommit { commit_error, .. } => is_write_conflict(commit_error),
        _ => false,
    }
}

/// Errors of a transaction that waited too long for a lock: rolled back, worth retrying
/// later, and the connection stays good. SQLite's "database is locked" is one.
fn is_contention(error: &DieselError) -> bool {
    match error {
        DieselError::DatabaseError(DatabaseErrorKind::Unknown, info) => {
            ["database is locked", "database table is locked", "Lock wait timeout exceeded"]
                .iter()
                .any(|needle| info.message().contains(needle))
        }
        DieselError::RollbackErrorOnCommit { commit_error, .. } => is_contention(commit_error),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn database_error(kind: DatabaseErrorKind, message: &str) -> DieselError {
        DieselError::DatabaseError(kind, Box::new(message.to_owned()))
    }

    #[test]
    fn a_server_that_went_away_is_a_lost_connection() {
        for message in [
            "MySQL server has gone away",
            "Lost connection to MySQL server during query",
            "Can't connect to server on '127.0.0.1' (111)",
            "Server shutdown in progress",
            "Connection was killed",
            // A Galera node that is not synced with its cluster refuses queries (error 1047):
            // a new connection, through the load balancer, reaches one that is.
            "WSREP has not yet prepared node",
        ] {
            let error = database_error(DatabaseErrorKind::Unknown, message);
            assert!(is_connection_lost(&error), "{message}");
            assert!(matches!(DbError::from(error), DbError::Unavailable(_)), "{message}");
        }
        assert!(is_connection_lost(&database_error(DatabaseErrorKind::ClosedConnection, "")));
        assert!(is_connection_lost(&DieselError::BrokenTransactionManager));
        let on_commit = DieselError::RollbackErrorOnCommit {
            rollback_error: Box::new(database_error(DatabaseErrorKind::Unknown, "x")),
            commit_error: Box::new(database_error(DatabaseErrorKind::Unknown, "gone away")),
        };
        assert!(is_connection_lost(&on_commit));
    }

    #[test]
    fn a_locked_sqlite_database_is_contention_not_a_lost_connection() {
        let error = database_error(DatabaseErrorKind::Unknown, "database is locked");
        assert!(!is_connection_lost(&error));
        assert!(is_contention(&error));
        assert!(matches!(DbError::from(error), DbError::Busy(_)));
    }

    #[test]
    fn lock_waits_are_contention_and_deadlocks_write_conflicts() {
        let wait = database_error(
            DatabaseErrorKind::Unknown,
            "Lock wait timeout exceeded; try restarting transaction",
        );
        assert!(!is_connection_lost(&wait) && is_contention(&wait) && !is_write_conflict(&wait));
        assert!(matches!(DbError::from(wait), DbError::Busy(_)));
        // A lost deadlock, and a Galera certification failure: the same error 1213.
        let deadlock = database_error(
            DatabaseErrorKind::Unknown,
            "Deadlock found when trying to get lock; try restarting transaction",
        );
        assert!(!is_connection_lost(&deadlock) && is_write_conflict(&deadlock));
        assert!(matches!(DbError::from(deadlock), DbError::WriteConflict(_)));
        let prepared = database_error(DatabaseErrorKind::SerializationFailure, "Deadlock found");
        assert!(matches!(DbError::from(prepared), DbError::WriteConflict(_)));
    }

    #[test]
    fn a_galera_node_that_is_not_synced_is_an_unusable_connection() {
        let error = database_error(
            DatabaseErrorKind::Unknown,
            "WSREP has not yet prepared node for application use",
        );
        assert!(matches!(DbError::from(error), DbError::Unavailable(_)));
    }

    #[test]
    fn query_errors_are_neither() {
        for error in [
            DieselError::NotFound,
            database_error(DatabaseErrorKind::UniqueViolation, "Duplicate entry"),
            database_error(DatabaseErrorKind::Unknown, "Table 'messages' doesn't exist"),
        ] {
            assert!(!is_connection_lost(&error) && !is_contention(&error), "{error}");
            assert!(matches!(DbError::from(error), DbError::Other(_)));
        }
    }

    #[test]
    fn errors_are_counted_by_a_kind_of_the_fixed_set() {
        let cases = [
            (DieselError::NotFound, "not_found"),
            (database_error(DatabaseErrorKind::UniqueViolation, "Duplicate entry"), "constraint"),
            (database_error(DatabaseErrorKind::SerializationFailure, "Deadlock"), "write_conflict"),
            (database_error(DatabaseErrorKind::Unknown, "database is locked"), "timeout"),
            (database_error(DatabaseErrorKind::ClosedConnection, "gone"), "unavailable"),
            (DieselError::RollbackTransaction, "timeout"),
            (database_error(DatabaseErrorKind::Unknown, "no such table: messages"), "other"),
        ];
        for (error, kind) in cases {
            let error = DbError::from(error);
            assert_eq!(error.kind(), kind, "{error}");
            assert!(DbError::KINDS.contains(&kind));
        }
        assert_eq!(DbError::OutcomeUnknown.kind(), "unavailable");
    }

    #[test]
    fn a_rollback_requested_by_the_gate_is_abandoned_work() {
        assert!(matches!(DbError::from(DieselError::RollbackTransaction), DbError::Abandoned));
    }
}
