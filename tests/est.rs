//! EST (RFC 7030) end to end, with real external clients: curl and openssl for every
//! endpoint, strongSwan's `pki --estca` and `pki --est` for CA retrieval and re-enrollment.
//!
//! strongSwan (Debian `strongswan-pki`) is installed by `.ci/run`, which also sets
//! `MEDID_REQUIRE_EST_CLIENTS=1`: then a missing `pki` fails these tests. Without the variable
//! a machine lacking `pki` skips only the strongSwan steps, saying so.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Identity, TestServer};
use medid::audit::Outcome;
use medid::domain::ManufacturerId;
use medid::policy::est::{EstLabel, EstProfile};
use medid::proto::PrincipalRole;
use medid::store::Registry;

/// Files a client reads: PEMs written into a temp dir.
struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, content: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, content).unwrap();
        p
    }

    /// Writes an identity as NAME.pem / NAME.key.
    fn identity(&self, name: &str, who: &Identity) -> (PathBuf, PathBuf) {
        (
            self.write(&format!("{name}.pem"), &who.cert_pem),
            self.write(&format!("{name}.key"), &who.key_pem),
        )
    }
}

#[derive(Debug)]
struct Reply {
    status: u16,
    content_type: String,
    body: Vec<u8>,
}

impl Reply {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn port_of(url: &str) -> &str {
    url.rsplit(':').next().unwrap()
}

/// One HTTPS request with curl. `body` is sent as-is with `content_type` (None: curl's
/// default form type).
fn curl(
    server: &TestServer,
    files: &Files,
    path: &str,
    client: Option<(&Path, &Path)>,
    content_type: Option<&str>,
    body: Option<&[u8]>,
) -> Result<Reply, String> {
    let out = files.path(&format!("reply-{}", rand_suffix()));
    let mut cmd = Command::new("curl");
    cmd.arg("-sS")
        .arg("--resolve")
        .arg(format!("localhost:{}:127.0.0.1", port_of(&server.est_url)))
        .arg("--cacert")
        .arg(server.pki("root-ca.pem"))
        .arg("-o")
        .arg(&out)
        .arg("-w")
        .arg("%{http_code}\n%{content_type}");
    if let Some((cert, key)) = client {
        cmd.arg("--cert").arg(cert).arg("--key").arg(key);
    }
    if let Some(ct) = content_type {
        cmd.arg("-H").arg(format!("Content-Type: {ct}"));
    }
    if let Some(b) = body {
        let input = files.write(&format!("body-{}", rand_suffix()), b);
        cmd.arg("-H")
            .arg("Content-Transfer-Encoding: base64")
            .arg("--data-binary")
            .arg(format!("@{}", input.display()));
    }
    cmd.arg(format!("{}{path}", server.est_url));
    let output = cmd.output().expect("curl runs");
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    let meta = String::from_utf8(output.stdout).unwrap();
    let mut lines = meta.lines();
    Ok(Reply {
        status: lines.next().unwrap().parse().unwrap(),
        content_type: lines.next().unwrap_or_default().to_owned(),
        body: std::fs::read(&out).unwrap_or_default(),
    })
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().expect("command runs");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A P-256 key and a CSR with `subject` (OpenSSL `-subj` form), made by openssl:
/// (key path, base64 of the DER CSR wrapped at 64 columns, as openssl writes it).
fn openssl_csr(files: &Files, name: &str, subject: &str) -> (PathBuf, Vec<u8>) {
    let key = files.path(&format!("{name}.key"));
    let der = files.path(&format!("{name}.csr.der"));
    run(Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
        ])
        .arg(&key)
        .args(["-subj", subject, "-outform", "DER", "-out"])
        .arg(&der));
    let b64 = run(Command::new("openssl").arg("base64").arg("-in").arg(&der));
    (key, b64)
}

/// The certificates in a base64 certs-only PKCS#7 body, as PEM, via openssl.
fn pkcs7_certificates(files: &Files, name: &str, body: &[u8]) -> Vec<String> {
    let b64 = files.write(&format!("{name}.p7.b64"), body);
    let der = files.path(&format!("{name}.p7"));
    run(Command::new("openssl")
        .args(["base64", "-d", "-A", "-in"])
        .arg(&b64)
        .arg("-out")
        .arg(&der));
    let pem = run(Command::new("openssl")
        .args(["pkcs7", "-inform", "DER", "-print_certs", "-in"])
        .arg(&der));
    let pem = String::from_utf8(pem).unwrap();
    pem.split("-----END CERTIFICATE-----")
        .filter(|chunk| chunk.contains("-----BEGIN CERTIFICATE-----"))
        .map(|chunk| {
            let start = chunk.find("-----BEGIN CERTIFICATE-----").unwrap();
            format!("{}-----END CERTIFICATE-----\n", &chunk[start..])
        })
        .collect()
}

