//! Device enrollment: by a manufacturer's provisioning station (mTLS), or by the device itself
//! with a one-time token created by an admin or station.

use base64::Engine;
use ring::rand::{SecureRandom, SystemRandom};
use time::{Duration, OffsetDateTime};

use super::{Ca, Issued, Refused};
use crate::audit::{Actor, Target};
use crate::domain::{quote, DeviceSerial, Gtin14, ManufacturerId, Model, Principal, Role};
use crate::error::Error;
use crate::policy::{self, profile::BirthSubject, Action};
use crate::store::certificates::{Claim, Completion, NewCertificate};
use crate::store::lifecycle::TokenRecord;
use crate::store::registry::DeviceRecord;
use crate::store::{Registry, TokenStore};

/// The longest a one-time enrollment token may live.
pub const MAX_TOKEN_TTL: Duration = Duration::hours(24);

/// An enrollment request, validated except for the CSR (checked in step 1 so its refusal
/// is audited like every other).
#[derive(Debug, Clone)]
pub struct EnrollInput {
    pub csr: Vec<u8>,
    pub serial: DeviceSerial,
    pub model: Model,
    pub udi_di: Option<Gtin14>,
}

/// A token to create, validated.
#[derive(Debug, Clone)]
pub struct NewToken {
    pub manufacturer: ManufacturerId,
    pub serial: DeviceSerial,
    pub model: Option<Model>,
    pub ttl: Duration,
}

/// SHA-256 (hex) of a token: the only form the store ever sees.
fn token_hash(token: &str) -> String {
    crate::domain::hex(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref())
}

/// The actor that used a token: named by a prefix of the token's hash, never the token.
fn token_actor(hash: &str) -> Actor {
    Actor {
        uri: format!("token:{}", &hash[..16]),
        role: "enrollment-token".into(),
    }
}

impl Ca {
    /// Enrolls a device at the factory and returns its birth certificate.
    pub async fn enroll_device(
        &self,
        who: &Principal,
        input: EnrollInput,
    ) -> Result<(DeviceRecord, Issued), Refused> {
        let manufacturer = match policy::enrollment_scope(who) {
            Ok(m) => m,
            Err(err) => {
                let target = self.device_target(
                    who.manufacturer.as_ref().map_or("", |m| m.as_str()),
                    input.serial.as_str(),
                );
                return Err(self
                    .refuse(who, crate::audit::Action::DeviceEnroll, &target, err)
                    .await);
            }
        };
        let action = Action::EnrollDevice {
            manufacturer: &manufacturer,
        };
        let authorized = policy::authorize(who, action);
        self.enroll(
            &Actor::of(who),
            manufacturer.clone(),
            input,
            None,
            authorized,
        )
        .await
    }

    /// Enrollment with a one-time token, without a client certificate (issue #3).
    pub async fn enroll_with_token(
        &self,
        token: &str,
        source: std::net::IpAddr,
        input: Result<EnrollInput, Error>,
    ) -> Result<(DeviceRecord, Issued), Refused> {
        // Step 0: a token holder is not authenticated until its token is found, so a source
        // over its refusal rate is refused before any lookup.
        self.admit_anonymous(source)?;
        let hash = token_hash(token);
        let actor = token_actor(&hash);
        let record = self
            .store
            .token(&hash)
            .await
            .map_err(|e| self.failed_before_identity(e))?;
        let now = self.clock.now();
        let spent = || {
            Error::PermissionDenied(
                "the enrollment token is unknown, expired or already used".into(),
            )
        };
        let record = match record {
            Some(t) if t.used_at.is_none() && t.expires_at >= now => t,
            // Anyone can guess tokens: counted in aggregate, not one event each.
            _ => {
                let reason = super::anonymous::AnonymousReason::BadToken;
                return Err(self.refuse_anonymous(source, reason, spent()));
            }
        };
        let token_device = self.device_target(&record.manufacturer_id, &record.serial);
        let input = self
            .audited_as(
                &actor,
                crate::audit::Action::DeviceEnroll,
                &token_device,
                input,
            )
            .await?;
        let target = self.device_target(&record.manufacturer_id, input.serial.as_str());
        let t = &record;
        let checked = if t.serial != input.serial.as_str() {
            Err(Error::PermissionDenied(format!(
                "the enrollment token is for another serial, not {}",
                quote(input.serial.as_str())
            )))
        } else if t
            .model
            .as_deref()
            .is_some_and(|m| m != input.model.as_str())
        {
            Err(Error::PermissionDenied(format!(
                "the enrollment token is for another model, not {}",
                quote(input.model.as_str())
            )))
        } else {
            ManufacturerId::parse(&t.manufacturer_id)
        };
        let manufacturer = self
            .audited_as(&actor, crate::audit::Action::DeviceEnroll, &target, checked)
            .await?;
        self.enroll(&actor, manufacturer, input, Some(hash), Ok(()))
            .await
    }

