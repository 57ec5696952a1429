//! Lifecycle commands: renew, revoke, decommission, status, crl fetch, token create.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;

use super::client::{status, Connection, KeySource, PendingKey};
use crate::error::Error;
use crate::proto::{self, lifecycle_service_client::LifecycleServiceClient};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum IssuerArg {
    DeviceIdentity,
    Operational,
}

impl IssuerArg {
    pub fn name(self) -> crate::issuance::IssuerName {
        match self {
            IssuerArg::DeviceIdentity => crate::issuance::IssuerName::DeviceIdentity,
            IssuerArg::Operational => crate::issuance::IssuerName::Operational,
        }
    }

    fn proto(self) -> proto::Issuer {
        match self {
            IssuerArg::DeviceIdentity => proto::Issuer::DeviceIdentity,
            IssuerArg::Operational => proto::Issuer::Operational,
        }
    }
}

/// RFC 5280 reason names as the CLI takes them.
#[derive(Debug, Clone, Copy, ValueEnum)]
#[value(rename_all = "camelCase")]
pub enum ReasonArg {
    KeyCompromise,
    CaCompromise,
    AffiliationChanged,
    Superseded,
    CessationOfOperation,
    PrivilegeWithdrawn,
    AaCompromise,
}

impl ReasonArg {
    /// The reason as the CA records it (its RFC 5280 code is also the proto's).
    pub fn reason(self) -> crate::domain::RevocationReason {
        use crate::domain::RevocationReason as R;
        match self {
            ReasonArg::KeyCompromise => R::KeyCompromise,
            ReasonArg::CaCompromise => R::CaCompromise,
            ReasonArg::AffiliationChanged => R::AffiliationChanged,
            ReasonArg::Superseded => R::Superseded,
            ReasonArg::CessationOfOperation => R::CessationOfOperation,
            ReasonArg::PrivilegeWithdrawn => R::PrivilegeWithdrawn,
            ReasonArg::AaCompromise => R::AaCompromise,
        }
    }
}

#[derive(Debug, Args)]
pub struct RenewArgs {
    /// Authenticate with --cert/--key (a device's birth or operational certificate).
    #[command(flatten)]
    pub conn: Connection,
    #[command(flatten)]
    pub key: KeySource,
    /// Directory for operational.pem, operational-chain.pem and operational.key.
    #[arg(long, default_value = ".")]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct RevokeArgs {
    #[command(flatten)]
    pub conn: Connection,
    /// Certificate serial (hex).
    #[arg(long, conflicts_with = "device")]
    pub serial: Option<String>,
    /// The issuing CA of --serial [default: operational].
    #[arg(long, value_enum, requires = "serial")]
    pub issuer: Option<IssuerArg>,
    /// Revoke every certificate of this device (with --manufacturer).
    #[arg(long, requires = "manufacturer", conflicts_with = "principal")]
    pub device: Option<String>,
    /// Evict a principal: revoke all its certificates and disable it, so it can call, renew
    /// and create tokens no more (admins only). ROLE/ID with ROLE admin, gateway, auditor or
    /// station (a station also needs --manufacturer).
    #[arg(long, value_name = "ROLE/ID", conflicts_with = "serial")]
    pub principal: Option<String>,
    /// The manufacturer of --device, or of a --principal station.
    #[arg(long)]
    pub manufacturer: Option<String>,
    /// RFC 5280 reason; omitted: no reason code on the CRL.
    #[arg(long, value_enum)]
    pub reason: Option<ReasonArg>,
}

#[derive(Debug, Args)]
pub struct DecommissionArgs {
    #[command(flatten)]
    pub conn: Connection,
    /// The device's manufacturer id.
    #[arg(long)]
    pub manufacturer: String,
    /// The device's serial number.
    #[arg(long)]
    pub serial: String,
    /// Default: cessationOfOperation.
    #[arg(long, value_enum)]
    pub reason: Option<ReasonArg>,
}

