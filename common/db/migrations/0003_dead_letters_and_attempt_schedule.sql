-- Retries and dead letters (the retries issue).
--
-- message_attempts.next_attempt_at: when the attempt's outcome scheduled the next one, so the backoff
-- schedule can be checked from stored timestamps (and an operator can see it), not inferred.
ALTER TABLE message_attempts ADD COLUMN next_attempt_at timestamptz;

-- Dead letters past their retention leave the hot table for this one (same shape, plus when).
CREATE TABLE dead_letters_archive (
    id               uuid PRIMARY KEY,
    message_id       uuid NOT NULL,
    church_id        uuid NOT NULL,
    reason           text NOT NULL,
    error_code       text,
    attempts         jsonb NOT NULL,
    created_at       timestamptz NOT NULL,
    replayed_at      timestamptz,
    replay_count     integer NOT NULL,
    archived_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dead_letters_archive_church_created ON dead_letters_archive (church_id, created_at, id);

-- The scheduler's reconcile walks everything due in (next_attempt_at, id) order with a keyset cursor
-- (a broadcast's rows share one next_attempt_at, so the time alone cannot be a cursor).
DROP INDEX messages_due;
CREATE INDEX messages_due ON messages (next_attempt_at, id) WHERE status IN ('scheduled', 'queued', 'retrying');
