//! Renewal (operational certificates), revocation, decommissioning and rotation tracking.

use time::{Duration, OffsetDateTime};

use super::{Ca, Issued, IssuerFilter, Refused};
use crate::audit::{Actor, Target};
use crate::domain::{
    quote, CertSerial, CertState, DeviceSerial, ManufacturerId, Principal, PrincipalId,
    PrincipalRole, Profile, RevocationReason, Role,
};
use crate::error::Error;
use crate::issuance::{IssuerId, IssuerName};
use crate::policy::lifecycle::{
    authorize_eviction, authorize_revocation, may_revoke, missing_revocation_target, renewal_for,
    Renewal, RevocationTarget,
};
use crate::policy::profile::{renew_after, rotation_state, BirthSubject, RotationState};
use crate::policy::{self, Action};
use crate::store::certificates::{Claim, Completion, NewCertificate};
use crate::store::lifecycle::CertRecord;
use crate::store::lifecycle::SubjectChange;
use crate::store::registry::{DeviceRecord, DeviceState};
use crate::store::{CertificateRecords, Registry, RevocationStore};

/// What a revocation names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevokeTarget {
    /// One certificate; the issuer may be left open when the serial is unique.
    Certificate {
        issuer: IssuerFilter,
        serial: String,
    },
    /// Every certificate of a device.
    Device {
        manufacturer: ManufacturerId,
        serial: DeviceSerial,
    },
    /// Every certificate of a station, gateway, auditor or admin, which is then disabled.
    Principal {
        role: PrincipalRole,
        id: PrincipalId,
    },
}

/// A device's rotation: its current operational certificate and its history.
#[derive(Debug, Clone)]
pub struct RotationStatus {
    pub device: DeviceRecord,
    /// The newest unrevoked, unexpired operational certificate.
    pub current: Option<CertRecord>,
    pub renew_after: Option<OffsetDateTime>,
    /// The renewal window of the current certificate is open (renew now), or the device has no
    /// valid operational certificate although it had one.
    pub overdue: bool,
    /// Every certificate of the device, oldest first, with its state at `now`:
    /// current, superseded, revoked, expired or reserved.
    pub history: Vec<(CertRecord, &'static str)>,
}

impl Ca {
    /// Issues an operational certificate to a device (or a fresh certificate to a gateway),
    /// authenticated by its birth or current certificate (docs/ROTATION.md).
    pub async fn renew(&self, who: &Principal, csr: &[u8]) -> Result<Issued, Refused> {
        let action = crate::audit::Action::CertificateRenew;
        let step1 = async {
            // Step 1: who renews, for what; the CSR; the profile. A revoked or expired caller
            // never gets here: authentication refused it.
            let kind = renewal_for(who)?;
            let csr = policy::csr::verify(&crate::pem::csr_der(csr)?)?;
            let now = self.clock.now();
            let op_end = self.authority.current(IssuerName::Operational);
            let serial = crate::issuance::random_serial();
            let (template, profile, completion) = match kind {
                Renewal::DeviceOperational => {
                    let (m, s) = device_of(who)?;
                    let registered = self.manufacturer(&m).await?;
                    // The device's model decides its SDC roles (read only when some are set).
                    let sdc = if self.profiles.sdc_models.is_empty() {
                        Default::default()
                    } else {
                        let model = self.store.device(&m, s.as_str()).await?.model;
                        self.profiles.sdc_roles(&m, &model)
                    };
                    let template = self.profiles.device_operational(
                        serial,
                        now,
                        op_end,
                        &BirthSubject {
                            manufacturer: &m,
                            manufacturer_name: &registered.display_name,
                            serial: &s,
                            udi_di: None,
                        },
                        sdc,
                        csr.public_key.clone(),
                    );
                    let completion = Completion::Renewal {
                        supersede: self
                            .lifecycle
                            .revoke_superseded
                            .then_some(Profile::DeviceOperational),
                    };
                    (template, Profile::DeviceOperational, completion)
                }
                Renewal::Gateway => {
                    let id = who.principal_id.clone().ok_or_else(|| {
                        Error::Internal(format!("gateway {} has no principal id", who.uri))
                    })?;
                    let template = self.profiles.principal(
                        serial,
                        now,
                        op_end,
                        &PrincipalRole::Gateway,
                        &id,
                        csr.public_key.clone(),
                    );
                    (
                        template,
                        Profile::Principal,
                        // A gateway holds one certificate at a time: its older ones are
                        // revoked as superseded, so a stolen earlier one stops working.
                        Completion::Renewal {
                            supersede: Some(Profile::Principal),
                        },
                    )
                }
            };
            Ok((template, profile, completion, csr.spki_sha256))
        };
        let (template, profile, completion, spki) = self
            .audited(who, action, &Target::uri(&who.uri), step1.await)
            .await?;
        let new = NewCertificate {
            template,
            profile,
            role: who.role,
            subject_uri: who.uri.clone(),
            spki_sha256: spki,
            claim: Claim::Renewal {
                rekey_required: self.lifecycle.rekey_required,
                caller_serial: who.certificate_serial.clone(),
            },
        };
        let (issued, recorded) = self
            .run_cycle(&Actor::of(who), action, new, completion)
            .await?;
        // The superseded certificates' CRLs (an older generation's too, during a rollover).
        let published = self.publish_crls_of(recorded.superseded).await;
        self.audited(who, action, &Target::uri(&who.uri), published)
            .await?;
        Ok(issued)
    }

