-- Keyset pagination: every list index ends with the tie-breaker `id`.
--
-- The read queries (common/messages/queries.py, common/conversations/queries.py) page newest first on
-- (time, id) with `WHERE (time, id) < (:before_at, :before_id) ORDER BY time DESC, id DESC LIMIT n`.
-- With `id` missing from the index the row comparison is only usable as `time <= :before_at`, and every
-- row sharing that timestamp has to be fetched and sorted before a page can start. Ties are common by
-- design: `now()` is the transaction's start time, so all messages of one broadcast share one
-- `created_at`, and every conversation it touches shares one `last_message_at`. With `id` in the key a
-- page is one bounded index range, whatever the ties.
--
-- The replacements keep the names (and the leading columns) of 0001's indexes, so nothing that names
-- them changes meaning. messages_church_created also INCLUDEs `attempts`, the one column the usage rule
-- (common/billing/usage.py) reads besides channel, segments and status, so usage stays an index-only
-- scan. `attempts` only changes together with `status`, which is already in the index, so this costs no
-- HOT updates.
--
-- Plain (not CONCURRENTLY) because a migration runs in a transaction; on a large live table build the
-- new index concurrently by hand first.

DROP INDEX messages_church_created;
CREATE INDEX messages_church_created ON messages (church_id, created_at, id)
    INCLUDE (channel, segments, status, attempts);

DROP INDEX conversations_church_last;
CREATE INDEX conversations_church_last ON conversations (church_id, last_message_at, id);

DROP INDEX conversation_messages_conv_created;
CREATE INDEX conversation_messages_conv_created ON conversation_messages (conversation_id, created_at, id);
