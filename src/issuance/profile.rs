//! What a certificate will contain, as decided by policy, and its translation to rcgen.
//!
//! rcgen signs whatever it is given (REFERENCE.md "rcgen 0.14"), so every field it would
//! default is set here explicitly: serial, validity, AKI, basic constraints, key usage.

use std::net::IpAddr;

use rcgen::{
    CertificateParams, CrlDistributionPoint, CustomExtension, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
    SignatureAlgorithm,
};
use time::OffsetDateTime;

use super::IssuerId;
use crate::der;
use crate::domain::CertSerial;
use crate::error::Error;

/// Extended key usages medid issues. Never anyExtendedKeyUsage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eku {
    ClientAuth,
    ServerAuth,
    /// id-kp-OCSPSigning: only on delegated OCSP responder certificates.
    OcspSigning,
    /// The IEEE 11073-20701 SDC Participant Key Purpose of a service provider
    /// (1.2.840.10004.20701.1.1).
    SdcServiceProvider,
    /// The SDC Participant Key Purpose of a service consumer (1.2.840.10004.20701.1.2).
    SdcServiceConsumer,
}

/// Subject attributes. Each is optional; policy decides which a profile carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubjectName {
    pub organization: Option<String>,
    pub organizational_unit: Option<String>,
    pub common_name: Option<String>,
    /// X.520 serialNumber (2.5.4.5), a PrintableString: the device serial for device profiles.
    pub serial_number: Option<String>,
}

/// A subject public key accepted by policy: the SubjectPublicKeyInfo parts rcgen re-encodes.
#[derive(Clone, PartialEq, Eq)]
pub struct SubjectPublicKey {
    /// The algorithm whose AlgorithmIdentifier names this key type (rcgen writes the
    /// SPKI's AlgorithmIdentifier from it).
    pub algorithm: &'static SignatureAlgorithm,
    /// The subjectPublicKey BIT STRING contents.
    pub key_bits: Vec<u8>,
}

impl std::fmt::Debug for SubjectPublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubjectPublicKey")
            .field("algorithm", &self.algorithm)
            .field("key_bytes", &self.key_bits.len())
            .finish()
    }
}

impl PublicKeyData for SubjectPublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.key_bits
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.algorithm
    }
}

/// Everything that goes into one end-entity certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateTemplate {
    pub issuer: IssuerId,
    pub serial: CertSerial,
    pub subject: SubjectName,
    pub san_uris: Vec<String>,
    pub san_dns: Vec<String>,
    pub san_ips: Vec<IpAddr>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub ekus: Vec<Eku>,
    /// CRL distribution point URL (RFC 5280 §4.2.1.13).
    pub crl_url: Option<String>,
    /// OCSP responder URL (AIA id-ad-ocsp, RFC 5280 §4.2.2.1).
    pub ocsp_url: Option<String>,
    /// Where the issuer certificate can be fetched (AIA id-ad-caIssuers).
    pub ca_issuers_url: Option<String>,
    /// id-pkix-ocsp-nocheck (RFC 6960 §4.2.2.2.1), for delegated OCSP responders.
    pub ocsp_nocheck: bool,
    pub public_key: SubjectPublicKey,
}

const OID_AUTHORITY_INFO_ACCESS: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 1, 1];
const OID_AD_OCSP: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 48, 1];
const OID_AD_CA_ISSUERS: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 48, 2];
const OID_SERIAL_NUMBER: &[u64] = &[2, 5, 4, 5];
const OID_OCSP_NOCHECK: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 48, 1, 5];

