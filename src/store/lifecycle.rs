//! Revocation, CRLs, certificate status and history, expiry, and one-time enrollment tokens.

use sqlx::Row;
use time::OffsetDateTime;

use super::sql::{Arg, SqlxTx, Tx};
use super::{audit, from_unix, to_unix, Conn, Store};
use crate::audit::{Actor, AuditEvent, Target};
use crate::domain::{CertState, ManufacturerId, Profile, RevocationReason, Role};
use crate::error::Error;
use crate::issuance::{IssuerId, RevokedEntry};

/// A certificate row with its subject's scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertRecord {
    pub issuer: IssuerId,
    pub serial: String,
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

fn decode_cert(row: &super::DbRow) -> Result<CertRecord, Error> {
    let issuer: String = row.try_get("issuer")?;
    let reason: Option<i64> = row.try_get("revocation_reason")?;
    Ok(CertRecord {
        issuer: IssuerId::parse(&issuer)
            .ok_or_else(|| Error::Internal(format!("unknown issuer {issuer:?}")))?,
        serial: row.try_get("serial")?,
        profile: super::decode(
            &row.try_get::<String, _>("profile")?,
            "profile",
            Profile::parse,
        )?,
        role: super::decode(&row.try_get::<String, _>("role")?, "role", Role::parse)?,
        subject_uri: row.try_get("subject_uri")?,
        status: super::decode(
            &row.try_get::<String, _>("status")?,
            "status",
            CertState::parse,
        )?,
        not_before: from_unix(row.try_get("not_before")?)?,
        not_after: from_unix(row.try_get("not_after")?)?,
        revoked_at: row
            .try_get::<Option<i64>, _>("revoked_at")?
            .map(from_unix)
            .transpose()?,
        reason: match reason {
            Some(code) => RevocationReason::from_code(code)?,
            None => None,
        },
        manufacturer: row.try_get("manufacturer")?,
        device_serial: row.try_get("device_serial")?,
        issue_order: row.try_get("issue_order")?,
    })
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

/// A signed CRL as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlRecord {
    pub number: i64,
    pub this_update: OffsetDateTime,
    pub next_update: OffsetDateTime,
    pub der: Vec<u8>,
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

/// Spends a token inside the transaction that records the enrollment. Exactly one caller wins.
pub(crate) async fn consume_token(
    tx: &mut dyn Tx,
    token_sha256: &str,
    now: OffsetDateTime,
) -> Result<(), Error> {
    let spent = tx
        .execute(
            "UPDATE enrollment_tokens SET used_at = $1
             WHERE token_sha256 = $2 AND used_at IS NULL AND expires_at >= $1",
            &[Arg::Int(to_unix(now)), Arg::Text(token_sha256)],
        )
        .await?;
    if spent == 1 {
        Ok(())
    } else {
        Err(Error::PermissionDenied(
            "the enrollment token is unknown, expired or already used".into(),
        ))
    }
}

/// The number of `issuer`'s last CRL, if it has signed one.
pub(super) async fn last_crl_number(tx: &mut Conn, issuer: IssuerId) -> Result<Option<i64>, Error> {
    Ok(
        sqlx::query_scalar("SELECT last_number FROM crl_numbers WHERE issuer = $1")
            .bind(issuer.label())
            .fetch_optional(&mut *tx)
            .await?,
    )
}

/// Records `number` as `issuer`'s last CRL number.
pub(super) async fn set_crl_number(
    tx: &mut Conn,
    issuer: IssuerId,
    number: i64,
) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO crl_numbers (issuer, last_number) VALUES ($1, $2)
         ON CONFLICT (issuer) DO UPDATE SET last_number = excluded.last_number",
    )
    .bind(issuer.label())
    .bind(number)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

async fn revoked_entries(
    tx: &mut Conn,
    issuer: IssuerId,
    this_update: OffsetDateTime,
) -> Result<Vec<RevokedEntry>, Error> {
    // RFC 5280 §3.3: an entry may leave the CRL only after the certificate has expired; keep it
    // a day longer so relying parties with skewed clocks still see it (Vault CVE-2021-29653).
    let keep_after = this_update - time::Duration::days(1);
    let rows = sqlx::query(
        "SELECT serial, revoked_at, revocation_reason FROM certificates
         WHERE issuer = $1 AND status = 'revoked' AND not_after >= $2
         ORDER BY serial",
    )
    .bind(issuer.label())
    .bind(to_unix(keep_after))
    .fetch_all(&mut *tx)
    .await?;
    rows.iter()
        .map(|row| {
            let serial: String = row.try_get("serial")?;
            Ok(RevokedEntry {
                serial: crate::domain::unhex(&serial).ok_or_else(|| {
                    Error::Internal(format!("stored serial {serial:?} is not hex"))
                })?,
                revoked_at: from_unix(row.try_get("revoked_at")?)?,
                reason: match row.try_get::<Option<i64>, _>("revocation_reason")? {
                    Some(code) => RevocationReason::from_code(code)?,
                    None => None,
                },
            })
        })
        .collect()
}

