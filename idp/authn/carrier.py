"""Mobile-carrier verification (휴대폰 본인확인): the CarrierGateway seam, its HTTP client, and result checks."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import enum
import hashlib
import hmac
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

import httpx
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from idp.keyring import jws_registry
from idp.models import Carrier, CarrierResult
from idp.phones import normalize_phone

RESULT_TYPE = "carrier-result+jwt"
RESULT_LIFETIME = 600  # docs/carrier.md: results carry a 10-minute exp
CLOCK_LEEWAY = 60
# The algorithms an agency may sign results with (docs/carrier.md), in a registry built once.
AGENCY_RESULT_REGISTRY = jws_registry(["ES256", "RS256", "PS256", "EdDSA"])
CODE_LENGTH = 6
SANDBOX_AGENCY = "sandbox"


class CarrierErrorCode(enum.StrEnum):
    WRONG_CODE = "wrong_code"
    EXPIRED = "expired"
    TOO_MANY_ATTEMPTS = "too_many_attempts"
    RATE_LIMITED = "rate_limited"
    IDENTITY_MISMATCH = "identity_mismatch"
    CARRIER_MISMATCH = "carrier_mismatch"
    NOT_ELIGIBLE = "not_eligible"
    USER_DENIED = "user_denied"
    NUMBER_MISMATCH = "number_mismatch"  # another number than the site showed was picked in the carrier's app
    INTEGRITY_FAILED = "integrity_failed"
    REPLAYED = "replayed"
    AGENCY_UNAVAILABLE = "agency_unavailable"
    AGENCY_TIMEOUT = "agency_timeout"
    INVALID_REQUEST = "invalid_request"


RETRYABLE = frozenset(
    {
        CarrierErrorCode.WRONG_CODE,
        CarrierErrorCode.RATE_LIMITED,
        CarrierErrorCode.AGENCY_UNAVAILABLE,
        CarrierErrorCode.AGENCY_TIMEOUT,
    }
)


class CarrierVerificationError(Exception):
    """The verification failed; `code` says how, and whether and when trying again can help."""

    def __init__(
        self,
        code: CarrierErrorCode,
        message: str = "",
        *,
        retryable: bool | None = None,
        attempts_remaining: int | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(f"{code.value}: {message}" if message else code.value)
        self.code = code
        self.retryable = code in RETRYABLE if retryable is None else retryable
        self.attempts_remaining = attempts_remaining
        self.retry_after = retry_after


class VerificationMethod(enum.StrEnum):
    SMS = "sms"
    APP = "app"


@dataclass(frozen=True, slots=True)
class VerificationRequest:
    """What the resident entered, plus the login session's binding and their IP."""

    carrier: Carrier
    name: str
    birthdate: dt.date
    rrn_digit7: str
    phone: str
    method: VerificationMethod
    session_binding: str
    client_ip: str


@dataclass(frozen=True, slots=True)
class Transaction:
    txn_id: str
    method: VerificationMethod
    expires_at: dt.datetime
    resend_after: dt.datetime | None
    sends_remaining: int | None
    attempts_remaining: int | None
    match_number: str | None = None


@dataclass(frozen=True, slots=True)
class Pending:
    """The resident has not answered in the carrier's app yet."""

    expires_at: dt.datetime | None = None
    retry_after: int | None = None


@dataclass(frozen=True, slots=True)
class VerifiedIdentity:
    """Who the agency says the resident is; checked for signature, audience, freshness and transaction."""

    ci: str
    ci_previous: str | None
    name: str
    birthdate: dt.date
    sex: str
    nationality: str
    phone: str
    carrier: str
    method: VerificationMethod
    agency: str
    agency_txn_id: str
    verified_at: dt.datetime
    # For the caller's checks of session binding and single use.
    jti: str
    session_binding: str
    expires_at: dt.datetime


class CarrierGateway(Protocol):
    """A verification agency (docs/carrier.md); the sandbox and a real agency's adapter implement it."""

    def start(self, request: VerificationRequest) -> Transaction: ...

    def confirm_code(self, txn_id: str, code: str) -> VerifiedIdentity: ...

    def poll(self, txn_id: str) -> VerifiedIdentity | Pending: ...

    def resend(self, txn_id: str) -> Transaction:
        """Send a new code; never restores attempts."""

    def cancel(self, txn_id: str) -> None: ...


