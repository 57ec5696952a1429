//! The IHE ATNA feed (ITI-20 Record Audit Event): every ledger event, in order, to an Audit
//! Record Repository over syslog with mutual TLS ([`crate::api::syslog`]), as a FHIR R4
//! AuditEvent (the BALP rendering of exports) in an RFC 5424 message whose structured data
//! carries the event's sequence number.
//!
//! Delivery is at least once. A durable cursor (`feed_cursors`) records how far the feed has
//! written; after each new connection it starts again `resend` events before the cursor,
//! because syslog has no acknowledgement and what the last connection wrote may not have
//! reached the repository. Repeats carry the same sequence number. While the repository is
//! down the feed backs off (1 s doubling to a minute) and the ledger keeps growing: the feed
//! runs apart from issuance, which never waits for it; its lag is in `/metrics` and health.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use time::OffsetDateTime;

use super::Ca;
use crate::api::syslog::{frame, message, SyslogTls};
use crate::config::AtnaConfig;
use crate::error::Error;
use crate::store::{AuditLog, FeedCursors, MerkleLog, Retention};

/// The MSGID of every message: the MSG is a FHIR AuditEvent (JSON), not the DICOM audit
/// message (`IHE+RFC-3881`).
pub const MSGID: &str = "IHE+FHIR";

/// How often a caught-up feed looks for new events.
const IDLE_POLL: Duration = Duration::from_secs(1);
/// The longest wait between attempts while the repository is down.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// One configured feed and what it has done.
pub struct AtnaFeed {
    tls: SyslogTls,
    /// The cursor's key: `syslog:<host:port>`.
    destination: String,
    hostname: String,
    batch: usize,
    resend: u64,
    status: Mutex<FeedStatus>,
}

/// What health and `/metrics` show of a feed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FeedStatus {
    /// The ledger's events through this sequence number have been written (and, after a
    /// reconnection, written again from `resend` before).
    pub sent_through: u64,
    pub connected: bool,
    /// Why the last attempt failed, while it is failing.
    pub last_error: Option<String>,
    pub last_sent_at: Option<OffsetDateTime>,
}

impl std::fmt::Debug for AtnaFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AtnaFeed")
            .field("destination", &self.destination)
            .finish_non_exhaustive()
    }
}

impl AtnaFeed {
    /// Reads the configuration's files (the repository's trust anchors, medid's certificate
    /// and key); refuses a key file others may read.
    pub fn new(config: &AtnaConfig) -> Result<Self, Error> {
        let read = |path: &std::path::Path| {
            std::fs::read(path).map_err(|e| {
                Error::InvalidArgument(format!("atna: reading {}: {e}", path.display()))
            })
        };
        if let Some(mode) = crate::files::exposed_mode(&config.client_key) {
            return Err(Error::InvalidArgument(format!(
                "atna.client_key {} is mode {mode:04o}; make it 0600",
                config.client_key.display()
            )));
        }
        let (ca, cert, key) = (
            read(&config.ca_file)?,
            read(&config.client_cert)?,
            read(&config.client_key)?,
        );
        let tls = SyslogTls::new(&config.syslog, config.server_name(), &ca, (&cert, &key))?;
        let hostname = config.hostname.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_default()
        });
        Ok(Self {
            tls,
            destination: format!("syslog:{}", config.syslog),
            hostname,
            batch: config.batch,
            resend: config.resend,
            status: Mutex::new(FeedStatus::default()),
        })
    }

    pub fn destination(&self) -> &str {
        &self.destination
    }

    pub fn status(&self) -> FeedStatus {
        self.status
            .lock()
            .expect("feed status lock is never poisoned")
            .clone()
    }

    fn update(&self, f: impl FnOnce(&mut FeedStatus)) {
        f(&mut self
            .status
            .lock()
            .expect("feed status lock is never poisoned"));
    }

    /// Runs the feed until the process ends: connect, send what the repository may lack,
    /// follow the ledger; on any failure back off and start again.
    pub async fn run(self: Arc<Self>, ca: Arc<Ca>) {
        let mut backoff = Duration::from_secs(1);
        loop {
            match self.session(&ca, &mut backoff).await {
                Ok(()) => {}
                Err(e) => {
                    tracing::warn!(destination = %self.destination, error = %e, retry_in_seconds = backoff.as_secs(), "ATNA feed interrupted");
                    self.update(|s| {
                        s.connected = false;
                        s.last_error = Some(e.to_string());
                    });
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One connection's life. Resets `backoff` once connected.
    async fn session(&self, ca: &Ca, backoff: &mut Duration) -> Result<(), Error> {
        let mut conn = self.tls.connect().await?;
        *backoff = Duration::from_secs(1);
        let cursor = ca.store.feed_cursor(&self.destination).await?;
        let mut next = cursor.saturating_sub(self.resend);
        // Events before the log's archived start are not in the database any more.
        next = next.max(ca.store.archived_through().await?);
        tracing::info!(destination = %self.destination, from = next + 1, cursor, "ATNA feed connected");
        self.update(|s| {
            s.connected = true;
            s.last_error = None;
            s.sent_through = s.sent_through.max(cursor);
        });
        let observer = ca.ledger.signer.name().to_owned();
        loop {
            let events = ca
                .store
                .audit_events(next as i64, self.batch as i64)
                .await?;
            let Some(last) = events.last().map(|e| e.seq as u64) else {
                // Caught up: wait, but notice a repository that closed the connection.
                tokio::select! {
                    closed = conn.closed() => return Err(closed),
                    () = tokio::time::sleep(IDLE_POLL) => continue,
                }
            };
            let mut frames = Vec::with_capacity(events.len() * 1024);
            for e in &events {
                let timestamp = crate::audit::ledger::rfc3339(e.event.recorded_at)?;
                let body = crate::audit::render::fhir_audit_event(e.seq, &e.event, &observer);
                frame(
                    &message(
                        &timestamp,
                        &self.hostname,
                        "medid",
                        MSGID,
                        e.seq,
                        &body.to_string(),
                    ),
                    &mut frames,
                );
            }
            conn.send(&frames).await?;
            if last > cursor {
                ca.store
                    .set_feed_cursor(&self.destination, last, ca.clock.now())
                    .await?;
            }
            next = last;
            let at = ca.clock.now();
            self.update(|s| {
                s.sent_through = s.sent_through.max(last);
                s.last_sent_at = Some(at);
            });
        }
    }

    /// How many events the ledger holds beyond what the feed has written.
    pub async fn lag(&self, ca: &Ca) -> Result<u64, Error> {
        let size = ca.store.tree_size().await?;
        let sent = self
            .status()
            .sent_through
            .max(ca.store.feed_cursor(&self.destination).await?);
        Ok(size.saturating_sub(sent))
    }
}
