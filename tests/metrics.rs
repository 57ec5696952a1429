//! `GET /metrics` tells what the service did and what it holds: the real server, real gRPC
//! calls (successes, refusals, an unauthenticated caller, a made-up method), then a scrape
//! parsed by an independent OpenMetrics parser (`common::scrape_metrics`), compared with the
//! database. The example alert rules are checked and unit-tested by `promtool` (Debian
//! `prometheus`; required when `MEDID_REQUIRE_PROMTOOL` is set, as `.ci/run` does).

mod common;

use std::process::Command;

use common::{csr_p256, metric, scrape_metrics, Sample, TestServer};
use medid::clock::Clock;
use medid::proto::{self, lifecycle_service_client::LifecycleServiceClient};
use tonic::transport::Channel;

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    metric(samples, name, labels).unwrap_or(0.0)
}

/// Calls a method no service has, over the server's TLS with the admin's certificate.
async fn call_unknown_method(channel: Channel) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<proto::GetCrlRequest, proto::Crl>::default();
    grpc.unary(
        tonic::Request::new(proto::GetCrlRequest::default()),
        http::uri::PathAndQuery::from_static("/medid.v1.NoSuchService/Nothing"),
        codec,
    )
    .await
    .unwrap_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_calls_refusals_and_issuance_and_read_the_state_when_scraped() {
    let dir = tempfile::tempdir().unwrap();
    // Operational certificates of 10 days: not within 7 days of their end when issued.
    let server = TestServer::start_with(dir, common::system_now(), |c| {
        c.operational_validity_hours = 240;
        c.checkpoint_every_events = 1;
        // Count the certificates on every scrape (the default reuses a count for a minute).
        c.metrics_census_interval_seconds = 0;
    })
    .await;
    let start = scrape_metrics(&server);
    let build = start
        .iter()
        .find(|s| s.name == "medid_build_info")
        .expect("build info");
    assert_eq!(build.labels["version"], env!("CARGO_PKG_VERSION"));
    assert!(!build.labels["commit"].is_empty());
    for issuer in ["device-identity", "operational"] {
        let labels = [("issuer", issuer)];
        assert!(
            value(&start, "medid_crl_number", &labels) >= 1.0,
            "{issuer}"
        );
        let to_next = value(&start, "medid_crl_next_update_in_seconds", &labels);
        assert!(
            to_next > 0.0 && to_next <= 24.0 * 3600.0,
            "{issuer}: {to_next}"
        );
        assert!(metric(&start, "medid_crl_age_seconds", &labels).is_some());
    }
    let tls_end = metric(
        &start,
        "medid_service_certificate_not_after_timestamp_seconds",
        &[("certificate", "tls-server")],
    )
    .expect("the service's TLS certificate");
    assert!(tls_end > server.clock.now().unix_timestamp() as f64);

    // What the calls below do: one enrollment, two refused ones, one renewal.
    server.add_manufacturer("acme", &["X"]).await;
    let station = server.station("acme", "line-1").await;
    let (device, _) = server.enroll(&station, "SN-1").await;
    let mut enrollment = server.enrollment_client(&station).await;
    let bad_csr = enrollment
        .enroll_device(proto::EnrollDeviceRequest {
            csr: b"not a CSR".to_vec(),
            serial: "SN-2".into(),
            model: "X".into(),
            udi_di: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad_csr.code(), tonic::Code::InvalidArgument);
    let again = enrollment
        .enroll_device(proto::EnrollDeviceRequest {
            csr: csr_p256().0,
            serial: "SN-1".into(),
            model: "X".into(),
            udi_di: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), tonic::Code::AlreadyExists, "{again:?}");
    let mut lifecycle = LifecycleServiceClient::new(server.channel(&device).await);
    lifecycle
        .request_operational_certificate(proto::RequestOperationalCertificateRequest {
            csr: csr_p256().0,
        })
        .await
        .expect("renewal");
    let unknown = call_unknown_method(server.channel(&server.admin()).await).await;
    assert_eq!(unknown.code(), tonic::Code::Unimplemented);
    // A caller with no client certificate: TLS verifies the server only.
    let anonymous = common::anonymous_channel(&server).await;
    let refused = medid::proto::registry_service_client::RegistryServiceClient::new(anonymous)
        .list_devices(proto::ListDevicesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);

    // The checkpointer signs within a second of new events (checkpoint_every_events = 1).
    let mut after = scrape_metrics(&server);
    for _ in 0..100 {
        let covered = metric(&after, "medid_audit_checkpoint_tree_size", &[]);
        if covered.is_some() && covered == metric(&after, "medid_audit_events", &[]) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        after = scrape_metrics(&server);
    }
    let enroll = "medid.v1.EnrollmentService/EnrollDevice";
    let rpc = |code: &str| {
        value(
            &after,
            "medid_rpc_requests_total",
            &[("method", enroll), ("code", code)],
        )
    };
    assert_eq!(rpc("OK"), 1.0);
    assert_eq!(rpc("INVALID_ARGUMENT"), 1.0);
    assert_eq!(rpc("ALREADY_EXISTS"), 1.0);
    assert_eq!(
        value(
            &after,
            "medid_rpc_duration_seconds_count",
            &[("method", enroll)]
        ),
        3.0
    );
    assert_eq!(
        value(
            &after,
            "medid_rpc_requests_total",
            &[("method", "unknown"), ("code", "UNIMPLEMENTED")]
        ),
        1.0,
        "a made-up path is counted under one label"
    );
    assert!(
        !after.iter().any(|s| s
            .labels
            .get("method")
            .is_some_and(|m| m.contains("NoSuchService"))),
        "a made-up path never becomes a label"
    );
    assert_eq!(
        value(
            &after,
            "medid_rpc_requests_total",
            &[
                ("method", "medid.v1.RegistryService/ListDevices"),
                ("code", "UNAUTHENTICATED")
            ]
        ),
        1.0
    );
    let refusal = |code: &str| {
        value(
            &after,
            "medid_refusals_total",
            &[("action", "device.enroll"), ("code", code)],
        )
    };
    assert_eq!(refusal("INVALID_ARGUMENT"), 1.0);
    assert_eq!(refusal("ALREADY_EXISTS"), 1.0);
    assert_eq!(
        value(
            &after,
            "medid_unauthenticated_refusals_total",
            &[("reason", "no-certificate")]
        ),
        1.0
    );
    let issuance = |profile: &str, outcome: &str| {
        value(
            &after,
            "medid_issuance_total",
            &[("profile", profile), ("outcome", outcome)],
        )
    };
    assert_eq!(issuance("device-birth", "issued"), 1.0);
    // The duplicate serial was signed, then refused when recorded: nobody holds it.
    assert_eq!(issuance("device-birth", "refused"), 1.0);
    assert_eq!(issuance("device-operational", "issued"), 1.0);
    // Admin and station, at least.
    assert!(issuance("principal", "issued") >= 1.0);

    // State read from the database when scraped.
    for (profile, state) in [
        ("device-birth", "active"),
        ("device-operational", "active"),
        ("principal", "active"),
        ("server", "active"),
    ] {
        let recorded = server
            .count(&format!(
                "SELECT COUNT(*) FROM certificates WHERE profile = '{profile}' AND status = '{state}'"
            ))
            .await;
        assert_eq!(
            value(
                &after,
                "medid_certificates",
                &[("profile", profile), ("state", state)]
            ),
            recorded as f64,
            "{profile} {state}"
        );
    }
    let events = server
        .count("SELECT COALESCE(MAX(seq), 0) FROM audit_events")
        .await;
    assert!(value(&after, "medid_audit_events", &[]) >= 1.0);
    assert!(value(&after, "medid_audit_events", &[]) <= events as f64);
    assert_eq!(
        metric(&after, "medid_audit_checkpoint_tree_size", &[]),
        metric(&after, "medid_audit_events", &[]),
        "a checkpoint covers the log"
    );
    assert!(metric(&after, "medid_audit_checkpoint_age_seconds", &[]).is_some());
    assert_eq!(value(&after, "medid_audit_integrity_damaged", &[]), 0.0);
    assert_eq!(value(&after, "medid_audit_archived_events", &[]), 0.0);
    assert!(metric(&after, "medid_audit_full_check_age_seconds", &[]).is_some());
    rules_name_only_exported_metrics(&after);
    the_reference_table_lists_what_is_exported(&after);
    assert!(
        value(&after, "medid_store_batch_writes_count", &[])
            > value(&start, "medid_store_batch_writes_count", &[])
    );
    assert_eq!(value(&after, "medid_store_failed_batches_total", &[]), 0.0);
    assert!(value(&after, "medid_connections_open", &[("listener", "grpc")]) >= 1.0);
    let ending = |s: &[Sample], within: &str| {
        value(
            s,
            "medid_certificates_ending",
            &[("profile", "device-operational"), ("within", within)],
        )
    };
    assert_eq!(ending(&after, "7d"), 0.0);
    assert_eq!(ending(&after, "30d"), 1.0);

    // Four days on (medid's clock): the operational certificate is within 7 days of its end,
    // and the CRLs are four days older.
    server.clock.advance(time::Duration::days(4));
    let later = scrape_metrics(&server);
    assert_eq!(ending(&later, "7d"), 1.0);
    assert_eq!(ending(&later, "30d"), 1.0);
    let age = |s: &[Sample]| value(s, "medid_crl_age_seconds", &[("issuer", "operational")]);
    let number = |s: &[Sample]| value(s, "medid_crl_number", &[("issuer", "operational")]);
    if number(&later) == number(&after) {
        assert!(age(&later) >= age(&after) + 4.0 * 86_400.0);
        assert!(
            value(
                &later,
                "medid_crl_next_update_in_seconds",
                &[("issuer", "operational")]
            ) < 0.0
        );
    }
    server.stop().await;
}

/// By default the certificate census is counted at most once a minute (medid's clock) and
/// says how old it is; scrapes in between reuse it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_certificate_census_is_reused_within_its_interval() {
    let server = TestServer::start().await;
    let principals = |s: &[Sample]| {
        value(
            s,
            "medid_certificates",
            &[("profile", "principal"), ("state", "active")],
        )
    };
    let first = scrape_metrics(&server);
    assert_eq!(
        value(&first, "medid_certificates_census_age_seconds", &[]),
        0.0
    );
    server.add_manufacturer("acme", &[]).await;
    server.station("acme", "line-1").await;
    server.clock.advance(time::Duration::seconds(59));
    let reused = scrape_metrics(&server);
    assert_eq!(
        principals(&reused),
        principals(&first),
        "counted a minute ago at most"
    );
    assert_eq!(
        value(&reused, "medid_certificates_census_age_seconds", &[]),
        59.0
    );
    server.clock.advance(time::Duration::seconds(1));
    let recounted = scrape_metrics(&server);
    assert_eq!(principals(&recounted), principals(&first) + 1.0);
    assert_eq!(
        value(&recounted, "medid_certificates_census_age_seconds", &[]),
        0.0
    );
    server.stop().await;
}

