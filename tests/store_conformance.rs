//! The storage conformance suite (STYLE.md #15, after SPIRE's `sqltest`): every case runs on
//! SQLite, and on PostgreSQL when `MEDID_TEST_POSTGRES_URL` is set (`.ci/run` sets it). A case
//! told to use PostgreSQL fails, never skips, when the server is unreachable. Each PostgreSQL
//! case gets a fresh schema.
//!
//! Here, at the store's own interface: migrations, the audit sequence and its append-only rows,
//! CRL numbering, checkpoints, ledger filters, manufacturers, devices (one, by URI, page by
//! page), the PKI binding, the certificate census, revocation (rows marked once, listed on the
//! next CRL), tokens, and the peer lookup of authentication.
//! Recording an issued certificate (`record_new`: the claim rules read under the write lock,
//! token spending, what it completes, superseding), adopting one signed before the store
//! existed, and re-applying revocations from a kept CRL. The certificates here are placeholders
//! (the store records DER, it does not parse it); the integration tests, run on both backends
//! by `.ci/run`, record real ones.

mod common;

use medid::audit::{Action, Actor, AuditEvent};
use medid::domain::ManufacturerId;
use medid::issuance::{IssuerId, IssuerName};
use medid::store::ledger::AuditQuery;
use medid::store::lifecycle::{CrlRecord, CrlSaved, SignedCrl};
use medid::store::registry::ManufacturerRecord;
use medid::store::{
    AuditLog, CertificateLedger, CertificateRecords, MerkleLog, PkiBinding, RecoveryStore,
    Registry, RevocationStore, TokenStore,
};
use medid::store::{Backend, Store};
use medid::Error;

/// A serial from its hex.
fn sn(hex: &str) -> medid::domain::CertSerial {
    medid::domain::CertSerial::parse_hex(hex).unwrap()
}

/// The same time for every event, so cases do not depend on the clock.
fn at() -> time::OffsetDateTime {
    time::macros::datetime!(2026-01-01 00:00 UTC)
}

fn event(action: Action, target: &str) -> AuditEvent {
    AuditEvent::new(
        at(),
        Actor {
            uri: "spiffe://t/gateway/gw".into(),
            role: "gateway".into(),
        },
        action,
        medid::audit::Target::uri(target),
    )
}

struct Db {
    store: Store,
    url: String,
    _dir: tempfile::TempDir,
}

impl Db {
    /// A second, independent connection pool (another process's view).
    async fn raw(&self) -> sqlx::AnyPool {
        common::install_drivers();
        sqlx::AnyPool::connect(&self.url).await.unwrap()
    }
}

async fn sqlite() -> Db {
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("medid.db").display()
    );
    let store = Store::open_url(&url).await.unwrap();
    assert_eq!(store.backend(), Backend::Sqlite);
    Db {
        store,
        url,
        _dir: dir,
    }
}

async fn postgres() -> Option<Db> {
    if std::env::var_os("MEDID_TEST_POSTGRES_URL").is_none() {
        eprintln!("MEDID_TEST_POSTGRES_URL not set: PostgreSQL cases skipped (.ci/run sets it)");
        return None;
    }
    let url = common::new_postgres_schema().await;
    let store = Store::open_url(&url)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL unreachable: {e}"));
    assert_eq!(store.backend(), Backend::Postgres);
    Some(Db {
        store,
        url,
        _dir: tempfile::tempdir().unwrap(),
    })
}

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::sqlite().await).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    if let Some(db) = super::postgres().await {
                        super::$case(db).await;
                    }
                }
            )*
        }
    };
}

conformance!(
    migrations_apply_once_and_reopening_changes_nothing,
    audit_sequence_numbers_are_gap_free_under_concurrent_writers,
    a_batch_of_events_gets_contiguous_sequence_numbers,
    audit_rows_are_append_only,
    crl_numbers_rise_by_one_under_concurrent_issuers,
    a_checkpoint_is_stored_once_per_tree_size,
    ledger_filters_read_json_fields,
    manufacturers_are_unique_and_their_creation_is_audited,
    the_certificate_census_counts_by_profile_state_and_end,
    a_revocation_marks_its_rows_once_and_the_next_crl_lists_them,
    tokens_are_stored_by_hash_and_read_back,
    a_peer_certificate_is_found_by_fingerprint_with_its_subject,
    devices_are_read_one_by_one_and_page_by_page,
    the_pki_binding_is_recorded_once_with_its_event,
    a_recorded_certificate_completes_its_device_and_a_refused_claim_stores_nothing,
    a_token_is_spent_once_by_the_enrollment_that_records_it,
    a_renewal_supersedes_the_older_certificates_of_its_profile,
    a_principal_is_created_with_its_first_certificate,
    an_adopted_certificate_is_recorded_once,
    revocations_from_a_kept_crl_are_applied_once,
    the_leaf_hashes_fold_in_order_from_any_point,
    the_stored_tree_answers_every_proof_and_is_rebuilt_when_missing,
);

async fn migrations_apply_once_and_reopening_changes_nothing(db: Db) {
    db.store
        .record_event(&event(Action::TrustBundle, "t"))
        .await
        .unwrap();
    let raw = db.raw().await;
    let applied = |pool: sqlx::AnyPool| async move {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM schema_migrations")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    let before = applied(raw.clone()).await;
    assert!(before >= 1);
    // A second store on the same database (a restart, or another replica) applies nothing
    // again and sees the same data.
    let again = Store::open_url(&db.url).await.unwrap();
    assert_eq!(applied(raw).await, before);
    assert_eq!(again.tree_size().await.unwrap(), 1);
    again
        .record_event(&event(Action::TrustBundle, "u"))
        .await
        .unwrap();
    assert_eq!(db.store.tree_size().await.unwrap(), 2);
}

async fn audit_sequence_numbers_are_gap_free_under_concurrent_writers(db: Db) {
    let writers = (0..8).map(|w| {
        let store = db.store.clone();
        tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..25 {
                let e = event(Action::CertificateStatus, &format!("w{w}/{i}"));
                seqs.push(store.record_event(&e).await.unwrap());
            }
            seqs
        })
    });
    let mut all: Vec<i64> = Vec::new();
    for w in futures_util::future::join_all(writers).await {
        let seqs = w.unwrap();
        assert!(
            seqs.windows(2).all(|p| p[0] < p[1]),
            "each writer's events in order"
        );
        all.extend(seqs);
    }
    all.sort();
    assert_eq!(all, (1..=200).collect::<Vec<i64>>());
    let stored: Vec<i64> = db
        .store
        .audit_events(0, 1000)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(stored, (1..=200).collect::<Vec<i64>>());
    assert_eq!(db.store.leaf_hashes(200).await.unwrap().len(), 200);
}

