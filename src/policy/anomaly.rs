//! Access-anomaly rules: which access events deserve a compliance officer's look, and why.
//! Pure: the caller (`service::anomaly`) feeds each access event in ledger order with what the
//! store knows of its device and user, and stores the profile this returns beside the flags.
//! Every rule is a threshold on counts kept per device, stated in the flag's explanation
//! (docs/CONSOLE.md "Access-anomaly flags").

use std::fmt;

use time::OffsetDateTime;

/// The rules' thresholds (`[anomaly]` in the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// Accesses a device must have had before an hour of the day can be unusual for it.
    pub hours_baseline: u64,
    /// An hour of the day is unusual for a device when fewer than this many per mille of its
    /// earlier accesses fell in it.
    pub unusual_hour_per_mille: u64,
    /// Accesses a device must have had before a user's first access to it is flagged.
    pub contact_baseline: u64,
    /// A day's accesses are high volume beyond this many times the trailing daily mean...
    pub volume_factor: u64,
    /// ...and when they are at least this many.
    pub volume_min: u64,
    /// The local time whose hours and days the rules count.
    pub offset: time::UtcOffset,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl Thresholds {
    /// Quiet on a steady ward, and each stated in one sentence (docs/CONSOLE.md).
    pub const DEFAULT: Thresholds = Thresholds {
        hours_baseline: 100,
        unusual_hour_per_mille: 10,
        contact_baseline: 20,
        volume_factor: 3,
        volume_min: 10,
        offset: time::UtcOffset::UTC,
    };

    /// The local time's name: `UTC`, or `UTC+01:00`.
    pub fn zone(&self) -> String {
        if self.offset.is_utc() {
            return "UTC".into();
        }
        let (h, m, _) = self.offset.as_hms();
        let sign = if self.offset.is_negative() { '-' } else { '+' };
        format!("UTC{sign}{:02}:{:02}", h.unsigned_abs(), m.unsigned_abs())
    }

    /// The day (days since the epoch, in the local time) and the hour of the day of `at`.
    pub fn day_and_hour(&self, at: OffsetDateTime) -> (i64, usize) {
        let local = at.to_offset(self.offset);
        let seconds = at.unix_timestamp() + i64::from(self.offset.whole_seconds());
        (seconds.div_euclid(86_400), local.hour() as usize)
    }
}

/// Days in the trailing baseline; the device must have been seen for that long.
pub const TRAILING_DAYS: usize = 7;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FlagKind {
    /// An access in an hour of the day when the device is rarely reached.
    UnusualHour,
    /// A user reaching a device with a history for the first time.
    FirstContact,
    /// A day's accesses over the volume factor times the trailing mean.
    Volume,
    /// An access to a device already decommissioned.
    DecommissionedDevice,
    /// An access by a holder (a medid principal or device) whose certificates were all
    /// revoked at the time.
    RevokedHolder,
}

impl FlagKind {
    pub const ALL: [FlagKind; 5] = [
        FlagKind::UnusualHour,
        FlagKind::FirstContact,
        FlagKind::Volume,
        FlagKind::DecommissionedDevice,
        FlagKind::RevokedHolder,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FlagKind::UnusualHour => "unusual-hour",
            FlagKind::FirstContact => "first-contact",
            FlagKind::Volume => "volume",
            FlagKind::DecommissionedDevice => "decommissioned-device",
            FlagKind::RevokedHolder => "revoked-holder",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        FlagKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// What the flag means under `t`, for a page's legend.
    pub fn describe(self, t: &Thresholds) -> String {
        match self {
            FlagKind::UnusualHour => format!(
                "an access in an hour of the day ({}) in which fewer than {} per mille of the device's earlier accesses ({} at least) fell",
                t.zone(),
                t.unusual_hour_per_mille,
                t.hours_baseline
            ),
            FlagKind::FirstContact => format!(
                "a user's first access to a device that already had {} accesses or more",
                t.contact_baseline
            ),
            FlagKind::Volume => format!(
                "a day's accesses to a device reaching {} and more than {} times its mean over the {TRAILING_DAYS} days before (flagged once a day)",
                t.volume_min, t.volume_factor
            ),
            FlagKind::DecommissionedDevice => "an access to a device already decommissioned".into(),
            FlagKind::RevokedHolder => "an access by a user who is a medid principal or device with no unrevoked certificate valid at the time".into(),
        }
    }
}

impl fmt::Display for FlagKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a device's accesses have looked like so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessProfile {
    pub device_uri: String,
    pub accesses: u64,
    /// Accesses by UTC hour of the day.
    pub hours: [u64; 24],
    /// Days since the epoch (UTC) of its first access and of its latest.
    pub first_day: i64,
    pub day: i64,
    /// Accesses on `day` so far.
    pub day_count: u64,
    /// Whether `day` has raised its volume flag.
    pub volume_flagged: bool,
    /// Accesses on each of the [`TRAILING_DAYS`] days before `day`, oldest first.
    pub trailing: [u64; TRAILING_DAYS],
}

