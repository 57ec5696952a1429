//! Starting the service: `prepare` loads (or, in development, creates) the PKI, opens the
//! store, recovers from an interrupted issuance, installs OCSP responders and signs CRLs;
//! `run` serves gRPC (mTLS) and the public HTTP endpoints until the shutdown future completes.
//! `medid serve` and the integration tests call the same two.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::api::conn::{ConnectionLimits, Gate, TrackRequests};
use crate::api::listen::{self, Security};
use crate::api::{tls, Api};
use crate::audit::{Actor, AuditEvent, Target};
use crate::clock::Clock;
use crate::config::Config;
use crate::domain::{PrincipalRole, Role, TrustDomain};
use crate::error::Error;
use crate::issuance::bootstrap::{self, PkiFiles, PkiMetadata, BOOTSTRAP_ADMIN_ID};
use crate::issuance::Authority;
use crate::policy::lifecycle::LifecyclePolicy;
use crate::policy::profile::ProfileSettings;
use crate::proto::{
    admin_service_server::AdminServiceServer, audit_service_server::AuditServiceServer,
    enrollment_service_server::EnrollmentServiceServer,
    lifecycle_service_server::LifecycleServiceServer,
    registry_service_server::RegistryServiceServer,
};
use crate::service::Ca;
use crate::store::certificates::{AdoptedCertificate, Completion};
use crate::store::CertificateLedger;
use crate::store::Store;
use tonic::service::interceptor::InterceptedService;

/// The trust domain of a development PKI that `serve` creates by itself.
pub const DEV_TRUST_DOMAIN: &str = "medid.local";

/// A service ready to serve.
pub struct Prepared {
    pub ca: Arc<Ca>,
    pub tls: Arc<tls::TlsReloader>,
    pub max_message_bytes: usize,
    pub limits: Limits,
    pub est_labels: Arc<std::collections::BTreeMap<String, crate::policy::est::EstLabel>>,
    /// Caps and deadlines of every listener's connections.
    pub connections: ConnectionLimits,
    /// How long in-flight calls get at shutdown.
    pub drain: Duration,
    /// How often aggregated refusals of unauthenticated callers are written.
    pub anonymous_interval: Duration,
    /// How long `/metrics` reuses its certificate census.
    pub census_interval: time::Duration,
}

/// Transport limits (docs/CONFIGURATION.md).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub per_principal: usize,
    pub per_connection: usize,
    pub streams: u32,
    pub timeout: Duration,
}

/// The sockets `run` serves on.
pub struct Listeners {
    /// gRPC over mTLS.
    pub grpc: TcpListener,
    /// Plain HTTP: CRLs, OCSP, CA certificates, health.
    pub http: TcpListener,
    /// EST over HTTPS (HTTP/1.1), when enabled.
    pub est: Option<TcpListener>,
    /// The compliance console (HTTPS), when enabled.
    pub console: Option<TcpListener>,
}

/// HTTP/2 streams a client may reset before the server has accepted them (h2's default,
/// stated here so the bound is ours).
const H2_MAX_PENDING_RESETS: usize = 20;
/// Streams the server may have to reset because of a client's errors before GOAWAY.
const H2_MAX_LOCAL_RESETS: usize = 1024;
/// The largest header block a client may send, CONTINUATION frames included.
const H2_MAX_HEADER_LIST: u32 = 16 * 1024;

/// How often CRL freshness and OCSP responder lifetimes are checked.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(60);

pub fn profile_settings(config: &Config, trust_domain: TrustDomain) -> ProfileSettings {
    ProfileSettings {
        trust_domain,
        public_base_url: config.public_base_url.clone(),
        principal_lifetime: time::Duration::days(config.principal_validity_days.into()),
        server_lifetime: time::Duration::days(config.server_validity_days.into()),
        operational_lifetime: time::Duration::hours(config.operational_validity_hours.into()),
        // Checked by Config::validate.
        sdc_models: config.sdc_models().unwrap_or_default(),
        gateway_names: config.gateway_names().unwrap_or_default(),
    }
}

