//! Micro-benchmarks (criterion): the CPU work under each enrollment and each audit event.
//!
//! ```sh
//! cargo bench --bench micro
//! ```
//!
//! - `issuance`: CSR parse and verify (`policy::csr::verify`), the operational profile, and
//!   signing the certificate (the same rcgen parameters `Authority::sign` signs, here with a
//!   P-256 CA key of the benchmark's own: medid's CA keys sign only behind an issuance token).
//! - `merkle`: the RFC 9162 root, an inclusion proof and a consistency proof over 10,000 leaves,
//!   and the level tree that filtered exports build once to prove each event in O(log n).
//! - `audit`: an access event's RFC 8785 canonical form, and its leaf hash; an export line;
//!   and the offline verification of a complete 10,000-event bundle, per event.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use medid::audit::{Actor, AuditEvent};
use medid::domain::{DeviceSerial, ManufacturerId, TrustDomain};
use medid::policy::profile::{BirthSubject, ProfileSettings};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use time::macros::datetime;

fn issuance(c: &mut Criterion) {
    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca = CertificateParams::new(vec![]).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let issuer = Issuer::new(ca, ca_key);
    let device_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let csr = CertificateParams::new(vec![])
        .unwrap()
        .serialize_request(&device_key)
        .unwrap()
        .der()
        .to_vec();
    let profiles = ProfileSettings {
        trust_domain: TrustDomain::parse("hospital.example").unwrap(),
        public_base_url: "http://pki.hospital.example".into(),
        principal_lifetime: time::Duration::days(90),
        server_lifetime: time::Duration::days(90),
        operational_lifetime: time::Duration::days(7),
        sdc_models: vec![],
        gateway_names: vec![],
    };
    let manufacturer = ManufacturerId::parse("acme").unwrap();
    let serial = DeviceSerial::parse("PUMP-0001").unwrap();
    let now = datetime!(2026-11-24 00:00 UTC);
    let ca_end = medid::issuance::IssuerInfo {
        id: medid::issuance::IssuerId::first(medid::issuance::IssuerName::Operational),
        not_after: datetime!(2031-11-24 00:00 UTC),
    };

    let mut g = c.benchmark_group("issuance");
    g.throughput(Throughput::Elements(1));
    g.bench_function("csr_parse_and_verify_p256", |b| {
        b.iter(|| medid::policy::csr::verify(black_box(&csr)).unwrap())
    });
    g.bench_function("parse_verify_and_sign_operational_p256", |b| {
        b.iter(|| {
            let verified = medid::policy::csr::verify(black_box(&csr)).unwrap();
            let template = profiles.device_operational(
                medid::issuance::random_serial(),
                now,
                ca_end,
                &BirthSubject {
                    manufacturer: &manufacturer,
                    manufacturer_name: "Acme Medical",
                    serial: &serial,
                    udi_di: None,
                },
                Default::default(),
                verified.public_key,
            );
            let params = template.to_params().unwrap();
            params.signed_by(&template.public_key, &issuer).unwrap()
        })
    });
    g.finish();
}

fn leaves(n: usize) -> Vec<medid::audit::merkle::Hash> {
    (0..n)
        .map(|i| medid::audit::merkle::leaf_hash(&(i as u64).to_be_bytes()))
        .collect()
}

fn merkle(c: &mut Criterion) {
    use medid::audit::merkle;
    let n = 10_000;
    let all = leaves(n);
    let mut g = c.benchmark_group("merkle");
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("root_10k_leaves", |b| {
        b.iter(|| merkle::root(black_box(&all)))
    });
    g.throughput(Throughput::Elements(1));
    g.bench_function("inclusion_proof_in_10k", |b| {
        b.iter(|| merkle::inclusion_proof(black_box(4_321), &all).unwrap())
    });
    g.bench_function("consistency_proof_7k_to_10k", |b| {
        b.iter(|| merkle::consistency_proof(black_box(7_000), &all).unwrap())
    });
    // What a filtered export does: the level tree once, then O(log n) per proof.
    let tree = merkle::Tree::new(all.clone());
    g.bench_function("inclusion_proof_in_10k_level_tree", |b| {
        b.iter(|| tree.inclusion_proof(black_box(4_321)).unwrap())
    });
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("level_tree_10k_leaves", |b| {
        b.iter(|| merkle::Tree::new(black_box(all.clone())))
    });
    g.finish();
}

