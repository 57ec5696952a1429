//! Races: many enrollments of one serial, revocation racing renewal.

mod common;

use common::{csr_p256, Identity, TestServer};
use medid::proto::{self, lifecycle_service_client::LifecycleServiceClient, EnrollDeviceRequest};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_enrollments_of_one_serial_yield_exactly_one() {
    let server = TestServer::start().await;
    server.add_manufacturer("acme", &[]).await;
    // Four stations of the manufacturer (each within its per-principal limit of 32 requests in
    // flight), 25 attempts each, on their own connections.
    let mut clients = Vec::new();
    for i in 0..4 {
        let station = server.station("acme", &format!("line-{i}")).await;
        clients.push(server.enrollment_client(&station).await);
    }
    let csrs: Vec<Vec<u8>> = (0..100).map(|_| csr_p256().0).collect();
    let attempts = csrs.into_iter().enumerate().map(|(i, csr)| {
        let mut c = clients[i % clients.len()].clone();
        async move {
            c.enroll_device(EnrollDeviceRequest {
                csr,
                serial: "ONE".into(),
                model: "X".into(),
                udi_di: String::new(),
            })
            .await
        }
    });
    let results = futures_util::future::join_all(attempts).await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
    assert!(results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .all(|e| e.code() == Code::AlreadyExists));
    assert_eq!(server.count("SELECT COUNT(*) FROM devices").await, 1);
    assert_eq!(
        server
            .count("SELECT COUNT(*) FROM certificates WHERE profile = 'device-birth'")
            .await,
        1
    );
}

/// Decommissioning while renewals are in flight: whatever the interleaving, the device is left
/// with no certificate that is both active and unrevoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_racing_renewal_leaves_no_valid_certificate() {
    let server = TestServer::start().await;
    server.add_manufacturer("acme", &[]).await;
    let station = server.station("acme", "line-1").await;
    for round in 0..10 {
        let serial = format!("RACE-{round}");
        let (csr, key_pem) = csr_p256();
        let resp = server
            .enrollment_client(&station)
            .await
            .enroll_device(EnrollDeviceRequest {
                csr,
                serial: serial.clone(),
                model: "X".into(),
                udi_di: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        let device = Identity {
            cert_pem: resp.certificate.unwrap().certificate_pem,
            key_pem,
        };
        let device_client = LifecycleServiceClient::new(server.channel(&device).await);
        let admin = LifecycleServiceClient::new(server.channel(&server.admin()).await);
        let renewals = (0..5).map(|_| {
            let mut c = device_client.clone();
            async move {
                c.request_operational_certificate(proto::RequestOperationalCertificateRequest {
                    csr: csr_p256().0,
                })
                .await
                .is_ok()
            }
        });
        let decommission = {
            let mut a = admin.clone();
            let serial = serial.clone();
            async move {
                a.decommission_device(proto::DecommissionDeviceRequest {
                    device: Some(proto::DeviceRef {
                        manufacturer_id: "acme".into(),
                        serial,
                    }),
                    reason: 0,
                })
                .await
                .expect("decommission succeeds");
            }
        };
        let (_, _) = tokio::join!(futures_util::future::join_all(renewals), decommission);
        let valid = server
            .count(&format!(
                "SELECT COUNT(*) FROM certificates WHERE subject_uri LIKE '%/{serial}' AND status = 'active'"
            ))
            .await;
        assert_eq!(
            valid, 0,
            "round {round}: a certificate survived decommissioning"
        );
        // And the device can get no new one.
        let err = LifecycleServiceClient::new(server.channel(&device).await)
            .request_operational_certificate(proto::RequestOperationalCertificateRequest {
                csr: csr_p256().0,
            })
            .await
            .unwrap_err();
        // Refused per RPC, or in the TLS handshake (seen as a closed or cancelled connection).
        assert!(
            matches!(
                err.code(),
                Code::Unauthenticated | Code::Unknown | Code::Cancelled | Code::Unavailable
            ),
            "{err:?}"
        );
    }
}
