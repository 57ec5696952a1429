//! `medid bench` end to end: it starts its own server, drives every scenario through the real
//! gRPC API over mTLS, verifies the export offline, and prints one figure per scenario. The
//! figures are checked for what was done (operation counts, a verified export), never for how
//! fast it went: timing belongs to the benchmark's output, not to tests.

use std::process::Command;

use serde_json::Value;

#[test]
fn bench_runs_every_scenario_and_reports_what_it_did_as_json() {
    let out = Command::new(env!("CARGO_BIN_EXE_medid"))
        .args([
            "bench",
            "--count",
            "40",
            "--concurrency",
            "4",
            "--batch",
            "10",
            "--proofs",
            "3",
            "--json",
        ])
        .env("MEDID_LOG", "error")
        .output()
        .expect("medid bench runs");
    assert!(
        out.status.success(),
        "medid bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let figures: Vec<Value> =
        serde_json::from_slice(&out.stdout).expect("--json prints one JSON array");
    let by_name = |name: &str| {
        figures
            .iter()
            .find(|f| f["scenario"] == name)
            .unwrap_or_else(|| panic!("no {name:?} in {figures:#?}"))
    };
    for name in [
        "enroll, persistent connections",
        "enroll, new connection each",
        "access events, streams (per-batch ack latency)",
        "access events, unary",
    ] {
        let f = by_name(name);
        assert_eq!(f["ops"], 40, "{name}");
        assert!(f["per_second"].as_f64().is_some_and(|r| r > 0.0), "{name}");
        // Every operation was timed: the percentiles exist and are ordered.
        let (p50, p99) = (f["p50_ms"].as_f64(), f["p99_ms"].as_f64());
        assert!(
            p50.zip(p99).is_some_and(|(a, b)| 0.0 < a && a <= b),
            "{name}: {f}"
        );
        assert!(f["server_cpu_seconds"].as_f64().is_some_and(|s| s >= 0.0));
        assert!(f["server_rss_mib"].as_f64().is_some_and(|m| m > 0.0));
    }
    // The export covers at least the 80 access events and the 80 enrollments' events, and
    // the verification on its own counted the same events.
    let export = by_name("export + offline verify (events)");
    let events = export["ops"].as_u64().expect("export ops");
    assert!(events >= 160, "{export}");
    assert_eq!(
        by_name("offline verify alone (events)")["ops"].as_u64(),
        Some(events)
    );
    // No latencies for the export: null, not NaN (which is not JSON).
    assert!(export["p50_ms"].is_null(), "{export}");
    assert_eq!(by_name("inclusion proofs (stored tree)")["ops"], 3);
}

/// `--scenario fill` puts its events in the log through RecordAccessStream; with `--data-dir`
/// the log stays, and a later run (another fill, an export) works on the same one.
#[test]
fn fill_keeps_its_log_in_the_data_dir_for_later_runs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("bench");
    let run = |extra: &[&str]| -> Vec<Value> {
        let out = Command::new(env!("CARGO_BIN_EXE_medid"))
            .args(["bench", "--json", "--concurrency", "2", "--batch", "7"])
            .arg("--data-dir")
            .arg(&data)
            .args(extra)
            .env("MEDID_LOG", "error")
            .output()
            .expect("medid bench runs");
        assert!(
            out.status.success(),
            "medid bench failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("--json prints one JSON array")
    };
    let fill = "fill: access events, streams (per-batch ack latency)";
    let first = run(&["--scenario", "fill", "--count", "30", "--devices", "3"]);
    assert_eq!(first[0]["scenario"], fill);
    assert_eq!(first[0]["ops"], 30);
    assert!(data.join("medid.db").exists(), "the database is kept");
    let second = run(&[
        "--scenario",
        "fill",
        "--count",
        "30",
        "--devices",
        "3",
        "--scenario",
        "export",
    ]);
    assert_eq!(second[0]["ops"], 30);
    let export = second
        .iter()
        .find(|f| f["scenario"] == "export + offline verify (events)")
        .expect("an export");
    // Both fills' events, the three devices' enrollments and the principals' issuance, all
    // in one verified log.
    assert!(export["ops"].as_u64().is_some_and(|n| n >= 63), "{export}");
}
