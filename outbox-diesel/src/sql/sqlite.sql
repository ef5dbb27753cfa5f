-- outbox migration 0001_outbox (copied from outbox-sqlx: the schema is shared), SQLite 3.35+.
--
-- Placeholders, substituted by outbox-diesel after validating the names (see `Tables`):
--   {entries}    the entries table, quoted, e.g. "outbox"
--   {aggregates} the aggregates table, e.g. "outbox_aggregates"
--   {name}       the bare table name (a validated identifier), inside quoted index names
-- Idempotent: running it again changes nothing. Same columns and meaning as the PostgreSQL and
-- MySQL files; ids are 16-byte BLOBs (UUID byte order), times INTEGER microseconds since the
-- Unix epoch (UTC), headers JSON text.

CREATE TABLE IF NOT EXISTS {entries} (
    id               BLOB    NOT NULL PRIMARY KEY,
    aggregate_type   TEXT    NOT NULL,
    aggregate_id     TEXT    NOT NULL,
    sequence         INTEGER NOT NULL,
    event_type       TEXT    NOT NULL,
    payload          BLOB    NOT NULL,
    content_type     TEXT    NOT NULL,
    headers          TEXT    NOT NULL,
    status           TEXT    NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    created_at       INTEGER NOT NULL,
    available_at     INTEGER NOT NULL,
    published_at     INTEGER,
    last_error       TEXT,
    lease_holder     TEXT,
    lease_expires_at INTEGER,
    UNIQUE (aggregate_type, aggregate_id, sequence)
);

CREATE INDEX IF NOT EXISTS "{name}_unpublished"
    ON {entries} (aggregate_type, aggregate_id, sequence) WHERE status <> 'published';

CREATE INDEX IF NOT EXISTS "{name}_published_at"
    ON {entries} (published_at) WHERE status = 'published';

CREATE TABLE IF NOT EXISTS {aggregates} (
    aggregate_type   TEXT    NOT NULL,
    aggregate_id     TEXT    NOT NULL,
    next_sequence    INTEGER NOT NULL,
    unpublished      INTEGER NOT NULL,
    available_at     INTEGER NOT NULL,
    lease_holder     TEXT,
    lease_expires_at INTEGER,
    PRIMARY KEY (aggregate_type, aggregate_id)
);

CREATE INDEX IF NOT EXISTS "{name}_aggregates_available" ON {aggregates} (available_at);
