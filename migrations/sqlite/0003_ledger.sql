-- Signed checkpoints of the audit Merkle log, one per tree size.
CREATE TABLE audit_checkpoints (
    tree_size INTEGER PRIMARY KEY,
    root_hash TEXT NOT NULL,
    note      TEXT NOT NULL,
    signed_at INTEGER NOT NULL
);

CREATE INDEX audit_events_by_action ON audit_events (action);
CREATE INDEX audit_events_by_time ON audit_events (recorded_at);
