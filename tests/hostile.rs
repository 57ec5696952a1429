//! Hostile clients without credentials, against the real binary (`medid serve`) started under a
//! 1,024-descriptor limit (`prlimit`): idle sockets of every kind on every listener must not
//! starve real clients, and the server closes them by its documented deadlines.
//! Every connection here goes to 127.0.0.1; attackers come from 127.0.0.2–127.0.0.9.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use medid::api::client::{connect, ClientCredentials};
use medid::proto::{
    admin_service_client::AdminServiceClient, enrollment_service_client::EnrollmentServiceClient,
    CreateManufacturerRequest, EnrollDeviceRequest, IssuePrincipalCertificateRequest,
    PrincipalRole,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use tonic::transport::Channel;

/// The greeting (TLS handshake, HTTP/2 preface, first request head) deadline configured here.
const HEADER_TIMEOUT: u64 = 2;
/// The idle deadline configured here.
const IDLE_TIMEOUT: u64 = 3;
/// Idle sockets opened per kind and listener.
const SOCKETS: usize = 2000;
/// A real client's call must complete within this (the liveness bound the test is about).
const LIVE: Duration = Duration::from_secs(2);

struct Node {
    dir: PathBuf,
    grpc: u16,
    http: u16,
    est: u16,
    child: Child,
}

impl Node {
    fn start(dir: &Path) -> Self {
        let port = common::free_port;
        let (grpc, http, est) = (port(), port(), port());
        let config = dir.join("medid.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:{grpc}\"\nhttp_listen = \"127.0.0.1:{http}\"\n\
                 est_listen = \"127.0.0.1:{est}\"\nconsole_enabled = false\ndatabase_url = \"sqlite://{}\"\n\
                 pki_dir = \"{}\"\ncreate_dev_pki = true\n\
                 connection_header_timeout_seconds = {HEADER_TIMEOUT}\n\
                 connection_idle_timeout_seconds = {IDLE_TIMEOUT}\n",
                dir.join("medid.db").display(),
                dir.join("pki").display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("medid.log")).unwrap();
        let child = Command::new("prlimit")
            .arg("--nofile=1024:1024")
            .arg(env!("CARGO_BIN_EXE_medid"))
            .args(["serve", "--config"])
            .arg(&config)
            .env("MEDID_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prlimit and medid serve start");
        Self {
            dir: dir.to_path_buf(),
            grpc,
            http,
            est,
            child,
        }
    }

    fn pki(&self, name: &str) -> PathBuf {
        self.dir.join("pki").join(name)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("medid.log")).unwrap_or_default()
    }

    async fn channel(&self, cert: &str, key: &str) -> Channel {
        let creds = ClientCredentials {
            ca_pem: std::fs::read(self.pki("root-ca.pem")).unwrap(),
            cert_pem: cert.as_bytes().to_vec(),
            key_pem: key.as_bytes().to_vec(),
        };
        connect(&format!("https://localhost:{}", self.grpc), &creds)
            .await
            .expect("mTLS connection")
    }

    async fn admin(&self) -> Channel {
        // The listeners are bound before the PKI is written (a port in use fails first), so
        // the port answers before the files are all there: wait for both of the admin's.
        for _ in 0..600 {
            if self.pki("admin.key").exists()
                && self.pki("admin.pem").exists()
                && std::net::TcpStream::connect(("127.0.0.1", self.grpc)).is_ok()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let cert = std::fs::read_to_string(self.pki("admin.pem")).unwrap();
        let key = std::fs::read_to_string(self.pki("admin.key")).unwrap();
        self.channel(&cert, &key).await
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What an idle attacker does after connecting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A TCP connection, then nothing.
    Tcp,
    /// A TLS handshake without a client certificate, then nothing.
    Tls,
    /// TLS, the HTTP/2 preface, then nothing.
    TlsH2Preface,
    /// (TLS where the listener has it,) then part of an HTTP/1.1 request head.
    PartialHeader,
}

/// Where an attacker connects, and the TLS client it speaks there (none: plain TCP).
type Target = (SocketAddr, Option<Arc<rustls::ClientConfig>>);

trait Socket: AsyncRead + Unpin + Send {}
impl<T: AsyncRead + Unpin + Send> Socket for T {}

fn tls_config(root_pem: &[u8], alpn: &[u8]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in medid::pem::parse_certificates(root_pem).unwrap() {
        roots.add(cert).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(medid::api::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(config)
}

/// Opens one idle attacker socket from `from`; None if the server refused it at once.
async fn attack(
    kind: Kind,
    from: IpAddr,
    to: SocketAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Option<Box<dyn Socket>> {
    let socket = TcpSocket::new_v4().ok()?;
    socket.bind(SocketAddr::new(from, 0)).ok()?;
    let mut tcp = socket.connect(to).await.ok()?;
    let head = b"GET /healthz HTTP/1.1\r\nHost: medid\r\nX-Slow: ";
    match (kind, tls) {
        (Kind::Tcp, _) => Some(Box::new(tcp)),
        (Kind::PartialHeader, None) => {
            tcp.write_all(head).await.ok()?;
            Some(Box::new(tcp))
        }
        (_, None) => None,
        (kind, Some(config)) => {
            let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
            let connect = tokio_rustls::TlsConnector::from(config).connect(name, tcp);
            let mut stream = tokio::time::timeout(Duration::from_secs(5), connect)
                .await
                .ok()?
                .ok()?;
            match kind {
                Kind::TlsH2Preface => stream
                    .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
                    .await
                    .ok()?,
                Kind::PartialHeader => stream.write_all(head).await.ok()?,
                _ => {}
            }
            Some(Box::new(stream))
        }
    }
}

/// Opens `SOCKETS` attacker sockets of `kind` against `to`, 100 at a time, from eight
/// addresses; returns the ones the server did not refuse at once.
async fn flood(
    kind: Kind,
    to: SocketAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Vec<Box<dyn Socket>> {
    let mut open = Vec::new();
    for batch in 0..SOCKETS / 100 {
        let attempts = (0..100).map(|i| {
            let from = IpAddr::from([127, 0, 0, 2 + ((batch * 100 + i) % 8) as u8]);
            attack(kind, from, to, tls.clone())
        });
        open.extend(join_all(attempts).await.into_iter().flatten());
    }
    open
}

/// How many of `sockets` the server has not closed: a read that would block means open.
async fn still_open(sockets: Vec<Box<dyn Socket>>) -> usize {
    let checks = sockets.into_iter().map(|mut s| async move {
        let mut buf = [0u8; 512];
        loop {
            match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
                Err(_) => return true, // nothing to read, not closed
                Ok(Ok(0)) | Ok(Err(_)) => return false,
                Ok(Ok(_)) => continue, // a GOAWAY, an alert or an error page: read on
            }
        }
    });
    join_all(checks)
        .await
        .into_iter()
        .filter(|open| *open)
        .count()
}

/// A real enrollment, EST `cacerts`, an OCSP request and `/healthz`, each within [`LIVE`].
async fn real_clients_are_served(
    node: &Node,
    enroll: &mut EnrollmentServiceClient<Channel>,
    n: usize,
) {
    let station = tokio::time::timeout(
        LIVE,
        enroll.enroll_device(EnrollDeviceRequest {
            csr: common::csr_p256().0,
            serial: format!("HOSTILE-{n}"),
            model: "X".into(),
            udi_di: String::new(),
        }),
    );
    let reply = station.await.expect("enrollment within 2 s");
    reply.expect("enrollment succeeds");
    let curl = |args: &[&str]| {
        let out = Command::new("curl")
            .args([
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "2",
            ])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let root = node.pki("root-ca.pem");
    let est = format!("https://localhost:{}/.well-known/est/cacerts", node.est);
    assert_eq!(
        curl(&["--cacert", root.to_str().unwrap(), &est]),
        "200",
        "EST cacerts"
    );
    let health = format!("http://127.0.0.1:{}/healthz", node.http);
    assert_eq!(curl(&[&health]), "200", "/healthz");
    let ocsp = Command::new("openssl")
        .args(["ocsp", "-no_nonce", "-timeout", "2", "-issuer"])
        .arg(node.pki("operational-ca.pem"))
        .args(["-serial", "0x1234"])
        .args([
            "-url",
            &format!("http://127.0.0.1:{}/ocsp/operational", node.http),
        ])
        .arg("-CAfile")
        .arg(&root)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&ocsp.stdout);
    assert!(
        text.contains("0x1234: unknown"),
        "OCSP answered: {text}{}",
        String::from_utf8_lossy(&ocsp.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_of_every_kind_on_every_listener_do_not_starve_real_clients() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let admin = node.admin().await;
    let mut admin = AdminServiceClient::new(admin);
    admin
        .create_manufacturer(CreateManufacturerRequest {
            id: "acme".into(),
            display_name: "Acme Medical".into(),
            allowed_models: vec![],
        })
        .await
        .unwrap();
    let (csr, key) = common::csr_p256();
    let station = admin
        .issue_principal_certificate(IssuePrincipalCertificateRequest {
            role: PrincipalRole::ManufacturerStation as i32,
            id: "line-1".into(),
            manufacturer_id: "acme".into(),
            csr,
        })
        .await
        .unwrap()
        .into_inner();
    let mut enroll =
        EnrollmentServiceClient::new(node.channel(&station.certificate_pem, &key).await);

    let root = std::fs::read(node.pki("root-ca.pem")).unwrap();
    let h2 = tls_config(&root, b"h2");
    let h1 = tls_config(&root, b"http/1.1");
    let addr = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let plans: [(Kind, Vec<Target>); 4] = [
        (
            Kind::Tcp,
            vec![
                (addr(node.grpc), None),
                (addr(node.est), None),
                (addr(node.http), None),
            ],
        ),
        (
            Kind::Tls,
            vec![
                (addr(node.grpc), Some(h2.clone())),
                (addr(node.est), Some(h1.clone())),
            ],
        ),
        (
            Kind::TlsH2Preface,
            vec![(addr(node.grpc), Some(h2.clone()))],
        ),
        (
            Kind::PartialHeader,
            vec![(addr(node.est), Some(h1.clone())), (addr(node.http), None)],
        ),
    ];
    for (n, (kind, targets)) in plans.into_iter().enumerate() {
        let mut sockets = Vec::new();
        for (to, tls) in targets {
            sockets.extend(flood(kind, to, tls).await);
        }
        let held = sockets.len();
        real_clients_are_served(&node, &mut enroll, n).await;
        // Every idle socket is closed by the greeting or the idle deadline, whichever applies,
        // counted from the last one opened; one more second covers the deadline checks.
        tokio::time::sleep(Duration::from_secs(HEADER_TIMEOUT.max(IDLE_TIMEOUT) + 1)).await;
        let open = still_open(sockets).await;
        assert_eq!(
            open, 0,
            "{kind:?}: {open} of {held} idle sockets still open"
        );
    }
    let log = node.log();
    assert!(
        !log.contains("Too many open files"),
        "the server ran out of descriptors:\n{log}"
    );
    assert!(
        log.contains("connection refused: over the connection cap"),
        "{log}"
    );
}

/// One unauthenticated call from `client`: half list devices without a certificate, half try
/// an enrollment token nobody created.
async fn anonymous_call(channel: Channel, n: usize) -> tonic::Code {
    use medid::proto::{
        lifecycle_service_client::LifecycleServiceClient,
        registry_service_client::RegistryServiceClient, EnrollWithTokenRequest, ListDevicesRequest,
    };
    let result = if n % 2 == 0 {
        RegistryServiceClient::new(channel)
            .list_devices(ListDevicesRequest::default())
            .await
            .map(|_| ())
    } else {
        LifecycleServiceClient::new(channel)
            .enroll_with_token(EnrollWithTokenRequest {
                token: format!("guess-{n}"),
                csr: vec![],
                serial: "X".into(),
                model: "X".into(),
                udi_di: String::new(),
            })
            .await
            .map(|_| ())
    };
    result
        .expect_err("an unauthenticated call is refused")
        .code()
}

/// Makes `calls` unauthenticated calls spread over `sources` addresses (127.0.0.2 on), 64 in
/// flight; returns how many came back with each status.
async fn flood_calls(server: &common::TestServer, sources: u8, calls: usize) -> Vec<tonic::Code> {
    let root = server.root_pem().into_bytes();
    let mut channels = Vec::new();
    for s in 0..sources {
        let connector = medid::api::client::Connector::new(&server.url, &root, None)
            .unwrap()
            .with_local_address(IpAddr::from([127, 0, 0, 2 + s]));
        // Several connections per source: 64 calls in flight in all.
        for _ in 0..(8 / sources as usize).max(1) {
            channels.push(
                connector
                    .connect()
                    .await
                    .expect("TLS without a certificate"),
            );
        }
    }
    let mut codes = Vec::with_capacity(calls);
    for chunk in (0..calls).collect::<Vec<_>>().chunks(64) {
        let batch = chunk
            .iter()
            .map(|&n| anonymous_call(channels[n % channels.len()].clone(), n));
        codes.extend(join_all(batch).await);
    }
    codes
}

/// The events `auth.refused.aggregate` added after sequence number `after`: (count, source).
async fn aggregates_after(server: &common::TestServer, after: i64) -> Vec<(u64, String, String)> {
    server
        .audit_events()
        .await
        .into_iter()
        .filter(|e| e.seq > after)
        .map(|e| {
            assert_eq!(
                e.event.action,
                medid::audit::Action::AuthRefusedAggregate,
                "{:?}",
                e.event
            );
            (
                e.event.detail["count"].as_u64().unwrap(),
                e.event.target.clone(),
                e.event.detail["reason_code"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_thousand_anonymous_calls_add_a_bounded_number_of_events_that_count_them_all() {
    const INTERVAL: u64 = 1;
    const CALLS: usize = 50_000;
    let dir = tempfile::tempdir().unwrap();
    let server = common::TestServer::start_with(dir, common::system_now(), |c| {
        c.anonymous_refusal_burst = 20;
        c.anonymous_refusal_per_second = 5;
        c.anonymous_refusal_interval_seconds = INTERVAL;
    })
    .await;
    for sources in [1u8, 8] {
        server.ca.flush_anonymous_refusals().await.unwrap();
        let after = server.audit_events().await.last().map_or(0, |e| e.seq);
        let started = std::time::Instant::now();
        let codes = flood_calls(&server, sources, CALLS).await;
        server.ca.flush_anonymous_refusals().await.unwrap();
        let elapsed = started.elapsed().as_secs();
        let limited = codes
            .iter()
            .filter(|c| **c == tonic::Code::ResourceExhausted)
            .count();
        assert!(
            limited > CALLS / 2,
            "most calls were rate-limited: {limited}"
        );
        let events = aggregates_after(&server, after).await;
        // docs/SECURITY.md: per interval at most one event per (source, reason), here three
        // reasons (no certificate, bad token, rate-limited) from `sources` addresses; one
        // more interval for the last partial one and the final write.
        let intervals = elapsed / INTERVAL + 2;
        let bound = intervals as usize * sources as usize * 3;
        assert!(
            events.len() <= bound,
            "{} events from {sources} sources in {elapsed} s (bound {bound})",
            events.len()
        );
        eprintln!(
            "{sources} source(s): {CALLS} calls in {elapsed} s, {limited} rate-limited, {} events (bound {bound})",
            events.len()
        );
        let counted: u64 = events.iter().map(|e| e.0).sum();
        assert_eq!(counted, CALLS as u64, "every refusal is counted once");
        let mut seen: Vec<&str> = events.iter().map(|e| e.1.as_str()).collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), sources as usize, "{seen:?}");
        let reasons: u64 = events
            .iter()
            .filter(|e| e.2 == "rate-limited")
            .map(|e| e.0)
            .sum();
        assert_eq!(reasons, limited as u64);
    }
    server.stop().await;
}

/// HTTP/2 abuse on one connection (Rapid Reset, a CONTINUATION flood, a SETTINGS flood) from
/// Python's h2 while a real client keeps enrolling: every enrollment succeeds and the abusive
/// connection is ended (GOAWAY or closed). Needs `MEDID_H2_PYTHON` (a Python with h2, which
/// `.ci/run` provides); without it the test says so and checks nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_abuse_ends_the_abusive_connection_while_others_are_served() {
    let Ok(python) = std::env::var("MEDID_H2_PYTHON") else {
        eprintln!("MEDID_H2_PYTHON not set: HTTP/2 abuse not checked (.ci/run sets it)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = common::TestServer::start_with(dir, common::system_now(), |c| {
        c.connection_header_timeout_seconds = HEADER_TIMEOUT;
        c.connection_idle_timeout_seconds = IDLE_TIMEOUT;
    })
    .await;
    server.add_manufacturer("acme", &[]).await;
    let station = server.station("acme", "line-1").await;
    let mut enroll = server.enrollment_client(&station).await;
    let port = server.url.rsplit(':').next().unwrap().to_owned();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/h2_abuse.py");
    for mode in ["rapid-reset", "continuation", "settings"] {
        let abuse = tokio::process::Command::new(&python)
            .arg(script)
            .arg(&port)
            .arg(server.pki("root-ca.pem"))
            .arg(mode)
            .output();
        let abuse = tokio::spawn(abuse);
        for n in 0..20 {
            enroll
                .enroll_device(EnrollDeviceRequest {
                    csr: common::csr_p256().0,
                    serial: format!("H2-{mode}-{n}"),
                    model: "X".into(),
                    udi_di: String::new(),
                })
                .await
                .unwrap_or_else(|e| panic!("{mode}: enrollment {n} while under abuse: {e}"));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let out = abuse.await.unwrap().expect("the h2 client runs");
        let report = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{mode}: {report}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: serde_json::Value = serde_json::from_str(report.trim()).unwrap();
        assert_ne!(
            report["result"], "open",
            "{mode}: the abusive connection was left open: {report}"
        );
        eprintln!("{mode}: {report}");
    }
    server.stop().await;
}
