//! CSR acceptance: parse, check the key against the allow-list, verify proof of possession.
//!
//! The CSR proves only that the caller holds the private key. Its subject, SANs and requested
//! extensions are never read into a certificate (DESIGN.md "Certificate hierarchy and profiles").

use ring::digest::{digest, SHA256};
use ring::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::error::Error;
use crate::issuance::SubjectPublicKey;

/// CSRs larger than this are refused before any parsing. An RSA-4096 CSR is under 2 KiB.
pub const MAX_CSR_BYTES: usize = 16 * 1024;

/// The key types medid accepts (DESIGN.md): ECDSA P-256/P-384, Ed25519, RSA 2048–4096, e = 65537.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    EcdsaP256,
    EcdsaP384,
    Ed25519,
    Rsa { bits: usize },
}

impl std::fmt::Display for KeyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyKind::EcdsaP256 => f.write_str("ECDSA P-256"),
            KeyKind::EcdsaP384 => f.write_str("ECDSA P-384"),
            KeyKind::Ed25519 => f.write_str("Ed25519"),
            KeyKind::Rsa { bits } => write!(f, "RSA-{bits}"),
        }
    }
}

/// A CSR whose signature verified with an accepted key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedCsr {
    pub key_kind: KeyKind,
    pub public_key: SubjectPublicKey,
    /// SHA-256 of the DER SubjectPublicKeyInfo, lowercase hex: the key's identity in the store.
    pub spki_sha256: String,
    /// What the request names. Never copied into a certificate; EST re-enrollment compares
    /// it with the current certificate, and EST factory enrollment reads the device serial.
    pub names: Names,
}

/// The distinguished name and subjectAltNames of a certificate or request: (attribute type
/// OID, value) pairs in order, and each general name's text form ("URI:…", "DNS:…").
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Names {
    pub subject: Vec<(String, String)>,
    pub subject_alt_names: Vec<String>,
}

impl Names {
    /// The first X.520 serialNumber (2.5.4.5) of the subject.
    pub fn serial_number(&self) -> Option<&str> {
        self.subject
            .iter()
            .find(|(oid, _)| *oid == accepted::dotted(accepted::SERIAL_NUMBER))
            .map(|(_, v)| v.as_str())
    }
}

fn dn_pairs(name: &x509_parser::x509::X509Name<'_>) -> Result<Vec<(String, String)>, String> {
    name.iter_attributes()
        .map(|a| {
            let oid = a.attr_type().to_id_string();
            a.as_str()
                .map(|v| (oid.clone(), v.to_owned()))
                .map_err(|_| format!("subject attribute {oid} is not a string"))
        })
        .collect()
}

fn general_name_text(name: &x509_parser::extensions::GeneralName<'_>) -> String {
    use x509_parser::extensions::GeneralName;
    match name {
        GeneralName::URI(u) => format!("URI:{u}"),
        GeneralName::DNSName(d) => format!("DNS:{d}"),
        GeneralName::RFC822Name(e) => format!("email:{e}"),
        GeneralName::IPAddress(ip) => format!("IP:{}", crate::domain::hex(ip)),
        GeneralName::OtherName(oid, value) => {
            format!(
                "otherName:{}:{}",
                oid.to_id_string(),
                crate::domain::hex(value)
            )
        }
        other => format!("{other:?}"),
    }
}

/// The names a certificate carries (for EST re-enrollment).
pub fn certificate_names(der: &[u8]) -> Result<Names, Error> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| Error::Internal(format!("reading a stored certificate: {e}")))?;
    let subject = dn_pairs(cert.subject()).map_err(Error::Internal)?;
    let subject_alt_names = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .map(general_name_text)
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => {
            return Err(Error::Internal(format!(
                "reading a stored certificate's SAN: {e}"
            )))
        }
    };
    Ok(Names {
        subject,
        subject_alt_names,
    })
}

fn request_names(csr: &X509CertificationRequest<'_>) -> Result<Names, Error> {
    let subject = dn_pairs(&csr.certification_request_info.subject).map_err(Error::BadCsr)?;
    let mut subject_alt_names = Vec::new();
    if let Some(extensions) = csr.requested_extensions() {
        for ext in extensions {
            if let x509_parser::extensions::ParsedExtension::SubjectAlternativeName(san) = ext {
                subject_alt_names.extend(san.general_names.iter().map(general_name_text));
            }
        }
    }
    Ok(Names {
        subject,
        subject_alt_names,
    })
}

