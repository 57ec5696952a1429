//! Every FHIR AuditEvent medid renders is valid, checked by an independent validator (Python
//! `fhir.resources` 6.1, FHIR R4 4.0.1; `MEDID_FHIR_PYTHON`, set by `.ci/run`): every kind of event ×
//! every outcome, access reports with and without each optional field, and every event a
//! running service actually wrote for a day's worth of calls, successes and refusals.

mod common;

use std::collections::BTreeSet;

use common::{csr_p256, TestServer};
use medid::audit::action::{DataAction, DCM};
use medid::audit::render::fhir_audit_event;
use medid::audit::{Action, Actor, AuditEvent, Outcome};
use medid::proto::{self, PrincipalRole};
use serde_json::Value;

const OBSERVER: &str = "medid.hospital.example/audit";

/// Every string in `v` that FHIR would refuse for being empty, by path.
fn empty_strings(v: &Value, path: &str, out: &mut Vec<String>) {
    match v {
        Value::String(s) if s.is_empty() => out.push(path.to_owned()),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                empty_strings(item, &format!("{path}[{i}]"), out);
            }
        }
        Value::Object(map) => {
            for (k, item) in map {
                empty_strings(item, &format!("{path}.{k}"), out);
            }
        }
        _ => {}
    }
}

/// The IHE BALP shape of a successful access: a RESTful operation with its interaction, the
/// gateway and the device as agents, the user (when known) as the requesting recipient, the
/// data as a domain resource and the patient (when known) as a Patient entity.
fn assert_balp_access(v: &Value, e: &AuditEvent) {
    assert_eq!(v["type"]["code"], "rest", "{v}");
    assert_eq!(
        v["subtype"][0]["system"], "http://hl7.org/fhir/restful-interaction",
        "{v}"
    );
    let agents = v["agent"].as_array().unwrap();
    let roles: Vec<&str> = agents
        .iter()
        .map(|a| a["type"]["coding"][0]["code"].as_str().unwrap())
        .collect();
    assert_eq!(&roles[..2], ["110152", "110153"], "{v}");
    let has_user = e.detail.get("user_id").is_some_and(|u| u != "");
    assert_eq!(roles.contains(&"IRCP"), has_user, "{v}");
    assert_eq!(
        agents.iter().filter(|a| a["requestor"] == true).count(),
        1,
        "exactly one requesting agent: {v}"
    );
    assert_eq!(v["entity"][0]["role"]["code"], "4", "{v}");
    let has_patient = e.detail.get("patient_ref").is_some_and(|p| p != "");
    assert_eq!(
        v["entity"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["role"]["code"] == "1"),
        has_patient,
        "{v}"
    );
}

/// A call that must be refused; counts it.
fn expect_refusal<T: std::fmt::Debug>(result: Result<T, tonic::Status>) -> usize {
    assert!(result.is_err(), "should have been refused: {result:?}");
    1
}

/// Renders `events`, checks what can be checked here (no empty strings; BALP for accesses;
/// every other kind coded with DICOM and medid's action code) and returns the NDJSON lines.
fn render_all(events: &[(i64, AuditEvent)]) -> Vec<String> {
    events
        .iter()
        .map(|(seq, e)| {
            let v = fhir_audit_event(*seq, e, OBSERVER);
            let mut empty = Vec::new();
            empty_strings(&v, "", &mut empty);
            assert!(empty.is_empty(), "empty strings at {empty:?} in {v}");
            if e.action == Action::DataAccess && e.outcome == Outcome::Success {
                assert_balp_access(&v, e);
            } else {
                assert_eq!(v["type"]["system"], DCM, "{v}");
                let subtypes = v["subtype"].as_array().unwrap();
                assert_eq!(
                    subtypes.last().unwrap()["code"],
                    e.action.name(),
                    "medid's action code is the last subtype: {v}"
                );
            }
            let outcome = match e.outcome {
                Outcome::Success => "0",
                Outcome::Refused | Outcome::Denied => "4",
                Outcome::Failed => "8",
            };
            assert_eq!(v["outcome"], outcome, "{v}");
            v.to_string()
        })
        .collect()
}

