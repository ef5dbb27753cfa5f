-- outbox migration 0001_outbox (copied from outbox-sqlx: the schema is shared), MySQL 8 / MariaDB 10.6+.
--
-- Placeholders, substituted by outbox-diesel after validating the names (see `Tables`):
--   {entries}    the entries table, quoted, e.g. `outbox`
--   {aggregates} the aggregates table, e.g. `outbox_aggregates`
--   {name}       the bare table name (a validated identifier), inside quoted index names
-- Idempotent: running it again changes nothing. Same columns and meaning as the PostgreSQL and
-- SQLite files; times are UTC.

-- One row per entry (see the PostgreSQL file for the columns' meaning). Binary collation: ids
-- and types compare byte for byte, as in PostgreSQL and SQLite.
CREATE TABLE IF NOT EXISTS {entries} (
    id               BINARY(16)   NOT NULL PRIMARY KEY,
    aggregate_type   VARCHAR(255) NOT NULL,
    aggregate_id     VARCHAR(255) NOT NULL,
    sequence         BIGINT       NOT NULL,
    event_type       VARCHAR(255) NOT NULL,
    payload          LONGBLOB     NOT NULL,
    content_type     VARCHAR(255) NOT NULL,
    headers          JSON         NOT NULL,
    status           VARCHAR(16)  NOT NULL,
    attempts         INT          NOT NULL DEFAULT 0,
    created_at       DATETIME(6)  NOT NULL,
    available_at     DATETIME(6)  NOT NULL,
    published_at     DATETIME(6)  NULL,
    last_error       TEXT         NULL,
    lease_holder     VARCHAR(255) NULL,
    lease_expires_at DATETIME(6)  NULL,
    UNIQUE KEY `{name}_aggregate_sequence` (aggregate_type, aggregate_id, sequence),
    -- No partial indexes here: published_at IS NULL exactly for unpublished rows, so claims read
    -- the range (aggregate, NULL, sequence...) and never touch published rows.
    KEY `{name}_unpublished` (aggregate_type, aggregate_id, published_at, sequence),
    KEY `{name}_published_at` (published_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- One row per aggregate (see the PostgreSQL file).
CREATE TABLE IF NOT EXISTS {aggregates} (
    aggregate_type   VARCHAR(255) NOT NULL,
    aggregate_id     VARCHAR(255) NOT NULL,
    next_sequence    BIGINT       NOT NULL,
    unpublished      BIGINT       NOT NULL,
    available_at     DATETIME(6)  NOT NULL,
    lease_holder     VARCHAR(255) NULL,
    lease_expires_at DATETIME(6)  NULL,
    PRIMARY KEY (aggregate_type, aggregate_id),
    KEY `{name}_aggregates_available` (available_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
