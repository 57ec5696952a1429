//! Typed configuration: a TOML file (`--config`), then `MEDID_*` environment variables and
//! flags on top. Unknown keys are errors. Every field has a default that is safe to run with.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::Error;
use crate::policy::est::EstLabel;

/// The service's configuration. See `docs/CONFIGURATION.md` for each key.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address of the gRPC (mTLS) listener.
    pub listen: SocketAddr,
    /// `sqlite://PATH` (created if missing), a plain file path, or `postgres://…` (replicas).
    pub database_url: String,
    /// Directory holding the CA material written by `medid ca init`.
    pub pki_dir: PathBuf,
    /// Create a development PKI in `pki_dir` when it is missing. On by default only when no
    /// configuration file is given, so a production config never silently makes a new CA.
    pub create_dev_pki: bool,
    /// Base URL written into certificates for CRL, OCSP and CA-certificate retrieval.
    pub public_base_url: String,
    /// Lifetime of station, gateway, auditor and admin certificates, in days.
    pub principal_validity_days: u32,
    /// Lifetime of the service's own TLS certificate, in days.
    pub server_validity_days: u32,
    /// How long before a CA certificate ends the service warns, each hour, in days.
    pub ca_expiry_warning_days: u32,
    /// Lifetime of an operational CA certificate (`ca init`, `ca rotate`), in days.
    pub operational_ca_validity_days: u32,
    /// Largest gRPC message accepted, in bytes.
    pub max_message_bytes: usize,
    /// Address of the plain-HTTP listener for CRLs, OCSP and CA certificates (public data).
    pub http_listen: SocketAddr,
    /// Serve the compliance console (HTTPS, client certificates) on `console_listen`.
    pub console_enabled: bool,
    pub console_listen: SocketAddr,
    /// Serve EST (RFC 7030) on `est_listen`.
    pub est_enabled: bool,
    /// Address of the EST listener (HTTPS, HTTP/1.1, client certificates).
    pub est_listen: SocketAddr,
    /// EST labels (`/.well-known/est/<label>/…`), each selecting a profile (docs/EST.md).
    pub est_labels: BTreeMap<String, EstLabel>,
    /// Lifetime of device operational certificates, in hours.
    pub operational_validity_hours: u32,
    /// A renewal must present a key never certified before for that device or gateway.
    pub rekey_required: bool,
    /// Revoke (reason superseded) a device's older operational certificates on renewal.
    pub revoke_superseded: bool,
    /// CRL nextUpdate − thisUpdate, in hours. CRLs are re-signed at half of it and on every
    /// revocation.
    pub crl_validity_hours: u32,
    /// Directory outside the database where every signed audit checkpoint is also appended.
    /// Default: `checkpoints/` beside the database file.
    pub audit_checkpoint_dir: Option<PathBuf>,
    /// Sign an audit checkpoint after this many new events…
    pub checkpoint_every_events: u64,
    /// …or after this many seconds, if the log grew.
    pub checkpoint_every_seconds: u64,
    /// Concurrent requests served per connection; more wait.
    pub max_concurrent_requests_per_connection: usize,
    /// HTTP/2 streams a client may open on one connection.
    pub max_concurrent_streams: u32,
    /// Requests one principal may have in flight across all its connections.
    pub max_concurrent_requests_per_principal: usize,
    /// A request that takes longer is cancelled (DEADLINE_EXCEEDED).
    pub request_timeout_seconds: u64,
    /// A connection that has not sent its HTTP/2 preface or first HTTP/1.1 request head by
    /// then is closed.
    pub connection_header_timeout_seconds: u64,
    /// A connection with nothing in flight for this long is closed.
    pub connection_idle_timeout_seconds: u64,
    /// Open connections over all listeners (reduced at start to fit the open-file limit).
    pub max_connections: usize,
    /// Open connections from one source address over all listeners.
    pub max_connections_per_source: usize,
    /// At shutdown, in-flight calls get this long before their connections are closed.
    pub shutdown_drain_seconds: u64,
    /// Unauthenticated refusals a source address may have in a burst before it is refused
    /// without any lookup.
    pub anonymous_refusal_burst: u32,
    /// Unauthenticated refusals a second a source address regains.
    pub anonymous_refusal_per_second: u32,
    /// Aggregated refusal events are written once per this many seconds.
    pub anonymous_refusal_interval_seconds: u64,
    /// Source addresses tallied separately in one interval; the rest count as one.
    pub anonymous_refusal_max_sources: usize,
    /// A reported device-data access (`occurred_at`) older than this many days is refused;
    /// one more than 5 minutes ahead of medid's clock always is.
    pub access_event_max_age_days: u32,
    /// Fresh OCSP signatures a second (and their burst) for answers the cache cannot give.
    pub ocsp_signatures_per_second: u32,
    /// Log lines as `text` or as `json` objects (`--log-format`, `MEDID_LOG_FORMAT`).
    pub log_format: crate::logging::LogFormat,
    /// `/metrics` counts the certificates by profile and state at most this often, in
    /// seconds, and serves the last count in between (0: on every scrape).
    pub metrics_census_interval_seconds: u64,
    /// CA keys and the audit-signing key in a PKCS#11 token instead of files (docs/HSM.md).
    pub pkcs11: Option<Pkcs11Config>,
    /// The IHE ATNA feed of the ledger to an Audit Record Repository (docs/INTEGRATION.md).
    pub atna: Option<AtnaConfig>,
    /// RESTful ATNA: the ledger posted as FHIR transaction Bundles (docs/INTEGRATION.md).
    pub atna_rest: Option<AtnaRestConfig>,
    /// Device models whose operational certificates carry IEEE 11073 SDC Participant Key
    /// Purposes (`[[sdc_profiles]]`, docs/INTEGRATION.md).
    pub sdc_profiles: Vec<SdcProfileConfig>,
    /// The host names and addresses `medid gateway` instances serve under, by gateway id
    /// (`[[gateway_hosts]]`, docs/GATEWAY.md): their certificates name them, so devices can
    /// check the gateway they reach.
    pub gateway_hosts: Vec<GatewayHostConfig>,
    /// The access-anomaly rules' thresholds (`[anomaly]`, docs/CONSOLE.md).
    pub anomaly: AnomalyConfig,
    /// TESTS ONLY: abort the process at this step of the issuance cycle (`after-sign`,
    /// `after-commit`) to prove crash safety. Never set it in production.
    pub dangerous_crash_at: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7443)),
            database_url: "sqlite://data/medid.db".into(),
            pki_dir: PathBuf::from("certs-dev"),
            create_dev_pki: true,
            public_base_url: "http://127.0.0.1:8080".into(),
            principal_validity_days: 90,
            server_validity_days: 90,
            ca_expiry_warning_days: 180,
            operational_ca_validity_days: 5 * 365,
            max_message_bytes: 1024 * 1024,
            http_listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            console_enabled: true,
            console_listen: SocketAddr::from(([127, 0, 0, 1], 8444)),
            est_enabled: true,
            est_listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            est_labels: BTreeMap::new(),
            operational_validity_hours: 7 * 24,
            rekey_required: true,
            revoke_superseded: false,
            crl_validity_hours: 24,
            audit_checkpoint_dir: None,
            checkpoint_every_events: 1000,
            checkpoint_every_seconds: 10,
            max_concurrent_requests_per_connection: 64,
            max_concurrent_streams: 128,
            max_concurrent_requests_per_principal: 32,
            request_timeout_seconds: 30,
            connection_header_timeout_seconds: 10,
            connection_idle_timeout_seconds: 120,
            max_connections: 4096,
            max_connections_per_source: 256,
            shutdown_drain_seconds: 30,
            anonymous_refusal_burst: 20,
            anonymous_refusal_per_second: 5,
            anonymous_refusal_interval_seconds: 60,
            anonymous_refusal_max_sources: 64,
            ocsp_signatures_per_second: 500,
            access_event_max_age_days: 30,
            log_format: crate::logging::LogFormat::Text,
            metrics_census_interval_seconds: 60,
            pkcs11: None,
            atna: None,
            atna_rest: None,
            sdc_profiles: Vec::new(),
            gateway_hosts: Vec::new(),
            anomaly: AnomalyConfig::default(),
            dangerous_crash_at: None,
        }
    }
}

