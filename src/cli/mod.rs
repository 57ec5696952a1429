//! The `medid` command line: the service (`serve`), PKI bootstrap (`ca init`), and client
//! commands that talk to a running service over mTLS. `main.rs` only calls [`run`].

mod access;
pub(crate) mod agent;
mod audit;
mod bench;
mod bench_gateway;
pub(crate) mod client;
pub mod errors;
mod lifecycle;

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};

use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::domain::TrustDomain;
use crate::error::Error;
use crate::issuance::bootstrap::{self, PkiFiles};

#[derive(Debug, Parser)]
#[command(
    name = "medid",
    version = crate::BUILD_VERSION,
    about = "Private CA and audit ledger for connected medical devices"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service (creates a development PKI in certs-dev/ and a SQLite file if missing).
    Serve(ServeArgs),
    /// Manage the CA material.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Administration: manufacturers and principal certificates (role admin).
    #[command(subcommand)]
    Admin(client::AdminCommand),
    /// Enroll a device at the factory (role manufacturer-station).
    Enroll(client::EnrollArgs),
    /// Read the device registry.
    #[command(subcommand)]
    Device(client::DeviceCommand),
    /// Get an operational certificate (device) or a fresh gateway certificate, once.
    Renew(lifecycle::RenewArgs),
    /// Revoke a certificate, or every certificate of a device.
    Revoke(lifecycle::RevokeArgs),
    /// Revoke all of a device's certificates and block further issuance to it.
    Decommission(lifecycle::DecommissionArgs),
    /// Certificate status (good/revoked/unknown) or a device's rotation status.
    Status(lifecycle::StatusArgs),
    /// Active certificates that end soon, soonest first (role admin).
    Expiring(lifecycle::ExpiringArgs),
    /// CRLs.
    #[command(subcommand)]
    Crl(lifecycle::CrlCommand),
    /// One-time enrollment tokens.
    #[command(subcommand)]
    Token(lifecycle::TokenCommand),
    /// Take an online, consistent copy of the SQLite database while the service runs.
    Backup(BackupArgs),
    /// Keep an operational certificate fresh: renew at 2/3 of its lifetime, with jitter.
    Agent(agent::AgentArgs),
    /// Reverse proxy at the hospital edge: device mTLS in, every device-data request an
    /// access event in the ledger (docs/GATEWAY.md).
    Gateway {
        /// The gateway's TOML configuration.
        #[arg(long, env = "MEDID_GATEWAY_CONFIG")]
        config: std::path::PathBuf,
    },
    /// The audit ledger: export, verify offline, checkpoints.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Measure: starts a medid server and drives enrollments, access events and exports.
    Bench(bench::BenchArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) to standard output.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page of medid to standard output, or write one page per command into
    /// a directory.
    Man {
        /// Write medid.1, medid-serve.1, … into this directory instead.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML configuration file (see docs/CONFIGURATION.md).
    #[arg(long, env = "MEDID_CONFIG")]
    pub config: Option<PathBuf>,
    /// gRPC listen address [default: 127.0.0.1:7443].
    #[arg(long, env = "MEDID_LISTEN")]
    pub listen: Option<std::net::SocketAddr>,
    /// sqlite://PATH [default: sqlite://data/medid.db].
    #[arg(long, env = "MEDID_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Directory of the CA material [default: certs-dev].
    #[arg(long, env = "MEDID_PKI_DIR")]
    pub pki_dir: Option<PathBuf>,
    /// Base URL for CRL/OCSP/CA URLs in issued certificates [default: http://127.0.0.1:8080].
    #[arg(long, env = "MEDID_PUBLIC_BASE_URL")]
    pub public_base_url: Option<String>,
    /// Log lines as text or as JSON objects [default: the configuration's log_format, text].
    #[arg(long, env = "MEDID_LOG_FORMAT", value_enum)]
    pub log_format: Option<crate::logging::LogFormat>,
}