fn promtool() -> Option<String> {
    let found = Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return Some("promtool".into());
    }
    assert!(
        std::env::var_os("MEDID_REQUIRE_PROMTOOL").is_none(),
        "MEDID_REQUIRE_PROMTOOL is set but promtool (Debian prometheus) is not installed"
    );
    eprintln!("promtool not installed: the alert rules are not checked (.ci/run installs it)");
    None
}

#[test]
fn the_example_alert_rules_load_and_fire_as_their_tests_expect() {
    let Some(promtool) = promtool() else { return };
    let rules = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus");
    for args in [
        ["check", "rules", "medid-alerts.yml"],
        ["test", "rules", "medid-alerts.test.yml"],
    ] {
        let out = Command::new(&promtool)
            .args(args)
            .current_dir(rules)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Every metric the example rules use is in `samples` (a scrape after calls of every kind).
fn rules_name_only_exported_metrics(samples: &[Sample]) {
    let exported: std::collections::BTreeSet<&str> =
        samples.iter().map(|s| s.name.as_str()).collect();
    let rules = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/prometheus/medid-alerts.yml"
    ))
    .unwrap();
    let named: std::collections::BTreeSet<&str> = rules
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.contains("description:"))
        .flat_map(|l| l.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')))
        .filter(|w| w.starts_with("medid_"))
        .collect();
    assert!(named.len() >= 9, "{named:?}");
    for name in named {
        assert!(
            exported.contains(name),
            "the alert rules use {name}, which /metrics does not export"
        );
    }
}

/// docs/METRICS.md's table names every metric family `/metrics` exports, and nothing else.
fn the_reference_table_lists_what_is_exported(samples: &[Sample]) {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/METRICS.md")).unwrap();
    let documented: std::collections::BTreeSet<String> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("| `medid_"))
        .filter_map(|l| l.split('`').next())
        .map(|name| format!("medid_{name}"))
        .collect();
    // A sample's family: without the suffixes OpenMetrics adds to histograms and infos
    // (counters are documented with their `_total`).
    let family = |name: &str| {
        for suffix in ["_bucket", "_count", "_sum", "_info"] {
            if let Some(base) = name.strip_suffix(suffix) {
                if suffix != "_info" {
                    return base.to_owned();
                }
                return format!("{base}_info");
            }
        }
        name.to_owned()
    };
    let exported: std::collections::BTreeSet<String> =
        samples.iter().map(|s| family(&s.name)).collect();
    assert_eq!(
        documented, exported,
        "docs/METRICS.md and /metrics disagree (left: documented, right: exported)"
    );
}
