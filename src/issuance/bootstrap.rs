//! `medid ca init`: creates the CA hierarchy and the first credentials in a directory.
//!
//! ```text
//! root CA (P-256, notAfter 99991231235959Z)
//! ├── device-identity CA (P-256, notAfter 99991231235959Z, pathLen 0): device birth certificates
//! └── operational CA (P-256, 5 years, pathLen 0): everything else
//! ```
//! Plus the service's TLS certificate, an Ed25519 audit-signing key, and a first admin
//! certificate. Private keys are PKCS#8 PEM files of mode 0600. These leaf certificates are
//! signed before any database exists; `medid serve` records them in its store on first start.

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber,
};

use super::keys::{signing_error, CaKey, KeyCustody, KeyRole, KeySource};
use super::root_crl::{RootCrl, ROOT_CRL_VALIDITY};
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use super::{random_serial, IssuerId, IssuerInfo, IssuerName};
use crate::domain::{PrincipalId, PrincipalRole, TrustDomain};
use crate::error::Error;
use crate::files::{create_private_dir, write_atomic, Access};
use crate::policy::profile::{no_well_defined_expiry, ProfileSettings};

/// The id of the admin principal `ca init` creates.
pub const BOOTSTRAP_ADMIN_ID: &str = "admin";

/// Where each file of a PKI directory lives.
#[derive(Debug, Clone)]
pub struct PkiFiles {
    pub dir: PathBuf,
    pub metadata: PathBuf,
    pub root_cert: PathBuf,
    pub root_key: PathBuf,
    /// The root's CRL (DER): which issuing CAs it revoked.
    pub root_crl: PathBuf,
    pub device_ca_cert: PathBuf,
    pub device_ca_key: PathBuf,
    pub operational_ca_cert: PathBuf,
    pub operational_ca_key: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub audit_key: PathBuf,
    pub audit_public_key: PathBuf,
    pub admin_cert: PathBuf,
    pub admin_key: PathBuf,
    /// `ca init --external-root`: what it made, awaiting `ca install`.
    pub pending: PathBuf,
    pub device_ca_csr: PathBuf,
    pub operational_ca_csr: PathBuf,
}

impl PkiFiles {
    pub fn new(dir: &Path) -> Self {
        let f = |name: &str| dir.join(name);
        Self {
            dir: dir.to_path_buf(),
            metadata: f("pki.json"),
            root_cert: f("root-ca.pem"),
            root_key: f("root-ca.key"),
            root_crl: f("root.crl"),
            device_ca_cert: f("device-ca.pem"),
            device_ca_key: f("device-ca.key"),
            operational_ca_cert: f("operational-ca.pem"),
            operational_ca_key: f("operational-ca.key"),
            server_cert: f("server.pem"),
            server_key: f("server.key"),
            audit_key: f("audit-signing.key"),
            audit_public_key: f("audit-signing.pub"),
            admin_cert: f("admin.pem"),
            admin_key: f("admin.key"),
            pending: f("pending.json"),
            device_ca_csr: f("device-ca.csr"),
            operational_ca_csr: f("operational-ca.csr"),
        }
    }

    fn all(&self) -> [&PathBuf; 18] {
        [
            &self.pending,
            &self.device_ca_csr,
            &self.operational_ca_csr,
            &self.metadata,
            &self.root_cert,
            &self.root_key,
            &self.root_crl,
            &self.device_ca_cert,
            &self.device_ca_key,
            &self.operational_ca_cert,
            &self.operational_ca_key,
            &self.server_cert,
            &self.server_key,
            &self.audit_key,
            &self.audit_public_key,
            &self.admin_cert,
            &self.admin_key,
            &self.dir,
        ]
    }

    /// The certificate (with its chain) and key of `issuer`'s delegated OCSP responder, which
    /// the service issues itself and reuses across restarts.
    pub fn ocsp_responder(&self, issuer: IssuerId) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("ocsp-{issuer}.pem")),
            self.dir.join(format!("ocsp-{issuer}.key")),
        )
    }

    /// The certificate and key of an issuing-CA generation: `operational-ca.pem` for
    /// generation 1, `operational-ca-2.pem` for the next, and so on.
    pub fn issuing_ca(&self, id: IssuerId) -> (PathBuf, PathBuf) {
        let stem = match id.name {
            IssuerName::DeviceIdentity => "device-ca",
            IssuerName::Operational => "operational-ca",
        };
        match id.generation {
            1 => match id.name {
                IssuerName::DeviceIdentity => {
                    (self.device_ca_cert.clone(), self.device_ca_key.clone())
                }
                IssuerName::Operational => (
                    self.operational_ca_cert.clone(),
                    self.operational_ca_key.clone(),
                ),
            },
            n => (
                self.dir.join(format!("{stem}-{n}.pem")),
                self.dir.join(format!("{stem}-{n}.key")),
            ),
        }
    }

    /// The CSR of an issuing-CA generation whose certificate an existing root signs
    /// (`device-ca.csr`, `operational-ca-2.csr`, …).
    pub fn issuing_csr(&self, id: IssuerId) -> PathBuf {
        self.issuing_ca(id).0.with_extension("csr")
    }

    /// True when `ca init` has completed in this directory.
    pub fn exists(&self) -> bool {
        self.metadata.exists()
    }
}