/// Parses and verifies a DER CSR.
pub fn verify(der: &[u8]) -> Result<VerifiedCsr, Error> {
    if der.is_empty() {
        return Err(Error::BadCsr("the CSR is empty".into()));
    }
    if der.len() > MAX_CSR_BYTES {
        return Err(Error::BadCsr(format!(
            "the CSR is {} bytes; the limit is {MAX_CSR_BYTES}",
            der.len()
        )));
    }
    // x509-parser tolerates some BER; a CSR must be DER (and not nested absurdly deep).
    crate::der::check_strict(der, 16)
        .map_err(|why| Error::BadCsr(format!("not a DER PKCS#10 request ({why})")))?;
    let (rest, csr) = X509CertificationRequest::from_der(der)
        .map_err(|e| Error::BadCsr(format!("not a DER PKCS#10 request ({e})")))?;
    if !rest.is_empty() {
        return Err(Error::BadCsr(format!(
            "{} trailing bytes after the request",
            rest.len()
        )));
    }
    let info = &csr.certification_request_info;
    check_requested_extensions(info.raw)?;
    let key_kind = key_kind(&info.subject_pki)?;
    let alg = signature_algorithm(&csr.signature_algorithm.algorithm.to_id_string(), key_kind)?;
    let key_bits = info.subject_pki.subject_public_key.data.to_vec();
    UnparsedPublicKey::new(alg, &key_bits)
        .verify(info.raw, &csr.signature_value.data)
        .map_err(|_| {
            Error::BadCsr(
                "the signature does not verify with the CSR's public key (no proof of possession)"
                    .into(),
            )
        })?;

    let public_key = SubjectPublicKey {
        algorithm: match key_kind {
            KeyKind::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyKind::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            KeyKind::Ed25519 => &rcgen::PKCS_ED25519,
            KeyKind::Rsa { .. } => &rcgen::PKCS_RSA_SHA256,
        },
        key_bits,
    };
    // The certificate must carry exactly the key the CSR proved: re-encoding must be identical.
    let spki = info.subject_pki.raw;
    if rcgen::PublicKeyData::subject_public_key_info(&public_key) != spki {
        return Err(Error::BadCsr(
            "the SubjectPublicKeyInfo is not in its canonical DER form".into(),
        ));
    }
    Ok(VerifiedCsr {
        key_kind,
        public_key,
        spki_sha256: crate::domain::hex(digest(&SHA256, spki).as_ref()),
        names: request_names(&csr)?,
    })
}

/// Extensions a CSR may ask for without being refused. medid copies none of them (the profile
/// decides); a CSR that marks any other extension critical, or repeats one, is refused.
const KNOWN_EXTENSIONS: [&[u64]; 6] = [
    &[2, 5, 29, 15],              // keyUsage
    &[2, 5, 29, 17],              // subjectAltName
    &[2, 5, 29, 19],              // basicConstraints
    &[2, 5, 29, 37],              // extKeyUsage
    &[2, 5, 29, 14],              // subjectKeyIdentifier
    &[1, 3, 6, 1, 5, 5, 7, 1, 1], // authorityInfoAccess
];

