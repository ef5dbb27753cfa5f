-- outbox migration 0001_outbox for diesel, with the default table names (`outbox`, `outbox_aggregates`).
-- Generated from outbox-diesel's src/sql/sqlite.sql (the schema outbox-sqlx and outbox-seaorm create).

CREATE TABLE IF NOT EXISTS "outbox" (
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

CREATE INDEX IF NOT EXISTS "outbox_unpublished"
    ON "outbox" (aggregate_type, aggregate_id, sequence) WHERE status <> 'published';

CREATE INDEX IF NOT EXISTS "outbox_published_at"
    ON "outbox" (published_at) WHERE status = 'published';

CREATE TABLE IF NOT EXISTS "outbox_aggregates" (
    aggregate_type   TEXT    NOT NULL,
    aggregate_id     TEXT    NOT NULL,
    next_sequence    INTEGER NOT NULL,
    unpublished      INTEGER NOT NULL,
    available_at     INTEGER NOT NULL,
    lease_holder     TEXT,
    lease_expires_at INTEGER,
    PRIMARY KEY (aggregate_type, aggregate_id)
);

CREATE INDEX IF NOT EXISTS "outbox_aggregates_available" ON "outbox_aggregates" (available_at);
