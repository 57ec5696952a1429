//! Crash safety with the real binary: the server is killed (abort, or SIGKILL from outside) at
//! each step of the issuance cycle and after acknowledging writes, then restarted.
//! Invariants: no certificate that anyone holds without its row (a certificate signed but not
//! recorded never left the dead process); a recorded one is good and revocable; acknowledged
//! writes survive; the audit log verifies after restart.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use medid::api::client::{connect, ClientCredentials};
use medid::proto::{self, *};
use tonic::transport::Channel;

struct Node {
    dir: PathBuf,
    grpc: u16,
    http: u16,
}

impl Node {
    fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            grpc: common::free_port(),
            http: common::free_port(),
        }
    }

    fn spawn(&self, crash_at: Option<&str>) -> Child {
        let config = self.dir.join("medid.toml");
        let mut text = format!(
            "listen = \"127.0.0.1:{}\"\nhttp_listen = \"127.0.0.1:{}\"\ndatabase_url = \"sqlite://{}\"\n\
             pki_dir = \"{}\"\ncreate_dev_pki = true\nest_enabled = false\nconsole_enabled = false\n",
            self.grpc,
            self.http,
            self.dir.join("medid.db").display(),
            self.dir.join("pki").display()
        );
        if let Some(step) = crash_at {
            text.push_str(&format!("dangerous_crash_at = \"{step}\"\n"));
        }
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

    async fn channel(&self, cert: &str, key: &str) -> Channel {
        let creds = ClientCredentials {
            ca_pem: std::fs::read(self.dir.join("pki/root-ca.pem")).unwrap(),
            cert_pem: cert.as_bytes().to_vec(),
            key_pem: key.as_bytes().to_vec(),
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
            // The key is written before the certificate: wait for both.
            if self.dir.join("pki/admin.key").exists() && self.dir.join("pki/admin.pem").exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let cert = std::fs::read_to_string(self.dir.join("pki/admin.pem")).unwrap();
        let key = std::fs::read_to_string(self.dir.join("pki/admin.key")).unwrap();
        self.channel(&cert, &key).await
    }

    fn count(&self, sql: &str) -> i64 {
        let out = Command::new("python3")
            .args(["-c", "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute(sys.argv[2]).fetchone()[0])"])
            .arg(self.dir.join("medid.db"))
            .arg(sql)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{sql}: {out:?}"))
    }
}

fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
}

fn kill9(mut child: Child) {
    let _ = child.kill(); // SIGKILL
    let _ = child.wait();
}

fn csr() -> (Vec<u8>, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap();
    (csr.der().to_vec(), key.serialize_pem())
}

/// Sets up a manufacturer, a station, an auditor; returns (station, auditor) identities.
async fn setup(node: &Node) -> ((String, String), (String, String)) {
    let child = node.spawn(None);
    let mut admin = admin_service_client::AdminServiceClient::new(node.admin().await);
    admin
        .create_manufacturer(CreateManufacturerRequest {
            id: "acme".into(),
            display_name: "Acme".into(),
            allowed_models: vec![],
        })
        .await
        .unwrap();
    let mut ids = Vec::new();
    for (role, id, m) in [
        (proto::PrincipalRole::ManufacturerStation, "line-1", "acme"),
        (proto::PrincipalRole::Auditor, "aud", ""),
    ] {
        let (csr, key) = csr();
        let issued = admin
            .issue_principal_certificate(IssuePrincipalCertificateRequest {
                role: role as i32,
                id: id.into(),
                manufacturer_id: m.into(),
                csr,
            })
            .await
            .unwrap()
            .into_inner();
        ids.push((issued.certificate_pem, key));
    }
    stop(child);
    (ids[0].clone(), ids[1].clone())
}

async fn enroll(
    node: &Node,
    station: &(String, String),
    serial: &str,
) -> Result<EnrollDeviceResponse, tonic::Status> {
    enrollment_service_client::EnrollmentServiceClient::new(
        node.channel(&station.0, &station.1).await,
    )
    .enroll_device(EnrollDeviceRequest {
        csr: csr().0,
        serial: serial.into(),
        model: "X".into(),
        udi_di: String::new(),
    })
    .await
    .map(|r| r.into_inner())
}

