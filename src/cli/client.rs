//! Client commands: talk to a running medid over mTLS. Keys are generated locally and never
//! sent; only CSRs travel.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand, ValueEnum};
use rcgen::{CertificateParams, KeyPair};
use serde_json::json;

use crate::api::client::{ClientCredentials, Connector};
use crate::error::Error;
use crate::proto::{
    self, admin_service_client::AdminServiceClient,
    enrollment_service_client::EnrollmentServiceClient,
    lifecycle_service_client::LifecycleServiceClient,
    registry_service_client::RegistryServiceClient,
};

/// Where and as whom to connect. Defaults are the development material in certs-dev/.
#[derive(Debug, Args, Clone)]
pub struct Connection {
    /// Service URL.
    #[arg(
        long,
        env = "MEDID_SERVER",
        default_value = "https://localhost:7443",
        global = true
    )]
    pub server: String,
    /// CA certificate that signed the service's certificate chain (the root).
    #[arg(
        long,
        env = "MEDID_CA",
        default_value = "certs-dev/root-ca.pem",
        global = true
    )]
    pub ca: PathBuf,
    /// Client certificate (PEM).
    #[arg(
        long,
        env = "MEDID_CERT",
        default_value = "certs-dev/admin.pem",
        global = true
    )]
    pub cert: PathBuf,
    /// Client private key (PEM).
    #[arg(
        long,
        env = "MEDID_KEY",
        default_value = "certs-dev/admin.key",
        global = true
    )]
    pub key: PathBuf,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

/// The server and client certificate of the latest connection, to name them in a transport
/// failure that shows up later, on a call (a TLS 1.3 server refuses a client certificate after
/// the client's side of the handshake is done).
static OFFERED: std::sync::Mutex<Option<(String, PathBuf)>> = std::sync::Mutex::new(None);

/// A channel to `server` as the holder of `cert`/`key`, trusting `ca`. It first finds out
/// whether the server takes this certificate, so a refusal (revoked, unknown issuer,
/// expired) is named instead of showing as a closed connection on the first call.
pub(crate) async fn open(
    server: &str,
    ca: &Path,
    cert: &Path,
    key: &Path,
) -> Result<tonic::transport::Channel, Error> {
    let creds = ClientCredentials::from_files(ca, cert, key)?;
    *OFFERED.lock().unwrap_or_else(|p| p.into_inner()) = Some((server.to_owned(), cert.to_owned()));
    let connector = Connector::new(
        server,
        &creds.ca_pem,
        Some((&creds.cert_pem, &creds.key_pem)),
    )?;
    connector.probe(Some(cert)).await?;
    connector.connect().await
}

