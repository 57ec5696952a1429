//! `medid gateway` with real parts: medid and the gateway as their own processes (the real
//! binary), a Python `http.server` upstream (HTTP/1.1) and a hyper upstream spoken to over
//! HTTP/2, devices calling with medid-issued certificates through curl and a Rust client.
//! Checked: identity headers set by the gateway and spoofed ones dropped, a foreign CA refused
//! at TLS, a revoked device refused after a CRL refresh (on an open connection too), fail-closed
//! on old revocation data, and `kill -9` of the gateway and of medid during traffic with one
//! event per completed request in medid's ledger. medid's database is SQLite, or PostgreSQL in
//! the PostgreSQL pass (`MEDID_TEST_BACKEND=postgres`).

mod common;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use medid::api::client::{connect, ClientCredentials};
use medid::proto::*;
use tonic::transport::Channel;

/// A certificate and key, PEM.
#[derive(Clone, Debug)]
struct Who {
    cert: String,
    key: String,
    uri: String,
}

impl Who {
    fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let (c, k) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, &self.cert).unwrap();
        std::fs::write(&k, &self.key).unwrap();
        (c, k)
    }
}

struct Medid {
    dir: PathBuf,
    grpc: u16,
    http: u16,
    /// SQLite in `dir`, or a PostgreSQL schema of its own in the PostgreSQL pass.
    database_url: String,
}

impl Medid {
    async fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            grpc: common::free_port(),
            http: common::free_port(),
            database_url: common::database_url_for(dir).await,
        }
    }
}