    async fn enroll(
        &self,
        actor: &Actor,
        manufacturer: ManufacturerId,
        input: EnrollInput,
        token_sha256: Option<String>,
        authorized: Result<(), Error>,
    ) -> Result<(DeviceRecord, Issued), Refused> {
        let action = crate::audit::Action::DeviceEnroll;
        let subject_uri = self
            .profiles
            .trust_domain
            .device_uri(&manufacturer, &input.serial);
        let step1 = async {
            // Step 1: policy — the caller's scope, the model, the CSR, the profile.
            authorized?;
            let m = self.manufacturer(&manufacturer).await?;
            policy::check_model_allowed(&manufacturer, &m.allowed_models, &input.model)?;
            let csr = policy::csr::verify(&crate::pem::csr_der(&input.csr)?)?;
            let template = self.profiles.device_birth(
                crate::issuance::random_serial(),
                self.clock.now(),
                self.authority
                    .current(crate::issuance::IssuerName::DeviceIdentity),
                &BirthSubject {
                    manufacturer: &manufacturer,
                    manufacturer_name: &m.display_name,
                    serial: &input.serial,
                    udi_di: input.udi_di.as_ref(),
                },
                csr.public_key.clone(),
            );
            Ok((template, csr))
        };
        let (template, csr) = self
            .audited_as(actor, action, &Target::uri(&subject_uri), step1.await)
            .await?;
        let new = NewCertificate {
            template,
            profile: crate::domain::Profile::DeviceBirth,
            role: Role::Device,
            subject_uri: subject_uri.clone(),
            spki_sha256: csr.spki_sha256.clone(),
            claim: Claim::NewDevice {
                manufacturer: manufacturer.clone(),
                serial: input.serial.clone(),
                token_sha256,
            },
        };
        let completion = Completion::Device {
            manufacturer: manufacturer.clone(),
            serial: input.serial.clone(),
            model: input.model.as_str().to_owned(),
            udi_di: input.udi_di.as_ref().map(|g| g.as_str().to_owned()),
        };
        let (issued, recorded) = self.run_cycle(actor, action, new, completion).await?;
        let device = recorded.device.ok_or_else(|| {
            Error::Internal("recording a birth certificate did not create its device".into())
        });
        let device = self
            .audited_as(actor, action, &Target::uri(&subject_uri), device)
            .await?;
        Ok((device, issued))
    }

    /// Creates a one-time enrollment token. The token is returned once and stored only hashed;
    /// neither it nor its hash appears in the audit event (a hash prefix names it).
    pub async fn create_token(
        &self,
        who: &Principal,
        t: NewToken,
    ) -> Result<(String, OffsetDateTime), Refused> {
        let action = Action::CreateToken {
            manufacturer: &t.manufacturer,
        };
        let target = self.device_target(t.manufacturer.as_str(), t.serial.as_str());
        let checks = async {
            policy::authorize(who, action)?;
            if t.ttl <= Duration::ZERO || t.ttl > MAX_TOKEN_TTL {
                return Err(Error::InvalidArgument(
                    "token lifetime must be between 1 second and 24 hours".into(),
                ));
            }
            self.manufacturer(&t.manufacturer).await?;
            match self.store.device(&t.manufacturer, t.serial.as_str()).await {
                Ok(_) => Err(Error::AlreadyExists(format!(
                    "device {} of manufacturer {} is already enrolled",
                    quote(t.serial.as_str()),
                    t.manufacturer
                ))),
                Err(Error::NotFound(_)) => Ok(()),
                Err(e) => Err(e),
            }
        };
        self.audited(who, action.audit(), &target, checks.await)
            .await?;
        let mut secret = [0u8; 32];
        let random = SystemRandom::new()
            .fill(&mut secret)
            .map_err(|_| Error::Internal("CSPRNG unavailable".into()));
        self.audited(who, action.audit(), &target, random).await?;
        let token = format!(
            "met_{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
        );
        let hash = token_hash(&token);
        let now = self.clock.now();
        let record = TokenRecord {
            token_sha256: hash.clone(),
            manufacturer_id: t.manufacturer.to_string(),
            serial: t.serial.as_str().to_owned(),
            model: t.model.as_ref().map(|m| m.as_str().to_owned()),
            expires_at: now + t.ttl,
            used_at: None,
        };
        let event = self
            .event(who, action.audit(), target.clone())
            .with("token_id", token_actor(&hash).uri)
            .with("expires_at", record.expires_at.unix_timestamp());
        let created = self.store.create_token(&record, &event).await;
        self.audited(who, action.audit(), &target, created).await?;
        Ok((token, record.expires_at))
    }
}