impl Connection {
    pub(super) async fn channel(&self) -> Result<tonic::transport::Channel, Error> {
        open(&self.server, &self.ca, &self.cert, &self.key).await
    }
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Register a manufacturer.
    AddManufacturer {
        #[command(flatten)]
        conn: Connection,
        /// Manufacturer id (a-z, 0-9, '-').
        #[arg(long)]
        id: String,
        /// Display name (written as O in its devices' birth certificates).
        #[arg(long)]
        name: String,
        /// A model it may enroll; repeat for several. None: any model.
        #[arg(long = "model")]
        models: Vec<String>,
    },
    /// List manufacturers.
    ListManufacturers {
        #[command(flatten)]
        conn: Connection,
    },
    /// Issue a station, gateway, auditor or admin certificate. The key is generated here.
    Issue {
        #[command(flatten)]
        conn: Connection,
        /// The principal's role: a factory station, a gateway, an auditor or an admin.
        #[arg(long, value_enum)]
        role: RoleArg,
        /// Principal id (a-z, 0-9, '-').
        #[arg(long)]
        id: String,
        /// For --role station: the manufacturer it serves.
        #[arg(long)]
        manufacturer: Option<String>,
        #[command(flatten)]
        key: KeySource,
        /// Directory for ID.pem, ID-chain.pem and ID.key.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// Also write ID.p12 (PKCS#12: the key, the certificate and its chain; PBES2 with
        /// AES-256 and HMAC-SHA-256), to import into a browser for the console. Needs a key
        /// generated here and --p12-password-file.
        #[arg(long, requires = "p12_password_file", conflicts_with = "csr")]
        p12: bool,
        /// A file whose first line is the PKCS#12 password (at least 8 characters).
        #[arg(long)]
        p12_password_file: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RoleArg {
    Station,
    Gateway,
    Auditor,
    Admin,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum KeyType {
    P256,
    P384,
    Ed25519,
}

/// Where the CSR comes from: a file, or a key generated here.
#[derive(Debug, Args, Clone)]
pub struct KeySource {
    /// Use this CSR (PEM or DER) instead of generating a key.
    #[arg(long, conflicts_with = "generate_key")]
    pub csr: Option<PathBuf>,
    /// Generate the key locally (the default when no --csr is given).
    #[arg(long)]
    pub generate_key: bool,
    /// Type of a generated key.
    #[arg(long, value_enum, default_value = "p256")]
    pub key_type: KeyType,
    /// Overwrite existing output files.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct EnrollArgs {
    #[command(flatten)]
    pub conn: Connection,
    /// Device serial number (PrintableString, 1–64 characters).
    #[arg(long)]
    pub serial: String,
    /// Device model.
    #[arg(long)]
    pub model: String,
    /// GS1 GTIN-14 UDI-DI.
    #[arg(long)]
    pub udi_di: Option<String>,
    #[command(flatten)]
    pub key: KeySource,
    /// Enroll with a one-time token instead of a station certificate (no client certificate
    /// is sent).
    #[arg(long)]
    pub token: Option<String>,
    /// Directory for SERIAL.pem, SERIAL-chain.pem and (with a generated key) SERIAL.key.
    #[arg(long, default_value = ".")]
    pub out: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// Show one device.
    Get {
        #[command(flatten)]
        conn: Connection,
        /// The device's manufacturer id.
        #[arg(long)]
        manufacturer: String,
        /// The device's serial number.
        #[arg(long)]
        serial: String,
    },
    /// List devices, all pages.
    List {
        #[command(flatten)]
        conn: Connection,
        /// Only this manufacturer's devices (a station sees only its own anyway).
        #[arg(long)]
        manufacturer: Option<String>,
        /// Only devices of this model.
        #[arg(long)]
        model: Option<String>,
        /// active or decommissioned.
        #[arg(long)]
        state: Option<String>,
        /// Only devices whose serial starts with this (case-sensitive).
        #[arg(long)]
        serial_prefix: Option<String>,
        /// Devices per request (1–500).
        #[arg(long, default_value_t = 100)]
        page_size: u32,
    },
}

pub(crate) fn status(e: tonic::Status) -> Error {
    use std::error::Error as _;
    use tonic::Code;
    if let Some(cause) = e.source() {
        let offered = OFFERED.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let (server, cert) = offered.as_ref().map_or(("the server", None), |(s, c)| {
            (s.as_str(), Some(c.as_path()))
        });
        if let Some(named) = crate::api::client::transport_error(server, cert, cause) {
            return named;
        }
    }
    let mut m = e.message().to_owned();
    // Transport failures (a refused TLS handshake, a closed connection) carry the reason in
    // their source chain: name it instead of a bare "transport error".
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !m.contains(&text) {
            m = format!("{m}: {text}");
        }
        source = s.source();
    }
    match e.code() {
        Code::InvalidArgument | Code::OutOfRange => Error::InvalidArgument(m),
        Code::Unauthenticated => Error::Unauthenticated(m),
        Code::PermissionDenied => Error::PermissionDenied(m),
        Code::NotFound => Error::NotFound(m),
        Code::AlreadyExists => Error::AlreadyExists(m),
        Code::FailedPrecondition => Error::FailedPrecondition(m),
        Code::Unavailable => Error::Unavailable(m),
        _ => Error::Internal(format!("{:?}: {m}", e.code())),
    }
}

pub async fn admin(cmd: AdminCommand) -> Result<(), Error> {
    match cmd {
        AdminCommand::AddManufacturer {
            conn,
            id,
            name,
            models,
        } => {
            let mut c = AdminServiceClient::new(conn.channel().await?);
            let m = c
                .create_manufacturer(proto::CreateManufacturerRequest {
                    id,
                    display_name: name,
                    allowed_models: models,
                })
                .await
                .map_err(status)?
                .into_inner();
            print_manufacturers(&conn, Shape::One, &[m]);
            Ok(())
        }
        AdminCommand::ListManufacturers { conn } => {
            let mut c = AdminServiceClient::new(conn.channel().await?);
            let list = c
                .list_manufacturers(proto::ListManufacturersRequest {})
                .await
                .map_err(status)?
                .into_inner();
            print_manufacturers(&conn, Shape::List, &list.manufacturers);
            Ok(())
        }
        AdminCommand::Issue {
            conn,
            role,
            id,
            manufacturer,
            key,
            out,
            p12,
            p12_password_file,
        } => {
            let (role, manufacturer_id) = match (role, manufacturer) {
                (RoleArg::Station, Some(m)) => (proto::PrincipalRole::ManufacturerStation, m),
                (RoleArg::Station, None) => {
                    return Err(Error::InvalidArgument(
                        "--role station needs --manufacturer".into(),
                    ))
                }
                (_, Some(_)) => {
                    return Err(Error::InvalidArgument(
                        "--manufacturer applies only to --role station".into(),
                    ))
                }
                (RoleArg::Gateway, None) => (proto::PrincipalRole::Gateway, String::new()),
                (RoleArg::Auditor, None) => (proto::PrincipalRole::Auditor, String::new()),
                (RoleArg::Admin, None) => (proto::PrincipalRole::Admin, String::new()),
            };
            let stem = file_stem(&id);
            let mut files = OutputFiles::new(&out, &stem);
            // Read before anything is issued: a bad password file changes nothing.
            let p12_password = match (p12, &p12_password_file) {
                (true, Some(path)) => {
                    files.p12 = Some(out.join(format!("{stem}.p12")));
                    Some(p12_password(path)?)
                }
                _ => None,
            };
            let pending = PendingKey::prepare(&key, &files)?;
            let mut c = AdminServiceClient::new(conn.channel().await?);
            let issued = c
                .issue_principal_certificate(proto::IssuePrincipalCertificateRequest {
                    role: role as i32,
                    id,
                    manufacturer_id,
                    csr: pending.csr.clone(),
                })
                .await
                .map_err(status)?
                .into_inner();
            pending.save(&files, &issued)?;
            if let (Some(path), Some(password)) = (&files.p12, &p12_password) {
                pending.save_p12(path, password, &issued)?;
            }
            print_issued(&conn, &issued, &files, None);
            Ok(())
        }
    }
}

/// The PKCS#12 password: the file's first line, without its line ending.
fn p12_password(path: &Path) -> Result<String, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::InvalidArgument(format!("reading {}: {e}", path.display())))?;
    let password = text.lines().next().unwrap_or("").to_owned();
    if password.chars().count() < 8 {
        return Err(Error::InvalidArgument(format!(
            "the PKCS#12 password in {} must be at least 8 characters: it protects a private key",
            path.display()
        )));
    }
    Ok(password)
}

