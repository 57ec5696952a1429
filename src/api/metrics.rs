//! `GET /metrics` on the plain-HTTP listener: Prometheus metrics in the OpenMetrics text
//! format, encoded by `prometheus-client`, and the gRPC layer that counts and times every RPC
//! and writes its one request line to the log.
//!
//! Counters and histograms live as long as the process. Values that describe state (the
//! certificates by state, the CRLs, the ledger, the CA and service certificates, open
//! connections) are read when scraped, so a scrape tells the present. docs/METRICS.md lists
//! every metric.

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use super::conn::{ConnInfo, Gate};
use crate::error::Error;
use crate::service::Ca;
use crate::store::{CertificateLedger, MerkleLog, Retention, RevocationStore};

/// What the OpenMetrics text is served as.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The spans `medid_certificates_ending` counts over, with their label.
const ENDING_WITHIN: [(i64, &str); 2] = [(7, "7d"), (30, "30d")];

/// The standard gRPC services served beside medid's own.
const OTHER_METHODS: [&str; 4] = [
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

/// The label of a request path: one of the methods served, or `unknown` (so a client
/// sending made-up paths cannot grow the metrics without bound).
fn method_label(path: &str) -> &'static str {
    crate::proto::MEDID_METHODS
        .binary_search(&path)
        .ok()
        .map(|i| crate::proto::MEDID_METHODS[i])
        .or_else(|| OTHER_METHODS.iter().copied().find(|m| *m == path))
        .map_or("unknown", |m| m.strip_prefix('/').unwrap_or(m))
}

/// The canonical name of a gRPC status code.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    method: &'static str,
    code: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn rpc_histogram() -> Histogram {
    // 0.5 ms … 8 s.
    Histogram::new(exponential_buckets(0.000_5, 2.0, 15))
}

/// RPCs served, by method and code, and how long each took.
#[derive(Debug, Clone)]
pub struct RpcMetrics {
    requests: Family<RpcLabels, Counter>,
    duration: HistogramFamily<MethodLabels>,
}

impl Default for RpcMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(rpc_histogram),
        }
    }
}

/// What the handler learns of a request for its request line: the principal, once
/// authenticated (`Api::caller` sets it). A request extension.
#[derive(Debug, Clone, Default)]
pub struct RequestNote(Arc<OnceLock<String>>);

impl RequestNote {
    pub fn set_principal(&self, uri: &str) {
        let _ = self.0.set(uri.to_owned());
    }
}

/// The end of one RPC: counted, timed and logged exactly once, when its status is known
/// (the trailers-only answer of a refusal, the trailers of a success) or when its response
/// is dropped unfinished (CANCELLED).
struct Finish {
    metrics: RpcMetrics,
    method: &'static str,
    started: Instant,
    note: RequestNote,
    peer: Option<std::net::SocketAddr>,
}

impl Finish {
    fn done(self, code: tonic::Code) {
        let elapsed = self.started.elapsed();
        let code = code_name(code);
        self.metrics
            .requests
            .get_or_create(&RpcLabels {
                method: self.method,
                code,
            })
            .inc();
        self.metrics
            .duration
            .get_or_create(&MethodLabels {
                method: self.method,
            })
            .observe(elapsed.as_secs_f64());
        log_request(
            self.method,
            self.note.0.get().map(String::as_str),
            code,
            elapsed,
            self.peer,
        );
    }
}

/// The one log line of a request (gRPC or EST), under the target `medid::request`. Never the
/// request's content: method, who, how it ended, how long, from where. A caller that never
/// authenticated gets its line at debug only: a flood of them must not flood the log (they
/// are counted, and audited in aggregate).
pub fn log_request(
    method: &str,
    principal: Option<&str>,
    code: &str,
    elapsed: std::time::Duration,
    peer: Option<std::net::SocketAddr>,
) {
    let duration_us = elapsed.as_micros() as u64;
    let peer = peer.map_or_else(|| "-".to_owned(), |p| p.to_string());
    match principal {
        Some(principal) => tracing::info!(
            target: "medid::request",
            method = %method,
            principal = %principal,
            code = %code,
            duration_us,
            peer = %peer,
            "request"
        ),
        None => tracing::debug!(
            target: "medid::request",
            method = %method,
            principal = "-",
            code = %code,
            duration_us,
            peer = %peer,
            "request"
        ),
    }
}

fn grpc_status(headers: &http::HeaderMap) -> Option<tonic::Code> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(tonic::Code::from_i32)
}

/// Tower layer on the gRPC server: counts, times and logs each call once its status is known.
#[derive(Debug, Clone, Default)]
pub struct ObserveRpcs(pub RpcMetrics);