impl super::CertificateRecords for Store {
    async fn certificate(
        &self,
        issuer: IssuerId,
        serial: &str,
    ) -> Result<Option<CertRecord>, Error> {
        let row = sqlx::query(&format!(
            "{CERT_COLUMNS} WHERE c.issuer = $1 AND c.serial = $2"
        ))
        .bind(issuer.label())
        .bind(serial)
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(decode_cert).transpose()
    }

    async fn certificates_of(&self, subject_uri: &str) -> Result<Vec<CertRecord>, Error> {
        let rows = sqlx::query(&format!(
            "{CERT_COLUMNS} WHERE c.subject_uri = $1 ORDER BY c.issue_order"
        ))
        .bind(subject_uri)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(decode_cert).collect()
    }

    async fn expiring(
        &self,
        before: OffsetDateTime,
        manufacturer: Option<&ManufacturerId>,
        limit: i64,
    ) -> Result<Vec<CertRecord>, Error> {
        let rows = sqlx::query(&format!(
            "{CERT_COLUMNS}
             WHERE c.status = 'active' AND c.not_after <= $1
               AND ($2 IS NULL OR COALESCE(d.manufacturer_id, p.manufacturer_id) = $3)
             ORDER BY c.not_after, c.serial LIMIT $4"
        ))
        .bind(to_unix(before))
        .bind(manufacturer.map(|m| m.as_str()))
        .bind(manufacturer.map(|m| m.as_str()))
        .bind(limit)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(decode_cert).collect()
    }
}