pub async fn enroll(args: EnrollArgs) -> Result<(), Error> {
    let files = OutputFiles::new(&args.out, &file_stem(&args.serial));
    let pending = PendingKey::prepare(&args.key, &files)?;
    let request = proto::EnrollDeviceRequest {
        csr: pending.csr.clone(),
        serial: args.serial,
        model: args.model,
        udi_di: args.udi_di.unwrap_or_default(),
    };
    let resp = match &args.token {
        None => EnrollmentServiceClient::new(args.conn.channel().await?)
            .enroll_device(request)
            .await
            .map_err(status)?
            .into_inner(),
        Some(token) => {
            let ca = std::fs::read(&args.conn.ca).map_err(|e| {
                Error::InvalidArgument(format!("reading {}: {e}", args.conn.ca.display()))
            })?;
            let channel =
                crate::api::client::connect_without_identity(&args.conn.server, &ca).await?;
            LifecycleServiceClient::new(channel)
                .enroll_with_token(proto::EnrollWithTokenRequest {
                    token: token.clone(),
                    csr: request.csr,
                    serial: request.serial,
                    model: request.model,
                    udi_di: request.udi_di,
                })
                .await
                .map_err(status)?
                .into_inner()
        }
    };
    let issued = resp
        .certificate
        .ok_or_else(|| Error::Internal("response without certificate".into()))?;
    pending.save(&files, &issued)?;
    print_issued(&args.conn, &issued, &files, resp.device.as_ref());
    Ok(())
}

