//! Which PKI this database belongs to: the fingerprints recorded at its first start.

use sqlx::Row as _;

use super::sql::SqlxTx;
use super::{audit, to_unix, Store};
use crate::audit::AuditEvent;
use crate::domain::{PkiFingerprint, PkiPart};
use crate::error::Error;

impl super::PkiBinding for Store {
    async fn pki_binding(&self) -> Result<Vec<PkiFingerprint>, Error> {
        let rows = sqlx::query("SELECT part, sha256 FROM pki_binding ORDER BY part, sha256")
            .fetch_all(&self.reader)
            .await?;
        rows.iter()
            .map(|row| {
                let part: String = row.try_get("part")?;
                Ok(PkiFingerprint {
                    part: PkiPart::parse(&part).ok_or_else(|| {
                        Error::Internal(format!("pki_binding holds an unknown part {part:?}"))
                    })?,
                    sha256: row.try_get("sha256")?,
                })
            })
            .collect()
    }

    async fn bind_pki(
        &self,
        fingerprints: &[PkiFingerprint],
        event: &AuditEvent,
    ) -> Result<bool, Error> {
        let mut tx = self.begin_write().await?;
        let mut added = 0;
        for f in fingerprints {
            added += sqlx::query(
                "INSERT INTO pki_binding (part, sha256, recorded_at) VALUES ($1, $2, $3)
                 ON CONFLICT (part, sha256) DO NOTHING",
            )
            .bind(f.part.as_str())
            .bind(&f.sha256)
            .bind(to_unix(event.recorded_at))
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        if added == 0 {
            return Ok(false);
        }
        audit::append(&mut SqlxTx(&mut *tx), event).await?;
        tx.commit().await?;
        Ok(true)
    }
}
