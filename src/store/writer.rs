//! Group commit: one writer task runs every hot write — issued certificates, access events,
//! refusal events — in shared transactions.
//!
//! A caller hands [`Store::write`] its work and waits. The task takes what is queued (up to
//! [`MAX_JOBS`]), opens one `BEGIN IMMEDIATE` transaction, runs each job (a job that fails is
//! undone alone and gets its own error: on PostgreSQL by a SAVEPOINT per job; on SQLite, where
//! savepoints cost page copies, jobs refuse before they change anything, and a job that fails
//! after a change fails the whole batch), commits once (one fsync for the batch), and only
//! then answers each caller. Nothing is acknowledged before it
//! is durable; if the commit fails, every job in the batch fails and none of it is stored.
//!
//! Jobs run one after another on the one write connection, so rules that read then write
//! (uniqueness checks, the next audit sequence number) see every earlier job of the batch.
//!
//! On SQLite the writer is a thread with its own connection ([`LiteTx`]): a batch's statements
//! are direct calls into SQLite, prepared once, with no hand-off to another thread per
//! statement. Rare writes (start-up recovery, revocations, CRLs, migrations) run on the
//! store's sqlx write connection and take turns with batches through the store's write gate.
//! On PostgreSQL the writer is a task on the runtime, and the advisory lock orders everything.

use std::path::Path;
use std::sync::Arc;

use std::time::Instant;

use futures_util::future::BoxFuture;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use sqlx::AnyPool;
use tokio::sync::{mpsc, oneshot, Mutex};

use super::audit::Ready;
use super::sql::{block_on, spawn_checkpointer, LiteTx, SqlxTx, Tx};
use super::{begin_write_on, Backend, Store};
use crate::error::Error;

/// Jobs committed together at most. Larger batches amortize the fsync further but hold
/// earlier callers longer.
pub const MAX_JOBS: usize = 512;

/// What a job hands back after running: whether it succeeded (else its savepoint is rolled
/// back), and how to answer its caller once the batch's fate is known.
type Finish = Box<dyn FnOnce(Result<(), Error>) + Send>;
type Job = Box<dyn for<'c> FnOnce(&'c mut dyn Tx) -> BoxFuture<'c, (bool, Finish)> + Send>;

/// Audit events that change nothing else (access reports, refusals), and where to send their
/// first sequence number.
struct Append {
    events: Vec<Ready>,
    count: usize,
    done: oneshot::Sender<Result<i64, Error>>,
}

/// One unit of queued work.
enum Work {
    Job(Job),
    Append(Append),
    /// Finish the batch in hand and end: the store is closing.
    Stop,
}

/// One batch: the jobs and appends taken from the queue, and the answers owed.
#[derive(Default)]
struct Batch {
    jobs: Vec<Job>,
    appends: Vec<Append>,
    finishers: Vec<Finish>,
    /// The job (index into `finishers`) that failed after changing something, which
    /// rolled back the batch: it gets its own error, the others a retryable one.
    failed_part_way: Option<usize>,
}

impl Batch {
    /// Adds `first` and whatever else is queued, up to [`MAX_JOBS`].
    /// Takes `first` and whatever else is queued, up to [`MAX_JOBS`]; returns false once a
    /// [`Work::Stop`] is taken (the batch in hand is still committed).
    fn take(&mut self, first: Work, incoming: &mut mpsc::Receiver<Work>) -> bool {
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(work) = next.take() {
            match work {
                Work::Job(job) => self.jobs.push(job),
                Work::Append(append) => self.appends.push(append),
                Work::Stop => return false,
            }
            taken += 1;
            if taken < MAX_JOBS {
                next = incoming.try_recv().ok();
            }
        }
        true
    }

    fn is_empty(&self) -> bool {
        self.jobs.is_empty() && self.appends.is_empty()
    }

    /// Writes in the batch: jobs, and requests to append events.
    fn len(&self) -> usize {
        self.jobs.len() + self.appends.len()
    }

