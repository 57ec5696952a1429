//! Sends the spool to medid, oldest first, through RecordAccessStream: one batch at a time,
//! deleted from the spool only once medid acknowledged it durable. After any failure the
//! same events are sent again; their event ids make medid record each once.

use std::time::Duration;

use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::spool::Spool;
use crate::error::Error;
use crate::proto::{self, audit_service_client::AuditServiceClient};

/// How long medid may take to acknowledge a batch before the stream is dropped and opened
/// again.
const ACK_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// medid's answer to a batch, sorted by what the sender does next.
enum Answer {
    Acked,
    /// medid refused the batch for good (an event in it is invalid).
    Refused(String),
    /// Try again later.
    Retry(String),
}

fn sort(status: &tonic::Status) -> Answer {
    use tonic::Code;
    match status.code() {
        Code::InvalidArgument
        | Code::NotFound
        | Code::FailedPrecondition
        | Code::OutOfRange
        | Code::AlreadyExists => Answer::Refused(status.message().to_owned()),
        _ => Answer::Retry(format!("{}: {}", status.code(), status.message())),
    }
}

/// An open RecordAccessStream.
struct Stream {
    tx: mpsc::Sender<proto::AccessBatch>,
    acks: tonic::Streaming<proto::AccessBatchAck>,
}

impl Stream {
    async fn open(channel: tonic::transport::Channel) -> Result<Self, tonic::Status> {
        let (tx, rx) = mpsc::channel(1);
        let acks = AuditServiceClient::new(channel)
            .record_access_stream(ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(Self { tx, acks })
    }

    async fn send(&mut self, events: Vec<proto::AccessEvent>) -> Answer {
        let n = events.len();
        if self.tx.send(proto::AccessBatch { events }).await.is_err() {
            return Answer::Retry("the stream to medid closed".into());
        }
        match tokio::time::timeout(ACK_TIMEOUT, self.acks.message()).await {
            Ok(Ok(Some(ack))) if ack.seqs.len() == n => Answer::Acked,
            Ok(Ok(Some(ack))) => Answer::Retry(format!(
                "medid acknowledged {} events of {n}",
                ack.seqs.len()
            )),
            Ok(Ok(None)) => Answer::Retry("medid closed the stream".into()),
            Ok(Err(status)) => sort(&status),
            Err(_) => Answer::Retry("medid did not acknowledge within 30 s".into()),
        }
    }
}

/// What the sender needs to reach medid: a fresh channel with the gateway's current
/// certificate (read again for every connection, so a renewed one is used).
pub type Connect = std::sync::Arc<
    dyn Fn() -> futures_util::future::BoxFuture<'static, Result<tonic::transport::Channel, Error>>
        + Send
        + Sync,
>;

/// Runs until the process ends.
pub async fn run(
    spool: Spool,
    connect: Connect,
    batch: usize,
    sent: std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    let mut stream: Option<Stream> = None;
    let mut failures = 0u32;
    loop {
        let rows = match spool.oldest(batch).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::error!(error = %e, "reading the spool");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if rows.is_empty() {
            // Woken by the next append, or after a second in any case.
            let _ = tokio::time::timeout(Duration::from_secs(1), spool.appended.notified()).await;
            continue;
        }
        let mut events = Vec::with_capacity(rows.len());
        let mut ids = Vec::with_capacity(rows.len());
        for (id, body) in &rows {
            match proto::AccessEvent::decode(body.as_slice()) {
                Ok(e) => {
                    events.push(e);
                    ids.push(*id);
                }
                Err(e) => {
                    let _ = spool
                        .reject(*id, format!("unreadable in the spool: {e}"))
                        .await;
                }
            }
        }
        if events.is_empty() {
            continue;
        }
        let last = *ids.last().expect("a non-empty batch has a last id");
        if stream.is_none() {
            match connect().await {
                Ok(channel) => match Stream::open(channel).await {
                    Ok(s) => stream = Some(s),
                    Err(status) => {
                        failures += 1;
                        backoff(
                            failures,
                            &format!("{}: {}", status.code(), status.message()),
                        )
                        .await;
                        continue;
                    }
                },
                Err(e) => {
                    failures += 1;
                    backoff(failures, &e.to_string()).await;
                    continue;
                }
            }
        }
        let s = stream.as_mut().expect("opened above");
        let count = events.len();
        match s.send(events.clone()).await {
            Answer::Acked => {
                failures = 0;
                if let Err(e) = spool.delete_through(last).await {
                    tracing::error!(error = %e, "deleting acknowledged events from the spool");
                }
                sent.fetch_add(count as u64, std::sync::atomic::Ordering::Relaxed);
            }
            Answer::Retry(why) => {
                stream = None;
                failures += 1;
                backoff(failures, &why).await;
            }
            Answer::Refused(why) => {
                // One event spoils the batch: send them one at a time to find it.
                tracing::warn!(reason = %why, events = count, "medid refused a batch; sending its events one by one");
                stream = None;
                match isolate(&spool, &connect, ids, events, &sent).await {
                    Ok(()) => failures = 0,
                    Err(why) => {
                        failures += 1;
                        backoff(failures, &why).await;
                    }
                }
            }
        }
    }
}

/// Sends events one at a time with RecordAccess; one medid refuses for good goes to the
/// spool's `rejected` table. Stops at the first failure worth retrying.
async fn isolate(
    spool: &Spool,
    connect: &Connect,
    ids: Vec<i64>,
    events: Vec<proto::AccessEvent>,
    sent: &std::sync::atomic::AtomicU64,
) -> Result<(), String> {
    let channel = connect().await.map_err(|e| e.to_string())?;
    let mut client = AuditServiceClient::new(channel);
    for (id, event) in ids.into_iter().zip(events) {
        match client.record_access(event).await {
            Ok(_) => {
                spool.delete_through(id).await.map_err(|e| e.to_string())?;
                sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Err(status) => match sort(&status) {
                Answer::Refused(why) => {
                    tracing::error!(
                        spool_id = id,
                        reason = %why,
                        "medid refused an access event for good; it is kept in the spool's rejected table"
                    );
                    spool.reject(id, why).await.map_err(|e| e.to_string())?;
                }
                Answer::Retry(why) => return Err(why),
                Answer::Acked => {}
            },
        }
    }
    Ok(())
}

async fn backoff(failures: u32, why: &str) {
    let wait = Duration::from_millis(250u64 << failures.min(7)).min(MAX_BACKOFF);
    tracing::warn!(reason = %why, retry_in = ?wait, "medid did not take the spooled access events");
    tokio::time::sleep(wait).await;
}
