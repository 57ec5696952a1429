//! The IHE ATNA feeds (ITI-20 Record Audit Event): every ledger event, in order, to an Audit
//! Record Repository as a FHIR R4 AuditEvent (the BALP rendering of exports): over syslog with
//! mutual TLS ([`crate::api::syslog`]) in an RFC 5424 message whose structured data carries
//! the event's sequence number, or posted to a FHIR endpoint in transaction Bundles
//! ([`crate::api::fhir_rest`], RESTful ATNA), each acknowledged by its answer.
//!
//! Delivery is at least once. A durable cursor (`feed_cursors`) records how far the feed has
//! written; after each new syslog connection it starts again `resend` events before the
//! cursor, because syslog has no acknowledgement and what the last connection wrote may not
//! have reached the repository. Repeats carry the same sequence number (and id: a Bundle puts
//! each AuditEvent at its id, so a repeat stores nothing new). While the repository is
//! down the feed backs off (1 s doubling to a minute) and the ledger keeps growing: the feed
//! runs apart from issuance, which never waits for it; its lag is in `/metrics` and health.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use time::OffsetDateTime;

use super::Ca;
use crate::api::fhir_rest::{transaction, FhirEndpoint};
use crate::api::syslog::{frame, message, SyslogTls};
use crate::config::{AtnaConfig, AtnaRestConfig};
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
    transport: Transport,
    /// The cursor's key: `syslog:<host:port>`, or the FHIR base URL.
    destination: String,
    batch: usize,
    status: Mutex<FeedStatus>,
}

/// How a feed reaches its repository. Its files (trust anchors, medid's certificate and key)
/// are read again for every connection, so a renewed client certificate is taken up without a
/// restart.
enum Transport {
    /// ITI-20 over syslog: no acknowledgement, so `resend` events go again after each new
    /// connection.
    Syslog {
        config: AtnaConfig,
        hostname: String,
    },
    /// RESTful ATNA: each Bundle acknowledged by a 2xx answer.
    Fhir(AtnaRestConfig),
}

/// One session's way to the repository: an open syslog connection (with the HOSTNAME of its
/// messages), or the FHIR endpoint.
enum Link<'a> {
    /// Boxed: a TLS connection's buffers are large.
    Syslog(Box<crate::api::syslog::SyslogConnection>, &'a str),
    Fhir(FhirEndpoint),
}

/// A transport with its files read.
enum Opened {
    Syslog(SyslogTls),
    Fhir(FhirEndpoint),
}

impl Transport {
    fn open(&self) -> Result<Opened, Error> {
        match self {
            Transport::Syslog { config, .. } => {
                let (ca, cert, key) = (
                    read("atna.ca_file", &config.ca_file)?,
                    read("atna.client_cert", &config.client_cert)?,
                    read_key("atna.client_key", &config.client_key)?,
                );
                SyslogTls::new(&config.syslog, config.server_name(), &ca, (&cert, &key))
                    .map(Opened::Syslog)
            }
            Transport::Fhir(config) => {
                let ca = read("atna_rest.ca_file", &config.ca_file)?;
                let identity = match (&config.client_cert, &config.client_key) {
                    (Some(cert), Some(key)) => Some((
                        read("atna_rest.client_cert", cert)?,
                        read_key("atna_rest.client_key", key)?,
                    )),
                    _ => None,
                };
                FhirEndpoint::new(
                    &config.url,
                    &ca,
                    identity.as_ref().map(|(c, k)| (c.as_slice(), k.as_slice())),
                )
                .map(Opened::Fhir)
            }
        }
    }
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
    /// The syslog feed of `[atna]`. Reads the configuration's files once now (the
    /// repository's trust anchors, medid's certificate and key), so a start with a bad one is
    /// refused; refuses a key file others may read.
    pub fn syslog(config: &AtnaConfig) -> Result<Self, Error> {
        let hostname = config.hostname.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_default()
        });
        Self::with(
            Transport::Syslog {
                config: config.clone(),
                hostname,
            },
            format!("syslog:{}", config.syslog),
            config.batch,
        )
    }

    /// The RESTful ATNA feed of `[atna_rest]`.
    pub fn rest(config: &AtnaRestConfig) -> Result<Self, Error> {
        Self::with(
            Transport::Fhir(config.clone()),
            config.url.trim_end_matches('/').to_owned(),
            config.batch,
        )
    }

    fn with(transport: Transport, destination: String, batch: usize) -> Result<Self, Error> {
        transport.open()?;
        Ok(Self {
            transport,
            destination,
            batch,
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

    /// One connection's life (for RESTful ATNA: until a post fails). Resets `backoff` once
    /// connected.
    async fn session(&self, ca: &Ca, backoff: &mut Duration) -> Result<(), Error> {
        let (mut link, resend) = match (self.transport.open()?, &self.transport) {
            (Opened::Syslog(tls), Transport::Syslog { config, hostname }) => (
                Link::Syslog(Box::new(tls.connect().await?), hostname.as_str()),
                config.resend,
            ),
            (Opened::Fhir(endpoint), _) => (Link::Fhir(endpoint), 0),
            (Opened::Syslog(_), Transport::Fhir(_)) => {
                unreachable!("a transport opens as its own kind")
            }
        };
        *backoff = Duration::from_secs(1);
        let cursor = ca.store.feed_cursor(&self.destination).await?;
        // Events before the log's archived start are not in the database any more.
        let mut next = cursor
            .saturating_sub(resend)
            .max(ca.store.archived_through().await?);
        tracing::info!(destination = %self.destination, from = next + 1, cursor, "ATNA feed started");
        self.update(|s| {
            s.connected = matches!(link, Link::Syslog(..));
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
                match &mut link {
                    Link::Syslog(conn, _) => tokio::select! {
                        closed = conn.closed() => return Err(closed),
                        () = tokio::time::sleep(IDLE_POLL) => {}
                    },
                    Link::Fhir(_) => tokio::time::sleep(IDLE_POLL).await,
                }
                continue;
            };
            let rendered = events
                .iter()
                .map(|e| crate::audit::render::fhir_audit_event(e.seq, &e.event, &observer));
            match &mut link {
                Link::Syslog(conn, hostname) => {
                    let mut frames = Vec::with_capacity(events.len() * 1024);
                    for (e, body) in events.iter().zip(rendered) {
                        let timestamp = crate::audit::ledger::rfc3339(e.event.recorded_at)?;
                        frame(
                            &message(
                                &timestamp,
                                hostname,
                                "medid",
                                MSGID,
                                e.seq,
                                &body.to_string(),
                            ),
                            &mut frames,
                        );
                    }
                    conn.send(&frames).await?;
                }
                Link::Fhir(endpoint) => {
                    endpoint.post(&transaction(rendered.collect())).await?;
                    self.update(|s| s.connected = true);
                }
            }
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

fn read(what: &str, path: &std::path::Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path)
        .map_err(|e| Error::InvalidArgument(format!("{what}: reading {}: {e}", path.display())))
}

/// A private key file, refused when others may read it.
fn read_key(what: &str, path: &std::path::Path) -> Result<Vec<u8>, Error> {
    if let Some(mode) = crate::files::exposed_mode(path) {
        return Err(Error::InvalidArgument(format!(
            "{what} {} is mode {mode:04o}; make it 0600",
            path.display()
        )));
    }
    read(what, path)
}
