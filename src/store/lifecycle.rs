//! Revocation, CRLs, certificate status and history, expiry, and one-time enrollment tokens.

use time::OffsetDateTime;

use super::registry::DeviceState;
use super::sql::{FromRow, Row, StoredReason, Tx};
use super::{audit, Store};
use crate::audit::AuditEvent;
use crate::domain::{
    CertSerial, CertState, ManufacturerId, Profile, RevocationReason, Role, SubjectState,
};
use crate::error::Error;
use crate::issuance::{IssuerId, RevokedEntry};
use crate::policy::crl::{CrlBasis, CrlPlan};

/// A certificate row with its subject's scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertRecord {
    pub issuer: IssuerId,
    pub serial: CertSerial,
    pub profile: Profile,
    pub role: Role,
    pub subject_uri: String,
    pub status: CertState,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub revoked_at: Option<OffsetDateTime>,
    pub reason: Option<RevocationReason>,
    /// The device's or station's manufacturer.
    pub manufacturer: Option<String>,
    pub device_serial: Option<String>,
    /// Issuance order: larger is newer.
    pub issue_order: i64,
}

const CERT_COLUMNS: &str = "SELECT c.issuer, c.serial, c.profile, c.role, c.subject_uri, c.status,
        c.not_before, c.not_after, c.revoked_at, c.revocation_reason, c.issue_order,
        COALESCE(d.manufacturer_id, p.manufacturer_id) AS manufacturer, d.serial AS device_serial
    FROM certificates c
    LEFT JOIN devices d ON d.uri = c.subject_uri
    LEFT JOIN principals p ON p.uri = c.subject_uri";

impl FromRow for CertRecord {
    fn from_row(row: &Row<'_>) -> Result<Self, Error> {
        Ok(CertRecord {
            issuer: row.get("issuer")?,
            serial: row.get("serial")?,
            profile: row.get("profile")?,
            role: row.get("role")?,
            subject_uri: row.get("subject_uri")?,
            status: row.get("status")?,
            not_before: row.get("not_before")?,
            not_after: row.get("not_after")?,
            revoked_at: row.get("revoked_at")?,
            reason: row.get::<StoredReason>("revocation_reason")?.0,
            manufacturer: row.get("manufacturer")?,
            device_serial: row.get("device_serial")?,
            issue_order: row.get("issue_order")?,
        })
    }
}

/// A one-time enrollment token as stored (its hash, never the token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub token_sha256: String,
    pub manufacturer_id: String,
    pub serial: String,
    pub model: Option<String>,
    pub expires_at: OffsetDateTime,
    pub used_at: Option<OffsetDateTime>,
}

impl FromRow for TokenRecord {
    fn from_row(row: &Row<'_>) -> Result<Self, Error> {
        Ok(TokenRecord {
            token_sha256: row.get("token_sha256")?,
            manufacturer_id: row.get("manufacturer_id")?,
            serial: row.get("serial")?,
            model: row.get("model")?,
            expires_at: row.get("expires_at")?,
            used_at: row.get("used_at")?,
        })
    }
}

/// A signed CRL as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlRecord {
    pub number: i64,
    pub this_update: OffsetDateTime,
    pub next_update: OffsetDateTime,
    pub der: Vec<u8>,
}

/// A CRL signed over what the store held: the basis it was planned from (to be recorded only
/// if that still holds) and the entries it lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCrl {
    pub basis: CrlBasis,
    pub plan: CrlPlan,
    pub entries: Vec<RevokedEntry>,
    pub der: Vec<u8>,
}

/// What recording a signed CRL did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CrlSaved {
    Recorded(CrlRecord),
    /// Another CRL was recorded after this one was planned: nothing stored.
    Stale,
}