fn access_event() -> AuditEvent {
    AuditEvent::new(
        datetime!(2026-11-24 08:30 UTC),
        Actor {
            uri: "spiffe://hospital.example/gateway/icu-gw".into(),
            role: "gateway".into(),
        },
        medid::audit::Action::DataAccess,
        medid::audit::Target::uri("spiffe://hospital.example/device/acme/PUMP-0001"),
    )
    .with("access_action", "R")
    .with("data_category", "vital-signs")
    .with("purpose_of_use", "TREAT")
    .with("access_outcome", 0)
    .with("occurred_at", "2026-11-24T08:29:59Z")
    .with("manufacturer", "acme")
    .with(
        "device_uri",
        "spiffe://hospital.example/device/acme/PUMP-0001",
    )
    .with("device_decommissioned", false)
    .with("user_id", "nurse-17")
    .with("user_role", "RN")
    .with("patient_ref", "Patient/123")
}

fn audit(c: &mut Criterion) {
    let event = access_event();
    let json = medid::audit::ledger::event_json(42, &event).unwrap();
    let mut g = c.benchmark_group("audit");
    g.throughput(Throughput::Elements(1));
    g.bench_function("jcs_canonical_access_event", |b| {
        b.iter(|| medid::audit::jcs::canonical(black_box(&json)).unwrap())
    });
    g.bench_function("leaf_hash_access_event", |b| {
        b.iter(|| medid::audit::ledger::leaf(black_box(42), &event).unwrap())
    });
    // The group-commit writer's share of a leaf hash: the caller sealed the event (hashed
    // the bytes before its sequence number); the writer adds the number and the rest.
    let sealed = medid::audit::ledger::seal(&event).unwrap();
    g.bench_function("leaf_hash_finish_sealed_access_event", |b| {
        b.iter(|| sealed.leaf(black_box(42)))
    });
    // An export line from a stored row: the detail column copied as it stands (it is already
    // canonical), against parsed and written again.
    use medid::audit::ledger::{export_line, Detail, EventFields};
    let stored = serde_json::to_string(&event.detail).unwrap();
    let mut fields = EventFields::of(&event);
    fields.detail = Detail::Stored(&stored);
    let leaf = "0".repeat(64);
    g.bench_function("export_line_stored_detail_copied", |b| {
        b.iter(|| export_line(black_box(42), &fields, &leaf, None).unwrap())
    });
    let spaced = stored.replace(',', ", ");
    let mut reparsed = fields;
    reparsed.detail = Detail::Stored(&spaced);
    g.bench_function("export_line_stored_detail_parsed", |b| {
        b.iter(|| export_line(black_box(42), &reparsed, &leaf, None).unwrap())
    });
    let (bundle, public) = bundle(10_000);
    g.throughput(Throughput::Elements(10_000));
    g.bench_function("verify_bundle_10k_events", |b| {
        b.iter(|| {
            let report = medid::audit::verify::verify_bundle(&bundle, &public, None).unwrap();
            assert_eq!(report.events, 10_000);
        })
    });
    g.finish();
}

/// A complete bundle of `n` access events as medid exports it (header, event lines with the
/// canonical bytes, signed checkpoint, end), and the checkpoint key's public half.
fn bundle(n: i64) -> (String, [u8; 32]) {
    use medid::audit::checkpoint::{key_id, signed_note, Checkpoint};
    use medid::audit::ledger::{export_line, leaf, EventFields};
    use ring::signature::{Ed25519KeyPair, KeyPair};
    let key = Ed25519KeyPair::from_seed_unchecked(&[7u8; 32]).unwrap();
    let public: [u8; 32] = key.public_key().as_ref().try_into().unwrap();
    let event = access_event();
    let fields = EventFields::of(&event);
    let mut leaves = Vec::new();
    let mut text = String::from(r#"{"type":"header","origin":"bench/audit","filtered":false}"#);
    for seq in 1..=n {
        let hash = leaf(seq, &event).unwrap();
        leaves.push(hash);
        text.push('\n');
        text.push_str(&export_line(seq, &fields, &medid::domain::hex(&hash), None).unwrap());
    }
    let body = Checkpoint {
        origin: "bench/audit".into(),
        size: n as u64,
        root: medid::audit::merkle::root(&leaves),
    }
    .body();
    let signature = key.sign(body.as_bytes());
    let note = signed_note(
        &body,
        "bench/audit",
        key_id("bench/audit", &public),
        signature.as_ref(),
    );
    text.push('\n');
    text.push_str(&serde_json::json!({"type": "checkpoint", "note": note}).to_string());
    text.push_str(&format!("\n{{\"type\":\"end\",\"events\":{n}}}"));
    (text, public)
}

criterion_group!(benches, issuance, merkle, audit);
criterion_main!(benches);