/// Walks the CertificationRequestInfo's attributes (RFC 2986 §4.1) and, in an extensionRequest
/// (PKCS#9, 1.2.840.113549.1.9.14), refuses duplicate extensions and unknown critical ones.
fn check_requested_extensions(cri: &[u8]) -> Result<(), Error> {
    use crate::der::{tag, Reader};
    let malformed = || Error::BadCsr("the request's attributes are malformed".into());
    let mut outer = Reader::new(cri);
    let mut info = outer.expect(tag::SEQUENCE).ok_or_else(malformed)?.reader();
    info.expect(tag::INTEGER).ok_or_else(malformed)?;
    info.expect(tag::SEQUENCE).ok_or_else(malformed)?; // subject
    info.expect(tag::SEQUENCE).ok_or_else(malformed)?; // subjectPKInfo
    let Some(attributes) = info.optional(tag::context(0)) else {
        return Ok(());
    };
    let extension_request = crate::der::oid_content(&[1, 2, 840, 113549, 1, 9, 14]);
    let known: Vec<Vec<u8>> = KNOWN_EXTENSIONS
        .iter()
        .map(|o| crate::der::oid_content(o))
        .collect();
    let mut attrs = attributes.reader();
    while !attrs.is_empty() {
        let mut attr = attrs.expect(tag::SEQUENCE).ok_or_else(malformed)?.reader();
        let oid = attr.expect(tag::OID).ok_or_else(malformed)?;
        if oid.content != extension_request.as_slice() {
            continue;
        }
        let mut values = attr.expect(0x31).ok_or_else(malformed)?.reader();
        let mut seen: Vec<&[u8]> = Vec::new();
        while !values.is_empty() {
            let mut exts = values.expect(tag::SEQUENCE).ok_or_else(malformed)?.reader();
            while !exts.is_empty() {
                let mut ext = exts.expect(tag::SEQUENCE).ok_or_else(malformed)?.reader();
                let id = ext.expect(tag::OID).ok_or_else(malformed)?.content;
                let critical = ext.optional(tag::BOOLEAN).is_some_and(|b| b.content != [0]);
                if seen.contains(&id) {
                    return Err(Error::BadCsr(format!(
                        "the request repeats extension {}",
                        oid_text(id)
                    )));
                }
                seen.push(id);
                if critical && !known.iter().any(|k| k.as_slice() == id) {
                    return Err(Error::BadCsr(format!(
                        "the request marks unknown extension {} critical",
                        oid_text(id)
                    )));
                }
            }
        }
    }
    Ok(())
}

/// The name of a named curve medid refuses, for messages: the brainpool curves (RFC 5639),
/// the SEC 2 curves and the X9.62 prime curves beyond those matched above.
fn curve_name(oid: &str) -> Option<&'static str> {
    Some(match oid {
        "1.3.36.3.3.2.8.1.1.1" => "brainpoolP160r1",
        "1.3.36.3.3.2.8.1.1.3" => "brainpoolP192r1",
        "1.3.36.3.3.2.8.1.1.5" => "brainpoolP224r1",
        "1.3.36.3.3.2.8.1.1.7" => "brainpoolP256r1",
        "1.3.36.3.3.2.8.1.1.8" => "brainpoolP256t1",
        "1.3.36.3.3.2.8.1.1.9" => "brainpoolP320r1",
        "1.3.36.3.3.2.8.1.1.11" => "brainpoolP384r1",
        "1.3.36.3.3.2.8.1.1.12" => "brainpoolP384t1",
        "1.3.36.3.3.2.8.1.1.13" => "brainpoolP512r1",
        "1.3.36.3.3.2.8.1.1.14" => "brainpoolP512t1",
        "1.3.132.0.33" => "P-224 (secp224r1)",
        "1.3.132.0.31" => "secp192k1",
        "1.3.132.0.32" => "secp224k1",
        "1.2.840.10045.3.1.2" => "prime192v2",
        "1.2.840.10045.3.1.3" => "prime192v3",
        "1.2.840.10045.3.1.4" => "prime239v1",
        "1.2.840.10045.3.1.5" => "prime239v2",
        "1.2.840.10045.3.1.6" => "prime239v3",
        "1.2.156.10197.1.301" => "SM2",
        _ => return None,
    })
}

/// Dotted form of OID content octets, for messages.
fn oid_text(content: &[u8]) -> String {
    let mut arcs: Vec<u64> = Vec::new();
    let mut v = 0u64;
    for b in content {
        v = (v << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            arcs.push(v);
            v = 0;
        }
    }
    let Some(first) = arcs.first().copied() else {
        return "(empty)".into();
    };
    let (a, b) = if first < 80 {
        (first / 40, first % 40)
    } else {
        (2, first - 80)
    };
    std::iter::once(a)
        .chain(std::iter::once(b))
        .chain(arcs.into_iter().skip(1))
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(".")
}

/// What medid accepts, by OID arcs: the key checks below and the EST `csrattrs` answer
/// (which asks clients for exactly these) both read them.
pub mod accepted {
    use super::KeyKind;