#[test]
fn every_kind_of_event_and_outcome_renders_as_a_valid_fhir_audit_event() {
    let at = time::macros::datetime!(2026-12-01 12:00:00 UTC);
    let station = Actor {
        uri: "spiffe://hospital.example/manufacturer/acme/station/line-1".into(),
        role: "manufacturer-station".into(),
    };
    let mut events = Vec::new();
    for action in Action::ALL {
        for outcome in [
            Outcome::Success,
            Outcome::Refused,
            Outcome::Denied,
            Outcome::Failed,
        ] {
            for actor in [station.clone(), Actor::system(), Actor::unidentified(None)] {
                let mut e = AuditEvent::new(
                    at,
                    actor,
                    action,
                    medid::audit::Target::uri("spiffe://hospital.example/device/acme/PUMP-1"),
                );
                e.outcome = outcome;
                if outcome != Outcome::Success {
                    e.reason = Some("refused for a reason the caller can act on".into());
                }
                events.push(e);
            }
        }
    }
    // Access reports: every data action, and with and without each optional field.
    let optional = ["user_id", "user_role", "patient_ref", "purpose_of_use"];
    for access in DataAction::ALL {
        for mask in 0..(1 << optional.len()) {
            let mut e = AuditEvent::new(
                at,
                Actor {
                    uri: "spiffe://hospital.example/gateway/icu-gw".into(),
                    role: "gateway".into(),
                },
                Action::DataAccess,
                medid::audit::Target::uri("spiffe://hospital.example/device/acme/PUMP-1"),
            )
            .with("access_action", access.name())
            .with("data_category", "vital-signs")
            .with("outcome_code", 0);
            for (i, field) in optional.iter().enumerate() {
                let value = match *field {
                    "user_id" => "nurse-7",
                    "user_role" => "RN",
                    "patient_ref" => "Patient/42",
                    _ => "TREAT",
                };
                if mask & (1 << i) != 0 {
                    e = e.with(field, value);
                }
            }
            events.push(e);
        }
    }
    let numbered: Vec<(i64, AuditEvent)> = (1..).zip(events).collect();
    let lines = render_all(&numbered);
    if let Some(result) = common::fhir_validate(&lines) {
        assert_eq!(result, Ok(lines.len()), "FHIR validation");
    }
}

