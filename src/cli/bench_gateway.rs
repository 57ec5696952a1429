//! `medid bench --scenario gateway`: requests through `medid gateway` (strict and buffered
//! modes) against the same requests straight to the upstream, in the same run. The upstream
//! is a small hyper server on a thread of its own answering a fixed JSON body; the devices
//! are enrolled here and call over persistent mutual-TLS connections.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::join_all;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;

use crate::error::Error;
use crate::proto::{self, enrollment_service_client, EnrollDeviceRequest};

/// What one mode measured: requests, wall time, latencies, the gateway's CPU seconds and
/// resident memory (none for the direct run).
pub struct Measured {
    pub name: &'static str,
    pub ops: usize,
    pub seconds: f64,
    pub latencies: Vec<Duration>,
    pub cpu: f64,
    pub rss_mib: f64,
}

/// The gateway principals the bench server's configuration names (`[[gateway_hosts]]`).
pub const GATEWAY_IDS: [&str; 2] = ["bench-edge-strict", "bench-edge-buffered"];

/// The bench server's `[[gateway_hosts]]`.
pub fn gateway_hosts() -> String {
    GATEWAY_IDS
        .iter()
        .map(|id| format!("[[gateway_hosts]]\nid = \"{id}\"\ndns = [\"localhost\"]\n"))
        .collect()
}

/// Starts the upstream on a thread of its own; returns its port.
fn upstream() -> Result<u16, Error> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| Error::Unavailable(format!("the bench upstream: {e}")))?;
    let port = listener
        .local_addr()
        .map_err(|e| Error::internal("the bench upstream", e))?
        .port();
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::internal("the bench upstream", e))?;
    std::thread::Builder::new()
        .name("bench-upstream".into())
        .spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build()
            else {
                return;
            };
            runtime.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        return;
                    };
                    let _ = tcp.set_nodelay(true);
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(|_req| async {
                            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                                Bytes::from_static(
                                    b"{\"resourceType\":\"Observation\",\"valueQuantity\":{\"value\":72}}",
                                ),
                            )))
                        });
                        let _ = hyper_util::server::conn::auto::Builder::new(
                            hyper_util::rt::TokioExecutor::new(),
                        )
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                    });
                }
            });
        })
        .map_err(|e| Error::internal("the bench upstream's thread", e))?;
    Ok(port)
}

/// A running `medid gateway`.
struct Gateway {
    child: Child,
    port: u16,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write(path: &Path, text: &str) -> Result<(), Error> {
    std::fs::write(path, text).map_err(|e| Error::Internal(format!("{}: {e}", path.display())))
}

async fn start_gateway(
    dir: &Path,
    medid_url: &str,
    root: &Path,
    bootstrap: &(String, String),
    mode: &str,
    upstream: u16,
) -> Result<Gateway, Error> {
    let (cert, key) = (dir.join("bootstrap.pem"), dir.join("bootstrap.key"));
    write(&cert, &bootstrap.0)?;
    write(&key, &bootstrap.1)?;
    let port = super::bench::free_port()?;
    let config = dir.join("gateway.toml");
    write(
        &config,
        &format!(
            "listen = \"127.0.0.1:{port}\"\nmedid = \"{medid_url}\"\nmedid_ca = {root:?}\n\
             state_dir = {state:?}\nbootstrap_cert = {cert:?}\nbootstrap_key = {key:?}\n\
             mode = \"{mode}\"\n\n[[routes]]\nprefix = \"/fhir/\"\nupstream = \"http://127.0.0.1:{upstream}\"\n\
             roles = [\"device\"]\ndata_category = \"vital-signs\"\n",
            state = dir.join("state"),
        ),
    )?;
    let exe = std::env::current_exe().map_err(|e| Error::internal("finding medid", e))?;
    let child = Command::new(exe)
        .args(["gateway", "--config"])
        .arg(&config)
        .env(
            "MEDID_LOG",
            std::env::var("MEDID_BENCH_SERVER_LOG").unwrap_or_else(|_| "error".into()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| Error::internal("starting medid gateway", e))?;
    let gateway = Gateway { child, port };
    for _ in 0..600 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(gateway);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(Error::Unavailable("medid gateway did not start".into()))
}

/// One persistent HTTP/1.1 connection: through TLS to the gateway, or plain to the upstream.
enum Conn {
    Tls(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    Plain(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
}

async fn open(port: u16, tls: Option<Arc<rustls::ClientConfig>>) -> Result<Conn, Error> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| Error::Unavailable(format!("connecting to 127.0.0.1:{port}: {e}")))?;
    let _ = tcp.set_nodelay(true);
    let handshake_error = |e: hyper::Error| Error::Unavailable(format!("HTTP handshake: {e}"));
    Ok(match tls {
        Some(config) => {
            let name = rustls_pki_types::ServerName::try_from("localhost")
                .map_err(|e| Error::internal("server name", e))?;
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| Error::Unavailable(format!("TLS to the gateway: {e}")))?;
            let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(handshake_error)?;
            tokio::spawn(conn);
            Conn::Tls(send)
        }
        None => {
            let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .map_err(handshake_error)?;
            tokio::spawn(conn);
            Conn::Plain(send)
        }
    })
}

impl Conn {
    async fn get(&mut self, path: &str) -> Result<(), Error> {
        let req = http::Request::get(path)
            .header("host", "localhost")
            .body(Empty::<Bytes>::new())
            .map_err(|e| Error::internal("request", e))?;
        let send = match self {
            Conn::Tls(s) | Conn::Plain(s) => s,
        };
        // The connection takes the next request once it has finished with the previous one.
        send.ready()
            .await
            .map_err(|e| Error::Unavailable(format!("connection: {e}")))?;
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| Error::Unavailable(format!("request: {e}")))?;
        let status = resp.status();
        resp.into_body()
            .collect()
            .await
            .map_err(|e| Error::Unavailable(format!("response body: {e}")))?;
        if status != http::StatusCode::OK {
            return Err(Error::Unavailable(format!("the answer was {status}")));
        }
        Ok(())
    }
}

