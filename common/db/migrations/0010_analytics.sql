-- Analytics and reports (issue #7; common/analytics/).
--
-- daily_aggregates is derived data: every row is recomputed as a whole from messages, conversation_messages
-- and audit_log (never incremented), so it can be rebuilt at any time (`koinonia analytics rebuild`) and a
-- duplicated or replayed event changes nothing. `day` is the church's local day (churches.timezone) of the
-- message's created_at, so "Sunday" is the church's Sunday. Definitions of every column:
-- common/analytics/aggregates.py.
CREATE TABLE daily_aggregates (
    church_id          uuid NOT NULL REFERENCES churches(id) ON DELETE CASCADE,
    day                date NOT NULL,
    channel            text NOT NULL CHECK (channel IN ('sms', 'mms', 'mail')),
    accepted           integer NOT NULL,          -- every message created that day, whatever its status
    sent               integer NOT NULL,          -- the carrier accepted it: sent, delivered, delivery_*
    delivered          integer NOT NULL,
    failed             integer NOT NULL,          -- failed (never accepted) + delivery_failed (never reached)
    expired            integer NOT NULL,
    suppressed         integer NOT NULL,          -- opted out: never sent
    pending            integer NOT NULL,          -- scheduled, queued, sending, retrying
    segments           bigint NOT NULL,
    billed_segments    bigint NOT NULL,           -- common/billing/usage.py's rule, before the plan's MMS weight
    cost_amount        numeric(16, 5),            -- the carrier's cost, summed (NULL: none reported)
    cost_currency      text,                      -- NULL when none, or when the day mixes currencies
    delivery_rate      numeric(6, 5),             -- delivered / sent; NULL when nothing was sent
    median_delivery_s  double precision,          -- of delivered messages: finalized_at - sent_at
    replies            integer NOT NULL,          -- members' texts in (inbound), channel 'sms'
    opt_outs           integer NOT NULL,          -- opt-outs recorded (audit_log opt_out.recorded)
    computed_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (church_id, day, channel)
);

-- (church, local day) buckets waiting for a recompute that no Redis event announces: marked when an event
-- could not be put on Redis (down, or ENABLE_QUEUES=false), by the sweep after Redis lost its stream, and
-- drained by the processor in batches (DELETE ... SKIP LOCKED, in the recompute's own transaction).
CREATE TABLE analytics_dirty (
    church_id   uuid NOT NULL REFERENCES churches(id) ON DELETE CASCADE,
    day         date NOT NULL,
    marked_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (church_id, day)
);

-- One row: how far the processor got (the newest event it committed), which bounds what a lost stream
-- can have held; and the last recovery sweep.
CREATE TABLE analytics_state (
    id                 boolean PRIMARY KEY DEFAULT true CHECK (id),
    processed_through  timestamptz,
    swept_at           timestamptz,
    swept_from         timestamptz
);
INSERT INTO analytics_state DEFAULT VALUES;

-- A church's zone for day arithmetic: its own when PostgreSQL knows it, else UTC, so one church's
-- misconfigured zone cannot fail every batch that holds one of its events (they would be redelivered
-- forever and hold up every other church's).
CREATE FUNCTION analytics_zone(tz text) RETURNS text LANGUAGE plpgsql STABLE AS $$
BEGIN
    PERFORM now() AT TIME ZONE tz;
    RETURN tz;
EXCEPTION WHEN invalid_parameter_value THEN
    RETURN 'UTC';
END
$$;
