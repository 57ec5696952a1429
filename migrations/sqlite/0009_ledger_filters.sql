-- Filtered reads of the audit log by device (the event's target) and by actor walk an index,
-- in sequence order (the rowid ends every SQLite index), instead of the log. A patient
-- reference is not indexed: such an index halved stream ingest (docs/PERFORMANCE.md).
CREATE INDEX audit_events_by_target ON audit_events (target);
CREATE INDEX audit_events_by_actor ON audit_events (actor_uri);