/// An issuer's last CRL number and thisUpdate, read on `tx`.
async fn crl_basis_on(tx: &mut Tx<'_>, issuer: IssuerId) -> Result<CrlBasis, Error> {
    Ok(CrlBasis {
        last_number: last_crl_number(tx, issuer).await?,
        last_this_update: tx
            .optional(
                "SELECT this_update FROM crls WHERE issuer = $1 ORDER BY number DESC LIMIT 1",
                &[&issuer],
            )
            .await?,
    })
}

/// A CRL's number and validity, without its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrlHead {
    pub number: i64,
    pub this_update: OffsetDateTime,
    pub next_update: OffsetDateTime,
}

/// What a revocation does to its subject besides revoking certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubjectChange<'a> {
    None,
    /// The device (manufacturer, serial) is decommissioned: no further issuance.
    Decommission(&'a ManufacturerId, &'a str),
    /// The principal (its URI) is disabled: no further call, renewal or token succeeds.
    Disable(&'a str),
}

/// Spends a token inside the transaction that records the enrollment, once
/// [`policy::claim::check`](crate::policy::claim::check) has found it spendable under the
/// same write lock.
pub(crate) async fn spend_token(
    tx: &mut Tx<'_>,
    token_sha256: &str,
    now: OffsetDateTime,
) -> Result<(), Error> {
    let spent = tx
        .execute(
            "UPDATE enrollment_tokens SET used_at = $1
             WHERE token_sha256 = $2 AND used_at IS NULL",
            &[&now, &token_sha256],
        )
        .await?;
    if spent == 1 {
        Ok(())
    } else {
        Err(Error::Integrity(format!(
            "the enrollment token checked as spendable was not spent ({spent} rows)"
        )))
    }
}

/// The number of `issuer`'s last CRL, if it has signed one.
pub(super) async fn last_crl_number(
    tx: &mut Tx<'_>,
    issuer: IssuerId,
) -> Result<Option<i64>, Error> {
    tx.optional(
        "SELECT last_number FROM crl_numbers WHERE issuer = $1",
        &[&issuer],
    )
    .await
}

/// Records `number` as `issuer`'s last CRL number.
pub(super) async fn set_crl_number(
    tx: &mut Tx<'_>,
    issuer: IssuerId,
    number: i64,
) -> Result<(), Error> {
    tx.execute(
        "INSERT INTO crl_numbers (issuer, last_number) VALUES ($1, $2)
         ON CONFLICT (issuer) DO UPDATE SET last_number = excluded.last_number",
        &[&issuer, &number],
    )
    .await?;
    Ok(())
}

/// `issuer`'s revoked certificates with notAfter at or after `listed_from`, by serial.
async fn revoked_entries(
    tx: &mut Tx<'_>,
    issuer: IssuerId,
    listed_from: OffsetDateTime,
) -> Result<Vec<RevokedEntry>, Error> {
    let rows: Vec<(String, OffsetDateTime, StoredReason)> = tx
        .all(
            "SELECT serial, revoked_at, revocation_reason FROM certificates
             WHERE issuer = $1 AND status = $2 AND not_after >= $3
             ORDER BY serial",
            &[&issuer, &CertState::Revoked, &listed_from],
        )
        .await?;
    rows.into_iter()
        .map(|(serial, revoked_at, reason)| {
            Ok(RevokedEntry {
                serial: crate::domain::unhex(&serial).ok_or_else(|| {
                    Error::Integrity(format!("stored serial {serial:?} is not hex"))
                })?,
                revoked_at,
                reason: reason.0,
            })
        })
        .collect()
}

impl super::CertificateRecords for Store {
    async fn certificate(
        &self,
        issuer: IssuerId,
        serial: &CertSerial,
    ) -> Result<Option<CertRecord>, Error> {
        let mut reader = self.reader().await?;
        reader
            .tx()
            .optional(
                &format!("{CERT_COLUMNS} WHERE c.issuer = $1 AND c.serial = $2"),
                &[&issuer, &serial],
            )
            .await
    }

