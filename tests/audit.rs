//! The audit ledger through the real API: access events, checkpoints and proofs, exports, and
//! offline verification with `medid audit verify` — including tampering with the SQLite file.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{csr_p256, Identity, TestServer};
use futures_util::StreamExt;
use medid::audit::merkle;
use medid::clock::Clock;
use medid::proto::{
    self, audit_service_client::AuditServiceClient, EnrollDeviceRequest, PrincipalRole,
};
use medid::store::AuditLog;
use tonic::transport::Channel;
use tonic::Code;

async fn audit(server: &TestServer, who: &Identity) -> AuditServiceClient<Channel> {
    AuditServiceClient::new(server.channel(who).await)
}

fn access(serial: &str, patient: &str) -> proto::AccessEvent {
    proto::AccessEvent {
        device: Some(proto::DeviceRef {
            manufacturer_id: "acme".into(),
            serial: serial.into(),
        }),
        user_id: "nurse-17".into(),
        user_role: "RN".into(),
        action: proto::AccessAction::Read as i32,
        data_category: "vital-signs".into(),
        patient_ref: patient.into(),
        purpose_of_use: "TREAT".into(),
        outcome: proto::AccessOutcome::Success as i32,
        occurred_at: Some(prost_types::Timestamp {
            seconds: common::system_now().unix_timestamp(),
            nanos: 0,
        }),
        ..Default::default()
    }
}

fn has_empty_string(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::String(s) => s.is_empty(),
        serde_json::Value::Array(items) => items.iter().any(has_empty_string),
        serde_json::Value::Object(map) => map.values().any(has_empty_string),
        _ => false,
    }
}

struct World {
    server: TestServer,
    gateway: Identity,
    auditor: Identity,
    device: Identity,
}

async fn world() -> World {
    let server = TestServer::start().await;
    server.add_manufacturer("acme", &[]).await;
    let station = server.station("acme", "line-1").await;
    let (device, _) = server.enroll(&station, "PUMP-1").await;
    server.enroll(&station, "PUMP-2").await;
    let gateway = server.issue(PrincipalRole::Gateway, "icu-gw", "").await;
    let auditor = server.issue(PrincipalRole::Auditor, "compliance", "").await;
    World {
        device,
        gateway,
        auditor,
        server,
    }
}

async fn export(w: &World, req: proto::ExportAuditRequest, path: &Path) {
    let mut lines = audit(&w.server, &w.auditor)
        .await
        .export_audit(req)
        .await
        .unwrap()
        .into_inner();
    let mut out = String::new();
    while let Some(line) = lines.next().await {
        out.push_str(&line.unwrap().json);
        out.push('\n');
    }
    std::fs::write(path, out).unwrap();
}

