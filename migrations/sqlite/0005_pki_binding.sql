-- The fingerprints of the PKI this database belongs to: its CA certificates and its
-- audit-signing key. A start with a PKI directory whose material is not recorded here is
-- refused. A part may have several rows (an issuing CA after a rollover).
CREATE TABLE pki_binding (
    part        TEXT    NOT NULL,
    sha256      TEXT    NOT NULL,
    recorded_at INTEGER NOT NULL,
    PRIMARY KEY (part, sha256)
);
