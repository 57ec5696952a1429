//! `medid agent`: keeps a device's (or gateway's) operational certificate fresh.
//!
//! It holds `cert.pem` + `key.pem` in a directory, renews at 2/3 of the certificate's lifetime
//! minus a random jitter (so a fleet does not renew in lockstep), writes atomically (temporary
//! file, fsync, rename), runs an optional command after each renewal, and retries with
//! exponential backoff while the service is unreachable. With no valid certificate in the
//! directory it authenticates with its bootstrap identity (the birth certificate).

use std::path::{Path, PathBuf};
use std::time::Duration as StdDuration;

use clap::Args;
use rcgen::{CertificateParams, KeyPair};
use ring::rand::{SecureRandom, SystemRandom};
use time::{Duration, OffsetDateTime};

use crate::error::Error;
use crate::files::{write_atomic, Access};
use crate::policy::profile::renew_after;
use crate::proto::{
    lifecycle_service_client::LifecycleServiceClient, RequestOperationalCertificateRequest,
};

#[derive(Debug, Clone, Args)]
pub struct AgentArgs {
    /// Directory for cert.pem, key.pem and chain.pem (created if missing).
    #[arg(long)]
    pub dir: PathBuf,
    /// Certificate to authenticate with when the directory has no valid one (e.g. the
    /// device's birth certificate).
    #[arg(long)]
    pub bootstrap_cert: PathBuf,
    /// The private key of --bootstrap-cert.
    #[arg(long)]
    pub bootstrap_key: PathBuf,
    /// Renew once if due (or if there is no certificate yet), then exit.
    #[arg(long)]
    pub once: bool,
    /// Renew now, even if not due (with --once: for scripts and tests).
    #[arg(long)]
    pub force: bool,
    /// Command run with `sh -c` after each renewal; MEDID_CERT and MEDID_KEY name the files.
    #[arg(long)]
    pub exec: Option<String>,
    /// Service URL.
    #[arg(long, env = "MEDID_SERVER", default_value = "https://localhost:7443")]
    pub server: String,
    /// CA certificate that signed the service's certificate chain (the root).
    #[arg(long, env = "MEDID_CA", default_value = "certs-dev/root-ca.pem")]
    pub ca: PathBuf,
}

/// Fraction of the lifetime the renewal may be moved earlier, at most.
const JITTER_FRACTION: f64 = 0.05;
const MAX_BACKOFF: StdDuration = StdDuration::from_secs(300);
/// With --once, give up after this many failed attempts.
const ONCE_ATTEMPTS: u32 = 5;

/// When to renew a certificate: at 2/3 of its lifetime, moved earlier by `jitter` ∈ [0, 1)
/// times 5% of the lifetime. Pure, so the schedule is tested with pinned values.
pub fn renewal_time(
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    jitter: f64,
) -> OffsetDateTime {
    let lifetime = not_after - not_before + Duration::SECOND;
    let jitter = jitter.clamp(0.0, 1.0);
    renew_after(not_before, not_after) - lifetime * (JITTER_FRACTION * jitter)
}

/// Exponential backoff for attempt `n` (0-based): 1 s, 2 s, 4 s … capped at 5 minutes.
pub fn backoff(attempt: u32) -> StdDuration {
    StdDuration::from_secs(1u64 << attempt.min(16)).min(MAX_BACKOFF)
}

struct Files {
    cert: PathBuf,
    key: PathBuf,
    chain: PathBuf,
}

impl Files {
    fn new(dir: &Path) -> Self {
        Self {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            chain: dir.join("chain.pem"),
        }
    }
}

/// The validity of the certificate in `cert`, if it is readable, matches `key`, and has not
/// expired.
fn current_validity(
    files: &Files,
    now: OffsetDateTime,
) -> Option<(OffsetDateTime, OffsetDateTime)> {
    let cert_pem = std::fs::read(&files.cert).ok()?;
    let key_pem = std::fs::read_to_string(&files.key).ok()?;
    let der = crate::pem::parse_certificates(&cert_pem)
        .ok()?
        .into_iter()
        .next()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    let key = KeyPair::from_pem(&key_pem).ok()?;
    // A crash between the two renames can leave a new key beside an old certificate.
    if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return None;
    }
    let v = cert.validity();
    let (nb, na) = (v.not_before.to_datetime(), v.not_after.to_datetime());
    (now <= na).then_some((nb, na))
}

