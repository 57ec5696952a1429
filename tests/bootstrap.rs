//! PKI bootstrap, restarts and recovery from an issuance interrupted mid-cycle.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::{csr_p256, TestServer};
use medid::proto::EnrollDeviceRequest;
use medid::store::{AuditLog, PkiBinding};

fn medid(args: &[&str], dir: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_medid"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("medid runs")
}

#[test]
fn ca_init_writes_private_keys_0600_and_refuses_to_overwrite_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let out = medid(
        &[
            "ca",
            "init",
            "--dir",
            "pki",
            "--trust-domain",
            "hospital.example",
        ],
        dir.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pki = dir.path().join("pki");
    for key in [
        "root-ca.key",
        "device-ca.key",
        "operational-ca.key",
        "server.key",
        "admin.key",
        "audit-signing.key",
    ] {
        let mode = std::fs::metadata(pki.join(key))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{key}");
    }
    let meta = std::fs::read_to_string(pki.join("pki.json")).unwrap();
    assert!(meta.contains("hospital.example"));
    let root_before = std::fs::read(pki.join("root-ca.pem")).unwrap();

    let again = medid(&["ca", "init", "--dir", "pki"], dir.path());
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    assert_eq!(std::fs::read(pki.join("root-ca.pem")).unwrap(), root_before);

    let forced = medid(&["ca", "init", "--dir", "pki", "--force"], dir.path());
    assert!(forced.status.success());
    assert_ne!(std::fs::read(pki.join("root-ca.pem")).unwrap(), root_before);
}

#[test]
fn the_ca_hierarchy_follows_the_design() {
    let dir = tempfile::tempdir().unwrap();
    assert!(medid(&["ca", "init", "--dir", "pki"], dir.path())
        .status
        .success());
    let read = |name: &str| {
        let pem = std::fs::read(dir.path().join("pki").join(name)).unwrap();
        medid::pem::parse_certificates(&pem).unwrap()[0].to_vec()
    };
    let root = read("root-ca.pem");
    let device = read("device-ca.pem");
    let operational = read("operational-ca.pem");
    let parse = |der: &[u8]| -> (bool, Option<u32>, String) {
        let (_, c) = x509_parser::parse_x509_certificate(der).unwrap();
        let bc = c.basic_constraints().unwrap().unwrap();
        assert!(bc.critical);
        (
            bc.value.ca,
            bc.value.path_len_constraint,
            c.validity().not_after.to_string(),
        )
    };
    let (ca, _, root_end) = parse(&root);
    assert!(ca);
    assert!(root_end.contains("9999"));
    let (ca, path_len, device_end) = parse(&device);
    assert!(ca && path_len == Some(0));
    assert!(device_end.contains("9999"));
    let (ca, path_len, operational_end) = parse(&operational);
    assert!(ca && path_len == Some(0));
    assert!(
        !operational_end.contains("9999"),
        "operational CA is finite"
    );
}

#[tokio::test]
async fn a_restart_keeps_every_record_and_adopts_the_bootstrap_admin_once() {
    let server = TestServer::start().await;
    server.add_manufacturer("acme", &[]).await;
    let dir = server.stop().await;
    let server = TestServer::start_in(dir).await;
    let list = server
        .admin_client()
        .await
        .list_manufacturers(medid::proto::ListManufacturersRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.manufacturers.len(), 1);
    let adoptions = server
        .audit_events()
        .await
        .iter()
        .filter(|e| e.event.action == medid::audit::Action::PrincipalBootstrap)
        .count();
    assert_eq!(adoptions, 1);
}

#[tokio::test]
async fn audit_sequence_numbers_are_gap_free() {
    let server = TestServer::start().await;
    server.add_manufacturer("acme", &[]).await;
    let station = server.station("acme", "line-1").await;
    let mut enrollment = server.enrollment_client(&station).await;
    for i in 0..5 {
        let _ = enrollment
            .enroll_device(EnrollDeviceRequest {
                csr: if i % 2 == 0 {
                    csr_p256().0
                } else {
                    vec![1, 2, 3]
                },
                serial: format!("G-{i}"),
                model: "M".into(),
                udi_di: String::new(),
            })
            .await;
    }
    let seqs: Vec<i64> = server.audit_events().await.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>());
}

#[tokio::test]
async fn audit_rows_cannot_be_updated_or_deleted_through_sql() {
    let server = TestServer::start().await;
    let pool = server.db().await;
    let upd = sqlx::query("UPDATE audit_events SET outcome = 'success'")
        .execute(&pool)
        .await;
    assert!(upd.unwrap_err().to_string().contains("append-only"));
    let del = sqlx::query("DELETE FROM audit_events").execute(&pool).await;
    assert!(del.unwrap_err().to_string().contains("append-only"));
}

