//! Test harness: starts the real medid server on 127.0.0.1:0 with a temporary PKI and database,
//! and makes real tonic clients that talk to it over mTLS.
//!
//! The database is SQLite in the test's directory, or, with `MEDID_TEST_BACKEND=postgres`, a
//! fresh schema of its own on the PostgreSQL server `MEDID_TEST_POSTGRES_URL` names (`.ci/run`
//! runs the integration tests both ways). A test told to use PostgreSQL fails when it cannot
//! reach it; it never falls back to SQLite.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use medid::api::client::{connect, ClientCredentials};
use medid::clock::{Clock, FixedClock, SystemClock};
use medid::config::Config;
use medid::proto::{
    admin_service_client::AdminServiceClient, enrollment_service_client::EnrollmentServiceClient,
    registry_service_client::RegistryServiceClient, IssuePrincipalCertificateRequest,
    PrincipalRole,
};
use medid::service::Ca;
use medid::store::AuditLog;
use rcgen::{CertificateParams, KeyPair};
use tokio::sync::oneshot;
use tonic::transport::Channel;

pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub url: String,
    /// Base URL of the plain-HTTP listener (CRL, OCSP, CA certificates).
    pub http_url: String,
    /// Base URL of the EST listener (HTTPS).
    pub est_url: String,
    /// Base URL of the compliance console (HTTPS).
    pub console_url: String,
    pub ca: Arc<Ca>,
    pub clock: Arc<FixedClock>,
    pub config: Config,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<medid::server::Stopped>>,
}

/// A client identity: certificate chain PEM and private key PEM.
#[derive(Clone, Debug)]
pub struct Identity {
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestServer {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        Self::start_in(dir).await
    }

    /// Starts a server on an existing directory (PKI and database are reused if present).
    pub async fn start_in(dir: tempfile::TempDir) -> Self {
        Self::start_at(dir, SystemClock.now()).await
    }

    /// Starts with medid's clock pinned at `now`. TLS still checks certificate validity against
    /// the real clock, so `now` should stay near it.
    pub async fn start_at(dir: tempfile::TempDir, now: time::OffsetDateTime) -> Self {
        Self::start_with(dir, now, |_| {}).await
    }