/// Facts about a PKI directory that the service needs, written by `ca init`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PkiMetadata {
    pub trust_domain: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Where the CA keys and the audit-signing key are (absent: files).
    #[serde(default, skip_serializing_if = "is_files")]
    pub key_custody: KeyCustody,
}

fn is_files(c: &KeyCustody) -> bool {
    *c == KeyCustody::Files
}

impl PkiMetadata {
    pub fn load(files: &PkiFiles) -> Result<Self, Error> {
        let text = fs::read_to_string(&files.metadata).map_err(|e| {
            Error::Internal(format!(
                "reading {}: {e} (run `medid ca init --dir {}`)",
                files.metadata.display(),
                files.dir.display()
            ))
        })?;
        serde_json::from_str(&text)
            .map_err(|e| Error::Internal(format!("{}: {e}", files.metadata.display())))
    }
}

/// What `ca init` is asked to create.
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub trust_domain: TrustDomain,
    pub force: bool,
    /// DNS names and IP addresses of the service's TLS certificate. None: localhost,
    /// 127.0.0.1 and ::1 (a development PKI).
    pub server_names: Vec<String>,
    pub operational_ca_lifetime: Duration,
    pub profiles: ProfileSettings,
    /// Where the CA keys and the audit-signing key are made.
    pub keys: KeySource,
    /// The root is an existing one (an enterprise or offline root medid never holds the key
    /// of): stop after the issuing CAs' keys and CSRs, for `ca install`.
    pub external_root: bool,
}

/// What `ca init --external-root` leaves in `pending.json` for `ca install`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PendingPki {
    pub trust_domain: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(default, skip_serializing_if = "is_files")]
    pub key_custody: KeyCustody,
    /// The names of the service's TLS certificate, made at install.
    pub server_names: Vec<String>,
}

impl PendingPki {
    /// The pending PKI of `files`; ALREADY_EXISTS once it is complete.
    pub fn load(files: &PkiFiles) -> Result<Self, Error> {
        if files.exists() {
            return Err(Error::AlreadyExists(format!(
                "{} is a complete PKI already",
                files.dir.display()
            )));
        }
        let text = fs::read_to_string(&files.pending).map_err(|e| {
            Error::FailedPrecondition(format!(
                "reading {}: {e} (run `medid ca init --external-root` first)",
                files.pending.display()
            ))
        })?;
        serde_json::from_str(&text)
            .map_err(|e| Error::Internal(format!("{}: {e}", files.pending.display())))
    }
}