    /// Revokes one certificate or all of a device's, with an RFC 5280 reason. The CRLs of the
    /// affected issuers are re-signed at once.
    pub async fn revoke(
        &self,
        who: &Principal,
        target: RevokeTarget,
        reason: Option<RevocationReason>,
    ) -> Result<Vec<(IssuerId, CertSerial)>, Refused> {
        let action = crate::audit::Action::CertificateRevoke;
        let label = match &target {
            RevokeTarget::Certificate { serial, .. } => format!("certificate/{}", quote(serial)),
            RevokeTarget::Device {
                manufacturer,
                serial,
            } => format!("device/{manufacturer}/{}", quote(serial.as_str())),
            RevokeTarget::Principal { role, id } => {
                return self.evict(who, role, id, reason).await;
            }
        };
        let decide = async {
            // Step 1: the caller's role, before anything is looked up.
            may_revoke(who, &label)?;
            // A target that does not exist reads, to a station or a device, like one that is
            // not theirs (existence is not probed); an admin is told it is not there.
            let certs = match self.revocation_targets(&target).await {
                Err(Error::NotFound(_)) => Vec::new(),
                found => found?,
            };
            let first = certs
                .first()
                .ok_or_else(|| missing_revocation_target(who, &label))?;
            authorize_revocation(
                who,
                RevocationTarget {
                    named: &label,
                    role: first.role,
                    subject_uri: &first.subject_uri,
                    manufacturer: first.manufacturer.as_deref(),
                },
                reason,
            )?;
            let open: Vec<(IssuerId, CertSerial)> = certs
                .iter()
                .filter(|c| c.status != CertState::Revoked)
                .map(|c| (c.issuer, c.serial.clone()))
                .collect();
            if open.is_empty() {
                return Err(Error::FailedPrecondition(format!(
                    "{label} is already revoked"
                )));
            }
            Ok(open)
        };
        let audit_target = match &target {
            RevokeTarget::Certificate { serial, .. } => Target::certificate(serial),
            RevokeTarget::Device {
                manufacturer,
                serial,
            } => self.device_target(manufacturer.as_str(), serial.as_str()),
            RevokeTarget::Principal { .. } => unreachable!("principals are evicted above"),
        };
        let open = self
            .audited(who, action, &audit_target, decide.await)
            .await?;
        let event = self
            .event(who, action, audit_target.clone())
            .with("reason", reason.map(RevocationReason::name));
        // Revoking a device takes every certificate it has when the transaction runs.
        let subject = match &target {
            RevokeTarget::Device {
                manufacturer,
                serial,
            } => Some(self.profiles.trust_domain.device_uri(manufacturer, serial)),
            RevokeTarget::Certificate { .. } | RevokeTarget::Principal { .. } => None,
        };
        let revoked = self
            .store
            .revoke(
                &open,
                subject.as_deref(),
                reason,
                SubjectChange::None,
                &event,
            )
            .await;
        let revoked = self.audited(who, action, &audit_target, revoked).await?;
        let published = self.publish_crls_for(&revoked).await.map_err(|e| {
            Error::Unavailable(format!(
                "{label} is revoked (recorded: medid refuses it and OCSP answers revoked from \
                 now on), but its CRL could not be signed yet: {e}; the upkeep signs it within \
                 a minute of the signer's return"
            ))
        });
        self.audited(who, action, &audit_target, published).await?;
        Ok(revoked)
    }

