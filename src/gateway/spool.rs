//! The gateway's durable spool: access events on disk, in order, until medid has
//! acknowledged them.
//!
//! A SQLite file (WAL, `synchronous = FULL`, exclusive lock: one gateway per spool) owned by
//! one thread. Appends queued together are committed in one transaction (one fsync for all
//! the requests that finished meanwhile) and acknowledged only after the commit. The sender
//! reads the oldest events, and deletes them once medid acknowledged them; an event medid
//! refuses for good is moved to `rejected`, with medid's answer, so it never blocks the
//! events behind it.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::error::Error;

/// Appends committed together at most.
const MAX_GROUP: usize = 1024;

type Reply<T> = oneshot::Sender<Result<T, Error>>;

/// Appends taken together: each request's events and where its answer goes.
type Group = [(Vec<Vec<u8>>, Option<Reply<()>>)];

enum Cmd {
    Append {
        events: Vec<Vec<u8>>,
        done: Option<Reply<()>>,
    },
    Oldest {
        limit: usize,
        done: Reply<Vec<(i64, Vec<u8>)>>,
    },
    Delete {
        through: i64,
        done: Reply<()>,
    },
    Reject {
        id: i64,
        why: String,
        done: Reply<()>,
    },
    /// Answered once everything queued before it is done.
    Flush {
        done: Reply<()>,
    },
}

/// Handle to the spool; cheap to clone.
#[derive(Clone)]
pub struct Spool {
    queue: mpsc::Sender<Cmd>,
    /// False after a write failed, until one succeeds: strict requests are refused before
    /// they reach the upstream while the spool cannot take their events.
    healthy: Arc<AtomicBool>,
    /// Events on disk not yet acknowledged by medid.
    pending: Arc<AtomicU64>,
    rejected: Arc<AtomicU64>,
    /// Rings when an append is committed (the sender waits on it when the spool is empty).
    pub appended: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool").finish_non_exhaustive()
    }
}

fn open(path: &Path) -> Result<rusqlite::Connection, Error> {
    crate::files::precreate_private(path)?;
    let conn = rusqlite::Connection::open(path)?;
    conn.execute_batch(
        "PRAGMA locking_mode = EXCLUSIVE;
         PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, body BLOB NOT NULL);
         CREATE TABLE IF NOT EXISTS rejected (
             id INTEGER PRIMARY KEY, body BLOB NOT NULL, why TEXT NOT NULL, at INTEGER NOT NULL);
         BEGIN IMMEDIATE; COMMIT;",
    )
    .map_err(|e| {
        Error::Unavailable(format!(
            "opening the spool {}: {e} (is another gateway using it?)",
            path.display()
        ))
    })?;
    Ok(conn)
}

fn count(conn: &rusqlite::Connection, table: &str) -> Result<u64, Error> {
    let n: i64 = conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))?;
    Ok(n as u64)
}

impl Spool {
    /// Opens (or creates, 0600) the spool at `path` and starts its thread.
    pub fn open(path: &Path) -> Result<Self, Error> {
        let mut conn = open(path)?;
        let pending = Arc::new(AtomicU64::new(count(&conn, "events")?));
        let rejected = Arc::new(AtomicU64::new(count(&conn, "rejected")?));
        let healthy = Arc::new(AtomicBool::new(true));
        let appended = Arc::new(tokio::sync::Notify::new());
        let (queue, mut incoming) = mpsc::channel::<Cmd>(4 * MAX_GROUP);
        let spool = Spool {
            queue,
            healthy: healthy.clone(),
            pending: pending.clone(),
            rejected: rejected.clone(),
            appended: appended.clone(),
        };
        std::thread::Builder::new()
            .name("medid-gateway-spool".into())
            .spawn(move || {
                while let Some(first) = incoming.blocking_recv() {
                    match first {
                        Cmd::Append { events, done } => {
                            let mut group = vec![(events, done)];
                            let mut next = None;
                            while group.len() < MAX_GROUP {
                                match incoming.try_recv() {
                                    Ok(Cmd::Append { events, done }) => group.push((events, done)),
                                    Ok(other) => {
                                        next = Some(other);
                                        break;
                                    }
                                    Err(_) => break,
                                }
                            }
                            let written = append(&mut conn, &group);
                            healthy.store(written.is_ok(), Ordering::Relaxed);
                            if written.is_ok() {
                                let n: usize = group.iter().map(|(e, _)| e.len()).sum();
                                pending.fetch_add(n as u64, Ordering::Relaxed);
                                appended.notify_one();
                            } else if let Err(e) = &written {
                                tracing::error!(error = %e, "the spool could not take access events");
                            }
                            for (_, done) in group {
                                if let Some(done) = done {
                                    let _ = done.send(written.clone());
                                }
                            }
                            if let Some(cmd) = next {
                                other(&mut conn, cmd, &pending, &rejected);
                            }
                        }
                        cmd => other(&mut conn, cmd, &pending, &rejected),
                    }
                }
            })
            .map_err(|e| Error::internal("starting the spool thread", e))?;
        Ok(spool)
    }

