-- Access-anomaly flags (docs/CONSOLE.md "Access-anomaly flags"), computed incrementally from
-- the ledger's access events in order, through the cursor 'anomaly-flags' in feed_cursors,
-- written in the same transaction as the state they change.

-- What each device's accesses have looked like so far.
CREATE TABLE access_profiles (
    device_uri    TEXT PRIMARY KEY,
    -- Access events seen for the device.
    accesses      INTEGER NOT NULL,
    -- 24 counts, comma-separated: its accesses by UTC hour of the day.
    hours         TEXT NOT NULL,
    -- The UTC day (days since the epoch) of its first access and of its latest.
    first_day     INTEGER NOT NULL,
    day           INTEGER NOT NULL,
    -- Accesses on day so far, and whether day has raised its volume flag.
    day_count     INTEGER NOT NULL,
    volume_flagged INTEGER NOT NULL,
    -- Its accesses on each of the 7 days before day, oldest first, comma-separated.
    trailing_days TEXT NOT NULL
);

-- Who (the access event's user_id) has reached which device.
CREATE TABLE access_contacts (
    device_uri TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    PRIMARY KEY (device_uri, user_id)
);

-- One row per flag: the event that raised it and why, in words and numbers.
CREATE TABLE access_flags (
    seq         INTEGER NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('unusual-hour', 'first-contact', 'volume',
                                              'decommissioned-device', 'revoked-holder')),
    device_uri  TEXT NOT NULL,
    user_id     TEXT,
    occurred_at INTEGER NOT NULL,
    explanation TEXT NOT NULL,
    PRIMARY KEY (seq, kind)
);
CREATE INDEX access_flags_by_device ON access_flags (device_uri, seq);
CREATE INDEX access_flags_by_kind ON access_flags (kind, seq);
