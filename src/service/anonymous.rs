//! Refusals of callers that are not authenticated: no client certificate, a certificate medid
//! does not know or that is no longer active, an unknown enrollment token.
//!
//! Anyone can send these, as fast as the network carries them, so each costs neither a
//! signature nor a ledger entry of its own:
//!
//! - each source address has a token bucket of refusals (`burst`, refilled at `per_second`);
//!   once it is empty, that source's unauthenticated requests are refused before any lookup
//!   (RESOURCE_EXHAUSTED) until it refills;
//! - every refusal is counted per (source, reason) and written as one aggregated event per
//!   interval (`auth.refused.aggregate`: count, first and last time), so the ledger grows by at
//!   most `max_sources + reasons` events an interval however many requests arrive, and every
//!   refusal is still counted. Sources beyond `max_sources` in one interval are counted
//!   together under `source/other`.
//!
//! Counts not yet written are lost if the process dies (at most one interval's); a clean
//! shutdown writes them, and a write that fails keeps them for the next. Flushes run one at a
//! time, so one that returns has written everything counted before it began.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

use time::OffsetDateTime;

use crate::audit::{Actor, AuditEvent, Outcome, Target};
use crate::error::Error;

/// Why an unauthenticated request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AnonymousReason {
    /// No client certificate on a call that needs one.
    NoCertificate,
    /// A certificate that chains to medid's CAs but is not one medid recorded.
    UnknownCertificate,
    /// A recorded certificate that is revoked, expired, not yet valid, or whose holder is
    /// disabled or decommissioned.
    InactiveCertificate,
    /// An enrollment token that is unknown, expired or used.
    BadToken,
    /// The source was over its refusal rate; refused before any lookup.
    RateLimited,
}

impl AnonymousReason {
    pub const ALL: [AnonymousReason; 5] = [
        AnonymousReason::NoCertificate,
        AnonymousReason::UnknownCertificate,
        AnonymousReason::InactiveCertificate,
        AnonymousReason::BadToken,
        AnonymousReason::RateLimited,
    ];

    /// The stable name recorded in the event's `reason_code`.
    pub fn name(self) -> &'static str {
        match self {
            AnonymousReason::NoCertificate => "no-certificate",
            AnonymousReason::UnknownCertificate => "unknown-certificate",
            AnonymousReason::InactiveCertificate => "inactive-certificate",
            AnonymousReason::BadToken => "bad-token",
            AnonymousReason::RateLimited => "rate-limited",
        }
    }

    fn message(self) -> &'static str {
        match self {
            AnonymousReason::NoCertificate => "no client certificate",
            AnonymousReason::UnknownCertificate => "a certificate medid did not record",
            AnonymousReason::InactiveCertificate => "an inactive certificate or holder",
            AnonymousReason::BadToken => "an unknown, expired or used enrollment token",
            AnonymousReason::RateLimited => "over the refusal rate of its source address",
        }
    }
}

/// The aggregate events' action name.
pub const AGGREGATE_ACTION: crate::audit::Action = crate::audit::Action::AuthRefusedAggregate;

/// Limits for unauthenticated refusals (docs/CONFIGURATION.md).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AnonymousLimits {
    /// Refusals a source may have in a burst before it is rate-limited.
    pub burst: u32,
    /// Refusals a second a source regains.
    pub per_second: u32,
    /// Distinct sources tallied separately in one interval.
    pub max_sources: usize,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// How often one (source, reason) was refused in the current interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub count: u64,
    pub first: OffsetDateTime,
    pub last: OffsetDateTime,
}

#[derive(Debug, Default)]
struct State {
    buckets: HashMap<IpAddr, Bucket>,
    /// None: the sources past `max_sources`.
    tallies: Tallies,
    sources: usize,
    /// Refusals since start, by reason (the order of [`AnonymousReason::ALL`]); never reset.
    totals: [u64; AnonymousReason::ALL.len()],
}

/// Rate limits and tallies of unauthenticated refusals.
#[derive(Debug)]
pub struct AnonymousRefusals {
    limits: AnonymousLimits,
    state: Mutex<State>,
    /// One flush at a time, so a flush that returns has written every refusal counted before
    /// it began, including those a concurrent (periodic) flush had already taken.
    flushing: tokio::sync::Mutex<()>,
}

/// Tallies taken from the current interval and not yet written.
type Tallies = BTreeMap<(Option<IpAddr>, AnonymousReason), Tally>;

