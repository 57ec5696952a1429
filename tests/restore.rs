//! Restoring a database from a backup older than some revocations: the CRLs the service kept
//! outside the database bring them back, so no revoked certificate works again.

mod common;

use std::process::Command;

use common::{openssl_ocsp, revoke_for_key_compromise, serial_of, Identity, TestServer};
use medid::proto::{self, lifecycle_service_client::LifecycleServiceClient, PrincipalRole};
use medid::store::AuditLog;

/// The number and the revoked serials (hex) of the operational CRL the HTTP endpoint serves.
async fn served_crl(server: &TestServer) -> (u64, Vec<String>) {
    let der = reqwest_free_get(&format!("{}/crl/operational.crl", server.http_url)).await;
    let (_, crl) = x509_parser::parse_x509_crl(&der).unwrap();
    let number = crl.crl_number().unwrap().to_string().parse().unwrap();
    let serials = crl
        .iter_revoked_certificates()
        .map(|r| medid::domain::hex(r.raw_serial()))
        .collect();
    (number, serials)
}

/// GET over plain HTTP/1.1 with curl (an independent client).
async fn reqwest_free_get(url: &str) -> Vec<u8> {
    let out = Command::new("curl").args(["-sSf", url]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    out.stdout
}

async fn a_call_works(server: &TestServer, who: &Identity) -> bool {
    let Ok(channel) = server.try_channel(who).await else {
        return false;
    };
    LifecycleServiceClient::new(channel)
        .get_crl(proto::GetCrlRequest {
            issuer: proto::Issuer::Operational as i32,
            issuer_generation: 0,
        })
        .await
        .is_ok()
}

/// Whether a file descriptor of this process refers to `db` or its WAL or shared-memory file.
fn open_in_this_process(db: &std::path::Path) -> bool {
    let names: Vec<std::path::PathBuf> = ["", "-wal", "-shm"]
        .iter()
        .map(|s| std::path::PathBuf::from(format!("{}{s}", db.display())))
        .collect();
    std::fs::read_dir("/proc/self/fd")
        .map(|fds| {
            fds.filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
                .any(|target| {
                    let target = std::path::PathBuf::from(
                        target.to_string_lossy().trim_end_matches(" (deleted)"),
                    );
                    names.contains(&target)
                })
        })
        .unwrap_or(false)
}

/// Closing a store ends its writer and checkpoint threads and closes every connection at
/// once, even while another handle to it is still alive: a restore can then replace the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_store_holds_no_descriptor_of_its_database() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("medid.db");
    let store = medid::store::Store::open_url(&format!("sqlite://{}?mode=rwc", db.display()))
        .await
        .unwrap();
    let event = medid::audit::AuditEvent::new(
        common::system_now(),
        medid::audit::Actor::system(),
        medid::audit::Action::PkiBind,
        medid::audit::Target::pki(),
    );
    store.record_event(&event).await.unwrap();
    assert_eq!(store.audit_events(0, 10).await.unwrap().len(), 1);
    assert!(open_in_this_process(&db));
    let kept = store.clone();
    store.close().await;
    assert!(
        !open_in_this_process(&db),
        "{} is still open after Store::close",
        db.display()
    );
    assert!(
        kept.record_event(&event).await.is_err(),
        "a closed store writes nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_after_a_backup_survive_its_restore() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("medid.db");
    let url = format!("sqlite://{}", db.display());
    let sqlite = |c: &mut medid::config::Config| c.database_url = url.clone();
    let server = TestServer::start_with(dir, common::system_now(), sqlite).await;
    let before_backup = server.issue(PrincipalRole::Gateway, "gw-old", "").await;
    assert!(a_call_works(&server, &before_backup).await);

    // An online backup while the service runs, through the real CLI.
    let backup = server.dir.path().join("backup.db");
    let out = Command::new(env!("CARGO_BIN_EXE_medid"))
        .args(["backup", "--database-url", &url, "--out"])
        .arg(&backup)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("backed up"), "{said}");

    // After the backup: a gateway the backup never saw, then both are revoked.
    let after_backup = server.issue(PrincipalRole::Gateway, "gw-new", "").await;
    let mut admin = LifecycleServiceClient::new(server.channel(&server.admin()).await);
    for who in [&before_backup, &after_backup] {
        admin
            .revoke(revoke_for_key_compromise(&serial_of(who)))
            .await
            .unwrap();
    }
    let (published, revoked) = served_crl(&server).await;
    for who in [&before_backup, &after_backup] {
        assert!(revoked.contains(&serial_of(who)));
    }
    let kept = medid::service::kept_crl_dir(&server.config.checkpoint_dir().unwrap());
    assert!(
        std::fs::read_dir(&kept).unwrap().count() >= 2,
        "kept CRLs in {kept:?}"
    );

    // The restore: the backup replaces the database. A stopped server has closed it: its
    // store joined the writer and checkpoint threads and closed every connection.
    let config = server.config.clone();
    let dir = server.stop().await;
    assert!(
        !open_in_this_process(&db),
        "{} is still open after the server stopped",
        db.display()
    );
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    // A new file renamed over the old: connections of the stopped server that are not closed
    // yet keep the old file and cannot write into the restored one.
    let restoring = db.with_extension("restoring");
    std::fs::copy(&backup, &restoring).unwrap();
    std::fs::rename(&restoring, &db).unwrap();
    let server = TestServer::start_with(dir, common::system_now(), |c| *c = config).await;

    // Both stay revoked: mTLS, the CRL (numbered past what was published), OCSP.
    for who in [&before_backup, &after_backup] {
        assert!(
            !a_call_works(&server, who).await,
            "a revoked gateway cannot call"
        );
    }
    let (number, revoked) = served_crl(&server).await;
    assert!(number > published, "CRL number {number} after {published}");
    for who in [&before_backup, &after_backup] {
        assert!(revoked.contains(&serial_of(who)), "{revoked:?}");
    }
    for (name, who) in [("old.pem", &before_backup), ("new.pem", &after_backup)] {
        let path = server.dir.path().join(name);
        std::fs::write(&path, &who.cert_pem).unwrap();
        let text = openssl_ocsp(&server, &path);
        assert!(text.contains(": revoked"), "{name}: {text}");
        assert!(
            text.contains("Key Compromise") || text.contains("keyCompromise"),
            "{text}"
        );
    }
    let recovered: Vec<_> = server
        .audit_events()
        .await
        .into_iter()
        .filter(|e| e.event.detail.get("recovered_from").is_some())
        .collect();
    assert_eq!(recovered.len(), 2, "one event per recovered revocation");

    // A second start finds nothing more to recover.
    let config = server.config.clone();
    let dir = server.stop().await;
    let server = TestServer::start_with(dir, common::system_now(), |c| *c = config).await;
    let again = server
        .audit_events()
        .await
        .into_iter()
        .filter(|e| e.event.detail.get("recovered_from").is_some())
        .count();
    assert_eq!(again, 2);
}