impl super::RevocationStore for Store {
    async fn revoke(
        &self,
        targets: &[(IssuerId, String)],
        subject: Option<&str>,
        reason: Option<RevocationReason>,
        change: SubjectChange<'_>,
        event: &AuditEvent,
    ) -> Result<Vec<(IssuerId, String)>, Error> {
        let at = to_unix(event.recorded_at);
        let mut tx = self.begin_write().await?;
        let mut targets = targets.to_vec();
        if let Some(uri) = subject {
            // Read under the write lock: a renewal that reserved a serial a moment ago is
            // included, and none can reserve another until this commits.
            let rows = sqlx::query(
                "SELECT issuer, serial FROM certificates WHERE subject_uri = $1 AND status <> 'revoked'",
            )
            .bind(uri)
            .fetch_all(&mut *tx)
            .await?;
            for row in rows {
                let issuer: String = row.try_get("issuer")?;
                let issuer = IssuerId::parse(&issuer)
                    .ok_or_else(|| Error::Internal(format!("unknown issuer {issuer:?}")))?;
                let serial: String = row.try_get("serial")?;
                if !targets.iter().any(|(i, s)| *i == issuer && *s == serial) {
                    targets.push((issuer, serial));
                }
            }
        }
        let mut revoked = Vec::new();
        for (issuer, serial) in &targets {
            let done = sqlx::query(
                "UPDATE certificates SET status = 'revoked', revoked_at = $1, revocation_reason = $2
                 WHERE issuer = $3 AND serial = $4 AND status <> 'revoked'",
            )
            .bind(at)
            .bind(reason.map(RevocationReason::code))
            .bind(issuer.label())
            .bind(serial)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() == 1 {
                revoked.push((*issuer, serial.clone()));
            }
        }
        match change {
            SubjectChange::None => {}
            SubjectChange::Decommission(manufacturer, serial) => {
                sqlx::query(
                    "UPDATE devices SET state = 'decommissioned' WHERE manufacturer_id = $1 AND serial = $2",
                )
                .bind(manufacturer.as_str())
                .bind(serial)
                .execute(&mut *tx)
                .await?;
            }
            SubjectChange::Disable(uri) => {
                sqlx::query("UPDATE principals SET state = 'disabled' WHERE uri = $1")
                    .bind(uri)
                    .execute(&mut *tx)
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
        audit::append(&mut SqlxTx(&mut *tx), &event).await?;
        tx.commit().await?;
        Ok(revoked)
    }

    async fn issue_crl(
        &self,
        issuer: IssuerId,
        now: OffsetDateTime,
        validity: time::Duration,
        sign: impl FnOnce(u64, OffsetDateTime, OffsetDateTime, &[RevokedEntry]) -> Result<Vec<u8>, Error>
            + Send,
    ) -> Result<CrlRecord, Error> {
        let mut tx = self.begin_write().await?;
        let last = last_crl_number(&mut tx, issuer).await?;
        let number = last.unwrap_or(0) + 1;
        let previous: Option<i64> = sqlx::query_scalar(
            "SELECT this_update FROM crls WHERE issuer = $1 ORDER BY number DESC LIMIT 1",
        )
        .bind(issuer.label())
        .fetch_optional(&mut *tx)
        .await?;
        let this_update = match previous {
            Some(p) if p > to_unix(now) => from_unix(p)?,
            _ => now,
        };
        let next_update = this_update + validity;
        let entries = revoked_entries(&mut tx, issuer, this_update).await?;
        let der = sign(number as u64, this_update, next_update, &entries)?;
        set_crl_number(&mut tx, issuer, number).await?;
        sqlx::query(
            "INSERT INTO crls (issuer, number, this_update, next_update, der) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(issuer.label())
        .bind(number)
        .bind(to_unix(this_update))
        .bind(to_unix(next_update))
        .bind(&der)
        .execute(&mut *tx)
        .await?;
        // Publishing is a state change: one event per CRL, in the same transaction.
        let event = AuditEvent::new(
            now,
            Actor::system(),
            crate::audit::Action::CrlSign,
            Target::ca(&issuer.label()),
        )
        .with("number", number)
        .with("this_update", to_unix(this_update))
        .with("next_update", to_unix(next_update))
        .with("entries", entries.len() as i64)
        .with(
            "crl_sha256",
            crate::domain::hex(ring::digest::digest(&ring::digest::SHA256, &der).as_ref()),
        );
        audit::append(&mut SqlxTx(&mut *tx), &event).await?;
        tx.commit().await?;
        Ok(CrlRecord {
            number,
            this_update,
            next_update,
            der,
        })
    }

    async fn latest_crl(&self, issuer: IssuerId) -> Result<Option<CrlRecord>, Error> {
        let row = sqlx::query(
            "SELECT number, this_update, next_update, der FROM crls
             WHERE issuer = $1 ORDER BY number DESC LIMIT 1",
        )
        .bind(issuer.label())
        .fetch_optional(&self.reader)
        .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(CrlRecord {
            number: row.try_get("number")?,
            this_update: from_unix(row.try_get("this_update")?)?,
            next_update: from_unix(row.try_get("next_update")?)?,
            der: row.try_get("der")?,
        }))
    }

    async fn crl_head(&self, issuer: IssuerId) -> Result<Option<CrlHead>, Error> {
        let row: Option<(i64, i64, i64)> = sqlx::query_as(
            "SELECT number, this_update, next_update FROM crls
             WHERE issuer = $1 ORDER BY number DESC LIMIT 1",
        )
        .bind(issuer.label())
        .fetch_optional(&self.reader)
        .await?;
        row.map(|(number, this_update, next_update)| {
            Ok(CrlHead {
                number,
                this_update: from_unix(this_update)?,
                next_update: from_unix(next_update)?,
            })
        })
        .transpose()
    }
}

impl super::TokenStore for Store {
    async fn create_token(&self, t: &TokenRecord, event: &AuditEvent) -> Result<(), Error> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO enrollment_tokens
                 (token_sha256, manufacturer_id, serial, model, expires_at, created_by, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&t.token_sha256)
        .bind(&t.manufacturer_id)
        .bind(&t.serial)
        .bind(&t.model)
        .bind(to_unix(t.expires_at))
        .bind(&event.actor.uri)
        .bind(to_unix(event.recorded_at))
        .execute(&mut *tx)
        .await?;
        audit::append(&mut SqlxTx(&mut *tx), event).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn token(&self, token_sha256: &str) -> Result<Option<TokenRecord>, Error> {
        let row = sqlx::query(
            "SELECT token_sha256, manufacturer_id, serial, model, expires_at, used_at
             FROM enrollment_tokens WHERE token_sha256 = $1",
        )
        .bind(token_sha256)
        .fetch_optional(&self.reader)
        .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(TokenRecord {
            token_sha256: row.try_get("token_sha256")?,
            manufacturer_id: row.try_get("manufacturer_id")?,
            serial: row.try_get("serial")?,
            model: row.try_get("model")?,
            expires_at: from_unix(row.try_get("expires_at")?)?,
            used_at: row
                .try_get::<Option<i64>, _>("used_at")?
                .map(from_unix)
                .transpose()?,
        }))
    }
}
