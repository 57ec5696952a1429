//! The `medid` binary as an operator and a device use it, against the real server.

mod common;

use std::path::Path;
use std::process::Command;

use common::TestServer;

struct Cli<'a> {
    server: &'a TestServer,
}

impl Cli<'_> {
    /// Runs `medid ARGS` with --server/--ca for this server and the given identity files.
    fn run(&self, args: &[&str], cert: &Path, key: &Path) -> (bool, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_medid"))
            .args(args)
            .arg("--server")
            .arg(&self.server.url)
            .arg("--ca")
            .arg(self.server.pki("root-ca.pem"))
            .arg("--cert")
            .arg(cert)
            .arg("--key")
            .arg(key)
            .current_dir(self.server.dir.path())
            .output()
            .expect("medid runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    fn admin(&self, args: &[&str]) -> (bool, String) {
        self.run(
            args,
            &self.server.pki("admin.pem"),
            &self.server.pki("admin.key"),
        )
    }

    fn agent(&self, dir: &Path, birth: &Path, extra: &[&str]) -> (bool, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_medid"))
            .args(["agent", "--dir"])
            .arg(dir)
            .arg("--bootstrap-cert")
            .arg(birth.with_extension("pem"))
            .arg("--bootstrap-key")
            .arg(birth.with_extension("key"))
            .arg("--server")
            .arg(&self.server.url)
            .arg("--ca")
            .arg(self.server.pki("root-ca.pem"))
            .args(extra)
            .output()
            .expect("medid agent runs");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }
}

