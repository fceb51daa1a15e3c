//! The request time limit (`REQUEST_TIMEOUT_SECS`), with an honest answer when it passes.
//!
//! Dropping a request at its limit also gives up its database work (see `db::CommitGate`):
//! work that has not reached its commit rolls back, so the usual answer, 503 with
//! `Retry-After`, is true: nothing changed, try again. Only when the limit passes while a
//! commit is under way is the outcome unknown; the answer then says so (504,
//! `/problems/outcome-unknown`) and does not invite a blind retry.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::db::CommitWatch;
use crate::error::ApiError;

pub async fn enforce(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    let watch = CommitWatch::default();
    // The handler, and with it any wait for the database, is dropped within this statement
    // when the limit passes: the watch knows by the next line whether a commit was under way.
    let finished = watch.scope(tokio::time::timeout(limit, next.run(request))).await;
    match finished {
        Ok(response) => response,
        Err(_) if watch.outcome_unknown() => ApiError::OutcomeUnknown(
            "The server's time limit passed while the change was being committed: it may or \
             may not have been saved. Repeat a create only with the same Idempotency-Key; read \
             the message back before repeating an edit or a delete."
                .into(),
        )
        .into_response(),
        Err(_) => ApiError::Unavailable(
            "The request did not complete within the server's time limit.".into(),
        )
        .into_response(),
    }
}