    /// Starts with a configuration the caller adjusts (EST labels, limits).
    pub async fn start_with(
        dir: tempfile::TempDir,
        now: time::OffsetDateTime,
        adjust: impl FnOnce(&mut Config),
    ) -> Self {
        let mut config = Config {
            pki_dir: dir.path().join("pki"),
            database_url: database_url_for(dir.path()).await,
            audit_checkpoint_dir: Some(dir.path().join("checkpoints")),
            create_dev_pki: true,
            // Most tests make many unauthenticated calls from 127.0.0.1 on purpose; the ones
            // about flooding set their own limit.
            anonymous_refusal_burst: 100_000,
            ..Config::default()
        };
        adjust(&mut config);
        // The clock starts at (near) the real time (TLS checks validity against the real
        // clock); tests move it forward to exercise expiry in medid's own checks.
        let clock = Arc::new(FixedClock::new(now));
        let prepared = medid::server::prepare(&config, clock.clone())
            .await
            .expect("server prepares");
        let ca = prepared.ca.clone();
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = grpc.local_addr().unwrap();
        let http_addr = http.local_addr().unwrap();
        let est = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let est_addr = est.local_addr().unwrap();
        let console = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let console_addr = console.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let listeners = medid::server::Listeners {
                grpc,
                http,
                est: Some(est),
                console: Some(console),
            };
            medid::server::run(prepared, listeners, async {
                let _ = stopped.await;
            })
            .await
            .expect("server runs")
        });
        TestServer {
            url: format!("https://localhost:{}", addr.port()),
            http_url: format!("http://{http_addr}"),
            est_url: format!("https://localhost:{}", est_addr.port()),
            console_url: format!("https://localhost:{}", console_addr.port()),
            dir,
            ca,
            clock,
            config,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops the server and waits for it to drain; returns the directory for a restart.
    pub async fn stop(self) -> tempfile::TempDir {
        self.stop_reporting().await.1
    }

    /// Signals shutdown without waiting for the drain.
    pub fn begin_stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }

    /// Stops the server; returns how its drain ended, and the directory.
    pub async fn stop_reporting(mut self) -> (medid::server::Stopped, tempfile::TempDir) {
        self.begin_stop();
        let stopped = self
            .task
            .take()
            .expect("a running server has its task")
            .await
            .expect("server task ends cleanly");
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        (stopped, dir)
    }

    /// GET /readyz on the plain-HTTP listener: the status code.
    pub async fn readiness(&self) -> u16 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = self.http_url.trim_start_matches("http://").to_owned();
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /readyz HTTP/1.1\r\nHost: medid\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).await.unwrap();
        reply.split(' ').nth(1).unwrap().parse().unwrap()
    }

    pub fn pki(&self, name: &str) -> PathBuf {
        self.config.pki_dir.join(name)
    }

    pub fn root_pem(&self) -> String {
        std::fs::read_to_string(self.pki("root-ca.pem")).unwrap()
    }

    pub fn admin(&self) -> Identity {
        Identity {
            cert_pem: std::fs::read_to_string(self.pki("admin.pem")).unwrap(),
            key_pem: std::fs::read_to_string(self.pki("admin.key")).unwrap(),
        }
    }

    pub async fn channel(&self, who: &Identity) -> Channel {
        self.try_channel(who).await.expect("mTLS connection")
    }

    pub async fn try_channel(&self, who: &Identity) -> Result<Channel, medid::Error> {
        let creds = ClientCredentials {
            ca_pem: self.root_pem().into_bytes(),
            cert_pem: who.cert_pem.clone().into_bytes(),
            key_pem: who.key_pem.clone().into_bytes(),
        };
        connect(&self.url, &creds).await
    }

    pub async fn admin_client(&self) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(self.channel(&self.admin()).await)
    }

    pub async fn enrollment_client(&self, who: &Identity) -> EnrollmentServiceClient<Channel> {
        EnrollmentServiceClient::new(self.channel(who).await)
    }

    pub async fn registry_client(&self, who: &Identity) -> RegistryServiceClient<Channel> {
        RegistryServiceClient::new(self.channel(who).await)
    }

    /// Creates a manufacturer through the API.
    pub async fn add_manufacturer(&self, id: &str, models: &[&str]) {
        self.admin_client()
            .await
            .create_manufacturer(medid::proto::CreateManufacturerRequest {
                id: id.into(),
                display_name: format!("{id} Medical Inc."),
                allowed_models: models.iter().map(|m| m.to_string()).collect(),
            })
            .await
            .expect("manufacturer created");
    }

    /// Issues a principal certificate through the API, with a key made here.
    pub async fn issue(&self, role: PrincipalRole, id: &str, manufacturer: &str) -> Identity {
        let (csr, key_pem) = csr_p256();
        let issued = self
            .admin_client()
            .await
            .issue_principal_certificate(IssuePrincipalCertificateRequest {
                role: role as i32,
                id: id.into(),
                manufacturer_id: manufacturer.into(),
                csr,
            })
            .await
            .expect("principal issued")
            .into_inner();
        Identity {
            cert_pem: issued.certificate_pem,
            key_pem,
        }
    }

    /// Enrolls device `serial` (model "X") as `station`: its birth identity and certificate.
    pub async fn enroll(
        &self,
        station: &Identity,
        serial: &str,
    ) -> (Identity, medid::proto::IssuedCertificate) {
        let (csr, key_pem) = csr_p256();
        let cert = self
            .enrollment_client(station)
            .await
            .enroll_device(medid::proto::EnrollDeviceRequest {
                csr,
                serial: serial.into(),
                model: "X".into(),
                udi_di: String::new(),
            })
            .await
            .expect("enrollment succeeds")
            .into_inner()
            .certificate
            .expect("a certificate");
        let identity = Identity {
            cert_pem: cert.certificate_pem.clone(),
            key_pem,
        };
        (identity, cert)
    }

    pub async fn station(&self, manufacturer: &str, id: &str) -> Identity {
        self.issue(PrincipalRole::ManufacturerStation, id, manufacturer)
            .await
    }

    /// Every audit event so far.
    pub async fn audit_events(&self) -> Vec<medid::audit::StoredEvent> {
        self.ca.store.audit_events(0, i64::MAX).await.unwrap()
    }

    pub async fn count(&self, sql: &str) -> i64 {
        let pool = self.db().await;
        let n: i64 = sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap();
        pool.close().await;
        n
    }

    /// A separate connection pool to the server's database, for checks and tampering.
    pub async fn db(&self) -> sqlx::AnyPool {
        install_drivers();
        sqlx::AnyPool::connect(&self.config.database_url)
            .await
            .expect("test database reachable")
    }
}

