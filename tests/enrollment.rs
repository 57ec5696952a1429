//! Factory enrollment through the real gRPC API over mTLS.

mod common;

use std::collections::HashSet;

use common::{csr_for, csr_p256, fixture, Identity, TestServer};
use medid::proto::{EnrollDeviceRequest, GetDeviceRequest, ListDevicesRequest, PrincipalRole};
use rustls_pki_types::{CertificateDer, UnixTime};
use tonic::Code;
use x509_parser::prelude::*;

async fn enroll(
    server: &TestServer,
    station: &Identity,
    serial: &str,
    csr: Vec<u8>,
) -> Result<medid::proto::EnrollDeviceResponse, tonic::Status> {
    server
        .enrollment_client(station)
        .await
        .enroll_device(EnrollDeviceRequest {
            csr,
            serial: serial.into(),
            model: "PUMP-X".into(),
            udi_di: String::new(),
        })
        .await
        .map(|r| r.into_inner())
}

fn der_of(pem: &str) -> Vec<u8> {
    medid::pem::parse_certificates(pem.as_bytes()).unwrap()[0].to_vec()
}

#[tokio::test]
async fn enrolled_birth_certificate_has_the_802_1ar_profile() {
    let server = TestServer::start().await;
    server.add_manufacturer("acme", &["PUMP-X"]).await;
    let station = server.station("acme", "line-1").await;
    let (csr, _) = csr_p256();
    let resp = server
        .enrollment_client(&station)
        .await
        .enroll_device(EnrollDeviceRequest {
            csr,
            serial: "PUMP-0001".into(),
            model: "PUMP-X".into(),
            udi_di: "00614141123452".into(),
        })
        .await
        .expect("enrollment succeeds")
        .into_inner();
    let device = resp.device.unwrap();
    assert_eq!(device.uri, "spiffe://medid.local/device/acme/PUMP-0001");
    assert_eq!(device.udi_di, "00614141123452");

    let der = der_of(&resp.certificate.unwrap().certificate_pem);
    let (_, cert) = parse_x509_certificate(&der).unwrap();
    // Subject: O = manufacturer, serialNumber (2.5.4.5, PrintableString) = device serial.
    let sn: Vec<_> = cert
        .subject()
        .iter_attributes()
        .filter(|a| a.attr_type().to_id_string() == "2.5.4.5")
        .collect();
    assert_eq!(sn.len(), 1);
    assert_eq!(
        sn[0].attr_value().tag(),
        x509_parser::der_parser::asn1_rs::Tag::PrintableString
    );
    assert_eq!(sn[0].as_str().unwrap(), "PUMP-0001");
    assert_eq!(
        cert.subject()
            .iter_organization()
            .next()
            .unwrap()
            .as_str()
            .unwrap(),
        "acme Medical Inc."
    );
    // notAfter 99991231235959Z as GeneralizedTime (IEEE 802.1AR).
    let raw = cert.tbs_certificate.as_ref();
    assert!(
        raw.windows(17).any(|w| w == b"\x18\x0f99991231235959Z"),
        "notAfter is GeneralizedTime 99991231235959Z"
    );
    // SAN: the device URI and the GS1 Digital Link URI, nothing else.
    let san = cert.subject_alternative_name().unwrap().unwrap().value;
    let uris: Vec<String> = san
        .general_names
        .iter()
        .map(|g| match g {
            GeneralName::URI(u) => u.to_string(),
            other => panic!("unexpected SAN {other:?}"),
        })
        .collect();
    assert_eq!(
        uris,
        [
            "spiffe://medid.local/device/acme/PUMP-0001",
            "https://id.gs1.org/01/00614141123452/21/PUMP-0001"
        ]
    );
    // EKU clientAuth only; end entity; AKI present; random positive serial of ≥ 64 bits.
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth && !eku.any);
    assert!(!cert.basic_constraints().unwrap().unwrap().value.ca);
    assert!(cert
        .extensions()
        .iter()
        .any(|e| e.oid.to_id_string() == "2.5.29.35"));
    let serial = cert.raw_serial();
    assert!(serial[0] & 0x80 == 0 && serial.len() >= 8);
}