impl<S> tower::Layer<S> for ObserveRpcs {
    type Service = Observed<S>;
    fn layer(&self, inner: S) -> Observed<S> {
        Observed {
            inner,
            metrics: self.0.clone(),
        }
    }
}

/// See [`ObserveRpcs`].
#[derive(Debug, Clone)]
pub struct Observed<S> {
    inner: S,
    metrics: RpcMetrics,
}

impl<S, B, RB> tower::Service<http::Request<B>> for Observed<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<ObservedBody<RB>>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let note = RequestNote::default();
        request.extensions_mut().insert(note.clone());
        let finish = Finish {
            metrics: self.metrics.clone(),
            method: method_label(request.uri().path()),
            started: Instant::now(),
            note,
            peer: request.extensions().get::<ConnInfo>().map(|c| c.remote),
        };
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = match response.await {
                Ok(r) => r,
                Err(e) => {
                    finish.done(tonic::Code::Internal);
                    return Err(e);
                }
            };
            let finish = match grpc_status(response.headers()) {
                Some(code) => {
                    finish.done(code);
                    None
                }
                None => Some(finish),
            };
            Ok(response.map(|body| ObservedBody { body, finish }))
        })
    }
}

/// A response body that finishes its RPC at its trailers, its end or its drop.
pub struct ObservedBody<B> {
    body: B,
    finish: Option<Finish>,
}

impl<B> Drop for ObservedBody<B> {
    fn drop(&mut self) {
        if let Some(finish) = self.finish.take() {
            finish.done(tonic::Code::Cancelled);
        }
    }
}