    /// Principal eviction (admins only): every certificate of the principal is revoked and
    /// the principal is disabled, in one transaction; a renewal signed meanwhile is refused
    /// when it is recorded, so it never delivers. Authentication refuses a disabled
    /// principal's every certificate, so it can call, renew and create tokens no more.
    async fn evict(
        &self,
        who: &Principal,
        role: &PrincipalRole,
        id: &PrincipalId,
        reason: Option<RevocationReason>,
    ) -> Result<Vec<(IssuerId, CertSerial)>, Refused> {
        let action = crate::audit::Action::PrincipalEvict;
        let uri = self.profiles.trust_domain.principal_uri(role, id);
        let decide = async {
            authorize_eviction(who, &uri)?;
            match self.store.principal_state(&uri).await? {
                None => Err(Error::NotFound(format!("no principal {uri}"))),
                Some(crate::domain::SubjectState::Active) => Ok(()),
                Some(state) => Err(Error::FailedPrecondition(format!(
                    "{uri} is already {state}"
                ))),
            }
        };
        self.audited(who, action, &Target::uri(&uri), decide.await)
            .await?;
        let event = self
            .event(who, action, Target::uri(&uri))
            .with("reason", reason.map(RevocationReason::name));
        let revoked = self
            .store
            .revoke(
                &[],
                Some(&uri),
                reason,
                SubjectChange::Disable(&uri),
                &event,
            )
            .await;
        let target = Target::uri(&uri);
        let revoked = self.audited(who, action, &target, revoked).await?;
        let published = self.publish_crls_for(&revoked).await;
        self.audited(who, action, &target, published).await?;
        Ok(revoked)
    }

    async fn revocation_targets(&self, target: &RevokeTarget) -> Result<Vec<CertRecord>, Error> {
        match target {
            RevokeTarget::Certificate { issuer, serial } => {
                let serial = CertSerial::parse_hex(serial)?;
                let issuers = self.issuers_matching(*issuer);
                let mut found = Vec::new();
                for i in issuers {
                    found.extend(self.store.certificate(i, &serial).await?);
                }
                if found.len() > 1 {
                    return Err(Error::InvalidArgument(format!(
                        "serial {serial} exists under more than one issuing CA; name the issuer and its generation"
                    )));
                }
                if found.is_empty() {
                    return Err(Error::NotFound(format!(
                        "no certificate with serial {serial}"
                    )));
                }
                Ok(found)
            }
            RevokeTarget::Device {
                manufacturer,
                serial,
            } => {
                let device = self.store.device(manufacturer, serial.as_str()).await?;
                self.store.certificates_of(&device.uri).await
            }
            RevokeTarget::Principal { role, id } => {
                let uri = self.profiles.trust_domain.principal_uri(role, id);
                self.store.certificates_of(&uri).await
            }
        }
    }

    /// Revokes every certificate of a device and blocks further issuance to it.
    pub async fn decommission(
        &self,
        who: &Principal,
        manufacturer: ManufacturerId,
        serial: DeviceSerial,
        reason: Option<RevocationReason>,
    ) -> Result<DeviceRecord, Refused> {
        let action = Action::Decommission {
            manufacturer: &manufacturer,
        };
        let label = format!("device/{manufacturer}/{}", quote(serial.as_str()));
        let reason = reason.or(Some(RevocationReason::CessationOfOperation));
        let decide = async {
            policy::authorize(who, action)?;
            let device = self.store.device(&manufacturer, serial.as_str()).await?;
            if device.state == DeviceState::Decommissioned {
                return Err(Error::FailedPrecondition(format!(
                    "{label} is already decommissioned"
                )));
            }
            let certs = self.store.certificates_of(&device.uri).await?;
            Ok(certs
                .iter()
                .filter(|c| c.status != CertState::Revoked)
                .map(|c| (c.issuer, c.serial.clone()))
                .collect::<Vec<_>>())
        };
        let target = self.device_target(manufacturer.as_str(), serial.as_str());
        let open = self
            .audited(who, action.audit(), &target, decide.await)
            .await?;
        let event = self
            .event(who, action.audit(), target.clone())
            .with("reason", reason.map(RevocationReason::name));
        let revoked = self
            .store
            .revoke(
                &open,
                Some(
                    &self
                        .profiles
                        .trust_domain
                        .device_uri(&manufacturer, &serial),
                ),
                reason,
                SubjectChange::Decommission(&manufacturer, serial.as_str()),
                &event,
            )
            .await;
        let done = async {
            self.publish_crls_for(&revoked?).await?;
            self.store.device(&manufacturer, serial.as_str()).await
        };
        self.audited(who, action.audit(), &target, done.await).await
    }