fn verify(w: &World, bundle: &Path, previous: Option<&Path>) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_medid"));
    cmd.args(["audit", "verify"])
        .arg(bundle)
        .arg("--key")
        .arg(w.server.pki("audit-signing.pub"));
    if let Some(p) = previous {
        cmd.arg("--previous-checkpoint").arg(p);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

async fn db(w: &World) -> sqlx::AnyPool {
    let pool = w.server.db().await;
    // The attacker has the database: the append-only triggers are no obstacle to them.
    sqlx::raw_sql(common::by_backend(
        "DROP TRIGGER audit_events_no_update; DROP TRIGGER audit_events_no_delete;",
        "DROP TRIGGER audit_events_no_update ON audit_events;
         DROP TRIGGER audit_events_no_delete ON audit_events;",
    ))
    .execute(&pool)
    .await
    .unwrap();
    pool
}

fn path(w: &World, name: &str) -> PathBuf {
    w.server.dir.path().join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_record_access_and_others_may_not() {
    let w = world().await;
    let mut gw = audit(&w.server, &w.gateway).await;
    let receipt = gw
        .record_access(access("PUMP-1", "patient-0042"))
        .await
        .unwrap()
        .into_inner();
    assert!(receipt.seq > 0 && !receipt.device_decommissioned);
    let stored = w
        .server
        .audit_events()
        .await
        .into_iter()
        .find(|e| e.seq == receipt.seq)
        .unwrap();
    assert_eq!(stored.event.action, medid::audit::Action::DataAccess);
    assert_eq!(stored.event.detail["patient_ref"], "patient-0042");
    assert_eq!(
        stored.event.actor.uri,
        "spiffe://medid.local/gateway/icu-gw"
    );

    for who in [&w.device, &w.auditor] {
        let err = audit(&w.server, who)
            .await
            .record_access(access("PUMP-1", "p"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
    }
    let err = gw.record_access(access("NOPE", "p")).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let mut bad = access("PUMP-1", "p");
    bad.purpose_of_use = "SHOPPING".into();
    assert_eq!(
        gw.record_access(bad).await.unwrap_err().code(),
        Code::InvalidArgument
    );

    // A decommissioned device's access is still recorded, and flagged.
    medid::proto::lifecycle_service_client::LifecycleServiceClient::new(
        w.server.channel(&w.server.admin()).await,
    )
    .decommission_device(proto::DecommissionDeviceRequest {
        device: Some(proto::DeviceRef {
            manufacturer_id: "acme".into(),
            serial: "PUMP-2".into(),
        }),
        reason: 0,
    })
    .await
    .unwrap();
    let flagged = gw
        .record_access(access("PUMP-2", "p"))
        .await
        .unwrap()
        .into_inner();
    assert!(flagged.device_decommissioned);

    // Streams: each batch acknowledged with its sequence numbers once durable.
    let batches = vec![
        proto::AccessBatch {
            events: (0..3).map(|_| access("PUMP-1", "p")).collect(),
        },
        proto::AccessBatch {
            events: (0..2).map(|_| access("PUMP-1", "p")).collect(),
        },
    ];
    let mut acks = gw
        .record_access_stream(tokio_stream::iter(batches))
        .await
        .unwrap()
        .into_inner();
    let first = acks.next().await.unwrap().unwrap();
    let second = acks.next().await.unwrap().unwrap();
    assert_eq!((first.seqs.len(), second.seqs.len()), (3, 2));
    assert_eq!(second.seqs[0], first.seqs[2] + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_and_proofs_verify_against_the_audit_key() {
    let w = world().await;
    let mut gw = audit(&w.server, &w.gateway).await;
    let receipt = gw
        .record_access(access("PUMP-1", "p"))
        .await
        .unwrap()
        .into_inner();
    let cp1 = gw
        .get_checkpoint(proto::GetCheckpointRequest {})
        .await
        .unwrap()
        .into_inner();
    let key_pem = std::fs::read_to_string(w.server.pki("audit-signing.pub")).unwrap();
    let key = medid::audit::checkpoint::public_key_from_pem(&key_pem).unwrap();
    let parsed = medid::audit::checkpoint::verify(&cp1.note, "medid.local/audit", &key).unwrap();
    assert_eq!(parsed.size, cp1.tree_size);
    // The checkpoint was also written outside the database.
    let outside =
        std::fs::read_to_string(w.server.dir.path().join("checkpoints/latest.note")).unwrap();
    assert_eq!(outside, cp1.note);

    assert!((1..=cp1.tree_size as i64).contains(&receipt.seq));
    // Every event under the checkpoint proves, the receipt's among them (the server folds
    // proofs from streamed leaves).
    for seq in 1..=cp1.tree_size as i64 {
        let p = gw
            .get_inclusion_proof(proto::GetInclusionProofRequest {
                seq,
                tree_size: cp1.tree_size,
            })
            .await
            .unwrap()
            .into_inner();
        let hashes: Vec<merkle::Hash> = p
            .proof
            .iter()
            .map(|h| h.clone().try_into().unwrap())
            .collect();
        let leaf: merkle::Hash = p.leaf_hash.try_into().unwrap();
        assert!(
            merkle::verify_inclusion(seq as u64 - 1, cp1.tree_size, &leaf, &hashes, &parsed.root),
            "seq {seq} of {}",
            cp1.tree_size
        );
    }

    gw.record_access(access("PUMP-1", "q")).await.unwrap();
    let cp2 = gw
        .get_checkpoint(proto::GetCheckpointRequest {})
        .await
        .unwrap()
        .into_inner();
    let c = gw
        .get_consistency_proof(proto::GetConsistencyProofRequest {
            old_size: cp1.tree_size,
            new_size: cp2.tree_size,
        })
        .await
        .unwrap()
        .into_inner();
    let hashes: Vec<merkle::Hash> = c
        .proof
        .iter()
        .map(|p| p.clone().try_into().unwrap())
        .collect();
    let root2: merkle::Hash = cp2.root_hash.try_into().unwrap();
    assert!(merkle::verify_consistency(
        cp1.tree_size,
        cp2.tree_size,
        &parsed.root,
        &root2,
        &hashes
    ));
    // Devices may not read proofs.
    let err = audit(&w.server, &w.device)
        .await
        .get_checkpoint(proto::GetCheckpointRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_and_filtered_exports_verify_offline_and_are_themselves_audited() {
    let w = world().await;
    let mut gw = audit(&w.server, &w.gateway).await;
    for i in 0..5 {
        gw.record_access(access(
            if i % 2 == 0 { "PUMP-1" } else { "PUMP-2" },
            &format!("p-{i}"),
        ))
        .await
        .unwrap();
    }
    let full = path(&w, "full.jsonl");
    export(&w, proto::ExportAuditRequest::default(), &full).await;
    let (ok, out) = verify(&w, &full, None);
    assert!(ok && out.contains("complete"), "{out}");

    let filtered = path(&w, "filtered.jsonl");
    let filter = proto::AuditFilter {
        device_uri: "spiffe://medid.local/device/acme/PUMP-2".into(),
        ..Default::default()
    };
    export(
        &w,
        proto::ExportAuditRequest {
            filter: Some(filter),
            previous_tree_size: 0,
        },
        &filtered,
    )
    .await;
    let (ok, out) = verify(&w, &filtered, None);
    assert!(ok && out.contains("inclusion"), "{out}");
    let text = std::fs::read_to_string(&filtered).unwrap();
    assert!(text
        .lines()
        .filter(|l| l.contains("\"type\":\"event\""))
        .all(|l| l.contains("PUMP-2")));

    // The export was recorded: who, and which filter.
    let exports: Vec<_> = w
        .server
        .audit_events()
        .await
        .into_iter()
        .filter(|e| e.event.action == medid::audit::Action::AuditExport)
        .collect();
    assert_eq!(exports.len(), 2);
    assert_eq!(
        exports[1].event.actor.uri,
        "spiffe://medid.local/auditor/compliance"
    );
    assert!(exports[1].event.detail["filter"]["device_uri"]
        .as_str()
        .unwrap()
        .ends_with("PUMP-2"));

    // Only auditors export.
    let err = audit(&w.server, &w.gateway)
        .await
        .export_audit(proto::ExportAuditRequest::default())
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), Code::PermissionDenied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_exports_csv_and_fhir_with_every_required_element() {
    let w = world().await;
    let mut gw = audit(&w.server, &w.gateway).await;
    let mut hostile = access("PUMP-1", "=HYPERLINK(\"http://evil\")");
    hostile.user_id = "+cmd|' /C calc'!A0".into();
    gw.record_access(hostile).await.unwrap();
    // Events of other shapes, each of which must render as a valid AuditEvent too: an access
    // without its optional user role and patient, one refused for a missing data category, a
    // report refused for its caller (an auditor), a refused enrollment, a revocation.
    let mut bare = access("PUMP-2", "");
    bare.user_role.clear();
    gw.record_access(bare.clone())
        .await
        .expect("an access without a user role or patient is recorded");
    bare.data_category.clear();
    gw.record_access(bare)
        .await
        .expect_err("an access without a data category is refused");
    let refused = audit(&w.server, &w.auditor)
        .await
        .record_access(access("PUMP-1", "p-9"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    let station = w.server.station("acme", "line-2").await;
    let again = w
        .server
        .enrollment_client(&station)
        .await
        .enroll_device(proto::EnrollDeviceRequest {
            csr: csr_p256().0,
            serial: "PUMP-1".into(),
            model: "X".into(),
            udi_di: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists);
    proto::lifecycle_service_client::LifecycleServiceClient::new(
        w.server.channel(&w.server.admin()).await,
    )
    .revoke(common::revoke_for_key_compromise(&common::serial_of(
        &w.device,
    )))
    .await
    .unwrap();
    let dir = w.server.dir.path();
    std::fs::write(dir.join("auditor.pem"), &w.auditor.cert_pem).unwrap();
    std::fs::write(dir.join("auditor.key"), &w.auditor.key_pem).unwrap();
    for format in ["csv", "fhir"] {
        let out = Command::new(env!("CARGO_BIN_EXE_medid"))
            .args([
                "audit",
                "export",
                "--format",
                format,
                "--out",
                &format!("export.{format}"),
                "--server",
                &w.server.url,
            ])
            .arg("--ca")
            .arg(w.server.pki("root-ca.pem"))
            .arg("--cert")
            .arg(dir.join("auditor.pem"))
            .arg("--key")
            .arg(dir.join("auditor.key"))
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (ok, text) = verify(&w, &dir.join("export.bundle.jsonl"), None);
        assert!(ok, "{text}");
    }
    let csv = std::fs::read_to_string(dir.join("export.csv")).unwrap();
    assert!(
        csv.contains("\"'=HYPERLINK(\"\"http://evil\"\")\""),
        "{csv}"
    );
    assert!(csv.contains("\"'+cmd|"), "{csv}");
    assert!(!csv
        .lines()
        .skip(1)
        .any(|l| l.starts_with('=') || l.contains(",=")));
    let fhir = std::fs::read_to_string(dir.join("export.fhir")).unwrap();
    let mut saw_read = false;
    for line in fhir.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        // FHIR has no empty strings; an absent field is left out.
        assert!(!has_empty_string(&v), "an empty string in {line}");
        assert_eq!(v["resourceType"], "AuditEvent");
        assert!(
            v["type"]["system"].is_string() && v["type"]["code"].is_string(),
            "{v}"
        );
        assert!(v["recorded"].is_string());
        assert!(v["source"]["observer"].is_object());
        let agents = v["agent"].as_array().unwrap();
        assert!(!agents.is_empty() && agents.iter().all(|a| a["requestor"].is_boolean()));
        if v["subtype"][0]["code"] == "read" {
            saw_read = true;
            assert_eq!(v["action"], "R");
            assert_eq!(v["purposeOfEvent"][0]["coding"][0]["code"], "TREAT");
            assert!(agents
                .iter()
                .any(|a| a["type"]["coding"][0]["code"] == "IRCP" && a["requestor"] == true));
        }
    }
    assert!(saw_read, "the BALP read pattern is present");

    // An independent FHIR R4 validator (Python fhir.resources), when `.ci/run` provides it.
    if let Ok(python) = std::env::var("MEDID_FHIR_PYTHON") {
        let script = "import sys, json\nfrom fhir.resources.auditevent import AuditEvent\n\
                      n = 0\nfor line in open(sys.argv[1]):\n    AuditEvent.parse_obj(json.loads(line)); n += 1\n\
                      print('valid', n)\n";
        let out = Command::new(&python)
            .args(["-c", script])
            .arg(dir.join("export.fhir"))
            .output()
            .unwrap_or_else(|e| panic!("MEDID_FHIR_PYTHON={python}: {e}"));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && text.contains("valid"),
            "FHIR R4 validation: {text}"
        );
    }
}

/// Five ways to tamper with the SQLite file, each named by `medid audit verify`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampering_with_the_database_is_detected_and_named() {
    for case in ["edit", "delete", "swap", "truncate", "rewrite"] {
        let w = world().await;
        let mut gw = audit(&w.server, &w.gateway).await;
        // At least six accesses, ending four leaves into a block of 16: the event tampered
        // with (the third from the end) is among the newest leaves, which the stored tree does
        // not cover with a node yet.
        for i in 0.. {
            gw.record_access(access("PUMP-1", &format!("p-{i}")))
                .await
                .unwrap();
            if i >= 5 && w.server.audit_events().await.len() % 16 == 4 {
                break;
            }
        }
        // A checkpoint the auditor keeps (a copy of checkpoints/latest.note).
        let cp = gw
            .get_checkpoint(proto::GetCheckpointRequest {})
            .await
            .unwrap()
            .into_inner();
        let kept = path(&w, "kept.note");
        std::fs::write(&kept, &cp.note).unwrap();
        let n = cp.tree_size as i64;
        let k = n - 3;
        for e in w.server.audit_events().await {
            eprintln!("DBG {} {:?} {}", e.seq, e.event.action, e.event.target);
        }
        let pool = db(&w).await;
        match case {
            "edit" => {
                sqlx::query("UPDATE audit_events SET target = 'spiffe://medid.local/device/acme/OTHER' WHERE seq = $1")
                    .bind(k).execute(&pool).await.unwrap();
            }
            "delete" => {
                sqlx::query("DELETE FROM audit_events WHERE seq = $1")
                    .bind(k)
                    .execute(&pool)
                    .await
                    .unwrap();
            }
            "swap" => {
                sqlx::raw_sql(&format!(
                    "UPDATE audit_events SET seq = -1 WHERE seq = {k};
                     UPDATE audit_events SET seq = {k} WHERE seq = {k1};
                     UPDATE audit_events SET seq = {k1} WHERE seq = -1;",
                    k1 = k + 1
                ))
                .execute(&pool)
                .await
                .unwrap();
            }
            "truncate" => {
                sqlx::query("DELETE FROM audit_events WHERE seq >= $1")
                    .bind(k)
                    .execute(&pool)
                    .await
                    .unwrap();
            }
            "rewrite" => {
                // Change entry k and recompute every leaf hash from k on, and delete the
                // checkpoints kept in the database.
                sqlx::query("UPDATE audit_events SET target = 'spiffe://medid.local/device/acme/OTHER' WHERE seq = $1")
                    .bind(k).execute(&pool).await.unwrap();
                for seq in k..=n {
                    let e = w
                        .server
                        .ca
                        .store
                        .audit_events(seq - 1, 1)
                        .await
                        .unwrap()
                        .remove(0);
                    let leaf = medid::audit::ledger::leaf(seq, &e.event).unwrap();
                    sqlx::query("UPDATE audit_events SET leaf_hash = $1 WHERE seq = $2")
                        .bind(medid::domain::hex(&leaf))
                        .bind(seq)
                        .execute(&pool)
                        .await
                        .unwrap();
                }
                sqlx::query("DELETE FROM audit_checkpoints")
                    .execute(&pool)
                    .await
                    .unwrap();
            }
            _ => unreachable!(),
        }
        pool.close().await;
        // The log keeps growing after the damage.
        gw.record_access(access("PUMP-1", "after"))
            .await
            .unwrap_or_else(|e| panic!("{case}: the log stopped taking events: {e:?}"));
        let bundle = path(&w, "tampered.jsonl");
        export(&w, proto::ExportAuditRequest::default(), &bundle).await;
        let (ok, out) = verify(&w, &bundle, Some(&kept));
        assert!(!ok, "{case}: tampering went unnoticed: {out}");
        let expected = match case {
            "edit" => format!("altered: event {k}"),
            "delete" => format!("missing: event {k}"),
            "swap" => format!("reordered: event {k}"),
            "truncate" => "truncated below a signed checkpoint".to_string(),
            _ => "rewritten".to_string(),
        };
        assert!(
            out.contains(&expected),
            "{case}: expected {expected:?} in {out}"
        );
        // The service raised the alarm in the log itself where it could tell.
        if case != "edit" {
            assert!(
                w.server
                    .audit_events()
                    .await
                    .iter()
                    .any(|e| e.event.action == medid::audit::Action::AuditIntegrity),
                "{case}"
            );
        }
    }
}

/// Records 40 accesses to PUMP-1 (patients a-0 … a-39) and has the log signed: its size.
async fn forty_accesses_signed(w: &World) -> u64 {
    let mut gw = audit(&w.server, &w.gateway).await;
    for n in 0..40 {
        gw.record_access(access("PUMP-1", &format!("a-{n}")))
            .await
            .unwrap();
    }
    audit(&w.server, &w.auditor)
        .await
        .get_checkpoint(proto::GetCheckpointRequest {})
        .await
        .unwrap()
        .into_inner()
        .tree_size
}

/// `medid audit fsck` re-derives everything from the database and names the first damage,
/// including an older event edited with its leaf hash left alone, which no incremental check
/// reads again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsck_rederives_the_whole_log_and_names_the_first_bad_entry() {
    let fsck = |w: &World| {
        medid(&[
            "audit".into(),
            "fsck".into(),
            "--database-url".into(),
            w.server.config.database_url.clone().into(),
            "--key".into(),
            w.server.pki("audit-signing.pub").into(),
        ])
    };
    for case in ["event", "node", "checkpoint"] {
        let w = world().await;
        let signed = forty_accesses_signed(&w).await;
        let (ok, out) = fsck(&w);
        assert!(ok, "{case}: {out}");
        assert!(
            out.contains(&format!("OK: {signed} events")) && out.contains("signed checkpoints"),
            "{case}: {out}"
        );
        let pool = db(&w).await;
        let expected = match case {
            "event" => {
                // An access event under the signed checkpoint.
                let seq = signed as i64 - 5;
                let changed = sqlx::query(
                    "UPDATE audit_events SET detail = REPLACE(detail, '\"a-', '\"z-') WHERE seq = $1",
                )
                .bind(seq)
                .execute(&pool)
                .await
                .unwrap();
                assert_eq!(changed.rows_affected(), 1);
                format!("fsck FAILED: audit log: event {seq} does not match its stored leaf hash")
            }
            "node" => {
                sqlx::query(
                    "UPDATE merkle_nodes SET hash = (SELECT hash FROM merkle_nodes
                     WHERE level = 4 AND idx = 0) WHERE level = 4 AND idx = 1",
                )
                .execute(&pool)
                .await
                .unwrap();
                "the stored Merkle node 1 at level 4 (events 17..=32)".to_string()
            }
            _ => {
                sqlx::query("UPDATE audit_checkpoints SET note = REPLACE(note, 'a', 'b')")
                    .execute(&pool)
                    .await
                    .unwrap();
                "a stored checkpoint does not verify".to_string()
            }
        };
        pool.close().await;
        let (ok, out) = fsck(&w);
        assert!(!ok, "{case}: damage went unnoticed: {out}");
        assert!(
            out.contains(&expected),
            "{case}: expected {expected:?} in {out}"
        );
    }
}

/// Every filter an auditor can give exports exactly the events it matches (checked here
/// against the whole log, filtered independently), each with an inclusion proof from the
/// stored tree that `medid audit verify` accepts: a time window, a device, an actor, a
/// patient reference, and a device within a window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_filter_exports_exactly_its_events_with_proofs() {
    let w = world().await;
    let mut gw = audit(&w.server, &w.gateway).await;
    let start = w.server.clock.now();
    for hour in 0..3 {
        for n in 0..6 {
            let mut event = access(
                if n % 2 == 0 { "PUMP-1" } else { "PUMP-2" },
                &format!("patient-{}", n % 3),
            );
            event.occurred_at = Some(prost_types::Timestamp {
                seconds: w.server.clock.now().unix_timestamp(),
                nanos: 0,
            });
            gw.record_access(event).await.unwrap();
        }
        if hour < 2 {
            w.server.clock.advance(time::Duration::hours(1));
        }
    }
    let log = w.server.audit_events().await;
    let ts = |t: time::OffsetDateTime| prost_types::Timestamp {
        seconds: t.unix_timestamp(),
        nanos: 0,
    };
    let (from, to) = (
        start + time::Duration::minutes(30),
        start + time::Duration::minutes(90),
    );
    let in_window = move |e: &medid::audit::StoredEvent| {
        e.event.recorded_at >= from && e.event.recorded_at <= to
    };
    let pump2 = "spiffe://medid.local/device/acme/PUMP-2";
    let gateway = log
        .iter()
        .find(|e| e.event.action == medid::audit::Action::DataAccess)
        .map(|e| e.event.actor.uri.clone())
        .unwrap();
    type Matches = Box<dyn Fn(&medid::audit::StoredEvent) -> bool>;
    let cases: Vec<(&str, proto::AuditFilter, Matches)> = vec![
        (
            "window",
            proto::AuditFilter {
                from: Some(ts(from)),
                to: Some(ts(to)),
                ..Default::default()
            },
            Box::new(in_window),
        ),
        (
            "device",
            proto::AuditFilter {
                device_uri: pump2.into(),
                ..Default::default()
            },
            Box::new(move |e| e.event.target == pump2),
        ),
        (
            "actor",
            proto::AuditFilter {
                actor_uri: gateway.clone(),
                ..Default::default()
            },
            Box::new({
                let gateway = gateway.clone();
                move |e| e.event.actor.uri == gateway
            }),
        ),
        (
            "patient",
            proto::AuditFilter {
                patient_ref: "patient-1".into(),
                ..Default::default()
            },
            Box::new(|e| e.event.detail.get("patient_ref") == Some(&"patient-1".into())),
        ),
        (
            "device in window",
            proto::AuditFilter {
                from: Some(ts(from)),
                to: Some(ts(to)),
                device_uri: pump2.into(),
                ..Default::default()
            },
            Box::new(move |e| in_window(e) && e.event.target == pump2),
        ),
    ];
    for (name, filter, matches) in cases {
        let expected: Vec<i64> = log.iter().filter(|e| matches(e)).map(|e| e.seq).collect();
        assert!(!expected.is_empty(), "{name}");
        let bundle = path(&w, &format!("{}.jsonl", name.replace(' ', "-")));
        export(
            &w,
            proto::ExportAuditRequest {
                filter: Some(filter),
                previous_tree_size: 0,
            },
            &bundle,
        )
        .await;
        let (ok, out) = verify(&w, &bundle, None);
        assert!(ok && out.contains("inclusion"), "{name}: {out}");
        let got: Vec<i64> = std::fs::read_to_string(&bundle)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["type"] == "event")
            .map(|v| v["seq"].as_i64().unwrap())
            .collect();
        assert_eq!(got, expected, "{name}");
    }
}

/// No audit, no action: with audit writes failing (a real SQLite fault, injected with a
/// trigger), enrollment, revocation, access records and exports all fail and change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_audit_write_fails_the_operation_fails_and_changes_nothing() {
    let w = world().await;
    let station = w.server.station("acme", "line-2").await;
    let pool = w.server.db().await;
    sqlx::raw_sql(common::by_backend(
        "CREATE TRIGGER fail_audit BEFORE INSERT ON audit_events BEGIN SELECT RAISE(ABORT, 'disk full'); END;",
        "CREATE FUNCTION fail_audit() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN RAISE EXCEPTION 'disk full'; END; $$;
         CREATE TRIGGER fail_audit BEFORE INSERT ON audit_events
             FOR EACH ROW EXECUTE FUNCTION fail_audit();",
    ))
    .execute(&pool)
    .await
    .unwrap();
    let devices_before = w.server.count("SELECT COUNT(*) FROM devices").await;
    let certs_before = w.server.count("SELECT COUNT(*) FROM certificates").await;
    let err = w
        .server
        .enrollment_client(&station)
        .await
        .enroll_device(EnrollDeviceRequest {
            csr: csr_p256().0,
            serial: "NEW-1".into(),
            model: "X".into(),
            udi_di: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Internal);
    let err = medid::proto::lifecycle_service_client::LifecycleServiceClient::new(
        w.server.channel(&w.server.admin()).await,
    )
    .revoke(proto::RevokeRequest {
        target: Some(proto::revoke_request::Target::Device(proto::DeviceRef {
            manufacturer_id: "acme".into(),
            serial: "PUMP-1".into(),
        })),
        reason: proto::RevocationReason::KeyCompromise as i32,
    })
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::Internal);
    let err = audit(&w.server, &w.gateway)
        .await
        .record_access(access("PUMP-1", "p"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Internal);
    let err = audit(&w.server, &w.auditor)
        .await
        .export_audit(proto::ExportAuditRequest::default())
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), Code::Internal);
    assert_eq!(
        w.server.count("SELECT COUNT(*) FROM devices").await,
        devices_before
    );
    assert_eq!(
        w.server.count("SELECT COUNT(*) FROM certificates").await,
        certs_before
    );
    assert_eq!(
        w.server
            .count("SELECT COUNT(*) FROM certificates WHERE status = 'revoked'")
            .await,
        0
    );
    sqlx::raw_sql(common::by_backend(
        "DROP TRIGGER fail_audit;",
        "DROP TRIGGER fail_audit ON audit_events;",
    ))
    .execute(&pool)
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn officers_search_the_trail_page_by_page_and_the_search_is_audited() {
    let w = world().await;
    let mut gw = audit(&w.server, &w.gateway).await;
    for i in 0..5 {
        gw.record_access(access("PUMP-1", &format!("p-{i}")))
            .await
            .unwrap();
    }
    let mut officer = audit(&w.server, &w.auditor).await;
    let filter = proto::AuditFilter {
        action: "data.access".into(),
        ..Default::default()
    };
    let mut token = String::new();
    let mut seen = 0;
    loop {
        let page = officer
            .query_audit(proto::QueryAuditRequest {
                filter: Some(filter.clone()),
                page_size: 2,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        seen += page.events_json.len();
        assert!(page
            .events_json
            .iter()
            .all(|e| e.contains("\"action\":\"data.access\"")));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, 5);
    let used = w
        .server
        .audit_events()
        .await
        .iter()
        .filter(|e| e.event.action == medid::audit::Action::AuditQuery)
        .count();
    assert_eq!(used, 3, "each page is an Audit Log Used event");
    let err = gw
        .query_audit(proto::QueryAuditRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
}

/// Every checkpoint checks what was added since the last signed one, from the stored rows and
/// the stored tree (O(k + log n)): an event edited after the last checkpoint, a stored tree
/// node those events complete, and a stored node the last signed root depends on are each
/// found by the next periodic check, named in one `audit.integrity` event however often the
/// check runs while the damage lasts (docs/AUDIT.md "Integrity checks").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_checkpoint_checks_what_was_added_since_the_last_signed_one() {
    for case in ["event", "node", "root"] {
        let w = world().await;
        let mut gw = audit(&w.server, &w.gateway).await;
        let mut officer = audit(&w.server, &w.auditor).await;
        let signed = forty_accesses_signed(&w).await as i64;
        for n in 0..40 {
            gw.record_access(access("PUMP-1", &format!("b-{n}")))
                .await
                .unwrap();
        }
        let pool = db(&w).await;
        let expected = match case {
            "event" => {
                let seq = signed + 7;
                let changed = sqlx::query(
                    "UPDATE audit_events SET detail = REPLACE(detail, '\"b-', '\"c-') WHERE seq = $1",
                )
                .bind(seq)
                .execute(&pool)
                .await
                .unwrap();
                assert_eq!(changed.rows_affected(), 1);
                format!("event {seq} does not match its stored leaf hash")
            }
            "node" => {
                // The first 16-leaf subtree wholly after the checkpoint.
                let idx = (signed + 15) / 16;
                sqlx::query(
                    "UPDATE merkle_nodes SET hash = (SELECT hash FROM merkle_nodes
                     WHERE level = 4 AND idx = 0) WHERE level = 4 AND idx = $1",
                )
                .bind(idx)
                .execute(&pool)
                .await
                .unwrap();
                format!("stored Merkle node {idx} at level 4")
            }
            _ => {
                // The largest subtree of the signed root (stored: it covers 32 leaves or more).
                let level = 63 - (signed as u64).leading_zeros() as i64;
                assert!(level >= 5, "{signed}");
                sqlx::query(
                    "UPDATE merkle_nodes SET hash = (SELECT hash FROM merkle_nodes
                     WHERE level = 4 AND idx = 1) WHERE level = $1 AND idx = 0",
                )
                .bind(level)
                .execute(&pool)
                .await
                .unwrap();
                format!("no longer yields the signed root of the first {signed} events")
            }
        };
        pool.close().await;
        let err = officer
            .get_checkpoint(proto::GetCheckpointRequest {})
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Internal, "{case}: {err:?}");
        for _ in 0..3 {
            w.server.clock.advance(time::Duration::seconds(11));
            let damage = w.server.ca.maybe_checkpoint().await.unwrap_err();
            assert!(
                w.server.ca.integrity_state().await.0,
                "/metrics reports the damage"
            );
            assert!(damage.to_string().contains(&expected), "{case}: {damage}");
        }
        let raised: Vec<_> = w
            .server
            .audit_events()
            .await
            .into_iter()
            .filter(|e| e.event.action == medid::audit::Action::AuditIntegrity)
            .collect();
        assert_eq!(raised.len(), 1, "{case}: raised once: {raised:?}");
        let detail = raised[0].event.detail["detail"].as_str().unwrap();
        assert!(detail.contains(&expected), "{case}: {detail}");
    }
}

/// Periodic checkpoints check only what was added since the last one; what they sign must
/// equal a full re-read, and an older row deleted behind medid's back is still found once the
/// full-check period has passed (docs/AUDIT.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_extend_the_frontier_and_still_reread_the_whole_log_periodically() {
    let w = world().await;
    let mut gw = audit(&w.server, &w.gateway).await;
    let mut officer = audit(&w.server, &w.auditor).await;
    let mut sizes = Vec::new();
    for round in 0..4 {
        for n in 0..7 {
            gw.record_access(access("PUMP-1", &format!("r{round}-{n}")))
                .await
                .unwrap();
        }
        let cp = officer
            .get_checkpoint(proto::GetCheckpointRequest {})
            .await
            .unwrap()
            .into_inner();
        sizes.push(cp.tree_size);
    }
    assert!(sizes.windows(2).all(|s| s[0] < s[1]), "{sizes:?}");
    // A full re-read accepts every checkpoint signed from the frontier as its prefix.
    let (full, _) = w.server.ca.checkpoint_now().await.unwrap();
    assert_eq!(
        full.size,
        *sizes.last().unwrap(),
        "nothing was logged since"
    );
    let bundle = path(&w, "frontier.jsonl");
    export(&w, proto::ExportAuditRequest::default(), &bundle).await;
    let (ok, out) = verify(&w, &bundle, None);
    assert!(ok, "{out}");

    // An old event deleted behind medid's back: checkpoints from the frontier do not re-read
    // it, but once FULL_CHECK_EVERY has passed the maintenance loop's next one does, raises
    // it, and from then on requests are refused instead of signed.
    let pool = db(&w).await;
    sqlx::query("DELETE FROM audit_events WHERE seq = 3")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    gw.record_access(access("PUMP-1", "after")).await.unwrap();
    officer
        .get_checkpoint(proto::GetCheckpointRequest {})
        .await
        .expect("within the period, the frontier is trusted");
    w.server
        .clock
        .advance(medid::service::ledger::FULL_CHECK_EVERY + time::Duration::seconds(1));
    gw.record_access(access("PUMP-1", "later")).await.unwrap();
    let damage = w.server.ca.maybe_checkpoint().await.unwrap_err();
    assert!(
        damage.to_string().contains("event 3 is missing"),
        "{damage}"
    );
    let err = officer
        .get_checkpoint(proto::GetCheckpointRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Internal, "{err:?}");
    assert!(w
        .server
        .audit_events()
        .await
        .iter()
        .any(|e| e.event.action == medid::audit::Action::AuditIntegrity));
}

/// Runs the real `medid audit` CLI with `args`; (success, stdout + stderr).
fn medid(args: &[std::ffi::OsString]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_medid"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Retention: `medid audit archive` writes the events of a day to a bundle that verifies on
/// its own, then drops their rows; every live event still has an inclusion proof, earlier
/// signed checkpoints (inside the archived part, of any size) still have consistency proofs,
/// complete and filtered exports still verify and say what is archived, fsck passes, and an
/// archived event is proven by its bundle plus a consistency proof from the bundle's
/// checkpoint to today's. Only archived rows can be deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archiving_a_day_drops_its_rows_and_every_proof_still_verifies() {
    let w = world().await;
    let dir = w.server.dir.path().to_owned();
    let mut gw = audit(&w.server, &w.gateway).await;
    let mut auditor = audit(&w.server, &w.auditor).await;
    let checkpoint = |note_file: &str| {
        let path = dir.join(note_file);
        move |cp: proto::SignedCheckpoint| {
            std::fs::write(&path, &cp.note).unwrap();
            cp.tree_size
        }
    };
    // Day one: a checkpoint part-way (an odd size, inside the archived part later) and one at
    // the end of the day.
    let mut sizes = Vec::new();
    for (events, note_file) in [(0..13, "early.note"), (13..40, "day-one.note")] {
        for n in events {
            gw.record_access(access("PUMP-1", &format!("d1-{n}")))
                .await
                .unwrap();
        }
        sizes.push(checkpoint(note_file)(
            auditor
                .get_checkpoint(proto::GetCheckpointRequest {})
                .await
                .unwrap()
                .into_inner(),
        ));
    }
    let (early, day_one) = (sizes[0], sizes[1]);
    assert!(early % 16 != 0 && early < day_one, "{early} {day_one}");
    // Day two.
    w.server.clock.advance(time::Duration::days(1));
    let cutoff = w.server.clock.now() - time::Duration::hours(1);
    for n in 0..30 {
        let mut event = access(
            if n % 2 == 0 { "PUMP-1" } else { "PUMP-2" },
            &format!("d2-{n}"),
        );
        event.occurred_at = Some(prost_types::Timestamp {
            seconds: w.server.clock.now().unix_timestamp(),
            nanos: 0,
        });
        gw.record_access(event).await.unwrap();
    }
    let key = w.server.pki("audit-signing.pub");
    let db_url = w.server.config.database_url.clone();
    let bundle = dir.join("day-one.jsonl");
    let cutoff_text = medid::audit::ledger::rfc3339(cutoff).unwrap();
    let archive_args = |out: &Path| -> Vec<std::ffi::OsString> {
        vec![
            "audit".into(),
            "archive".into(),
            "--database-url".into(),
            db_url.clone().into(),
            "--key".into(),
            key.clone().into(),
            "--before".into(),
            cutoff_text.clone().into(),
            "--out".into(),
            out.into(),
        ]
    };
    let args = archive_args(&bundle);
    let (ok, out) = medid(&args);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("OK: events 1..={day_one} archived")),
        "{out}"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&bundle).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // The bundle verifies on its own, offline.
    let (ok, out) = verify(&w, &bundle, Some(&dir.join("early.note")));
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("OK: {day_one} events verified")),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "consistent with the earlier checkpoint of size {early}"
        )),
        "{out}"
    );

    // The rows are gone; the live ones cannot be deleted.
    let pool = w.server.db().await;
    let left: i64 = sqlx::query_scalar(&format!(
        "SELECT COUNT(*) FROM audit_events WHERE seq <= {day_one}"
    ))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(left, 0);
    let refused = sqlx::query(&format!(
        "DELETE FROM audit_events WHERE seq = {}",
        day_one + 1
    ))
    .execute(&pool)
    .await
    .unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("only archived events may be dropped"),
        "{refused}"
    );
    let archived_event: String =
        sqlx::query_scalar("SELECT detail FROM audit_events WHERE action = 'audit.archive'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(
        archived_event.contains(&format!("\"last_seq\":{day_one}")),
        "{archived_event}"
    );
    pool.close().await;

    // Live events are proven against today's checkpoint, whose tree still covers the archived
    // part; an archived event's proof is refused with directions.
    let now = auditor
        .get_checkpoint(proto::GetCheckpointRequest {})
        .await
        .unwrap()
        .into_inner();
    let root: [u8; 32] = now.root_hash.clone().try_into().unwrap();
    for seq in [day_one as i64 + 1, day_one as i64 + 2, now.tree_size as i64] {
        let p = auditor
            .get_inclusion_proof(proto::GetInclusionProofRequest {
                seq,
                tree_size: now.tree_size,
            })
            .await
            .unwrap()
            .into_inner();
        let leaf: [u8; 32] = p.leaf_hash.try_into().unwrap();
        let proof: Vec<[u8; 32]> = p.proof.into_iter().map(|h| h.try_into().unwrap()).collect();
        assert!(
            merkle::verify_inclusion(seq as u64 - 1, now.tree_size, &leaf, &proof, &root),
            "{seq}"
        );
    }
    let gone = auditor
        .get_inclusion_proof(proto::GetInclusionProofRequest {
            seq: 3,
            tree_size: now.tree_size,
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::FailedPrecondition);
    assert!(
        gone.message().contains("archive bundle"),
        "{}",
        gone.message()
    );

    // Consistency from both day-one checkpoints (the bundle's, and the odd-sized one inside
    // the archived part), through the real CLI.
    std::fs::write(dir.join("auditor.pem"), &w.auditor.cert_pem).unwrap();
    std::fs::write(dir.join("auditor.key"), &w.auditor.key_pem).unwrap();
    let client = |cmd: &[&str]| -> Vec<std::ffi::OsString> {
        let mut v: Vec<std::ffi::OsString> = cmd.iter().map(Into::into).collect();
        for (flag, value) in [
            ("--server", w.server.url.clone().into()),
            ("--ca", w.server.pki("root-ca.pem")),
            ("--cert", dir.join("auditor.pem")),
            ("--key", dir.join("auditor.key")),
        ] {
            v.push(flag.into());
            v.push(value.into());
        }
        v
    };
    for since in ["day-one.jsonl.note", "early.note"] {
        let mut args = client(&["audit", "prove-consistency", "--since"]);
        args.insert(3, dir.join(since).into());
        args.extend(["--audit-key".into(), key.clone().into()]);
        let (ok, out) = medid(&args);
        assert!(ok, "{since}: {out}");
    }

    // A complete export starts after the archived part and verifies; so does a filtered one,
    // and one proving consistency with a checkpoint inside the archived part.
    let complete = dir.join("complete.jsonl");
    export(
        &w,
        proto::ExportAuditRequest {
            filter: None,
            previous_tree_size: early,
        },
        &complete,
    )
    .await;
    let header: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(&complete)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["archived_through"], day_one);
    let (ok, out) = verify(&w, &complete, Some(&dir.join("early.note")));
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("events 1..={day_one} are archived")),
        "{out}"
    );
    let filtered = dir.join("pump-2.jsonl");
    export(
        &w,
        proto::ExportAuditRequest {
            filter: Some(proto::AuditFilter {
                device_uri: "spiffe://medid.local/device/acme/PUMP-2".into(),
                ..Default::default()
            }),
            previous_tree_size: 0,
        },
        &filtered,
    )
    .await;
    let (ok, out) = verify(&w, &filtered, None);
    assert!(ok, "{out}");
    assert!(out.contains("OK: 15 events verified"), "{out}");

    // fsck starts from the archive and checks what is left.
    let (ok, out) = medid(&[
        "audit".into(),
        "fsck".into(),
        "--database-url".into(),
        db_url.clone().into(),
        "--key".into(),
        key.clone().into(),
    ]);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("(events 1..={day_one} are archived)")),
        "{out}"
    );

    // Nothing more was recorded before the cutoff: a second run says so and changes nothing.
    let args = archive_args(&dir.join("again.jsonl"));
    let (ok, out) = medid(&args);
    assert!(!ok && out.contains("nothing to archive"), "{out}");
    assert!(!dir.join("again.jsonl").exists());
}

