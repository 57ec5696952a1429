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
        let (code, out) = self.agent_exit(dir, birth, extra);
        (code == 0, out)
    }

    /// The agent's exit status and output.
    fn agent_exit(&self, dir: &Path, birth: &Path, extra: &[&str]) -> (i32, String) {
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
            out.status.code().expect("the agent exits with a status"),
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
    // Not due by the calendar, but its certificate is revoked: the agent's pass finds out and
    // renews at once with the birth certificate.
    let (ok, out) = cli.agent(&agent_dir, &birth, &["--once"]);
    assert!(ok && out.contains("no longer accepted"), "{out}");
    let third = serial_of(&agent_dir.join("cert.pem"));
    assert_ne!(third, second);
    let (ok, out) = cli.agent(&agent_dir, &birth, &["--once"]);
    assert!(
        ok && out.contains("not due") && out.contains("accepted"),
        "{out}"
    );
    assert_eq!(serial_of(&agent_dir.join("cert.pem")), third);

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
    // The agent stops at once on a permanent refusal (no five retries with backoff), with
    // the class of the refusal as its exit status and not "internal error".
    let (code, out) = cli.agent_exit(&agent_dir, &birth, &["--once", "--force"]);
    assert!(matches!(code, 5 | 6), "{code}: {out}");
    assert!(
        out.contains("not retried") && !out.contains("retrying in"),
        "{out}"
    );
    assert!(!out.to_lowercase().contains("internal"), "{out}");
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

/// The commands an operator's, a gateway's and an auditor's scripts use: expiring
/// certificates, access reports (one, and a file through the stream), audit queries, proofs
/// verified here, JSON of one object for one item with null for what is absent, completions,
/// the man page and the version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_list_report_query_and_prove_through_the_cli() {
    let server = TestServer::start().await;
    let dir = server.dir.path().to_owned();
    let ca = server.pki("root-ca.pem");
    let (admin_cert, admin_key) = (server.pki("admin.pem"), server.pki("admin.key"));
    let admin = |args: &[&str]| exit_of(&server.url, &ca, &admin_cert, &admin_key, args);
    server.add_manufacturer("acme", &["X"]).await;
    let station = server.station("acme", "line-1").await;
    server.enroll(&station, "SN-1").await;

    // One device: one object, with null where there is nothing.
    let (code, out, err) = admin(&[
        "device",
        "get",
        "--manufacturer",
        "acme",
        "--serial",
        "SN-1",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let device: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!(device.is_object(), "{device}");
    assert_eq!(device["udi_di"], serde_json::Value::Null, "{device}");
    assert_eq!(device["state"], "active");

    // Expiring: the admin's and station's 90-day certificates are within 400 days, none
    // within one day; a birth certificate (no well-defined expiry) never is.
    let (code, out, err) = admin(&["expiring", "--within-days", "400", "--json"]);
    assert_eq!(code, 0, "{err}");
    let list: Vec<serde_json::Value> = serde_json::from_str(out.trim()).unwrap();
    assert!(
        list.iter()
            .any(|c| c["subject_uri"] == "spiffe://medid.local/admin/admin"),
        "{out}"
    );
    assert!(list
        .iter()
        .all(|c| c["not_after"].is_string() && c["profile"] != "device-birth"));
    assert!(list.iter().all(|c| c["revoked_at"].is_null()));
    let (code, out, _) = admin(&["expiring", "--within-days", "1", "--json"]);
    assert_eq!((code, out.trim()), (0, "[]"));

    // A gateway and an auditor, issued through the CLI.
    for (role, id) in [("gateway", "gw"), ("auditor", "aud")] {
        let (code, _, err) = admin(&[
            "admin",
            "issue",
            "--role",
            role,
            "--id",
            id,
            "--out",
            dir.to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "{err}");
    }
    let (gw_cert, gw_key) = (dir.join("gw.pem"), dir.join("gw.key"));
    let gateway = |args: &[&str]| exit_of(&server.url, &ca, &gw_cert, &gw_key, args);
    let (aud_cert, aud_key) = (dir.join("aud.pem"), dir.join("aud.key"));
    let auditor = |args: &[&str]| exit_of(&server.url, &ca, &aud_cert, &aud_key, args);

    let access = [
        "audit",
        "record-access",
        "--manufacturer",
        "acme",
        "--serial",
        "SN-1",
        "--data-category",
        "vital-signs",
        "--patient",
        "P-1",
        "--purpose",
        "TREAT",
    ];
    let (code, out, err) = gateway(&[&access[..], &["--json"]].concat());
    assert_eq!(code, 0, "{err}");
    let receipt: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let first_seq = receipt["seq"].as_i64().expect("a sequence number");

    let file = dir.join("accesses.jsonl");
    let line = |n: usize| {
        serde_json::json!({"manufacturer_id": "acme", "serial": "SN-1", "action": "read",
                           "data_category": "waveform", "patient_ref": format!("P-{n}"),
                           "purpose_of_use": "TREAT", "user_id": "nurse-7", "user_role": "nurse"})
        .to_string()
    };
    std::fs::write(&file, format!("{}\n{}\n\n{}\n", line(2), line(3), line(4))).unwrap();
    let (code, out, err) = gateway(&[
        "audit",
        "record-access",
        "--file",
        file.to_str().unwrap(),
        "--batch",
        "2",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let streamed: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(streamed["recorded"], 3, "{streamed}");
    let (first, last) = (
        streamed["first_seq"].as_i64().unwrap(),
        streamed["last_seq"].as_i64().unwrap(),
    );
    assert!(first > first_seq && last > first, "{streamed}");

    // A bad line is named, and nothing of the file is sent.
    std::fs::write(
        &file,
        format!(
            "{}\n{{\"serial\": \"SN-1\", \"colour\": \"red\"}}\n",
            line(5)
        ),
    )
    .unwrap();
    let (code, _, err) = gateway(&["audit", "record-access", "--file", file.to_str().unwrap()]);
    assert_eq!(code, 7, "{err}");
    assert!(err.contains("line 2") && err.contains("colour"), "{err}");

    // The auditor queries what the gateway reported: four accesses, newest last.
    let (code, out, err) = auditor(&["audit", "query", "--action", "data.access", "--json"]);
    assert_eq!(code, 0, "{err}");
    let events: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 4, "{out}");
    assert!(events
        .iter()
        .all(|e| e["action"] == "data.access" && e["outcome"] == "success"));
    assert_eq!(events[0]["seq"], first_seq);
    let (code, out, _) = auditor(&[
        "audit",
        "query",
        "--action",
        "data.access",
        "--limit",
        "2",
        "--page-size",
        "1",
    ]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(
        out.lines()
            .all(|l| l.contains("data.access") && l.contains("spiffe://medid.local/gateway/gw")),
        "{out}"
    );

    // Proofs, verified by the CLI against the audit key.
    let key = server.pki("audit-signing.pub");
    let key = key.to_str().unwrap();
    let note = dir.join("kept.note");
    let (code, out, err) = auditor(&[
        "audit",
        "checkpoint",
        "--json",
        "--out",
        note.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let checkpoint: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let kept_size = checkpoint["tree_size"].as_u64().unwrap();
    assert!(kept_size >= last as u64, "{checkpoint}");
    let seq = first_seq.to_string();
    let (code, out, err) = auditor(&[
        "audit",
        "prove-inclusion",
        "--seq",
        &seq,
        "--audit-key",
        key,
        "--checkpoint",
        note.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let proved: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (proved["verified"].as_bool(), proved["tree_size"].as_u64()),
        (Some(true), Some(kept_size))
    );
    // The log grows; today's checkpoint extends the one kept.
    let (code, _, err) = gateway(&access);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = auditor(&[
        "audit",
        "prove-consistency",
        "--since",
        note.to_str().unwrap(),
        "--audit-key",
        key,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("OK: the log of size ")
            && out.contains(&format!("extends the checkpoint of size {kept_size}")),
        "{out}"
    );
    let (code, out, err) = auditor(&[
        "audit",
        "prove-inclusion",
        "--seq",
        &seq,
        "--audit-key",
        key,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with(&format!("OK: event {seq} (leaf hash ")),
        "{out}"
    );
    // A kept checkpoint whose root was changed no longer verifies.
    let text = std::fs::read_to_string(&note).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let other = if lines[2].starts_with('A') { 'B' } else { 'A' };
    lines[2] = format!("{other}{}", &lines[2][1..]);
    let forged = dir.join("forged.note");
    std::fs::write(&forged, lines.join("\n") + "\n").unwrap();
    let (code, _, err) = auditor(&[
        "audit",
        "prove-consistency",
        "--since",
        forged.to_str().unwrap(),
        "--audit-key",
        key,
    ]);
    assert_eq!(code, 6, "{err}");
    assert!(err.contains("verification FAILED"), "{err}");
    // A pipeline that reads only the first line ends the listing quietly (no panic on the
    // closed pipe): one event a page, so later writes come after `head` has gone.
    let piped = Command::new("bash")
        .arg("-c")
        .arg(
            "set -o pipefail; \"$MEDID\" audit query --json --page-size 1 --server \"$URL\" \
             --ca \"$CA\" --cert \"$CERT\" --key \"$KEY\" | head -n 1",
        )
        .env("MEDID", env!("CARGO_BIN_EXE_medid"))
        .env("URL", &server.url)
        .env("CA", &ca)
        .env("CERT", &aud_cert)
        .env("KEY", &aud_key)
        .output()
        .unwrap();
    assert!(
        piped.status.success(),
        "{}",
        String::from_utf8_lossy(&piped.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&piped.stdout).lines().count(), 1);
    // A gateway may not query.
    let (code, _, err) = gateway(&["audit", "query"]);
    assert_eq!(code, 5, "{err}");

    // Completions, the man page and the version say what the binary is.
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_medid"))
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    assert!(run(&["completions", "bash"]).contains("_medid()"));
    assert!(run(&["completions", "zsh"]).contains("#compdef medid"));
    let page = run(&["man"]);
    assert!(
        page.contains(".TH medid 1") && page.contains("medid\\-audit(1)"),
        "{page}"
    );
    let version = run(&["--version"]);
    assert!(
        version.starts_with(&format!("medid {} (commit ", env!("CARGO_PKG_VERSION"))),
        "{version}"
    );
    let mandir = dir.join("man");
    run(&["man", "--out", mandir.to_str().unwrap()]);
    assert!(mandir.join("medid.1").exists() && mandir.join("medid-audit-record-access.1").exists());
}