async fn a_batch_of_events_gets_contiguous_sequence_numbers(db: Db) {
    db.store
        .record_event(&event(Action::TrustBundle, "t"))
        .await
        .unwrap();
    let batches = (0..4).map(|b| {
        let store = db.store.clone();
        tokio::spawn(async move {
            let events = (0..300) // over one multi-row INSERT
                .map(|i| event(Action::DataAccess, &format!("b{b}/{i}")))
                .collect();
            store.append_events(events).await.unwrap()
        })
    });
    for batch in futures_util::future::join_all(batches).await {
        let seqs = batch.unwrap();
        assert_eq!(seqs.len(), 300);
        assert!(seqs.windows(2).all(|p| p[1] == p[0] + 1), "contiguous");
        // The stored events are the batch's, in its order.
        let stored = db.store.audit_events(seqs[0] - 1, 300).await.unwrap();
        let b = stored[0].event.target.split('/').next().unwrap().to_owned();
        for (i, e) in stored.iter().enumerate() {
            assert_eq!(e.event.target, format!("{b}/{i}"));
        }
    }
    assert_eq!(db.store.tree_size().await.unwrap(), 1201);
    // An empty batch stores nothing.
    assert!(db.store.append_events(Vec::new()).await.unwrap().is_empty());
    assert_eq!(db.store.tree_size().await.unwrap(), 1201);
}

async fn audit_rows_are_append_only(db: Db) {
    db.store
        .record_event(&event(Action::TrustBundle, "t"))
        .await
        .unwrap();
    // The store offers no way to change or remove an event; its schema refuses one too.
    let raw = db.raw().await;
    let update = sqlx::query("UPDATE audit_events SET outcome = 'failed'")
        .execute(&raw)
        .await;
    assert!(update.unwrap_err().to_string().contains("append-only"));
    let delete = sqlx::query("DELETE FROM audit_events").execute(&raw).await;
    assert!(delete.unwrap_err().to_string().contains("append-only"));
    assert_eq!(db.store.leaf_hashes(1).await.unwrap().len(), 1);
    assert!(
        db.store.leaf_hashes(2).await.is_err(),
        "asking past the end is an error"
    );
}

/// Plans the next CRL of `issuer` at `now` from what the store holds, with a placeholder
/// signature naming its number.
async fn plan_crl(store: &Store, issuer: IssuerId, now: time::OffsetDateTime) -> SignedCrl {
    let basis = store.crl_basis(issuer).await.unwrap();
    let plan = medid::policy::crl::next(&basis, now, time::Duration::hours(24));
    let entries = store.crl_entries(issuer, plan.listed_from).await.unwrap();
    SignedCrl {
        basis,
        plan,
        entries,
        der: format!("crl {}", plan.number).into_bytes(),
    }
}

/// Plans, "signs" and records the next CRL, as the service does.
async fn publish_crl(store: &Store, issuer: IssuerId, now: time::OffsetDateTime) -> CrlRecord {
    let crl = plan_crl(store, issuer, now).await;
    match store
        .record_crl(issuer, &crl, &event(Action::CrlSign, "spiffe://t/ca"))
        .await
        .unwrap()
    {
        CrlSaved::Recorded(record) => record,
        CrlSaved::Stale => panic!("nothing else wrote: the CRL cannot be stale"),
    }
}

async fn crl_numbers_rise_by_one_under_concurrent_issuers(db: Db) {
    let op = IssuerId::first(IssuerName::Operational);
    // Ten replicas plan the same next CRL at once: exactly one records it.
    let first = plan_crl(&db.store, op, at()).await;
    let racing = (0..10).map(|_| {
        let (store, crl) = (db.store.clone(), first.clone());
        tokio::spawn(async move {
            store
                .record_crl(op, &crl, &event(Action::CrlSign, "spiffe://t/ca"))
                .await
                .unwrap()
        })
    });
    let saved: Vec<CrlSaved> = futures_util::future::join_all(racing)
        .await
        .into_iter()
        .map(|c| c.unwrap())
        .collect();
    let recorded = saved
        .iter()
        .filter(|s| matches!(s, CrlSaved::Recorded(_)))
        .count();
    assert_eq!(recorded, 1, "{saved:?}");
    let size = db.store.tree_size().await.unwrap();
    assert_eq!(size, 1, "one event, for the one CRL recorded");
    // Then nine more, each planned after the last, the clock going back and forth.
    let mut crls = vec![db.store.latest_crl(op).await.unwrap().unwrap()];
    for i in 1..10 {
        let skew = if i % 2 == 0 { 60 } else { -60 };
        crls.push(publish_crl(&db.store, op, at() + time::Duration::seconds(skew)).await);
    }
    let numbers: Vec<i64> = crls.iter().map(|c| c.number).collect();
    assert_eq!(numbers, (1..=10).collect::<Vec<i64>>());
    for c in &crls {
        assert_eq!(c.der, format!("crl {}", c.number).into_bytes());
        assert_eq!(c.next_update - c.this_update, time::Duration::hours(24));
    }
    assert!(
        crls.windows(2)
            .all(|w| w[0].this_update <= w[1].this_update),
        "thisUpdate never goes back as numbers rise"
    );
    // A revocation committed after a CRL was planned does not hold it up: that CRL is
    // recorded as planned, and the next one lists the revocation.
    let planned = plan_crl(&db.store, op, at()).await;
    let raw = db.raw().await;
    insert_certificate(
        &raw,
        "0c01",
        "device-operational",
        "revoked",
        "spiffe://t/device/acme/x",
        at().unix_timestamp() + 86_400,
    )
    .await;
    let saved = db
        .store
        .record_crl(op, &planned, &event(Action::CrlSign, "spiffe://t/ca"))
        .await
        .unwrap();
    assert!(
        matches!(&saved, CrlSaved::Recorded(crl) if crl.number == 11),
        "{saved:?}"
    );
    assert!(planned.entries.is_empty());
    let next = plan_crl(&db.store, op, at()).await;
    assert_eq!(
        (next.plan.number, next.entries.len()),
        (12, 1),
        "the revocation is listed next"
    );
    assert_eq!(publish_crl(&db.store, op, at()).await.number, 12);
    let latest = db
        .store
        .latest_crl(IssuerId::first(IssuerName::Operational))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(latest.number, 12);
    let head = db
        .store
        .crl_head(IssuerId::first(IssuerName::Operational))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (head.number, head.this_update, head.next_update),
        (latest.number, latest.this_update, latest.next_update)
    );
    assert!(db
        .store
        .crl_head(IssuerId::first(IssuerName::DeviceIdentity))
        .await
        .unwrap()
        .is_none());
    assert!(db
        .store
        .latest_crl(IssuerId::first(IssuerName::DeviceIdentity))
        .await
        .unwrap()
        .is_none());
}