    async fn certificates_of(&self, subject_uri: &str) -> Result<Vec<CertRecord>, Error> {
        let mut reader = self.reader().await?;
        reader
            .tx()
            .all(
                &format!("{CERT_COLUMNS} WHERE c.subject_uri = $1 ORDER BY c.issue_order"),
                &[&subject_uri],
            )
            .await
    }

    async fn expiring(
        &self,
        before: OffsetDateTime,
        manufacturer: Option<&ManufacturerId>,
        limit: i64,
    ) -> Result<Vec<CertRecord>, Error> {
        let mut reader = self.reader().await?;
        reader
            .tx()
            .all(
                &format!(
                    "{CERT_COLUMNS}
                     WHERE c.status = $1 AND c.not_after <= $2
                       AND ($3 IS NULL OR COALESCE(d.manufacturer_id, p.manufacturer_id) = $4)
                     ORDER BY c.not_after, c.serial LIMIT $5"
                ),
                &[
                    &CertState::Active,
                    &before,
                    &manufacturer,
                    &manufacturer,
                    &limit,
                ],
            )
            .await
    }
}

impl super::RevocationStore for Store {
    async fn revoke(
        &self,
        targets: &[(IssuerId, CertSerial)],
        subject: Option<&str>,
        reason: Option<RevocationReason>,
        change: SubjectChange<'_>,
        event: &AuditEvent,
    ) -> Result<Vec<(IssuerId, CertSerial)>, Error> {
        let at = event.recorded_at;
        let mut tx = self.begin_write().await?;
        let mut on = tx.on();
        let revoked_state = CertState::Revoked;
        let mut targets = targets.to_vec();
        if let Some(uri) = subject {
            // Read under the write lock: a certificate recorded a moment ago is included, and
            // none can be recorded for the subject until this commits.
            let rows: Vec<(IssuerId, CertSerial)> = on
                .all(
                    "SELECT issuer, serial FROM certificates WHERE subject_uri = $1 AND status <> $2",
                    &[&uri, &revoked_state],
                )
                .await?;
            for (issuer, serial) in rows {
                if !targets.iter().any(|(i, s)| *i == issuer && *s == serial) {
                    targets.push((issuer, serial));
                }
            }
        }
        let mut revoked = Vec::new();
        for (issuer, serial) in &targets {
            let done = on
                .execute(
                    "UPDATE certificates SET status = $1, revoked_at = $2, revocation_reason = $3
                     WHERE issuer = $4 AND serial = $5 AND status <> $1",
                    &[&revoked_state, &at, &reason, issuer, serial],
                )
                .await?;
            if done == 1 {
                revoked.push((*issuer, serial.clone()));
            }
        }
        match change {
            SubjectChange::None => {}
            SubjectChange::Decommission(manufacturer, serial) => {
                on.execute(
                    "UPDATE devices SET state = $1 WHERE manufacturer_id = $2 AND serial = $3",
                    &[&DeviceState::Decommissioned, manufacturer, &serial],
                )
                .await?;
            }
            SubjectChange::Disable(uri) => {
                on.execute(
                    "UPDATE principals SET state = $1 WHERE uri = $2",
                    &[&SubjectState::Disabled, &uri],
                )
                .await?;
            }
        }
        let mut event = event.clone();
        event.detail.insert(
            "revoked".into(),
            revoked
                .iter()
                .map(|(i, s)| format!("{i}:{s}"))
                .collect::<Vec<_>>()
                .into(),
        );
        audit::append(&mut on, &event).await?;
        tx.commit().await?;
        Ok(revoked)
    }

    async fn crl_basis(&self, issuer: IssuerId) -> Result<CrlBasis, Error> {
        let mut reader = self.reader().await?;
        crl_basis_on(&mut reader.tx(), issuer).await
    }

    async fn crl_entries(
        &self,
        issuer: IssuerId,
        listed_from: OffsetDateTime,
    ) -> Result<Vec<RevokedEntry>, Error> {
        let mut reader = self.reader().await?;
        revoked_entries(&mut reader.tx(), issuer, listed_from).await
    }

