//! Evicting a compromised principal: its renewals supersede older certificates, `revoke
//! --principal` takes everything it holds and disables it, and a renewal in flight when a
//! revocation commits never delivers an active certificate.

mod common;

use common::{csr_p256, Identity, TestServer};
use futures_util::future::join_all;
use medid::proto::{
    self, lifecycle_service_client::LifecycleServiceClient, PrincipalRole,
    RequestOperationalCertificateRequest,
};
use medid::store::CertificateRecords;
use tonic::Code;

fn principal_target(role: PrincipalRole, id: &str) -> proto::RevokeRequest {
    proto::RevokeRequest {
        target: Some(proto::revoke_request::Target::Principal(
            proto::PrincipalRef {
                role: role as i32,
                id: id.into(),
                manufacturer_id: String::new(),
            },
        )),
        reason: proto::RevocationReason::KeyCompromise as i32,
    }
}

fn certificate_target(serial: &str) -> proto::RevokeRequest {
    proto::RevokeRequest {
        target: Some(proto::revoke_request::Target::Certificate(
            proto::CertificateRef {
                issuer: 0,
                serial: serial.into(),
                issuer_generation: 0,
            },
        )),
        reason: proto::RevocationReason::KeyCompromise as i32,
    }
}

/// Renews `who`; the new identity and its serial, or the refusal (a refused handshake too).
async fn renew(server: &TestServer, who: &Identity) -> Result<(Identity, String), String> {
    let channel = server.try_channel(who).await.map_err(|e| e.to_string())?;
    renew_on(channel, csr_p256()).await
}

/// The renewal call alone, on a connection and with a CSR made beforehand, so that a race
/// with a revocation is decided inside the server, not by who finished its handshake first.
async fn renew_on(
    channel: tonic::transport::Channel,
    (csr, key_pem): (Vec<u8>, String),
) -> Result<(Identity, String), String> {
    let issued = LifecycleServiceClient::new(channel)
        .request_operational_certificate(RequestOperationalCertificateRequest { csr })
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
        .into_inner();
    Ok((
        Identity {
            cert_pem: issued.certificate_pem,
            key_pem,
        },
        issued.serial,
    ))
}

fn serial_of(who: &Identity) -> String {
    let der = medid::pem::parse_certificates(who.cert_pem.as_bytes()).unwrap()[0].to_vec();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    medid::domain::hex(cert.raw_serial())
}

