//! The root CA's CRL: which issuing-CA certificates the root has revoked. It lives as
//! `root.crl` (DER) in the PKI directory, which is also all the state it has: revoking an
//! issuing CA re-signs it with one more entry and the next CRL number. The service publishes
//! it at `/crl/root.crl`.
//!
//! Only the root key signs it, so it is signed only where that key is at hand: `medid ca
//! init`, `medid ca revoke-issuer`, `medid ca sign-root-crl` (the root's key ceremony), and
//! the service's upkeep when the root key is online (a development PKI, or a root kept in the
//! PKCS#11 token). Its nextUpdate is far ahead ([`ROOT_CRL_VALIDITY`] by default), as an
//! offline root's must be.

use rcgen::{
    CertificateRevocationListParams, Issuer, KeyIdMethod, RevokedCertParams, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use time::{Duration, OffsetDateTime};

use super::keys::{signing_error, CaKey};
use super::{OwnCrl, RevokedEntry};
use crate::domain::RevocationReason;
use crate::error::Error;

/// How long a root CRL signed by medid is valid: its nextUpdate is this far after its
/// thisUpdate. Upkeep re-signs it at half that when the root key is online; with an offline
/// root, `medid ca sign-root-crl` must run before nextUpdate (health and `/metrics` count
/// the days left).
pub const ROOT_CRL_VALIDITY: Duration = Duration::days(365);

/// A root CRL, read and verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootCrl {
    pub der: Vec<u8>,
    pub number: u64,
    pub this_update: OffsetDateTime,
    pub next_update: OffsetDateTime,
    /// The revoked issuing-CA certificates, by serial.
    pub entries: Vec<RevokedEntry>,
}

impl RootCrl {
    /// The entry revoking the certificate with serial `serial`, if there is one.
    pub fn revokes(&self, serial: &[u8]) -> Option<&RevokedEntry> {
        self.entries.iter().find(|e| e.serial == serial)
    }

    /// Reads `der` as a CRL of the root whose certificate is `root_der`: its issuer must be
    /// the root's subject and its signature the root key's.
    pub fn read(root_der: &[u8], der: &[u8]) -> Result<Self, Error> {
        let (_, root) = x509_parser::parse_x509_certificate(root_der)
            .map_err(|e| Error::Internal(format!("the root CA certificate: {e}")))?;
        let (crl, next_update) = parse_crl(der, root.subject().as_raw(), |alg, tbs, sig| {
            verifies(&root, alg, tbs, sig)
        })
        .map_err(|why| Error::FailedPrecondition(format!("not a CRL of the root CA: {why}")))?;
        let next_update = next_update.ok_or_else(|| {
            Error::FailedPrecondition("the root CA's CRL has no nextUpdate".into())
        })?;
        Ok(Self {
            der: der.to_vec(),
            number: crl.number,
            this_update: crl.this_update,
            next_update,
            entries: crl.entries,
        })
    }

    /// Signs CRL number `number` with the root key, `entries` revoked, valid from
    /// `this_update` for `validity`.
    pub fn sign(
        root_der: &[u8],
        root_key: &CaKey,
        number: u64,
        this_update: OffsetDateTime,
        validity: Duration,
        entries: Vec<RevokedEntry>,
    ) -> Result<Self, Error> {
        let (_, root) = x509_parser::parse_x509_certificate(root_der)
            .map_err(|e| Error::Internal(format!("the root CA certificate: {e}")))?;
        // The AKI is the root's own SKI where it has one (RFC 5280 §5.2.1), else the key's
        // SHA-256 truncated as rcgen would.
        let ski = super::subject_key_id(&root);
        let issuer = Issuer::from_ca_cert_der(&CertificateDer::from(root_der.to_vec()), root_key)
            .map_err(|e| Error::internal("reading the root CA certificate", e))?;
        let params = CertificateRevocationListParams {
            this_update,
            next_update: this_update + validity,
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: entries
                .iter()
                .map(|e| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&e.serial),
                    revocation_time: e.revoked_at,
                    reason_code: e.reason.map(super::rcgen_reason),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: match ski {
                Some(ski) => KeyIdMethod::PreSpecified(ski),
                None => KeyIdMethod::Sha256,
            },
        };
        let crl = params
            .signed_by(&issuer)
            .map_err(|e| signing_error("signing the root CA's CRL", e))?;
        Self::read(root_der, crl.der().as_ref())
    }

    /// The next CRL: the same entries plus `added`, number + 1.
    pub fn next(
        &self,
        root_der: &[u8],
        root_key: &CaKey,
        now: OffsetDateTime,
        validity: Duration,
        added: Option<RevokedEntry>,
    ) -> Result<Self, Error> {
        let mut entries = self.entries.clone();
        entries.extend(added);
        Self::sign(root_der, root_key, self.number + 1, now, validity, entries)
    }
}

