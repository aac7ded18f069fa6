"""The production WSGI server: granian (measured about 3x gunicorn's gthread worker on the JWKS, one core each)."""

from __future__ import annotations

from granian import Granian
from granian.constants import Interfaces
from granian.log import LogLevels


def run(*, host: str, port: int, workers: int) -> None:
    """Serve until stopped. Each worker builds its own app from the same IDP_* environment."""
    Granian(
        "idp:create_app",
        factory=True,
        address=host,
        port=port,
        interface=Interfaces.WSGI,
        workers=workers,
        respawn_failed_workers=True,
        # The IdP logs each request itself, without query strings (they carry hints and states).
        log_access=False,
        log_level=LogLevels.warning,
    ).serve()
