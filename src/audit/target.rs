//! What an audit event is about: always a URI, one form per kind of entity, the same at every
//! layer (the edge refusing a malformed request and the service recording the change name a
//! device the same way).
//!
//! | entity | form |
//! |---|---|
//! | device | `spiffe://<trust domain>/device/<manufacturer>/<serial>` (its SPIFFE ID) |
//! | principal | its SPIFFE ID (`…/gateway/<id>`, `…/manufacturer/<m>/station/<id>`, …) |
//! | manufacturer | `spiffe://<trust domain>/manufacturer/<id>` |
//! | certificate, by serial only | `urn:medid:certificate:<serial>` |
//! | issuing CA | `urn:medid:ca:<label>` (`operational`, `operational-2`, …) |
//! | a collection (listing) | `urn:medid:devices`, `urn:medid:manufacturers`, `urn:medid:certificates` |
//! | the ledger | `urn:medid:audit-log` |
//! | the PKI binding, the service, a token, a source address | `urn:medid:pki`, `urn:medid:service`, `urn:medid:enrollment-token`, `urn:medid:source:<ip>` (`…:other` for the sources past those tracked) |
//!
//! A name taken from a request that failed to parse is percent-encoded (and cut at
//! [`RAW_LIMIT`] bytes), so the target stays a URI and the refusal still says what was asked.

use std::fmt;
use std::net::IpAddr;

use crate::domain::{percent_encode, PrincipalRole, TrustDomain};

/// The longest piece of raw request input a target keeps.
pub const RAW_LIMIT: usize = 128;

/// The URI an audit event is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target(String);

fn raw(s: &str) -> String {
    let mut end = s.len().min(RAW_LIMIT);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    percent_encode(&s[..end])
}

impl Target {
    /// A device named by manufacturer and serial, parsed or not.
    pub fn device(td: &TrustDomain, manufacturer: &str, serial: &str) -> Self {
        Target(format!(
            "spiffe://{}/device/{}/{}",
            td.as_str(),
            raw(manufacturer),
            raw(serial)
        ))
    }

    /// A device named by a URI in a request: kept when it is a device URI of this trust
    /// domain made of URI characters, otherwise the devices collection.
    pub fn device_uri(td: &TrustDomain, uri: &str) -> Self {
        let prefix = format!("spiffe://{}/device/", td.as_str());
        let uri_chars = uri
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"\"<>\\^`{|}".contains(&b));
        if uri.starts_with(&prefix) && uri.len() <= prefix.len() + 2 * RAW_LIMIT && uri_chars {
            Target(uri.to_owned())
        } else {
            Target::devices()
        }
    }

    /// A principal or device by its URI, as recorded (its SPIFFE ID).
    pub fn uri(uri: &str) -> Self {
        Target(uri.to_owned())
    }

    /// A principal named by role and id, parsed or not.
    pub fn principal(td: &TrustDomain, role: &PrincipalRole, id: &str) -> Self {
        let id = raw(id);
        Target(match role {
            PrincipalRole::Admin => format!("spiffe://{}/admin/{id}", td.as_str()),
            PrincipalRole::Gateway => format!("spiffe://{}/gateway/{id}", td.as_str()),
            PrincipalRole::Auditor => format!("spiffe://{}/auditor/{id}", td.as_str()),
            PrincipalRole::Station(m) => return Target::station(td, m.as_str(), &id),
        })
    }

    /// A manufacturer's station, parsed or not.
    pub fn station(td: &TrustDomain, manufacturer: &str, id: &str) -> Self {
        Target(format!(
            "spiffe://{}/manufacturer/{}/station/{}",
            td.as_str(),
            raw(manufacturer),
            raw(id)
        ))
    }

    /// A principal whose role the request did not name validly.
    pub fn unknown_principal(id: &str) -> Self {
        Target(format!("urn:medid:principal:{}", raw(id)))
    }

    pub fn manufacturer(td: &TrustDomain, id: &str) -> Self {
        Target(format!("spiffe://{}/manufacturer/{}", td.as_str(), raw(id)))
    }

    /// A certificate named only by its serial (hex), parsed or not.
    pub fn certificate(serial: &str) -> Self {
        Target(format!(
            "urn:medid:certificate:{}",
            raw(&serial.to_lowercase())
        ))
    }

    /// An issuing CA by its label.
    pub fn ca(label: &str) -> Self {
        Target(format!("urn:medid:ca:{}", raw(label)))
    }

    pub fn devices() -> Self {
        Target("urn:medid:devices".into())
    }

    pub fn manufacturers() -> Self {
        Target("urn:medid:manufacturers".into())
    }

    pub fn certificates() -> Self {
        Target("urn:medid:certificates".into())
    }

    pub fn ledger() -> Self {
        Target("urn:medid:audit-log".into())
    }

    pub fn pki() -> Self {
        Target("urn:medid:pki".into())
    }

    pub fn service() -> Self {
        Target("urn:medid:service".into())
    }

    pub fn enrollment_token() -> Self {
        Target("urn:medid:enrollment-token".into())
    }

    /// A source address of unauthenticated requests; `None`: the sources past the tracked
    /// ones, counted together.
    pub fn source(ip: Option<IpAddr>) -> Self {
        match ip {
            Some(ip) => Target(format!("urn:medid:source:{ip}")),
            None => Target("urn:medid:source:other".into()),
        }
    }

    /// A target read back from the store.
    pub fn stored(text: String) -> Self {
        Target(text)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<Target> for String {
    fn from(t: Target) -> String {
        t.0
    }
}

impl From<&Target> for String {
    fn from(t: &Target) -> String {
        t.0.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{DeviceSerial, ManufacturerId};

    #[test]
    fn a_parsed_device_and_a_raw_one_name_the_same_uri() {
        let td = TrustDomain::parse("hospital.example").unwrap();
        let m = ManufacturerId::parse("acme").unwrap();
        let s = DeviceSerial::parse("PUMP-1").unwrap();
        assert_eq!(
            Target::device(&td, "acme", "PUMP-1").as_str(),
            td.device_uri(&m, &s)
        );
    }

    #[test]
    fn a_device_uri_from_a_request_is_kept_only_when_it_is_one() {
        let td = TrustDomain::parse("t").unwrap();
        let ok = "spiffe://t/device/acme/PUMP-1";
        assert_eq!(Target::device_uri(&td, ok).as_str(), ok);
        for bad in ["spiffe://other/device/acme/P", "spiffe://t/device/a b", "x"] {
            assert_eq!(Target::device_uri(&td, bad), Target::devices(), "{bad}");
        }
    }

    #[test]
    fn raw_input_is_encoded_and_bounded() {
        let td = TrustDomain::parse("t").unwrap();
        let t = Target::device(&td, "acme", "bad serial/\"x\"");
        assert_eq!(t.as_str(), "spiffe://t/device/acme/bad%20serial%2F%22x%22");
        let long = "é".repeat(200);
        let t = Target::certificate(&long);
        assert!(t.as_str().len() <= "urn:medid:certificate:".len() + RAW_LIMIT * 3);
        assert!(!t.as_str().contains(char::is_whitespace));
    }
}
