//! The signing authority. Owns the CA private keys and turns a [`CertificateTemplate`] that
//! policy decided into a signed certificate. It checks only what keeps the output well formed
//! (validity inside the issuer's, serial shape); it knows nothing of who may ask for what.
//!
//! This is the one module that may read or hold a CA private key.

pub mod bootstrap;
pub mod checkpoint_key;
pub mod hsm;
pub mod keys;
pub mod ocsp;
mod profile;
pub mod root_crl;

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, RwLock};

use rcgen::{
    CertificateParams, CertificateRevocationListParams, Issuer, KeyIdMethod, KeyPair,
    RevokedCertParams, SerialNumber,
};
use ring::rand::{SecureRandom, SystemRandom};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

use crate::domain::{CertSerial, RevocationReason};
use crate::error::Error;

pub use profile::{CertificateTemplate, Eku, SubjectName, SubjectPublicKey};

/// The two issuing CAs under the root (DESIGN.md "Certificate hierarchy").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
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

/// One generation of an issuing CA. Generation 1 is the one `medid ca init` made; each
/// `medid ca rotate` adds the next, with a new key and a subject of its own. The label names
/// it in the store, in URLs and in file names: `operational` for generation 1,
/// `operational-2` after the first rollover.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IssuerId {
    pub name: IssuerName,
    pub generation: u32,
}

impl IssuerId {
    /// Generation 1 of `name`.
    pub const fn first(name: IssuerName) -> Self {
        Self {
            name,
            generation: 1,
        }
    }

    pub fn label(self) -> String {
        match self.generation {
            1 => self.name.as_str().to_owned(),
            n => format!("{}-{n}", self.name.as_str()),
        }
    }

    /// Reads a label: `operational`, `operational-2`, … (`operational-1` is not a label).
    pub fn parse(s: &str) -> Option<Self> {
        if let Some(name) = IssuerName::parse(s) {
            return Some(Self::first(name));
        }
        let (name, generation) = s.rsplit_once('-')?;
        let generation: u32 = generation.parse().ok()?;
        if generation < 2 || generation.to_string().len() != s.len() - name.len() - 1 {
            return None;
        }
        Some(Self {
            name: IssuerName::parse(name)?,
            generation,
        })
    }
}

impl fmt::Display for IssuerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label())
    }
}

/// What policy needs of the issuing CA that will sign a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IssuerInfo {
    pub id: IssuerId,
    pub not_after: OffsetDateTime,
}

/// A CA certificate.
#[derive(Clone)]
pub struct CaCert {
    pub der: CertificateDer<'static>,
    pub not_after: OffsetDateTime,
}

struct IssuingCa {
    id: IssuerId,
    cert: CaCert,
    issuer: Issuer<'static, keys::CaKey>,
    /// The CA certificate's subjectKeyIdentifier, for AKIs of what it signs.
    ski: Vec<u8>,
    /// DER of the CA's subject Name and its public key bits: what OCSP CertIDs hash.
    subject_der: Vec<u8>,
    key_bits: Vec<u8>,
}

impl IssuingCa {
    fn info(&self) -> IssuerInfo {
        IssuerInfo {
            id: self.id,
            not_after: self.cert.not_after,
        }
    }
}

impl fmt::Debug for IssuingCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material (STYLE.md #10).
        f.debug_struct("IssuingCa")
            .field("id", &self.id)
            .field("not_after", &self.cert.not_after)
            .field("key", &"…")
            .finish()
    }
}

/// The loaded CA: the root certificate and every generation of the two issuing CAs with
/// their keys. Generations added by `medid ca rotate` are picked up by [`Authority::refresh`]
/// while the service runs.
#[derive(Debug)]
pub struct Authority {
    files: bootstrap::PkiFiles,
    keys: keys::KeySource,
    root: CaCert,
    /// The root's CRL (`root.crl`), when the PKI has one: which issuing CAs it revoked.
    root_crl: RwLock<Option<root_crl::RootCrl>>,
    /// Sorted by (name, generation).
    issuing: RwLock<Vec<Arc<IssuingCa>>>,
    /// Delegated OCSP responders (RFC 6960 §4.2.2.2), one per issuing CA generation;
    /// installed at start and replaced before they expire.
    ocsp: RwLock<HashMap<IssuerId, ocsp::Responder>>,
}

