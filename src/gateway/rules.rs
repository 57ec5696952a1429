//! The gateway's decisions, with no I/O: who the caller is, which route a request takes and
//! whether the caller may use it, which device a request reaches, what the access is called,
//! and which headers go upstream.

use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

use crate::audit::action::DataAction;
use crate::domain::Role;
use crate::proto::AccessOutcome;

/// When an access event is on disk relative to the response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Before the response is released: a request whose event cannot be written is answered
    /// 503 instead.
    Strict,
    /// Written in the background after the response: faster, and an event can be lost if
    /// the gateway dies before writing it.
    Buffered,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Strict => "strict",
            Mode::Buffered => "buffered",
        }
    }
}

/// How the gateway talks to an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    /// HTTP/2 with prior knowledge (h2c).
    Http2,
}

/// Which device a request on a route reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceRule {
    /// The caller's own certificate (the caller is the device).
    Certificate,
    /// A request header: the device's URI, or `manufacturer/serial`.
    Header(HeaderName),
    /// Path segments: the template's segments, `{manufacturer}` and `{serial}` among them.
    Path(Vec<Segment>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    Manufacturer,
    Serial,
}

impl DeviceRule {
    /// Parses `/devices/{manufacturer}/{serial}`: both placeholders, each a whole segment.
    pub fn path(template: &str) -> Result<Self, String> {
        if !template.starts_with('/') {
            return Err(format!("device_path {template:?} must start with '/'"));
        }
        let segments: Vec<Segment> = template
            .trim_start_matches('/')
            .split('/')
            .map(|s| match s {
                "{manufacturer}" => Segment::Manufacturer,
                "{serial}" => Segment::Serial,
                other => Segment::Literal(other.to_owned()),
            })
            .collect();
        let count = |want: &Segment| segments.iter().filter(|s| *s == want).count();
        if count(&Segment::Manufacturer) != 1 || count(&Segment::Serial) != 1 {
            return Err(format!(
                "device_path {template:?} must hold {{manufacturer}} and {{serial}} once each, as whole segments"
            ));
        }
        Ok(DeviceRule::Path(segments))
    }
}

/// One `[[routes]]` entry, checked.
#[derive(Debug, Clone)]
pub struct Route {
    pub prefix: String,
    pub upstream: http::Uri,
    pub protocol: Protocol,
    pub strip_prefix: bool,
    pub roles: Vec<Role>,
    pub principals: Vec<String>,
    /// Requests on it reach device data: each is an access event.
    pub access: bool,
    pub data_category: String,
    pub purpose_of_use: String,
    pub device: DeviceRule,
}

impl Route {
    pub fn allows(&self, caller: &Caller) -> bool {
        self.roles.contains(&caller.role) || self.principals.contains(&caller.uri)
    }

    /// The upstream URI of a request for `path_and_query`.
    pub fn upstream_uri(&self, path_and_query: &str) -> Result<http::Uri, String> {
        let rest = if self.strip_prefix {
            let tail = &path_and_query[self.prefix.len().min(path_and_query.len())..];
            if tail.starts_with('/') {
                tail.to_owned()
            } else {
                format!("/{tail}")
            }
        } else {
            path_and_query.to_owned()
        };
        let authority = self
            .upstream
            .authority()
            .map(|a| a.as_str())
            .unwrap_or_default();
        format!("http://{authority}{rest}")
            .parse()
            .map_err(|_| "the request path cannot be forwarded".to_owned())
    }
}

/// The route of a request path: the longest prefix that matches (routes are kept longest
/// first).
pub fn route_for<'r>(routes: &'r [Route], path: &str) -> Option<&'r Route> {
    routes.iter().find(|r| path.starts_with(&r.prefix))
}

/// Who presented a client certificate, from its URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub uri: String,
    pub role: Role,
    /// A device's or a station's manufacturer.
    pub manufacturer: Option<String>,
    /// A device's serial (decoded).
    pub serial: Option<String>,
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