impl Medid {
    fn spawn(&self) -> Child {
        let config = self.dir.join("medid.toml");
        let text = format!(
            "listen = \"127.0.0.1:{}\"\nhttp_listen = \"127.0.0.1:{}\"\ndatabase_url = \"{}\"\n\
             pki_dir = \"{}\"\ncreate_dev_pki = true\nest_enabled = false\nconsole_enabled = false\n\
             [[gateway_hosts]]\nid = \"edge\"\ndns = [\"localhost\"]\nips = [\"127.0.0.1\"]\n",
            self.grpc,
            self.http,
            self.database_url,
            self.dir.join("pki").display()
        );
        std::fs::write(&config, text).unwrap();
        Command::new(env!("CARGO_BIN_EXE_medid"))
            .args(["serve", "--config"])
            .arg(&config)
            .env("MEDID_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("medid serve starts")
    }

    fn root(&self) -> PathBuf {
        self.dir.join("pki/root-ca.pem")
    }

    async fn channel(&self, who: &Who) -> Channel {
        let creds = ClientCredentials {
            ca_pem: std::fs::read(self.root()).unwrap(),
            cert_pem: who.cert.as_bytes().to_vec(),
            key_pem: who.key.as_bytes().to_vec(),
        };
        for _ in 0..600 {
            if let Ok(ch) = connect(&format!("https://localhost:{}", self.grpc), &creds).await {
                return ch;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("medid did not come up");
    }

    async fn admin(&self) -> Channel {
        for _ in 0..600 {
            if self.dir.join("pki/admin.key").exists() && self.dir.join("pki/admin.pem").exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let admin = Who {
            cert: std::fs::read_to_string(self.dir.join("pki/admin.pem")).unwrap(),
            key: std::fs::read_to_string(self.dir.join("pki/admin.key")).unwrap(),
            uri: String::new(),
        };
        self.channel(&admin).await
    }
}

fn kill9(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn term(child: &mut Child) -> std::process::ExitStatus {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    child.wait().unwrap()
}

/// The people and devices of the tests.
struct Cast {
    trust_domain: String,
    edge: Who,
    ehr: Who,
    station: Who,
    auditor: Who,
    devices: Vec<Who>,
}

async fn issue(admin: &Channel, role: PrincipalRole, id: &str, manufacturer: &str) -> Who {
    let (csr, key) = common::csr_p256();
    let issued = admin_service_client::AdminServiceClient::new(admin.clone())
        .issue_principal_certificate(IssuePrincipalCertificateRequest {
            role: role as i32,
            id: id.into(),
            manufacturer_id: manufacturer.into(),
            csr,
        })
        .await
        .unwrap()
        .into_inner();
    Who {
        cert: issued.certificate_pem,
        key,
        uri: issued.subject_uri,
    }
}

async fn cast(medid: &Medid, devices: usize) -> Cast {
    let admin = medid.admin().await;
    admin_service_client::AdminServiceClient::new(admin.clone())
        .create_manufacturer(CreateManufacturerRequest {
            id: "acme".into(),
            display_name: "Acme".into(),
            allowed_models: vec![],
        })
        .await
        .unwrap();
    let edge = issue(&admin, PrincipalRole::Gateway, "edge", "").await;
    let ehr = issue(&admin, PrincipalRole::Gateway, "ehr", "").await;
    let station = issue(&admin, PrincipalRole::ManufacturerStation, "line-1", "acme").await;
    let auditor = issue(&admin, PrincipalRole::Auditor, "aud", "").await;
    let mut enroll =
        enrollment_service_client::EnrollmentServiceClient::new(medid.channel(&station).await);
    let mut list = Vec::new();
    for i in 0..devices {
        let (csr, key) = common::csr_p256();
        let done = enroll
            .enroll_device(EnrollDeviceRequest {
                csr,
                serial: format!("PUMP-{i}"),
                model: "X".into(),
                udi_di: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        let cert = done.certificate.unwrap();
        list.push(Who {
            cert: cert.certificate_pem,
            key,
            uri: cert.subject_uri,
        });
    }
    let trust_domain = edge
        .uri
        .strip_prefix("spiffe://")
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    Cast {
        trust_domain,
        edge,
        ehr,
        station,
        auditor,
        devices: list,
    }
}

/// The Python HTTP/1.1 upstream: answers every request with JSON (500 under /vitals/fail) and
/// logs its method, path and headers as JSON lines.
const UPSTREAM: &str = r#"
import http.server, json, sys, threading
port, log = int(sys.argv[1]), open(sys.argv[2], "a")
lock = threading.Lock()
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def answer(self):
        n = int(self.headers.get("content-length") or 0)
        self.rfile.read(n)
        headers = {}
        for k in self.headers.keys():
            headers.setdefault(k.lower(), []).extend(self.headers.get_all(k))
        with lock:
            log.write(json.dumps({"method": self.command, "path": self.path, "headers": headers}) + "\n")
            log.flush()
        code = 500 if self.path.startswith("/vitals/fail") else 200
        out = json.dumps({"ok": code == 200, "path": self.path}).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)
    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = answer
    def log_message(self, *a):
        pass
class S(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # a client (the gateway) killed mid-request
S(("127.0.0.1", port), H).serve_forever()
"#;

struct Upstream {
    child: Child,
    log: PathBuf,
}

impl Upstream {
    fn start(dir: &Path, port: u16) -> Self {
        let script = dir.join("upstream.py");
        std::fs::write(&script, UPSTREAM).unwrap();
        let log = dir.join("upstream.jsonl");
        let child = Command::new("python3")
            .arg(&script)
            .arg(port.to_string())
            .arg(&log)
            .stdout(Stdio::null())
            .spawn()
            .expect("python3 runs");
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        Self { child, log }
    }

    fn requests(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        kill9(&mut self.child);
    }
}

/// What the HTTP/2 upstream saw: each request's version and identity headers.
type Seen = Arc<Mutex<Vec<(http::Version, String, Option<String>)>>>;

/// A hyper upstream on `listener`, answering HTTP/1.1 or HTTP/2 (prior knowledge).
fn h2_upstream(listener: tokio::net::TcpListener) -> Seen {
    let seen: Seen = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let log = log.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let log = log.clone();
                        async move {
                            let caller = req
                                .headers()
                                .get("x-medid-caller")
                                .map(|v| v.to_str().unwrap().to_owned());
                            log.lock().unwrap().push((
                                req.version(),
                                req.uri().path().to_owned(),
                                caller,
                            ));
                            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                                Bytes::from_static(b"{\"samples\":[1,2,3]}"),
                            )))
                        }
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(TokioIo::new(tcp), service)
                .await;
            });
        }
    });
    seen
}

struct Gateway {
    config: PathBuf,
    port: u16,
    /// The plain-HTTP listener of /metrics and /readyz.
    metrics: u16,
    out: PathBuf,
}