    pub const EC_PUBLIC_KEY: &[u64] = &[1, 2, 840, 10045, 2, 1];
    pub const ED25519: &[u64] = &[1, 3, 101, 112];
    pub const RSA_ENCRYPTION: &[u64] = &[1, 2, 840, 113549, 1, 1, 1];
    /// The named curves, with their key kind and uncompressed point length.
    pub const CURVES: [(&[u64], KeyKind, usize); 2] = [
        (&[1, 2, 840, 10045, 3, 1, 7], KeyKind::EcdsaP256, 65),
        (&[1, 3, 132, 0, 34], KeyKind::EcdsaP384, 97),
    ];
    /// The signature algorithms EST asks for (verification accepts SHA-384/512 too).
    pub const ECDSA_WITH_SHA256: &[u64] = &[1, 2, 840, 10045, 4, 3, 2];
    pub const SHA256_WITH_RSA: &[u64] = &[1, 2, 840, 113549, 1, 1, 11];
    /// The subject attribute EST factory enrollment reads the device serial from.
    pub const SERIAL_NUMBER: &[u64] = &[2, 5, 4, 5];

    /// Dotted form of OID arcs ("1.2.840.10045.2.1").
    pub fn dotted(arcs: &[u64]) -> String {
        arcs.iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(".")
    }
}

fn key_kind(spki: &SubjectPublicKeyInfo<'_>) -> Result<KeyKind, Error> {
    use accepted::dotted;
    let refuse = |what: &str| {
        Err(Error::BadCsr(format!(
            "{what} keys are not accepted; use ECDSA P-256 or P-384, Ed25519, or RSA 2048–4096"
        )))
    };
    match spki.algorithm.algorithm.to_id_string().as_str() {
        a if a == dotted(accepted::RSA_ENCRYPTION) => rsa_key_kind(spki),
        a if a == dotted(accepted::EC_PUBLIC_KEY) => {
            let Some(params) = &spki.algorithm.parameters else {
                return Err(Error::BadCsr("EC key without curve parameters".into()));
            };
            // A named curve is an OID; explicit parameters are a SEQUENCE (RFC 5480 §2.1.1).
            let named = params.header.tag() == x509_parser::der_parser::asn1_rs::Tag::Oid;
            let curve = match params.clone().oid() {
                Ok(oid) if named => oid.to_id_string(),
                _ => return Err(Error::BadCsr(
                    "explicit EC curve parameters are refused; use a named curve (P-256 or P-384)"
                        .into(),
                )),
            };
            let known = accepted::CURVES
                .iter()
                .find(|(arcs, ..)| dotted(arcs) == curve);
            let (kind, point_len) = match (known, curve.as_str()) {
                (Some((_, kind, len)), _) => (*kind, *len),
                (None, "1.2.840.10045.3.1.1") => return refuse("ECDSA P-192"),
                (None, "1.3.132.0.10") => return refuse("ECDSA secp256k1"),
                (None, "1.3.132.0.35") => return refuse("ECDSA P-521"),
                (None, other) => {
                    let name = curve_name(other).map_or_else(
                        || format!("ECDSA on curve {other}"),
                        |n| format!("ECDSA {n} ({other})"),
                    );
                    return refuse(&name);
                }
            };
            let point = &spki.subject_public_key.data;
            if point.len() != point_len || point.first() != Some(&0x04) {
                return Err(Error::BadCsr(format!(
                    "{kind} public key must be an uncompressed point of {point_len} bytes"
                )));
            }
            Ok(kind)
        }
        a if a == dotted(accepted::ED25519) => {
            if spki.subject_public_key.data.len() != 32 {
                return Err(Error::BadCsr("Ed25519 public key must be 32 bytes".into()));
            }
            Ok(KeyKind::Ed25519)
        }
        "1.3.101.113" => refuse("Ed448"),
        "1.2.840.10040.4.1" => refuse("DSA"),
        "1.2.840.113549.1.1.10" => refuse("RSASSA-PSS-only"),
        other => refuse(&format!("algorithm {other}")),
    }
}

