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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_reaches_rsyslog_once_in_order_across_restarts_of_both() {
    if !rsyslog_present() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();

    // The certificates, from medid: the receiver serves medid's TLS certificate (it names
    // localhost); the feed authenticates with a certificate medid issued for it.
    let server = TestServer::start_in(dir).await;
    server.add_manufacturer("acme", &[]).await;
    let station = server.station("acme", "line-1").await;
    server.enroll(&station, "ATNA-1").await;
    let feed_id = server.issue(PrincipalRole::Gateway, "atna-feed", "").await;
    let gateway = server.issue(PrincipalRole::Gateway, "icu-gw", "").await;
    let pki = |name: &str| server.pki(name);
    let chain = work.path().join("ca-chain.pem");
    std::fs::write(
        &chain,
        std::fs::read_to_string(pki("root-ca.pem")).unwrap()
            + &std::fs::read_to_string(pki("operational-ca.pem")).unwrap(),
    )
    .unwrap();
    let (feed_cert, feed_key) = (work.path().join("feed.pem"), work.path().join("feed.key"));
    std::fs::write(&feed_cert, &feed_id.cert_pem).unwrap();
    medid::files::write_atomic(
        &feed_key,
        feed_id.key_pem.as_bytes(),
        medid::files::Access::Private,
    )
    .unwrap();
    let (arr_cert, arr_key) = (work.path().join("arr.pem"), work.path().join("arr.key"));
    std::fs::copy(pki("server.pem"), &arr_cert).unwrap();
    std::fs::copy(pki("server.key"), &arr_key).unwrap();
    let root = pki("root-ca.pem");
    let dir = server.stop().await;

    let port = free_port();
    let receiver = Receiver::start(&work.path().join("arr"), port, &chain, &arr_cert, &arr_key);
    let atna = AtnaConfig {
        syslog: format!("127.0.0.1:{port}"),
        server_name: Some("localhost".into()),
        ca_file: root.clone(),
        client_cert: feed_cert.clone(),
        client_key: feed_key.clone(),
        hostname: Some("medid-test".into()),
        batch: 50,
        resend: 20,
    };
    let with_feed = |c: &mut medid::config::Config| c.atna = Some(atna.clone());
    let server = TestServer::start_with(dir, common::system_now(), with_feed).await;
    accesses(&server, &gateway, 0, 120).await;
    let first = delivered(&server, &receiver.out).await;
    assert!(first.len() >= 120);

    // The receiver restarts: the feed reconnects and sends what it may have lost again.
    let (arr_dir, port, out) = receiver.stop();
    accesses(&server, &gateway, 120, 60).await;
    let receiver = Receiver::start(&arr_dir, port, &chain, &arr_cert, &arr_key);
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
    drop(receiver);
}
