"""Personal data: sealed values and lookup hashes at rest (``crypto``; ``rotation`` re-seals under a new
key); erase a person from a church, delete a whole church (``deletion``); keep erased, opted-out numbers
unreachable by their lookup hash (``suppression``); the HTTP request (``api``) and the ``koinonia delete``
command (``cli``)."""
