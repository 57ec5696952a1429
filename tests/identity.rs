//! The service's own certificates: recorded, published, renewed while it runs, and reused
//! across restarts.

mod common;

use common::{a_call_works, connect_at_test_time as connect, TestServer};
use medid::clock::Clock;
use medid::proto::{self, lifecycle_service_client::LifecycleServiceClient, PrincipalRole};
use medid::store::CertificateRecords;

fn serial_on_disk(server: &TestServer) -> String {
    let pem = std::fs::read(server.pki("server.pem")).unwrap();
    let der = medid::pem::parse_certificates(&pem).unwrap().remove(0);
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    medid::domain::hex(cert.raw_serial())
}

async fn status(server: &TestServer, serial: &str) -> String {
    server
        .ca
        .store
        .certificate(
            medid::issuance::IssuerId::first(medid::issuance::IssuerName::Operational),
            &medid::domain::CertSerial::parse_hex(serial).unwrap(),
        )
        .await
        .unwrap()
        .map(|c| c.status.as_str().to_owned())
        .unwrap_or_else(|| "unrecorded".into())
}

async fn count(server: &TestServer, action: medid::audit::Action) -> usize {
    server
        .audit_events()
        .await
        .iter()
        .filter(|e| e.event.action == action)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_renews_its_tls_certificate_three_times_without_dropping_a_client() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(dir, common::system_now(), |c| {
        c.server_validity_days = 1;
    })
    .await;
    let gateway = server.issue(PrincipalRole::Gateway, "gw", "").await;
    let first = serial_on_disk(&server);
    assert_eq!(status(&server, &first).await, "active", "recorded at start");
    let expiring = LifecycleServiceClient::new(server.channel(&server.admin()).await)
        .list_expiring(proto::ListExpiringRequest {
            within_seconds: 2 * 86_400,
            manufacturer_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        expiring
            .certificates
            .iter()
            .any(|c| c.serial == first && c.profile == "server"),
        "ListExpiring shows the service's certificate"
    );

    let (long_lived, presented) = connect(&server, &gateway).await;
    assert_eq!(presented, first);
    let mut previous = first;
    for round in 1..=3 {
        // Past 2/3 of a one-day life.
        server.clock.advance(time::Duration::hours(17));
        server.ca.maintain().await.unwrap();
        let renewed = serial_on_disk(&server);
        assert_ne!(renewed, previous, "round {round}: renewed on disk");
        assert_eq!(status(&server, &renewed).await, "active");
        assert_eq!(
            status(&server, &previous).await,
            "revoked",
            "the replaced one is superseded"
        );
        // The TLS layer swaps it in; a new client sees it (the swap is a task: poll).
        let mut seen = String::new();
        for _ in 0..200 {
            let (channel, presented) = connect(&server, &gateway).await;
            seen = presented;
            if seen == renewed {
                assert!(
                    a_call_works(channel).await,
                    "round {round}: a new client calls"
                );
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(
            seen, renewed,
            "round {round}: new handshakes present the renewed certificate"
        );
        assert!(
            a_call_works(long_lived.clone()).await,
            "round {round}: the connection opened before every renewal still works"
        );
        previous = renewed;
    }
    assert_eq!(
        count(&server, medid::audit::Action::ServiceCertificateRenew).await,
        3
    );

    // A restart reuses the renewed certificate and the OCSP responders kept on disk.
    let responders = count(&server, medid::audit::Action::OcspResponderIssue).await;
    assert_eq!(responders, 2, "one per issuing CA");
    let config = server.config.clone();
    let now = server.clock.now();
    let dir = server.stop().await;
    let server = TestServer::start_with(dir, now, |c| *c = config).await;
    assert_eq!(serial_on_disk(&server), previous);
    assert_eq!(
        count(&server, medid::audit::Action::ServiceCertificateRenew).await,
        3
    );
    assert_eq!(
        count(&server, medid::audit::Action::OcspResponderIssue).await,
        responders,
        "responders reused"
    );
}

// Multi-threaded: openssl runs as a blocking child process while the server answers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_certificate_is_good_over_ocsp_and_can_be_revoked() {
    let server = TestServer::start().await;
    let serial = serial_on_disk(&server);
    let path = server.pki("server.pem");
    let text = common::openssl_ocsp(&server, &path);
    assert!(text.contains(": good"), "{text}");
    LifecycleServiceClient::new(server.channel(&server.admin()).await)
        .revoke(common::revoke_for_key_compromise(&serial))
        .await
        .unwrap();
    let text = common::openssl_ocsp(&server, &path);
    assert!(text.contains(": revoked"), "{text}");
    // The next upkeep replaces a revoked service certificate at once.
    server.ca.maintain().await.unwrap();
    let renewed = serial_on_disk(&server);
    assert_ne!(renewed, serial);
    assert_eq!(status(&server, &renewed).await, "active");
}