    async fn publish_crls_for(&self, revoked: &[(IssuerId, CertSerial)]) -> Result<(), Error> {
        self.publish_crls_of(revoked.iter().map(|(i, _)| *i).collect())
            .await
    }

    /// Rotation status of one device: admins, the device's own manufacturer's stations, and
    /// the device itself.
    pub async fn rotation_status(
        &self,
        who: &Principal,
        manufacturer: ManufacturerId,
        serial: &str,
    ) -> Result<RotationStatus, Refused> {
        let target = self.device_target(manufacturer.as_str(), serial);
        // Authorize on the URI the device would have, before any lookup: a caller who may
        // not read it learns nothing, not even whether it exists.
        let read = async {
            let uri = crate::domain::DeviceSerial::parse(serial)
                .map(|s| self.profiles.trust_domain.device_uri(&manufacturer, &s))
                .unwrap_or_default();
            policy::authorize(
                who,
                Action::ReadRotation {
                    manufacturer: &manufacturer,
                    device_uri: &uri,
                },
            )?;
            let device = self.store.device(&manufacturer, serial).await?;
            let certs = self.store.certificates_of(&device.uri).await?;
            Ok(rotation(device, certs, self.clock.now()))
        };
        self.audited(
            who,
            crate::audit::Action::DeviceRotationRead,
            &target,
            read.await,
        )
        .await
    }

    /// Active certificates that expire within `within`, for admins.
    pub async fn list_expiring(
        &self,
        who: &Principal,
        within: Duration,
        manufacturer: Option<ManufacturerId>,
    ) -> Result<Vec<CertRecord>, Refused> {
        let action = Action::ListExpiring;
        let listed = async {
            policy::authorize(who, action)?;
            if within < Duration::ZERO || within > Duration::days(3650) {
                return Err(Error::InvalidArgument(
                    "within must be 0 to 3650 days".into(),
                ));
            }
            self.store
                .expiring(self.clock.now() + within, manufacturer.as_ref(), 10_000)
                .await
        };
        self.audited(who, action.audit(), &Target::certificates(), listed.await)
            .await
    }
}

fn device_of(who: &Principal) -> Result<(ManufacturerId, DeviceSerial), Error> {
    match (&who.manufacturer, &who.device_serial, who.role) {
        (Some(m), Some(s), Role::Device) => Ok((m.clone(), s.clone())),
        _ => Err(Error::Internal(format!(
            "device principal {} lacks its scope",
            who.uri
        ))),
    }
}

/// Pure: a device's rotation status from its certificates at `now`.
fn rotation(device: DeviceRecord, certs: Vec<CertRecord>, now: OffsetDateTime) -> RotationStatus {
    let operational = |c: &&CertRecord| c.profile == Profile::DeviceOperational;
    let current = certs
        .iter()
        .filter(operational)
        .filter(|c| c.status == CertState::Active && c.not_before <= now && now <= c.not_after)
        .max_by_key(|c| c.issue_order)
        .cloned();
    let had_one = certs.iter().any(|c| operational(&c));
    let renew = current
        .as_ref()
        .map(|c| renew_after(c.not_before, c.not_after));
    let overdue = match &current {
        Some(c) => rotation_state(c.not_before, c.not_after, now) != RotationState::Fresh,
        None => had_one,
    };
    let history = certs
        .into_iter()
        .map(|c| {
            let state = if c.status != CertState::Active {
                c.status.as_str()
            } else if now > c.not_after {
                "expired"
            } else if c.profile == Profile::DeviceBirth {
                "birth"
            } else if current.as_ref().is_some_and(|cur| cur.serial == c.serial) {
                "current"
            } else {
                "superseded"
            };
            (c, state)
        })
        .collect();
    RotationStatus {
        device,
        current,
        renew_after: renew,
        overdue,
        history,
    }
}
