"""For relying services: verify this IdP's ID, access and back-channel logout tokens, and demand scopes and
assurance of API callers with RFC 9470 step-up challenges.

It imports only the standard library, joserfc and httpx, so any Python service can use it without the IdP's own
dependencies. docs/integration.md (section 1, "Start here") is the guide for services.
"""

from __future__ import annotations

import heapq
import hmac
import json
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import httpx
from joserfc import jws
from joserfc.errors import JoseError, UnsupportedAlgorithmError
from joserfc.jwa import EdDSAAlgorithm, JWSAlgModel
from joserfc.jwk import ECKey, OKPKey, RSAKey
from joserfc.jws import JWSRegistry

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

DISCOVERY_PATH = "/.well-known/openid-configuration"  # OIDC Discovery 1.0 §4
# The algorithms a key may carry, with the key type (and curve) each needs: a token's alg must be its key's alg, so
# an RSA key never checks an HMAC or ECDSA signature and an unsigned token has no key at all (RFC 8725 §3.1).
KEY_TYPES: Mapping[str, tuple[str, str | None]] = {
    "RS256": ("RSA", None),
    "PS256": ("RSA", None),
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
    "EdDSA": ("OKP", "Ed25519"),
}
DEFAULT_JWKS_MAX_AGE = 300.0  # seconds, when the JWKS response carries no Cache-Control max-age
MIN_JWKS_MAX_AGE = 60.0  # even `no-store` is cached this long: every token would otherwise fetch the keys
MAX_JWKS_MAX_AGE = 86_400.0  # a day: a withdrawn key stops verifying within a day whatever the IdP said
DEFAULT_REFETCH_FLOOR = 5.0  # seconds between fetches of the JWKS, so forged kids cannot make us hammer the IdP
DEFAULT_GRACE = 3_600.0  # seconds past max-age that cached keys still verify while the IdP is unreachable
DEFAULT_HTTP_TIMEOUT = 5.0
MAX_DOCUMENT_BYTES = 512 * 1024  # discovery and JWKS documents are a few kB
MAX_TOKEN_LENGTH = 16 * 1024
ID_TOKEN_TYPES = frozenset({"jwt", "application/jwt"})  # OIDC Core §2 (typ is optional; a media type)
ACCESS_TOKEN_TYPES = frozenset({"at+jwt", "application/at+jwt"})  # RFC 9068 §2.1
LOGOUT_TOKEN_TYPES = frozenset({"logout+jwt", "application/logout+jwt"})  # Back-Channel Logout 1.0 §2.4
LOGOUT_EVENT = "http://schemas.openid.net/event/backchannel-logout"  # Back-Channel Logout 1.0 §2.4
# A logout token without exp is refused once older than this (its jti must be remembered until then); this IdP's
# logout tokens carry an exp two minutes after iat.
LOGOUT_TOKEN_MAX_AGE = 300
MAX_REMEMBERED_JTIS = 100_000
ACCESS_TOKEN_ENVIRON_KEY = "idp.rp.access_token"  # noqa: S105  (a WSGI environ key, not a secret)
# RFC 9470 §3 and RFC 6750 §3.1: the status each challenge goes with.
CHALLENGE_STATUS: Mapping[str, int] = {
    "invalid_token": 401,
    "insufficient_scope": 403,
    "insufficient_user_authentication": 401,
}
_HEADER_UNSAFE = re.compile(r"[^\x20-\x7e]")


class VerificationError(Exception):
    """A token was refused, or could not be checked. `reason` is a machine-readable snake_case word (docs/
    integration.md lists them); `description` is one sentence for logs and error bodies, never the token."""

    def __init__(self, reason: str, description: str) -> None:
        super().__init__(f"{reason}: {description}")
        self.reason = reason
        self.description = description


