//! Manufacturers, devices and principals.

use base64::Engine;
use time::OffsetDateTime;

use super::sql::{FromRow, Row};
use super::{audit, Store};
use crate::audit::AuditEvent;
use crate::domain::{quote, CertSerial, ManufacturerId};
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
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(DeviceState::Active),
            "decommissioned" => Some(DeviceState::Decommissioned),
            _ => None,
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
    pub birth_serial: CertSerial,
}

/// Filters and position for a device listing.
#[derive(Debug, Clone, Default)]
pub struct DeviceQuery {
    pub manufacturer: Option<ManufacturerId>,
    pub model: Option<String>,
    pub state: Option<DeviceState>,
    /// Serials that start with this text (exactly, case and all).
    pub serial_prefix: Option<String>,
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

const MANUFACTURER_COLUMNS: &str =
    "SELECT id, display_name, allowed_models, created_at FROM manufacturers";

impl FromRow for ManufacturerRecord {
    fn from_row(row: &Row<'_>) -> Result<Self, Error> {
        Ok(ManufacturerRecord {
            id: row.get("id")?,
            display_name: row.get("display_name")?,
            allowed_models: serde_json::from_str(row.get("allowed_models")?)
                .map_err(|e| Error::internal("decoding allowed_models", e))?,
            created_at: row.get("created_at")?,
        })
    }
}

/// A row of [`DEVICE_COLUMNS`].
impl FromRow for DeviceRecord {
    fn from_row(row: &Row<'_>) -> Result<Self, Error> {
        Ok(DeviceRecord {
            manufacturer_id: row.get("manufacturer_id")?,
            serial: row.get("serial")?,
            model: row.get("model")?,
            udi_di: row.get("udi_di")?,
            uri: row.get("uri")?,
            state: row.get("state")?,
            enrolled_at: row.get("enrolled_at")?,
            birth_serial: row.get("birth_serial")?,
        })
    }
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
        let mut on = tx.on();
        let exists: Option<String> = on
            .optional("SELECT id FROM manufacturers WHERE id = $1", &[&m.id])
            .await?;
        if exists.is_some() {
            return Err(Error::AlreadyExists(format!(
                "manufacturer {} already exists",
                m.id
            )));
        }
        let models = serde_json::to_string(&m.allowed_models)
            .map_err(|e| Error::internal("encoding models", e))?;
        on.execute(
            "INSERT INTO manufacturers (id, display_name, allowed_models, created_at)
             VALUES ($1, $2, $3, $4)",
            &[&m.id, &m.display_name, &models, &m.created_at],
        )
        .await?;
        audit::append(&mut on, event).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn manufacturer(&self, id: &ManufacturerId) -> Result<ManufacturerRecord, Error> {
        let mut reader = self.reader().await?;
        reader
            .tx()
            .optional(&format!("{MANUFACTURER_COLUMNS} WHERE id = $1"), &[id])
            .await?
            .ok_or_else(|| Error::NotFound(format!("manufacturer {id} does not exist")))
    }

    async fn principal_state(
        &self,
        uri: &str,
    ) -> Result<Option<crate::domain::SubjectState>, Error> {
        let mut reader = self.reader().await?;
        reader
            .tx()
            .optional("SELECT state FROM principals WHERE uri = $1", &[&uri])
            .await
    }

    async fn manufacturers(&self) -> Result<Vec<ManufacturerRecord>, Error> {
        let mut reader = self.reader().await?;
        reader
            .tx()
            .all(&format!("{MANUFACTURER_COLUMNS} ORDER BY id"), &[])
            .await
    }

    async fn device(
        &self,
        manufacturer: &ManufacturerId,
        serial: &str,
    ) -> Result<DeviceRecord, Error> {
        let mut reader = self.reader().await?;
        reader
            .tx()
            .optional(DEVICE_BY_SERIAL, &[manufacturer, &serial])
            .await?
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "device {} of manufacturer {manufacturer} is not enrolled",
                    quote(serial)
                ))
            })
    }

    async fn device_by_uri(&self, uri: &str) -> Result<DeviceRecord, Error> {
        let mut reader = self.reader().await?;
        reader
            .tx()
            .optional(DEVICE_BY_URI, &[&uri])
            .await?
            .ok_or_else(|| Error::NotFound(format!("no device {}", quote(uri))))
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
               AND ($7 IS NULL OR substr(serial, 1, length($7)) = $7)
             ORDER BY manufacturer_id, serial
             LIMIT $6"
        );
        let mut reader = self.reader().await?;
        let mut devices: Vec<DeviceRecord> = reader
            .tx()
            .all(
                &sql,
                &[
                    &q.manufacturer,
                    &q.model,
                    &q.state,
                    &after_m,
                    &after_s,
                    &(i64::from(size) + 1),
                    &q.serial_prefix,
                ],
            )
            .await?;
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
