//! `medid bench`: drives a real `medid serve` (started here as a child process, so its CPU time
//! can be read apart from the load generator's) and prints throughput, p50/p99 latency and the
//! server's CPU time per scenario. Figures, never assertions: see docs/PERFORMANCE.md.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::audit::verify::CHUNK_LINES;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use futures_util::future::join_all;
use serde_json::json;
use tonic::transport::Channel;

use crate::api::client::{connect, ClientCredentials, Connector};
use crate::error::Error;
use crate::proto::{self, *};

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Scenario {
    /// Enrollments over persistent mTLS connections.
    Enroll,
    /// Enrollments with a new mTLS connection each.
    EnrollReconnect,
    /// Enrollments over persistent mTLS connections to a second server whose CA keys are in a
    /// SoftHSMv2 token (made here with `softhsm2-util` in a temporary directory): compare with
    /// `enroll` in the same run. Not in the default set.
    EnrollHsm,
    /// Enrollments over persistent mTLS connections to a second server feeding its ledger to
    /// rsyslogd (started here, with the gtls driver) as an ATNA repository: compare with
    /// `enroll` in the same run; also how long after the last enrollment the repository had
    /// every enrollment's event. Not in the default set.
    EnrollAtna,
    /// Access events through RecordAccessStream, in batches.
    AccessStream,
    /// Access events through concurrent unary RecordAccess.
    AccessUnary,
    /// Export of the whole log plus offline verification.
    Export,
    /// A filtered export of one device's events (device F-0 of the fill scenario), each with
    /// its inclusion proof, verified offline.
    ExportDevice,
    /// Single inclusion proofs (GetInclusionProof) spread over the whole log, each verified
    /// against the signed checkpoint.
    Proof,
    /// Signed checkpoints, `--proofs` of them, each after one more batch of `--batch` access
    /// events: GetCheckpoint re-hashes what was added since the last one (the incremental
    /// integrity check), then signs.
    Checkpoint,
    /// Requests through `medid gateway` in strict and in buffered mode (each its own
    /// process, in front of a hyper upstream on a thread of this one), against the same
    /// requests straight to the upstream: the requests/s and the latency the gateway adds.
    /// Not in the default set.
    Gateway,
    /// Fills the log: `--count` access events over RecordAccessStream, naming `--devices`
    /// enrolled devices in turn, through the real path (sealed, hashed, group-committed).
    /// Not in the default set; with `--data-dir`, later runs measure against the filled log.
    Fill,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Scenarios to run (repeat); default: all.
    #[arg(long = "scenario", value_enum)]
    pub scenarios: Vec<Scenario>,
    /// Operations per scenario (events for the access scenarios).
    #[arg(long, default_value_t = 2000)]
    pub count: usize,
    /// Concurrent workers (at most 32: the per-principal limit): persistent connections for
    /// enrollment, callers sharing one connection for unary access, streams (one connection
    /// each) for access-stream.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Events per RecordAccessStream batch.
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    /// Inclusion proofs the proof scenario asks for, spread over the log.
    #[arg(long, default_value_t = 20)]
    pub proofs: usize,
    /// Devices the fill scenario's events name in turn (each gets count / devices events).
    #[arg(long, default_value_t = 1000)]
    pub devices: usize,
    /// Keep the server's directory (configuration, development PKI, database) here instead of
    /// a temporary one, and reuse what it holds: fill a log once, then measure proofs and
    /// exports against it.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The server's database instead of SQLite in its directory (a postgres:// URL: a
    /// PostgreSQL run). With `--data-dir`, later runs measure against what it holds.
    #[arg(long)]
    pub database_url: Option<String>,
    /// Print the figures as one JSON object.
    #[arg(long)]
    pub json: bool,
}

struct Server {
    child: Child,
    dir: ServerDir,
    url: String,
    /// Its plain-HTTP listener (`/metrics`).
    http: u16,
}

/// Where the server keeps its files: a temporary directory, or one kept (`--data-dir`).
enum ServerDir {
    Temporary(tempfile::TempDir),
    Kept(PathBuf),
}

impl ServerDir {
    fn path(&self) -> &Path {
        match self {
            ServerDir::Temporary(dir) => dir.path(),
            ServerDir::Kept(dir) => dir,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The CPU seconds (user + system, all threads) process `pid` has used: /proc/<pid>/stat
/// fields 14 and 15, in USER_HZ (100 on Linux).
pub(super) fn cpu_seconds(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let after = s.rsplit_once(')')?.1;
            let f: Vec<&str> = after.split_whitespace().collect();
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / 100.0)
        })
        .unwrap_or(f64::NAN)
}

/// The resident memory of process `pid` now (`VmRSS` in /proc/<pid>/status), in MiB.
pub(super) fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
            let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib / 1024.0)
        })
        .unwrap_or(f64::NAN)
}

impl Server {
    fn cpu_seconds(&self) -> f64 {
        cpu_seconds(self.child.id())
    }

    /// The server's resident memory now, in MiB.
    fn rss_mib(&self) -> f64 {
        rss_mib(self.child.id())
    }

    fn creds(&self, cert: &str, key: &str) -> ClientCredentials {
        ClientCredentials {
            ca_pem: std::fs::read(self.dir.path().join("pki/root-ca.pem")).unwrap_or_default(),
            cert_pem: cert.as_bytes().to_vec(),
            key_pem: key.as_bytes().to_vec(),
        }
    }
}

pub(super) fn free_port() -> Result<u16, Error> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| Error::Unavailable(format!("no free port: {e}")))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| Error::Unavailable(format!("no free port: {e}")))
}

/// A SoftHSMv2 token made for one bench run, in a temporary directory of its own.
struct BenchToken {
    dir: tempfile::TempDir,
    module: PathBuf,
    pin_file: PathBuf,
}

const BENCH_TOKEN: &str = "medid-bench";

