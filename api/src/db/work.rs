//! One piece of database work as a request waits for it: its ticket (queued, running,
//! committing, given up), the commit gate that rolls back work its request gave up on, the
//! retries of work known to have rolled back, and the blocking helper that runs it all.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use anyhow::anyhow;
use diesel::result::Error as DieselError;

use super::error::{DbError, ERRORS_METRIC};
use super::pool::{self, ConnectionManager, DbConnection};

/// Where one piece of database work stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum State {
    /// Waiting for a blocking thread.
    Queued,
    /// A blocking thread runs it; a transaction may be open.
    Running,
    /// Past the commit gate: the commit is under way or done.
    Committing,
    /// The request gave up before the commit: the work rolls back, or never starts.
    Abandoned,
    /// The request gave up while the commit was under way: the work is never run again.
    AbandonedCommitting,
}

impl State {
    const ALL: [Self; 5] =
        [Self::Queued, Self::Running, Self::Committing, Self::Abandoned, Self::AbandonedCommitting];

    fn from_u8(value: u8) -> Self {
        Self::ALL[usize::from(value)]
    }
}

/// The state of one piece of work, shared by the request that waits for it and the blocking
/// thread that does it. Both move it on with compare-and-swap, so exactly one of them
/// decides whether a write commits after its request stopped waiting.
#[derive(Debug, Default)]
struct Ticket(AtomicU8);

impl Ticket {
    fn state(&self) -> State {
        State::from_u8(self.0.load(Ordering::Acquire))
    }

    /// Moves `from` to `to`; otherwise returns the state it found.
    fn shift(&self, from: State, to: State) -> Result<(), State> {
        self.0
            .compare_exchange(from as u8, to as u8, Ordering::AcqRel, Ordering::Acquire)
            .map(drop)
            .map_err(State::from_u8)
    }

    /// The blocking thread takes the work up; false once the request gave up on it.
    fn start(&self) -> bool {
        self.shift(State::Queued, State::Running).is_ok()
    }

    fn is_abandoned(&self) -> bool {
        self.state() == State::Abandoned
    }

    /// The request gives up on work that has not started; false if it has.
    fn abandon_queued(&self) -> bool {
        self.shift(State::Queued, State::Abandoned).is_ok()
    }

    /// The transaction reaches its commit, unless the request gave up on it: false then.
    fn commit(&self) -> bool {
        self.shift(State::Running, State::Committing).is_ok()
    }

    /// A connection lost once the commit was under way leaves its outcome unknown; other
    /// results stand.
    fn settle<T>(&self, result: Result<T, DbError>) -> Result<T, DbError> {
        match result {
            Err(DbError::Unavailable(_)) if self.is_committing() => Err(DbError::OutcomeUnknown),
            other => other,
        }
    }

    /// The request gives up. True when a commit may be under way or done, so that the
    /// outcome of the work is unknown; otherwise the work will not commit.
    fn abandon(&self) -> bool {
        let before =
            self.0.fetch_update(Ordering::AcqRel, Ordering::Acquire, |state| match State::from_u8(
                state,
            ) {
                State::Committing => Some(State::AbandonedCommitting as u8),
                State::AbandonedCommitting => None,
                _ => Some(State::Abandoned as u8),
            });
        let before = State::from_u8(before.unwrap_or_else(|state| state));
        matches!(before, State::Committing | State::AbandonedCommitting)
    }

    fn is_committing(&self) -> bool {
        matches!(self.state(), State::Committing | State::AbandonedCommitting)
    }

    /// Work that failed in a way known to have rolled it back runs again, unless its request
    /// gave up on it: true when it may.
    fn rerun(&self) -> bool {
        matches!(self.shift(State::Committing, State::Running), Ok(()) | Err(State::Running))
    }
}

/// When failed work runs again: a lost deadlock or a certification conflict (rolled back at
/// once), and a connection lost before the commit was sent (the server rolls back what it
/// had), a few times, while the request's wait for a connection lasts.
#[derive(Debug, Default)]
struct Retries {
    done: u32,
    /// The last failure lost its connection: the next checkout tests the one it gets.
    connection_lost: bool,
}