/// What the TLS verifier trusts: every issuing-CA generation in service and its current CRL.
async fn current_trust(ca: &Ca) -> Result<tls::Trust, Error> {
    let mut trust = tls::Trust::default();
    for info in ca.issuers_in_service() {
        trust
            .anchors
            .push(ca.authority.issuer_cert(info.id)?.der.to_vec());
        trust.crls.push(ca.current_crl(info.id).await?.der);
    }
    Ok(trust)
}

/// Loads or creates everything `run` needs. Prints (logs) what it created and where.
pub async fn prepare(config: &Config, clock: Arc<dyn Clock>) -> Result<Prepared, Error> {
    config.validate()?;
    let files = PkiFiles::new(&config.pki_dir);
    let keys = config.key_source()?;
    if !files.exists() && files.pending.exists() {
        return Err(Error::FailedPrecondition(format!(
            "the PKI in {} awaits its issuing-CA certificates: have {} and {} signed by the \
             root, then run `medid ca install` (docs/DEPLOYMENT.md \"An existing root\")",
            files.dir.display(),
            files.device_ca_csr.display(),
            files.operational_ca_csr.display()
        )));
    }
    if !files.exists() {
        if !config.create_dev_pki {
            return Err(Error::FailedPrecondition(format!(
                "no PKI in {}; run `medid ca init --dir {}` first",
                files.dir.display(),
                files.dir.display()
            )));
        }
        let opts = bootstrap::InitOptions {
            trust_domain: TrustDomain::parse(DEV_TRUST_DOMAIN)?,
            force: false,
            server_names: vec![],
            operational_ca_lifetime: time::Duration::days(
                config.operational_ca_validity_days.into(),
            ),
            profiles: profile_settings(config, TrustDomain::parse(DEV_TRUST_DOMAIN)?),
            keys: keys.clone(),
            external_root: false,
        };
        bootstrap::init(&files, &opts, clock.now())?;
        tracing::warn!(dir = %files.dir.display(), "created a DEVELOPMENT PKI (see its README.md); not for production");
    }
    let metadata = PkiMetadata::load(&files)?;
    keys.check(&metadata.key_custody, &files.dir)?;
    warn_exposed_files(config, &files);
    let trust_domain = TrustDomain::parse(&metadata.trust_domain)?;

    let store = match config.database()? {
        crate::config::Database::Sqlite(db_path) => {
            if let Some(parent) = db_path.parent() {
                crate::files::create_private_dir(parent)?;
            }
            let created = !db_path.exists();
            // SQLite gives the WAL and shared-memory files the database file's mode.
            crate::files::precreate_private(&db_path)?;
            let store = Store::open_sqlite(&db_path).await?;
            if created {
                tracing::info!(path = %db_path.display(), "created SQLite database");
            }
            store
        }
        crate::config::Database::Postgres(url) => {
            let store = Store::open_url(&url).await?;
            tracing::info!(url = %crate::store::redact_url(&url), "using PostgreSQL");
            store
        }
    };

    let ca = Arc::new(Ca {
        store,
        authority: Arc::new(Authority::load(&files.dir, keys.clone())?),
        clock,
        profiles: profile_settings(config, trust_domain),
        lifecycle: LifecyclePolicy {
            rekey_required: config.rekey_required,
            revoke_superseded: config.revoke_superseded,
        },
        crl_validity: time::Duration::hours(config.crl_validity_hours.into()),
        crls: Default::default(),
        ledger: crate::service::ledger::Ledger {
            signer: crate::issuance::checkpoint_key::CheckpointSigner::load(
                &keys,
                &files.audit_key,
                format!("{}/audit", metadata.trust_domain),
            )?,
            checkpoint_dir: config.checkpoint_dir()?,
            every_events: config.checkpoint_every_events.max(1),
            every: time::Duration::seconds(config.checkpoint_every_seconds.max(1) as i64),
            signing: tokio::sync::Mutex::new(Default::default()),
        },
        dangerous_crash_at: config.dangerous_crash_at.clone(),
        manufacturer_cache: Default::default(),
        anonymous: crate::service::anonymous::AnonymousRefusals::new(
            crate::service::anonymous::AnonymousLimits {
                burst: config.anonymous_refusal_burst,
                per_second: config.anonymous_refusal_per_second,
                max_sources: config.anonymous_refusal_max_sources,
            },
        ),
        access_max_age: time::Duration::days(config.access_event_max_age_days.into()),
        anomaly: config.anomaly.thresholds()?,
        pki: files.clone(),
        tls_renewals: tokio::sync::watch::channel(0).0,
        counters: Default::default(),
        ca_expiry_warning: time::Duration::days(config.ca_expiry_warning_days.into()),
        ocsp_cache: crate::service::ocsp_cache::OcspCache::new(
            crate::service::publish::OCSP_VALIDITY,
            config.ocsp_signatures_per_second,
        ),
        atna: {
            use crate::service::feed::AtnaFeed;
            let mut feeds = Vec::new();
            if let Some(atna) = &config.atna {
                feeds.push(Arc::new(AtnaFeed::syslog(atna)?));
            }
            if let Some(rest) = &config.atna_rest {
                feeds.push(Arc::new(AtnaFeed::rest(rest)?));
            }
            feeds
        },
    });
    if let Some(step) = &config.dangerous_crash_at {
        tracing::warn!(
            step,
            "dangerous_crash_at is set: this process will abort mid-issuance"
        );
    }
    ca.check_belonging().await.map_err(|e| match e {
        Error::FailedPrecondition(msg) => Error::FailedPrecondition(format!(
            "{msg} (PKI directory {}, database {}); start with the PKI directory this \
             database was created with",
            files.dir.display(),
            crate::store::redact_url(&config.database_url)
        )),
        other => other,
    })?;
    adopt_bootstrap_admin(&ca, &files).await?;
    let recovered = ca.recover_from_kept_crls().await?;
    if recovered.revocations > 0 {
        tracing::warn!(
            revocations = recovered.revocations,
            "recovered revocations from kept CRLs (docs/DEPLOYMENT.md \"Backups and restore\")"
        );
    }
    ca.maintain().await?;
    ca.warn_ca_expiry();
    let tls = Arc::new(tls::TlsReloader::new(
        files,
        current_trust(&ca).await?,
        ca.clock.clone(),
    )?);
    Ok(Prepared {
        ca,
        tls,
        max_message_bytes: config.max_message_bytes,
        est_labels: Arc::new(config.est_labels.clone()),
        connections: connection_limits(config),
        drain: Duration::from_secs(config.shutdown_drain_seconds),
        anonymous_interval: Duration::from_secs(config.anonymous_refusal_interval_seconds.max(1)),
        census_interval: time::Duration::seconds(
            i64::try_from(config.metrics_census_interval_seconds).unwrap_or(i64::MAX),
        ),
        limits: Limits {
            per_principal: config.max_concurrent_requests_per_principal.max(1),
            per_connection: config.max_concurrent_requests_per_connection.max(1),
            streams: config.max_concurrent_streams.max(1),
            timeout: Duration::from_secs(config.request_timeout_seconds.max(1)),
        },
    })
}