/// Which backend the integration tests run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestBackend {
    Sqlite,
    Postgres,
}

pub fn test_backend() -> TestBackend {
    match std::env::var("MEDID_TEST_BACKEND").as_deref() {
        Ok("postgres") => TestBackend::Postgres,
        Ok("sqlite") | Err(_) => TestBackend::Sqlite,
        Ok(other) => panic!("MEDID_TEST_BACKEND must be sqlite or postgres, not {other:?}"),
    }
}

/// The SQL for the backend under test.
pub fn by_backend(sqlite: &'static str, postgres: &'static str) -> &'static str {
    match test_backend() {
        TestBackend::Sqlite => sqlite,
        TestBackend::Postgres => postgres,
    }
}

pub fn install_drivers() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(sqlx::any::install_default_drivers);
}

/// `MEDID_TEST_POSTGRES_URL`; a test that needs it and lacks it fails.
pub fn postgres_base_url() -> String {
    std::env::var("MEDID_TEST_POSTGRES_URL").expect(
        "MEDID_TEST_POSTGRES_URL must name the PostgreSQL server for this test \
         (e.g. postgres://postgres@127.0.0.1:5432/test)",
    )
}

/// Creates a schema no other test or run uses, and returns a URL that works inside it.
pub async fn new_postgres_schema() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    install_drivers();
    let base = postgres_base_url();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    // MEDID_TEST_RUN_ID (set by .ci/run) lets a run drop exactly its own schemas afterwards.
    let run = std::env::var("MEDID_TEST_RUN_ID")
        .ok()
        .filter(|r| r.bytes().all(|b| b.is_ascii_alphanumeric()))
        .unwrap_or_else(|| "local".into());
    let schema = format!(
        "medid_t_{run}_{}_{}_{}",
        std::process::id(),
        nanos,
        N.fetch_add(1, Ordering::Relaxed)
    );
    let pool = sqlx::AnyPool::connect(&base)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {base} is unreachable: {e}"));
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&pool)
        .await
        .expect("creating a test schema");
    pool.close().await;
    schema_url(&base, &schema)
}

/// `base` with its search_path set to `schema`.
pub fn schema_url(base: &str, schema: &str) -> String {
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}options=-c%20search_path%3D{schema}")
}

/// The database of a test server whose files live in `dir`: SQLite there, or a PostgreSQL
/// schema recorded in `dir/postgres-url`, so that a restart in the same directory finds the
/// same data.
pub async fn database_url_for(dir: &Path) -> String {
    match test_backend() {
        TestBackend::Sqlite => format!("sqlite://{}", dir.join("medid.db").display()),
        TestBackend::Postgres => {
            let marker = dir.join("postgres-url");
            match std::fs::read_to_string(&marker) {
                Ok(url) => url,
                Err(_) => {
                    let url = new_postgres_schema().await;
                    std::fs::write(&marker, &url).unwrap();
                    url
                }
            }
        }
    }
}

