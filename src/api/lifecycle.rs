//! `LifecycleService`: renewal, revocation, status, CRLs, tokens.

use tonic::{Request, Response, Status};

use super::{convert, Api};
use crate::audit::Target;
use crate::domain::{quote, DeviceSerial, ManufacturerId, RevocationReason};
use crate::error::Error;
use crate::issuance::ocsp::CertStatus;
use crate::issuance::{IssuerId, IssuerName};
use crate::proto::{self, lifecycle_service_server::LifecycleService};
use crate::service::{CertificateStatusQuery, IssuerFilter, NewToken, RevokeTarget};
use crate::store::lifecycle::CertRecord;

fn issuer_of(i: i32, generation: u32) -> Result<IssuerFilter, Error> {
    let name = match proto::Issuer::try_from(i) {
        Ok(proto::Issuer::Unspecified) => None,
        Ok(proto::Issuer::DeviceIdentity) => Some(IssuerName::DeviceIdentity),
        Ok(proto::Issuer::Operational) => Some(IssuerName::Operational),
        Err(_) => return Err(Error::InvalidArgument(format!("unknown issuer {i}"))),
    };
    Ok(IssuerFilter {
        name,
        generation: (generation != 0).then_some(generation),
    })
}

impl Api {
    /// The audit target of a device named in a request, parsed or not.
    fn device_target(&self, d: Option<&proto::DeviceRef>) -> Target {
        match d {
            Some(d) => Target::device(self.td(), &d.manufacturer_id, &d.serial),
            None => Target::devices(),
        }
    }
}

fn proto_issuer(i: IssuerId) -> (i32, u32) {
    let name = match i.name {
        IssuerName::DeviceIdentity => proto::Issuer::DeviceIdentity,
        IssuerName::Operational => proto::Issuer::Operational,
    };
    (name as i32, i.generation)
}

/// The PEM of several certificates, one after another.
fn pem_all(ders: &[Vec<u8>]) -> String {
    ders.iter().map(|d| crate::pem::certificate(d)).collect()
}

fn reason_of(r: i32) -> Result<Option<RevocationReason>, Error> {
    RevocationReason::from_code(i64::from(r))
}

fn device_ref(d: Option<proto::DeviceRef>) -> Result<(ManufacturerId, DeviceSerial), Error> {
    let d = d.ok_or_else(|| Error::InvalidArgument("device is required".into()))?;
    Ok((
        ManufacturerId::parse(&d.manufacturer_id)?,
        DeviceSerial::parse(&d.serial)?,
    ))
}

fn cert_info(c: &CertRecord, state: &str) -> proto::CertificateInfo {
    let (issuer, issuer_generation) = proto_issuer(c.issuer);
    proto::CertificateInfo {
        issuer,
        issuer_generation,
        serial: c.serial.to_hex(),
        profile: c.profile.as_str().to_owned(),
        subject_uri: c.subject_uri.clone(),
        not_before: convert::timestamp(c.not_before),
        not_after: convert::timestamp(c.not_after),
        state: state.to_owned(),
        revoked_at: c.revoked_at.and_then(convert::timestamp),
        revocation_reason: c.reason.map_or(0, |r| r.code() as i32),
    }
}

#[tonic::async_trait]
impl LifecycleService for Api {
    async fn request_operational_certificate(
        &self,
        request: Request<proto::RequestOperationalCertificateRequest>,
    ) -> Result<Response<proto::IssuedCertificate>, Status> {
        let who = self.caller(&request).await?;
        let issued = self.ca.renew(&who, &request.into_inner().csr).await?;
        Ok(Response::new(convert::issued(&issued)))
    }

