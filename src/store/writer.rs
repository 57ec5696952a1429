//! Group commit: one writer task runs every hot write — issued certificates, access events,
//! refusal events — in shared transactions.
//!
//! A caller queues a typed job ([`Record`]: a signed certificate and what it completes; or
//! audit events to append) and waits. The task takes what is queued (up to
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
//! On SQLite the writer is a thread with its own connection ([`LiteConn`](super::sql::LiteConn)): a batch's statements
//! are direct calls into SQLite, prepared once, with no hand-off to another thread per
//! statement. Rare writes (start-up recovery, revocations, CRLs, migrations) run on the
//! store's sqlx write connection and take turns with batches through the store's write gate.
//! On PostgreSQL the writer is a task on the runtime, and the advisory lock orders everything.

use std::path::Path;
use std::sync::Arc;

use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use sqlx::AnyPool;
use tokio::sync::{mpsc, oneshot};

use super::audit::Ready;
use super::certificates::{self, Completion, NewCertificate, Recorded};
use super::sql::{spawn_checkpointer, LiteConn, Tx};
use super::{begin_write_on, Store, WriteGate};
use crate::error::Error;
use crate::issuance::SignedCertificate;

/// Jobs committed together at most. Larger batches amortize the fsync further but hold
/// earlier callers longer.
pub const MAX_JOBS: usize = 512;

/// A signed certificate to record with what it completes and its event (the store's step of
/// the issuance cycle, docs/ISSUANCE-CYCLE.md), and where its answer goes.
struct Record {
    new: NewCertificate,
    signed: SignedCertificate,
    completion: Completion,
    event: Ready,
    done: oneshot::Sender<Result<Recorded, Error>>,
}

/// A record's outcome inside the batch, held until the batch's fate is known.
type Answer = (
    oneshot::Sender<Result<Recorded, Error>>,
    Result<Recorded, Error>,
);

/// Audit events that change nothing else (access reports, refusals), and where to send their
/// sequence numbers.
struct Append {
    events: Vec<Ready>,
    /// The reporter's id of each event (empty: none has one). An event whose id its actor
    /// already reported is not appended again: it gets the earlier event's number.
    keys: Vec<Option<String>>,
    done: oneshot::Sender<Result<Vec<i64>, Error>>,
}

/// One unit of queued work.
enum Work {
    Record(Box<Record>),
    Append(Append),
    /// Finish the batch in hand and end: the store is closing.
    Stop,
}

/// One batch: the jobs and appends taken from the queue, and the answers owed.
#[derive(Default)]
struct Batch {
    records: Vec<Record>,
    appends: Vec<Append>,
    answers: Vec<Answer>,
    /// Each append's sequence numbers, once the batch has run.
    numbered: Vec<Vec<i64>>,
    /// The record (index into `answers`) that failed after changing something, which
    /// rolled back the batch: it gets its own error, the others a retryable one.
    failed_part_way: Option<usize>,
}