/// Warns about each key file, database file and checkpoint file that others may read.
fn warn_exposed_files(config: &Config, files: &PkiFiles) {
    let entries = |dir: &std::path::Path| -> Vec<std::path::PathBuf> {
        std::fs::read_dir(dir)
            .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default()
    };
    let mut paths: Vec<std::path::PathBuf> = entries(&files.dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "key"))
        .collect();
    if let Ok(crate::config::Database::Sqlite(db)) = config.database() {
        for suffix in ["", "-wal", "-shm"] {
            let mut name = db.clone().into_os_string();
            name.push(suffix);
            paths.push(name.into());
        }
    }
    if let Ok(dir) = config.checkpoint_dir() {
        paths.extend(entries(&dir));
    }
    crate::files::warn_if_exposed(paths.iter().map(|p| p.as_path()));
}

/// The connection limits of `config`, the overall cap reduced to what the open-file limit
/// (raised to its hard limit first) leaves after the reserve.
fn connection_limits(config: &Config) -> ConnectionLimits {
    let descriptors = crate::api::conn::raise_descriptor_limit();
    let budget = crate::api::conn::connection_budget(config.max_connections, descriptors);
    if budget < config.max_connections {
        tracing::warn!(
            configured = config.max_connections,
            budget,
            open_file_limit = descriptors.unwrap_or(0),
            "max_connections reduced to fit the open-file limit"
        );
    }
    ConnectionLimits {
        header_timeout: Duration::from_secs(config.connection_header_timeout_seconds.max(1)),
        idle_timeout: Duration::from_secs(config.connection_idle_timeout_seconds.max(1)),
        max_connections: budget,
        max_per_source: config.max_connections_per_source.max(1),
    }
}

