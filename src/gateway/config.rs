//! `medid gateway --config FILE`: the TOML file, and its checks. Every mistake is refused at
//! start with the key it concerns.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::rules::{DeviceRule, Mode, Protocol, Route};
use crate::domain::{quote, Role};
use crate::error::Error;

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    /// Where devices and applications connect (TLS).
    listen: SocketAddr,
    /// medid's gRPC address, for example `https://medid.hospital.example:7443`.
    medid: String,
    /// The root that signed medid's TLS certificate.
    medid_ca: PathBuf,
    /// Where the gateway keeps its certificate (cert.pem, key.pem, chain.pem), its spool,
    /// and its copy of the trust bundle and CRLs.
    state_dir: PathBuf,
    /// The gateway certificate and key `medid admin issue --role gateway` made: used when
    /// state_dir has no valid certificate of its own yet.
    bootstrap_cert: PathBuf,
    bootstrap_key: PathBuf,
    /// `strict` (the event is on disk before the response is released) or `buffered`.
    #[serde(default = "default_mode")]
    mode: String,
    /// Refuse every request (503) once the newest revocation data is older than this.
    #[serde(default = "default_max_revocation_age")]
    max_revocation_age_seconds: u64,
    /// Fetch the CRLs at least this often (and before their nextUpdate).
    #[serde(default = "default_crl_refresh")]
    crl_refresh_seconds: u64,
    /// A request header holding the patient reference, recorded with each event.
    #[serde(default)]
    patient_header: Option<String>,
    /// Events per RecordAccessStream batch at most.
    #[serde(default = "default_batch")]
    batch: usize,
    /// Upstream answer time limit.
    #[serde(default = "default_upstream_timeout")]
    upstream_timeout_seconds: u64,
    /// A plain-HTTP listener for `/metrics`, `/healthz` and `/readyz` (none if absent).
    #[serde(default)]
    metrics_listen: Option<SocketAddr>,
    #[serde(default)]
    routes: Vec<RouteFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteFile {
    /// Requests whose path starts with this (the longest match wins).
    prefix: String,
    /// `http://host:port`; the request path is kept (or loses the prefix: strip_prefix).
    upstream: String,
    /// `http1` (default) or `http2` (HTTP/2 with prior knowledge).
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default)]
    strip_prefix: bool,
    /// Roles allowed: device, gateway, admin, auditor, manufacturer-station.
    #[serde(default)]
    roles: Vec<String>,
    /// Principal URIs allowed besides the roles.
    #[serde(default)]
    principals: Vec<String>,
    /// Whether requests on this route reach device data (each one is then an access event).
    #[serde(default = "yes")]
    access: bool,
    #[serde(default)]
    data_category: Option<String>,
    #[serde(default)]
    purpose_of_use: Option<String>,
    /// A request header naming the device (its URI, or `manufacturer/serial`).
    #[serde(default)]
    device_header: Option<String>,
    /// A path template naming the device: `/devices/{manufacturer}/{serial}`.
    #[serde(default)]
    device_path: Option<String>,
}

fn default_mode() -> String {
    "strict".into()
}
fn default_max_revocation_age() -> u64 {
    3600
}
fn default_crl_refresh() -> u64 {
    300
}
fn default_batch() -> usize {
    500
}
fn default_upstream_timeout() -> u64 {
    30
}
fn yes() -> bool {
    true
}

/// The configuration, checked.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub listen: SocketAddr,
    pub medid: String,
    pub medid_ca: PathBuf,
    pub state_dir: PathBuf,
    pub bootstrap_cert: PathBuf,
    pub bootstrap_key: PathBuf,
    pub mode: Mode,
    pub max_revocation_age: std::time::Duration,
    pub crl_refresh: std::time::Duration,
    pub patient_header: Option<http::HeaderName>,
    pub batch: usize,
    pub upstream_timeout: std::time::Duration,
    pub metrics_listen: Option<SocketAddr>,
    pub routes: Vec<Route>,
}

fn bad(key: &str, why: impl std::fmt::Display) -> Error {
    Error::InvalidArgument(format!("gateway configuration: {key}: {why}"))
}

fn header_name(key: &str, name: &str) -> Result<http::HeaderName, Error> {
    let h = http::HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| bad(key, format!("{} is not an HTTP header name", quote(name))))?;
    if super::rules::is_identity_header(&h) {
        return Err(bad(
            key,
            format!(
                "{} is one of the identity headers the gateway sets itself",
                quote(name)
            ),
        ));
    }
    Ok(h)
}