impl AnonymousRefusals {
    pub fn new(limits: AnonymousLimits) -> Self {
        Self {
            limits: AnonymousLimits {
                burst: limits.burst.max(1),
                per_second: limits.per_second.max(1),
                max_sources: limits.max_sources.max(1),
            },
            state: Mutex::default(),
            flushing: tokio::sync::Mutex::new(()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .expect("anonymous refusal lock is never poisoned")
    }

    /// Whether `source` may have its unauthenticated request looked at. False: refuse it at
    /// once (the refusal is tallied here as rate-limited).
    pub fn admit(&self, source: IpAddr, now: OffsetDateTime) -> bool {
        let mut state = self.lock();
        let full = f64::from(self.limits.burst);
        let rate = f64::from(self.limits.per_second);
        let at = Instant::now();
        let bucket = state.buckets.entry(source).or_insert(Bucket {
            tokens: full,
            updated: at,
        });
        let regained = at.duration_since(bucket.updated).as_secs_f64() * rate;
        bucket.tokens = (bucket.tokens + regained).min(full);
        bucket.updated = at;
        if bucket.tokens >= 1.0 {
            return true;
        }
        Self::count(
            &mut state,
            self.limits.max_sources,
            source,
            AnonymousReason::RateLimited,
            now,
        );
        false
    }

    /// Counts one refusal of `source` for `reason`, and takes it from the source's bucket.
    pub fn refused(&self, source: IpAddr, reason: AnonymousReason, now: OffsetDateTime) {
        let mut state = self.lock();
        if let Some(bucket) = state.buckets.get_mut(&source) {
            bucket.tokens = (bucket.tokens - 1.0).max(0.0);
        }
        Self::count(&mut state, self.limits.max_sources, source, reason, now);
    }

    /// Refusals since start, by reason (`/metrics`).
    pub fn totals(&self) -> Vec<(AnonymousReason, u64)> {
        let state = self.lock();
        AnonymousReason::ALL
            .iter()
            .copied()
            .zip(state.totals.iter().copied())
            .collect()
    }

    fn count(
        state: &mut State,
        max_sources: usize,
        source: IpAddr,
        reason: AnonymousReason,
        now: OffsetDateTime,
    ) {
        if let Some(i) = AnonymousReason::ALL.iter().position(|r| *r == reason) {
            state.totals[i] += 1;
        }
        let known = AnonymousReason::ALL
            .iter()
            .any(|r| state.tallies.contains_key(&(Some(source), *r)));
        let key = if known || state.sources < max_sources {
            if !known {
                state.sources += 1;
            }
            (Some(source), reason)
        } else {
            (None, reason)
        };
        state
            .tallies
            .entry(key)
            .and_modify(|t| {
                t.count += 1;
                t.last = now;
            })
            .or_insert(Tally {
                count: 1,
                first: now,
                last: now,
            });
    }

    /// Ends the interval: its tallies go to `write` as the events that record them, and the
    /// next interval starts empty. If `write` fails, the tallies are put back to be written by
    /// the next flush, so no refusal goes uncounted while the store is unavailable.
    pub async fn flush<F, Fut>(&self, now: OffsetDateTime, write: F) -> Result<usize, Error>
    where
        F: FnOnce(Vec<AuditEvent>) -> Fut,
        Fut: std::future::Future<Output = Result<(), Error>>,
    {
        let _one = self.flushing.lock().await;
        let tallies = self.take();
        let events = events_of(now, &tallies);
        let written = events.len();
        match write(events).await {
            Ok(()) => Ok(written),
            Err(e) => {
                self.put_back(tallies);
                Err(e)
            }
        }
    }

    /// The tallies of the interval that ends now, as the events that record them; the next
    /// interval starts empty.
    #[cfg(test)]
    fn take_events(&self, now: OffsetDateTime) -> Vec<AuditEvent> {
        events_of(now, &self.take())
    }

    /// Takes the interval's tallies; buckets that are full again are forgotten.
    fn take(&self) -> Tallies {
        let mut state = self.lock();
        let tallies = std::mem::take(&mut state.tallies);
        state.sources = 0;
        let full = f64::from(self.limits.burst);
        let rate = f64::from(self.limits.per_second);
        let at = Instant::now();
        state
            .buckets
            .retain(|_, b| b.tokens + at.duration_since(b.updated).as_secs_f64() * rate < full);
        tallies
    }

    /// Merges tallies that could not be written into the current interval's.
    fn put_back(&self, tallies: Tallies) {
        let mut state = self.lock();
        for (key, tally) in tallies {
            state
                .tallies
                .entry(key)
                .and_modify(|t| {
                    t.count += tally.count;
                    t.first = t.first.min(tally.first);
                    t.last = t.last.max(tally.last);
                })
                .or_insert(tally);
        }
        let sources: std::collections::BTreeSet<IpAddr> =
            state.tallies.keys().filter_map(|(s, _)| *s).collect();
        state.sources = sources.len();
    }
}

fn events_of(now: OffsetDateTime, tallies: &Tallies) -> Vec<AuditEvent> {
    tallies
        .iter()
        .map(|(&(source, reason), &tally)| aggregate_event(now, source, reason, tally))
        .collect()
}

fn aggregate_event(
    now: OffsetDateTime,
    source: Option<IpAddr>,
    reason: AnonymousReason,
    tally: Tally,
) -> AuditEvent {
    let mut event = AuditEvent::new(
        now,
        Actor::unidentified(None),
        AGGREGATE_ACTION,
        Target::source(source),
    )
    .with("reason_code", reason.name())
    .with("count", tally.count)
    .with("first", tally.first.unix_timestamp())
    .with("last", tally.last.unix_timestamp());
    event.outcome = Outcome::Denied;
    event.reason = Some(format!(
        "{} unauthenticated requests refused: {}",
        tally.count,
        reason.message()
    ));
    event
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    fn limits() -> AnonymousLimits {
        AnonymousLimits {
            burst: 3,
            per_second: 1,
            max_sources: 2,
        }
    }

    #[test]
    fn a_source_past_its_burst_is_refused_before_any_lookup_and_every_refusal_is_counted() {
        let a = AnonymousRefusals::new(limits());
        let now = OffsetDateTime::UNIX_EPOCH;
        let mut looked_at = 0;
        for _ in 0..10 {
            if a.admit(ip(2), now) {
                looked_at += 1;
                a.refused(ip(2), AnonymousReason::NoCertificate, now);
            }
        }
        assert_eq!(looked_at, 3);
        let events = a.take_events(now);
        let counts: Vec<(String, u64)> = events
            .iter()
            .map(|e| {
                (
                    e.detail["reason_code"].as_str().unwrap().to_owned(),
                    e.detail["count"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            counts,
            vec![("no-certificate".into(), 3), ("rate-limited".into(), 7)]
        );
        assert!(events
            .iter()
            .all(|e| e.target == "urn:medid:source:127.0.0.2"));
        assert!(a.take_events(now).is_empty());
    }

    #[test]
    fn sources_past_the_cap_are_counted_together() {
        let a = AnonymousRefusals::new(limits());
        let now = OffsetDateTime::UNIX_EPOCH;
        for last in 2..8 {
            a.refused(ip(last), AnonymousReason::BadToken, now);
        }
        a.refused(ip(2), AnonymousReason::NoCertificate, now);
        let events = a.take_events(now);
        let targets: Vec<(&str, u64)> = events
            .iter()
            .map(|e| (e.target.as_str(), e.detail["count"].as_u64().unwrap()))
            .collect();
        assert_eq!(
            targets,
            vec![
                ("urn:medid:source:other", 4),
                ("urn:medid:source:127.0.0.2", 1),
                ("urn:medid:source:127.0.0.2", 1),
                ("urn:medid:source:127.0.0.3", 1),
            ]
        );
    }

    #[tokio::test]
    async fn a_failed_flush_keeps_its_counts_for_the_next_and_flushes_wait_for_each_other() {
        let a = std::sync::Arc::new(AnonymousRefusals::new(limits()));
        let now = OffsetDateTime::UNIX_EPOCH;
        a.refused(ip(2), AnonymousReason::BadToken, now);
        let failed = a
            .flush(now, |_| async {
                Err(Error::Unavailable("store down".into()))
            })
            .await;
        assert!(failed.is_err());
        a.refused(ip(2), AnonymousReason::BadToken, now);
        // A slow flush holds what it took; one that starts meanwhile returns after it.
        let (taken_tx, taken_rx) = tokio::sync::oneshot::channel();
        let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
        let written = std::sync::Arc::new(Mutex::new(Vec::new()));
        let slow = {
            let (a, written) = (a.clone(), written.clone());
            tokio::spawn(async move {
                a.flush(now, |events| async move {
                    let _ = taken_tx.send(());
                    let _ = release_rx.await;
                    written.lock().unwrap().extend(events);
                    Ok(())
                })
                .await
            })
        };
        taken_rx.await.unwrap();
        let second = {
            let (a, written) = (a.clone(), written.clone());
            tokio::spawn(async move {
                a.flush(now, |events| async move {
                    written.lock().unwrap().extend(events);
                    Ok(())
                })
                .await
            })
        };
        tokio::task::yield_now().await;
        assert!(!second.is_finished());
        release_tx.send(()).unwrap();
        assert_eq!(slow.await.unwrap().unwrap(), 1);
        assert_eq!(second.await.unwrap().unwrap(), 0);
        let counts: Vec<u64> = written
            .lock()
            .unwrap()
            .iter()
            .map(|e| e.detail["count"].as_u64().unwrap())
            .collect();
        assert_eq!(counts, vec![2]);
    }
}