/// How many times failed work runs again.
const MAX_RETRIES: u32 = 3;
/// Retries count them by the error's kind.
pub const RETRIES_METRIC: &str = "db_retries_total";

impl Retries {
    /// Whether to run the work again after `error`, which it returned before its commit was
    /// known to be under way (`settle` has not made it `OutcomeUnknown`); if so, the retry is
    /// counted and its backoff waited out first.
    fn wait_to_retry(&mut self, error: &DbError, committing: bool, deadline: Instant) -> bool {
        let retryable = match error {
            DbError::WriteConflict(_) => true,
            DbError::Unavailable(_) => !committing,
            _ => false,
        };
        if !retryable || self.done >= MAX_RETRIES || Instant::now() >= deadline {
            return false;
        }
        self.done += 1;
        self.connection_lost = matches!(error, DbError::Unavailable(_));
        metrics::counter!(RETRIES_METRIC, "kind" => error.kind()).increment(1);
        // 10, 20, 40 ms: a conflicting transaction on another node commits in that time.
        std::thread::sleep(Duration::from_millis(10 << (self.done - 1)));
        true
    }
}

/// Handed to write queries: the last step of their transaction, before the commit.
pub struct CommitGate(Arc<Ticket>);

impl CommitGate {
    /// Lets the transaction commit, unless its request gave up on it: then the transaction
    /// rolls back, so that a request that was answered "try again" has changed nothing.
    pub fn enter(&self) -> diesel::QueryResult<()> {
        if self.0.commit() { Ok(()) } else { Err(DieselError::RollbackTransaction) }
    }
}

/// Whether a write of the current request was committing when the request stopped waiting
/// for it (its time limit passed), so that the answer can say the outcome is unknown.
#[derive(Debug, Clone, Default)]
pub struct CommitWatch(Arc<AtomicBool>);

tokio::task_local! {
    static COMMIT_WATCH: CommitWatch;
}

impl CommitWatch {
    /// Runs a request's work with this watch in scope.
    pub async fn scope<F: Future>(&self, work: F) -> F::Output {
        COMMIT_WATCH.scope(self.clone(), work).await
    }

