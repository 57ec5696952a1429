//! The signing authority. Owns the CA private keys and turns a [`CertificateTemplate`] that
//! policy decided into a signed certificate. It checks only what keeps the output well formed
//! (validity inside the issuer's, serial shape); it knows nothing of who may ask for what.
//!
//! This is the one module that may read or hold a CA private key.

pub mod bootstrap;
mod profile;

use std::fmt;
use std::path::Path;

use rcgen::{CertificateParams, Issuer, KeyPair};
use ring::rand::{SecureRandom, SystemRandom};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

use crate::domain::CertSerial;
use crate::error::Error;

pub use profile::{CertificateTemplate, Eku, SubjectName, SubjectPublicKey};

/// The two issuing CAs under the root (DESIGN.md "Certificate hierarchy").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IssuerName {
    /// Signs device birth certificates only; notAfter 99991231235959Z like the birth certificates.
    DeviceIdentity,
    /// Signs everything else; finite lifetime.
    Operational,
}

impl IssuerName {
    pub fn as_str(self) -> &'static str {
        match self {
            IssuerName::DeviceIdentity => "device-identity",
            IssuerName::Operational => "operational",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "device-identity" => Some(IssuerName::DeviceIdentity),
            "operational" => Some(IssuerName::Operational),
            _ => None,
        }
    }
}

/// A CA certificate and, for issuing CAs, its key.
pub struct CaCert {
    pub der: CertificateDer<'static>,
    pub not_after: OffsetDateTime,
}

struct IssuingCa {
    cert: CaCert,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for IssuingCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material (STYLE.md #10).
        f.debug_struct("IssuingCa")
            .field("not_after", &self.cert.not_after)
            .field("key", &"…")
            .finish()
    }
}

/// The loaded CA: root certificate and the two issuing CAs with their keys.
#[derive(Debug)]
pub struct Authority {
    root: CaCert,
    device_identity: IssuingCa,
    operational: IssuingCa,
}

impl fmt::Debug for CaCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaCert")
            .field("not_after", &self.not_after)
            .finish()
    }
}

/// The right to sign one certificate, handed out by the store when it has durably reserved
/// the serial and recorded the intent (docs/ISSUANCE-CYCLE.md step 2). Not `Clone`: signing
/// consumes it, so the compiler enforces "sign at most once per reservation".
#[derive(Debug)]
pub struct IssuanceToken {
    template: CertificateTemplate,
}

impl IssuanceToken {
    /// Only the store's reservation creates tokens.
    pub(crate) fn reserved(template: CertificateTemplate) -> Self {
        Self { template }
    }
    pub fn template(&self) -> &CertificateTemplate {
        &self.template
    }
}

/// A freshly signed certificate.
#[derive(Debug, Clone)]
pub struct SignedCertificate {
    pub issuer: IssuerName,
    pub serial: CertSerial,
    pub der: CertificateDer<'static>,
}

impl Authority {
    /// Loads the CA material `medid ca init` wrote to `dir`.
    pub fn load(dir: &Path) -> Result<Self, Error> {
        let files = bootstrap::PkiFiles::new(dir);
        Ok(Self {
            root: load_ca_cert(&files.root_cert)?,
            device_identity: load_issuing(&files.device_ca_cert, &files.device_ca_key)?,
            operational: load_issuing(&files.operational_ca_cert, &files.operational_ca_key)?,
        })
    }

    pub fn root(&self) -> &CaCert {
        &self.root
    }

    pub fn issuer_cert(&self, name: IssuerName) -> &CaCert {
        &self.issuing(name).cert
    }

    fn issuing(&self, name: IssuerName) -> &IssuingCa {
        match name {
            IssuerName::DeviceIdentity => &self.device_identity,
            IssuerName::Operational => &self.operational,
        }
    }

    /// Signs the certificate a reservation allows (docs/ISSUANCE-CYCLE.md step 3).
    pub fn sign(&self, token: IssuanceToken) -> Result<SignedCertificate, Error> {
        let t = token.template;
        let ca = self.issuing(t.issuer);
        if t.not_after > ca.cert.not_after {
            return Err(Error::Internal(format!(
                "template notAfter {} is past the {} CA's notAfter {}",
                t.not_after,
                t.issuer.as_str(),
                ca.cert.not_after
            )));
        }
        let params: CertificateParams = t.to_params()?;
        let cert = params
            .signed_by(&t.public_key, &ca.issuer)
            .map_err(|e| Error::internal("signing certificate", e))?;
        Ok(SignedCertificate {
            issuer: t.issuer,
            serial: t.serial,
            der: cert.der().clone(),
        })
    }
}

fn read(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path)
        .map_err(|e| Error::Internal(format!("reading {}: {e}", path.display())))
}

fn load_ca_cert(path: &Path) -> Result<CaCert, Error> {
    let certs = crate::pem::parse_certificates(read(path)?.as_bytes())
        .map_err(|e| Error::Internal(format!("{}: {e}", path.display())))?;
    let der = certs
        .into_iter()
        .next()
        .expect("parse_certificates returns ≥ 1");
    let (_, parsed) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| Error::Internal(format!("{}: {e}", path.display())))?;
    let not_after = parsed.validity().not_after.to_datetime();
    Ok(CaCert { der, not_after })
}

fn load_issuing(cert_path: &Path, key_path: &Path) -> Result<IssuingCa, Error> {
    let cert = load_ca_cert(cert_path)?;
    let key = KeyPair::from_pem(&read(key_path)?)
        .map_err(|e| Error::Internal(format!("{}: {e}", key_path.display())))?;
    let issuer = Issuer::from_ca_cert_der(&cert.der, key)
        .map_err(|e| Error::Internal(format!("{}: {e}", cert_path.display())))?;
    Ok(IssuingCa { cert, issuer })
}

/// A random serial: 16 octets from the CSPRNG (128 bits, RFC 5280 §4.1.2.2 asks for ≥ 64),
/// top bit cleared so the DER INTEGER is positive without a pad byte, never zero.
pub fn random_serial() -> CertSerial {
    let rng = SystemRandom::new();
    loop {
        let mut bytes = vec![0u8; 16];
        rng.fill(&mut bytes)
            .expect("the operating system CSPRNG is available");
        bytes[0] &= 0x7f;
        // A leading zero octet would be dropped by DER minimal encoding; keep 16 significant octets'
        // worth of entropy by retrying, which also rules out zero.
        if bytes[0] != 0 {
            return CertSerial::from_bytes(bytes);
        }
    }
}
