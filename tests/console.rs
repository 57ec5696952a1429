//! The compliance console in a real browser: headless Chromium (Debian `chromium`) with the
//! auditor's certificate in an NSS database (imported with NSS's `pk12util` from the PKCS#12
//! file `medid admin issue --p12` wrote) and Chromium's AutoSelectCertificateForUrls policy,
//! which `.ci/run` installs. The
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

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{cmd:?}: {text}");
    text
}

/// A browser profile (an NSS database in its own HOME) holding the key and certificate of the
/// PKCS#12 file `p12` (imported with NSS's `pk12util`), and trusting medid's root for the
/// console's TLS certificate.
fn nss_profile(server: &TestServer, name: &str, p12: &Path, password: &str) -> PathBuf {
    let home = server.dir.path().join(format!("browser-{name}"));
    let nssdb = home.join(".pki/nssdb");
    std::fs::create_dir_all(&nssdb).unwrap();
    let db = format!("sql:{}", nssdb.display());
    run(Command::new("certutil").args(["-N", "--empty-password", "-d", &db]));
    run(Command::new("pk12util")
        .args(["-W", password, "-d", &db, "-i"])
        .arg(p12));
    run(Command::new("certutil")
        .args(["-A", "-n", "medid-root", "-t", "C,,", "-d", &db, "-i"])
        .arg(server.pki("root-ca.pem")));
    home
}

/// [`nss_profile`] for an identity issued in the test, its PKCS#12 made by OpenSSL.
fn profile(server: &TestServer, who: &Identity, name: &str) -> PathBuf {
    let dir = server.dir.path().join(format!("identity-{name}"));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key, p12) = (dir.join("me.pem"), dir.join("me.key"), dir.join("me.p12"));
    std::fs::write(&cert, &who.cert_pem).unwrap();
    std::fs::write(&key, &who.key_pem).unwrap();
    run(Command::new("openssl")
        .args(["pkcs12", "-export", "-passout", "pass:", "-in"])
        .arg(&cert)
        .arg("-inkey")
        .arg(&key)
        .arg("-out")
        .arg(&p12));
    nss_profile(server, name, &p12, "")
}

/// `medid admin issue ARGS` as the bootstrap admin, against `server`.
fn admin_issue(server: &TestServer, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_medid"))
        .args(["admin", "issue"])
        .args(args)
        .arg("--server")
        .arg(&server.url)
        .arg("--ca")
        .arg(server.pki("root-ca.pem"))
        .arg("--cert")
        .arg(server.pki("admin.pem"))
        .arg("--key")
        .arg(server.pki("admin.key"))
        .output()
        .unwrap()
}

