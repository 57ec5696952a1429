//! Certificate lifecycle through the real API: operational certificates, revocation (at medid
//! itself, in CRLs, over OCSP), decommissioning, rotation status, one-time tokens.
//! CRL and OCSP output is checked with curl and OpenSSL, independent of medid's own code.

mod common;

use std::path::Path;
use std::process::Command;

use common::{csr_for, csr_p256, Identity, TestServer};
use medid::clock::Clock;
use medid::proto::{
    self, lifecycle_service_client::LifecycleServiceClient, EnrollDeviceRequest, PrincipalRole,
};
use tonic::transport::Channel;
use tonic::Code;

struct Device {
    birth: Identity,
    serial: String,
}

async fn enrolled_device(server: &TestServer, serial: &str) -> Device {
    let station = server
        .station("acme", &format!("st-{}", serial.to_lowercase()))
        .await;
    Device {
        birth: server.enroll(&station, serial).await.0,
        serial: serial.into(),
    }
}

async fn lifecycle(server: &TestServer, who: &Identity) -> LifecycleServiceClient<Channel> {
    LifecycleServiceClient::new(server.channel(who).await)
}

async fn renew(
    server: &TestServer,
    who: &Identity,
) -> Result<(Identity, proto::IssuedCertificate), tonic::Status> {
    let (csr, key_pem) = csr_p256();
    let issued = lifecycle(server, who)
        .await
        .request_operational_certificate(proto::RequestOperationalCertificateRequest { csr })
        .await?
        .into_inner();
    Ok((
        Identity {
            cert_pem: issued.certificate_pem.clone(),
            key_pem,
        },
        issued,
    ))
}

fn revoke_serial(serial: &str, reason: proto::RevocationReason) -> proto::RevokeRequest {
    proto::RevokeRequest {
        target: Some(proto::revoke_request::Target::Certificate(
            proto::CertificateRef {
                issuer: 0,
                serial: serial.into(),
                issuer_generation: 0,
            },
        )),
        reason: reason as i32,
    }
}