/// `[atna]`: the ledger fed, in order, to an Audit Record Repository over syslog with mutual
/// TLS (IHE ITI-20; RFC 5424 messages, RFC 5425 transport).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AtnaConfig {
    /// host:port of the repository's syslog-over-TLS listener (6514 by convention).
    pub syslog: String,
    /// The DNS name (or IP address) its certificate must carry [default: the host of
    /// `syslog`].
    pub server_name: Option<String>,
    /// Trust anchors for the repository's certificate (PEM).
    pub ca_file: PathBuf,
    /// medid's certificate chain and key for the mutual authentication (PEM; the key file
    /// mode 0600).
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// The HOSTNAME of each message [default: the machine's host name].
    pub hostname: Option<String>,
    /// Events per write (1 to 10,000; default 500).
    #[serde(default = "default_atna_batch")]
    pub batch: usize,
    /// Events sent again after each new connection (default 1,000): syslog has no
    /// acknowledgement, so what the previous connection wrote last may not have been
    /// received. The repository tells repeats apart by their sequence number.
    #[serde(default = "default_atna_resend")]
    pub resend: u64,
}

fn default_atna_batch() -> usize {
    500
}

fn default_atna_resend() -> u64 {
    1000
}

impl AtnaConfig {
    /// The name the repository's certificate must carry.
    pub fn server_name(&self) -> &str {
        self.server_name.as_deref().unwrap_or_else(|| {
            let host = self
                .syslog
                .rsplit_once(':')
                .map_or(self.syslog.as_str(), |(h, _)| h);
            host.trim_start_matches('[').trim_end_matches(']')
        })
    }
}