/// Checks what every page must have for keyboard and screen-reader users: a language, a skip
/// link to the main content, a label for every form field, a title for every chart, no
/// positive tabindex (the reading order is the tab order) and only native controls (links,
/// buttons, fields, summaries) taking clicks, which the keyboard reaches.
fn accessible(dom: &str) {
    assert!(dom.contains("<html lang=\"en\""), "no language: {dom}");
    assert!(dom.contains("href=\"#main\""), "no skip link: {dom}");
    assert!(dom.contains("<main id=\"main\""), "no main landmark: {dom}");
    for (tag, close) in [("<input", ">"), ("<select", ">")] {
        for chunk in dom.split(tag).skip(1) {
            let element = &chunk[..chunk.find(close).unwrap()];
            let id = element
                .split("id=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or_else(|| panic!("a field without an id: {tag}{element}"));
            assert!(
                dom.contains(&format!("<label for=\"{id}\"")),
                "field {id} has no label"
            );
        }
    }
    for chunk in dom.split("<svg").skip(1) {
        let element = &chunk[..chunk.find("</svg>").unwrap()];
        assert!(element.contains("role=\"img\""), "a chart without role=img");
        assert!(element.contains("<title id="), "a chart without a title");
        assert!(element.contains("aria-labelledby="), "a chart not labelled");
    }
    assert!(!dom.contains("tabindex=\"1"), "a positive tabindex");
    assert!(!dom.contains("onclick"), "a click handler on a non-control");
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
    // The auditor's certificate as an operator makes it: `medid admin issue --p12`, checked
    // by OpenSSL and imported into the browser's NSS database by pk12util.
    let files = server.dir.path().join("auditor-files");
    let password = server.dir.path().join("p12-password");
    std::fs::write(&password, "correct horse battery\n").unwrap();
    let out = admin_issue(
        &server,
        &[
            "--role",
            "auditor",
            "--id",
            "compliance",
            "--p12",
            "--p12-password-file",
        ],
    );
    assert!(!out.status.success(), "--p12-password-file needs its file");
    let mut args = vec!["--role", "auditor", "--id", "compliance", "--p12"];
    let (pw, dir) = (password.to_str().unwrap(), files.to_str().unwrap());
    args.extend(["--p12-password-file", pw, "--out", dir]);
    let out = admin_issue(&server, &args);
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    let p12 = files.join("compliance.p12");
    assert!(text.contains(&p12.display().to_string()), "{text}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&p12).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the PKCS#12 file holds a key");
    let info = run(Command::new("openssl")
        .args(["pkcs12", "-info", "-noout", "-passin"])
        .arg(format!("file:{pw}"))
        .arg("-in")
        .arg(&p12));
    assert!(info.contains("MAC: sha256"), "{info}");
    assert!(info.contains("PBES2, PBKDF2, AES-256-CBC"), "{info}");
    let certs = run(Command::new("openssl")
        .args(["pkcs12", "-nokeys", "-passin"])
        .arg(format!("file:{pw}"))
        .arg("-in")
        .arg(&p12));
    assert!(
        certs.contains("subject=OU = auditor, CN = compliance"),
        "{certs}"
    );
    assert!(
        certs.contains("subject=O = medid.local, CN = medid operational CA"),
        "the chain is in it: {certs}"
    );
    // A password too short to protect a key is refused before anything is issued.
    std::fs::write(&password, "short\n").unwrap();
    let mut args = vec!["--role", "auditor", "--id", "compliance-2", "--p12"];
    args.extend(["--p12-password-file", pw, "--out", dir]);
    let out = admin_issue(&server, &args);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("at least 8 characters"),
        "{out:?}"
    );
    assert!(!files.join("compliance-2.pem").exists());
    let home = nss_profile(&server, "auditor", &p12, "correct horse battery");
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
    assert!(dom.contains("id=\"devices-active\">1<"), "{dom}");
    assert!(dom.contains("id=\"devices-decommissioned\">0<"), "{dom}");
    assert!(dom.contains("id=\"chart-ending\""), "{dom}");
    // The histogram counts what the card counts.
    let ending_30 = dom
        .split("id=\"ending-30\">")
        .nth(1)
        .and_then(|r| r.split('<').next())
        .unwrap()
        .to_owned();
    assert!(
        dom.contains(&format!("{ending_30} active certificates end in all")),
        "{dom}"
    );
    assert!(dom.contains("id=\"chart-access\""), "{dom}");
    assert!(dom.contains("5 access events in all"), "{dom}");
    assert!(dom.contains("id=\"chart-refused\""), "{dom}");
    accessible(&dom);

    // The inventory: searched by serial, and the device's own page.
    let dom = browse(
        browser,
        &home,
        &format!("{base}/devices?serial=PUMP"),
        "devices",
    );
    assert!(dom.contains(">PUMP-1</a>"), "{dom}");
    accessible(&dom);
    let dom = browse(
        browser,
        &home,
        &format!("{base}/devices?serial=NOPE"),
        "devices-none",
    );
    assert!(dom.contains("No device matches."), "{dom}");
    let dom = browse(
        browser,
        &home,
        &format!("{base}/devices/acme/PUMP-1"),
        "device",
    );
    assert!(dom.contains("id=\"device-state\">active<"), "{dom}");
    assert!(dom.contains("id=\"certificates\""), "{dom}");
    assert!(dom.contains("id=\"rotation\""), "{dom}");
    assert!(
        dom.contains("device-identity"),
        "the birth certificate is listed: {dom}"
    );
    assert_eq!(dom.matches("<td>nurse-").count(), 5, "{dom}");
    assert!(dom.contains("id=\"chart-device-access\""), "{dom}");
    accessible(&dom);

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
    assert!(dom.contains("5 matching events in all"), "{dom}");
    assert!(dom.contains("id=\"download-bundle\""), "{dom}");
    accessible(&dom);
    // A gateway's reports over time: the chart of a search by actor.
    let dom = browse(
        browser,
        &home,
        &format!("{base}/audit?actor=spiffe%3A%2F%2Fmedid.local%2Fgateway%2Ficu-gw"),
        "audit-gateway",
    );
    assert!(dom.contains("5 matching events in all"), "{dom}");

    // The downloads, exactly the filtered events: the bundle verifies offline with `medid
    // audit verify`, the CSV has a row and the FHIR file a valid AuditEvent for each.
    let (cert, key) = (files.join("compliance.pem"), files.join("compliance.key"));
    let download = |format: &str| {
        let out = server.dir.path().join(format!("download.{format}"));
        run(Command::new("curl")
            .args(["-sS", "--fail", "--cacert"])
            .arg(server.pki("root-ca.pem"))
            .arg("--cert")
            .arg(&cert)
            .arg("--key")
            .arg(&key)
            .arg("-o")
            .arg(&out)
            .arg(format!(
                "{base}/audit/export?action=data.access&format={format}"
            )));
        std::fs::read_to_string(&out).unwrap()
    };
    let bundle = download("jsonl");
    assert_eq!(bundle.matches("\"type\":\"event\"").count(), 5, "{bundle}");
    let verified = run(Command::new(env!("CARGO_BIN_EXE_medid"))
        .args(["audit", "verify"])
        .arg(server.dir.path().join("download.jsonl"))
        .arg("--key")
        .arg(server.pki("audit-signing.pub")));
    assert!(verified.contains("5"), "{verified}");
    let csv = download("csv");
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows.len(), 6, "{csv}");
    assert!(rows[0].starts_with("seq,recorded_at"), "{csv}");
    assert!(
        rows[1..].iter().all(|r| r.contains("\"data.access\"")),
        "{csv}"
    );
    let fhir: Vec<String> = download("fhir").lines().map(str::to_owned).collect();
    assert_eq!(fhir.len(), 5);
    if let Some(valid) = common::fhir_validate(&fhir) {
        assert_eq!(valid, Ok(5));
    }
    let bad = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(server.pki("root-ca.pem"))
        .arg("--cert")
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .arg(format!("{base}/audit/export?format=xml"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&bad.stdout), "400");
    let exports = server
        .audit_events()
        .await
        .iter()
        .filter(|e| {
            e.event.action == medid::audit::Action::AuditExport
                && e.event.actor.uri == "spiffe://medid.local/auditor/compliance"
        })
        .count();
    assert_eq!(exports, 3, "each download is an audited export");

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

