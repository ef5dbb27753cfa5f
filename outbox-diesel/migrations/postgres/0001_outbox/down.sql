DROP TRIGGER IF EXISTS "outbox_notify" ON "outbox";
DROP FUNCTION IF EXISTS "outbox_notify"();
DROP TABLE IF EXISTS "outbox_aggregates";
DROP TABLE IF EXISTS "outbox";
