-- Append-only audit log of security-relevant actions (common/audit.py). church_id is NULL for actions on
-- the whole platform. No foreign key to churches: the record of a church's deletion outlives the church.
CREATE TABLE audit_log (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    church_id    uuid,
    action       text NOT NULL,            -- api_key.created, api_key.revoked, data.deleted, dead_letters.replayed, ...
    actor        text NOT NULL,            -- 'church:<api key prefix>', 'operator', 'cli', 'member:keyword', 'carrier'
    target       text,                     -- what was acted on (an id, never a phone number or a body)
    details      jsonb NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_log_church_time ON audit_log (church_id, created_at, id);

-- Append-only in the database itself, not only by convention: rows can be added, never changed or removed
-- (a church deletion keeps its audit trail; retention, if ever, is an operator's explicit migration).
CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only';
END
$$;
CREATE TRIGGER audit_log_no_update BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