impl Gateway {
    #[allow(clippy::too_many_arguments)]
    fn configure(
        dir: &Path,
        medid: &Medid,
        cast: &Cast,
        mode: &str,
        upstream: u16,
        h2: u16,
        refresh: u64,
        max_age: u64,
    ) -> Self {
        let (bc, bk) = cast.edge.write(dir, "edge-bootstrap");
        let port = common::free_port();
        let metrics = common::free_port();
        let config = dir.join("gateway.toml");
        let text = format!(
            r#"listen = "127.0.0.1:{port}"
medid = "https://localhost:{grpc}"
medid_ca = "{root}"
state_dir = "{state}"
bootstrap_cert = "{bc}"
bootstrap_key = "{bk}"
mode = "{mode}"
crl_refresh_seconds = {refresh}
max_revocation_age_seconds = {max_age}
patient_header = "x-patient"
batch = 50
metrics_listen = "127.0.0.1:{metrics}"

[[routes]]
prefix = "/vitals/"
upstream = "http://127.0.0.1:{upstream}"
roles = ["device"]
data_category = "vital-signs"

[[routes]]
prefix = "/waveform/"
upstream = "http://127.0.0.1:{h2}"
protocol = "http2"
roles = ["device"]
data_category = "waveform"

[[routes]]
prefix = "/devices/"
upstream = "http://127.0.0.1:{upstream}"
principals = ["spiffe://{td}/gateway/ehr"]
device_path = "/devices/{{manufacturer}}/{{serial}}"
data_category = "vital-signs"
purpose_of_use = "TREAT"

[[routes]]
prefix = "/public/"
upstream = "http://127.0.0.1:{upstream}"
roles = ["device", "gateway", "manufacturer-station"]
access = false
"#,
            grpc = medid.grpc,
            root = medid.root().display(),
            state = dir.join("gw").display(),
            bc = bc.display(),
            bk = bk.display(),
            td = cast.trust_domain,
        );
        std::fs::write(&config, text).unwrap();
        Self {
            config,
            port,
            metrics,
            out: dir.join("gateway.out"),
        }
    }

    fn spawn(&self) -> Child {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.out)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_medid"))
            .args(["gateway", "--config"])
            .arg(&self.config)
            .env("MEDID_LOG", "warn")
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("medid gateway starts");
        let mut child = child;
        for _ in 0..600 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return child;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        kill9(&mut child);
        panic!(
            "the gateway did not come up: {}",
            std::fs::read_to_string(&self.out).unwrap_or_default()
        );
    }
}

impl Gateway {
    /// `GET /readyz`: the status code and the text.
    fn readyz(&self) -> (String, String) {
        let out = curl(&[
            "-w",
            "\n%{http_code}",
            &format!("http://127.0.0.1:{}/readyz", self.metrics),
        ]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or((&text, ""));
        (code.to_owned(), body.to_owned())
    }

    fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let samples = common::scrape_metrics_at(&format!("http://127.0.0.1:{}", self.metrics));
        common::metric(&samples, name, labels)
    }
}

/// A TLS client of the gateway with `who`'s certificate, trusting medid's root.
fn client_config(root: &Path, who: &Who) -> Arc<rustls::ClientConfig> {
    Arc::new(
        medid::api::client::client_tls_config(
            &std::fs::read(root).unwrap(),
            Some((who.cert.as_bytes(), who.key.as_bytes())),
        )
        .unwrap(),
    )
}

