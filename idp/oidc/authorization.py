"""The authorization endpoint's rules as an ordered list of one-rule checks (the shape of node-oidc-provider's
lib/actions/authorization): request checks → Authlib's client, redirect URI, response type, scope and PKCE checks →
client checks → login checks → consent checks → issue. Each check is a small function naming its rule; `decide`
runs them in order and says what the endpoint must do next. No HTTP here beyond Authlib's request object, so every
rule can be called from a test."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from authlib.oauth2.rfc6749 import OAuth2Error
from authlib.oauth2.rfc6749.errors import InvalidRequestError
from authlib.oidc.core.errors import (
    ConsentRequiredError,
    LoginRequiredError,
    RequestNotSupportedError,
    RequestURINotSupportedError,
)
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from idp.authn.assurance import LoginReason, Method, acr_satisfies, available_methods, best_acceptable, reachable_acr
from idp.authn.sessions import session_assurance
from idp.authn.totp import has_totp
from idp.models import Client, LoginSession, Passkey
from idp.oidc.consent import held_ci, missing_scopes
from idp.oidc.errors import UnmetAuthenticationRequirementsError
from idp.oidc.interaction import PendingRequest, consent_decision
from idp.oidc.logout import IdTokenHintInvalidError, read_id_token_hint
from idp.oidc.tokens import subject_for
from idp.settings import Settings

RESPONSE_MODES = ("query", "form_post")  # OAuth 2.0 Multiple Response Types §2.1; Form Post Response Mode §2
MAX_PARAMETER = 2048
MAX_NONCE = 512  # stored with the code and returned in the ID token: bounded, like its column
MAX_CLAIMS_PARAMETER = 4096
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")
PARAMETER_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
MAX_AGE = re.compile(r"[0-9]{1,10}")


# -- what arrived ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReceivedRequest:
    """The request's parameters as sent (one value each), and those that were sent more than once."""

    params: dict[str, str]
    repeated: tuple[str, ...]

    @classmethod
    def of(cls, source: Any) -> ReceivedRequest:
        """From Flask's query or form MultiDict (the CSRF token of a form post is not a protocol parameter)."""
        params = {key: value for key, value in source.items(multi=False) if key != "csrf_token"}
        return cls(params, tuple(key for key in source if len(source.getlist(key)) > 1))


def parameter_named(name: str) -> str:
    """A refused parameter as an error description names it: RFC 6749 §5.2 allows only printable ASCII other than
    `"` and `\\` there (Authlib refuses anything else), and a name of the client's choosing may hold anything."""
    return f"Parameter '{name}'" if PARAMETER_NAME.fullmatch(name) else "A parameter"


# -- request checks: before the client is known, so an error goes back only if client and redirect URI check out --


def no_repeated_parameters(received: ReceivedRequest) -> None:
    # RFC 6749 §3.1: request and response parameters MUST NOT be included more than once.
    if received.repeated:
        raise InvalidRequestError(f"{parameter_named(received.repeated[0])} is repeated.")


def parameters_are_bounded(received: ReceivedRequest) -> None:
    # Oversized values and control characters are refused rather than stored or echoed.
    for key, value in received.params.items():
        if len(value) > MAX_PARAMETER:
            raise InvalidRequestError(f"{parameter_named(key)} is too long.")
        if CONTROL_CHARACTERS.search(value) or CONTROL_CHARACTERS.search(key):
            raise InvalidRequestError(f"{parameter_named(key)} contains control characters.")


def response_mode_is_supported(received: ReceivedRequest) -> None:
    # query or form_post only (OAuth 2.0 Multiple Response Types §2.1, OAuth 2.0 Form Post Response Mode).
    mode = received.params.get("response_mode")
    if mode is not None and mode not in RESPONSE_MODES:
        raise InvalidRequestError("Unsupported 'response_mode'.")


def max_age_is_a_number(received: ReceivedRequest) -> None:
    # OIDC Core §3.1.2.1: max_age is a number of seconds.
    max_age = received.params.get("max_age")
    if max_age is not None and not MAX_AGE.fullmatch(max_age):
        raise InvalidRequestError("Invalid 'max_age'.")


def response_type_is_present(received: ReceivedRequest) -> None:
    # RFC 6749 §4.1.1: response_type is REQUIRED (Authlib would call its absence "unsupported").
    if not received.params.get("response_type"):
        raise InvalidRequestError("Missing 'response_type'.")