/// A reporter's event id makes a repeat harmless: the same id from the same gateway names
/// the event already in the log (in another request, in the same batch, through the stream),
/// while another gateway's event with that id is its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_sent_again_with_its_event_id_is_recorded_once() {
    let w = world().await;
    let other = w.server.issue(PrincipalRole::Gateway, "ward-gw", "").await;
    let with_id = |id: &str| proto::AccessEvent {
        event_id: id.into(),
        resource: "/Observation/1".into(),
        ..access("PUMP-1", "Patient/p-1")
    };
    let before = w.server.audit_events().await.len();
    let mut gw = audit(&w.server, &w.gateway).await;
    let first = gw
        .record_access(with_id("e-1"))
        .await
        .unwrap()
        .into_inner()
        .seq;
    let again = gw
        .record_access(with_id("e-1"))
        .await
        .unwrap()
        .into_inner()
        .seq;
    assert_eq!(first, again);
    // A batch: e-1 again, e-2 twice, one event without an id.
    let acks: Vec<proto::AccessBatchAck> = gw
        .record_access_stream(tokio_stream::iter(vec![proto::AccessBatch {
            events: vec![
                with_id("e-2"),
                with_id("e-1"),
                with_id("e-2"),
                access("PUMP-2", "Patient/p-2"),
            ],
        }]))
        .await
        .unwrap()
        .into_inner()
        .map(|a| a.unwrap())
        .collect()
        .await;
    let seqs = &acks[0].seqs;
    assert_eq!(seqs[1], first);
    assert_eq!(seqs[0], seqs[2]);
    assert_ne!(seqs[0], first);
    assert_ne!(seqs[3], seqs[0]);
    // Another gateway's e-1 is another event.
    let theirs = audit(&w.server, &other)
        .await
        .record_access(with_id("e-1"))
        .await
        .unwrap()
        .into_inner()
        .seq;
    assert_ne!(theirs, first);
    let events = w.server.audit_events().await;
    assert_eq!(
        events.len() - before,
        4,
        "e-1, e-2, the one without an id, the other's e-1"
    );
    let e1 = events.iter().find(|e| e.seq == first).unwrap();
    assert_eq!(e1.event.detail["event_id"], "e-1");
    assert_eq!(e1.event.detail["resource"], "/Observation/1");
    // A malformed id is refused like any bad field, and nothing is recorded.
    for bad in ["has space", "ü", &"x".repeat(65)] {
        let err = gw.record_access(with_id(bad)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad}");
        assert!(err.message().contains("event_id"), "{}", err.message());
    }
    let refused = w.server.audit_events().await;
    assert!(refused[events.len()..]
        .iter()
        .all(|e| e.event.action == medid::audit::Action::DataAccess
            && e.event.outcome != medid::audit::Outcome::Success));
    // The whole log still verifies offline.
    let bundle = path(&w, "ids.jsonl");
    export(&w, proto::ExportAuditRequest::default(), &bundle).await;
    let (ok, out) = verify(&w, &bundle, None);
    assert!(ok, "{out}");
}
