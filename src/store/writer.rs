//! Group commit: one writer task runs every hot write — issuance reservations and records,
//! access events, refusal events — in shared transactions.
//!
//! A caller hands [`Store::write`] its work and waits. The task takes what is queued (up to
//! [`MAX_JOBS`]), opens one `BEGIN IMMEDIATE` transaction, runs each job inside its own
//! SAVEPOINT (a job that fails is rolled back alone and gets its own error), commits once (one
//! fsync for the batch), and only then answers each caller. Nothing is acknowledged before it
//! is durable; if the commit fails, every job in the batch fails and none of it is stored.
//!
//! Jobs run one after another on the one write connection, so rules that read then write
//! (uniqueness checks, the next audit sequence number) see every earlier job of the batch.
//! Rare writes (start-up recovery, migrations) still open their own transaction on the same
//! connection and simply wait their turn.

use futures_util::future::BoxFuture;
use sqlx::AnyPool;
use tokio::sync::{mpsc, oneshot};

use super::{begin_write_on, Backend, Conn, Store};
use crate::audit::AuditEvent;
use crate::error::Error;

/// Jobs committed together at most. Larger batches amortize the fsync further but hold
/// earlier callers longer.
pub const MAX_JOBS: usize = 512;

/// What a job hands back after running: whether it succeeded (else its savepoint is rolled
/// back), and how to answer its caller once the batch's fate is known.
type Finish = Box<dyn FnOnce(Result<(), Error>) + Send>;
type Job = Box<dyn for<'c> FnOnce(&'c mut Conn) -> BoxFuture<'c, (bool, Finish)> + Send>;

/// Audit events that change nothing else (access reports, refusals), and where to send their
/// first sequence number.
struct Append {
    events: Vec<AuditEvent>,
    count: usize,
    done: oneshot::Sender<Result<i64, Error>>,
}

/// One unit of queued work.
enum Work {
    Job(Job),
    Append(Append),
}

/// Handle to the writer task; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Writer {
    queue: mpsc::Sender<Work>,
}

impl Writer {
    /// Starts the task on `pool` (the store's single write connection).
    pub(crate) fn spawn(pool: AnyPool, backend: Backend) -> Self {
        let (queue, mut incoming) = mpsc::channel::<Work>(4 * MAX_JOBS);
        tokio::spawn(async move {
            let (mut jobs, mut appends) = (Vec::new(), Vec::new());
            while let Some(first) = incoming.recv().await {
                let mut next = Some(first);
                let mut taken = 0;
                while let Some(work) = next.take() {
                    match work {
                        Work::Job(job) => jobs.push(job),
                        Work::Append(append) => appends.push(append),
                    }
                    taken += 1;
                    if taken < MAX_JOBS {
                        next = incoming.try_recv().ok();
                    }
                }
                run_batch(&pool, backend, &mut jobs, &mut appends).await;
            }
        });
        Self { queue }
    }
}

/// Runs and commits one batch, then answers every caller in it: the jobs, each in its own
/// savepoint, then all the pure audit appends as one multi-row INSERT (so a hundred gateways
/// reporting at once cost two statements, not four hundred). Work that never ran (the
/// transaction failed first) is dropped, and its callers see the database as unavailable.
async fn run_batch(
    pool: &AnyPool,
    backend: Backend,
    jobs: &mut Vec<Job>,
    appends: &mut Vec<Append>,
) {
    let mut finishers: Vec<Finish> = Vec::with_capacity(jobs.len());
    let mut first_seq = 0;
    let committed: Result<(), Error> = async {
        let mut tx = begin_write_on(pool, backend).await?;
        for job in jobs.drain(..) {
            sqlx::query("SAVEPOINT job").execute(&mut *tx).await?;
            let (ok, finish) = job(&mut tx).await;
            finishers.push(finish);
            if !ok {
                sqlx::query("ROLLBACK TO SAVEPOINT job")
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query("RELEASE SAVEPOINT job")
                .execute(&mut *tx)
                .await?;
        }
        if !appends.is_empty() {
            let events: Vec<AuditEvent> = appends
                .iter_mut()
                .flat_map(|a| std::mem::take(&mut a.events))
                .collect();
            first_seq = super::audit::append_many(&mut tx, &events).await?;
        }
        tx.commit().await?;
        Ok(())
    }
    .await;
    if let Err(e) = &committed {
        tracing::warn!(
            error = %e,
            jobs = finishers.len(),
            appends = appends.len(),
            "write batch not committed"
        );
    }
    for finish in finishers {
        finish(committed.clone());
    }
    let mut seq = first_seq;
    for append in appends.drain(..) {
        let answer = committed.clone().map(|()| seq);
        seq += append.count as i64;
        let _ = append.done.send(answer);
    }
}

impl Store {
    /// Runs `work` in the next group-committed write transaction and returns its result once
    /// that transaction is durable. If `work` fails, its changes are rolled back and nothing
    /// else in the batch is affected.
    pub(crate) async fn write<T, F>(&self, work: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut Conn) -> BoxFuture<'c, Result<T, Error>> + Send + 'static,
    {
        let (done, answer) = oneshot::channel::<Result<T, Error>>();
        let job: Job = Box::new(move |conn| {
            Box::pin(async move {
                let result = work(conn).await;
                let ok = result.is_ok();
                let finish: Finish = Box::new(move |committed| {
                    let _ = done.send(committed.and(result));
                });
                (ok, finish)
            })
        });
        let unavailable = || Error::Unavailable("database unavailable; retry later".into());
        self.writer_task
            .queue
            .send(Work::Job(job))
            .await
            .map_err(|_| unavailable())?;
        answer.await.map_err(|_| unavailable())?
    }

    /// Appends audit events that change nothing else, in order and with contiguous sequence
    /// numbers, in the next group-committed transaction; returns the first sequence number
    /// once it is durable. All of a batch's appends share one multi-row INSERT.
    pub(crate) async fn append_only(&self, events: Vec<AuditEvent>) -> Result<i64, Error> {
        let (done, answer) = oneshot::channel();
        let count = events.len();
        let unavailable = || Error::Unavailable("database unavailable; retry later".into());
        self.writer_task
            .queue
            .send(Work::Append(Append {
                events,
                count,
                done,
            }))
            .await
            .map_err(|_| unavailable())?;
        answer.await.map_err(|_| unavailable())?
    }
}
