//! `medid gateway`: a reverse proxy at the hospital edge. Devices and applications connect
//! with their medid certificates (mutual TLS); the gateway checks revocation from its copy of
//! medid's CRLs, routes each request by path to an upstream, tells the upstream who is
//! calling (identity headers it sets itself), and makes every request on a device-data
//! route an access event in medid's ledger, through a durable spool. docs/GATEWAY.md.

pub mod config;
pub mod metrics;
pub mod revocation;
pub mod rules;
pub mod sender;
pub mod spool;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use ring::rand::SecureRandom;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use time::OffsetDateTime;

use crate::error::Error;
use crate::proto;
use config::GatewayConfig;
use metrics::{Counters, Refusal};
use revocation::{Seen, Trust};
use rules::{Caller, DeviceRef, Mode, Protocol, Route};

type Body = BoxBody<Bytes, hyper::Error>;

/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client has to send a request's head (HTTP/1.1).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections open at once at most; more are closed when accepted.
const MAX_CONNECTIONS: usize = 4096;
/// Concurrent HTTP/2 streams per connection.
const MAX_STREAMS: u32 = 128;
/// At a stop, how long requests in flight have to finish.
const DRAIN: Duration = Duration::from_secs(10);
/// How long the status question to medid may hold a request the first time a certificate
/// is seen; without an answer the CRL alone decides.
const STATUS_TIMEOUT: Duration = Duration::from_secs(3);

/// The gateway's files in its state directory.
#[derive(Debug, Clone)]
struct Files {
    cert: PathBuf,
    key: PathBuf,
    chain: PathBuf,
    trust: PathBuf,
    spool: PathBuf,
}

impl Files {
    fn new(dir: &std::path::Path) -> Self {
        Self {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            chain: dir.join("chain.pem"),
            trust: dir.join("trust.json"),
            spool: dir.join("spool.db"),
        }
    }
}

/// What one TLS connection's client certificate says.
#[derive(Debug, Clone)]
struct Peer {
    caller: Result<Caller, String>,
    der: Vec<u8>,
    issuer_subject: Vec<u8>,
    serial: Vec<u8>,
    remote: SocketAddr,
}

impl Peer {
    fn read(der: &[u8], trust_domain: &str, remote: SocketAddr) -> Self {
        let (issuer_subject, serial, uris) = match x509_parser::parse_x509_certificate(der) {
            Ok((_, cert)) => {
                let uris: Vec<String> = cert
                    .subject_alternative_name()
                    .ok()
                    .flatten()
                    .map(|san| {
                        san.value
                            .general_names
                            .iter()
                            .filter_map(|n| match n {
                                x509_parser::extensions::GeneralName::URI(u) => {
                                    Some((*u).to_owned())
                                }
                                _ => None,
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                (
                    cert.issuer().as_raw().to_vec(),
                    cert.raw_serial().to_vec(),
                    uris,
                )
            }
            Err(_) => (Vec::new(), Vec::new(), Vec::new()),
        };
        let caller = match uris.as_slice() {
            [uri] => Caller::from_uri(uri, trust_domain).ok_or_else(|| {
                format!("the client certificate's URI {uri:?} names no medid principal of this trust domain")
            }),
            _ => Err("the client certificate must carry exactly one URI".into()),
        };
        Self {
            caller,
            der: der.to_vec(),
            issuer_subject,
            serial,
            remote,
        }
    }
}

/// The running gateway, shared by every connection.
struct Gateway {
    config: GatewayConfig,
    trust_domain: String,
    files: Files,
    trust: Arc<Trust>,
    spool: spool::Spool,
    http1: Client<HttpConnector, Incoming>,
    http2: Client<HttpConnector, Incoming>,
    tls: RwLock<Arc<ServerConfig>>,
    counters: Counters,
    /// The channel used for status questions, opened when first needed.
    status_channel: tokio::sync::Mutex<Option<tonic::transport::Channel>>,
}

fn text(status: StatusCode, message: &str) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from(format!("{message}\n")))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn random_event_id() -> String {
    let mut b = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .expect("the system random source works (ring checks it at start)");
    crate::domain::hex(&b)
}

fn timestamp(t: OffsetDateTime) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.unix_timestamp(),
        nanos: 0,
    }
}

/// The trust domain of the gateway's own certificate (its URI).
fn trust_domain_of(cert_pem: &[u8]) -> Result<String, Error> {
    let der = crate::pem::parse_certificates(cert_pem)
        .map_err(|e| Error::InvalidArgument(format!("the gateway certificate: {e}")))?
        .into_iter()
        .next()
        .ok_or_else(|| Error::InvalidArgument("the gateway certificate file is empty".into()))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| Error::InvalidArgument(format!("the gateway certificate: {e}")))?;
    let uri = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .and_then(|san| {
            san.value.general_names.iter().find_map(|n| match n {
                x509_parser::extensions::GeneralName::URI(u) => Some((*u).to_owned()),
                _ => None,
            })
        })
        .ok_or_else(|| Error::InvalidArgument("the gateway certificate has no URI".into()))?;
    let rest = uri
        .strip_prefix("spiffe://")
        .ok_or_else(|| Error::InvalidArgument(format!("{uri} is not a spiffe:// URI")))?;
    let (td, path) = rest
        .split_once('/')
        .ok_or_else(|| Error::InvalidArgument(format!("{uri} has no path")))?;
    if !path.starts_with("gateway/") {
        return Err(Error::InvalidArgument(format!(
            "{uri} is not a gateway's certificate (issue one with medid admin issue --role gateway)"
        )));
    }
    Ok(td.to_owned())
}