    async fn revoke(
        &self,
        request: Request<proto::RevokeRequest>,
    ) -> Result<Response<proto::RevokeResponse>, Status> {
        let who = self.caller(&request).await?;
        let req = request.into_inner();
        let audit_target = match &req.target {
            Some(proto::revoke_request::Target::Certificate(c)) => Target::certificate(&c.serial),
            Some(proto::revoke_request::Target::Device(d)) => {
                Target::device(self.td(), &d.manufacturer_id, &d.serial)
            }
            Some(proto::revoke_request::Target::Principal(p)) => {
                convert::principal_target(self.td(), p.role, &p.id, &p.manufacturer_id)
            }
            None => Target::certificates(),
        };
        let parsed = (|| {
            let reason = reason_of(req.reason)?;
            let target = match req.target {
                Some(proto::revoke_request::Target::Certificate(c)) => {
                    if c.serial.is_empty() || crate::domain::unhex(&c.serial).is_none() {
                        return Err(Error::InvalidArgument(format!(
                            "serial {} is not hex",
                            quote(&c.serial)
                        )));
                    }
                    RevokeTarget::Certificate {
                        issuer: issuer_of(c.issuer, c.issuer_generation)?,
                        serial: c.serial,
                    }
                }
                Some(proto::revoke_request::Target::Device(d)) => {
                    let (manufacturer, serial) = device_ref(Some(d))?;
                    RevokeTarget::Device {
                        manufacturer,
                        serial,
                    }
                }
                Some(proto::revoke_request::Target::Principal(p)) => {
                    let (role, id) = convert::principal_of(p.role, &p.id, &p.manufacturer_id)?;
                    RevokeTarget::Principal { role, id }
                }
                None => {
                    return Err(Error::InvalidArgument(
                        "name a certificate, a device or a principal to revoke".into(),
                    ))
                }
            };
            Ok((target, reason))
        })();
        let (target, reason) = self
            .parse(
                &who,
                crate::audit::Action::CertificateRevoke,
                &audit_target,
                parsed,
            )
            .await?;
        let revoked = self.ca.revoke(&who, target, reason).await?;
        Ok(Response::new(proto::RevokeResponse {
            revoked: revoked
                .into_iter()
                .map(|(i, s)| {
                    let (issuer, issuer_generation) = proto_issuer(i);
                    proto::CertificateRef {
                        issuer,
                        issuer_generation,
                        serial: s.to_hex(),
                    }
                })
                .collect(),
        }))
    }

    async fn decommission_device(
        &self,
        request: Request<proto::DecommissionDeviceRequest>,
    ) -> Result<Response<proto::Device>, Status> {
        let who = self.caller(&request).await?;
        let req = request.into_inner();
        let target = self.device_target(req.device.as_ref());
        let parsed = device_ref(req.device).and_then(|d| Ok((d, reason_of(req.reason)?)));
        let ((m, s), reason) = self
            .parse(
                &who,
                crate::audit::Action::DeviceDecommission,
                &target,
                parsed,
            )
            .await?;
        let device = self.ca.decommission(&who, m, s, reason).await?;
        Ok(Response::new(convert::device(&device)))
    }

    async fn list_expiring(
        &self,
        request: Request<proto::ListExpiringRequest>,
    ) -> Result<Response<proto::ListExpiringResponse>, Status> {
        let who = self.caller(&request).await?;
        let req = request.into_inner();
        let parsed = (|| {
            let within = i64::try_from(req.within_seconds)
                .map(time::Duration::seconds)
                .map_err(|_| Error::InvalidArgument("within_seconds is too large".into()))?;
            let m = match req.manufacturer_id.as_str() {
                "" => None,
                m => Some(ManufacturerId::parse(m)?),
            };
            Ok((within, m))
        })();
        let (within, m) = self
            .parse(
                &who,
                crate::audit::Action::CertificateExpiringList,
                &Target::certificates(),
                parsed,
            )
            .await?;
        let certs = self.ca.list_expiring(&who, within, m).await?;
        Ok(Response::new(proto::ListExpiringResponse {
            certificates: certs
                .iter()
                .map(|c| cert_info(c, c.status.as_str()))
                .collect(),
        }))
    }

    async fn get_rotation_status(
        &self,
        request: Request<proto::GetRotationStatusRequest>,
    ) -> Result<Response<proto::RotationStatus>, Status> {
        let who = self.caller(&request).await?;
        let device = request.into_inner().device;
        let target = self.device_target(device.as_ref());
        let (m, s) = self
            .parse(
                &who,
                crate::audit::Action::DeviceRotationRead,
                &target,
                device_ref(device),
            )
            .await?;
        let st = self.ca.rotation_status(&who, m, s.as_str()).await?;
        Ok(Response::new(proto::RotationStatus {
            device: Some(convert::device(&st.device)),
            current: st.current.as_ref().map(|c| cert_info(c, "current")),
            renew_after: st.renew_after.and_then(convert::timestamp),
            overdue: st.overdue,
            history: st.history.iter().map(|(c, s)| cert_info(c, s)).collect(),
        }))
    }

