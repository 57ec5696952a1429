-- Retention (medid audit archive): the events up to last_seq were written to a verified
-- archive bundle, whose SHA-256 is kept here, and their rows may be dropped. The stored tree
-- (merkle_nodes) keeps covering them, so proofs and consistency across the archived range
-- still verify. Archives are contiguous: each starts where the previous one ended.
CREATE TABLE audit_archives (
    last_seq      INTEGER PRIMARY KEY,
    first_seq     INTEGER NOT NULL,
    -- The signed checkpoint at tree size last_seq that the bundle verifies against.
    root_hash     TEXT NOT NULL,
    note          TEXT NOT NULL,
    bundle_sha256 TEXT NOT NULL,
    archived_at   INTEGER NOT NULL
);

CREATE TRIGGER audit_archives_no_update BEFORE UPDATE ON audit_archives
BEGIN
    SELECT RAISE(ABORT, 'archive records are append-only');
END;

CREATE TRIGGER audit_archives_no_delete BEFORE DELETE ON audit_archives
BEGIN
    SELECT RAISE(ABORT, 'archive records are append-only');
END;

-- Only archived events may be dropped; every other event stays append-only.
DROP TRIGGER audit_events_no_delete;
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
WHEN OLD.seq > (SELECT COALESCE(MAX(last_seq), 0) FROM audit_archives)
BEGIN
    SELECT RAISE(ABORT, 'audit events are append-only (only archived events may be dropped)');
END;
