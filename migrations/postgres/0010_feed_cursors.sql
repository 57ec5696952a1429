-- How far each audit feed (the IHE ATNA feed to an Audit Record Repository) has been sent:
-- the ledger's events through sent_through. The feed resumes from here after a restart.
CREATE TABLE feed_cursors (
    destination  TEXT PRIMARY KEY,
    sent_through BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);
