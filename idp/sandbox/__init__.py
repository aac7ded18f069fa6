"""The sandbox carrier verification agency: a stand-in for NICE, KCB or PASS in development and tests.

It is its own WSGI app (served by `idp sandbox serve`), speaking the agency protocol of docs/carrier.md to
the IdP, plus sandbox-only endpoints (outbox, residents, faults, clock) and a virtual phone page per number.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from flask import Flask, Response, request

from idp.sandbox import api, console, virtual_phone
from idp.sandbox.agency import Agency, Clock
from idp.sandbox.faults import Faults
from idp.sandbox.residents import ResidentDirectory
from idp.sandbox.runtime import EXTENSION, Sandbox
from idp.sandbox.signing import AgencyKeys

__all__ = ["create_app"]


def create_app(
    state_dir: Path,
    *,
    issuer: str,
    site_code: str,
    site_secret: str,
    clock: Clock | None = None,
    sleep: Callable[[float], None] = time.sleep,
    monotonic: Callable[[], float] = time.monotonic,
) -> Flask:
    """The sandbox agency app; `issuer` is its own base URL (the results' `iss`).

    Its signing key, CI secret and added residents live in `state_dir` so they survive restarts; transactions,
    the outbox, limits, faults and the clock live in memory (one process).

    Raises:
        ResidentInvalidError: the residents file in `state_dir` is malformed.
    """
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    agency = Agency(
        ResidentDirectory.load(state_dir),
        AgencyKeys.load(state_dir),
        issuer=issuer.rstrip("/"),
        site_code=site_code,
        clock=clock or Clock(),
        monotonic=monotonic,
    )
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = api.MAX_BODY
    app.json.ensure_ascii = False  # type: ignore[attr-defined]  # DefaultJSONProvider has it; Korean stays legible
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions[EXTENSION] = Sandbox(
        agency=agency, faults=Faults(), site_code=site_code, site_secret=site_secret, sleep=sleep
    )
    api.init_app(app)
    console.init_app(app)
    virtual_phone.init_app(app)
    app.before_request(_refuse_cross_site_posts)
    app.after_request(_security_headers)
    return app


def _refuse_cross_site_posts() -> Response | None:
    """The console and the virtual phone change state; a web page elsewhere must not post to them.

    Browsers say where a request comes from: Sec-Fetch-Site where they support Fetch Metadata, Origin on every
    POST. Scripts and the IdP send neither. An Origin of "null" (an opaque origin: a sandboxed frame, a data: URL,
    or a page under `Referrer-Policy: no-referrer`, https://fetch.spec.whatwg.org/#serializing-a-request-origin)
    is trusted only when Sec-Fetch-Site vouches that the request is the sandbox's own.
    """
    if request.method != "POST" or request.path.startswith("/v1/"):
        return None
    site = request.headers.get("Sec-Fetch-Site")
    origin = request.headers.get("Origin")
    own_origin = request.host_url.rstrip("/")
    if site is not None and site not in ("same-origin", "none"):
        return _refused()
    if origin is not None and origin != own_origin and not (origin == "null" and site == "same-origin"):
        return _refused()
    return None


def _refused() -> Response:
    return Response("cross-site request refused", status=403, mimetype="text/plain")


def _security_headers(response: Response) -> Response:
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    # same-origin, not no-referrer: under no-referrer Chromium posts the phone's own forms with `Origin: null`, and
    # browsers without Sec-Fetch-Site would have nothing to tell them from another site's. Other sites still get
    # no Referer (it would carry a phone number).
    response.headers.setdefault("Referrer-Policy", "same-origin")
    response.headers.setdefault("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'")
    return response
