-- Issuing-CA rollover: an issuer is a generation's label, `operational` for the first and
-- `operational-2`, `operational-3`, ... after each `medid ca rotate`. SQLite cannot change a
-- CHECK constraint in place, so both tables are rebuilt with the wider one (a one-off copy).

CREATE TABLE certificates_new (
    issuer            TEXT NOT NULL CHECK (
        issuer IN ('device-identity', 'operational')
        OR (issuer GLOB 'device-identity-[1-9]*' AND substr(issuer, 17) NOT GLOB '*[^0-9]*'
            AND issuer <> 'device-identity-1')
        OR (issuer GLOB 'operational-[1-9]*' AND substr(issuer, 13) NOT GLOB '*[^0-9]*'
            AND issuer <> 'operational-1')
    ),
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
    fingerprint       TEXT UNIQUE,
    revoked_at        INTEGER,
    revocation_reason INTEGER,
    issue_order       INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (issuer, serial),
    CHECK (status <> 'active' OR der IS NOT NULL),
    CHECK (status <> 'reserved' OR der IS NULL),
    CHECK ((status = 'revoked') = (revoked_at IS NOT NULL))
);
INSERT INTO certificates_new (issuer, serial, profile, role, subject_uri, spki_sha256,
                              not_before, not_after, status, reserved_at, der, fingerprint,
                              revoked_at, revocation_reason, issue_order)
    SELECT issuer, serial, profile, role, subject_uri, spki_sha256, not_before, not_after,
           status, reserved_at, der, fingerprint, revoked_at, revocation_reason, issue_order
    FROM certificates;
DROP TABLE certificates;
ALTER TABLE certificates_new RENAME TO certificates;
CREATE INDEX certificates_by_spki ON certificates (spki_sha256);
CREATE INDEX certificates_by_subject ON certificates (subject_uri);
CREATE INDEX certificates_reserved ON certificates (reserved_at) WHERE status = 'reserved';
CREATE INDEX certificates_revoked ON certificates (issuer, not_after) WHERE status = 'revoked';
CREATE INDEX certificates_expiry ON certificates (not_after) WHERE status = 'active';
CREATE INDEX certificates_by_issue_order ON certificates (issue_order);

CREATE TABLE crl_numbers_new (
    issuer      TEXT PRIMARY KEY CHECK (
        issuer IN ('device-identity', 'operational')
        OR (issuer GLOB 'device-identity-[1-9]*' AND substr(issuer, 17) NOT GLOB '*[^0-9]*'
            AND issuer <> 'device-identity-1')
        OR (issuer GLOB 'operational-[1-9]*' AND substr(issuer, 13) NOT GLOB '*[^0-9]*'
            AND issuer <> 'operational-1')
    ),
    last_number INTEGER NOT NULL
);
INSERT INTO crl_numbers_new (issuer, last_number) SELECT issuer, last_number FROM crl_numbers;
DROP TABLE crl_numbers;
ALTER TABLE crl_numbers_new RENAME TO crl_numbers;