impl Gateway {
    fn tls_config(&self, anchors: &[Vec<u8>]) -> Result<Arc<ServerConfig>, Error> {
        let mut roots = RootCertStore::empty();
        for der in anchors {
            roots
                .add(CertificateDer::from(der.clone()))
                .map_err(|e| Error::internal("an issuing CA certificate as a TLS anchor", e))?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            crate::api::tls::provider(),
        )
        .build()
        .map_err(|e| Error::internal("building the client verifier", e))?;
        let chain_pem = std::fs::read(&self.files.chain)
            .map_err(|e| Error::Unavailable(format!("{}: {e}", self.files.chain.display())))?;
        let chain = crate::pem::parse_certificates(&chain_pem)
            .map_err(|e| Error::Unavailable(format!("{}: {e}", self.files.chain.display())))?;
        let key = PrivateKeyDer::from_pem_file(&self.files.key).map_err(|e| {
            Error::Unavailable(format!(
                "{}: {}",
                self.files.key.display(),
                crate::pem::describe_error(&e)
            ))
        })?;
        let mut config = ServerConfig::builder_with_protocol_versions(&[
            &rustls::version::TLS13,
            &rustls::version::TLS12,
        ])
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| Error::internal("the gateway's TLS certificate", e))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// Rebuilds the TLS configuration from the current anchors and certificate files.
    fn reload_tls(&self) -> Result<(), Error> {
        let snapshot = self
            .trust
            .current()
            .ok_or_else(|| Error::Unavailable("no trust bundle yet".into()))?;
        let config = self.tls_config(&snapshot.anchors)?;
        *self.tls.write().expect("the TLS lock is never poisoned") = config;
        Ok(())
    }

    async fn channel(&self) -> Result<tonic::transport::Channel, Error> {
        crate::cli::client::open(
            &self.config.medid,
            &self.config.medid_ca,
            &self.files.cert,
            &self.files.key,
        )
        .await
    }

    /// An answer of the gateway's own, counted by reason.
    fn no(&self, reason: Refusal, status: StatusCode, message: &str) -> Response<Body> {
        self.counters.refused(reason);
        text(status, message)
    }

    /// The figures of `/metrics`.
    fn metrics(&self) -> String {
        let now = OffsetDateTime::now_utc();
        metrics::render(
            &self.counters,
            metrics::State {
                spool_waiting: self.spool.pending(),
                spool_rejected: self.spool.rejected(),
                spool_healthy: self.spool.healthy(),
                revocation: self.trust.current().map(|s| {
                    (
                        (now - s.fetched_at).whole_seconds(),
                        (s.next_update - now).whole_seconds(),
                    )
                }),
            },
        )
    }