impl BenchToken {
    fn conf(&self) -> PathBuf {
        self.dir.path().join("softhsm2.conf")
    }

    /// The server's `[pkcs11]` section and SoftHSM's configuration file.
    fn extra(&self) -> Extra {
        Extra {
            toml: format!(
                "[pkcs11]\nmodule = {:?}\ntoken_label = {BENCH_TOKEN:?}\npin_file = {:?}\n",
                self.module, self.pin_file
            ),
            env: vec![("SOFTHSM2_CONF", self.conf())],
        }
    }

    /// Initialises the token with SoftHSM's own `softhsm2-util` and a random PIN, kept in a
    /// 0600 file as the server's configuration names it.
    fn make() -> Result<Self, Error> {
        let module = crate::issuance::hsm::SOFTHSM_MODULES
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .ok_or_else(|| {
                Error::FailedPrecondition(format!(
                    "the enroll-hsm scenario needs SoftHSMv2 (Debian `softhsm2`): no module at {}",
                    crate::issuance::hsm::SOFTHSM_MODULES.join(" or ")
                ))
            })?;
        let dir = tempfile::tempdir().map_err(|e| Error::internal("temp dir", e))?;
        let tokens = dir.path().join("tokens");
        crate::files::create_private_dir(&tokens)?;
        let token = Self {
            pin_file: dir.path().join("pin"),
            dir,
            module,
        };
        std::fs::write(
            token.conf(),
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )
        .map_err(|e| Error::internal("writing softhsm2.conf", e))?;
        let pin = crate::issuance::random_serial().to_string();
        crate::files::write_atomic(
            &token.pin_file,
            pin.as_bytes(),
            crate::files::Access::Private,
        )?;
        let so_pin = crate::issuance::random_serial().to_string();
        let out = Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", token.conf())
            .args(["--init-token", "--free", "--label", BENCH_TOKEN])
            .args(["--pin", &pin, "--so-pin", &so_pin])
            .output()
            .map_err(|e| {
                Error::FailedPrecondition(format!(
                    "the enroll-hsm scenario needs softhsm2-util (Debian `softhsm2`): {e}"
                ))
            })?;
        if !out.status.success() {
            return Err(Error::Internal(format!(
                "softhsm2-util --init-token: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(token)
    }
}

/// What a scenario adds to its server's configuration: TOML sections, and environment.
#[derive(Default)]
struct Extra {
    toml: String,
    env: Vec<(&'static str, PathBuf)>,
}

/// rsyslogd as an ATNA repository for the enroll-atna scenario, and the certificates both
/// ends use, all from a first start of medid in the scenario's directory: rsyslogd serves
/// that medid's TLS certificate (it names localhost) and requires the feed's, a gateway
/// certificate.
struct AtnaBench {
    dir: tempfile::TempDir,
    port: u16,
    child: Child,
}

impl Drop for AtnaBench {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl AtnaBench {
    async fn start() -> Result<Self, Error> {
        let dir = tempfile::tempdir().map_err(|e| Error::internal("temp dir", e))?;
        let first = start(Some(dir.path()), None, &Extra::default()).await?;
        let (cert, key) = issue(
            &admin_channel(&first).await?,
            proto::PrincipalRole::Gateway,
            "atna-bench",
            "",
        )
        .await?;
        drop(first);
        let path = |name: &str| dir.path().join(name);
        let pki = |name: &str| dir.path().join("pki").join(name);
        std::fs::write(path("feed.pem"), cert).map_err(|e| Error::internal("feed.pem", e))?;
        crate::files::write_atomic(
            &path("feed.key"),
            key.as_bytes(),
            crate::files::Access::Private,
        )?;
        std::fs::write(
            path("chain.pem"),
            read(&pki("root-ca.pem"))? + &read(&pki("operational-ca.pem"))?,
        )
        .map_err(|e| Error::internal("chain.pem", e))?;
        std::fs::create_dir_all(path("arr")).map_err(|e| Error::internal("arr", e))?;
        let port = free_port()?;
        std::fs::write(
            path("rsyslog.conf"),
            format!(
                "global(workDirectory=\"{}\" maxMessageSize=\"64k\" DefaultNetstreamDriver=\"gtls\"\n\
                 DefaultNetstreamDriverCAFile=\"{}\" DefaultNetstreamDriverCertFile=\"{}\"\n\
                 DefaultNetstreamDriverKeyFile=\"{}\")\n\
                 module(load=\"imtcp\" StreamDriver.Name=\"gtls\" StreamDriver.Mode=\"1\" StreamDriver.AuthMode=\"x509/certvalid\")\n\
                 input(type=\"imtcp\" address=\"127.0.0.1\" port=\"{port}\")\n\
                 template(name=\"line\" type=\"string\" string=\"%msg%\\n\")\n\
                 action(type=\"omfile\" file=\"{}\" template=\"line\")\n",
                path("arr").display(),
                path("chain.pem").display(),
                pki("server.pem").display(),
                pki("server.key").display(),
                path("arr/received.log").display(),
            ),
        )
        .map_err(|e| Error::internal("rsyslog.conf", e))?;
        let child = Command::new("rsyslogd")
            .args(["-n", "-f"])
            .arg(path("rsyslog.conf"))
            .arg("-i")
            .arg(path("arr/rsyslogd.pid"))
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                Error::FailedPrecondition(format!(
                    "the enroll-atna scenario needs rsyslogd with its gtls driver (Debian `rsyslog`, `rsyslog-gnutls`): {e}"
                ))
            })?;
        let feed = Self { dir, port, child };
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(feed);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(Error::Unavailable("rsyslogd did not listen".into()))
    }

    /// The server's `[atna]` section.
    fn extra(&self) -> Result<Extra, Error> {
        let path = |name: &str| self.dir.path().join(name);
        Ok(Extra {
            toml: format!(
                "[atna]\nsyslog = \"127.0.0.1:{}\"\nserver_name = \"localhost\"\nca_file = {:?}\n\
                 client_cert = {:?}\nclient_key = {:?}\n",
                self.port,
                path("pki/root-ca.pem"),
                path("feed.pem"),
                path("feed.key"),
            ),
            env: vec![],
        })
    }

    /// How many messages rsyslogd wrote whose AuditEvent names `action`.
    fn received(&self, action: &str) -> usize {
        let needle = format!("\"{action}\"");
        std::fs::read_to_string(self.dir.path().join("arr/received.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&needle))
            .count()
    }
}

async fn start(
    data_dir: Option<&Path>,
    database_url: Option<&str>,
    extra: &Extra,
) -> Result<Server, Error> {
    let dir = match data_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::Internal(format!("creating {}: {e}", dir.display())))?;
            ServerDir::Kept(dir.to_owned())
        }
        None => {
            ServerDir::Temporary(tempfile::tempdir().map_err(|e| Error::internal("temp dir", e))?)
        }
    };
    let (grpc, http) = (free_port()?, free_port()?);
    let config = dir.path().join("medid.toml");
    let database_url = match database_url {
        Some(url) => url.to_owned(),
        None => format!("sqlite://{}", dir.path().join("medid.db").display()),
    };
    let text = format!(
        "listen = \"127.0.0.1:{grpc}\"\nhttp_listen = \"127.0.0.1:{http}\"\n\
         database_url = \"{database_url}\"\npki_dir = \"{}\"\naudit_checkpoint_dir = \"{}\"\n\
         create_dev_pki = true\nest_enabled = false\nconsole_enabled = false\n",
        dir.path().join("pki").display(),
        dir.path().join("checkpoints").display()
    ) + &extra.toml
        + &super::bench_gateway::gateway_hosts();
    std::fs::write(&config, text).map_err(|e| Error::internal("writing config", e))?;
    let exe = std::env::current_exe().map_err(|e| Error::internal("finding medid", e))?;
    let mut command = Command::new(exe);
    for (name, value) in &extra.env {
        command.env(name, value);
    }
    let child = command
        .args(["serve", "--config"])
        .arg(&config)
        // The server's log level: errors only, unless asked (`MEDID_BENCH_SERVER_LOG`).
        .env(
            "MEDID_LOG",
            std::env::var("MEDID_BENCH_SERVER_LOG").unwrap_or_else(|_| "error".into()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| Error::internal("starting medid serve", e))?;
    let server = Server {
        child,
        dir,
        url: format!("https://localhost:{grpc}"),
        http,
    };
    for _ in 0..600 {
        if server.dir.path().join("pki/admin.key").exists()
            && std::net::TcpStream::connect(("127.0.0.1", grpc)).is_ok()
        {
            return Ok(server);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(Error::Unavailable("medid serve did not start".into()))
}

fn read(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|e| Error::Internal(format!("{}: {e}", path.display())))
}

fn csr() -> Result<Vec<u8>, Error> {
    let key = rcgen::KeyPair::generate().map_err(|e| Error::internal("key", e))?;
    Ok(rcgen::CertificateParams::default()
        .serialize_request(&key)
        .map_err(|e| Error::internal("csr", e))?
        .der()
        .to_vec())
}

async fn issue(
    admin: &Channel,
    role: proto::PrincipalRole,
    id: &str,
    manufacturer: &str,
) -> Result<(String, String), Error> {
    let key = rcgen::KeyPair::generate().map_err(|e| Error::internal("key", e))?;
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .map_err(|e| Error::internal("csr", e))?;
    let cert = admin_service_client::AdminServiceClient::new(admin.clone())
        .issue_principal_certificate(IssuePrincipalCertificateRequest {
            role: role as i32,
            id: id.into(),
            manufacturer_id: manufacturer.into(),
            csr: csr.der().to_vec(),
        })
        .await
        .map_err(super::client::status)?
        .into_inner();
    Ok((cert.certificate_pem, key.serialize_pem()))
}

/// Succeeds also when what is created exists already (a reused `--data-dir`).
fn created<T>(answer: Result<T, tonic::Status>) -> Result<(), Error> {
    match answer {
        Ok(_) => Ok(()),
        Err(s) if s.code() == tonic::Code::AlreadyExists => Ok(()),
        Err(s) => Err(super::client::status(s)),
    }
}

/// The size of the server's database files (the database and its WAL), in bytes.
fn database_bytes(dir: &Path) -> u64 {
    ["medid.db", "medid.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
        .map(|m| m.len())
        .sum()
}

/// One scenario's figures.
struct Figures {
    name: &'static str,
    ops: usize,
    seconds: f64,
    latencies: Vec<Duration>,
    server_cpu: f64,
    /// The server's resident memory after the scenario, in MiB.
    server_rss_mib: f64,
}

impl Figures {
    fn per_second(&self) -> f64 {
        self.ops as f64 / self.seconds
    }
    /// The server's CPU time per operation, in microseconds (user + system, all threads).
    fn cpu_us_per_op(&self) -> f64 {
        self.server_cpu * 1e6 / self.ops as f64
    }
    fn percentile(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let mut l = self.latencies.clone();
        l.sort();
        let i = ((l.len() as f64 - 1.0) * p).round() as usize;
        l[i].as_secs_f64() * 1000.0
    }
}

fn print_figures(figures: &Figures) {
    let ms = |p: f64| {
        let v = figures.percentile(p);
        if v.is_nan() {
            "-".to_string()
        } else {
            format!("{v:.2}")
        }
    };
    println!(
        "{:<48} {:>8} ops {:>9.1} /s  p50 {:>7} ms  p99 {:>7} ms  server CPU {:>6.2} s ({:>5.0} µs/op)  RSS {:>6.1} MiB",
        figures.name,
        figures.ops,
        figures.per_second(),
        ms(0.5),
        ms(0.99),
        figures.server_cpu,
        figures.cpu_us_per_op(),
        figures.server_rss_mib
    );
}

fn progress(name: &str, done: usize, total: usize) {
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        eprint!("\r{name}: {done}/{total}    ");
    }
}

/// Event `i` of a fill over `devices` devices (`F-k`, in turn) and 10,000 patients.
fn fill_event(i: usize, devices: usize, at: prost_types::Timestamp) -> AccessEvent {
    AccessEvent {
        device: Some(DeviceRef {
            manufacturer_id: "bench".into(),
            serial: format!("F-{}", i % devices),
        }),
        user_id: format!("nurse-{}", i % 97),
        user_role: "nurse".into(),
        action: AccessAction::Read as i32,
        data_category: "vital-signs".into(),
        patient_ref: format!("Patient/p-{}", i % 10_000),
        purpose_of_use: "TREAT".into(),
        outcome: AccessOutcome::Success as i32,
        occurred_at: Some(at),
        ..Default::default()
    }
}

/// The fill scenario's load: `args.count` events over one stream per worker, each batch made
/// when it is sent (memory stays flat whatever the count), the events naming device `F-k` in
/// turn and one of 10,000 patients.
async fn fill(
    server: &Server,
    gateway: &Arc<ClientCredentials>,
    args: &BenchArgs,
    workers: usize,
    devices: usize,
) -> Result<Vec<Duration>, Error> {
    let per = args.count.div_ceil(workers);
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tasks = (0..workers).map(|w| {
        let first = (w * per).min(args.count);
        let end = (first + per).min(args.count);
        let (url, creds, done, size) = (
            server.url.clone(),
            gateway.clone(),
            done.clone(),
            args.batch.max(1),
        );
        async move {
            let mut lat = Vec::new();
            if first == end {
                return Ok::<_, Error>(lat);
            }
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            let mut acks =
                audit_service_client::AuditServiceClient::new(connect(&url, &creds).await?)
                    .record_access_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
                    .await
                    .map_err(super::client::status)?
                    .into_inner();
            let mut next = first;
            while next < end {
                let upto = (next + size).min(end);
                let at = prost_types::Timestamp {
                    seconds: time::OffsetDateTime::now_utc().unix_timestamp(),
                    nanos: 0,
                };
                let events: Vec<AccessEvent> =
                    (next..upto).map(|i| fill_event(i, devices, at)).collect();
                let (t, sent) = (Instant::now(), events.len());
                tx.send(AccessBatch { events })
                    .await
                    .map_err(|_| Error::Unavailable("stream closed".into()))?;
                let ack = acks
                    .message()
                    .await
                    .map_err(super::client::status)?
                    .ok_or_else(|| Error::Unavailable("stream ended before its ack".into()))?;
                lat.push(t.elapsed());
                if ack.seqs.len() != sent {
                    return Err(Error::Internal(format!(
                        "{sent} events sent, {} acknowledged",
                        ack.seqs.len()
                    )));
                }
                let total = done.fetch_add(sent, std::sync::atomic::Ordering::Relaxed) + sent;
                progress("fill", total, args.count);
                next = upto;
            }
            Ok(lat)
        }
    });
    let lat: Vec<Vec<Duration>> = join_all(tasks)
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    Ok(lat.concat())
}

/// The enroll load against a server of a scenario's own: a station of its own, `count` CSRs
/// made first, then the timed enrollments. Returns their latencies and (when the timed part
/// started, when it ended, (that server's CPU seconds meanwhile, its RSS)).
async fn enroll_on(
    server: &Server,
    count: usize,
    workers: usize,
    prefix: &str,
) -> Result<(Vec<Duration>, (Instant, Instant, (f64, f64))), Error> {
    let station = factory_station(&admin_channel(server).await?).await?;
    let csrs: Vec<Vec<u8>> = (0..count).map(|_| csr()).collect::<Result<_, _>>()?;
    let cpu = server.cpu_seconds();
    let started = Instant::now();
    let lat = enroll(
        &server.url,
        &Arc::new(server.creds(&station.0, &station.1)),
        csrs,
        workers,
        false,
        prefix,
    )
    .await?;
    let ended = Instant::now();
    Ok((
        lat,
        (
            started,
            ended,
            (server.cpu_seconds() - cpu, server.rss_mib()),
        ),
    ))
}

/// A connection as the server's first admin.
async fn admin_channel(server: &Server) -> Result<Channel, Error> {
    let pki = server.dir.path().join("pki");
    connect(
        &server.url,
        &server.creds(
            &read(&pki.join("admin.pem"))?,
            &read(&pki.join("admin.key"))?,
        ),
    )
    .await
}

/// The bench's manufacturer (made if missing) and a station certificate and key of its own.
async fn factory_station(admin: &Channel) -> Result<(String, String), Error> {
    created(
        admin_service_client::AdminServiceClient::new(admin.clone())
            .create_manufacturer(CreateManufacturerRequest {
                id: "bench".into(),
                display_name: "Bench".into(),
                allowed_models: vec![],
            })
            .await,
    )?;
    issue(
        admin,
        proto::PrincipalRole::ManufacturerStation,
        "line-1",
        "bench",
    )
    .await
}

/// Enrolls one device per CSR through `workers` stations, over a persistent connection each
/// or (`reconnect`) a new connection per enrollment; serials `{prefix}-{worker}-{i}`.
async fn enroll(
    url: &str,
    station: &Arc<ClientCredentials>,
    csrs: Vec<Vec<u8>>,
    workers: usize,
    reconnect: bool,
    prefix: &str,
) -> Result<Vec<Duration>, Error> {
    let chunks: Vec<Vec<Vec<u8>>> = csrs
        .chunks(csrs.len().div_ceil(workers).max(1))
        .map(|c| c.to_vec())
        .collect();
    let tasks = chunks.into_iter().enumerate().map(|(w, chunk)| {
        let creds = station.clone();
        async move {
            let mut lat = Vec::with_capacity(chunk.len());
            // One client TLS configuration per worker, as one device keeps one: reconnections
            // resume the TLS session (server tickets).
            let dialer =
                Connector::new(url, &creds.ca_pem, Some((&creds.cert_pem, &creds.key_pem)))?;
            let mut channel = if reconnect {
                None
            } else {
                Some(dialer.connect().await?)
            };
            for (i, csr) in chunk.into_iter().enumerate() {
                let t = Instant::now();
                let ch = match &channel {
                    Some(c) => c.clone(),
                    None => dialer.connect().await?,
                };
                enrollment_service_client::EnrollmentServiceClient::new(ch)
                    .enroll_device(EnrollDeviceRequest {
                        csr,
                        serial: format!("{prefix}-{w}-{i}"),
                        model: "X".into(),
                        udi_di: String::new(),
                    })
                    .await
                    .map_err(super::client::status)?;
                lat.push(t.elapsed());
                if reconnect {
                    channel = None;
                }
            }
            Ok::<_, Error>(lat)
        }
    });
    let lat: Vec<Vec<Duration>> = join_all(tasks)
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    Ok(lat.concat())
}

/// Drives the load from one thread of its own (a current-thread runtime). The client then
/// takes at most one of the machine's cores, as a separate gateway process would, and pays no
/// wakeups between runtime threads. On two cores that measured 8–19% more throughput in every
/// scenario than a multi-threaded client (PERFORMANCE.md). Offline verification still uses
/// every core.
pub async fn run(args: BenchArgs) -> Result<(), Error> {
    tokio::task::spawn_blocking(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::internal("the bench client's runtime", e))?
            .block_on(drive(args))
    })
    .await
    .map_err(|e| Error::internal("the bench client's thread", e))?
}

async fn drive(args: BenchArgs) -> Result<(), Error> {
    let scenarios = if args.scenarios.is_empty() {
        vec![
            Scenario::Enroll,
            Scenario::EnrollReconnect,
            Scenario::AccessStream,
            Scenario::AccessUnary,
            Scenario::Export,
            Scenario::Proof,
        ]
    } else {
        args.scenarios.clone()
    };
    let workers = args.concurrency.clamp(1, 32);
    let server = start(
        args.data_dir.as_deref(),
        args.database_url.as_deref(),
        &Extra::default(),
    )
    .await?;
    // Serials unique to this run, so a reused directory takes new enrollments.
    let run = time::OffsetDateTime::now_utc().unix_timestamp();
    let pki = server.dir.path().join("pki");
    let admin = admin_channel(&server).await?;
    let station = factory_station(&admin).await?;
    let gateway = issue(&admin, proto::PrincipalRole::Gateway, "gw", "").await?;
    let auditor = issue(&admin, proto::PrincipalRole::Auditor, "aud", "").await?;
    let station_creds = Arc::new(server.creds(&station.0, &station.1));
    let gateway_creds = Arc::new(server.creds(&gateway.0, &gateway.1));
    let mut results = Vec::new();
    let mut enrolled = 0usize;
    for scenario in scenarios {
        if scenario == Scenario::Gateway {
            // Three measurements of its own, each with the gateway's CPU and memory.
            let mut gateways = Vec::new();
            for id in super::bench_gateway::GATEWAY_IDS {
                gateways.push(issue(&admin, proto::PrincipalRole::Gateway, id, "").await?);
            }
            let gateways: [(String, String); 2] = gateways
                .try_into()
                .map_err(|_| Error::Internal("two gateway identities".into()))?;
            let measured = super::bench_gateway::run(
                &server.url,
                &pki,
                &station_creds,
                &gateways,
                args.count,
                workers,
                run,
            )
            .await?;
            let mut direct: Option<(f64, f64)> = None;
            for m in measured {
                let figures = Figures {
                    name: m.name,
                    ops: m.ops,
                    seconds: m.seconds,
                    latencies: m.latencies,
                    server_cpu: m.cpu,
                    server_rss_mib: m.rss_mib,
                };
                let (p50, p99) = (figures.percentile(0.5), figures.percentile(0.99));
                if !args.json {
                    print_figures(&figures);
                    match direct {
                        None => direct = Some((p50, p99)),
                        Some((d50, d99)) => println!(
                            "{:<48} added latency: p50 {:+.2} ms, p99 {:+.2} ms (server CPU is the gateway's)",
                            "",
                            p50 - d50,
                            p99 - d99
                        ),
                    }
                }
                results.push(figures);
            }
            continue;
        }
        // A scenario that prepares untimed work first (CSRs, the device its events name)
        // starts the clock again when that is done.
        let mut cpu_before = server.cpu_seconds();
        let mut started = Instant::now();
        // The export scenario also reports the offline verification on its own: (events, s).
        let mut verify_alone: Option<(usize, f64)> = None;
        // A scenario that does untimed work at its end says when its timed part ended.
        let mut ended: Option<Instant> = None;
        // A scenario run against a server of its own: that server's CPU seconds and RSS.
        let mut elsewhere: Option<(f64, f64)> = None;
        // The ATNA scenario: ms from the last enrollment to the repository having them all.
        let mut caught_up: Option<f64> = None;
        let (name, ops, latencies): (&'static str, usize, Vec<Duration>) = match scenario {
            Scenario::Enroll | Scenario::EnrollReconnect => {
                let reconnect = scenario == Scenario::EnrollReconnect;
                // CSRs first: key generation is the device's cost, not the CA's.
                let csrs: Vec<Vec<u8>> =
                    (0..args.count).map(|_| csr()).collect::<Result<_, _>>()?;
                (cpu_before, started) = (server.cpu_seconds(), Instant::now());
                let first = enrolled;
                enrolled += args.count;
                let lat = enroll(
                    &server.url,
                    &station_creds,
                    csrs,
                    workers,
                    reconnect,
                    &format!("B{run}-{first}"),
                )
                .await?;
                (
                    if reconnect {
                        "enroll, new connection each"
                    } else {
                        "enroll, persistent connections"
                    },
                    args.count,
                    lat,
                )
            }
            Scenario::EnrollHsm => {
                let token = BenchToken::make()?;
                let hsm = start(None, None, &token.extra()).await?;
                let (lat, timed) = enroll_on(&hsm, args.count, workers, &format!("H{run}")).await?;
                (started, ended, elsewhere) = (timed.0, Some(timed.1), Some(timed.2));
                (
                    "enroll, persistent connections, SoftHSM keys",
                    args.count,
                    lat,
                )
            }
            Scenario::EnrollAtna => {
                let feed = AtnaBench::start().await?;
                let fed = start(Some(feed.dir.path()), None, &feed.extra()?).await?;
                let before = feed.received("device.enroll");
                let (lat, timed) = enroll_on(&fed, args.count, workers, &format!("A{run}")).await?;
                (started, ended, elsewhere) = (timed.0, Some(timed.1), Some(timed.2));
                let last = Instant::now();
                while feed.received("device.enroll") < before + args.count {
                    if last.elapsed() > Duration::from_secs(120) {
                        return Err(Error::Unavailable(
                            "the ATNA repository did not get every enrollment within 2 minutes"
                                .into(),
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                caught_up = Some(last.elapsed().as_secs_f64() * 1000.0);
                (
                    "enroll, persistent connections, ATNA feed on",
                    args.count,
                    lat,
                )
            }
            Scenario::AccessStream | Scenario::AccessUnary => {
                let event = AccessEvent {
                    device: Some(DeviceRef {
                        manufacturer_id: "bench".into(),
                        serial: format!("B{run}-0-0-0"),
                    }),
                    action: AccessAction::Read as i32,
                    data_category: "vital-signs".into(),
                    purpose_of_use: "TREAT".into(),
                    outcome: AccessOutcome::Success as i32,
                    occurred_at: Some(prost_types::Timestamp {
                        seconds: time::OffsetDateTime::now_utc().unix_timestamp(),
                        nanos: 0,
                    }),
                    ..Default::default()
                };
                if enrolled == 0 {
                    created(
                        enrollment_service_client::EnrollmentServiceClient::new(
                            connect(&server.url, &station_creds).await?,
                        )
                        .enroll_device(EnrollDeviceRequest {
                            csr: csr()?,
                            serial: format!("B{run}-0-0-0"),
                            model: "X".into(),
                            udi_di: String::new(),
                        })
                        .await,
                    )?;
                    enrolled = 1;
                    (cpu_before, started) = (server.cpu_seconds(), Instant::now());
                }
                if scenario == Scenario::AccessStream {
                    // One stream per worker, each on its own connection, as gateways report:
                    // a batch goes out, and the next follows its acknowledgement.
                    let per = args.count.div_ceil(workers);
                    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
                    let tasks = (0..workers).map(|w| {
                        let n = per.min(args.count.saturating_sub(w * per));
                        let batches: Vec<AccessBatch> = (0..n.div_ceil(args.batch))
                            .map(|b| AccessBatch {
                                events: vec![event.clone(); args.batch.min(n - b * args.batch)],
                            })
                            .collect();
                        let (url, creds, done) =
                            (server.url.clone(), gateway_creds.clone(), done.clone());
                        async move {
                            let mut lat = Vec::with_capacity(batches.len());
                            if batches.is_empty() {
                                return Ok::<_, Error>(lat);
                            }
                            let (tx, rx) = tokio::sync::mpsc::channel(1);
                            let mut acks = audit_service_client::AuditServiceClient::new(
                                connect(&url, &creds).await?,
                            )
                            .record_access_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
                            .await
                            .map_err(super::client::status)?
                            .into_inner();
                            for batch in batches {
                                let (t, size) = (Instant::now(), batch.events.len());
                                tx.send(batch)
                                    .await
                                    .map_err(|_| Error::Unavailable("stream closed".into()))?;
                                let ack = acks
                                    .message()
                                    .await
                                    .map_err(super::client::status)?
                                    .ok_or_else(|| {
                                        Error::Unavailable("stream ended before its ack".into())
                                    })?;
                                lat.push(t.elapsed());
                                if ack.seqs.len() != size {
                                    return Err(Error::Internal(format!(
                                        "{size} events sent, {} acknowledged",
                                        ack.seqs.len()
                                    )));
                                }
                                let total = done
                                    .fetch_add(size, std::sync::atomic::Ordering::Relaxed)
                                    + size;
                                progress("access stream", total, args.count);
                            }
                            Ok(lat)
                        }
                    });
                    let lat: Vec<Vec<Duration>> = join_all(tasks)
                        .await
                        .into_iter()
                        .collect::<Result<_, _>>()?;
                    let done = done.load(std::sync::atomic::Ordering::Relaxed);
                    (
                        "access events, streams (per-batch ack latency)",
                        done,
                        lat.concat(),
                    )
                } else {
                    // The callers share one connection (HTTP/2 streams), as a gateway's
                    // threads do; a connection per caller measured slower (PERFORMANCE.md).
                    let channel = connect(&server.url, &gateway_creds).await?;
                    let per = args.count.div_ceil(workers);
                    let tasks = (0..workers).map(|w| {
                        let mut client =
                            audit_service_client::AuditServiceClient::new(channel.clone());
                        let event = event.clone();
                        let n = per.min(args.count.saturating_sub(w * per));
                        async move {
                            let mut lat = Vec::with_capacity(n);
                            for _ in 0..n {
                                let t = Instant::now();
                                client
                                    .record_access(event.clone())
                                    .await
                                    .map_err(super::client::status)?;
                                lat.push(t.elapsed());
                            }
                            Ok::<_, Error>(lat)
                        }
                    });
                    let lat: Vec<Vec<Duration>> = join_all(tasks)
                        .await
                        .into_iter()
                        .collect::<Result<_, _>>()?;
                    ("access events, unary", args.count, lat.concat())
                }
            }
            Scenario::Gateway => unreachable!("measured before this match"),
            Scenario::Fill => {
                // The devices first, untimed, through the station as a factory would.
                let devices = args.devices.clamp(1, 100_000);
                let mut factory = enrollment_service_client::EnrollmentServiceClient::new(
                    connect(&server.url, &station_creds).await?,
                );
                for d in 0..devices {
                    created(
                        factory
                            .enroll_device(EnrollDeviceRequest {
                                csr: csr()?,
                                serial: format!("F-{d}"),
                                model: "X".into(),
                                udi_di: String::new(),
                            })
                            .await,
                    )?;
                }
                (cpu_before, started) = (server.cpu_seconds(), Instant::now());
                let lat = fill(&server, &gateway_creds, &args, workers, devices).await?;
                (
                    "fill: access events, streams (per-batch ack latency)",
                    args.count,
                    lat,
                )
            }
            Scenario::Checkpoint => {
                // A device of its own, so the fill's devices keep their counts.
                created(
                    enrollment_service_client::EnrollmentServiceClient::new(
                        connect(&server.url, &station_creds).await?,
                    )
                    .enroll_device(EnrollDeviceRequest {
                        csr: csr()?,
                        serial: "C-0".into(),
                        model: "X".into(),
                        udi_di: String::new(),
                    })
                    .await,
                )?;
                let mut reader = audit_service_client::AuditServiceClient::new(
                    connect(&server.url, &server.creds(&auditor.0, &auditor.1)).await?,
                );
                let (tx, rx) = tokio::sync::mpsc::channel(1);
                let mut acks = audit_service_client::AuditServiceClient::new(
                    connect(&server.url, &gateway_creds).await?,
                )
                .record_access_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .map_err(super::client::status)?
                .into_inner();
                (cpu_before, started) = (server.cpu_seconds(), Instant::now());
                let n = args.proofs.max(1);
                let mut lat = Vec::with_capacity(n);
                for round in 0..n {
                    let at = prost_types::Timestamp {
                        seconds: time::OffsetDateTime::now_utc().unix_timestamp(),
                        nanos: 0,
                    };
                    let events = (0..args.batch.max(1))
                        .map(|i| {
                            let mut event = fill_event(round * args.batch + i, 1, at);
                            if let Some(d) = event.device.as_mut() {
                                d.serial = "C-0".into();
                            }
                            event
                        })
                        .collect();
                    tx.send(AccessBatch { events })
                        .await
                        .map_err(|_| Error::Unavailable("stream closed".into()))?;
                    acks.message()
                        .await
                        .map_err(super::client::status)?
                        .ok_or_else(|| Error::Unavailable("stream ended before its ack".into()))?;
                    let t = Instant::now();
                    reader
                        .get_checkpoint(GetCheckpointRequest {})
                        .await
                        .map_err(super::client::status)?;
                    lat.push(t.elapsed());
                    progress("checkpoints", round + 1, n);
                }
                ("checkpoint after each batch (check + sign)", n, lat)
            }
            Scenario::Proof => {
                let channel = connect(&server.url, &server.creds(&auditor.0, &auditor.1)).await?;
                let mut client = audit_service_client::AuditServiceClient::new(channel);
                let cp = client
                    .get_checkpoint(GetCheckpointRequest {})
                    .await
                    .map_err(super::client::status)?
                    .into_inner();
                let root: crate::audit::merkle::Hash = cp
                    .root_hash
                    .try_into()
                    .map_err(|_| Error::Internal("checkpoint root is not 32 bytes".into()))?;
                let n = args.proofs.max(1) as u64;
                let mut lat = Vec::with_capacity(n as usize);
                for i in 0..n {
                    let seq = 1 + i * cp.tree_size / n;
                    let t = Instant::now();
                    let p = client
                        .get_inclusion_proof(GetInclusionProofRequest {
                            seq: seq as i64,
                            tree_size: cp.tree_size,
                        })
                        .await
                        .map_err(super::client::status)?
                        .into_inner();
                    lat.push(t.elapsed());
                    let hashes: Option<Vec<crate::audit::merkle::Hash>> =
                        p.proof.into_iter().map(|h| h.try_into().ok()).collect();
                    let leaf: Option<crate::audit::merkle::Hash> = p.leaf_hash.try_into().ok();
                    let verified = match (leaf, hashes) {
                        (Some(leaf), Some(hashes)) => crate::audit::merkle::verify_inclusion(
                            seq - 1,
                            cp.tree_size,
                            &leaf,
                            &hashes,
                            &root,
                        ),
                        _ => false,
                    };
                    if !verified {
                        return Err(Error::Internal(format!(
                            "bench: the proof of event {seq} did not verify"
                        )));
                    }
                    progress("proofs", i as usize + 1, n as usize);
                }
                ("inclusion proofs (stored tree)", n as usize, lat)
            }
            Scenario::Export | Scenario::ExportDevice => {
                let filter = (scenario == Scenario::ExportDevice).then(|| AuditFilter {
                    device_uri: format!(
                        "spiffe://{}/device/bench/F-0",
                        crate::server::DEV_TRUST_DOMAIN
                    ),
                    ..Default::default()
                });
                let channel = connect(&server.url, &server.creds(&auditor.0, &auditor.1)).await?;
                let mut lines = audit_service_client::AuditServiceClient::new(channel)
                    .export_audit(ExportAuditRequest {
                        filter,
                        previous_tree_size: 0,
                    })
                    .await
                    .map_err(super::client::status)?
                    .into_inner();
                let key = crate::audit::checkpoint::public_key_from_pem(&read(
                    &pki.join("audit-signing.pub"),
                )?)
                .ok_or_else(|| Error::Internal("audit key".into()))?;
                // Verified as it arrives, as `medid audit export | medid audit verify` would:
                // chunks of lines go to a verifier on the blocking pool while this thread
                // receives the next ones.
                let (chunks, mut arriving) = tokio::sync::mpsc::channel::<Vec<String>>(4);
                let verifier = tokio::task::spawn_blocking(move || {
                    let mut verifier = crate::audit::verify::Verifier::new(&key, None);
                    let mut kept = Vec::new();
                    while let Some(chunk) = arriving.blocking_recv() {
                        verifier.push(&chunk.iter().map(String::as_str).collect::<Vec<_>>());
                        kept.push(chunk);
                    }
                    (verifier.finish(), kept)
                });
                let mut chunk = Vec::with_capacity(CHUNK_LINES);
                while let Some(line) = lines.message().await.map_err(super::client::status)? {
                    chunk.push(line.json);
                    if chunk.len() == CHUNK_LINES {
                        let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK_LINES));
                        if chunks.send(full).await.is_err() {
                            break;
                        }
                    }
                }
                let _ = chunks.send(chunk).await;
                drop(chunks);
                let (report, kept) = verifier
                    .await
                    .map_err(|e| Error::internal("the bench's verifier", e))?;
                let report = report
                    .map_err(|f| Error::Internal(format!("bench export did not verify: {f}")))?;
                // The same lines verified again on their own, after the timed part.
                ended = Some(Instant::now());
                let verifying = Instant::now();
                let mut alone = crate::audit::verify::Verifier::new(&key, None);
                for chunk in &kept {
                    alone.push(&chunk.iter().map(String::as_str).collect::<Vec<_>>());
                }
                let again = alone
                    .finish()
                    .map_err(|f| Error::Internal(format!("bench export did not verify: {f}")))?;
                verify_alone = Some((again.events as usize, verifying.elapsed().as_secs_f64()));
                let name = if scenario == Scenario::Export {
                    "export + offline verify (events)"
                } else {
                    "export of one device's events with proofs + verify"
                };
                (name, report.events as usize, vec![])
            }
        };
        let seconds = ended
            .unwrap_or_else(Instant::now)
            .duration_since(started)
            .as_secs_f64();
        let figures = Figures {
            name,
            ops,
            seconds,
            latencies,
            server_cpu: elsewhere.map_or_else(|| server.cpu_seconds() - cpu_before, |e| e.0),
            server_rss_mib: elsewhere.map_or_else(|| server.rss_mib(), |e| e.1),
        };
        if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            eprint!("\r");
        }
        let alone = verify_alone.map(|(ops, seconds)| Figures {
            name: "offline verify alone (events)",
            ops,
            seconds,
            latencies: vec![],
            server_cpu: 0.0,
            server_rss_mib: figures.server_rss_mib,
        });
        if let (Some(ms), false) = (caught_up, args.json) {
            println!(
                "enroll-atna: rsyslogd had every enrollment's event {ms:.0} ms after the last enrollment answered"
            );
        }
        if matches!(scenario, Scenario::AccessStream | Scenario::AccessUnary) && !args.json {
            // The access-anomaly watcher runs beside the writes; how long after the last
            // acknowledgement it had looked at every event.
            let last = Instant::now();
            loop {
                match anomaly_lag(server.http).await? {
                    0 => break,
                    _ if last.elapsed() > Duration::from_secs(300) => {
                        return Err(Error::Unavailable(
                            "the anomaly watcher did not catch up within 5 minutes".into(),
                        ))
                    }
                    _ => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
            let behind = last.elapsed().as_secs_f64();
            println!(
                "{}: the anomaly watcher had every event {:.0} ms after the last acknowledgement ({:.0} events/s over the scenario and its catch-up)",
                figures.name,
                behind * 1000.0,
                figures.ops as f64 / (figures.seconds + behind)
            );
        }
        if scenario == Scenario::Fill && !args.json && args.database_url.is_none() {
            let bytes = database_bytes(server.dir.path());
            println!(
                "fill: the database is {:.1} MiB on disk after it ({} bytes)",
                bytes as f64 / (1024.0 * 1024.0),
                bytes
            );
        }
        for figures in std::iter::once(figures).chain(alone) {
            if !args.json {
                print_figures(&figures);
            }
            results.push(figures);
        }
    }
    if args.json {
        let v: Vec<_> = results
            .iter()
            .map(|f| json!({"scenario": f.name, "ops": f.ops, "seconds": f.seconds, "per_second": f.per_second(),
                            "p50_ms": f.percentile(0.5), "p99_ms": f.percentile(0.99), "server_cpu_seconds": f.server_cpu, "server_cpu_us_per_op": f.cpu_us_per_op(),
                            "server_rss_mib": f.server_rss_mib}))
            .collect();
        println!("{}", serde_json::Value::Array(v));
    }
    Ok(())
}

/// `medid_anomaly_lag_events` from the server's `/metrics`.
async fn anomaly_lag(http: u16) -> Result<u64, Error> {
    use http_body_util::BodyExt as _;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let uri: http::Uri = format!("http://127.0.0.1:{http}/metrics")
        .parse()
        .map_err(|e| Error::internal("the metrics URL", e))?;
    let answer = client
        .get(uri)
        .await
        .map_err(|e| Error::internal("scraping /metrics", e))?;
    let body = answer
        .into_body()
        .collect()
        .await
        .map_err(|e| Error::internal("reading /metrics", e))?
        .to_bytes();
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| l.strip_prefix("medid_anomaly_lag_events "))
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| Error::Internal("/metrics has no medid_anomaly_lag_events".into()))
}
