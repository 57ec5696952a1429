//! A PKI under an existing root whose key medid never holds: an enterprise root made here with
//! OpenSSL (RSA-3072, as enterprise roots often are), `medid ca init --external-root` making
//! the issuing CAs' keys and CSRs, the root signing them with `openssl x509 -req`, its CRL made
//! with `openssl ca -gencrl`, and `medid ca install` checking and installing it all. The real
//! server then issues under that root, checked by `openssl verify` and pkilint, and the
//! operational CA rolls over through `ca rotate --csr` and `ca install-issuer`.

mod common;

use std::path::Path;
use std::process::Command;

use common::{EnterpriseRoot, TestServer, ISSUING};
use medid::proto::{EnrollDeviceRequest, PrincipalRole};

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

fn ok(cmd: &mut Command) -> String {
    let (ok, text) = run(cmd);
    assert!(ok, "{cmd:?}: {text}");
    text
}

fn medid(args: &[&str]) -> (bool, String) {
    run(Command::new(env!("CARGO_BIN_EXE_medid")).args(args))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuing_cas_chained_to_an_existing_root_are_installed_after_checks_and_issue() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let pki_arg = pki.to_str().unwrap();
    let work = tempfile::tempdir().unwrap();
    let root = EnterpriseRoot::make(&work.path().join("root"), "Hospital Root CA");

    // Stage one: keys and CSRs, no root, no PKI yet.
    let (made, text) = medid(&[
        "ca",
        "init",
        "--dir",
        pki_arg,
        "--external-root",
        "--trust-domain",
        "hospital.test",
    ]);
    assert!(made, "{text}");
    assert!(text.contains("medid ca install"), "{text}");
    for present in [
        "device-ca.csr",
        "operational-ca.csr",
        "device-ca.key",
        "operational-ca.key",
        "audit-signing.key",
        "pending.json",
    ] {
        assert!(pki.join(present).exists(), "{present}");
    }
    for absent in [
        "root-ca.pem",
        "root-ca.key",
        "pki.json",
        "server.pem",
        "admin.pem",
    ] {
        assert!(!pki.join(absent).exists(), "{absent}");
    }
    // OpenSSL reads each CSR: self-signed, asking for a CA with pathLenConstraint 0.
    for csr in ["device-ca.csr", "operational-ca.csr"] {
        let text = ok(Command::new("openssl")
            .args(["req", "-noout", "-text", "-verify", "-in"])
            .arg(pki.join(csr)));
        assert!(
            text.contains("verify OK") || text.contains("self-signature verify OK"),
            "{text}"
        );
        assert!(text.contains("CA:TRUE, pathlen:0"), "{text}");
        assert!(text.contains("Certificate Sign, CRL Sign"), "{text}");
    }
    // A second init over it refuses; a server refuses to start on it and says what is next.
    let (again, text) = medid(&["ca", "init", "--dir", pki_arg, "--external-root"]);
    assert!(!again && text.contains("refusing to overwrite"), "{text}");
    let config = medid::config::Config {
        pki_dir: pki.clone(),
        database_url: format!("sqlite://{}", dir.path().join("medid.db").display()),
        create_dev_pki: true,
        ..Default::default()
    };
    let refused = medid::server::prepare(
        &config,
        std::sync::Arc::new(medid::clock::FixedClock::new(common::system_now())),
    )
    .await
    .err()
    .expect("a pending PKI is not served");
    assert!(
        refused
            .to_string()
            .contains("awaits its issuing-CA certificates")
            && refused.to_string().contains("medid ca install"),
        "{refused}"
    );

    // The root signs both CSRs; its CRL comes from `openssl ca -gencrl`.
    let certs = work.path().join("signed");
    std::fs::create_dir(&certs).unwrap();
    let device = certs.join("device-ca.pem");
    let operational = certs.join("operational-ca.pem");
    root.sign(&pki.join("device-ca.csr"), &device, ISSUING);
    root.sign(&pki.join("operational-ca.csr"), &operational, ISSUING);
    let root_crl = root.crl();

    let install = |root_pem: &Path, device: &Path, operational: &Path, crl: Option<&Path>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_medid"));
        cmd.args(["ca", "install", "--dir", pki_arg, "--root"])
            .arg(root_pem)
            .arg("--device-ca")
            .arg(device)
            .arg("--operational-ca")
            .arg(operational);
        if let Some(crl) = crl {
            cmd.arg("--root-crl").arg(crl);
        }
        run(&mut cmd)
    };
    let nothing_written = || {
        for absent in ["root-ca.pem", "device-ca.pem", "pki.json", "server.pem"] {
            assert!(!pki.join(absent).exists(), "{absent} was written");
        }
    };
    // Swapped: each certificate certifies the other CA's key.
    let (done, text) = install(&root.pem(), &operational, &device, None);
    assert!(
        !done
            && text.contains(
                "the device-identity CA certificate: it does not certify the key made for it"
            ),
        "{text}"
    );
    nothing_written();
    // Signed by another root.
    let stranger = EnterpriseRoot::make(&work.path().join("stranger"), "Hospital Root CA");
    let (done, text) = install(&stranger.pem(), &device, &operational, None);
    assert!(
        !done && text.contains("not signed by the root certificate"),
        "{text}"
    );
    nothing_written();
    // An intermediate given as the root.
    let (done, text) = install(&device, &device, &operational, None);
    assert!(!done && text.contains("not self-signed"), "{text}");
    nothing_written();
    // Without pathLenConstraint 0, or not a CA at all.
    for (name, extensions, refusal) in [
        (
            "loose.pem",
            "basicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign",
            "pathLenConstraint absent",
        ),
        (
            "leafish.pem",
            "basicConstraints = critical,CA:FALSE\nkeyUsage = critical,digitalSignature",
            "not a CA certificate",
        ),
    ] {
        let cert = certs.join(name);
        root.sign(&pki.join("operational-ca.csr"), &cert, extensions);
        let (done, text) = install(&root.pem(), &device, &cert, None);
        assert!(!done && text.contains(refusal), "{text}");
    }
    // A root CRL signed by another root.
    let (done, text) = install(&root.pem(), &device, &operational, Some(&stranger.crl()));
    assert!(!done && text.contains("not a CRL of the root CA"), "{text}");
    nothing_written();

    let (done, text) = install(&root.pem(), &device, &operational, Some(&root_crl));
    assert!(done, "{text}");
    assert!(text.contains("created PKI in"), "{text}");
    for spent in ["pending.json", "device-ca.csr", "operational-ca.csr"] {
        assert!(!pki.join(spent).exists(), "{spent}");
    }
    assert!(!pki.join("root-ca.key").exists());
    let (again, text) = install(&root.pem(), &device, &operational, None);
    assert!(!again && text.contains("complete PKI already"), "{text}");

    // The real server under the enterprise root.
    let server = TestServer::start_in(dir).await;
    server.add_manufacturer("acme", &[]).await;
    let station = server.station("acme", "line-1").await;
    let birth = server
        .enrollment_client(&station)
        .await
        .enroll_device(EnrollDeviceRequest {
            csr: common::csr_p256().0,
            serial: "EXT-1".into(),
            model: "X".into(),
            udi_di: String::new(),
        })
        .await
        .expect("enrollment under the existing root")
        .into_inner()
        .certificate
        .unwrap();
    let gateway = server.issue(PrincipalRole::Gateway, "gw-1", "").await;
    let out = work.path().join("issued");
    std::fs::create_dir(&out).unwrap();
    let birth_pem = out.join("birth.pem");
    std::fs::write(&birth_pem, &birth.certificate_pem).unwrap();
    let gateway_pem = out.join("gateway.pem");
    std::fs::write(&gateway_pem, &gateway.cert_pem).unwrap();
    // The birth certificate ends with the device-identity CA the root gave five years.
    let birth_der = medid::pem::parse_certificates(birth.certificate_pem.as_bytes()).unwrap();
    let (_, parsed) = x509_parser::parse_x509_certificate(&birth_der[0]).unwrap();
    let device_ca_end = {
        let der = medid::pem::parse_certificates(&std::fs::read(&device).unwrap()).unwrap();
        let (_, c) = x509_parser::parse_x509_certificate(&der[0]).unwrap();
        c.validity().not_after.timestamp()
    };
    assert_eq!(parsed.validity().not_after.timestamp(), device_ca_end);
    for (leaf, ca) in [(&birth_pem, &device), (&gateway_pem, &operational)] {
        let text = ok(Command::new("openssl")
            .args(["verify", "-x509_strict", "-CAfile"])
            .arg(root.pem())
            .arg("-untrusted")
            .arg(ca)
            .arg(leaf));
        assert!(text.contains(": OK"), "{text}");
    }
    // The root's own CRL, served as given.
    let fetched = out.join("root.crl");
    ok(Command::new("curl")
        .args(["-sSf", "-o"])
        .arg(&fetched)
        .arg(format!("{}/crl/root.crl", server.http_url)));
    let text = ok(Command::new("openssl")
        .args(["crl", "-inform", "DER", "-noout", "-verify", "-CAfile"])
        .arg(root.pem())
        .arg("-in")
        .arg(&fetched));
    assert!(text.contains("verify OK"), "{text}");
    // The service never signs a root CRL here: it has no root key.
    server.ca.maintain().await.unwrap();
    assert_eq!(server.ca.authority.root_crl().unwrap().number, 1);

    // Rolling the operational CA over under that root: a CSR, the root's signature, install.
    let rotate_csr = [
        "ca",
        "rotate",
        "--issuer",
        "operational",
        "--csr",
        "--dir",
        pki_arg,
    ];
    let (asked, text) = medid(&rotate_csr);
    assert!(asked, "{text}");
    let next_csr = pki.join("operational-ca-2.csr");
    assert!(next_csr.exists() && pki.join("operational-ca-2.key").exists());
    assert!(!pki.join("operational-ca-2.pem").exists());
    let (twice, text) = medid(&rotate_csr);
    assert!(!twice && text.contains("awaits its certificate"), "{text}");
    let install_next = |cert: &Path| {
        run(Command::new(env!("CARGO_BIN_EXE_medid"))
            .args([
                "ca",
                "install-issuer",
                "--issuer",
                "operational",
                "--dir",
                pki_arg,
                "--cert",
            ])
            .arg(cert))
    };
    let (done, text) = install_next(&operational);
    assert!(
        !done && text.contains("does not certify the key made for it"),
        "{text}"
    );
    assert!(!pki.join("operational-ca-2.pem").exists());
    let second = certs.join("operational-ca-2.pem");
    root.sign(&next_csr, &second, ISSUING);
    let (done, text) = install_next(&second);
    assert!(done && text.contains("generation 2"), "{text}");
    assert!(!next_csr.exists());
    let loaded = server.ca.load_new_generations().await.unwrap();
    assert_eq!(loaded.len(), 1);
    let gateway_2 = server.issue(PrincipalRole::Gateway, "gw-2", "").await;
    let gateway_2_pem = out.join("gateway-2.pem");
    std::fs::write(&gateway_2_pem, &gateway_2.cert_pem).unwrap();
    let text = ok(Command::new("openssl")
        .args(["verify", "-x509_strict", "-CAfile"])
        .arg(root.pem())
        .arg("-untrusted")
        .arg(&second)
        .arg(&gateway_2_pem));
    assert!(text.contains(": OK"), "{text}");

    let lint_dir = out.join("lint");
    std::fs::create_dir(&lint_dir).unwrap();
    for p in [&birth_pem, &gateway_pem, &gateway_2_pem] {
        std::fs::copy(p, lint_dir.join(p.file_name().unwrap())).unwrap();
    }
    common::assert_pkilint_clean(&lint_dir);
}
