//! Counts for the console's overview and charts: the inventory by state, certificates by the
//! day they end, audit events by time bucket. Each is one aggregate statement over an index
//! (devices, `certificates_expiry`, `certificates_revoked_at`, `audit_events_by_time` or the
//! index of the filter given), never a read of rows into the process.

use time::OffsetDateTime;

use super::ledger::{AuditQuery, LedgerFilter};
use super::registry::DeviceState;
use super::sql::Bind;
use crate::audit::{Action, Outcome};
use crate::domain::CertState;
use crate::error::Error;

/// The inventory at a moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InventoryCounts {
    pub devices_by_state: Vec<(DeviceState, u64)>,
    /// Active certificates ending within 7 and within 30 days.
    pub ending_7_days: u64,
    pub ending_30_days: u64,
    /// Certificates revoked in the last 24 hours.
    pub revoked_last_day: u64,
}

/// Audit events in one time bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    /// The bucket's start, seconds since the epoch (a multiple of the bucket's length).
    pub start: i64,
    pub events: u64,
    /// Those that record an access to device data (`data.access`).
    pub accesses: u64,
    /// Those whose outcome is not success (refused, denied or failed).
    pub unsuccessful: u64,
}

fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

impl super::ConsoleStats for super::Store {
    async fn inventory_counts(&self, now: OffsetDateTime) -> Result<InventoryCounts, Error> {
        let mut reader = self.reader().await?;
        let mut tx = reader.tx();
        let states: Vec<(DeviceState, i64)> = tx
            .all(
                "SELECT state, COUNT(*) FROM devices GROUP BY state ORDER BY state",
                &[],
            )
            .await?;
        let ending = |days: i64| now + time::Duration::days(days);
        let (in_7, in_30): (i64, i64) = tx
            .one(
                "SELECT COALESCE(SUM(CASE WHEN not_after <= $2 THEN 1 ELSE 0 END), 0), COUNT(*)
                 FROM certificates WHERE status = $1 AND not_after >= $4 AND not_after <= $3",
                &[&CertState::Active, &ending(7), &ending(30), &now],
            )
            .await?;
        // Per issuer, so that the partial index (issuer, revoked_at) is walked, not the table.
        let revoked: i64 = tx
            .one(
                "SELECT COUNT(*) FROM certificates
                 WHERE status = $1 AND issuer IN ('device-identity', 'operational')
                   AND revoked_at >= $2",
                &[&CertState::Revoked, &(now - time::Duration::days(1))],
            )
            .await?;
        Ok(InventoryCounts {
            devices_by_state: states.into_iter().map(|(s, n)| (s, count(n))).collect(),
            ending_7_days: count(in_7),
            ending_30_days: count(in_30),
            revoked_last_day: count(revoked),
        })
    }

    async fn certificates_ending_by_day(
        &self,
        from: OffsetDateTime,
        days: i64,
    ) -> Result<Vec<(i64, u64)>, Error> {
        let day: i64 = 86_400;
        // Through the end of the day `days` from now: what ends within `days` days is all in.
        let start = from.unix_timestamp().div_euclid(day) * day;
        let end = start + (days + 1) * day;
        let mut reader = self.reader().await?;
        let rows: Vec<(i64, i64)> = reader
            .tx()
            .all(
                "SELECT (not_after / $1) * $1 AS ending_day, COUNT(*) FROM certificates
                 WHERE status = $2 AND not_after >= $3 AND not_after < $4
                 GROUP BY ending_day ORDER BY ending_day",
                &[&day, &CertState::Active, &from, &end],
            )
            .await?;
        Ok(rows.into_iter().map(|(d, n)| (d, count(n))).collect())
    }

    async fn audit_buckets(&self, q: &AuditQuery, seconds: i64) -> Result<Vec<Bucket>, Error> {
        if seconds <= 0 {
            return Err(Error::Internal(format!("a bucket of {seconds} s")));
        }
        let filter = LedgerFilter::new(self, q);
        let (success, access) = (Outcome::Success, Action::DataAccess);
        let mut sql = String::from(
            "SELECT (recorded_at / $1) * $1 AS bucket, COUNT(*),
                    COALESCE(SUM(CASE WHEN action = $3 THEN 1 ELSE 0 END), 0),
                    COALESCE(SUM(CASE WHEN outcome <> $2 THEN 1 ELSE 0 END), 0)
             FROM audit_events WHERE 1 = 1",
        );
        let mut args: Vec<&(dyn Bind + Sync)> = vec![&seconds, &success, &access];
        filter.apply(q, &mut sql, &mut args, 4);
        sql.push_str(" GROUP BY bucket ORDER BY bucket");
        let mut reader = self.reader().await?;
        let rows: Vec<(i64, i64, i64, i64)> = reader.tx().all(&sql, &args).await?;
        Ok(rows
            .into_iter()
            .map(|(start, events, accesses, unsuccessful)| Bucket {
                start,
                events: count(events),
                accesses: count(accesses),
                unsuccessful: count(unsuccessful),
            })
            .collect())
    }
}
