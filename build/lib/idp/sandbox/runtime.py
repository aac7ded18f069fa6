"""The running sandbox's parts, shared by its three blueprints: the agency, its faults and the site it serves."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field

from flask import current_app

from idp.sandbox.agency import Agency
from idp.sandbox.faults import Faults

EXTENSION = "idp.sandbox"


@dataclass(frozen=True, slots=True)
class Sandbox:
    agency: Agency
    faults: Faults
    site_code: str
    site_secret: str = field(repr=False)
    sleep: Callable[[float], None]  # time.sleep, or a recorder in tests of the timeout and slow faults


def current_sandbox() -> Sandbox:
    sandbox: Sandbox = current_app.extensions[EXTENSION]
    return sandbox


def rfc3339(timestamp: float) -> str:
    """An epoch time as RFC 3339 UTC to the second (`2025-01-02T03:04:05Z`)."""
    moment = dt.datetime.fromtimestamp(timestamp, dt.UTC).replace(microsecond=0)
    return moment.isoformat().replace("+00:00", "Z")
