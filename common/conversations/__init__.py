"""Conversations: one thread per church number and contact address, with its messages."""
