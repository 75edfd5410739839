"""Operator checks that go deeper than ``koinonia check`` (which only asks "is each service there?").

- ``koinonia check redis`` (``redis_check``): every Redis command family the queue relies on, against
  ``REDIS_URL``, each failure explained in terms of what to change (``redis_diagnosis``), and the server
  settings that decide whether a full Redis loses queue entries.
- ``koinonia check failover`` (``failover``): a real send without Redis (inline) and one with it (queued,
  then consumed), through the same ``submit`` the ``send`` function uses, proving the fallback works on
  this deployment before an outage does it for real.

Each prints one line per step as it goes and answers with an exit code (0 all good, 1 something failed).
"""