fn der_of(pem: &str) -> Vec<u8> {
    medid::pem::parse_certificates(pem.as_bytes()).unwrap()[0].to_vec()
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn curl_to(url: &str, out: &Path) {
    let (ok, text) = run(Command::new("curl").args(["-sSf", "-o"]).arg(out).arg(url));
    assert!(ok, "curl {url}: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_renews_from_its_birth_certificate_then_from_its_operational_one() {
    let server = TestServer::start().await;
    server.add_manufacturer("acme", &[]).await;
    let device = enrolled_device(&server, "PUMP-1").await;
    let (op1, issued) = renew(&server, &device.birth)
        .await
        .expect("renewal with birth certificate");
    let der = der_of(&issued.certificate_pem);
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    assert_eq!(
        issued.subject_uri,
        "spiffe://medid.local/device/acme/PUMP-1"
    );
    assert!(cert.issuer().to_string().contains("operational CA"));
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && eku.server_auth);
    let sn = cert
        .subject()
        .iter_attributes()
        .find(|a| a.attr_type().to_id_string() == "2.5.4.5")
        .unwrap();
    assert_eq!(sn.as_str().unwrap(), "PUMP-1");
    let v = cert.validity();
    assert_eq!(
        v.not_after.timestamp() - v.not_before.timestamp() + 1,
        7 * 24 * 3600
    );

    let (_, issued2) = renew(&server, &op1)
        .await
        .expect("renewal with operational certificate");
    assert_ne!(issued.serial, issued2.serial, "a new serial every time");

    // Same key again: refused while rekey_required is on.
    let key = rcgen::KeyPair::from_pem(&op1.key_pem).unwrap();
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .der()
        .to_vec();
    let err = lifecycle(&server, &op1)
        .await
        .request_operational_certificate(proto::RequestOperationalCertificateRequest { csr })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("new key"), "{}", err.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_is_refused_for_stations_for_foreign_keys_and_for_expired_certificates() {
    let server = TestServer::start().await;
    server.add_manufacturer("acme", &[]).await;
    let a = enrolled_device(&server, "A").await;
    let b = enrolled_device(&server, "B").await;
    // A station is not a device.
    let station = server.station("acme", "line-9").await;
    let Err(err) = renew(&server, &station).await else {
        panic!("a station renewed")
    };
    assert_eq!(err.code(), Code::PermissionDenied);
    // Device B cannot get a certificate for device A's key.
    let a_key = rcgen::KeyPair::from_pem(&a.birth.key_pem).unwrap();
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&a_key)
        .unwrap()
        .der()
        .to_vec();
    let err = lifecycle(&server, &b.birth)
        .await
        .request_operational_certificate(proto::RequestOperationalCertificateRequest { csr })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    // An expired operational certificate cannot renew. The connection is made (and used)
    // while it is valid, so it is the per-RPC check that refuses it; a new handshake would be
    // refused by the TLS layer, which reads the same clock.
    let (op, _) = renew(&server, &a.birth).await.unwrap();
    let mut client = lifecycle(&server, &op).await;
    client
        .get_trust_bundle(proto::GetTrustBundleRequest {})
        .await
        .expect("a call while the certificate is valid");
    server.clock.advance(time::Duration::days(8));
    let err = client
        .request_operational_certificate(proto::RequestOperationalCertificateRequest {
            csr: csr_p256().0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("expired"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_is_refused_on_the_next_rpc_and_at_the_next_handshake() {
    let server = TestServer::start().await;
    server.add_manufacturer("acme", &[]).await;
    let device = enrolled_device(&server, "R-1").await;
    let (op, issued) = renew(&server, &device.birth).await.unwrap();
    let mut device_client = lifecycle(&server, &op).await;
    device_client
        .get_trust_bundle(proto::GetTrustBundleRequest {})
        .await
        .expect("works before revocation");

    let revoked = lifecycle(&server, &server.admin())
        .await
        .revoke(revoke_serial(
            &issued.serial,
            proto::RevocationReason::KeyCompromise,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.revoked.len(), 1);

    // Same connection, next RPC: the per-RPC store check refuses it.
    let err = device_client
        .get_trust_bundle(proto::GetTrustBundleRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("revoked"), "{}", err.message());
    // A revoked certificate cannot renew either.
    assert!(renew(&server, &op).await.is_err());
    // A new connection: the TLS verifier now carries the CRL and refuses the handshake with
    // a certificate_revoked alert, read here from a raw rustls client.
    let alert = raw_handshake_error(&server, &op).await;
    assert!(alert.contains("CertificateRevoked"), "{alert}");
    // Control: a certificate that is not revoked completes the same handshake.
    let (fresh_op, _) = renew(&server, &device.birth).await.unwrap();
    assert_eq!(raw_handshake_error(&server, &fresh_op).await, "no error");
    // Revoking again is a clear precondition failure.
    let again = lifecycle(&server, &server.admin())
        .await
        .revoke(revoke_serial(
            &issued.serial,
            proto::RevocationReason::KeyCompromise,
        ))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);
}

/// Connects with a raw tokio-rustls client presenting `who`, sends an HTTP/2 preface and
/// reads: returns the error the server's TLS layer answered with, or "no error".
async fn raw_handshake_error(server: &TestServer, who: &Identity) -> String {
    use rustls_pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    for c in medid::pem::parse_certificates(server.root_pem().as_bytes()).unwrap() {
        roots.add(c).unwrap();
    }
    let chain = medid::pem::parse_certificates(who.cert_pem.as_bytes()).unwrap();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(who.key_pem.as_bytes()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(medid::api::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let port = server.url.rsplit(':').next().unwrap();
    let tcp = tokio::net::TcpStream::connect(format!("127.0.0.1:{port}"))
        .await
        .unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = match connector.connect(name, tcp).await {
        Ok(t) => t,
        Err(e) => return format!("{e:?}"),
    };
    if let Err(e) = tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await {
        return format!("{e:?}");
    }
    let mut buf = [0u8; 64];
    match tokio::time::timeout(std::time::Duration::from_secs(5), tls.read(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => "no error".into(),
        Ok(Ok(_)) => "closed".into(),
        Ok(Err(e)) => format!("{e:?}"),
        Err(_) => "timeout".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revoked_for_key_compromise_is_refused_for_any_future_enrollment() {
    let server = TestServer::start().await;
    server.add_manufacturer("acme", &[]).await;
    let station = server.station("acme", "line-1").await;
    let (csr, key_pem) = csr_p256();
    let resp = server
        .enrollment_client(&station)
        .await
        .enroll_device(EnrollDeviceRequest {
            csr: csr.clone(),
            serial: "KC-1".into(),
            model: "M".into(),
            udi_di: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    // The device reports its own key compromised.
    let me = Identity {
        cert_pem: resp.certificate.unwrap().certificate_pem,
        key_pem,
    };
    lifecycle(&server, &me)
        .await
        .revoke(proto::RevokeRequest {
            target: Some(proto::revoke_request::Target::Device(proto::DeviceRef {
                manufacturer_id: "acme".into(),
                serial: "KC-1".into(),
            })),
            reason: proto::RevocationReason::KeyCompromise as i32,
        })
        .await
        .expect("a device revokes itself for keyCompromise");
    let err = server
        .enrollment_client(&station)
        .await
        .enroll_device(EnrollDeviceRequest {
            csr,
            serial: "KC-2".into(),
            model: "M".into(),
            udi_di: String::new(),
        })
        .await
        .unwrap_err();
    assert!(
        err.message().contains("keyCompromise") || err.message().contains("bound to another"),
        "{}",
        err.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_authority_follows_the_role() {
    let server = TestServer::start().await;
    server.add_manufacturer("acme", &[]).await;
    server.add_manufacturer("globex", &[]).await;
    let device = enrolled_device(&server, "AUTH-1").await;
    let (_, issued) = renew(&server, &device.birth).await.unwrap();
    let globex = server.station("globex", "line-1").await;
    let acme = server.station("acme", "line-2").await;
    let gateway = server.issue(PrincipalRole::Gateway, "gw-1", "").await;
    for (who, reason, code) in [
        (
            &globex,
            proto::RevocationReason::KeyCompromise,
            Code::PermissionDenied,
        ),
        (
            &acme,
            proto::RevocationReason::Superseded,
            Code::PermissionDenied,
        ),
        (
            &gateway,
            proto::RevocationReason::KeyCompromise,
            Code::PermissionDenied,
        ),
    ] {
        let err = lifecycle(&server, who)
            .await
            .revoke(revoke_serial(&issued.serial, reason))
            .await
            .unwrap_err();
        assert_eq!(err.code(), code);
    }
    // An unknown reason code is INVALID_ARGUMENT.
    let mut req = revoke_serial(&issued.serial, proto::RevocationReason::KeyCompromise);
    req.reason = 7;
    let err = lifecycle(&server, &server.admin())
        .await
        .revoke(req)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // So is a serial that is not hex, or longer than 20 octets, with one refusal event each.
    let before = server.audit_events().await.len();
    for bad in ["not-hex", "abc", &"00".repeat(21)] {
        let err = lifecycle(&server, &server.admin())
            .await
            .revoke(revoke_serial(bad, proto::RevocationReason::KeyCompromise))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad}");
        assert!(err.message().contains("hex"), "{}", err.message());
    }
    let refusals: Vec<_> = server.audit_events().await.split_off(before);
    assert_eq!(refusals.len(), 3, "{refusals:?}");
    assert!(refusals
        .iter()
        .all(|e| e.event.outcome != medid::audit::Outcome::Success));
    // The device's own station may, with cessationOfOperation.
    lifecycle(&server, &acme)
        .await
        .revoke(revoke_serial(
            &issued.serial,
            proto::RevocationReason::CessationOfOperation,
        ))
        .await
        .expect("own station revokes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decommissioning_revokes_everything_and_blocks_further_issuance() {
    let server = TestServer::start().await;
    server.add_manufacturer("acme", &[]).await;
    let device = enrolled_device(&server, "DC-1").await;
    let (op, _) = renew(&server, &device.birth).await.unwrap();
    let d = lifecycle(&server, &server.admin())
        .await
        .decommission_device(proto::DecommissionDeviceRequest {
            device: Some(proto::DeviceRef {
                manufacturer_id: "acme".into(),
                serial: "DC-1".into(),
            }),
            reason: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.state, proto::DeviceState::Decommissioned as i32);
    let active = server
        .count("SELECT COUNT(*) FROM certificates WHERE subject_uri LIKE '%/DC-1' AND status <> 'revoked'")
        .await;
    assert_eq!(active, 0);
    let reasons = server
        .count("SELECT COUNT(*) FROM certificates WHERE subject_uri LIKE '%/DC-1' AND revocation_reason = 5")
        .await;
    assert_eq!(reasons, 2, "birth and operational, cessationOfOperation");
    for who in [&device.birth, &op] {
        assert!(renew(&server, who).await.is_err());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crls_are_numbered_upwards_keep_revoked_entries_and_verify_with_openssl() {
    let server = TestServer::start().await;
    server.add_manufacturer("acme", &[]).await;
    let device = enrolled_device(&server, "CRL-1").await;
    let (_, issued) = renew(&server, &device.birth).await.unwrap();
    let admin = server.admin();
    lifecycle(&server, &admin)
        .await
        .revoke(revoke_serial(
            &issued.serial,
            proto::RevocationReason::KeyCompromise,
        ))
        .await
        .unwrap();
    let get = |_: ()| {
        let server = &server;
        let admin = admin.clone();
        async move {
            lifecycle(server, &admin)
                .await
                .get_crl(proto::GetCrlRequest {
                    issuer: proto::Issuer::Operational as i32,
                    issuer_generation: 0,
                })
                .await
                .unwrap()
                .into_inner()
        }
    };
    let first = get(()).await;
    // Re-signing (schedule or another revocation) keeps the entry and raises the number.
    server
        .ca
        .publish_crl(medid::issuance::IssuerId::first(
            medid::issuance::IssuerName::Operational,
        ))
        .await
        .unwrap();
    let second = get(()).await;
    assert!(second.number > first.number);
    for crl in [&first, &second] {
        let (_, parsed) = x509_parser::parse_x509_crl(&crl.der).unwrap();
        assert!(parsed
            .iter_revoked_certificates()
            .any(|r| medid::domain::hex(r.raw_serial()) == issued.serial));
    }

    // Over HTTP, and verified by OpenSSL against the operational CA.
    let dir = server.dir.path();
    let crl_path = dir.join("operational.crl");
    curl_to(
        &format!("{}/crl/operational.crl", server.http_url),
        &crl_path,
    );
    let (ok, text) = run(Command::new("openssl")
        .args(["crl", "-inform", "DER", "-noout", "-text", "-in"])
        .arg(&crl_path)
        .arg("-CAfile")
        .arg(server.pki("operational-ca.pem")));
    assert!(ok && text.contains("verify OK"), "{text}");
    assert!(
        text.to_uppercase().contains(&issued.serial.to_uppercase()),
        "{text}"
    );
    assert!(text.contains("Key Compromise"), "{text}");
    assert!(text.contains("X509v3 CRL Number"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crl_next_update_and_resigning_follow_the_pinned_clock_to_the_second() {
    let server = TestServer::start().await;
    let issuer = medid::issuance::IssuerId::first(medid::issuance::IssuerName::DeviceIdentity);
    let crl = server.ca.publish_crl(issuer).await.unwrap();
    assert_eq!(crl.next_update - crl.this_update, time::Duration::hours(24));
    let half = crl.this_update + time::Duration::hours(12);
    server.clock.set(half - time::Duration::SECOND);
    server.ca.maintain().await.unwrap();
    assert_eq!(
        server.ca.current_crl(issuer).await.unwrap().number,
        crl.number,
        "not yet"
    );
    server.clock.set(half);
    server.ca.maintain().await.unwrap();
    assert_eq!(
        server.ca.current_crl(issuer).await.unwrap().number,
        crl.number + 1,
        "re-signed at half its validity"
    );
}

/// OpenSSL's OCSP client against medid's responder: good, revoked, and unknown (never good)
/// for a serial medid did not issue; nonce echoed; both GET and POST.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_ocsp_accepts_the_responses() {
    let server = TestServer::start().await;
    server.add_manufacturer("acme", &[]).await;
    let device = enrolled_device(&server, "OCSP-1").await;
    let (_, good) = renew(&server, &device.birth).await.unwrap();
    let (_, revoked) = renew(&server, &device.birth).await.unwrap();
    lifecycle(&server, &server.admin())
        .await
        .revoke(revoke_serial(
            &revoked.serial,
            proto::RevocationReason::KeyCompromise,
        ))
        .await
        .unwrap();
    let dir = server.dir.path();
    let write = |name: &str, pem: &str| {
        let p = dir.join(name);
        std::fs::write(&p, pem).unwrap();
        p
    };
    let good_pem = write("good.pem", &good.certificate_pem);
    let revoked_pem = write("revoked.pem", &revoked.certificate_pem);
    let url = format!("{}/ocsp/operational", server.http_url);
    let ocsp = |cert: Option<&Path>, serial: Option<&str>, get: bool| {
        let mut cmd = Command::new("openssl");
        cmd.args(["ocsp", "-issuer"])
            .arg(server.pki("operational-ca.pem"))
            .arg("-CAfile")
            .arg(server.pki("root-ca.pem"))
            .args(["-url", &url, "-resp_text"]);
        if let Some(c) = cert {
            cmd.arg("-cert").arg(c);
        }
        if let Some(s) = serial {
            cmd.args(["-serial", s]);
        }
        if get {
            cmd.arg("-reqout").arg(dir.join("req.der"));
        }
        run(&mut cmd)
    };
    let (ok, text) = ocsp(Some(good_pem.as_path()), None, false);
    assert!(ok, "{text}");
    assert!(text.contains("Response verify OK"), "{text}");
    assert!(text.contains(": good"), "{text}");
    assert!(!text.contains("WARNING: no nonce"), "nonce echoed: {text}");
    let (ok, text) = ocsp(Some(&revoked_pem), None, false);
    assert!(ok && text.contains(": revoked"), "{text}");
    assert!(
        text.contains("Key Compromise") || text.contains("keyCompromise"),
        "{text}"
    );
    let (ok, text) = ocsp(None, Some("0x1234567890abcdef"), false);
    assert!(ok, "{text}");
    assert!(
        text.contains(": unknown"),
        "never good for a serial medid did not issue: {text}"
    );

    // GET: the same request, base64 in the path (RFC 6960 Appendix A.1).
    let (ok, text) = ocsp(Some(&good_pem), None, true);
    assert!(ok, "{text}");
    let req = std::fs::read(dir.join("req.der")).unwrap();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&req);
    let encoded = b64
        .replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D");
    let resp_path = dir.join("get.ocsp");
    curl_to(&format!("{url}/{encoded}"), &resp_path);
    let (ok, text) = run(Command::new("openssl")
        .args(["ocsp", "-respin"])
        .arg(&resp_path)
        .arg("-issuer")
        .arg(server.pki("operational-ca.pem"))
        .arg("-CAfile")
        .arg(server.pki("root-ca.pem"))
        .arg("-cert")
        .arg(&good_pem)
        .arg("-no_nonce"));
    assert!(
        ok && text.contains("Response verify OK") && text.contains(": good"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_ask_for_certificate_status_by_serial_or_der() {
    let server = TestServer::start().await;
    server.add_manufacturer("acme", &[]).await;
    let device = enrolled_device(&server, "GW-1").await;
    let gateway = server.issue(PrincipalRole::Gateway, "icu-gw", "").await;
    let mut gw = lifecycle(&server, &gateway).await;
    let der = der_of(&device.birth.cert_pem);
    let st = gw
        .get_certificate_status(proto::GetCertificateStatusRequest {
            certificate: Some(proto::get_certificate_status_request::Certificate::Der(
                der.clone(),
            )),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(st.status, proto::CertStatus::Good as i32);
    // A serial medid never issued is unknown, never good.
    let st = gw
        .get_certificate_status(proto::GetCertificateStatusRequest {
            certificate: Some(proto::get_certificate_status_request::Certificate::Serial(
                proto::CertificateRef {
                    issuer: 0,
                    serial: "0badc0ffee".into(),
                    issuer_generation: 0,
                },
            )),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(st.status, proto::CertStatus::Unknown as i32);
    // A serial that is not hex is a bad request, not an unknown certificate.
    let err = gw
        .get_certificate_status(proto::GetCertificateStatusRequest {
            certificate: Some(proto::get_certificate_status_request::Certificate::Serial(
                proto::CertificateRef {
                    issuer: 0,
                    serial: "zz".into(),
                    issuer_generation: 0,
                },
            )),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // A device may not ask.
    let err = lifecycle(&server, &device.birth)
        .await
        .get_certificate_status(proto::GetCertificateStatusRequest {
            certificate: Some(proto::get_certificate_status_request::Certificate::Der(der)),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let bundle = gw
        .get_trust_bundle(proto::GetTrustBundleRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(bundle.root_pem.contains("BEGIN CERTIFICATE"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_status_and_expiring_list_follow_the_clock() {
    let server = TestServer::start().await;
    server.add_manufacturer("acme", &[]).await;
    let device = enrolled_device(&server, "ROT-1").await;
    let (_, first) = renew(&server, &device.birth).await.unwrap();
    let (_, second) = renew(&server, &device.birth).await.unwrap();
    let status = || async {
        lifecycle(&server, &device.birth)
            .await
            .get_rotation_status(proto::GetRotationStatusRequest {
                device: Some(proto::DeviceRef {
                    manufacturer_id: "acme".into(),
                    serial: device.serial.clone(),
                }),
            })
            .await
            .unwrap()
            .into_inner()
    };
    let st = status().await;
    assert_eq!(st.current.unwrap().serial, second.serial);
    assert!(!st.overdue);
    let states: Vec<(String, String)> = st
        .history
        .iter()
        .map(|c| (c.serial.clone(), c.state.clone()))
        .collect();
    assert!(
        states.contains(&(first.serial.clone(), "superseded".into())),
        "{states:?}"
    );
    // Past 2/3 of the 7-day lifetime: overdue.
    server.clock.advance(time::Duration::days(5));
    assert!(status().await.overdue);
    let expiring = lifecycle(&server, &server.admin())
        .await
        .list_expiring(proto::ListExpiringRequest {
            within_seconds: 3 * 24 * 3600,
            manufacturer_id: "acme".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let serials: Vec<_> = expiring
        .certificates
        .iter()
        .map(|c| c.serial.clone())
        .collect();
    assert!(
        serials.contains(&second.serial) && serials.contains(&first.serial),
        "{serials:?}"
    );
    let _ = server.clock.now();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enrollment_token_works_once_even_under_fifty_concurrent_attempts() {
    let server = TestServer::start().await;
    server.add_manufacturer("acme", &[]).await;
    let station = server.station("acme", "line-1").await;
    let token = lifecycle(&server, &station)
        .await
        .create_enrollment_token(proto::CreateEnrollmentTokenRequest {
            manufacturer_id: "acme".into(),
            serial: "FIELD-1".into(),
            model: "PUMP-X".into(),
            ttl_seconds: 600,
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    // The token never appears in the audit log.
    for e in server.audit_events().await {
        assert!(!format!("{:?}", e.event).contains(&token));
    }
    // A device with no client certificate at all: TLS with server verification only.
    let channel = common::anonymous_channel(&server).await;
    let mut client = LifecycleServiceClient::new(channel.clone());
    let attempts = (0..50).map(|_| {
        let mut c = client.clone();
        let token = token.clone();
        async move {
            c.enroll_with_token(proto::EnrollWithTokenRequest {
                token,
                csr: csr_for(&rcgen::PKCS_ECDSA_P256_SHA256).0,
                serial: "FIELD-1".into(),
                model: "PUMP-X".into(),
                udi_di: String::new(),
            })
            .await
        }
    });
    let results = futures_util::future::join_all(attempts).await;
    let ok: Vec<_> = results.iter().filter(|r| r.is_ok()).collect();
    assert_eq!(ok.len(), 1, "exactly one success");
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        assert!(
            matches!(r.code(), Code::PermissionDenied | Code::AlreadyExists),
            "{r:?}"
        );
    }
    assert_eq!(
        server
            .count("SELECT COUNT(*) FROM devices WHERE serial = 'FIELD-1'")
            .await,
        1
    );
    // Without a certificate, nothing else is reachable.
    let err = client
        .get_trust_bundle(proto::GetTrustBundleRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_expire_and_are_scoped_to_their_serial() {
    let server = TestServer::start().await;
    server.add_manufacturer("acme", &[]).await;
    let token = lifecycle(&server, &server.admin())
        .await
        .create_enrollment_token(proto::CreateEnrollmentTokenRequest {
            manufacturer_id: "acme".into(),
            serial: "T-1".into(),
            model: String::new(),
            ttl_seconds: 60,
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    let mut admin = lifecycle(&server, &server.admin()).await;
    let attempt = |serial: &str| proto::EnrollWithTokenRequest {
        token: token.clone(),
        csr: csr_p256().0,
        serial: serial.into(),
        model: "ANY".into(),
        udi_di: String::new(),
    };
    let err = admin.enroll_with_token(attempt("T-2")).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    server.clock.advance(time::Duration::seconds(61));
    let err = admin.enroll_with_token(attempt("T-1")).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("expired"));
    let err = lifecycle(&server, &server.admin())
        .await
        .create_enrollment_token(proto::CreateEnrollmentTokenRequest {
            manufacturer_id: "acme".into(),
            serial: "T-3".into(),
            model: String::new(),
            ttl_seconds: 86_401,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_http_endpoints_serve_ca_certificates_and_readiness() {
    let server = TestServer::start().await;
    let dir = server.dir.path();
    for name in ["root", "device-identity", "operational"] {
        let p = dir.join(format!("{name}.der"));
        curl_to(&format!("{}/ca/{name}.der", server.http_url), &p);
        let (ok, text) = run(Command::new("openssl")
            .args(["x509", "-inform", "DER", "-noout", "-subject", "-in"])
            .arg(&p));
        assert!(ok, "{text}");
    }
    let (ok, text) =
        run(Command::new("curl").args(["-sSf", &format!("{}/readyz", server.http_url)]));
    assert!(ok && text.contains("ready"), "{text}");
    let (ok, _) =
        run(Command::new("curl").args(["-sSf", &format!("{}/crl/nope.crl", server.http_url)]));
    assert!(!ok, "unknown CRL is 404");
    let (_, code) = run(Command::new("curl").args([
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-X",
        "POST",
        "-H",
        "Content-Type: text/plain",
        "--data",
        "x",
        &format!("{}/ocsp/operational", server.http_url),
    ]));
    assert_eq!(code, "415");
}

/// An OCSPRequest (RFC 6960 §4.1.1) for one serial of the operational CA, with SHA-256
/// CertID hashes, and a nonce extension (RFC 8954) when given.
fn ocsp_request(server: &TestServer, serial: &[u8], nonce: Option<&[u8]>) -> Vec<u8> {
    use medid::der::{oid, sequence, tag, tlv, unsigned_integer};
    let ca_der = der_of(&std::fs::read_to_string(server.pki("operational-ca.pem")).unwrap());
    let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
    let sha256 = |b: &[u8]| {
        ring::digest::digest(&ring::digest::SHA256, b)
            .as_ref()
            .to_vec()
    };
    let cert_id = sequence(&[
        &sequence(&[&oid(&[2, 16, 840, 1, 101, 3, 4, 2, 1]), &[5, 0]]),
        &tlv(tag::OCTET_STRING, &sha256(ca.subject().as_raw())),
        &tlv(
            tag::OCTET_STRING,
            &sha256(&ca.public_key().subject_public_key.data),
        ),
        &unsigned_integer(serial),
    ]);
    let list = sequence(&[&sequence(&[&cert_id])]);
    let tbs = match nonce {
        None => sequence(&[&list]),
        Some(n) => {
            let ext = sequence(&[
                &oid(&[1, 3, 6, 1, 5, 5, 7, 48, 1, 2]),
                &tlv(tag::OCTET_STRING, &tlv(tag::OCTET_STRING, n)),
            ]);
            sequence(&[&list, &tlv(tag::context(2), &sequence(&[&ext]))])
        }
    };
    sequence(&[&tbs])
}

/// POSTs an OCSP request to the operational responder; the DER answer.
async fn ocsp_post(server: &TestServer, request: &[u8]) -> Vec<u8> {
    let dir = server.dir.path();
    let (req, resp) = (dir.join("ocsp.req"), dir.join("ocsp.resp"));
    std::fs::write(&req, request).unwrap();
    let out = Command::new("curl")
        .args([
            "-sS",
            "-H",
            "Content-Type: application/ocsp-request",
            "--data-binary",
        ])
        .arg(format!("@{}", req.display()))
        .arg("-o")
        .arg(&resp)
        .arg(format!("{}/ocsp/operational", server.http_url))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    std::fs::read(&resp).unwrap()
}

/// The responseStatus of an OCSPResponse (0 successful, 1 malformedRequest, 3 tryLater).
fn ocsp_status(response: &[u8]) -> u8 {
    assert_eq!(&response[..1], &[0x30]);
    let at = if response[1] & 0x80 != 0 {
        2 + (response[1] & 0x7f) as usize
    } else {
        2
    };
    assert_eq!(
        &response[at..at + 2],
        &[0x0a, 0x01],
        "ENUMERATED responseStatus"
    );
    response[at + 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ocsp_answers_are_reused_until_the_status_changes_and_long_nonces_are_refused() {
    let server = TestServer::start().await;
    server.add_manufacturer("acme", &[]).await;
    let device = enrolled_device(&server, "OCSP-CACHE").await;
    let (_, cert) = renew(&server, &device.birth).await.unwrap();
    let serial = hex_bytes(&cert.serial);
    let plain = ocsp_request(&server, &serial, None);
    let first = ocsp_post(&server, &plain).await;
    assert_eq!(ocsp_status(&first), 0);
    // ECDSA signatures are randomized: the same bytes mean the same signed answer, reused.
    assert_eq!(
        ocsp_post(&server, &plain).await,
        first,
        "reused, not signed again"
    );
    lifecycle(&server, &server.admin())
        .await
        .revoke(revoke_serial(
            &cert.serial,
            proto::RevocationReason::KeyCompromise,
        ))
        .await
        .unwrap();
    let after = ocsp_post(&server, &plain).await;
    assert_ne!(after, first, "a status change is answered at once");
    let path = server.dir.path().join("after.ocsp");
    std::fs::write(&path, &after).unwrap();
    let (ok, text) = run(Command::new("openssl")
        .args(["ocsp", "-no_nonce", "-respin"])
        .arg(&path)
        .arg("-issuer")
        .arg(server.pki("operational-ca.pem"))
        .arg("-CAfile")
        .arg(server.pki("root-ca.pem"))
        .arg("-resp_text"));
    assert!(ok && text.contains("Response verify OK"), "{text}");
    assert!(text.contains("Cert Status: revoked"), "{text}");

    // RFC 8954: up to 32 octets echoed (each answer signed afresh), 33 refused.
    let with_32 = ocsp_post(&server, &ocsp_request(&server, &serial, Some(&[7; 32]))).await;
    assert_eq!(ocsp_status(&with_32), 0);
    assert!(with_32
        .windows(34)
        .any(|w| w[..2] == [0x04, 32] && w[2..] == [7; 32]));
    let with_33 = ocsp_post(&server, &ocsp_request(&server, &serial, Some(&[7; 33]))).await;
    assert_eq!(ocsp_status(&with_33), 1, "malformedRequest");
    assert_eq!(with_33.len(), 5, "an unsigned error answer, nothing echoed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ocsp_requests_past_the_signature_budget_get_try_later_or_a_cached_answer() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(dir, common::system_now(), |c| {
        c.ocsp_signatures_per_second = 1;
    })
    .await;
    let known = ocsp_request(&server, &[0x11; 16], None);
    let first = ocsp_post(&server, &known).await;
    assert_eq!(ocsp_status(&first), 0);
    // The budget (one a second) is spent: a request never seen gets tryLater…
    let other = ocsp_post(&server, &ocsp_request(&server, &[0x22; 16], None)).await;
    assert_eq!(ocsp_status(&other), 3, "tryLater");
    // …a nonce is left out of the cached answer rather than signed…
    let nonced = ocsp_post(&server, &ocsp_request(&server, &[0x11; 16], Some(&[1; 16]))).await;
    assert_eq!(nonced, first);
    // …and the known request is still answered from the cache.
    assert_eq!(ocsp_post(&server, &known).await, first);
}

fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

fn serial_of(who: &Identity) -> String {
    let der = der_of(&who.cert_pem);
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    medid::domain::hex(cert.raw_serial())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_devices_are_refused_alike_whether_or_not_they_exist() {
    let server = TestServer::start().await;
    server.add_manufacturer("acme", &[]).await;
    server.add_manufacturer("other", &[]).await;
    let mine = enrolled_device(&server, "MINE-1").await;
    let theirs = enrolled_device(&server, "THEIRS-1").await;
    let foreign = server.station("other", "line-9").await;
    let rotation = |serial: &str| proto::GetRotationStatusRequest {
        device: Some(proto::DeviceRef {
            manufacturer_id: "acme".into(),
            serial: serial.into(),
        }),
    };
    let mut life = lifecycle(&server, &foreign).await;
    let exists = life
        .get_rotation_status(rotation("MINE-1"))
        .await
        .unwrap_err();
    let missing = life
        .get_rotation_status(rotation("NO-SUCH"))
        .await
        .unwrap_err();
    assert_eq!(
        exists.code(),
        Code::PermissionDenied,
        "{}",
        exists.message()
    );
    assert_eq!(
        missing.code(),
        Code::PermissionDenied,
        "{}",
        missing.message()
    );

    // A device revoking another's certificate is told no without the other's name, and a
    // serial that does not exist reads the same.
    let mut own = lifecycle(&server, &mine.birth).await;
    let kc = proto::RevocationReason::KeyCompromise;
    let foreign_serial = serial_of(&theirs.birth);
    let err = own
        .revoke(revoke_serial(&foreign_serial, kc))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    assert!(!err.message().contains("THEIRS-1"), "{}", err.message());
    let nothing = own
        .revoke(revoke_serial("0badc0ffee", kc))
        .await
        .unwrap_err();
    assert_eq!(
        nothing.code(),
        Code::PermissionDenied,
        "{}",
        nothing.message()
    );
    assert_eq!(
        err.message().replace(&foreign_serial, "S"),
        nothing.message().replace("0badc0ffee", "S"),
        "the same words for a foreign and a missing certificate"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reported_access_times_outside_the_window_are_refused_with_one_event() {
    let server = TestServer::start().await;
    server.add_manufacturer("acme", &[]).await;
    let device = enrolled_device(&server, "WIN-1").await;
    let gateway = server.issue(PrincipalRole::Gateway, "icu-gw", "").await;
    let mut audit =
        medid::proto::audit_service_client::AuditServiceClient::new(server.channel(&gateway).await);
    // Relative to medid's (pinned) clock.
    let now = server.clock.now().unix_timestamp();
    let year_1 = -62_135_596_800;
    let year_2100 = 4_102_444_800;
    let year_9999 = 253_402_300_799;
    for seconds in [year_1, year_2100, year_9999, now + 301, now - 31 * 86_400] {
        let before = server.audit_events().await.len();
        let mut event = common::access_event(&device.serial, 1);
        event.occurred_at = Some(prost_types::Timestamp { seconds, nanos: 0 });
        let err = audit.record_access(event).await.unwrap_err();
        assert_eq!(
            err.code(),
            Code::InvalidArgument,
            "{seconds}: {}",
            err.message()
        );
        assert!(err.message().contains("window"), "{}", err.message());
        let events = server.audit_events().await;
        assert_eq!(events.len(), before + 1, "one refusal event");
        assert_eq!(
            events.last().unwrap().event.action,
            medid::audit::Action::DataAccess
        );
        assert_ne!(
            events.last().unwrap().event.outcome,
            medid::audit::Outcome::Success
        );
    }
    for seconds in [now + 299, now - 29 * 86_400] {
        let mut event = common::access_event(&device.serial, 2);
        event.occurred_at = Some(prost_types::Timestamp { seconds, nanos: 0 });
        audit.record_access(event).await.expect("inside the window");
    }
}