impl Caller {
    /// The caller a medid URI names within `trust_domain`, if it names one.
    pub fn from_uri(uri: &str, trust_domain: &str) -> Option<Caller> {
        let rest = uri.strip_prefix("spiffe://")?.strip_prefix(trust_domain)?;
        let parts: Vec<&str> = rest.strip_prefix('/')?.split('/').collect();
        let (role, manufacturer, serial) = match parts.as_slice() {
            ["device", m, s] if !m.is_empty() && !s.is_empty() => (
                Role::Device,
                Some((*m).to_owned()),
                Some(percent_decode(s)?),
            ),
            ["gateway", id] if !id.is_empty() => (Role::Gateway, None, None),
            ["admin", id] if !id.is_empty() => (Role::Admin, None, None),
            ["auditor", id] if !id.is_empty() => (Role::Auditor, None, None),
            ["manufacturer", m, "station", id] if !m.is_empty() && !id.is_empty() => {
                (Role::Station, Some((*m).to_owned()), None)
            }
            _ => return None,
        };
        Some(Caller {
            uri: uri.to_owned(),
            role,
            manufacturer,
            serial,
        })
    }
}

/// The device a request reaches: manufacturer and serial, or a device URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceRef {
    Serial {
        manufacturer: String,
        serial: String,
    },
    Uri(String),
}

/// The device a request on `route` reaches, or why it names none.
pub fn device_of(
    route: &Route,
    caller: &Caller,
    path: &str,
    headers: &HeaderMap,
    trust_domain: &str,
) -> Result<DeviceRef, String> {
    match &route.device {
        DeviceRule::Certificate => match (&caller.manufacturer, &caller.serial) {
            (Some(m), Some(s)) if caller.role == Role::Device => Ok(DeviceRef::Serial {
                manufacturer: m.clone(),
                serial: s.clone(),
            }),
            _ => Err(
                "this route takes the device from the caller's certificate, and the caller is not a device"
                    .into(),
            ),
        },
        DeviceRule::Header(name) => {
            let value = headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| format!("this route needs the device named in the {name} header"))?;
            if value.starts_with("spiffe://") {
                let device = Caller::from_uri(value, trust_domain)
                    .filter(|c| c.role == Role::Device)
                    .ok_or_else(|| format!("{name}: {value:?} is not a device URI of this trust domain"))?;
                return Ok(DeviceRef::Uri(device.uri));
            }
            match value.split_once('/') {
                Some((m, s)) if !m.is_empty() && !s.is_empty() => Ok(DeviceRef::Serial {
                    manufacturer: m.to_owned(),
                    serial: s.to_owned(),
                }),
                _ => Err(format!(
                    "{name}: {value:?} is neither a device URI nor manufacturer/serial"
                )),
            }
        }
        DeviceRule::Path(template) => {
            let mut segments = path.trim_start_matches('/').split('/');
            let (mut manufacturer, mut serial) = (None, None);
            for want in template {
                let got = segments
                    .next()
                    .filter(|s| !s.is_empty())
                    .ok_or("the path does not name a device where this route expects one")?;
                match want {
                    Segment::Literal(l) if l == got => {}
                    Segment::Literal(_) => {
                        return Err("the path does not name a device where this route expects one".into())
                    }
                    Segment::Manufacturer => manufacturer = Some(got.to_owned()),
                    Segment::Serial => {
                        serial = Some(
                            percent_decode(got).ok_or("the device serial in the path is not valid")?,
                        )
                    }
                }
            }
            match (manufacturer, serial) {
                (Some(manufacturer), Some(serial)) => Ok(DeviceRef::Serial {
                    manufacturer,
                    serial,
                }),
                _ => Err("the path does not name a device".into()),
            }
        }
    }
}

