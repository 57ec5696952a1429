//! Starting the service: `prepare` loads (or, in development, creates) the PKI, opens the
//! store and recovers from an interrupted issuance; `run` serves gRPC on a listener until the
//! shutdown future completes. `medid serve` and the integration tests call the same two.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::api::{tls, Api};
use crate::audit::{Actor, AuditEvent};
use crate::clock::Clock;
use crate::config::Config;
use crate::domain::{PrincipalRole, Role, TrustDomain};
use crate::error::Error;
use crate::issuance::bootstrap::{self, PkiFiles, PkiMetadata, BOOTSTRAP_ADMIN_ID};
use crate::issuance::{Authority, IssuerName};
use crate::policy::profile::ProfileSettings;
use crate::proto::{
    admin_service_server::AdminServiceServer, enrollment_service_server::EnrollmentServiceServer,
    registry_service_server::RegistryServiceServer,
};
use crate::service::Ca;
use crate::store::certificates::{AdoptedCertificate, Completion};
use crate::store::Store;

/// The trust domain of a development PKI that `serve` creates by itself.
pub const DEV_TRUST_DOMAIN: &str = "medid.local";

/// A service ready to serve.
pub struct Prepared {
    pub ca: Arc<Ca>,
    pub tls: Arc<rustls::ServerConfig>,
    pub max_message_bytes: usize,
}

pub fn profile_settings(config: &Config, trust_domain: TrustDomain) -> ProfileSettings {
    ProfileSettings {
        trust_domain,
        public_base_url: config.public_base_url.clone(),
        principal_lifetime: time::Duration::days(config.principal_validity_days.into()),
        server_lifetime: time::Duration::days(config.server_validity_days.into()),
    }
}

/// Loads or creates everything `run` needs. Prints (logs) what it created and where.
pub async fn prepare(config: &Config, clock: Arc<dyn Clock>) -> Result<Prepared, Error> {
    config.validate()?;
    let files = PkiFiles::new(&config.pki_dir);
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
            extra_server_names: vec![],
            operational_ca_lifetime: time::Duration::days(5 * 365),
            profiles: profile_settings(config, TrustDomain::parse(DEV_TRUST_DOMAIN)?),
        };
        bootstrap::init(&files, &opts, clock.now())?;
        tracing::warn!(dir = %files.dir.display(), "created a DEVELOPMENT PKI (see its README.md); not for production");
    }
    let metadata = PkiMetadata::load(&files)?;
    let trust_domain = TrustDomain::parse(&metadata.trust_domain)?;

    let db_path = config.sqlite_path()?;
    if let Some(parent) = db_path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| Error::Internal(format!("creating {}: {e}", parent.display())))?;
    }
    let created = !db_path.exists();
    let store = Store::open_sqlite(&db_path).await?;
    if created {
        tracing::info!(path = %db_path.display(), "created SQLite database");
    }

    let ca = Arc::new(Ca {
        store,
        authority: Arc::new(Authority::load(&files.dir)?),
        clock,
        profiles: profile_settings(config, trust_domain),
    });
    adopt_bootstrap_admin(&ca, &files).await?;
    let abandoned = ca.recover_abandoned().await?;
    if abandoned > 0 {
        tracing::warn!(
            abandoned,
            "revoked reservations left by an interrupted issuance"
        );
    }
    Ok(Prepared {
        ca,
        tls: tls::server_config(&files)?,
        max_message_bytes: config.max_message_bytes,
    })
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
    let adopted = AdoptedCertificate {
        issuer: IssuerName::Operational,
        serial: crate::domain::hex(cert.raw_serial()),
        profile: "principal",
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
        "principal.bootstrap",
        &subject_uri,
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

/// Serves gRPC (mTLS) on `listener` until `shutdown` completes, then drains in-flight calls.
pub async fn run(
    prepared: Prepared,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Error> {
    let limit = prepared.max_message_bytes;
    let api = Api::new(prepared.ca.clone());
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<EnrollmentServiceServer<Api>>().await;
    health.set_serving::<AdminServiceServer<Api>>().await;
    health.set_serving::<RegistryServiceServer<Api>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| Error::internal("building reflection service", e))?;

    let local: Option<SocketAddr> = listener.local_addr().ok();
    let incoming = tls::incoming(listener, prepared.tls.clone());
    tracing::info!(addr = ?local, "serving gRPC over mTLS");
    tonic::transport::Server::builder()
        .timeout(Duration::from_secs(30))
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(health_service)
        .add_service(reflection)
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
            RegistryServiceServer::new(api)
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
        )
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|e| Error::internal("gRPC server", e))?;
    prepared.ca.store.close().await;
    Ok(())
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
    tracing::info!("shutting down: draining in-flight calls");
}
