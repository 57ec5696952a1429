-- Retention (medid audit archive): the events up to last_seq were written to a verified
-- archive bundle, whose SHA-256 is kept here, and their rows may be dropped. The stored tree
-- (merkle_nodes) keeps covering them, so proofs and consistency across the archived range
-- still verify. Archives are contiguous: each starts where the previous one ended.
CREATE TABLE audit_archives (
    last_seq      BIGINT PRIMARY KEY,
    first_seq     BIGINT NOT NULL,
    -- The signed checkpoint at tree size last_seq that the bundle verifies against.
    root_hash     TEXT NOT NULL,
    note          TEXT NOT NULL,
    bundle_sha256 TEXT NOT NULL,
    archived_at   BIGINT NOT NULL
);

CREATE FUNCTION audit_archives_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'archive records are append-only';
END;
$$;
CREATE TRIGGER audit_archives_no_change BEFORE UPDATE OR DELETE ON audit_archives
    FOR EACH ROW EXECUTE FUNCTION audit_archives_append_only();

-- Only archived events may be dropped; every other event stays append-only.
CREATE FUNCTION audit_events_drop_archived_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.seq > (SELECT COALESCE(MAX(last_seq), 0) FROM audit_archives) THEN
        RAISE EXCEPTION 'audit events are append-only (only archived events may be dropped)';
    END IF;
    RETURN OLD;
END;
$$;
DROP TRIGGER audit_events_no_delete ON audit_events;
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_drop_archived_only();