pub async fn device(cmd: DeviceCommand) -> Result<(), Error> {
    match cmd {
        DeviceCommand::Get {
            conn,
            manufacturer,
            serial,
        } => {
            let mut c = RegistryServiceClient::new(conn.channel().await?);
            let d = c
                .get_device(proto::GetDeviceRequest {
                    manufacturer_id: manufacturer,
                    serial,
                })
                .await
                .map_err(status)?
                .into_inner();
            print_devices(&conn, Shape::One, &[d]);
            Ok(())
        }
        DeviceCommand::List {
            conn,
            manufacturer,
            model,
            state,
            serial_prefix,
            page_size,
        } => {
            let state = match state.as_deref() {
                None => proto::DeviceState::Unspecified,
                Some("active") => proto::DeviceState::Active,
                Some("decommissioned") => proto::DeviceState::Decommissioned,
                Some(other) => {
                    return Err(Error::InvalidArgument(format!(
                        "--state must be active or decommissioned (got {other:?})"
                    )))
                }
            };
            let mut c = RegistryServiceClient::new(conn.channel().await?);
            let mut all = Vec::new();
            let mut token = String::new();
            loop {
                let page = c
                    .list_devices(proto::ListDevicesRequest {
                        manufacturer_id: manufacturer.clone().unwrap_or_default(),
                        model: model.clone().unwrap_or_default(),
                        state: state as i32,
                        page_size,
                        page_token: token,
                        serial_prefix: serial_prefix.clone().unwrap_or_default(),
                    })
                    .await
                    .map_err(status)?
                    .into_inner();
                all.extend(page.devices);
                if page.next_page_token.is_empty() {
                    break;
                }
                token = page.next_page_token;
            }
            print_devices(&conn, Shape::List, &all);
            Ok(())
        }
    }
}