/// A gateway's report of a read of device `serial` (manufacturer acme) by nurse `n` for
/// patient `n`.
pub fn access_event(serial: &str, n: i64) -> medid::proto::AccessEvent {
    use medid::proto;
    proto::AccessEvent {
        device: Some(proto::DeviceRef {
            manufacturer_id: "acme".into(),
            serial: serial.into(),
        }),
        user_id: format!("nurse-{n}"),
        user_role: "RN".into(),
        action: proto::AccessAction::Read as i32,
        data_category: "vital-signs".into(),
        patient_ref: format!("Patient/{n}"),
        purpose_of_use: "TREAT".into(),
        outcome: proto::AccessOutcome::Success as i32,
        occurred_at: Some(prost_types::Timestamp {
            seconds: system_now().unix_timestamp(),
            nanos: 0,
        }),
        ..Default::default()
    }
}

/// A port on 127.0.0.1 that was free a moment ago, for a server started as a child process.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A CSR (DER) for a new key of `alg`, and the key's PEM.
pub fn csr_for(alg: &'static rcgen::SignatureAlgorithm) -> (Vec<u8>, String) {
    let key = KeyPair::generate_for(alg).unwrap();
    let csr = CertificateParams::new(vec![])
        .unwrap()
        .serialize_request(&key)
        .unwrap();
    (csr.der().to_vec(), key.serialize_pem())
}

pub fn csr_p256() -> (Vec<u8>, String) {
    csr_for(&rcgen::PKCS_ECDSA_P256_SHA256)
}

pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data")
            .join(name),
    )
    .unwrap()
}

pub fn system_now() -> time::OffsetDateTime {
    SystemClock.now()
}

/// The hex serial of an identity's certificate.
pub fn serial_of(who: &Identity) -> String {
    let der = medid::pem::parse_certificates(who.cert_pem.as_bytes()).unwrap()[0].to_vec();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    medid::domain::hex(cert.raw_serial())
}

/// A revocation of one certificate (of whichever issuing CA has the serial) for keyCompromise.
pub fn revoke_for_key_compromise(serial: &str) -> medid::proto::RevokeRequest {
    medid::proto::RevokeRequest {
        target: Some(medid::proto::revoke_request::Target::Certificate(
            medid::proto::CertificateRef {
                issuer: 0,
                serial: serial.into(),
                issuer_generation: 0,
            },
        )),
        reason: medid::proto::RevocationReason::KeyCompromise as i32,
    }
}