    /// `/readyz`: 200 while requests can be served (fresh revocation data, a working spool).
    fn ready(&self) -> (StatusCode, String) {
        let now = OffsetDateTime::now_utc();
        let mut lines = Vec::new();
        let mut ok = true;
        match self.trust.current() {
            None => {
                ok = false;
                lines.push("revocation data: none yet".to_owned());
            }
            Some(s) => match s.stale(now, self.config.max_revocation_age) {
                Some(why) => {
                    ok = false;
                    lines.push(format!("revocation data: {why}"));
                }
                None => lines.push(format!(
                    "revocation data: fetched {} s ago",
                    (now - s.fetched_at).whole_seconds()
                )),
            },
        }
        if self.spool.healthy() {
            lines.push(format!(
                "spool: {} events waiting, {} rejected",
                self.spool.pending(),
                self.spool.rejected()
            ));
        } else {
            ok = false;
            lines.push("spool: its last write failed".to_owned());
        }
        let status = if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        (status, lines.join("\n") + "\n")
    }

    /// medid's word on a certificate seen for the first time (since the last CRL).
    async fn first_seen(&self, peer: &Peer) -> Option<Seen> {
        if let Some(seen) = self.trust.seen(&peer.serial) {
            return Some(seen);
        }
        let asked = tokio::time::timeout(STATUS_TIMEOUT, async {
            let mut held = self.status_channel.lock().await;
            let channel = match held.as_ref() {
                Some(c) => c.clone(),
                None => {
                    let c = self.channel().await?;
                    *held = Some(c.clone());
                    c
                }
            };
            drop(held);
            let answer = revocation::ask_status(channel, &peer.der).await;
            if answer.is_err() {
                *self.status_channel.lock().await = None;
            }
            answer
        })
        .await;
        match asked {
            Ok(Ok(seen)) => {
                self.trust.remember(&peer.serial, seen);
                Some(seen)
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "medid's certificate status is unavailable; the CRL decides");
                None
            }
            Err(_) => {
                tracing::warn!("medid's certificate status took over 3 s; the CRL decides");
                None
            }
        }
    }

    /// The access event of a request, written as the mode says. In strict mode an event that
    /// cannot be written is an error: the response must not be released.
    #[allow(clippy::too_many_arguments)]
    async fn record(
        &self,
        route: &Route,
        caller: &Caller,
        device: &DeviceRef,
        method: &http::Method,
        path: &str,
        patient: Option<String>,
        started: OffsetDateTime,
        status: StatusCode,
        answered: bool,
    ) -> Result<(), Error> {
        let (device_uri, device_ref) = match device {
            DeviceRef::Uri(uri) => (uri.clone(), None),
            DeviceRef::Serial {
                manufacturer,
                serial,
            } => (
                String::new(),
                Some(proto::DeviceRef {
                    manufacturer_id: manufacturer.clone(),
                    serial: serial.clone(),
                }),
            ),
        };
        let action = match rules::action_for(method, path) {
            crate::audit::action::DataAction::Create => proto::AccessAction::Create,
            crate::audit::action::DataAction::Read => proto::AccessAction::Read,
            crate::audit::action::DataAction::Update => proto::AccessAction::Update,
            crate::audit::action::DataAction::Delete => proto::AccessAction::Delete,
            crate::audit::action::DataAction::Export => proto::AccessAction::Export,
            crate::audit::action::DataAction::Execute => proto::AccessAction::Execute,
        };
        let mut resource = path.to_owned();
        if resource.chars().count() > 512 {
            resource = resource.chars().take(512).collect();
        }
        let event = proto::AccessEvent {
            device_uri,
            device: device_ref,
            user_id: caller.uri.clone(),
            user_role: caller.role.as_str().to_owned(),
            action: action as i32,
            data_category: route.data_category.clone(),
            patient_ref: patient.unwrap_or_default(),
            purpose_of_use: route.purpose_of_use.clone(),
            outcome: rules::outcome_for(status, answered) as i32,
            occurred_at: Some(timestamp(started)),
            event_id: random_event_id(),
            completed_at: Some(timestamp(OffsetDateTime::now_utc())),
            resource,
        };
        let body = event.encode_to_vec();
        let written = match self.config.mode {
            Mode::Strict => self.spool.append_durable(body).await,
            Mode::Buffered => self.spool.append_later(body).await,
        };
        if written.is_ok() {
            self.counters.events_spooled.fetch_add(1, Ordering::Relaxed);
        }
        written
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>, peer: Arc<Peer>) -> Response<Body> {
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        let response = self.serve(req, &peer).await;
        self.counters.answered(response.status());
        response
    }

    async fn serve(&self, req: Request<Incoming>, peer: &Peer) -> Response<Body> {
        let started = OffsetDateTime::now_utc();
        let caller = match &peer.caller {
            Ok(c) => c,
            Err(why) => return self.no(Refusal::NoIdentity, StatusCode::FORBIDDEN, why),
        };
        let path = req.uri().path().to_owned();
        let Some(route) = rules::route_for(&self.config.routes, &path) else {
            return self.no(
                Refusal::NoRoute,
                StatusCode::NOT_FOUND,
                "no route of this gateway serves this path",
            );
        };
        let device = if route.access {
            match rules::device_of(route, caller, &path, req.headers(), &self.trust_domain) {
                Ok(d) => Some(d),
                Err(why) => return self.no(Refusal::NoDevice, StatusCode::BAD_REQUEST, &why),
            }
        } else {
            None
        };
        let patient = match &self.config.patient_header {
            Some(name) => match req.headers().get(name).map(|v| v.to_str()) {
                None => None,
                Some(Ok(v))
                    if !v.is_empty()
                        && v.chars().count() <= 256
                        && !v.chars().any(char::is_control) =>
                {
                    Some(v.to_owned())
                }
                Some(_) => {
                    return self.no(
                        Refusal::BadPatientHeader,
                        StatusCode::BAD_REQUEST,
                        &format!("the {name} header must be at most 256 printable characters"),
                    )
                }
            },
            None => None,
        };
        let method = req.method().clone();
        // A refusal by the gateway itself: on a device-data route it is an access event too.
        let refuse = |reason: Refusal, status: StatusCode, why: String| {
            self.counters.refused(reason);
            let patient = patient.clone();
            let device = device.clone();
            let method = method.clone();
            let path = path.clone();
            async move {
                if let Some(device) = &device {
                    if let Err(e) = self
                        .record(
                            route, caller, device, &method, &path, patient, started, status, false,
                        )
                        .await
                    {
                        tracing::error!(error = %e, "the spool could not take the event of a refused request");
                    }
                }
                text(status, &why)
            }
        };
        if !route.allows(caller) {
            return refuse(
                Refusal::NotAllowed,
                StatusCode::FORBIDDEN,
                format!(
                    "{} ({}) may not use {}",
                    caller.uri,
                    caller.role.as_str(),
                    route.prefix
                ),
            )
            .await;
        }
        let Some(snapshot) = self.trust.current() else {
            return refuse(
                Refusal::NoRevocationData,
                StatusCode::SERVICE_UNAVAILABLE,
                "the gateway has no revocation data yet".into(),
            )
            .await;
        };
        if let Some(why) = snapshot.stale(OffsetDateTime::now_utc(), self.config.max_revocation_age)
        {
            return refuse(
                Refusal::StaleRevocationData,
                StatusCode::SERVICE_UNAVAILABLE,
                why,
            )
            .await;
        }
        if snapshot.is_revoked(&peer.issuer_subject, &peer.serial) {
            return refuse(
                Refusal::Revoked,
                StatusCode::FORBIDDEN,
                "the client certificate is revoked".into(),
            )
            .await;
        }
        if self.first_seen(peer).await == Some(Seen::Refused) {
            return refuse(
                Refusal::NotVouched,
                StatusCode::FORBIDDEN,
                "medid does not vouch for the client certificate (revoked, or not issued by it)"
                    .into(),
            )
            .await;
        }
        if route.access && self.config.mode == Mode::Strict && !self.spool.healthy() {
            // The event could not be written: do not let the request reach the data.
            return self.no(
                Refusal::NotRecorded,
                StatusCode::SERVICE_UNAVAILABLE,
                "the gateway cannot record accesses now (its spool is failing); retry later",
            );
        }
        // Forward.
        let (mut parts, body) = req.into_parts();
        let path_and_query = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".into());
        let uri = match route.upstream_uri(&path_and_query) {
            Ok(u) => u,
            Err(why) => return self.no(Refusal::BadPath, StatusCode::BAD_REQUEST, &why),
        };
        let mut headers =
            rules::upstream_headers(std::mem::take(&mut parts.headers), caller, device.as_ref());
        headers.remove(http::header::HOST);
        if let Ok(v) = HeaderValue::from_str(&peer.remote.ip().to_string()) {
            headers.insert(http::HeaderName::from_static("x-forwarded-for"), v);
        }
        headers.insert(
            http::HeaderName::from_static("x-forwarded-proto"),
            HeaderValue::from_static("https"),
        );
        let mut upstream_req = Request::new(body);
        *upstream_req.method_mut() = parts.method;
        *upstream_req.uri_mut() = uri;
        *upstream_req.headers_mut() = headers;
        let client = match route.protocol {
            Protocol::Http1 => {
                *upstream_req.version_mut() = http::Version::HTTP_11;
                &self.http1
            }
            Protocol::Http2 => {
                *upstream_req.version_mut() = http::Version::HTTP_2;
                &self.http2
            }
        };
        let forwarded = std::time::Instant::now();
        let answer =
            tokio::time::timeout(self.config.upstream_timeout, client.request(upstream_req)).await;
        let (response, answered) = match answer {
            Ok(Ok(resp)) => {
                self.counters.upstream(forwarded.elapsed().as_secs_f64());
                let (mut parts, body) = resp.into_parts();
                rules::downstream_headers(&mut parts.headers);
                (Response::from_parts(parts, body.boxed()), true)
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, upstream = %route.upstream, "upstream unreachable");
                (
                    self.no(
                        Refusal::UpstreamUnreachable,
                        StatusCode::BAD_GATEWAY,
                        "the upstream service did not answer",
                    ),
                    false,
                )
            }
            Err(_) => (
                self.no(
                    Refusal::UpstreamTimeout,
                    StatusCode::GATEWAY_TIMEOUT,
                    "the upstream service did not answer in time",
                ),
                false,
            ),
        };
        if let Some(device) = &device {
            if let Err(e) = self
                .record(
                    route,
                    caller,
                    device,
                    &method,
                    &path,
                    patient,
                    started,
                    response.status(),
                    answered,
                )
                .await
            {
                match self.config.mode {
                    Mode::Strict => {
                        tracing::error!(error = %e, "an access event could not be spooled; the answer is withheld");
                        return self.no(
                            Refusal::NotRecorded,
                            StatusCode::SERVICE_UNAVAILABLE,
                            "the access could not be recorded, so its answer is withheld; retry later",
                        );
                    }
                    Mode::Buffered => {
                        tracing::error!(error = %e, "an access event could not be queued for the spool")
                    }
                }
            }
        }
        response
    }
}