/// A file-name-safe form of a serial or id.
fn file_stem(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-._".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

pub(super) struct OutputFiles {
    cert: PathBuf,
    chain: PathBuf,
    key: PathBuf,
    /// `STEM.p12`, when asked for.
    p12: Option<PathBuf>,
}

impl OutputFiles {
    pub(super) fn new(dir: &Path, stem: &str) -> Self {
        Self {
            cert: dir.join(format!("{stem}.pem")),
            chain: dir.join(format!("{stem}-chain.pem")),
            key: dir.join(format!("{stem}.key")),
            p12: None,
        }
    }
}

/// PBKDF2 iterations of the PKCS#12 key encryption and of its MAC key: both are derived from
/// the password, so both must resist guessing.
const P12_ITERATIONS: u32 = 600_000;

/// A CSR ready to send, and the key to save once the certificate arrives.
pub(super) struct PendingKey {
    pub(super) csr: Vec<u8>,
    key_pem: Option<String>,
}

impl PendingKey {
    pub(super) fn prepare(src: &KeySource, files: &OutputFiles) -> Result<Self, Error> {
        let mut outputs = vec![&files.cert, &files.chain];
        if src.csr.is_none() {
            outputs.push(&files.key);
        }
        outputs.extend(files.p12.as_ref());
        if !src.force {
            if let Some(p) = outputs.iter().find(|p| p.exists()) {
                return Err(Error::AlreadyExists(format!(
                    "{} exists; pass --force to overwrite",
                    p.display()
                )));
            }
        }
        if let Some(dir) = files.cert.parent() {
            crate::files::create_private_dir(dir)?;
        }
        if let Some(path) = &src.csr {
            let csr = std::fs::read(path)
                .map_err(|e| Error::InvalidArgument(format!("reading {}: {e}", path.display())))?;
            return Ok(Self { csr, key_pem: None });
        }
        let alg = match src.key_type {
            KeyType::P256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyType::P384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            KeyType::Ed25519 => &rcgen::PKCS_ED25519,
        };
        let key = KeyPair::generate_for(alg).map_err(|e| Error::internal("generating key", e))?;
        let csr = CertificateParams::default()
            .serialize_request(&key)
            .map_err(|e| Error::internal("making CSR", e))?;
        Ok(Self {
            csr: csr.der().to_vec(),
            key_pem: Some(key.serialize_pem()),
        })
    }

    pub(super) fn save(
        &self,
        files: &OutputFiles,
        issued: &proto::IssuedCertificate,
    ) -> Result<(), Error> {
        use crate::issuance::bootstrap::{write_private, write_public};
        if let Some(key) = &self.key_pem {
            write_private(&files.key, key)?;
        }
        write_public(&files.cert, &issued.certificate_pem)?;
        let chain = std::iter::once(issued.certificate_pem.as_str())
            .chain(issued.chain_pem.iter().map(String::as_str))
            .collect::<String>();
        write_public(&files.chain, &chain)
    }

    /// Writes the key, the certificate and its chain as one PKCS#12 file (mode 0600).
    fn save_p12(
        &self,
        path: &Path,
        password: &str,
        issued: &proto::IssuedCertificate,
    ) -> Result<(), Error> {
        use p12_keystore::{
            Certificate, EncryptionAlgorithm, KeyStore, KeyStoreEntry, MacAlgorithm, PrivateKey,
            PrivateKeyChain,
        };
        let key_pem = self.key_pem.as_deref().ok_or_else(|| {
            Error::InvalidArgument("--p12 needs a key generated here, not --csr".into())
        })?;
        let bad = |what: &str, e: p12_keystore::error::Error| {
            Error::Internal(format!("making the PKCS#12 file ({what}): {e}"))
        };
        let key_der = KeyPair::from_pem(key_pem)
            .map_err(|e| Error::internal("reading the generated key", e))?
            .serialize_der();
        let mut certs = Vec::new();
        for pem in std::iter::once(&issued.certificate_pem).chain(&issued.chain_pem) {
            for der in crate::pem::parse_certificates(pem.as_bytes())? {
                certs.push(Certificate::from_der(&der).map_err(|e| bad("certificate", e))?);
            }
        }
        let leaf = certs
            .first()
            .ok_or_else(|| Error::Internal("the issued certificate is empty".into()))?;
        let key_id = ring::digest::digest(&ring::digest::SHA256, leaf.as_der());
        let chain = PrivateKeyChain::new(
            key_id.as_ref(),
            PrivateKey::from_der(&key_der).map_err(|e| bad("key", e))?,
            certs,
        );
        let mut store = KeyStore::new();
        store.add_entry(&issued.subject_uri, KeyStoreEntry::PrivateKeyChain(chain));
        let der = store
            .writer(password)
            .encryption_algorithm(EncryptionAlgorithm::PbeWithHmacSha256AndAes256)
            .encryption_iterations(P12_ITERATIONS)
            .mac_algorithm(MacAlgorithm::HmacSha256)
            .mac_iterations(P12_ITERATIONS)
            .write()
            .map_err(|e| bad("encoding", e))?;
        crate::files::write_atomic(path, &der, crate::files::Access::Private)
    }
}

pub(super) fn ts(t: &Option<prost_types::Timestamp>) -> String {
    t.as_ref()
        .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t.seconds).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// A time for JSON output: RFC 3339, or null when absent.
pub(super) fn ts_json(t: &Option<prost_types::Timestamp>) -> serde_json::Value {
    text_json(&ts(t))
}

/// A text field for JSON output: null when empty (proto3 cannot tell absent from empty).
pub(super) fn text_json(s: &str) -> serde_json::Value {
    match s {
        "" => serde_json::Value::Null,
        s => s.into(),
    }
}

fn manufacturer_json(m: &proto::Manufacturer) -> serde_json::Value {
    json!({"id": m.id, "display_name": m.display_name,
           "allowed_models": m.allowed_models, "created_at": ts_json(&m.created_at)})
}

/// One JSON object for one item (`get`, `add`), an array for a list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Shape {
    One,
    List,
}

