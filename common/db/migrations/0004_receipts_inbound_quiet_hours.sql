-- Carrier fidelity and compliance (issue #5): delivery receipts, keyword replies, quiet hours.

-- Delivery receipts. A receipt is a fact about one carrier message (``provider_message_id``): the most
-- advanced state the carrier has reported for it, merged from every webhook event (duplicates and
-- reordering are normal, per Telnyx). It is kept apart from ``messages`` because it can arrive before our
-- own outcome write has recorded the provider id (the carrier answers, then fires ``message.sent``
-- within milliseconds). ``applied_at`` says it has been reflected in ``messages``; three paths apply
-- receipts with one statement (common/receipts/store.py): the webhook itself, the outcome write
-- that records the provider id, and the scheduler's sweep.
CREATE TABLE carrier_receipts (
    provider_message_id text PRIMARY KEY,
    message_id          uuid,                    -- ours, from the signed payload's webhook_url (?mid=)
    status              text NOT NULL CHECK (status IN ('sent', 'delivery_unconfirmed', 'delivered',
                                                        'delivery_failed')),
    rank                smallint NOT NULL,       -- sent 1 < delivery_unconfirmed 2 < delivered/failed 3
    carrier_status      text NOT NULL,           -- Telnyx's own word (sending_failed, expired, ...)
    carrier             text,
    cost_amount         numeric(12, 5),
    cost_currency       text,
    error_code          text,
    error_detail        text,
    occurred_at         timestamptz,
    received_at         timestamptz NOT NULL DEFAULT now(),
    applied_at          timestamptz
);
CREATE INDEX carrier_receipts_pending ON carrier_receipts (received_at) WHERE applied_at IS NULL;
CREATE INDEX carrier_receipts_pending_message ON carrier_receipts (message_id) WHERE applied_at IS NULL;

ALTER TABLE messages
    ADD COLUMN carrier text,                         -- the recipient's carrier, from the receipt
    -- 'compliance': a STOP/START confirmation or HELP answer. It is the one kind of text an opted-out
    -- person may receive (the confirmation of their own opt-out), and it is never held for quiet hours.
    ADD COLUMN purpose text NOT NULL DEFAULT 'normal' CHECK (purpose IN ('normal', 'compliance')),
    -- The recipient's time zone for quiet hours, resolved when the send was accepted (contact, else
    -- church, else UTC; always a valid IANA name). NULL for conversational texts, which are not held.
    ADD COLUMN recipient_tz text;

-- Quiet hours: a bulk text goes out only inside [send_window_start, send_window_end) local time; a
-- window whose end is before its start wraps midnight; NULL or start = end means always open.
ALTER TABLE churches DROP COLUMN quiet_start, DROP COLUMN quiet_end;
ALTER TABLE churches
    ADD COLUMN send_window_start time DEFAULT '09:00',
    ADD COLUMN send_window_end   time DEFAULT '20:00';
ALTER TABLE contacts ADD COLUMN timezone text;

-- The SQL twin of common/compliance/quiet_hours.next_opening, used by the claim (so retries, replays,
-- reclaims and inline sends obey the window too): NULL while the window is open, else when it opens.
-- A local opening time that falls in a spring-forward gap is read by PostgreSQL with the offset before
-- the gap (02:30 becomes 03:30 daylight time), and one in a fall-back repeat as its second occurrence;
-- the claim only ever compares against "open now", so these differences from the Python rule (first
-- instant after the gap, first occurrence) can only make a text wait a little longer, never go early.
CREATE FUNCTION send_window_opens_at(at timestamptz, tz text, w_start time, w_end time)
RETURNS timestamptz LANGUAGE sql STABLE AS $$
    SELECT CASE
        WHEN w_start IS NULL OR w_end IS NULL OR w_start = w_end THEN NULL
        WHEN w_start < w_end THEN
            CASE WHEN l.t >= w_start AND l.t < w_end THEN NULL
                 WHEN l.t < w_start THEN (l.d + w_start) AT TIME ZONE tz
                 ELSE (l.d + 1 + w_start) AT TIME ZONE tz END
        ELSE
            CASE WHEN l.t >= w_start OR l.t < w_end THEN NULL
                 ELSE (l.d + w_start) AT TIME ZONE tz END
    END
    FROM (SELECT (at AT TIME ZONE tz)::time AS t, (at AT TIME ZONE tz)::date AS d) AS l
$$;
