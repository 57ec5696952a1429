//! Two years in fast-forward: one in-process server, its clock moved forward in 8-hour steps
//! (the upkeep runs after each, as its one-minute timer would) while a fleet keeps enrolling,
//! renewing, reporting access and being revoked, and an operator rolls the operational CA over
//! when the service warns. Checked at every step: nothing the service depends on has expired,
//! no CRL is stale before the upkeep runs, every client still connects. Checked over the run:
//! the SQLite WAL stays under its bound and the process's memory stays flat.
//!
//! Every client connection verifies certificates at the test's time, and so does the server's
//! TLS layer (the injected clock), so the whole stack lives in the simulated two years.

mod common;

use common::{connect_at_test_time, Identity, TestServer};
use medid::clock::Clock;
use medid::issuance::IssuerName;
use medid::policy::profile::renew_after;
use medid::proto::{
    self, admin_service_client::AdminServiceClient, audit_service_client::AuditServiceClient,
    enrollment_service_client::EnrollmentServiceClient,
    lifecycle_service_client::LifecycleServiceClient, PrincipalRole,
};
use medid::store::RevocationStore;
use time::{Duration, OffsetDateTime};
use tonic::transport::Channel;

const STEP: Duration = Duration::hours(8);
const DAYS: i64 = 730;
/// The operational CA lives a year here (five by default). Rolled over when 180 days are
/// left, each generation serves 185 days: two years take three rollovers.
const CA_DAYS: u32 = 365;
const WARNING_DAYS: u32 = 180;

/// A client identity, its validity and a connection made with it.
struct Holder {
    who: Identity,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    channel: Channel,
}

impl Holder {
    async fn new(server: &TestServer, who: Identity) -> Self {
        let der = medid::pem::parse_certificates(who.cert_pem.as_bytes()).unwrap()[0].to_vec();
        let (_, c) = x509_parser::parse_x509_certificate(&der).unwrap();
        let (not_before, not_after) = (
            c.validity().not_before.to_datetime(),
            c.validity().not_after.to_datetime(),
        );
        let (channel, _) = connect_at_test_time(server, &who).await;
        Self {
            who,
            not_before,
            not_after,
            channel,
        }
    }

    fn due(&self, now: OffsetDateTime) -> bool {
        now >= renew_after(self.not_before, self.not_after)
    }
}

fn issuer_cn(pem: &str) -> String {
    let der = medid::pem::parse_certificates(pem.as_bytes()).unwrap()[0].to_vec();
    let (_, c) = x509_parser::parse_x509_certificate(&der).unwrap();
    c.issuer().to_string()
}

async fn principal(
    server: &TestServer,
    admin: &Holder,
    role: PrincipalRole,
    id: &str,
    manufacturer: &str,
) -> Holder {
    let (csr, key_pem) = common::csr_p256();
    let issued = AdminServiceClient::new(admin.channel.clone())
        .issue_principal_certificate(proto::IssuePrincipalCertificateRequest {
            role: role as i32,
            id: id.into(),
            manufacturer_id: manufacturer.into(),
            csr,
        })
        .await
        .expect("principal issued")
        .into_inner();
    let who = Identity {
        cert_pem: issued.certificate_pem,
        key_pem,
    };
    Holder::new(server, who).await
}

/// Renews with the holder's own certificate (a device's operational or birth certificate, a
/// gateway's).
async fn renew(server: &TestServer, holder: &Holder) -> Holder {
    let (csr, key_pem) = common::csr_p256();
    let issued = LifecycleServiceClient::new(holder.channel.clone())
        .request_operational_certificate(proto::RequestOperationalCertificateRequest { csr })
        .await
        .expect("renewal succeeds")
        .into_inner();
    let who = Identity {
        cert_pem: issued.certificate_pem,
        key_pem,
    };
    Holder::new(server, who).await
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .expect("VmRSS in /proc/self/status")
}

