//! Two medid replicas, in-process on separate ports, on one PostgreSQL database
//! (docs/DEPLOYMENT.md). Runs when `MEDID_TEST_POSTGRES_URL` is set (`.ci/run` sets it) and
//! fails, never skips, when that server is unreachable.

mod common;

use std::collections::{BTreeMap, HashSet};

use common::{csr_p256, Identity, TestServer};
use medid::proto::{
    self, audit_service_client::AuditServiceClient,
    lifecycle_service_client::LifecycleServiceClient, EnrollDeviceRequest, PrincipalRole,
};
use sqlx::Row;
use tokio_stream::StreamExt;
use tonic::Code;

/// Starts a replica in its own directory (its own ports and checkpoint copies) on the shared
/// PKI directory and database.
async fn replica(pki: &std::path::Path, url: &str) -> TestServer {
    let (pki, url) = (pki.to_owned(), url.to_owned());
    TestServer::start_with(
        tempfile::tempdir().unwrap(),
        common::system_now(),
        move |c| {
            c.pki_dir = pki;
            c.database_url = url;
        },
    )
    .await
}

async fn enroll_at(
    server: &TestServer,
    station: &Identity,
    serial: &str,
) -> Result<Identity, tonic::Status> {
    let (csr, key_pem) = csr_p256();
    let issued = server
        .enrollment_client(station)
        .await
        .enroll_device(EnrollDeviceRequest {
            csr,
            serial: serial.into(),
            model: "X".into(),
            udi_di: String::new(),
        })
        .await?
        .into_inner();
    Ok(Identity {
        cert_pem: issued.certificate.expect("a certificate").certificate_pem,
        key_pem,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_database_keep_every_invariant() {
    if std::env::var_os("MEDID_TEST_POSTGRES_URL").is_none() {
        eprintln!(
            "MEDID_TEST_POSTGRES_URL not set: the replica test needs PostgreSQL (.ci/run sets it)"
        );
        return;
    }
    let url = common::new_postgres_schema().await;
    let shared = tempfile::tempdir().unwrap();
    let pki = shared.path().join("pki");
    // The first replica creates the development PKI; the second loads the same files, as
    // replicas given the same key directory do.
    let a = replica(&pki, &url).await;
    let b = replica(&pki, &url).await;
    let replicas = [&a, &b];

    a.add_manufacturer("acme", &[]).await;
    let station_a = a.station("acme", "line-a").await;
    let station_b = b.station("acme", "line-b").await;
    let gateway_a = a.issue(PrincipalRole::Gateway, "gw-a", "").await;
    let gateway_b = b.issue(PrincipalRole::Gateway, "gw-b", "").await;
    let auditor = b.issue(PrincipalRole::Auditor, "compliance", "").await;

    // 1. Concurrent enrollments at both replicas, and the same serial raced at both: exactly
    //    one of those wins.
    let mut enrollments = Vec::new();
    for i in 0..40 {
        let (server, station) = if i % 2 == 0 {
            (&a, &station_a)
        } else {
            (&b, &station_b)
        };
        enrollments.push(async move { enroll_at(server, station, &format!("SN-{i}")).await });
    }
    let raced = (0..10).map(|i| {
        let (server, station) = if i % 2 == 0 {
            (&a, &station_a)
        } else {
            (&b, &station_b)
        };
        async move { enroll_at(server, station, "SAME").await }
    });
    let (devices, raced) = tokio::join!(
        futures_util::future::join_all(enrollments),
        futures_util::future::join_all(raced)
    );
    let devices: Vec<Identity> = devices.into_iter().map(|d| d.expect("enrolled")).collect();
    assert_eq!(
        raced.iter().filter(|r| r.is_ok()).count(),
        1,
        "one SAME wins"
    );
    assert!(raced
        .iter()
        .filter_map(|r| r.as_ref().err())
        .all(|e| e.code() == Code::AlreadyExists));

    // 2. Renewals at the other replica, concurrently with access events at both.
    let renewals = devices.iter().enumerate().map(|(i, d)| {
        let server = replicas[(i + 1) % 2];
        async move {
            LifecycleServiceClient::new(server.channel(d).await)
                .request_operational_certificate(proto::RequestOperationalCertificateRequest {
                    csr: csr_p256().0,
                })
                .await
                .expect("renewal")
        }
    });
    let access_streams = [(&a, &gateway_a), (&b, &gateway_b)].map(|(server, gw)| async move {
        let mut client = AuditServiceClient::new(server.channel(gw).await);
        let mut acked = 0;
        for batch in 0..5 {
            let events: Vec<_> = (0..20)
                .map(|n| common::access_event(&format!("SN-{n}"), (batch * 20 + n) as i64))
                .collect();
            let req = proto::AccessBatch { events };
            let mut acks = client
                .record_access_stream(tokio_stream::iter(vec![req]))
                .await
                .expect("stream opens")
                .into_inner();
            while let Some(ack) = acks.next().await {
                acked += ack.expect("ack").seqs.len();
            }
        }
        acked
    });
    let (_, acked) = tokio::join!(
        futures_util::future::join_all(renewals),
        futures_util::future::join_all(access_streams)
    );
    assert_eq!(acked.iter().sum::<usize>(), 200);

    // 3. A revocation made through A is refused on the next RPC at B.
    let victim = &devices[0];
    let mut admin_a = LifecycleServiceClient::new(a.channel(&a.admin()).await);
    admin_a
        .revoke(proto::RevokeRequest {
            target: Some(proto::revoke_request::Target::Device(proto::DeviceRef {
                manufacturer_id: "acme".into(),
                serial: "SN-0".into(),
            })),
            reason: proto::RevocationReason::KeyCompromise as i32,
        })
        .await
        .expect("revoked at A");
    let err = LifecycleServiceClient::new(b.channel(victim).await)
        .request_operational_certificate(proto::RequestOperationalCertificateRequest {
            csr: csr_p256().0,
        })
        .await
        .expect_err("B refuses the revoked device");
    assert!(
        matches!(
            err.code(),
            Code::Unauthenticated | Code::Unknown | Code::Unavailable
        ),
        "{err:?}"
    );
    // And revocations at both replicas at once, each re-signing CRLs.
    let admin_b = LifecycleServiceClient::new(b.channel(&b.admin()).await);
    let revokes = (1..9).map(|i| {
        let mut admin = if i % 2 == 0 {
            admin_a.clone()
        } else {
            admin_b.clone()
        };
        async move {
            admin
                .revoke(proto::RevokeRequest {
                    target: Some(proto::revoke_request::Target::Device(proto::DeviceRef {
                        manufacturer_id: "acme".into(),
                        serial: format!("SN-{i}"),
                    })),
                    reason: proto::RevocationReason::CessationOfOperation as i32,
                })
                .await
                .expect("revoked")
        }
    });
    futures_util::future::join_all(revokes).await;

    // 4. A one-time token is spent once, whichever replicas race for it.
    let token = LifecycleServiceClient::new(a.channel(&station_a).await)
        .create_enrollment_token(proto::CreateEnrollmentTokenRequest {
            manufacturer_id: "acme".into(),
            serial: "FIELD-1".into(),
            model: String::new(),
            ttl_seconds: 600,
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    let spends = (0..10).map(|i| {
        let server = replicas[i % 2];
        let token = token.clone();
        async move {
            let channel = medid::api::client::connect_without_identity(
                &server.url,
                server.root_pem().as_bytes(),
            )
            .await
            .unwrap();
            LifecycleServiceClient::new(channel)
                .enroll_with_token(proto::EnrollWithTokenRequest {
                    token,
                    csr: csr_p256().0,
                    serial: "FIELD-1".into(),
                    model: "X".into(),
                    udi_di: String::new(),
                })
                .await
        }
    });
    let spent = futures_util::future::join_all(spends).await;
    assert_eq!(
        spent.iter().filter(|r| r.is_ok()).count(),
        1,
        "the token works once"
    );

    // 5. Checkpoints signed at both replicas: one row per tree size.
    for server in replicas {
        server.ca.checkpoint_now().await.expect("checkpoint");
    }

    // Invariants, read from the database.
    let db = a.db().await;
    let certs = sqlx::query("SELECT issuer, serial FROM certificates")
        .fetch_all(&db)
        .await
        .unwrap();
    let serials: HashSet<String> = certs
        .iter()
        .map(|r| r.try_get::<String, _>("serial").unwrap())
        .collect();
    assert_eq!(serials.len(), certs.len(), "serials never collide");
    let crls = sqlx::query("SELECT issuer, number, this_update FROM crls ORDER BY issuer, number")
        .fetch_all(&db)
        .await
        .unwrap();
    let mut by_issuer: BTreeMap<String, Vec<(i64, i64)>> = BTreeMap::new();
    for r in &crls {
        by_issuer
            .entry(r.try_get("issuer").unwrap())
            .or_default()
            .push((
                r.try_get("number").unwrap(),
                r.try_get("this_update").unwrap(),
            ));
    }
    for (issuer, list) in &by_issuer {
        let numbers: Vec<i64> = list.iter().map(|(n, _)| *n).collect();
        let expected: Vec<i64> = (1..=numbers.len() as i64).collect();
        assert_eq!(numbers, expected, "{issuer}: one CRL per number, no gaps");
        assert!(
            list.windows(2).all(|w| w[0].1 <= w[1].1),
            "{issuer}: thisUpdate never goes back as numbers rise"
        );
    }
    assert!(
        by_issuer["operational"].len() >= 2,
        "both replicas published"
    );
    let sizes: Vec<i64> =
        sqlx::query_scalar("SELECT tree_size FROM audit_checkpoints ORDER BY tree_size")
            .fetch_all(&db)
            .await
            .unwrap();
    let distinct: HashSet<&i64> = sizes.iter().collect();
    assert_eq!(distinct.len(), sizes.len(), "one checkpoint per tree size");
    db.close().await;

    // The whole log, exported through B, verifies offline as one gap-free tree.
    let mut lines = AuditServiceClient::new(b.channel(&auditor).await)
        .export_audit(proto::ExportAuditRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut bundle = String::new();
    while let Some(line) = lines.next().await {
        bundle.push_str(&line.unwrap().json);
        bundle.push('\n');
    }
    let key_pem = std::fs::read_to_string(pki.join("audit-signing.pub")).unwrap();
    let key = medid::audit::checkpoint::public_key_from_pem(&key_pem).unwrap();
    let report = medid::audit::verify::verify_bundle(&bundle, &key, None)
        .unwrap_or_else(|f| panic!("the shared log does not verify: {f:?}"));
    let events = a.audit_events().await;
    let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as i64).collect::<Vec<_>>(),
        "gap-free"
    );
    assert!(report.events as usize >= 200 + 40, "{report:?}");
    let accesses = events
        .iter()
        .filter(|e| e.event.action == medid::audit::Action::DataAccess)
        .count();
    assert_eq!(
        accesses, 200,
        "every acknowledged access event is in the log"
    );

    b.stop().await;
    a.stop().await;
}