/// Creates the PKI in `files.dir`. Refuses to overwrite existing material unless `force`.
pub fn init(files: &PkiFiles, opts: &InitOptions, now: OffsetDateTime) -> Result<(), Error> {
    if !opts.force {
        let existing: Vec<String> = files.all()[..17]
            .iter()
            .filter(|p| p.exists())
            .map(|p| p.display().to_string())
            .collect();
        if !existing.is_empty() {
            return Err(Error::AlreadyExists(format!(
                "refusing to overwrite existing PKI material ({}); pass --force to replace it",
                existing.join(", ")
            )));
        }
    }
    let roles = [
        (KeyRole::Root, &files.root_key),
        (
            KeyRole::Issuing(IssuerId::first(IssuerName::DeviceIdentity)),
            &files.device_ca_key,
        ),
        (
            KeyRole::Issuing(IssuerId::first(IssuerName::Operational)),
            &files.operational_ca_key,
        ),
        (KeyRole::Audit, &files.audit_key),
    ];
    if let Some((_, labels)) = opts.keys.token() {
        // A token's keys are never replaced, --force or not: refuse before making any.
        let held: Vec<String> = roles
            .iter()
            .filter(|(role, _)| !(opts.external_root && *role == KeyRole::Root))
            .filter(|(role, file)| opts.keys.has(*role, file))
            .map(|(role, _)| {
                let label = match role {
                    KeyRole::Root => labels.root.clone(),
                    KeyRole::Issuing(id) => labels.issuing(*id),
                    KeyRole::Audit => labels.audit.clone(),
                };
                format!(
                    "{label} (in {:?})",
                    opts.keys.holder(*role).unwrap_or_default()
                )
            })
            .collect();
        if !held.is_empty() {
            return Err(Error::AlreadyExists(format!(
                "the PKCS#11 token already holds keys labelled {}; remove them with the \
                 HSM's own tools or configure other [pkcs11.key_labels]",
                held.join(", ")
            )));
        }
    }
    create_private_dir(&files.dir)?;
    // A replaced PKI takes its rolled-over generations with it.
    for name in [IssuerName::DeviceIdentity, IssuerName::Operational] {
        for generation in 2.. {
            let (cert, key) = files.issuing_ca(IssuerId { name, generation });
            if !cert.exists() && !key.exists() {
                break;
            }
            for path in [cert, key] {
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(Error::Internal(format!("removing {}: {e}", path.display())))
                    }
                }
            }
        }
    }

    let td = opts.trust_domain.as_str();
    if opts.external_root {
        return request_issuing_certificates(files, opts, now);
    }
    let ca_not_before = now - Duration::hours(1);

    // Root: self-signed, no AKI (RFC 5280 §4.2.1.1 allows omitting it on a self-signed root).
    let root_key = opts.keys.generate(KeyRole::Root)?;
    let mut root = ca_params(
        td,
        "medid root CA",
        ca_not_before,
        no_well_defined_expiry(),
        None,
    );
    root.use_authority_key_identifier_extension = false;
    let root_cert = root
        .self_signed(&root_key)
        .map_err(|e| signing_error("signing root CA", e))?;
    let root_issuer = Issuer::new(root, &root_key);

    let device_key = opts.keys.generate(roles[1].0)?;
    let device_params = ca_params(
        td,
        &issuing_ca_name(IssuerId::first(IssuerName::DeviceIdentity)),
        ca_not_before,
        no_well_defined_expiry(),
        Some(0),
    );
    let device_cert = device_params
        .signed_by(&device_key, &root_issuer)
        .map_err(|e| signing_error("signing device-identity CA", e))?;

    let operational_key = opts.keys.generate(roles[2].0)?;
    let operational_params = ca_params(
        td,
        &issuing_ca_name(IssuerId::first(IssuerName::Operational)),
        ca_not_before,
        now + opts.operational_ca_lifetime,
        Some(0),
    );
    let operational_cert = operational_params
        .signed_by(&operational_key, &root_issuer)
        .map_err(|e| signing_error("signing operational CA", e))?;

    // The root's first CRL: nothing revoked yet.
    let root_crl = RootCrl::sign(
        root_cert.der().as_ref(),
        &root_key,
        1,
        now,
        ROOT_CRL_VALIDITY,
        vec![],
    )?;

    root_key.keep(&files.root_key)?;
    write_public(&files.root_cert, &root_cert.pem())?;
    write_public_bytes(&files.root_crl, &root_crl.der)?;
    device_key.keep(&files.device_ca_key)?;
    write_public(&files.device_ca_cert, &device_cert.pem())?;
    operational_key.keep(&files.operational_ca_key)?;
    write_public(&files.operational_ca_cert, &operational_cert.pem())?;

    make_audit_key(files, &opts.keys)?;
    finish(files, opts, td, now)
}

/// `ca init --external-root`: the issuing CAs' keys (files or the token), a CSR for each
/// (subject `O=<trust domain>, CN=medid … CA`, asking for basicConstraints CA with
/// pathLenConstraint 0 and keyUsage keyCertSign, cRLSign, digitalSignature), the audit key,
/// then `pending.json` last.
fn request_issuing_certificates(
    files: &PkiFiles,
    opts: &InitOptions,
    now: OffsetDateTime,
) -> Result<(), Error> {
    let td = opts.trust_domain.as_str();
    for (name, key_path, csr_path) in [
        (
            IssuerName::DeviceIdentity,
            &files.device_ca_key,
            &files.device_ca_csr,
        ),
        (
            IssuerName::Operational,
            &files.operational_ca_key,
            &files.operational_ca_csr,
        ),
    ] {
        let id = IssuerId::first(name);
        let key = opts.keys.generate(KeyRole::Issuing(id))?;
        let pem = issuing_csr(td, id, &key)?;
        key.keep(key_path)?;
        write_public(csr_path, &pem)?;
    }
    make_audit_key(files, &opts.keys)?;
    let pending = PendingPki {
        trust_domain: td.to_owned(),
        created_at: now,
        key_custody: opts.keys.custody(),
        server_names: opts.server_names.clone(),
    };
    let json = serde_json::to_string_pretty(&pending)
        .map_err(|e| Error::internal("encoding pending.json", e))?;
    write_public(&files.pending, &(json + "\n"))
}

