//! The store as each consumer sees it: one narrow trait per part of the service, all
//! implemented by [`Store`](super::Store). A module imports the traits of what it uses, so
//! what it may ask of the database is written at its top (docs/ARCHITECTURE.md).

#![allow(clippy::too_many_arguments)]

use std::future::Future;

use time::OffsetDateTime;

use super::anomaly::{AnomalyPass, Flag, FlagQuery};
use super::archive::{ArchiveCut, ArchiveRecord};
use super::certificates::{
    AdoptedCertificate, CensusRow, Completion, NewCertificate, PeerRecord, Recorded,
};
use super::ledger::{AuditQuery, LedgerEntry};
use super::lifecycle::{
    CertRecord, CrlHead, CrlRecord, CrlSaved, SignedCrl, SubjectChange, TokenRecord,
};
use super::recovery::{Recovered, RecoveryOutcome};
use super::registry::{DeviceQuery, DeviceRecord, ManufacturerRecord};
use super::stats::{Bucket, InventoryCounts};
use crate::audit::ledger::EventFields;
use crate::audit::merkle::Hash;
use crate::audit::AuditEvent;
use crate::audit::StoredEvent;
use crate::domain::{CertSerial, ManufacturerId, PkiFingerprint, RevocationReason};
use crate::error::Error;
use crate::issuance::{IssuerId, RevokedEntry, SignedCertificate};
use crate::policy::crl::CrlBasis;

/// The audit log's writes that change nothing else, and reading events back (refusals, the
/// aggregate, tests).
pub trait AuditLog {
    /// Records one event that changes nothing else (a refusal), group-committed with others;
    /// returns once it is durable.
    fn record_event(&self, event: &AuditEvent) -> impl Future<Output = Result<i64, Error>> + Send;

