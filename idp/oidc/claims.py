"""Scopes and the claims they release, pairwise subjects, and the acr values the provider speaks."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
from typing import Any, Protocol

from cryptography.fernet import InvalidToken

from idp.models import Client
from idp.settings import Settings, data_fernet

# OIDC Core §5.4 scopes, plus the restricted `kr_ci` (the raw CI, for services an admin allows it).
SCOPES = ("openid", "profile", "phone", "offline_access", "kr_ci")
RESTRICTED_SCOPES = frozenset({"kr_ci"})
SCOPE_CLAIMS: dict[str, tuple[str, ...]] = {
    "openid": ("sub",),
    "profile": ("name", "birthdate"),
    "phone": ("phone_number", "phone_number_verified"),
    "kr_ci": ("kr_ci",),
}
GRANT_TYPES = ("authorization_code", "refresh_token", "client_credentials")
AUTH_METHODS = ("client_secret_basic", "client_secret_post", "private_key_jwt", "none")
SUBJECT_TYPES = ("pairwise", "public")


def pairwise_sub(sector: str, resident_id: str, secret: str) -> str:
    """One `sub` per sector and resident (OIDC Core §8.1): services in different sectors cannot join records."""
    digest = hmac.new(secret.encode(), f"{sector}\x00{resident_id}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


# -- the claims a token carries ------------------------------------------------------------------------------------

IDENTITY_TRUST_FRAMEWORK = "kr_mobile_identity_verification"  # docs/integration.md section 5, OpenID Connect for IDA


def _requested(claims_request: dict[str, Any] | None, member: str) -> dict[str, Any]:
    if not claims_request:
        return {}
    value = claims_request.get(member)
    return value if isinstance(value, dict) else {}


def allowed_claims(client_scopes: list[str]) -> set[str]:
    """The claims a client may ever receive: those of the scopes an admin allowed it."""
    return {claim for scope in client_scopes for claim in SCOPE_CLAIMS.get(scope, ())}


class ClaimsSource(Protocol):
    """What the claims of a resident are made of: a `Resident`, or the columns UserInfo reads (`ResidentClaims`)."""

    @property
    def name(self) -> str | None: ...
    @property
    def birthdate(self) -> dt.date | None: ...
    @property
    def phone(self) -> str | None: ...
    @property
    def verified_at(self) -> dt.datetime | None: ...
    @property
    def verified_by(self) -> str | None: ...
    @property
    def ci_encrypted(self) -> bytes | None: ...


def resident_claims(
    resident: ClaimsSource,
    *,
    scope: str,
    claims_request: dict[str, Any] | None,
    member: str,
    client: Client,
    settings: Settings,
    include_scope_claims: bool,
) -> dict[str, Any]:
    """The resident's claims for a token or UserInfo: by granted scope, plus those the `claims` request
    parameter asked for in `member` (OIDC Core §5.5) that the client is allowed."""
    granted = set(scope.split())
    wanted: set[str] = set()
    if include_scope_claims:
        wanted |= {claim for s in granted for claim in SCOPE_CLAIMS.get(s, ())}
    requested = _requested(claims_request, member)
    # The claims parameter picks among what the granted scopes cover, never more: consent was for the scopes.
    wanted |= set(requested) & allowed_claims(sorted(granted))
    values: dict[str, Any] = {
        "name": resident.name,
        "birthdate": resident.birthdate.isoformat() if resident.birthdate else None,
        "phone_number": resident.phone,
        "phone_number_verified": resident.phone is not None,
    }
    result = {claim: values[claim] for claim in wanted if claim in values and values[claim] is not None}
    if "kr_ci" in wanted and "kr_ci" in granted:
        ci = decrypt_ci(resident, settings)
        if ci is not None:
            result["kr_ci"] = ci
    if "verified_claims" in requested and "profile" in granted and resident.verified_at is not None:
        result["verified_claims"] = verified_claims(resident, requested["verified_claims"])
    return result


def verified_claims(resident: ClaimsSource, request: object = None) -> dict[str, Any]:
    """Name and birth date as verified by the carrier agency (OpenID Connect for Identity Assurance 1.0),
    limited to the inner claims the request names when it names any."""
    assert resident.verified_at is not None
    values = {
        "name": resident.name,
        "birthdate": resident.birthdate.isoformat() if resident.birthdate else None,
    }
    inner = request.get("claims") if isinstance(request, dict) else None
    if isinstance(inner, dict) and inner:
        values = {name: value for name, value in values.items() if name in inner}
    return {
        "verification": {
            "trust_framework": IDENTITY_TRUST_FRAMEWORK,
            "time": resident.verified_at.isoformat().replace("+00:00", "Z"),
            "verification_process": resident.verified_by,
        },
        "claims": values,
    }


def id_token_claims(
    resident: ClaimsSource, scope: str, claims_request: dict[str, Any] | None, client: Client, settings: Settings
) -> dict[str, Any]:
    """Claims for the ID token. Scope claims go to UserInfo when an access token is issued (OIDC Core §5.4),
    except that this provider also puts them in the ID token, which most relying services read directly."""
    return resident_claims(
        resident,
        scope=scope,
        claims_request=claims_request,
        member="id_token",
        client=client,
        settings=settings,
        include_scope_claims=True,
    )


def encrypt_ci(ci: str, settings: Settings) -> bytes:
    """The raw CI encrypted at rest, kept only for residents of services an admin allowed `kr_ci`."""
    return data_fernet(settings).encrypt(ci.encode())


def decrypt_ci(resident: ClaimsSource, settings: Settings) -> str | None:
    """The raw CI, or None when it is not kept (or IDP_DATA_KEY changed)."""
    if resident.ci_encrypted is None:
        return None
    try:
        return data_fernet(settings).decrypt(resident.ci_encrypted).decode()
    except InvalidToken:
        return None