/// The audit-signing key: Ed25519, not a CA key (DESIGN.md "Audit ledger").
fn make_audit_key(files: &PkiFiles, keys: &KeySource) -> Result<(), Error> {
    let audit_key = keys.generate(KeyRole::Audit)?;
    audit_key.keep(&files.audit_key)?;
    write_public(
        &files.audit_public_key,
        &crate::pem::encode(
            "PUBLIC KEY",
            &rcgen::PublicKeyData::subject_public_key_info(&audit_key),
        ),
    )
}

/// The end of `ca init` and of `ca install`, once the CA certificates are in place: the
/// service's TLS certificate, the first admin, then `pki.json`, which makes the PKI.
fn finish(
    files: &PkiFiles,
    opts: &InitOptions,
    td: &str,
    now: OffsetDateTime,
) -> Result<(), Error> {
    let authority = super::Authority::load(&files.dir, opts.keys.clone())?;
    let operational = authority.current(IssuerName::Operational);
    let operational_der = authority.issuer_cert(operational.id)?.der;

    // The service's TLS certificate.
    let server_key = new_key()?;
    let (mut dns, mut ips): (Vec<String>, Vec<IpAddr>) = (Vec::new(), Vec::new());
    let loopback = ["localhost", "127.0.0.1", "::1"].map(String::from);
    let names = match opts.server_names.as_slice() {
        [] => loopback.as_slice(),
        given => given,
    };
    for name in names {
        match name.parse::<IpAddr>() {
            Ok(ip) => ips.push(ip),
            Err(_) => dns.push(name.clone()),
        }
    }
    let server = opts.profiles.server(
        random_serial(),
        now,
        operational,
        &dns,
        &ips,
        public_key_of(&server_key),
    );
    let server_cert = authority.sign(&server)?;
    write_private(&files.server_key, &server_key.serialize_pem())?;
    write_public(
        &files.server_cert,
        &(crate::pem::certificate(&server_cert.der) + &crate::pem::certificate(&operational_der)),
    )?;

    // The first admin.
    let admin_key = new_key()?;
    let admin = opts.profiles.principal(
        random_serial(),
        now,
        operational,
        &PrincipalRole::Admin,
        &PrincipalId::parse(BOOTSTRAP_ADMIN_ID)?,
        public_key_of(&admin_key),
    );
    let admin_cert = authority.sign(&admin)?;
    write_private(&files.admin_key, &admin_key.serialize_pem())?;
    write_public(&files.admin_cert, &crate::pem::certificate(&admin_cert.der))?;

    let metadata = PkiMetadata {
        trust_domain: td.to_owned(),
        created_at: now,
        key_custody: opts.keys.custody(),
    };
    let json = serde_json::to_string_pretty(&metadata)
        .map_err(|e| Error::internal("encoding pki.json", e))?;
    write_public(&files.metadata, &(json + "\n"))?;
    Ok(())
}

/// The certificates `ca install` takes: the root's and the two issuing CAs' (PEM), and
/// optionally the root's current CRL (DER or PEM).
#[derive(Debug, Clone)]
pub struct SignedByRoot {
    pub root: Vec<u8>,
    pub device_identity: Vec<u8>,
    pub operational: Vec<u8>,
    pub root_crl: Option<Vec<u8>>,
}

