"""The composition root: `create_app` builds the Flask app and the runtime it serves from (reached as
`idp.create_app`, which `idp/__init__.py` imports lazily so that `import idp.rp` needs no Flask)."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response
from flask.json.provider import DefaultJSONProvider
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from idp import db, oidc, ops, runtime, web
from idp.authn.attestation import AttestationPolicy
from idp.authn.carrier import HttpCarrierGateway
from idp.authn.lockout import make_rate_limiter
from idp.authn.verification import CarrierSignIn
from idp.keyring import Keyring, KeyringError
from idp.logs import configure_logging
from idp.oidc.clients import secret_digest_key
from idp.oidc.discovery import MetadataCache
from idp.oidc.logout import DeliveryWorker
from idp.oidc.published import PublishedDocuments
from idp.oidc.server import IdpAuthorizationServer
from idp.runtime import Runtime, SystemClock
from idp.settings import Settings, SettingsError
from idp.web.interaction import WebPages

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
    """Build the WSGI app from `settings` (read from the environment when not given): the composition root, where
    the runtime every request reaches (`idp.runtime`) is built once.

    Raises:
        SettingsError: the environment's settings are malformed or unsafe for production.
    """
    settings = settings or Settings.from_env()
    configure_logging(settings)
    # Static files belong to the web blueprint (idp/web/static); the app itself serves none. Named "idp", as when it
    # was built in idp/__init__.py: the root path and the logger's name stay the package's.
    app = Flask("idp", static_folder=None)
    app.json = BoundedJSONProvider(app)
    app.config.update(SECRET_KEY=settings.secret_key, JSON_SORT_KEYS=False, MAX_CONTENT_LENGTH=64 * 1024)
    app.extensions[runtime.EXTENSION] = build_runtime(settings)
    app.teardown_appcontext(runtime.close_db_session)
    ops.init_app(app)
    oidc.init_app(app, runtime.of(app))
    web.init_app(app, runtime.of(app))
    app.after_request(_security_headers)
    if settings.trusted_proxies:
        from werkzeug.middleware.proxy_fix import ProxyFix

        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]  # the documented way to wrap the WSGI app
            app.wsgi_app, x_for=settings.trusted_proxies, x_proto=settings.trusted_proxies
        )
    return app


def build_runtime(settings: Settings) -> Runtime:
    """Everything a request may need that outlives it, from `settings`.

    Raises:
        SettingsError: the FIDO metadata file cannot be read.
    """
    keyring = Keyring.from_directory(
        settings.keys_dir, settings.keys_passphrase, check_interval=settings.keyring_check_interval
    )
    try:
        # Load now, so the first request does not pay for it; /readyz reports a keyring that fails here.
        keyring.current()
    except KeyringError as exc:
        log.error("keyring not loaded: %s", exc)
    engine = db.make_engine(settings.sqlalchemy_url)
    sessions = db.make_session_factory(engine)
    limiter = make_rate_limiter(settings.ratelimit_storage, engine, secret=settings.secret_key)
    gateway = HttpCarrierGateway(
        settings.agency_url(),
        site_code=settings.carrier_site_code,
        site_secret=settings.carrier_site_secret,
        production=settings.is_production,
        timeout=settings.carrier_timeout,
    )
    try:
        attestation = AttestationPolicy.from_metadata_file(
            settings.fido_metadata_path, require=settings.webauthn_require_attestation
        )
    except ValueError as error:
        raise SettingsError(f"IDP_FIDO_METADATA_PATH: {error}") from None
    return Runtime(
        settings=settings,
        keyring=keyring,
        engine=engine,
        sessions=sessions,
        read_sessions=_read_sessions(engine, sessions),
        limiter=limiter,
        carrier=CarrierSignIn(gateway=gateway, limiter=limiter, issuer=settings.issuer, ci_pepper=settings.ci_pepper),
        attestation=attestation,
        clock=SystemClock(),
        schema_revision=db.head_revision(),
        oidc=IdpAuthorizationServer(settings, keyring, secret_digest_key(settings.secret_key)),
        published=PublishedDocuments(keyring, MetadataCache(settings), settings),
        logout=DeliveryWorker(sessions, keyring, settings),
        pages=WebPages(),
    )


def _read_sessions(engine: Engine, sessions: sessionmaker[Session]) -> sessionmaker[Session]:
    """Sessions for requests that only read (UserInfo, introspection). On PostgreSQL they run without a transaction:
    one round trip per statement, not BEGIN, the statement and ROLLBACK. SQLite begins a transaction only before a
    write, so its reads cost nothing more in a transaction (and switching its connections out of one and back costs
    a statement each time)."""
    if engine.dialect.name == "sqlite":
        return sessions
    return db.make_session_factory(engine.execution_options(isolation_level="AUTOCOMMIT"))


def _security_headers(response: Response) -> Response:
    headers = response.headers
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "no-referrer")
    # JSON endpoints need nothing; pages set their own policy with the scripts they need.
    headers.setdefault("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'")
    return response