/// Runs `medid ARGS` under `umask 000`, the most permissive an operator could leave.
fn under_open_umask(dir: &std::path::Path, args: &str) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("umask 000 && exec \"$MEDID\" {args}"))
        .env("MEDID", env!("CARGO_BIN_EXE_medid"))
        .env("MEDID_LOG", "info")
        .current_dir(dir);
    cmd
}

fn mode_of(path: &std::path::Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Waits up to 30 s for `path` to exist (liveness bound, not a performance figure).
fn wait_for(path: &std::path::Path) {
    for _ in 0..600 {
        if path.exists() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("{} never appeared", path.display());
}

fn sigterm_and_wait(child: std::process::Child) -> (std::process::ExitStatus, String) {
    Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn data_files_are_private_whatever_the_umask_and_exposed_ones_are_named_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let (grpc, http) = (common::free_port(), common::free_port());
    std::fs::write(
        dir.path().join("medid.toml"),
        format!(
            "listen = \"127.0.0.1:{grpc}\"\nhttp_listen = \"127.0.0.1:{http}\"\n\
             database_url = \"sqlite://data/medid.db\"\npki_dir = \"pki\"\n\
             create_dev_pki = true\nest_enabled = false\nconsole_enabled = false\ncheckpoint_every_seconds = 1\n\
             ca_expiry_warning_days = 2000\n"
        ),
    )
    .unwrap();
    let serve = || {
        under_open_umask(dir.path(), "serve --config medid.toml")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("medid serve starts")
    };
    let child = serve();
    let data = dir.path().join("data");
    wait_for(&data.join("checkpoints/latest.note"));
    let conn = format!(
        "--server https://localhost:{grpc} --ca pki/root-ca.pem --cert pki/admin.pem --key pki/admin.key"
    );
    let issued = under_open_umask(
        dir.path(),
        &format!("admin issue --role auditor --id aud --out creds {conn}"),
    )
    .output()
    .unwrap();
    assert!(issued.status.success(), "{issued:?}");
    let export = under_open_umask(
        dir.path(),
        &format!(
            "audit export --out exports/trail.csv --format csv --server https://localhost:{grpc} \
             --ca pki/root-ca.pem --cert creds/aud.pem --key creds/aud.key"
        ),
    );
    std::fs::create_dir(dir.path().join("exports")).unwrap();
    let exported = { export }.output().unwrap();
    assert!(exported.status.success(), "{exported:?}");
    let (status, stderr) = sigterm_and_wait(child);
    assert!(status.success(), "a complete drain exits 0: {stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.contains("stopped: every connection drained"), "{last}");
    // The 5-year operational CA is within the 2000-day warning; the root never ends.
    assert!(
        stderr.contains("the operational CA certificate ends in"),
        "{stderr}"
    );
    assert!(!stderr.contains("the root CA certificate ends"), "{stderr}");
    // stderr is a pipe here, not a terminal: plain text, addresses as values.
    assert!(
        !stderr.contains('\u{1b}'),
        "ANSI escape codes in a log file: {stderr}"
    );
    assert!(
        stderr.contains("serving gRPC over mTLS addr=127.0.0.1:"),
        "{stderr}"
    );
    assert!(!stderr.contains("Some("), "{stderr}");

    for dir in [
        data.clone(),
        data.join("checkpoints"),
        dir.path().join("pki"),
    ] {
        assert_eq!(mode_of(&dir), 0o700, "{}", dir.display());
    }
    let mut private = vec![
        data.join("medid.db"),
        data.join("checkpoints/latest.note"),
        data.join("checkpoints/checkpoints.log"),
        dir.path().join("exports/trail.csv"),
        dir.path().join("exports/trail.bundle.jsonl"),
        dir.path().join("creds/aud.key"),
    ];
    for entry in std::fs::read_dir(dir.path().join("pki")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "key") {
            private.push(path);
        }
    }
    for file in &private {
        assert_eq!(mode_of(file), 0o600, "{}", file.display());
    }

    // Restarted, the service keeps its WAL and shared-memory files private too, and names a
    // file someone made readable.
    std::fs::set_permissions(
        dir.path().join("pki/operational-ca.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let child = serve();
    wait_for(&data.join("medid.db-shm"));
    let channel_up = (0..600).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(50));
        std::net::TcpStream::connect(("127.0.0.1", http)).is_ok()
    });
    assert!(channel_up, "medid came back");
    for file in [data.join("medid.db-wal"), data.join("medid.db-shm")] {
        assert_eq!(mode_of(&file), 0o600, "{}", file.display());
    }
    let (_, stderr) = sigterm_and_wait(child);
    let warning = stderr
        .lines()
        .find(|l| l.contains("readable by others"))
        .unwrap_or_else(|| panic!("no warning in {stderr}"));
    assert!(warning.contains("operational-ca.key"), "{warning}");
    assert!(warning.contains("0644"), "{warning}");
}

#[tokio::test]
async fn a_database_refuses_a_pki_directory_it_was_not_created_with() {
    let server = TestServer::start().await;
    server.add_manufacturer("acme", &[]).await;
    let config = server.config.clone();
    let clock = server.clock.clone();
    let dir = server.stop().await;
    let bound = medid::store::Store::open_url(&config.database_url)
        .await
        .unwrap()
        .pki_binding()
        .await
        .unwrap();
    let (crls, parts): (Vec<_>, Vec<_>) = bound
        .iter()
        .partition(|f| f.part == medid::domain::PkiPart::RootCrl);
    assert_eq!(parts.len(), 4, "root, both issuing CAs and the audit key");
    assert_eq!(crls.len(), 1, "the root CRL put in service");

    // Another PKI beside it: the same database is refused, naming both roots.
    let other = dir.path().join("other-pki");
    assert!(medid(&["ca", "init", "--dir", "other-pki"], dir.path())
        .status
        .success());
    let elsewhere = medid::config::Config {
        pki_dir: other.clone(),
        create_dev_pki: false,
        ..config.clone()
    };
    let Err(medid::Error::FailedPrecondition(msg)) =
        medid::server::prepare(&elsewhere, clock.clone()).await
    else {
        panic!("another PKI is refused");
    };
    let root = |pki: &std::path::Path| {
        let pem = std::fs::read(pki.join("root-ca.pem")).unwrap();
        let der = medid::pem::parse_certificates(&pem).unwrap().remove(0);
        medid::store::certificates::fingerprint(&der)
    };
    assert!(
        msg.contains(&format!("root CA certificate is sha256:{}", root(&other))),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("created with sha256:{}", root(&config.pki_dir))),
        "{msg}"
    );
    assert!(msg.contains("other-pki"), "names the directory: {msg}");

    // Only the audit key swapped: refused too.
    std::fs::copy(
        other.join("audit-signing.key"),
        config.pki_dir.join("audit-signing.key"),
    )
    .unwrap();
    let Err(medid::Error::FailedPrecondition(msg)) =
        medid::server::prepare(&config, clock.clone()).await
    else {
        panic!("another audit key is refused");
    };
    assert!(msg.contains("audit-signing public key"), "{msg}");
    let events = medid::store::Store::open_url(&config.database_url)
        .await
        .unwrap()
        .audit_events(0, 1000)
        .await
        .unwrap();
    assert_eq!(
        events
            .iter()
            .filter(|e| e.event.action == medid::audit::Action::PkiBind)
            .count(),
        1,
        "recorded once, at the first start, and a refused start writes nothing"
    );
}

