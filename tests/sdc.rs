//! IEEE 11073 SDC certificate profiles: device models configured in `[[sdc_profiles]]` get
//! the SDC Participant Key Purposes in their operational certificates' EKU, beside clientAuth
//! and serverAuth; other models do not. Read back with OpenSSL and x509-parser, and linted.

mod common;

use common::{csr_p256, Identity, TestServer};
use medid::config::{Config, SdcProfileConfig, SdcRole};
use medid::proto::{self, lifecycle_service_client::LifecycleServiceClient};

const PROVIDER: &str = "1.2.840.10004.20701.1.1";
const CONSUMER: &str = "1.2.840.10004.20701.1.2";

fn profile(model: &str, roles: &[SdcRole]) -> SdcProfileConfig {
    SdcProfileConfig {
        manufacturer: "acme".into(),
        model: model.into(),
        roles: roles.to_vec(),
    }
}

/// The EKU OIDs of a PEM certificate, as x509-parser reads them.
fn ekus(pem: &str) -> Vec<String> {
    let der = medid::pem::parse_certificates(pem.as_bytes())
        .unwrap()
        .remove(0);
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let eku = cert.extended_key_usage().unwrap().expect("an EKU").value;
    let mut out = Vec::new();
    if eku.server_auth {
        out.push("serverAuth".to_owned());
    }
    if eku.client_auth {
        out.push("clientAuth".to_owned());
    }
    out.extend(eku.other.iter().map(|o| o.to_id_string()));
    out
}

async fn operational(server: &TestServer, station: &Identity, serial: &str, model: &str) -> String {
    let (csr, key_pem) = csr_p256();
    let birth = server
        .enrollment_client(station)
        .await
        .enroll_device(proto::EnrollDeviceRequest {
            csr,
            serial: serial.into(),
            model: model.into(),
            udi_di: String::new(),
        })
        .await
        .expect("enrollment")
        .into_inner()
        .certificate
        .unwrap();
    let device = Identity {
        cert_pem: birth.certificate_pem.clone(),
        key_pem,
    };
    // Birth certificates are IEEE 802.1AR identities: no SDC purposes there.
    assert_eq!(ekus(&birth.certificate_pem), ["clientAuth"]);
    LifecycleServiceClient::new(server.channel(&device).await)
        .request_operational_certificate(proto::RequestOperationalCertificateRequest {
            csr: csr_p256().0,
        })
        .await
        .expect("renewal")
        .into_inner()
        .certificate_pem
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_models_get_the_sdc_key_purposes_in_their_operational_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(dir, common::system_now(), |c| {
        c.sdc_profiles = vec![
            profile("MON-X", &[SdcRole::Provider, SdcRole::Consumer]),
            profile("CENTRAL-Y", &[SdcRole::Consumer]),
        ];
    })
    .await;
    server
        .add_manufacturer("acme", &["MON-X", "CENTRAL-Y", "PUMP-Z"])
        .await;
    let station = server.station("acme", "line-1").await;
    let monitor = operational(&server, &station, "MON-1", "MON-X").await;
    let central = operational(&server, &station, "CEN-1", "CENTRAL-Y").await;
    let pump = operational(&server, &station, "PUMP-1", "PUMP-Z").await;
    assert_eq!(
        ekus(&monitor),
        ["serverAuth", "clientAuth", PROVIDER, CONSUMER]
    );
    assert_eq!(ekus(&central), ["serverAuth", "clientAuth", CONSUMER]);
    assert_eq!(ekus(&pump), ["serverAuth", "clientAuth"]);

    // OpenSSL reads the same EKU (it does not name the SDC purposes, so prints their OIDs).
    let work = tempfile::tempdir().unwrap();
    let path = work.path().join("monitor.pem");
    std::fs::write(&path, &monitor).unwrap();
    let out = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-ext", "extendedKeyUsage", "-in"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("TLS Web Client Authentication, TLS Web Server Authentication")
            && text.contains(PROVIDER)
            && text.contains(CONSUMER),
        "{text}"
    );
    std::fs::write(work.path().join("central.pem"), &central).unwrap();
    common::assert_pkilint_clean(work.path());
}

#[test]
fn a_bad_sdc_profile_is_refused_with_a_clear_error() {
    let with = |profiles: Vec<SdcProfileConfig>| Config {
        sdc_profiles: profiles,
        ..Config::default()
    };
    let err = with(vec![profile("MON-X", &[])]).validate().unwrap_err();
    assert!(err.to_string().contains("at least one role"), "{err}");
    let twice = vec![
        profile("MON-X", &[SdcRole::Provider]),
        profile("MON-X", &[SdcRole::Consumer]),
    ];
    let err = with(twice).validate().unwrap_err();
    assert!(err.to_string().contains("listed twice"), "{err}");
    let mut bad = profile("MON-X", &[SdcRole::Provider]);
    bad.manufacturer = "no such/id".into();
    assert!(with(vec![bad]).validate().is_err());
    let text = "[[sdc_profiles]]\nmanufacturer = \"acme\"\nmodel = \"M\"\nroles = [\"observer\"]\n";
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("medid.toml");
    std::fs::write(&file, text).unwrap();
    let err = Config::from_file(&file).unwrap_err();
    assert!(
        err.to_string().contains("unknown variant `observer`"),
        "{err}"
    );
}