async fn a_checkpoint_is_stored_once_per_tree_size(db: Db) {
    let root = [7u8; 32];
    assert!(db
        .store
        .save_checkpoint(5, &root, "note-a", at())
        .await
        .unwrap());
    assert!(!db
        .store
        .save_checkpoint(5, &root, "note-b", at())
        .await
        .unwrap());
    assert!(db
        .store
        .save_checkpoint(9, &root, "note-c", at())
        .await
        .unwrap());
    let (size, note, _) = db.store.latest_checkpoint().await.unwrap().unwrap();
    assert_eq!((size, note.as_str()), (9, "note-c"));
}

async fn ledger_filters_read_json_fields(db: Db) {
    let events = vec![
        event(Action::DataAccess, "spiffe://t/device/acme/A")
            .with("device_uri", "spiffe://t/device/acme/A")
            .with("manufacturer", "acme")
            .with("patient_ref", "Patient/1"),
        event(Action::DataAccess, "spiffe://t/device/beta/B")
            .with("device_uri", "spiffe://t/device/beta/B")
            .with("manufacturer", "beta")
            .with("patient_ref", "Patient/2"),
        event(Action::CertificateRenew, "spiffe://t/device/acme/A"),
        // The manufacturer itself, its station, and a manufacturer whose id extends "acme".
        event(Action::ManufacturerCreate, "spiffe://t/manufacturer/acme"),
        event(
            Action::PrincipalIssue,
            "spiffe://t/manufacturer/acme/station/line-1",
        ),
        event(Action::ManufacturerCreate, "spiffe://t/manufacturer/acme-2"),
    ];
    db.store.append_events(events).await.unwrap();
    let seqs = |q: AuditQuery| {
        let store = db.store.clone();
        async move {
            store
                .ledger_entries(&q, 0, 100, 100)
                .await
                .unwrap()
                .iter()
                .map(|e| e.seq)
                .collect::<Vec<i64>>()
        }
    };
    let patient = AuditQuery {
        patient_ref: Some("Patient/2".into()),
        ..AuditQuery::default()
    };
    assert_eq!(seqs(patient).await, vec![2]);
    let device = AuditQuery {
        device_uri: Some("spiffe://t/device/acme/A".into()),
        ..AuditQuery::default()
    };
    assert_eq!(seqs(device).await, vec![1, 3]);
    let manufacturer = AuditQuery {
        manufacturer: Some("acme".into()),
        ..AuditQuery::default()
    };
    assert_eq!(seqs(manufacturer).await, vec![1, 3, 4, 5]);
    let action = AuditQuery {
        action: Some(medid::audit::Action::DataAccess),
        from: Some(at()),
        to: Some(at()),
        ..AuditQuery::default()
    };
    assert_eq!(seqs(action).await, vec![1, 2]);
    assert_eq!(seqs(AuditQuery::default()).await, vec![1, 2, 3, 4, 5, 6]);
}

async fn manufacturers_are_unique_and_their_creation_is_audited(db: Db) {
    let m = ManufacturerRecord {
        id: ManufacturerId::parse("acme").unwrap(),
        display_name: "Acme Medical".into(),
        allowed_models: vec!["X".into(), "Y".into()],
        created_at: at(),
    };
    db.store
        .create_manufacturer(&m, &event(Action::ManufacturerCreate, "manufacturer/acme"))
        .await
        .unwrap();
    let again = db
        .store
        .create_manufacturer(&m, &event(Action::ManufacturerCreate, "manufacturer/acme"))
        .await;
    assert!(matches!(again, Err(Error::AlreadyExists(_))), "{again:?}");
    assert_eq!(db.store.manufacturer(&m.id).await.unwrap(), m);
    assert_eq!(db.store.manufacturers().await.unwrap(), vec![m]);
    // Exactly one event: the failed second creation rolled back with its event.
    assert_eq!(db.store.tree_size().await.unwrap(), 1);
}

async fn the_certificate_census_counts_by_profile_state_and_end(db: Db) {
    use medid::domain::{CertState, Profile};
    let raw = db.raw().await;
    let now = at().unix_timestamp();
    let day = 86_400;
    // (serial, profile, status, ends in days): ended, within 7, within 30, beyond, revoked.
    let rows = [
        ("01", "device-operational", "active", -1),
        ("02", "device-operational", "active", 3),
        ("03", "device-operational", "active", 20),
        ("04", "device-operational", "active", 40),
        ("05", "device-operational", "revoked", 3),
        ("06", "server", "active", 7),
    ];
    for (serial, profile, status, days) in rows {
        insert_certificate(
            &raw,
            serial,
            profile,
            status,
            "spiffe://t/device/acme/x",
            now + days * day,
        )
        .await;
    }
    let mut census = db
        .store
        .certificate_census(at(), [time::Duration::days(7), time::Duration::days(30)])
        .await
        .unwrap();
    census.sort_by_key(|r| (r.profile.as_str(), r.state.as_str()));
    let got: Vec<_> = census
        .iter()
        .map(|r| (r.profile, r.state, r.count, r.ending))
        .collect();
    assert_eq!(
        got,
        vec![
            (Profile::DeviceOperational, CertState::Active, 4, [1, 2]),
            (Profile::DeviceOperational, CertState::Revoked, 1, [0, 0]),
            // Ending exactly 7 days on counts as within 7 days.
            (Profile::Server, CertState::Active, 1, [1, 1]),
        ]
    );
}