#[test]
fn ca_init_with_a_configuration_puts_no_loopback_url_or_name_in_production_certificates() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("medid.toml"),
        "pki_dir = \"pki\"\npublic_base_url = \"http://pki.hospital.example\"\nserver_validity_days = 30\n",
    )
    .unwrap();
    let out = medid(
        &[
            "ca",
            "init",
            "--config",
            "medid.toml",
            "--trust-domain",
            "hospital.example",
            "--server-name",
            "pki.hospital.example",
            "--server-name",
            "10.0.0.7",
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(!said.contains("note:"), "no development notes: {said}");
    let leaf = |name: &str| {
        let pem = std::fs::read(dir.path().join("pki").join(name)).unwrap();
        medid::pem::parse_certificates(&pem)
            .unwrap()
            .remove(0)
            .to_vec()
    };
    let server = leaf("server.pem");
    let (_, cert) = x509_parser::parse_x509_certificate(&server).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    let names: Vec<String> = san
        .value
        .general_names
        .iter()
        .map(|n| format!("{n:?}"))
        .collect();
    assert!(
        names.iter().any(|n| n.contains("pki.hospital.example")),
        "{names:?}"
    );
    assert!(
        names.iter().any(|n| n.contains("[10, 0, 0, 7]")),
        "{names:?}"
    );
    assert!(
        !names
            .iter()
            .any(|n| n.contains("localhost") || n.contains("[127, 0, 0, 1]")),
        "{names:?}"
    );
    let validity = cert.validity();
    let days = (validity.not_after.timestamp() - validity.not_before.timestamp()) / 86_400;
    assert!(
        (29..=30).contains(&days),
        "server_validity_days from the file: {days}"
    );
    for name in ["server.pem", "admin.pem"] {
        let der = leaf(name);
        let text = String::from_utf8_lossy(&der).into_owned();
        assert!(
            text.contains("http://pki.hospital.example/"),
            "{name} carries the public URL"
        );
        assert!(
            !text.contains("127.0.0.1"),
            "{name} carries no loopback URL"
        );
    }

    // Without names or a URL, the development defaults, and ca init says so.
    let dev = medid(&["ca", "init", "--dir", "dev"], dir.path());
    let said = String::from_utf8_lossy(&dev.stdout);
    assert!(
        said.contains("--server-name") && said.contains("--public-base-url"),
        "{said}"
    );
}