fn x509_field(files: &Files, pem: &str, field: &str) -> String {
    let p = files.write(&format!("x509-{}.pem", rand_suffix()), pem);
    let out = run(Command::new("openssl")
        .args(["x509", "-noout", "-nameopt", "RFC2253", field, "-in"])
        .arg(&p));
    String::from_utf8(out).unwrap().trim().to_owned()
}

/// `openssl verify -x509_strict -purpose sslclient` of `pem` under root + `issuing_ca`.
fn openssl_verifies(server: &TestServer, files: &Files, pem: &str, issuing_ca: &str) {
    let leaf = files.write(&format!("leaf-{}.pem", rand_suffix()), pem);
    let out = run(Command::new("openssl")
        .args(["verify", "-x509_strict", "-purpose", "sslclient", "-CAfile"])
        .arg(server.pki("root-ca.pem"))
        .arg("-untrusted")
        .arg(server.pki(issuing_ca))
        .arg(&leaf));
    assert!(String::from_utf8_lossy(&out).contains(": OK"));
}

/// strongSwan's `pki`, or None where it may be skipped (see the module comment).
fn strongswan() -> Option<&'static str> {
    let present = Command::new("pki")
        .arg("--help")
        .output()
        .map(|o| !o.stdout.is_empty() || !o.stderr.is_empty())
        .unwrap_or(false);
    if present {
        return Some("pki");
    }
    if std::env::var_os("MEDID_REQUIRE_EST_CLIENTS").is_some() {
        panic!("strongSwan `pki` is missing but MEDID_REQUIRE_EST_CLIENTS is set (apt-get install strongswan-pki)");
    }
    eprintln!(
        "strongSwan `pki` not installed: its interop steps are skipped (.ci/run installs it)"
    );
    None
}

async fn events(server: &TestServer) -> usize {
    server.audit_events().await.len()
}

