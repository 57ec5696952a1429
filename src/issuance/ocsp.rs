//! OCSP responses (RFC 6960), encoded by hand and signed by a delegated responder whose
//! certificate the issuing CA gave EKU id-kp-OCSPSigning and id-pkix-ocsp-nocheck.
//!
//! ```text
//! OCSPResponse ::= SEQUENCE { responseStatus ENUMERATED, responseBytes [0] EXPLICIT ResponseBytes OPTIONAL }
//! ResponseBytes ::= SEQUENCE { responseType OID id-pkix-ocsp-basic, response OCTET STRING }
//! BasicOCSPResponse ::= SEQUENCE { tbsResponseData, signatureAlgorithm, signature BIT STRING,
//!                                  certs [0] EXPLICIT SEQUENCE OF Certificate }
//! ResponseData ::= SEQUENCE { responderID [2] EXPLICIT KeyHash, producedAt GeneralizedTime,
//!                             responses SEQUENCE OF SingleResponse, responseExtensions [1] EXPLICIT }
//! ```

use rcgen::{KeyPair, SigningKey};
use ring::digest;
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

use crate::der::{self, tag};
use crate::domain::RevocationReason;
use crate::error::Error;

/// id-pkix-ocsp-basic, 1.3.6.1.5.5.7.48.1.1
const OID_OCSP_BASIC: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 48, 1, 1];
/// id-pkix-ocsp-nonce, 1.3.6.1.5.5.7.48.1.2
pub const OID_OCSP_NONCE: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 48, 1, 2];
/// ecdsa-with-SHA256, 1.2.840.10045.4.3.2
const OID_ECDSA_SHA256: &[u64] = &[1, 2, 840, 10045, 4, 3, 2];

/// The CertID hash algorithms medid answers for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashAlg {
    Sha1,
    Sha256,
}

impl HashAlg {
    pub fn from_oid(oid: &[u8]) -> Option<Self> {
        if oid == der::oid_content(&[1, 3, 14, 3, 2, 26]) {
            Some(HashAlg::Sha1)
        } else if oid == der::oid_content(&[2, 16, 840, 1, 101, 3, 4, 2, 1]) {
            Some(HashAlg::Sha256)
        } else {
            None
        }
    }

    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        let alg = match self {
            HashAlg::Sha1 => &digest::SHA1_FOR_LEGACY_USE_ONLY,
            HashAlg::Sha256 => &digest::SHA256,
        };
        digest::digest(alg, data).as_ref().to_vec()
    }
}

/// What medid says about one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertStatus {
    Good,
    Revoked {
        at: OffsetDateTime,
        reason: Option<RevocationReason>,
    },
    /// Never issued by this CA, or not (yet) recorded: never "good".
    Unknown,
}

/// One answer: the CertID exactly as the client sent it, and the status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SingleResponse {
    pub cert_id_der: Vec<u8>,
    pub status: CertStatus,
    pub this_update: OffsetDateTime,
    pub next_update: OffsetDateTime,
}

/// OCSPResponseStatus values for unsuccessful responses (RFC 6960 §4.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorStatus {
    MalformedRequest = 1,
    InternalError = 2,
    TryLater = 3,
    Unauthorized = 6,
}

/// An unsigned OCSPResponse carrying only an error status.
pub fn error_response(status: ErrorStatus) -> Vec<u8> {
    der::sequence(&[&der::tlv(tag::ENUMERATED, &[status as u8])])
}

pub(super) struct Responder {
    key: KeyPair,
    cert: CertificateDer<'static>,
    /// SHA-1 of the responder's public key bits: its ResponderID byKey.
    key_hash: Vec<u8>,
    pub(super) not_after: OffsetDateTime,
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder")
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Responder {
    pub(super) fn new(
        key: KeyPair,
        cert: CertificateDer<'static>,
        not_after: OffsetDateTime,
    ) -> Self {
        let key_hash = HashAlg::Sha1.digest(key.public_key_raw());
        Self {
            key,
            cert,
            key_hash,
            not_after,
        }
    }

    pub(super) fn sign(
        &self,
        responses: &[SingleResponse],
        nonce: Option<&[u8]>,
        produced_at: OffsetDateTime,
    ) -> Result<Vec<u8>, Error> {
        let singles: Vec<Vec<u8>> = responses.iter().map(single_response).collect();
        let mut data = vec![
            der::tlv(
                tag::context(2),
                &der::tlv(tag::OCTET_STRING, &self.key_hash),
            ),
            der::generalized_time(produced_at),
            der::tlv(tag::SEQUENCE, &singles.concat()),
        ];
        if let Some(nonce) = nonce {
            // Echo the client's nonce extension value unchanged (RFC 8954).
            let ext = der::sequence(&[
                &der::oid(OID_OCSP_NONCE),
                &der::tlv(tag::OCTET_STRING, nonce),
            ]);
            data.push(der::tlv(tag::context(1), &der::sequence(&[&ext])));
        }
        let parts: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
        let tbs = der::sequence(&parts);
        let signature = self
            .key
            .sign(&tbs)
            .map_err(|e| Error::internal("signing OCSP response", e))?;
        let mut bits = vec![0u8];
        bits.extend(signature);
        let basic = der::sequence(&[
            &tbs,
            &der::sequence(&[&der::oid(OID_ECDSA_SHA256)]),
            &der::tlv(tag::BIT_STRING, &bits),
            &der::tlv(tag::context(0), &der::sequence(&[self.cert.as_ref()])),
        ]);
        let response_bytes = der::sequence(&[
            &der::oid(OID_OCSP_BASIC),
            &der::tlv(tag::OCTET_STRING, &basic),
        ]);
        Ok(der::sequence(&[
            &der::tlv(tag::ENUMERATED, &[0]),
            &der::tlv(tag::context(0), &response_bytes),
        ]))
    }
}

fn single_response(r: &SingleResponse) -> Vec<u8> {
    let status = match &r.status {
        CertStatus::Good => der::tlv(tag::context_primitive(0), &[]),
        CertStatus::Revoked { at, reason } => {
            let mut info = der::generalized_time(*at);
            if let Some(reason) = reason {
                let code = der::tlv(tag::ENUMERATED, &[reason.code() as u8]);
                info.extend(der::tlv(tag::context(0), &code));
            }
            der::tlv(tag::context(1), &info)
        }
        CertStatus::Unknown => der::tlv(tag::context_primitive(2), &[]),
    };
    der::sequence(&[
        &r.cert_id_der,
        &status,
        &der::generalized_time(r.this_update),
        &der::tlv(tag::context(0), &der::generalized_time(r.next_update)),
    ])
}