pub(super) fn print_json(shape: Shape, items: impl IntoIterator<Item = serde_json::Value>) {
    let mut items: Vec<_> = items.into_iter().collect();
    let v = match shape {
        Shape::One if items.len() == 1 => items.remove(0),
        _ => serde_json::Value::Array(items),
    };
    println!("{v}");
}

fn print_manufacturers(conn: &Connection, shape: Shape, list: &[proto::Manufacturer]) {
    if conn.json {
        print_json(shape, list.iter().map(manufacturer_json));
        return;
    }
    for m in list {
        let models = if m.allowed_models.is_empty() {
            "any model".to_owned()
        } else {
            m.allowed_models.join(", ")
        };
        println!("{:<20} {:<30} {}", m.id, m.display_name, models);
    }
}

pub(super) fn print_issued(
    conn: &Connection,
    c: &proto::IssuedCertificate,
    files: &OutputFiles,
    device: Option<&proto::Device>,
) {
    let key = files.key.exists().then(|| files.key.display().to_string());
    if conn.json {
        println!(
            "{}",
            json!({"subject_uri": c.subject_uri, "serial": c.serial,
                   "not_before": ts_json(&c.not_before), "not_after": ts_json(&c.not_after),
                   "certificate": files.cert.display().to_string(),
                   "chain": files.chain.display().to_string(), "key": key,
                   "device": device.map(device_json)})
        );
        return;
    }
    println!("issued {}", c.subject_uri);
    println!("  serial:       {}", c.serial);
    println!(
        "  valid:        {} .. {}",
        ts(&c.not_before),
        ts(&c.not_after)
    );
    println!("  certificate:  {}", files.cert.display());
    println!("  chain:        {}", files.chain.display());
    if let Some(k) = key {
        println!("  key:          {k} (mode 0600, generated here, never sent)");
    }
    if let Some(p) = &files.p12 {
        println!(
            "  pkcs#12:      {} (mode 0600, key and chain, for a browser)",
            p.display()
        );
    }
}

pub(super) fn device_json(d: &proto::Device) -> serde_json::Value {
    json!({"manufacturer_id": d.manufacturer_id, "serial": d.serial, "model": d.model,
           "udi_di": text_json(&d.udi_di), "uri": d.uri, "state": state_name(d.state),
           "enrolled_at": ts_json(&d.enrolled_at),
           "birth_certificate_serial": text_json(&d.birth_certificate_serial)})
}

fn state_name(s: i32) -> &'static str {
    match proto::DeviceState::try_from(s) {
        Ok(proto::DeviceState::Active) => "active",
        Ok(proto::DeviceState::Decommissioned) => "decommissioned",
        _ => "unknown",
    }
}

fn print_devices(conn: &Connection, shape: Shape, list: &[proto::Device]) {
    if conn.json {
        print_json(shape, list.iter().map(device_json));
        return;
    }
    for d in list {
        let line = format!(
            "{:<16} {:<24} {:<16} {:<15} {}",
            d.manufacturer_id,
            d.serial,
            d.model,
            state_name(d.state),
            d.uri
        );
        // A reader that has gone (`| head`) ends the listing.
        if !matches!(super::print_line(&line), Ok(true)) {
            return;
        }
    }
}