/// A certificate row as the store writes one (DER a placeholder), with fingerprint `fp-SERIAL`
/// and SPKI `spki-SERIAL`, issued a day before `at()`.
async fn insert_certificate(
    raw: &sqlx::AnyPool,
    serial: &str,
    profile: &str,
    status: &str,
    subject: &str,
    not_after: i64,
) {
    let now = at().unix_timestamp();
    let revoked_at = (status == "revoked").then_some(now);
    let role = if profile == "principal" {
        "gateway"
    } else {
        "device"
    };
    sqlx::query(
        "INSERT INTO certificates (issuer, serial, profile, role, subject_uri, spki_sha256,
             not_before, not_after, status, reserved_at, der, fingerprint, revoked_at)
         VALUES ('operational', $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(serial)
    .bind(profile)
    .bind(role)
    .bind(subject)
    .bind(format!("spki-{serial}"))
    .bind(now - 86_400)
    .bind(not_after)
    .bind(status)
    .bind(now - 86_400)
    .bind(vec![0u8])
    .bind(format!("fp-{serial}"))
    .bind(revoked_at)
    .execute(raw)
    .await
    .unwrap();
}

async fn a_revocation_marks_its_rows_once_and_the_next_crl_lists_them(db: Db) {
    use medid::domain::{CertState, RevocationReason};
    use medid::store::lifecycle::SubjectChange;
    let raw = db.raw().await;
    let later = at().unix_timestamp() + 30 * 86_400;
    let subject = "spiffe://t/device/acme/SN-1";
    insert_certificate(&raw, "0a01", "device-operational", "active", subject, later).await;
    insert_certificate(&raw, "0a02", "device-operational", "active", subject, later).await;
    let op = IssuerId::first(IssuerName::Operational);
    let revoke = |targets: Vec<(IssuerId, medid::domain::CertSerial)>,
                  subject: Option<&'static str>| {
        let store = db.store.clone();
        async move {
            store
                .revoke(
                    &targets,
                    subject,
                    Some(RevocationReason::KeyCompromise),
                    SubjectChange::None,
                    &event(Action::CertificateRevoke, "urn:medid:certificate:0a01"),
                )
                .await
                .unwrap()
        }
    };
    let size = db.store.tree_size().await.unwrap();
    assert_eq!(
        revoke(vec![(op, sn("0a01"))], None).await,
        vec![(op, sn("0a01"))]
    );
    assert_eq!(db.store.tree_size().await.unwrap(), size + 1, "one event");
    // Already revoked: nothing more is revoked.
    assert!(revoke(vec![(op, sn("0a01"))], None).await.is_empty());
    // By subject: every certificate of it not yet revoked, read inside the transaction.
    assert_eq!(
        revoke(Vec::new(), Some(subject)).await,
        vec![(op, sn("0a02"))]
    );
    for serial in ["0a01", "0a02"] {
        let row = db
            .store
            .certificate(op, &sn(serial))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.status, CertState::Revoked, "{serial}");
    }
    let planned = plan_crl(&db.store, op, at()).await;
    let listed: Vec<(Vec<u8>, Option<RevocationReason>)> = planned
        .entries
        .iter()
        .map(|e| (e.serial.clone(), e.reason))
        .collect();
    assert_eq!(
        listed,
        vec![
            (vec![0x0a, 0x01], Some(RevocationReason::KeyCompromise)),
            (vec![0x0a, 0x02], Some(RevocationReason::KeyCompromise)),
        ]
    );
    assert_eq!(publish_crl(&db.store, op, at()).await.number, 1);
}

async fn tokens_are_stored_by_hash_and_read_back(db: Db) {
    use medid::store::lifecycle::TokenRecord;
    let manufacturer = ManufacturerRecord {
        id: ManufacturerId::parse("acme").unwrap(),
        display_name: "Acme".into(),
        allowed_models: vec![],
        created_at: at(),
    };
    db.store
        .create_manufacturer(&manufacturer, &event(Action::ManufacturerCreate, "m"))
        .await
        .unwrap();
    let token = TokenRecord {
        token_sha256: "ab".repeat(32),
        manufacturer_id: "acme".into(),
        serial: "SN-9".into(),
        model: Some("X".into()),
        expires_at: at() + time::Duration::hours(1),
        used_at: None,
    };
    let size = db.store.tree_size().await.unwrap();
    db.store
        .create_token(&token, &event(Action::TokenCreate, "t"))
        .await
        .unwrap();
    assert_eq!(
        db.store.tree_size().await.unwrap(),
        size + 1,
        "with its event"
    );
    assert_eq!(
        db.store.token(&token.token_sha256).await.unwrap(),
        Some(token)
    );
    assert_eq!(db.store.token(&"cd".repeat(32)).await.unwrap(), None);
}

async fn a_peer_certificate_is_found_by_fingerprint_with_its_subject(db: Db) {
    use medid::domain::{CertState, Role, SubjectState};
    let raw = db.raw().await;
    let uri = "spiffe://t/gateway/gw-1";
    sqlx::query(
        "INSERT INTO principals (uri, role, principal_id, manufacturer_id, state, created_at)
         VALUES ($1, 'gateway', 'gw-1', NULL, 'active', $2)",
    )
    .bind(uri)
    .bind(at().unix_timestamp())
    .execute(&raw)
    .await
    .unwrap();
    let later = at().unix_timestamp() + 86_400;
    insert_certificate(&raw, "0b01", "principal", "active", uri, later).await;
    let peer = db
        .store
        .peer_by_fingerprint("fp-0b01")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            peer.role,
            peer.status,
            peer.subject_state,
            peer.principal_id.as_deref()
        ),
        (
            Role::Gateway,
            CertState::Active,
            Some(SubjectState::Active),
            Some("gw-1")
        )
    );
    assert_eq!(peer.subject_uri, uri);
    assert!(db
        .store
        .peer_by_fingerprint("fp-none")
        .await
        .unwrap()
        .is_none());
}

