//! What the service counts for `/metrics` (`api::metrics` exports them): certificates that
//! reached signing, by profile and outcome, and every audited refusal, by action and code.
//! Counters only go up; they start at zero with the process.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::audit::Action;
use crate::domain::Profile;
use crate::error::Error;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IssuanceLabels {
    pub profile: &'static str,
    /// `issued`, or the audit outcome of the failure: `refused`, `denied`, `failed`.
    pub outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    /// The audit action refused (`device.enroll`, …).
    pub action: &'static str,
    /// The gRPC code it was answered with (`PERMISSION_DENIED`, …).
    pub code: &'static str,
}

#[derive(Debug, Clone, Default)]
pub struct Counters {
    pub issuance: Family<IssuanceLabels, Counter>,
    pub refusals: Family<RefusalLabels, Counter>,
}

impl Counters {
    /// One certificate signed and recorded.
    pub fn issued(&self, profile: Profile) {
        self.issuance
            .get_or_create(&IssuanceLabels {
                profile: profile.as_str(),
                outcome: "issued",
            })
            .inc();
    }

    /// One signed certificate dropped because recording it was refused or failed.
    pub fn not_issued(&self, profile: Profile, err: &Error) {
        self.issuance
            .get_or_create(&IssuanceLabels {
                profile: profile.as_str(),
                outcome: err.audit_outcome().as_str(),
            })
            .inc();
    }

    /// One refusal written to the audit log.
    pub fn refused(&self, action: Action, err: &Error) {
        self.refusals
            .get_or_create(&RefusalLabels {
                action: action.name(),
                code: err.code_name(),
            })
            .inc();
    }
}
