"""What the portal's views share, built once by `create_app`: the IdP client and verifier, the session store, the
permit API's client, and the permits received."""

from __future__ import annotations

import datetime as dt
import itertools
import threading
from dataclasses import dataclass, field
from typing import Any

import httpx
from flask import current_app

from examples.portal.sessions import SessionStore
from idp.rp import Verifier

PORTAL_EXTENSION = "portal"


@dataclass
class PermitBook:
    """The applications received, in memory: a sample has no database."""

    applications: list[dict[str, Any]] = field(default_factory=list)
    _numbers: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def file(self, *, applicant: str, address: str, purpose: str, acr: str | None) -> dict[str, Any]:
        """Record an application; what the applicant is told (its number, and what was filed)."""
        with self._lock:
            number = f"GG-{dt.date.today():%Y}-{next(self._numbers):06d}"
            application = {"number": number, "address": address, "purpose": purpose, "acr": acr}
            self.applications.append({**application, "applicant": applicant})
        return application


@dataclass
class Portal:
    issuer: str
    portal_url: str
    client_id: str
    oauth_client: Any  # Authlib's FlaskOAuth2App, which has no type hints
    verifier: Verifier
    sessions: SessionStore
    api: httpx.Client
    permits: PermitBook = field(default_factory=PermitBook)


def portal() -> Portal:
    """The running app's `Portal`."""
    found: Portal = current_app.extensions[PORTAL_EXTENSION]
    return found