/// `medid ca install`: completes a PKI that `ca init --external-root` began, with the
/// certificates the existing root signed for its CSRs. Everything is checked before anything
/// is written: the root is a self-signed CA certificate in its validity; each issuing-CA
/// certificate certifies the key made for it, is signed by that root, is valid now, and is a
/// CA with pathLenConstraint 0, keyCertSign and cRLSign; the three subjects differ; a root
/// CRL verifies with the root. Then the certificates are written, the service's TLS
/// certificate and the first admin are issued, and `pki.json` makes the PKI.
pub fn install(
    files: &PkiFiles,
    opts: &InitOptions,
    given: &SignedByRoot,
    now: OffsetDateTime,
) -> Result<PkiMetadata, Error> {
    let pending = PendingPki::load(files)?;
    opts.keys.check(&pending.key_custody, &files.dir)?;
    let bad = |what: &str, why: String| Error::InvalidArgument(format!("{what}: {why}"));
    let one = |what: &str, pem: &[u8]| -> Result<Vec<u8>, Error> {
        let certs = crate::pem::parse_certificates(pem).map_err(|e| bad(what, e.to_string()))?;
        match certs.as_slice() {
            [one] => Ok(one.to_vec()),
            _ => Err(bad(
                what,
                format!("{} certificates; give exactly one", certs.len()),
            )),
        }
    };
    let root_der = one("the root certificate", &given.root)?;
    let (_, root) = x509_parser::parse_x509_certificate(&root_der)
        .map_err(|e| bad("the root certificate", e.to_string()))?;
    if root.subject().as_raw() != root.issuer().as_raw()
        || !super::root_crl::verifies(
            &root,
            &root.signature_algorithm.algorithm.to_id_string(),
            root.tbs_certificate.as_ref(),
            &root.signature_value.data,
        )
    {
        return Err(bad(
            "the root certificate",
            "not self-signed (give the root itself, not an intermediate)".into(),
        ));
    }
    check_ca(&root, "the root certificate", now, false)?;
    let mut subjects = vec![root.subject().as_raw().to_vec()];
    let mut issuing = Vec::new();
    for (name, pem, key_path) in [
        (
            IssuerName::DeviceIdentity,
            &given.device_identity,
            &files.device_ca_key,
        ),
        (
            IssuerName::Operational,
            &given.operational,
            &files.operational_ca_key,
        ),
    ] {
        let id = IssuerId::first(name);
        let what = format!("the {} CA certificate", name.as_str());
        let der = one(&what, pem)?;
        let key = opts.keys.load(KeyRole::Issuing(id), key_path)?;
        let subject = check_issuing(
            &root,
            &what,
            &der,
            &key,
            &files.issuing_csr(id),
            &subjects,
            now,
        )?;
        subjects.push(subject);
        issuing.push((id, der));
    }
    let root_crl = match &given.root_crl {
        Some(bytes) => Some(
            RootCrl::read(&root_der, &crate::pem::crl_der(bytes)?)
                .map_err(|e| bad("the root CRL", e.to_string()))?,
        ),
        None => None,
    };

    write_public(&files.root_cert, &crate::pem::certificate(&root_der))?;
    for (id, der) in &issuing {
        write_public(&files.issuing_ca(*id).0, &crate::pem::certificate(der))?;
    }
    if let Some(crl) = &root_crl {
        write_public_bytes(&files.root_crl, &crl.der)?;
    }
    let opts = InitOptions {
        server_names: pending.server_names.clone(),
        ..opts.clone()
    };
    finish(files, &opts, &pending.trust_domain, now)?;
    for spent in [
        &files.pending,
        &files.device_ca_csr,
        &files.operational_ca_csr,
    ] {
        if let Err(e) = fs::remove_file(spent) {
            tracing::warn!(file = %spent.display(), error = %e, "removing what ca install no longer needs");
        }
    }
    PkiMetadata::load(files)
}

/// Checks `der`, a certificate an existing root signed for an issuing CA's CSR: it certifies
/// `key`, `root` signed it, it is an issuing CA valid now ([`check_ca`]), and its subject is
/// none of `taken`. Returns its subject (DER).
fn check_issuing(
    root: &x509_parser::certificate::X509Certificate<'_>,
    what: &str,
    der: &[u8],
    key: &CaKey,
    csr: &Path,
    taken: &[Vec<u8>],
    now: OffsetDateTime,
) -> Result<Vec<u8>, Error> {
    let bad = |why: String| Error::InvalidArgument(format!("{what}: {why}"));
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| bad(e.to_string()))?;
    if cert.public_key().subject_public_key.data.as_ref() != key.public_raw() {
        return Err(bad(format!(
            "it does not certify the key made for it (its CSR is {})",
            csr.display()
        )));
    }
    if cert.issuer().as_raw() != root.subject().as_raw()
        || !super::root_crl::verifies(
            root,
            &cert.signature_algorithm.algorithm.to_id_string(),
            cert.tbs_certificate.as_ref(),
            &cert.signature_value.data,
        )
    {
        return Err(bad("not signed by the root certificate".into()));
    }
    check_ca(&cert, what, now, true)?;
    if taken.iter().any(|s| s == cert.subject().as_raw()) {
        return Err(bad(format!(
            "its subject {} is also another CA's; each CA needs a name of its own",
            cert.subject()
        )));
    }
    Ok(cert.subject().as_raw().to_vec())
}

/// The CSR (PEM) of issuing CA `id` for an existing root to sign, signed with its `key`:
/// `O=<trust domain>, CN=medid … CA`, asking for basicConstraints CA with pathLenConstraint 0
/// and keyUsage keyCertSign, cRLSign, digitalSignature.
fn issuing_csr(trust_domain: &str, id: IssuerId, key: &CaKey) -> Result<String, Error> {
    let now = OffsetDateTime::now_utc();
    let mut params = ca_params(trust_domain, &issuing_ca_name(id), now, now, Some(0));
    // Neither has a place in a CSR.
    params.serial_number = None;
    params.use_authority_key_identifier_extension = false;
    params
        .serialize_request(key)
        .map_err(|e| signing_error("signing the issuing CA's CSR", e))?
        .pem()
        .map_err(|e| Error::internal("encoding the CSR", e))
}

