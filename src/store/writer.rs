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
use crate::error::Error;

/// Jobs committed together at most. Larger batches amortize the fsync further but hold
/// earlier callers longer.
pub const MAX_JOBS: usize = 512;

/// What a job hands back after running: whether it succeeded (else its savepoint is rolled
/// back), and how to answer its caller once the batch's fate is known.
type Finish = Box<dyn FnOnce(Result<(), Error>) + Send>;
type Job = Box<dyn for<'c> FnOnce(&'c mut Conn) -> BoxFuture<'c, (bool, Finish)> + Send>;

/// Handle to the writer task; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Writer {
    jobs: mpsc::Sender<Job>,
}

impl Writer {
    /// Starts the task on `pool` (the store's single write connection).
    pub(crate) fn spawn(pool: AnyPool, backend: Backend) -> Self {
        let (jobs, mut queue) = mpsc::channel::<Job>(4 * MAX_JOBS);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(MAX_JOBS);
            while let Some(first) = queue.recv().await {
                batch.push(first);
                while batch.len() < MAX_JOBS {
                    match queue.try_recv() {
                        Ok(job) => batch.push(job),
                        Err(_) => break,
                    }
                }
                run_batch(&pool, backend, &mut batch).await;
            }
        });
        Self { jobs }
    }
}

/// Runs and commits one batch, then answers every job in it. Jobs that never ran (the
/// transaction failed first) are dropped, and their callers see the database as unavailable.
async fn run_batch(pool: &AnyPool, backend: Backend, batch: &mut Vec<Job>) {
    let mut finishers: Vec<Finish> = Vec::with_capacity(batch.len());
    let committed: Result<(), Error> = async {
        let mut tx = begin_write_on(pool, backend).await?;
        for job in batch.drain(..) {
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
        tx.commit().await?;
        Ok(())
    }
    .await;
    batch.clear();
    if let Err(e) = &committed {
        tracing::warn!(error = %e, jobs = finishers.len(), "write batch not committed");
    }
    for finish in finishers {
        finish(committed.clone());
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
            .jobs
            .send(job)
            .await
            .map_err(|_| unavailable())?;
        answer.await.map_err(|_| unavailable())?
    }
}
