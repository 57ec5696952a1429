//! CA keys in a PKCS#11 token: SoftHSMv2 (Debian `softhsm2`), a token initialised here in a
//! temporary directory with SoftHSM's own `softhsm2-util`. `medid ca init` (the real CLI)
//! makes every CA key and the audit-signing key inside it; the real server then enrolls,
//! renews, revokes, publishes CRLs and OCSP and signs checkpoints with them, checked by
//! OpenSSL, OpenSC's `pkcs11-tool` and pkilint. The token is then taken away under the running
//! server, and brought back.
//!
//! Runs when SoftHSM is installed; with `MEDID_REQUIRE_SOFTHSM=1` (`.ci/run`) a missing
//! SoftHSM fails the tests instead of skipping them.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::{csr_p256, Identity, TestServer};
use medid::config::Pkcs11Config;
use medid::proto::{self, lifecycle_service_client::LifecycleServiceClient};
use tonic::Code;

const PIN: &str = "314159";

/// The SoftHSM set up for this test binary: its module, and one token per test, made before
/// any test loads the module (SoftHSM reads its token directory when it is initialised). No
/// label is the start of another: `pkcs11-tool --token-label` takes the first token whose
/// label starts with the one given.
struct SoftHsm {
    module: PathBuf,
    _dir: tempfile::TempDir,
    tokens: Vec<(String, PathBuf)>,
    pin_file: PathBuf,
}

const TOKENS: [&str; 5] = [
    "medid-main",
    "medid-refusals",
    "medid-external",
    "medid-split-ca",
    "medid-offline-root",
];

/// One test at a time: the module is process-wide, and the first test restarts it when its
/// token comes back.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn softhsm() -> Option<&'static SoftHsm> {
    static HSM: OnceLock<Option<SoftHsm>> = OnceLock::new();
    HSM.get_or_init(|| {
        let module = medid::issuance::hsm::SOFTHSM_MODULES
            .iter().map(PathBuf::from).find(|p| p.exists());
        let util = Command::new("softhsm2-util").arg("--version").output().is_ok();
        let (Some(module), true) = (module, util) else {
            assert!(
                std::env::var_os("MEDID_REQUIRE_SOFTHSM").is_none(),
                "MEDID_REQUIRE_SOFTHSM is set but SoftHSMv2 (softhsm2-util, libsofthsm2.so) is missing"
            );
            eprintln!("SoftHSMv2 not installed: PKCS#11 tests skipped (.ci/run installs it)");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let tokendir = dir.path().join("tokens");
        std::fs::create_dir(&tokendir).unwrap();
        let conf = dir.path().join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokendir.display()
            ),
        )
        .unwrap();
        // Read by the module in this process and in the `medid` processes started here.
        std::env::set_var("SOFTHSM2_CONF", &conf);
        let mut tokens = Vec::new();
        for label in TOKENS {
            let before = entries(&tokendir);
            let out = Command::new("softhsm2-util")
                .args(["--init-token", "--free", "--label", label, "--pin", PIN])
                .args(["--so-pin", "271828"])
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let made: Vec<PathBuf> = entries(&tokendir)
                .into_iter()
                .filter(|p| !before.contains(p))
                .collect();
            assert_eq!(made.len(), 1, "one directory per token");
            tokens.push((label.to_owned(), made[0].clone()));
        }
        let pin_file = dir.path().join("pin");
        medid::files::write_atomic(&pin_file, PIN.as_bytes(), medid::files::Access::Private)
            .unwrap();
        Some(SoftHsm {
            module,
            _dir: dir,
            tokens,
            pin_file,
        })
    })
    .as_ref()
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect()
}

impl SoftHsm {
    fn config(&self, token: &str) -> Pkcs11Config {
        Pkcs11Config {
            module: self.module.clone(),
            token_label: token.into(),
            pin_file: self.pin_file.clone(),
            sessions: 4,
            key_labels: Default::default(),
            root: None,
        }
    }

    fn token_dir(&self, token: &str) -> &Path {
        &self.tokens.iter().find(|(l, _)| l == token).unwrap().1
    }