impl ServeArgs {
    /// Defaults, then the file, then environment and flags.
    pub fn config(&self) -> Result<Config, Error> {
        let mut c = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        if let Some(v) = self.listen {
            c.listen = v;
        }
        if let Some(v) = &self.database_url {
            c.database_url = v.clone();
        }
        if let Some(v) = &self.pki_dir {
            c.pki_dir = v.clone();
        }
        if let Some(v) = &self.public_base_url {
            c.public_base_url = v.clone();
        }
        if let Some(v) = self.log_format {
            c.log_format = v;
        }
        c.validate()?;
        Ok(c)
    }
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// The service's TOML configuration file (its database_url is backed up).
    #[arg(long, env = "MEDID_CONFIG")]
    pub config: Option<PathBuf>,
    /// sqlite://PATH, instead of the configuration's.
    #[arg(long, env = "MEDID_DATABASE_URL")]
    pub database_url: Option<String>,
    /// The backup file (mode 0600); its latest signed checkpoint is written beside it as
    /// FILE.note.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create a root CA, the device-identity and operational CAs, the service's TLS
    /// certificate, the audit-signing key and a first admin certificate (with
    /// --external-root: the issuing CAs' keys and CSRs for an existing root).
    Init(InitArgs),
    /// Complete a PKI begun with `ca init --external-root`: install the issuing-CA
    /// certificates the root signed, after checking each against its key and the root.
    Install(InstallArgs),
    /// Install the next generation of an issuing CA whose CSR `ca rotate --csr` made, once
    /// the existing root has signed it; the running service loads it within a minute.
    InstallIssuer(InstallIssuerArgs),
    /// Roll an issuing CA over: a new key and certificate, signed by the root, that signs
    /// every new certificate once the service loads it (within a minute, or at its next
    /// start). The old generation keeps its CRL and OCSP for what it signed until it ends.
    Rotate(RotateArgs),
    /// Revoke an issuing-CA generation by the root: the next root CRL (root.crl, served at
    /// /crl/root.crl) lists its certificate, and a running service takes it out of service
    /// within a minute. The current generation cannot be revoked: rotate first.
    RevokeIssuer(RevokeIssuerArgs),
    /// Sign the next root CRL, the same issuing CAs revoked, valid for a year: with a root
    /// kept offline, once before the current one's nextUpdate.
    SignRootCrl(RootCeremony),
}

/// Where the PKI and the root key are, for what only the root key may sign.
#[derive(Debug, Args)]
pub struct RootCeremony {
    /// The service's TOML configuration, for its pki_dir (and its [pkcs11] token).
    #[arg(long, env = "MEDID_CONFIG")]
    pub config: Option<PathBuf>,
    /// The PKI directory [default: the configuration's pki_dir, or certs-dev].
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// The root CA's private key [default: root-ca.key in the PKI directory; with a token,
    /// the token's root key].
    #[arg(long)]
    pub root_key: Option<PathBuf>,
}

impl RootCeremony {
    /// The configuration, the PKI (which must exist) and the root key's path.
    fn open(&self) -> Result<(Config, PkiFiles, PathBuf), Error> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        if let Some(dir) = &self.dir {
            config.pki_dir = dir.clone();
        }
        let files = PkiFiles::new(&config.pki_dir);
        if !files.exists() {
            return Err(Error::FailedPrecondition(format!(
                "no PKI in {}; run `medid ca init` first",
                files.dir.display()
            )));
        }
        let root_key = self
            .root_key
            .clone()
            .unwrap_or_else(|| files.root_key.clone());
        Ok((config, files, root_key))
    }
}

#[derive(Debug, Args)]
pub struct RevokeIssuerArgs {
    #[command(flatten)]
    pub ceremony: RootCeremony,
    /// The generation to revoke, by label: device-identity, operational, operational-2, …
    #[arg(long)]
    pub issuer: String,
    /// The RFC 5280 reason recorded in the root CRL.
    #[arg(long, value_enum)]
    pub reason: Option<lifecycle::ReasonArg>,
}