def nonce_is_bounded(received: ReceivedRequest) -> None:
    if len(received.params.get("nonce", "")) > MAX_NONCE:
        raise InvalidRequestError("Parameter 'nonce' is too long.")


def no_request_objects(received: ReceivedRequest) -> None:
    # OIDC Core §6 request objects are not supported: say so instead of ignoring them (OIDC Core §3.1.2.6).
    if "request" in received.params:
        raise RequestNotSupportedError("The 'request' parameter is not supported.")
    if "request_uri" in received.params:
        raise RequestURINotSupportedError("The 'request_uri' parameter is not supported.")


REQUEST_CHECKS: tuple[Callable[[ReceivedRequest], None], ...] = (
    no_repeated_parameters,
    parameters_are_bounded,
    response_mode_is_supported,
    max_age_is_a_number,
    response_type_is_present,
    nonce_is_bounded,
    no_request_objects,
)


# -- the request, parsed once after Authlib verified the client, its redirect URI, the response type and PKCE ------


@dataclass(frozen=True, slots=True)
class AuthorizationRequest:
    params: dict[str, str]
    client: Client
    redirect_uri: str
    scopes: tuple[str, ...]
    prompt: frozenset[str]
    max_age: int | None
    claims: dict[str, Any] | None
    acr_values: tuple[str, ...]  # requested, in the client's order (or the client's default acr)
    essential_acr: bool

    @classmethod
    def parse(cls, params: dict[str, str], *, client: Client, redirect_uri: str, scope: str) -> AuthorizationRequest:
        """Raises InvalidRequestError for a `claims` parameter that is not a JSON object of objects."""
        claims = parse_claims(params.get("claims"))
        acr = (claims or {}).get("id_token", {}).get("acr")
        acr = acr if isinstance(acr, dict) else {}
        values = params.get("acr_values", "").split()
        if isinstance(acr.get("values"), list):
            values = [str(value) for value in acr["values"]] + values
        elif isinstance(acr.get("value"), str):
            values = [acr["value"], *values]
        if not values and client.default_acr:
            values = [client.default_acr]
        return cls(
            params=params,
            client=client,
            redirect_uri=redirect_uri,
            scopes=tuple(scope.split()),
            prompt=frozenset(params.get("prompt", "").split()),
            max_age=int(params["max_age"]) if params.get("max_age") else None,
            claims=claims,
            acr_values=tuple(values),
            essential_acr=acr.get("essential") is True,
        )


def parse_claims(raw: str | None) -> dict[str, Any] | None:
    """The `claims` request parameter (OIDC Core §5.5), parsed.

    Raises:
        InvalidRequestError: it is too large, or not a JSON object whose `id_token` and `userinfo` are objects.
    """
    if not raw:
        return None
    if len(raw) > MAX_CLAIMS_PARAMETER:
        raise InvalidRequestError("The 'claims' parameter is too large.")
    try:
        parsed = json.loads(raw)
    except ValueError:
        raise InvalidRequestError("The 'claims' parameter is not JSON.") from None
    if not isinstance(parsed, dict) or any(not isinstance(parsed.get(m, {}), dict) for m in ("id_token", "userinfo")):
        raise InvalidRequestError("The 'claims' parameter must be a JSON object of objects.")
    return {member: parsed[member] for member in ("id_token", "userinfo") if member in parsed}


class Situation:
    """An authorization request with everything its checks look at: the browser's login session, what the browser
    remembers of the request, and the time. What a check derives (the session's level, the resident's methods) is
    worked out once, on first use."""

    def __init__(
        self,
        request: AuthorizationRequest,
        *,
        login: LoginSession | None,
        pending: PendingRequest,
        db: Session,
        settings: Settings,
        keys: Any,
        held: object,
        now: dt.datetime,
    ) -> None:
        self.request = request
        self.login = login
        self.pending = pending
        self.db = db
        self.settings = settings
        self.keys = keys
        self.held = held
        self.now = now

    @property
    def issuer(self) -> str:
        return self.settings.issuer

    @cached_property
    def session_acr(self) -> str | None:
        """The level the session vouches for: the best reached within max_age (docs/integration.md section 6.1)."""
        if self.login is None:
            return None
        return session_assurance(self.login, max_age=self.request.max_age, issuer=self.issuer, now=self.now)[0]

    @cached_property
    def known_acr(self) -> list[str]:
        """The requested levels this provider knows, in the client's order of preference."""
        return best_acceptable(list(self.request.acr_values), self.issuer)

    @cached_property
    def step_up_to(self) -> list[str]:
        """The requested levels the resident could reach with the ways in they have; only these are asked for."""
        if not self.known_acr:
            return []
        methods = resident_methods(self.db, self.login.resident_id, now=self.now) if self.login else available_methods()
        reachable = reachable_acr(methods, self.issuer)
        return [acr for acr in self.known_acr if acr_satisfies(reachable, acr, self.issuer)]

    @cached_property
    def fresh(self) -> bool:
        """Whether the resident signed in since this request sent them to (OIDC Core §3.1.2.1: an authentication
        after the request answers prompt=login and max_age, or the request would loop)."""
        since = self.pending.since
        return self.login is not None and since is not None and self.login.auth_time >= since

    @cached_property
    def hinted(self) -> Mapping[str, Any] | None:
        """The claims of the id_token_hint, if any.

        Raises:
            IdTokenHintInvalidError: it is not one of this provider's ID tokens.
        """
        hint = self.request.params.get("id_token_hint")
        return read_id_token_hint(hint, self.keys, self.settings) if hint else None

    @cached_property
    def missing_scopes(self) -> list[str]:
        assert self.login is not None
        return missing_scopes(self.db, self.login.resident_id, self.request.client, list(self.request.scopes))


