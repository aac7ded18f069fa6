"""idp: the Gyeonggi-do residents' OpenID Connect identity provider."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response
from flask.json.provider import DefaultJSONProvider

from idp import db, oidc, ops, web
from idp.keyring import Keyring, KeyringError
from idp.logs import configure_logging
from idp.settings import Settings

log = logging.getLogger("idp")


class BoundedJSONProvider(DefaultJSONProvider):
    """Flask's JSON, except that a document nested deeper than the parser recurses is malformed like any other.

    Python's parser raises RecursionError, not ValueError, past about a thousand levels, so `get_json(silent=True)`
    let a 5 kB body of brackets answer 500 on every JSON endpoint."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        try:
            return super().loads(s, **kwargs)
        except RecursionError:
            raise ValueError("JSON nested too deeply") from None


def create_app(settings: Settings | None = None) -> Flask:
    """Build the WSGI app from `settings` (read from the environment when not given).

    Raises:
        SettingsError: the environment's settings are malformed or unsafe for production.
    """
    settings = settings or Settings.from_env()
    configure_logging(settings)
    # Static files belong to the web blueprint (idp/web/static); the app itself serves none.
    app = Flask(__name__, static_folder=None)
    app.json = BoundedJSONProvider(app)
    app.config.update(SECRET_KEY=settings.secret_key, JSON_SORT_KEYS=False, MAX_CONTENT_LENGTH=64 * 1024)
    app.extensions["idp.settings"] = settings
    keyring = Keyring.from_directory(
        settings.keys_dir, settings.keys_passphrase, check_interval=settings.keyring_check_interval
    )
    app.extensions["idp.keyring"] = keyring
    try:
        # Load now, so the first request does not pay for it; /readyz reports a keyring that fails here.
        keyring.current()
    except KeyringError as exc:
        log.error("keyring not loaded: %s", exc)

    db.init_app(app, settings.sqlalchemy_url)
    app.extensions["idp.schema_revision"] = db.head_revision()
    ops.init_app(app)
    oidc.init_app(app, settings)
    web.init_app(app, settings)
    app.after_request(_security_headers)
    if settings.trusted_proxies:
        from werkzeug.middleware.proxy_fix import ProxyFix

        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]  # the documented way to wrap the WSGI app
            app.wsgi_app, x_for=settings.trusted_proxies, x_proto=settings.trusted_proxies
        )
    return app


def _security_headers(response: Response) -> Response:
    headers = response.headers
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "no-referrer")
    # JSON endpoints need nothing; pages set their own policy with the scripts they need.
    headers.setdefault("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'")
    return response