impl AccessProfile {
    /// A device not seen before, first reached on `day`.
    pub fn new(device_uri: &str, day: i64) -> Self {
        Self {
            device_uri: device_uri.to_owned(),
            accesses: 0,
            hours: [0; 24],
            first_day: day,
            day,
            day_count: 0,
            volume_flagged: false,
            trailing: [0; TRAILING_DAYS],
        }
    }

    /// Moves the profile on to `day` (a later one), shifting the trailing counts.
    fn roll_to(&mut self, day: i64) {
        if day <= self.day {
            return;
        }
        let gap = (day - self.day) as usize;
        let mut days: Vec<u64> = self.trailing.to_vec();
        days.push(self.day_count);
        days.extend(std::iter::repeat_n(
            0,
            gap.saturating_sub(1).min(TRAILING_DAYS),
        ));
        let keep = days.len() - TRAILING_DAYS;
        self.trailing.copy_from_slice(&days[keep..]);
        self.day = day;
        self.day_count = 0;
        self.volume_flagged = false;
    }
}

/// One access event as the rules see it.
#[derive(Debug, Clone)]
pub struct Access<'a> {
    /// When the access happened (the gateway's `occurred_at`).
    pub at: OffsetDateTime,
    pub user_id: Option<&'a str>,
    /// The event recorded that the device was decommissioned when it was reached.
    pub device_decommissioned: bool,
    /// Whether this user had reached this device before.
    pub known_contact: bool,
    /// The user is a medid principal or device whose certificates were all revoked at `at`.
    pub holder_revoked: bool,
}

/// The flags `access` raises against `profile` as it was before it, with their
/// explanations; `profile` is updated to include it. Events of a day before the profile's
/// latest (a late report) count in the hours and totals, not in the day's volume.
pub fn observe(
    profile: &mut AccessProfile,
    access: &Access<'_>,
    t: &Thresholds,
) -> Vec<(FlagKind, String)> {
    let mut flags = Vec::new();
    let (day, hour) = t.day_and_hour(access.at);
    if access.device_decommissioned {
        flags.push((
            FlagKind::DecommissionedDevice,
            "the device was decommissioned when it was reached".to_owned(),
        ));
    }
    if access.holder_revoked {
        flags.push((
            FlagKind::RevokedHolder,
            format!(
                "{} had no unrevoked certificate valid at the time",
                access.user_id.unwrap_or("the user")
            ),
        ));
    }
    if profile.accesses >= t.hours_baseline {
        // Fewer than the share: in whole numbers, count × 1000 < per mille × accesses.
        let count = profile.hours[hour];
        if count * 1000 < t.unusual_hour_per_mille * profile.accesses {
            flags.push((
                FlagKind::UnusualHour,
                format!(
                    "{count} of the device's {} earlier accesses ({:.1}%) were between {hour:02}:00 and {hour:02}:59 {}",
                    profile.accesses,
                    count as f64 * 100.0 / profile.accesses as f64,
                    t.zone()
                ),
            ));
        }
    }
    if let Some(user) = access.user_id {
        if !access.known_contact && profile.accesses >= t.contact_baseline {
            flags.push((
                FlagKind::FirstContact,
                format!(
                    "{user} reached the device for the first time, after its {} earlier accesses",
                    profile.accesses
                ),
            ));
        }
    }
    profile.roll_to(day);
    profile.accesses += 1;
    profile.hours[hour] += 1;
    if day == profile.day {
        profile.day_count += 1;
        let seen_long_enough = day - profile.first_day >= TRAILING_DAYS as i64;
        let mean = profile.trailing.iter().sum::<u64>() as f64 / TRAILING_DAYS as f64;
        let limit = (t.volume_factor as f64 * mean.max(1.0)).floor() as u64;
        if seen_long_enough
            && !profile.volume_flagged
            && profile.day_count >= t.volume_min
            && profile.day_count > limit
        {
            profile.volume_flagged = true;
            flags.push((
                FlagKind::Volume,
                format!(
                    "{} accesses on this day so far, over {} times the mean of the {TRAILING_DAYS} days before ({mean:.1} a day)",
                    profile.day_count, t.volume_factor
                ),
            ));
        }
    }
    flags
}

