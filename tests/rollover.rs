//! Issuing-CA rollover with the injected clock: `ca rotate` before the operational CA ends,
//! an overlap in which both generations are trusted, published and answer OCSP, and the end
//! of the old generation. Checked with real clients (mTLS at the test's time, curl) and
//! independent tools (openssl verify, crl, ocsp).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{connect_at_test_time, try_connect_at_test_time, Identity, TestServer};
use medid::clock::Clock;
use medid::issuance::{IssuerId, IssuerName};
use medid::proto::{
    self, admin_service_client::AdminServiceClient,
    lifecycle_service_client::LifecycleServiceClient, PrincipalRole,
};
use medid::store::CertificateRecords;
use time::Duration;

/// Connects and makes one call; false when the TLS layer or the call refuses.
async fn works(server: &TestServer, who: &Identity) -> bool {
    match try_connect_at_test_time(server, who).await {
        Ok((channel, _)) => common::a_call_works(channel).await,
        Err(_) => false,
    }
}

async fn issue(server: &TestServer, admin: &Identity, role: PrincipalRole, id: &str) -> Identity {
    let (channel, _) = connect_at_test_time(server, admin).await;
    let (csr, key_pem) = common::csr_p256();
    let issued = AdminServiceClient::new(channel)
        .issue_principal_certificate(proto::IssuePrincipalCertificateRequest {
            role: role as i32,
            id: id.into(),
            manufacturer_id: String::new(),
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

async fn bundle(server: &TestServer, who: &Identity) -> proto::TrustBundle {
    let (channel, _) = connect_at_test_time(server, who).await;
    LifecycleServiceClient::new(channel)
        .get_trust_bundle(proto::GetTrustBundleRequest {})
        .await
        .unwrap()
        .into_inner()
}

fn subjects(pem: &str) -> Vec<String> {
    medid::pem::parse_certificates(pem.as_bytes())
        .unwrap()
        .iter()
        .map(|der| {
            let (_, c) = x509_parser::parse_x509_certificate(der).unwrap();
            c.subject().to_string()
        })
        .collect()
}

fn issuer_of(who: &Identity) -> String {
    let der = medid::pem::parse_certificates(who.cert_pem.as_bytes()).unwrap()[0].to_vec();
    let (_, c) = x509_parser::parse_x509_certificate(&der).unwrap();
    c.issuer().to_string()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("tool runs");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn write(dir: &Path, name: &str, content: impl AsRef<[u8]>) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p
}

fn attime(server: &TestServer) -> String {
    server.clock.now().unix_timestamp().to_string()
}

/// `openssl verify` of a leaf under the root and one issuing CA, at the test's time.
fn verifies_under(server: &TestServer, work: &Path, who: &Identity, ca: &str) -> String {
    let leaf = write(work, "leaf.pem", &who.cert_pem);
    run(Command::new("openssl")
        .args([
            "verify",
            "-x509_strict",
            "-attime",
            &attime(server),
            "-CAfile",
        ])
        .arg(server.pki("root-ca.pem"))
        .arg("-untrusted")
        .arg(server.pki(ca))
        .arg(leaf))
}

/// Fetches `/crl/LABEL.crl` and has openssl check its signature with that generation's CA.
fn crl_text(server: &TestServer, work: &Path, label: &str, ca: &str) -> String {
    let der = work.join(format!("{label}.crl"));
    run(Command::new("curl")
        .args(["-sSf", "-o"])
        .arg(&der)
        .arg(format!("{}/crl/{label}.crl", server.http_url)));
    let chain = write(
        work,
        "chain.pem",
        std::fs::read_to_string(server.pki("root-ca.pem")).unwrap()
            + &std::fs::read_to_string(server.pki(ca)).unwrap(),
    );
    run(Command::new("openssl")
        .args([
            "crl", "-inform", "DER", "-noout", "-text", "-verify", "-CAfile",
        ])
        .arg(chain)
        .arg("-in")
        .arg(der))
}

/// `openssl ocsp` against one generation's responder, at the test's time.
fn ocsp(server: &TestServer, work: &Path, who: &Identity, label: &str, ca: &str) -> String {
    let leaf = write(work, "ocsp-leaf.pem", &who.cert_pem);
    run(Command::new("openssl")
        .args(["ocsp", "-attime", &attime(server), "-validity_period"])
        .arg((200 * 86_400).to_string())
        .arg("-issuer")
        .arg(server.pki(ca))
        .arg("-CAfile")
        .arg(server.pki("root-ca.pem"))
        .args(["-url", &format!("{}/ocsp/{label}", server.http_url)])
        .arg("-cert")
        .arg(leaf))
}

/// The certificates of EST `/cacerts` (certs-only PKCS#7), by subject, through curl and
/// openssl. `-k`: the service's TLS certificate was issued at the test's time, which curl does
/// not share; what is checked here is the content.
fn est_cacerts(server: &TestServer, work: &Path) -> Vec<String> {
    let b64 = work.join("cacerts.b64");
    run(Command::new("curl")
        .args(["-sSfk", "-o"])
        .arg(&b64)
        .arg(format!("{}/.well-known/est/cacerts", server.est_url)));
    let der = work.join("cacerts.p7");
    run(Command::new("openssl")
        .args(["base64", "-d", "-A", "-in"])
        .arg(&b64)
        .arg("-out")
        .arg(&der));
    run(Command::new("openssl")
        .args(["pkcs7", "-inform", "DER", "-print_certs", "-noout", "-in"])
        .arg(&der))
    .lines()
    .filter(|l| l.starts_with("subject="))
    .map(str::to_owned)
    .collect()
}

/// The samples of `/metrics` as (name, `ca` label, `standing` label, value).
fn ca_metrics(server: &TestServer, _work: &Path) -> Vec<(String, String, String, f64)> {
    common::scrape_metrics(server)
        .into_iter()
        .map(|s| {
            let label = |k: &str| s.labels.get(k).cloned().unwrap_or_default();
            (s.name.clone(), label("ca"), label("standing"), s.value)
        })
        .collect()
}

fn sample(
    metrics: &[(String, String, String, f64)],
    name: &str,
    ca: &str,
) -> Option<(String, f64)> {
    metrics
        .iter()
        .find(|(n, c, _, _)| n == name && c == ca)
        .map(|(_, _, standing, v)| (standing.clone(), *v))
}

// Multi-threaded: curl and openssl run as blocking child processes while the server answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operational_ca_rolls_over_while_every_principal_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let work = work.path();
    // A 120-day operational CA, so its whole life fits the test.
    let server = TestServer::start_with(dir, common::system_now(), |c| {
        c.operational_ca_validity_days = 120;
        c.ca_expiry_warning_days = 60;
    })
    .await;
    let admin = server.admin();
    let old_gateway = issue(&server, &admin, PrincipalRole::Gateway, "gw-old").await;
    server.add_manufacturer("acme", &["X"]).await;
    let station = server.station("acme", "line-1").await;
    let (device, _) = server.enroll(&station, "SN-1").await;
    assert!(issuer_of(&old_gateway).contains("CN=medid operational CA"));

    // Day 70, inside the warning window (50 days left): the log and the metric warn.
    server.clock.advance(Duration::days(70));
    let m = ca_metrics(&server, work);
    let warned = "medid_ca_expiry_warning";
    assert_eq!(
        sample(&m, warned, "operational"),
        Some(("current".into(), 1.0)),
        "{m:?}"
    );
    assert_eq!(sample(&m, warned, "root"), Some(("root".into(), 0.0)));
    assert_eq!(
        sample(&m, warned, "device-identity"),
        Some(("current".into(), 0.0))
    );
    assert_eq!(
        subjects(&bundle(&server, &admin).await.operational_ca_pem).len(),
        1
    );
    let files = medid::issuance::bootstrap::PkiFiles::new(&server.config.pki_dir);
    let made = medid::issuance::bootstrap::rotate(
        &files,
        &medid::issuance::keys::KeySource::Files,
        IssuerName::Operational,
        &server.pki("root-ca.key"),
        Duration::days(365),
        server.clock.now(),
    )
    .unwrap();
    assert_eq!(made.id.label(), "operational-2");
    let loaded = server.ca.load_new_generations().await.unwrap();
    assert_eq!(loaded.len(), 1);
    server.ca.maintain().await.unwrap();
    let rollovers: Vec<_> = server
        .audit_events()
        .await
        .into_iter()
        .filter(|e| e.event.action == medid::audit::Action::CaRollover)
        .collect();
    assert_eq!(rollovers.len(), 1, "one event for the rollover");
    assert_eq!(rollovers[0].event.target, "urn:medid:ca:operational-2");
    // The warning ends; the older generation is reported as previous, with its end.
    let m = ca_metrics(&server, work);
    assert_eq!(
        sample(&m, warned, "operational"),
        Some(("previous".into(), 0.0)),
        "{m:?}"
    );
    assert_eq!(
        sample(&m, warned, "operational-2"),
        Some(("current".into(), 0.0))
    );
    let ends = "medid_ca_not_after_timestamp_seconds";
    assert_eq!(
        sample(&m, ends, "operational-2").map(|(_, v)| v as i64),
        Some(made.not_after.unix_timestamp())
    );

    // Overlap: both generations are in the trust bundle and in EST cacerts, newest first.
    let both = subjects(&bundle(&server, &admin).await.operational_ca_pem);
    assert_eq!(both.len(), 2, "{both:?}");
    assert!(both[0].ends_with("CN=medid operational CA 2"), "{both:?}");
    let est = est_cacerts(&server, work);
    assert_eq!(
        est.len(),
        4,
        "root, device-identity and two operational: {est:?}"
    );
    assert!(
        est.iter().any(|s| s.contains("medid operational CA 2")),
        "{est:?}"
    );

    // New certificates come from the new key and chain to the new CA.
    let new_gateway = issue(&server, &admin, PrincipalRole::Gateway, "gw-new").await;
    assert!(issuer_of(&new_gateway).ends_with("CN=medid operational CA 2"));
    let verdict = verifies_under(&server, work, &new_gateway, "operational-ca-2.pem");
    assert!(verdict.contains(": OK"), "{verdict}");
    let new_admin = issue(&server, &admin, PrincipalRole::Admin, "admin-2").await;
    let (channel, _) = connect_at_test_time(&server, &device).await;
    let renewed = LifecycleServiceClient::new(channel)
        .request_operational_certificate(proto::RequestOperationalCertificateRequest {
            csr: common::csr_p256().0,
        })
        .await
        .expect("the device renews with its birth certificate")
        .into_inner();
    let operational = Identity {
        cert_pem: renewed.certificate_pem.clone(),
        key_pem: String::new(),
    };
    assert!(issuer_of(&operational).ends_with("CN=medid operational CA 2"));
    // The service's own TLS certificate, due at day 60 and renewed by the upkeep after the
    // rollover, comes from the new CA too.
    let server_pem = std::fs::read_to_string(server.pki("server.pem")).unwrap();
    assert!(subjects(&server_pem)[1].ends_with("CN=medid operational CA 2"));

    // Existing principals keep working; both generations answer for what they signed.
    assert!(works(&server, &old_gateway).await, "old-generation gateway");
    assert!(works(&server, &new_gateway).await, "new-generation gateway");
    assert!(works(&server, &device).await, "device birth certificate");
    let text = ocsp(
        &server,
        work,
        &old_gateway,
        "operational",
        "operational-ca.pem",
    );
    assert!(
        text.contains(": good") && text.contains("Response verify OK"),
        "{text}"
    );
    let text = ocsp(
        &server,
        work,
        &new_gateway,
        "operational-2",
        "operational-ca-2.pem",
    );
    assert!(
        text.contains(": good") && text.contains("Response verify OK"),
        "{text}"
    );

    // Revoking an old-generation certificate goes onto the old generation's CRL, which the
    // old key still signs; both CRLs verify.
    let (channel, _) = connect_at_test_time(&server, &admin).await;
    LifecycleServiceClient::new(channel)
        .revoke(common::revoke_for_key_compromise(&common::serial_of(
            &old_gateway,
        )))
        .await
        .unwrap();
    let old_serial = common::serial_of(&old_gateway).to_uppercase();
    let old_crl = crl_text(&server, work, "operational", "operational-ca.pem");
    assert!(old_crl.contains("verify OK"), "{old_crl}");
    assert!(old_crl.contains(&old_serial), "{old_crl}");
    // Each CRL signed is an audit event of its generation.
    let events = server.audit_events().await;
    for label in ["operational", "operational-2"] {
        assert!(
            events
                .iter()
                .any(|e| e.event.action == medid::audit::Action::CrlSign
                    && e.event.target == format!("urn:medid:ca:{label}")),
            "a crl.sign event for {label}"
        );
    }
    let new_crl = crl_text(&server, work, "operational-2", "operational-ca-2.pem");
    assert!(new_crl.contains("verify OK"), "{new_crl}");
    assert!(!new_crl.contains(&old_serial), "{new_crl}");
    let text = ocsp(
        &server,
        work,
        &old_gateway,
        "operational",
        "operational-ca.pem",
    );
    assert!(text.contains(": revoked"), "{text}");
    assert!(!works(&server, &old_gateway).await, "revoked: refused");

    // A restart loads both generations; the database knows the new one.
    let config = server.config.clone();
    let now = server.clock.now();
    let dir = server.stop().await;
    let server = TestServer::start_with(dir, now, |c| *c = config).await;
    assert!(works(&server, &new_gateway).await, "after a restart");
    assert_eq!(
        server
            .ca
            .authority
            .current(IssuerName::Operational)
            .id
            .generation,
        2
    );

    // Day 121: the old CA has ended, and with it everything it signed. It leaves the bundle
    // and the verifier; the new generation carries on.
    server.clock.advance(Duration::days(51));
    server.ca.maintain().await.unwrap();
    let one = subjects(&bundle(&server, &new_admin).await.operational_ca_pem);
    assert_eq!(one.len(), 1, "{one:?}");
    assert!(one[0].ends_with("CN=medid operational CA 2"));
    assert_eq!(est_cacerts(&server, work).len(), 3);
    let m = ca_metrics(&server, work);
    assert_eq!(
        sample(&m, "medid_ca_expiry_warning", "operational"),
        None,
        "{m:?}"
    );
    assert!(
        works(&server, &new_gateway).await,
        "new generation after the old one ended"
    );
    assert!(
        !works(&server, &admin).await,
        "the first admin ended with the old CA"
    );
    let ended = server
        .ca
        .store
        .certificate(
            IssuerId::first(IssuerName::Operational),
            &medid::domain::CertSerial::parse_hex(&common::serial_of(&admin)).unwrap(),
        )
        .await
        .unwrap()
        .unwrap();
    assert!(ended.not_after <= server.clock.now());
}

#[test]
fn ca_rotate_on_the_command_line_makes_the_next_generation_and_refuses_a_wrong_root_key() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let medid = env!("CARGO_BIN_EXE_medid");
    let out = Command::new(medid)
        .args(["ca", "init", "--dir"])
        .arg(&pki)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let rotate = |extra: &[&str]| {
        Command::new(medid)
            .args(["ca", "rotate", "--issuer", "operational", "--dir"])
            .arg(&pki)
            .args(extra)
            .output()
            .unwrap()
    };
    let out = rotate(&["--lifetime-days", "400"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{out:?}");
    assert!(text.contains("generation 2"), "{text}");
    assert!(text.contains("/crl/operational-2.crl"), "{text}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(pki.join("operational-ca-2.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let cert = std::fs::read(pki.join("operational-ca-2.pem")).unwrap();
    let der = medid::pem::parse_certificates(&cert).unwrap().remove(0);
    let (_, c) = x509_parser::parse_x509_certificate(&der).unwrap();
    let days =
        (c.validity().not_after.to_datetime() - c.validity().not_before.to_datetime()).whole_days();
    assert_eq!(days, 400, "an hour of backdating, 400 days ahead");

    // The admin's key is not the root's: refused, nothing written.
    let out = rotate(&["--root-key", pki.join("admin.key").to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not the key of"), "{err}");
    assert!(!pki.join("operational-ca-3.pem").exists());
    assert!(!pki.join("operational-ca-3.key").exists());
}

/// `medid ca revoke-issuer` with the CLI, as a key ceremony with the root key brought in from
/// offline.
fn ceremony(server: &TestServer, args: &[&str], root_key: Option<&Path>) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_medid"));
    cmd.arg("ca")
        .args(args)
        .arg("--dir")
        .arg(&server.config.pki_dir);
    if let Some(key) = root_key {
        cmd.arg("--root-key").arg(key);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// `/crl/root.crl` through curl, checked with the root certificate by openssl.
fn root_crl_text(server: &TestServer, work: &Path) -> String {
    let der = work.join("root.crl");
    let _ = std::fs::remove_file(&der);
    run(Command::new("curl")
        .args(["-sSf", "-o"])
        .arg(&der)
        .arg(format!("{}/crl/root.crl", server.http_url)));
    run(Command::new("openssl")
        .args([
            "crl", "-inform", "DER", "-noout", "-text", "-verify", "-CAfile",
        ])
        .arg(server.pki("root-ca.pem"))
        .arg("-in")
        .arg(der))
}

fn serial_hex(pem_path: &Path) -> String {
    let der = medid::pem::parse_certificates(&std::fs::read(pem_path).unwrap())
        .unwrap()
        .remove(0);
    let (_, c) = x509_parser::parse_x509_certificate(&der).unwrap();
    c.raw_serial().iter().map(|b| format!("{b:02X}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_offline_root_revokes_a_rolled_over_issuing_ca_through_its_crl() {
    let dir = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let work = work.path();
    let server = TestServer::start_with(dir, common::system_now(), |_| {}).await;
    let admin = server.admin();
    let old_gateway = issue(&server, &admin, PrincipalRole::Gateway, "gw-old").await;
    assert!(works(&server, &old_gateway).await);

    // `ca init` made the root's first CRL: number 1, nothing revoked, a year ahead, and the
    // service recorded it.
    let text = root_crl_text(&server, work);
    assert!(text.contains("verify OK"), "{text}");
    assert!(
        text.contains("X509v3 CRL Number: \n                1"),
        "{text}"
    );
    assert!(text.contains("No Revoked Certificates"), "{text}");
    let root_crl_events = |events: &[medid::audit::StoredEvent]| -> Vec<medid::audit::AuditEvent> {
        events
            .iter()
            .filter(|e| e.event.action == medid::audit::Action::CaRootCrl)
            .map(|e| e.event.clone())
            .collect()
    };
    assert_eq!(root_crl_events(&server.audit_events().await).len(), 1);

    // The root key goes offline: out of the PKI directory.
    let offline = work.join("root-ca.key");
    std::fs::rename(server.pki("root-ca.key"), &offline).unwrap();
    let root_crl_before = std::fs::read(server.pki("root.crl")).unwrap();

    // The current generation signs every new certificate: refused, nothing written.
    let (ok, text) = ceremony(
        &server,
        &["revoke-issuer", "--issuer", "operational"],
        Some(&offline),
    );
    assert!(!ok);
    assert!(
        text.contains("current generation") && text.contains("rotate"),
        "{text}"
    );
    assert_eq!(
        std::fs::read(server.pki("root.crl")).unwrap(),
        root_crl_before
    );

    let (ok, text) = ceremony(
        &server,
        &["rotate", "--issuer", "operational"],
        Some(&offline),
    );
    assert!(ok, "{text}");
    server.ca.maintain().await.unwrap();
    let new_gateway = issue(&server, &admin, PrincipalRole::Gateway, "gw-new").await;
    let new_admin = issue(&server, &admin, PrincipalRole::Admin, "admin-2").await;

    // Without the root key, or with another key, or naming no issuer: refused, nothing written.
    let (ok, text) = ceremony(&server, &["revoke-issuer", "--issuer", "operational"], None);
    assert!(!ok);
    assert!(text.contains("--root-key"), "{text}");
    let (ok, text) = ceremony(
        &server,
        &["revoke-issuer", "--issuer", "operational"],
        Some(&server.pki("admin.key")),
    );
    assert!(!ok);
    assert!(text.contains("not the key of"), "{text}");
    let (ok, text) = ceremony(
        &server,
        &["revoke-issuer", "--issuer", "operational-9"],
        Some(&offline),
    );
    assert!(!ok);
    assert!(text.contains("no issuing CA operational-9"), "{text}");
    assert_eq!(
        std::fs::read(server.pki("root.crl")).unwrap(),
        root_crl_before
    );

    // The CRL generation 1 signed, for openssl's check of the whole chain below.
    let leaf_crl = work.join("operational.crl");
    run(Command::new("curl")
        .args(["-sSf", "-o"])
        .arg(&leaf_crl)
        .arg(format!("{}/crl/operational.crl", server.http_url)));
    let chain_ok = |work: &Path| {
        let leaf = write(work, "old-gw.pem", &old_gateway.cert_pem);
        let root_der = work.join("root.crl");
        let root_pem_crl = work.join("root-crl.pem");
        run(Command::new("openssl")
            .args(["crl", "-inform", "DER", "-in"])
            .arg(&root_der)
            .arg("-out")
            .arg(&root_pem_crl));
        let leaf_pem_crl = work.join("operational-crl.pem");
        run(Command::new("openssl")
            .args(["crl", "-inform", "DER", "-in"])
            .arg(&leaf_crl)
            .arg("-out")
            .arg(&leaf_pem_crl));
        run(Command::new("openssl")
            .args(["verify", "-crl_check_all", "-CAfile"])
            .arg(server.pki("root-ca.pem"))
            .arg("-untrusted")
            .arg(server.pki("operational-ca.pem"))
            .arg("-CRLfile")
            .arg(&root_pem_crl)
            .arg("-CRLfile")
            .arg(&leaf_pem_crl)
            .arg(leaf))
    };
    let verdict = chain_ok(work);
    assert!(verdict.contains(": OK"), "{verdict}");

    let (ok, text) = ceremony(
        &server,
        &[
            "revoke-issuer",
            "--issuer",
            "operational",
            "--reason",
            "keyCompromise",
        ],
        Some(&offline),
    );
    assert!(ok, "{text}");
    assert!(text.contains("root CRL number 2"), "{text}");
    server.ca.maintain().await.unwrap();

    // Published: the generation's serial, keyCompromise, signed by the root; openssl now
    // refuses the chain through it, and the service refuses its certificates at TLS.
    let text = root_crl_text(&server, work);
    assert!(text.contains("verify OK"), "{text}");
    assert!(
        text.contains(&serial_hex(&server.pki("operational-ca.pem"))),
        "{text}"
    );
    assert!(text.contains("Key Compromise"), "{text}");
    let verdict = chain_ok(work);
    assert!(verdict.contains("certificate revoked"), "{verdict}");
    assert!(
        !works(&server, &old_gateway).await,
        "a revoked issuer's certificate"
    );
    assert!(works(&server, &new_gateway).await);
    assert!(
        !works(&server, &admin).await,
        "the first admin's issuer is revoked too"
    );
    // The service's own TLS certificate moved to the generation in service.
    let served = medid::pem::parse_certificates(&std::fs::read(server.pki("server.pem")).unwrap())
        .unwrap()
        .remove(0);
    let (_, served) = x509_parser::parse_x509_certificate(&served).unwrap();
    assert!(
        served
            .issuer()
            .to_string()
            .ends_with("CN=medid operational CA 2"),
        "{}",
        served.issuer()
    );
    let operational = subjects(&bundle(&server, &new_admin).await.operational_ca_pem);
    assert_eq!(operational.len(), 1, "{operational:?}");
    assert!(operational[0].ends_with("CN=medid operational CA 2"));
    let events = root_crl_events(&server.audit_events().await);
    assert_eq!(events.len(), 2, "one event per root CRL put in service");
    assert_eq!(events[1].detail["revoked_issuers"], "operational");
    assert_eq!(events[1].detail["number"], 2);
    let metrics = common::scrape_metrics(&server);
    let next = metrics
        .iter()
        .find(|s| s.name == "medid_root_crl_next_update_timestamp_seconds")
        .expect("the root CRL's nextUpdate is exported");
    let crl = server.ca.authority.root_crl().unwrap();
    assert_eq!(next.value as i64, crl.next_update.unix_timestamp());
    assert!(crl.next_update - crl.this_update >= Duration::days(365));

    // Twice: refused. The next CRL, signed at the ceremony, keeps the entry.
    let (ok, text) = ceremony(
        &server,
        &["revoke-issuer", "--issuer", "operational"],
        Some(&offline),
    );
    assert!(!ok);
    assert!(text.contains("was revoked by the root"), "{text}");
    let (ok, text) = ceremony(&server, &["sign-root-crl"], Some(&offline));
    assert!(ok, "{text}");
    assert!(
        text.contains("number 3 (1 issuing CA(s) revoked)"),
        "{text}"
    );
    server.ca.maintain().await.unwrap();
    assert_eq!(server.ca.authority.root_crl().unwrap().number, 3);

    // A root CRL signed by another key is refused by the upkeep; the one in service stays.
    let stranger = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_medid"))
        .args(["ca", "init", "--dir"])
        .arg(stranger.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    std::fs::copy(stranger.path().join("root.crl"), server.pki("root.crl")).unwrap();
    let refused = server.ca.maintain().await.unwrap_err();
    assert!(
        refused.to_string().contains("not a CRL of the root CA"),
        "{refused}"
    );
    let text = root_crl_text(&server, work);
    assert!(
        text.contains("verify OK") && text.contains("                3\n"),
        "{text}"
    );

    // With the root key online again, the upkeep re-signs the CRL at half its validity.
    std::fs::write(
        server.pki("root.crl"),
        &server.ca.authority.root_crl().unwrap().der,
    )
    .unwrap();
    std::fs::rename(&offline, server.pki("root-ca.key")).unwrap();
    server.ca.maintain().await.unwrap();
    assert_eq!(
        server.ca.authority.root_crl().unwrap().number,
        3,
        "not due yet"
    );
    server.clock.advance(Duration::days(183));
    server.ca.maintain().await.unwrap();
    let renewed = server.ca.authority.root_crl().unwrap();
    assert_eq!(renewed.number, 4);
    assert_eq!(
        renewed.this_update.unix_timestamp(),
        server.clock.now().unix_timestamp()
    );
    assert_eq!(renewed.entries.len(), 1);
}