async fn devices_are_read_one_by_one_and_page_by_page(db: Db) {
    use medid::store::registry::{DeviceQuery, DeviceState};
    for id in ["acme", "beta"] {
        let m = ManufacturerRecord {
            id: ManufacturerId::parse(id).unwrap(),
            display_name: id.into(),
            allowed_models: vec![],
            created_at: at(),
        };
        db.store
            .create_manufacturer(&m, &event(Action::ManufacturerCreate, id))
            .await
            .unwrap();
    }
    let raw = db.raw().await;
    for (n, (m, serial, state)) in [
        ("acme", "SN-1", "active"),
        ("acme", "SN-2", "decommissioned"),
        ("acme", "SN-3", "active"),
        ("beta", "SN-1", "active"),
    ]
    .into_iter()
    .enumerate()
    {
        sqlx::query(
            "INSERT INTO devices (manufacturer_id, serial, model, udi_di, uri, state, enrolled_at,
                 birth_serial) VALUES ($1, $2, 'X', NULL, $3, $4, $5, $6)",
        )
        .bind(m)
        .bind(serial)
        .bind(format!("spiffe://t/device/{m}/{serial}"))
        .bind(state)
        .bind(at().unix_timestamp())
        .bind(format!("0b{n:02x}"))
        .execute(&raw)
        .await
        .unwrap();
    }
    let acme = ManufacturerId::parse("acme").unwrap();
    let one = db.store.device(&acme, "SN-2").await.unwrap();
    assert_eq!(
        (one.state, one.udi_di.as_deref()),
        (DeviceState::Decommissioned, None)
    );
    assert_eq!(
        db.store
            .device_by_uri("spiffe://t/device/beta/SN-1")
            .await
            .unwrap()
            .manufacturer_id,
        "beta"
    );
    assert!(matches!(
        db.store.device(&acme, "SN-9").await,
        Err(Error::NotFound(_))
    ));
    // Page by page, two at a time, through the keyset cursor: every device once, in order.
    let mut seen = Vec::new();
    let mut token = None;
    loop {
        let (page, next) = db
            .store
            .devices(&DeviceQuery {
                page_size: 2,
                page_token: token.clone(),
                ..DeviceQuery::default()
            })
            .await
            .unwrap();
        assert!(page.len() <= 2);
        seen.extend(page.into_iter().map(|d| d.uri));
        match next {
            Some(t) => token = Some(t),
            None => break,
        }
    }
    assert_eq!(
        seen,
        [
            "spiffe://t/device/acme/SN-1",
            "spiffe://t/device/acme/SN-2",
            "spiffe://t/device/acme/SN-3",
            "spiffe://t/device/beta/SN-1"
        ]
    );
    let (active_acme, _) = db
        .store
        .devices(&DeviceQuery {
            manufacturer: Some(acme),
            state: Some(DeviceState::Active),
            page_size: 10,
            ..DeviceQuery::default()
        })
        .await
        .unwrap();
    let serials: Vec<_> = active_acme.iter().map(|d| d.serial.as_str()).collect();
    assert_eq!(serials, ["SN-1", "SN-3"]);
}

async fn the_pki_binding_is_recorded_once_with_its_event(db: Db) {
    use medid::domain::{PkiFingerprint, PkiPart};
    let parts = [
        PkiFingerprint {
            part: PkiPart::Root,
            sha256: "aa".repeat(32),
        },
        PkiFingerprint {
            part: PkiPart::OperationalCa,
            sha256: "bb".repeat(32),
        },
    ];
    assert!(db.store.pki_binding().await.unwrap().is_empty());
    let size = db.store.tree_size().await.unwrap();
    let bind = event(Action::PkiBind, "urn:medid:pki");
    assert!(db.store.bind_pki(&parts, &bind).await.unwrap());
    assert_eq!(db.store.tree_size().await.unwrap(), size + 1);
    // Again (another replica at the same start): nothing written, no second event.
    assert!(!db.store.bind_pki(&parts, &bind).await.unwrap());
    assert_eq!(db.store.tree_size().await.unwrap(), size + 1);
    let mut bound = db.store.pki_binding().await.unwrap();
    bound.sort_by(|a, b| a.sha256.cmp(&b.sha256));
    assert_eq!(bound, parts);
}

mod issued {
    //! Placeholder certificates for the recording cases.
    use medid::domain::{CertSerial, Profile, Role};
    use medid::issuance::{
        CertificateTemplate, Eku, IssuerId, IssuerName, SignedCertificate, SubjectName,
        SubjectPublicKey,
    };
    use medid::store::certificates::{Claim, NewCertificate};

    pub fn issuer() -> IssuerId {
        IssuerId::first(IssuerName::Operational)
    }

    /// Certificate `n` for `subject` with key `key`, valid for `days` from `super::at()`.
    pub fn certificate(
        n: u8,
        subject: &str,
        key: &str,
        profile: Profile,
        role: Role,
        claim: Claim,
        days: i64,
    ) -> (NewCertificate, SignedCertificate) {
        let serial = CertSerial::from_bytes(vec![0x40, n]);
        let template = CertificateTemplate {
            issuer: issuer(),
            serial: serial.clone(),
            subject: SubjectName::default(),
            san_uris: vec![subject.to_owned()],
            san_dns: vec![],
            san_ips: vec![],
            not_before: super::at(),
            not_after: super::at() + time::Duration::days(days),
            ekus: vec![Eku::ClientAuth],
            crl_url: None,
            ocsp_url: None,
            ca_issuers_url: None,
            ocsp_nocheck: false,
            public_key: SubjectPublicKey {
                algorithm: &rcgen::PKCS_ECDSA_P256_SHA256,
                key_bits: key.as_bytes().to_vec(),
            },
        };
        let new = NewCertificate {
            template,
            profile,
            role,
            subject_uri: subject.to_owned(),
            spki_sha256: format!("spki-{key}"),
            claim,
        };
        let signed = SignedCertificate {
            issuer: issuer(),
            serial,
            der: rustls_pki_types::CertificateDer::from(vec![0x30, n, 0x00]),
        };
        (new, signed)
    }
}

async fn acme(db: &Db) -> ManufacturerId {
    let id = ManufacturerId::parse("acme").unwrap();
    db.store
        .create_manufacturer(
            &ManufacturerRecord {
                id: id.clone(),
                display_name: "Acme".into(),
                allowed_models: vec!["pump".into()],
                created_at: at(),
            },
            &event(Action::ManufacturerCreate, "spiffe://t/manufacturer/acme"),
        )
        .await
        .unwrap();
    id
}

fn new_device(
    m: &ManufacturerId,
    serial: &str,
    token: Option<&str>,
) -> medid::store::certificates::Claim {
    medid::store::certificates::Claim::NewDevice {
        manufacturer: m.clone(),
        serial: medid::domain::DeviceSerial::parse(serial).unwrap(),
        token_sha256: token.map(str::to_owned),
    }
}