    /// Runs the batch inside an open transaction: the jobs, each in its own savepoint, then
    /// all the pure audit appends as one multi-row INSERT (so a hundred gateways reporting at
    /// once cost two statements, not four hundred). Returns the appends' first sequence number.
    async fn run(&mut self, tx: &mut dyn Tx) -> Result<i64, Error> {
        for job in self.jobs.drain(..) {
            match tx.changes() {
                // SQLite's writer: a job refuses before it changes anything (its checks come
                // first), so it needs no savepoint, whose page copies cost a fifth of the
                // writer's time. A job that fails after a change cannot be undone alone:
                // then the whole batch is rolled back, and its callers may retry.
                Some(before) => {
                    let (ok, finish) = job(&mut *tx).await;
                    self.finishers.push(finish);
                    if !ok && tx.changes() != Some(before) {
                        self.failed_part_way = Some(self.finishers.len() - 1);
                        return Err(Error::Unavailable(
                            "another write of the same batch failed part-way, so nothing was \
                             stored; retry"
                                .into(),
                        ));
                    }
                }
                None => {
                    tx.execute("SAVEPOINT job", &[]).await?;
                    let (ok, finish) = job(&mut *tx).await;
                    self.finishers.push(finish);
                    if !ok {
                        tx.execute("ROLLBACK TO SAVEPOINT job", &[]).await?;
                    }
                    tx.execute("RELEASE SAVEPOINT job", &[]).await?;
                }
            }
        }
        if self.appends.is_empty() {
            return Ok(0);
        }
        let events: Vec<Ready> = self
            .appends
            .iter_mut()
            .flat_map(|a| std::mem::take(&mut a.events))
            .collect();
        super::audit::append_many(tx, &events).await
    }

    /// SQLite: runs the batch in one transaction on `conn` and commits it.
    fn commit_on(&mut self, conn: &mut LiteTx) -> Result<i64, Error> {
        let committed = conn.batch("BEGIN IMMEDIATE").and_then(|()| {
            let first_seq = block_on(self.run(conn))?;
            conn.batch("COMMIT")?;
            Ok(first_seq)
        });
        if committed.is_err() {
            // Whatever failed, leave no transaction open (an error here only means none was).
            let _ = conn.batch("ROLLBACK");
        }
        committed
    }

    /// Answers every caller once the batch's fate is known. Work that never ran (the
    /// transaction failed first) is dropped, and its callers see the database as unavailable.
    fn answer(&mut self, committed: Result<i64, Error>) {
        if let Err(e) = &committed {
            tracing::warn!(
                error = %e,
                jobs = self.finishers.len(),
                appends = self.appends.len(),
                "write batch not committed"
            );
        }
        self.jobs.clear();
        let status = committed.as_ref().map(|_| ()).map_err(Clone::clone);
        let failed = self.failed_part_way.take();
        for (i, finish) in self.finishers.drain(..).enumerate() {
            // The job that failed part-way keeps its own error (it never succeeded).
            finish(if Some(i) == failed {
                Ok(())
            } else {
                status.clone()
            });
        }
        let mut seq = committed.as_ref().copied().unwrap_or(0);
        for append in self.appends.drain(..) {
            let answer = status.clone().map(|()| seq);
            seq += append.count as i64;
            let _ = append.done.send(answer);
        }
    }
}

/// Handle to the writer; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Writer {
    queue: mpsc::Sender<Work>,
    stats: WriterStats,
    /// What [`Writer::close`] waits for: the writer and, for SQLite, its checkpointer.
    ended: Arc<std::sync::Mutex<Vec<Ending>>>,
}

/// The group-commit writer's figures (exported at `/metrics`).
#[derive(Debug, Clone)]
pub struct WriterStats {
    /// Writes per batch (jobs and append requests), committed or not.
    pub batch_size: Histogram,
    /// From BEGIN to the end of COMMIT (or the failure) of a batch, in seconds.
    pub commit_seconds: Histogram,
    /// Batches that did not commit (every write in them failed).
    pub failed_batches: Counter,
}

impl WriterStats {
    fn new() -> Self {
        Self {
            // 1, 2, 4, … 512 (MAX_JOBS).
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
            // 0.25 ms … 4 s.
            commit_seconds: Histogram::new(exponential_buckets(0.000_25, 2.0, 15)),
            failed_batches: Counter::default(),
        }
    }

    /// Times `commit` and counts the batch of `size` writes it runs.
    fn observe<T>(&self, size: usize, started: Instant, committed: &Result<T, Error>) {
        self.batch_size.observe(size as f64);
        self.commit_seconds.observe(started.elapsed().as_secs_f64());
        if committed.is_err() {
            self.failed_batches.inc();
        }
    }
}

#[derive(Debug)]
enum Ending {
    Thread(std::thread::JoinHandle<()>),
    Task(tokio::task::JoinHandle<()>),
}