#[derive(Debug, Args)]
pub struct RotateArgs {
    #[command(flatten)]
    pub ceremony: RootCeremony,
    /// Which issuing CA to roll over.
    #[arg(long, value_enum)]
    pub issuer: lifecycle::IssuerArg,
    /// Lifetime of the new operational CA certificate, in days [default: the
    /// configuration's operational_ca_validity_days, 1825]. The device-identity CA has no
    /// well-defined expiry.
    #[arg(long)]
    pub lifetime_days: Option<u32>,
    /// For an existing root (`ca init --external-root`): make the next generation's key and
    /// a CSR for the root to sign, then `medid ca install-issuer` (no root key needed).
    #[arg(long, conflicts_with_all = ["root_key", "lifetime_days"])]
    pub csr: bool,
}

#[derive(Debug, Args)]
pub struct InstallIssuerArgs {
    /// The service's TOML configuration, for its pki_dir (and its [pkcs11] token).
    #[arg(long, env = "MEDID_CONFIG")]
    pub config: Option<PathBuf>,
    /// The PKI directory [default: the configuration's pki_dir, or certs-dev].
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Which issuing CA the certificate is the next generation of.
    #[arg(long, value_enum)]
    pub issuer: lifecycle::IssuerArg,
    /// The certificate the root signed for the CSR of `ca rotate --csr` (PEM).
    #[arg(long)]
    pub cert: PathBuf,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// The service's TOML configuration: its pki_dir, public_base_url and validity
    /// settings are used (flags take precedence).
    #[arg(long, env = "MEDID_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where to write the material [default: the configuration's pki_dir, or certs-dev].
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// SPIFFE-style trust domain of every principal URI.
    #[arg(long, default_value = crate::server::DEV_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// A DNS name or IP address of the service's TLS certificate (repeat for several).
    /// Without any: localhost, 127.0.0.1 and ::1, for development.
    #[arg(long = "server-name")]
    pub server_names: Vec<String>,
    /// Base URL for the CRL, OCSP and CA URLs in the certificates [default: the
    /// configuration's public_base_url, or http://127.0.0.1:8080].
    #[arg(long)]
    pub public_base_url: Option<String>,
    /// Replace existing material (the old CA keys are lost).
    #[arg(long)]
    pub force: bool,
    /// The root is an existing one (an enterprise or offline root whose key medid never
    /// holds): make the issuing CAs' keys and CSRs (device-ca.csr, operational-ca.csr) and
    /// stop; `medid ca install` completes the PKI with the certificates the root signs.
    #[arg(long)]
    pub external_root: bool,
}

#[derive(Debug, Args)]
pub struct InstallArgs {
    /// The service's TOML configuration (as for `ca init`).
    #[arg(long, env = "MEDID_CONFIG")]
    pub config: Option<PathBuf>,
    /// The PKI directory `ca init --external-root` made [default: the configuration's
    /// pki_dir, or certs-dev].
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// The root CA certificate (PEM): self-signed, the trust anchor relying parties hold.
    #[arg(long)]
    pub root: PathBuf,
    /// The device-identity CA certificate the root signed for device-ca.csr (PEM).
    #[arg(long)]
    pub device_ca: PathBuf,
    /// The operational CA certificate the root signed for operational-ca.csr (PEM).
    #[arg(long)]
    pub operational_ca: PathBuf,
    /// The root's current CRL (DER or PEM), served at /crl/root.crl; without it the root
    /// publishes its CRL elsewhere.
    #[arg(long)]
    pub root_crl: Option<PathBuf>,
    /// Base URL for the CRL, OCSP and CA URLs in the certificates [default: the
    /// configuration's public_base_url, or http://127.0.0.1:8080].
    #[arg(long)]
    pub public_base_url: Option<String>,
}

/// The exit status of `medid serve` when the drain deadline closed connections still open.
pub const EXIT_DRAIN_CUT_SHORT: u8 = 3;