/// Exports the whole audit log and verifies it offline with the binary.
async fn audit_log_verifies(node: &Node, auditor: &(String, String)) {
    let mut lines =
        audit_service_client::AuditServiceClient::new(node.channel(&auditor.0, &auditor.1).await)
            .export_audit(ExportAuditRequest::default())
            .await
            .unwrap()
            .into_inner();
    let mut bundle = String::new();
    while let Some(line) = lines.message().await.unwrap() {
        bundle.push_str(&line.json);
        bundle.push('\n');
    }
    let path = node.dir.join("bundle.jsonl");
    std::fs::write(&path, bundle).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_medid"))
        .args(["audit", "verify"])
        .arg(&path)
        .arg("--key")
        .arg(node.dir.join("pki/audit-signing.pub"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "audit log after restart: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_each_step_of_issuance_leaves_nothing_unaccounted_for() {
    for step in medid::service::CRASH_POINTS {
        let tmp = tempfile::tempdir().unwrap();
        let node = Node::new(tmp.path());
        let (station, auditor) = setup(&node).await;

        let crashing = node.spawn(Some(step));
        let result = enroll(&node, &station, "CRASH-1").await;
        assert!(
            result.is_err(),
            "{step}: the server answered although it aborted"
        );
        let mut crashing = crashing;
        let status = crashing.wait().unwrap();
        assert!(!status.success(), "{step}: the process did not abort");

        let births = "SELECT COUNT(*) FROM certificates WHERE profile = 'device-birth'";
        let child = node.spawn(None);
        let mut admin = lifecycle_service_client::LifecycleServiceClient::new(node.admin().await);
        if step == "after-commit" {
            // Recorded before the crash: the device exists, its certificate is good and can be
            // revoked, and the serial cannot enroll again.
            assert_eq!(node.count(births), 1, "{step}");
            assert_eq!(node.count("SELECT COUNT(*) FROM devices"), 1, "{step}");
            let serial: String = {
                let out = Command::new("python3")
                    .args(["-c", "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute(\"SELECT serial FROM certificates WHERE profile='device-birth'\").fetchone()[0])"])
                    .arg(node.dir.join("medid.db"))
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&out.stdout).trim().to_owned()
            };
            let status_of = |admin: &mut lifecycle_service_client::LifecycleServiceClient<
                Channel,
            >| {
                let serial = serial.clone();
                let mut admin = admin.clone();
                async move {
                    admin
                        .get_certificate_status(GetCertificateStatusRequest {
                            certificate: Some(get_certificate_status_request::Certificate::Serial(
                                CertificateRef {
                                    issuer: 0,
                                    serial,
                                    issuer_generation: 0,
                                },
                            )),
                        })
                        .await
                        .unwrap()
                        .into_inner()
                        .status
                }
            };
            assert_eq!(
                status_of(&mut admin).await,
                CertStatus::Good as i32,
                "{step}"
            );
            assert_eq!(
                enroll(&node, &station, "CRASH-1").await.unwrap_err().code(),
                tonic::Code::AlreadyExists
            );
            admin
                .revoke(common::revoke_for_key_compromise(&serial))
                .await
                .expect("the recorded certificate is revocable");
            assert_eq!(
                status_of(&mut admin).await,
                CertStatus::Revoked as i32,
                "{step}"
            );
        } else {
            // Signed in the dead process's memory, never recorded, never delivered: nothing is
            // stored, and the device enrolls again.
            assert_eq!(node.count(births), 0, "{step}: nothing stored");
            assert_eq!(node.count("SELECT COUNT(*) FROM devices"), 0, "{step}");
            enroll(&node, &station, "CRASH-1")
                .await
                .expect("enrolls again after the crash");
            assert_eq!(node.count(births), 1, "{step}");
        }
        assert_eq!(
            node.count("SELECT COUNT(*) FROM certificates WHERE status = 'active' AND der IS NULL"),
            0,
            "{step}: no active row without its certificate"
        );
        audit_log_verifies(&node, &auditor).await;
        stop(child);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_revocations_and_access_events_survive_sigkill() {
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::new(tmp.path());
    let (station, auditor) = setup(&node).await;
    let child = node.spawn(None);
    let device = enroll(&node, &station, "ACK-1").await.unwrap();
    let serial = device.certificate.unwrap().serial;
    let admin = node.admin().await;
    let (csr_der, key) = csr();
    let gateway = admin_service_client::AdminServiceClient::new(admin.clone())
        .issue_principal_certificate(IssuePrincipalCertificateRequest {
            role: proto::PrincipalRole::Gateway as i32,
            id: "gw".into(),
            manufacturer_id: String::new(),
            csr: csr_der,
        })
        .await
        .unwrap()
        .into_inner();
    let receipt = audit_service_client::AuditServiceClient::new(
        node.channel(&gateway.certificate_pem, &key).await,
    )
    .record_access(AccessEvent {
        device_uri: "spiffe://medid.local/device/acme/ACK-1".into(),
        action: AccessAction::Read as i32,
        data_category: "vital-signs".into(),
        purpose_of_use: "TREAT".into(),
        outcome: AccessOutcome::Success as i32,
        occurred_at: Some(prost_types::Timestamp {
            seconds: time::OffsetDateTime::now_utc().unix_timestamp(),
            nanos: 0,
        }),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner();
    lifecycle_service_client::LifecycleServiceClient::new(admin)
        .revoke(common::revoke_for_key_compromise(&serial))
        .await
        .unwrap();
    kill9(child); // right after the acknowledgements
    let child = node.spawn(None);
    let _ = node.admin().await;
    assert_eq!(
        node.count(&format!(
            "SELECT COUNT(*) FROM certificates WHERE serial = '{serial}' AND status = 'revoked'"
        )),
        1
    );
    assert_eq!(
        node.count(&format!(
            "SELECT COUNT(*) FROM audit_events WHERE seq = {} AND action = 'data.access'",
            receipt.seq
        )),
        1
    );
    audit_log_verifies(&node, &auditor).await;
    stop(child);
}
