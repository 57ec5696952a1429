//! Kept CRLs: every CRL the service signs is also written outside the database, beside the
//! audit checkpoints, so a database restored from an older backup cannot silently forget a
//! revocation. At start the newest kept CRL of each issuer is read back (its signature checked
//! with the CA's key), and what it revokes that the database does not is revoked again, each
//! with an audit event saying it was recovered from a published CRL.

use std::path::{Path, PathBuf};

use super::Ca;
use crate::audit::{Actor, AuditEvent, Target};
use crate::error::Error;
use crate::files::{self, Access};
use crate::issuance::IssuerId;
use crate::store::lifecycle::CrlRecord;
use crate::store::recovery::{RecoveryOutcome, UNRECORDED_SUBJECT};
use crate::store::RecoveryStore;

/// Kept CRLs per issuer; older ones are deleted.
const KEPT_PER_ISSUER: usize = 4;

/// `dir/crls`: where CRL copies are kept.
pub fn kept_crl_dir(checkpoint_dir: &Path) -> PathBuf {
    checkpoint_dir.join("crls")
}

fn kept_name(issuer: IssuerId, number: i64) -> String {
    // Zero-padded so names sort by number.
    format!("{issuer}-{number:020}.crl")
}

/// Whether `file` is a kept CRL of `issuer`: `LABEL-` then 20 digits then `.crl` (so
/// `operational-` never takes `operational-2-…`).
fn is_kept_of(file: &str, issuer: IssuerId) -> bool {
    file.strip_prefix(&format!("{issuer}-"))
        .and_then(|rest| rest.strip_suffix(".crl"))
        .is_some_and(|n| n.len() == 20 && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The kept CRLs of `issuer` in `dir`, newest first.
fn kept(dir: &Path, issuer: IssuerId) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| is_kept_of(n, issuer))
                })
                .collect()
        })
        .unwrap_or_default();
    paths.sort();
    paths.reverse();
    paths
}

impl Ca {
    fn kept_crl_dir(&self) -> PathBuf {
        kept_crl_dir(&self.ledger.checkpoint_dir)
    }

    /// Writes a copy of a CRL just signed, and drops all but the newest few of its issuer.
    pub(super) fn keep_crl(&self, issuer: IssuerId, crl: &CrlRecord) -> Result<(), Error> {
        let dir = self.kept_crl_dir();
        files::create_private_dir(&dir)?;
        files::write_atomic(
            &dir.join(kept_name(issuer, crl.number)),
            &crl.der,
            Access::Private,
        )?;
        for old in kept(&dir, issuer).into_iter().skip(KEPT_PER_ISSUER) {
            let _ = std::fs::remove_file(old);
        }
        Ok(())
    }

    /// Start-up recovery from the newest kept CRL of each issuer. Returns what changed; when
    /// anything did, new CRLs are signed (numbered past the kept ones).
    pub async fn recover_from_kept_crls(&self) -> Result<RecoveryOutcome, Error> {
        let dir = self.kept_crl_dir();
        let mut total = RecoveryOutcome::default();
        for issuer in self.authority.issuers().into_iter().map(|i| i.id) {
            let Some(path) = kept(&dir, issuer).into_iter().next() else {
                continue;
            };
            let der = std::fs::read(&path)
                .map_err(|e| Error::Internal(format!("reading {}: {e}", path.display())))?;
            let crl = match self.authority.read_own_crl(issuer, &der) {
                Ok(crl) => crl,
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "kept CRL ignored");
                    continue;
                }
            };
            let now = self.clock.now();
            let source = format!("{issuer} CRL number {}", crl.number);
            let outcome = self
                .store
                .recover_revocations(
                    issuer,
                    crl.number,
                    &crl.entries,
                    self.authority.issuer_cert(issuer)?.not_after,
                    now,
                    |r| {
                        let target = match r.subject_uri.as_deref() {
                            Some(uri) if uri != UNRECORDED_SUBJECT => Target::uri(uri),
                            _ => Target::certificate(&r.serial.to_hex()),
                        };
                        let mut event = AuditEvent::new(
                            now,
                            Actor::system(),
                            crate::audit::Action::CertificateRevoke,
                            target,
                        )
                        .with("issuer", issuer.label())
                        .with("serial", r.serial.clone())
                        .with(
                            "reason",
                            r.reason.map(|r| r.name()).unwrap_or("unspecified"),
                        )
                        .with("recovered_from", format!("published {source}"));
                        if r.subject_uri.is_none() {
                            event = event.with(
                                "note",
                                "issued after the database's backup; not in this database",
                            );
                        }
                        event
                    },
                )
                .await?;
            if outcome.revocations > 0 {
                tracing::warn!(
                    issuer = %issuer,
                    revocations = outcome.revocations,
                    from = %path.display(),
                    "re-applied revocations missing from the database (restored from an older backup?)"
                );
            }
            if outcome.revocations > 0 || outcome.crl_number_advanced {
                self.publish_crl(issuer).await?;
            }
            total.revocations += outcome.revocations;
            total.crl_number_advanced |= outcome.crl_number_advanced;
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::issuance::IssuerName;

    #[test]
    fn kept_crl_names_never_mix_generations() {
        let first = IssuerId::first(IssuerName::Operational);
        let second = IssuerId {
            name: IssuerName::Operational,
            generation: 2,
        };
        assert!(is_kept_of(&kept_name(first, 7), first));
        assert!(!is_kept_of(&kept_name(second, 7), first));
        assert!(is_kept_of(&kept_name(second, 7), second));
        assert!(!is_kept_of("operational-7.crl", first));
    }
}