/// What an access is called, from its method: POST creates (or executes a FHIR operation,
/// `$name`, or a posted `_search`), GET and HEAD read, PUT and PATCH update, DELETE
/// deletes; any other method executes.
pub fn action_for(method: &Method, path: &str) -> DataAction {
    let last = path.rsplit('/').next().unwrap_or("");
    match *method {
        Method::GET | Method::HEAD => {
            if last.starts_with('$') {
                DataAction::Execute
            } else {
                DataAction::Read
            }
        }
        Method::POST => {
            if last.starts_with('$') || last == "_search" {
                DataAction::Execute
            } else {
                DataAction::Create
            }
        }
        Method::PUT | Method::PATCH => DataAction::Update,
        Method::DELETE => DataAction::Delete,
        _ => DataAction::Execute,
    }
}

/// The access's outcome from the answer: 1xx–3xx success; 4xx minor failure (refused or
/// not found); 5xx serious failure; no answer (the gateway's 502/504) major failure.
pub fn outcome_for(status: StatusCode, upstream_answered: bool) -> AccessOutcome {
    if !upstream_answered {
        return if status.is_client_error() {
            AccessOutcome::MinorFailure
        } else {
            AccessOutcome::MajorFailure
        };
    }
    if status.is_client_error() {
        AccessOutcome::MinorFailure
    } else if status.is_server_error() {
        AccessOutcome::SeriousFailure
    } else {
        AccessOutcome::Success
    }
}

/// Headers the gateway sets itself for the upstream; any a client sends are removed.
pub const CALLER_HEADER: &str = "x-medid-caller";
pub const ROLE_HEADER: &str = "x-medid-role";
pub const DEVICE_SERIAL_HEADER: &str = "x-medid-device-serial";
pub const DEVICE_MANUFACTURER_HEADER: &str = "x-medid-device-manufacturer";
pub const DEVICE_URI_HEADER: &str = "x-medid-device-uri";

/// Whether `name` is (or could be confused with) one of the identity headers: every
/// `x-medid-*` header.
pub fn is_identity_header(name: &HeaderName) -> bool {
    name.as_str().starts_with("x-medid-")
}

/// Hop-by-hop headers (RFC 9110 §7.6.1): for one connection only, never forwarded.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
];

/// The headers of a request as forwarded: hop-by-hop headers (and those `Connection` names)
/// and every `x-medid-*` header the client sent removed, then the caller's identity set.
pub fn upstream_headers(
    mut headers: HeaderMap,
    caller: &Caller,
    device: Option<&DeviceRef>,
) -> HeaderMap {
    let named: Vec<HeaderName> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    let spoofed: Vec<HeaderName> = headers
        .keys()
        .filter(|n| is_identity_header(n))
        .cloned()
        .collect();
    for name in spoofed {
        headers.remove(name);
    }
    let mut set = |name: &'static str, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            headers.insert(HeaderName::from_static(name), v);
        }
    };
    set(CALLER_HEADER, &caller.uri);
    set(ROLE_HEADER, caller.role.as_str());
    match device {
        Some(DeviceRef::Serial {
            manufacturer,
            serial,
        }) => {
            set(DEVICE_MANUFACTURER_HEADER, manufacturer);
            set(DEVICE_SERIAL_HEADER, &crate::domain::percent_encode(serial));
        }
        Some(DeviceRef::Uri(uri)) => set(DEVICE_URI_HEADER, uri),
        None => {}
    }
    headers
}

