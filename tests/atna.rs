//! The IHE ATNA feed against a real receiver: rsyslog with GnuTLS (Debian `rsyslog`,
//! `rsyslog-gnutls`), started here on 127.0.0.1 with certificates medid issued and requiring
//! the feed's client certificate. Every ledger event arrives exactly once and in order after
//! de-duplication by its sequence number, across a restart of the receiver and a restart of
//! medid, and every payload is a valid FHIR R4 AuditEvent.
//!
//! Runs when rsyslog with its gtls driver is installed; with `MEDID_REQUIRE_RSYSLOG=1`
//! (`.ci/run`) a missing rsyslog fails the test instead of skipping it.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use common::TestServer;
use medid::config::AtnaConfig;
use medid::proto::PrincipalRole;

fn rsyslog_present() -> bool {
    let found = Command::new("rsyslogd").arg("-v").output().is_ok()
        && [
            "/usr/lib/x86_64-linux-gnu/rsyslog/lmnsd_gtls.so",
            "/usr/lib/rsyslog/lmnsd_gtls.so",
        ]
        .iter()
        .any(|p| Path::new(p).exists());
    if !found {
        assert!(
            std::env::var_os("MEDID_REQUIRE_RSYSLOG").is_none(),
            "MEDID_REQUIRE_RSYSLOG is set but rsyslogd with the gtls driver is missing"
        );
        eprintln!("rsyslog-gnutls not installed: ATNA test skipped (.ci/run installs it)");
    }
    found
}

/// rsyslogd in the foreground, receiving RFC 5425 on `port` and writing each message's
/// structured data and MSG to `out`, one line each.
struct Receiver {
    child: Child,
    dir: PathBuf,
    port: u16,
    out: PathBuf,
}