/// Whether `dir` holds a certificate and matching key that have not expired.
pub(crate) fn has_valid_certificate(dir: &Path) -> bool {
    current_validity(&Files::new(dir), OffsetDateTime::now_utc()).is_some()
}

fn random_unit() -> f64 {
    let mut b = [0u8; 4];
    if SystemRandom::new().fill(&mut b).is_err() {
        return 0.5;
    }
    f64::from(u32::from_be_bytes(b)) / f64::from(u32::MAX)
}

async fn renew_once(
    args: &AgentArgs,
    files: &Files,
    have_current: bool,
    renewed: Option<&tokio::sync::mpsc::UnboundedSender<()>>,
) -> Result<(), Error> {
    let (cert, key) = if have_current {
        (&files.cert, &files.key)
    } else {
        (&args.bootstrap_cert, &args.bootstrap_key)
    };
    let channel = super::client::open(&args.server, &args.ca, cert, key).await?;
    let new_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| Error::internal("generating key", e))?;
    let csr = CertificateParams::default()
        .serialize_request(&new_key)
        .map_err(|e| Error::internal("making CSR", e))?;
    let issued = LifecycleServiceClient::new(channel)
        .request_operational_certificate(RequestOperationalCertificateRequest {
            csr: csr.der().to_vec(),
        })
        .await
        .map_err(super::client::status)?
        .into_inner();
    let chain: String = std::iter::once(issued.certificate_pem.as_str())
        .chain(issued.chain_pem.iter().map(String::as_str))
        .collect();
    // Key first: if we stop between the renames, the mismatch is detected and healed.
    write_atomic(
        &files.key,
        new_key.serialize_pem().as_bytes(),
        Access::Private,
    )?;
    write_atomic(
        &files.cert,
        issued.certificate_pem.as_bytes(),
        Access::Public,
    )?;
    write_atomic(&files.chain, chain.as_bytes(), Access::Public)?;
    if let Some(renewed) = renewed {
        let _ = renewed.send(());
    }
    println!(
        "renewed {}: serial {}, valid until {}",
        issued.subject_uri,
        issued.serial,
        super::client::ts(&issued.not_after)
    );
    if let Some(cmd) = &args.exec {
        let status = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .env("MEDID_CERT", &files.cert)
            .env("MEDID_KEY", &files.key)
            .status()
            .await
            .map_err(|e| Error::Internal(format!("running --exec: {e}")))?;
        if !status.success() {
            eprintln!("warning: --exec command exited with {status}");
        }
    }
    Ok(())
}

/// Whether the service still accepts the current certificate: one cheap authenticated call
/// (the trust bundle) made with it. A revoked, unknown or disabled certificate is refused at
/// the handshake or by authentication; that refusal is the answer.
async fn check_current(args: &AgentArgs, files: &Files) -> Result<(), Error> {
    let channel = super::client::open(&args.server, &args.ca, &files.cert, &files.key).await?;
    LifecycleServiceClient::new(channel)
        .get_trust_bundle(crate::proto::GetTrustBundleRequest {})
        .await
        .map_err(super::client::status)?;
    Ok(())
}

/// A refusal of the caller itself (its certificate revoked, unknown or disabled, or its role
/// not allowed): with the current certificate, the agent falls back to the bootstrap identity.
fn refuses_the_caller(e: &Error) -> bool {
    matches!(e, Error::Unauthenticated(_) | Error::PermissionDenied(_))
}