impl Writer {
    /// PostgreSQL: a task on the runtime, batches on `pool` (the store's write connection).
    pub(crate) fn spawn_sqlx(pool: AnyPool, backend: Backend) -> Self {
        let (queue, mut incoming) = mpsc::channel::<Work>(4 * MAX_JOBS);
        let stats = WriterStats::new();
        let observed = stats.clone();
        let task = tokio::spawn(async move {
            let mut batch = Batch::default();
            while let Some(first) = incoming.recv().await {
                let more = batch.take(first, &mut incoming);
                if batch.is_empty() {
                    break;
                }
                let (size, started) = (batch.len(), Instant::now());
                let committed = async {
                    let mut tx = begin_write_on(&pool, backend).await?;
                    let first_seq = batch.run(&mut SqlxTx(&mut *tx)).await?;
                    tx.commit().await?;
                    Ok(first_seq)
                }
                .await;
                observed.observe(size, started, &committed);
                batch.answer(committed);
                if !more {
                    break;
                }
            }
        });
        Self {
            queue,
            stats,
            ended: Arc::new(std::sync::Mutex::new(vec![Ending::Task(task)])),
        }
    }

    /// SQLite: a thread of its own with its own connection, so a batch's statements are
    /// direct calls. `gate` is the store's write gate: held for each batch, so the store's
    /// rare writes on its other connection take turns with batches instead of contending
    /// for SQLite's lock.
    pub(crate) fn spawn_sqlite(path: &Path, gate: Arc<Mutex<()>>) -> Result<Self, Error> {
        let mut conn = LiteTx::open(path)?.without_autocheckpoint()?;
        let (checkpoint_stop, stopped) = std::sync::mpsc::channel::<()>();
        let checkpointer = spawn_checkpointer(path.to_owned(), gate.clone(), stopped)?;
        let (queue, mut incoming) = mpsc::channel::<Work>(4 * MAX_JOBS);
        let stats = WriterStats::new();
        let observed = stats.clone();
        let writer = std::thread::Builder::new()
            .name("medid-writer".into())
            .spawn(move || {
                // Dropped when this thread ends, which stops the checkpointer.
                let _checkpoint_stop = checkpoint_stop;
                let mut batch = Batch::default();
                while let Some(first) = incoming.blocking_recv() {
                    let more = batch.take(first, &mut incoming);
                    if batch.is_empty() {
                        break;
                    }
                    let held = gate.blocking_lock();
                    let (size, started) = (batch.len(), Instant::now());
                    let committed = batch.commit_on(&mut conn);
                    drop(held);
                    observed.observe(size, started, &committed);
                    batch.answer(committed);
                    if !more {
                        break;
                    }
                }
            })
            .map_err(|e| Error::internal("starting the writer thread", e))?;
        Ok(Self {
            queue,
            stats,
            ended: Arc::new(std::sync::Mutex::new(vec![
                Ending::Thread(writer),
                Ending::Thread(checkpointer),
            ])),
        })
    }

    pub(crate) fn stats(&self) -> &WriterStats {
        &self.stats
    }

    /// Commits what is queued, then ends the writer (and the checkpointer) and waits until
    /// they have closed their connections. Writes sent afterwards fail as unavailable.
    pub(crate) async fn close(&self) {
        let _ = self.queue.send(Work::Stop).await;
        let endings: Vec<Ending> = std::mem::take(
            &mut *self
                .ended
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        for ending in endings {
            let ended = match ending {
                Ending::Task(task) => task.await.is_ok(),
                Ending::Thread(thread) => tokio::task::spawn_blocking(move || thread.join())
                    .await
                    .is_ok_and(|joined| joined.is_ok()),
            };
            if !ended {
                tracing::error!("a store writer thread ended by panicking");
            }
        }
    }
}

/// Wraps `work` as a job, and the receiver of its answer.
fn job<T, F>(work: F) -> (Job, oneshot::Receiver<Result<T, Error>>)
where
    T: Send + 'static,
    F: for<'c> FnOnce(&'c mut dyn Tx) -> BoxFuture<'c, Result<T, Error>> + Send + 'static,
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
    (job, answer)
}