/// Runs the command line. Returns the process exit code.
pub async fn run(cli: Cli) -> Result<std::process::ExitCode, Error> {
    let done = match cli.command {
        Command::Serve(args) => {
            return serve(args).await.map(|stopped| match stopped {
                crate::server::Stopped::Drained => std::process::ExitCode::SUCCESS,
                crate::server::Stopped::CutShort => EXIT_DRAIN_CUT_SHORT.into(),
            })
        }
        Command::Ca(CaCommand::Init(args)) => ca_init(args),
        Command::Ca(CaCommand::Install(args)) => ca_install(args),
        Command::Ca(CaCommand::InstallIssuer(args)) => ca_install_issuer(args),
        Command::Ca(CaCommand::Rotate(args)) => ca_rotate(args),
        Command::Ca(CaCommand::RevokeIssuer(args)) => ca_revoke_issuer(args),
        Command::Ca(CaCommand::SignRootCrl(args)) => ca_sign_root_crl(args),
        Command::Admin(cmd) => client::admin(cmd).await,
        Command::Enroll(args) => client::enroll(args).await,
        Command::Device(cmd) => client::device(cmd).await,
        Command::Renew(args) => lifecycle::renew(args).await,
        Command::Revoke(args) => lifecycle::revoke(args).await,
        Command::Decommission(args) => lifecycle::decommission(args).await,
        Command::Status(args) => return lifecycle::show_status(args).await,
        Command::Expiring(args) => lifecycle::expiring(args).await,
        Command::Crl(cmd) => lifecycle::crl(cmd).await,
        Command::Token(cmd) => lifecycle::token(cmd).await,
        Command::Agent(args) => agent::run(args, None).await,
        Command::Gateway { config } => crate::gateway::run(&config).await,
        Command::Backup(args) => backup(args).await,
        Command::Audit(cmd) => audit::run(cmd).await,
        Command::Bench(args) => bench::run(args).await,
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, "medid", &mut script);
            to_stdout(&script)
        }
        Command::Man { out } => man(out),
    };
    done.map(|()| std::process::ExitCode::SUCCESS)
}

async fn serve(args: ServeArgs) -> Result<crate::server::Stopped, Error> {
    let config = args.config();
    crate::logging::init(config.as_ref().map_or(Default::default(), |c| c.log_format));
    let config = config?;
    // Bind first: a port already in use fails before anything is created on disk.
    let bind = |addr: std::net::SocketAddr| async move {
        tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| Error::Unavailable(format!("binding {addr}: {e}")))
    };
    let listeners = crate::server::Listeners {
        grpc: bind(config.listen).await?,
        http: bind(config.http_listen).await?,
        est: match config.est_enabled {
            true => Some(bind(config.est_listen).await?),
            false => None,
        },
        console: match config.console_enabled {
            true => Some(bind(config.console_listen).await?),
            false => None,
        },
    };
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let prepared = crate::server::prepare(&config, clock).await?;
    let est = match config.est_enabled {
        true => format!(", EST over HTTPS on {}", config.est_listen),
        false => String::new(),
    };
    let est = match config.console_enabled {
        true => format!("{est}, the console on https://{}", config.console_listen),
        false => est,
    };
    println!(
        "medid serving gRPC (mTLS) on {}, CRL/OCSP over HTTP on {}{est} — PKI {}, database {}",
        config.listen,
        config.http_listen,
        config.pki_dir.display(),
        crate::store::redact_url(&config.database_url)
    );
    crate::server::run(prepared, listeners, crate::server::shutdown_signal()).await
}

/// Writes generated text to stdout; a reader that stopped early (`| head`) is no error.
fn to_stdout(bytes: &[u8]) -> Result<(), Error> {
    print_bytes(bytes).map(|_| ())
}

/// Writes to stdout. `Ok(false)`: the reader has gone (`| head`), so stop writing; that is
/// how a pipeline ends, not an error.
fn print_bytes(bytes: &[u8]) -> Result<bool, Error> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(Error::Internal(format!("writing to standard output: {e}"))),
    }
}

/// One line of output for scripts (see [`print_bytes`]).
pub(crate) fn print_line(line: &str) -> Result<bool, Error> {
    print_bytes(format!("{line}\n").as_bytes())
}