/// Records the admin certificate `ca init` wrote, so its holder can call the service.
async fn adopt_bootstrap_admin(ca: &Ca, files: &PkiFiles) -> Result<(), Error> {
    if !files.admin_cert.exists() {
        return Ok(());
    }
    let pem = std::fs::read(&files.admin_cert)
        .map_err(|e| Error::Internal(format!("reading {}: {e}", files.admin_cert.display())))?;
    let der = crate::pem::parse_certificates(&pem)?.remove(0);
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| Error::Internal(format!("{}: {e}", files.admin_cert.display())))?;
    let id = crate::domain::PrincipalId::parse(BOOTSTRAP_ADMIN_ID)?;
    let subject_uri = ca
        .profiles
        .trust_domain
        .principal_uri(&PrincipalRole::Admin, &id);
    let spki = crate::domain::hex(
        ring::digest::digest(&ring::digest::SHA256, cert.public_key().raw).as_ref(),
    );
    let issuer = ca.authority.issuer_of_certificate(&der).ok_or_else(|| {
        Error::FailedPrecondition(format!(
            "{} is not signed by an issuing CA of this PKI",
            files.admin_cert.display()
        ))
    })?;
    let adopted = AdoptedCertificate {
        issuer,
        serial: crate::domain::CertSerial::from_bytes(cert.raw_serial().to_vec()),
        profile: crate::domain::Profile::Principal,
        role: Role::Admin,
        subject_uri: subject_uri.clone(),
        spki_sha256: spki,
        not_before: cert.validity().not_before.to_datetime(),
        not_after: cert.validity().not_after.to_datetime(),
        der: der.to_vec(),
    };
    let event = AuditEvent::new(
        ca.clock.now(),
        Actor::system(),
        crate::audit::Action::PrincipalBootstrap,
        Target::uri(&subject_uri),
    )
    .with("serial", adopted.serial.clone())
    .with(
        "certificate_sha256",
        crate::store::certificates::fingerprint(&der),
    );
    let completion = Completion::Principal {
        role: Role::Admin,
        principal_id: id.to_string(),
        manufacturer: None,
    };
    if ca
        .store
        .adopt_certificate(&adopted, &completion, &event)
        .await?
    {
        tracing::info!(uri = %subject_uri, "recorded the bootstrap admin certificate");
    }
    Ok(())
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Every call finished within the drain deadline.
    Drained,
    /// The deadline passed and the connections still open were closed.
    CutShort,
}

