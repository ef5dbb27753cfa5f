-- outbox migration 0001_outbox for diesel, with the default table names (`outbox`, `outbox_aggregates`).
-- Generated from outbox-diesel's src/sql/mysql.sql (the schema outbox-sqlx and outbox-seaorm create).

-- One row per entry (see the PostgreSQL file for the columns' meaning). Binary collation: ids
-- and types compare byte for byte, as in PostgreSQL and SQLite.
CREATE TABLE IF NOT EXISTS `outbox` (
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
    UNIQUE KEY `outbox_aggregate_sequence` (aggregate_type, aggregate_id, sequence),
    -- No partial indexes here: published_at IS NULL exactly for unpublished rows, so claims read
    -- the range (aggregate, NULL, sequence...) and never touch published rows.
    KEY `outbox_unpublished` (aggregate_type, aggregate_id, published_at, sequence),
    KEY `outbox_published_at` (published_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- One row per aggregate (see the PostgreSQL file).
CREATE TABLE IF NOT EXISTS `outbox_aggregates` (
    aggregate_type   VARCHAR(255) NOT NULL,
    aggregate_id     VARCHAR(255) NOT NULL,
    next_sequence    BIGINT       NOT NULL,
    unpublished      BIGINT       NOT NULL,
    available_at     DATETIME(6)  NOT NULL,
    lease_holder     VARCHAR(255) NULL,
    lease_expires_at DATETIME(6)  NULL,
    PRIMARY KEY (aggregate_type, aggregate_id),
    KEY `outbox_aggregates_available` (available_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