def resident_methods(db: Session, resident_id: Any, *, now: dt.datetime) -> set[Method]:
    """The ways the resident could sign in now (for step-up): usable passkeys past any recovery waiting period,
    and TOTP once confirmed."""
    rows = db.execute(
        select(Passkey.attested, Passkey.backup_eligible).where(
            Passkey.resident_id == resident_id,
            Passkey.suspected_clone_at.is_(None),
            or_(Passkey.provisional_until.is_(None), Passkey.provisional_until <= now),
        )
    ).all()
    return available_methods(
        passkey=bool(rows),
        hardware_passkey=any(attested and not synced for attested, synced in rows),
        totp=has_totp(db, resident_id),
    )


# -- client checks: the client and redirect URI are verified, so an error goes back to the client ---------------


def essential_acr_is_known(situation: Situation) -> None:
    # OIDC Core §5.5.1.1: an essential acr of only levels this provider does not know can never be met.
    if situation.request.acr_values and not situation.known_acr and situation.request.essential_acr:
        raise UnmetAuthenticationRequirementsError("Unknown acr requested.")


def id_token_hint_is_ours(situation: Situation) -> None:
    # OIDC Core §3.1.2.1: the hint names the resident the client expects; it must be one of our ID tokens.
    try:
        situation.hinted  # noqa: B018  (parsed on first use; here for its error)
    except IdTokenHintInvalidError:
        raise InvalidRequestError("Invalid 'id_token_hint'.") from None


CLIENT_CHECKS: tuple[Callable[[Situation], None], ...] = (essential_acr_is_known, id_token_hint_is_ours)


# -- login checks: the first reason the resident must sign in (again), or None when the session will do ----------


def no_session(situation: Situation) -> LoginReason | None:
    # Nothing to issue a code for without a signed-in resident.
    return LoginReason.NO_SESSION if situation.login is None else None


def prompt_login(situation: Situation) -> LoginReason | None:
    # OIDC Core §3.1.2.1 prompt=login: a new authentication, whatever the session.
    return LoginReason.PROMPT_LOGIN if "login" in situation.request.prompt and not situation.fresh else None


def max_age_exceeded(situation: Situation) -> LoginReason | None:
    # OIDC Core §3.1.2.1 max_age: the last active authentication must be recent enough.
    max_age, login = situation.request.max_age, situation.login
    assert login is not None
    too_old = max_age is not None and (situation.now - login.auth_time).total_seconds() > max_age
    return LoginReason.MAX_AGE if too_old and not situation.fresh else None


def acr_too_low(situation: Situation) -> LoginReason | None:
    # OIDC Core §3.1.2.1 acr_values / §5.5.1.1: step up when the session meets none of the levels the resident can
    # reach; the rest is settled after the sign-in (consent checks).
    wanted = situation.step_up_to
    reached = any(acr_satisfies(situation.session_acr or "", acr, situation.issuer) for acr in wanted)
    return LoginReason.ACR_TOO_LOW if wanted and not reached and not situation.fresh else None


def carrier_verification_for_kr_ci(situation: Situation) -> LoginReason | None:
    # The raw CI is kept only for services allowed it, so it comes from a fresh carrier verification.
    login = situation.login
    assert login is not None
    if "kr_ci" not in situation.request.scopes or login.resident.ci_encrypted is not None:
        return None
    held = held_ci(
        situation.held,
        resident_id=login.resident_id,
        client_id=situation.request.client.id,
        settings=situation.settings,
        now=situation.now,
    )
    return LoginReason.CARRIER_VERIFICATION if held is None else None