#[derive(Debug, Args)]
pub struct ExpiringArgs {
    #[command(flatten)]
    pub conn: Connection,
    /// Active certificates that end within this many days from now.
    #[arg(long, default_value_t = 30)]
    pub within_days: u32,
    /// Only this manufacturer's devices and stations.
    #[arg(long)]
    pub manufacturer: Option<String>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub conn: Connection,
    /// Certificate serial (hex) — certificate status.
    #[arg(long, conflicts_with_all = ["certificate", "device"])]
    pub serial: Option<String>,
    /// A certificate file (PEM) — certificate status.
    #[arg(long, conflicts_with = "device")]
    pub certificate: Option<PathBuf>,
    /// A device serial (with --manufacturer) — rotation status.
    #[arg(long, requires = "manufacturer")]
    pub device: Option<String>,
    /// The manufacturer id of --device.
    #[arg(long)]
    pub manufacturer: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum CrlCommand {
    /// Fetch the current CRL of an issuing CA over gRPC and write it (DER).
    Fetch {
        #[command(flatten)]
        conn: Connection,
        /// Which issuing CA's CRL.
        #[arg(long, value_enum)]
        issuer: IssuerArg,
        /// The issuing CA's generation (2 after the first `medid ca rotate`); default: the
        /// current one.
        #[arg(long)]
        generation: Option<u32>,
        /// Where to write the CRL (DER).
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a one-time enrollment token for a device not enrolled at the factory.
    Create {
        #[command(flatten)]
        conn: Connection,
        /// The manufacturer of the device the token enrolls.
        #[arg(long)]
        manufacturer: String,
        /// The serial number the token is bound to.
        #[arg(long)]
        serial: String,
        /// The model the token is bound to [default: any the manufacturer may enroll].
        #[arg(long)]
        model: Option<String>,
        /// Lifetime in seconds (at most 86400).
        #[arg(long, default_value_t = 3600)]
        ttl: u32,
    },
}

async fn client(
    conn: &Connection,
) -> Result<LifecycleServiceClient<tonic::transport::Channel>, Error> {
    Ok(LifecycleServiceClient::new(conn.channel().await?))
}

/// Lists active certificates that end soon (role admin), soonest first.
pub async fn expiring(args: ExpiringArgs) -> Result<(), Error> {
    let list = client(&args.conn)
        .await?
        .list_expiring(proto::ListExpiringRequest {
            within_seconds: u64::from(args.within_days) * 86_400,
            manufacturer_id: args.manufacturer.clone().unwrap_or_default(),
        })
        .await
        .map_err(super::client::status)?
        .into_inner();
    if args.conn.json {
        super::client::print_json(
            super::client::Shape::List,
            list.certificates.iter().map(info_json),
        );
        return Ok(());
    }
    for c in &list.certificates {
        let line = format!(
            "{}  {:<18} {:<16} {:<34} {}",
            super::client::ts(&c.not_after),
            c.profile,
            issuer_label(c.issuer, c.issuer_generation),
            c.serial,
            c.subject_uri
        );
        // A reader that has gone (`| head`) ends the listing.
        if !super::print_line(&line)? {
            return Ok(());
        }
    }
    if list.certificates.is_empty() {
        eprintln!(
            "no active certificate ends within {} days",
            args.within_days
        );
    }
    Ok(())
}

pub async fn renew(args: RenewArgs) -> Result<(), Error> {
    let files = super::client::OutputFiles::new(&args.out, "operational");
    let pending = PendingKey::prepare(&args.key, &files)?;
    let issued = client(&args.conn)
        .await?
        .request_operational_certificate(proto::RequestOperationalCertificateRequest {
            csr: pending.csr.clone(),
        })
        .await
        .map_err(status)?
        .into_inner();
    pending.save(&files, &issued)?;
    super::client::print_issued(&args.conn, &issued, &files, None);
    Ok(())
}

/// `ROLE/ID` of `--principal`, as the RPC names a principal.
fn principal_ref(spec: &str, manufacturer: Option<&str>) -> Result<proto::PrincipalRef, Error> {
    let (role, id) = spec.split_once('/').ok_or_else(|| {
        Error::InvalidArgument(format!(
            "--principal {spec:?}: give ROLE/ID, for example gateway/icu-gw"
        ))
    })?;
    let role = match role {
        "admin" => proto::PrincipalRole::Admin,
        "gateway" => proto::PrincipalRole::Gateway,
        "auditor" => proto::PrincipalRole::Auditor,
        "station" => proto::PrincipalRole::ManufacturerStation,
        other => {
            return Err(Error::InvalidArgument(format!(
                "--principal role {other:?}: one of admin, gateway, auditor, station"
            )))
        }
    };
    if (role == proto::PrincipalRole::ManufacturerStation) != manufacturer.is_some() {
        return Err(Error::InvalidArgument(
            "--manufacturer goes with --principal station/ID, and only with it".into(),
        ));
    }
    Ok(proto::PrincipalRef {
        role: role as i32,
        id: id.to_owned(),
        manufacturer_id: manufacturer.unwrap_or_default().to_owned(),
    })
}

pub async fn revoke(args: RevokeArgs) -> Result<(), Error> {
    let m = args.manufacturer.as_deref();
    let target = match (&args.serial, &args.device, &args.principal, m) {
        (None, None, Some(spec), m) => {
            proto::revoke_request::Target::Principal(principal_ref(spec, m)?)
        }
        (Some(serial), None, None, _) => {
            proto::revoke_request::Target::Certificate(proto::CertificateRef {
                issuer: args.issuer.map_or(0, |i| i.proto() as i32),
                issuer_generation: 0,
                serial: serial.clone(),
            })
        }
        (None, Some(device), None, Some(m)) => {
            proto::revoke_request::Target::Device(proto::DeviceRef {
                manufacturer_id: m.to_owned(),
                serial: device.clone(),
            })
        }
        _ => {
            return Err(Error::InvalidArgument(
                "give --serial, --device with --manufacturer, or --principal ROLE/ID".into(),
            ))
        }
    };
    let resp = client(&args.conn)
        .await?
        .revoke(proto::RevokeRequest {
            target: Some(target),
            reason: args.reason.map_or(0, |r| r.reason() as i32),
        })
        .await
        .map_err(status)?
        .into_inner();
    let revoked: Vec<String> = resp.revoked.iter().map(|c| c.serial.clone()).collect();
    if args.conn.json {
        println!("{}", json!({ "revoked": revoked }));
    } else {
        for s in revoked {
            println!("revoked {s}");
        }
    }
    Ok(())
}

pub async fn decommission(args: DecommissionArgs) -> Result<(), Error> {
    let d = client(&args.conn)
        .await?
        .decommission_device(proto::DecommissionDeviceRequest {
            device: Some(proto::DeviceRef {
                manufacturer_id: args.manufacturer,
                serial: args.serial,
            }),
            reason: args.reason.map_or(0, |r| r.reason() as i32),
        })
        .await
        .map_err(status)?
        .into_inner();
    if args.conn.json {
        println!("{}", super::client::device_json(&d));
    } else {
        println!("decommissioned {} (all its certificates revoked)", d.uri);
    }
    Ok(())
}

/// An issuing-CA generation's label (`operational`, `operational-2`, …), as in CRL and OCSP
/// URLs and in the metrics.
pub(super) fn issuer_label(issuer: i32, generation: u32) -> String {
    let name = match proto::Issuer::try_from(issuer) {
        Ok(proto::Issuer::DeviceIdentity) => "device-identity",
        Ok(proto::Issuer::Operational) => "operational",
        _ => return "unknown".into(),
    };
    match generation {
        0 | 1 => name.to_owned(),
        n => format!("{name}-{n}"),
    }
}

pub(super) fn info_json(c: &proto::CertificateInfo) -> serde_json::Value {
    json!({"issuer": issuer_label(c.issuer, c.issuer_generation),
           "serial": c.serial, "profile": c.profile, "subject_uri": c.subject_uri,
           "state": c.state, "not_before": super::client::ts_json(&c.not_before),
           "not_after": super::client::ts_json(&c.not_after),
           "revoked_at": super::client::ts_json(&c.revoked_at)})
}

/// Shows a certificate's status, or a device's rotation status. The exit status says the
/// certificate's: 0 good, 10 revoked, 11 unknown (`cli::errors`).
pub async fn show_status(args: StatusArgs) -> Result<std::process::ExitCode, Error> {
    let mut c = client(&args.conn).await?;
    if let (Some(device), Some(m)) = (&args.device, &args.manufacturer) {
        let st = c
            .get_rotation_status(proto::GetRotationStatusRequest {
                device: Some(proto::DeviceRef {
                    manufacturer_id: m.clone(),
                    serial: device.clone(),
                }),
            })
            .await
            .map_err(status)?
            .into_inner();
        if args.conn.json {
            println!(
                "{}",
                json!({"current": st.current.as_ref().map(info_json),
                       "renew_after": super::client::ts_json(&st.renew_after), "overdue": st.overdue,
                       "history": st.history.iter().map(info_json).collect::<Vec<_>>()})
            );
        } else {
            match &st.current {
                Some(cur) => println!(
                    "current {} until {}; renew after {}{}",
                    cur.serial,
                    super::client::ts(&cur.not_after),
                    super::client::ts(&st.renew_after),
                    if st.overdue { " (OVERDUE)" } else { "" }
                ),
                None => println!(
                    "no valid operational certificate{}",
                    if st.overdue { " (OVERDUE)" } else { "" }
                ),
            }
            for h in &st.history {
                println!(
                    "  {:<11} {} {} .. {}",
                    h.state,
                    h.serial,
                    super::client::ts(&h.not_before),
                    super::client::ts(&h.not_after)
                );
            }
        }
        return Ok(std::process::ExitCode::SUCCESS);
    }
    let certificate = match (&args.serial, &args.certificate) {
        (Some(s), None) => {
            proto::get_certificate_status_request::Certificate::Serial(proto::CertificateRef {
                issuer: 0,
                issuer_generation: 0,
                serial: s.clone(),
            })
        }
        (None, Some(path)) => {
            let pem = std::fs::read(path)
                .map_err(|e| Error::InvalidArgument(format!("reading {}: {e}", path.display())))?;
            let der = crate::pem::parse_certificates(&pem)?.remove(0);
            proto::get_certificate_status_request::Certificate::Der(der.to_vec())
        }
        _ => {
            return Err(Error::InvalidArgument(
                "give --serial, --certificate, or --device with --manufacturer".into(),
            ))
        }
    };
    let st = c
        .get_certificate_status(proto::GetCertificateStatusRequest {
            certificate: Some(certificate),
        })
        .await
        .map_err(status)?
        .into_inner();
    let (word, exit) = match proto::CertStatus::try_from(st.status) {
        Ok(proto::CertStatus::Good) => ("good", 0),
        Ok(proto::CertStatus::Revoked) => ("revoked", super::errors::EXIT_REVOKED),
        _ => ("unknown", super::errors::EXIT_UNKNOWN),
    };
    if args.conn.json {
        println!(
            "{}",
            json!({"status": word, "certificate": st.certificate.as_ref().map(info_json)})
        );
    } else {
        println!("{word}");
        if let Some(c) = &st.certificate {
            println!(
                "  {} {} ({}), not after {}",
                c.serial,
                c.subject_uri,
                c.profile,
                super::client::ts(&c.not_after)
            );
        }
    }
    Ok(exit.into())
}

pub async fn crl(cmd: CrlCommand) -> Result<(), Error> {
    let CrlCommand::Fetch {
        conn,
        issuer,
        generation,
        out,
    } = cmd;
    let crl = client(&conn)
        .await?
        .get_crl(proto::GetCrlRequest {
            issuer: issuer.proto() as i32,
            issuer_generation: generation.unwrap_or(0),
        })
        .await
        .map_err(status)?
        .into_inner();
    std::fs::write(&out, &crl.der)
        .map_err(|e| Error::InvalidArgument(format!("writing {}: {e}", out.display())))?;
    println!(
        "CRL number {} of generation {} ({} bytes) written to {}; next update {}",
        crl.number,
        crl.issuer_generation,
        crl.der.len(),
        out.display(),
        super::client::ts(&crl.next_update)
    );
    Ok(())
}

pub async fn token(cmd: TokenCommand) -> Result<(), Error> {
    let TokenCommand::Create {
        conn,
        manufacturer,
        serial,
        model,
        ttl,
    } = cmd;
    let t = client(&conn)
        .await?
        .create_enrollment_token(proto::CreateEnrollmentTokenRequest {
            manufacturer_id: manufacturer,
            serial,
            model: model.unwrap_or_default(),
            ttl_seconds: ttl,
        })
        .await
        .map_err(status)?
        .into_inner();
    if conn.json {
        println!(
            "{}",
            json!({"token": t.token, "expires_at": super::client::ts_json(&t.expires_at)})
        );
    } else {
        // The token goes to stdout only; it is shown once and stored only hashed.
        println!("{}", t.token);
        eprintln!(
            "one-time token, valid until {}",
            super::client::ts(&t.expires_at)
        );
    }
    Ok(())
}