    async fn get_certificate_status(
        &self,
        request: Request<proto::GetCertificateStatusRequest>,
    ) -> Result<Response<proto::CertificateStatus>, Status> {
        let who = self.caller(&request).await?;
        let certificate = request.into_inner().certificate;
        let target = match &certificate {
            Some(proto::get_certificate_status_request::Certificate::Serial(c)) => {
                Target::certificate(&c.serial)
            }
            _ => Target::certificates(),
        };
        let parsed = match certificate {
            Some(proto::get_certificate_status_request::Certificate::Serial(c)) => {
                issuer_of(c.issuer, c.issuer_generation).map(|issuer| {
                    CertificateStatusQuery::Serial {
                        issuer,
                        serial: c.serial,
                    }
                })
            }
            Some(proto::get_certificate_status_request::Certificate::Der(der)) => {
                Ok(CertificateStatusQuery::Der(der))
            }
            None => Err(Error::InvalidArgument(
                "name the certificate by serial or DER".into(),
            )),
        };
        let query = self
            .parse(
                &who,
                crate::audit::Action::CertificateStatus,
                &target,
                parsed,
            )
            .await?;
        let answer = self.ca.certificate_status(&who, query).await?;
        let status = match answer.status {
            CertStatus::Good => proto::CertStatus::Good,
            CertStatus::Revoked { .. } => proto::CertStatus::Revoked,
            CertStatus::Unknown => proto::CertStatus::Unknown,
        };
        Ok(Response::new(proto::CertificateStatus {
            status: status as i32,
            certificate: answer
                .certificate
                .as_ref()
                .map(|c| cert_info(c, c.status.as_str())),
            checked_at: convert::timestamp(answer.checked_at),
        }))
    }

    async fn get_trust_bundle(
        &self,
        request: Request<proto::GetTrustBundleRequest>,
    ) -> Result<Response<proto::TrustBundle>, Status> {
        let who = self.caller(&request).await?;
        let b = self.ca.trust_bundle(&who).await?;
        Ok(Response::new(proto::TrustBundle {
            root_pem: crate::pem::certificate(&b.root),
            device_identity_ca_pem: pem_all(&b.device_identity),
            operational_ca_pem: pem_all(&b.operational),
        }))
    }

    async fn get_crl(
        &self,
        request: Request<proto::GetCrlRequest>,
    ) -> Result<Response<proto::Crl>, Status> {
        let who = self.caller(&request).await?;
        let req = request.into_inner();
        let parsed = issuer_of(req.issuer, req.issuer_generation);
        let filter = self
            .parse(
                &who,
                crate::audit::Action::CrlGet,
                &Target::ca(&format!("issuer-{}", req.issuer)),
                parsed,
            )
            .await?;
        let (id, crl) = self.ca.crl_for(&who, filter).await?;
        let (issuer, issuer_generation) = proto_issuer(id);
        Ok(Response::new(proto::Crl {
            issuer,
            issuer_generation,
            der: crl.der,
            number: crl.number,
            this_update: convert::timestamp(crl.this_update),
            next_update: convert::timestamp(crl.next_update),
        }))
    }

    async fn create_enrollment_token(
        &self,
        request: Request<proto::CreateEnrollmentTokenRequest>,
    ) -> Result<Response<proto::EnrollmentToken>, Status> {
        let who = self.caller(&request).await?;
        let req = request.into_inner();
        let target = Target::device(self.td(), &req.manufacturer_id, &req.serial);
        let parsed = (|| {
            Ok(NewToken {
                manufacturer: ManufacturerId::parse(&req.manufacturer_id)?,
                serial: DeviceSerial::parse(&req.serial)?,
                model: match req.model.as_str() {
                    "" => None,
                    m => Some(crate::domain::Model::parse(m)?),
                },
                ttl: time::Duration::seconds(match req.ttl_seconds {
                    0 => 3600,
                    n => i64::from(n),
                }),
            })
        })();
        let t = self
            .parse(&who, crate::audit::Action::TokenCreate, &target, parsed)
            .await?;
        let (token, expires_at) = self.ca.create_token(&who, t).await?;
        Ok(Response::new(proto::EnrollmentToken {
            token,
            expires_at: convert::timestamp(expires_at),
        }))
    }

    async fn enroll_with_token(
        &self,
        request: Request<proto::EnrollWithTokenRequest>,
    ) -> Result<Response<proto::EnrollDeviceResponse>, Status> {
        // No client certificate needed: the token is the credential.
        let source = super::conn_of(&request)?.remote.ip();
        let req = request.into_inner();
        let token = req.token.clone();
        let input = convert::enroll_input(proto::EnrollDeviceRequest {
            csr: req.csr,
            serial: req.serial,
            model: req.model,
            udi_di: req.udi_di,
        });
        let (device, issued) = self.ca.enroll_with_token(&token, source, input).await?;
        Ok(Response::new(proto::EnrollDeviceResponse {
            device: Some(convert::device(&device)),
            certificate: Some(convert::issued(&issued)),
        }))
    }
}