/// `[atna_rest]`: the ledger posted, in order, to a FHIR endpoint as transaction Bundles of
/// AuditEvents (RESTful ATNA), each acknowledged by the endpoint's answer.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AtnaRestConfig {
    /// The FHIR base URL (`https://…`); each Bundle is POSTed to it.
    pub url: String,
    /// Trust anchors for the endpoint's certificate (PEM).
    pub ca_file: PathBuf,
    /// medid's certificate chain and key, when the endpoint requires mutual TLS (both or
    /// neither; the key file mode 0600).
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// Events per Bundle (1 to 10,000; default 100).
    #[serde(default = "default_atna_rest_batch")]
    pub batch: usize,
}

fn default_atna_rest_batch() -> usize {
    100
}

/// `[[sdc_profiles]]`: one device model whose operational certificates name SDC roles.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SdcProfileConfig {
    pub manufacturer: String,
    pub model: String,
    /// `provider` (1.2.840.10004.20701.1.1) and/or `consumer` (1.2.840.10004.20701.1.2).
    pub roles: Vec<SdcRole>,
}

/// An IEEE 11073 SDC participant role.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SdcRole {
    Provider,
    Consumer,
}

/// `[anomaly]`: the thresholds of the access-anomaly flags (docs/CONSOLE.md); the defaults are
/// `policy::anomaly::Thresholds::default()`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct AnomalyConfig {
    /// Accesses a device must have had before an hour of the day can be unusual for it.
    pub hours_baseline: u64,
    /// An hour is unusual when fewer than this many per mille of the earlier accesses fell in it.
    pub unusual_hour_per_mille: u64,
    /// Accesses a device must have had before a user's first access to it is flagged.
    pub contact_baseline: u64,
    /// A day is high volume past this many times the mean of the 7 days before...
    pub volume_factor: u64,
    /// ...and at this many accesses or more.
    pub volume_min: u64,
    /// The local time of the hours and days the rules count, as minutes east of UTC.
    pub utc_offset_minutes: i32,
}

impl Default for AnomalyConfig {
    fn default() -> Self {
        let t = crate::policy::anomaly::Thresholds::default();
        Self {
            hours_baseline: t.hours_baseline,
            unusual_hour_per_mille: t.unusual_hour_per_mille,
            contact_baseline: t.contact_baseline,
            volume_factor: t.volume_factor,
            volume_min: t.volume_min,
            utc_offset_minutes: 0,
        }
    }
}