/// Serves gRPC (mTLS), EST (HTTPS) and HTTP until `shutdown` completes, then drains:
/// `/readyz` and the gRPC health service say not serving at once, the gRPC and EST listeners
/// close, connections are asked to finish (HTTP/2 GOAWAY, HTTP/1.1 `Connection: close`), and
/// whatever is still open after the drain deadline is closed. The plain-HTTP listener (CRLs,
/// OCSP, health) answers until the gRPC and EST connections are gone, so a load balancer
/// sees `/readyz` 503 rather than a refused connection while the node drains.
pub async fn run(
    prepared: Prepared,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<Stopped, Error> {
    let limit = prepared.max_message_bytes;
    let ca = prepared.ca.clone();
    let limiter = Arc::new(crate::api::limits::PrincipalLimiter::new(
        prepared.limits.per_principal,
    ));
    let api = Api::new(ca.clone(), limiter.clone());
    let background = [
        tokio::spawn(reload_tls_on_new_crls(ca.clone(), prepared.tls.clone())),
        tokio::spawn(reload_tls_on_renewal(ca.clone(), prepared.tls.clone())),
        tokio::spawn(maintenance(ca.clone())),
        tokio::spawn(checkpoints(ca.clone())),
        tokio::spawn(anonymous_refusals(ca.clone(), prepared.anonymous_interval)),
        tokio::spawn(atna_feed(ca.clone())),
        tokio::spawn(ca.clone().watch_access_anomalies()),
    ];
    let gate = Gate::new(prepared.connections);
    let exporter = crate::api::metrics::Exporter::new(
        gate.clone(),
        crate::api::metrics::RpcMetrics::default(),
        prepared.census_interval,
    );
    let header_timeout = prepared.connections.header_timeout;
    tracing::info!(
        max_connections = prepared.connections.max_connections,
        max_per_source = prepared.connections.max_per_source,
        header_timeout_s = header_timeout.as_secs(),
        idle_timeout_s = prepared.connections.idle_timeout.as_secs(),
        "connection limits"
    );
    let (stop, stopped) = tokio::sync::watch::channel(false);
    // The plain-HTTP listener stops after the others (see above).
    let (stop_http, http_stopped) = tokio::sync::watch::channel(false);

    let http_addr = listeners.http.local_addr().ok();
    let http_conns = listen::accept(
        listeners.http,
        gate.clone(),
        Security::Plain,
        http_stopped.clone(),
    );
    let http = tokio::spawn(listen::serve_http1(
        http_conns,
        crate::api::http::router(ca.clone(), stopped.clone(), exporter.clone()),
        header_timeout,
        http_stopped,
    ));
    if let Some(addr) = http_addr {
        tracing::info!(%addr, "serving CRL, OCSP and CA certificates over HTTP");
    }
    let est = listeners.est.map(|listener| {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "serving EST over HTTPS");
        }
        let state = crate::api::est::EstState {
            ca: ca.clone(),
            labels: prepared.est_labels.clone(),
            limiter,
        };
        let security = Security::Tls(prepared.tls.clone(), tls::Protocol::Http1);
        let conns = listen::accept(listener, gate.clone(), security, stopped.clone());
        tokio::spawn(listen::serve_http1(
            conns,
            crate::api::est::router(state),
            header_timeout,
            stopped.clone(),
        ))
    });

    let console = listeners.console.map(|listener| {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "serving the compliance console over HTTPS");
        }
        let security = Security::Tls(prepared.tls.clone(), tls::Protocol::Console);
        let conns = listen::accept(listener, gate.clone(), security, stopped.clone());
        tokio::spawn(listen::serve_http1(
            conns,
            crate::api::console::router(ca.clone()),
            header_timeout,
            stopped.clone(),
        ))
    });
    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, tonic_health::ServingStatus::Serving).await;
    // Reflection v1 and, for older grpcurl builds, v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .map_err(|e| Error::internal("building reflection service", e))?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| Error::internal("building reflection service", e))?;

    let local: Option<SocketAddr> = listeners.grpc.local_addr().ok();
    let security = Security::Tls(prepared.tls.clone(), tls::Protocol::Grpc);
    let incoming = listen::accept(listeners.grpc, gate.clone(), security, stopped.clone());
    if let Some(addr) = local {
        tracing::info!(%addr, "serving gRPC over mTLS");
    }
    let limits = prepared.limits;
    let grpc_stop = {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        }
    };
    let certified = {
        let ca = ca.clone();
        move |request| tls::require_client_certificate(&ca, request)
    };
    let served = tonic::transport::Server::builder()
        .layer(TrackRequests)
        .layer(crate::api::metrics::ObserveRpcs(exporter.rpc().clone()))
        .timeout(limits.timeout)
        .concurrency_limit_per_connection(limits.per_connection)
        .max_concurrent_streams(limits.streams)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        // HTTP/2 abuse (docs/SECURITY.md): a client resetting streams faster than they are
        // accepted (Rapid Reset), or provoking resets, is sent GOAWAY; header blocks,
        // CONTINUATION frames included, are bounded.
        .http2_max_pending_accept_reset_streams(Some(H2_MAX_PENDING_RESETS))
        .http2_max_local_error_reset_streams(Some(H2_MAX_LOCAL_RESETS))
        .http2_max_header_list_size(H2_MAX_HEADER_LIST)
        .add_service(InterceptedService::new(health_service, certified.clone()))
        .add_service(InterceptedService::new(reflection_v1, certified.clone()))
        .add_service(InterceptedService::new(reflection_v1alpha, certified))
        .add_service(
            AdminServiceServer::new(api.clone())
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
        )
        .add_service(
            EnrollmentServiceServer::new(api.clone())
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
        )
        .add_service(
            RegistryServiceServer::new(api.clone())
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
        )
        .add_service(
            LifecycleServiceServer::new(api.clone())
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
        )
        .add_service(
            AuditServiceServer::new(api)
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
        )
        .serve_with_incoming_shutdown(incoming, grpc_stop);

    let servers = async {
        let served = served.await.map_err(|e| Error::internal("gRPC server", e));
        if let Some(est) = est {
            if let Err(e) = est.await {
                tracing::error!(error = %e, "EST server task");
            }
        }
        if let Some(console) = console {
            if let Err(e) = console.await {
                tracing::error!(error = %e, "console server task");
            }
        }
        let _ = stop_http.send(true);
        (served, http.await)
    };
    let drain = prepared.drain;
    let cut_short = std::sync::atomic::AtomicBool::new(false);
    let deadline = async {
        shutdown.await;
        let _ = stop.send(true);
        set_health(&health, tonic_health::ServingStatus::NotServing).await;
        tracing::info!(
            open = gate.open(),
            "shutting down: /readyz answers 503, listeners closed, draining connections"
        );
        tokio::time::sleep(drain).await;
        tracing::warn!(
            open = gate.open(),
            "drain deadline of {drain:?} reached; closing the connections still open"
        );
        cut_short.store(true, std::sync::atomic::Ordering::Relaxed);
        gate.close_all();
        std::future::pending::<()>().await
    };
    let (served, http_result) = tokio::select! {
        done = servers => done,
        () = deadline => unreachable!("the drain deadline never completes"),
    };
    for task in background {
        task.abort();
    }
    if let Err(e) = ca.flush_anonymous_refusals().await {
        tracing::error!(error = %e, "writing the last aggregated refusals failed");
    }
    ca.store.close().await;
    served?;
    http_result.map_err(|e| Error::internal("HTTP server task", e))?;
    if cut_short.load(std::sync::atomic::Ordering::Relaxed) {
        tracing::warn!("stopped: the drain deadline closed the connections still open");
        Ok(Stopped::CutShort)
    } else {
        tracing::info!("stopped: every connection drained");
        Ok(Stopped::Drained)
    }
}