impl<B> http_body::Body for ObservedBody<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        let ended = match &frame {
            Poll::Ready(Some(Ok(f))) => f.trailers_ref().map(grpc_status),
            Poll::Ready(Some(Err(_))) => Some(Some(tonic::Code::Internal)),
            Poll::Ready(None) => Some(None),
            Poll::Pending => None,
        };
        if let Some(code) = ended {
            if let Some(finish) = this.finish.take() {
                finish.done(code.unwrap_or(tonic::Code::Unknown));
            }
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// The certificate census as counted at a time.
type Census = (
    time::OffsetDateTime,
    Vec<crate::store::certificates::CensusRow>,
);

/// What `/metrics` reads besides the service: the connection gate, the RPC figures, and the
/// certificate census, counted at most once per `census_interval` (medid's clock) because it
/// reads an index entry per certificate.
#[derive(Debug, Clone)]
pub struct Exporter {
    gate: Arc<Gate>,
    rpc: RpcMetrics,
    census_interval: time::Duration,
    census: Arc<tokio::sync::Mutex<Option<Census>>>,
}

impl Exporter {
    pub fn new(gate: Arc<Gate>, rpc: RpcMetrics, census_interval: time::Duration) -> Self {
        Self {
            gate,
            rpc,
            census_interval,
            census: Arc::default(),
        }
    }

    pub fn rpc(&self) -> &RpcMetrics {
        &self.rpc
    }

    /// The census, counted now if the last one is older than the interval. Concurrent
    /// scrapes wait for one count instead of each making its own.
    async fn census(&self, ca: &Ca, now: time::OffsetDateTime) -> Result<Census, Error> {
        let mut held = self.census.lock().await;
        if let Some(census) = held.as_ref() {
            if now - census.0 < self.census_interval && now >= census.0 {
                return Ok(census.clone());
            }
        }
        let spans = ENDING_WITHIN.map(|(days, _)| time::Duration::days(days));
        let counted = (now, ca.store.certificate_census(now, spans).await?);
        *held = Some(counted.clone());
        Ok(counted)
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FeedLabels {
    destination: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CaLabels {
    ca: String,
    standing: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IssuerLabels {
    issuer: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    profile: &'static str,
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndingLabels {
    profile: &'static str,
    within: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertificateLabels {
    certificate: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

fn gauge<L>(registry: &mut Registry, name: &str, help: &str) -> Family<L, Gauge>
where
    L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static,
{
    let family = Family::<L, Gauge>::default();
    registry.register(name, help, family.clone());
    family
}

/// The metrics text as of now.
pub async fn render(ca: &Ca, exporter: &Exporter) -> Result<String, Error> {
    let now = ca.clock.now();
    let mut registry = Registry::with_prefix("medid");
    registry.register(
        "build",
        "The version and git commit of this medid",
        Info::new(vec![
            ("version", env!("CARGO_PKG_VERSION")),
            ("commit", crate::BUILD_COMMIT),
        ]),
    );

    // Requests.
    registry.register(
        "rpc_requests",
        "gRPC calls finished, by method and status code",
        exporter.rpc.requests.clone(),
    );
    registry.register(
        "rpc_duration_seconds",
        "Time from a gRPC call's arrival to its status, by method",
        exporter.rpc.duration.clone(),
    );
    registry.register(
        "issuance",
        "Certificates that reached signing, by profile and outcome (issued, or refused, denied or failed when recording them)",
        ca.counters.issuance.clone(),
    );
    registry.register(
        "refusals",
        "Refusals written to the audit log, by audit action and status code",
        ca.counters.refusals.clone(),
    );
    let unauthenticated = Family::<ReasonLabels, Counter>::default();
    registry.register(
        "unauthenticated_refusals",
        "Refusals of callers that are not authenticated (audited in aggregate), by reason",
        unauthenticated.clone(),
    );
    for (reason, n) in ca.anonymous.totals() {
        unauthenticated
            .get_or_create(&ReasonLabels {
                reason: reason.name(),
            })
            .inc_by(n);
    }

    // The store's writer.
    let writer = ca.store.writer_stats();
    registry.register(
        "store_batch_writes",
        "Writes (jobs and event appends) per group-committed batch",
        writer.batch_size.clone(),
    );
    registry.register(
        "store_commit_duration_seconds",
        "Time from BEGIN to the end of COMMIT of a group-committed batch",
        writer.commit_seconds.clone(),
    );
    registry.register(
        "store_failed_batches",
        "Group-committed batches that did not commit",
        writer.failed_batches.clone(),
    );

    // The audit ledger.
    let size = ca.store.tree_size().await?;
    let events = Gauge::<i64>::default();
    events.set(size as i64);
    registry.register(
        "audit_events",
        "Events in the audit log (its tree size)",
        events,
    );
    let archived = Gauge::<i64>::default();
    archived.set(ca.store.archived_through().await? as i64);
    registry.register(
        "audit_archived_events",
        "Events archived by medid audit archive (their rows dropped; the stored tree keeps them)",
        archived,
    );
    let (damaged, full_at) = ca.integrity_state().await;
    let damage = Gauge::<i64>::default();
    damage.set(i64::from(damaged));
    registry.register(
        "audit_integrity_damaged",
        "1 while damage a periodic integrity check raised stands (checkpoints are refused)",
        damage,
    );
    if let Some(at) = full_at {
        let age = Gauge::<i64>::default();
        age.set((now - at).whole_seconds());
        registry.register(
            "audit_full_check_age_seconds",
            "Seconds since this process last re-read the whole log (or started)",
            age,
        );
    }
    if let Some((checkpoint_size, _, signed_at)) = ca.store.latest_checkpoint().await? {
        let (covered, age) = (Gauge::<i64>::default(), Gauge::<i64>::default());
        covered.set(checkpoint_size as i64);
        age.set((now - signed_at).whole_seconds());
        registry.register(
            "audit_checkpoint_tree_size",
            "Events covered by the newest signed checkpoint",
            covered,
        );
        registry.register(
            "audit_checkpoint_age_seconds",
            "Seconds since the newest checkpoint was signed",
            age,
        );
    }

    // CRLs, per issuing-CA generation in service.
    let number = gauge::<IssuerLabels>(&mut registry, "crl_number", "The newest CRL's number");
    let crl_age = gauge::<IssuerLabels>(
        &mut registry,
        "crl_age_seconds",
        "Seconds since the newest CRL's thisUpdate",
    );
    let to_next = gauge::<IssuerLabels>(
        &mut registry,
        "crl_next_update_in_seconds",
        "Seconds until the newest CRL's nextUpdate (negative once it has passed)",
    );
    for info in ca.issuers_in_service() {
        if let Some(crl) = ca.store.crl_head(info.id).await? {
            let labels = IssuerLabels {
                issuer: info.id.label(),
            };
            number.get_or_create(&labels).set(crl.number);
            crl_age
                .get_or_create(&labels)
                .set((now - crl.this_update).whole_seconds());
            to_next
                .get_or_create(&labels)
                .set((crl.next_update - now).whole_seconds());
        }
    }

    // Certificates.
    let (counted_at, census) = exporter.census(ca, now).await?;
    let by_state = gauge::<StateLabels>(
        &mut registry,
        "certificates",
        "Certificates recorded, by profile and state",
    );
    let ending = gauge::<EndingLabels>(
        &mut registry,
        "certificates_ending",
        "Active certificates that end within 7 or 30 days, by profile",
    );
    for row in &census {
        by_state
            .get_or_create(&StateLabels {
                profile: row.profile.as_str(),
                state: row.state.as_str(),
            })
            .set(row.count as i64);
        for ((_, within), n) in ENDING_WITHIN.iter().zip(row.ending) {
            if n > 0 {
                ending
                    .get_or_create(&EndingLabels {
                        profile: row.profile.as_str(),
                        within,
                    })
                    .inc_by(n as i64);
            }
        }
    }
    let census_age = Gauge::<i64>::default();
    census_age.set((now - counted_at).whole_seconds());
    registry.register(
        "certificates_census_age_seconds",
        "Seconds since medid_certificates and medid_certificates_ending were counted (metrics_census_interval_seconds)",
        census_age,
    );
    let service = gauge::<CertificateLabels>(
        &mut registry,
        "service_certificate_not_after_timestamp_seconds",
        "When the service's own certificates end (its TLS server certificate, each OCSP responder), in Unix seconds",
    );
    for (certificate, not_after) in ca.service_certificate_ends() {
        service
            .get_or_create(&CertificateLabels { certificate })
            .set(not_after.unix_timestamp());
    }
    if !ca.atna.is_empty() {
        let lag = gauge::<FeedLabels>(
            &mut registry,
            "atna_lag_events",
            "Ledger events the ATNA feed has not written to its repository yet",
        );
        let connected = gauge::<FeedLabels>(
            &mut registry,
            "atna_connected",
            "1 while the ATNA feed holds a connection to its repository (RESTful: its last post succeeded)",
        );
        let sent = gauge::<FeedLabels>(
            &mut registry,
            "atna_sent_through",
            "The ledger sequence number through which the ATNA feed has written",
        );
        for feed in &ca.atna {
            let labels = FeedLabels {
                destination: feed.destination().to_owned(),
            };
            let status = feed.status();
            // Read before a family's guard is taken: no guard may live across an await.
            let behind: i64 = feed.lag(ca).await?.try_into().unwrap_or(i64::MAX);
            lag.get_or_create(&labels).set(behind);
            connected
                .get_or_create(&labels)
                .set(i64::from(status.connected));
            sent.get_or_create(&labels)
                .set(status.sent_through.try_into().unwrap_or(i64::MAX));
        }
    }
    {
        let behind: i64 = ca.anomaly_lag().await?.try_into().unwrap_or(i64::MAX);
        let lag = Gauge::<i64>::default();
        lag.set(behind);
        registry.register(
            "anomaly_lag_events",
            "Ledger events the access-anomaly watcher has not looked at yet",
            lag,
        );
    }
    if let Some(crl) = ca.authority.root_crl() {
        let next_update = Gauge::<i64>::default();
        next_update.set(crl.next_update.unix_timestamp());
        registry.register(
            "root_crl_next_update_timestamp_seconds",
            "When the root CA's CRL in service (root.crl) must be replaced, in Unix seconds",
            next_update,
        );
    }
    let not_after = gauge::<CaLabels>(
        &mut registry,
        "ca_not_after_timestamp_seconds",
        "When each CA certificate in service ends, in Unix seconds",
    );
    let warning = gauge::<CaLabels>(
        &mut registry,
        "ca_expiry_warning",
        "1 while the service warns that this CA certificate ends within ca_expiry_warning_days",
    );
    for life in ca.ca_lifetimes() {
        let labels = CaLabels {
            ca: life.ca,
            standing: life.standing.as_str(),
        };
        not_after
            .get_or_create(&labels)
            .set(life.not_after.unix_timestamp());
        warning
            .get_or_create(&labels)
            .set(i64::from(life.days_left_when_warned.is_some()));
    }

    // Connections.
    let open = gauge::<ListenerLabels>(
        &mut registry,
        "connections_open",
        "Open connections, by listener",
    );
    for (listener, n) in exporter.gate.open_by_listener() {
        open.get_or_create(&ListenerLabels {
            listener: listener.as_str(),
        })
        .set(n as i64);
    }
    let (refused, evicted) = exporter.gate.counters();
    let (refused_total, evicted_total) = (Counter::<u64>::default(), Counter::<u64>::default());
    refused_total.inc_by(refused);
    evicted_total.inc_by(evicted);
    registry.register(
        "connections_refused",
        "Connections closed at once because a connection cap was full",
        refused_total,
    );
    registry.register(
        "connections_evicted",
        "Idle connections closed to admit a newcomer at the cap",
        evicted_total,
    );

    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)
        .map_err(|e| Error::internal("encoding metrics", e))?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_served_methods_become_labels() {
        assert_eq!(
            method_label("/medid.v1.EnrollmentService/EnrollDevice"),
            "medid.v1.EnrollmentService/EnrollDevice"
        );
        assert_eq!(
            method_label("/grpc.health.v1.Health/Check"),
            "grpc.health.v1.Health/Check"
        );
        assert_eq!(method_label("/medid.v1.EnrollmentService/Nope"), "unknown");
        assert_eq!(method_label("/../../etc/passwd"), "unknown");
        assert!(crate::proto::MEDID_METHODS.len() > 10);
    }
}
