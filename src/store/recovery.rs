//! Restoring revocations a database lost (restored from a backup older than them) from the
//! CRLs the service kept outside the database.

use time::OffsetDateTime;

use super::lifecycle::{last_crl_number, set_crl_number};
use super::{audit, Store};
use crate::audit::AuditEvent;
use crate::domain::{CertSerial, CertState, Profile, RevocationReason, Role};
use crate::error::Error;
use crate::issuance::{IssuerId, RevokedEntry};

/// The subject recorded for a revoked serial the database never saw (issued after the backup).
pub const UNRECORDED_SUBJECT: &str = "unrecorded";

/// A revocation re-applied from a kept CRL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    pub serial: CertSerial,
    /// The certificate's subject, or `None` when the database had no row for the serial.
    pub subject_uri: Option<String>,
    pub revoked_at: OffsetDateTime,
    pub reason: Option<RevocationReason>,
}

/// What one recovery changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RecoveryOutcome {
    /// Revocations re-applied.
    pub revocations: usize,
    /// The CRL number was behind the kept CRL's and was moved past it.
    pub crl_number_advanced: bool,
}

impl super::RecoveryStore for Store {
    async fn recover_revocations(
        &self,
        issuer: IssuerId,
        number: u64,
        entries: &[RevokedEntry],
        unknown_not_after: OffsetDateTime,
        now: OffsetDateTime,
        event_for: impl Fn(&Recovered) -> AuditEvent + Send,
    ) -> Result<RecoveryOutcome, Error> {
        let mut tx = self.begin_write().await?;
        let mut on = tx.on();
        let revoked = CertState::Revoked;
        let mut outcome = RecoveryOutcome::default();
        for entry in entries {
            let serial = CertSerial::from_bytes(entry.serial.clone());
            let row: Option<(CertState, String)> = on
                .optional(
                    "SELECT status, subject_uri FROM certificates WHERE issuer = $1 AND serial = $2",
                    &[&issuer, &serial],
                )
                .await?;
            let subject_uri = match row {
                Some((CertState::Revoked, _)) => continue,
                Some((_, subject_uri)) => {
                    on.execute(
                        "UPDATE certificates SET status = $1, revoked_at = $2,
                                revocation_reason = $3
                         WHERE issuer = $4 AND serial = $5",
                        &[&revoked, &entry.revoked_at, &entry.reason, &issuer, &serial],
                    )
                    .await?;
                    Some(subject_uri)
                }
                None => {
                    on.execute(
                        "INSERT INTO certificates (issuer, serial, profile, role, subject_uri,
                                spki_sha256, not_before, not_after, status, reserved_at,
                                revoked_at, revocation_reason, issue_order)
                         VALUES ($1, $2, $3, $4, $5, '', $6, $7, $8, $9, $6, $10,
                                 (SELECT COALESCE(MAX(issue_order), 0) + 1 FROM certificates))",
                        &[
                            &issuer,
                            &serial,
                            &Profile::Unrecorded,
                            &Role::Unrecorded,
                            &UNRECORDED_SUBJECT,
                            &entry.revoked_at,
                            &unknown_not_after,
                            &revoked,
                            &now,
                            &entry.reason,
                        ],
                    )
                    .await?;
                    None
                }
            };
            let recovered = Recovered {
                serial,
                subject_uri,
                revoked_at: entry.revoked_at,
                reason: entry.reason,
            };
            audit::append(&mut on, &event_for(&recovered)).await?;
            outcome.revocations += 1;
        }
        let last = last_crl_number(&mut on, issuer).await?;
        let number = i64::try_from(number)
            .map_err(|_| Error::Internal(format!("kept CRL number {number} is too large")))?;
        if last.unwrap_or(0) < number {
            set_crl_number(&mut on, issuer, number).await?;
            outcome.crl_number_advanced = true;
        }
        tx.commit().await?;
        Ok(outcome)
    }
}
