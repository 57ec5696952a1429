//! The inventory's counts for the console's overview (`store::stats`): read-only, for those
//! who may list devices and the certificates about to end (admins and auditors). Like the
//! listings they summarise, they are recorded only when refused.

use super::{Ca, Refused};
use crate::audit::Target;
use crate::domain::Principal;
use crate::policy::{self, Action};
use crate::store::stats::InventoryCounts;
use crate::store::ConsoleStats;

/// Days of certificate end dates the overview's histogram covers.
pub const ENDING_DAYS: i64 = 30;

impl Ca {
    /// Devices by state, certificates ending within 7 and 30 days, revocations of the last day.
    pub async fn inventory_counts(&self, who: &Principal) -> Result<InventoryCounts, Refused> {
        let read = async {
            policy::authorize(who, Action::ListDevices)?;
            policy::authorize(who, Action::ListExpiring)?;
            self.store.inventory_counts(self.clock.now()).await
        };
        self.audited(
            who,
            Action::ListExpiring.audit(),
            &Target::certificates(),
            read.await,
        )
        .await
    }

    /// Active certificates by the UTC day they end, over the next [`ENDING_DAYS`] days.
    pub async fn certificates_ending_by_day(
        &self,
        who: &Principal,
    ) -> Result<Vec<(i64, u64)>, Refused> {
        let read = async {
            policy::authorize(who, Action::ListExpiring)?;
            self.store
                .certificates_ending_by_day(self.clock.now(), ENDING_DAYS)
                .await
        };
        self.audited(
            who,
            Action::ListExpiring.audit(),
            &Target::certificates(),
            read.await,
        )
        .await
    }
}