impl Store {
    /// Runs `work` in the next group-committed write transaction and returns its result once
    /// that transaction is durable. If `work` fails, its changes are rolled back and nothing
    /// else in the batch is affected.
    pub(crate) async fn write<T, F>(&self, work: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut dyn Tx) -> BoxFuture<'c, Result<T, Error>> + Send + 'static,
    {
        let (job, answer) = job(work);
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
    pub(crate) async fn append_only(&self, events: Vec<Ready>) -> Result<i64, Error> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sql::Arg;

    fn insert(x: i64) -> impl for<'c> FnOnce(&'c mut dyn Tx) -> BoxFuture<'c, Result<(), Error>> {
        move |tx| {
            Box::pin(async move {
                tx.execute("INSERT INTO t (x) VALUES ($1)", &[Arg::Int(x)])
                    .await?;
                Ok(())
            })
        }
    }

    fn refuse() -> impl for<'c> FnOnce(&'c mut dyn Tx) -> BoxFuture<'c, Result<(), Error>> {
        |_tx| Box::pin(async { Err(Error::AlreadyExists("refused before writing".into())) })
    }

    /// Inserts `x`, then fails on a duplicate (a change, then an error).
    fn half(x: i64) -> impl for<'c> FnOnce(&'c mut dyn Tx) -> BoxFuture<'c, Result<(), Error>> {
        move |tx| {
            Box::pin(async move {
                tx.execute("INSERT INTO t (x) VALUES ($1)", &[Arg::Int(x)])
                    .await?;
                tx.execute("INSERT INTO t (x) VALUES ($1)", &[Arg::Int(1)])
                    .await?;
                Ok(())
            })
        }
    }

    fn rows(conn: &mut LiteTx) -> Vec<i64> {
        block_on(conn.fetch_all("SELECT x FROM t ORDER BY x", &[]))
            .expect("select")
            .iter()
            .map(|r| r.int(0).expect("integer"))
            .collect()
    }

    type Work = Box<dyn for<'c> FnOnce(&'c mut dyn Tx) -> BoxFuture<'c, Result<(), Error>> + Send>;

    fn run(conn: &mut LiteTx, works: Vec<Work>) -> Vec<Result<(), Error>> {
        let mut batch = Batch::default();
        let mut answers = Vec::new();
        for work in works {
            let (job, answer) = job(work);
            batch.jobs.push(job);
            answers.push(answer);
        }
        let committed = batch.commit_on(conn);
        batch.answer(committed);
        // A job that never ran is dropped; its caller sees the database as unavailable, as
        // Store::write reports it.
        answers
            .into_iter()
            .map(|mut a| {
                a.try_recv()
                    .unwrap_or_else(|_| Err(Error::Unavailable("never ran".into())))
            })
            .collect()
    }

    /// A fresh database with one table `t (x UNIQUE)`; keep the directory alive.
    fn table() -> (tempfile::TempDir, LiteTx) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut conn = LiteTx::open(&dir.path().join("w.db")).expect("open");
        conn.batch("CREATE TABLE t (x INTEGER NOT NULL UNIQUE)")
            .expect("schema");
        (dir, conn)
    }

    #[test]
    fn a_refusal_before_any_change_leaves_the_rest_of_the_batch() {
        let (_dir, mut conn) = table();
        let out = run(
            &mut conn,
            vec![Box::new(insert(1)), Box::new(refuse()), Box::new(insert(2))],
        );
        assert!(out[0].is_ok() && out[2].is_ok(), "{out:?}");
        assert!(matches!(out[1], Err(Error::AlreadyExists(_))), "{out:?}");
        assert_eq!(rows(&mut conn), vec![1, 2]);
    }

    #[test]
    fn a_failure_after_a_change_rolls_back_the_batch_and_keeps_its_own_error() {
        let (_dir, mut conn) = table();
        let out = run(
            &mut conn,
            vec![Box::new(insert(1)), Box::new(half(5)), Box::new(insert(2))],
        );
        assert!(matches!(out[0], Err(Error::Unavailable(_))), "{out:?}");
        assert!(
            matches!(out[1], Err(Error::Internal(_))),
            "its own error: {out:?}"
        );
        assert!(
            matches!(out[2], Err(Error::Unavailable(_))),
            "never ran: {out:?}"
        );
        assert!(rows(&mut conn).is_empty(), "nothing of the batch is stored");
        // The connection is usable again: the next batch commits.
        let out = run(&mut conn, vec![Box::new(insert(3))]);
        assert!(out[0].is_ok(), "{out:?}");
        assert_eq!(rows(&mut conn), vec![3]);
    }
}
