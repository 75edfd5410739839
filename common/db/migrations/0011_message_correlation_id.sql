-- Observability (issue #8): the correlation id of a message is the request id of the request that accepted
-- it (common/log_context.py: the caller's sane X-Request-Id, or one we made), written by the INSERT that
-- records the message (common/messages/store.py) and returned by the claim and by receipts, so the send's,
-- the consumer's and the webhook's log lines about one message can be joined. NULL: accepted before this
-- migration, or outside any request.
ALTER TABLE messages ADD COLUMN correlation_id text;
-- The same bound the request id has (1-64 characters). NOT VALID: the new column is NULL on every existing
-- row, so there is nothing to check, and validating would read the whole table under this migration's
-- ACCESS EXCLUSIVE lock. New and updated rows are checked all the same.
ALTER TABLE messages ADD CONSTRAINT messages_correlation_id_length
    CHECK (length(correlation_id) BETWEEN 1 AND 64) NOT VALID;
