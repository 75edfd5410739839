-- Koinonia schema: the whole mission in one first migration.
-- PostgreSQL is the source of truth; Redis only says "what to look at next".
-- Status values of messages are the states of common/messages/states.py (one state machine).

CREATE TABLE churches (
    id               uuid PRIMARY KEY,
    name             text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    timezone         text NOT NULL DEFAULT 'America/Chicago',
    quiet_start      time,            -- local time; NULL = no quiet hours
    quiet_end        time,
    help_text        text,
    weight           integer NOT NULL DEFAULT 1 CHECK (weight BETWEEN 1 AND 100),  -- fair-share weight
    created_at       timestamptz NOT NULL DEFAULT now(),
    deleted_at       timestamptz
);

-- Several keys per church (rotation). Only a hash is stored; the prefix finds the row.
CREATE TABLE api_keys (
    id               uuid PRIMARY KEY,
    church_id        uuid NOT NULL REFERENCES churches(id) ON DELETE CASCADE,
    prefix           text NOT NULL UNIQUE,
    key_hash         bytea NOT NULL,
    name             text NOT NULL DEFAULT 'default',
    created_at       timestamptz NOT NULL DEFAULT now(),
    last_used_at     timestamptz,
    revoked_at       timestamptz
);
CREATE INDEX api_keys_church ON api_keys (church_id);

-- The numbers a church sends from, with the carrier's throughput for that sender.
CREATE TABLE sender_numbers (
    id               uuid PRIMARY KEY,
    church_id        uuid NOT NULL REFERENCES churches(id) ON DELETE CASCADE,
    phone            text NOT NULL,
    kind             text NOT NULL DEFAULT 'long_code'
                     CHECK (kind IN ('long_code', 'toll_free', 'short_code', 'alphanumeric')),
    sms_per_second   numeric NOT NULL DEFAULT 1 CHECK (sms_per_second > 0),
    mms_per_second   numeric NOT NULL DEFAULT 1 CHECK (mms_per_second > 0),
    is_default       boolean NOT NULL DEFAULT false,
    created_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (church_id, phone)
);
CREATE UNIQUE INDEX sender_numbers_one_default ON sender_numbers (church_id) WHERE is_default;
CREATE INDEX sender_numbers_phone ON sender_numbers (phone);

CREATE TABLE subscriptions (
    id               uuid PRIMARY KEY,
    church_id        uuid NOT NULL REFERENCES churches(id) ON DELETE CASCADE,
    plan             text NOT NULL,
    status           text NOT NULL CHECK (status IN ('trialing', 'active', 'past_due', 'canceled')),
    segment_allowance integer NOT NULL CHECK (segment_allowance >= 0),
    mms_weight       integer NOT NULL DEFAULT 3 CHECK (mms_weight >= 1),
    period_start     timestamptz NOT NULL,
    period_end       timestamptz NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    CHECK (period_end > period_start)
);
CREATE INDEX subscriptions_church_status ON subscriptions (church_id, status);

CREATE TABLE contacts (
    id               uuid PRIMARY KEY,
    church_id        uuid NOT NULL REFERENCES churches(id) ON DELETE CASCADE,
    phone            text,
    email            text,
    first_name       text,
    last_name        text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    deleted_at       timestamptz,
    CHECK (phone IS NOT NULL OR email IS NOT NULL)
);
CREATE UNIQUE INDEX contacts_church_phone ON contacts (church_id, phone) WHERE phone IS NOT NULL;
CREATE UNIQUE INDEX contacts_church_email ON contacts (church_id, email) WHERE email IS NOT NULL;

CREATE TABLE groups (
    id               uuid PRIMARY KEY,
    church_id        uuid NOT NULL REFERENCES churches(id) ON DELETE CASCADE,
    name             text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (church_id, name)
);

CREATE TABLE group_members (
    group_id         uuid NOT NULL REFERENCES groups(id) ON DELETE CASCADE,
    contact_id       uuid NOT NULL REFERENCES contacts(id) ON DELETE CASCADE,
    added_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, contact_id)
);
CREATE INDEX group_members_contact ON group_members (contact_id);

-- Current opt-out state per church and address, and every change with its source.
CREATE TABLE opt_outs (
    church_id        uuid NOT NULL REFERENCES churches(id) ON DELETE CASCADE,
    address          text NOT NULL,          -- E.164 phone or email
    channel          text NOT NULL DEFAULT 'sms' CHECK (channel IN ('sms', 'mail')),
    opted_out_at     timestamptz NOT NULL DEFAULT now(),
    source           text NOT NULL,          -- keyword, carrier_40300, api, admin
    PRIMARY KEY (church_id, channel, address)
);

