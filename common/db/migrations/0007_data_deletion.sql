-- Data deletion and audit (issue #6; common/privacy/, common/audit.py).

-- Erased people who had opted out stay unreachable: a keyed hash of "<church id>:<E.164>" (HMAC-SHA256,
-- key derived from ENCRYPTION_KEY; common/privacy/suppression.py), never the number. Accepting a send
-- treats a match as opted out; the person's own START lifts it. People who had not opted out leave
-- nothing here.
CREATE TABLE erasure_suppressions (
    church_id     uuid NOT NULL REFERENCES churches(id) ON DELETE CASCADE,
    channel       text NOT NULL DEFAULT 'sms' CHECK (channel IN ('sms', 'mail')),
    address_hmac  bytea NOT NULL CHECK (length(address_hmac) = 32),
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (church_id, channel, address_hmac)
);

-- A deleted church's billing facts, per calendar month (UTC) of message creation and channel: every
-- message, and the ones the usage rule bills (common/billing/usage.py: billed_segments is before the
-- plan's MMS weight). No foreign key: it outlives the church, and holds no number, text or name.
CREATE TABLE usage_archive (
    church_id        uuid NOT NULL,
    period_start     date NOT NULL,
    channel          text NOT NULL,
    messages         bigint NOT NULL,
    segments         bigint NOT NULL,
    billed_messages  bigint NOT NULL,
    billed_segments  bigint NOT NULL,
    archived_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (church_id, period_start, channel)
);

-- Row triggers do not see TRUNCATE: refuse it too, so the audit log is append-only against every statement.
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();

-- Every opt-out and opt-in is audited where it is recorded, whichever path records it: a member's keyword
-- (common/compliance/opt_outs.py), the carrier's 40300 (common/messages/store.py), or anything added later
-- that writes opt_out_events. Same transaction as the event by construction. The target is the event id;
-- the number never enters the audit log (a person's erasure deletes the event, the entry stays and names
-- nothing). 'flagged' replies are not opt-outs and are not audited.
CREATE FUNCTION audit_opt_out_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO audit_log (church_id, action, actor, target, details)
    VALUES (
        NEW.church_id,
        CASE NEW.action WHEN 'opt_out' THEN 'opt_out.recorded' ELSE 'opt_in.recorded' END,
        CASE NEW.source WHEN 'keyword' THEN 'member:keyword' WHEN 'carrier_40300' THEN 'carrier' ELSE NEW.source END,
        'opt_out_event:' || NEW.id,
        jsonb_build_object('source', NEW.source, 'keyword', NEW.keyword, 'channel', NEW.channel)
    );
    RETURN NULL;
END
$$;
CREATE TRIGGER opt_out_events_audit AFTER INSERT ON opt_out_events
    FOR EACH ROW WHEN (NEW.action IN ('opt_out', 'opt_in')) EXECUTE FUNCTION audit_opt_out_event();