/// The PKI of `files`, whose key custody `keys` must match: its metadata and its CA.
fn open_pki(files: &PkiFiles, keys: &KeySource) -> Result<(PkiMetadata, super::Authority), Error> {
    let metadata = PkiMetadata::load(files)?;
    keys.check(&metadata.key_custody, &files.dir)?;
    let authority = super::Authority::load(&files.dir, keys.clone())?;
    Ok((metadata, authority))
}

/// The PKI of `files` (whose key custody `keys` must match), loaded, and the id the next
/// generation of `name` would have.
fn next_generation(
    files: &PkiFiles,
    keys: &KeySource,
    name: IssuerName,
) -> Result<(PkiMetadata, super::Authority, IssuerId), Error> {
    let (metadata, authority) = open_pki(files, keys)?;
    let next = IssuerId {
        name,
        generation: authority.current(name).id.generation + 1,
    };
    Ok((metadata, authority, next))
}

/// `medid ca rotate --csr`, for an existing root: the next generation's key
/// (`operational-ca-2.key`, or in the token) and its CSR (`operational-ca-2.csr`) for the root
/// to sign; [`install_issuer`] completes it. Nothing is in service until then (only a
/// certificate makes a generation). Refused while an earlier request awaits its certificate.
pub fn request_next_generation(
    files: &PkiFiles,
    keys: &KeySource,
    name: IssuerName,
) -> Result<(IssuerId, PathBuf), Error> {
    let (metadata, _, next) = next_generation(files, keys, name)?;
    let (_, key_path) = files.issuing_ca(next);
    let csr_path = files.issuing_csr(next);
    if csr_path.exists() || keys.has(KeyRole::Issuing(next), &key_path) {
        return Err(Error::AlreadyExists(format!(
            "generation {} of the {} CA awaits its certificate ({}); install it with `medid ca \
             install-issuer`, or remove its key and CSR to start again",
            next.generation,
            name.as_str(),
            csr_path.display()
        )));
    }
    let key = keys.generate(KeyRole::Issuing(next))?;
    let pem = issuing_csr(&metadata.trust_domain, next, &key)?;
    key.keep(&key_path)?;
    write_public(&csr_path, &pem)?;
    Ok((next, csr_path))
}

/// `medid ca install-issuer`: installs the certificate the root signed for the generation
/// [`request_next_generation`] requested, after [`check_issuing`] (against the root in the
/// PKI directory and the subjects of the root and every generation). A running service loads
/// it at its next upkeep, as after `ca rotate`.
pub fn install_issuer(
    files: &PkiFiles,
    keys: &KeySource,
    name: IssuerName,
    cert_pem: &[u8],
    now: OffsetDateTime,
) -> Result<IssuerInfo, Error> {
    let (_, authority, next) = next_generation(files, keys, name)?;
    let (cert_path, key_path) = files.issuing_ca(next);
    let csr_path = files.issuing_csr(next);
    if !csr_path.exists() {
        return Err(Error::FailedPrecondition(format!(
            "no request for generation {} of the {} CA awaits a certificate ({} is missing); \
             run `medid ca rotate --issuer {} --csr` first",
            next.generation,
            name.as_str(),
            csr_path.display(),
            name.as_str()
        )));
    }
    let what = format!("the certificate for {next}");
    let certs = crate::pem::parse_certificates(cert_pem)
        .map_err(|e| Error::InvalidArgument(format!("{what}: {e}")))?;
    let [der] = certs.as_slice() else {
        return Err(Error::InvalidArgument(format!(
            "{what}: {} certificates; give exactly one",
            certs.len()
        )));
    };
    let root_der = authority.root().der.clone();
    let (_, root) = x509_parser::parse_x509_certificate(&root_der)
        .map_err(|e| Error::Internal(format!("{}: {e}", files.root_cert.display())))?;
    let mut taken = vec![root.subject().as_raw().to_vec()];
    for info in authority.issuers() {
        let ca = authority.issuer_cert(info.id)?;
        if let Ok((_, c)) = x509_parser::parse_x509_certificate(&ca.der) {
            taken.push(c.subject().as_raw().to_vec());
        }
    }
    let key = keys.load(KeyRole::Issuing(next), &key_path)?;
    check_issuing(&root, &what, der, &key, &csr_path, &taken, now)?;
    write_public(&cert_path, &crate::pem::certificate(der))?;
    if let Err(e) = fs::remove_file(&csr_path) {
        tracing::warn!(file = %csr_path.display(), error = %e, "removing the CSR ca install-issuer no longer needs");
    }
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| Error::Internal(format!("{what}: {e}")))?;
    Ok(IssuerInfo {
        id: next,
        not_after: cert.validity().not_after.to_datetime(),
    })
}