@dataclass(frozen=True, slots=True)
class IdToken:
    """A verified ID token (OIDC Core §2); `claims` holds every claim, profile and phone claims included."""

    sub: str
    iss: str
    aud: tuple[str, ...]
    azp: str | None
    exp: int
    iat: int
    auth_time: int | None
    nonce: str | None
    acr: str | None
    amr: tuple[str, ...]
    sid: str | None
    claims: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class AccessToken:
    """A verified RFC 9068 access token; `sub` is the client's id when the service acts for itself."""

    sub: str
    client_id: str
    scopes: frozenset[str]
    acr: str | None
    amr: tuple[str, ...]
    auth_time: int | None
    exp: int
    iat: int
    jti: str
    claims: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class LogoutToken:
    """A verified back-channel logout token: end the sessions of `sid`, or every session of `sub` when no sid."""

    sub: str | None
    sid: str | None
    jti: str
    iat: int
    claims: Mapping[str, Any]


# -- keys ------------------------------------------------------------------------------------------------------------


class _QuietEdDSA(EdDSAAlgorithm):
    # RFC 9864 deprecates the name EdDSA; this IdP may still sign with it (docs/admin.md section 4), and a warning
    # at every verification would be noise (or an error, where warnings are errors).
    security_warning = None  # type: ignore[assignment]  # the base declares str; its registry accepts None


class _Registry(JWSRegistry):
    algorithms: dict[str, JWSAlgModel] = {**JWSRegistry.algorithms, "EdDSA": _QuietEdDSA()}  # noqa: RUF012  (joserfc reads it per class)


@dataclass(frozen=True, slots=True)
class _Key:
    alg: str
    jwk: RSAKey | ECKey | OKPKey
    registry: JWSRegistry


@dataclass(frozen=True, slots=True)
class _KeySet:
    """The JWKS as fetched: keys by kid, each with the one registry built for the set."""

    keys: Mapping[str, _Key]
    fetched_at: float
    max_age: float

    def fresh(self, now: float) -> bool:
        return now < self.fetched_at + self.max_age


def _import_keys(document: object, fetched_at: float, max_age: float) -> _KeySet:
    """The usable signing keys of a JWKS document: a kid, a known alg and the key type that alg needs; others are
    skipped, and a kid listed twice is dropped (which of the two would be meant cannot be known)."""
    members = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(members, list):
        raise VerificationError("bad_jwks", "The issuer's JWKS document has no keys array.")
    found: dict[str, tuple[str, RSAKey | ECKey | OKPKey]] = {}
    duplicated: set[str] = set()
    for member in members:
        imported = _import_key(member)
        if imported is None:
            continue
        kid, alg, jwk = imported
        if kid in found:
            duplicated.add(kid)
        found[kid] = (alg, jwk)
    registry = _Registry(algorithms=sorted({alg for alg, _ in found.values()}))
    keys = {kid: _Key(alg, jwk, registry) for kid, (alg, jwk) in found.items() if kid not in duplicated}
    return _KeySet(keys=MappingProxyType(keys), fetched_at=fetched_at, max_age=max_age)


def _import_key(member: object) -> tuple[str, str, RSAKey | ECKey | OKPKey] | None:
    if not isinstance(member, dict):
        return None
    kid, alg, kty = member.get("kid"), member.get("alg"), member.get("kty")
    if not isinstance(kid, str) or not isinstance(alg, str) or alg not in KEY_TYPES:
        return None
    if member.get("use", "sig") != "sig" or "d" in member:
        return None  # an encryption key, or a private key the IdP should never have published
    wanted_kty, wanted_crv = KEY_TYPES[alg]
    if kty != wanted_kty or (wanted_crv is not None and member.get("crv") != wanted_crv):
        return None
    public = {name: value for name, value in member.items() if name not in ("key_ops", "x5c", "x5t", "x5u")}
    try:
        jwk: RSAKey | ECKey | OKPKey
        if kty == "RSA":
            jwk = RSAKey.import_key(public)
        elif kty == "EC":
            jwk = ECKey.import_key(public)
        else:
            jwk = OKPKey.import_key(public)
    except (JoseError, ValueError, TypeError, KeyError):
        return None
    return kid, alg, jwk


