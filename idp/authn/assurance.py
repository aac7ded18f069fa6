"""Assurance: sign-in methods mapped to RFC 8176 `amr` values and `acr` levels (docs/integration.md section 6)."""

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
    PASSKEY = "passkey"
    PASSKEY_HARDWARE = "passkey_hardware"
    # A passkey added on the recovery path, still in its waiting period: worth the carrier sign-in that added it.
    PASSKEY_PROVISIONAL = "passkey_provisional"
    TOTP = "totp"
    RECOVERY_CODE = "recovery_code"


# RFC 8176 §2: sms = confirmation by SMS, mca = multiple-channel authentication (the carrier's own channel),
# swk/hwk = proof of a software- or hardware-secured key, user = user presence and verification, mfa = the
# passkey's key plus the biometric or PIN that unlocked it, otp = a one-time password (TOTP; a printed
# single-use recovery code is the nearest RFC 8176 value too: it has no value of its own for look-up secrets).
AMR_BY_METHOD: dict[Method, tuple[str, ...]] = {
    Method.CARRIER_SMS: ("sms", "mca"),
    Method.CARRIER_APP: ("mca",),
    Method.PASSKEY: ("swk", "user", "mfa"),
    Method.PASSKEY_HARDWARE: ("hwk", "user", "mfa"),
    # No `mfa`: the key is only as good as the mobile-phone verification that bound it, for now.
    Method.PASSKEY_PROVISIONAL: ("swk", "user"),
    Method.TOTP: ("otp",),
    Method.RECOVERY_CODE: ("otp",),
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
    # A passkey with user verification is phishing-resistant multi-factor (NIST SP 800-63B-4: phr); an
    # attested, device-bound one is also hardware-backed (phrh). Carrier verification, TOTP and recovery codes
    # are each one factor (something you have): AAL1, and two of them together are still AAL1
    # (docs/integration.md section 6).
    # A provisional passkey is worth the carrier verification that added it: AAL1.
    if method is Method.PASSKEY_HARDWARE:
        return PHRH
    if method is Method.PASSKEY:
        return PHR
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

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AuthEvent:
        return cls(
            method=Method(data["method"]),
            amr=tuple(data["amr"]),
            acr=data["acr"],
            at=dt.datetime.fromisoformat(data["at"]),
        )


def best_acr(acrs: Sequence[str], issuer: str) -> str:
    """The strongest of `acrs` in the order of docs/integration.md section 6."""
    order = acr_order(issuer)
    return max(acrs, key=lambda acr: order.index(acr) if acr in order else -1)


def assurance_within(
    events: Sequence[AuthEvent], *, max_age: int | None, issuer: str, now: dt.datetime
) -> tuple[str, list[str]]:
    """The acr and amr a session vouches for: the best level and every method among the authentications
    within `max_age` seconds (all of them when None): "acr is the best level reached within max_age"
    (docs/integration.md section 6.1). With none that recent, the last authentication's (the caller asks for a new
    one anyway)."""
    recent = [e for e in events if max_age is None or (now - e.at).total_seconds() <= max_age] or list(events[-1:])
    if not recent:
        return aal1(issuer), []
    return best_acr([event.acr for event in recent], issuer), merge_amr(*(event.amr for event in recent))


def merge_amr(*amrs: Sequence[str]) -> list[str]:
    """Every amr value once, in the order the authentications happened (`sms mca` then `otp`)."""
    return list(dict.fromkeys(value for amr in amrs for value in amr))


class LoginReason(enum.StrEnum):
    """Why the resident must (re)authenticate before a code is issued."""

    NO_SESSION = "no_session"
    PROMPT_LOGIN = "prompt_login"
    MAX_AGE = "max_age"
    ACR_TOO_LOW = "acr_too_low"
    CARRIER_VERIFICATION = "carrier_verification"  # the service asked for the CI, which only the carrier gives


def acr_satisfies(reached: str, wanted: str, issuer: str) -> bool:
    """Whether the level reached meets the one asked for; higher levels meet lower requests."""
    order = acr_order(issuer)
    if wanted not in order:
        return False
    return reached in order and order.index(reached) >= order.index(wanted)


def best_acceptable(requested: list[str], issuer: str) -> list[str]:
    """The requested acr values this provider knows, in the client's order of preference."""
    known = set(acr_order(issuer))
    return [value for value in requested if value in known]


def reachable_acr(methods: set[Method], issuer: str) -> str:
    """The strongest level the resident could reach now with the methods they have."""
    return best_acr([acr_for_method(method, issuer) for method in methods] or [aal1(issuer)], issuer)


def available_methods(*, passkey: bool = False, hardware_passkey: bool = False, totp: bool = False) -> set[Method]:
    """The sign-in methods a resident can use: carrier verification always, passkeys and TOTP where registered."""
    methods = {Method.CARRIER_SMS, Method.CARRIER_APP}
    if totp:
        methods.add(Method.TOTP)
    if passkey:
        methods.add(Method.PASSKEY)
    if hardware_passkey:
        methods.add(Method.PASSKEY_HARDWARE)
    return methods
