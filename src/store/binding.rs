//! Which PKI this database belongs to: the fingerprints recorded at its first start.

use super::{audit, Store};
use crate::audit::AuditEvent;
use crate::domain::{PkiFingerprint, PkiPart};
use crate::error::Error;

impl super::PkiBinding for Store {
    async fn pki_binding(&self) -> Result<Vec<PkiFingerprint>, Error> {
        let mut reader = self.reader().await?;
        let rows: Vec<(PkiPart, String)> = reader
            .tx()
            .all(
                "SELECT part, sha256 FROM pki_binding ORDER BY part, sha256",
                &[],
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|(part, sha256)| PkiFingerprint { part, sha256 })
            .collect())
    }

    async fn bind_pki(
        &self,
        fingerprints: &[PkiFingerprint],
        event: &AuditEvent,
    ) -> Result<bool, Error> {
        let mut tx = self.begin_write().await?;
        let mut on = tx.on();
        let mut added = 0;
        for f in fingerprints {
            added += on
                .execute(
                    "INSERT INTO pki_binding (part, sha256, recorded_at) VALUES ($1, $2, $3)
                     ON CONFLICT (part, sha256) DO NOTHING",
                    &[&f.part, &f.sha256, &event.recorded_at],
                )
                .await?;
        }
        if added == 0 {
            return Ok(false);
        }
        audit::append(&mut on, event).await?;
        tx.commit().await?;
        Ok(true)
    }
}
