-- Webhook bookkeeping is pruned (common/messages/receipts.py prune, run by the retry-scheduler): an event
-- id only has to outlive Telnyx's redeliveries (hours), a receipt only until it is applied.
CREATE INDEX webhook_events_received ON webhook_events (received_at);
CREATE INDEX carrier_receipts_received ON carrier_receipts (received_at);