/// The status the store gives a serial ('active', 'revoked', …).
async fn status(server: &TestServer, serial: &str) -> String {
    let record = server
        .ca
        .store
        .certificate(
            medid::issuance::IssuerId::first(medid::issuance::IssuerName::Operational),
            &medid::domain::CertSerial::parse_hex(serial).unwrap(),
        )
        .await
        .unwrap()
        .expect("a recorded certificate");
    record.status.as_str().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_renewed_three_times_and_then_evicted_can_do_nothing() {
    let server = TestServer::start().await;
    let first = server.issue(PrincipalRole::Gateway, "icu-gw", "").await;
    let mut held = vec![first];
    for _ in 0..3 {
        let (next, _) = renew(&server, held.last().unwrap()).await.expect("renewal");
        held.push(next);
    }
    // Each renewal superseded the certificate before it, with an event of its own.
    let serials: Vec<String> = held.iter().map(serial_of).collect();
    for older in &serials[..3] {
        assert_eq!(status(&server, older).await, "revoked", "{older}");
    }
    assert_eq!(status(&server, &serials[3]).await, "active");
    let superseded: Vec<String> = server
        .audit_events()
        .await
        .into_iter()
        .filter(|e| {
            e.event.action == medid::audit::Action::CertificateRevoke
                && e.event
                    .detail
                    .get("reason")
                    .is_some_and(|r| r == "superseded")
        })
        .map(|e| e.event.detail["serial"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(superseded, serials[..3].to_vec());

    let mut admin = LifecycleServiceClient::new(server.channel(&server.admin()).await);
    let revoked = admin
        .revoke(principal_target(PrincipalRole::Gateway, "icu-gw"))
        .await
        .expect("eviction")
        .into_inner()
        .revoked;
    assert_eq!(revoked.len(), 1, "the one still active: {revoked:?}");
    assert_eq!(status(&server, &serials[3]).await, "revoked");
    let again = admin
        .revoke(principal_target(PrincipalRole::Gateway, "icu-gw"))
        .await
        .unwrap_err();
    assert_eq!(
        again.code(),
        Code::FailedPrecondition,
        "{}",
        again.message()
    );

    // Nothing any of its certificates can do: no renewal, no call. (The handshake itself is
    // refused once the CRL lists a certificate; tonic reports that as a transport error or
    // a cancelled call.)
    for who in &held {
        let refused = renew(&server, who).await;
        assert!(refused.is_err(), "{refused:?}");
    }
    // And no new certificate for it either.
    let (csr, _) = csr_p256();
    let err = medid::proto::admin_service_client::AdminServiceClient::new(
        server.channel(&server.admin()).await,
    )
    .issue_principal_certificate(proto::IssuePrincipalCertificateRequest {
        role: PrincipalRole::Gateway as i32,
        id: "icu-gw".into(),
        manufacturer_id: String::new(),
        csr,
    })
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
    assert!(err.message().contains("disabled"), "{}", err.message());
    let evicted = server
        .audit_events()
        .await
        .into_iter()
        .filter(|e| {
            e.event.action == medid::audit::Action::PrincipalEvict
                && e.event.outcome == medid::audit::Outcome::Success
        })
        .count();
    assert_eq!(evicted, 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_admins_evict_principals() {
    let server = TestServer::start().await;
    server.add_manufacturer("acme", &[]).await;
    let station = server.station("acme", "line-1").await;
    let _gateway = server.issue(PrincipalRole::Gateway, "icu-gw", "").await;
    let err = LifecycleServiceClient::new(server.channel(&station).await)
        .revoke(principal_target(PrincipalRole::Gateway, "icu-gw"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    let err = LifecycleServiceClient::new(server.channel(&server.admin()).await)
        .revoke(principal_target(PrincipalRole::Gateway, "nobody"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{}", err.message());
    server.stop().await;
}

/// 200 races of a gateway's renewal against the revocation of the certificate authorizing it
/// (keyCompromise), 16 at a time. Whatever the interleaving, a certificate is delivered only if
/// its renewal was recorded before the revocation: the ledger orders the two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_in_flight_when_its_certificate_is_revoked_never_delivers_an_active_one() {
    let server = TestServer::start().await;
    let mut gateways = Vec::new();
    for n in 0..200 {
        gateways.push(
            server
                .issue(PrincipalRole::Gateway, &format!("race-{n}"), "")
                .await,
        );
    }
    let admin = LifecycleServiceClient::new(server.channel(&server.admin()).await);
    let mut outcomes = Vec::new();
    for (c, chunk) in gateways.chunks(16).enumerate() {
        let races = chunk.iter().enumerate().map(|(i, gw)| {
            let mut admin = admin.clone();
            let server = &server;
            // The revocation starts 0 to 75 ms after the renewal, so that some renewals win,
            // some lose at the first step and some are between their steps when it commits.
            let delay = std::time::Duration::from_millis(((c * 16 + i) % 16) as u64 * 5);
            async move {
                let serial = serial_of(gw);
                let channel = server.channel(gw).await;
                let (renewed, revoked) = tokio::join!(renew_on(channel, csr_p256()), async {
                    tokio::time::sleep(delay).await;
                    admin.revoke(certificate_target(&serial)).await
                });
                // A renewal that wins supersedes the certificate that authorized it, so the
                // revocation then finds it revoked already.
                let revoked = match revoked {
                    Ok(r) => !r.into_inner().revoked.is_empty(),
                    Err(s) if s.code() == Code::FailedPrecondition => false,
                    Err(s) => panic!("the revocation: {s}"),
                };
                (serial, renewed, revoked)
            }
        });
        outcomes.extend(join_all(races).await);
    }
    let events = server.audit_events().await;
    let seq_of = |action: medid::audit::Action, serial: &str| {
        events
            .iter()
            .find(|e| {
                e.event.action == action
                    && e.event.outcome == medid::audit::Outcome::Success
                    && e.event.detail.get("serial").and_then(|s| s.as_str()) == Some(serial)
            })
            .map(|e| e.seq)
    };
    let revoke_seq = |serial: &str| {
        events
            .iter()
            .find(|e| {
                e.event.action == medid::audit::Action::CertificateRevoke
                    && e.event
                        .detail
                        .get("revoked")
                        .and_then(|r| r.as_array())
                        .is_some_and(|r| {
                            r.iter()
                                .any(|x| x.as_str().is_some_and(|x| x.ends_with(serial)))
                        })
            })
            .map(|e| e.seq)
    };
    let mut delivered = 0;
    for (old, renewed, revoked) in &outcomes {
        // Exactly one side wins each race: the renewal (which supersedes `old`), or the
        // revocation (and the renewal delivers nothing).
        assert_ne!(
            renewed.is_ok(),
            *revoked,
            "{old}: {renewed:?}, revoked: {revoked}"
        );
        if let Ok((_, new)) = renewed {
            delivered += 1;
            let recorded = seq_of(medid::audit::Action::CertificateRenew, new)
                .expect("a delivered renewal is recorded");
            if let Some(revoked_at) = revoke_seq(old) {
                assert!(
                    recorded < revoked_at,
                    "{new} delivered though recorded after {old} was revoked"
                );
            }
        }
    }
    // A lost race is a refusal of the renewal alone: never a failed batch that takes other
    // writers (and their reservations) down with it.
    for (_, renewed, _) in &outcomes {
        if let Err(e) = renewed {
            assert!(e.starts_with("Unauthenticated"), "{e}");
        }
    }
    // However each race went, what is active is exactly what was delivered.
    let active = server
        .count("SELECT COUNT(*) FROM certificates WHERE subject_uri LIKE '%/gateway/race-%' AND status <> 'revoked'")
        .await;
    if active != delivered as i64 {
        let delivered: Vec<&str> = outcomes
            .iter()
            .filter_map(|o| o.1.as_ref().ok().map(|(_, s)| s.as_str()))
            .collect();
        let pool = server.db().await;
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT serial, status FROM certificates WHERE subject_uri LIKE '%/gateway/race-%' AND status <> 'revoked'",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        let mut extra = Vec::new();
        for (serial, status) in rows
            .iter()
            .filter(|(s, _)| !delivered.contains(&s.as_str()))
        {
            extra.push(format!("{serial} {status}"));
            for e in &events {
                if e.event.detail.get("serial").and_then(|x| x.as_str()) == Some(serial.as_str())
                    || e.event
                        .detail
                        .get("revoked")
                        .is_some_and(|r| r.to_string().contains(serial.as_str()))
                {
                    extra.push(format!(
                        "  {} {} {:?} {:?} {}",
                        e.seq, e.event.action, e.event.outcome, e.event.reason, e.event.target
                    ));
                }
            }
        }
        let errors: Vec<&String> = outcomes.iter().filter_map(|o| o.1.as_ref().err()).collect();
        let mut kinds: Vec<String> = errors
            .iter()
            .map(|e| e.chars().take(60).collect())
            .collect();
        kinds.sort();
        kinds.dedup();
        let errors = (errors.len(), kinds);
        extra.push(format!("client errors: {errors:#?}"));
        panic!(
            "{active} active, {} delivered; events of undelivered serials:\n{}",
            delivered.len(),
            extra.join("\n")
        );
    }
    if let Some((_, Err(e), _)) = outcomes.iter().find(|o| o.1.is_err()) {
        eprintln!("a lost race: {e}");
    }
    let refused = events
        .iter()
        .filter(|e| {
            e.event.action == medid::audit::Action::CertificateRenew
                && e.event.outcome != medid::audit::Outcome::Success
        })
        .count();
    eprintln!(
        "{delivered} of 200 renewals won their race; {refused} were refused, signed or not, and never delivered"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_racing_the_eviction_of_its_principal_leaves_nothing_active() {
    let server = TestServer::start().await;
    let mut gateways = Vec::new();
    for n in 0..200 {
        gateways.push((
            n,
            server
                .issue(PrincipalRole::Gateway, &format!("evict-{n}"), "")
                .await,
        ));
    }
    let admin = LifecycleServiceClient::new(server.channel(&server.admin()).await);
    for chunk in gateways.chunks(16) {
        let races = chunk.iter().map(|(n, gw)| {
            let mut admin = admin.clone();
            let server = &server;
            // As in the race above: the eviction starts 0 to 75 ms after the renewal.
            let delay = std::time::Duration::from_millis((n % 16) as u64 * 5);
            async move {
                let channel = server.channel(gw).await;
                let target = principal_target(PrincipalRole::Gateway, &format!("evict-{n}"));
                let (_, evicted) = tokio::join!(renew_on(channel, csr_p256()), async {
                    tokio::time::sleep(delay).await;
                    admin.revoke(target).await
                });
                evicted.expect("the eviction succeeds");
            }
        });
        join_all(races).await;
    }
    let active = server
        .count("SELECT COUNT(*) FROM certificates WHERE subject_uri LIKE '%/gateway/evict-%' AND status <> 'revoked'")
        .await;
    assert_eq!(
        active, 0,
        "nothing of an evicted principal stays active or reserved"
    );
    server.stop().await;
}
