//! Every RPC × every role: only the allowed roles get past authentication and authorization.
//! "Allowed" means the answer is neither UNAUTHENTICATED nor PERMISSION_DENIED (it may still be
//! a precondition failure, say a second revocation of the same certificate). Calls run in table
//! order against one server, so targets are chosen to survive the allowed calls.
//! `EnrollWithToken` is not in the table: its credential is the token, not a role.

mod common;

use common::{csr_p256, Identity, TestServer};
use futures_util::StreamExt;
use medid::proto::{self, *};
use tonic::transport::Channel;
use tonic::Code;

const ROLES: [&str; 7] = [
    "admin",
    "station",
    "gateway",
    "auditor",
    "device-birth",
    "device-op",
    "none",
];

/// The RPCs and the roles allowed to call each.
const MATRIX: &[(&str, &[&str])] = &[
    ("Admin.CreateManufacturer", &["admin"]),
    ("Admin.ListManufacturers", &["admin"]),
    ("Admin.IssuePrincipalCertificate", &["admin"]),
    ("Enrollment.EnrollDevice", &["station"]),
    ("Registry.GetDevice", &["admin", "station", "auditor"]),
    ("Registry.ListDevices", &["admin", "station", "auditor"]),
    (
        "Lifecycle.RequestOperationalCertificate",
        &["gateway", "device-birth", "device-op"],
    ),
    ("Lifecycle.Revoke", &["admin", "station"]),
    ("Lifecycle.DecommissionDevice", &["admin", "station"]),
    ("Lifecycle.ListExpiring", &["admin", "auditor"]),
    (
        "Lifecycle.GetRotationStatus",
        &["admin", "station", "auditor", "device-birth", "device-op"],
    ),
    (
        "Lifecycle.GetCertificateStatus",
        &["admin", "gateway", "auditor"],
    ),
    (
        "Lifecycle.GetTrustBundle",
        &[
            "admin",
            "station",
            "gateway",
            "auditor",
            "device-birth",
            "device-op",
        ],
    ),
    (
        "Lifecycle.GetCrl",
        &[
            "admin",
            "station",
            "gateway",
            "auditor",
            "device-birth",
            "device-op",
        ],
    ),
    ("Lifecycle.CreateEnrollmentToken", &["admin", "station"]),
    ("Audit.RecordAccess", &["gateway"]),
    ("Audit.RecordAccessStream", &["gateway"]),
    ("Audit.GetCheckpoint", &["admin", "gateway", "auditor"]),
    ("Audit.GetInclusionProof", &["admin", "gateway", "auditor"]),
    (
        "Audit.GetConsistencyProof",
        &["admin", "gateway", "auditor"],
    ),
    ("Audit.ExportAudit", &["auditor"]),
    ("Audit.QueryAudit", &["auditor"]),
];

fn device(serial: &str) -> Option<DeviceRef> {
    Some(DeviceRef {
        manufacturer_id: "acme".into(),
        serial: serial.into(),
    })
}

