//! The compliance console in a real browser: headless Chromium (Debian `chromium`) with the
//! auditor's certificate in an NSS database (imported with NSS's `pk12util` from a PKCS#12 made
//! by OpenSSL) and Chromium's AutoSelectCertificateForUrls policy, which `.ci/run` installs. The
//! pages are read as Chromium rendered them, after their scripts ran; screenshots are kept in
//! `target/console-screenshots/`. Without Chromium or the policy the browser tests are skipped,
//! unless `MEDID_REQUIRE_CHROMIUM` is set (as `.ci/run` does), when they fail.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Identity, TestServer};
use medid::proto::{self, audit_service_client::AuditServiceClient, PrincipalRole};

const POLICY: &str = "/etc/chromium/policies/managed/medid-console-tests.json";

fn chromium() -> Option<&'static str> {
    let found = Command::new("chromium")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
        && Path::new(POLICY).exists();
    if found {
        return Some("chromium");
    }
    assert!(
        std::env::var_os("MEDID_REQUIRE_CHROMIUM").is_none(),
        "MEDID_REQUIRE_CHROMIUM is set but chromium or its policy {POLICY} is missing (.ci/run installs both)"
    );
    eprintln!("chromium or {POLICY} missing: the console's browser tests are skipped");
    None
}

/// A browser profile (an NSS database in its own HOME) holding `who`'s certificate and key,
/// and trusting medid's root for the console's TLS certificate.
fn profile(server: &TestServer, who: &Identity, name: &str) -> PathBuf {
    let home = server.dir.path().join(format!("browser-{name}"));
    let nssdb = home.join(".pki/nssdb");
    std::fs::create_dir_all(&nssdb).unwrap();
    let (cert, key, p12) = (
        home.join("me.pem"),
        home.join("me.key"),
        home.join("me.p12"),
    );
    std::fs::write(&cert, &who.cert_pem).unwrap();
    std::fs::write(&key, &who.key_pem).unwrap();
    let run = |cmd: &mut Command| {
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(Command::new("openssl")
        .args(["pkcs12", "-export", "-passout", "pass:", "-in"])
        .arg(&cert)
        .arg("-inkey")
        .arg(&key)
        .arg("-out")
        .arg(&p12));
    let db = format!("sql:{}", nssdb.display());
    run(Command::new("certutil").args(["-N", "--empty-password", "-d", &db]));
    run(Command::new("pk12util")
        .args(["-W", "", "-d", &db, "-i"])
        .arg(&p12));
    run(Command::new("certutil")
        .args(["-A", "-n", "medid-root", "-t", "C,,", "-d", &db, "-i"])
        .arg(server.pki("root-ca.pem")));
    home
}

fn screenshots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The page at `url` as Chromium rendered it, after its scripts ran (the DOM), with a
/// screenshot of it in `target/console-screenshots/<shot>.png`, from one run of the browser.
fn browse(browser: &str, home: &Path, url: &str, shot: &str) -> String {
    let png = screenshots().join(format!("{shot}.png"));
    let out = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--virtual-time-budget=2000",
            "--window-size=1280,1400",
        ])
        .arg(format!("--screenshot={}", png.display()))
        .arg("--dump-dom")
        .arg(url)
        .env("HOME", home)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn some_accesses(server: &TestServer) {
    server.add_manufacturer("acme", &[]).await;
    let station = server.station("acme", "line-1").await;
    server.enroll(&station, "PUMP-1").await;
    let gateway = server.issue(PrincipalRole::Gateway, "icu-gw", "").await;
    let mut gw = AuditServiceClient::new(server.channel(&gateway).await);
    for n in 0..5 {
        gw.record_access(common::access_event("PUMP-1", n))
            .await
            .unwrap();
    }
    // A checkpoint covering them.
    gw.get_checkpoint(proto::GetCheckpointRequest {})
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auditor_searches_and_verifies_events_in_the_browser() {
    let Some(browser) = chromium() else { return };
    let server = TestServer::start().await;
    some_accesses(&server).await;
    let auditor = server.issue(PrincipalRole::Auditor, "compliance", "").await;
    let home = profile(&server, &auditor, "auditor");
    let base = server.console_url.clone();
    let views_before = server
        .audit_events()
        .await
        .iter()
        .filter(|e| e.event.action == medid::audit::Action::AuditQuery)
        .count();

    let dom = browse(browser, &home, &format!("{base}/"), "overview");
    assert!(dom.contains("Signed in by certificate as"), "{dom}");
    assert!(
        dom.contains("spiffe://medid.local/auditor/compliance"),
        "{dom}"
    );
    assert!(dom.contains("id=\"integrity\""), "{dom}");
    assert!(dom.contains(">intact<"), "{dom}");

    let dom = browse(
        browser,
        &home,
        &format!("{base}/audit?action=data.access"),
        "audit-search",
    );
    assert!(dom.contains("id=\"results\""), "{dom}");
    let rows = dom.matches("<td>data.access</td>").count();
    assert_eq!(rows, 5, "{dom}");
    assert!(
        !dom.contains("<td>device.enroll</td>"),
        "the filter holds: {dom}"
    );

    // The first access event's page: verified by the page's own script.
    let seq = server
        .audit_events()
        .await
        .iter()
        .find(|e| e.event.action == medid::audit::Action::DataAccess)
        .unwrap()
        .seq;
    let dom = browse(
        browser,
        &home,
        &format!("{base}/audit/event/{seq}"),
        "event-verified",
    );
    assert!(dom.contains("data-verified=\"yes\""), "{dom}");
    assert!(dom.contains("id=\"verdict\" data-result=\"pass\""), "{dom}");
    assert!(dom.contains("valid Ed25519 signature"), "{dom}");

    // Each view of audit data is itself an audit event.
    let views_after = server
        .audit_events()
        .await
        .iter()
        .filter(|e| {
            e.event.action == medid::audit::Action::AuditQuery
                && e.event.actor.uri == "spiffe://medid.local/auditor/compliance"
        })
        .count();
    assert!(
        views_after >= views_before + 2,
        "{views_before} → {views_after}"
    );

    // An event edited in the database fails verification in its page.
    let pool = server.db().await;
    sqlx::raw_sql(common::by_backend(
        "DROP TRIGGER audit_events_no_update;",
        "DROP TRIGGER audit_events_no_update ON audit_events;",
    ))
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(common::by_backend(
        "UPDATE audit_events SET detail = replace(detail, 'Patient/0', 'Patient/9') WHERE seq = ?",
        "UPDATE audit_events SET detail = replace(detail, 'Patient/0', 'Patient/9') WHERE seq = $1",
    ))
    .bind(seq)
    .execute(&pool)
    .await
    .unwrap();
    let dom = browse(
        browser,
        &home,
        &format!("{base}/audit/event/{seq}"),
        "event-edited",
    );
    assert!(
        dom.contains("Patient/9"),
        "the page shows the edited event: {dom}"
    );
    assert!(dom.contains("data-verified=\"no\""), "{dom}");
    assert!(dom.contains("Verification FAILED"), "{dom}");
    assert!(dom.contains("was changed after it was logged"), "{dom}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_station_certificate_or_none_gets_no_audit_data() {
    let Some(browser) = chromium() else { return };
    let server = TestServer::start().await;
    some_accesses(&server).await;
    let station = server.station("acme", "line-2").await;
    let home = profile(&server, &station, "station");
    let dom = browse(
        browser,
        &home,
        &format!("{}/audit", server.console_url),
        "station-refused",
    );
    assert!(dom.contains("Refused"), "{dom}");
    assert!(!dom.contains("data.access"), "{dom}");
    // No certificate at all: curl gets 401 and nothing of the ledger.
    let out = Command::new("curl")
        .args(["-sS", "-w", "\n%{http_code}", "--cacert"])
        .arg(server.pki("root-ca.pem"))
        .arg(format!("{}/audit", server.console_url))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.ends_with("\n401"), "{text}");
    assert!(!text.contains("data.access"), "{text}");
    server.stop().await;
}
