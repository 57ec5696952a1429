//! PostgreSQL faults: unreachable at start, and lost while running. Runs when
//! `MEDID_TEST_POSTGRES_URL` is set (`.ci/run` sets it); fails, never skips, if that server is
//! unreachable. The outage is made by a TCP proxy between medid and PostgreSQL that this test
//! cuts and restores, so the shared server keeps running for every other test.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::TestServer;
use medid::proto::{audit_service_client::AuditServiceClient, PrincipalRole};
use tokio::net::{TcpListener, TcpStream};
use tonic::Code;

/// A TCP proxy to PostgreSQL that can drop every connection and refuse new ones.
struct Proxy {
    addr: std::net::SocketAddr,
    down: Arc<AtomicBool>,
    links: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Proxy {
    async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let down = Arc::new(AtomicBool::new(false));
        let links: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (d, l) = (down.clone(), links.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                if d.load(Ordering::SeqCst) {
                    continue; // dropped: the database is "down"
                }
                let upstream = upstream.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut out) = TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                l.lock().unwrap().push(task.abort_handle());
            }
        });
        Self { addr, down, links }
    }

    /// The database goes away: open connections are cut, new ones refused.
    fn cut(&self) {
        self.down.store(true, Ordering::SeqCst);
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    fn restore(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}

/// host:port of a postgres:// URL.
fn authority(url: &str) -> String {
    let rest = url.split_once("://").unwrap().1;
    let rest = rest.rsplit_once('@').map(|(_, r)| r).unwrap_or(rest);
    rest.split(['/', '?']).next().unwrap().to_owned()
}

fn told_to_run() -> bool {
    if std::env::var_os("MEDID_TEST_POSTGRES_URL").is_none() {
        eprintln!(
            "MEDID_TEST_POSTGRES_URL not set: PostgreSQL fault tests skipped (.ci/run sets it)"
        );
        return false;
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_database_is_unavailable_and_it_recovers_without_a_restart() {
    if !told_to_run() {
        return;
    }
    let direct = common::new_postgres_schema().await;
    let upstream = authority(&direct);
    let proxy = Proxy::start(upstream.clone()).await;
    let via_proxy = direct.replacen(&upstream, &proxy.addr.to_string(), 1);
    let server = TestServer::start_with(tempfile::tempdir().unwrap(), common::system_now(), |c| {
        c.database_url = via_proxy;
    })
    .await;
    server.add_manufacturer("acme", &[]).await;
    let station = server.station("acme", "line-1").await;
    server.enroll(&station, "PUMP-1").await;
    let gateway = server.issue(PrincipalRole::Gateway, "icu-gw", "").await;
    let mut gw = AuditServiceClient::new(server.channel(&gateway).await);
    let mut acked = Vec::new();
    acked.push(
        gw.record_access(common::access_event("PUMP-1", 1))
            .await
            .expect("recorded")
            .into_inner()
            .seq,
    );
    assert_eq!(server.readiness().await, 200);

    // The database goes away: calls are refused as UNAVAILABLE, readiness is false.
    proxy.cut();
    for n in 2..4 {
        let err = gw
            .record_access(common::access_event("PUMP-1", n))
            .await
            .expect_err("no database, no ack");
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        assert!(err.message().contains("unavailable"), "{err:?}");
    }
    assert_eq!(server.readiness().await, 503);

    // It comes back: the same server serves again, without a restart.
    proxy.restore();
    let mut recovered = false;
    for _ in 0..50 {
        if server.readiness().await == 200 {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(recovered, "readiness came back");
    for n in 4..6 {
        acked.push(
            gw.record_access(common::access_event("PUMP-1", n))
                .await
                .expect("recorded again")
                .into_inner()
                .seq,
        );
    }

    // Exactly what was acknowledged is in the log: nothing from the outage.
    let events = server.audit_events().await;
    let accesses: Vec<i64> = events
        .iter()
        .filter(|e| e.event.action == medid::audit::Action::DataAccess)
        .map(|e| e.seq)
        .collect();
    assert_eq!(accesses, acked);
    let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as i64).collect::<Vec<_>>(),
        "gap-free"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_at_start_is_a_clear_error_and_a_failed_exit() {
    if !told_to_run() {
        return;
    }
    // A port nothing listens on.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("medid.toml");
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{}\"\nhttp_listen = \"127.0.0.1:{}\"\nest_enabled = false\nconsole_enabled = false\n\
             database_url = \"postgres://postgres:secret@127.0.0.1:{port}/test\"\n\
             pki_dir = \"{}\"\ncreate_dev_pki = true\naudit_checkpoint_dir = \"{}\"\n",
            free(),
            free(),
            dir.path().join("pki").display(),
            dir.path().join("checkpoints").display(),
        ),
    )
    .unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_medid"))
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .output()
        .await
        .unwrap();
    assert!(!out.status.success(), "serve must fail");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("opening database"), "{stderr}");
    assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{stderr}");
    assert!(
        !stderr.contains("secret"),
        "the password is never printed: {stderr}"
    );
}