/// Calls `rpc` as the holder of `ch`; returns the status code (Ok for success).
async fn call(rpc: &str, ch: Channel, n: usize, victim_serial: &str) -> Code {
    let code = |r: Result<(), tonic::Status>| r.err().map_or(Code::Ok, |s| s.code());
    let mut admin = admin_service_client::AdminServiceClient::new(ch.clone());
    let mut enroll = enrollment_service_client::EnrollmentServiceClient::new(ch.clone());
    let mut registry = registry_service_client::RegistryServiceClient::new(ch.clone());
    let mut life = lifecycle_service_client::LifecycleServiceClient::new(ch.clone());
    let mut audit = audit_service_client::AuditServiceClient::new(ch);
    let access = AccessEvent {
        device: device("D-1"),
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
    match rpc {
        "Admin.CreateManufacturer" => code(
            admin
                .create_manufacturer(CreateManufacturerRequest {
                    id: format!("m-{n}"),
                    display_name: "M".into(),
                    allowed_models: vec![],
                })
                .await
                .map(drop),
        ),
        "Admin.ListManufacturers" => code(
            admin
                .list_manufacturers(ListManufacturersRequest {})
                .await
                .map(drop),
        ),
        "Admin.IssuePrincipalCertificate" => code(
            admin
                .issue_principal_certificate(IssuePrincipalCertificateRequest {
                    role: proto::PrincipalRole::Gateway as i32,
                    id: format!("gw-{n}"),
                    manufacturer_id: String::new(),
                    csr: csr_p256().0,
                })
                .await
                .map(drop),
        ),
        "Enrollment.EnrollDevice" => code(
            enroll
                .enroll_device(EnrollDeviceRequest {
                    csr: csr_p256().0,
                    serial: format!("NEW-{n}"),
                    model: "X".into(),
                    udi_di: String::new(),
                })
                .await
                .map(drop),
        ),
        "Registry.GetDevice" => code(
            registry
                .get_device(GetDeviceRequest {
                    manufacturer_id: "acme".into(),
                    serial: "D-1".into(),
                })
                .await
                .map(drop),
        ),
        "Registry.ListDevices" => code(
            registry
                .list_devices(ListDevicesRequest::default())
                .await
                .map(drop),
        ),
        "Lifecycle.RequestOperationalCertificate" => code(
            life.request_operational_certificate(RequestOperationalCertificateRequest {
                csr: csr_p256().0,
            })
            .await
            .map(drop),
        ),
        "Lifecycle.Revoke" => code(
            life.revoke(RevokeRequest {
                target: Some(revoke_request::Target::Certificate(CertificateRef {
                    issuer: 0,
                    serial: victim_serial.into(),
                    issuer_generation: 0,
                })),
                reason: RevocationReason::KeyCompromise as i32,
            })
            .await
            .map(drop),
        ),
        "Lifecycle.DecommissionDevice" => code(
            life.decommission_device(DecommissionDeviceRequest {
                device: device("D-3"),
                reason: 0,
            })
            .await
            .map(drop),
        ),
        "Lifecycle.ListExpiring" => code(
            life.list_expiring(ListExpiringRequest {
                within_seconds: 86_400,
                manufacturer_id: String::new(),
            })
            .await
            .map(drop),
        ),
        "Lifecycle.GetRotationStatus" => code(
            life.get_rotation_status(GetRotationStatusRequest {
                device: device("D-1"),
            })
            .await
            .map(drop),
        ),
        "Lifecycle.GetCertificateStatus" => code(
            life.get_certificate_status(GetCertificateStatusRequest {
                certificate: Some(get_certificate_status_request::Certificate::Serial(
                    CertificateRef {
                        issuer: 0,
                        serial: victim_serial.into(),
                        issuer_generation: 0,
                    },
                )),
            })
            .await
            .map(drop),
        ),
        "Lifecycle.GetTrustBundle" => code(
            life.get_trust_bundle(GetTrustBundleRequest {})
                .await
                .map(drop),
        ),
        "Lifecycle.GetCrl" => code(
            life.get_crl(GetCrlRequest {
                issuer: Issuer::Operational as i32,
                issuer_generation: 0,
            })
            .await
            .map(drop),
        ),
        "Lifecycle.CreateEnrollmentToken" => code(
            life.create_enrollment_token(CreateEnrollmentTokenRequest {
                manufacturer_id: "acme".into(),
                serial: format!("T-{n}"),
                model: String::new(),
                ttl_seconds: 60,
            })
            .await
            .map(drop),
        ),
        "Audit.RecordAccess" => code(audit.record_access(access).await.map(drop)),
        "Audit.RecordAccessStream" => {
            let batches = tokio_stream::iter(vec![AccessBatch {
                events: vec![access],
            }]);
            match audit.record_access_stream(batches).await {
                Err(s) => s.code(),
                Ok(r) => match r.into_inner().next().await {
                    Some(Err(s)) => s.code(),
                    _ => Code::Ok,
                },
            }
        }
        "Audit.GetCheckpoint" => code(
            audit
                .get_checkpoint(GetCheckpointRequest {})
                .await
                .map(drop),
        ),
        "Audit.GetInclusionProof" => code(
            audit
                .get_inclusion_proof(GetInclusionProofRequest {
                    seq: 1,
                    tree_size: 1,
                })
                .await
                .map(drop),
        ),
        "Audit.GetConsistencyProof" => code(
            audit
                .get_consistency_proof(GetConsistencyProofRequest {
                    old_size: 1,
                    new_size: 1,
                })
                .await
                .map(drop),
        ),
        "Audit.ExportAudit" => match audit.export_audit(ExportAuditRequest::default()).await {
            Err(s) => s.code(),
            Ok(r) => match r.into_inner().next().await {
                Some(Err(s)) => s.code(),
                _ => Code::Ok,
            },
        },
        "Audit.QueryAudit" => code(
            audit
                .query_audit(QueryAuditRequest::default())
                .await
                .map(drop),
        ),
        other => panic!("no call for {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_admits_exactly_its_roles() {
    let server = TestServer::start().await;
    server.add_manufacturer("acme", &[]).await;
    let station = server.station("acme", "line-1").await;
    let mut births = Vec::new();
    for serial in ["D-1", "D-2", "D-3"] {
        let (identity, cert) = server.enroll(&station, serial).await;
        births.push((identity, cert.serial));
    }
    let device_birth = births[0].0.clone();
    let victim_serial = births[1].1.clone();
    let (csr, key_pem) = csr_p256();
    let op =
        lifecycle_service_client::LifecycleServiceClient::new(server.channel(&device_birth).await)
            .request_operational_certificate(RequestOperationalCertificateRequest { csr })
            .await
            .unwrap()
            .into_inner();
    let device_op = Identity {
        cert_pem: op.certificate_pem,
        key_pem,
    };
    let identities = [
        ("admin", Some(server.admin())),
        ("station", Some(station.clone())),
        (
            "gateway",
            Some(server.issue(proto::PrincipalRole::Gateway, "gw", "").await),
        ),
        (
            "auditor",
            Some(server.issue(proto::PrincipalRole::Auditor, "aud", "").await),
        ),
        ("device-birth", Some(device_birth)),
        ("device-op", Some(device_op)),
        ("none", None),
    ];
    let anonymous = {
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(server.root_pem()))
            .domain_name("localhost");
        Channel::from_shared(server.url.clone())
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap()
    };
    // A gateway's renewal supersedes (revokes) the certificate it renewed from: that call
    // gets a gateway of its own, so the others keep theirs.
    let renewing_gateway = server
        .issue(proto::PrincipalRole::Gateway, "gw-renewing", "")
        .await;
    let mut failures = Vec::new();
    let mut n = 0;
    for (rpc, allowed) in MATRIX {
        for (role, identity) in &identities {
            n += 1;
            let channel = match identity {
                Some(_)
                    if *rpc == "Lifecycle.RequestOperationalCertificate" && *role == "gateway" =>
                {
                    server.channel(&renewing_gateway).await
                }
                Some(id) => server.channel(id).await,
                None => anonymous.clone(),
            };
            let got = call(rpc, channel, n, &victim_serial).await;
            let admitted = !matches!(got, Code::PermissionDenied | Code::Unauthenticated);
            let expected = allowed.contains(role);
            if admitted != expected {
                failures.push(format!(
                    "{rpc} as {role}: got {got:?}, expected {}",
                    if expected { "admitted" } else { "refused" }
                ));
            }
            if *role == "none" && got != Code::Unauthenticated {
                failures.push(format!(
                    "{rpc} without a certificate: {got:?}, expected Unauthenticated"
                ));
            }
        }
    }
    assert_eq!(ROLES.len(), identities.len());
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