/// Sets the gRPC health status of the whole server ("") and of each medid service.
async fn set_health(
    health: &tonic_health::server::HealthReporter,
    status: tonic_health::ServingStatus,
) {
    use tonic::server::NamedService;
    for service in [
        "",
        <EnrollmentServiceServer<Api> as NamedService>::NAME,
        <AdminServiceServer<Api> as NamedService>::NAME,
        <RegistryServiceServer<Api> as NamedService>::NAME,
        <LifecycleServiceServer<Api> as NamedService>::NAME,
        <AuditServiceServer<Api> as NamedService>::NAME,
    ] {
        health.set_service_status(service, status).await;
    }
}

/// Writes the aggregated events of unauthenticated refusals once an interval.
async fn anonymous_refusals(ca: Arc<Ca>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.tick().await;
    loop {
        tick.tick().await;
        if let Err(e) = ca.flush_anonymous_refusals().await {
            tracing::error!(error = %e, "writing aggregated refusal events failed; kept for the next interval");
        }
    }
}

/// Rebuilds the TLS verifier whenever a CRL is signed, so the handshake refuses revoked
/// certificates too (the per-RPC store check already does, at once). The CRLs are read after
/// the generation is taken, so the verifier carries at least that generation's CRL; signers
/// wait for it (`CrlSignal`). Several CRLs signed meanwhile are loaded in one rebuild.
async fn reload_tls_on_new_crls(ca: Arc<Ca>, tls: Arc<tls::TlsReloader>) {
    let mut generation = ca.crls.subscribe();
    while generation.changed().await.is_ok() {
        let target = *generation.borrow_and_update();
        match current_trust(&ca).await {
            Ok(trust) => {
                if let Err(e) = tls.reload(trust) {
                    tracing::error!(error = %e, "rebuilding TLS verifier with new CRLs");
                }
            }
            Err(e) => tracing::warn!(error = %e, "reading CRLs for the TLS verifier"),
        }
        // Also after a failure: the signer should not wait out its timeout for a rebuild
        // that is not coming. The error is logged; RPCs still refuse revoked callers.
        ca.crls.applied(target);
    }
}