/// Reads `der` as a CRL of the CA whose certificate is `issuer_der` (an issuing CA's, as a
/// relying party such as `medid gateway` checks it): its issuer must be that CA's subject and
/// its signature that CA key's. Returns what it says and its nextUpdate.
pub fn read_issued_crl(
    issuer_der: &[u8],
    der: &[u8],
) -> Result<(OwnCrl, Option<OffsetDateTime>), Error> {
    let (_, issuer) = x509_parser::parse_x509_certificate(issuer_der)
        .map_err(|e| Error::InvalidArgument(format!("the CA certificate: {e}")))?;
    parse_crl(der, issuer.subject().as_raw(), |alg, tbs, sig| {
        verifies(&issuer, alg, tbs, sig)
    })
    .map_err(|why| Error::FailedPrecondition(format!("not a CRL of that CA: {why}")))
}

/// True when `cert_der` is signed by the key of `signer_der`.
pub fn signed_by(cert_der: &[u8], signer_der: &[u8]) -> bool {
    let (Ok((_, cert)), Ok((_, signer))) = (
        x509_parser::parse_x509_certificate(cert_der),
        x509_parser::parse_x509_certificate(signer_der),
    ) else {
        return false;
    };
    verifies(
        &signer,
        &cert.signature_algorithm.algorithm.to_id_string(),
        cert.tbs_certificate.as_ref(),
        &cert.signature_value.data,
    )
}

/// Parses a CRL whose issuer must be `issuer_subject` (its DER) and whose signature `verify`
/// must accept (given the signature algorithm's OID, the signed bytes and the signature).
/// Returns what it says and its nextUpdate.
pub(super) fn parse_crl(
    der: &[u8],
    issuer_subject: &[u8],
    verify: impl Fn(&str, &[u8], &[u8]) -> bool,
) -> Result<(OwnCrl, Option<OffsetDateTime>), String> {
    use x509_parser::prelude::FromDer;
    let (rest, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(der)
        .map_err(|e| e.to_string())?;
    if !rest.is_empty() {
        return Err("trailing bytes".into());
    }
    if crl.tbs_cert_list.issuer.as_raw() != issuer_subject {
        return Err("another issuer name".into());
    }
    if !verify(
        &crl.signature_algorithm.algorithm.to_id_string(),
        crl.tbs_cert_list.as_ref(),
        &crl.signature_value.data,
    ) {
        return Err("the signature does not verify".into());
    }
    let number = crl
        .crl_number()
        .and_then(|n| n.to_string().parse::<u64>().ok())
        .ok_or("no CRL number")?;
    let entries = crl
        .iter_revoked_certificates()
        .map(|r| {
            let reason = match r.reason_code() {
                Some((_, code)) => {
                    RevocationReason::from_code(code.0.into()).map_err(|e| e.to_string())?
                }
                None => None,
            };
            Ok(RevokedEntry {
                serial: r.raw_serial().to_vec(),
                revoked_at: r.revocation_date.to_datetime(),
                reason,
            })
        })
        .collect::<Result<_, String>>()?;
    Ok((
        OwnCrl {
            number,
            this_update: crl.tbs_cert_list.this_update.to_datetime(),
            entries,
        },
        crl.tbs_cert_list.next_update.map(|t| t.to_datetime()),
    ))
}

/// True when `signature` over `signed` verifies with the key of `signer`, for the algorithms
/// a root may use: ECDSA with SHA-256 (P-256) or SHA-384 (P-256, P-384), RSA PKCS #1 v1.5
/// with SHA-256, -384 or -512 (2048 to 8192 bits), and Ed25519. An enterprise root is often
/// RSA; medid's own are P-256.
pub(super) fn verifies(
    signer: &x509_parser::certificate::X509Certificate<'_>,
    algorithm: &str,
    signed: &[u8],
    signature: &[u8],
) -> bool {
    use ring::signature as s;
    let spki = signer.public_key();
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok())
        .map(|o| o.to_id_string());
    let key_algorithm = spki.algorithm.algorithm.to_id_string();
    const EC_KEY: &str = "1.2.840.10045.2.1";
    const RSA_KEY: &str = "1.2.840.113549.1.1.1";
    const P256: &str = "1.2.840.10045.3.1.7";
    const P384: &str = "1.3.132.0.34";
    let verifier: &dyn s::VerificationAlgorithm =
        match (key_algorithm.as_str(), curve.as_deref(), algorithm) {
            (EC_KEY, Some(P256), "1.2.840.10045.4.3.2") => &s::ECDSA_P256_SHA256_ASN1,
            (EC_KEY, Some(P256), "1.2.840.10045.4.3.3") => &s::ECDSA_P256_SHA384_ASN1,
            (EC_KEY, Some(P384), "1.2.840.10045.4.3.3") => &s::ECDSA_P384_SHA384_ASN1,
            (EC_KEY, Some(P384), "1.2.840.10045.4.3.2") => &s::ECDSA_P384_SHA256_ASN1,
            (RSA_KEY, _, "1.2.840.113549.1.1.11") => &s::RSA_PKCS1_2048_8192_SHA256,
            (RSA_KEY, _, "1.2.840.113549.1.1.12") => &s::RSA_PKCS1_2048_8192_SHA384,
            (RSA_KEY, _, "1.2.840.113549.1.1.13") => &s::RSA_PKCS1_2048_8192_SHA512,
            ("1.3.101.112", _, "1.3.101.112") => &s::ED25519,
            _ => return false,
        };
    s::UnparsedPublicKey::new(verifier, spki.subject_public_key.data.as_ref())
        .verify(signed, signature)
        .is_ok()
}