/// Records certificate `n` (key `key`) as the birth certificate of device `serial` of `m`,
/// at `uri`, spending `token` if given.
async fn enroll(
    db: &Db,
    m: &ManufacturerId,
    n: u8,
    uri: &str,
    serial: &str,
    key: &str,
    token: Option<&str>,
) -> Result<medid::store::certificates::Recorded, Error> {
    use medid::domain::{Profile, Role};
    let (new, signed) = issued::certificate(
        n,
        uri,
        key,
        Profile::DeviceBirth,
        Role::Device,
        new_device(m, serial, token),
        3650,
    );
    db.store
        .record_new(
            &new,
            &signed,
            &device_completion(m, serial),
            &event(Action::DeviceEnroll, uri),
        )
        .await
}

fn device_completion(m: &ManufacturerId, serial: &str) -> medid::store::certificates::Completion {
    medid::store::certificates::Completion::Device {
        manufacturer: m.clone(),
        serial: medid::domain::DeviceSerial::parse(serial).unwrap(),
        model: "pump".into(),
        udi_di: Some("00812345000012".into()),
    }
}

async fn a_recorded_certificate_completes_its_device_and_a_refused_claim_stores_nothing(db: Db) {
    use medid::domain::{CertState, Profile, Role};
    let m = acme(&db).await;
    let uri = "spiffe://t/device/acme/p-1";
    let recorded = enroll(&db, &m, 1, uri, "p-1", "k1", None).await.unwrap();
    let device = recorded.device.expect("the device row as written");
    assert_eq!(
        (device.uri.as_str(), device.birth_serial.to_hex().as_str()),
        (uri, "4001")
    );
    assert_eq!(db.store.device(&m, "p-1").await.unwrap(), device);
    assert!(recorded.superseded.is_empty());
    let der = db
        .store
        .certificate(issued::issuer(), &sn("4001"))
        .await
        .unwrap()
        .expect("the certificate row");
    assert_eq!(der.subject_uri, uri);
    let fp = medid::store::certificates::fingerprint(&[0x30, 1, 0x00]);
    let peer = db.store.peer_by_fingerprint(&fp).await.unwrap().unwrap();
    assert_eq!(
        (peer.status, peer.profile, peer.role),
        (CertState::Active, Profile::DeviceBirth, Role::Device)
    );
    assert_eq!(peer.device_serial.as_deref(), Some("p-1"));
    let size = db.store.tree_size().await.unwrap();

    // The same serial again, then the same key for another device: refused, nothing stored,
    // no event (the service audits the refusal, once).
    let refused = enroll(&db, &m, 2, uri, "p-1", "k2", None).await;
    assert!(
        matches!(refused, Err(Error::AlreadyExists(_))),
        "{refused:?}"
    );
    let other = "spiffe://t/device/acme/p-2";
    let refused = enroll(&db, &m, 3, other, "p-2", "k1", None).await;
    assert!(
        matches!(refused, Err(Error::AlreadyExists(_))),
        "{refused:?}"
    );
    assert_eq!(
        db.store.tree_size().await.unwrap(),
        size,
        "no event for a refused claim"
    );
    assert_eq!(db.store.certificates_of(uri).await.unwrap().len(), 1);
    assert!(db.store.certificates_of(other).await.unwrap().is_empty());
    assert!(matches!(
        db.store.device(&m, "p-2").await,
        Err(Error::NotFound(_))
    ));
}

async fn a_token_is_spent_once_by_the_enrollment_that_records_it(db: Db) {
    use medid::store::lifecycle::TokenRecord;
    let m = acme(&db).await;
    db.store
        .create_token(
            &TokenRecord {
                token_sha256: "t-hash".into(),
                manufacturer_id: "acme".into(),
                serial: "p-9".into(),
                model: Some("pump".into()),
                expires_at: at() + time::Duration::hours(1),
                used_at: None,
            },
            &event(Action::TokenCreate, "spiffe://t/device/acme/p-9"),
        )
        .await
        .unwrap();
    let uri = "spiffe://t/device/acme/p-9";
    enroll(&db, &m, 9, uri, "p-9", "k9", Some("t-hash"))
        .await
        .unwrap();
    let token = db.store.token("t-hash").await.unwrap().unwrap();
    assert_eq!(
        token.used_at,
        Some(at()),
        "spent when the enrollment was recorded"
    );
    // A second enrollment with the same token (another serial, another key) is refused.
    let other = "spiffe://t/device/acme/p-10";
    let refused = enroll(&db, &m, 10, other, "p-10", "k10", Some("t-hash")).await;
    assert!(
        matches!(refused, Err(Error::PermissionDenied(_))),
        "{refused:?}"
    );
    assert!(db.store.certificates_of(other).await.unwrap().is_empty());
    // An unknown token is refused the same way.
    let third = "spiffe://t/device/acme/p-11";
    let refused = enroll(&db, &m, 11, third, "p-11", "k11", Some("never-issued")).await;
    assert!(
        matches!(refused, Err(Error::PermissionDenied(_))),
        "{refused:?}"
    );
}

