"""Koinonia messaging: the logic every function shares.

Modules, one idea each:

- ``config``      settings from the environment and ``.env`` (one place)
- ``constants``   environment variable names and fixed limits
- ``db``          PostgreSQL pool and migrations (SQL lives in ``db/migrations``)
- ``redis_client``  Redis with short timeouts and a circuit breaker
- ``health``      the checks behind ``/health`` and friends
- ``seed``        the demo church for the local stack
- ``cli``         the ``koinonia`` operator command
"""

__version__ = "0.1.0"