/// A revoked certificate as it appears on a CRL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedEntry {
    pub serial: Vec<u8>,
    pub revoked_at: OffsetDateTime,
    pub reason: Option<RevocationReason>,
}

/// What a CRL this authority signed says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnCrl {
    pub number: u64,
    pub this_update: OffsetDateTime,
    pub entries: Vec<RevokedEntry>,
}

/// A private key of one of the service's own certificates (its TLS server certificate, an
/// OCSP responder's). Only this module sees its bits; it is written to disk 0600 and handed
/// to rustls, never logged.
pub struct ServiceKey(KeyPair);

impl fmt::Debug for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServiceKey(…)")
    }
}

impl ServiceKey {
    pub fn generate() -> Result<Self, Error> {
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map(Self)
            .map_err(|e| Error::internal("generating a service key", e))
    }

    /// Reads a PKCS#8 PEM key file.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let pem = std::fs::read_to_string(path)
            .map_err(|e| Error::Internal(format!("reading {}: {e}", path.display())))?;
        KeyPair::from_pem(&pem)
            .map(Self)
            .map_err(|e| Error::Internal(format!("{}: {e}", path.display())))
    }

    /// Writes the key, 0600, atomically.
    pub fn write(&self, path: &Path) -> Result<(), Error> {
        bootstrap::write_private(path, &self.0.serialize_pem())
    }

    pub fn public_key(&self) -> SubjectPublicKey {
        bootstrap::public_key_of(&self.0)
    }

    /// SHA-256 of the SubjectPublicKeyInfo, hex (how the store binds keys).
    pub fn spki_sha256(&self) -> String {
        crate::domain::hex(
            ring::digest::digest(
                &ring::digest::SHA256,
                &rcgen::PublicKeyData::subject_public_key_info(&self.0),
            )
            .as_ref(),
        )
    }

    /// True when `cert_der` certifies this key.
    pub fn certified_by(&self, cert_der: &[u8]) -> bool {
        x509_parser::parse_x509_certificate(cert_der).is_ok_and(|(_, c)| {
            c.public_key().subject_public_key.data.as_ref() == self.0.public_key_raw()
        })
    }
}

impl fmt::Debug for CaCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaCert")
            .field("not_after", &self.not_after)
            .finish()
    }
}

/// A freshly signed certificate.
#[derive(Debug, Clone)]
pub struct SignedCertificate {
    pub issuer: IssuerId,
    pub serial: CertSerial,
    pub der: CertificateDer<'static>,
}

impl Authority {
    /// Loads the CA material `medid ca init` (and `medid ca rotate`) wrote to `dir`.
    pub fn load(dir: &Path, keys: keys::KeySource) -> Result<Self, Error> {
        let files = bootstrap::PkiFiles::new(dir);
        let root = load_ca_cert(&files.root_cert)?;
        let authority = Self {
            files,
            keys,
            root,
            root_crl: RwLock::new(None),
            issuing: RwLock::new(Vec::new()),
            ocsp: RwLock::new(HashMap::new()),
        };
        authority.refresh()?;
        for name in [IssuerName::DeviceIdentity, IssuerName::Operational] {
            if authority.generations(name).is_empty() {
                let (cert, _) = authority.files.issuing_ca(IssuerId::first(name));
                return Err(Error::Internal(format!(
                    "reading {}: missing",
                    cert.display()
                )));
            }
        }
        Ok(authority)
    }

    /// Loads the issuing-CA generations on disk that are not loaded yet (generation 1 is
    /// `operational-ca.pem`, the next `operational-ca-2.pem`, …; each must be signed by the
    /// root) and returns them. Reads `root.crl` again too: a root CRL that does not verify
    /// is refused, and the one loaded before stays.
    pub fn refresh(&self) -> Result<Vec<IssuerInfo>, Error> {
        self.reload_root_crl()?;
        let mut added = Vec::new();
        for name in [IssuerName::DeviceIdentity, IssuerName::Operational] {
            let mut generation = self
                .generations(name)
                .last()
                .map_or(1, |g| g.id.generation + 1);
            loop {
                let id = IssuerId { name, generation };
                let (cert, key) = self.files.issuing_ca(id);
                if !cert.exists() {
                    break;
                }
                let ca = load_issuing(
                    id,
                    &cert,
                    self.keys.load(keys::KeyRole::Issuing(id), &key)?,
                    &key,
                )?;
                self.check_signed_by_root(&ca, &cert)?;
                added.push(ca.info());
                let mut issuing = self.issuing.write().expect("CA lock is never poisoned");
                issuing.push(Arc::new(ca));
                issuing.sort_by_key(|c| c.id);
                generation += 1;
            }
        }
        Ok(added)
    }