/// `openssl ocsp` (an independent client) asking medid's operational responder about the
/// certificate in `cert`: its output. Call it from a multi-threaded test: it blocks.
pub fn openssl_ocsp(server: &TestServer, cert: &Path) -> String {
    let out = std::process::Command::new("openssl")
        .args(["ocsp", "-issuer"])
        .arg(server.pki("operational-ca.pem"))
        .arg("-CAfile")
        .arg(server.pki("root-ca.pem"))
        .args(["-url", &format!("{}/ocsp/operational", server.http_url)])
        .arg("-cert")
        .arg(cert)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// rustls checks certificate validity with this clock: the test's, so a certificate issued
/// after the clock was moved forward is valid to this client.
#[derive(Debug)]
struct TestTime(Arc<FixedClock>);

impl rustls::time_provider::TimeProvider for TestTime {
    fn current_time(&self) -> Option<rustls_pki_types::UnixTime> {
        Some(rustls_pki_types::UnixTime::since_unix_epoch(
            std::time::Duration::from_secs(self.0.now().unix_timestamp() as u64),
        ))
    }
}

pub fn client_config(server: &TestServer, who: &Identity) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in medid::pem::parse_certificates(server.root_pem().as_bytes()).unwrap() {
        roots.add(cert).unwrap();
    }
    let chain = medid::pem::parse_certificates(who.cert_pem.as_bytes()).unwrap();
    let key =
        <rustls_pki_types::PrivateKeyDer as rustls_pki_types::pem::PemObject>::from_pem_slice(
            who.key_pem.as_bytes(),
        )
        .unwrap();
    let mut config = rustls::ClientConfig::builder_with_details(
        Arc::new(rustls::crypto::ring::default_provider()),
        Arc::new(TestTime(server.clock.clone())),
    )
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

/// A new mTLS connection that checks certificates against the test's clock (so it still
/// works after the clock was moved forward); also returns the serial of the certificate the
/// server presented.
pub async fn connect_at_test_time(server: &TestServer, who: &Identity) -> (Channel, String) {
    try_connect_at_test_time(server, who)
        .await
        .expect("the connection is accepted")
}

/// As [`connect_at_test_time`], with the refusal as an error (a revoked client certificate).
pub async fn try_connect_at_test_time(
    server: &TestServer,
    who: &Identity,
) -> Result<(Channel, String), String> {
    let addr = server
        .url
        .trim_start_matches("https://")
        .replace("localhost", "127.0.0.1");
    let config = client_config(server, who);
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    // As tonic's own connector does: without it, Nagle holds a request's second segment
    // until the server's delayed ACK, 40 ms per call.
    tcp.set_nodelay(true).unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf).unwrap();
    let serial = medid::domain::hex(cert.raw_serial());
    let io = std::sync::Mutex::new(Some(hyper_util::rt::TokioIo::new(tls)));
    let channel = tonic::transport::Endpoint::from_static("http://medid")
        .connect_with_connector(tower::service_fn(move |_| {
            let io = io.lock().unwrap().take();
            async move { io.ok_or_else(|| std::io::Error::other("one connection only")) }
        }))
        .await
        .map_err(|e| format!("HTTP/2: {e}"))?;
    Ok((channel, serial))
}

/// One authenticated call (GetCrl) over `channel`: whether it is answered.
pub async fn a_call_works(channel: Channel) -> bool {
    medid::proto::lifecycle_service_client::LifecycleServiceClient::new(channel)
        .get_crl(medid::proto::GetCrlRequest {
            issuer: medid::proto::Issuer::Operational as i32,
            issuer_generation: 0,
        })
        .await
        .is_ok()
}

/// One sample of `/metrics`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub value: f64,
}

/// Every sample of `/metrics`, fetched with curl. With `MEDID_METRICS_PYTHON` set (`.ci/run`
/// sets it), the text is parsed by Python prometheus_client's OpenMetrics parser, an
/// independent reader that refuses malformed text; without it, line by line here.
pub fn scrape_metrics(server: &TestServer) -> Vec<Sample> {
    scrape_metrics_at(&server.http_url)
}