impl AnomalyConfig {
    /// The thresholds, checked: a share of 1–1000 per mille, a factor and a minimum of 1 or
    /// more, an offset within ±14 hours.
    pub fn thresholds(&self) -> Result<crate::policy::anomaly::Thresholds, Error> {
        let bad = |m: &str| Err(Error::InvalidArgument(format!("anomaly: {m}")));
        if !(1..=1000).contains(&self.unusual_hour_per_mille) {
            return bad("unusual_hour_per_mille must be 1 to 1000");
        }
        if self.volume_factor == 0 || self.volume_min == 0 {
            return bad("volume_factor and volume_min must be at least 1");
        }
        let offset = time::UtcOffset::from_whole_seconds(self.utc_offset_minutes * 60)
            .ok()
            .filter(|_| self.utc_offset_minutes.abs() <= 14 * 60);
        let Some(offset) = offset else {
            return bad("utc_offset_minutes must be within -840 and 840");
        };
        Ok(crate::policy::anomaly::Thresholds {
            hours_baseline: self.hours_baseline,
            unusual_hour_per_mille: self.unusual_hour_per_mille,
            contact_baseline: self.contact_baseline,
            volume_factor: self.volume_factor,
            volume_min: self.volume_min,
            offset,
        })
    }
}

/// `[[gateway_hosts]]`: the names one gateway's certificates carry besides its URI.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GatewayHostConfig {
    /// The gateway's principal id (as in `medid admin issue --role gateway --id`).
    pub id: String,
    /// DNS names (subjectAltName dNSName).
    #[serde(default)]
    pub dns: Vec<String>,
    /// IP addresses (subjectAltName iPAddress).
    #[serde(default)]
    pub ips: Vec<std::net::IpAddr>,
}

impl Config {
    /// The names of `[[gateway_hosts]]`, checked.
    pub fn gateway_names(&self) -> Result<Vec<crate::policy::profile::GatewayNames>, Error> {
        let mut out: Vec<crate::policy::profile::GatewayNames> = Vec::new();
        for g in &self.gateway_hosts {
            let id = crate::domain::PrincipalId::parse(&g.id)
                .map_err(|e| Error::InvalidArgument(format!("gateway_hosts: {e}")))?;
            if g.dns.is_empty() && g.ips.is_empty() {
                return Err(Error::InvalidArgument(format!(
                    "gateway_hosts: {} names no dns name and no ip address",
                    g.id
                )));
            }
            for name in &g.dns {
                let ok = !name.is_empty()
                    && name.len() <= 253
                    && name.split('.').all(|label| {
                        (1..=63).contains(&label.len())
                            && label
                                .bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                            && !label.starts_with('-')
                            && !label.ends_with('-')
                    });
                if !ok {
                    return Err(Error::InvalidArgument(format!(
                        "gateway_hosts: {} is not a DNS name (letters, digits and '-' in dot-separated labels)",
                        crate::domain::quote(name)
                    )));
                }
            }
            if out.iter().any(|o| o.id == id) {
                return Err(Error::InvalidArgument(format!(
                    "gateway_hosts: {} is listed twice",
                    g.id
                )));
            }
            out.push(crate::policy::profile::GatewayNames {
                id,
                dns: g.dns.iter().map(|d| d.to_ascii_lowercase()).collect(),
                ips: g.ips.clone(),
            });
        }
        Ok(out)
    }

    /// The SDC models of `[[sdc_profiles]]`, checked.
    pub fn sdc_models(&self) -> Result<Vec<crate::policy::profile::SdcModel>, Error> {
        let mut models: Vec<crate::policy::profile::SdcModel> = Vec::new();
        for p in &self.sdc_profiles {
            let manufacturer = crate::domain::ManufacturerId::parse(&p.manufacturer)
                .map_err(|e| Error::InvalidArgument(format!("sdc_profiles: {e}")))?;
            if p.model.is_empty() || p.roles.is_empty() {
                return Err(Error::InvalidArgument(format!(
                    "sdc_profiles: {}/{:?} needs a model and at least one role (provider, consumer)",
                    p.manufacturer, p.model
                )));
            }
            if models
                .iter()
                .any(|m| m.manufacturer == manufacturer && m.model == p.model)
            {
                return Err(Error::InvalidArgument(format!(
                    "sdc_profiles: {}/{} is listed twice",
                    p.manufacturer, p.model
                )));
            }
            models.push(crate::policy::profile::SdcModel {
                manufacturer,
                model: p.model.clone(),
                roles: crate::policy::profile::SdcRoles {
                    provider: p.roles.contains(&SdcRole::Provider),
                    consumer: p.roles.contains(&SdcRole::Consumer),
                },
            });
        }
        Ok(models)
    }
}

