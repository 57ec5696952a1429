//! The service's log as an operator's collector reads it: `medid serve` as a child process
//! with stderr to a file, real CLI calls, then every line read back. JSON lines are one object
//! each with time, level, target and fields; every gRPC call has one request line (method,
//! principal, code, duration, peer) and nothing of keys or tokens; a file gets no ANSI colour.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};

use serde_json::Value;

struct Served {
    child: Child,
    grpc: u16,
    est: u16,
}

/// Starts `medid serve` in `dir` with `format`, its stderr in `dir/medid.log`, and waits
/// until it is ready.
fn serve(dir: &Path, format: &str) -> Served {
    let (grpc, http, est) = (
        common::free_port(),
        common::free_port(),
        common::free_port(),
    );
    std::fs::write(
        dir.join("medid.toml"),
        format!(
            "listen = \"127.0.0.1:{grpc}\"\nhttp_listen = \"127.0.0.1:{http}\"\n\
             database_url = \"sqlite://medid.db\"\npki_dir = \"pki\"\ncreate_dev_pki = true\n\
             est_listen = \"127.0.0.1:{est}\"\nconsole_enabled = false\nlog_format = \"{format}\"\n"
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_medid"))
        .args(["serve", "--config", "medid.toml"])
        .current_dir(dir)
        .env("MEDID_LOG", "info")
        .env_remove("MEDID_LOG_FORMAT")
        .env_remove("NO_COLOR")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("medid.log")).unwrap())
        .spawn()
        .expect("medid serve starts");
    // Liveness bound (not a performance figure): up to 60 s to create its PKI and start.
    for _ in 0..600 {
        let ready = Command::new("curl")
            .args(["-sf", &format!("http://127.0.0.1:{http}/readyz")])
            .output()
            .is_ok_and(|o| o.status.success());
        if ready {
            return Served { child, grpc, est };
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!(
        "medid serve never became ready: {}",
        std::fs::read_to_string(dir.join("medid.log")).unwrap_or_default()
    );
}

impl Served {
    /// Runs a CLI command as the bootstrap admin; returns whether it succeeded.
    fn cli(&self, dir: &Path, args: &[&str]) -> bool {
        Command::new(env!("CARGO_BIN_EXE_medid"))
            .args(args)
            .args([
                "--server",
                &format!("https://localhost:{}", self.grpc),
                "--ca",
                "pki/root-ca.pem",
                "--cert",
                "pki/admin.pem",
                "--key",
                "pki/admin.key",
            ])
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    }

    /// POSTs an empty body to EST simplereenroll as the admin; returns the HTTP status.
    fn est_reenroll(&self, dir: &Path) -> String {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
            .args(["--cacert", "pki/root-ca.pem", "--cert", "pki/admin.pem"])
            .args(["--key", "pki/admin.key", "--data-binary", ""])
            .args(["-H", "Content-Type: application/pkcs10"])
            .arg(format!(
                "https://localhost:{}/.well-known/est/simplereenroll",
                self.est
            ))
            .current_dir(dir)
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    }

    fn stop(mut self, dir: &Path) -> String {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(self.child.wait().unwrap().success());
        std::fs::read_to_string(dir.join("medid.log")).unwrap()
    }
}

impl Drop for Served {
    /// A test that failed part-way leaves no server running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What must never reach the log: the bodies of every private key in the PKI directory.
fn secrets(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir.join("pki")).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap_or_default();
        if text.contains("PRIVATE KEY") {
            // One line of the base64 body is enough to recognise it.
            if let Some(line) = text.lines().nth(1) {
                found.push(line.to_owned());
            }
        }
    }
    assert!(!found.is_empty(), "the PKI has private keys");
    found
}

#[test]
fn json_lines_hold_one_request_line_per_call_and_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let served = serve(dir.path(), "json");
    assert!(served.cli(dir.path(), &["device", "list"]));
    assert!(!served.cli(
        dir.path(),
        &[
            "device",
            "get",
            "--manufacturer",
            "nope",
            "--serial",
            "SN-1"
        ]
    ));
    let est_status = served.est_reenroll(dir.path());
    assert!(
        est_status.starts_with('4'),
        "an empty re-enrollment is refused: {est_status}"
    );
    let log = served.stop(dir.path());

    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.len() > 3, "{log}");
    for line in &lines {
        for key in ["timestamp", "level", "target"] {
            assert!(line[key].is_string(), "{key} missing: {line}");
        }
        assert!(line["fields"]["message"].is_string(), "{line}");
    }
    let requests: Vec<&Value> = lines
        .iter()
        .filter(|l| l["target"] == "medid::request")
        .collect();
    let of = |method: &str| {
        requests
            .iter()
            .filter(|l| l["fields"]["method"] == method)
            .map(|l| &l["fields"])
            .collect::<Vec<_>>()
    };
    let list = of("medid.v1.RegistryService/ListDevices");
    let get = of("medid.v1.RegistryService/GetDevice");
    assert_eq!((list.len(), get.len()), (1, 1), "{requests:?}");
    assert_eq!(list[0]["code"], "OK");
    assert_eq!(get[0]["code"], "NOT_FOUND");
    let est = of("est/simplereenroll");
    assert_eq!(est.len(), 1, "{requests:?}");
    assert_eq!(est[0]["code"], est_status.as_str());
    assert_eq!(est[0]["principal"], "spiffe://medid.local/admin/admin");
    for fields in [list[0], get[0]] {
        assert_eq!(fields["principal"], "spiffe://medid.local/admin/admin");
        assert!(fields["duration_us"].is_u64(), "{fields}");
        assert!(
            fields["peer"]
                .as_str()
                .is_some_and(|p| p.starts_with("127.0.0.1:")),
            "{fields}"
        );
        assert_eq!(
            fields.as_object().unwrap().len(),
            6,
            "only what is listed: {fields}"
        );
    }
    for secret in secrets(dir.path()) {
        assert!(!log.contains(&secret), "a private key reached the log");
    }
    assert!(!log.contains('\u{1b}'), "ANSI in a JSON log");
}

#[test]
fn text_lines_to_a_file_have_no_colour_and_print_values_plainly() {
    let dir = tempfile::tempdir().unwrap();
    let served = serve(dir.path(), "text");
    assert!(served.cli(dir.path(), &["device", "list"]));
    let log = served.stop(dir.path());
    assert!(!log.contains('\u{1b}'), "ANSI colour in a log file:\n{log}");
    assert!(
        !log.contains("Some("),
        "an Option printed as Some(..):\n{log}"
    );
    let request = log
        .lines()
        .find(|l| l.contains("medid::request"))
        .unwrap_or_else(|| panic!("no request line:\n{log}"));
    for field in [
        "method=medid.v1.RegistryService/ListDevices",
        "principal=spiffe://medid.local/admin/admin",
        "code=OK",
        "duration_us=",
        "peer=127.0.0.1:",
    ] {
        assert!(request.contains(field), "{field} missing: {request}");
    }
    for secret in secrets(dir.path()) {
        assert!(!log.contains(&secret), "a private key reached the log");
    }
}