/// Serves the renewed TLS certificate from the next handshake on; open connections keep theirs.
async fn reload_tls_on_renewal(ca: Arc<Ca>, tls: Arc<tls::TlsReloader>) {
    let mut renewals = ca.tls_renewals.subscribe();
    while renewals.changed().await.is_ok() {
        renewals.borrow_and_update();
        match tls.reload_identity() {
            Ok(()) => tracing::info!("serving the renewed TLS certificate"),
            Err(e) => {
                tracing::error!(error = %e, "loading the renewed TLS certificate failed; the previous one stays")
            }
        }
    }
}

/// Signs audit checkpoints every N events or T seconds (checked each second).
async fn checkpoints(ca: Arc<Ca>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        if let Err(e) = ca.maybe_checkpoint().await {
            tracing::error!(error = %e, "signing an audit checkpoint failed");
        }
    }
}

/// Runs the ATNA feeds configured (none: waits forever).
async fn atna_feed(ca: Arc<Ca>) {
    futures_util::future::join_all(ca.atna.iter().map(|feed| feed.clone().run(ca.clone()))).await;
    std::future::pending::<()>().await;
}

async fn maintenance(ca: Arc<Ca>) {
    let mut tick = tokio::time::interval(MAINTENANCE_INTERVAL);
    tick.tick().await;
    for minute in 1u64.. {
        tick.tick().await;
        if minute % 60 == 0 {
            ca.warn_ca_expiry();
        }
        if let Err(e) = ca.maintain().await {
            tracing::warn!(error = %e, "periodic CRL/OCSP upkeep failed; retrying next minute");
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    tracing::info!("shutting down: draining in-flight calls (a second signal exits at once)");
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
        tracing::warn!("second signal: exiting without waiting for the drain");
        std::process::exit(130);
    });
}
