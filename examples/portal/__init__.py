"""경기 민원포털: a sample provincial service that signs residents in with the IdP and protects an API with `idp.rp`.

`create_app(settings)` builds the Flask app; `python -m examples.portal` runs it; `examples/portal/run.py` starts it
with the IdP and the sandbox agency (`make run`). README.md beside this file says which parts to copy.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from authlib.integrations.flask_client import OAuth
from flask import Flask, Response
from flask_wtf.csrf import CSRFProtect

from examples.portal.api import bp as api_bp
from examples.portal.registration import CREDENTIALS_FILE, Credentials
from examples.portal.services import PORTAL_EXTENSION, Portal
from examples.portal.sessions import ServerSideSessions, SessionStore
from examples.portal.views import bp as pages_bp
from idp.rp import Requirement, StepUp, Verifier

SCOPES = "openid profile"
# The permit API wants a passkey sign-in (phr or better, docs/integration.md) within the last five minutes.
PERMIT_REQUIREMENT = Requirement(scopes=("openid",), acr_values=("phr", "phrh"), max_age=300)
API_TIMEOUT = 5.0  # seconds for the portal's call of its own API


@dataclass(frozen=True, slots=True)
class PortalSettings:
    """Where the IdP and the portal are, and the portal's registration (examples/portal/registration.py)."""

    issuer: str
    portal_url: str
    client_id: str
    client_secret: str
    secret_key: str
    api_url: str | None = None  # the permit API; None: this portal's own /api

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> PortalSettings:
        """PORTAL_ISSUER (default: IDP_ISSUER, else http://localhost:8000) and the credentials file that
        registration wrote (PORTAL_CREDENTIALS, default: IDP_INSTANCE_DIR/portal-client.json)."""
        env = os.environ if environ is None else environ
        issuer = env.get("PORTAL_ISSUER") or env.get("IDP_ISSUER") or "http://localhost:8000"
        path = Path(env.get("PORTAL_CREDENTIALS") or Path(env.get("IDP_INSTANCE_DIR", "instance")) / CREDENTIALS_FILE)
        credentials = Credentials.read(path)
        if credentials is None:
            raise SystemExit(f"no portal registration in {path}: run `make run` (or examples/portal/run.py) first")
        return cls(
            issuer=issuer.rstrip("/"),
            portal_url=credentials.portal_url,
            client_id=credentials.client_id,
            client_secret=credentials.client_secret,
            secret_key=credentials.secret_key,
            api_url=env.get("PORTAL_API_URL") or None,
        )


def create_app(settings: PortalSettings, *, verifier: Verifier | None = None, api: httpx.Client | None = None) -> Flask:
    """The portal's Flask app. `verifier` and `api` (the HTTP client of the permit API) are for tests."""
    app = Flask(__name__)
    https = urlsplit(settings.portal_url).scheme == "https"
    app.config.update(
        SECRET_KEY=settings.secret_key,
        # The cookie holds a session id only (sessions.py). Lax, not Strict: the resident comes back from the IdP
        # (another site) by a top-level redirect to /callback, which must carry the cookie to match the `state`.
        SESSION_COOKIE_NAME="__Host-portal" if https else "portal_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=https,
    )
    store = SessionStore()
    app.session_interface = ServerSideSessions(store)
    CSRFProtect(app).exempt(api_bp)  # the API takes bearer tokens and the IdP's signed logout tokens, not cookies

    oauth = OAuth(app)
    oauth.register(
        "idp",
        client_id=settings.client_id,
        client_secret=settings.client_secret,
        server_metadata_url=f"{settings.issuer}/.well-known/openid-configuration",
        client_kwargs={
            "scope": SCOPES,
            "code_challenge_method": "S256",  # PKCE even for a confidential client: RFC 9700 §2.1.1
            "token_endpoint_auth_method": "client_secret_basic",
        },
    )
    verifier = verifier or Verifier(settings.issuer, client_id=settings.client_id)
    api = api or httpx.Client(base_url=settings.api_url or settings.portal_url, timeout=API_TIMEOUT)
    app.extensions[PORTAL_EXTENSION] = Portal(
        issuer=settings.issuer,
        portal_url=settings.portal_url,
        client_id=settings.client_id,
        oauth_client=oauth.create_client("idp"),
        verifier=verifier,
        sessions=store,
        api=api,
    )
    app.register_blueprint(pages_bp)
    app.register_blueprint(api_bp)
    # RFC 9470 step-up in front of the API, for any WSGI app: a token that falls short never reaches the view.
    app.wsgi_app = StepUp(app.wsgi_app, verifier, {"/api/permits": PERMIT_REQUIREMENT})  # type: ignore[method-assign]

    @app.after_request
    def security_headers(response: Response) -> Response:
        # no-referrer: a code or state in /callback's URL never leaves in a Referer header.
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Content-Security-Policy", "default-src 'self'; frame-ancestors 'none'")
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    return app
