"""Messages: one row per delivery to one recipient, and the one state machine that moves it."""

from common.messages.states import (
    ACTIVE_STATES,
    FINAL_STATES,
    TRANSITIONS,
    IllegalTransition,
    MessageStatus,
    check_transition,
)

__all__ = [
    "ACTIVE_STATES",
    "FINAL_STATES",
    "TRANSITIONS",
    "IllegalTransition",
    "MessageStatus",
    "check_transition",
]