impl CertificateTemplate {
    /// The rcgen parameters of this template, every default overridden. Signing them with a
    /// medid CA key is `Authority::sign`'s job alone; this is public
    /// so the micro-benchmarks can sign the same certificate with a key of their own.
    pub fn to_params(&self) -> Result<CertificateParams, Error> {
        let mut p = CertificateParams::default();
        p.serial_number = Some(SerialNumber::from_slice(self.serial.as_bytes()));
        p.not_before = self.not_before;
        p.not_after = self.not_after;
        p.distinguished_name = self.subject.to_dn()?;
        // ExplicitNoCa: basicConstraints CA:FALSE, and rcgen then also writes the SKI.
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = self
            .ekus
            .iter()
            .map(|e| match e {
                Eku::ClientAuth => ExtendedKeyUsagePurpose::ClientAuth,
                Eku::ServerAuth => ExtendedKeyUsagePurpose::ServerAuth,
                Eku::OcspSigning => ExtendedKeyUsagePurpose::OcspSigning,
                Eku::SdcServiceProvider => {
                    ExtendedKeyUsagePurpose::Other(vec![1, 2, 840, 10004, 20701, 1, 1])
                }
                Eku::SdcServiceConsumer => {
                    ExtendedKeyUsagePurpose::Other(vec![1, 2, 840, 10004, 20701, 1, 2])
                }
            })
            .collect();
        p.use_authority_key_identifier_extension = true;
        p.subject_alt_names = self.subject_alt_names()?;
        if let Some(url) = &self.crl_url {
            p.crl_distribution_points = vec![CrlDistributionPoint {
                uris: vec![url.clone()],
            }];
        }
        let mut access = Vec::new();
        if let Some(url) = &self.ocsp_url {
            access.push((OID_AD_OCSP, url.as_str()));
        }
        if let Some(url) = &self.ca_issuers_url {
            access.push((OID_AD_CA_ISSUERS, url.as_str()));
        }
        if !access.is_empty() {
            p.custom_extensions.push(CustomExtension::from_oid_content(
                OID_AUTHORITY_INFO_ACCESS,
                authority_info_access(&access),
            ));
        }
        if self.ocsp_nocheck {
            p.custom_extensions.push(CustomExtension::from_oid_content(
                OID_OCSP_NOCHECK,
                der::tlv(der::tag::NULL, &[]),
            ));
        }
        Ok(p)
    }

    fn subject_alt_names(&self) -> Result<Vec<SanType>, Error> {
        let mut sans = Vec::new();
        for uri in &self.san_uris {
            sans.push(SanType::URI(ia5(uri)?));
        }
        for name in &self.san_dns {
            sans.push(SanType::DnsName(ia5(name)?));
        }
        sans.extend(self.san_ips.iter().copied().map(SanType::IpAddress));
        Ok(sans)
    }
}

impl SubjectName {
    fn to_dn(&self) -> Result<DistinguishedName, Error> {
        let mut dn = DistinguishedName::new();
        if let Some(o) = &self.organization {
            dn.push(DnType::OrganizationName, DnValue::Utf8String(o.clone()));
        }
        if let Some(ou) = &self.organizational_unit {
            dn.push(
                DnType::OrganizationalUnitName,
                DnValue::Utf8String(ou.clone()),
            );
        }
        if let Some(cn) = &self.common_name {
            dn.push(DnType::CommonName, DnValue::Utf8String(cn.clone()));
        }
        if let Some(sn) = &self.serial_number {
            let ps = rcgen::string::PrintableString::try_from(sn.as_str()).map_err(|_| {
                Error::Internal(format!("serialNumber {sn:?} is not a PrintableString"))
            })?;
            dn.push(
                DnType::CustomDnType(OID_SERIAL_NUMBER.to_vec()),
                DnValue::PrintableString(ps),
            );
        }
        Ok(dn)
    }
}

fn ia5(s: &str) -> Result<rcgen::string::Ia5String, Error> {
    rcgen::string::Ia5String::try_from(s)
        .map_err(|_| Error::Internal(format!("{s:?} is not an IA5String")))
}

/// DER of AuthorityInfoAccessSyntax ::= SEQUENCE OF AccessDescription, each
/// { accessMethod OBJECT IDENTIFIER, accessLocation [6] IMPLICIT IA5String (URI) }.
fn authority_info_access(entries: &[(&[u64], &str)]) -> Vec<u8> {
    let descriptions: Vec<Vec<u8>> = entries
        .iter()
        .map(|(oid, uri)| {
            der::sequence(&[
                &der::oid(oid),
                &der::tlv(der::tag::context_primitive(6), uri.as_bytes()),
            ])
        })
        .collect();
    der::tlv(der::tag::SEQUENCE, &descriptions.concat())
}