async fn a_renewal_supersedes_the_older_certificates_of_its_profile(db: Db) {
    use medid::domain::{CertState, Profile, RevocationReason, Role};
    use medid::store::certificates::{Claim, Completion};
    let m = acme(&db).await;
    let uri = "spiffe://t/device/acme/p-1";
    enroll(&db, &m, 1, uri, "p-1", "k1", None).await.unwrap();
    let renew = |n: u8, key: &str, caller: &str| {
        issued::certificate(
            n,
            uri,
            key,
            Profile::DeviceOperational,
            Role::Device,
            Claim::Renewal {
                rekey_required: false,
                caller_serial: sn(caller),
            },
            7,
        )
    };
    let supersede = Completion::Renewal {
        supersede: Some(Profile::DeviceOperational),
    };
    let (first, signed_first) = renew(2, "k2", "4001");
    let recorded = db
        .store
        .record_new(
            &first,
            &signed_first,
            &supersede,
            &event(Action::CertificateRenew, uri),
        )
        .await
        .unwrap();
    assert!(
        recorded.superseded.is_empty(),
        "nothing of that profile before"
    );
    let size = db.store.tree_size().await.unwrap();
    let (second, signed_second) = renew(3, "k3", "4002");
    let recorded = db
        .store
        .record_new(
            &second,
            &signed_second,
            &supersede,
            &event(Action::CertificateRenew, uri),
        )
        .await
        .unwrap();
    assert_eq!(recorded.superseded, vec![issued::issuer()]);
    let certs = db.store.certificates_of(uri).await.unwrap();
    let states: Vec<_> = certs
        .iter()
        .map(|c| (c.serial.clone(), c.status, c.reason))
        .collect();
    assert_eq!(
        states,
        vec![
            (sn("4001"), CertState::Active, None),
            (
                sn("4002"),
                CertState::Revoked,
                Some(RevocationReason::Superseded)
            ),
            (sn("4003"), CertState::Active, None),
        ],
        "in issue order; the birth certificate (another profile) stays"
    );
    // One event for the renewal and one for the certificate it superseded.
    assert_eq!(db.store.tree_size().await.unwrap(), size + 2);
    let events = db.store.audit_events(size as i64, 10).await.unwrap();
    let revoke = events
        .iter()
        .find(|e| e.event.action == Action::CertificateRevoke)
        .expect("the superseded certificate's event");
    assert_eq!(revoke.event.detail["serial"], "4002");
    assert_eq!(revoke.event.detail["superseded_by"], "4003");
    // A renewal by a revoked certificate is refused.
    let (stale, signed_stale) = renew(4, "k4", "4002");
    assert!(db
        .store
        .record_new(
            &stale,
            &signed_stale,
            &supersede,
            &event(Action::CertificateRenew, uri)
        )
        .await
        .is_err());
    // Expiring within 30 days: the active operational certificate only, soonest first.
    let soon = db
        .store
        .expiring(at() + time::Duration::days(30), Some(&m), 10)
        .await
        .unwrap();
    let serials: Vec<_> = soon.iter().map(|c| c.serial.to_hex()).collect();
    assert_eq!(serials, ["4003"]);
    let other = ManufacturerId::parse("other").unwrap();
    assert!(db
        .store
        .expiring(at() + time::Duration::days(30), Some(&other), 10)
        .await
        .unwrap()
        .is_empty());
}

async fn a_principal_is_created_with_its_first_certificate(db: Db) {
    use medid::domain::{Profile, Role, SubjectState};
    use medid::store::certificates::{Claim, Completion};
    let uri = "spiffe://t/gateway/gw-1";
    assert_eq!(db.store.principal_state(uri).await.unwrap(), None);
    let claim = || Claim::Principal {
        role: Role::Gateway,
        principal_id: "gw-1".into(),
        manufacturer: None,
    };
    let completion = Completion::Principal {
        role: Role::Gateway,
        principal_id: "gw-1".into(),
        manufacturer: None,
    };
    let (new, signed) =
        issued::certificate(1, uri, "g1", Profile::Principal, Role::Gateway, claim(), 30);
    db.store
        .record_new(
            &new,
            &signed,
            &completion,
            &event(Action::PrincipalIssue, uri),
        )
        .await
        .unwrap();
    assert_eq!(
        db.store.principal_state(uri).await.unwrap(),
        Some(SubjectState::Active)
    );
    // Re-issued with the same role: allowed, still one principal.
    let (again, signed_again) =
        issued::certificate(2, uri, "g2", Profile::Principal, Role::Gateway, claim(), 30);
    db.store
        .record_new(
            &again,
            &signed_again,
            &completion,
            &event(Action::PrincipalIssue, uri),
        )
        .await
        .unwrap();
    // The same URI claimed as another role: refused.
    let (admin, signed_admin) = issued::certificate(
        3,
        uri,
        "g3",
        Profile::Principal,
        Role::Admin,
        Claim::Principal {
            role: Role::Admin,
            principal_id: "gw-1".into(),
            manufacturer: None,
        },
        30,
    );
    assert!(db
        .store
        .record_new(
            &admin,
            &signed_admin,
            &completion,
            &event(Action::PrincipalIssue, uri)
        )
        .await
        .is_err());
    assert_eq!(db.store.certificates_of(uri).await.unwrap().len(), 2);
}