/// `[pkcs11]`: the token that holds the CA keys.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Pkcs11Config {
    /// The vendor's PKCS#11 module (a shared library).
    pub module: PathBuf,
    /// The token's label.
    pub token_label: String,
    /// A file holding the user PIN, mode 0600; never the PIN itself.
    pub pin_file: PathBuf,
    /// Sessions open at most at once (default 4): one per concurrent signature.
    #[serde(default = "default_sessions")]
    pub sessions: usize,
    /// Labels of the keys in the token.
    #[serde(default)]
    pub key_labels: crate::issuance::keys::KeyLabels,
    /// The root key on a token of its own.
    #[serde(default)]
    pub root: Option<Pkcs11RootConfig>,
}

/// `[pkcs11.root]`: the root key on a token of its own (an offline HSM or smartcard brought in
/// for key ceremonies). It belongs in the configuration those ceremonies use (`ca init`, `ca
/// rotate`, `ca revoke-issuer`, `ca sign-root-crl`); the service's configuration leaves it
/// out, so the service never opens the root's token.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Pkcs11RootConfig {
    /// Its module [default: `[pkcs11] module`].
    pub module: Option<PathBuf>,
    pub token_label: String,
    /// A file holding its user PIN, mode 0600.
    pub pin_file: PathBuf,
}

fn default_sessions() -> usize {
    4
}

impl Pkcs11Config {
    /// The token settings and key labels [`crate::issuance::keys::KeySource::open`] takes.
    pub fn settings(
        &self,
    ) -> (
        crate::issuance::hsm::TokenSettings,
        crate::issuance::keys::KeyLabels,
    ) {
        (
            crate::issuance::hsm::TokenSettings {
                module: self.module.clone(),
                token_label: self.token_label.clone(),
                pin_file: self.pin_file.clone(),
                sessions: self.sessions,
            },
            self.key_labels.clone(),
        )
    }
}

impl Config {
    /// Where this configuration keeps the CA keys: the `[pkcs11]` token (opened and logged
    /// in), or files.
    pub fn key_source(&self) -> Result<crate::issuance::keys::KeySource, Error> {
        let source = crate::issuance::keys::KeySource::open(
            self.pkcs11.as_ref().map(Pkcs11Config::settings).as_ref(),
        )?;
        match self
            .pkcs11
            .as_ref()
            .and_then(|p| Some((p, p.root.as_ref()?)))
        {
            Some((p, root)) => source.with_root_token(&crate::issuance::hsm::TokenSettings {
                module: root.module.clone().unwrap_or_else(|| p.module.clone()),
                token_label: root.token_label.clone(),
                pin_file: root.pin_file.clone(),
                sessions: 1,
            }),
            None => Ok(source),
        }
    }