/// Access-anomaly flags, computed by the server's watcher as events arrive: eight ordinary
/// days of a pump's accesses, then a night access, a new user, a busy day, and an access to a
/// decommissioned pump by that pump's own (revoked) identity. The flags page lists each with
/// the event behind it; a restart neither repeats nor loses a count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_anomalies_are_flagged_as_events_arrive() {
    // Started ten days ago, so that the certificates are valid for the whole story.
    let start = common::system_now() - time::Duration::days(10);
    // A first contact counts after 150 accesses here (the default is 20): `[anomaly]` reaches
    // the rules and the page's legend.
    let server = TestServer::start_with(tempfile::tempdir().unwrap(), start, |c| {
        c.anomaly.contact_baseline = 150;
    })
    .await;
    server.add_manufacturer("acme", &[]).await;
    let station = server.station("acme", "line-1").await;
    server.enroll(&station, "PUMP-1").await;
    server.enroll(&station, "PUMP-2").await;
    let gateway = server.issue(PrincipalRole::Gateway, "icu-gw", "").await;
    let auditor = server.issue(PrincipalRole::Auditor, "compliance", "").await;
    let (channel, _) = common::connect_at_test_time(&server, &gateway).await;
    let mut gw = AuditServiceClient::new(channel);
    let day0 = (start + time::Duration::days(1)).replace_time(time::macros::time!(09:00));
    let report = |at: time::OffsetDateTime, serial: &str, user: &str| {
        server.clock.set(at);
        let mut e = common::access_event(serial, 0);
        e.user_id = user.into();
        e.occurred_at = Some(prost_types::Timestamp {
            seconds: at.unix_timestamp(),
            nanos: 0,
        });
        e
    };
    for day in 0..8 {
        for n in 0..20i64 {
            let at = day0 + time::Duration::days(day) + time::Duration::minutes(n * 24);
            let user = ["nurse-1", "nurse-2", "nurse-3"][n as usize % 3];
            gw.record_access(report(at, "PUMP-1", user)).await.unwrap();
        }
    }
    let day8 = day0 + time::Duration::days(8);
    let night = gw
        .record_access(report(day8 - time::Duration::hours(6), "PUMP-1", "nurse-1"))
        .await
        .unwrap()
        .into_inner()
        .seq;
    let stranger = gw
        .record_access(report(day8, "PUMP-1", "nurse-99"))
        .await
        .unwrap()
        .into_inner()
        .seq;
    for n in 0..80 {
        let at = day8 + time::Duration::hours(1) + time::Duration::seconds(n * 30);
        gw.record_access(report(at, "PUMP-1", "nurse-2"))
            .await
            .unwrap();
    }
    medid::proto::lifecycle_service_client::LifecycleServiceClient::new(
        server.channel(&server.admin()).await,
    )
    .decommission_device(proto::DecommissionDeviceRequest {
        device: Some(proto::DeviceRef {
            manufacturer_id: "acme".into(),
            serial: "PUMP-2".into(),
        }),
        reason: 0,
    })
    .await
    .unwrap();
    let pump2 = "spiffe://medid.local/device/acme/PUMP-2";
    let late = day8 + time::Duration::hours(3);
    let decommissioned = gw
        .record_access(report(late, "PUMP-2", pump2))
        .await
        .unwrap()
        .into_inner()
        .seq;

    // The watcher catches up on its own (it polls every second).
    watcher_reaches(&server, decommissioned).await;
    assert_eq!(server.count("SELECT COUNT(*) FROM access_flags").await, 5);
    assert_eq!(
        server
            .count(&format!(
                "SELECT COUNT(*) FROM access_flags WHERE kind = 'unusual-hour' AND seq = {night}"
            ))
            .await,
        1
    );
    assert_eq!(
        server
            .count(&format!(
                "SELECT COUNT(*) FROM access_flags WHERE kind = 'first-contact' AND seq = {stranger}"
            ))
            .await,
        1
    );
    assert_eq!(
        server
            .count("SELECT COUNT(*) FROM access_flags WHERE kind = 'volume'")
            .await,
        1,
        "once for the busy day"
    );
    for kind in ["decommissioned-device", "revoked-holder"] {
        assert_eq!(
            server
                .count(&format!(
                    "SELECT COUNT(*) FROM access_flags WHERE kind = '{kind}' AND seq = {decommissioned}"
                ))
                .await,
            1,
            "{kind}"
        );
    }
    // Its lag is in /metrics (0 once caught up; a background event may come between).
    let mut lag = None;
    for _ in 0..100 {
        lag = common::metric(
            &common::scrape_metrics(&server),
            "medid_anomaly_lag_events",
            &[],
        );
        if lag == Some(0.0) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(lag, Some(0.0), "caught up");
    let pump1_accesses = "SELECT accesses FROM access_profiles WHERE device_uri = 'spiffe://medid.local/device/acme/PUMP-1'";
    assert_eq!(server.count(pump1_accesses).await, 160 + 2 + 80);

    // The flags page, in the browser.
    if let Some(browser) = chromium() {
        let home = profile(&server, &auditor, "flags");
        let base = server.console_url.clone();
        let dom = browse(browser, &home, &format!("{base}/flags"), "flags");
        assert_eq!(dom.matches("<td class=\"flag\">").count(), 5, "{dom}");
        for kind in [
            "unusual-hour",
            "first-contact",
            "volume",
            "decommissioned-device",
            "revoked-holder",
        ] {
            assert!(
                dom.contains(&format!("<td class=\"flag\">{kind}</td>")),
                "{kind}: {dom}"
            );
        }
        assert!(dom.contains("that day's accesses"), "{dom}");
        assert!(dom.contains("already had 150 accesses or more"), "{dom}");
        assert!(dom.contains("hours and days are UTC"), "{dom}");
        assert!(
            dom.contains("0 of the device's 160 earlier accesses"),
            "{dom}"
        );
        assert!(
            dom.contains(&format!("href=\"/audit/event/{night}\"")),
            "{dom}"
        );
        accessible(&dom);
        let dom = browse(
            browser,
            &home,
            &format!("{base}/flags?kind=volume"),
            "flags-volume",
        );
        assert_eq!(dom.matches("<td class=\"flag\">").count(), 1, "{dom}");
        let dom = browse(browser, &home, &format!("{base}/"), "overview-flags");
        assert!(dom.contains("id=\"flags-day\""), "{dom}");
    }

    // A restart resumes from the cursor: one more access counts once, nothing is flagged again.
    let dir = server.stop().await;
    let server = TestServer::start_in(dir).await;
    server.clock.set(late + time::Duration::minutes(1));
    let (channel, _) = common::connect_at_test_time(&server, &gateway).await;
    let last = AuditServiceClient::new(channel)
        .record_access(report_at(late + time::Duration::minutes(1)))
        .await
        .unwrap()
        .into_inner()
        .seq;
    watcher_reaches(&server, last).await;
    assert_eq!(server.count(pump1_accesses).await, 160 + 2 + 80 + 1);
    assert_eq!(server.count("SELECT COUNT(*) FROM access_flags").await, 5);
    server.stop().await;
}

/// Waits (a minute at most) until the anomaly watcher's cursor has passed `seq`.
async fn watcher_reaches(server: &TestServer, seq: i64) {
    let sql = format!(
        "SELECT COUNT(*) FROM feed_cursors WHERE destination = 'anomaly-flags' AND sent_through >= {seq}"
    );
    for _ in 0..600 {
        if server.count(&sql).await == 1 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the anomaly watcher did not reach event {seq}");
}

/// An ordinary access to PUMP-1 by nurse-1 at `at`.
fn report_at(at: time::OffsetDateTime) -> proto::AccessEvent {
    let mut e = common::access_event("PUMP-1", 0);
    e.user_id = "nurse-1".into();
    e.occurred_at = Some(prost_types::Timestamp {
        seconds: at.unix_timestamp(),
        nanos: 0,
    });
    e
}