impl Receiver {
    fn start(dir: &Path, port: u16, ca: &Path, cert: &Path, key: &Path) -> Self {
        std::fs::create_dir_all(dir.join("work")).unwrap();
        let out = dir.join("received.log");
        let conf = dir.join("rsyslog.conf");
        std::fs::write(
            &conf,
            format!(
                "global(workDirectory=\"{work}\" maxMessageSize=\"64k\"\n\
                 \x20 DefaultNetstreamDriver=\"gtls\"\n\
                 \x20 DefaultNetstreamDriverCAFile=\"{ca}\"\n\
                 \x20 DefaultNetstreamDriverCertFile=\"{cert}\"\n\
                 \x20 DefaultNetstreamDriverKeyFile=\"{key}\")\n\
                 module(load=\"imtcp\" StreamDriver.Name=\"gtls\" StreamDriver.Mode=\"1\"\n\
                 \x20 StreamDriver.AuthMode=\"x509/certvalid\")\n\
                 input(type=\"imtcp\" address=\"127.0.0.1\" port=\"{port}\")\n\
                 template(name=\"line\" type=\"string\" string=\"%structured-data% %msg%\\n\")\n\
                 action(type=\"omfile\" file=\"{out}\" template=\"line\")\n",
                work = dir.join("work").display(),
                ca = ca.display(),
                cert = cert.display(),
                key = key.display(),
                out = out.display(),
            ),
        )
        .unwrap();
        let child = Command::new("rsyslogd")
            .args(["-n", "-f"])
            .arg(&conf)
            .arg("-i")
            .arg(dir.join("rsyslogd.pid"))
            .spawn()
            .unwrap();
        let up = (0..200).any(|_| {
            std::thread::sleep(Duration::from_millis(50));
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(up, "rsyslogd did not listen on {port}");
        Self {
            child,
            dir: dir.to_owned(),
            port,
            out,
        }
    }

    /// SIGTERM (rsyslogd flushes and exits), then wait.
    fn stop(mut self) -> (PathBuf, u16, PathBuf) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
        (self.dir.clone(), self.port, self.out.clone())
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The sequence numbers the receiver wrote to `out` so far, in arrival order, each with its
/// payload.
fn received(out: &Path) -> Vec<(i64, String)> {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("[medid@32473 seq=\"")?;
            let (seq, body) = rest.split_once("\"] ")?;
            Some((seq.parse().ok()?, body.to_owned()))
        })
        .collect()
}

/// `GET /readyz` through curl.
fn readyz(server: &TestServer) -> String {
    let out = Command::new("curl")
        .args(["-sS", &format!("{}/readyz", server.http_url)])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until the receiver holds every sequence number through the ledger's size.
async fn delivered(server: &TestServer, out: &Path) -> Vec<(i64, String)> {
    use medid::store::MerkleLog;
    let mut last = Vec::new();
    for _ in 0..300 {
        let size = server.ca.store.tree_size().await.unwrap() as i64;
        last = received(out);
        let seen: std::collections::BTreeSet<i64> = last.iter().map(|(s, _)| *s).collect();
        if size > 0 && (1..=size).all(|s| seen.contains(&s)) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let size = server.ca.store.tree_size().await.unwrap();
    panic!(
        "the receiver did not get every event through {size}: {} lines, last {:?}",
        last.len(),
        last.last().map(|(s, _)| s)
    );
}

async fn accesses(server: &TestServer, gateway: &common::Identity, from: usize, n: usize) {
    let mut audit =
        medid::proto::audit_service_client::AuditServiceClient::new(server.channel(gateway).await);
    for i in from..from + n {
        audit
            .record_access(common::access_event("ATNA-1", i as i64))
            .await
            .expect("access recorded");
    }
}

/// The files both ends of a feed use, all from medid.
struct Credentials {
    /// The receiver's trust anchors for the feed's certificate: the root and operational CA.
    chain: PathBuf,
    feed_cert: PathBuf,
    feed_key: PathBuf,
    /// The receiver serves medid's own TLS certificate (it names localhost).
    arr_cert: PathBuf,
    arr_key: PathBuf,
    /// What the feed trusts the receiver's certificate by.
    root: PathBuf,
}

/// A medid with a device (`ATNA-1`) and a gateway that reports accesses to it, and the
/// certificates of a feed (principal `feed_id`) and its receiver, in `work`. Returns the
/// stopped server's directory to start it again with a feed.
async fn credentials(
    work: &Path,
    feed_id: &str,
) -> (tempfile::TempDir, Credentials, common::Identity) {
    let server = TestServer::start_in(tempfile::tempdir().unwrap()).await;
    server.add_manufacturer("acme", &[]).await;
    let station = server.station("acme", "line-1").await;
    server.enroll(&station, "ATNA-1").await;
    let feed = server.issue(PrincipalRole::Gateway, feed_id, "").await;
    let gateway = server.issue(PrincipalRole::Gateway, "icu-gw", "").await;
    let creds = Credentials {
        chain: work.join("ca-chain.pem"),
        feed_cert: work.join("feed.pem"),
        feed_key: work.join("feed.key"),
        arr_cert: work.join("arr.pem"),
        arr_key: work.join("arr.key"),
        root: server.pki("root-ca.pem"),
    };
    std::fs::write(
        &creds.chain,
        std::fs::read_to_string(server.pki("root-ca.pem")).unwrap()
            + &std::fs::read_to_string(server.pki("operational-ca.pem")).unwrap(),
    )
    .unwrap();
    std::fs::write(&creds.feed_cert, &feed.cert_pem).unwrap();
    medid::files::write_atomic(
        &creds.feed_key,
        feed.key_pem.as_bytes(),
        medid::files::Access::Private,
    )
    .unwrap();
    std::fs::copy(server.pki("server.pem"), &creds.arr_cert).unwrap();
    std::fs::copy(server.pki("server.key"), &creds.arr_key).unwrap();
    (server.stop().await, creds, gateway)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_reaches_rsyslog_once_in_order_across_restarts_of_both() {
    if !rsyslog_present() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let (dir, creds, gateway) = credentials(work.path(), "atna-feed").await;

    let port = free_port();
    let receiver = Receiver::start(
        &work.path().join("arr"),
        port,
        &creds.chain,
        &creds.arr_cert,
        &creds.arr_key,
    );
    let atna = AtnaConfig {
        syslog: format!("127.0.0.1:{port}"),
        server_name: Some("localhost".into()),
        ca_file: creds.root.clone(),
        client_cert: creds.feed_cert.clone(),
        client_key: creds.feed_key.clone(),
        hostname: Some("medid-test".into()),
        batch: 50,
        resend: 20,
    };
    let with_feed = |c: &mut medid::config::Config| c.atna = Some(atna.clone());
    let server = TestServer::start_with(dir, common::system_now(), with_feed).await;
    accesses(&server, &gateway, 0, 120).await;
    let first = delivered(&server, &receiver.out).await;
    assert!(first.len() >= 120);

    // The receiver restarts: the feed reconnects and sends what it may have lost again. It
    // reads its certificate again for each connection: while the file is missing it says so,
    // and a renewed certificate put in its place is used without a restart.
    let (arr_dir, port, out) = receiver.stop();
    std::fs::remove_file(&creds.feed_cert).unwrap();
    accesses(&server, &gateway, 120, 60).await;
    let receiver = Receiver::start(
        &arr_dir,
        port,
        &creds.chain,
        &creds.arr_cert,
        &creds.arr_key,
    );
    let said = (0..100)
        .find_map(|_| {
            std::thread::sleep(Duration::from_millis(100));
            let ready = readyz(&server);
            ready.contains("atna.client_cert: reading").then_some(ready)
        })
        .expect("the feed reports the missing certificate");
    assert!(said.contains("disconnected"), "{said}");
    let renewed = server
        .issue(PrincipalRole::Gateway, "atna-feed-2", "")
        .await;
    medid::files::write_atomic(
        &creds.feed_key,
        renewed.key_pem.as_bytes(),
        medid::files::Access::Private,
    )
    .unwrap();
    std::fs::write(&creds.feed_cert, &renewed.cert_pem).unwrap();
    delivered(&server, &out).await;

    // medid restarts: the feed resumes from its durable cursor.
    let dir = server.stop().await;
    let server = TestServer::start_with(dir, common::system_now(), with_feed).await;
    accesses(&server, &gateway, 180, 40).await;
    let all = delivered(&server, &out).await;

    // Exactly once and in order, after de-duplication by sequence number.
    let mut seen = std::collections::BTreeSet::new();
    let mut order = Vec::new();
    for (seq, body) in &all {
        if seen.insert(*seq) {
            order.push((*seq, body.clone()));
        }
    }
    let size = {
        use medid::store::MerkleLog;
        server.ca.store.tree_size().await.unwrap() as i64
    };
    let seqs: Vec<i64> = order.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        seqs,
        (1..=size).collect::<Vec<_>>(),
        "every event once, in order"
    );
    assert!(all.len() > order.len(), "the reconnections sent some again");
    // Each payload is the event's FHIR AuditEvent.
    for (seq, body) in &order {
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["id"], format!("medid-{seq}"), "{body}");
    }
    let bodies: Vec<String> = order.iter().map(|(_, b)| b.clone()).collect();
    if let Some(result) = common::fhir_validate(&bodies) {
        assert_eq!(result, Ok(bodies.len()));
    }
    // The lag is visible while caught up as zero, and the feed as connected.
    let metrics = common::scrape_metrics(&server);
    let value = |name: &str| {
        metrics
            .iter()
            .find(|s| s.name == name)
            .map(|s| s.value)
            .unwrap_or_else(|| panic!("{name} missing"))
    };
    assert_eq!(value("medid_atna_connected"), 1.0);
    assert_eq!(value("medid_atna_sent_through"), size as f64);
    assert_eq!(value("medid_atna_lag_events"), 0.0);
    let ready = readyz(&server);
    assert!(
        ready.contains(&format!(
            "atna syslog:127.0.0.1:{}: connected, 0 events behind",
            receiver.port
        )),
        "{ready}"
    );
    drop(receiver);
}

/// A FHIR endpoint for RESTful ATNA: Python's http.server over TLS requiring a client
/// certificate, parsing each posted Bundle with `fhir.resources` (FHIR R4) and writing the id
/// of every entry it stores to `out`, one line each. The first `fail_first` posts are answered
/// 503, as a repository that is down (a `refused` line each).
const FHIR_RECEIVER: &str = r#"
import json, ssl, sys, http.server
from fhir.resources.bundle import Bundle
port, cert, key, ca, out, fail = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], [int(sys.argv[6])]
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def answer(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if fail[0] > 0:
            fail[0] -= 1
            with open(out, "a") as f:
                f.write("refused\n")
            return self.answer(503, {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "transient"}]})
        try:
            bundle = json.loads(body)
            Bundle.parse_obj(bundle)
            assert bundle["type"] == "transaction"
            ids = []
            for entry in bundle["entry"]:
                assert entry["request"]["method"] == "PUT", entry["request"]
                assert entry["request"]["url"] == "AuditEvent/" + entry["resource"]["id"]
                ids.append(entry["resource"]["id"])
        except Exception as e:
            return self.answer(400, {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "invalid", "diagnostics": str(e)}]})
        with open(out, "a") as f:
            f.write("".join(i + "\n" for i in ids))
        self.answer(200, {"resourceType": "Bundle", "type": "transaction-response", "entry": [{"response": {"status": "200 OK"}} for _ in ids]})
    def log_message(self, *args):
        pass
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
context.load_verify_locations(ca)
context.verify_mode = ssl.CERT_REQUIRED
server = http.server.HTTPServer(("127.0.0.1", port), Handler)
server.socket = context.wrap_socket(server.socket, server_side=True)
print("ready", flush=True)
server.serve_forever()
"#;