    /// Reads a TOML file; keys it omits keep their defaults, except `create_dev_pki`, which a
    /// configuration file must turn on explicitly.
    pub fn from_file(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::InvalidArgument(format!("reading {}: {e}", path.display())))?;
        let mut raw: toml::Table = toml::from_str(&text)
            .map_err(|e| Error::InvalidArgument(format!("{}: {e}", path.display())))?;
        raw.entry("create_dev_pki")
            .or_insert(toml::Value::Boolean(false));
        let config: Config = raw
            .try_into()
            .map_err(|e| Error::InvalidArgument(format!("{}: {e}", path.display())))?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), Error> {
        if self.principal_validity_days == 0
            || self.server_validity_days == 0
            || self.operational_ca_validity_days == 0
            || self.operational_validity_hours == 0
            || self.crl_validity_hours == 0
        {
            return Err(Error::InvalidArgument(
                "validity periods must be at least one day".into(),
            ));
        }
        if !(self.public_base_url.starts_with("http://")
            || self.public_base_url.starts_with("https://"))
        {
            return Err(Error::InvalidArgument(format!(
                "public_base_url must be an http:// or https:// URL (got {:?})",
                self.public_base_url
            )));
        }
        if let Some(step) = &self.dangerous_crash_at {
            if !crate::service::CRASH_POINTS.contains(&step.as_str()) {
                return Err(Error::InvalidArgument(format!(
                    "dangerous_crash_at must be one of {}",
                    crate::service::CRASH_POINTS.join(", ")
                )));
            }
        }
        for (name, label) in &self.est_labels {
            label.validate(name)?;
        }
        if self.access_event_max_age_days == 0 || self.access_event_max_age_days > 3650 {
            return Err(Error::InvalidArgument(
                "access_event_max_age_days must be 1 to 3650".into(),
            ));
        }
        if let Some(p) = &self.pkcs11 {
            if p.token_label.is_empty() || p.token_label.len() > 32 {
                return Err(Error::InvalidArgument(
                    "pkcs11.token_label must be 1 to 32 characters (PKCS#11 token labels)".into(),
                ));
            }
            if !(1..=256).contains(&p.sessions) {
                return Err(Error::InvalidArgument(
                    "pkcs11.sessions must be 1 to 256".into(),
                ));
            }
            if let Some(root) = &p.root {
                if root.token_label.is_empty() || root.token_label.len() > 32 {
                    return Err(Error::InvalidArgument(
                        "pkcs11.root.token_label must be 1 to 32 characters".into(),
                    ));
                }
                if root.token_label == p.token_label
                    && root.module.as_ref().is_none_or(|m| *m == p.module)
                {
                    return Err(Error::InvalidArgument(
                        "pkcs11.root names the issuing keys' own token; leave [pkcs11.root] out \
                         to keep the root key there"
                            .into(),
                    ));
                }
            }
            let l = &p.key_labels;
            let labels = [&l.root, &l.device_identity, &l.operational, &l.audit];
            if labels.iter().any(|x| x.is_empty())
                || labels
                    .iter()
                    .enumerate()
                    .any(|(i, a)| labels[i + 1..].contains(a))
            {
                return Err(Error::InvalidArgument(
                    "pkcs11.key_labels must be four different, non-empty labels".into(),
                ));
            }
        }
        if let Some(a) = &self.atna {
            if a.syslog
                .rsplit_once(':')
                .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
            {
                return Err(Error::InvalidArgument(format!(
                    "atna.syslog must be host:port, not {:?}",
                    a.syslog
                )));
            }
            if !(1..=10_000).contains(&a.batch) {
                return Err(Error::InvalidArgument(
                    "atna.batch must be 1 to 10000".into(),
                ));
            }
        }
        if let Some(r) = &self.atna_rest {
            if !r.url.starts_with("https://") {
                return Err(Error::InvalidArgument(format!(
                    "atna_rest.url must be an https:// URL, not {:?}",
                    r.url
                )));
            }
            if r.client_cert.is_some() != r.client_key.is_some() {
                return Err(Error::InvalidArgument(
                    "atna_rest.client_cert and atna_rest.client_key go together".into(),
                ));
            }
            if !(1..=10_000).contains(&r.batch) {
                return Err(Error::InvalidArgument(
                    "atna_rest.batch must be 1 to 10000".into(),
                ));
            }
        }
        self.sdc_models()?;
        self.anomaly.thresholds()?;
        self.gateway_names()?;
        if !(16 * 1024..=64 * 1024 * 1024).contains(&self.max_message_bytes) {
            return Err(Error::InvalidArgument(
                "max_message_bytes must be between 16 KiB and 64 MiB".into(),
            ));
        }
        Ok(())
    }

    /// Where checkpoints are appended outside the database. Default: `checkpoints/` beside a
    /// SQLite file; `data/checkpoints` with PostgreSQL.
    pub fn checkpoint_dir(&self) -> Result<PathBuf, Error> {
        if let Some(dir) = &self.audit_checkpoint_dir {
            return Ok(dir.clone());
        }
        if let Database::Postgres(_) = self.database()? {
            return Ok(PathBuf::from("data/checkpoints"));
        }
        let db = self.sqlite_path()?;
        Ok(db
            .parent()
            .map(|p| p.join("checkpoints"))
            .unwrap_or_else(|| PathBuf::from("checkpoints")))
    }

    /// The database the URL names.
    pub fn database(&self) -> Result<Database, Error> {
        let url = &self.database_url;
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Database::Postgres(url.clone()));
        }
        self.sqlite_path().map(Database::Sqlite)
    }

    /// The SQLite file the database URL names.
    pub fn sqlite_path(&self) -> Result<PathBuf, Error> {
        let url = &self.database_url;
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .unwrap_or(url);
        if path.is_empty() || path.contains("://") {
            return Err(Error::InvalidArgument(format!(
                "database_url {url:?} is not a SQLite file (sqlite://PATH)"
            )));
        }
        Ok(PathBuf::from(path))
    }
}