    /// True when a write may have committed although nobody waited for its result.
    pub fn outcome_unknown(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Held by the request while it waits: if the request is dropped (its time limit passed, or
/// the client left), the work is given up, and a commit already under way is reported.
struct AbandonOnDrop {
    ticket: Arc<Ticket>,
    watch: Option<CommitWatch>,
    done: bool,
}

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        if !self.done
            && self.ticket.abandon()
            && let Some(watch) = &self.watch
        {
            watch.0.store(true, Ordering::Release);
        }
    }
}

/// The blocking helper. One deadline covers the wait for a blocking thread and the
/// checkout: the blocking threads are as many as the connections, so in an outage later
/// work queues behind checkouts that are timing out, where the pool's timeout alone
/// would not bound the wait.
pub(super) async fn run<T, F>(
    pool: &r2d2::Pool<ConnectionManager>,
    wait_limit: Duration,
    work: F,
) -> Result<T, DbError>
where
    T: Send + 'static,
    F: FnMut(&mut DbConnection, &CommitGate) -> Result<T, DbError> + Send + 'static,
{
    run_blocking(pool, wait_limit, work).await.inspect_err(|error| {
        metrics::counter!(ERRORS_METRIC, "kind" => error.kind()).increment(1);
    })
}

async fn run_blocking<T, F>(
    pool: &r2d2::Pool<ConnectionManager>,
    wait_limit: Duration,
    mut work: F,
) -> Result<T, DbError>
where
    T: Send + 'static,
    F: FnMut(&mut DbConnection, &CommitGate) -> Result<T, DbError> + Send + 'static,
{
    let deadline = Instant::now() + wait_limit;
    let ticket = Arc::new(Ticket::default());
    let pool = pool.clone();
    let gate = CommitGate(ticket.clone());
    let mut task = tokio::task::spawn_blocking(move || {
        if !gate.0.start() {
            return Err(DbError::Abandoned);
        }
        let mut retries = Retries::default();
        loop {
            let mut conn = if retries.connection_lost {
                pool::checkout_tested(&pool, deadline)?
            } else {
                pool::checkout(&pool, deadline)?
            };
            if gate.0.is_abandoned() {
                return Err(DbError::Abandoned);
            }
            let result = work(&mut conn.conn, &gate);
            if matches!(result, Err(DbError::Unavailable(_))) {
                conn.broken = true;
            }
            drop(conn);
            match result {
                Err(error)
                    if retries.wait_to_retry(&error, gate.0.is_committing(), deadline)
                        && gate.0.rerun() => {}
                result => return gate.0.settle(result),
            }
        }
    });
    let mut guard =
        AbandonOnDrop { ticket, watch: COMMIT_WATCH.try_with(Clone::clone).ok(), done: false };
    let joined = tokio::select! {
        biased;
        joined = &mut task => joined,
        () = tokio::time::sleep_until(deadline.into()) => {
            if guard.ticket.abandon_queued() {
                guard.done = true;
                metrics::counter!("db_pool_checkout_timeouts_total").increment(1);
                return Err(pool::no_connection("no thread came free in time"));
            }
            (&mut task).await
        }
    };
    guard.done = true;
    joined.map_err(|e| DbError::Other(anyhow!("database task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflicts_and_connections_lost_before_the_commit_run_again_a_few_times() {
        let far = Instant::now() + Duration::from_secs(60);
        let conflict = DbError::WriteConflict("1213".into());
        let lost = DbError::Unavailable("gone away".into());
        let mut retries = Retries::default();
        assert!(retries.wait_to_retry(&lost, false, far) && retries.connection_lost);
        assert!(retries.wait_to_retry(&conflict, false, far) && !retries.connection_lost);
        assert!(
            retries.wait_to_retry(&conflict, true, far),
            "a refused commit is known rolled back"
        );
        assert!(!retries.wait_to_retry(&conflict, false, far), "at most {MAX_RETRIES} times");

        let mut retries = Retries::default();
        assert!(!retries.wait_to_retry(&lost, true, far), "lost while committing: outcome unknown");
        assert!(!retries.wait_to_retry(&DbError::Busy("lock wait".into()), false, far));
        assert!(!retries.wait_to_retry(&conflict, false, Instant::now()), "the wait is over");
    }

    #[test]
    fn work_runs_again_only_while_its_request_waits() {
        let gate = CommitGate(Arc::default());
        assert!(gate.0.start());
        assert!(gate.enter().is_ok());
        assert!(gate.0.rerun(), "a commit refused by certification runs again");
        assert!(gate.enter().is_ok(), "and may commit");
        assert!(gate.0.abandon(), "given up while committing");
        assert!(!gate.0.rerun(), "never runs again");
        assert!(gate.0.is_committing());
    }

    #[test]
    fn work_given_up_before_it_starts_never_runs() {
        let ticket = Ticket::default();
        assert!(ticket.abandon_queued());
        assert!(!ticket.start());
    }

    #[test]
    fn work_given_up_while_running_rolls_back_at_the_gate() {
        let gate = CommitGate(Arc::default());
        assert!(gate.0.start());
        assert!(!gate.0.abandon_queued(), "running work is not queued any more");
        assert!(!gate.0.abandon(), "nothing committed: the outcome is known");
        assert!(matches!(gate.enter(), Err(DieselError::RollbackTransaction)));
    }

    #[test]
    fn a_connection_lost_during_the_commit_leaves_the_outcome_unknown() {
        let lost = || Err::<(), _>(DbError::Unavailable("gone away".into()));
        let gate = CommitGate(Arc::default());
        assert!(gate.0.start());
        assert!(matches!(gate.0.settle(lost()), Err(DbError::Unavailable(_))), "before the commit");
        assert!(gate.enter().is_ok());
        assert!(matches!(gate.0.settle(lost()), Err(DbError::OutcomeUnknown)));
        let busy = Err::<(), _>(DbError::Busy("rolled back".into()));
        assert!(matches!(gate.0.settle(busy), Err(DbError::Busy(_))), "a refused commit is known");
        assert!(gate.0.settle(Ok(())).is_ok());
    }

    #[test]
    fn work_given_up_while_committing_has_an_unknown_outcome() {
        let gate = CommitGate(Arc::default());
        assert!(gate.0.start());
        assert!(gate.enter().is_ok());
        assert!(gate.0.abandon(), "the commit may land");
    }
}