def _max_age(cache_control: str | None) -> float:
    """Seconds the JWKS may be cached, from its Cache-Control (RFC 9111 §5.2.2.1), bounded to a minute .. a day."""
    if not cache_control:
        return DEFAULT_JWKS_MAX_AGE
    match = re.search(r"(?:^|[,\s])max-age\s*=\s*\"?(\d{1,10})", cache_control, re.IGNORECASE)
    if match is None:
        return MIN_JWKS_MAX_AGE if re.search(r"no-(?:store|cache)", cache_control, re.I) else DEFAULT_JWKS_MAX_AGE
    return min(max(float(match.group(1)), MIN_JWKS_MAX_AGE), MAX_JWKS_MAX_AGE)


# -- the verifier ----------------------------------------------------------------------------------------------------


class Verifier:
    """Verifies the tokens `issuer` signs, for the relying service `client_id`.

    The issuer's discovery document is read once, on first use; its JWKS is cached for the `Cache-Control: max-age`
    the IdP sends (bounded to 60 s .. 24 h; 5 min without one). A token naming a key the cache lacks makes one
    refetch, at most once per `refetch_floor` seconds whatever the number of such tokens. While the IdP cannot be
    reached, the cached keys keep verifying until `grace` seconds (1 h by default) past their max-age; after that,
    or with no keys ever fetched, verification fails with reason `idp_unreachable`.

    Verification itself does no I/O and takes no lock once the keys are cached: one instance serves every thread
    of a process, and should be built once and kept.
    """

    def __init__(
        self,
        issuer: str,
        *,
        client_id: str,
        audience: str | None = None,
        leeway: int = 30,
        http: httpx.Client | None = None,
        clock: Callable[[], float] = time.time,
        refetch_floor: float = DEFAULT_REFETCH_FLOOR,
        grace: float = DEFAULT_GRACE,
    ) -> None:
        self.issuer = issuer
        self.client_id = client_id
        self.audience = audience if audience is not None else client_id
        self.leeway = leeway
        self._http = http if http is not None else httpx.Client(timeout=DEFAULT_HTTP_TIMEOUT)
        self._clock = clock
        self._refetch_floor = refetch_floor
        self._grace = grace
        self._lock = threading.Lock()  # held only to fetch discovery or the JWKS
        self._jwks_uri: str | None = None
        self._keys: _KeySet | None = None
        self._last_fetch = float("-inf")
        self._logouts = _SeenJtis(MAX_REMEMBERED_JTIS)

    # -- the three tokens ----------------------------------------------------------------------------------------

    def verify_id_token(
        self,
        token: str,
        *,
        nonce: str | None = None,
        max_age: int | None = None,
        acr_values: Iterable[str] | None = None,
    ) -> IdToken:
        """The ID token's claims, once every check of OIDC Core §3.1.3.7 passed: signature, typ, iss, aud and azp,
        exp, iat, nbf, the `nonce` sent (when given), `max_age` against auth_time and an acr among `acr_values`.

        Raises:
            VerificationError: the token is refused, or the keys cannot be fetched (`idp_unreachable`).
        """
        now = self._clock()
        header, claims = self._decode(token, now)
        _check_type(header, ID_TOKEN_TYPES, required=False, what="an ID token")
        self._check_issuer(claims)
        audience = _audience(claims, self.client_id)
        azp = _optional_str(claims, "azp")
        # OIDC Core §3.1.3.7 items 4 and 5: several audiences need an azp, and an azp must be this client.
        if len(audience) > 1 and azp is None:
            raise VerificationError("wrong_azp", "The token has several audiences and no azp.")
        if azp is not None and azp != self.client_id:
            raise VerificationError("wrong_azp", "The token was issued to another client (azp).")
        exp, iat = self._check_times(claims, now)
        if nonce is not None:
            sent = claims.get("nonce")
            if not isinstance(sent, str) or not hmac.compare_digest(sent.encode(), nonce.encode()):
                raise VerificationError("nonce_mismatch", "The token's nonce is not the one sent.")
        auth_time = self._check_auth_time(claims, now, max_age)
        acr = _optional_str(claims, "acr")
        _check_acr(acr, acr_values)
        return IdToken(
            sub=_required_str(claims, "sub"),
            iss=self.issuer,
            aud=audience,
            azp=azp,
            exp=exp,
            iat=iat,
            auth_time=auth_time,
            nonce=_optional_str(claims, "nonce"),
            acr=acr,
            amr=_strings(claims.get("amr")),
            sid=_optional_str(claims, "sid"),
            claims=MappingProxyType(claims),
        )

    def verify_access_token(
        self,
        token: str,
        *,
        scopes: Iterable[str] = (),
        acr_values: Iterable[str] | None = None,
        max_age: int | None = None,
    ) -> AccessToken:
        """The access token's claims, once every check of RFC 9068 §4 passed (signature, typ at+jwt, iss, aud,
        exp, iat, nbf, client_id), with every scope of `scopes`, an acr among `acr_values` and, with `max_age`,
        an auth_time no older than that.

        Raises:
            VerificationError: the token is refused (`insufficient_scope`, `insufficient_acr` and `too_old` are
            the reasons a step-up can cure), or the keys cannot be fetched (`idp_unreachable`).
        """
        now = self._clock()
        header, claims = self._decode(token, now)
        _check_type(header, ACCESS_TOKEN_TYPES, required=True, what="an access token")
        self._check_issuer(claims)
        _audience(claims, self.audience)
        exp, iat = self._check_times(claims, now)
        client_id = _required_str(claims, "client_id")
        sub = _required_str(claims, "sub")
        jti = _required_str(claims, "jti")
        granted = claims.get("scope", "")
        if not isinstance(granted, str):
            raise VerificationError("malformed", "The token's scope is not a string.")
        granted_scopes = frozenset(granted.split())
        missing = [scope for scope in scopes if scope not in granted_scopes]
        if missing:
            raise VerificationError("insufficient_scope", f"The token lacks the scope {' '.join(missing)}.")
        acr = _optional_str(claims, "acr")
        _check_acr(acr, acr_values)
        auth_time = self._check_auth_time(claims, now, max_age)
        return AccessToken(
            sub=sub,
            client_id=client_id,
            scopes=granted_scopes,
            acr=acr,
            amr=_strings(claims.get("amr")),
            auth_time=auth_time,
            exp=exp,
            iat=iat,
            jti=jti,
            claims=MappingProxyType(claims),
        )

    def verify_logout_token(self, token: str) -> LogoutToken:
        """The logout token's sub and sid, once every check of Back-Channel Logout 1.0 §2.6 passed; its jti is then
        remembered until it expires, so the same token is refused a second time (reason `replayed`).

        Raises:
            VerificationError: the token is refused, or the keys cannot be fetched (`idp_unreachable`).
        """
        now = self._clock()
        header, claims = self._decode(token, now)
        _check_type(header, LOGOUT_TOKEN_TYPES, required=False, what="a logout token")
        self._check_issuer(claims)
        _audience(claims, self.client_id)
        iat = _number(claims, "iat")
        if iat > now + self.leeway:
            raise VerificationError("not_yet_valid", "The token was issued in the future (iat).")
        expires = _number(claims, "exp") if "exp" in claims else iat + LOGOUT_TOKEN_MAX_AGE
        if now - self.leeway >= expires:
            raise VerificationError("expired", "The token has expired.")
        jti = _required_str(claims, "jti")
        events = claims.get("events")
        # §2.4: the events claim holds the back-channel logout event, as a JSON object.
        if not isinstance(events, dict) or set(events) != {LOGOUT_EVENT} or not isinstance(events[LOGOUT_EVENT], dict):
            raise VerificationError("bad_events", "The token's events claim is not a back-channel logout event.")
        if "nonce" in claims:  # §2.4: a nonce would make it an ID token in disguise
            raise VerificationError("nonce_present", "A logout token must not carry a nonce.")
        sub, sid = _optional_str(claims, "sub"), _optional_str(claims, "sid")
        if sub is None and sid is None:
            raise VerificationError("missing_claim", "The token has neither sub nor sid.")
        if not self._logouts.add(jti, expires + self.leeway, now):
            raise VerificationError("replayed", "This logout token was already received.")
        return LogoutToken(sub=sub, sid=sid, jti=jti, iat=int(iat), claims=MappingProxyType(claims))

    # -- shared checks -------------------------------------------------------------------------------------------

    def _decode(self, token: str, now: float) -> tuple[Mapping[str, Any], dict[str, Any]]:
        """The header and claims of a token whose signature a published key of the issuer verifies, parsed once."""
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
            raise VerificationError("malformed", "The token is empty or too long.")
        try:
            signed = jws.extract_compact(token.encode("ascii"))
            header = signed.headers()
        except (JoseError, ValueError, TypeError, RecursionError):
            raise VerificationError("malformed", "The token is not a compact JWS.") from None
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str) or alg not in KEY_TYPES:
            raise VerificationError("alg_not_allowed", "The token's alg is not one this IdP signs with.")
        if "crit" in header:  # RFC 7515 §4.1.11: we understand no extension, so none may be critical
            raise VerificationError("malformed", "The token has critical header parameters.")
        if not isinstance(kid, str):
            raise VerificationError("unknown_key", "The token names no key (kid).")
        key = self._key(kid, now)
        if key.alg != alg:
            raise VerificationError("alg_not_allowed", "The token's alg is not its key's alg.")
        try:
            valid = jws.validate_compact(signed, key.jwk, registry=key.registry)
        except UnsupportedAlgorithmError:
            raise VerificationError("alg_not_allowed", "The token's alg is not allowed.") from None
        except (JoseError, ValueError, TypeError):
            raise VerificationError("malformed", "The token's header or signature is malformed.") from None
        if not valid:
            raise VerificationError("bad_signature", "The token's signature does not verify.")
        try:
            claims = json.loads(signed.payload)
        except (ValueError, TypeError, RecursionError):
            raise VerificationError("malformed", "The token's claims are not JSON.") from None
        if not isinstance(claims, dict):
            raise VerificationError("malformed", "The token's claims are not a JSON object.")
        return header, claims

    def _check_issuer(self, claims: Mapping[str, Any]) -> None:
        if claims.get("iss") != self.issuer:
            raise VerificationError("wrong_issuer", "The token was issued by another issuer.")

    def _check_times(self, claims: Mapping[str, Any], now: float) -> tuple[int, int]:
        exp, iat = _number(claims, "exp"), _number(claims, "iat")
        if now - self.leeway >= exp:
            raise VerificationError("expired", "The token has expired.")
        if iat > now + self.leeway:
            raise VerificationError("not_yet_valid", "The token was issued in the future (iat).")
        if "nbf" in claims and _number(claims, "nbf") > now + self.leeway:
            raise VerificationError("not_yet_valid", "The token is not valid yet (nbf).")
        return int(exp), int(iat)

    def _check_auth_time(self, claims: Mapping[str, Any], now: float, max_age: int | None) -> int | None:
        if "auth_time" not in claims:
            if max_age is not None:  # OIDC Core §3.1.2.1: with max_age, auth_time is required
                raise VerificationError("too_old", "The token has no auth_time, and a max_age is demanded.")
            return None
        auth_time = _number(claims, "auth_time")
        if auth_time > now + self.leeway:
            raise VerificationError("not_yet_valid", "The token's auth_time is in the future.")
        if max_age is not None and now - self.leeway > auth_time + max_age:
            raise VerificationError("too_old", f"The resident authenticated more than {max_age} seconds ago.")
        return int(auth_time)

    # -- keys: the one place with I/O and a lock -----------------------------------------------------------------

    def _key(self, kid: str, now: float) -> _Key:
        keys = self._keys
        if keys is not None and keys.fresh(now):
            key = keys.keys.get(kid)
            if key is not None:
                return key
        elif keys is not None and kid in keys.keys and now < keys.fetched_at + keys.max_age + self._grace:
            # Stale but within grace: one thread refreshes; the others keep verifying with what is held.
            if not self._lock.acquire(blocking=False):
                return keys.keys[kid]
            try:
                return self._refresh(kid, now)
            finally:
                self._lock.release()
        with self._lock:
            return self._refresh(kid, self._clock())

    def _refresh(self, kid: str, now: float) -> _Key:
        """Under the lock: the key `kid`, refetching the JWKS if it is stale or lacks `kid` and the floor allows."""
        keys = self._keys  # another thread may have refreshed while this one waited for the lock
        if keys is not None and keys.fresh(now) and kid in keys.keys:
            return keys.keys[kid]
        if now - self._last_fetch >= self._refetch_floor:
            self._last_fetch = now
            try:
                keys = self._keys = self._fetch_keys(now)
            except VerificationError as error:
                # A JWKS that cannot be fetched or read is the IdP's outage: the keys held stay good within grace.
                if error.reason not in ("idp_unreachable", "bad_jwks"):
                    raise
                if keys is None or now >= keys.fetched_at + keys.max_age + self._grace:
                    raise
        if keys is None:
            raise VerificationError("idp_unreachable", "The issuer's keys could not be fetched yet.")
        if now >= keys.fetched_at + keys.max_age + self._grace:
            raise VerificationError("idp_unreachable", "The issuer's keys are out of date and cannot be refetched.")
        key = keys.keys.get(kid)
        if key is None:
            raise VerificationError("unknown_key", "The token's key is not in the issuer's JWKS.")
        return key

    def _fetch_keys(self, now: float) -> _KeySet:
        if self._jwks_uri is None:
            discovery, _ = self._get_json(self.issuer.rstrip("/") + DISCOVERY_PATH)
            if not isinstance(discovery, dict) or discovery.get("issuer") != self.issuer:
                # OIDC Discovery 1.0 §4.3: the document must name the issuer it was fetched for.
                raise VerificationError("bad_discovery", "The discovery document is not this issuer's.")
            jwks_uri = discovery.get("jwks_uri")
            if not isinstance(jwks_uri, str) or not jwks_uri.startswith(("https://", "http://")):
                raise VerificationError("bad_discovery", "The discovery document has no jwks_uri.")
            self._jwks_uri = jwks_uri
        document, cache_control = self._get_json(self._jwks_uri)
        return _import_keys(document, now, _max_age(cache_control))

    def _get_json(self, url: str) -> tuple[object, str | None]:
        try:
            with self._http.stream("GET", url, headers={"Accept": "application/json"}) as response:
                if response.status_code != 200:
                    raise VerificationError("idp_unreachable", f"The IdP answered {response.status_code} for {url}.")
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > MAX_DOCUMENT_BYTES:
                        raise VerificationError("idp_unreachable", f"The IdP's answer for {url} is too large.")
                cache_control = response.headers.get("Cache-Control")
        except httpx.HTTPError as error:
            raise VerificationError("idp_unreachable", f"{url}: {type(error).__name__}.") from None
        try:
            return json.loads(bytes(body)), cache_control
        except (ValueError, RecursionError):
            raise VerificationError("idp_unreachable", f"The IdP's answer for {url} is not JSON.") from None