/// Where the data lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    /// A SQLite file (created if missing).
    Sqlite(PathBuf),
    /// A PostgreSQL URL (the database must exist; medid creates its tables).
    Postgres(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("medid.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:9000\"\nlsten = 1\n").unwrap();
        let err = Config::from_file(&path).unwrap_err();
        assert!(err.to_string().contains("lsten"), "{err}");
    }

    #[test]
    fn anomaly_thresholds_are_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("medid.toml");
        std::fs::write(
            &path,
            "[anomaly]\nvolume_factor = 5\nutc_offset_minutes = 60\n",
        )
        .unwrap();
        let c = Config::from_file(&path).unwrap();
        let t = c.anomaly.thresholds().unwrap();
        assert_eq!(
            (t.volume_factor, t.volume_min, t.hours_baseline),
            (5, 10, 100)
        );
        assert_eq!(t.zone(), "UTC+01:00");
        let bad = |edit: fn(&mut AnomalyConfig), says: &str| {
            let mut c = Config::default();
            edit(&mut c.anomaly);
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(says), "{err}");
        };
        bad(|a| a.unusual_hour_per_mille = 0, "unusual_hour_per_mille");
        bad(
            |a| a.unusual_hour_per_mille = 1001,
            "unusual_hour_per_mille",
        );
        bad(|a| a.volume_factor = 0, "volume_factor");
        bad(|a| a.utc_offset_minutes = 900, "utc_offset_minutes");
        std::fs::write(&path, "[anomaly]\nvolume_facter = 5\n").unwrap();
        assert!(Config::from_file(&path).is_err());
    }

    #[test]
    fn a_config_file_does_not_create_a_dev_pki_unless_asked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("medid.toml");
        std::fs::write(&path, "pki_dir = \"/etc/medid/pki\"\n").unwrap();
        let c = Config::from_file(&path).unwrap();
        assert!(!c.create_dev_pki);
        assert_eq!(c.listen, Config::default().listen);
    }

    #[test]
    fn est_labels_are_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("medid.toml");
        std::fs::write(
            &path,
            "[est_labels.px200]\nprofile = \"device-birth\"\nmodel = \"PX-200\"\n\
             [est_labels.ops]\nprofile = \"device-operational\"\n",
        )
        .unwrap();
        let c = Config::from_file(&path).unwrap();
        assert_eq!(c.est_labels.len(), 2);
        assert_eq!(c.est_labels["px200"].model.as_deref(), Some("PX-200"));
        std::fs::write(
            &path,
            "[est_labels.ops]\nprofile = \"device-operational\"\nmodel = \"PX-200\"\n",
        )
        .unwrap();
        let err = Config::from_file(&path).unwrap_err();
        assert!(err.to_string().contains("device-birth"), "{err}");
        std::fs::write(&path, "[est_labels.x]\nprofile = \"server\"\n").unwrap();
        assert!(Config::from_file(&path).is_err());
    }

    #[test]
    fn sqlite_urls_and_paths_are_understood() {
        let mut c = Config::default();
        assert_eq!(c.sqlite_path().unwrap(), PathBuf::from("data/medid.db"));
        c.database_url = "/var/lib/medid/medid.db".into();
        assert_eq!(
            c.sqlite_path().unwrap(),
            PathBuf::from("/var/lib/medid/medid.db")
        );
        c.database_url = "postgres://x".into();
        assert!(c.sqlite_path().is_err());
        assert_eq!(
            c.database().unwrap(),
            Database::Postgres("postgres://x".into())
        );
        c.database_url = "mysql://x".into();
        assert!(c.database().is_err());
    }
}
