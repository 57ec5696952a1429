//! The TLS layer, built by hand (not tonic's) so medid controls the client-certificate
//! verifier: anchored on medid's two issuing CAs, carrying their current CRLs, TLS 1.2 and
//! 1.3 only, ring provider. Connections are accepted with tokio-rustls and handed to tonic's
//! `serve_with_incoming`. A new CRL means a new verifier: [`TlsReloader`] swaps the config,
//! and connections accepted after that use it.
//!
//! The EST listener (HTTP/1.1) uses the same verifier with its own ALPN.
//!
//! A client certificate is optional at this layer so that a device holding a one-time token
//! can call `EnrollWithToken` (and anyone can fetch EST `/cacerts`); every other RPC refuses a caller without one (api/mod.rs), and
//! health and reflection are behind [`require_client_certificate`].

use std::sync::{Arc, Mutex, RwLock};

use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateRevocationListDer, PrivateKeyDer};

use crate::error::Error;
use crate::issuance::bootstrap::PkiFiles;

/// ring's provider, with AES-128-GCM/SHA-256 first among the TLS 1.3 suites (ring's default
/// puts AES-256-GCM/SHA-384 first). Both are strong. But SHA-384 has no instructions of its own
/// on x86 (SHA-256 does), and the handshake's key schedule and transcript hash a lot: in a
/// profile of reconnecting devices, SHA-512 blocks were 6% of the server's CPU. The server
/// applies this order whatever the client prefers.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    let first = rustls::CipherSuite::TLS13_AES_128_GCM_SHA256;
    provider
        .cipher_suites
        .sort_by_key(|suite| suite.suite() != first);
    Arc::new(provider)
}

/// rustls reads the time from the service's clock, so certificate validity in handshakes and
/// in medid's own checks agree (and tests that move the clock move both).
#[derive(Clone)]
struct ClockTime(Arc<dyn crate::clock::Clock>);

impl std::fmt::Debug for ClockTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClockTime")
    }
}

impl rustls::time_provider::TimeProvider for ClockTime {
    fn current_time(&self) -> Option<rustls_pki_types::UnixTime> {
        let secs = u64::try_from(self.0.now().unix_timestamp()).ok()?;
        Some(rustls_pki_types::UnixTime::since_unix_epoch(
            std::time::Duration::from_secs(secs),
        ))
    }
}

/// The application protocol a listener speaks, negotiated by ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// gRPC: HTTP/2.
    Grpc,
    /// EST: HTTP/1.1.
    Http1,
    /// The compliance console: HTTP/1.1 (the EST configuration, its own listener).
    Console,
}

/// What the client-certificate verifier trusts: the issuing-CA certificates in service (DER,
/// every generation during a rollover's overlap) and their current CRLs (DER).
#[derive(Debug, Clone, Default)]
pub struct Trust {
    pub anchors: Vec<Vec<u8>>,
    pub crls: Vec<Vec<u8>>,
}

/// The configurations of both listeners; one verifier, rebuilt together.
#[derive(Debug)]
struct Configs {
    grpc: Arc<ServerConfig>,
    http1: Arc<ServerConfig>,
}

impl Configs {
    /// `ticketer` is kept across rebuilds, so tickets issued before a CRL change still resume.
    fn build(
        identity: &ServerIdentity,
        trust: &Trust,
        ticketer: &Arc<dyn rustls::server::ProducesTickets>,
        time: &ClockTime,
    ) -> Result<Self, Error> {
        let mut grpc = (*server_config(identity, trust, time)?).clone();
        // Stateless TLS 1.3 session tickets: a device that reconnects resumes without a full
        // handshake, and the server keeps no per-session state (memory stays flat). A resumed
        // session keeps the client certificate it was verified with; revocation is still
        // refused on every call by the per-RPC store lookup.
        grpc.ticketer = ticketer.clone();
        let grpc = Arc::new(grpc);
        let mut http1 = (*grpc).clone();
        http1.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            grpc,
            http1: Arc::new(http1),
        })
    }
}

/// The service's TLS certificate chain (leaf first) and its key.
struct ServerIdentity {
    chain: Vec<rustls_pki_types::CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl ServerIdentity {
    fn read(files: &PkiFiles) -> Result<Self, Error> {
        Ok(Self {
            chain: read_certs(&files.server_cert)?,
            key: PrivateKeyDer::from_pem_file(&files.server_key).map_err(|e| {
                Error::Internal(format!(
                    "{}: {}",
                    files.server_key.display(),
                    crate::pem::describe_error(&e)
                ))
            })?,
        })
    }
}

/// What the configurations are built from.
struct Inputs {
    identity: ServerIdentity,
    trust: Trust,
}

/// Holds the current server configurations and rebuilds them when CRLs change or the
/// service's TLS certificate is renewed. Connections already open keep the configuration they
/// were accepted with; new ones get the current one.
pub struct TlsReloader {
    files: PkiFiles,
    time: ClockTime,
    ticketer: Arc<dyn rustls::server::ProducesTickets>,
    /// Held while building, so a CRL change and a certificate renewal never undo each other.
    inputs: Mutex<Inputs>,
    current: RwLock<Configs>,
}

impl std::fmt::Debug for TlsReloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsReloader").finish_non_exhaustive()
    }
}