/// Gets the gateway a certificate of its own in `state_dir` if it has no valid one (from
/// its bootstrap certificate), then keeps it fresh in the background like `medid agent`.
async fn identity(
    config: &GatewayConfig,
    renewed: tokio::sync::mpsc::UnboundedSender<()>,
) -> Result<(), Error> {
    let args = crate::cli::agent::AgentArgs {
        dir: config.state_dir.clone(),
        bootstrap_cert: config.bootstrap_cert.clone(),
        bootstrap_key: config.bootstrap_key.clone(),
        once: true,
        force: false,
        exec: None,
        server: config.medid.clone(),
        ca: config.medid_ca.clone(),
    };
    if !crate::cli::agent::has_valid_certificate(&config.state_dir) {
        crate::cli::agent::run(args.clone(), None).await?;
    }
    let mut forever = args;
    forever.once = false;
    tokio::spawn(async move {
        if let Err(e) = crate::cli::agent::run(forever, Some(renewed)).await {
            tracing::error!(error = %e, "the gateway's certificate can no longer be renewed");
        }
    });
    Ok(())
}

/// Runs the gateway until SIGTERM or Ctrl-C.
pub async fn run(config_path: &std::path::Path) -> Result<(), Error> {
    let config = GatewayConfig::load(config_path)?;
    crate::files::create_private_dir(&config.state_dir)?;
    let files = Files::new(&config.state_dir);
    let (renewed_tx, mut renewed) = tokio::sync::mpsc::unbounded_channel();
    identity(&config, renewed_tx).await?;
    let cert_pem = std::fs::read(&files.cert)
        .map_err(|e| Error::Unavailable(format!("{}: {e}", files.cert.display())))?;
    let trust_domain = trust_domain_of(&cert_pem)?;
    let root_der = crate::pem::parse_certificates(
        &std::fs::read(&config.medid_ca)
            .map_err(|e| Error::InvalidArgument(format!("{}: {e}", config.medid_ca.display())))?,
    )
    .map_err(|e| Error::InvalidArgument(format!("{}: {e}", config.medid_ca.display())))?
    .into_iter()
    .next()
    .ok_or_else(|| {
        Error::InvalidArgument(format!(
            "{} holds no certificate",
            config.medid_ca.display()
        ))
    })?
    .to_vec();
    let trust = Arc::new(Trust::load(files.trust.clone()));
    let spool = spool::Spool::open(&files.spool)?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    let http1 = Client::builder(TokioExecutor::new()).build(connector.clone());
    let http2 = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(connector);
    let placeholder = Arc::new(
        ServerConfig::builder_with_protocol_versions(&[&rustls::version::TLS13])
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(rustls::server::ResolvesServerCertUsingSni::new())),
    );
    let gateway = Arc::new(Gateway {
        trust_domain,
        files: files.clone(),
        trust: trust.clone(),
        spool: spool.clone(),
        http1,
        http2,
        tls: RwLock::new(placeholder),
        counters: Counters::default(),
        status_channel: tokio::sync::Mutex::new(None),
        config,
    });
    // Trust first: from medid if it answers, else what was kept on disk.
    let first = match gateway.channel().await {
        Ok(ch) => trust.refresh(ch, &root_der).await.map(|_| ()),
        Err(e) => Err(e),
    };
    if let Err(e) = first {
        if trust.current().is_none() {
            return Err(e.context(
                "the gateway has no trust bundle and CRLs yet, and medid did not give them: ",
            ));
        }
        tracing::warn!(error = %e, "medid is unreachable; starting with the trust kept on disk");
    }
    gateway.reload_tls()?;
    // The refresher: CRLs at least every crl_refresh, and before their nextUpdate.
    {
        let gw = gateway.clone();
        let root_der = root_der.clone();
        tokio::spawn(async move {
            loop {
                let every = gw.config.crl_refresh;
                let wait = match gw.trust.current() {
                    Some(s) => {
                        let until_next = (s.next_update - OffsetDateTime::now_utc())
                            .whole_seconds()
                            .max(1) as u64;
                        every.min(Duration::from_secs(until_next / 2 + 1))
                    }
                    None => Duration::from_secs(5),
                };
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    Some(()) = renewed.recv() => {
                        tracing::info!("the gateway's certificate was renewed; serving it from the next handshake");
                        if let Err(e) = gw.reload_tls() {
                            tracing::error!(error = %e, "reloading the gateway's TLS certificate");
                        }
                        *gw.status_channel.lock().await = None;
                        continue;
                    }
                }
                let refreshed = match gw.channel().await {
                    Ok(ch) => gw.trust.refresh(ch, &root_der).await,
                    Err(e) => Err(e),
                };
                match refreshed {
                    Ok(true) => {
                        if let Err(e) = gw.reload_tls() {
                            tracing::error!(error = %e, "rebuilding the TLS configuration");
                        }
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "refreshing the CRLs from medid; trying again soon")
                    }
                }
            }
        });
    }
    // A line a minute on the spool while it holds anything (the operator's view).
    {
        let gw = gateway.clone();
        tokio::spawn(async move {
            let mut last = (u64::MAX, u64::MAX);
            loop {
                tokio::time::sleep(Duration::from_secs(60)).await;
                let now = (gw.spool.pending(), gw.spool.rejected());
                if now != last && (now.0 > 0 || now.1 > 0 || last.0 > 0) {
                    tracing::info!(
                        waiting = now.0,
                        rejected = now.1,
                        sent = gw.counters.events_sent.load(Ordering::Relaxed),
                        requests = gw.counters.requests.load(Ordering::Relaxed),
                        "spool"
                    );
                }
                last = now;
            }
        });
    }
    // The sender.
    {
        let gw = gateway.clone();
        let connect: sender::Connect = Arc::new(move || {
            let gw = gw.clone();
            Box::pin(async move { gw.channel().await })
        });
        tokio::spawn(sender::run(
            spool.clone(),
            connect,
            gateway.config.batch,
            gateway.counters.events_sent.clone(),
        ));
    }
    if let Some(addr) = gateway.config.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            Error::Unavailable(format!("listening on {addr} (metrics_listen): {e}"))
        })?;
        let gw = gateway.clone();
        let app = axum::Router::new()
            .route(
                "/metrics",
                axum::routing::get({
                    let gw = gw.clone();
                    move || {
                        let gw = gw.clone();
                        async move {
                            (
                                [(
                                    http::header::CONTENT_TYPE,
                                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                                )],
                                gw.metrics(),
                            )
                        }
                    }
                }),
            )
            .route("/healthz", axum::routing::get(|| async { "ok\n" }))
            .route(
                "/readyz",
                axum::routing::get(move || {
                    let gw = gw.clone();
                    async move { gw.ready() }
                }),
            );
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "the metrics listener stopped");
            }
        });
    }
    let listener = tokio::net::TcpListener::bind(gateway.config.listen)
        .await
        .map_err(|e| Error::Unavailable(format!("listening on {}: {e}", gateway.config.listen)))?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::internal("the listener's address", e))?;
    println!(
        "medid gateway listening on https://{local} ({} mode, {} routes, spool {})",
        gateway.config.mode.name(),
        gateway.config.routes.len(),
        files.spool.display()
    );
    tracing::info!(address = %local, mode = gateway.config.mode.name(), "medid gateway listening");
    let shutdown = crate::server::shutdown_signal();
    tokio::pin!(shutdown);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let connections = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracing::warn!(%remote, "{MAX_CONNECTIONS} connections open: closing a new one");
            continue;
        };
        let gw = gateway.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            let config = gw
                .tls
                .read()
                .expect("the TLS lock is never poisoned")
                .clone();
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, %remote, "TLS handshake refused");
                    return;
                }
                Err(_) => return,
            };
            let Some(leaf) = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.to_vec())
            else {
                return;
            };
            let peer = Arc::new(Peer::read(&leaf, &gw.trust_domain, remote));
            let service = hyper::service::service_fn(move |req| {
                let gw = gw.clone();
                let peer = peer.clone();
                async move { Ok::<_, std::convert::Infallible>(gw.handle(req, peer).await) }
            });
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            builder
                .http2()
                .timer(hyper_util::rt::TokioTimer::new())
                .max_concurrent_streams(MAX_STREAMS)
                .keep_alive_interval(Some(Duration::from_secs(60)));
            let served = watcher
                .watch(
                    builder
                        .serve_connection(TokioIo::new(tls), service)
                        .into_owned(),
                )
                .await;
            if let Err(e) = served {
                tracing::debug!(error = %e, %remote, "connection ended");
            }
        });
    }
    // Requests in flight finish (their events written); idle connections close.
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still in flight after {DRAIN:?}; stopping anyway");
    }
    // Let the spool take what is queued (buffered mode) before the process ends.
    if tokio::time::timeout(Duration::from_secs(5), gateway.spool.flush())
        .await
        .is_err()
    {
        tracing::error!("the spool did not finish writing within 5 s of the stop");
    }
    println!(
        "medid gateway stopped: {} requests, {} events spooled, {} sent to medid, {} waiting in the spool",
        gateway.counters.requests.load(Ordering::Relaxed),
        gateway.counters.events_spooled.load(Ordering::Relaxed),
        gateway.counters.events_sent.load(Ordering::Relaxed),
        gateway.spool.pending(),
    );
    Ok(())
}