    fn reload_root_crl(&self) -> Result<(), Error> {
        let der = match std::fs::read(&self.files.root_crl) {
            Ok(der) => der,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                return Err(Error::Internal(format!(
                    "reading {}: {e}",
                    self.files.root_crl.display()
                )))
            }
        };
        if self.root_crl().is_some_and(|crl| crl.der == der) {
            return Ok(());
        }
        let crl = root_crl::RootCrl::read(&self.root.der, &der).map_err(|e| {
            Error::FailedPrecondition(format!("{}: {e}", self.files.root_crl.display()))
        })?;
        if self.root_crl().is_some_and(|old| old.number >= crl.number) {
            return Err(Error::FailedPrecondition(format!(
                "{}: CRL number {} is not after the one in service",
                self.files.root_crl.display(),
                crl.number
            )));
        }
        *self
            .root_crl
            .write()
            .expect("root CRL lock is never poisoned") = Some(crl);
        Ok(())
    }

    /// The root's CRL in service, if the PKI has one.
    pub fn root_crl(&self) -> Option<root_crl::RootCrl> {
        self.root_crl
            .read()
            .expect("root CRL lock is never poisoned")
            .clone()
    }

    /// When the root's CRL revoked the certificate of issuing CA `id`, the entry saying so.
    pub fn revoked_by_root(&self, id: IssuerId) -> Option<RevokedEntry> {
        let ca = self.issuing(id).ok()?;
        let (_, cert) = x509_parser::parse_x509_certificate(&ca.cert.der).ok()?;
        self.root_crl()?.revokes(cert.raw_serial()).cloned()
    }

    /// Re-signs the root's CRL (same entries, the next number) when the root key is online
    /// (a development PKI's `root-ca.key`, or the token's root key) and half of `validity`
    /// has passed since its thisUpdate, or makes its first when there is none. Returns the
    /// CRL signed, if one was.
    pub fn renew_root_crl(
        &self,
        now: OffsetDateTime,
        validity: time::Duration,
    ) -> Result<Option<root_crl::RootCrl>, Error> {
        if self
            .root_crl()
            .is_some_and(|crl| now < crl.this_update + validity / 2)
            || !self.keys.has(keys::KeyRole::Root, &self.files.root_key)
        {
            return Ok(None);
        }
        let key = self.keys.load(keys::KeyRole::Root, &self.files.root_key)?;
        self.sign_next_root_crl(&key, now, validity, None).map(Some)
    }

    /// Signs the next root CRL with `root_key` (its entries and `added`, the next number, or
    /// number 1), valid from `now` for `validity`, writes it to `root.crl` and puts it in
    /// service.
    pub fn sign_next_root_crl(
        &self,
        root_key: &keys::CaKey,
        now: OffsetDateTime,
        validity: time::Duration,
        added: Option<RevokedEntry>,
    ) -> Result<root_crl::RootCrl, Error> {
        let crl = match self.root_crl() {
            Some(crl) => crl.next(&self.root.der, root_key, now, validity, added)?,
            None => root_crl::RootCrl::sign(
                &self.root.der,
                root_key,
                1,
                now,
                validity,
                added.into_iter().collect(),
            )?,
        };
        bootstrap::write_public_bytes(&self.files.root_crl, &crl.der)?;
        *self
            .root_crl
            .write()
            .expect("root CRL lock is never poisoned") = Some(crl.clone());
        Ok(crl)
    }

    fn check_signed_by_root(&self, ca: &IssuingCa, path: &Path) -> Result<(), Error> {
        let (_, parsed) = x509_parser::parse_x509_certificate(&ca.cert.der)
            .map_err(|e| Error::Internal(format!("{}: {e}", path.display())))?;
        let (_, root) = x509_parser::parse_x509_certificate(&self.root.der)
            .map_err(|e| Error::Internal(format!("{}: {e}", self.files.root_cert.display())))?;
        if parsed.issuer().as_raw() == root.subject().as_raw()
            && root_crl::verifies(
                &root,
                &parsed.signature_algorithm.algorithm.to_id_string(),
                parsed.tbs_certificate.as_ref(),
                &parsed.signature_value.data,
            )
        {
            return Ok(());
        }
        Err(Error::FailedPrecondition(format!(
            "{} is not signed by the root CA in {}",
            path.display(),
            self.files.root_cert.display()
        )))
    }

    fn all(&self) -> Vec<Arc<IssuingCa>> {
        self.issuing
            .read()
            .expect("CA lock is never poisoned")
            .clone()
    }

    fn generations(&self, name: IssuerName) -> Vec<Arc<IssuingCa>> {
        self.all()
            .into_iter()
            .filter(|c| c.id.name == name)
            .collect()
    }

    /// Every loaded issuing-CA generation, by name then generation.
    pub fn issuers(&self) -> Vec<IssuerInfo> {
        self.all().iter().map(|c| c.info()).collect()
    }

    /// The generation of `name` that signs new certificates: the newest.
    pub fn current(&self, name: IssuerName) -> IssuerInfo {
        self.generations(name)
            .last()
            .expect("Authority::load requires generation 1 of both issuing CAs")
            .info()
    }

    /// The SHA-256 fingerprints of the root and of every issuing-CA generation, each with its
    /// generation (the root's is 1).
    pub fn fingerprints(&self) -> Vec<(crate::domain::PkiFingerprint, u32)> {
        use crate::domain::{PkiFingerprint, PkiPart};
        let sha = |der: &[u8]| {
            crate::domain::hex(ring::digest::digest(&ring::digest::SHA256, der).as_ref())
        };
        let mut all = vec![(
            PkiFingerprint {
                part: PkiPart::Root,
                sha256: sha(&self.root.der),
            },
            1,
        )];
        for ca in self.all() {
            let part = match ca.id.name {
                IssuerName::DeviceIdentity => PkiPart::DeviceIdentityCa,
                IssuerName::Operational => PkiPart::OperationalCa,
            };
            all.push((
                PkiFingerprint {
                    part,
                    sha256: sha(&ca.cert.der),
                },
                ca.id.generation,
            ));
        }
        all
    }

    /// Reads a CRL this authority signed for `issuer` (a copy kept outside the database),
    /// after checking its issuer name and its signature with the CA's key. Anything else is
    /// refused: a forged file must not be able to revoke.
    pub fn read_own_crl(&self, issuer: IssuerId, der: &[u8]) -> Result<OwnCrl, Error> {
        let ca = self.issuing(issuer)?;
        root_crl::parse_crl(der, &ca.subject_der, |_, tbs, sig| {
            ring::signature::UnparsedPublicKey::new(
                &ring::signature::ECDSA_P256_SHA256_ASN1,
                &ca.key_bits,
            )
            .verify(tbs, sig)
            .is_ok()
        })
        .map(|(crl, _)| crl)
        .map_err(|why| Error::InvalidArgument(format!("not a CRL of the {issuer} CA: {why}")))
    }

    /// Signs CRL number `number` of `issuer` (RFC 5280 §5: v2, AKI, cRLNumber, nextUpdate).
    pub fn sign_crl(
        &self,
        issuer: IssuerId,
        number: u64,
        this_update: OffsetDateTime,
        next_update: OffsetDateTime,
        entries: &[RevokedEntry],
    ) -> Result<Vec<u8>, Error> {
        let ca = self.issuing(issuer)?;
        let params = CertificateRevocationListParams {
            this_update,
            next_update,
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: entries
                .iter()
                .map(|e| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&e.serial),
                    revocation_time: e.revoked_at,
                    reason_code: e.reason.map(rcgen_reason),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::PreSpecified(ca.ski.clone()),
        };
        let crl = params
            .signed_by(&ca.issuer)
            .map_err(|e| keys::signing_error("signing CRL", e))?;
        Ok(crl.der().to_vec())
    }

    /// Which issuing CA an OCSP CertID names, by its issuer name and key hashes.
    pub fn issuer_for_cert_id(
        &self,
        hash: ocsp::HashAlg,
        name_hash: &[u8],
        key_hash: &[u8],
    ) -> Option<IssuerId> {
        self.all()
            .iter()
            .find(|ca| {
                hash.digest(&ca.subject_der) == name_hash && hash.digest(&ca.key_bits) == key_hash
            })
            .map(|ca| ca.id)
    }

    /// Which issuing CA generation `der` names as its issuer (each has a subject of its own).
    pub fn issuer_of_certificate(&self, der: &[u8]) -> Option<IssuerId> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let issuer = cert.issuer().as_raw();
        self.all()
            .iter()
            .find(|ca| ca.subject_der.as_slice() == issuer)
            .map(|ca| ca.id)
    }

    /// Installs (or replaces) the delegated OCSP responder of `issuer`.
    pub fn install_ocsp_responder(
        &self,
        issuer: IssuerId,
        key: ServiceKey,
        cert: CertificateDer<'static>,
        not_after: OffsetDateTime,
    ) {
        let responder = ocsp::Responder::new(key.0, cert, not_after);
        self.ocsp
            .write()
            .expect("OCSP responder lock is never poisoned")
            .insert(issuer, responder);
    }

    /// When the installed responder of `issuer` expires, if there is one.
    pub fn ocsp_responder_not_after(&self, issuer: IssuerId) -> Option<OffsetDateTime> {
        self.ocsp
            .read()
            .expect("OCSP responder lock is never poisoned")
            .get(&issuer)
            .map(|r| r.not_after)
    }

    /// Signs an OCSP response for `issuer`'s certificates with its delegated responder.
    pub fn sign_ocsp(
        &self,
        issuer: IssuerId,
        responses: &[ocsp::SingleResponse],
        nonce: Option<&[u8]>,
        produced_at: OffsetDateTime,
    ) -> Result<Vec<u8>, Error> {
        let guard = self
            .ocsp
            .read()
            .expect("OCSP responder lock is never poisoned");
        let responder = guard.get(&issuer).ok_or_else(|| {
            Error::Unavailable(format!("no OCSP responder for the {issuer} CA yet"))
        })?;
        responder.sign(responses, nonce, produced_at)
    }

    /// Where this PKI's keys are.
    pub fn keys(&self) -> &keys::KeySource {
        &self.keys
    }

    pub fn root(&self) -> &CaCert {
        &self.root
    }

    /// The certificate of an issuing CA generation.
    pub fn issuer_cert(&self, id: IssuerId) -> Result<CaCert, Error> {
        self.issuing(id).map(|ca| ca.cert.clone())
    }

    fn issuing(&self, id: IssuerId) -> Result<Arc<IssuingCa>, Error> {
        self.all()
            .into_iter()
            .find(|c| c.id == id)
            .ok_or_else(|| Error::NotFound(format!("no issuing CA {id} in this PKI")))
    }

    /// Signs the certificate policy decided, in memory (docs/ISSUANCE-CYCLE.md step 2). The
    /// result must not leave the process before the store has recorded it (step 3).
    pub fn sign(&self, t: &CertificateTemplate) -> Result<SignedCertificate, Error> {
        let ca = self.issuing(t.issuer)?;
        if t.not_after > ca.cert.not_after {
            return Err(Error::Internal(format!(
                "template notAfter {} is past the {} CA's notAfter {}",
                t.not_after, t.issuer, ca.cert.not_after
            )));
        }
        let params: CertificateParams = t.to_params()?;
        let cert = params
            .signed_by(&t.public_key, &ca.issuer)
            .map_err(|e| keys::signing_error("signing certificate", e))?;
        Ok(SignedCertificate {
            issuer: t.issuer,
            serial: t.serial.clone(),
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

fn load_issuing(
    id: IssuerId,
    cert_path: &Path,
    key: keys::CaKey,
    key_path: &Path,
) -> Result<IssuingCa, Error> {
    let cert = load_ca_cert(cert_path)?;
    let bad = |what: &str| Error::Internal(format!("{}: {what}", cert_path.display()));
    let (_, parsed) =
        x509_parser::parse_x509_certificate(&cert.der).map_err(|e| bad(&e.to_string()))?;
    let ski =
        subject_key_id(&parsed).ok_or_else(|| bad("CA certificate has no subjectKeyIdentifier"))?;
    let subject_der = parsed.subject().as_raw().to_vec();
    let key_bits = parsed.public_key().subject_public_key.data.to_vec();
    if key.public_raw() != key_bits.as_slice() {
        let holder = match &key {
            keys::CaKey::File(_) => key_path.display().to_string(),
            keys::CaKey::Token(k) => format!("the token key labelled {:?}", k.label()),
        };
        return Err(Error::FailedPrecondition(format!(
            "{holder} does not hold the key of {}",
            cert_path.display()
        )));
    }
    let issuer = Issuer::from_ca_cert_der(&cert.der, key).map_err(|e| bad(&e.to_string()))?;
    Ok(IssuingCa {
        id,
        cert,
        issuer,
        ski,
        subject_der,
        key_bits,
    })
}

fn rcgen_reason(r: RevocationReason) -> rcgen::RevocationReason {
    use rcgen::RevocationReason as R;
    match r {
        RevocationReason::KeyCompromise => R::KeyCompromise,
        RevocationReason::CaCompromise => R::CaCompromise,
        RevocationReason::AffiliationChanged => R::AffiliationChanged,
        RevocationReason::Superseded => R::Superseded,
        RevocationReason::CessationOfOperation => R::CessationOfOperation,
        RevocationReason::PrivilegeWithdrawn => R::PrivilegeWithdrawn,
        RevocationReason::AaCompromise => R::AaCompromise,
    }
}

/// A new serial, 20 octets (RFC 5280 §4.1.2.2's most): the octet 0x4d, the wall-clock time in
/// milliseconds since the Unix epoch (6 octets), then 13 octets (104 bits) from the CSPRNG, more
/// than the 64 bits of CSPRNG output CA/Browser Forum practice asks for. The first octet keeps
/// the DER INTEGER positive without a pad byte and never lets it start with zero.
///
/// The time prefix is for the database, not for meaning: serials issued one after another sort
/// one after another, so the (issuer, serial) index grows at its end instead of dirtying a
/// random page of it per certificate (docs/PERFORMANCE.md). Uniqueness rests on the random
/// part, and the store refuses a duplicate serial whatever the clock does.
pub fn random_serial() -> CertSerial {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut bytes = vec![0u8; 20];
    bytes[0] = 0x4d;
    bytes[1..7].copy_from_slice(&millis.to_be_bytes()[2..]);
    SystemRandom::new()
        .fill(&mut bytes[7..])
        .expect("the operating system CSPRNG is available");
    CertSerial::from_bytes(bytes)
}

/// A certificate's subjectKeyIdentifier, when it has one.
pub(crate) fn subject_key_id(
    cert: &x509_parser::certificate::X509Certificate<'_>,
) -> Option<Vec<u8>> {
    cert.extensions()
        .iter()
        .find_map(|ext| match ext.parsed_extension() {
            x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(id) => {
                Some(id.0.to_vec())
            }
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issuer_labels_name_each_generation_once() {
        let op = |generation| IssuerId {
            name: IssuerName::Operational,
            generation,
        };
        assert_eq!(op(1).label(), "operational");
        assert_eq!(op(2).label(), "operational-2");
        assert_eq!(op(12).label(), "operational-12");
        for g in [1, 2, 12] {
            assert_eq!(IssuerId::parse(&op(g).label()), Some(op(g)));
        }
        assert_eq!(
            IssuerId::parse("device-identity-3"),
            Some(IssuerId {
                name: IssuerName::DeviceIdentity,
                generation: 3
            })
        );
        for bad in [
            "operational-1",
            "operational-02",
            "operational-",
            "operational-x",
            "operational-+2",
            "device",
            "identity-2",
            "",
        ] {
            assert_eq!(IssuerId::parse(bad), None, "{bad:?}");
        }
    }

    fn millis_now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("the clock is after 1970")
            .as_millis() as u64
    }

    #[test]
    fn serials_are_twenty_positive_octets_with_a_time_prefix_and_a_random_rest() {
        let before = millis_now();
        let serials: Vec<CertSerial> = (0..1000).map(|_| random_serial()).collect();
        let after = millis_now();
        let mut random_parts = std::collections::HashSet::new();
        for s in &serials {
            let b = s.as_bytes();
            assert_eq!(b.len(), 20);
            assert_eq!(b[0], 0x4d, "positive, no pad byte, no leading zero");
            let mut prefix = [0u8; 8];
            prefix[2..].copy_from_slice(&b[1..7]);
            let millis = u64::from_be_bytes(prefix);
            assert!(
                (before..=after).contains(&millis),
                "{millis} not in {before}..={after}"
            );
            assert!(
                random_parts.insert(b[7..].to_vec()),
                "a random part repeated"
            );
        }
        // Fixed width and big-endian: hex order is issue order, millisecond by millisecond.
        for pair in serials.windows(2) {
            assert!(pair[0].to_hex()[..14] <= pair[1].to_hex()[..14]);
        }
    }
}
