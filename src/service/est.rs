//! EST (RFC 7030) enrollment: routes a request to factory enrollment or renewal by the
//! caller's credential and the label ([`policy::est::route`]), then runs the very same use
//! case as gRPC, so every rule and audit event is shared (docs/EST.md).

use super::{Ca, EnrollInput, Issued, Refused};
use crate::audit::Target;
use crate::domain::{DeviceSerial, Principal};
use crate::error::Error;
use crate::policy::{
    self,
    est::{EstIssue, EstLabel, EstOperation},
};

impl Ca {
    /// `simpleenroll` / `simplereenroll` for an authenticated caller. `peer_der` is the
    /// certificate `who` authenticated with; `csr` is the DER PKCS#10 request.
    pub async fn est_enroll(
        &self,
        who: &Principal,
        peer_der: &[u8],
        op: EstOperation,
        label: Option<&EstLabel>,
        csr: Vec<u8>,
    ) -> Result<Issued, Refused> {
        let action = op.audit_action(who);
        let routed = policy::est::route(op, who, label);
        let issue = self
            .audited(who, action, &Target::uri(&who.uri), routed)
            .await?;
        match issue {
            EstIssue::Birth { model, udi_di } => {
                let prepared = async {
                    // The device serial is the CSR subject's serialNumber (802.1AR): the one
                    // thing EST factory enrollment reads from the request.
                    let verified = policy::csr::verify(&csr)?;
                    let serial = verified.names.serial_number().ok_or_else(|| {
                        Error::BadCsr(
                            "the subject has no serialNumber (2.5.4.5); EST factory enrollment takes the device serial from it".into(),
                        )
                    })?;
                    let serial = DeviceSerial::parse(serial)?;
                    let model = match model {
                        Some(m) => m,
                        None => {
                            let manufacturer = policy::enrollment_scope(who)?;
                            let registered = self.manufacturer(&manufacturer).await?;
                            policy::est::default_model(&registered.allowed_models)?
                        }
                    };
                    Ok(EnrollInput {
                        csr,
                        serial,
                        model,
                        udi_di,
                    })
                };
                let input = self
                    .audited(who, action, &Target::uri(&who.uri), prepared.await)
                    .await?;
                let (_, issued) = self.enroll_device(who, input).await?;
                Ok(issued)
            }
            EstIssue::Renewal { reenroll } => {
                if reenroll {
                    let same_names = policy::csr::verify(&csr).and_then(|verified| {
                        let current = policy::csr::certificate_names(peer_der)?;
                        policy::est::check_reenrollment(&verified.names, &current)
                    });
                    self.audited(who, action, &Target::uri(&who.uri), same_names)
                        .await?;
                }
                self.renew(who, &csr).await
            }
        }
    }
}