fn file_len(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_years_unattended_in_fast_forward() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(dir, common::system_now(), |c| {
        c.operational_ca_validity_days = CA_DAYS;
        c.ca_expiry_warning_days = WARNING_DAYS;
        // Superseded certificates go onto the CRL, as a hospital that wants them revoked
        // would configure it: the CRL then has something to carry and to drop.
        c.revoke_superseded = true;
    })
    .await;
    let start = server.clock.now();
    let wal = server.dir.path().join("medid.db-wal");
    let sqlite = matches!(common::test_backend(), common::TestBackend::Sqlite);

    let mut admin = Holder::new(&server, server.admin()).await;
    AdminServiceClient::new(admin.channel.clone())
        .create_manufacturer(proto::CreateManufacturerRequest {
            id: "acme".into(),
            display_name: "Acme Medical".into(),
            allowed_models: vec!["X".into()],
        })
        .await
        .unwrap();
    let mut station = principal(
        &server,
        &admin,
        PrincipalRole::ManufacturerStation,
        "line-1",
        "acme",
    )
    .await;
    let mut gateway = principal(&server, &admin, PrincipalRole::Gateway, "gw-1", "").await;
    let mut devices: Vec<(String, Holder)> = Vec::new();

    let (mut enrolled, mut renewals, mut revoked, mut reports, mut rollovers) = (0, 0, 0, 0, 0);
    let mut principal_renewals = 0;
    let (mut wal_max, mut crl_entries_max) = (0u64, 0usize);
    let mut rss_at_quarter = None;
    let steps = DAYS * 24 / STEP.whole_hours();
    for step in 1..=steps {
        server.clock.advance(STEP);
        let now = server.clock.now();
        let day = (now - start).whole_days();

        // Before the upkeep: the previous one left every CRL in service fresh until now.
        for info in server.ca.issuers_in_service() {
            let crl = server.ca.store.latest_crl(info.id).await.unwrap().unwrap();
            assert!(
                crl.this_update <= now && now < crl.next_update,
                "day {day}: the {} CRL is stale (next update {})",
                info.id,
                crl.next_update
            );
        }

        // The operator: rolls the operational CA over when the service starts warning.
        let current = server.ca.authority.current(IssuerName::Operational);
        if current.not_after - now < Duration::days(WARNING_DAYS.into()) {
            medid::issuance::bootstrap::rotate(
                &medid::issuance::bootstrap::PkiFiles::new(&server.config.pki_dir),
                &medid::issuance::keys::KeySource::Files,
                IssuerName::Operational,
                &server.pki("root-ca.key"),
                Duration::days(CA_DAYS.into()),
                now,
            )
            .unwrap();
            rollovers += 1;
        }
        server.ca.maintain().await.unwrap();

        // Nothing the service depends on has ended, or ends before the next upkeep.
        let current = server.ca.authority.current(IssuerName::Operational);
        assert!(
            current.not_after > now + Duration::days(90),
            "day {day}: CA {}",
            current.id
        );
        let tls = std::fs::read(server.pki("server.pem")).unwrap();
        let tls = medid::pem::parse_certificates(&tls).unwrap()[0].to_vec();
        let (_, tls) = x509_parser::parse_x509_certificate(&tls).unwrap();
        assert!(
            tls.validity().not_after.to_datetime() > now + STEP,
            "day {day}: the service's TLS certificate"
        );
        for info in server.ca.issuers_in_service() {
            let responder = server.ca.authority.ocsp_responder_not_after(info.id);
            assert!(
                responder.is_some_and(|end| end > now),
                "day {day}: the {} OCSP responder ends {responder:?}",
                info.id
            );
        }

        // Principals renew at 2/3 of their lives, as an agent or an operator would.
        if admin.due(now) {
            admin = principal(&server, &admin, PrincipalRole::Admin, "admin", "").await;
            principal_renewals += 1;
        }
        if station.due(now) {
            station = principal(
                &server,
                &admin,
                PrincipalRole::ManufacturerStation,
                "line-1",
                "acme",
            )
            .await;
            principal_renewals += 1;
        }
        if gateway.due(now) {
            gateway = renew(&server, &gateway).await;
            principal_renewals += 1;
        }

        // A new device every 30 days, enrolled at the factory station, then on its operational
        // certificate; devices renew when due.
        if step % (30 * 3) == 1 {
            let serial = format!("PUMP-{enrolled:03}");
            let (csr, key_pem) = common::csr_p256();
            let cert = EnrollmentServiceClient::new(station.channel.clone())
                .enroll_device(proto::EnrollDeviceRequest {
                    csr,
                    serial: serial.clone(),
                    model: "X".into(),
                    udi_di: String::new(),
                })
                .await
                .expect("enrollment")
                .into_inner()
                .certificate
                .unwrap();
            let birth = Holder::new(
                &server,
                Identity {
                    cert_pem: cert.certificate_pem,
                    key_pem,
                },
            )
            .await;
            let operational = renew(&server, &birth).await;
            devices.push((serial, operational));
            enrolled += 1;
        }
        for (_, device) in devices.iter_mut() {
            if device.due(now) {
                *device = renew(&server, device).await;
                assert!(
                    issuer_cn(&device.who.cert_pem).ends_with(&format!(
                        "CN=medid operational CA{}",
                        match current.id.generation {
                            1 => String::new(),
                            g => format!(" {g}"),
                        }
                    )),
                    "day {day}: renewals come from the current CA"
                );
                renewals += 1;
            }
        }

        // Every 45 days, a device leaves service.
        if step % (45 * 3) == 0 && devices.len() > 1 {
            let (serial, _) = devices.remove(0);
            LifecycleServiceClient::new(admin.channel.clone())
                .decommission_device(proto::DecommissionDeviceRequest {
                    device: Some(proto::DeviceRef {
                        manufacturer_id: "acme".into(),
                        serial,
                    }),
                    reason: 0,
                })
                .await
                .expect("decommission");
            revoked += 1;
        }

        // The gateway reports an access to each device in service, every step.
        for (n, (serial, _)) in devices.iter().enumerate() {
            let mut event = common::access_event(serial, n as i64);
            event.occurred_at = Some(prost_types::Timestamp {
                seconds: now.unix_timestamp(),
                nanos: 0,
            });
            AuditServiceClient::new(gateway.channel.clone())
                .record_access(event)
                .await
                .expect("access report");
            reports += 1;
        }

        if step % (30 * 3) == 0 {
            if sqlite {
                wal_max = wal_max.max(file_len(&wal));
            }
            for info in server.ca.issuers_in_service() {
                let crl = server.ca.current_crl(info.id).await.unwrap();
                let (_, parsed) = x509_parser::parse_x509_crl(&crl.der).expect("the CRL parses");
                crl_entries_max = crl_entries_max.max(parsed.iter_revoked_certificates().count());
            }
            if day >= DAYS / 4 && rss_at_quarter.is_none() {
                rss_at_quarter = Some(rss_kib());
            }
        }
    }
    let rss_end = rss_kib();
    let rss_quarter = rss_at_quarter.unwrap();
    eprintln!(
        "two years: {enrolled} enrollments, {renewals} device renewals, {principal_renewals} \
         principal renewals, {revoked} decommissions, {reports} access reports, {rollovers} \
         rollovers; largest CRL {crl_entries_max} entries; WAL at most {wal_max} bytes; RSS \
         {rss_quarter} KiB at six months, {rss_end} KiB at two years"
    );
    assert_eq!(rollovers, 3, "a one-year CA, rolled over at 180 days left");
    assert_eq!(
        server
            .ca
            .authority
            .current(IssuerName::Operational)
            .id
            .generation,
        4
    );
    assert!(enrolled >= 24 && renewals > 300 && revoked >= 15 && reports > 5_000);
    // Superseded and decommissioned certificates leave the CRL a day after they end, so it
    // holds about a week's renewals, not two years'.
    assert!(
        crl_entries_max < 200,
        "largest CRL: {crl_entries_max} entries"
    );
    if sqlite {
        assert!(
            wal_max <= 64 << 20,
            "the WAL stays under its 64 MiB bound: {wal_max} bytes"
        );
    }
    assert!(
        rss_end <= rss_quarter + 32 * 1024,
        "memory stays flat: {rss_quarter} KiB at six months, {rss_end} KiB at two years"
    );
}
