-- Filtered reads of the audit log by device (the event's target) and by actor walk an index,
-- in sequence order, instead of the log. A patient reference is not indexed (see the SQLite
-- migration of the same name).
CREATE INDEX audit_events_by_target ON audit_events (target, seq);
CREATE INDEX audit_events_by_actor ON audit_events (actor_uri, seq);