fn rsa_key_kind(spki: &SubjectPublicKeyInfo<'_>) -> Result<KeyKind, Error> {
    let Ok(PublicKey::RSA(rsa)) = spki.parsed() else {
        return Err(Error::BadCsr("RSA public key is malformed".into()));
    };
    let modulus = strip_leading_zeros(rsa.modulus);
    let bits = match modulus.first() {
        Some(top) => modulus.len() * 8 - top.leading_zeros() as usize,
        None => 0,
    };
    if !(2048..=4096).contains(&bits) {
        return Err(Error::BadCsr(format!(
            "RSA-{bits} keys are not accepted; RSA keys must be 2048–4096 bits"
        )));
    }
    if strip_leading_zeros(rsa.exponent) != [0x01, 0x00, 0x01] {
        return Err(Error::BadCsr("RSA public exponent must be 65537".into()));
    }
    Ok(KeyKind::Rsa { bits })
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

/// The ring verification algorithm for a CSR's signature algorithm and key.
fn signature_algorithm(
    oid: &str,
    key: KeyKind,
) -> Result<&'static dyn VerificationAlgorithm, Error> {
    use KeyKind::*;
    let alg: &'static dyn VerificationAlgorithm = match (oid, key) {
        ("1.2.840.10045.4.3.2", EcdsaP256) => &signature::ECDSA_P256_SHA256_ASN1,
        ("1.2.840.10045.4.3.2", EcdsaP384) => &signature::ECDSA_P384_SHA256_ASN1,
        ("1.2.840.10045.4.3.3", EcdsaP256) => &signature::ECDSA_P256_SHA384_ASN1,
        ("1.2.840.10045.4.3.3", EcdsaP384) => &signature::ECDSA_P384_SHA384_ASN1,
        ("1.3.101.112", Ed25519) => &signature::ED25519,
        ("1.2.840.113549.1.1.11", Rsa { .. }) => &signature::RSA_PKCS1_2048_8192_SHA256,
        ("1.2.840.113549.1.1.12", Rsa { .. }) => &signature::RSA_PKCS1_2048_8192_SHA384,
        ("1.2.840.113549.1.1.13", Rsa { .. }) => &signature::RSA_PKCS1_2048_8192_SHA512,
        ("1.2.840.113549.1.1.4", _) | ("1.2.840.113549.1.1.2", _) => {
            return Err(Error::BadCsr(
                "the CSR is signed with MD5, which is refused".into(),
            ))
        }
        ("1.2.840.113549.1.1.5", _) | ("1.2.840.10045.4.1", _) | ("1.2.840.10040.4.3", _) => {
            return Err(Error::BadCsr(
                "the CSR is signed with SHA-1, which is refused; use SHA-256 or stronger".into(),
            ))
        }
        ("1.2.840.113549.1.1.10", _) => {
            return Err(Error::BadCsr(
                "RSASSA-PSS CSR signatures are not supported; sign with PKCS#1 v1.5 and SHA-256"
                    .into(),
            ))
        }
        (other, key) => {
            return Err(Error::BadCsr(format!(
                "signature algorithm {other} is not accepted with a {key} key"
            )))
        }
    };
    Ok(alg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair};

    fn csr_for(alg: &'static rcgen::SignatureAlgorithm) -> Vec<u8> {
        let key = KeyPair::generate_for(alg).unwrap();
        CertificateParams::new(vec![])
            .unwrap()
            .serialize_request(&key)
            .unwrap()
            .der()
            .to_vec()
    }

    #[test]
    fn accepts_each_allowed_key_type_generated_by_rcgen() {
        for (alg, kind) in [
            (&rcgen::PKCS_ECDSA_P256_SHA256, KeyKind::EcdsaP256),
            (&rcgen::PKCS_ECDSA_P384_SHA384, KeyKind::EcdsaP384),
            (&rcgen::PKCS_ED25519, KeyKind::Ed25519),
        ] {
            let v = verify(&csr_for(alg)).unwrap();
            assert_eq!(v.key_kind, kind);
            assert_eq!(v.spki_sha256.len(), 64);
        }
    }

    #[test]
    fn a_flipped_signature_bit_is_no_proof_of_possession() {
        let mut der = csr_for(&rcgen::PKCS_ECDSA_P256_SHA256);
        let last = der.len() - 1;
        der[last] ^= 0x01;
        let err = verify(&der).unwrap_err();
        assert!(err.to_string().contains("does not verify"), "{err}");
    }

    #[test]
    fn empty_garbage_trailing_and_oversized_input_is_refused() {
        assert_eq!(
            verify(&[]).unwrap_err(),
            Error::BadCsr("the CSR is empty".into())
        );
        assert!(verify(b"hello world")
            .unwrap_err()
            .to_string()
            .contains("not a DER"));
        let mut der = csr_for(&rcgen::PKCS_ED25519);
        der.push(0);
        assert!(verify(&der).unwrap_err().to_string().contains("trailing"));
        let big = vec![0x30; MAX_CSR_BYTES + 1];
        assert!(verify(&big).unwrap_err().to_string().contains("limit"));
    }

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/data")
                .join(name),
        )
        .unwrap()
    }

    #[test]
    fn openssl_made_hostile_csrs_are_refused_by_name() {
        for (file, needle) in [
            ("rsa2048-e3.csr", "65537"),
            ("rsa8192.csr", "RSA-8192"),
            ("rsa2048-md5.csr", "MD5"),
            ("p256-explicit.csr", "explicit"),
            ("rsa1024.csr", "RSA-1024"),
            ("p192.csr", "P-192"),
            ("secp256k1.csr", "secp256k1"),
            ("ed448.csr", "Ed448"),
            ("p256-sha1.csr", "SHA-1"),
        ] {
            let err = verify(&fixture(file)).unwrap_err().to_string();
            assert!(err.contains(needle), "{file}: {err}");
        }
        assert!(verify(&fixture("rsa2048.csr")).is_ok());
    }

    #[test]
    fn duplicate_and_unknown_critical_extension_requests_are_refused() {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(vec![]).unwrap();
        let ext = rcgen::CustomExtension::from_oid_content(&[1, 2, 3, 4], vec![0x05, 0x00]);
        params.custom_extensions = vec![ext.clone(), ext];
        let dup = params.serialize_request(&key).unwrap().der().to_vec();
        let err = verify(&dup).unwrap_err().to_string();
        assert!(err.contains("repeats extension 1.2.3.4"), "{err}");

        let err = verify(&fixture("p256-unknown-critical.csr"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unknown extension 1.2.3.4.5 critical"),
            "{err}"
        );

        // Known extensions, even critical, are fine (and never copied).
        assert!(verify(&fixture("p256-requests-ca.csr")).is_ok());
        let mut params = CertificateParams::new(vec![]).unwrap();
        let mut noncritical =
            rcgen::CustomExtension::from_oid_content(&[1, 2, 3, 4], vec![0x05, 0x00]);
        noncritical.set_criticality(false);
        params.custom_extensions = vec![noncritical];
        assert!(verify(params.serialize_request(&key).unwrap().der()).is_ok());
    }

    #[test]
    fn ber_encodings_are_refused() {
        let der = csr_for(&rcgen::PKCS_ECDSA_P256_SHA256);
        // Re-encode the outer SEQUENCE length in a non-minimal long form (BER, not DER).
        let (header, body) = if der[1] & 0x80 == 0 {
            (2, &der[2..])
        } else {
            (
                2 + (der[1] & 0x7f) as usize,
                &der[2 + (der[1] & 0x7f) as usize..],
            )
        };
        let _ = header;
        let mut ber = vec![0x30, 0x84];
        ber.extend_from_slice(&(body.len() as u32).to_be_bytes());
        ber.extend_from_slice(body);
        assert!(verify(&ber).is_err(), "non-minimal length accepted");
        // Indefinite length with end-of-contents.
        let mut indefinite = vec![0x30, 0x80];
        indefinite.extend_from_slice(body);
        indefinite.extend_from_slice(&[0, 0]);
        assert!(verify(&indefinite).is_err(), "indefinite length accepted");
    }

    #[test]
    fn ten_thousand_nested_sequences_are_refused_without_exhausting_the_stack() {
        let mut der = vec![0x05, 0x00];
        for _ in 0..10_000 {
            der = crate::der::tlv(0x30, &der);
        }
        assert!(verify(&der).is_err() || der.len() > MAX_CSR_BYTES);
        let small: Vec<u8> = (0..7000).flat_map(|_| [0x30u8, 0x80]).collect();
        assert!(verify(&small).is_err());
    }

    #[test]
    fn every_truncation_is_refused_without_panic() {
        let der = csr_for(&rcgen::PKCS_ECDSA_P256_SHA256);
        for len in 0..der.len() {
            assert!(verify(&der[..len]).is_err(), "truncated at {len}");
        }
    }
}