impl GatewayConfig {
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::InvalidArgument(format!("reading {}: {e}", path.display())))?;
        Self::parse(&text).map_err(|e| e.context(&format!("{}: ", path.display())))
    }

    pub fn parse(text: &str) -> Result<Self, Error> {
        let f: File = toml::from_str(text)
            .map_err(|e| Error::InvalidArgument(format!("gateway configuration: {e}")))?;
        let mode = match f.mode.as_str() {
            "strict" => Mode::Strict,
            "buffered" => Mode::Buffered,
            other => {
                return Err(bad(
                    "mode",
                    format!("{} is not strict or buffered", quote(other)),
                ))
            }
        };
        if !f.medid.starts_with("https://") {
            return Err(bad(
                "medid",
                "must be an https:// URL (medid speaks gRPC over TLS)",
            ));
        }
        if !(1..=10_000).contains(&f.batch) {
            return Err(bad("batch", "must be 1 to 10000 (medid's batch limit)"));
        }
        if f.crl_refresh_seconds == 0 || f.crl_refresh_seconds > 86_400 {
            return Err(bad("crl_refresh_seconds", "must be 1 to 86400"));
        }
        if f.max_revocation_age_seconds < f.crl_refresh_seconds {
            return Err(bad(
                "max_revocation_age_seconds",
                "must be at least crl_refresh_seconds (or every refresh would be late)",
            ));
        }
        if f.upstream_timeout_seconds == 0 {
            return Err(bad("upstream_timeout_seconds", "must be at least 1"));
        }
        let patient_header = f
            .patient_header
            .as_deref()
            .map(|h| header_name("patient_header", h))
            .transpose()?;
        if f.routes.is_empty() {
            return Err(bad("routes", "at least one [[routes]] entry is needed"));
        }
        let mut routes: Vec<Route> = Vec::new();
        for (i, r) in f.routes.into_iter().enumerate() {
            let key = format!("routes[{i}]");
            let route = route(&key, r)?;
            if routes.iter().any(|o| o.prefix == route.prefix) {
                return Err(bad(
                    &key,
                    format!("prefix {} is listed twice", quote(&route.prefix)),
                ));
            }
            routes.push(route);
        }
        // Longest prefix first: the first match is the most specific.
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        Ok(Self {
            listen: f.listen,
            medid: f.medid,
            medid_ca: f.medid_ca,
            state_dir: f.state_dir,
            bootstrap_cert: f.bootstrap_cert,
            bootstrap_key: f.bootstrap_key,
            mode,
            max_revocation_age: std::time::Duration::from_secs(f.max_revocation_age_seconds),
            crl_refresh: std::time::Duration::from_secs(f.crl_refresh_seconds),
            patient_header,
            batch: f.batch,
            upstream_timeout: std::time::Duration::from_secs(f.upstream_timeout_seconds),
            metrics_listen: f.metrics_listen,
            routes,
        })
    }
}

fn route(key: &str, r: RouteFile) -> Result<Route, Error> {
    if !r.prefix.starts_with('/') {
        return Err(bad(
            key,
            format!("prefix {} must start with '/'", quote(&r.prefix)),
        ));
    }
    let upstream: http::Uri = r
        .upstream
        .parse()
        .map_err(|_| bad(key, format!("upstream {} is not a URL", quote(&r.upstream))))?;
    if upstream.scheme_str() != Some("http")
        || upstream.authority().is_none()
        || upstream.path() != "/"
        || upstream.query().is_some()
    {
        return Err(bad(
            key,
            format!(
                "upstream {} must be http://host:port (no path): the gateway forwards to a service beside it",
                quote(&r.upstream)
            ),
        ));
    }
    let protocol = match r.protocol.as_deref() {
        None | Some("http1") => Protocol::Http1,
        Some("http2") => Protocol::Http2,
        Some(other) => {
            return Err(bad(
                key,
                format!("protocol {} is not http1 or http2", quote(other)),
            ))
        }
    };
    let mut roles = Vec::new();
    for name in &r.roles {
        match Role::parse(name) {
            Some(
                role @ (Role::Device | Role::Gateway | Role::Admin | Role::Auditor | Role::Station),
            ) => roles.push(role),
            _ => {
                return Err(bad(
                    key,
                    format!(
                        "role {} is not device, gateway, admin, auditor or manufacturer-station",
                        quote(name)
                    ),
                ))
            }
        }
    }
    for p in &r.principals {
        if !p.starts_with("spiffe://") {
            return Err(bad(
                key,
                format!("principal {} is not a spiffe:// URI", quote(p)),
            ));
        }
    }
    if roles.is_empty() && r.principals.is_empty() {
        return Err(bad(key, "allows nobody: give roles and/or principals"));
    }
    let device = match (&r.device_header, &r.device_path) {
        (Some(_), Some(_)) => {
            return Err(bad(key, "give device_header or device_path, not both"));
        }
        (Some(h), None) => DeviceRule::Header(header_name(&format!("{key}.device_header"), h)?),
        (None, Some(template)) => DeviceRule::path(template).map_err(|why| bad(key, why))?,
        (None, None) => DeviceRule::Certificate,
    };
    let (data_category, purpose_of_use) = if r.access {
        let category = r.data_category.ok_or_else(|| {
            bad(
                key,
                "an access route needs data_category (vital-signs, waveform, alarms, …)",
            )
        })?;
        if !crate::service::ledger::DATA_CATEGORIES.contains(&category.as_str()) {
            return Err(bad(
                key,
                format!(
                    "data_category {} is not one of {}",
                    quote(&category),
                    crate::service::ledger::DATA_CATEGORIES.join(", ")
                ),
            ));
        }
        let purpose = r.purpose_of_use.unwrap_or_else(|| "TREAT".into());
        if !crate::service::ledger::PURPOSES.contains(&purpose.as_str()) {
            return Err(bad(
                key,
                format!(
                    "purpose_of_use {} is not an accepted ActReason code",
                    quote(&purpose)
                ),
            ));
        }
        (category, purpose)
    } else {
        (String::new(), String::new())
    };
    Ok(Route {
        prefix: r.prefix,
        upstream,
        protocol,
        strip_prefix: r.strip_prefix,
        roles,
        principals: r.principals,
        access: r.access,
        data_category,
        purpose_of_use,
        device,
    })
}