impl TlsReloader {
    /// Reads the service's TLS certificate and key from `files`.
    pub fn new(
        files: PkiFiles,
        trust: Trust,
        clock: Arc<dyn crate::clock::Clock>,
    ) -> Result<Self, Error> {
        let ticketer = rustls::crypto::ring::Ticketer::new()
            .map_err(|e| Error::internal("TLS session ticketer", e))?;
        let identity = ServerIdentity::read(&files)?;
        let time = ClockTime(clock);
        let configs = Configs::build(&identity, &trust, &ticketer, &time)?;
        Ok(Self {
            files,
            time,
            ticketer,
            inputs: Mutex::new(Inputs { identity, trust }),
            current: RwLock::new(configs),
        })
    }

    fn rebuild(&self, change: impl FnOnce(&mut Inputs)) -> Result<(), Error> {
        let mut inputs = self
            .inputs
            .lock()
            .expect("TLS inputs lock is never poisoned");
        change(&mut inputs);
        let configs = Configs::build(&inputs.identity, &inputs.trust, &self.ticketer, &self.time)?;
        *self
            .current
            .write()
            .expect("TLS config lock is never poisoned") = configs;
        Ok(())
    }

    /// Rebuilds the verifier with these anchors and CRLs and makes it current.
    pub fn reload(&self, trust: Trust) -> Result<(), Error> {
        self.rebuild(|inputs| inputs.trust = trust)
    }

    /// Serves the certificate and key now on disk (renewed) from the next handshake on.
    pub fn reload_identity(&self) -> Result<(), Error> {
        let identity = ServerIdentity::read(&self.files)?;
        self.rebuild(|inputs| inputs.identity = identity)
    }

    pub fn current(&self, protocol: Protocol) -> Arc<ServerConfig> {
        let configs = self
            .current
            .read()
            .expect("TLS config lock is never poisoned");
        match protocol {
            Protocol::Grpc => configs.grpc.clone(),
            Protocol::Http1 | Protocol::Console => configs.http1.clone(),
        }
    }
}

/// Interceptor for services that take no principal of their own (health, reflection): a
/// client certificate that passed TLS verification is required. A caller without one is
/// refused as any unauthenticated caller is: rate-limited per source and audited in aggregate.
#[allow(clippy::result_large_err)]
pub fn require_client_certificate(
    ca: &crate::service::Ca,
    request: tonic::Request<()>,
) -> Result<tonic::Request<()>, tonic::Status> {
    let info = super::conn_of(&request)?;
    match info.leaf() {
        Some(_) => Ok(request),
        None => Err(ca.refuse_without_certificate(info.remote.ip()).into()),
    }
}

/// The server's rustls configuration: its certificate chain and key, and a
/// verifier that accepts a client certificate only if it chains to one of medid's issuing CAs
/// and is not on their CRLs.
fn server_config(
    identity: &ServerIdentity,
    trust: &Trust,
    time: &ClockTime,
) -> Result<Arc<ServerConfig>, Error> {
    let mut roots = RootCertStore::empty();
    for der in &trust.anchors {
        roots
            .add(der.clone().into())
            .map_err(|e| Error::internal("an issuing CA certificate as a TLS anchor", e))?;
    }
    let crls: Vec<CertificateRevocationListDer<'static>> = trust
        .crls
        .iter()
        .map(|der| CertificateRevocationListDer::from(der.clone()))
        .collect();
    let mut builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .allow_unauthenticated()
        .only_check_end_entity_revocation();
    if !crls.is_empty() {
        builder = builder.with_crls(crls);
    } else {
        builder = builder.allow_unknown_revocation_status();
    }
    let verifier = builder
        .build()
        .map_err(|e| Error::internal("building client verifier", e))?;
    let (chain, key) = (identity.chain.clone(), identity.key.clone_key());
    let mut config = ServerConfig::builder_with_details(provider(), Arc::new(time.clone()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| Error::internal("TLS versions", e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| Error::internal("server certificate", e))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    config.ignore_client_order = true;
    Ok(Arc::new(config))
}

fn read_certs(
    path: &std::path::Path,
) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, Error> {
    let text = std::fs::read(path)
        .map_err(|e| Error::Internal(format!("reading {}: {e}", path.display())))?;
    crate::pem::parse_certificates(&text)
        .map_err(|e| Error::Internal(format!("{}: {e}", path.display())))
}