    /// Records events that change nothing else, in order, in one durable transaction.
    fn record_events(
        &self,
        events: &[AuditEvent],
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Events with sequence numbers in `after+1..`, oldest first, at most `limit`.
    fn audit_events(
        &self,
        after: i64,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<StoredEvent>, Error>> + Send;
}

/// Retention of the audit log (`medid audit archive`, and whatever must start after the
/// archived events: integrity checks, exports, proofs).
pub trait Retention {
    /// Every archive recorded, oldest first.
    fn archives(&self) -> impl Future<Output = Result<Vec<ArchiveRecord>, Error>> + Send;

    /// How many events (from the first) are archived: their rows may be gone, and the live
    /// log starts after them. 0 when nothing was archived.
    fn archived_through(&self) -> impl Future<Output = Result<u64, Error>> + Send;

    /// The next archive of events recorded before `before`: from the end of the last archive
    /// to the largest signed checkpoint whose events were all recorded before `before`. None
    /// when no such checkpoint covers an event not yet archived.
    fn archive_cut(
        &self,
        before: OffsetDateTime,
    ) -> impl Future<Output = Result<Option<ArchiveCut>, Error>> + Send;

    /// Records `archive` (its bundle written and verified) with its audit `event`, in one
    /// transaction that also keeps the leaf hashes the stored tree needs once the rows are
    /// gone. The archive must start where the last one ended and end at a signed checkpoint
    /// with its root.
    fn record_archive(
        &self,
        archive: &ArchiveRecord,
        event: &AuditEvent,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Drops the rows of archived events still present, in bounded transactions (resuming a
    /// drop that was interrupted); `progress(dropped so far)` after each. Returns how many.
    fn drop_archived(
        &self,
        progress: impl FnMut(u64) + Send,
    ) -> impl Future<Output = Result<u64, Error>> + Send;
}

/// The Merkle ledger over the audit log: appending access events, leaf hashes, checkpoints,
/// filtered reads (service::ledger, /metrics).
pub trait MerkleLog {
    /// The number of events in the log (its tree size).
    fn tree_size(&self) -> impl Future<Output = Result<u64, Error>> + Send;

    /// Leaf hashes of events 1..=size, in order. A gap or a malformed hash is an error: the
    /// database was changed behind medid's back.
    fn leaf_hashes(&self, size: u64) -> impl Future<Output = Result<Vec<Hash>, Error>> + Send;

    /// Streams the leaf hashes of events 1..=size, in order, into `each(count so far, hash)`,
    /// holding one row at a time (memory stays flat however long the log is). A gap or a
    /// malformed hash is an integrity error: the database was changed behind medid's back.
    fn fold_leaf_hashes(
        &self,
        size: u64,
        each: impl FnMut(u64, Hash) + Send,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// [`Self::fold_leaf_hashes`] for events `after+1..=size` only.
    fn fold_leaf_hashes_after(
        &self,
        after: u64,
        size: u64,
        each: impl FnMut(u64, Hash) + Send,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// The roots of the leaf ranges of a proof ([`crate::audit::merkle::inclusion_ranges`],
    /// `consistency_ranges`), read from the stored tree: O(log n) reads each, whatever the
    /// log's length. An absent node is an integrity error.
    fn subtree_roots(
        &self,
        ranges: &[std::ops::Range<usize>],
    ) -> impl Future<Output = Result<Vec<Hash>, Error>> + Send;

    /// The compact range (the peaks) of the first `size` leaves, read from the stored tree in
    /// O(log n) reads: what an incremental integrity check extends.
    fn compact_range(
        &self,
        size: u64,
    ) -> impl Future<Output = Result<crate::audit::merkle::CompactRange, Error>> + Send;

    /// Compares recomputed subtree roots (level, index, root) with the stored tree; levels
    /// it does not store are skipped. The first one that differs or is absent is an
    /// integrity error naming it.
    fn check_stored_nodes(
        &self,
        nodes: &[(u32, u64, Hash)],
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// The first and last sequence numbers of events recorded in the window `from ..= to`
    /// (either end open), read from the time index (O(k) index entries, no event rows); none
    /// when no event was recorded then. A filtered read scans only this span.
    fn time_span(
        &self,
        from: Option<OffsetDateTime>,
        to: Option<OffsetDateTime>,
    ) -> impl Future<Output = Result<Option<(i64, i64)>, Error>> + Send;

    /// The leaf hash of event `seq`, as stored.
    fn leaf_hash(&self, seq: i64) -> impl Future<Output = Result<Option<Hash>, Error>> + Send;

    /// Extends the stored tree over events appended before it existed (a database from an
    /// earlier release), in transactions of a bounded number of leaves; returns how many
    /// leaves it added. Runs at start, before the service answers.
    fn build_tree(&self) -> impl Future<Output = Result<u64, Error>> + Send;

    /// Appends events (a batch of access events), group-committed with other callers' events in
    /// one transaction: all of them or none. Returns once durable.
    fn append_events(
        &self,
        events: Vec<AuditEvent>,
    ) -> impl Future<Output = Result<Vec<i64>, Error>> + Send;

    /// Appends access events like [`append_events`](Self::append_events), each with its
    /// reporter's event id if it has one: an event whose actor already reported that id (in
    /// the log, or earlier in the same batch) is not appended again, and its sequence number
    /// is the earlier event's. Returns one sequence number per event, in order.
    fn append_access(
        &self,
        events: Vec<(AuditEvent, Option<String>)>,
    ) -> impl Future<Output = Result<Vec<i64>, Error>> + Send;

    /// Stores a signed checkpoint; false if one for this tree size was already stored (by
    /// another replica: Ed25519 is deterministic, so it is the same note).
    fn save_checkpoint(
        &self,
        size: u64,
        root: &Hash,
        note: &str,
        at: OffsetDateTime,
    ) -> impl Future<Output = Result<bool, Error>> + Send;

    /// Every stored checkpoint note, oldest first.
    fn checkpoints(&self) -> impl Future<Output = Result<Vec<String>, Error>> + Send;

    /// How many leaves the stored tree covers (`merkle_state`).
    fn tree_covered(&self) -> impl Future<Output = Result<u64, Error>> + Send;

    /// The newest checkpoint: (tree size, note, signed at).
    fn latest_checkpoint(
        &self,
    ) -> impl Future<Output = Result<Option<(u64, String, OffsetDateTime)>, Error>> + Send;

    /// Events with `after < seq <= up_to` matching `q`, oldest first, at most `limit`.
    fn ledger_entries(
        &self,
        q: &AuditQuery,
        after: i64,
        up_to: i64,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<LedgerEntry>, Error>> + Send;

    /// [`Self::ledger_entries`] lent to `each(seq, fields, leaf hash)` one at a time, with
    /// nothing copied out of the row: the export writes its lines straight from them.
    fn scan_ledger(
        &self,
        q: &AuditQuery,
        after: i64,
        up_to: i64,
        limit: i64,
        each: &mut (dyn FnMut(i64, EventFields<'_>, &str) -> Result<(), Error> + Send),
    ) -> impl Future<Output = Result<(), Error>> + Send;
}

/// Where each audit feed (the ATNA feed to an Audit Record Repository) has got to in the
/// ledger: the durable cursor it resumes from after restarts.
pub trait FeedCursors {
    /// The sequence number through which `destination` has been sent (0: nothing yet).
    fn feed_cursor(&self, destination: &str) -> impl Future<Output = Result<u64, Error>> + Send;

    /// Records that `destination` has been sent everything through `seq`.
    fn set_feed_cursor(
        &self,
        destination: &str,
        seq: u64,
        at: OffsetDateTime,
    ) -> impl Future<Output = Result<(), Error>> + Send;
}

/// The PKI a database belongs to (start-up, rollover).
pub trait PkiBinding {
    /// Every recorded fingerprint.
    fn pki_binding(&self) -> impl Future<Output = Result<Vec<PkiFingerprint>, Error>> + Send;

    /// Records `fingerprints` (those already recorded are skipped) and `event`, in one
    /// transaction. When every one was already recorded (another replica got there first),
    /// nothing is written and the answer is false.
    fn bind_pki(
        &self,
        fingerprints: &[PkiFingerprint],
        event: &AuditEvent,
    ) -> impl Future<Output = Result<bool, Error>> + Send;
}

/// Issued certificates: recording one with what it completes, finding a peer by its fingerprint, reading and counting them (the issuance cycle, authentication, the service’s own certificates, /metrics).
pub trait CertificateLedger {
    /// Issuance step 3: in one transaction, check the claim (uniqueness, key binding, the
    /// renewing caller still good) under the write lock, store the signed certificate as
    /// active, create what it completes (the device or principal row; superseded
    /// certificates revoked), and append the success event. A refusal changes nothing.
    fn record_new(
        &self,
        r: &NewCertificate,
        signed: &SignedCertificate,
        completion: &Completion,
        event: &AuditEvent,
    ) -> impl Future<Output = Result<Recorded, Error>> + Send;

    /// Records a certificate signed outside the cycle (by `medid ca init`, before any store
    /// existed), with its principal and audit event, unless it is already known.
    /// Returns true if it was recorded now.
    fn adopt_certificate(
        &self,
        c: &AdoptedCertificate,
        completion: &Completion,
        event: &AuditEvent,
    ) -> impl Future<Output = Result<bool, Error>> + Send;

    /// The certificate whose DER has this SHA-256, with its subject's state.
    fn peer_by_fingerprint(
        &self,
        fp: &str,
    ) -> impl Future<Output = Result<Option<PeerRecord>, Error>> + Send;

    /// How many certificates there are of each profile in each state, and of the active
    /// ones how many have not ended at `now` and end within each span of `within` (at most
    /// two). One pass over the `certificates_census` index, not over the rows.
    fn certificate_census(
        &self,
        now: OffsetDateTime,
        within: [time::Duration; 2],
    ) -> impl Future<Output = Result<Vec<CensusRow>, Error>> + Send;
}

/// Reading certificate rows back: one by issuer and serial, a subject's, those ending (revocation, status, rotation, ListExpiring).
pub trait CertificateRecords {
    fn certificate(
        &self,
        issuer: IssuerId,
        serial: &CertSerial,
    ) -> impl Future<Output = Result<Option<CertRecord>, Error>> + Send;

    /// Every certificate of a subject, oldest first.
    fn certificates_of(
        &self,
        subject_uri: &str,
    ) -> impl Future<Output = Result<Vec<CertRecord>, Error>> + Send;

    /// Active certificates with a finite notAfter at or before `before`, soonest first.
    fn expiring(
        &self,
        before: OffsetDateTime,
        manufacturer: Option<&ManufacturerId>,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<CertRecord>, Error>> + Send;
}

/// Revocation and CRLs (revocation use cases, publication, restore).
pub trait RevocationStore {
    /// Revokes the given certificates (those not yet revoked) — and, with `subject`, every
    /// certificate of that subject as it stands inside the transaction — optionally decommissions a device or disables a principal, and appends
    /// `event`, in one transaction. Returns the serials revoked now.
    fn revoke(
        &self,
        targets: &[(IssuerId, CertSerial)],
        subject: Option<&str>,
        reason: Option<RevocationReason>,
        change: SubjectChange<'_>,
        event: &AuditEvent,
    ) -> impl Future<Output = Result<Vec<(IssuerId, CertSerial)>, Error>> + Send;

    /// `issuer`'s last CRL number and thisUpdate, which the next CRL is planned from
    /// ([`crate::policy::crl::next`]).
    fn crl_basis(&self, issuer: IssuerId) -> impl Future<Output = Result<CrlBasis, Error>> + Send;

    /// `issuer`'s revoked certificates whose notAfter is at or after `listed_from`, by serial:
    /// the entries of its next CRL.
    fn crl_entries(
        &self,
        issuer: IssuerId,
        listed_from: OffsetDateTime,
    ) -> impl Future<Output = Result<Vec<RevokedEntry>, Error>> + Send;

    /// Records a CRL planned from `crl.basis`, with its `event`, if that is still the
    /// issuer's last CRL under the write lock; otherwise stores nothing and answers
    /// [`CrlSaved::Stale`] (another replica's CRL came first: plan and sign again). So numbers
    /// rise by one with exactly one CRL per number. A CRL lists every revocation committed
    /// before it was planned; one committed after is on the CRL its own publication signs.
    fn record_crl(
        &self,
        issuer: IssuerId,
        crl: &SignedCrl,
        event: &AuditEvent,
    ) -> impl Future<Output = Result<CrlSaved, Error>> + Send;

    fn latest_crl(
        &self,
        issuer: IssuerId,
    ) -> impl Future<Output = Result<Option<CrlRecord>, Error>> + Send;

    /// When the newest revocation of one of `issuer`'s certificates was recorded: a CRL
    /// signed before then is owed a successor (its signing failed, say with the key's token
    /// away). One read of an index.
    fn latest_revocation(
        &self,
        issuer: IssuerId,
    ) -> impl Future<Output = Result<Option<OffsetDateTime>, Error>> + Send;

    /// The newest CRL's number and validity (`/metrics`), without reading its body.
    fn crl_head(
        &self,
        issuer: IssuerId,
    ) -> impl Future<Output = Result<Option<CrlHead>, Error>> + Send;
}

/// Re-applying revocations from kept CRLs after a restore (service::restore).
pub trait RecoveryStore {
    /// In one transaction: every entry of `issuer`'s kept CRL number `number` that is not
    /// revoked here is revoked as the CRL says (a serial without a row gets a revoked row
    /// whose `not_after` is `unknown_not_after`, so it stays on CRLs), one event each from
    /// `event_for`; and the issuer's CRL number is moved to at least `number`, so the next
    /// CRL's number is larger than any published (RFC 5280 §5.2.3).
    fn recover_revocations(
        &self,
        issuer: IssuerId,
        number: u64,
        entries: &[RevokedEntry],
        unknown_not_after: OffsetDateTime,
        now: OffsetDateTime,
        event_for: impl Fn(&Recovered) -> AuditEvent + Send,
    ) -> impl Future<Output = Result<RecoveryOutcome, Error>> + Send;
}

/// One-time enrollment tokens, by hash (token enrollment).
pub trait TokenStore {
    /// Stores a new enrollment token (by hash) with its audit event.
    fn create_token(
        &self,
        t: &TokenRecord,
        event: &AuditEvent,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    fn token(
        &self,
        token_sha256: &str,
    ) -> impl Future<Output = Result<Option<TokenRecord>, Error>> + Send;
}

/// Manufacturers, devices and principals (the registry use cases, enrollment).
pub trait Registry {
    /// Creates a manufacturer and records `event` in the same transaction.
    fn create_manufacturer(
        &self,
        m: &ManufacturerRecord,
        event: &AuditEvent,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    fn manufacturer(
        &self,
        id: &ManufacturerId,
    ) -> impl Future<Output = Result<ManufacturerRecord, Error>> + Send;

    /// A station's, gateway's, auditor's or admin's state, if it exists.
    fn principal_state(
        &self,
        uri: &str,
    ) -> impl Future<Output = Result<Option<crate::domain::SubjectState>, Error>> + Send;

    fn manufacturers(&self) -> impl Future<Output = Result<Vec<ManufacturerRecord>, Error>> + Send;

    fn device(
        &self,
        manufacturer: &ManufacturerId,
        serial: &str,
    ) -> impl Future<Output = Result<DeviceRecord, Error>> + Send;

    fn device_by_uri(&self, uri: &str) -> impl Future<Output = Result<DeviceRecord, Error>> + Send;

    /// One page of devices ordered by (manufacturer, serial), and the token of the next page.
    fn devices(
        &self,
        q: &DeviceQuery,
    ) -> impl Future<Output = Result<(Vec<DeviceRecord>, Option<String>), Error>> + Send;
}

/// The console's counts (`store::stats`): aggregates over an index, read-only.
pub trait ConsoleStats {
    /// Devices by state, certificates ending within 7 and 30 days of `now`, revocations of
    /// the 24 hours before it.
    fn inventory_counts(
        &self,
        now: OffsetDateTime,
    ) -> impl Future<Output = Result<InventoryCounts, Error>> + Send;

    /// Active certificates by the UTC day they end, from `from` through the day `days` days
    /// later: (day start in seconds since the epoch, count), days with none left out.
    fn certificates_ending_by_day(
        &self,
        from: OffsetDateTime,
        days: i64,
    ) -> impl Future<Output = Result<Vec<(i64, u64)>, Error>> + Send;

    /// Events matching `q`, by buckets of `seconds`, oldest first; empty buckets left out.
    fn audit_buckets(
        &self,
        q: &AuditQuery,
        seconds: i64,
    ) -> impl Future<Output = Result<Vec<Bucket>, Error>> + Send;
}

/// The access-anomaly watcher's state and its flags (`store::anomaly`).
pub trait AnomalyStore {
    /// The stored profiles of these devices (those never seen are absent).
    fn access_profiles(
        &self,
        devices: &[String],
    ) -> impl Future<
        Output = Result<
            std::collections::HashMap<String, crate::policy::anomaly::AccessProfile>,
            Error,
        >,
    > + Send;

    /// Which of `users` have reached `device` before.
    fn known_contacts(
        &self,
        device: &str,
        users: &[String],
    ) -> impl Future<Output = Result<std::collections::HashSet<String>, Error>> + Send;

    /// Saves one pass over the events `from < seq <= through` with the cursor moved to
    /// `through`, in one transaction; `false` (and nothing saved) when the cursor was no
    /// longer at `from` (another replica made that pass).
    fn save_anomaly_pass(
        &self,
        pass: AnomalyPass,
        from: u64,
        through: u64,
        at: OffsetDateTime,
    ) -> impl Future<Output = Result<bool, Error>> + Send;

    /// Flags, newest first.
    fn flags(&self, q: &FlagQuery) -> impl Future<Output = Result<Vec<Flag>, Error>> + Send;

    /// Flags by kind for accesses since `since`.
    fn flag_counts(
        &self,
        since: OffsetDateTime,
    ) -> impl Future<Output = Result<Vec<(crate::policy::anomaly::FlagKind, u64)>, Error>> + Send;
}