/// Hop-by-hop headers removed from an upstream's answer too.
pub fn downstream_headers(headers: &mut HeaderMap) {
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TD: &str = "hospital.example";

    fn route(device: DeviceRule) -> Route {
        Route {
            prefix: "/api/".into(),
            upstream: "http://127.0.0.1:9000".parse().unwrap(),
            protocol: Protocol::Http1,
            strip_prefix: false,
            roles: vec![Role::Device],
            principals: vec!["spiffe://hospital.example/gateway/ehr".into()],
            access: true,
            data_category: "vital-signs".into(),
            purpose_of_use: "TREAT".into(),
            device,
        }
    }

    fn device() -> Caller {
        Caller::from_uri("spiffe://hospital.example/device/acme/PUMP%2F1", TD).unwrap()
    }

    #[test]
    fn callers_are_read_from_their_uri_within_the_trust_domain_only() {
        let d = device();
        assert_eq!(d.role, Role::Device);
        assert_eq!(d.serial.as_deref(), Some("PUMP/1"));
        let s =
            Caller::from_uri("spiffe://hospital.example/manufacturer/acme/station/s1", TD).unwrap();
        assert_eq!(
            (s.role, s.manufacturer.as_deref()),
            (Role::Station, Some("acme"))
        );
        assert_eq!(
            Caller::from_uri("spiffe://hospital.example/gateway/ehr", TD)
                .unwrap()
                .role,
            Role::Gateway
        );
        for bad in [
            "spiffe://other.example/device/acme/1",
            "spiffe://hospital.example.evil/device/acme/1",
            "spiffe://hospital.example/device/acme",
            "spiffe://hospital.example/service/medid",
            "https://hospital.example/device/acme/1",
        ] {
            assert_eq!(Caller::from_uri(bad, TD), None, "{bad}");
        }
    }

    #[test]
    fn roles_and_named_principals_are_allowed_and_nobody_else() {
        let r = route(DeviceRule::Certificate);
        assert!(r.allows(&device()));
        let ehr = Caller::from_uri("spiffe://hospital.example/gateway/ehr", TD).unwrap();
        assert!(r.allows(&ehr));
        let other = Caller::from_uri("spiffe://hospital.example/gateway/other", TD).unwrap();
        assert!(!r.allows(&other));
    }

    #[test]
    fn the_longest_prefix_wins_and_strip_prefix_keeps_a_leading_slash() {
        let mut a = route(DeviceRule::Certificate);
        a.prefix = "/api/".into();
        let mut b = route(DeviceRule::Certificate);
        b.prefix = "/api/admin/".into();
        b.strip_prefix = true;
        let routes = vec![b.clone(), a.clone()];
        assert_eq!(
            route_for(&routes, "/api/admin/x").unwrap().prefix,
            "/api/admin/"
        );
        assert_eq!(route_for(&routes, "/api/x").unwrap().prefix, "/api/");
        assert!(route_for(&routes, "/other").is_none());
        assert_eq!(
            b.upstream_uri("/api/admin/x?q=1").unwrap().to_string(),
            "http://127.0.0.1:9000/x?q=1"
        );
        assert_eq!(
            a.upstream_uri("/api/x").unwrap().to_string(),
            "http://127.0.0.1:9000/api/x"
        );
    }

    #[test]
    fn the_device_comes_from_the_certificate_a_header_or_the_path() {
        let h = HeaderMap::new();
        assert_eq!(
            device_of(&route(DeviceRule::Certificate), &device(), "/api/x", &h, TD).unwrap(),
            DeviceRef::Serial {
                manufacturer: "acme".into(),
                serial: "PUMP/1".into()
            }
        );
        let ehr = Caller::from_uri("spiffe://hospital.example/gateway/ehr", TD).unwrap();
        assert!(device_of(&route(DeviceRule::Certificate), &ehr, "/api/x", &h, TD).is_err());

        let by_header = route(DeviceRule::Header(HeaderName::from_static("x-device")));
        let mut h = HeaderMap::new();
        assert!(device_of(&by_header, &ehr, "/", &h, TD).is_err());
        h.insert("x-device", HeaderValue::from_static("acme/M-7"));
        assert_eq!(
            device_of(&by_header, &ehr, "/", &h, TD).unwrap(),
            DeviceRef::Serial {
                manufacturer: "acme".into(),
                serial: "M-7".into()
            }
        );
        h.insert(
            "x-device",
            HeaderValue::from_static("spiffe://hospital.example/device/acme/M-7"),
        );
        assert!(matches!(
            device_of(&by_header, &ehr, "/", &h, TD).unwrap(),
            DeviceRef::Uri(_)
        ));
        h.insert(
            "x-device",
            HeaderValue::from_static("spiffe://hospital.example/gateway/ehr"),
        );
        assert!(device_of(&by_header, &ehr, "/", &h, TD).is_err());

        let by_path = route(DeviceRule::path("/api/devices/{manufacturer}/{serial}").unwrap());
        assert_eq!(
            device_of(
                &by_path,
                &ehr,
                "/api/devices/acme/M%2D7/vitals",
                &HeaderMap::new(),
                TD
            )
            .unwrap(),
            DeviceRef::Serial {
                manufacturer: "acme".into(),
                serial: "M-7".into()
            }
        );
        assert!(device_of(&by_path, &ehr, "/api/other/acme/M", &HeaderMap::new(), TD).is_err());
        assert!(device_of(&by_path, &ehr, "/api/devices/acme", &HeaderMap::new(), TD).is_err());
        assert!(DeviceRule::path("/x/{serial}").is_err());
        assert!(DeviceRule::path("/x/{manufacturer}-{serial}").is_err());
    }

    #[test]
    fn actions_follow_the_method_and_fhir_operations_execute() {
        assert_eq!(action_for(&Method::GET, "/Observation/1"), DataAction::Read);
        assert_eq!(action_for(&Method::HEAD, "/x"), DataAction::Read);
        assert_eq!(
            action_for(&Method::POST, "/Observation"),
            DataAction::Create
        );
        assert_eq!(
            action_for(&Method::POST, "/Observation/_search"),
            DataAction::Execute
        );
        assert_eq!(
            action_for(&Method::POST, "/Device/1/$reset"),
            DataAction::Execute
        );
        assert_eq!(
            action_for(&Method::GET, "/Patient/$everything"),
            DataAction::Execute
        );
        assert_eq!(action_for(&Method::PUT, "/x"), DataAction::Update);
        assert_eq!(action_for(&Method::PATCH, "/x"), DataAction::Update);
        assert_eq!(action_for(&Method::DELETE, "/x"), DataAction::Delete);
        assert_eq!(action_for(&Method::OPTIONS, "/x"), DataAction::Execute);
    }

    #[test]
    fn outcomes_follow_the_status() {
        assert_eq!(outcome_for(StatusCode::OK, true), AccessOutcome::Success);
        assert_eq!(
            outcome_for(StatusCode::NOT_MODIFIED, true),
            AccessOutcome::Success
        );
        assert_eq!(
            outcome_for(StatusCode::NOT_FOUND, true),
            AccessOutcome::MinorFailure
        );
        assert_eq!(
            outcome_for(StatusCode::INTERNAL_SERVER_ERROR, true),
            AccessOutcome::SeriousFailure
        );
        assert_eq!(
            outcome_for(StatusCode::BAD_GATEWAY, false),
            AccessOutcome::MajorFailure
        );
        assert_eq!(
            outcome_for(StatusCode::FORBIDDEN, false),
            AccessOutcome::MinorFailure
        );
    }

    #[test]
    fn spoofed_identity_and_hop_by_hop_headers_never_go_upstream() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-medid-caller",
            HeaderValue::from_static("spiffe://evil/admin/x"),
        );
        h.insert("X-Medid-Role", HeaderValue::from_static("admin"));
        h.insert("x-medid-anything", HeaderValue::from_static("1"));
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("accept", HeaderValue::from_static("application/fhir+json"));
        let d = device();
        let device = DeviceRef::Serial {
            manufacturer: "acme".into(),
            serial: "PUMP/1".into(),
        };
        let out = upstream_headers(h, &d, Some(&device));
        assert_eq!(out[CALLER_HEADER], d.uri.as_str());
        assert_eq!(out[ROLE_HEADER], "device");
        assert_eq!(out[DEVICE_SERIAL_HEADER], "PUMP%2F1");
        assert_eq!(out[DEVICE_MANUFACTURER_HEADER], "acme");
        assert!(out.get("x-medid-anything").is_none());
        assert!(out.get("connection").is_none());
        assert!(out.get("x-secret").is_none());
        assert_eq!(out["accept"], "application/fhir+json");
        assert_eq!(out.get_all(CALLER_HEADER).iter().count(), 1);
    }
}