    async fn record_crl(
        &self,
        issuer: IssuerId,
        crl: &SignedCrl,
        event: &AuditEvent,
    ) -> Result<CrlSaved, Error> {
        let mut tx = self.begin_write().await?;
        let mut on = tx.on();
        // Only the numbering must still hold. A revocation that committed after the CRL was
        // planned is on the next one, which its own publication signs after it.
        if crl_basis_on(&mut on, issuer).await? != crl.basis {
            return Ok(CrlSaved::Stale);
        }
        let plan = &crl.plan;
        set_crl_number(&mut on, issuer, plan.number).await?;
        on.execute(
            "INSERT INTO crls (issuer, number, this_update, next_update, der)
             VALUES ($1, $2, $3, $4, $5)",
            &[
                &issuer,
                &plan.number,
                &plan.this_update,
                &plan.next_update,
                &crl.der,
            ],
        )
        .await?;
        // Publishing is a state change: its event is in the same transaction.
        audit::append(&mut on, event).await?;
        tx.commit().await?;
        Ok(CrlSaved::Recorded(CrlRecord {
            number: plan.number,
            this_update: plan.this_update,
            next_update: plan.next_update,
            der: crl.der.clone(),
        }))
    }

    async fn latest_crl(&self, issuer: IssuerId) -> Result<Option<CrlRecord>, Error> {
        let mut reader = self.reader().await?;
        let row: Option<(i64, OffsetDateTime, OffsetDateTime, Vec<u8>)> = reader
            .tx()
            .optional(
                "SELECT number, this_update, next_update, der FROM crls
                 WHERE issuer = $1 ORDER BY number DESC LIMIT 1",
                &[&issuer],
            )
            .await?;
        Ok(
            row.map(|(number, this_update, next_update, der)| CrlRecord {
                number,
                this_update,
                next_update,
                der,
            }),
        )
    }

    async fn latest_revocation(&self, issuer: IssuerId) -> Result<Option<OffsetDateTime>, Error> {
        let mut reader = self.reader().await?;
        // The status as a literal: it is the condition of the partial index this reads.
        let latest: Option<OffsetDateTime> = reader
            .tx()
            .one(
                "SELECT MAX(revoked_at) FROM certificates WHERE issuer = $1 AND status = 'revoked'",
                &[&issuer],
            )
            .await?;
        Ok(latest)
    }

    async fn crl_head(&self, issuer: IssuerId) -> Result<Option<CrlHead>, Error> {
        let mut reader = self.reader().await?;
        let row: Option<(i64, OffsetDateTime, OffsetDateTime)> = reader
            .tx()
            .optional(
                "SELECT number, this_update, next_update FROM crls
                 WHERE issuer = $1 ORDER BY number DESC LIMIT 1",
                &[&issuer],
            )
            .await?;
        Ok(row.map(|(number, this_update, next_update)| CrlHead {
            number,
            this_update,
            next_update,
        }))
    }
}

impl super::TokenStore for Store {
    async fn create_token(&self, t: &TokenRecord, event: &AuditEvent) -> Result<(), Error> {
        let mut tx = self.begin_write().await?;
        let mut on = tx.on();
        on.execute(
            "INSERT INTO enrollment_tokens
                 (token_sha256, manufacturer_id, serial, model, expires_at, created_by, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &t.token_sha256,
                &t.manufacturer_id,
                &t.serial,
                &t.model,
                &t.expires_at,
                &event.actor.uri,
                &event.recorded_at,
            ],
        )
        .await?;
        audit::append(&mut on, event).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn token(&self, token_sha256: &str) -> Result<Option<TokenRecord>, Error> {
        let mut reader = self.reader().await?;
        reader
            .tx()
            .optional(
                "SELECT token_sha256, manufacturer_id, serial, model, expires_at, used_at
                 FROM enrollment_tokens WHERE token_sha256 = $1",
                &[&token_sha256],
            )
            .await
    }
}
