-- outbox migration 0001_outbox (copied from outbox-sqlx: the schema is shared), PostgreSQL 11+.
--
-- Placeholders, substituted by outbox-diesel after validating the names (see `Tables`):
--   {entries}    the entries table, quoted and schema-qualified, e.g. "app"."outbox"
--   {aggregates} the aggregates table, e.g. "app"."outbox_aggregates"
--   {notify_fn}  the trigger function, e.g. "app"."outbox_notify"
--   {name}       the bare table name (a validated identifier), inside quoted index names and as
--                the NOTIFY channel
-- Idempotent: running it again changes nothing.

-- One row per entry. `status` holds outbox_core::Status::as_str; `headers` a JSON array of
-- [name, value] pairs in order; `available_at` is when the entry is due (its not_before, or its
-- next retry). outbox-sqlx leaves `status` pending (or failed) while a relay processes the entry:
-- the aggregate's lease says which of its entries are being processed (see `leased_through`), so
-- a claim writes one row per aggregate, not one per entry. `lease_*` name the relay batch holding
-- an entry marked processing row by row (the protocol of outbox-diesel and outbox-seaorm).
CREATE TABLE IF NOT EXISTS {entries} (
    id               uuid        NOT NULL PRIMARY KEY,
    aggregate_type   text        NOT NULL,
    aggregate_id     text        NOT NULL,
    sequence         bigint      NOT NULL,
    event_type       text        NOT NULL,
    payload          bytea       NOT NULL,
    content_type     text        NOT NULL,
    headers          jsonb       NOT NULL,
    status           text        NOT NULL,
    attempts         integer     NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL,
    available_at     timestamptz NOT NULL,
    published_at     timestamptz,
    last_error       text,
    lease_holder     text,
    lease_expires_at timestamptz
);

-- Claims read an aggregate's first unpublished entries through this index: published rows are
-- not in it, so claim cost does not grow with them. It also keeps sequences unique among
-- unpublished entries; there is no index over all rows' sequences, because every write of an
-- entry would pay for it (the aggregate's row already hands each sequence out once).
CREATE UNIQUE INDEX IF NOT EXISTS "{name}_unpublished"
    ON {entries} (aggregate_type, aggregate_id, sequence) WHERE status <> 'published';

-- Purging walks published rows by publish time.
CREATE INDEX IF NOT EXISTS "{name}_published_at"
    ON {entries} (published_at) WHERE status = 'published';

-- One row per aggregate. Writers upsert it in their transaction (its row lock orders writers of
-- one aggregate, so sequences follow commit order); relays lease it to claim the aggregate.
--   next_sequence    the last sequence given out (the next entry gets next_sequence + 1)
--   unpublished      how many of its entries are not published (dead ones included)
--   available_at     not worth visiting before then: its first entry's due time, or
--                    9999-12-31 when it has nothing claimable until a write or a requeue
--   lease_holder, lease_expires_at   the relay batch claiming it, and until when
--   leased_through   with a lease: its unpublished entries up to this sequence are the batch's
--                    (processing), whatever their own `status` says
CREATE TABLE IF NOT EXISTS {aggregates} (
    aggregate_type   text        NOT NULL,
    aggregate_id     text        NOT NULL,
    next_sequence    bigint      NOT NULL,
    unpublished      bigint      NOT NULL,
    available_at     timestamptz NOT NULL,
    lease_holder     text,
    lease_expires_at timestamptz,
    leased_through   bigint,
    PRIMARY KEY (aggregate_type, aggregate_id)
);

-- Tables made by an earlier version of this migration lack the column, and carry a unique
-- (aggregate, sequence) constraint over every row that each write paid for (their
-- "{name}_unpublished" index stays non-unique).
ALTER TABLE {aggregates} ADD COLUMN IF NOT EXISTS leased_through bigint;
ALTER TABLE {entries} DROP CONSTRAINT IF EXISTS "{name}_aggregate_sequence";

CREATE INDEX IF NOT EXISTS "{name}_aggregates_available" ON {aggregates} (available_at);

-- Wake-ups: one NOTIFY per inserting statement, delivered by PostgreSQL on commit only.
-- PostgreSQL serializes the commits of notifying transactions, so a writer that notifies after
-- its commit instead turns this off for its transaction (`SET LOCAL outbox.notify = 'off'`, which
-- outbox-sqlx's `NotifyMode::AfterCommit` does in the enqueue statement itself).
CREATE OR REPLACE FUNCTION {notify_fn}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('outbox.notify', true) IS DISTINCT FROM 'off' THEN
        PERFORM pg_notify('{name}', '');
    END IF;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS "{name}_notify" ON {entries};
CREATE TRIGGER "{name}_notify" AFTER INSERT ON {entries}
    FOR EACH STATEMENT EXECUTE FUNCTION {notify_fn}();