def hint_names_another_resident(situation: Situation) -> LoginReason | None:
    # OIDC Core §3.1.2.1: the session's resident must be the one the id_token_hint names. Someone other than the
    # hinted resident who signed in for this very request is answered with an error, not handed to the client.
    hinted, login = situation.hinted, situation.login
    assert login is not None
    if hinted is None or hinted.get("sub") == subject_for(
        situation.request.client, login.resident_id, situation.settings
    ):
        return None
    if situation.fresh:
        raise LoginRequiredError()
    return LoginReason.PROMPT_LOGIN


LOGIN_CHECKS: tuple[Callable[[Situation], LoginReason | None], ...] = (
    no_session,
    prompt_login,
    max_age_exceeded,
    acr_too_low,
    carrier_verification_for_kr_ci,
    hint_names_another_resident,
)


# -- consent checks: the resident is signed in well enough --------------------------------------------------------


def stranger_learns_nothing_of_passkeys(situation: Situation) -> None:
    # A service the resident has not allowed learns nothing of their ways to sign in: with prompt=none, an unmet
    # level is login_required whether or not a passkey could meet it (OIDC Core §3.1.2.6).
    if "none" in situation.request.prompt and not _acr_reached(situation) and situation.missing_scopes:
        raise LoginRequiredError()


def essential_acr_is_met(situation: Situation) -> None:
    # OIDC Core §5.5.1.1: an essential acr this resident cannot reach fails the request; a voluntary one returns
    # the level reached.
    if situation.request.essential_acr and not _acr_reached(situation):
        raise UnmetAuthenticationRequirementsError("The requested authentication level cannot be met.")


def _acr_reached(situation: Situation) -> bool:
    wanted = situation.known_acr
    return not wanted or any(acr_satisfies(situation.session_acr or "", acr, situation.issuer) for acr in wanted)


CONSENT_CHECKS: tuple[Callable[[Situation], None], ...] = (stranger_learns_nothing_of_passkeys, essential_acr_is_met)


# -- what the endpoint does next ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SignIn:
    """Send the resident to sign in (again), saying why."""

    reason: LoginReason


@dataclass(frozen=True, slots=True)
class AskConsent:
    """Show the consent page listing `shown`."""

    shown: list[str]


@dataclass(frozen=True, slots=True)
class Issue:
    """Answer the client: a code, or access_denied when the resident said no."""

    allowed: bool


Outcome = SignIn | AskConsent | Issue


def check_request(received: ReceivedRequest) -> None:
    """Run the request checks.

    Raises:
        OAuth2Error: the first rule the request breaks (without a redirect URI: the caller decides).
    """
    for check in REQUEST_CHECKS:
        check(received)


def decide(situation: Situation) -> Outcome:
    """Run the client, login and consent checks in order; what the endpoint does next.

    Raises:
        OAuth2Error: the rule the request breaks (the client is verified: it may be told at its redirect URI).
    """
    for client_check in CLIENT_CHECKS:
        client_check(situation)
    for login_check in LOGIN_CHECKS:
        reason = login_check(situation)
        if reason is not None:
            if "none" in situation.request.prompt:
                # OIDC Core §3.1.2.6: prompt=none and the resident must sign in.
                raise LoginRequiredError()
            return SignIn(reason)
    for consent_check in CONSENT_CHECKS:
        consent_check(situation)
    return consent_needed(situation)


def consent_needed(situation: Situation) -> Outcome:
    """Ask for the scopes the resident has not allowed this client yet (all with prompt=consent), unless the resident
    answered this request's page already; prompt=none cannot ask (OIDC Core §3.1.2.6)."""
    login = situation.login
    assert login is not None
    scopes = list(situation.request.scopes)
    decision = consent_decision(situation.pending, resident_id=login.resident_id, scopes=scopes)
    if decision == "deny":
        return Issue(allowed=False)
    missing = situation.missing_scopes
    if missing or ("consent" in situation.request.prompt and decision is None):
        if "none" in situation.request.prompt:
            raise ConsentRequiredError()
        return AskConsent(shown=missing or scopes)
    return Issue(allowed=True)


def redirectable(error: OAuth2Error, redirect_uri: str) -> OAuth2Error:
    """The error, to go back to the verified redirect URI."""
    error.redirect_uri = redirect_uri
    return error