/// One call that succeeds and one that is refused (or denied) for every kind of request the
/// service audits, plus what the service writes on its own (bootstrap, binding, responders,
/// CRL signing, aggregated anonymous refusals); then every stored event is rendered and
/// validated, and the kinds seen are checked against the vocabulary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_the_service_writes_is_valid_fhir() {
    let server = TestServer::start().await;
    let admin = server.admin_client().await;
    server.add_manufacturer("acme", &["X"]).await;
    let mut refused = 0;
    refused += expect_refusal(
        admin
            .clone()
            .create_manufacturer(proto::CreateManufacturerRequest {
                id: "acme".into(),
                display_name: "again".into(),
                allowed_models: vec![],
            })
            .await,
    );
    admin
        .clone()
        .list_manufacturers(proto::ListManufacturersRequest::default())
        .await
        .unwrap();
    let station = server.station("acme", "line-1").await;
    let gateway = server.issue(PrincipalRole::Gateway, "icu-gw", "").await;
    let auditor = server.issue(PrincipalRole::Auditor, "officer", "").await;
    refused += expect_refusal(
        admin
            .clone()
            .issue_principal_certificate(proto::IssuePrincipalCertificateRequest {
                role: PrincipalRole::Gateway as i32,
                id: "Not Valid".into(),
                manufacturer_id: String::new(),
                csr: csr_p256().0,
            })
            .await,
    );
    // Manufacturer and principal listings by someone who may not.
    let mut gw_admin =
        proto::admin_service_client::AdminServiceClient::new(server.channel(&gateway).await);
    refused += expect_refusal(
        gw_admin
            .list_manufacturers(proto::ListManufacturersRequest::default())
            .await,
    );

    // Devices: enroll, a refused enrollment, reads, listings, rotation status.
    let (device, _) = server.enroll(&station, "PUMP-1").await;
    let mut enrollment = server.enrollment_client(&station).await;
    refused += expect_refusal(
        enrollment
            .enroll_device(proto::EnrollDeviceRequest {
                csr: b"not a CSR".to_vec(),
                serial: "PUMP-2".into(),
                model: "X".into(),
                udi_di: String::new(),
            })
            .await,
    );
    let mut registry = server.registry_client(&station).await;
    registry
        .get_device(proto::GetDeviceRequest {
            manufacturer_id: "acme".into(),
            serial: "PUMP-1".into(),
        })
        .await
        .unwrap();
    registry
        .list_devices(proto::ListDevicesRequest::default())
        .await
        .unwrap();
    let mut gw_registry = server.registry_client(&gateway).await;
    refused += expect_refusal(
        gw_registry
            .get_device(proto::GetDeviceRequest {
                manufacturer_id: "acme".into(),
                serial: "PUMP-1".into(),
            })
            .await,
    );
    refused += expect_refusal(
        gw_registry
            .list_devices(proto::ListDevicesRequest::default())
            .await,
    );
    let mut as_device =
        proto::lifecycle_service_client::LifecycleServiceClient::new(server.channel(&device).await);
    let mut as_station = proto::lifecycle_service_client::LifecycleServiceClient::new(
        server.channel(&station).await,
    );
    let mut as_gateway = proto::lifecycle_service_client::LifecycleServiceClient::new(
        server.channel(&gateway).await,
    );
    let mut as_admin = proto::lifecycle_service_client::LifecycleServiceClient::new(
        server.channel(&server.admin()).await,
    );
    let pump = || {
        Some(proto::DeviceRef {
            manufacturer_id: "acme".into(),
            serial: "PUMP-1".into(),
        })
    };
    as_device
        .get_rotation_status(proto::GetRotationStatusRequest { device: pump() })
        .await
        .unwrap();
    refused += expect_refusal(
        as_gateway
            .get_rotation_status(proto::GetRotationStatusRequest { device: pump() })
            .await,
    );
    // Renewal: a good one, and one with a CSR that is not one.
    as_device
        .request_operational_certificate(proto::RequestOperationalCertificateRequest {
            csr: csr_p256().0,
        })
        .await
        .unwrap();
    refused += expect_refusal(
        as_device
            .request_operational_certificate(proto::RequestOperationalCertificateRequest {
                csr: b"garbage".to_vec(),
            })
            .await,
    );
    // Status, expiring, trust bundle, CRL: allowed and not.
    let serial = common::serial_of(&gateway);
    let status = |serial: &str| proto::GetCertificateStatusRequest {
        certificate: Some(proto::get_certificate_status_request::Certificate::Serial(
            proto::CertificateRef {
                serial: serial.into(),
                ..Default::default()
            },
        )),
    };
    as_gateway
        .get_certificate_status(status(&serial))
        .await
        .unwrap();
    refused += expect_refusal(as_station.get_certificate_status(status(&serial)).await);
    as_admin
        .list_expiring(proto::ListExpiringRequest {
            within_seconds: 86_400 * 400,
            manufacturer_id: String::new(),
        })
        .await
        .unwrap();
    refused += expect_refusal(
        as_gateway
            .list_expiring(proto::ListExpiringRequest::default())
            .await,
    );
    as_gateway
        .get_trust_bundle(proto::GetTrustBundleRequest::default())
        .await
        .unwrap();
    as_gateway
        .get_crl(proto::GetCrlRequest {
            issuer: proto::Issuer::Operational as i32,
            issuer_generation: 0,
        })
        .await
        .unwrap();
    refused += expect_refusal(
        as_gateway
            .get_crl(proto::GetCrlRequest {
                issuer: proto::Issuer::Operational as i32,
                issuer_generation: 9,
            })
            .await,
    );
    // Tokens: one made and used, one refused; a token that is not one.
    let token = as_station
        .create_enrollment_token(proto::CreateEnrollmentTokenRequest {
            manufacturer_id: "acme".into(),
            serial: "PUMP-3".into(),
            model: String::new(),
            ttl_seconds: 0,
        })
        .await
        .unwrap()
        .into_inner();
    refused += expect_refusal(
        as_gateway
            .create_enrollment_token(proto::CreateEnrollmentTokenRequest {
                manufacturer_id: "acme".into(),
                serial: "PUMP-4".into(),
                model: String::new(),
                ttl_seconds: 0,
            })
            .await,
    );
    as_gateway
        .enroll_with_token(proto::EnrollWithTokenRequest {
            token: token.token,
            csr: csr_p256().0,
            serial: "PUMP-3".into(),
            model: "X".into(),
            udi_di: String::new(),
        })
        .await
        .unwrap();
    // A token that is not one comes from an unauthenticated caller: aggregated, not counted.
    assert!(as_gateway
        .enroll_with_token(proto::EnrollWithTokenRequest {
            token: "not-a-token".into(),
            csr: csr_p256().0,
            serial: "PUMP-5".into(),
            model: "X".into(),
            udi_di: String::new(),
        })
        .await
        .is_err());

    // Device data: accesses with every optional field, with none, and a refused report.
    let mut gw_audit =
        proto::audit_service_client::AuditServiceClient::new(server.channel(&gateway).await);
    gw_audit
        .record_access(common::access_event("PUMP-1", 1))
        .await
        .unwrap();
    let bare = proto::AccessEvent {
        user_id: String::new(),
        user_role: String::new(),
        patient_ref: String::new(),
        action: proto::AccessAction::Export as i32,
        ..common::access_event("PUMP-1", 2)
    };
    gw_audit.record_access(bare).await.unwrap();
    refused += expect_refusal(
        gw_audit
            .record_access(common::access_event("NO-SUCH-PUMP", 3))
            .await,
    );
    // The ledger: checkpoint, proofs, query, export; each also asked by someone who may not.
    let mut station_audit =
        proto::audit_service_client::AuditServiceClient::new(server.channel(&station).await);
    let mut officer =
        proto::audit_service_client::AuditServiceClient::new(server.channel(&auditor).await);
    let cp = officer
        .get_checkpoint(proto::GetCheckpointRequest {})
        .await
        .unwrap()
        .into_inner();
    officer
        .get_inclusion_proof(proto::GetInclusionProofRequest {
            seq: 1,
            tree_size: cp.tree_size,
        })
        .await
        .unwrap();
    refused += expect_refusal(
        officer
            .get_inclusion_proof(proto::GetInclusionProofRequest {
                seq: 1,
                tree_size: cp.tree_size + 1_000,
            })
            .await,
    );
    refused += expect_refusal(
        station_audit
            .get_checkpoint(proto::GetCheckpointRequest {})
            .await,
    );
    officer
        .query_audit(proto::QueryAuditRequest {
            page_size: 5,
            ..Default::default()
        })
        .await
        .unwrap();
    refused += expect_refusal(
        officer
            .query_audit(proto::QueryAuditRequest {
                filter: Some(proto::AuditFilter {
                    action: "no.such.action".into(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await,
    );
    let mut export = officer
        .export_audit(proto::ExportAuditRequest::default())
        .await
        .unwrap()
        .into_inner();
    while export.message().await.unwrap().is_some() {}
    refused += expect_refusal(
        gw_audit
            .export_audit(proto::ExportAuditRequest::default())
            .await,
    );

    // Revocation and decommissioning, allowed and refused; eviction of a principal.
    as_admin
        .revoke(common::revoke_for_key_compromise(&common::serial_of(
            &device,
        )))
        .await
        .unwrap();
    refused += expect_refusal(
        as_gateway
            .revoke(common::revoke_for_key_compromise(&serial))
            .await,
    );
    as_station
        .decommission_device(proto::DecommissionDeviceRequest {
            device: Some(proto::DeviceRef {
                manufacturer_id: "acme".into(),
                serial: "PUMP-3".into(),
            }),
            reason: 0,
        })
        .await
        .unwrap();
    refused += expect_refusal(
        as_gateway
            .decommission_device(proto::DecommissionDeviceRequest {
                device: pump(),
                reason: 0,
            })
            .await,
    );
    as_admin
        .revoke(proto::RevokeRequest {
            target: Some(proto::revoke_request::Target::Principal(
                proto::PrincipalRef {
                    role: PrincipalRole::Auditor as i32,
                    id: "officer".into(),
                    manufacturer_id: String::new(),
                },
            )),
            reason: proto::RevocationReason::PrivilegeWithdrawn as i32,
        })
        .await
        .unwrap();
    // Unauthenticated callers: counted, then written as one aggregated event.
    let revoked_auditor = server.try_channel(&auditor).await;
    if let Ok(channel) = revoked_auditor {
        let mut gone = proto::audit_service_client::AuditServiceClient::new(channel);
        // Anonymous: aggregated, not one event per call.
        assert!(gone
            .get_checkpoint(proto::GetCheckpointRequest {})
            .await
            .is_err());
    }
    server.ca.flush_anonymous_refusals().await.unwrap();

    let stored = server.audit_events().await;
    let events: Vec<(i64, AuditEvent)> = stored.into_iter().map(|s| (s.seq, s.event)).collect();
    let lines = render_all(&events);
    if let Some(result) = common::fhir_validate(&lines) {
        assert_eq!(result, Ok(lines.len()), "FHIR validation");
    }

    for (_, e) in &events {
        // One target form per entity: a URI, never a bare label or a quoted value.
        assert!(
            e.target.starts_with("spiffe://medid.local/") || e.target.starts_with("urn:medid:"),
            "target {} of {e:?}",
            e.target
        );
        assert!(!e.target.contains(['"', ' ']), "{e:?}");
        assert!(
            e.outcome != Outcome::Success || e.action.audited_on_success(),
            "{} is recorded only when refused: {e:?}",
            e.action
        );
    }
    // Every refused call wrote exactly one refusal event (the anonymous ones are aggregated).
    let refusal_events = events
        .iter()
        .filter(|(_, e)| e.outcome != Outcome::Success && e.action != Action::AuthRefusedAggregate)
        .count();
    assert_eq!(
        refusal_events, refused,
        "one refusal event per refused call"
    );

    // What this day wrote, by kind and by whether it succeeded.
    let seen: BTreeSet<(&str, bool)> = events
        .iter()
        .map(|(_, e)| (e.action.name(), e.outcome == Outcome::Success))
        .collect();
    // Kinds that cannot be refused (the service's own work), and those this day does not
    // provoke (tests/rollover.rs, tests/identity.rs, tests/audit.rs, tests/hostile.rs do).
    let never_refused = [
        Action::PrincipalBootstrap,
        Action::PkiBind,
        Action::OcspResponderIssue,
        Action::CrlSign,
        Action::PrincipalEvict,
        Action::TrustBundle,
        // Written by `medid audit archive` on the database; a failed run changes nothing.
        Action::AuditArchive,
        // A root CRL that does not verify is refused by the upkeep with an error in the log
        // (every minute until the file is replaced); nothing changes, so no event.
        Action::CaRootCrl,
    ];
    let not_in_this_day = [
        Action::CaRollover,
        Action::ServiceCertificateAdopt,
        Action::ServiceCertificateRenew,
        Action::AuditIntegrity,
        Action::RequestLimit,
        Action::AuditArchive,
    ];
    let mut missing = Vec::new();
    for action in Action::ALL {
        if action.is_retired() || not_in_this_day.contains(&action) {
            continue;
        }
        let want_success = action.audited_on_success();
        let want_refusal = !never_refused.contains(&action);
        if want_success && !seen.contains(&(action.name(), true)) {
            missing.push(format!("{action} success"));
        }
        if want_refusal && !seen.contains(&(action.name(), false)) {
            missing.push(format!("{action} refusal"));
        }
    }
    assert!(
        missing.is_empty(),
        "not written by this day: {missing:?}; seen {seen:?}"
    );
}
