//! proto ↔ domain. Requests become validated domain values here (parse, don't validate).

use prost_types::Timestamp;
use time::OffsetDateTime;

use crate::domain::{DeviceSerial, Gtin14, ManufacturerId, Model, PrincipalId, PrincipalRole};
use crate::error::Error;
use crate::proto;
use crate::service::{EnrollInput, Issued, NewManufacturer};
use crate::store::registry::{DeviceQuery, DeviceRecord, DeviceState, ManufacturerRecord};

pub fn timestamp(t: OffsetDateTime) -> Option<Timestamp> {
    Some(Timestamp {
        seconds: t.unix_timestamp(),
        nanos: 0,
    })
}

pub fn new_manufacturer(req: proto::CreateManufacturerRequest) -> Result<NewManufacturer, Error> {
    Ok(NewManufacturer {
        id: ManufacturerId::parse(&req.id)?,
        display_name: crate::domain::organization_name(&req.display_name)?,
        allowed_models: req
            .allowed_models
            .iter()
            .map(|m| Model::parse(m))
            .collect::<Result<_, _>>()?,
    })
}

pub fn manufacturer(m: &ManufacturerRecord) -> proto::Manufacturer {
    proto::Manufacturer {
        id: m.id.to_string(),
        display_name: m.display_name.clone(),
        allowed_models: m.allowed_models.clone(),
        created_at: timestamp(m.created_at),
    }
}

pub fn principal_role(
    req: &proto::IssuePrincipalCertificateRequest,
) -> Result<(PrincipalRole, PrincipalId), Error> {
    principal_of(req.role, &req.id, &req.manufacturer_id)
}

/// The audit target of a principal named by role, id and (stations) manufacturer, whether or
/// not they parse.
pub fn principal_target(
    td: &crate::domain::TrustDomain,
    role: i32,
    id: &str,
    manufacturer_id: &str,
) -> crate::audit::Target {
    use crate::audit::Target;
    use proto::PrincipalRole as R;
    match R::try_from(role) {
        Ok(R::Admin) => Target::principal(td, &PrincipalRole::Admin, id),
        Ok(R::Gateway) => Target::principal(td, &PrincipalRole::Gateway, id),
        Ok(R::Auditor) => Target::principal(td, &PrincipalRole::Auditor, id),
        Ok(R::ManufacturerStation) => Target::station(td, manufacturer_id, id),
        Ok(R::Unspecified) | Err(_) => Target::unknown_principal(id),
    }
}

/// A principal named by its role, id and (stations only) manufacturer.
pub fn principal_of(
    role: i32,
    id: &str,
    manufacturer_id: &str,
) -> Result<(PrincipalRole, PrincipalId), Error> {
    use proto::PrincipalRole as R;
    let role = match R::try_from(role) {
        Ok(R::Admin) => PrincipalRole::Admin,
        Ok(R::Gateway) => PrincipalRole::Gateway,
        Ok(R::Auditor) => PrincipalRole::Auditor,
        Ok(R::ManufacturerStation) => {
            PrincipalRole::Station(ManufacturerId::parse(manufacturer_id)?)
        }
        Ok(R::Unspecified) | Err(_) => {
            return Err(Error::InvalidArgument(
                "role must be admin, manufacturer-station, gateway or auditor".into(),
            ))
        }
    };
    if !matches!(role, PrincipalRole::Station(_)) && !manufacturer_id.is_empty() {
        return Err(Error::InvalidArgument(
            "manufacturer_id applies only to manufacturer-station certificates".into(),
        ));
    }
    Ok((role, PrincipalId::parse(id)?))
}

pub fn issued(i: &Issued) -> proto::IssuedCertificate {
    proto::IssuedCertificate {
        certificate_pem: crate::pem::certificate(&i.der),
        chain_pem: i.chain.iter().map(|c| crate::pem::certificate(c)).collect(),
        root_pem: crate::pem::certificate(&i.root),
        serial: i.serial.clone(),
        subject_uri: i.subject_uri.clone(),
        not_before: timestamp(i.not_before),
        not_after: timestamp(i.not_after),
    }
}

pub fn enroll_input(req: proto::EnrollDeviceRequest) -> Result<EnrollInput, Error> {
    Ok(EnrollInput {
        serial: DeviceSerial::parse(&req.serial)?,
        model: Model::parse(&req.model)?,
        udi_di: match req.udi_di.as_str() {
            "" => None,
            s => Some(Gtin14::parse(s)?),
        },
        csr: req.csr,
    })
}

pub fn device(d: &DeviceRecord) -> proto::Device {
    proto::Device {
        manufacturer_id: d.manufacturer_id.clone(),
        serial: d.serial.clone(),
        model: d.model.clone(),
        udi_di: d.udi_di.clone().unwrap_or_default(),
        uri: d.uri.clone(),
        state: match d.state {
            DeviceState::Active => proto::DeviceState::Active,
            DeviceState::Decommissioned => proto::DeviceState::Decommissioned,
        } as i32,
        enrolled_at: timestamp(d.enrolled_at),
        birth_certificate_serial: d.birth_serial.to_hex(),
    }
}

pub fn device_query(req: proto::ListDevicesRequest) -> Result<DeviceQuery, Error> {
    if req.page_size > 500 {
        return Err(Error::InvalidArgument(
            "page_size must be at most 500".into(),
        ));
    }
    Ok(DeviceQuery {
        manufacturer: match req.manufacturer_id.as_str() {
            "" => None,
            m => Some(ManufacturerId::parse(m)?),
        },
        model: match req.model.as_str() {
            "" => None,
            m => Some(Model::parse(m)?.as_str().to_owned()),
        },
        state: match proto::DeviceState::try_from(req.state) {
            Ok(proto::DeviceState::Unspecified) => None,
            Ok(proto::DeviceState::Active) => Some(DeviceState::Active),
            Ok(proto::DeviceState::Decommissioned) => Some(DeviceState::Decommissioned),
            Err(_) => return Err(Error::InvalidArgument("unknown device state".into())),
        },
        serial_prefix: match req.serial_prefix.as_str() {
            "" => None,
            p if p.len() > 64 => {
                return Err(Error::InvalidArgument(
                    "serial_prefix must be at most 64 characters (a serial's length)".into(),
                ))
            }
            p => Some(p.to_owned()),
        },
        page_size: req.page_size,
        page_token: match req.page_token.as_str() {
            "" => None,
            t => Some(t.to_owned()),
        },
    })
}