async fn an_adopted_certificate_is_recorded_once(db: Db) {
    use medid::domain::{CertState, Profile, Role};
    use medid::store::certificates::{AdoptedCertificate, Completion};
    let uri = "spiffe://t/service/medid";
    let adopted = AdoptedCertificate {
        issuer: issued::issuer(),
        serial: sn("7a01"),
        profile: Profile::Server,
        role: Role::Service,
        subject_uri: uri.into(),
        spki_sha256: "spki-server".into(),
        not_before: at(),
        not_after: at() + time::Duration::days(90),
        der: vec![0x30, 0x7a, 0x01],
    };
    let e = event(Action::ServiceCertificateAdopt, uri);
    let size = db.store.tree_size().await.unwrap();
    assert!(db
        .store
        .adopt_certificate(&adopted, &Completion::Nothing, &e)
        .await
        .unwrap());
    assert!(
        !db.store
            .adopt_certificate(&adopted, &Completion::Nothing, &e)
            .await
            .unwrap(),
        "the second adoption of the same DER changes nothing"
    );
    assert_eq!(db.store.tree_size().await.unwrap(), size + 1, "one event");
    let stored = db
        .store
        .certificate(issued::issuer(), &sn("7a01"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (stored.status, stored.profile, stored.not_after),
        (
            CertState::Active,
            Profile::Server,
            at() + time::Duration::days(90)
        )
    );
}

async fn revocations_from_a_kept_crl_are_applied_once(db: Db) {
    use medid::domain::{CertState, Profile, RevocationReason};
    use medid::issuance::RevokedEntry;
    use medid::store::recovery::UNRECORDED_SUBJECT;
    let m = acme(&db).await;
    let uri = "spiffe://t/device/acme/p-1";
    enroll(&db, &m, 1, uri, "p-1", "k1", None).await.unwrap();
    let revoked_at = at() + time::Duration::hours(2);
    let entries = vec![
        RevokedEntry {
            serial: vec![0x40, 0x01],
            revoked_at,
            reason: Some(RevocationReason::KeyCompromise),
        },
        RevokedEntry {
            serial: vec![0x55, 0x55],
            revoked_at,
            reason: None,
        },
    ];
    let recover = || {
        db.store.recover_revocations(
            issued::issuer(),
            7,
            &entries,
            at() + time::Duration::days(400),
            at() + time::Duration::days(1),
            |r| {
                event(
                    Action::CertificateRevoke,
                    r.subject_uri.as_deref().unwrap_or(UNRECORDED_SUBJECT),
                )
                .with("serial", r.serial.clone())
            },
        )
    };
    let size = db.store.tree_size().await.unwrap();
    let outcome = recover().await.unwrap();
    assert_eq!(
        (outcome.revocations, outcome.crl_number_advanced),
        (2, true)
    );
    assert_eq!(
        db.store.tree_size().await.unwrap(),
        size + 2,
        "one event per revocation"
    );
    let known = db
        .store
        .certificate(issued::issuer(), &sn("4001"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (known.status, known.reason, known.revoked_at),
        (
            CertState::Revoked,
            Some(RevocationReason::KeyCompromise),
            Some(revoked_at)
        )
    );
    let unknown = db
        .store
        .certificate(issued::issuer(), &sn("5555"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            unknown.status,
            unknown.subject_uri.as_str(),
            unknown.profile
        ),
        (CertState::Revoked, UNRECORDED_SUBJECT, Profile::Unrecorded)
    );
    // The next CRL is numbered after the kept one and lists both.
    let next = plan_crl(&db.store, issued::issuer(), at() + time::Duration::days(1)).await;
    assert_eq!((next.plan.number, next.entries.len()), (8, 2));
    let crl = publish_crl(&db.store, issued::issuer(), at() + time::Duration::days(1)).await;
    assert_eq!(crl.number, 8);
    // Again: nothing left to apply, the number is not moved back.
    let outcome = recover().await.unwrap();
    assert_eq!(
        (outcome.revocations, outcome.crl_number_advanced),
        (0, false)
    );
    // A key revoked for keyCompromise is never certified again.
    let other = "spiffe://t/device/acme/p-2";
    let refused = enroll(&db, &m, 2, other, "p-2", "k1", None).await;
    assert!(refused.is_err(), "{refused:?}");
}

async fn the_leaf_hashes_fold_in_order_from_any_point(db: Db) {
    let events: Vec<_> = (0..5)
        .map(|i| event(Action::DataAccess, &format!("spiffe://t/device/acme/d-{i}")))
        .collect();
    db.store.record_events(&events).await.unwrap();
    let all = db.store.leaf_hashes(5).await.unwrap();
    assert_eq!(all.len(), 5);
    for (seq, e) in (1..).zip(&events) {
        assert_eq!(
            all[seq as usize - 1],
            medid::audit::ledger::leaf(seq, e).unwrap()
        );
    }
    let mut tail = Vec::new();
    db.store
        .fold_leaf_hashes_after(2, 5, |n, h| tail.push((n, h)))
        .await
        .unwrap();
    assert_eq!(tail, vec![(3, all[2]), (4, all[3]), (5, all[4])]);
    // Asking for more than is stored is an integrity error, not a short answer.
    let short = db.store.fold_leaf_hashes(6, |_, _| {}).await;
    assert!(matches!(short, Err(Error::Integrity(_))), "{short:?}");
    // A filtered scan lends the stored fields and leaf hashes.
    let mut seen = Vec::new();
    let q = AuditQuery {
        device_uri: Some("spiffe://t/device/acme/d-3".into()),
        ..AuditQuery::default()
    };
    db.store
        .scan_ledger(&q, 0, 5, 10, &mut |seq, fields, leaf| {
            seen.push((seq, fields.target.to_owned(), leaf.to_owned()));
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(
        seen,
        vec![(
            4,
            "spiffe://t/device/acme/d-3".to_owned(),
            medid::domain::hex(&all[3])
        )]
    );
}

/// Every subtree root a proof needs, read from the stored tree, equals the root recomputed
/// from the leaves, for events appended alone, in batches and inside other writes; a database
/// whose stored tree is missing (one from before it existed) gets it back when opened.
async fn the_stored_tree_answers_every_proof_and_is_rebuilt_when_missing(db: Db) {
    use medid::audit::merkle;
    for batch in [1usize, 2, 3, 5, 8, 13, 1, 1, 21] {
        let events: Vec<_> = (0..batch)
            .map(|i| event(Action::DataAccess, &format!("spiffe://t/device/acme/d-{i}")))
            .collect();
        db.store.append_events(events).await.unwrap();
    }
    // Appends inside another write (a manufacturer's creation) grow the tree too.
    acme(&db).await;
    let size = db.store.tree_size().await.unwrap() as usize;
    assert_eq!(size, 56);
    let leaves = db.store.leaf_hashes(size as u64).await.unwrap();
    every_proof_from_the_stored_tree(&db.store, &leaves).await;
    assert_eq!(
        db.store.build_tree().await.unwrap(),
        0,
        "nothing left to build"
    );
    // Without its stored tree (as before it existed), the database is rebuilt when opened.
    let raw = db.raw().await;
    sqlx::query("DELETE FROM merkle_nodes")
        .execute(&raw)
        .await
        .unwrap();
    sqlx::query("UPDATE merkle_state SET size = 0")
        .execute(&raw)
        .await
        .unwrap();
    let missing = db
        .store
        .subtree_roots(&merkle::inclusion_ranges(0, size).unwrap())
        .await;
    assert!(matches!(missing, Err(Error::Integrity(_))), "{missing:?}");
    db.store.close().await;
    let reopened = Store::open_url(&db.url).await.unwrap();
    every_proof_from_the_stored_tree(&reopened, &leaves).await;
}

/// Every inclusion and consistency proof over `leaves`, compared with the roots recomputed.
async fn every_proof_from_the_stored_tree(store: &Store, leaves: &[medid::audit::merkle::Hash]) {
    use medid::audit::merkle;
    let roots = |ranges: &[std::ops::Range<usize>]| -> Vec<_> {
        ranges
            .iter()
            .map(|r| merkle::root(&leaves[r.clone()]))
            .collect()
    };
    for n in 1..=leaves.len() {
        for m in 0..n {
            let ranges = merkle::inclusion_ranges(m, n).unwrap();
            assert_eq!(
                store.subtree_roots(&ranges).await.unwrap(),
                roots(&ranges),
                "inclusion {m} of {n}"
            );
            if m > 0 {
                let ranges = merkle::consistency_ranges(m, n).unwrap();
                assert_eq!(
                    store.subtree_roots(&ranges).await.unwrap(),
                    roots(&ranges),
                    "consistency {m} to {n}"
                );
            }
        }
    }
}
