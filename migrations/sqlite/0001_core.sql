-- medid core schema (SQLite). Times are Unix seconds (UTC); serials and hashes lowercase hex.

CREATE TABLE manufacturers (
    id             TEXT PRIMARY KEY,
    display_name   TEXT NOT NULL,
    -- JSON array of model names; empty array = any model.
    allowed_models TEXT NOT NULL,
    created_at     INTEGER NOT NULL
);

-- Non-device principals: admins, manufacturer stations, gateways, auditors.
CREATE TABLE principals (
    uri             TEXT PRIMARY KEY,
    role            TEXT NOT NULL CHECK (role IN ('admin', 'manufacturer-station', 'gateway', 'auditor')),
    principal_id    TEXT NOT NULL,
    manufacturer_id TEXT REFERENCES manufacturers (id),
    state           TEXT NOT NULL CHECK (state IN ('active', 'disabled')),
    created_at      INTEGER NOT NULL,
    CHECK ((role = 'manufacturer-station') = (manufacturer_id IS NOT NULL))
);

CREATE TABLE devices (
    manufacturer_id TEXT NOT NULL REFERENCES manufacturers (id),
    serial          TEXT NOT NULL,
    model           TEXT NOT NULL,
    udi_di          TEXT,
    uri             TEXT NOT NULL UNIQUE,
    state           TEXT NOT NULL CHECK (state IN ('active', 'decommissioned')),
    enrolled_at     INTEGER NOT NULL,
    birth_serial    TEXT NOT NULL,
    PRIMARY KEY (manufacturer_id, serial)
);

-- Every certificate medid has signed or may have signed (docs/ISSUANCE-CYCLE.md).
-- 'reserved': serial and intent recorded, not yet signed or not yet recorded;
-- 'active': signed and recorded; 'revoked': see revoked_at and revocation_reason.
CREATE TABLE certificates (
    issuer            TEXT NOT NULL CHECK (issuer IN ('device-identity', 'operational')),
    serial            TEXT NOT NULL,
    profile           TEXT NOT NULL,
    role              TEXT NOT NULL,
    subject_uri       TEXT NOT NULL,
    spki_sha256       TEXT NOT NULL,
    not_before        INTEGER NOT NULL,
    not_after         INTEGER NOT NULL,
    status            TEXT NOT NULL CHECK (status IN ('reserved', 'active', 'revoked')),
    reserved_at       INTEGER NOT NULL,
    der               BLOB,
    -- SHA-256 of der: how a TLS peer certificate is found on every RPC.
    fingerprint       TEXT UNIQUE,
    revoked_at        INTEGER,
    -- RFC 5280 §5.3.1 reason code; NULL when revoked without a stated reason.
    revocation_reason INTEGER,
    PRIMARY KEY (issuer, serial),
    -- An active certificate has its DER; a reservation has none yet; a revoked reservation
    -- (abandoned, never delivered) keeps none.
    CHECK (status <> 'active' OR der IS NOT NULL),
    CHECK (status <> 'reserved' OR der IS NULL),
    CHECK ((status = 'revoked') = (revoked_at IS NOT NULL))
);
CREATE INDEX certificates_by_spki ON certificates (spki_sha256);
CREATE INDEX certificates_by_subject ON certificates (subject_uri);
CREATE INDEX certificates_reserved ON certificates (reserved_at) WHERE status = 'reserved';

-- Append-only audit events with a gap-free sequence (the Merkle ledger builds on this).
CREATE TABLE audit_events (
    seq         INTEGER PRIMARY KEY,
    recorded_at INTEGER NOT NULL,
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

CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit events are append-only');
END;

CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit events are append-only');
END;
