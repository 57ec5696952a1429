//! The access-anomaly state (`policy::anomaly`): device profiles, who has reached which
//! device, and the flags, saved with the watcher's cursor in one transaction so that each
//! access event is counted exactly once whatever stops in between.

use std::collections::{HashMap, HashSet};

use time::OffsetDateTime;

use super::sql::{FromRow, Row};
use super::Store;
use crate::error::Error;
use crate::policy::anomaly::{AccessProfile, FlagKind, TRAILING_DAYS};

/// The cursor's key in `feed_cursors`.
pub const CURSOR: &str = "anomaly-flags";

/// One flag: the access event (`seq`) that raised it and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flag {
    pub seq: i64,
    pub kind: FlagKind,
    pub device_uri: String,
    pub user_id: Option<String>,
    pub occurred_at: OffsetDateTime,
    pub explanation: String,
}

/// Which flags to list: newest first, before `before` (a seq; 0: from the newest).
#[derive(Debug, Clone, Default)]
pub struct FlagQuery {
    pub kind: Option<FlagKind>,
    pub device_uri: Option<String>,
    pub before: i64,
    pub limit: i64,
}

/// What one pass of the watcher changes.
#[derive(Debug, Default)]
pub struct AnomalyPass {
    pub profiles: Vec<AccessProfile>,
    pub contacts: Vec<(String, String)>,
    pub flags: Vec<Flag>,
}

fn counts<const N: usize>(text: &str) -> Result<[u64; N], Error> {
    let parsed: Vec<u64> = text
        .split(',')
        .map(|n| n.parse::<u64>())
        .collect::<Result<_, _>>()
        .map_err(|_| Error::Integrity(format!("bad counts in access_profiles: {text:?}")))?;
    parsed
        .try_into()
        .map_err(|_| Error::Integrity(format!("{N} counts expected in access_profiles: {text:?}")))
}

