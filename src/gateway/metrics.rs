//! The gateway's `/metrics` (Prometheus text), `/healthz` and `/readyz`, on an optional
//! plain-HTTP listener (`metrics_listen`): what an operator watches.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Why the gateway answered a request itself instead of forwarding it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The certificate names no principal of the trust domain.
    NoIdentity,
    NoRoute,
    /// The route's rule found no device in the request.
    NoDevice,
    BadPatientHeader,
    /// The caller's role or URI is not allowed on the route.
    NotAllowed,
    NoRevocationData,
    StaleRevocationData,
    Revoked,
    /// medid's status answer: revoked, or not issued by medid.
    NotVouched,
    /// Strict mode: the spool is failing, or this request's event could not be written.
    NotRecorded,
    BadPath,
    UpstreamUnreachable,
    UpstreamTimeout,
}

impl Refusal {
    pub fn name(self) -> &'static str {
        match self {
            Refusal::NoIdentity => "no_identity",
            Refusal::NoRoute => "no_route",
            Refusal::NoDevice => "no_device",
            Refusal::BadPatientHeader => "bad_patient_header",
            Refusal::NotAllowed => "not_allowed",
            Refusal::NoRevocationData => "no_revocation_data",
            Refusal::StaleRevocationData => "stale_revocation_data",
            Refusal::Revoked => "revoked",
            Refusal::NotVouched => "not_vouched",
            Refusal::NotRecorded => "not_recorded",
            Refusal::BadPath => "bad_path",
            Refusal::UpstreamUnreachable => "upstream_unreachable",
            Refusal::UpstreamTimeout => "upstream_timeout",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    /// 2xx, 3xx, 4xx, 5xx.
    class: &'static str,
}

/// The gateway's counters, kept while it runs.
#[derive(Debug)]
pub struct Counters {
    pub requests: AtomicU64,
    pub events_spooled: AtomicU64,
    pub events_sent: Arc<AtomicU64>,
    answered: Family<StatusLabels, Counter>,
    refused: Family<ReasonLabels, Counter>,
    upstream_seconds: Histogram,
}

impl Default for Counters {
    fn default() -> Self {
        Self {
            requests: AtomicU64::new(0),
            events_spooled: AtomicU64::new(0),
            events_sent: Arc::default(),
            answered: Family::default(),
            refused: Family::default(),
            // 0.25 ms … 16 s.
            upstream_seconds: Histogram::new(exponential_buckets(0.000_25, 2.0, 17)),
        }
    }
}

impl Counters {
    pub fn refused(&self, why: Refusal) {
        self.refused
            .get_or_create(&ReasonLabels { reason: why.name() })
            .inc();
    }

    pub fn answered(&self, status: http::StatusCode) {
        let class = match status.as_u16() {
            100..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.answered.get_or_create(&StatusLabels { class }).inc();
    }

    pub fn upstream(&self, seconds: f64) {
        self.upstream_seconds.observe(seconds);
    }
}

/// What the gauges are read from at each scrape.
pub struct State {
    pub spool_waiting: u64,
    pub spool_rejected: u64,
    pub spool_healthy: bool,
    /// Seconds since the revocation data was fetched, and until its earliest nextUpdate.
    pub revocation: Option<(i64, i64)>,
}

/// The metrics text.
pub fn render(counters: &Counters, state: State) -> String {
    let mut registry = Registry::with_prefix("medid_gateway");
    let requests = Counter::<u64>::default();
    requests.inc_by(counters.requests.load(Ordering::Relaxed));
    registry.register("requests", "Requests received", requests);
    registry.register(
        "answers",
        "Answers sent, by status class",
        counters.answered.clone(),
    );
    registry.register(
        "refusals",
        "Requests the gateway answered itself, by reason",
        counters.refused.clone(),
    );
    registry.register(
        "upstream_seconds",
        "Time from forwarding a request to the upstream's answer",
        counters.upstream_seconds.clone(),
    );
    let spooled = Counter::<u64>::default();
    spooled.inc_by(counters.events_spooled.load(Ordering::Relaxed));
    registry.register(
        "events_spooled",
        "Access events written to the spool",
        spooled,
    );
    let sent = Counter::<u64>::default();
    sent.inc_by(counters.events_sent.load(Ordering::Relaxed));
    registry.register(
        "events_sent",
        "Access events medid acknowledged as durable",
        sent,
    );
    let gauge = |registry: &mut Registry, name: &str, help: &str, v: i64| {
        let g = Gauge::<i64>::default();
        g.set(v);
        registry.register(name, help, g);
    };
    gauge(
        &mut registry,
        "spool_waiting_events",
        "Access events on disk that medid has not acknowledged yet",
        state.spool_waiting as i64,
    );
    gauge(
        &mut registry,
        "spool_rejected_events",
        "Access events medid refused for good, kept in the spool's rejected table",
        state.spool_rejected as i64,
    );
    gauge(
        &mut registry,
        "spool_healthy",
        "1 while the spool's last write succeeded",
        i64::from(state.spool_healthy),
    );
    if let Some((age, until)) = state.revocation {
        gauge(
            &mut registry,
            "revocation_data_age_seconds",
            "Seconds since the trust bundle and CRLs were last fetched from medid",
            age,
        );
        gauge(
            &mut registry,
            "crl_next_update_in_seconds",
            "Seconds until the earliest nextUpdate of the CRLs held",
            until,
        );
    }
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
    text
}