/// Every sample of `BASE/metrics` (plain HTTP), read as [`scrape_metrics`] reads medid's.
pub fn scrape_metrics_at(base: &str) -> Vec<Sample> {
    let work = tempfile::tempdir().unwrap();
    let text = work.path().join("metrics.txt");
    let fetched = std::process::Command::new("curl")
        .args(["-sSf", "-o"])
        .arg(&text)
        .arg(format!("{base}/metrics"))
        .status()
        .unwrap();
    assert!(fetched.success(), "GET /metrics failed");
    match std::env::var("MEDID_METRICS_PYTHON") {
        Ok(python) => {
            let script = "import sys, json\n\
                from prometheus_client.openmetrics.parser import text_string_to_metric_families\n\
                for family in text_string_to_metric_families(open(sys.argv[1]).read()):\n\
                \x20   for s in family.samples:\n\
                \x20       print(json.dumps([s.name, s.labels, s.value]))\n";
            let out = std::process::Command::new(&python)
                .args(["-c", script])
                .arg(&text)
                .output()
                .unwrap_or_else(|e| panic!("MEDID_METRICS_PYTHON={python}: {e}"));
            assert!(
                out.status.success(),
                "the OpenMetrics parser refused /metrics: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout)
                .unwrap()
                .lines()
                .map(|l| {
                    let (name, labels, value): (String, _, f64) = serde_json::from_str(l).unwrap();
                    Sample {
                        name,
                        labels,
                        value,
                    }
                })
                .collect()
        }
        Err(_) => std::fs::read_to_string(&text)
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (series, value) = l.rsplit_once(' ').expect("a sample line");
                let (name, labels) = match series.split_once('{') {
                    Some((name, rest)) => (name, rest.trim_end_matches('}')),
                    None => (series, ""),
                };
                let labels = labels
                    .split("\",")
                    .filter(|kv| !kv.is_empty())
                    .map(|kv| {
                        let (k, v) = kv.split_once("=\"").expect("label=\"value\"");
                        (k.to_owned(), v.trim_end_matches('"').to_owned())
                    })
                    .collect();
                Sample {
                    name: name.to_owned(),
                    labels,
                    value: value.parse().expect("a number"),
                }
            })
            .collect(),
    }
}

/// The value of the sample named `name` whose labels include every one of `labels`.
pub fn metric(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

/// A channel that verifies the server but presents no client certificate.
pub async fn anonymous_channel(server: &TestServer) -> Channel {
    Channel::from_shared(server.url.clone())
        .unwrap()
        .tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(server.root_pem()))
                .domain_name("localhost"),
        )
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// The extensions an existing root gives medid's issuing CAs (OpenSSL x509v3 config lines).
pub const ISSUING: &str = "basicConstraints = critical,CA:TRUE,pathlen:0\n\
                           keyUsage = critical,keyCertSign,cRLSign,digitalSignature";

/// Runs `cmd`, which must succeed; its stdout and stderr.
fn succeeds(cmd: &mut std::process::Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{cmd:?}: {text}");
    text
}

/// An existing (enterprise) root made with OpenSSL, independent of medid: an RSA-3072 key and
/// certificate, and an `openssl ca` setup for its CRL.
pub struct EnterpriseRoot {
    pub dir: PathBuf,
}

impl EnterpriseRoot {
    pub fn make(dir: &Path, name: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        succeeds(
            std::process::Command::new("openssl")
                .args(["req", "-x509", "-newkey", "rsa:3072", "-nodes", "-sha256"])
                .args(["-days", "3650", "-subj", &format!("/O=Hospital/CN={name}")])
                .args(["-addext", "basicConstraints=critical,CA:TRUE"])
                .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
                .arg("-keyout")
                .arg(dir.join("root.key"))
                .arg("-out")
                .arg(dir.join("root.pem")),
        );
        std::fs::write(dir.join("index.txt"), "").unwrap();
        std::fs::write(dir.join("crlnumber"), "01\n").unwrap();
        std::fs::write(
            dir.join("ca.cnf"),
            format!(
                "[ca]\ndefault_ca = root\n[root]\ndatabase = {}\ncrlnumber = {}\n\
                 certificate = {}\nprivate_key = {}\ndefault_md = sha256\n\
                 default_crl_days = 365\ncrl_extensions = crl_ext\n\
                 [crl_ext]\nauthorityKeyIdentifier = keyid:always\n",
                dir.join("index.txt").display(),
                dir.join("crlnumber").display(),
                dir.join("root.pem").display(),
                dir.join("root.key").display()
            ),
        )
        .unwrap();
        Self {
            dir: dir.to_owned(),
        }
    }

    pub fn pem(&self) -> PathBuf {
        self.dir.join("root.pem")
    }

