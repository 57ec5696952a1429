//! Validated domain values. Each is built once, at the edge, with `parse`/`TryFrom`; the rest
//! of the code cannot hold an unchecked one ("parse, don't validate").

use std::fmt;

use crate::error::Error;

/// Characters of an ASN.1 PrintableString (X.680 §41.4), the type of subject serialNumber.
fn is_printable_string_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || " '()+,-./:=?".contains(c)
}

/// Lowercase slug: `[a-z0-9-]`, 1–63 characters, no leading or trailing '-'.
fn check_slug(what: &str, s: &str) -> Result<(), Error> {
    let ok = (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "{what} must be 1–63 characters of a-z, 0-9 and '-', not starting or ending with '-' (got {})",
            quote(s)
        )))
    }
}

/// Quotes a caller-supplied value for an error message: at most 80 characters, escaped,
/// so a hostile value cannot forge log lines or flood a message.
pub fn quote(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(80)
        .collect::<String>()
        .escape_debug()
        .to_string();
    if s.chars().count() > 80 {
        out.push('…');
    }
    format!("\"{out}\"")
}

macro_rules! slug_type {
    ($name:ident, $what:literal) => {
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            pub fn parse(s: &str) -> Result<Self, Error> {
                check_slug($what, s)?;
                Ok(Self(s.to_owned()))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

slug_type!(ManufacturerId, "manufacturer id");
slug_type!(PrincipalId, "principal id");

/// A device serial number: a PrintableString of 1–64 characters (X.520 serialNumber,
/// IEEE 802.1AR), without leading or trailing spaces.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeviceSerial(String);

impl DeviceSerial {
    pub fn parse(s: &str) -> Result<Self, Error> {
        check_printable("device serial", s)?;
        Ok(Self(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A device model name: a PrintableString of 1–64 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Model(String);

impl Model {
    pub fn parse(s: &str) -> Result<Self, Error> {
        check_printable("device model", s)?;
        Ok(Self(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn check_printable(what: &str, s: &str) -> Result<(), Error> {
    if s.is_empty() || s.len() > 64 {
        return Err(Error::InvalidArgument(format!(
            "{what} must be 1–64 characters (got {} characters)",
            s.chars().count()
        )));
    }
    if let Some(c) = s.chars().find(|c| !is_printable_string_char(*c)) {
        return Err(Error::InvalidArgument(format!(
            "{what} {} contains {:?}, which is not a PrintableString character \
             (allowed: A-Z a-z 0-9 space ' ( ) + , - . / : = ?)",
            quote(s),
            c
        )));
    }
    if s.starts_with(' ') || s.ends_with(' ') {
        return Err(Error::InvalidArgument(format!(
            "{what} {} must not start or end with a space",
            quote(s)
        )));
    }
    Ok(())
}

/// A GS1 GTIN-14, used as the FDA UDI device identifier (UDI-DI). The check digit is verified.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Gtin14(String);

impl Gtin14 {
    pub fn parse(s: &str) -> Result<Self, Error> {
        if s.len() != 14 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Error::InvalidArgument(format!(
                "UDI-DI must be a GTIN-14: exactly 14 digits (got {})",
                quote(s)
            )));
        }
        let digits: Vec<u32> = s.bytes().map(|b| u32::from(b - b'0')).collect();
        // GS1 General Specifications §7.9.1: weights 3,1,3,1,… from the right, excluding the check digit.
        let sum: u32 = digits[..13]
            .iter()
            .rev()
            .enumerate()
            .map(|(i, d)| if i % 2 == 0 { d * 3 } else { *d })
            .sum();
        let expected = (10 - sum % 10) % 10;
        if digits[13] != expected {
            return Err(Error::InvalidArgument(format!(
                "UDI-DI {s} has check digit {} but its first 13 digits give {expected}",
                digits[13]
            )));
        }
        Ok(Self(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The SPIFFE-style trust domain that prefixes every principal URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustDomain(String);

impl TrustDomain {
    pub fn parse(s: &str) -> Result<Self, Error> {
        let ok = (1..=255).contains(&s.len())
            && s.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.' || b == b'_'
            });
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(Error::InvalidArgument(format!(
                "trust domain must be 1–255 characters of a-z, 0-9, '.', '-' and '_' (got {})",
                quote(s)
            )))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn device_uri(&self, manufacturer: &ManufacturerId, serial: &DeviceSerial) -> String {
        format!(
            "spiffe://{}/device/{}/{}",
            self.0,
            manufacturer,
            percent_encode(serial.as_str())
        )
    }

    /// The URI of a non-device principal.
    pub fn principal_uri(&self, role: &PrincipalRole, id: &PrincipalId) -> String {
        match role {
            PrincipalRole::Admin => format!("spiffe://{}/admin/{id}", self.0),
            PrincipalRole::Gateway => format!("spiffe://{}/gateway/{id}", self.0),
            PrincipalRole::Auditor => format!("spiffe://{}/auditor/{id}", self.0),
            PrincipalRole::Station(m) => {
                format!("spiffe://{}/manufacturer/{m}/station/{id}", self.0)
            }
        }
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters, for URI path segments.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A non-device principal's role, with its scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrincipalRole {
    Admin,
    Station(ManufacturerId),
    Gateway,
    Auditor,
}

impl PrincipalRole {
    pub fn role(&self) -> Role {
        match self {
            PrincipalRole::Admin => Role::Admin,
            PrincipalRole::Station(_) => Role::Station,
            PrincipalRole::Gateway => Role::Gateway,
            PrincipalRole::Auditor => Role::Auditor,
        }
    }
}

/// Every role medid knows, as written in the store and in audit events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Admin,
    Station,
    Gateway,
    Auditor,
    Device,
    /// medid's own certificates (OCSP responders); never a client.
    Service,
    /// A certificate known only from a published CRL (revoked after the database's backup,
    /// issued after it): its holder is unknown. Never a client.
    Unrecorded,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Station => "manufacturer-station",
            Role::Gateway => "gateway",
            Role::Auditor => "auditor",
            Role::Device => "device",
            Role::Service => "service",
            Role::Unrecorded => "unrecorded",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        [
            Role::Admin,
            Role::Station,
            Role::Gateway,
            Role::Auditor,
            Role::Device,
            Role::Service,
            Role::Unrecorded,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The profile a certificate was issued under (DESIGN.md "Certificate hierarchy and
/// profiles"), as written in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Profile {
    /// A device's birth certificate (IDevID style), from the device-identity CA.
    DeviceBirth,
    /// A device's short-lived operational certificate (LDevID style).
    DeviceOperational,
    /// A station, gateway, auditor or admin certificate.
    Principal,
    /// The service's own TLS server certificate.
    Server,
    /// A delegated OCSP responder certificate.
    OcspResponder,
    /// Known only from a published CRL (see [`Role::Unrecorded`]).
    Unrecorded,
}

impl Profile {
    pub const ALL: [Profile; 6] = [
        Profile::DeviceBirth,
        Profile::DeviceOperational,
        Profile::Principal,
        Profile::Server,
        Profile::OcspResponder,
        Profile::Unrecorded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Profile::DeviceBirth => "device-birth",
            Profile::DeviceOperational => "device-operational",
            Profile::Principal => "principal",
            Profile::Server => "server",
            Profile::OcspResponder => "ocsp-responder",
            Profile::Unrecorded => "unrecorded",
        }
    }

    pub fn parse(s: &str) -> Option<Profile> {
        Profile::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a certificate's subject stands: a principal (active or disabled by eviction) or a
/// device (active or decommissioned).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SubjectState {
    Active,
    Disabled,
    Decommissioned,
}

impl SubjectState {
    pub fn as_str(self) -> &'static str {
        match self {
            SubjectState::Active => "active",
            SubjectState::Disabled => "disabled",
            SubjectState::Decommissioned => "decommissioned",
        }
    }

    pub fn parse(s: &str) -> Option<SubjectState> {
        [
            SubjectState::Active,
            SubjectState::Disabled,
            SubjectState::Decommissioned,
        ]
        .into_iter()
        .find(|c| c.as_str() == s)
    }
}

impl fmt::Display for SubjectState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a certificate stands in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CertState {
    /// Signed and recorded, not revoked (it may have expired).
    Active,
    /// Revoked; the row carries when and why.
    Revoked,
    /// A serial reserved by a version that reserved before signing, whose issuance never
    /// completed. Never reported good.
    Reserved,
}

impl CertState {
    pub fn as_str(self) -> &'static str {
        match self {
            CertState::Active => "active",
            CertState::Revoked => "revoked",
            CertState::Reserved => "reserved",
        }
    }

    pub fn parse(s: &str) -> Option<CertState> {
        [CertState::Active, CertState::Revoked, CertState::Reserved]
            .into_iter()
            .find(|c| c.as_str() == s)
    }
}

impl fmt::Display for CertState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An authenticated caller: who it is (URI), what it may act as (role), and its scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub uri: String,
    pub role: Role,
    /// The manufacturer a station serves, or a device's manufacturer.
    pub manufacturer: Option<ManufacturerId>,
    /// For devices: the device's serial.
    pub device_serial: Option<DeviceSerial>,
    /// For stations, gateways, auditors and admins: their id within the role.
    pub principal_id: Option<PrincipalId>,
    /// Serial (hex) of the certificate the caller presented.
    pub certificate_serial: CertSerial,
    /// The profile of that certificate.
    pub certificate_profile: Profile,
}

/// RFC 5280 §5.3.1 reason codes medid accepts. `unspecified` (0) is never sent: a revocation
/// without a reason omits the reasonCode entry extension. certificateHold (6) is refused:
/// revocation in medid is permanent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RevocationReason {
    KeyCompromise = 1,
    CaCompromise = 2,
    AffiliationChanged = 3,
    Superseded = 4,
    CessationOfOperation = 5,
    PrivilegeWithdrawn = 9,
    AaCompromise = 10,
}

impl RevocationReason {
    pub const ALL: [RevocationReason; 7] = [
        RevocationReason::KeyCompromise,
        RevocationReason::CaCompromise,
        RevocationReason::AffiliationChanged,
        RevocationReason::Superseded,
        RevocationReason::CessationOfOperation,
        RevocationReason::PrivilegeWithdrawn,
        RevocationReason::AaCompromise,
    ];

    pub fn code(self) -> i64 {
        self as i64
    }

    /// From a wire or stored code: 0 means "no reason given".
    pub fn from_code(code: i64) -> Result<Option<Self>, Error> {
        if code == 0 {
            return Ok(None);
        }
        Self::ALL
            .into_iter()
            .find(|r| r.code() == code)
            .map(Some)
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "revocation reason {code} is not accepted; use an RFC 5280 §5.3.1 code: \
                     1 keyCompromise, 2 cACompromise, 3 affiliationChanged, 4 superseded, \
                     5 cessationOfOperation, 9 privilegeWithdrawn, 10 aACompromise (or 0 for none)"
                ))
            })
    }

    pub fn name(self) -> &'static str {
        match self {
            RevocationReason::KeyCompromise => "keyCompromise",
            RevocationReason::CaCompromise => "cACompromise",
            RevocationReason::AffiliationChanged => "affiliationChanged",
            RevocationReason::Superseded => "superseded",
            RevocationReason::CessationOfOperation => "cessationOfOperation",
            RevocationReason::PrivilegeWithdrawn => "privilegeWithdrawn",
            RevocationReason::AaCompromise => "aACompromise",
        }
    }
}

/// A certificate serial number: positive, 8–20 octets, big-endian without a sign byte.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CertSerial(Vec<u8>);

impl CertSerial {
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// A serial as written in requests, files and the store: hex digits, an even number of
    /// them, 1–20 octets (RFC 5280 §4.1.2.2).
    pub fn parse_hex(s: &str) -> Result<Self, Error> {
        match unhex(s) {
            Some(bytes) if !bytes.is_empty() && bytes.len() <= 20 => Ok(Self(bytes)),
            _ => Err(Error::InvalidArgument(format!(
                "certificate serial {} is not 1 to 20 octets of hex",
                quote(s)
            ))),
        }
    }
}

/// In audit details and JSON output: its hex.
impl From<&CertSerial> for serde_json::Value {
    fn from(serial: &CertSerial) -> Self {
        serde_json::Value::String(serial.to_hex())
    }
}

impl From<CertSerial> for serde_json::Value {
    fn from(serial: CertSerial) -> Self {
        Self::from(&serial)
    }
}

impl fmt::Display for CertSerial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

const fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Bytes of lowercase or uppercase hex; None if not hex.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    s.as_bytes()
        .chunks_exact(2)
        .map(|p| Some(nibble(p[0])? << 4 | nibble(p[1])?))
        .collect()
}

/// Exactly `N` bytes of hex (a hash), without allocating; None if not hex or not `2N` digits.
pub fn unhex_array<const N: usize>(s: &str) -> Option<[u8; N]> {
    let digits = s.as_bytes();
    if digits.len() != 2 * N {
        return None;
    }
    // Branch-free: every digit is looked up, and one test at the end refuses any non-digit
    // (the verifier decodes a leaf hash per event, so this is on its hot path).
    const VALUES: [u8; 256] = {
        let mut t = [0xffu8; 256];
        let mut c = 0;
        while c < 256 {
            if let Some(v) = nibble(c as u8) {
                t[c] = v;
            }
            c += 1;
        }
        t
    };
    let mut out = [0u8; N];
    let mut invalid = 0u8;
    for (b, p) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let (hi, lo) = (VALUES[usize::from(p[0])], VALUES[usize::from(p[1])]);
        invalid |= hi | lo;
        *b = hi << 4 | lo;
    }
    (invalid & 0xf0 == 0).then_some(out)
}

/// X.520 `ub-organization-name`: a manufacturer's name is written into certificates' O.
pub const MAX_ORGANIZATION_NAME: usize = 64;

/// A manufacturer's display name as certificates carry it (subject O): trimmed, 1 to 64
/// characters, no control characters and no bidirectional-text controls (which make one name
/// read as another: U+202E turns "Acme" into what looks like another string).
pub fn organization_name(raw: &str) -> Result<String, Error> {
    let name = raw.trim();
    let count = name.chars().count();
    let bidi = |c: char| matches!(c, '\u{200E}' | '\u{200F}' | '\u{061C}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}');
    if count == 0 || count > MAX_ORGANIZATION_NAME {
        return Err(Error::InvalidArgument(format!(
            "display_name must be 1–{MAX_ORGANIZATION_NAME} characters (X.520 organizationName), not {count}"
        )));
    }
    if let Some(c) = name.chars().find(|c| c.is_control() || bidi(*c)) {
        return Err(Error::InvalidArgument(format!(
            "display_name may not contain control or bidirectional-text characters (found U+{:04X})",
            c as u32
        )));
    }
    Ok(name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn organization_names_fit_x520_and_carry_no_bidi_controls() {
        assert_eq!(
            organization_name("  Acme Medical ").unwrap(),
            "Acme Medical"
        );
        assert!(organization_name(&"é".repeat(64)).is_ok());
        assert!(organization_name(&"é".repeat(65)).is_err());
        assert!(organization_name("").is_err());
        assert!(organization_name("Acme\u{202E}lacideM").is_err());
        assert!(organization_name("Acme\u{2067}x").is_err());
        assert!(organization_name("Acme\nMedical").is_err());
    }

    #[test]
    fn unhex_reads_what_hex_writes_and_nothing_else() {
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(unhex(&hex(&bytes)), Some(bytes));
        assert_eq!(unhex("ABcd"), Some(vec![0xab, 0xcd]));
        assert_eq!(unhex_array::<2>("ABcd"), Some([0xab, 0xcd]));
        assert_eq!(unhex_array::<32>(&hex(&[7; 32])), Some([7; 32]));
        for bad in ["abc", "abcdef", "+f00", "zz00", ""] {
            assert_eq!(unhex_array::<2>(bad), None, "{bad:?}");
        }
        assert_eq!(unhex(""), Some(vec![]));
        for bad in ["a", "0g", "+f", "-1", " 1", "é1"] {
            assert_eq!(unhex(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn gtin14_check_digit_is_verified() {
        // GS1's worked example GTIN 0061414112345 + check digit 2 (GTIN-14 with leading 0).
        assert!(Gtin14::parse("00614141123452").is_ok());
        assert!(Gtin14::parse("00614141123453").is_err());
        assert!(Gtin14::parse("0061414112345").is_err());
        assert!(Gtin14::parse("0061414112345a").is_err());
    }

    #[test]
    fn device_serial_must_be_printable_string() {
        assert!(DeviceSerial::parse("PUMP-0001").is_ok());
        assert!(DeviceSerial::parse("SN 12/34 (rev:B)").is_ok());
        for bad in [
            "",
            " lead",
            "trail ",
            "a\nb",
            "nul\0",
            "semi;colon",
            "é",
            "=cmd|x",
            "<b>",
        ] {
            assert!(DeviceSerial::parse(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(DeviceSerial::parse(&"x".repeat(64)).is_ok());
        assert!(DeviceSerial::parse(&"x".repeat(65)).is_err());
    }

    #[test]
    fn device_uri_percent_encodes_the_serial() {
        let td = TrustDomain::parse("hospital.example").unwrap();
        let m = ManufacturerId::parse("acme").unwrap();
        let s = DeviceSerial::parse("SN 1/2").unwrap();
        assert_eq!(
            td.device_uri(&m, &s),
            "spiffe://hospital.example/device/acme/SN%201%2F2"
        );
    }

    #[test]
    fn slugs_refuse_uppercase_and_edges() {
        assert!(ManufacturerId::parse("acme-medical").is_ok());
        for bad in ["", "Acme", "-acme", "acme-", "ac me", &"a".repeat(64)] {
            assert!(ManufacturerId::parse(bad).is_err(), "{bad:?}");
        }
    }
}

/// A part of the PKI a database belongs to, recorded by fingerprint at its first start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PkiPart {
    Root,
    DeviceIdentityCa,
    OperationalCa,
    /// The Ed25519 key that signs audit checkpoints (its public key is fingerprinted).
    AuditSigningKey,
    /// A CRL of the root the service put in service (recorded once each, with its event; not
    /// a part a PKI directory must match).
    RootCrl,
}

impl PkiPart {
    pub const ALL: [PkiPart; 5] = [
        PkiPart::Root,
        PkiPart::DeviceIdentityCa,
        PkiPart::OperationalCa,
        PkiPart::AuditSigningKey,
        PkiPart::RootCrl,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            PkiPart::Root => "root",
            PkiPart::DeviceIdentityCa => "device-identity-ca",
            PkiPart::OperationalCa => "operational-ca",
            PkiPart::AuditSigningKey => "audit-signing-key",
            PkiPart::RootCrl => "root-crl",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// How messages name it.
    pub fn describe(self) -> &'static str {
        match self {
            PkiPart::Root => "root CA certificate",
            PkiPart::DeviceIdentityCa => "device-identity CA certificate",
            PkiPart::OperationalCa => "operational CA certificate",
            PkiPart::AuditSigningKey => "audit-signing public key",
            PkiPart::RootCrl => "root CA's CRL",
        }
    }
}

/// The SHA-256 fingerprint of one part of a PKI.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PkiFingerprint {
    pub part: PkiPart,
    /// Lower-case hex.
    pub sha256: String,
}
