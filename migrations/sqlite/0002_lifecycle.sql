-- Certificate lifecycle: CRL numbering and history, one-time enrollment tokens.

-- The last CRL number issued per issuing CA; strictly increasing (RFC 5280 §5.2.3).
CREATE TABLE crl_numbers (
    issuer      TEXT PRIMARY KEY CHECK (issuer IN ('device-identity', 'operational')),
    last_number INTEGER NOT NULL
);

-- Every CRL signed, one row per (issuer, number).
CREATE TABLE crls (
    issuer      TEXT NOT NULL,
    number      INTEGER NOT NULL,
    this_update INTEGER NOT NULL,
    next_update INTEGER NOT NULL,
    der         BLOB NOT NULL,
    PRIMARY KEY (issuer, number)
);

-- One-time enrollment tokens for devices not enrolled at the factory. Only the SHA-256 of the
-- token is stored; the token itself is shown once, to its creator.
CREATE TABLE enrollment_tokens (
    token_sha256    TEXT PRIMARY KEY,
    manufacturer_id TEXT NOT NULL REFERENCES manufacturers (id),
    serial          TEXT NOT NULL,
    model           TEXT,
    expires_at      INTEGER NOT NULL,
    created_by      TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    used_at         INTEGER
);

CREATE INDEX certificates_revoked ON certificates (issuer, not_after) WHERE status = 'revoked';
CREATE INDEX certificates_expiry ON certificates (not_after) WHERE status = 'active';

-- Issuance order, assigned under the write lock: "newest" without ties at one-second times.
ALTER TABLE certificates ADD COLUMN issue_order INTEGER NOT NULL DEFAULT 0;