async fn certificates(server: &TestServer) -> i64 {
    server.count("SELECT COUNT(*) FROM certificates").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cacerts_and_csrattrs_need_no_client_certificate() {
    let server = TestServer::start_with(tempfile::tempdir().unwrap(), common::system_now(), |c| {
        c.est_labels.insert(
            "pumps".into(),
            EstLabel {
                profile: EstProfile::DeviceBirth,
                model: Some("X".into()),
                udi_di: None,
            },
        );
    })
    .await;
    let files = Files::new();

    let all = curl(
        &server,
        &files,
        "/.well-known/est/cacerts",
        None,
        None,
        None,
    )
    .unwrap();
    assert_eq!(all.status, 200, "{}", all.text());
    assert_eq!(all.content_type, "application/pkcs7-mime");
    let certs = pkcs7_certificates(&files, "all", &all.body);
    assert_eq!(certs.len(), 3);
    let subjects: Vec<String> = certs
        .iter()
        .map(|c| x509_field(&files, c, "-subject"))
        .collect();
    for ca in ["root CA", "device-identity CA", "operational CA"] {
        assert!(
            subjects.iter().any(|s| s.contains(&format!("medid {ca}"))),
            "{subjects:?}"
        );
    }

    let labelled = curl(
        &server,
        &files,
        "/.well-known/est/pumps/cacerts",
        None,
        None,
        None,
    )
    .unwrap();
    let certs = pkcs7_certificates(&files, "pumps", &labelled.body);
    assert_eq!(certs.len(), 2, "root and the device-identity CA");

    let unknown = curl(
        &server,
        &files,
        "/.well-known/est/nope/cacerts",
        None,
        None,
        None,
    )
    .unwrap();
    assert_eq!(unknown.status, 404);
    assert!(unknown.content_type.starts_with("text/plain"));
    assert!(unknown.text().contains("pumps"), "{}", unknown.text());

    let attrs = curl(
        &server,
        &files,
        "/.well-known/est/csrattrs",
        None,
        None,
        None,
    )
    .unwrap();
    assert_eq!(attrs.status, 200);
    assert_eq!(attrs.content_type, "application/csrattrs");
    let b64 = files.write("attrs.b64", &attrs.body);
    let der = files.path("attrs.der");
    run(Command::new("openssl")
        .args(["base64", "-d", "-A", "-in"])
        .arg(&b64)
        .arg("-out")
        .arg(&der));
    let parsed = String::from_utf8(run(Command::new("openssl")
        .args(["asn1parse", "-inform", "DER", "-in"])
        .arg(&der)))
    .unwrap();
    for name in [
        "id-ecPublicKey",
        "prime256v1",
        "secp384r1",
        "ED25519",
        "rsaEncryption",
        "serialNumber",
    ] {
        assert!(
            parsed.contains(name),
            "{name} missing from csrattrs:\n{parsed}"
        );
    }

    // strongSwan fetches and checks the CA certificates itself.
    if let Some(pki) = strongswan() {
        let out = Command::new(pki)
            .args([
                "--estca",
                "--url",
                &format!("https://127.0.0.1:{}", port_of(&server.est_url)),
            ])
            .arg("--cacert")
            .arg(server.pki("root-ca.pem"))
            .arg("--caout")
            .arg(files.path("ss-ca.pem"))
            .args(["--outform", "pem"])
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "pki --estca failed:\n{log}");
        let root = std::fs::read_to_string(files.path("ss-ca.pem"))
            .unwrap_or_else(|e| panic!("strongSwan wrote no root ({e}):\n{log}"));
        assert_eq!(
            x509_field(&files, &root, "-fingerprint"),
            x509_field(&files, &server.root_pem(), "-fingerprint"),
            "strongSwan wrote medid's root as the root"
        );
        assert!(files.path("ss-ca-1.pem").exists() && files.path("ss-ca-2.pem").exists());
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_station_enrolls_a_device_that_then_gets_and_renews_operational_certificates() {
    let server = TestServer::start().await;
    server.add_manufacturer("acme", &["X"]).await;
    let station = server.station("acme", "line-1").await;
    let files = Files::new();
    let (station_cert, station_key) = files.identity("station", &station);

    // 1. The station enrolls device SN-EST-1: the serial comes from the CSR subject.
    let (device_key, csr) = openssl_csr(&files, "birth", "/serialNumber=SN-EST-1");
    assert!(csr.contains(&b'\n'), "openssl wraps base64 lines");
    let reply = curl(
        &server,
        &files,
        "/.well-known/est/simpleenroll",
        Some((&station_cert, &station_key)),
        Some("application/pkcs10"),
        Some(&csr),
    )
    .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        reply.content_type,
        "application/pkcs7-mime; smime-type=certs-only"
    );
    let certs = pkcs7_certificates(&files, "birth", &reply.body);
    assert_eq!(certs.len(), 1, "just the issued certificate");
    let birth = &certs[0];
    openssl_verifies(&server, &files, birth, "device-ca.pem");
    assert_eq!(
        x509_field(&files, birth, "-subject"),
        "subject=serialNumber=SN-EST-1,O=acme Medical Inc."
    );
    let device = server
        .ca
        .store
        .device(&ManufacturerId::parse("acme").unwrap(), "SN-EST-1")
        .await
        .unwrap();
    assert_eq!(device.model, "X", "the manufacturer's only model");
    let last = server.audit_events().await.pop().unwrap().event;
    assert_eq!(
        (last.action, last.outcome),
        (medid::audit::Action::DeviceEnroll, Outcome::Success)
    );

    // 2. The device, with its birth certificate, enrolls for an operational certificate.
    let birth_cert = files.write("birth.pem", birth);
    let (op_key, csr) = openssl_csr(&files, "op1", "/serialNumber=SN-EST-1");
    let reply = curl(
        &server,
        &files,
        "/.well-known/est/simpleenroll",
        Some((&birth_cert, &device_key)),
        Some("application/pkcs10"),
        Some(&csr),
    )
    .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    let op = pkcs7_certificates(&files, "op1", &reply.body).remove(0);
    openssl_verifies(&server, &files, &op, "operational-ca.pem");
    assert!(x509_field(&files, &op, "-issuer").contains("operational CA"));
    let mut serials = vec![x509_field(&files, &op, "-serial")];

    // 3. Re-enrollment with the operational certificate: same subject, new key, new serial
    //    every time. The CSR's base64 arrives with CRLF line breaks and no padding issue.
    let mut current = (files.write("op1.pem", &op), op_key);
    for round in 2..=3 {
        let (key, csr) = openssl_csr(
            &files,
            &format!("op{round}"),
            "/O=acme Medical Inc./serialNumber=SN-EST-1",
        );
        let crlf: Vec<u8> = String::from_utf8(csr)
            .unwrap()
            .replace('\n', "\r\n")
            .into_bytes();
        let reply = curl(
            &server,
            &files,
            "/.well-known/est/simplereenroll",
            Some((&current.0, &current.1)),
            Some("application/pkcs10"),
            Some(&crlf),
        )
        .unwrap();
        assert_eq!(reply.status, 200, "{}", reply.text());
        let cert = pkcs7_certificates(&files, &format!("op{round}"), &reply.body).remove(0);
        openssl_verifies(&server, &files, &cert, "operational-ca.pem");
        serials.push(x509_field(&files, &cert, "-serial"));
        current = (files.write(&format!("op{round}.pem"), &cert), key);
    }

    // 4. strongSwan re-enrolls with the current certificate and key, its DN taken by
    //    `pki --dn` from that certificate.
    if let Some(pki) = strongswan() {
        let dn = run(Command::new(pki).args(["--dn", "--in"]).arg(&current.0));
        let dn = String::from_utf8(dn)
            .unwrap()
            .trim()
            .trim_matches('"')
            .to_owned();
        let new_key = files.path("ss.key");
        let key = run(Command::new(pki).args([
            "--gen",
            "--type",
            "ecdsa",
            "--size",
            "256",
            "--outform",
            "pem",
        ]));
        std::fs::write(&new_key, key).unwrap();
        let req = run(Command::new(pki)
            .args(["--req", "--type", "priv", "--in"])
            .arg(&new_key)
            .args(["--dn", &dn, "--outform", "der"]));
        let req_path = files.write("ss.csr", req);
        let out = Command::new(pki)
            .args([
                "--est",
                "--url",
                &format!("https://127.0.0.1:{}", port_of(&server.est_url)),
            ])
            .arg("--cacert")
            .arg(server.pki("root-ca.pem"))
            .arg("--cacert")
            .arg(server.pki("operational-ca.pem"))
            .arg("--cert")
            .arg(&current.0)
            .arg("--key")
            .arg(&current.1)
            .arg("--in")
            .arg(&req_path)
            .args(["--outform", "pem"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pki --est failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(log.contains("Issued certificate is trusted"), "{log}");
        let cert = String::from_utf8(out.stdout).unwrap();
        assert!(cert.contains("BEGIN CERTIFICATE"), "{cert}");
        openssl_verifies(&server, &files, &cert, "operational-ca.pem");
        assert_eq!(
            x509_field(&files, &cert, "-subject"),
            "subject=serialNumber=SN-EST-1,O=acme Medical Inc."
        );
        serials.push(x509_field(&files, &cert, "-serial"));
    }
    let mut unique = serials.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        serials.len(),
        "a new serial every time: {serials:?}"
    );
    let renewals = server
        .audit_events()
        .await
        .into_iter()
        .filter(|e| {
            e.event.action == medid::audit::Action::CertificateRenew
                && e.event.outcome == Outcome::Success
        })
        .count();
    assert_eq!(renewals, serials.len(), "one renewal event per certificate");
    server.stop().await;
}

/// One refused request: its status, a phrase of its text/plain reason, and the proof that it
/// changed nothing but the audit log (exactly one event).
async fn assert_refused(
    server: &TestServer,
    reply: Reply,
    status: u16,
    phrase: &str,
    before: (usize, i64),
) {
    assert_eq!(reply.status, status, "{}", reply.text());
    assert!(
        reply.content_type.starts_with("text/plain"),
        "{}",
        reply.content_type
    );
    assert!(
        reply.text().contains(phrase),
        "expected {phrase:?} in {:?}",
        reply.text()
    );
    assert_eq!(certificates(server).await, before.1, "no certificate rows");
    // An unauthenticated caller's refusal is written in the interval's aggregate: write it now.
    server.ca.flush_anonymous_refusals().await.unwrap();
    assert_eq!(
        events(server).await,
        before.0 + 1,
        "exactly one audit event"
    );
    let last = server.audit_events().await.pop().unwrap().event;
    assert_ne!(last.outcome, Outcome::Success, "{last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_precise_audited_and_change_nothing() {
    let server = TestServer::start().await;
    server.add_manufacturer("acme", &["X"]).await;
    let files = Files::new();
    let station = server.station("acme", "line-1").await;
    let station_files = files.identity("station", &station);
    let station = Some((station_files.0.as_path(), station_files.1.as_path()));
    let auditor = server.issue(PrincipalRole::Auditor, "audit-1", "").await;
    let auditor = files.identity("auditor", &auditor);
    let (birth, _) = server
        .enroll(&server.station("acme", "line-2").await, "SN-R")
        .await;
    let birth = files.identity("birth", &birth);
    let (_, good_csr) = openssl_csr(&files, "good", "/serialNumber=SN-NEW");
    let enroll = "/.well-known/est/simpleenroll";
    let snapshot = || async { (events(&server).await, certificates(&server).await) };

    // Wrong content type → 415.
    let before = snapshot().await;
    let r = curl(
        &server,
        &files,
        enroll,
        station,
        Some("application/json"),
        Some(&good_csr),
    )
    .unwrap();
    assert_refused(&server, r, 415, "application/pkcs10", before).await;
    let before = snapshot().await;
    let r = curl(&server, &files, enroll, station, None, Some(&good_csr)).unwrap();
    assert_refused(&server, r, 415, "application/x-www-form-urlencoded", before).await;

    // Not base64; base64 of garbage; a CSR without the serialNumber; a weak key.
    let before = snapshot().await;
    let r = curl(
        &server,
        &files,
        enroll,
        station,
        Some("application/pkcs10"),
        Some(b"not*base64"),
    )
    .unwrap();
    assert_refused(&server, r, 400, "not base64", before).await;
    let before = snapshot().await;
    let r = curl(
        &server,
        &files,
        enroll,
        station,
        Some("application/pkcs10"),
        Some(b"MAMCAQU="),
    )
    .unwrap();
    assert_refused(&server, r, 400, "CSR refused", before).await;
    let (_, no_serial) = openssl_csr(&files, "noserial", "/CN=pump");
    let before = snapshot().await;
    let r = curl(
        &server,
        &files,
        enroll,
        station,
        Some("application/pkcs10"),
        Some(&no_serial),
    )
    .unwrap();
    assert_refused(&server, r, 400, "serialNumber", before).await;
    let weak_der = files.path("weak.der");
    run(Command::new("openssl")
        .args(["req", "-new", "-newkey", "rsa:1024", "-nodes", "-keyout"])
        .arg(files.path("weak.key"))
        .args(["-subj", "/serialNumber=SN-WEAK", "-outform", "DER", "-out"])
        .arg(&weak_der));
    let weak = run(Command::new("openssl")
        .arg("base64")
        .arg("-in")
        .arg(&weak_der));
    let before = snapshot().await;
    let r = curl(
        &server,
        &files,
        enroll,
        station,
        Some("application/pkcs10"),
        Some(&weak),
    )
    .unwrap();
    assert_refused(&server, r, 400, "RSA-1024", before).await;

    // Oversized body → 413.
    let huge = vec![b'A'; 40 * 1024];
    let before = snapshot().await;
    let r = curl(
        &server,
        &files,
        enroll,
        station,
        Some("application/pkcs10"),
        Some(&huge),
    )
    .unwrap();
    assert_refused(&server, r, 413, "over", before).await;
    // 4 MB declared up front: answered before anything is read (no `100 Continue`), every
    // time, with a readable 413.
    let four_mb = vec![b'A'; 4 * 1024 * 1024];
    for _ in 0..5 {
        let before = snapshot().await;
        let r = curl(
            &server,
            &files,
            enroll,
            station,
            Some("application/pkcs10"),
            Some(&four_mb),
        )
        .expect("curl reads the answer instead of a broken pipe");
        assert_refused(&server, r, 413, "over", before).await;
    }
    // The same without a declared length (chunked): read on and dropped, then a 413.
    let body = files.write("chunked.b64", &four_mb);
    let out = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--resolve"])
        .arg(format!("localhost:{}:127.0.0.1", port_of(&server.est_url)))
        .arg("--cacert")
        .arg(server.pki("root-ca.pem"))
        .arg("--cert")
        .arg(&station_files.0)
        .arg("--key")
        .arg(&station_files.1)
        .args([
            "-H",
            "Content-Type: application/pkcs10",
            "-H",
            "Transfer-Encoding: chunked",
        ])
        .arg("--data-binary")
        .arg(format!("@{}", body.display()))
        .arg(format!("{}{enroll}", server.est_url))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "413", "{out:?}");

    // No client certificate → 401; wrong roles and endpoints → 403; unknown label → 404.
    let before = snapshot().await;
    let r = curl(
        &server,
        &files,
        enroll,
        None,
        Some("application/pkcs10"),
        Some(&good_csr),
    )
    .unwrap();
    assert_refused(&server, r, 401, "client certificate is required", before).await;
    let before = snapshot().await;
    let r = curl(
        &server,
        &files,
        enroll,
        Some((&auditor.0, &auditor.1)),
        Some("application/pkcs10"),
        Some(&good_csr),
    )
    .unwrap();
    assert_refused(&server, r, 403, "may not use EST simpleenroll", before).await;
    let before = snapshot().await;
    let r = curl(
        &server,
        &files,
        "/.well-known/est/simplereenroll",
        station,
        Some("application/pkcs10"),
        Some(&good_csr),
    )
    .unwrap();
    assert_refused(&server, r, 403, "re-enroll", before).await;
    let before = snapshot().await;
    let r = curl(
        &server,
        &files,
        "/.well-known/est/simplereenroll",
        Some((&birth.0, &birth.1)),
        Some("application/pkcs10"),
        Some(&good_csr),
    )
    .unwrap();
    assert_refused(&server, r, 403, "/simpleenroll", before).await;
    let before = snapshot().await;
    let r = curl(
        &server,
        &files,
        "/.well-known/est/other/simpleenroll",
        station,
        Some("application/pkcs10"),
        Some(&good_csr),
    )
    .unwrap();
    assert_refused(&server, r, 404, "no EST label \"other\"", before).await;
    // A 60,000-character label is quoted cut to 64 characters, in the answer and the audit.
    let long = "x".repeat(60_000);
    let before = snapshot().await;
    let r = curl(
        &server,
        &files,
        &format!("/.well-known/est/{long}/simpleenroll"),
        station,
        Some("application/pkcs10"),
        Some(&good_csr),
    )
    .unwrap();
    assert!(r.text().len() < 300, "{} bytes", r.text().len());
    assert_refused(&server, r, 404, &format!("\"{}…\"", "x".repeat(64)), before).await;
    let reason = server
        .audit_events()
        .await
        .pop()
        .unwrap()
        .event
        .reason
        .unwrap();
    assert!(reason.len() < 300, "{} bytes of audit reason", reason.len());

    // A device's second serial from the same station is a duplicate → 409, nothing issued.
    let (_, dup) = openssl_csr(&files, "dup", "/serialNumber=SN-R");
    let before = snapshot().await;
    let r = curl(
        &server,
        &files,
        enroll,
        station,
        Some("application/pkcs10"),
        Some(&dup),
    )
    .unwrap();
    assert_refused(&server, r, 409, "SN-R", before).await;

    // Re-enrollment must keep the subject.
    let (op_key, csr) = openssl_csr(&files, "op", "/serialNumber=SN-R");
    let r = curl(
        &server,
        &files,
        enroll,
        Some((&birth.0, &birth.1)),
        Some("application/pkcs10"),
        Some(&csr),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let op = pkcs7_certificates(&files, "op", &r.body).remove(0);
    let op_cert = files.write("op.pem", &op);
    let (_, other) = openssl_csr(
        &files,
        "other",
        "/O=acme Medical Inc./serialNumber=SN-OTHER",
    );
    let before = snapshot().await;
    let r = curl(
        &server,
        &files,
        "/.well-known/est/simplereenroll",
        Some((&op_cert, &op_key)),
        Some("application/pkcs10"),
        Some(&other),
    )
    .unwrap();
    assert_refused(&server, r, 400, "must keep the subject", before).await;
    // A device holding an operational certificate renews at /simplereenroll, not /simpleenroll.
    let before = snapshot().await;
    let r = curl(
        &server,
        &files,
        enroll,
        Some((&op_cert, &op_key)),
        Some("application/pkcs10"),
        Some(&other),
    )
    .unwrap();
    assert_refused(&server, r, 403, "/simplereenroll", before).await;

    // A revoked caller is refused: at the handshake (CRL in the verifier) or with 401.
    server
        .ca
        .revoke(
            &admin_principal(&server).await,
            medid::service::RevokeTarget::Device {
                manufacturer: ManufacturerId::parse("acme").unwrap(),
                serial: medid::domain::DeviceSerial::parse("SN-R").unwrap(),
            },
            Some(medid::domain::RevocationReason::KeyCompromise),
        )
        .await
        .expect("revoked");
    let (_, again) = openssl_csr(&files, "again", "/O=acme Medical Inc./serialNumber=SN-R");
    let before = certificates(&server).await;
    match curl(
        &server,
        &files,
        "/.well-known/est/simplereenroll",
        Some((&op_cert, &op_key)),
        Some("application/pkcs10"),
        Some(&again),
    ) {
        Ok(r) => {
            assert_eq!(r.status, 401, "{}", r.text());
            assert!(r.text().contains("revoked"), "{}", r.text());
        }
        Err(tls) => assert!(tls.contains("revoked") || tls.contains("alert"), "{tls}"),
    }
    assert_eq!(certificates(&server).await, before);
    server.stop().await;
}

/// The admin as a principal, for calling the service directly in setup.
async fn admin_principal(server: &TestServer) -> medid::domain::Principal {
    let pem = std::fs::read(server.pki("admin.pem")).unwrap();
    let der = medid::pem::parse_certificates(&pem).unwrap().remove(0);
    server
        .ca
        .authenticate(Some(&der), std::net::Ipv4Addr::LOCALHOST.into())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_choose_the_model_a_station_enrolls() {
    let server = TestServer::start_with(tempfile::tempdir().unwrap(), common::system_now(), |c| {
        c.est_labels.insert(
            "px200".into(),
            EstLabel {
                profile: EstProfile::DeviceBirth,
                model: Some("PX-200".into()),
                udi_di: Some("00614141123452".into()),
            },
        );
        c.est_labels.insert(
            "operational".into(),
            EstLabel {
                profile: EstProfile::DeviceOperational,
                model: None,
                udi_di: None,
            },
        );
    })
    .await;
    server.add_manufacturer("acme", &["PX-100", "PX-200"]).await;
    let files = Files::new();
    let station = server.station("acme", "line-1").await;
    let station = files.identity("station", &station);
    let station = Some((station.0.as_path(), station.1.as_path()));
    let (_, csr) = openssl_csr(&files, "a", "/serialNumber=SN-L1");

    // Two models and no label: EST cannot tell which; the reason says what to do.
    let before = (events(&server).await, certificates(&server).await);
    let r = curl(
        &server,
        &files,
        "/.well-known/est/simpleenroll",
        station,
        Some("application/pkcs10"),
        Some(&csr),
    )
    .unwrap();
    assert_refused(&server, r, 400, "makes 2 models (PX-100, PX-200)", before).await;
    // The operational label is not for stations.
    let before = (events(&server).await, certificates(&server).await);
    let r = curl(
        &server,
        &files,
        "/.well-known/est/operational/simpleenroll",
        station,
        Some("application/pkcs10"),
        Some(&csr),
    )
    .unwrap();
    assert_refused(&server, r, 403, "not to stations", before).await;

    let r = curl(
        &server,
        &files,
        "/.well-known/est/px200/simpleenroll",
        station,
        Some("application/pkcs10"),
        Some(&csr),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let cert = pkcs7_certificates(&files, "px", &r.body).remove(0);
    let out = x509_field_ext(&files, &cert);
    assert!(
        out.contains("https://id.gs1.org/01/00614141123452/21/SN-L1"),
        "the label's UDI-DI: {out}"
    );
    let device = server
        .ca
        .store
        .device(&ManufacturerId::parse("acme").unwrap(), "SN-L1")
        .await
        .unwrap();
    assert_eq!(device.model, "PX-200");
    assert_eq!(device.udi_di.as_deref(), Some("00614141123452"));
    server.stop().await;
}

fn x509_field_ext(files: &Files, pem: &str) -> String {
    let p = files.write(&format!("x509-{}.pem", rand_suffix()), pem);
    let out = run(Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(&p));
    String::from_utf8(out).unwrap()
}