impl Batch {
    /// Takes `first` and whatever else is queued, up to [`MAX_JOBS`]; returns false once a
    /// [`Work::Stop`] is taken (the batch in hand is still committed).
    fn take(&mut self, first: Work, incoming: &mut mpsc::Receiver<Work>) -> bool {
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(work) = next.take() {
            match work {
                Work::Record(record) => self.records.push(*record),
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
        self.records.is_empty() && self.appends.is_empty()
    }

    /// Writes in the batch: records, and requests to append events.
    fn len(&self) -> usize {
        self.records.len() + self.appends.len()
    }

    /// Runs the batch inside an open transaction: the records, each in its own savepoint,
    /// then all the pure audit appends as one multi-row INSERT (so a hundred gateways
    /// reporting at once cost two statements, not four hundred), leaving each append's
    /// sequence numbers in `numbered`.
    async fn run(&mut self, tx: &mut Tx<'_>) -> Result<(), Error> {
        for record in self.records.drain(..) {
            let Record {
                new,
                signed,
                completion,
                event,
                done,
            } = record;
            match tx.changes() {
                // SQLite's writer: a record refuses before it changes anything (its checks
                // come first), so it needs no savepoint, whose page copies cost a fifth of the
                // writer's time. One that fails after a change cannot be undone alone: then
                // the whole batch is rolled back, and its callers may retry.
                Some(before) => {
                    let result =
                        certificates::record_in(tx, &new, &signed, &completion, &event).await;
                    let failed = result.is_err();
                    self.answers.push((done, result));
                    if failed && tx.changes() != Some(before) {
                        self.failed_part_way = Some(self.answers.len() - 1);
                        return Err(Error::Unavailable(
                            "another write of the same batch failed part-way, so nothing was \
                             stored; retry"
                                .into(),
                        ));
                    }
                }
                None => {
                    tx.batch("SAVEPOINT job").await?;
                    let result =
                        certificates::record_in(tx, &new, &signed, &completion, &event).await;
                    if result.is_err() {
                        tx.batch("ROLLBACK TO SAVEPOINT job").await?;
                    }
                    tx.batch("RELEASE SAVEPOINT job").await?;
                    self.answers.push((done, result));
                }
            }
        }
        if self.appends.is_empty() {
            return Ok(());
        }
        let keyed = self.appends.iter().any(|a| !a.keys.is_empty());
        if !keyed {
            let counts: Vec<usize> = self.appends.iter().map(|a| a.events.len()).collect();
            let events: Vec<Ready> = self
                .appends
                .iter_mut()
                .flat_map(|a| std::mem::take(&mut a.events))
                .collect();
            let mut seq = super::audit::append_many(tx, &events).await?;
            self.numbered = counts
                .into_iter()
                .map(|count| {
                    let first = seq;
                    seq += count as i64;
                    (first..seq).collect()
                })
                .collect();
            return Ok(());
        }
        self.run_keyed(tx).await
    }

    /// The appends when some events carry their reporter's id: those already in the log (or
    /// earlier in this batch) are not appended again.
    async fn run_keyed(&mut self, tx: &mut Tx<'_>) -> Result<(), Error> {
        let mut wanted: Vec<(&str, &str)> = Vec::new();
        for a in &self.appends {
            for (event, key) in a.events.iter().zip(&a.keys) {
                if let Some(key) = key {
                    wanted.push((event.actor_uri(), key));
                }
            }
        }
        let mut known = super::audit::known_event_ids(tx, &wanted).await?;
        // Where each event lands: an earlier number, or the n-th new event.
        enum Lands {
            Known(i64),
            New(usize),
        }
        let mut fresh: Vec<Ready> = Vec::new();
        let mut fresh_keys: Vec<(usize, String, String)> = Vec::new();
        let mut landing: Vec<Vec<Lands>> = Vec::with_capacity(self.appends.len());
        let mut pending: std::collections::HashMap<(String, String), usize> =
            std::collections::HashMap::new();
        for a in &mut self.appends {
            let keys = std::mem::take(&mut a.keys);
            let events = std::mem::take(&mut a.events);
            let mut lands = Vec::with_capacity(events.len());
            let n = events.len();
            for (event, key) in events
                .into_iter()
                .zip(keys.into_iter().chain(std::iter::repeat(None)).take(n))
            {
                match key {
                    Some(key) => {
                        let id = (event.actor_uri().to_owned(), key);
                        if let Some(seq) = known.get(&id) {
                            lands.push(Lands::Known(*seq));
                        } else if let Some(i) = pending.get(&id) {
                            lands.push(Lands::New(*i));
                        } else {
                            let i = fresh.len();
                            pending.insert(id.clone(), i);
                            fresh_keys.push((i, id.0, id.1));
                            fresh.push(event);
                            lands.push(Lands::New(i));
                        }
                    }
                    None => {
                        lands.push(Lands::New(fresh.len()));
                        fresh.push(event);
                    }
                }
            }
            landing.push(lands);
        }
        let first = if fresh.is_empty() {
            0
        } else {
            super::audit::append_many(tx, &fresh).await?
        };
        let rows: Vec<(i64, String, String)> = fresh_keys
            .into_iter()
            .map(|(i, actor, key)| (first + i as i64, actor, key))
            .collect();
        super::audit::remember_event_ids(tx, &rows).await?;
        for (seq, actor, key) in rows {
            known.insert((actor, key), seq);
        }
        self.numbered = landing
            .into_iter()
            .map(|lands| {
                lands
                    .into_iter()
                    .map(|l| match l {
                        Lands::Known(seq) => seq,
                        Lands::New(i) => first + i as i64,
                    })
                    .collect()
            })
            .collect();
        Ok(())
    }

    /// SQLite: runs the batch in one transaction on `conn` and commits it.
    /// `runtime` drives the batch: every statement on `conn` is a direct call, ready at once.
    fn commit_on(
        &mut self,
        conn: &mut LiteConn,
        runtime: &tokio::runtime::Runtime,
    ) -> Result<(), Error> {
        let committed = conn.batch("BEGIN IMMEDIATE").and_then(|()| {
            runtime.block_on(self.run(&mut conn.tx()))?;
            conn.batch("COMMIT")
        });
        if committed.is_err() {
            // Whatever failed, leave no transaction open (an error here only means none was).
            let _ = conn.batch("ROLLBACK");
        }
        committed
    }

    /// PostgreSQL: runs the batch in one transaction on `pool` and commits it.
    async fn commit_sqlx(&mut self, pool: &AnyPool) -> Result<(), Error> {
        let mut tx = begin_write_on(pool).await?;
        self.run(&mut tx.on()).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Answers every caller once the batch's fate is known. Work that never ran (the
    /// transaction failed first) is dropped, and its callers see the database as unavailable.
    fn answer(&mut self, committed: Result<(), Error>) {
        if let Err(e) = &committed {
            tracing::warn!(
                error = %e,
                records = self.answers.len(),
                appends = self.appends.len(),
                "write batch not committed"
            );
        }
        self.records.clear();
        let status = committed.clone();
        let failed = self.failed_part_way.take();
        for (i, (done, result)) in self.answers.drain(..).enumerate() {
            // The record that failed part-way keeps its own error (it never succeeded).
            let answer = if Some(i) == failed {
                result
            } else {
                status.clone().and(result)
            };
            let _ = done.send(answer);
        }
        let mut numbered = std::mem::take(&mut self.numbered).into_iter();
        for append in self.appends.drain(..) {
            let seqs = numbered.next().unwrap_or_default();
            let _ = append.done.send(status.clone().map(|()| seqs));
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
    pub(crate) fn spawn_sqlx(pool: AnyPool) -> Self {
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
                let committed = batch.commit_sqlx(&pool).await;
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
    pub(crate) fn spawn_sqlite(path: &Path, gate: WriteGate) -> Result<Self, Error> {
        let mut conn = LiteConn::open(path)?.without_autocheckpoint()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .map_err(|e| Error::internal("starting the writer's executor", e))?;
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
                    let committed = batch.commit_on(&mut conn, &runtime);
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

impl Store {
    /// Records a signed certificate, what it completes and its event in the next
    /// group-committed write transaction, and returns once that transaction is durable. If
    /// the claim is refused, nothing of it is stored and nothing else in the batch is affected.
    pub(crate) async fn record(
        &self,
        new: NewCertificate,
        signed: SignedCertificate,
        completion: Completion,
        event: Ready,
    ) -> Result<Recorded, Error> {
        let (done, answer) = oneshot::channel();
        let unavailable = || Error::Unavailable("database unavailable; retry later".into());
        self.writer_task
            .queue
            .send(Work::Record(Box::new(Record {
                new,
                signed,
                completion,
                event,
                done,
            })))
            .await
            .map_err(|_| unavailable())?;
        answer.await.map_err(|_| unavailable())?
    }

    /// Appends audit events that change nothing else, in order and with contiguous sequence
    /// numbers, in the next group-committed transaction; returns their sequence numbers once
    /// they are durable. All of a batch's appends share one multi-row INSERT. `keys` (empty,
    /// or one per event) are the reporter's ids: an event its actor already reported under
    /// the same id is not appended again, and its number is the earlier event's.
    pub(crate) async fn append_only(
        &self,
        events: Vec<Ready>,
        keys: Vec<Option<String>>,
    ) -> Result<Vec<i64>, Error> {
        let (done, answer) = oneshot::channel();
        let unavailable = || Error::Unavailable("database unavailable; retry later".into());
        self.writer_task
            .queue
            .send(Work::Append(Append { events, keys, done }))
            .await
            .map_err(|_| unavailable())?;
        answer.await.map_err(|_| unavailable())?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Action, Actor, AuditEvent, Target};
    use crate::domain::{CertSerial, DeviceSerial, ManufacturerId, Profile, Role};
    use crate::issuance::{
        CertificateTemplate, Eku, IssuerId, IssuerName, SubjectName, SubjectPublicKey,
    };
    use crate::policy::claim::Claim;

    /// A database with the real schema, one manufacturer `acme` and its device `taken`; keep
    /// the directory alive.
    fn database() -> (tempfile::TempDir, LiteConn, tokio::runtime::Runtime) {
        let dir = tempfile::tempdir().expect("tempdir");
        let conn = LiteConn::open(&dir.path().join("w.db")).expect("open");
        for (_, _, sql) in super::super::SQLITE_MIGRATIONS {
            conn.batch(sql).expect("migration");
        }
        conn.batch(
            "INSERT INTO manufacturers (id, display_name, allowed_models, created_at)
                 VALUES ('acme', 'Acme', '[]', 0);
             INSERT INTO devices (manufacturer_id, serial, model, udi_di, uri, state,
                                  enrolled_at, birth_serial)
                 VALUES ('acme', 'taken', 'pump', NULL, 'spiffe://t/device/acme/taken',
                         'active', 0, '00');",
        )
        .expect("fixtures");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        (dir, conn, runtime)
    }

    /// A certificate numbered `n` for its own subject, claimed as one of the service's own,
    /// completing `completion`.
    fn record(
        n: u8,
        claim: Claim,
        completion: Completion,
    ) -> (Work, oneshot::Receiver<Result<Recorded, Error>>) {
        let at = time::macros::datetime!(2026-12-01 00:00 UTC);
        let issuer = IssuerId::first(IssuerName::Operational);
        let serial = CertSerial::from_bytes(vec![n]);
        let template = CertificateTemplate {
            issuer,
            serial: serial.clone(),
            subject: SubjectName::default(),
            san_uris: vec![],
            san_dns: vec![],
            san_ips: vec![],
            not_before: at,
            not_after: at + time::Duration::days(1),
            ekus: vec![Eku::ServerAuth],
            crl_url: None,
            ocsp_url: None,
            ca_issuers_url: None,
            ocsp_nocheck: false,
            public_key: SubjectPublicKey {
                algorithm: &rcgen::PKCS_ECDSA_P256_SHA256,
                key_bits: vec![n],
            },
        };
        let subject_uri = format!("spiffe://t/service/{n}");
        let event = AuditEvent::new(
            at,
            Actor::system(),
            Action::ServiceCertificateRenew,
            Target::uri(&subject_uri),
        );
        let (done, answer) = oneshot::channel();
        let work = Work::Record(Box::new(Record {
            new: NewCertificate {
                template,
                profile: Profile::Server,
                role: Role::Service,
                subject_uri,
                spki_sha256: format!("key-{n}"),
                claim,
            },
            signed: SignedCertificate {
                issuer,
                serial,
                der: rustls_pki_types::CertificateDer::from(vec![n]),
            },
            completion,
            event: Ready::new(&event).expect("sealed"),
            done,
        }));
        (work, answer)
    }

    fn plain(n: u8) -> (Work, oneshot::Receiver<Result<Recorded, Error>>) {
        record(n, Claim::Service, Completion::Nothing)
    }

    /// Refused before any change: the enrollment token it spends does not exist.
    fn refused(n: u8) -> (Work, oneshot::Receiver<Result<Recorded, Error>>) {
        let claim = Claim::NewDevice {
            manufacturer: ManufacturerId::parse("acme").expect("slug"),
            serial: DeviceSerial::parse("new").expect("serial"),
            token_sha256: Some("unknown".into()),
        };
        record(n, claim, Completion::Nothing)
    }

    /// Fails after a change: its certificate row is written, then the device it completes
    /// already exists.
    fn half(n: u8) -> (Work, oneshot::Receiver<Result<Recorded, Error>>) {
        let device = Completion::Device {
            manufacturer: ManufacturerId::parse("acme").expect("slug"),
            serial: DeviceSerial::parse("taken").expect("serial"),
            model: "pump".into(),
            udi_di: None,
        };
        record(n, Claim::Service, device)
    }

    fn stored(conn: &mut LiteConn, runtime: &tokio::runtime::Runtime) -> Vec<String> {
        runtime
            .block_on(
                conn.tx()
                    .all::<String>("SELECT serial FROM certificates ORDER BY serial", &[]),
            )
            .expect("select")
    }

    fn run(
        conn: &mut LiteConn,
        runtime: &tokio::runtime::Runtime,
        works: Vec<(Work, oneshot::Receiver<Result<Recorded, Error>>)>,
    ) -> Vec<Result<Recorded, Error>> {
        let mut batch = Batch::default();
        let mut answers = Vec::new();
        for (work, answer) in works {
            let Work::Record(record) = work else {
                unreachable!("the cases queue records")
            };
            batch.records.push(*record);
            answers.push(answer);
        }
        let committed = batch.commit_on(conn, runtime);
        batch.answer(committed);
        // A record that never ran is dropped; its caller sees the database as unavailable,
        // as Store::record reports it.
        answers
            .into_iter()
            .map(|mut a| {
                a.try_recv()
                    .unwrap_or_else(|_| Err(Error::Unavailable("never ran".into())))
            })
            .collect()
    }

    #[test]
    fn a_refusal_before_any_change_leaves_the_rest_of_the_batch() {
        let (_dir, mut conn, rt) = database();
        let out = run(&mut conn, &rt, vec![plain(1), refused(2), plain(3)]);
        assert!(out[0].is_ok() && out[2].is_ok(), "{out:?}");
        assert!(matches!(out[1], Err(Error::PermissionDenied(_))), "{out:?}");
        assert_eq!(stored(&mut conn, &rt), ["01", "03"]);
        let events: i64 = rt
            .block_on(conn.tx().one("SELECT COUNT(*) FROM audit_events", &[]))
            .expect("count");
        assert_eq!(
            events, 2,
            "one event per stored certificate, none for the refused one"
        );
    }

    #[test]
    fn a_failure_after_a_change_rolls_back_the_batch_and_keeps_its_own_error() {
        let (_dir, mut conn, rt) = database();
        let out = run(&mut conn, &rt, vec![plain(1), half(5), plain(2)]);
        assert!(matches!(out[0], Err(Error::Unavailable(_))), "{out:?}");
        assert!(
            matches!(out[1], Err(Error::Internal(_))),
            "its own error: {out:?}"
        );
        assert!(
            matches!(out[2], Err(Error::Unavailable(_))),
            "never ran: {out:?}"
        );
        assert!(
            stored(&mut conn, &rt).is_empty(),
            "nothing of the batch is stored"
        );
        // The connection is usable again: the next batch commits.
        let out = run(&mut conn, &rt, vec![plain(3)]);
        assert!(out[0].is_ok(), "{out:?}");
        assert_eq!(stored(&mut conn, &rt), ["03"]);
    }
}