    fn gone() -> Error {
        Error::Unavailable("the spool has stopped".into())
    }

    /// Appends one event and returns once it is on disk.
    pub async fn append_durable(&self, event: Vec<u8>) -> Result<(), Error> {
        let (done, answer) = oneshot::channel();
        self.queue
            .send(Cmd::Append {
                events: vec![event],
                done: Some(done),
            })
            .await
            .map_err(|_| Self::gone())?;
        answer.await.map_err(|_| Self::gone())?
    }

    /// Queues one event to be written; returns at once unless the queue is full.
    pub async fn append_later(&self, event: Vec<u8>) -> Result<(), Error> {
        self.queue
            .send(Cmd::Append {
                events: vec![event],
                done: None,
            })
            .await
            .map_err(|_| Self::gone())
    }

    /// The oldest `limit` events, in order.
    pub async fn oldest(&self, limit: usize) -> Result<Vec<(i64, Vec<u8>)>, Error> {
        let (done, answer) = oneshot::channel();
        self.queue
            .send(Cmd::Oldest { limit, done })
            .await
            .map_err(|_| Self::gone())?;
        answer.await.map_err(|_| Self::gone())?
    }

    /// Forgets the events through `through`: medid has them.
    pub async fn delete_through(&self, through: i64) -> Result<(), Error> {
        let (done, answer) = oneshot::channel();
        self.queue
            .send(Cmd::Delete { through, done })
            .await
            .map_err(|_| Self::gone())?;
        answer.await.map_err(|_| Self::gone())?
    }

    /// Moves event `id` to `rejected`: medid refused it for good.
    pub async fn reject(&self, id: i64, why: String) -> Result<(), Error> {
        let (done, answer) = oneshot::channel();
        self.queue
            .send(Cmd::Reject { id, why, done })
            .await
            .map_err(|_| Self::gone())?;
        answer.await.map_err(|_| Self::gone())?
    }

    /// Returns once everything queued before is written.
    pub async fn flush(&self) -> Result<(), Error> {
        let (done, answer) = oneshot::channel();
        self.queue
            .send(Cmd::Flush { done })
            .await
            .map_err(|_| Self::gone())?;
        answer.await.map_err(|_| Self::gone())?
    }

    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn pending(&self) -> u64 {
        self.pending.load(Ordering::Relaxed)
    }

    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }
}

fn append(conn: &mut rusqlite::Connection, group: &Group) -> Result<(), Error> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    {
        let mut insert = tx.prepare_cached("INSERT INTO events (body) VALUES (?1)")?;
        for (events, _) in group {
            for body in events {
                insert.execute([body])?;
            }
        }
    }
    tx.commit()?;
    Ok(())
}

fn other(conn: &mut rusqlite::Connection, cmd: Cmd, pending: &AtomicU64, rejected: &AtomicU64) {
    match cmd {
        Cmd::Append { .. } => unreachable!("appends are grouped by the spool loop"),
        Cmd::Flush { done } => {
            let _ = done.send(Ok(()));
        }
        Cmd::Oldest { limit, done } => {
            let read = (|| {
                let mut stmt =
                    conn.prepare_cached("SELECT id, body FROM events ORDER BY id LIMIT ?1")?;
                let rows = stmt.query_map([limit as i64], |r| Ok((r.get(0)?, r.get(1)?)))?;
                rows.collect::<Result<Vec<(i64, Vec<u8>)>, _>>()
                    .map_err(Error::from)
            })();
            let _ = done.send(read);
        }
        Cmd::Delete { through, done } => {
            let deleted = conn
                .execute("DELETE FROM events WHERE id <= ?1", [through])
                .map_err(Error::from);
            if let Ok(n) = deleted {
                pending.fetch_sub(
                    (n as u64).min(pending.load(Ordering::Relaxed)),
                    Ordering::Relaxed,
                );
            }
            let _ = done.send(deleted.map(|_| ()));
        }
        Cmd::Reject { id, why, done } => {
            let moved = (|| {
                let tx =
                    conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                let at = time::OffsetDateTime::now_utc().unix_timestamp();
                let n = tx.execute(
                    "INSERT INTO rejected (id, body, why, at)
                     SELECT id, body, ?2, ?3 FROM events WHERE id = ?1",
                    rusqlite::params![id, why, at],
                )?;
                tx.execute("DELETE FROM events WHERE id = ?1", [id])?;
                tx.commit()?;
                Ok::<usize, rusqlite::Error>(n)
            })()
            .map_err(Error::from);
            if let Ok(n) = moved {
                pending.fetch_sub(
                    (n as u64).min(pending.load(Ordering::Relaxed)),
                    Ordering::Relaxed,
                );
                rejected.fetch_add(n as u64, Ordering::Relaxed);
            }
            let _ = done.send(moved.map(|_| ()));
        }
    }
}
