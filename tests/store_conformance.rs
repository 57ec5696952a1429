//! The storage conformance suite (STYLE.md #15, after SPIRE's `sqltest`): every case runs on
//! SQLite, and on PostgreSQL when `MEDID_TEST_POSTGRES_URL` is set (`.ci/run` sets it). A case
//! told to use PostgreSQL fails, never skips, when the server is unreachable. Each PostgreSQL
//! case gets a fresh schema.
//!
//! Here, at the store's own interface: migrations, the audit sequence and its append-only rows,
//! CRL numbering, checkpoints, ledger filters, manufacturers, devices (one, by URI, page by
//! page), the PKI binding, the certificate census, revocation (rows marked once, listed on the
//! next CRL), tokens, and the peer lookup of authentication.
//! Recording an issued certificate (`record_new`, which needs a signed certificate) and token
//! spending run on both backends through the integration tests (`MEDID_TEST_BACKEND=postgres`)
//! and `tests/replicas.rs`.

mod common;

use medid::audit::{Action, Actor, AuditEvent};
use medid::domain::ManufacturerId;
use medid::issuance::{IssuerId, IssuerName};
use medid::store::ledger::AuditQuery;
use medid::store::registry::ManufacturerRecord;
use medid::store::{
    AuditLog, CertificateLedger, CertificateRecords, MerkleLog, PkiBinding, Registry,
    RevocationStore, TokenStore,
};
use medid::store::{Backend, Store};
use medid::Error;

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
    let leaves = db.store.leaf_hashes(1).await.unwrap();
    let again = db.store.leaf_hashes_as_stored(1).await.unwrap();
    assert_eq!(leaves, again);
    assert!(
        db.store.leaf_hashes(2).await.is_err(),
        "asking past the end is an error"
    );
}

async fn crl_numbers_rise_by_one_under_concurrent_issuers(db: Db) {
    let issuers = (0..10).map(|i| {
        let store = db.store.clone();
        tokio::spawn(async move {
            store
                .issue_crl(
                    IssuerId::first(IssuerName::Operational),
                    at() + time::Duration::seconds(i),
                    time::Duration::hours(24),
                    |number, this_update, next_update, entries| {
                        assert!(entries.is_empty());
                        assert_eq!(next_update - this_update, time::Duration::hours(24));
                        Ok(format!("crl {number}").into_bytes())
                    },
                )
                .await
                .unwrap()
        })
    });
    let mut crls: Vec<_> = futures_util::future::join_all(issuers)
        .await
        .into_iter()
        .map(|c| c.unwrap())
        .collect();
    crls.sort_by_key(|c| c.number);
    let numbers: Vec<i64> = crls.iter().map(|c| c.number).collect();
    assert_eq!(numbers, (1..=10).collect::<Vec<i64>>());
    for c in &crls {
        assert_eq!(c.der, format!("crl {}", c.number).into_bytes());
    }
    assert!(
        crls.windows(2)
            .all(|w| w[0].this_update <= w[1].this_update),
        "thisUpdate never goes back as numbers rise"
    );
    let latest = db
        .store
        .latest_crl(IssuerId::first(IssuerName::Operational))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(latest.number, 10);
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
    let revoke = |targets: Vec<(IssuerId, String)>, subject: Option<&'static str>| {
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
        revoke(vec![(op, "0a01".into())], None).await,
        vec![(op, "0a01".into())]
    );
    assert_eq!(db.store.tree_size().await.unwrap(), size + 1, "one event");
    // Already revoked: nothing more is revoked.
    assert!(revoke(vec![(op, "0a01".into())], None).await.is_empty());
    // By subject: every certificate of it not yet revoked, read inside the transaction.
    assert_eq!(
        revoke(Vec::new(), Some(subject)).await,
        vec![(op, "0a02".into())]
    );
    for serial in ["0a01", "0a02"] {
        let row = db.store.certificate(op, serial).await.unwrap().unwrap();
        assert_eq!(row.status, CertState::Revoked, "{serial}");
    }
    let crl = db
        .store
        .issue_crl(op, at(), time::Duration::hours(24), |_, _, _, entries| {
            let mut listed: Vec<(Vec<u8>, Option<RevocationReason>)> = entries
                .iter()
                .map(|e| (e.serial.clone(), e.reason))
                .collect();
            listed.sort_by(|a, b| a.0.cmp(&b.0));
            assert_eq!(
                listed,
                vec![
                    (vec![0x0a, 0x01], Some(RevocationReason::KeyCompromise)),
                    (vec![0x0a, 0x02], Some(RevocationReason::KeyCompromise)),
                ]
            );
            Ok(b"crl".to_vec())
        })
        .await
        .unwrap();
    assert_eq!(crl.number, 1);
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
    for (m, serial, state) in [
        ("acme", "SN-1", "active"),
        ("acme", "SN-2", "decommissioned"),
        ("acme", "SN-3", "active"),
        ("beta", "SN-1", "active"),
    ] {
        sqlx::query(
            "INSERT INTO devices (manufacturer_id, serial, model, udi_di, uri, state, enrolled_at,
                 birth_serial) VALUES ($1, $2, 'X', NULL, $3, $4, $5, $6)",
        )
        .bind(m)
        .bind(serial)
        .bind(format!("spiffe://t/device/{m}/{serial}"))
        .bind(state)
        .bind(at().unix_timestamp())
        .bind(format!("{m}{serial}"))
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