    /// Signs `csr` as a CA certificate with the extensions given (openssl x509 -req).
    pub fn sign(&self, csr: &Path, out: &Path, extensions: &str) {
        let ext = self.dir.join("ext.cnf");
        std::fs::write(
            &ext,
            format!(
                "[v3]\n{extensions}\nsubjectKeyIdentifier = hash\n\
                 authorityKeyIdentifier = keyid:always\n"
            ),
        )
        .unwrap();
        succeeds(
            std::process::Command::new("openssl")
                .args(["x509", "-req", "-sha256", "-days", "1825", "-set_serial"])
                .arg(format!("0x{:016x}", rand_serial()))
                .arg("-in")
                .arg(csr)
                .arg("-CA")
                .arg(self.pem())
                .arg("-CAkey")
                .arg(self.dir.join("root.key"))
                .arg("-extfile")
                .arg(&ext)
                .args(["-extensions", "v3"])
                .arg("-out")
                .arg(out),
        );
    }

    pub fn crl(&self) -> PathBuf {
        let out = self.dir.join("root.crl.pem");
        succeeds(
            std::process::Command::new("openssl")
                .args(["ca", "-gencrl", "-config"])
                .arg(self.dir.join("ca.cnf"))
                .arg("-out")
                .arg(&out),
        );
        out
    }
}

fn rand_serial() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    (t.as_nanos() as u64) | (1 << 62)
}

/// pkilint over every certificate, CRL and OCSP response in `dir`, through the lint-pki
/// script `MEDID_LINT_PKI` names (`.ci/run` sets it; unset, nothing runs). Any finding fails,
/// but for pkilint's URI check not knowing the spiffe scheme (tests/pki_lint.rs says why).
pub fn assert_pkilint_clean(dir: &Path) {
    let Ok(lint) = std::env::var("MEDID_LINT_PKI") else {
        return;
    };
    let out = std::process::Command::new(&lint)
        .arg(dir)
        .output()
        .unwrap_or_else(|e| panic!("MEDID_LINT_PKI={lint} cannot run: {e}"));
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        report.contains("lint-pki:"),
        "lint-pki did not run: {report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let findings: Vec<&str> = report
        .lines()
        .filter(|l| l.contains("(ERROR)") || l.contains("(FATAL)") || l.contains("(WARNING)"))
        .filter(|l| !(l.contains("pkix.invalid_uri_syntax") && l.contains("\"spiffe://")))
        .collect();
    assert!(findings.is_empty(), "pkilint findings:\n{report}");
}

/// Validates each line with `fhir.resources`; returns how many passed, or the first failure.
/// `None` when no validator is configured (plain `cargo test` on a machine without it).
pub fn fhir_validate(lines: &[String]) -> Option<Result<usize, String>> {
    let Ok(python) = std::env::var("MEDID_FHIR_PYTHON") else {
        eprintln!("MEDID_FHIR_PYTHON not set: FHIR validation skipped (.ci/run sets it)");
        return None;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.ndjson");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    let script = "import sys, json\n\
                  import fhir.resources\n\
                  from fhir.resources.auditevent import AuditEvent\n\
                  assert fhir.resources.__fhir_version__ == '4.0.1', fhir.resources.__fhir_version__\n\
                  n = 0\n\
                  for i, line in enumerate(open(sys.argv[1])):\n\
                  \x20   try:\n\
                  \x20       AuditEvent.parse_obj(json.loads(line))\n\
                  \x20   except Exception as e:\n\
                  \x20       print('line', i + 1, line.strip(), e)\n\
                  \x20       sys.exit(1)\n\
                  \x20   n += 1\n\
                  print('valid', n)\n";
    let out = std::process::Command::new(&python)
        .args(["-c", script])
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("MEDID_FHIR_PYTHON={python}: {e}"));
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    Some(if out.status.success() {
        text.trim()
            .strip_prefix("valid ")
            .and_then(|n| n.parse().ok())
            .ok_or(text)
    } else {
        Err(text)
    })
}
