//! Authentication and authorization at the edge: every RPC maps the TLS peer certificate to a
//! principal through the store; unknown/expired → UNAUTHENTICATED, wrong role → PERMISSION_DENIED.

mod common;

use common::{csr_p256, Identity, TestServer};
use medid::audit::Outcome;
use medid::proto::{
    CreateManufacturerRequest, IssuePrincipalCertificateRequest, ListManufacturersRequest,
    PrincipalRole,
};
use rcgen::{CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
use tonic::Code;

fn manufacturer(id: &str) -> CreateManufacturerRequest {
    CreateManufacturerRequest {
        id: id.into(),
        display_name: "Acme".into(),
        allowed_models: vec![],
    }
}

#[tokio::test]
async fn a_station_calling_an_admin_rpc_is_denied_and_the_denial_audited() {
    let server = TestServer::start().await;
    server.add_manufacturer("acme", &[]).await;
    let station = server.station("acme", "line-1").await;
    let mut admin_api =
        medid::proto::admin_service_client::AdminServiceClient::new(server.channel(&station).await);
    let err = admin_api
        .create_manufacturer(manufacturer("evil"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let last = server.audit_events().await.pop().unwrap().event;
    assert_eq!(last.action, medid::audit::Action::ManufacturerCreate);
    assert_eq!(last.outcome, Outcome::Denied);
    assert_eq!(
        last.actor.uri,
        "spiffe://medid.local/manufacturer/acme/station/line-1"
    );
    assert_eq!(server.count("SELECT COUNT(*) FROM manufacturers").await, 1);
}

#[tokio::test]
async fn an_expired_certificate_is_unauthenticated() {
    let server = TestServer::start().await;
    server.add_manufacturer("acme", &[]).await;
    let station = server.station("acme", "line-1").await;
    let mut registry = server.registry_client(&station).await;
    registry
        .list_devices(medid::proto::ListDevicesRequest::default())
        .await
        .expect("valid today");
    // 90-day principal certificate: move medid's clock past its notAfter.
    server.clock.advance(time::Duration::days(91));
    let err = registry
        .list_devices(medid::proto::ListDevicesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("expired"), "{}", err.message());
    // Not authenticated: counted in the interval's aggregate, not an event of its own.
    let before = server.audit_events().await.len();
    assert_eq!(server.ca.flush_anonymous_refusals().await.unwrap(), 1);
    let events = server.audit_events().await;
    assert_eq!(events.len(), before + 1);
    let last = &events.last().unwrap().event;
    assert_eq!(last.action, medid::audit::Action::AuthRefusedAggregate);
    assert_eq!(last.outcome, Outcome::Denied);
    assert_eq!(last.target, "urn:medid:source:127.0.0.1");
    assert_eq!(last.detail["reason_code"], "inactive-certificate");
    assert_eq!(last.detail["count"], 1);
}

#[tokio::test]
async fn a_known_subject_with_another_key_is_unauthenticated() {
    let server = TestServer::start().await;
    // Someone holding the operational CA key mints a second "admin" certificate with its own
    // key. TLS accepts the chain, but medid never recorded it.
    let ca_key =
        KeyPair::from_pem(&std::fs::read_to_string(server.pki("operational-ca.key")).unwrap())
            .unwrap();
    let ca_pem = std::fs::read_to_string(server.pki("operational-ca.pem")).unwrap();
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, "admin");
    params.subject_alt_names = vec![SanType::URI(
        "spiffe://medid.local/admin/admin".try_into().unwrap(),
    )];
    params.is_ca = IsCa::ExplicitNoCa;
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = common::system_now() - time::Duration::hours(1);
    params.not_after = common::system_now() + time::Duration::days(1);
    let cert = params.signed_by(&key, &issuer).unwrap();
    let forged = Identity {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    };
    let err =
        medid::proto::admin_service_client::AdminServiceClient::new(server.channel(&forged).await)
            .list_manufacturers(ListManufacturersRequest {})
            .await
            .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(
        err.message().contains("not one medid issued"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn a_certificate_from_a_foreign_ca_fails_the_tls_handshake() {
    let server = TestServer::start().await;
    let foreign_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let foreign_issuer = Issuer::new(ca, foreign_key);
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::default();
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = leaf.signed_by(&key, &foreign_issuer).unwrap();
    let stranger = Identity {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    };
    // tonic connects lazily on some paths; either the connect or the first call must fail,
    // and never with a successful answer.
    match server.try_channel(&stranger).await {
        Err(_) => {}
        Ok(channel) => {
            let err = medid::proto::admin_service_client::AdminServiceClient::new(channel)
                .list_manufacturers(ListManufacturersRequest {})
                .await
                .unwrap_err();
            // TLS 1.3: the server's verdict on the client certificate arrives as an alert after
            // the client considers the handshake done; depending on timing the client reads the
            // UnknownCA alert or only sees the connection closed. Never a gRPC answer.
            let text = format!("{err:?}");
            assert!(
                text.contains("UnknownCA") || text.contains("transport error"),
                "{text}"
            );
            assert!(
                matches!(
                    err.code(),
                    Code::Unknown | Code::Unavailable | Code::Cancelled
                ),
                "{err:?}"
            );
        }
    }
}

#[tokio::test]
async fn principal_certificates_have_exact_validity_and_their_role_uri() {
    let server = TestServer::start().await;
    let (csr, _) = csr_p256();
    let issued = server
        .admin_client()
        .await
        .issue_principal_certificate(IssuePrincipalCertificateRequest {
            role: PrincipalRole::Gateway as i32,
            id: "icu-gw-1".into(),
            manufacturer_id: String::new(),
            csr,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(issued.subject_uri, "spiffe://medid.local/gateway/icu-gw-1");
    let der = medid::pem::parse_certificates(issued.certificate_pem.as_bytes()).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&der[0]).unwrap();
    let v = cert.validity();
    let lifetime = v.not_after.timestamp() - v.not_before.timestamp() + 1;
    assert_eq!(
        lifetime,
        90 * 24 * 3600,
        "notAfter − notBefore + 1 s = 90 days"
    );
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(
        eku.client_auth && eku.server_auth,
        "gateways also serve TLS"
    );
}

#[tokio::test]
async fn issuing_a_station_for_an_unknown_manufacturer_is_not_found() {
    let server = TestServer::start().await;
    let err = server
        .admin_client()
        .await
        .issue_principal_certificate(IssuePrincipalCertificateRequest {
            role: PrincipalRole::ManufacturerStation as i32,
            id: "line-1".into(),
            manufacturer_id: "nobody".into(),
            csr: csr_p256().0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(server.count("SELECT COUNT(*) FROM principals").await, 1);
}

#[tokio::test]
async fn a_principal_id_keeps_its_role() {
    let server = TestServer::start().await;
    server.issue(PrincipalRole::Gateway, "gw-1", "").await;
    // Re-issuing for the same gateway (a lost key) is allowed…
    server.issue(PrincipalRole::Gateway, "gw-1", "").await;
    // …and the same id under another role is another principal (another URI).
    let auditor = server.issue(PrincipalRole::Auditor, "gw-1", "").await;
    assert!(auditor.cert_pem.contains("BEGIN CERTIFICATE"));
    assert_eq!(server.count("SELECT COUNT(*) FROM principals").await, 3);
}

#[tokio::test]
async fn duplicate_manufacturer_is_already_exists_and_bad_ids_are_invalid() {
    let server = TestServer::start().await;
    server.add_manufacturer("acme", &[]).await;
    let mut admin = server.admin_client().await;
    let err = admin
        .create_manufacturer(manufacturer("acme"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    let err = admin
        .create_manufacturer(manufacturer("Acme Corp"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let list = admin
        .list_manufacturers(ListManufacturersRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.manufacturers.len(), 1);
}

#[tokio::test]
async fn health_is_served_over_mtls() {
    let server = TestServer::start().await;
    let mut health =
        tonic_health::pb::health_client::HealthClient::new(server.channel(&server.admin()).await);
    let resp = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "medid.v1.EnrollmentService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        resp.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

/// Health and reflection without a client certificate are refused like any unauthenticated
/// call: counted for the interval's aggregated audit event.
#[tokio::test]
async fn health_without_a_certificate_is_refused_and_audited_in_aggregate() {
    let server = TestServer::start().await;
    let anonymous = common::anonymous_channel(&server).await;
    let err = tonic_health::pb::health_client::HealthClient::new(anonymous)
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(server.ca.flush_anonymous_refusals().await.unwrap(), 1);
    let last = server.audit_events().await.pop().unwrap().event;
    assert_eq!(last.action, medid::audit::Action::AuthRefusedAggregate);
    assert_eq!(last.detail["reason_code"], "no-certificate");
    assert_eq!(last.detail["count"], 1);
}

#[tokio::test]
async fn server_reflection_lists_medid_services_so_grpcurl_works() {
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };
    let server = TestServer::start().await;
    let mut client = ServerReflectionClient::new(server.channel(&server.admin()).await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let first = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = first.message_response else {
        panic!("unexpected reflection answer {first:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "medid.v1.AdminService",
        "medid.v1.EnrollmentService",
        "medid.v1.RegistryService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }
}
