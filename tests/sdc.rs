//! IEEE 11073 SDC certificate profiles: device models configured in `[[sdc_profiles]]` get
//! the SDC Participant Key Purposes in their operational certificates' EKU, beside clientAuth
//! and serverAuth; other models do not. Read back with OpenSSL and x509-parser, and linted;
//! then used by two participants of an independent SDC stack (`sdc11073`, through
//! `tests/sdc/exchange.py`, with `MEDID_SDC_PYTHON`, which `.ci/run` sets).

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
    operational_with_key(server, station, serial, model).await.0
}

/// A device's operational certificate, the same followed by its chain (PEM), and its key.
async fn operational_with_key(
    server: &TestServer,
    station: &Identity,
    serial: &str,
    model: &str,
) -> (String, String, String) {
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
    let (csr, key_pem) = csr_p256();
    let issued = LifecycleServiceClient::new(server.channel(&device).await)
        .request_operational_certificate(proto::RequestOperationalCertificateRequest { csr })
        .await
        .expect("renewal")
        .into_inner();
    let chain: String = std::iter::once(issued.certificate_pem.clone())
        .chain(issued.chain_pem.iter().cloned())
        .collect();
    (issued.certificate_pem, chain, key_pem)
}

/// A server whose `MON-X` monitors provide and consume and whose `CENTRAL-Y` stations
/// consume; `PUMP-Z` is not an SDC model. With manufacturer acme and one of its stations.
async fn sdc_server() -> (TestServer, Identity) {
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
    (server, station)
}

/// Runs the two sdc11073 participants (`tests/sdc/exchange.py`) with these certificates; its
/// JSON line. `None` without `MEDID_SDC_PYTHON`.
fn sdc_exchange(
    dir: &std::path::Path,
    provider: &str,
    consumer: &str,
    check: bool,
) -> Option<serde_json::Value> {
    let python = std::env::var("MEDID_SDC_PYTHON").ok()?;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdc/exchange.py");
    let mut cmd = std::process::Command::new(&python);
    cmd.arg(script).arg(dir).args([provider, consumer]);
    if !check {
        cmd.arg("--no-purpose-check");
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("MEDID_SDC_PYTHON={python}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_else(|| {
        panic!(
            "exchange.py printed nothing: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    Some(serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
}

/// A monitor (provider and consumer) serves its MDIB to a central station (consumer) over
/// mutual TLS with medid's certificates, through sdc11073 on both sides. A pump's certificate,
/// without the key purposes, is refused in either role by the participants' check (sdc11073
/// alone accepts it, as the last two runs show).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdc11073_participants_exchange_with_medid_certificates_and_refuse_a_peer_without_the_key_purpose(
) {
    if std::env::var_os("MEDID_SDC_PYTHON").is_none() {
        eprintln!("MEDID_SDC_PYTHON not set: the sdc11073 exchange is skipped (.ci/run sets it)");
        return;
    }
    let (server, station) = sdc_server().await;
    let work = tempfile::tempdir().unwrap();
    std::fs::copy(server.pki("root-ca.pem"), work.path().join("ca.pem")).unwrap();
    for (name, serial, model) in [
        ("monitor", "MON-1", "MON-X"),
        ("central", "CEN-1", "CENTRAL-Y"),
        ("pump", "PUMP-1", "PUMP-Z"),
    ] {
        let (_, chain, key) = operational_with_key(&server, &station, serial, model).await;
        std::fs::write(work.path().join(format!("{name}.pem")), chain).unwrap();
        std::fs::write(work.path().join(format!("{name}.key")), key).unwrap();
    }
    let ran = |provider: &str, consumer: &str, check: bool| {
        sdc_exchange(work.path(), provider, consumer, check).expect("MEDID_SDC_PYTHON is set")
    };

    let ok = ran("monitor", "central", true);
    assert_eq!(ok["ok"], true, "{ok}");
    assert_eq!(ok["metric"], "hr", "{ok}");
    assert!(ok["provider_purposes"]
        .as_array()
        .unwrap()
        .contains(&serde_json::json!(PROVIDER)));
    assert_eq!(ok["refusals"], serde_json::json!([]), "{ok}");

    // The pump as consumer: the monitor (provider) refuses it.
    let refused = ran("monitor", "pump", true);
    assert_eq!(refused["ok"], false, "{refused}");
    assert_eq!(refused["refusals"][0]["by"], "provider", "{refused}");
    assert!(refused["refusals"][0]["reason"]
        .as_str()
        .unwrap()
        .contains(CONSUMER));
    // The pump as provider: the central station (consumer) refuses it.
    let refused = ran("pump", "central", true);
    assert_eq!(refused["ok"], false, "{refused}");
    assert_eq!(refused["refusals"][0]["by"], "consumer", "{refused}");
    assert!(refused["refusals"][0]["reason"]
        .as_str()
        .unwrap()
        .contains(PROVIDER));
    // The stack on its own accepts both: the refusals above are the participants' check.
    for (provider, consumer) in [("monitor", "pump"), ("pump", "central")] {
        let accepted = ran(provider, consumer, false);
        assert_eq!(accepted["ok"], true, "{provider} → {consumer}: {accepted}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_models_get_the_sdc_key_purposes_in_their_operational_certificates() {
    let (server, station) = sdc_server().await;
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