    /// `pkcs11-tool` (OpenSC, independent of medid) listing the token's private keys.
    fn list_private_keys(&self, token: &str) -> String {
        let out = Command::new("pkcs11-tool")
            .arg("--module")
            .arg(&self.module)
            .args(["--token-label", token, "--login", "--pin", PIN])
            .args(["--list-objects", "--type", "privkey"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn toml_config(dir: &Path, p: &Pkcs11Config) -> PathBuf {
    let path = dir.join("medid.toml");
    std::fs::write(
        &path,
        format!(
            "pki_dir = {:?}\n[pkcs11]\nmodule = {:?}\ntoken_label = {:?}\npin_file = {:?}\n",
            dir.join("pki"),
            p.module,
            p.token_label,
            p.pin_file
        ),
    )
    .unwrap();
    path
}

fn medid(args: &[&str], config: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_medid"))
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

async fn renew(
    server: &TestServer,
    who: &Identity,
) -> Result<(Identity, proto::IssuedCertificate), tonic::Status> {
    let (csr, key_pem) = csr_p256();
    let issued = LifecycleServiceClient::new(server.channel(who).await)
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

/// GetCertificateStatus of an operational certificate, as `who` (it needs no key).
async fn status_of(server: &TestServer, who: &Identity, serial: &str) -> proto::CertificateStatus {
    LifecycleServiceClient::new(server.channel(who).await)
        .get_certificate_status(proto::GetCertificateStatusRequest {
            certificate: Some(proto::get_certificate_status_request::Certificate::Serial(
                proto::CertificateRef {
                    issuer: 0,
                    serial: serial.into(),
                    issuer_generation: 0,
                },
            )),
        })
        .await
        .expect("status reads need no key")
        .into_inner()
}

async fn try_enroll(
    server: &TestServer,
    station: &Identity,
    serial: &str,
) -> Result<proto::IssuedCertificate, tonic::Status> {
    server
        .enrollment_client(station)
        .await
        .enroll_device(proto::EnrollDeviceRequest {
            csr: csr_p256().0,
            serial: serial.into(),
            model: "X".into(),
            udi_di: String::new(),
        })
        .await
        .map(|r| r.into_inner().certificate.expect("a certificate"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_keys_in_softhsm_sign_everything_and_issuance_waits_out_a_lost_token() {
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(hsm) = softhsm() else { return };
    let token = TOKENS[0];
    let dir = tempfile::tempdir().unwrap();
    let p11 = hsm.config(token);
    let config = toml_config(dir.path(), &p11);

    // `medid ca init` makes the keys inside the token: no CA or audit key file exists.
    let (ok, text) = medid(&["ca", "init", "--trust-domain", "hsm.test"], &config);
    assert!(ok, "{text}");
    assert!(text.contains("generated in the PKCS#11 token"), "{text}");
    let pki = dir.path().join("pki");
    for key in [
        "root-ca.key",
        "device-ca.key",
        "operational-ca.key",
        "audit-signing.key",
    ] {
        assert!(!pki.join(key).exists(), "{key} was written");
    }
    assert!(pki.join("audit-signing.pub").exists());
    let metadata = std::fs::read_to_string(pki.join("pki.json")).unwrap();
    assert!(metadata.contains("\"pkcs11\""), "{metadata}");
    // OpenSC's pkcs11-tool sees four private keys, each sensitive and never extractable.
    let listing = hsm.list_private_keys(token);
    for label in [
        "medid-root",
        "medid-device-identity",
        "medid-operational",
        "medid-audit",
    ] {
        let block = listing
            .split("Private Key Object")
            .find(|b| b.contains(&format!("label:      {label}\n")))
            .unwrap_or_else(|| panic!("no private key {label} in:\n{listing}"));
        assert!(
            block.contains("Access:") && block.contains("sensitive"),
            "{block}"
        );
        assert!(block.contains("never extractable"), "{block}");
        assert!(!block.contains("Access:     extractable"), "{block}");
    }
    // A second init into the same token refuses before making anything.
    let other = tempfile::tempdir().unwrap();
    let other_config = toml_config(other.path(), &p11);
    let (ok, text) = medid(&["ca", "init", "--trust-domain", "hsm.test"], &other_config);
    assert!(
        !ok && text.contains("already holds keys labelled medid-root"),
        "{text}"
    );
    assert!(!other.path().join("pki/root-ca.pem").exists());

    // The real server with those keys.
    let server = TestServer::start_with(dir, common::system_now(), |c| {
        c.pkcs11 = Some(p11.clone());
    })
    .await;
    server.add_manufacturer("acme", &[]).await;
    let station = server.station("acme", "line-1").await;
    let (birth, _) = server.enroll(&station, "HSM-1").await;
    let (operational, good) = renew(&server, &birth).await.expect("renewal");
    let (_, doomed) = renew(&server, &birth).await.expect("renewal");
    // Revoked while the token is away, below.
    let (_, spare) = renew(&server, &birth).await.expect("renewal");
    LifecycleServiceClient::new(server.channel(&server.admin()).await)
        .revoke(common::revoke_for_key_compromise(&doomed.serial))
        .await
        .expect("revocation");
    let work = server.dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let write = |name: &str, text: &str| {
        let p = work.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let birth_pem = write("birth.pem", &birth.cert_pem);
    let good_pem = write("good.pem", &good.certificate_pem);
    let doomed_pem = write("doomed.pem", &doomed.certificate_pem);
    let station_pem = write("station.pem", &station.cert_pem);

    // OpenSSL verifies what the token signed: the chain, the CRL, the OCSP answers.
    let verify = |cert: &Path, ca: &str, crl: Option<&Path>| {
        let mut cmd = Command::new("openssl");
        cmd.args(["verify", "-CAfile"])
            .arg(server.pki("root-ca.pem"))
            .arg("-untrusted")
            .arg(server.pki(ca));
        if let Some(crl) = crl {
            cmd.args(["-crl_check", "-CRLfile"]).arg(crl);
        }
        run(cmd.arg(cert))
    };
    for (cert, ca) in [
        (&birth_pem, "device-ca.pem"),
        (&good_pem, "operational-ca.pem"),
        (&station_pem, "operational-ca.pem"),
    ] {
        let (ok, text) = verify(cert, ca, None);
        assert!(ok, "{}: {text}", cert.display());
    }
    let crl = work.join("operational.crl");
    let (ok, text) = run(Command::new("curl")
        .args(["-sSf", "-o"])
        .arg(&crl)
        .arg(format!("{}/crl/operational.crl", server.http_url)));
    assert!(ok, "{text}");
    let crl_pem = work.join("operational-crl.pem");
    let (ok, text) = run(Command::new("openssl")
        .args(["crl", "-inform", "DER", "-in"])
        .arg(&crl)
        .arg("-out")
        .arg(&crl_pem));
    assert!(ok, "{text}");
    let (ok, text) = verify(&doomed_pem, "operational-ca.pem", Some(&crl_pem));
    assert!(!ok && text.contains("certificate revoked"), "{text}");
    let (ok, text) = verify(&good_pem, "operational-ca.pem", Some(&crl_pem));
    assert!(ok, "{text}");
    let ocsp = |cert: PathBuf| {
        let server = &server;
        move || common::openssl_ocsp(server, &cert)
    };
    let text = tokio::task::block_in_place(ocsp(good_pem.clone()));
    assert!(
        text.contains(": good") && text.contains("Response verify OK"),
        "{text}"
    );
    let text = tokio::task::block_in_place(ocsp(doomed_pem.clone()));
    assert!(text.contains(": revoked"), "{text}");

    // A checkpoint signed by the token's Ed25519 key verifies with the public key file.
    let gateway = server
        .issue(proto::PrincipalRole::Gateway, "icu-gw", "")
        .await;
    let mut audit =
        proto::audit_service_client::AuditServiceClient::new(server.channel(&gateway).await);
    audit
        .record_access(common::access_event("HSM-1", 1))
        .await
        .expect("access recorded");
    let cp = audit
        .get_checkpoint(proto::GetCheckpointRequest {})
        .await
        .expect("checkpoint")
        .into_inner();
    let key = medid::audit::checkpoint::public_key_from_pem(
        &std::fs::read_to_string(server.pki("audit-signing.pub")).unwrap(),
    )
    .unwrap();
    medid::audit::checkpoint::verify(&cp.note, "hsm.test/audit", &key)
        .expect("checkpoint verifies");

    // The root's CRL: signed by the token's root key at `ca init`, and again by the key
    // ceremony's `ca sign-root-crl` (another process, the same token); openssl verifies both.
    let root_crl_verifies = |crl: &Path| {
        run(Command::new("openssl")
            .args([
                "crl", "-inform", "DER", "-noout", "-text", "-verify", "-CAfile",
            ])
            .arg(server.pki("root-ca.pem"))
            .arg("-in")
            .arg(crl))
    };
    let (ok, text) = root_crl_verifies(&server.pki("root.crl"));
    assert!(ok && text.contains("verify OK"), "{text}");
    let (ok, text) = medid(&["ca", "sign-root-crl"], &config);
    assert!(ok && text.contains("signed root CRL number 2"), "{text}");
    let (ok, text) = root_crl_verifies(&server.pki("root.crl"));
    assert!(ok && text.contains("verify OK"), "{text}");
    server
        .ca
        .maintain()
        .await
        .expect("upkeep loads the root CRL");
    assert_eq!(server.ca.authority.root_crl().unwrap().number, 2);

    // pkilint over what the token signed.
    let out = work.join("lint");
    std::fs::create_dir(&out).unwrap();
    for name in ["root-ca.pem", "device-ca.pem", "operational-ca.pem"] {
        std::fs::copy(server.pki(name), out.join(name)).unwrap();
    }
    for p in [&birth_pem, &good_pem, &station_pem] {
        std::fs::copy(p, out.join(p.file_name().unwrap())).unwrap();
    }
    std::fs::copy(&crl, out.join("operational.crl")).unwrap();
    std::fs::copy(server.pki("root.crl"), out.join("root.crl")).unwrap();
    common::assert_pkilint_clean(&out);

    // The CRL in service as the token goes away (the upkeep above may have re-signed it).
    let (ok, text) = run(Command::new("curl")
        .args(["-sSf", "-o"])
        .arg(&crl)
        .arg(format!("{}/crl/operational.crl", server.http_url)));
    assert!(ok, "{text}");

    // The token goes away (its directory is moved aside): issuance answers UNAVAILABLE
    // with a clear message, while status reads, the CRL and OCSP keep being served.
    let token_dir = hsm.token_dir(token).to_path_buf();
    let aside = token_dir.with_extension("away");
    std::fs::rename(&token_dir, &aside).unwrap();
    let refused = try_enroll(&server, &station, "HSM-2").await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("PKCS#11 token \"medid-main\" is unavailable"),
        "{refused:?}"
    );
    let refused = renew(&server, &operational).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    let status = status_of(&server, &gateway, &good.serial).await;
    assert_eq!(status.status, proto::CertStatus::Good as i32);
    let crl_again = work.join("again.crl");
    let (ok, text) = run(Command::new("curl")
        .args(["-sSf", "-o"])
        .arg(&crl_again)
        .arg(format!("{}/crl/operational.crl", server.http_url)));
    assert!(ok, "{text}");
    assert_eq!(
        std::fs::read(&crl_again).unwrap(),
        std::fs::read(&crl).unwrap()
    );
    let text = tokio::task::block_in_place(ocsp(good_pem.clone()));
    assert!(
        text.contains(": good") && text.contains("Response verify OK"),
        "{text}"
    );
    // A revocation while the token is away is recorded and in force at once (status,
    // OCSP); only its CRL waits for the token, and says so.
    let refused = LifecycleServiceClient::new(server.channel(&server.admin()).await)
        .revoke(common::revoke_for_key_compromise(&spare.serial))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains("is revoked (recorded")
            && refused.message().contains("CRL could not be signed yet"),
        "{refused:?}"
    );
    let status = status_of(&server, &gateway, &spare.serial).await;
    assert_eq!(status.status, proto::CertStatus::Revoked as i32);
    let spare_pem = write("spare.pem", &spare.certificate_pem);
    let text = tokio::task::block_in_place(ocsp(spare_pem.clone()));
    assert!(text.contains(": revoked"), "{text}");

    // No row and no certificate for the refused enrollment.
    assert_eq!(
        server
            .count("SELECT COUNT(*) FROM devices WHERE serial = 'HSM-2'")
            .await,
        0
    );

    // The token comes back: issuance resumes without a restart (the pool retries at most
    // once a second, so a few attempts may still be refused).
    std::fs::rename(&aside, &token_dir).unwrap();
    let mut resumed = None;
    for _ in 0..20 {
        match try_enroll(&server, &station, "HSM-2").await {
            Ok(issued) => {
                resumed = Some(issued);
                break;
            }
            Err(e) => {
                assert_eq!(e.code(), Code::Unavailable, "{e:?}");
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
        }
    }
    let resumed = match resumed {
        Some(r) => r,
        None => panic!(
            "enrollment resumes once the token is back: {:?}",
            try_enroll(&server, &station, "HSM-2").await
        ),
    };
    let resumed_pem = write("resumed.pem", &resumed.certificate_pem);
    let (ok, text) = verify(&resumed_pem, "device-ca.pem", None);
    assert!(ok, "{text}");
    renew(&server, &operational).await.expect("renewal resumes");
    // The upkeep signs the CRL the revocation was owed: openssl now refuses the certificate.
    server.ca.maintain().await.expect("upkeep");
    let (ok, text) = run(Command::new("curl")
        .args(["-sSf", "-o"])
        .arg(&crl_again)
        .arg(format!("{}/crl/operational.crl", server.http_url)));
    assert!(ok, "{text}");
    let (ok, text) = run(Command::new("openssl")
        .args(["crl", "-inform", "DER", "-in"])
        .arg(&crl_again)
        .arg("-out")
        .arg(&crl_pem));
    assert!(ok, "{text}");
    let (ok, text) = verify(&spare_pem, "operational-ca.pem", Some(&crl_pem));
    assert!(!ok && text.contains("certificate revoked"), "{text}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_refused_at_start_with_a_wrong_pin_an_exposed_pin_file_or_a_file_pki() {
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(hsm) = softhsm() else { return };
    let token = TOKENS[1];
    let dir = tempfile::tempdir().unwrap();
    let mut p11 = hsm.config(token);

    // A PIN file others may read is refused, before the module is asked anything.
    let exposed = dir.path().join("exposed-pin");
    std::fs::write(&exposed, PIN).unwrap();
    std::fs::set_permissions(
        &exposed,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    p11.pin_file = exposed;
    let (ok, text) = medid(
        &["ca", "init", "--trust-domain", "hsm.test"],
        &toml_config(dir.path(), &p11),
    );
    assert!(!ok && text.contains("is mode 0644; make it 0600"), "{text}");

    // A wrong PIN is refused at start, naming the PIN file.
    let wrong = dir.path().join("wrong-pin");
    medid::files::write_atomic(&wrong, b"000000", medid::files::Access::Private).unwrap();
    p11.pin_file = wrong;
    let (ok, text) = medid(
        &["ca", "init", "--trust-domain", "hsm.test"],
        &toml_config(dir.path(), &p11),
    );
    assert!(!ok && text.contains("PinIncorrect"), "{text}");
    assert!(!dir.path().join("pki/root-ca.pem").exists());

    // A token the module does not have.
    let mut missing = hsm.config(token);
    missing.token_label = "no-such-token".into();
    let (ok, text) = medid(
        &["ca", "init", "--trust-domain", "hsm.test"],
        &toml_config(dir.path(), &missing),
    );
    assert!(!ok && text.contains("no token with this label"), "{text}");

    // A PKI whose keys are files is not served from a token, nor the reverse.
    let files_pki = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(files_pki).await;
    let files_dir = server.stop().await;
    let mut config = medid::config::Config {
        pki_dir: files_dir.path().join("pki"),
        database_url: format!("sqlite://{}", files_dir.path().join("other.db").display()),
        pkcs11: Some(hsm.config(token)),
        ..Default::default()
    };
    let err = medid::server::prepare(&config, std::sync::Arc::new(medid::clock::SystemClock))
        .await
        .err()
        .expect("refused");
    assert!(
        err.to_string()
            .contains("are files, not in a PKCS#11 token"),
        "{err}"
    );
    let (ok, text) = medid(
        &["ca", "init", "--trust-domain", "hsm.test"],
        &toml_config(dir.path(), &hsm.config(token)),
    );
    assert!(ok, "{text}");
    config.pki_dir = dir.path().join("pki");
    config.pkcs11 = None;
    let err = medid::server::prepare(&config, std::sync::Arc::new(medid::clock::SystemClock))
        .await
        .err()
        .expect("refused");
    assert!(
        err.to_string()
            .contains("are in the PKCS#11 token \"medid-refusals\"; configure [pkcs11]"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuing_keys_in_the_token_are_certified_by_an_existing_root() {
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(hsm) = softhsm() else { return };
    let token = TOKENS[2];
    let dir = tempfile::tempdir().unwrap();
    let p11 = hsm.config(token);
    let config = toml_config(dir.path(), &p11);
    let pki = dir.path().join("pki");

    // The issuing keys and the audit key in the token, CSRs signed with them; no root key.
    let (ok, text) = medid(
        &[
            "ca",
            "init",
            "--external-root",
            "--trust-domain",
            "hsm.test",
        ],
        &config,
    );
    assert!(ok, "{text}");
    let listing = hsm.list_private_keys(token);
    for label in ["medid-device-identity", "medid-operational", "medid-audit"] {
        assert!(
            listing.contains(&format!("label:      {label}\n")),
            "no private key {label} in:\n{listing}"
        );
    }
    assert!(!listing.contains("medid-root"), "{listing}");
    for key in ["device-ca.key", "operational-ca.key", "audit-signing.key"] {
        assert!(!pki.join(key).exists(), "{key} was written");
    }
    let work = tempfile::tempdir().unwrap();
    let root = common::EnterpriseRoot::make(&work.path().join("root"), "Maker Root CA");
    let (device, operational) = (work.path().join("device.pem"), work.path().join("op.pem"));
    root.sign(&pki.join("device-ca.csr"), &device, common::ISSUING);
    root.sign(
        &pki.join("operational-ca.csr"),
        &operational,
        common::ISSUING,
    );
    let (ok, text) = medid(
        &[
            "ca",
            "install",
            "--root",
            root.pem().to_str().unwrap(),
            "--device-ca",
            device.to_str().unwrap(),
            "--operational-ca",
            operational.to_str().unwrap(),
        ],
        &config,
    );
    assert!(ok, "{text}");

    // The server signs with the token's keys under that root.
    let server = TestServer::start_with(dir, common::system_now(), |c| {
        c.pkcs11 = Some(p11.clone());
    })
    .await;
    server.add_manufacturer("acme", &[]).await;
    let station = server.station("acme", "line-1").await;
    let birth = try_enroll(&server, &station, "EXT-HSM-1")
        .await
        .expect("enrollment");
    let leaf = work.path().join("birth.pem");
    std::fs::write(&leaf, &birth.certificate_pem).unwrap();
    let (ok, text) = run(Command::new("openssl")
        .args(["verify", "-x509_strict", "-CAfile"])
        .arg(root.pem())
        .arg("-untrusted")
        .arg(&device)
        .arg(&leaf));
    assert!(ok && text.contains(": OK"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_root_key_on_a_token_of_its_own_is_used_only_by_key_ceremonies() {
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(hsm) = softhsm() else { return };
    let (issuing, root_token) = (TOKENS[3], TOKENS[4]);
    let dir = tempfile::tempdir().unwrap();
    let p11 = hsm.config(issuing);
    // The service's configuration, and the ceremony's: the same plus [pkcs11.root].
    let service = toml_config(dir.path(), &p11);
    let ceremony = dir.path().join("ceremony.toml");
    std::fs::write(
        &ceremony,
        std::fs::read_to_string(&service).unwrap()
            + &format!(
                "[pkcs11.root]\ntoken_label = {root_token:?}\npin_file = {:?}\n",
                hsm.pin_file
            ),
    )
    .unwrap();

    let (ok, text) = medid(&["ca", "init", "--trust-domain", "hsm.test"], &ceremony);
    assert!(ok, "{text}");
    let in_root = hsm.list_private_keys(root_token);
    assert!(in_root.contains("label:      medid-root\n"), "{in_root}");
    assert_eq!(
        in_root.matches("Private Key Object").count(),
        1,
        "{in_root}"
    );
    let in_issuing = hsm.list_private_keys(issuing);
    assert!(!in_issuing.contains("medid-root"), "{in_issuing}");
    assert_eq!(
        in_issuing.matches("Private Key Object").count(),
        3,
        "{in_issuing}"
    );

    // The service, without [pkcs11.root], has no root key: it never signs a root CRL.
    let server = TestServer::start_with(dir, common::system_now(), |c| {
        c.pkcs11 = Some(p11.clone());
    })
    .await;
    server.add_manufacturer("acme", &[]).await;
    let station = server.station("acme", "line-1").await;
    try_enroll(&server, &station, "SPLIT-1")
        .await
        .expect("enrollment with the issuing token");
    let later = medid::clock::Clock::now(server.clock.as_ref()) + time::Duration::days(200);
    assert_eq!(
        server
            .ca
            .authority
            .renew_root_crl(later, medid::issuance::root_crl::ROOT_CRL_VALIDITY)
            .unwrap(),
        None
    );

    // Ceremonies with the root's token: the next generation, and the next root CRL.
    let (ok, text) = medid(&["ca", "rotate", "--issuer", "operational"], &ceremony);
    assert!(ok, "{text}");
    assert_eq!(server.ca.load_new_generations().await.unwrap().len(), 1);
    let (ok, text) = medid(&["ca", "sign-root-crl"], &ceremony);
    assert!(ok && text.contains("number 2"), "{text}");
    server.ca.maintain().await.unwrap();
    assert_eq!(server.ca.authority.root_crl().unwrap().number, 2);
    // The service's configuration cannot: its token has no root key.
    let (ok, text) = medid(&["ca", "sign-root-crl"], &service);
    assert!(!ok && text.contains("medid-root"), "{text}");
    try_enroll(&server, &station, "SPLIT-2")
        .await
        .expect("enrollment under generation 2");
}