class _SeenJtis:
    """The jtis of logout tokens received, each until its token expires; at most `limit`, thread-safe. When full,
    the jtis closest to expiring are forgotten first: their tokens are the first a replay could no longer use."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._lock = threading.Lock()
        self._until: dict[str, float] = {}
        self._expiries: list[tuple[float, str]] = []

    def add(self, jti: str, until: float, now: float) -> bool:
        """Remember `jti` until `until`; False when it is already remembered (a replay)."""
        with self._lock:
            while self._expiries and (self._expiries[0][0] <= now or len(self._until) >= self._limit):
                _, old = heapq.heappop(self._expiries)
                self._until.pop(old, None)
            if jti in self._until:
                return False
            self._until[jti] = until
            heapq.heappush(self._expiries, (until, jti))
            return True


def _check_type(header: Mapping[str, Any], allowed: frozenset[str], *, required: bool, what: str) -> None:
    # RFC 8725 §3.11: explicit typing keeps one kind of token from being accepted as another.
    typ = header.get("typ")
    if typ is None and not required:
        return
    if not isinstance(typ, str) or typ.lower() not in allowed:
        raise VerificationError("wrong_type", f"The token is not {what} (typ).")


def _audience(claims: Mapping[str, Any], expected: str) -> tuple[str, ...]:
    aud = claims.get("aud")
    audience = (aud,) if isinstance(aud, str) else tuple(aud) if isinstance(aud, list) else ()
    if not audience or not all(isinstance(item, str) for item in audience):
        raise VerificationError("wrong_audience", "The token's aud is missing or malformed.")
    if expected not in audience:
        raise VerificationError("wrong_audience", "The token is meant for another audience.")
    return audience


def _check_acr(acr: str | None, acr_values: Iterable[str] | None) -> None:
    if acr_values is None:
        return
    if acr is None or acr not in tuple(acr_values):
        raise VerificationError("insufficient_acr", "The resident's authentication level is not one demanded.")


def _number(claims: Mapping[str, Any], name: str) -> float:
    value = claims.get(name)
    # RFC 7519 §2 NumericDate; bool is an int in Python and never a date.
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise VerificationError("missing_claim", f"The token's {name} is missing or not a number.")
    return value


def _required_str(claims: Mapping[str, Any], name: str) -> str:
    value = claims.get(name)
    if not isinstance(value, str) or not value:
        raise VerificationError("missing_claim", f"The token's {name} is missing.")
    return value


def _optional_str(claims: Mapping[str, Any], name: str) -> str | None:
    value = claims.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise VerificationError("malformed", f"The token's {name} is not a string.")
    return value


def _strings(value: object) -> tuple[str, ...]:
    if isinstance(value, list):
        return tuple(item for item in value if isinstance(item, str))
    return ()


# -- RFC 9470 step-up ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Requirement:
    """What a protected resource demands of an access token: every scope of `scopes`, an acr among `acr_values`
    (empty: any), and with `max_age` an authentication no older than that many seconds."""

    scopes: tuple[str, ...] = ()
    acr_values: tuple[str, ...] = ()
    max_age: int | None = None


def challenge(need: Requirement, error: str | None = None, description: str | None = None) -> str:
    """The `WWW-Authenticate` value for a request that falls short of `need`: a bare `Bearer` when no token was
    sent (RFC 6750 §3.1), else `error` with what a new token must carry: the scopes for `insufficient_scope`
    (RFC 6750 §3.1), the acr_values and max_age for `insufficient_user_authentication` (RFC 9470 §3)."""
    if error is None:
        return "Bearer"
    params = [("error", error), ("error_description", description or _DESCRIPTIONS.get(error, error))]
    if error == "insufficient_scope" and need.scopes:
        params.append(("scope", " ".join(need.scopes)))
    if error == "insufficient_user_authentication":
        if need.acr_values:
            params.append(("acr_values", " ".join(need.acr_values)))
        if need.max_age is not None:
            return _render(params) + f", max_age={int(need.max_age)}"
    return _render(params)


_DESCRIPTIONS = {
    "invalid_token": "The access token is malformed, expired, revoked or not for this service.",
    "insufficient_scope": "The access token lacks a scope this resource needs.",
    "insufficient_user_authentication": "A more recent or stronger authentication is required.",
}


def _render(params: Sequence[tuple[str, str]]) -> str:
    return "Bearer " + ", ".join(f'{name}="{_quote(value)}"' for name, value in params)


def _quote(value: str) -> str:
    # RFC 9110 §5.6.4 quoted-string: backslash-escape " and \; anything outside printable ASCII cannot travel in a
    # header (RFC 6750 §3 limits error_description to it), so it becomes "?".
    return _HEADER_UNSAFE.sub("?", value).replace("\\", "\\\\").replace('"', '\\"')


# Verification reasons a new sign-in can cure, and the challenge for each (RFC 9470 §3).
_STEP_UP_REASONS = {
    "insufficient_acr": "insufficient_user_authentication",
    "too_old": "insufficient_user_authentication",
}
_UNAVAILABLE_REASONS = frozenset({"idp_unreachable", "bad_discovery", "bad_jwks"})


class StepUp:
    """WSGI middleware: requests under a protected path prefix need a bearer access token meeting that prefix's
    `Requirement` (the longest matching prefix wins; a prefix matches whole path segments). A request falling short
    gets 401 or 403 with an RFC 6750 / RFC 9470 `WWW-Authenticate` challenge and a small JSON body; one that meets
    it reaches `app` with the verified `AccessToken` in `environ["idp.rp.access_token"]`. When the issuer's keys
    cannot be had, the answer is 503: the token was not judged, so the client need not drop it."""

    def __init__(self, app: WSGIApplication, verifier: Verifier, routes: Mapping[str, Requirement]) -> None:
        self.app = app
        self.verifier = verifier
        self.routes = sorted(routes.items(), key=lambda route: len(route[0]), reverse=True)

    def requirement_for(self, path: str) -> Requirement | None:
        """The requirement of the longest prefix `path` falls under, or None when it is not protected."""
        for prefix, need in self.routes:
            if path == prefix or path.startswith(prefix if prefix.endswith("/") else prefix + "/"):
                return need
        return None

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        need = self.requirement_for(environ.get("PATH_INFO", ""))
        if need is None:
            return self.app(environ, start_response)
        scheme, _, token = str(environ.get("HTTP_AUTHORIZATION", "")).strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return _refuse(start_response, need, None, "This resource needs a bearer access token.")
        try:
            access = self.verifier.verify_access_token(
                token, scopes=need.scopes, acr_values=need.acr_values or None, max_age=need.max_age
            )
        except VerificationError as refused:
            if refused.reason in _UNAVAILABLE_REASONS:
                return _unavailable(start_response)
            if refused.reason == "insufficient_scope":
                return _refuse(start_response, need, "insufficient_scope", refused.description)
            return _refuse(
                start_response, need, _STEP_UP_REASONS.get(refused.reason, "invalid_token"), refused.description
            )
        environ[ACCESS_TOKEN_ENVIRON_KEY] = access
        return self.app(environ, start_response)


def _refuse(start_response: StartResponse, need: Requirement, error: str | None, description: str) -> list[bytes]:
    body = json.dumps({"error": error or "invalid_token", "error_description": description}).encode()
    status = CHALLENGE_STATUS.get(error or "invalid_token", 401)
    start_response(
        f"{status} {'Forbidden' if status == 403 else 'Unauthorized'}",
        [
            ("WWW-Authenticate", challenge(need, error, description)),
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
        ],
    )
    return [body]


def _unavailable(start_response: StartResponse) -> list[bytes]:
    body = json.dumps(
        {"error": "temporarily_unavailable", "error_description": "The access token cannot be checked right now."}
    ).encode()
    start_response(
        "503 Service Unavailable",
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
            ("Retry-After", "5"),
        ],
    )
    return [body]