CREATE TABLE opt_out_events (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    church_id        uuid NOT NULL REFERENCES churches(id) ON DELETE CASCADE,
    address          text NOT NULL,
    channel          text NOT NULL DEFAULT 'sms',
    action           text NOT NULL CHECK (action IN ('opt_out', 'opt_in', 'flagged')),
    source           text NOT NULL,
    keyword          text,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX opt_out_events_church_time ON opt_out_events (church_id, created_at);

-- One send request. Idempotency lives here: same key + same request hash = same answer.
CREATE TABLE broadcasts (
    id               uuid PRIMARY KEY,
    church_id        uuid NOT NULL REFERENCES churches(id) ON DELETE CASCADE,
    channel          text NOT NULL CHECK (channel IN ('sms', 'mms', 'mail')),
    lane             text NOT NULL CHECK (lane IN ('conv', 'bulk')),
    idempotency_key  text,
    request_hash     bytea,
    response         jsonb,
    recipient_count  integer NOT NULL DEFAULT 0,
    suppressed_count integer NOT NULL DEFAULT 0,
    send_at          timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX broadcasts_idempotency ON broadcasts (church_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX broadcasts_church_time ON broadcasts (church_id, created_at);

-- One row per delivery to one recipient.
CREATE TABLE messages (
    id                  uuid PRIMARY KEY,               -- time-ordered (UUIDv7)
    church_id           uuid NOT NULL REFERENCES churches(id) ON DELETE CASCADE,
    broadcast_id        uuid REFERENCES broadcasts(id) ON DELETE CASCADE,
    channel             text NOT NULL CHECK (channel IN ('sms', 'mms', 'mail')),
    lane                text NOT NULL CHECK (lane IN ('conv', 'bulk')),
    to_address          text NOT NULL,
    from_address        text,
    subject             text,
    body                text NOT NULL,
    html_body           text,
    media_urls          jsonb,
    encoding            text CHECK (encoding IN ('GSM-7', 'UCS-2', 'UTF-8')),
    segments            integer NOT NULL DEFAULT 1 CHECK (segments BETWEEN 0 AND 10),
    status              text NOT NULL CHECK (status IN (
                            'scheduled', 'queued', 'sending', 'retrying', 'sent', 'delivered',
                            'delivery_failed', 'delivery_unconfirmed', 'failed', 'expired', 'suppressed')),
    attempts            integer NOT NULL DEFAULT 0,
    max_attempts        integer NOT NULL DEFAULT 4 CHECK (max_attempts >= 1),
    next_attempt_at     timestamptz,                    -- due time while scheduled/queued/retrying
    deadline_at         timestamptz NOT NULL,           -- past it: expired, never sent
    lease_until         timestamptz,                    -- while sending: the claim's expiry
    claim_token         uuid,                           -- fence: outcomes write WHERE claim_token = ...
    provider_message_id text,
    last_error_code     text,
    last_error_detail   text,
    cost_amount         numeric(12, 5),
    cost_currency       text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    sent_at             timestamptz,
    finalized_at        timestamptz
);
-- A church's message list and its usage in a billing period (the seed's index, with what usage sums).
CREATE INDEX messages_church_created ON messages (church_id, created_at) INCLUDE (channel, segments, status);
CREATE INDEX messages_broadcast ON messages (broadcast_id) WHERE broadcast_id IS NOT NULL;
-- Work the scheduler looks for: due (re)sends and scheduled sends, and leases that ran out.
CREATE INDEX messages_due ON messages (next_attempt_at)
    WHERE status IN ('scheduled', 'queued', 'retrying');
CREATE INDEX messages_lease ON messages (lease_until) WHERE status = 'sending';
CREATE UNIQUE INDEX messages_provider_id ON messages (provider_message_id)
    WHERE provider_message_id IS NOT NULL;

-- Every carrier attempt, for the dead-letter history and the duplicate-window measurement.
CREATE TABLE message_attempts (
    message_id       uuid NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    attempt          integer NOT NULL,
    claim_token      uuid NOT NULL,
    started_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    outcome          text,                             -- sent, retry, failed, expired, lost
    error_code       text,
    http_status      integer,
    PRIMARY KEY (message_id, attempt)
);

CREATE TABLE conversations (
    id               uuid PRIMARY KEY,
    church_id        uuid NOT NULL REFERENCES churches(id) ON DELETE CASCADE,
    church_number    text NOT NULL,
    contact_address  text NOT NULL,
    contact_id       uuid REFERENCES contacts(id) ON DELETE SET NULL,
    last_message_at  timestamptz NOT NULL DEFAULT now(),
    unread_count     integer NOT NULL DEFAULT 0,
    needs_review     boolean NOT NULL DEFAULT false,
    created_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (church_id, church_number, contact_address)
);
CREATE INDEX conversations_church_last ON conversations (church_id, last_message_at);

CREATE TABLE conversation_messages (
    id                  uuid PRIMARY KEY,
    conversation_id     uuid NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    direction           text NOT NULL CHECK (direction IN ('inbound', 'outbound')),
    body                text NOT NULL,
    media               jsonb,
    message_id          uuid REFERENCES messages(id) ON DELETE SET NULL,
    provider_message_id text,
    created_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX conversation_messages_conv_created ON conversation_messages (conversation_id, created_at);

CREATE TABLE dead_letters (
    id               uuid PRIMARY KEY,
    message_id       uuid NOT NULL UNIQUE REFERENCES messages(id) ON DELETE CASCADE,
    church_id        uuid NOT NULL REFERENCES churches(id) ON DELETE CASCADE,
    reason           text NOT NULL,
    error_code       text,
    attempts         jsonb NOT NULL DEFAULT '[]',
    created_at       timestamptz NOT NULL DEFAULT now(),
    replayed_at      timestamptz,
    replay_count     integer NOT NULL DEFAULT 0
);
CREATE INDEX dead_letters_church_created ON dead_letters (church_id, created_at, id);
CREATE INDEX dead_letters_created ON dead_letters (created_at, id);
CREATE INDEX dead_letters_code ON dead_letters (error_code, created_at);

-- Carrier webhook events already applied (duplicates change nothing).
CREATE TABLE webhook_events (
    event_id         text PRIMARY KEY,
    event_type       text NOT NULL,
    occurred_at      timestamptz,
    received_at      timestamptz NOT NULL DEFAULT now()
);