class CircuitBreaker:
    """After `threshold` failures in a row the agency is not called for `cooldown` seconds."""

    def __init__(self, threshold: int = 5, cooldown: float = 30.0, clock: Callable[[], float] = time.monotonic):
        self.threshold = threshold
        self.cooldown = cooldown
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._lock = threading.Lock()

    def check(self) -> None:
        with self._lock:
            if self._opened_at is None:
                return
            remaining = self.cooldown - (self._clock() - self._opened_at)
            if remaining > 0:
                raise CarrierVerificationError(
                    CarrierErrorCode.AGENCY_UNAVAILABLE,
                    "circuit open after repeated agency failures",
                    retry_after=max(1, int(remaining)),
                )
            # Half-open: let one call through; its outcome closes or re-opens the circuit.
            self._opened_at = None
            self._failures = self.threshold - 1

    def succeeded(self) -> None:
        with self._lock:
            self._failures = 0
            self._opened_at = None

    def failed(self) -> None:
        with self._lock:
            self._failures += 1
            if self._failures >= self.threshold:
                self._opened_at = self._clock()


class HttpCarrierGateway:
    """The agency protocol of docs/carrier.md over HTTP, with timeouts and a circuit breaker."""

    def __init__(
        self,
        base_url: str,
        *,
        site_code: str,
        site_secret: str,
        production: bool,
        timeout: float = 5.0,
        breaker: CircuitBreaker | None = None,
        clock: Callable[[], float] = time.time,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        # Results name their agency as `iss`; one that names another is not this agency's.
        self.expected_issuer = self.base_url
        self.site_code = site_code
        self.production = production
        self.breaker = breaker or CircuitBreaker()
        self._clock = clock
        self._client = httpx.Client(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 2.0)),
            headers={"Authorization": f"Bearer {site_secret}", "X-Site-Code": site_code},
            transport=transport,
        )
        self._keys: KeySet | None = None
        self._keys_fetched_at = float("-inf")
        self._keys_lock = threading.Lock()

    def close(self) -> None:
        self._client.close()

    # -- the seam ------------------------------------------------------------------------------------------------

    def start(self, request: VerificationRequest) -> Transaction:
        body = {
            "carrier": request.carrier.value,
            "name": request.name,
            "birthdate": request.birthdate.isoformat(),
            "rrn_digit7": request.rrn_digit7,
            "phone": request.phone,
            "method": request.method.value,
            "session_binding": request.session_binding,
            "client_ip": request.client_ip,
            "consent": True,
        }
        data = self._call("POST", "/v1/verifications", body)
        return _transaction(data, fallback_method=request.method)

    def confirm_code(self, txn_id: str, code: str) -> VerifiedIdentity:
        data = self._call("POST", f"/v1/verifications/{_txn(txn_id)}/confirm", {"code": code})
        return self._verify_result(data, txn_id)

    def poll(self, txn_id: str) -> VerifiedIdentity | Pending:
        try:
            data = self._call("GET", f"/v1/verifications/{_txn(txn_id)}")
        except _SlowDownError as slow:
            return Pending(retry_after=slow.retry_after)
        if data.get("status") == "pending":
            return Pending(expires_at=_parse_time(data.get("expires_at")))
        return self._verify_result(data, txn_id)

    def resend(self, txn_id: str) -> Transaction:
        data = self._call("POST", f"/v1/verifications/{_txn(txn_id)}/resend", {})
        data.setdefault("txn_id", txn_id)
        return _transaction(data, fallback_method=VerificationMethod.SMS)

    def cancel(self, txn_id: str) -> None:
        self._call("POST", f"/v1/verifications/{_txn(txn_id)}/cancel", {})

    # -- transport -----------------------------------------------------------------------------------------------

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        self.breaker.check()
        try:
            response = self._client.request(method, path, json=body)
        except httpx.TimeoutException:
            self.breaker.failed()
            raise CarrierVerificationError(
                CarrierErrorCode.AGENCY_TIMEOUT, "the agency did not answer in time"
            ) from None
        except httpx.HTTPError as exc:
            self.breaker.failed()
            raise CarrierVerificationError(
                CarrierErrorCode.AGENCY_UNAVAILABLE, f"cannot reach the agency: {type(exc).__name__}"
            ) from None
        try:
            data = response.json()
            if not isinstance(data, dict):
                raise ValueError("not an object")
        except ValueError:
            self.breaker.failed()
            raise CarrierVerificationError(
                CarrierErrorCode.AGENCY_UNAVAILABLE, f"the agency answered {response.status_code} without JSON"
            ) from None
        if response.status_code >= 500:
            self.breaker.failed()
        else:
            self.breaker.succeeded()
        if response.is_success:
            return data
        raise _error_from(data, response)

    def _verify_result(self, data: dict[str, Any], txn_id: str) -> VerifiedIdentity:
        token = data.get("result")
        if not isinstance(token, str):
            raise CarrierVerificationError(CarrierErrorCode.INTEGRITY_FAILED, "the agency sent no result")
        claims = self._verified_claims(token)
        now = self._clock()
        try:
            iat, exp = int(claims["iat"]), int(claims["exp"])
            if claims.get("iss") != self.expected_issuer:
                raise ValueError("result issued by another agency")
            if claims.get("aud") != self.site_code:
                raise ValueError("audience is not this site")
            if claims.get("txn") != txn_id:
                raise ValueError("result of another transaction")
            if exp < now - CLOCK_LEEWAY or iat > now + CLOCK_LEEWAY or exp - iat > RESULT_LIFETIME + CLOCK_LEEWAY:
                raise ValueError("result is not fresh")
            agency = str(claims["agency"])
            if self.production and agency == SANDBOX_AGENCY:
                raise ValueError("a sandbox result in production")
            identity = VerifiedIdentity(
                ci=_ci(claims["ci"]),
                ci_previous=_ci(claims["ci_previous"]) if claims.get("ci_previous") else None,
                name=_text(claims["name"], 200),
                birthdate=dt.date.fromisoformat(claims["birthdate"]),
                sex=_text(claims["sex"], 1),
                nationality=_text(claims["nationality"], 16),
                phone=normalize_phone(claims["phone"]),
                carrier=Carrier(claims["carrier"]).value,
                method=VerificationMethod(claims["method"]),
                agency=_text(agency, 64),
                agency_txn_id=txn_id,
                verified_at=dt.datetime.fromtimestamp(int(claims["verified_at"]), dt.UTC),
                jti=_text(claims["jti"], 128),
                session_binding=_text(claims["session_binding"], 128),
                expires_at=dt.datetime.fromtimestamp(exp, dt.UTC),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CarrierVerificationError(CarrierErrorCode.INTEGRITY_FAILED, str(exc)) from None
        return identity

    def _verified_claims(self, token: str) -> dict[str, Any]:
        for refresh in (False, True):
            keys = self._agency_keys(refresh=refresh)
            try:
                result = jws.deserialize_compact(token, keys, registry=AGENCY_RESULT_REGISTRY)
            except JoseError as exc:
                # An unknown kid may be a rotated agency key: fetch the keys once more (at most once a minute).
                if not refresh and "key" in str(exc).lower():
                    continue
                raise CarrierVerificationError(CarrierErrorCode.INTEGRITY_FAILED, "bad result signature") from None
            except ValueError:
                raise CarrierVerificationError(CarrierErrorCode.INTEGRITY_FAILED, "malformed result") from None
            if result.protected.get("typ") != RESULT_TYPE:
                raise CarrierVerificationError(CarrierErrorCode.INTEGRITY_FAILED, "not a verification result")
            try:
                claims = json.loads(result.payload)
            except ValueError:
                raise CarrierVerificationError(CarrierErrorCode.INTEGRITY_FAILED, "malformed result") from None
            if not isinstance(claims, dict):
                raise CarrierVerificationError(CarrierErrorCode.INTEGRITY_FAILED, "malformed result")
            return claims
        raise CarrierVerificationError(CarrierErrorCode.INTEGRITY_FAILED, "bad result signature")

    def _agency_keys(self, *, refresh: bool) -> KeySet:
        with self._keys_lock:
            stale = self._clock() - self._keys_fetched_at > 3600
            may_refetch = self._clock() - self._keys_fetched_at > 60
            if self._keys is None or stale or (refresh and may_refetch):
                data = self._call("GET", "/v1/jwks")
                try:
                    self._keys = KeySet.import_key_set(data)  # type: ignore[arg-type]  # JSON from the agency
                except (JoseError, ValueError, TypeError, KeyError):
                    raise CarrierVerificationError(
                        CarrierErrorCode.AGENCY_UNAVAILABLE, "the agency's keys are malformed"
                    ) from None
                self._keys_fetched_at = self._clock()
            return self._keys


class _SlowDownError(Exception):
    def __init__(self, retry_after: int | None) -> None:
        self.retry_after = retry_after


def _error_from(data: dict[str, Any], response: httpx.Response) -> Exception:
    code_text = data.get("error")
    retry_after = _int_or_none(data.get("retry_after"))
    if code_text == "slow_down":
        return _SlowDownError(retry_after or 1)
    try:
        code = CarrierErrorCode(str(code_text))
    except ValueError:
        code = CarrierErrorCode.AGENCY_UNAVAILABLE if response.status_code >= 500 else CarrierErrorCode.INVALID_REQUEST
    retryable = data.get("retryable")
    return CarrierVerificationError(
        code,
        str(data.get("message") or ""),
        retryable=retryable if isinstance(retryable, bool) else None,
        attempts_remaining=_int_or_none(data.get("attempts_remaining")),
        retry_after=retry_after,
    )


def _transaction(data: dict[str, Any], *, fallback_method: VerificationMethod) -> Transaction:
    try:
        expires_at = _parse_time(data["expires_at"])
        if expires_at is None:
            raise ValueError("no expiry")
        return Transaction(
            txn_id=_text(data["txn_id"], 128),
            method=VerificationMethod(data.get("method", fallback_method.value)),
            expires_at=expires_at,
            resend_after=_parse_time(data.get("resend_after")),
            sends_remaining=_int_or_none(data.get("sends_remaining")),
            attempts_remaining=_int_or_none(data.get("attempts_remaining")),
            match_number=str(data["match_number"]) if data.get("match_number") is not None else None,
        )
    except (KeyError, TypeError, ValueError):
        raise CarrierVerificationError(CarrierErrorCode.AGENCY_UNAVAILABLE, "malformed agency answer") from None


def _txn(txn_id: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_\-]{1,128}", txn_id):
        raise CarrierVerificationError(CarrierErrorCode.INVALID_REQUEST, "malformed transaction id")
    return txn_id


def _ci(value: object) -> str:
    text = _text(value, 88)
    try:
        if len(text) != 88 or len(base64.b64decode(text, validate=True)) != 64:
            raise ValueError("CI is not 64 bytes of Base64")
    except binascii.Error:
        raise ValueError("CI is not Base64") from None
    return text


def _text(value: object, limit: int) -> str:
    if not isinstance(value, str) or not value or len(value) > limit:
        raise ValueError("missing or oversized claim")
    return value


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _parse_time(value: object) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


# -- checks that need the IdP's own state --------------------------------------------------------------------------


def session_binding_for(secret: str) -> str:
    """What the agency binds a result to: a digest of a secret only this login flow holds."""
    return base64.urlsafe_b64encode(hashlib.sha256(secret.encode()).digest()).rstrip(b"=").decode()


# A result's jti is stored once: the second INSERT of the same one changes nothing (one statement, no savepoint).
_RESULTS = cast(Table, CarrierResult.__table__)
MARK_RESULT_USED = {
    "postgresql": postgresql.insert(_RESULTS)
    .on_conflict_do_nothing(index_elements=[_RESULTS.c.jti])
    .returning(_RESULTS.c.jti),
    "sqlite": sqlite.insert(_RESULTS).on_conflict_do_nothing(index_elements=[_RESULTS.c.jti]).returning(_RESULTS.c.jti),
}


def redeem_identity(db: Session, identity: VerifiedIdentity, *, binding_secret: str) -> None:
    """Accept a verified identity once, for the login flow that started it.

    Raises:
        CarrierVerificationError: `integrity_failed` for a result of another session, `replayed` for a
            result already used.
    """
    if not hmac.compare_digest(identity.session_binding, session_binding_for(binding_secret)):
        raise CarrierVerificationError(CarrierErrorCode.INTEGRITY_FAILED, "result of another login session")
    used = db.execute(
        MARK_RESULT_USED[db.get_bind().dialect.name],
        {
            "jti": identity.jti,
            "agency_txn_digest": hashlib.sha256(identity.agency_txn_id.encode()).hexdigest(),
            "used_at": dt.datetime.now(dt.UTC),
            "expires_at": identity.expires_at,
        },
    )
    if used.scalar() is None:
        raise CarrierVerificationError(CarrierErrorCode.REPLAYED, "result already used")
