//! Restoring revocations a database lost (restored from a backup older than them) from the
//! CRLs the service kept outside the database.

use sqlx::Row as _;
use time::OffsetDateTime;

use super::lifecycle::{last_crl_number, set_crl_number};
use super::sql::SqlxTx;
use super::{audit, to_unix, Store};
use crate::audit::AuditEvent;
use crate::domain::RevocationReason;
use crate::error::Error;
use crate::issuance::{IssuerId, RevokedEntry};

/// The subject recorded for a revoked serial the database never saw (issued after the backup).
pub const UNRECORDED_SUBJECT: &str = "unrecorded";

/// A revocation re-applied from a kept CRL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    pub serial: String,
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
        let mut outcome = RecoveryOutcome::default();
        for entry in entries {
            let serial = crate::domain::hex(&entry.serial);
            let row = sqlx::query(
                "SELECT status, subject_uri FROM certificates WHERE issuer = $1 AND serial = $2",
            )
            .bind(issuer.label())
            .bind(&serial)
            .fetch_optional(&mut *tx)
            .await?;
            let subject_uri = match row {
                Some(row) if row.try_get::<String, _>("status")? == "revoked" => continue,
                Some(row) => {
                    sqlx::query(
                        "UPDATE certificates SET status = 'revoked', revoked_at = $1,
                                revocation_reason = $2
                         WHERE issuer = $3 AND serial = $4",
                    )
                    .bind(to_unix(entry.revoked_at))
                    .bind(entry.reason.map(RevocationReason::code))
                    .bind(issuer.label())
                    .bind(&serial)
                    .execute(&mut *tx)
                    .await?;
                    Some(row.try_get::<String, _>("subject_uri")?)
                }
                None => {
                    sqlx::query(
                        "INSERT INTO certificates (issuer, serial, profile, role, subject_uri,
                                spki_sha256, not_before, not_after, status, reserved_at,
                                revoked_at, revocation_reason, issue_order)
                         VALUES ($1, $2, $8, $9, $3, '', $4, $5, 'revoked', $6, $4, $7,
                                 (SELECT COALESCE(MAX(issue_order), 0) + 1 FROM certificates))",
                    )
                    .bind(issuer.label())
                    .bind(&serial)
                    .bind(UNRECORDED_SUBJECT)
                    .bind(to_unix(entry.revoked_at))
                    .bind(to_unix(unknown_not_after))
                    .bind(to_unix(now))
                    .bind(entry.reason.map(RevocationReason::code))
                    .bind(crate::domain::Profile::Unrecorded.as_str())
                    .bind(crate::domain::Role::Unrecorded.as_str())
                    .execute(&mut *tx)
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
            audit::append(&mut SqlxTx(&mut *tx), &event_for(&recovered)).await?;
            outcome.revocations += 1;
        }
        let last = last_crl_number(&mut tx, issuer).await?;
        let number = i64::try_from(number)
            .map_err(|_| Error::Internal(format!("kept CRL number {number} is too large")))?;
        if last.unwrap_or(0) < number {
            set_crl_number(&mut tx, issuer, number).await?;
            outcome.crl_number_advanced = true;
        }
        tx.commit().await?;
        Ok(outcome)
    }
}