#[tokio::test]
async fn birth_certificate_verifies_with_webpki_and_in_a_real_mtls_handshake() {
    let server = TestServer::start().await;
    server.add_manufacturer("acme", &[]).await;
    let station = server.station("acme", "line-1").await;
    let (csr, key_pem) = csr_for(&rcgen::PKCS_ED25519);
    let resp = enroll(&server, &station, "SN-42", csr).await.unwrap();
    let issued = resp.certificate.unwrap();

    // rustls-webpki, as a client certificate, chaining through the device-identity CA.
    let root = CertificateDer::from(der_of(&issued.root_pem));
    let anchor = webpki::anchor_from_trusted_cert(&root).unwrap();
    let leaf_der = CertificateDer::from(der_of(&issued.certificate_pem));
    let intermediates: Vec<_> = issued
        .chain_pem
        .iter()
        .map(|p| CertificateDer::from(der_of(p)))
        .collect();
    let leaf = webpki::EndEntityCert::try_from(&leaf_der).unwrap();
    leaf.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &[anchor],
        &intermediates,
        UnixTime::now(),
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .expect("birth certificate chains to the root for clientAuth");

    // A real rustls mTLS handshake with the device's certificate: the server authenticates
    // the device (so the call reaches authorization) and refuses the admin RPC by role.
    let device = Identity {
        cert_pem: issued.certificate_pem.clone(),
        key_pem,
    };
    let err =
        medid::proto::admin_service_client::AdminServiceClient::new(server.channel(&device).await)
            .list_manufacturers(medid::proto::ListManufacturersRequest {})
            .await
            .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("device"), "{}", err.message());
}

#[tokio::test]
async fn a_serial_is_enrolled_once() {
    let server = TestServer::start().await;
    server.add_manufacturer("acme", &[]).await;
    let station = server.station("acme", "line-1").await;
    enroll(&server, &station, "PUMP-1", csr_p256().0)
        .await
        .unwrap();
    let err = enroll(&server, &station, "PUMP-1", csr_p256().0)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(
        err.message().contains("already enrolled"),
        "{}",
        err.message()
    );
    assert_eq!(server.count("SELECT COUNT(*) FROM devices").await, 1);
}

#[tokio::test]
async fn concurrent_enrollments_of_one_serial_yield_exactly_one_device() {
    let server = TestServer::start().await;
    server.add_manufacturer("acme", &[]).await;
    let station = server.station("acme", "line-1").await;
    let client = server.enrollment_client(&station).await;
    let attempts = (0..20).map(|_| {
        let mut c = client.clone();
        async move {
            c.enroll_device(EnrollDeviceRequest {
                csr: csr_p256().0,
                serial: "RACE-1".into(),
                model: "PUMP-X".into(),
                udi_di: String::new(),
            })
            .await
        }
    });
    let results = futures_util::future::join_all(attempts).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 1);
    assert!(results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .all(|e| e.code() == Code::AlreadyExists));
    assert_eq!(server.count("SELECT COUNT(*) FROM devices").await, 1);
}

#[tokio::test]
async fn a_public_key_bound_to_one_device_is_refused_for_another() {
    let server = TestServer::start().await;
    server.add_manufacturer("acme", &[]).await;
    let station = server.station("acme", "line-1").await;
    let (csr, _) = csr_p256();
    enroll(&server, &station, "A-1", csr.clone()).await.unwrap();
    let err = enroll(&server, &station, "A-2", csr).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(err.message().contains("public key"), "{}", err.message());
}