/// The ids the FHIR receiver stored, in arrival order, as sequence numbers.
fn stored(out: &Path) -> Vec<i64> {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("medid-")?.parse().ok())
        .collect()
}

async fn stored_all(server: &TestServer, out: &Path) -> Vec<i64> {
    use medid::store::MerkleLog;
    for _ in 0..300 {
        let size = server.ca.store.tree_size().await.unwrap() as i64;
        let got = stored(out);
        let seen: std::collections::BTreeSet<i64> = got.iter().copied().collect();
        if (1..=size).all(|s| seen.contains(&s)) {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "the FHIR endpoint did not get every event: {:?}",
        stored(out).last()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restful_atna_posts_every_event_once_in_order_through_an_outage_and_a_restart() {
    let Ok(python) = std::env::var("MEDID_FHIR_PYTHON") else {
        eprintln!("MEDID_FHIR_PYTHON not set: RESTful ATNA test skipped (.ci/run sets it)");
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let (dir, creds, gateway) = credentials(work.path(), "atna-rest").await;

    // The endpoint, down for its first two posts.
    let port = free_port();
    let out = work.path().join("stored.txt");
    let mut receiver = Command::new(&python)
        .args(["-c", FHIR_RECEIVER, &port.to_string()])
        .arg(&creds.arr_cert)
        .arg(&creds.arr_key)
        .arg(&creds.chain)
        .arg(&out)
        .arg("2")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(receiver.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready");
    }
    let rest = medid::config::AtnaRestConfig {
        url: format!("https://localhost:{port}/fhir"),
        ca_file: creds.root,
        client_cert: Some(creds.feed_cert),
        client_key: Some(creds.feed_key),
        batch: 40,
    };
    let with_feed = |c: &mut medid::config::Config| c.atna_rest = Some(rest.clone());
    let server = TestServer::start_with(dir, common::system_now(), with_feed).await;
    accesses(&server, &gateway, 0, 150).await;
    stored_all(&server, &out).await;
    let dir = server.stop().await;
    let server = TestServer::start_with(dir, common::system_now(), with_feed).await;
    accesses(&server, &gateway, 150, 30).await;
    let got = stored_all(&server, &out).await;
    let _ = receiver.kill();
    let _ = receiver.wait();
    let refused = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .filter(|l| *l == "refused")
        .count();
    assert_eq!(refused, 2, "the outage was met, and waited out");

    let size = {
        use medid::store::MerkleLog;
        server.ca.store.tree_size().await.unwrap() as i64
    };
    let mut seen = std::collections::BTreeSet::new();
    let first: Vec<i64> = got.iter().copied().filter(|s| seen.insert(*s)).collect();
    assert_eq!(
        first,
        (1..=size).collect::<Vec<_>>(),
        "every event, in order"
    );
    // Acknowledged posts: a repeat only for a Bundle answered while medid stopped before it
    // recorded its cursor (at most one Bundle), and a PUT of the same id stores nothing new.
    assert!(
        got.len() as i64 - size <= 40,
        "{} posted for {size} events",
        got.len()
    );
    let metrics = common::scrape_metrics(&server);
    let lag = metrics
        .iter()
        .find(|s| s.name == "medid_atna_lag_events")
        .expect("the feed's lag is exported");
    assert_eq!(lag.value, 0.0);
    assert_eq!(
        lag.labels["destination"],
        format!("https://localhost:{port}/fhir")
    );
}