/// `medid man`: the page of the whole command to stdout, or a page per command into `out`.
fn man(out: Option<PathBuf>) -> Result<(), Error> {
    let cmd = <Cli as clap::CommandFactory>::command();
    let io = |e: std::io::Error| Error::Internal(format!("writing the man page: {e}"));
    match out {
        None => {
            let mut page = Vec::new();
            clap_mangen::Man::new(cmd).render(&mut page).map_err(io)?;
            to_stdout(&page)
        }
        Some(dir) => {
            std::fs::create_dir_all(&dir)
                .map_err(|e| Error::InvalidArgument(format!("creating {}: {e}", dir.display())))?;
            clap_mangen::generate_to(cmd, &dir).map_err(io)?;
            println!("wrote the man pages to {}", dir.display());
            Ok(())
        }
    }
}

async fn backup(args: BackupArgs) -> Result<(), Error> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(url) = args.database_url {
        config.database_url = url;
    }
    let db = match config.database()? {
        crate::config::Database::Sqlite(path) => path,
        crate::config::Database::Postgres(_) => {
            return Err(Error::FailedPrecondition(
                "medid backup copies SQLite databases; back up PostgreSQL with pg_dump or \
                 continuous archiving (docs/DEPLOYMENT.md \"Backups and restore\")"
                    .into(),
            ))
        }
    };
    let out = args.out.clone();
    let summary =
        tokio::task::spawn_blocking(move || crate::store::backup::sqlite_online_backup(&db, &out))
            .await
            .map_err(|e| Error::internal("backup task", e))??;
    let mut note_path = args.out.clone().into_os_string();
    note_path.push(".note");
    let note_path = PathBuf::from(note_path);
    match &summary.checkpoint {
        Some((size, note)) => {
            crate::files::write_atomic(&note_path, note.as_bytes(), crate::files::Access::Private)?;
            println!(
                "backed up {} ({} audit events) to {}; its latest checkpoint (tree size {size}) is in {}",
                crate::store::redact_url(&config.database_url),
                summary.events,
                args.out.display(),
                note_path.display()
            );
        }
        None => println!(
            "backed up {} ({} audit events, no checkpoint yet) to {}",
            crate::store::redact_url(&config.database_url),
            summary.events,
            args.out.display()
        ),
    }
    Ok(())
}

fn ca_init(args: InitArgs) -> Result<(), Error> {
    let InitArgs {
        config,
        dir,
        trust_domain,
        server_names,
        public_base_url,
        force,
        external_root,
    } = args;
    let trust_domain = TrustDomain::parse(&trust_domain)?;
    let config = init_config(config.as_deref(), dir, public_base_url)?;
    let dir = config.pki_dir.clone();
    let files = PkiFiles::new(&dir);
    let opts = bootstrap::InitOptions {
        trust_domain: trust_domain.clone(),
        force,
        server_names: server_names.clone(),
        operational_ca_lifetime: time::Duration::days(config.operational_ca_validity_days.into()),
        profiles: crate::server::profile_settings(&config, trust_domain),
        keys: config.key_source()?,
        external_root,
    };
    bootstrap::init(&files, &opts, SystemClock.now())?;
    if external_root {
        println!(
            "made the issuing CAs' keys in {} for an existing root",
            dir.display()
        );
        println!(
            "  device-identity CA CSR: {}",
            files.device_ca_csr.display()
        );
        println!(
            "  operational CA CSR:     {}",
            files.operational_ca_csr.display()
        );
        println!(
            "  audit-signing key:      {}",
            files.audit_public_key.display()
        );
        println!("have the root sign each CSR as a CA certificate with basicConstraints CA:TRUE, pathLenConstraint 0 (critical) and keyUsage keyCertSign, cRLSign (critical), then:");
        println!("  medid ca install --dir {} --root ROOT.pem --device-ca DEVICE-CA.pem --operational-ca OPERATIONAL-CA.pem [--root-crl ROOT.crl]", dir.display());
        return Ok(());
    }
    print_made(&config, &files, &opts);
    Ok(())
}

