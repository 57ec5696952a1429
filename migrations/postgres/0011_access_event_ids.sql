-- The ids reporters (gateways) give their access events, so an event sent again after a
-- crash or a lost acknowledgement is not recorded twice: (actor, id) names one event.
-- Rows leave with the events they name when those are archived.
CREATE TABLE access_event_ids (
    actor_uri TEXT NOT NULL,
    event_id  TEXT NOT NULL,
    seq       BIGINT NOT NULL,
    PRIMARY KEY (actor_uri, event_id)
);
CREATE INDEX access_event_ids_seq ON access_event_ids (seq);
