-- 0001: the outbox table, the relay's partition leases, its retry list and the producers' wake-up hint.
--
-- Applications INSERT into dispatcher.outbox inside their own transaction (see docs/outbox.md). They set
-- event_type, aggregate_id and payload (and may set event_id, message_id); every other column belongs to
-- the relay. In particular `xid` must keep its default: the relay finds new rows by the transaction that
-- wrote them, which is what lets a transaction that commits late, after rows with higher ids, still be
-- delivered.

CREATE SCHEMA IF NOT EXISTS dispatcher;

CREATE TABLE dispatcher.outbox (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id        uuid NOT NULL DEFAULT gen_random_uuid(),
    message_id      uuid NOT NULL DEFAULT gen_random_uuid(),
    event_type      text NOT NULL CHECK (length(event_type) BETWEEN 1 AND 255),
    aggregate_id    text NOT NULL CHECK (length(aggregate_id) BETWEEN 1 AND 1024),
    payload         jsonb NOT NULL,
    -- pending: not yet published (or waiting for a retry); sent: in the stream; dead: given up, see last_error.
    status          text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'sent', 'dead')),
    attempts        integer NOT NULL DEFAULT 0,
    last_error      text,
    -- clock_timestamp(), not now(): the time of the INSERT, not of the start of its transaction.
    occurred_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- When a relay read the row for its latest publication attempt.
    picked_at       timestamptz,
    sent_at         timestamptz,
    next_attempt_at timestamptz,
    -- The writing transaction: new rows are found by transaction-id snapshots, never by an id watermark.
    xid             xid8 NOT NULL DEFAULT pg_current_xact_id(),
    -- Rows of one aggregate share a partition; one relay at a time owns a partition (outbox_lease).
    partition       smallint NOT NULL
                    GENERATED ALWAYS AS (((hashtext(aggregate_id) & 2147483647) % 32)::smallint) STORED
)
-- Room on every page for the one update a row gets (pending -> sent) to stay a HOT update, which touches
-- no index: the claim path never depends on an index over a column that changes.
WITH (fillfactor = 60, autovacuum_vacuum_scale_factor = 0.05, autovacuum_vacuum_insert_scale_factor = 0.05);

-- The relay reads new rows in (xid, id) order. No index covers status: the pending -> sent update stays HOT
-- and no scan walks over dead index entries of rows that changed status.
CREATE INDEX outbox_xid_id ON dispatcher.outbox (xid, id);

-- One row per partition. A relay owns a partition while expires_at (database clock) is in the future;
-- every write the relay makes for a partition's rows is fenced by (owner, token) under FOR SHARE, so a
-- relay whose lease was taken over cannot mark rows sent. checkpoint is the pg_snapshot up to which every
-- row of the partition is sent, dead or listed in outbox_retry.
CREATE TABLE dispatcher.outbox_lease (
    partition   smallint PRIMARY KEY,
    owner       text,
    token       bigint NOT NULL DEFAULT 0,
    epoch       bigint NOT NULL DEFAULT 0,
    expires_at  timestamptz NOT NULL DEFAULT '-infinity',
    checkpoint  text,
    renewed_at  timestamptz
) WITH (fillfactor = 50);

INSERT INTO dispatcher.outbox_lease (partition) SELECT generate_series(0, 31);

-- Relays alive (for each relay's fair share of the partitions).
CREATE TABLE dispatcher.outbox_relay (
    owner    text PRIMARY KEY,
    seen_at  timestamptz NOT NULL
) WITH (fillfactor = 50);

-- Rows behind the checkpoint that are not settled: waiting for a retry (due_at set) or held back behind an
-- earlier row of their aggregate that is waiting (due_at NULL).
CREATE TABLE dispatcher.outbox_retry (
    id            bigint PRIMARY KEY,
    partition     smallint NOT NULL,
    aggregate_id  text NOT NULL,
    xid           xid8 NOT NULL,
    due_at        timestamptz
);
CREATE INDEX outbox_retry_partition ON dispatcher.outbox_retry (partition);

-- The wake-up hint. NOTIFY takes a database-wide lock at commit that serialises every committing
-- transaction that notified; so at most one producer transaction at a time notifies (the one holding the
-- advisory lock), and the others commit without it. The trigger is deferred to commit time so that the
-- notification follows the rows closely; the relay re-polls briefly after every wake-up to catch commits
-- that landed just after the notifier's.
CREATE FUNCTION dispatcher.outbox_wakeup() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('dispatcher.outbox_woken', true) IS DISTINCT FROM 'on' THEN
        PERFORM set_config('dispatcher.outbox_woken', 'on', true);
        IF pg_try_advisory_xact_lock(7461120934) THEN
            PERFORM pg_notify('dispatcher_outbox', '');
        END IF;
    END IF;
    RETURN NULL;
END
$$;

CREATE CONSTRAINT TRIGGER outbox_wakeup AFTER INSERT ON dispatcher.outbox
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION dispatcher.outbox_wakeup();