/// The configuration `ca init` and `ca install` work with: the file's, with flags on top.
fn init_config(
    path: Option<&std::path::Path>,
    dir: Option<PathBuf>,
    public_base_url: Option<String>,
) -> Result<Config, Error> {
    let mut config = match path {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(url) = public_base_url {
        config.public_base_url = url;
    }
    if let Some(dir) = dir {
        config.pki_dir = dir;
    }
    config.validate()?;
    Ok(config)
}

fn ca_install(args: InstallArgs) -> Result<(), Error> {
    let config = init_config(args.config.as_deref(), args.dir, args.public_base_url)?;
    let files = PkiFiles::new(&config.pki_dir);
    let pending = bootstrap::PendingPki::load(&files)?;
    let trust_domain = TrustDomain::parse(&pending.trust_domain)?;
    let read = |path: &PathBuf| {
        std::fs::read(path)
            .map_err(|e| Error::InvalidArgument(format!("reading {}: {e}", path.display())))
    };
    let given = bootstrap::SignedByRoot {
        root: read(&args.root)?,
        device_identity: read(&args.device_ca)?,
        operational: read(&args.operational_ca)?,
        root_crl: args.root_crl.as_ref().map(read).transpose()?,
    };
    let opts = bootstrap::InitOptions {
        trust_domain: trust_domain.clone(),
        force: false,
        server_names: pending.server_names.clone(),
        operational_ca_lifetime: time::Duration::days(config.operational_ca_validity_days.into()),
        profiles: crate::server::profile_settings(&config, trust_domain),
        keys: config.key_source()?,
        external_root: true,
    };
    bootstrap::install(&files, &opts, &given, SystemClock.now())?;
    print_made(&config, &files, &opts);
    if given.root_crl.is_none() {
        println!("note: no --root-crl: /crl/root.crl answers 404 until a root.crl is placed in the PKI directory");
    }
    Ok(())
}

/// What `ca init` and `ca install` print once the PKI is complete.
fn print_made(config: &Config, files: &PkiFiles, opts: &bootstrap::InitOptions) {
    let dir = &files.dir;
    let server_names = &opts.server_names;
    let token = opts
        .keys
        .token()
        .map(|(t, l)| (t.label().to_owned(), l.clone()));
    println!("created PKI in {}", dir.display());
    println!("  root CA:              {}", files.root_cert.display());
    if !opts.external_root {
        println!(
            "  root CRL:             {} (nothing revoked; nextUpdate in a year)",
            files.root_crl.display()
        );
    }
    println!("  device-identity CA:   {}", files.device_ca_cert.display());
    println!(
        "  operational CA:       {}",
        files.operational_ca_cert.display()
    );
    println!("  service TLS:          {}", files.server_cert.display());
    println!("  first admin:          {}", files.admin_cert.display());
    match &token {
        None => {
            println!("  audit-signing key:    {}", files.audit_key.display());
            println!("private keys (*.key) are mode 0600; keep them off shared disks");
        }
        Some((token, labels)) => {
            let root = if opts.external_root {
                String::new()
            } else {
                format!("{}, ", labels.root)
            };
            println!(
                "CA keys and the audit-signing key were generated in the PKCS#11 token {token:?} \
                 (non-extractable): {root}{}, {}, {}",
                labels.device_identity, labels.operational, labels.audit
            );
            println!(
                "the service's TLS key and the first admin's key (*.key) are files of mode 0600"
            );
        }
    }
    println!("CRL, OCSP and CA URLs: {}", config.public_base_url);
    if server_names.is_empty() {
        println!("note: the service's TLS certificate names only localhost, 127.0.0.1 and ::1; pass --server-name for production");
    }
    if is_loopback_url(&config.public_base_url) {
        println!("note: the CRL and OCSP URLs point at this host's loopback; pass --public-base-url (or set public_base_url) for production");
    }
}

fn ca_revoke_issuer(args: RevokeIssuerArgs) -> Result<(), Error> {
    let (config, files, root_key) = args.ceremony.open()?;
    let id = crate::issuance::IssuerId::parse(&args.issuer).ok_or_else(|| {
        Error::InvalidArgument(format!(
            "{:?} is not an issuing-CA label (device-identity, operational, operational-2, …)",
            args.issuer
        ))
    })?;
    let crl = bootstrap::revoke_issuer(
        &files,
        &config.key_source()?,
        id,
        args.reason.map(lifecycle::ReasonArg::reason),
        &root_key,
        SystemClock.now(),
    )?;
    println!(
        "the root revoked issuing CA {id}: root CRL number {} in {}, valid until {}",
        crl.number,
        files.root_crl.display(),
        crl.next_update
    );
    println!(
        "a running medid takes {id} out of service within a minute (or at its next start); CRL {}/crl/root.crl",
        config.public_base_url.trim_end_matches('/')
    );
    Ok(())
}

fn ca_sign_root_crl(args: RootCeremony) -> Result<(), Error> {
    let (config, files, root_key) = args.open()?;
    let crl =
        bootstrap::sign_root_crl(&files, &config.key_source()?, &root_key, SystemClock.now())?;
    println!(
        "signed root CRL number {} ({} issuing CA(s) revoked) in {}, valid until {}",
        crl.number,
        crl.entries.len(),
        files.root_crl.display(),
        crl.next_update
    );
    Ok(())
}

fn ca_install_issuer(args: InstallIssuerArgs) -> Result<(), Error> {
    let (config, files, _) = RootCeremony {
        config: args.config,
        dir: args.dir,
        root_key: None,
    }
    .open()?;
    let pem = std::fs::read(&args.cert)
        .map_err(|e| Error::InvalidArgument(format!("reading {}: {e}", args.cert.display())))?;
    let name = args.issuer.name();
    let made =
        bootstrap::install_issuer(&files, &config.key_source()?, name, &pem, SystemClock.now())?;
    print_generation(&config, &files, name, &made);
    Ok(())
}

fn ca_rotate(args: RotateArgs) -> Result<(), Error> {
    let (config, files, root_key) = args.ceremony.open()?;
    let name = args.issuer.name();
    if args.csr {
        let (next, csr) = bootstrap::request_next_generation(&files, &config.key_source()?, name)?;
        println!(
            "made the key of {} CA generation {} and its CSR {}",
            name.as_str(),
            next.generation,
            csr.display()
        );
        println!(
            "have the root sign it as a CA certificate with basicConstraints CA:TRUE, pathLenConstraint 0 and keyUsage keyCertSign, cRLSign, then: medid ca install-issuer --issuer {} --cert FILE --dir {}",
            name.as_str(),
            files.dir.display()
        );
        return Ok(());
    }
    let made = bootstrap::rotate(
        &files,
        &config.key_source()?,
        name,
        &root_key,
        time::Duration::days(
            args.lifetime_days
                .unwrap_or(config.operational_ca_validity_days)
                .into(),
        ),
        SystemClock.now(),
    )?;
    print_generation(&config, &files, name, &made);
    Ok(())
}

/// What `ca rotate` and `ca install-issuer` print about the generation they made.
fn print_generation(
    config: &Config,
    files: &PkiFiles,
    name: crate::issuance::IssuerName,
    made: &crate::issuance::IssuerInfo,
) {
    let (cert, _) = files.issuing_ca(made.id);
    println!(
        "created {} CA generation {} in {}, valid until {}",
        name.as_str(),
        made.id.generation,
        cert.display(),
        made.not_after
    );
    println!(
        "a running medid loads it within a minute (or at its next start) and signs every new {} certificate with it; CRL {}/crl/{}.crl",
        name.as_str(),
        config.public_base_url.trim_end_matches('/'),
        made.id
    );
    println!("the older generations keep publishing CRLs and OCSP for what they signed until they end; keep their files");
}

/// True when `url`'s host is a loopback name or address.
fn is_loopback_url(url: &str) -> bool {
    let host = url.split("://").nth(1).unwrap_or(url);
    let host = host.split(['/', '?']).next().unwrap_or(host);
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every option and argument of every command says what it is for in `--help`.
    #[test]
    fn every_option_has_help_text() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let path = format!("{path} {}", cmd.get_name());
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} --{id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                if sub.get_about().is_none() && sub.get_name() != "help" {
                    missing.push(format!("{path} {} (no about)", sub.get_name()));
                }
                walk(sub, &path, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&super::Cli::command(), "", &mut missing);
        assert!(
            missing.is_empty(),
            "without help text:\n{}",
            missing.join("\n")
        );
    }
}
