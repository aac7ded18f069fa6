"""Assurance: sign-in methods mapped to RFC 8176 `amr` values and `acr` levels (DESIGN section 10)."""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


class Method(enum.StrEnum):
    """How a resident signed in; each maps to amr values and an acr level."""

    CARRIER_SMS = "carrier_sms"
    CARRIER_APP = "carrier_app"


# RFC 8176 §2: sms = confirmation by SMS, mca = multiple-channel authentication (the carrier's own channel).
AMR_BY_METHOD: dict[Method, tuple[str, ...]] = {
    Method.CARRIER_SMS: ("sms", "mca"),
    Method.CARRIER_APP: ("mca",),
}

PHRH = "phrh"
PHR = "phr"


def aal1(issuer: str) -> str:
    return f"{issuer}/acr/aal1"


def aal2(issuer: str) -> str:
    return f"{issuer}/acr/aal2"


def acr_order(issuer: str) -> list[str]:
    """Every level, weakest first: a request for a level is met by it or any later one."""
    return [aal1(issuer), aal2(issuer), PHR, PHRH]


def acr_for_method(method: Method, issuer: str) -> str:
    # Carrier verification is a single factor (something you have): AAL1 under NIST SP 800-63B-4.
    return aal1(issuer)


@dataclass(frozen=True, slots=True)
class AuthEvent:
    """One authentication in a session: how, which amr values and level, and when."""

    method: Method
    amr: tuple[str, ...]
    acr: str
    at: dt.datetime

    @classmethod
    def of(cls, method: Method, *, issuer: str, at: dt.datetime) -> AuthEvent:
        return cls(method=method, amr=AMR_BY_METHOD[method], acr=acr_for_method(method, issuer), at=at)

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method.value, "amr": list(self.amr), "acr": self.acr, "at": self.at.isoformat()}


def best_acr(acrs: Sequence[str], issuer: str) -> str:
    """The strongest of `acrs` in the order of DESIGN section 10."""
    order = acr_order(issuer)
    return max(acrs, key=lambda acr: order.index(acr) if acr in order else -1)