fn joined(counts: &[u64]) -> String {
    counts
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn unsigned(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

impl FromRow for AccessProfile {
    fn from_row(row: &Row<'_>) -> Result<Self, Error> {
        Ok(AccessProfile {
            device_uri: row.get("device_uri")?,
            accesses: unsigned(row.get("accesses")?),
            hours: counts::<24>(&row.get::<String>("hours")?)?,
            first_day: row.get("first_day")?,
            day: row.get("day")?,
            day_count: unsigned(row.get("day_count")?),
            volume_flagged: row.get::<i64>("volume_flagged")? != 0,
            trailing: counts::<TRAILING_DAYS>(&row.get::<String>("trailing_days")?)?,
        })
    }
}

impl FromRow for Flag {
    fn from_row(row: &Row<'_>) -> Result<Self, Error> {
        let kind: String = row.get("kind")?;
        Ok(Flag {
            seq: row.get("seq")?,
            kind: FlagKind::parse(&kind)
                .ok_or_else(|| Error::Integrity(format!("unknown flag kind {kind:?}")))?,
            device_uri: row.get("device_uri")?,
            user_id: row.get("user_id")?,
            occurred_at: row.get("occurred_at")?,
            explanation: row.get("explanation")?,
        })
    }
}

/// Statements with one placeholder per item: `$1, $2, …`.
fn placeholders(from: usize, n: usize) -> String {
    (from..from + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl super::AnomalyStore for Store {
    async fn access_profiles(
        &self,
        devices: &[String],
    ) -> Result<HashMap<String, AccessProfile>, Error> {
        let mut out = HashMap::new();
        let mut reader = self.reader().await?;
        for chunk in devices.chunks(200) {
            let sql = format!(
                "SELECT device_uri, accesses, hours, first_day, day, day_count, volume_flagged,
                        trailing_days
                 FROM access_profiles WHERE device_uri IN ({})",
                placeholders(1, chunk.len())
            );
            let args: Vec<&(dyn super::sql::Bind + Sync)> = chunk
                .iter()
                .map(|d| d as &(dyn super::sql::Bind + Sync))
                .collect();
            let rows: Vec<AccessProfile> = reader.tx().all(&sql, &args).await?;
            out.extend(rows.into_iter().map(|p| (p.device_uri.clone(), p)));
        }
        Ok(out)
    }

    async fn known_contacts(
        &self,
        device: &str,
        users: &[String],
    ) -> Result<HashSet<String>, Error> {
        let mut out = HashSet::new();
        let mut reader = self.reader().await?;
        for chunk in users.chunks(200) {
            let sql = format!(
                "SELECT user_id FROM access_contacts WHERE device_uri = $1 AND user_id IN ({})",
                placeholders(2, chunk.len())
            );
            let mut args: Vec<&(dyn super::sql::Bind + Sync)> = vec![&device];
            args.extend(chunk.iter().map(|u| u as &(dyn super::sql::Bind + Sync)));
            let rows: Vec<String> = reader.tx().all(&sql, &args).await?;
            out.extend(rows);
        }
        Ok(out)
    }

    async fn save_anomaly_pass(
        &self,
        pass: AnomalyPass,
        from: u64,
        through: u64,
        at: OffsetDateTime,
    ) -> Result<bool, Error> {
        let (from, through) = (
            i64::try_from(from).map_err(|_| Error::Internal("cursor out of range".into()))?,
            i64::try_from(through).map_err(|_| Error::Internal("cursor out of range".into()))?,
        );
        let mut tx = self.begin_write().await?;
        let mut on = tx.on();
        on.execute(
            "INSERT INTO feed_cursors (destination, sent_through, updated_at) VALUES ($1, 0, $2)
             ON CONFLICT (destination) DO NOTHING",
            &[&CURSOR, &at],
        )
        .await?;
        // Only from where this pass started: a replica that got there first wins, and this
        // pass is dropped (nothing counted twice).
        let moved = on
            .execute(
                "UPDATE feed_cursors SET sent_through = $1, updated_at = $2
                 WHERE destination = $3 AND sent_through = $4",
                &[&through, &at, &CURSOR, &from],
            )
            .await?;
        if moved == 0 {
            // Dropped uncommitted: rolled back.
            return Ok(false);
        }
        for p in &pass.profiles {
            let (accesses, day_count) = (p.accesses as i64, p.day_count as i64);
            let flagged = i64::from(p.volume_flagged);
            let (hours, trailing) = (joined(&p.hours), joined(&p.trailing));
            on.execute(
                "INSERT INTO access_profiles (device_uri, accesses, hours, first_day, day,
                     day_count, volume_flagged, trailing_days)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (device_uri) DO UPDATE SET accesses = excluded.accesses,
                     hours = excluded.hours, first_day = excluded.first_day, day = excluded.day,
                     day_count = excluded.day_count, volume_flagged = excluded.volume_flagged,
                     trailing_days = excluded.trailing_days",
                &[
                    &p.device_uri,
                    &accesses,
                    &hours,
                    &p.first_day,
                    &p.day,
                    &day_count,
                    &flagged,
                    &trailing,
                ],
            )
            .await?;
        }
        for (device, user) in &pass.contacts {
            on.execute(
                "INSERT INTO access_contacts (device_uri, user_id) VALUES ($1, $2)
                 ON CONFLICT (device_uri, user_id) DO NOTHING",
                &[device, user],
            )
            .await?;
        }
        for f in &pass.flags {
            on.execute(
                "INSERT INTO access_flags (seq, kind, device_uri, user_id, occurred_at,
                     explanation)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (seq, kind) DO NOTHING",
                &[
                    &f.seq,
                    &f.kind.as_str(),
                    &f.device_uri,
                    &f.user_id,
                    &f.occurred_at,
                    &f.explanation,
                ],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn flags(&self, q: &FlagQuery) -> Result<Vec<Flag>, Error> {
        let before = if q.before <= 0 { i64::MAX } else { q.before };
        let kind = q.kind.map(|k| k.as_str().to_owned());
        let mut reader = self.reader().await?;
        reader
            .tx()
            .all(
                "SELECT seq, kind, device_uri, user_id, occurred_at, explanation
                 FROM access_flags
                 WHERE seq < $1 AND ($2 IS NULL OR kind = $2) AND ($3 IS NULL OR device_uri = $3)
                 ORDER BY seq DESC, kind LIMIT $4",
                &[&before, &kind, &q.device_uri, &q.limit.clamp(1, 500)],
            )
            .await
    }

    async fn flag_counts(&self, since: OffsetDateTime) -> Result<Vec<(FlagKind, u64)>, Error> {
        let mut reader = self.reader().await?;
        let rows: Vec<(String, i64)> = reader
            .tx()
            .all(
                "SELECT kind, COUNT(*) FROM access_flags WHERE occurred_at >= $1
                 GROUP BY kind ORDER BY kind",
                &[&since],
            )
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(k, n)| Some((FlagKind::parse(&k)?, unsigned(n))))
            .collect())
    }
}