/// A CA certificate valid at `now` (basicConstraints CA, keyCertSign and cRLSign; an issuing
/// CA also pathLenConstraint 0, as its CSR asked).
fn check_ca(
    cert: &x509_parser::certificate::X509Certificate<'_>,
    what: &str,
    now: OffsetDateTime,
    issuing: bool,
) -> Result<(), Error> {
    let bad = |why: String| Error::InvalidArgument(format!("{what}: {why}"));
    let validity = cert.validity();
    if validity.not_before.to_datetime() > now || validity.not_after.to_datetime() <= now {
        return Err(bad(format!(
            "valid {} to {}, not now",
            validity.not_before, validity.not_after
        )));
    }
    let constraints = cert.basic_constraints().ok().flatten().map(|b| b.value);
    match constraints {
        Some(b) if b.ca => {
            if issuing && b.path_len_constraint != Some(0) {
                return Err(bad(format!(
                    "pathLenConstraint {}; an issuing CA of medid signs only end-entity \
                     certificates: sign it with pathLenConstraint 0, as its CSR asks",
                    b.path_len_constraint
                        .map_or("absent".to_owned(), |n| n.to_string())
                )));
            }
        }
        _ => return Err(bad("not a CA certificate (basicConstraints CA:TRUE)".into())),
    }
    let usage = cert.key_usage().ok().flatten().map(|k| k.value);
    if !usage.is_some_and(|k| k.key_cert_sign() && k.crl_sign()) {
        return Err(bad("its keyUsage lacks keyCertSign or cRLSign".into()));
    }
    Ok(())
}

/// The common name of an issuing-CA generation: `medid operational CA`, then
/// `medid operational CA 2`, … Each generation has a subject of its own, so path building,
/// CRL matching and OCSP CertIDs never confuse two keys.
fn issuing_ca_name(id: IssuerId) -> String {
    match id.generation {
        1 => format!("medid {} CA", id.name.as_str()),
        n => format!("medid {} CA {n}", id.name.as_str()),
    }
}

/// `medid ca rotate`: makes the next generation of `name` in `files.dir`, a new P-256 key and
/// a certificate signed by the root (`root_key`, PKCS#8 PEM) valid from an hour before `now`
/// for `lifetime` (the device-identity CA: no well-defined expiry). The key is written before
/// the certificate, and only a certificate makes a generation, so a crash between the two
/// leaves nothing half made. A running service loads it at its next upkeep and signs new
/// certificates with it from then on.
pub fn rotate(
    files: &PkiFiles,
    keys: &KeySource,
    name: IssuerName,
    root_key: &Path,
    lifetime: Duration,
    now: OffsetDateTime,
) -> Result<IssuerInfo, Error> {
    let (metadata, authority) = open_pki(files, keys)?;
    let current = authority.current(name);
    let next = IssuerId {
        name,
        generation: current.id.generation + 1,
    };
    let root_key = root_key_at_hand(files, keys, &authority, root_key)?;
    let root_der = authority.root().der.clone();
    let root_issuer = Issuer::from_ca_cert_der(&root_der, root_key)
        .map_err(|e| Error::internal("reading the root CA certificate", e))?;
    let not_after = match name {
        IssuerName::DeviceIdentity => no_well_defined_expiry(),
        IssuerName::Operational => (now + lifetime).min(authority.root().not_after),
    };
    let key = keys.generate(KeyRole::Issuing(next))?;
    let params = ca_params(
        &metadata.trust_domain,
        &issuing_ca_name(next),
        now - Duration::hours(1),
        not_after,
        Some(0),
    );
    let cert = params
        .signed_by(&key, &root_issuer)
        .map_err(|e| signing_error("signing the new issuing CA", e))?;
    let (cert_path, key_path) = files.issuing_ca(next);
    key.keep(&key_path)?;
    write_public(&cert_path, &cert.pem())?;
    Ok(IssuerInfo {
        id: next,
        not_after,
    })
}

