"""Billing: subscriptions, their segment allowance, and what a church used of it."""
