//! The audit feeds' durable cursors.

use time::OffsetDateTime;

use super::Store;
use crate::error::Error;

impl super::FeedCursors for Store {
    async fn feed_cursor(&self, destination: &str) -> Result<u64, Error> {
        let mut reader = self.reader().await?;
        let seq: Option<u64> = reader
            .tx()
            .optional(
                "SELECT sent_through FROM feed_cursors WHERE destination = $1",
                &[&destination],
            )
            .await?;
        Ok(seq.unwrap_or(0))
    }

    async fn set_feed_cursor(
        &self,
        destination: &str,
        seq: u64,
        at: OffsetDateTime,
    ) -> Result<(), Error> {
        let seq = i64::try_from(seq)
            .map_err(|_| Error::Internal(format!("feed cursor {seq} out of range")))?;
        let mut tx = self.begin_write().await?;
        tx.on()
            .execute(
                "INSERT INTO feed_cursors (destination, sent_through, updated_at)
                 VALUES ($1, $2, $3)
                 ON CONFLICT (destination) DO UPDATE
                 SET sent_through = excluded.sent_through, updated_at = excluded.updated_at",
                &[&destination, &seq, &at],
            )
            .await?;
        tx.commit().await
    }
}