#[tokio::test]
async fn another_manufacturers_station_cannot_read_or_list_its_devices() {
    let server = TestServer::start().await;
    server.add_manufacturer("acme", &[]).await;
    server.add_manufacturer("globex", &[]).await;
    let acme = server.station("acme", "line-1").await;
    let globex = server.station("globex", "line-1").await;
    enroll(&server, &acme, "A-1", csr_p256().0).await.unwrap();

    let mut registry = server.registry_client(&globex).await;
    let err = registry
        .get_device(GetDeviceRequest {
            manufacturer_id: "acme".into(),
            serial: "A-1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = registry
        .list_devices(ListDevicesRequest {
            manufacturer_id: "acme".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    // Unfiltered, a station sees only its own manufacturer's devices.
    let own = registry
        .list_devices(ListDevicesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(own.devices.is_empty());
}

#[tokio::test]
async fn a_station_enrolls_only_registered_models() {
    let server = TestServer::start().await;
    server.add_manufacturer("acme", &["PUMP-X"]).await;
    let station = server.station("acme", "line-1").await;
    let err = server
        .enrollment_client(&station)
        .await
        .enroll_device(EnrollDeviceRequest {
            csr: csr_p256().0,
            serial: "M-1".into(),
            model: "MONITOR-9".into(),
            udi_di: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("MONITOR-9"), "{}", err.message());
}

/// Each bad CSR: INVALID_ARGUMENT naming the problem, no device row, no certificate row,
/// exactly one refusal event.
#[tokio::test]
async fn bad_csrs_are_refused_with_a_named_reason_and_leave_only_one_audit_event() {
    let server = TestServer::start().await;
    server.add_manufacturer("acme", &[]).await;
    let station = server.station("acme", "line-1").await;
    let mut bad_signature = csr_p256().0;
    let last = bad_signature.len() - 1;
    bad_signature[last] ^= 1;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("bad signature", bad_signature, "does not verify"),
        ("RSA-1024", fixture("rsa1024.csr"), "RSA-1024"),
        ("P-192", fixture("p192.csr"), "P-192"),
        ("secp256k1", fixture("secp256k1.csr"), "secp256k1"),
        (
            "brainpoolP256r1",
            fixture("brainpoolp256r1.csr"),
            "ECDSA brainpoolP256r1 (1.3.36.3.3.2.8.1.1.7) keys are not accepted",
        ),
        (
            "PEM with a body that is not base64",
            b"-----BEGIN CERTIFICATE REQUEST-----\nnot base64!\n-----END CERTIFICATE REQUEST-----\n"
                .to_vec(),
            "the PEM body is not valid base64",
        ),
        (
            "PEM that never ends",
            b"-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n".to_vec(),
            "the PEM block never ends: no \"-----END CERTIFICATE REQUEST-----\" line",
        ),
        ("Ed448", fixture("ed448.csr"), "Ed448"),
        ("SHA-1", fixture("p256-sha1.csr"), "SHA-1"),
        ("MD5", fixture("rsa2048-md5.csr"), "MD5"),
        ("RSA e=3", fixture("rsa2048-e3.csr"), "65537"),
        ("RSA-8192", fixture("rsa8192.csr"), "RSA-8192"),
        ("explicit curve", fixture("p256-explicit.csr"), "explicit"),
        (
            "unknown critical extension",
            fixture("p256-unknown-critical.csr"),
            "critical",
        ),
        (
            "BER length",
            {
                let der = csr_p256().0;
                let n = if der[1] & 0x80 == 0 {
                    2
                } else {
                    2 + (der[1] & 0x7f) as usize
                };
                let mut ber = vec![0x30, 0x84];
                ber.extend_from_slice(&((der.len() - n) as u32).to_be_bytes());
                ber.extend_from_slice(&der[n..]);
                ber
            },
            "not a DER",
        ),
        // 10,000 nested SEQUENCEs cannot fit under the 16 KiB limit: refused before parsing.
        (
            "10,000 nested SEQUENCEs",
            (0..10_000).flat_map(|_| [0x30u8, 0x80]).collect(),
            "limit",
        ),
        (
            "7,000 nested SEQUENCEs",
            (0..7_000).flat_map(|_| [0x30u8, 0x80]).collect(),
            "not a DER",
        ),
        (
            "trailing bytes",
            {
                let mut d = csr_p256().0;
                d.extend_from_slice(b"extra");
                d
            },
            "trailing",
        ),
        (
            "garbage",
            b"this is not a CSR at all".to_vec(),
            "not a DER PKCS#10",
        ),
        ("empty", vec![], "empty"),
        (
            "two PEM blocks",
            format!(
                "{0}{0}",
                medid::pem::encode("CERTIFICATE REQUEST", &csr_p256().0)
            )
            .into_bytes(),
            "more than one",
        ),
        (
            "PEM without END",
            b"-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n".to_vec(),
            "PEM",
        ),
    ];
    let certs_before = server.count("SELECT COUNT(*) FROM certificates").await;
    for (i, (what, csr, needle)) in cases.into_iter().enumerate() {
        let before = server.audit_events().await.len();
        let err = enroll(&server, &station, &format!("BAD-{i}"), csr)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
        assert!(
            err.message().contains(needle),
            "{what}: {:?} does not mention {needle:?}",
            err.message()
        );
        let events = server.audit_events().await;
        assert_eq!(events.len(), before + 1, "{what}: one refusal event");
        let e = &events.last().unwrap().event;
        assert_eq!(e.action, medid::audit::Action::DeviceEnroll);
        assert_eq!(e.outcome, medid::audit::Outcome::Refused);
        assert!(e.reason.as_deref().unwrap().contains(needle));
    }
    assert_eq!(server.count("SELECT COUNT(*) FROM devices").await, 0);
    assert_eq!(
        server.count("SELECT COUNT(*) FROM certificates").await,
        certs_before
    );
}

#[tokio::test]
async fn an_rsa_2048_csr_is_accepted() {
    let server = TestServer::start().await;
    server.add_manufacturer("acme", &[]).await;
    let station = server.station("acme", "line-1").await;
    enroll(&server, &station, "RSA-1", fixture("rsa2048.csr"))
        .await
        .expect("RSA-2048 with e=65537 is on the allow-list");
}

#[tokio::test]
async fn nothing_the_csr_requests_is_copied_into_the_certificate() {
    let server = TestServer::start().await;
    server.add_manufacturer("acme", &[]).await;
    let station = server.station("acme", "line-1").await;
    let resp = enroll(
        &server,
        &station,
        "CA-WANNABE",
        fixture("p256-requests-ca.csr"),
    )
    .await
    .unwrap();
    let der = der_of(&resp.certificate.unwrap().certificate_pem);
    let (_, cert) = parse_x509_certificate(&der).unwrap();
    assert!(!cert.basic_constraints().unwrap().unwrap().value.ca);
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.code_signing);
    let san = format!(
        "{:?}",
        cert.subject_alternative_name().unwrap().unwrap().value
    );
    assert!(!san.contains("evil.example"));
    assert!(!cert.subject().to_string().contains("CN=ca"));
}

#[tokio::test]
async fn invalid_fields_are_refused_and_audited() {
    let server = TestServer::start().await;
    server.add_manufacturer("acme", &[]).await;
    let station = server.station("acme", "line-1").await;
    for (serial, udi, needle) in [
        ("", "", "1–64"),
        ("a;b", "", "PrintableString"),
        (&"x".repeat(65) as &str, "", "1–64"),
        ("OK-1", "00614141123453", "check digit"),
        ("OK-1", "123", "GTIN-14"),
    ] {
        let before = server.audit_events().await.len();
        let err = server
            .enrollment_client(&station)
            .await
            .enroll_device(EnrollDeviceRequest {
                csr: csr_p256().0,
                serial: serial.into(),
                model: "PUMP-X".into(),
                udi_di: udi.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains(needle), "{}", err.message());
        assert_eq!(server.audit_events().await.len(), before + 1);
    }
    assert_eq!(server.count("SELECT COUNT(*) FROM devices").await, 0);
}

#[tokio::test]
async fn injection_shaped_names_are_refused() {
    let server = TestServer::start().await;
    let mut admin = server.admin_client().await;
    for (id, name, models, needle) in [
        ("m1", "Acme\0Corp", vec![], "control"),
        ("m2", "Acme\nCorp", vec![], "control"),
        ("m3", &"A".repeat(65 * 1024) as &str, vec![], "1–64"),
        ("m5", &"A".repeat(65) as &str, vec![], "X.520"),
        ("m6", "Acme\u{202E}lacideM", vec![], "U+202E"),
        ("m4", "Acme", vec!["PUMP\nX".to_string()], "PrintableString"),
    ] {
        let err = admin
            .create_manufacturer(medid::proto::CreateManufacturerRequest {
                id: id.into(),
                display_name: name.into(),
                allowed_models: models,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains(needle), "{id}: {}", err.message());
        assert!(
            !err.message().contains('\n'),
            "messages never carry raw newlines"
        );
    }
    assert_eq!(server.count("SELECT COUNT(*) FROM manufacturers").await, 0);
    // "=HYPERLINK(1)" is all PrintableString characters, so a legal model name: it is the CSV
    // export that defuses formula-shaped values (tests/audit.rs).
}

#[tokio::test]
async fn a_thousand_issuances_have_unique_positive_serials_of_at_least_64_bits() {
    let server = TestServer::start().await;
    server.add_manufacturer("acme", &[]).await;
    let station = server.station("acme", "line-1").await;
    let client = server.enrollment_client(&station).await;
    let csrs: Vec<Vec<u8>> = (0..1000).map(|_| csr_p256().0).collect();
    let mut serials = HashSet::new();
    for (chunk_no, chunk) in csrs.chunks(25).enumerate() {
        let calls = chunk.iter().enumerate().map(|(i, csr)| {
            let mut c = client.clone();
            let csr = csr.clone();
            async move {
                c.enroll_device(EnrollDeviceRequest {
                    csr,
                    serial: format!("S-{chunk_no}-{i}"),
                    model: "PUMP-X".into(),
                    udi_di: String::new(),
                })
                .await
                .unwrap()
                .into_inner()
            }
        });
        for resp in futures_util::future::join_all(calls).await {
            let der = der_of(&resp.certificate.unwrap().certificate_pem);
            let (_, cert) = parse_x509_certificate(&der).unwrap();
            let raw = cert.raw_serial().to_vec();
            assert!(raw[0] & 0x80 == 0, "positive");
            assert!(raw.iter().any(|b| *b != 0), "non-zero");
            assert!(raw.len() >= 8 && raw.len() <= 20);
            assert!(serials.insert(raw), "serial repeated");
        }
    }
    assert_eq!(serials.len(), 1000);
}

#[tokio::test]
async fn devices_are_listed_page_by_page() {
    let server = TestServer::start().await;
    server.add_manufacturer("acme", &[]).await;
    let station = server.station("acme", "line-1").await;
    for i in 0..7 {
        enroll(&server, &station, &format!("P-{i}"), csr_p256().0)
            .await
            .unwrap();
    }
    let mut registry = server.registry_client(&server.admin()).await;
    let mut token = String::new();
    let mut seen = vec![];
    loop {
        let page = registry
            .list_devices(ListDevicesRequest {
                manufacturer_id: "acme".into(),
                page_size: 3,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.devices.len() <= 3);
        seen.extend(page.devices.into_iter().map(|d| d.serial));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, (0..7).map(|i| format!("P-{i}")).collect::<Vec<_>>());
    // A serial prefix narrows the listing, case-sensitively; a longer one than a serial is
    // refused.
    let prefixed = |p: &str| ListDevicesRequest {
        serial_prefix: p.into(),
        ..Default::default()
    };
    let found = registry
        .list_devices(prefixed("P-3"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        found
            .devices
            .iter()
            .map(|d| d.serial.as_str())
            .collect::<Vec<_>>(),
        ["P-3"]
    );
    assert_eq!(
        registry
            .list_devices(prefixed("P-"))
            .await
            .unwrap()
            .into_inner()
            .devices
            .len(),
        7
    );
    assert!(registry
        .list_devices(prefixed("p-"))
        .await
        .unwrap()
        .into_inner()
        .devices
        .is_empty());
    let err = registry
        .list_devices(prefixed(&"P".repeat(65)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = registry
        .list_devices(ListDevicesRequest {
            page_token: "garbage!".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn admin_can_read_any_device_and_an_unknown_one_is_not_found() {
    let server = TestServer::start().await;
    server.add_manufacturer("acme", &[]).await;
    let station = server.station("acme", "line-1").await;
    enroll(&server, &station, "G-1", csr_p256().0)
        .await
        .unwrap();
    let mut registry = server.registry_client(&server.admin()).await;
    let d = registry
        .get_device(GetDeviceRequest {
            manufacturer_id: "acme".into(),
            serial: "G-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.serial, "G-1");
    let err = registry
        .get_device(GetDeviceRequest {
            manufacturer_id: "acme".into(),
            serial: "NOPE".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let _ = PrincipalRole::Admin;
}