/// `count` GETs over `configs.len()` connections (a device each), or plain connections to
/// the upstream when `configs` are `None`.
async fn drive(
    port: u16,
    configs: Vec<Option<Arc<rustls::ClientConfig>>>,
    count: usize,
    prefix: &str,
) -> Result<(Vec<Duration>, f64), Error> {
    let workers = configs.len();
    let per = count.div_ceil(workers);
    // Connections first (and one request each): handshakes and the gateway's first status
    // question per certificate are not what is measured.
    let mut conns = Vec::with_capacity(workers);
    for config in configs {
        let mut c = open(port, config).await?;
        c.get(&format!("{prefix}warm")).await?;
        conns.push(c);
    }
    let started = Instant::now();
    let tasks = conns.into_iter().enumerate().map(|(w, mut conn)| {
        let n = per.min(count.saturating_sub(w * per));
        let prefix = prefix.to_owned();
        async move {
            let mut lat = Vec::with_capacity(n);
            for i in 0..n {
                let t = Instant::now();
                conn.get(&format!("{prefix}Observation/{w}-{i}")).await?;
                lat.push(t.elapsed());
            }
            Ok::<_, Error>(lat)
        }
    });
    let lat: Vec<Vec<Duration>> = join_all(tasks)
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    Ok((lat.concat(), started.elapsed().as_secs_f64()))
}

/// Runs the three measurements: straight to the upstream, then through a strict and a
/// buffered gateway.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    medid_url: &str,
    pki: &Path,
    station: &crate::api::client::ClientCredentials,
    gateways: &[(String, String); 2],
    count: usize,
    workers: usize,
    run: i64,
) -> Result<Vec<Measured>, Error> {
    let root = pki.join("root-ca.pem");
    let root_pem =
        std::fs::read(&root).map_err(|e| Error::Internal(format!("{}: {e}", root.display())))?;
    // Devices, enrolled untimed.
    let mut factory = enrollment_service_client::EnrollmentServiceClient::new(
        crate::api::client::connect(medid_url, station).await?,
    );
    let mut configs = Vec::with_capacity(workers);
    for w in 0..workers {
        let key = rcgen::KeyPair::generate().map_err(|e| Error::internal("key", e))?;
        let csr = rcgen::CertificateParams::default()
            .serialize_request(&key)
            .map_err(|e| Error::internal("csr", e))?;
        let done = factory
            .enroll_device(EnrollDeviceRequest {
                csr: csr.der().to_vec(),
                serial: format!("G{run}-{w}"),
                model: "X".into(),
                udi_di: String::new(),
            })
            .await
            .map_err(super::client::status)?
            .into_inner();
        let cert: proto::IssuedCertificate = done
            .certificate
            .ok_or_else(|| Error::Internal("enrollment without a certificate".into()))?;
        let config = crate::api::client::client_tls_config(
            &root_pem,
            Some((
                cert.certificate_pem.as_bytes(),
                key.serialize_pem().as_bytes(),
            )),
        )?;
        configs.push(Some(Arc::new(config)));
    }
    let up = upstream()?;
    let mut out = Vec::new();
    let (lat, seconds) = drive(up, vec![None; workers], count, "/fhir/").await?;
    out.push(Measured {
        name: "gateway: straight to the upstream (plain HTTP/1.1)",
        ops: count,
        seconds,
        latencies: lat,
        cpu: f64::NAN,
        rss_mib: f64::NAN,
    });
    for ((mode, name), bootstrap) in [
        ("strict", "gateway: through medid gateway, strict (mTLS)"),
        (
            "buffered",
            "gateway: through medid gateway, buffered (mTLS)",
        ),
    ]
    .into_iter()
    .zip(gateways)
    {
        let dir = tempfile::tempdir().map_err(|e| Error::internal("temp dir", e))?;
        let gw = start_gateway(dir.path(), medid_url, &root, bootstrap, mode, up).await?;
        let pid = gw.child.id();
        let cpu_before = super::bench::cpu_seconds(pid);
        let (lat, seconds) = drive(gw.port, configs.clone(), count, "/fhir/").await?;
        let cpu = super::bench::cpu_seconds(pid) - cpu_before;
        out.push(Measured {
            name,
            ops: count,
            seconds,
            latencies: lat,
            cpu,
            rss_mib: super::bench::rss_mib(pid),
        });
        // The gateway stops before its directory goes.
        drop(gw);
        drop(dir);
    }
    Ok(out)
}