/// Whether a holder with these certificates (not_before, not_after, revoked at) had none
/// valid and unrevoked at `at`, though one valid at `at` was revoked by then. A holder with no
/// certificate valid at `at` at all (expired, not yet issued) is not "revoked".
pub fn holder_revoked_at(
    certificates: &[(OffsetDateTime, OffsetDateTime, Option<OffsetDateTime>)],
    at: OffsetDateTime,
) -> bool {
    let valid =
        |c: &&(OffsetDateTime, OffsetDateTime, Option<OffsetDateTime>)| c.0 <= at && at <= c.1;
    let mut revoked = false;
    for c in certificates.iter().filter(valid) {
        match c.2 {
            Some(when) if when <= at => revoked = true,
            _ => return false,
        }
    }
    revoked
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const T: Thresholds = Thresholds::DEFAULT;

    fn access(at: OffsetDateTime, user: &str, known: bool) -> Access<'_> {
        Access {
            at,
            user_id: Some(user),
            device_decommissioned: false,
            known_contact: known,
            holder_revoked: false,
        }
    }

    fn kinds(flags: &[(FlagKind, String)]) -> Vec<FlagKind> {
        flags.iter().map(|(k, _)| *k).collect()
    }

    /// Eight days of 20 accesses between 09:00 and 16:59 by three nurses; then a night
    /// access, a new user and a busy day.
    #[test]
    fn the_rules_flag_what_departs_from_the_device_s_history() {
        let start = datetime!(2026-11-01 09:00 UTC);
        let mut p = AccessProfile::new("d", start.unix_timestamp().div_euclid(86_400));
        for day in 0..8 {
            for n in 0..20 {
                let at = start + time::Duration::days(day) + time::Duration::minutes(n * 24);
                let user = ["n1", "n2", "n3"][n as usize % 3];
                let flags = observe(&mut p, &access(at, user, day > 0 || n >= 3), &T);
                assert!(flags.is_empty(), "day {day} access {n}: {flags:?}");
            }
        }
        assert_eq!(p.accesses, 160);
        let day8 = start + time::Duration::days(8);
        // 03:00: none of its 160 accesses were in that hour.
        let flags = observe(
            &mut p,
            &access(day8 - time::Duration::hours(6), "n1", true),
            &T,
        );
        assert_eq!(kinds(&flags), [FlagKind::UnusualHour]);
        assert!(
            flags[0]
                .1
                .contains("0 of the device's 160 earlier accesses"),
            "{flags:?}"
        );
        // A new user, in usual hours.
        let flags = observe(&mut p, &access(day8, "n99", false), &T);
        assert_eq!(kinds(&flags), [FlagKind::FirstContact]);
        // A busy day: the mean is 20, so the 61st access of the day is the first over 60.
        let mut volume = Vec::new();
        for n in 0..80 {
            let at = day8 + time::Duration::minutes(n);
            volume.extend(
                observe(&mut p, &access(at, "n1", true), &T)
                    .into_iter()
                    .filter(|(k, _)| *k == FlagKind::Volume),
            );
        }
        assert_eq!(volume.len(), 1, "once a day: {volume:?}");
        assert!(
            volume[0].1.starts_with("61 accesses on this day"),
            "{volume:?}"
        );
        // The next day starts over, its baseline now including the busy day.
        observe(
            &mut p,
            &access(day8 + time::Duration::days(1), "n1", true),
            &T,
        );
        assert!(!p.volume_flagged);
        assert_eq!(p.trailing[TRAILING_DAYS - 1], 82);
    }

    #[test]
    fn a_young_device_raises_no_baseline_flags() {
        let at = datetime!(2026-11-01 03:00 UTC);
        let mut p = AccessProfile::new("d", at.unix_timestamp().div_euclid(86_400));
        for n in 0..50 {
            let flags = observe(
                &mut p,
                &access(at + time::Duration::seconds(n), "x", n > 0),
                &T,
            );
            assert!(flags.is_empty(), "{n}: {flags:?}");
        }
        // 50 on its first day: no trailing week yet, so no volume flag.
        assert!(!p.volume_flagged);
    }

    #[test]
    fn decommissioned_devices_and_revoked_holders_are_flagged_at_once() {
        let at = datetime!(2026-11-01 10:00 UTC);
        let mut p = AccessProfile::new("d", 0);
        let mut a = access(at, "spiffe://x/device/acme/2", false);
        a.device_decommissioned = true;
        a.holder_revoked = true;
        let flags = observe(&mut p, &a, &T);
        assert_eq!(
            kinds(&flags),
            [FlagKind::DecommissionedDevice, FlagKind::RevokedHolder]
        );
        let day = time::Duration::days(1);
        let cert = |nb, na, rv| (nb, na, rv);
        // Revoked before the access, and nothing else valid then.
        assert!(holder_revoked_at(
            &[cert(
                at - day,
                at + day,
                Some(at - time::Duration::hours(1))
            )],
            at
        ));
        // Revoked only after it.
        assert!(!holder_revoked_at(
            &[cert(
                at - day,
                at + day,
                Some(at + time::Duration::hours(1))
            )],
            at
        ));
        // A renewal still valid and unrevoked beside the revoked one.
        assert!(!holder_revoked_at(
            &[
                cert(at - day, at + day, Some(at - time::Duration::hours(1))),
                cert(at - day, at + day, None)
            ],
            at
        ));
        // Nothing valid at all (expired): not a revocation.
        assert!(!holder_revoked_at(
            &[cert(at - day * 3, at - day, Some(at - day * 2))],
            at
        ));
    }

    #[test]
    fn hours_and_days_are_counted_in_the_configured_local_time() {
        let cet = Thresholds {
            offset: time::UtcOffset::from_hms(1, 0, 0).unwrap(),
            ..T
        };
        assert_eq!(cet.zone(), "UTC+01:00");
        assert_eq!(T.zone(), "UTC");
        let at = datetime!(2026-11-01 23:30 UTC);
        let (day, hour) = cet.day_and_hour(at);
        assert_eq!(hour, 0, "00:30 in UTC+01:00");
        assert_eq!(day, T.day_and_hour(at).0 + 1, "already the next day there");
        let west = Thresholds {
            offset: time::UtcOffset::from_hms(-5, -30, 0).unwrap(),
            ..T
        };
        assert_eq!(west.zone(), "UTC-05:30");
        assert_eq!(west.day_and_hour(at).1, 18);
        assert!(FlagKind::UnusualHour.describe(&cet).contains("(UTC+01:00)"));
    }

    #[test]
    fn late_reports_count_in_the_hours_not_in_the_day() {
        let at = datetime!(2026-11-10 10:00 UTC);
        let mut p = AccessProfile::new("d", at.unix_timestamp().div_euclid(86_400));
        observe(&mut p, &access(at, "n", false), &T);
        observe(&mut p, &access(at - time::Duration::days(2), "n", true), &T);
        assert_eq!((p.accesses, p.day_count), (2, 1));
        assert_eq!(FlagKind::parse("volume"), Some(FlagKind::Volume));
        assert_eq!(FlagKind::parse("sneaky"), None);
    }
}
