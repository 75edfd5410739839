"""Data deletion: erase a person from a church, delete a whole church (``deletion``); keep erased,
opted-out numbers unreachable by a keyed hash (``suppression``); the HTTP request (``api``) and the
``koinonia delete`` command (``cli``)."""