/// The root key, for a ceremony: a PKCS#8 PEM file at `path` (files custody; the root key is
/// often kept offline and brought in), or the token's root key. Refused unless it is the key
/// of the root certificate in the PKI directory.
fn root_key_at_hand(
    files: &PkiFiles,
    keys: &KeySource,
    authority: &super::Authority,
    path: &Path,
) -> Result<CaKey, Error> {
    let key = match keys {
        KeySource::Files => {
            let pem = fs::read_to_string(path).map_err(|e| {
                Error::FailedPrecondition(format!(
                    "reading the root CA key {}: {e} (pass --root-key where the root key is kept)",
                    path.display()
                ))
            })?;
            CaKey::File(Box::new(KeyPair::from_pem(&pem).map_err(|e| {
                Error::FailedPrecondition(format!("{}: {e}", path.display()))
            })?))
        }
        KeySource::Token { .. } => keys.load(KeyRole::Root, path)?,
    };
    if x509_parser::parse_x509_certificate(&authority.root().der)
        .map(|(_, c)| c.public_key().subject_public_key.data.as_ref() != key.public_raw())
        .unwrap_or(true)
    {
        return Err(Error::FailedPrecondition(format!(
            "the key given is not the key of {}",
            files.root_cert.display()
        )));
    }
    Ok(key)
}

/// `medid ca revoke-issuer`: the root revokes the certificate of issuing-CA generation `id`
/// (which must not be the current generation of its CA: `medid ca rotate` first), in the next
/// root CRL, signed with the root key (`root_key`, as for [`rotate`]) and written to
/// `root.crl`. A running service loads it at its next upkeep, drops the generation from
/// service (its trust anchor, CRL and OCSP responder) and records the new root CRL.
pub fn revoke_issuer(
    files: &PkiFiles,
    keys: &KeySource,
    id: IssuerId,
    reason: Option<crate::domain::RevocationReason>,
    root_key: &Path,
    now: OffsetDateTime,
) -> Result<RootCrl, Error> {
    let (_, authority) = open_pki(files, keys)?;
    let cert = authority.issuer_cert(id)?;
    if authority.current(id.name).id == id {
        return Err(Error::FailedPrecondition(format!(
            "{id} is the current generation of the {} CA and signs every new certificate; \
             run `medid ca rotate --issuer {}` first, then revoke {id}",
            id.name.as_str(),
            id.name.as_str()
        )));
    }
    if let Some(entry) = authority.revoked_by_root(id) {
        return Err(Error::AlreadyExists(format!(
            "{id} was revoked by the root at {}",
            entry.revoked_at
        )));
    }
    let key = root_key_at_hand(files, keys, &authority, root_key)?;
    let serial = x509_parser::parse_x509_certificate(&cert.der)
        .map_err(|e| Error::Internal(format!("the {id} CA certificate: {e}")))?
        .1
        .raw_serial()
        .to_vec();
    let entry = super::RevokedEntry {
        serial,
        revoked_at: now,
        reason,
    };
    authority.sign_next_root_crl(&key, now, ROOT_CRL_VALIDITY, Some(entry))
}

/// `medid ca sign-root-crl`: signs the next root CRL, the same issuing CAs revoked, valid for
/// [`ROOT_CRL_VALIDITY`] from `now`. For a root kept offline, before the CRL's nextUpdate.
pub fn sign_root_crl(
    files: &PkiFiles,
    keys: &KeySource,
    root_key: &Path,
    now: OffsetDateTime,
) -> Result<RootCrl, Error> {
    let (_, authority) = open_pki(files, keys)?;
    let key = root_key_at_hand(files, keys, &authority, root_key)?;
    authority.sign_next_root_crl(&key, now, ROOT_CRL_VALIDITY, None)
}

fn new_key() -> Result<KeyPair, Error> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| Error::internal("generating P-256 key", e))
}

/// The public half of a key we generated, as policy's profiles take it.
pub fn public_key_of(key: &KeyPair) -> super::SubjectPublicKey {
    super::SubjectPublicKey {
        algorithm: key.algorithm(),
        key_bits: key.public_key_raw().to_vec(),
    }
}

fn ca_params(
    trust_domain: &str,
    cn: &str,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    path_len: Option<u8>,
) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, trust_domain);
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    p.serial_number = Some(SerialNumber::from_slice(random_serial().as_bytes()));
    p.not_before = not_before;
    p.not_after = not_after;
    p.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    // RFC 5280 §4.2.1.3: keyCertSign and cRLSign; digitalSignature lets the CA sign OCSP itself.
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.use_authority_key_identifier_extension = true;
    p
}

/// Writes a private key: mode 0600 from creation, never group- or world-readable.
pub fn write_private(path: &Path, contents: &str) -> Result<(), Error> {
    write_atomic(path, contents.as_bytes(), Access::Private)
}

pub fn write_public(path: &Path, contents: &str) -> Result<(), Error> {
    write_atomic(path, contents.as_bytes(), Access::Public)
}

pub fn write_public_bytes(path: &Path, contents: &[u8]) -> Result<(), Error> {
    write_atomic(path, contents, Access::Public)
}
