//! Manufacturers, devices and principals.

use base64::Engine;
use sqlx::Row as _;
use time::OffsetDateTime;

use super::sql::{Arg, Row, SqlxTx};
use super::{audit, from_unix, to_unix, Store};
use crate::audit::AuditEvent;
use crate::domain::{quote, ManufacturerId};
use crate::error::Error;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManufacturerRecord {
    pub id: ManufacturerId,
    pub display_name: String,
    pub allowed_models: Vec<String>,
    pub created_at: OffsetDateTime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceState {
    Active,
    Decommissioned,
}

impl DeviceState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceState::Active => "active",
            DeviceState::Decommissioned => "decommissioned",
        }
    }
    fn parse(s: &str) -> Result<Self, Error> {
        match s {
            "active" => Ok(DeviceState::Active),
            "decommissioned" => Ok(DeviceState::Decommissioned),
            other => Err(Error::Internal(format!("unknown device state {other:?}"))),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    pub manufacturer_id: String,
    pub serial: String,
    pub model: String,
    pub udi_di: Option<String>,
    pub uri: String,
    pub state: DeviceState,
    pub enrolled_at: OffsetDateTime,
    pub birth_serial: String,
}

/// Filters and position for a device listing.
#[derive(Debug, Clone, Default)]
pub struct DeviceQuery {
    pub manufacturer: Option<ManufacturerId>,
    pub model: Option<String>,
    pub state: Option<DeviceState>,
    pub page_size: u32,
    /// Opaque keyset cursor from a previous page.
    pub page_token: Option<String>,
}

const DEVICE_COLUMNS: &str = "SELECT manufacturer_id, serial, model, udi_di, uri, state, \
                              enrolled_at, birth_serial FROM devices";
const DEVICE_BY_SERIAL: &str = "SELECT manufacturer_id, serial, model, udi_di, uri, state, \
                                enrolled_at, birth_serial FROM devices \
                                WHERE manufacturer_id = $1 AND serial = $2";
const DEVICE_BY_URI: &str = "SELECT manufacturer_id, serial, model, udi_di, uri, state, \
                             enrolled_at, birth_serial FROM devices WHERE uri = $1";

fn decode_manufacturer(row: &super::DbRow) -> Result<ManufacturerRecord, Error> {
    let models: String = row.try_get("allowed_models")?;
    Ok(ManufacturerRecord {
        id: ManufacturerId::parse(&row.try_get::<String, _>("id")?)?,
        display_name: row.try_get("display_name")?,
        allowed_models: serde_json::from_str(&models)
            .map_err(|e| Error::internal("decoding allowed_models", e))?,
        created_at: from_unix(row.try_get("created_at")?)?,
    })
}

/// A row of [`DEVICE_COLUMNS`], by position.
fn decode_device(row: &Row) -> Result<DeviceRecord, Error> {
    Ok(DeviceRecord {
        manufacturer_id: row.text(0)?.to_owned(),
        serial: row.text(1)?.to_owned(),
        model: row.text(2)?.to_owned(),
        udi_di: row.opt_text(3)?.map(str::to_owned),
        uri: row.text(4)?.to_owned(),
        state: DeviceState::parse(row.text(5)?)?,
        enrolled_at: from_unix(row.int(6)?)?,
        birth_serial: row.text(7)?.to_owned(),
    })
}

fn encode_cursor(manufacturer: &str, serial: &str) -> String {
    let json = serde_json::json!([manufacturer, serial]).to_string();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
}

fn decode_cursor(token: &str) -> Result<(String, String), Error> {
    let bad = || Error::InvalidArgument("page_token is not one this server issued".into());
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    serde_json::from_slice(&bytes).map_err(|_| bad())
}

impl super::Registry for Store {
    async fn create_manufacturer(
        &self,
        m: &ManufacturerRecord,
        event: &AuditEvent,
    ) -> Result<(), Error> {
        let mut tx = self.begin_write().await?;
        let exists: Option<String> =
            sqlx::query_scalar("SELECT id FROM manufacturers WHERE id = $1")
                .bind(m.id.as_str())
                .fetch_optional(&mut *tx)
                .await?;
        if exists.is_some() {
            return Err(Error::AlreadyExists(format!(
                "manufacturer {} already exists",
                m.id
            )));
        }
        let models = serde_json::to_string(&m.allowed_models)
            .map_err(|e| Error::internal("encoding models", e))?;
        sqlx::query(
            "INSERT INTO manufacturers (id, display_name, allowed_models, created_at)
             VALUES ($1, $2, $3, $4)",
        )
        .bind(m.id.as_str())
        .bind(&m.display_name)
        .bind(models)
        .bind(to_unix(m.created_at))
        .execute(&mut *tx)
        .await?;
        audit::append(&mut SqlxTx(&mut *tx), event).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn manufacturer(&self, id: &ManufacturerId) -> Result<ManufacturerRecord, Error> {
        let row = sqlx::query(
            "SELECT id, display_name, allowed_models, created_at FROM manufacturers WHERE id = $1",
        )
        .bind(id.as_str())
        .fetch_optional(&self.reader)
        .await?
        .ok_or_else(|| Error::NotFound(format!("manufacturer {id} does not exist")))?;
        decode_manufacturer(&row)
    }

    async fn principal_state(
        &self,
        uri: &str,
    ) -> Result<Option<crate::domain::SubjectState>, Error> {
        let state: Option<String> =
            sqlx::query_scalar("SELECT state FROM principals WHERE uri = $1")
                .bind(uri)
                .fetch_optional(&self.reader)
                .await?;
        state
            .map(|s| super::decode(&s, "principal state", crate::domain::SubjectState::parse))
            .transpose()
    }

    async fn manufacturers(&self) -> Result<Vec<ManufacturerRecord>, Error> {
        let rows = sqlx::query(
            "SELECT id, display_name, allowed_models, created_at FROM manufacturers ORDER BY id",
        )
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(decode_manufacturer).collect()
    }

    async fn device(
        &self,
        manufacturer: &ManufacturerId,
        serial: &str,
    ) -> Result<DeviceRecord, Error> {
        let mut reader = self.reader().await?;
        reader
            .tx()
            .fetch_optional(
                DEVICE_BY_SERIAL,
                &[Arg::Text(manufacturer.as_str()), Arg::Text(serial)],
            )
            .await?
            .map(|row| decode_device(&row))
            .unwrap_or_else(|| {
                Err(Error::NotFound(format!(
                    "device {} of manufacturer {manufacturer} is not enrolled",
                    quote(serial)
                )))
            })
    }

    async fn device_by_uri(&self, uri: &str) -> Result<DeviceRecord, Error> {
        let mut reader = self.reader().await?;
        reader
            .tx()
            .fetch_optional(DEVICE_BY_URI, &[Arg::Text(uri)])
            .await?
            .map(|row| decode_device(&row))
            .unwrap_or_else(|| Err(Error::NotFound(format!("no device {}", quote(uri)))))
    }

    async fn devices(&self, q: &DeviceQuery) -> Result<(Vec<DeviceRecord>, Option<String>), Error> {
        let size = match q.page_size {
            0 => 100,
            n => n.min(500),
        };
        let cursor = match &q.page_token {
            Some(t) => Some(decode_cursor(t)?),
            None => None,
        };
        let (after_m, after_s) = cursor.unwrap_or_default();
        let sql = format!(
            "{DEVICE_COLUMNS}
             WHERE ($1 IS NULL OR manufacturer_id = $1)
               AND ($2 IS NULL OR model = $2)
               AND ($3 IS NULL OR state = $3)
               AND (manufacturer_id, serial) > ($4, $5)
             ORDER BY manufacturer_id, serial
             LIMIT $6"
        );
        let mut reader = self.reader().await?;
        let rows = reader
            .tx()
            .fetch_all(
                &sql,
                &[
                    Arg::OptText(q.manufacturer.as_ref().map(|m| m.as_str())),
                    Arg::OptText(q.model.as_deref()),
                    Arg::OptText(q.state.map(DeviceState::as_str)),
                    Arg::from(&after_m),
                    Arg::from(&after_s),
                    Arg::Int(i64::from(size) + 1),
                ],
            )
            .await?;
        let mut devices = rows
            .iter()
            .map(decode_device)
            .collect::<Result<Vec<_>, _>>()?;
        let next = if devices.len() > size as usize {
            devices.truncate(size as usize);
            devices
                .last()
                .map(|d| encode_cursor(&d.manufacturer_id, &d.serial))
        } else {
            None
        };
        Ok((devices, next))
    }
}