/// One HTTP/1.1 connection to the gateway, kept open.
struct Conn {
    send: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Conn {
    async fn open(port: u16, config: Arc<rustls::ClientConfig>) -> Result<Self, String> {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect("localhost".try_into().unwrap(), tcp)
            .await
            .map_err(|e| e.to_string())?;
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        Ok(Self { send })
    }

    async fn call(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<(u16, String), String> {
        let mut req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(Bytes::new())).unwrap();
        // The connection takes the next request once it has finished with the previous one.
        self.send.ready().await.map_err(|e| e.to_string())?;
        let resp = self
            .send
            .send_request(req)
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

async fn call_once(
    port: u16,
    config: Arc<rustls::ClientConfig>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, String), String> {
    Conn::open(port, config)
        .await?
        .call(method, path, headers)
        .await
}

/// Every access event the gateway reported, as medid's canonical JSON, oldest first.
async fn access_events(medid: &Medid, auditor: &Who, gateway_uri: &str) -> Vec<serde_json::Value> {
    let mut client = audit_service_client::AuditServiceClient::new(medid.channel(auditor).await);
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .query_audit(QueryAuditRequest {
                filter: Some(AuditFilter {
                    actor_uri: gateway_uri.into(),
                    action: "data.access".into(),
                    ..Default::default()
                }),
                page_size: 500,
                page_token: token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        out.extend(
            page.events_json
                .iter()
                .map(|j| serde_json::from_str::<serde_json::Value>(j).unwrap()),
        );
        if page.next_page_token.is_empty() {
            return out;
        }
        token = page.next_page_token;
    }
}

/// The whole log exported by the auditor to `path` and verified there with `medid audit
/// verify`; returns its access events, as the bundle holds them.
async fn exported(medid: &Medid, auditor: &Who, path: &Path) -> Vec<serde_json::Value> {
    let mut lines = audit_service_client::AuditServiceClient::new(medid.channel(auditor).await)
        .export_audit(ExportAuditRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut text = String::new();
    while let Some(line) = lines.message().await.unwrap() {
        text.push_str(&line.json);
        text.push('\n');
    }
    std::fs::write(path, &text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_medid"))
        .args(["audit", "verify"])
        .arg(path)
        .arg("--key")
        .arg(medid.dir.join("pki/audit-signing.pub"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the export does not verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|l| l["type"] == "event" && l["event"]["action"] == "data.access")
        .map(|l| l["event"].clone())
        .collect()
}

fn detail<'a>(event: &'a serde_json::Value, key: &str) -> Option<&'a str> {
    event["detail"][key].as_str()
}

fn curl(args: &[&str]) -> std::process::Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_gateway_authenticates_routes_and_audits_every_request() {
    let dir = tempfile::tempdir().unwrap();
    let medid = Medid::new(dir.path()).await;
    let mut medid_child = medid.spawn();
    let cast = cast(&medid, 3).await;
    let up_port = common::free_port();
    let upstream = Upstream::start(dir.path(), up_port);
    let h2_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let h2_port = h2_listener.local_addr().unwrap().port();
    let h2_seen = h2_upstream(h2_listener);
    let gw = Gateway::configure(dir.path(), &medid, &cast, "strict", up_port, h2_port, 1, 4);
    let mut gw_child = gw.spawn();
    let root = medid.root();
    let (d0_cert, d0_key) = cast.devices[0].write(dir.path(), "device-0");
    let base = format!("https://localhost:{}", gw.port);
    let mut expected_events = 0usize;

    // curl, a device's birth certificate, spoofed identity headers: the upstream sees the
    // gateway's headers only.
    let out = curl(&[
        "--cacert",
        root.to_str().unwrap(),
        "--cert",
        d0_cert.to_str().unwrap(),
        "--key",
        d0_key.to_str().unwrap(),
        "-H",
        "x-medid-caller: spiffe://evil.example/admin/root",
        "-H",
        "X-Medid-Role: admin",
        "-H",
        "x-medid-device-serial: OTHER",
        "-H",
        "x-patient: Patient/p-17",
        "-w",
        "\n%{http_code}",
        &format!("{base}/vitals/curl-1"),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        stdout.ends_with("\n200"),
        "curl: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    expected_events += 1;
    let seen = upstream.requests();
    let first = seen.iter().find(|r| r["path"] == "/vitals/curl-1").unwrap();
    let h = &first["headers"];
    assert_eq!(
        h["x-medid-caller"],
        serde_json::json!([cast.devices[0].uri])
    );
    assert_eq!(h["x-medid-role"], serde_json::json!(["device"]));
    assert_eq!(h["x-medid-device-serial"], serde_json::json!(["PUMP-0"]));
    assert_eq!(
        h["x-medid-device-manufacturer"],
        serde_json::json!(["acme"])
    );
    assert_eq!(h["x-patient"], serde_json::json!(["Patient/p-17"]));

    // HTTP/2 from curl to the gateway, HTTP/2 from the gateway to the upstream.
    let out = curl(&[
        "--http2",
        "--cacert",
        root.to_str().unwrap(),
        "--cert",
        d0_cert.to_str().unwrap(),
        "--key",
        d0_key.to_str().unwrap(),
        "-w",
        "\n%{http_version} %{http_code}",
        &format!("{base}/waveform/ecg"),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(stdout.ends_with("\n2 200"), "curl --http2: {stdout}");
    expected_events += 1;
    {
        let seen = h2_seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].0, http::Version::HTTP_2);
        assert_eq!(seen[0].2.as_deref(), Some(cast.devices[0].uri.as_str()));
    }

    // The Rust client: a create, an upstream failure, an operation.
    let d1 = client_config(&root, &cast.devices[1]);
    let mut conn = Conn::open(gw.port, d1.clone()).await.unwrap();
    assert_eq!(conn.call("POST", "/vitals/obs", &[]).await.unwrap().0, 200);
    assert_eq!(
        conn.call("GET", "/vitals/fail/1", &[]).await.unwrap().0,
        500
    );
    assert_eq!(
        conn.call("POST", "/vitals/Device/$reset", &[])
            .await
            .unwrap()
            .0,
        200
    );
    expected_events += 3;

    // An application reading a device's data names it in the path.
    let ehr = client_config(&root, &cast.ehr);
    let (status, _) = call_once(
        gw.port,
        ehr.clone(),
        "GET",
        "/devices/acme/PUMP-2/vitals",
        &[("x-patient", "Patient/p-3")],
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    expected_events += 1;
    // …and may not use the devices' own route, which takes the device from the certificate.
    let (status, body) = call_once(gw.port, ehr.clone(), "GET", "/vitals/x", &[])
        .await
        .unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("not a device"), "{body}");
    // A station may not read device data: refused, and that refusal is an access event.
    let station = client_config(&root, &cast.station);
    let (status, body) = call_once(
        gw.port,
        station.clone(),
        "GET",
        "/devices/acme/PUMP-2/vitals",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(status, 403, "{body}");
    expected_events += 1;
    // A route that is not device data: forwarded, no event.
    assert_eq!(
        call_once(gw.port, station.clone(), "GET", "/public/hello", &[])
            .await
            .unwrap()
            .0,
        200
    );
    assert_eq!(
        call_once(gw.port, station.clone(), "GET", "/nowhere", &[])
            .await
            .unwrap()
            .0,
        404
    );

    // A certificate from another CA, with a device URI of this trust domain: refused at TLS.
    let foreign_ca = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(vec![]).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&foreign_ca).unwrap();
    let ca_issuer = rcgen::Issuer::new(ca_params, &foreign_ca);
    let fake_key = rcgen::KeyPair::generate().unwrap();
    let mut fake = rcgen::CertificateParams::new(vec![]).unwrap();
    fake.subject_alt_names = vec![rcgen::SanType::URI(
        rcgen::string::Ia5String::try_from(cast.devices[0].uri.clone()).unwrap(),
    )];
    fake.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let fake_cert = fake.signed_by(&fake_key, &ca_issuer).unwrap();
    let _ = ca_cert;
    let fake_who = Who {
        cert: fake_cert.pem(),
        key: fake_key.serialize_pem(),
        uri: cast.devices[0].uri.clone(),
    };
    let (fc, fk) = fake_who.write(dir.path(), "foreign");
    let before = upstream.requests().len();
    let out = curl(&[
        "--cacert",
        root.to_str().unwrap(),
        "--cert",
        fc.to_str().unwrap(),
        "--key",
        fk.to_str().unwrap(),
        "-w",
        "%{http_code}",
        &format!("{base}/vitals/foreign"),
    ]);
    assert!(
        !out.status.success(),
        "a foreign certificate got through: {out:?}"
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "000",
        "no HTTP answer at all"
    );
    assert!(call_once(
        gw.port,
        client_config(&root, &fake_who),
        "GET",
        "/vitals/foreign",
        &[]
    )
    .await
    .is_err());
    assert_eq!(
        upstream.requests().len(),
        before,
        "nothing reached the upstream"
    );

    // Revocation: device 1 keeps its connection open; after the revocation the next CRL
    // refresh makes the gateway refuse it on that connection and on new ones.
    let serial = {
        let der =
            medid::pem::parse_certificates(cast.devices[1].cert.as_bytes()).unwrap()[0].to_vec();
        medid::domain::hex(
            x509_parser::parse_x509_certificate(&der)
                .unwrap()
                .1
                .raw_serial(),
        )
    };
    lifecycle_service_client::LifecycleServiceClient::new(medid.admin().await)
        .revoke(common::revoke_for_key_compromise(&serial))
        .await
        .unwrap();
    let mut refused = None;
    for _ in 0..200 {
        let (status, body) = conn.call("GET", "/vitals/after-revoke", &[]).await.unwrap();
        expected_events += 1;
        if status == 403 {
            refused = Some(body);
            break;
        }
        assert_eq!(status, 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let body = refused.expect("the revoked device was never refused");
    assert!(body.contains("revoked"), "{body}");
    // The operator's view: refusals by reason, upstream timings, the spool.
    for reason in ["revoked", "not_allowed", "no_route", "no_device"] {
        let n = gw
            .metric("medid_gateway_refusals_total", &[("reason", reason)])
            .unwrap_or(0.0);
        assert!(n >= 1.0, "no {reason} refusal counted");
    }
    assert!(
        gw.metric("medid_gateway_upstream_seconds_count", &[])
            .unwrap()
            >= 6.0
    );
    assert_eq!(gw.metric("medid_gateway_spool_healthy", &[]), Some(1.0));
    assert_eq!(gw.readyz().0, "200");
    let (status, _) = call_once(gw.port, d1.clone(), "GET", "/vitals/new-conn", &[])
        .await
        .unwrap();
    assert_eq!(status, 403);
    expected_events += 1;

    // Fail closed: with medid gone, the revocation data ages past 4 s and every request is
    // refused; with medid back, requests pass again.
    kill9(&mut medid_child);
    let d0 = client_config(&root, &cast.devices[0]);
    let mut closed = None;
    for _ in 0..200 {
        let (status, body) = call_once(gw.port, d0.clone(), "GET", "/vitals/while-away", &[])
            .await
            .unwrap();
        expected_events += 1;
        if status == 503 {
            closed = Some(body);
            break;
        }
        assert_eq!(status, 200);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let body = closed.expect("the gateway never failed closed");
    assert!(body.contains("revocation data"), "{body}");
    let (code, text) = gw.readyz();
    assert_eq!(code, "503", "{text}");
    assert!(text.contains("revocation data"), "{text}");
    assert!(
        gw.metric("medid_gateway_revocation_data_age_seconds", &[])
            .unwrap()
            >= 4.0
    );
    medid_child = medid.spawn();
    let _ = medid.admin().await;
    let mut open_again = false;
    for _ in 0..200 {
        let (status, _) = call_once(gw.port, d0.clone(), "GET", "/vitals/back", &[])
            .await
            .unwrap();
        expected_events += 1;
        if status == 200 {
            open_again = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        open_again,
        "the gateway stayed closed after medid came back"
    );

    // Every request on a device-data route is one event in medid's ledger.
    let mut events = Vec::new();
    for _ in 0..300 {
        events = access_events(&medid, &cast.auditor, &cast.edge.uri).await;
        if events.len() >= expected_events {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(events.len(), expected_events, "{events:#?}");
    let ids: HashSet<&str> = events
        .iter()
        .map(|e| detail(e, "event_id").unwrap())
        .collect();
    assert_eq!(ids.len(), events.len(), "event ids are unique");
    let by_resource = |r: &str| {
        events
            .iter()
            .find(|e| detail(e, "resource") == Some(r))
            .unwrap_or_else(|| panic!("no event for {r}"))
    };
    let e = by_resource("/vitals/curl-1");
    assert_eq!(detail(e, "user_id"), Some(cast.devices[0].uri.as_str()));
    assert_eq!(detail(e, "user_role"), Some("device"));
    assert_eq!(detail(e, "access_action"), Some("read"));
    assert_eq!(detail(e, "patient_ref"), Some("Patient/p-17"));
    assert_eq!(detail(e, "device_uri"), Some(cast.devices[0].uri.as_str()));
    assert_eq!(e["detail"]["access_outcome"], 0);
    assert!(detail(e, "completed_at").is_some());
    assert_eq!(
        detail(by_resource("/waveform/ecg"), "data_category"),
        Some("waveform")
    );
    assert_eq!(
        detail(by_resource("/vitals/obs"), "access_action"),
        Some("create")
    );
    assert_eq!(by_resource("/vitals/fail/1")["detail"]["access_outcome"], 8);
    assert_eq!(
        detail(by_resource("/vitals/Device/$reset"), "access_action"),
        Some("execute")
    );
    let app = by_resource("/devices/acme/PUMP-2/vitals");
    let refusals: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| detail(e, "resource") == Some("/devices/acme/PUMP-2/vitals"))
        .collect();
    assert_eq!(refusals.len(), 2);
    assert_eq!(detail(app, "user_id"), Some(cast.ehr.uri.as_str()));
    assert_eq!(
        detail(app, "device_uri"),
        Some(cast.devices[2].uri.as_str())
    );
    assert!(refusals
        .iter()
        .any(|e| detail(e, "user_id") == Some(cast.station.uri.as_str())
            && e["detail"]["access_outcome"] == 4));
    assert_eq!(
        by_resource("/vitals/new-conn")["detail"]["access_outcome"],
        4
    );
    assert!(events
        .iter()
        .any(|e| detail(e, "resource") == Some("/vitals/while-away")
            && e["detail"]["access_outcome"] == 12));

    for _ in 0..100 {
        if gw.metric("medid_gateway_spool_waiting_events", &[]) == Some(0.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        gw.metric("medid_gateway_spool_waiting_events", &[]),
        Some(0.0)
    );
    assert_eq!(
        gw.metric("medid_gateway_events_sent_total", &[]),
        Some(expected_events as f64)
    );
    // A clean stop leaves an empty spool.
    assert!(term(&mut gw_child).success());
    let log = std::fs::read_to_string(&gw.out).unwrap();
    assert!(log.contains("0 waiting in the spool"), "{log}");
    term(&mut medid_child);
}

/// One completed request per number: the numbers whose answer the client got.
type Completed = Arc<Mutex<HashSet<u64>>>;

/// Devices calling `/vitals/load/N` with fresh N until `stop`, over new and kept connections.
fn load(
    port: u16,
    configs: Vec<Arc<rustls::ClientConfig>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> (Completed, Vec<tokio::task::JoinHandle<()>>) {
    let completed: Completed = Arc::default();
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for config in configs {
        let (completed, next, stop) = (completed.clone(), next.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn: Option<Conn> = None;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if conn.is_none() {
                    match Conn::open(port, config.clone()).await {
                        Ok(c) => conn = Some(c),
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    }
                }
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let c = conn.as_mut().expect("opened above");
                match c.call("GET", &format!("/vitals/load/{n}"), &[]).await {
                    Ok((200, _)) => {
                        completed.lock().unwrap().insert(n);
                    }
                    Ok(_) | Err(_) => conn = None,
                }
            }
        }));
    }
    (completed, tasks)
}

/// The N of every `/vitals/load/N` event, with how often each appears.
fn load_events(events: &[serde_json::Value]) -> HashMap<u64, usize> {
    let mut count = HashMap::new();
    for e in events {
        if let Some(n) = detail(e, "resource").and_then(|r| r.strip_prefix("/vitals/load/")) {
            *count.entry(n.parse::<u64>().unwrap()).or_insert(0) += 1;
        }
    }
    count
}

fn spool_rows(dir: &Path, table: &str) -> i64 {
    let out = Command::new("python3")
        .args(["-c", "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('SELECT COUNT(*) FROM ' + sys.argv[2]).fetchone()[0])"])
        .arg(dir.join("gw/spool.db"))
        .arg(table)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{out:?}"))
}

async fn kill_during_traffic(
    mode: &str,
) -> (
    HashSet<u64>,
    HashMap<u64, usize>,
    PathBuf,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().unwrap();
    let medid = Medid::new(dir.path()).await;
    let mut medid_child = medid.spawn();
    let cast = cast(&medid, 4).await;
    let up_port = common::free_port();
    let _upstream = Upstream::start(dir.path(), up_port);
    let gw = Gateway::configure(dir.path(), &medid, &cast, mode, up_port, 1, 1, 3600);
    let mut gw_child = gw.spawn();
    let root = medid.root();
    let configs: Vec<_> = cast
        .devices
        .iter()
        .map(|d| client_config(&root, d))
        .collect();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (completed, tasks) = load(gw.port, configs, stop.clone());
    let progress = |c: &Completed| c.lock().unwrap().len();
    // Traffic, then the gateway killed and restarted, then medid killed and restarted, then
    // both at once; each after at least 150 more completed requests.
    let mut mark = 0;
    for step in 0..3 {
        for _ in 0..600 {
            if progress(&completed) >= mark + 150 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if step != 1 {
            kill9(&mut gw_child);
        }
        if step != 0 {
            kill9(&mut medid_child);
            medid_child = medid.spawn();
        }
        if step != 1 {
            gw_child = gw.spawn();
        }
        mark = progress(&completed);
    }
    for _ in 0..600 {
        if progress(&completed) >= mark + 150 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let completed = completed.lock().unwrap().clone();
    assert!(
        completed.len() >= 600,
        "only {} requests completed",
        completed.len()
    );
    // Wait until the spool is drained into medid.
    let mut events = HashMap::new();
    for _ in 0..600 {
        events = load_events(&access_events(&medid, &cast.auditor, &cast.edge.uri).await);
        if completed.iter().all(|n| events.contains_key(n)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A clean stop, then the spool is read by another SQLite (the gateway holds it locked).
    assert!(term(&mut gw_child).success());
    // The count that matters: the auditor's export of the whole log, verified offline.
    let bundle = exported(&medid, &cast.auditor, &dir.path().join("bundle.jsonl")).await;
    let after_stop = load_events(&bundle);
    assert_eq!(
        after_stop, events,
        "the export holds what the queries found"
    );
    assert_eq!(spool_rows(dir.path(), "events"), 0, "the spool is drained");
    assert_eq!(
        spool_rows(dir.path(), "rejected"),
        0,
        "medid refused no event"
    );
    term(&mut medid_child);
    let unanswered = events.keys().filter(|n| !completed.contains(n)).count();
    eprintln!(
        "{mode}: {} requests completed, {} events, {unanswered} of them for requests cut before their answer",
        completed.len(),
        events.len()
    );
    (completed, events, gw.out.clone(), dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn strict_mode_loses_and_repeats_no_event_when_the_gateway_and_medid_are_killed() {
    let (completed, events, _, _dir) = kill_during_traffic("strict").await;
    let missing: Vec<&u64> = completed
        .iter()
        .filter(|n| !events.contains_key(n))
        .collect();
    assert!(
        missing.is_empty(),
        "completed requests without their event: {missing:?}"
    );
    let twice: Vec<(&u64, &usize)> = events.iter().filter(|(_, c)| **c != 1).collect();
    assert!(
        twice.is_empty(),
        "events recorded more than once: {twice:?}"
    );
    // Events of requests the client never saw answered (cut by the kill after the event was
    // on disk) may exist, once each: the access reached the upstream.
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn buffered_mode_repeats_no_event_and_loses_only_what_was_not_yet_written() {
    let (completed, events, _, _dir) = kill_during_traffic("buffered").await;
    let twice: Vec<(&u64, &usize)> = events.iter().filter(|(_, c)| **c != 1).collect();
    assert!(
        twice.is_empty(),
        "events recorded more than once: {twice:?}"
    );
    // Buffered mode may lose the events still queued in memory at each kill -9 of the
    // gateway (two kills here), never more than a spool group each.
    let missing = completed.iter().filter(|n| !events.contains_key(n)).count();
    assert!(missing <= 2 * 1024, "{missing} events lost");
}

#[test]
fn a_bad_gateway_configuration_is_refused_with_the_key_it_concerns() {
    let dir = tempfile::tempdir().unwrap();
    let base = format!(
        "listen = \"127.0.0.1:0\"\nmedid = \"https://localhost:7443\"\nmedid_ca = \"ca.pem\"\n\
         state_dir = \"{}\"\nbootstrap_cert = \"c.pem\"\nbootstrap_key = \"k.pem\"\n",
        dir.path().join("gw").display()
    );
    let route = "[[routes]]\nprefix = \"/v/\"\nupstream = \"http://127.0.0.1:9\"\nroles = [\"device\"]\ndata_category = \"vital-signs\"\n";
    for (extra, routes, expect) in [
        ("mode = \"eventual\"\n", route, "mode"),
        ("", "", "at least one [[routes]]"),
        (
            "",
            &route.replace("http://127.0.0.1:9", "https://up.example"),
            "must be http://host:port",
        ),
        (
            "",
            &route.replace("\"device\"", "\"nurse\""),
            "role \"nurse\"",
        ),
        (
            "",
            &route.replace("vital-signs", "gossip"),
            "data_category \"gossip\"",
        ),
        ("", &format!("{route}{route}"), "listed twice"),
        (
            "patient_header = \"x-medid-patient\"\n",
            route,
            "identity headers",
        ),
        (
            "max_revocation_age_seconds = 10\ncrl_refresh_seconds = 60\n",
            route,
            "max_revocation_age_seconds",
        ),
        (
            "",
            &route.replace(
                "roles = [\"device\"]\n",
                "device_path = \"/v/{serial}\"\nroles = [\"gateway\"]\n",
            ),
            "{manufacturer}",
        ),
        (
            "",
            &route.replace("roles = [\"device\"]\n", ""),
            "allows nobody",
        ),
        ("colour = \"blue\"\n", route, "unknown field"),
    ] {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, format!("{base}{extra}{routes}")).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_medid"))
            .args(["gateway", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra}{routes} was accepted");
        assert!(stderr.contains(expect), "{expect:?} not in {stderr}");
        assert!(
            !out.stderr.is_empty() && !stderr.contains("panicked"),
            "{stderr}"
        );
        assert!(
            !dir.path().join("gw").exists(),
            "a refused configuration created nothing"
        );
    }
}
