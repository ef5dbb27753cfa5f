DROP TABLE IF EXISTS "outbox_aggregates";
DROP TABLE IF EXISTS "outbox";
