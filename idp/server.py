"""The production WSGI server: granian (measured about 3x gunicorn's gthread worker on the JWKS, one core each)."""

from __future__ import annotations

from flask import Flask
from granian import Granian
from granian.constants import Interfaces
from granian.log import LogLevels

# Threads per worker that run the app: enough to wait on the database and the carrier agency (seconds at
# worst) without queueing, few enough that the GIL is not fought over (granian would allow 512).
THREADS_PER_WORKER = 8


def run(*, host: str, port: int, workers: int, threads: int = THREADS_PER_WORKER) -> None:
    """Serve until stopped. Each worker builds its own app from the same IDP_* environment."""
    Granian(
        "idp.server:create_served_app",
        factory=True,
        address=host,
        port=port,
        interface=Interfaces.WSGI,
        workers=workers,
        blocking_threads=threads,
        backpressure=threads,
        respawn_failed_workers=True,
        # The IdP logs each request itself, without query strings (they carry hints and states).
        log_access=False,
        log_level=LogLevels.warning,
    ).serve()


def create_served_app() -> Flask:
    """The app as `idp serve` runs it: with the background work a long-running process owns (the retries of
    back-channel logout tokens, the purge of expired records), which tests and one-off scripts do not start."""
    from idp import create_app
    from idp.retention import PurgeWorker

    app = create_app()
    app.extensions["idp.logout"].start()
    PurgeWorker(app.extensions["idp.db"][1]).start()
    return app
