-- medid schema (PostgreSQL): the SQLite schema of migrations/sqlite/0001–0004, written for
-- PostgreSQL. Times are Unix seconds (UTC) as BIGINT; serials and hashes lowercase hex.

CREATE TABLE manufacturers (
    id             TEXT PRIMARY KEY,
    display_name   TEXT NOT NULL,
    -- JSON array of model names; empty array = any model.
    allowed_models TEXT NOT NULL,
    created_at     BIGINT NOT NULL
);

-- Non-device principals: admins, manufacturer stations, gateways, auditors.
CREATE TABLE principals (
    uri             TEXT PRIMARY KEY,
    role            TEXT NOT NULL CHECK (role IN ('admin', 'manufacturer-station', 'gateway', 'auditor')),
    principal_id    TEXT NOT NULL,
    manufacturer_id TEXT REFERENCES manufacturers (id),
    state           TEXT NOT NULL CHECK (state IN ('active', 'disabled')),
    created_at      BIGINT NOT NULL,
    CHECK ((role = 'manufacturer-station') = (manufacturer_id IS NOT NULL))
);

CREATE TABLE devices (
    manufacturer_id TEXT NOT NULL REFERENCES manufacturers (id),
    serial          TEXT NOT NULL,
    model           TEXT NOT NULL,
    udi_di          TEXT,
    uri             TEXT NOT NULL UNIQUE,
    state           TEXT NOT NULL CHECK (state IN ('active', 'decommissioned')),
    enrolled_at     BIGINT NOT NULL,
    birth_serial    TEXT NOT NULL,
    PRIMARY KEY (manufacturer_id, serial)
);

-- Every certificate medid has signed or may have signed (docs/ISSUANCE-CYCLE.md).
CREATE TABLE certificates (
    issuer            TEXT NOT NULL CHECK (issuer IN ('device-identity', 'operational')),
    serial            TEXT NOT NULL,
    profile           TEXT NOT NULL,
    role              TEXT NOT NULL,
    subject_uri       TEXT NOT NULL,
    spki_sha256       TEXT NOT NULL,
    not_before        BIGINT NOT NULL,
    not_after         BIGINT NOT NULL,
    status            TEXT NOT NULL CHECK (status IN ('reserved', 'active', 'revoked')),
    reserved_at       BIGINT NOT NULL,
    der               BYTEA,
    fingerprint       TEXT UNIQUE,
    revoked_at        BIGINT,
    revocation_reason BIGINT,
    issue_order       BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (issuer, serial),
    CHECK (status <> 'active' OR der IS NOT NULL),
    CHECK (status <> 'reserved' OR der IS NULL),
    CHECK ((status = 'revoked') = (revoked_at IS NOT NULL))
);
CREATE INDEX certificates_by_spki ON certificates (spki_sha256);
CREATE INDEX certificates_by_subject ON certificates (subject_uri);
CREATE INDEX certificates_reserved ON certificates (reserved_at) WHERE status = 'reserved';
CREATE INDEX certificates_revoked ON certificates (issuer, not_after) WHERE status = 'revoked';
CREATE INDEX certificates_expiry ON certificates (not_after) WHERE status = 'active';
CREATE INDEX certificates_by_issue_order ON certificates (issue_order);

-- Append-only audit events with a gap-free sequence (the Merkle ledger builds on this).
CREATE TABLE audit_events (
    seq         BIGINT PRIMARY KEY,
    recorded_at BIGINT NOT NULL,
    actor_uri   TEXT NOT NULL,
    actor_role  TEXT NOT NULL,
    action      TEXT NOT NULL,
    target      TEXT NOT NULL,
    outcome     TEXT NOT NULL CHECK (outcome IN ('success', 'refused', 'denied', 'failed')),
    reason      TEXT,
    -- JSON object with action-specific fields. Never keys, tokens or secrets.
    detail      TEXT NOT NULL,
    -- RFC 9162 leaf hash, hex: SHA-256(0x00 ‖ RFC 8785 canonical JSON of the event with its seq).
    leaf_hash   TEXT NOT NULL
);
CREATE INDEX audit_events_by_action ON audit_events (action);
CREATE INDEX audit_events_by_time ON audit_events (recorded_at);

CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit events are append-only';
END;
$$;
CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();

-- The last CRL number issued per issuing CA; strictly increasing (RFC 5280 §5.2.3).
CREATE TABLE crl_numbers (
    issuer      TEXT PRIMARY KEY CHECK (issuer IN ('device-identity', 'operational')),
    last_number BIGINT NOT NULL
);

-- Every CRL signed, one row per (issuer, number).
CREATE TABLE crls (
    issuer      TEXT NOT NULL,
    number      BIGINT NOT NULL,
    this_update BIGINT NOT NULL,
    next_update BIGINT NOT NULL,
    der         BYTEA NOT NULL,
    PRIMARY KEY (issuer, number)
);

-- One-time enrollment tokens; only the SHA-256 of the token is stored.
CREATE TABLE enrollment_tokens (
    token_sha256    TEXT PRIMARY KEY,
    manufacturer_id TEXT NOT NULL REFERENCES manufacturers (id),
    serial          TEXT NOT NULL,
    model           TEXT,
    expires_at      BIGINT NOT NULL,
    created_by      TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    used_at         BIGINT
);

-- Signed checkpoints of the audit Merkle log, one per tree size.
CREATE TABLE audit_checkpoints (
    tree_size BIGINT PRIMARY KEY,
    root_hash TEXT NOT NULL,
    note      TEXT NOT NULL,
    signed_at BIGINT NOT NULL
);