#[tokio::test]
async fn a_kept_crl_that_medid_did_not_sign_revokes_nothing() {
    let server = TestServer::start().await;
    let gateway = server.issue(PrincipalRole::Gateway, "gw", "").await;
    let kept = medid::service::kept_crl_dir(&server.config.checkpoint_dir().unwrap());
    // A CRL from another PKI, named as the newest of the operational CA, listing the gateway.
    let other = tempfile::tempdir().unwrap();
    let init = Command::new(env!("CARGO_BIN_EXE_medid"))
        .args(["ca", "init", "--dir"])
        .arg(other.path())
        .output()
        .unwrap();
    assert!(init.status.success());
    let foreign =
        medid::issuance::Authority::load(other.path(), medid::issuance::keys::KeySource::Files)
            .unwrap();
    let now = common::system_now();
    let der = foreign
        .sign_crl(
            medid::issuance::IssuerId::first(medid::issuance::IssuerName::Operational),
            999_999,
            now,
            now + time::Duration::hours(24),
            &[medid::issuance::RevokedEntry {
                serial: medid::domain::unhex(&serial_of(&gateway)).unwrap(),
                revoked_at: now,
                reason: Some(medid::domain::RevocationReason::KeyCompromise),
            }],
        )
        .unwrap();
    std::fs::write(kept.join("operational-99999999999999999999.crl"), der).unwrap();
    let config = server.config.clone();
    let dir = server.stop().await;
    let server = TestServer::start_with(dir, common::system_now(), |c| *c = config).await;
    assert!(
        a_call_works(&server, &gateway).await,
        "a forged CRL revokes nothing"
    );
}