fn serial_of(pem_path: &Path) -> String {
    let pem = std::fs::read(pem_path).unwrap();
    let der = medid::pem::parse_certificates(&pem).unwrap().remove(0);
    let (_, c) = x509_parser::parse_x509_certificate(&der).unwrap();
    medid::domain::hex(c.raw_serial())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_lives_its_life_through_the_cli_and_the_agent() {
    let server = TestServer::start().await;
    let cli = Cli { server: &server };
    let dir = server.dir.path();
    let (ok, out) = cli.admin(&[
        "admin",
        "add-manufacturer",
        "--id",
        "acme",
        "--name",
        "Acme",
    ]);
    assert!(ok, "{out}");
    let (ok, out) = cli.admin(&[
        "admin",
        "issue",
        "--role",
        "station",
        "--id",
        "line-1",
        "--manufacturer",
        "acme",
        "--out",
        "demo",
    ]);
    assert!(ok, "{out}");
    let (ok, out) = cli.run(
        &[
            "enroll", "--serial", "PUMP-9", "--model", "X", "--out", "demo",
        ],
        &dir.join("demo/line-1.pem"),
        &dir.join("demo/line-1.key"),
    );
    assert!(ok, "{out}");
    let birth = dir.join("demo/PUMP-9.pem");

    // The agent's first run authenticates with the birth certificate and runs the hook.
    let agent_dir = dir.join("agent");
    let hook = format!("cp \"$MEDID_CERT\" {}", dir.join("hooked.pem").display());
    let (ok, out) = cli.agent(&agent_dir, &birth, &["--once", "--exec", &hook]);
    assert!(ok, "{out}");
    assert!(
        out.contains("renewed spiffe://medid.local/device/acme/PUMP-9"),
        "{out}"
    );
    let first = serial_of(&agent_dir.join("cert.pem"));
    assert_eq!(
        serial_of(&dir.join("hooked.pem")),
        first,
        "--exec ran after the write"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(agent_dir.join("key.pem"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    // Not due yet: nothing changes.
    let (ok, out) = cli.agent(&agent_dir, &birth, &["--once"]);
    assert!(ok && out.contains("not due"), "{out}");
    assert_eq!(serial_of(&agent_dir.join("cert.pem")), first);
    // Forced: renews with the operational certificate it holds, new key and serial.
    let (ok, out) = cli.agent(&agent_dir, &birth, &["--once", "--force"]);
    assert!(ok, "{out}");
    let second = serial_of(&agent_dir.join("cert.pem"));
    assert_ne!(first, second);

    // Status, revocation, and status again, as the admin.
    let (ok, out) = cli.admin(&["status", "--manufacturer", "acme", "--device", "PUMP-9"]);
    assert!(ok && out.contains(&format!("current {second}")), "{out}");
    let (ok, out) = cli.admin(&["revoke", "--serial", &second, "--reason", "keyCompromise"]);
    assert!(ok && out.contains(&second), "{out}");
    // `status` exits 10 for a revoked certificate (tested by exit status below).
    let (ok, out) = cli.admin(&["status", "--serial", &second]);
    assert!(!ok && out.starts_with("revoked"), "{out}");
    // The agent notices its certificate is refused and falls back to the birth certificate.
    let (ok, out) = cli.agent(&agent_dir, &birth, &["--once", "--force"]);
    assert!(ok, "{out}");
    assert_ne!(serial_of(&agent_dir.join("cert.pem")), second);

    // The CRL over gRPC lists the revoked serial.
    let (ok, out) = cli.admin(&["crl", "fetch", "--issuer", "operational", "--out", "op.crl"]);
    assert!(ok, "{out}");
    let crl = std::fs::read(dir.join("op.crl")).unwrap();
    let (_, parsed) = x509_parser::parse_x509_crl(&crl).unwrap();
    assert!(parsed
        .iter_revoked_certificates()
        .any(|r| medid::domain::hex(r.raw_serial()) == second));

    // Decommissioning: the birth certificate can no longer renew, with a clear reason.
    let (ok, out) = cli.admin(&[
        "decommission",
        "--manufacturer",
        "acme",
        "--serial",
        "PUMP-9",
    ]);
    assert!(ok, "{out}");
    let (ok, out) = cli.run(
        &["renew", "--out", "late"],
        &birth,
        &birth.with_extension("key"),
    );
    assert!(!ok, "{out}");
    // Refused per RPC ("revoked") or, once the TLS verifier carries the new CRL, in the
    // handshake (the client may then see only a closed connection). Both layers are checked
    // precisely in tests/lifecycle.rs.
    let text = out.to_lowercase();
    assert!(
        text.contains("revoked") || text.contains("transport error"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_field_device_enrolls_with_a_one_time_token_from_the_cli() {
    let server = TestServer::start().await;
    let cli = Cli { server: &server };
    server.add_manufacturer("acme", &[]).await;
    let out = Command::new(env!("CARGO_BIN_EXE_medid"))
        .args([
            "token",
            "create",
            "--manufacturer",
            "acme",
            "--serial",
            "FIELD-1",
            "--ttl",
            "600",
            "--server",
            &server.url,
        ])
        .arg("--ca")
        .arg(server.pki("root-ca.pem"))
        .arg("--cert")
        .arg(server.pki("admin.pem"))
        .arg("--key")
        .arg(server.pki("admin.key"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(token.starts_with("met_"), "{token}");
    // The CLI sends no client certificate with --token: these files need not exist.
    let none = server.dir.path().join("nothing.pem");
    let (ok, out) = cli.run(
        &[
            "enroll", "--token", &token, "--serial", "FIELD-1", "--model", "M", "--out", "field",
        ],
        &none,
        &none,
    );
    assert!(ok, "{out}");
    let (ok, out) = cli.run(
        &[
            "enroll", "--token", &token, "--serial", "FIELD-1", "--model", "M", "--out", "field2",
        ],
        &none,
        &none,
    );
    assert!(!ok && out.contains("already used"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_evicts_a_station_and_it_can_do_nothing_more() {
    let server = TestServer::start().await;
    let cli = Cli { server: &server };
    let dir = server.dir.path();
    let (ok, out) = cli.admin(&[
        "admin",
        "add-manufacturer",
        "--id",
        "acme",
        "--name",
        "Acme Medical",
    ]);
    assert!(ok, "{out}");
    let (ok, out) = cli.admin(&[
        "admin",
        "issue",
        "--role",
        "station",
        "--id",
        "line-1",
        "--manufacturer",
        "acme",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    let (cert, key) = (dir.join("line-1.pem"), dir.join("line-1.key"));
    let token = [
        "token",
        "create",
        "--manufacturer",
        "acme",
        "--serial",
        "F-1",
        "--ttl",
        "600",
    ];
    let (ok, out) = cli.run(&token, &cert, &key);
    assert!(ok, "the station works before: {out}");

    // A station without --manufacturer is a usage error, named.
    let (ok, out) = cli.admin(&["revoke", "--principal", "station/line-1"]);
    assert!(!ok && out.contains("--manufacturer"), "{out}");
    let (ok, out) = cli.admin(&[
        "revoke",
        "--principal",
        "station/line-1",
        "--manufacturer",
        "acme",
        "--reason",
        "keyCompromise",
        "--json",
    ]);
    assert!(ok, "{out}");
    let revoked: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(revoked["revoked"].as_array().unwrap().len(), 1, "{out}");
    let (ok, out) = cli.run(&token, &cert, &key);
    assert!(!ok, "an evicted station creates no token: {out}");
    server.stop().await;
}

/// Runs `medid ARGS` against `server` as `who` (cert, key): exit status, stdout, stderr.
fn exit_of(
    server: &str,
    ca: &Path,
    cert: &Path,
    key: &Path,
    args: &[&str],
) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_medid"))
        .args(args)
        .arg("--server")
        .arg(server)
        .arg("--ca")
        .arg(ca)
        .arg("--cert")
        .arg(cert)
        .arg("--key")
        .arg(key)
        .output()
        .expect("medid runs");
    (
        out.status.code().expect("medid exits with a status"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Failures say `error: CODE: message` and exit by class (docs in README "Exit statuses"):
/// not found 4, denied 5, conflict 6, invalid input 7, unavailable 8; `--json` makes the error
/// a JSON object; `status` exits 0 / 10 / 11 for good / revoked / unknown; a revoked client
/// certificate and a stopped server are named as such.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_name_their_code_and_exit_by_class() {
    let server = TestServer::start().await;
    let dir = server.dir.path().to_owned();
    let ca = server.pki("root-ca.pem");
    let (admin_cert, admin_key) = (server.pki("admin.pem"), server.pki("admin.key"));
    let admin = |args: &[&str]| exit_of(&server.url, &ca, &admin_cert, &admin_key, args);

    let add = [
        "admin",
        "add-manufacturer",
        "--id",
        "acme",
        "--name",
        "Acme",
    ];
    assert_eq!(admin(&add).0, 0);
    let (code, _, err) = admin(&add);
    assert_eq!(code, 6, "{err}");
    assert!(err.starts_with("error: ALREADY_EXISTS: "), "{err}");

    let (code, _, err) = admin(&[
        "admin",
        "add-manufacturer",
        "--id",
        "Not Valid",
        "--name",
        "x",
    ]);
    assert_eq!(code, 7, "{err}");
    assert!(err.starts_with("error: INVALID_ARGUMENT: "), "{err}");

    let get = [
        "device",
        "get",
        "--manufacturer",
        "acme",
        "--serial",
        "NOPE",
    ];
    let (code, _, err) = admin(&get);
    assert_eq!(code, 4, "{err}");
    assert!(err.starts_with("error: NOT_FOUND: "), "{err}");
    let (code, stdout, err) = admin(&[&get[..], &["--json"]].concat());
    assert_eq!(code, 4, "{err}");
    assert!(stdout.is_empty(), "{stdout}");
    let v: serde_json::Value = serde_json::from_str(err.trim()).expect("a JSON error");
    assert_eq!(v["error"]["code"], "NOT_FOUND", "{v}");
    assert_eq!(v["error"]["exit"], 4, "{v}");

    // A gateway may not list manufacturers.
    let (ok, out) = Cli { server: &server }.admin(&[
        "admin",
        "issue",
        "--role",
        "gateway",
        "--id",
        "gw",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    let (gw_cert, gw_key) = (dir.join("gw.pem"), dir.join("gw.key"));
    let gateway = |args: &[&str]| exit_of(&server.url, &ca, &gw_cert, &gw_key, args);
    let (code, _, err) = gateway(&["admin", "list-manufacturers"]);
    assert_eq!(code, 5, "{err}");
    assert!(err.starts_with("error: PERMISSION_DENIED: "), "{err}");

    // status: good, then revoked, and unknown.
    let serial = serial_of(&gw_cert);
    let (code, out, err) = admin(&["status", "--serial", &serial]);
    assert_eq!((code, out.lines().next()), (0, Some("good")), "{err}");
    let (code, _, err) = admin(&["revoke", "--serial", &serial, "--reason", "keyCompromise"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = admin(&["status", "--serial", &serial]);
    assert_eq!((code, out.lines().next()), (10, Some("revoked")), "{err}");
    let (code, out, err) = admin(&["status", "--serial", "00ff00ff"]);
    assert_eq!((code, out.lines().next()), (11, Some("unknown")), "{err}");

    // The revoked gateway is refused by the TLS layer, and told why, naming its certificate.
    let (code, _, err) = gateway(&["status", "--serial", &serial]);
    assert_eq!(code, 5, "{err}");
    assert!(
        err.starts_with("error: UNAUTHENTICATED: ")
            && err.contains("revoked")
            && err.contains("gw.pem"),
        "{err}"
    );

    // Nothing listening: unavailable, with a hint.
    let nowhere = format!("https://127.0.0.1:{}", common::free_port());
    let (code, _, err) = exit_of(
        &nowhere,
        &ca,
        &admin_cert,
        &admin_key,
        &["admin", "list-manufacturers"],
    );
    assert_eq!(code, 8, "{err}");
    assert!(
        err.starts_with("error: UNAVAILABLE: ") && err.contains("is `medid serve` running"),
        "{err}"
    );
    server.stop().await;
}