/// Runs the agent; `renewed` (for `medid gateway`) hears of each renewal once the new files
/// are in place.
pub async fn run(
    args: AgentArgs,
    renewed: Option<tokio::sync::mpsc::UnboundedSender<()>>,
) -> Result<(), Error> {
    crate::files::create_private_dir(&args.dir)?;
    let files = Files::new(&args.dir);
    let mut failures = 0u32;
    let mut force = args.force;
    // After a refusal of the current certificate (revoked, say), use the bootstrap identity.
    let mut use_bootstrap = false;
    loop {
        let now = OffsetDateTime::now_utc();
        let current = current_validity(&files, now);
        let due = match current {
            Some((nb, na)) => renewal_time(nb, na, random_unit()),
            None => now,
        };
        let mut unchecked = None;
        if current.is_some() && !force && !use_bootstrap && now < due {
            // Not due by the calendar: is the certificate still good?
            match check_current(&args, &files).await {
                Ok(()) => {}
                Err(e) if refuses_the_caller(&e) => {
                    eprintln!(
                        "the current certificate is no longer accepted ({e}); renewing now with the bootstrap identity"
                    );
                    use_bootstrap = true;
                }
                Err(e) => unchecked = Some(e),
            }
        }
        if force || use_bootstrap || now >= due {
            let with_current = current.is_some() && !use_bootstrap;
            match renew_once(&args, &files, with_current, renewed.as_ref()).await {
                Ok(()) => {
                    failures = 0;
                    force = false;
                    use_bootstrap = false;
                    if args.once {
                        return Ok(());
                    }
                    continue;
                }
                Err(e) if with_current && refuses_the_caller(&e) => {
                    eprintln!(
                        "renewal with the current certificate refused ({e}); trying the bootstrap identity"
                    );
                    use_bootstrap = true;
                    continue;
                }
                Err(e) if !e.is_transient() => {
                    // The service's answer to this device; asking again gets the same one.
                    return Err(e.context(
                        "renewal refused, not retried (the device may be decommissioned or its bootstrap certificate revoked): ",
                    ));
                }
                Err(e) => {
                    failures += 1;
                    if args.once && failures >= ONCE_ATTEMPTS {
                        return Err(e.context(&format!("renewal failed {failures} times: ")));
                    }
                    let wait = backoff(failures - 1);
                    eprintln!("renewal failed ({e}); retrying in {wait:?}");
                    tokio::time::sleep(wait).await;
                    continue;
                }
            }
        }
        if args.once {
            match unchecked {
                Some(e) => {
                    println!("not due: renewal at {due} (its status could not be checked: {e})")
                }
                None => println!("not due: renewal at {due}; the certificate is accepted"),
            }
            return Ok(());
        }
        if let Some(e) = unchecked {
            eprintln!(
                "could not check the current certificate ({e}); checking again within the hour"
            );
        }
        let wait = (due - now).clamp(Duration::SECOND, Duration::HOUR);
        tokio::time::sleep(StdDuration::from_secs(wait.whole_seconds() as u64)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn renewal_lands_between_jittered_and_two_thirds() {
        let nb = datetime!(2026-01-01 00:00:00 UTC);
        let na = nb + Duration::days(7) - Duration::SECOND;
        let two_thirds = datetime!(2026-01-05 16:00:00 UTC);
        assert_eq!(renewal_time(nb, na, 0.0), two_thirds);
        // Full jitter: 5% of 7 days (8 h 24 min) earlier.
        assert_eq!(
            renewal_time(nb, na, 1.0),
            two_thirds - Duration::minutes(504)
        );
        let mid = renewal_time(nb, na, 0.5);
        assert!(mid < two_thirds && mid > two_thirds - Duration::minutes(504));
        // Out-of-range jitter is clamped, never past 2/3.
        assert_eq!(renewal_time(nb, na, -3.0), two_thirds);
    }

    #[test]
    fn backoff_doubles_and_caps_at_five_minutes() {
        assert_eq!(backoff(0), StdDuration::from_secs(1));
        assert_eq!(backoff(3), StdDuration::from_secs(8));
        assert_eq!(backoff(9), MAX_BACKOFF);
        assert_eq!(backoff(100), MAX_BACKOFF);
    }
}
