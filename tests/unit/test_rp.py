"""idp.rp's Verifier against a fake issuer on 127.0.0.1 (and the real keyring), on an injected clock; the step-up
challenges and middleware; and `import idp.rp` without the server's dependencies."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from joserfc import jws
from joserfc.jwk import ECKey, RSAKey
from joserfc.jws import JWSRegistry
from werkzeug.test import Client

from idp.keyring import Keyring
from idp.rp import (
    AccessToken,
    IdToken,
    LogoutToken,
    Requirement,
    StepUp,
    VerificationError,
    Verifier,
    challenge,
)

NOW = 1_750_000_000.0
CLIENT = "minwon24"
LOGOUT_EVENT = "http://schemas.openid.net/event/backchannel-logout"
DROP = object()


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Issuer:
    """A fake IdP on 127.0.0.1: discovery and a JWKS the test sets, every fetch counted; `stop()` makes it
    unreachable (connections refused), and `gate` can hold JWKS answers back."""

    def __init__(self, keys: list[dict[str, Any]]) -> None:
        self.jwks: dict[str, Any] = {"keys": keys}
        self.body: Callable[[], bytes] | None = None  # overrides the JWKS document (the real keyring's bytes)
        self.cache_control: str | None = "public, max-age=600"
        self.status = 200
        self.fetches: Counter[str] = Counter()
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                issuer.fetches[self.path] += 1
                if self.path == "/.well-known/openid-configuration":
                    body = json.dumps({"issuer": issuer.url, "jwks_uri": issuer.url + "/jwks"}).encode()
                    headers = {}
                else:
                    issuer.entered.set()
                    issuer.gate.wait(timeout=10)
                    body = issuer.body() if issuer.body else json.dumps(issuer.jwks).encode()
                    headers = {"Cache-Control": issuer.cache_control} if issuer.cache_control else {}
                self.send_response(issuer.status)
                for name, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.stopped = False

    @property
    def jwks_fetches(self) -> int:
        return self.fetches["/jwks"]

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            self.gate.set()
            self.server.shutdown()
            self.server.server_close()


# -- keys and tokens -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keys() -> dict[str, ECKey | RSAKey]:
    return {
        "es": ECKey.generate_key("P-256", {"kid": "es-1", "alg": "ES256"}),
        "rs": RSAKey.generate_key(2048, {"kid": "rs-1", "alg": "RS256"}),
        "es-2": ECKey.generate_key("P-256", {"kid": "es-2", "alg": "ES256"}),
        "attacker": ECKey.generate_key("P-256", {"kid": "es-1", "alg": "ES256"}),
    }


def public(key: ECKey | RSAKey, **override: Any) -> dict[str, Any]:
    member = {**key.as_dict(private=False), "kid": key.kid, "alg": key.alg, "use": "sig"}
    member.update(override)
    return {name: value for name, value in member.items() if value is not DROP}


def sign(key: ECKey | RSAKey, claims: dict[str, Any], *, typ: str | None = "JWT", **header: Any) -> str:
    fields: dict[str, Any] = {"alg": key.alg, "kid": key.kid}
    if typ is not None:
        fields["typ"] = typ
    fields.update(header)
    # jws rather than jwt.encode, which would add a typ of JWT where the test wants none.
    return jws.serialize_compact(fields, json.dumps(claims).encode(), key, algorithms=[fields["alg"]])


def unsigned(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    return ".".join([part(json.dumps(header).encode()), part(json.dumps(claims).encode()), part(signature)])


def with_claims(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    claims = {**base, **changes}
    return {name: value for name, value in claims.items() if value is not DROP}


@pytest.fixture
def issuer(keys: dict[str, ECKey | RSAKey]) -> Iterator[Issuer]:
    served = Issuer([public(keys["es"]), public(keys["rs"])])
    yield served
    served.stop()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def verifier(issuer: Issuer, clock: Clock) -> Iterator[Verifier]:
    with httpx.Client(timeout=5) as http:
        yield Verifier(issuer.url, client_id=CLIENT, clock=clock, http=http)


def id_claims(issuer: Issuer) -> dict[str, Any]:
    return {
        "iss": issuer.url,
        "sub": "pairwise-sub",
        "aud": CLIENT,
        "exp": NOW + 300,
        "iat": NOW,
        "auth_time": NOW - 10,
        "nonce": "nonce-1",
        "acr": "phr",
        "amr": ["swk", "user", "mfa"],
        "sid": "sid-1",
    }


def access_claims(issuer: Issuer) -> dict[str, Any]:
    return {
        "iss": issuer.url,
        "sub": "pairwise-sub",
        "aud": CLIENT,
        "client_id": CLIENT,
        "exp": NOW + 300,
        "iat": NOW,
        "jti": "jti-1",
        "scope": "openid permits",
        "auth_time": NOW - 10,
        "acr": "phr",
        "amr": ["swk", "user", "mfa"],
    }


def logout_claims(issuer: Issuer, jti: str = "logout-1") -> dict[str, Any]:
    return {
        "iss": issuer.url,
        "aud": CLIENT,
        "iat": NOW,
        "exp": NOW + 120,
        "jti": jti,
        "sub": "pairwise-sub",
        "sid": "sid-1",
        "events": {LOGOUT_EVENT: {}},
    }


def reason_of(call: Callable[[], object]) -> str:
    with pytest.raises(VerificationError) as refused:
        call()
    return refused.value.reason


# -- ID tokens -------------------------------------------------------------------------------------------------------


def test_id_token_verifies_with_every_claim_typed(verifier: Verifier, issuer: Issuer, keys: dict[str, Any]) -> None:
    token = sign(keys["rs"], {**id_claims(issuer), "name": "김경기"})
    verified = verifier.verify_id_token(token, nonce="nonce-1", max_age=60, acr_values=("phr", "phrh"))
    assert verified == IdToken(
        sub="pairwise-sub",
        iss=issuer.url,
        aud=(CLIENT,),
        azp=None,
        exp=int(NOW + 300),
        iat=int(NOW),
        auth_time=int(NOW - 10),
        nonce="nonce-1",
        acr="phr",
        amr=("swk", "user", "mfa"),
        sid="sid-1",
        claims=verified.claims,
    )
    assert verified.claims["name"] == "김경기"
    with pytest.raises(TypeError):
        verified.claims["name"] = "x"  # type: ignore[index]  # the claims are read-only


@pytest.mark.parametrize(
    ("changes", "options"),
    [
        pytest.param({}, {}, id="plain"),
        pytest.param({"typ": DROP}, {}, id="no-typ"),
        pytest.param({"aud": [CLIENT, "other"], "azp": CLIENT}, {}, id="several-audiences-with-azp"),
        pytest.param({"azp": CLIENT}, {}, id="azp-is-client"),
        pytest.param({"exp": NOW - 29}, {}, id="expired-within-leeway"),
        pytest.param({"iat": NOW + 29}, {}, id="issued-ahead-within-leeway"),
        pytest.param({"nbf": NOW + 29}, {}, id="nbf-within-leeway"),
        pytest.param({"auth_time": NOW - 80}, {"max_age": 60}, id="auth-time-within-max-age-and-leeway"),
        pytest.param({"nonce": DROP}, {"nonce": None}, id="no-nonce-asked"),
        pytest.param({"acr": "phrh"}, {"acr_values": ("phr", "phrh")}, id="higher-acr-listed"),
    ],
)
def test_id_token_is_accepted(
    verifier: Verifier, issuer: Issuer, keys: dict[str, Any], changes: dict[str, Any], options: dict[str, Any]
) -> None:
    typ = None if changes.pop("typ", None) is DROP else "JWT"
    token = sign(keys["rs"], with_claims(id_claims(issuer), **changes), typ=typ)
    assert isinstance(verifier.verify_id_token(token, **{"nonce": "nonce-1", **options}), IdToken)


@pytest.mark.parametrize(
    ("changes", "options", "reason"),
    [
        ({"iss": "https://evil.example"}, {}, "wrong_issuer"),
        ({"iss": DROP}, {}, "wrong_issuer"),
        ({"aud": "other"}, {}, "wrong_audience"),
        ({"aud": DROP}, {}, "wrong_audience"),
        ({"aud": [CLIENT, 7]}, {}, "wrong_audience"),
        ({"aud": [CLIENT, "other"]}, {}, "wrong_azp"),
        ({"aud": [CLIENT, "other"], "azp": "other"}, {}, "wrong_azp"),
        ({"azp": "other"}, {}, "wrong_azp"),
        ({"exp": NOW - 30}, {}, "expired"),
        ({"exp": DROP}, {}, "missing_claim"),
        ({"exp": "tomorrow"}, {}, "missing_claim"),
        ({"exp": True}, {}, "missing_claim"),
        ({"iat": NOW + 31}, {}, "not_yet_valid"),
        ({"iat": DROP}, {}, "missing_claim"),
        ({"nbf": NOW + 31}, {}, "not_yet_valid"),
        ({"nonce": "nonce-2"}, {}, "nonce_mismatch"),
        ({"nonce": DROP}, {}, "nonce_mismatch"),
        ({"nonce": 1}, {}, "nonce_mismatch"),
        ({"auth_time": NOW - 91}, {"max_age": 60}, "too_old"),
        ({"auth_time": DROP}, {"max_age": 60}, "too_old"),
        ({"auth_time": NOW + 31}, {}, "not_yet_valid"),
        ({"acr": "http://x/acr/aal1"}, {"acr_values": ("phr", "phrh")}, "insufficient_acr"),
        ({"acr": DROP}, {"acr_values": ("phr",)}, "insufficient_acr"),
        ({"sub": DROP}, {}, "missing_claim"),
        ({"sub": ""}, {}, "missing_claim"),
        ({"sid": 5}, {}, "malformed"),
    ],
)
def test_id_token_claim_is_refused(
    verifier: Verifier,
    issuer: Issuer,
    keys: dict[str, Any],
    changes: dict[str, Any],
    options: dict[str, Any],
    reason: str,
) -> None:
    token = sign(keys["rs"], with_claims(id_claims(issuer), **changes))
    assert reason_of(lambda: verifier.verify_id_token(token, **{"nonce": "nonce-1", **options})) == reason


@pytest.mark.parametrize("typ", ["at+jwt", "logout+jwt", "application/at+jwt", "secevent+jwt"])
def test_other_tokens_are_not_id_tokens(verifier: Verifier, issuer: Issuer, keys: dict[str, Any], typ: str) -> None:
    token = sign(keys["rs"], id_claims(issuer), typ=typ)
    assert reason_of(lambda: verifier.verify_id_token(token)) == "wrong_type"


def test_leeway_is_configurable(issuer: Issuer, clock: Clock, keys: dict[str, Any]) -> None:
    strict = Verifier(issuer.url, client_id=CLIENT, clock=clock, leeway=0)
    token = sign(keys["rs"], with_claims(id_claims(issuer), exp=NOW - 1))
    assert reason_of(lambda: strict.verify_id_token(token)) == "expired"


# -- access tokens ---------------------------------------------------------------------------------------------------


def test_access_token_verifies_with_every_claim_typed(verifier: Verifier, issuer: Issuer, keys: dict[str, Any]) -> None:
    token = sign(keys["es"], access_claims(issuer), typ="at+jwt")
    verified = verifier.verify_access_token(token, scopes=("permits",), acr_values=("phr",), max_age=60)
    assert verified == AccessToken(
        sub="pairwise-sub",
        client_id=CLIENT,
        scopes=frozenset({"openid", "permits"}),
        acr="phr",
        amr=("swk", "user", "mfa"),
        auth_time=int(NOW - 10),
        exp=int(NOW + 300),
        iat=int(NOW),
        jti="jti-1",
        claims=verified.claims,
    )


def test_access_token_audience_defaults_to_client_id_and_can_be_another(
    issuer: Issuer, clock: Clock, keys: dict[str, Any]
) -> None:
    token = sign(keys["es"], with_claims(access_claims(issuer), aud=["https://api.gg.go.kr", "x"]), typ="at+jwt")
    assert reason_of(lambda: Verifier(issuer.url, client_id=CLIENT, clock=clock).verify_access_token(token)) == (
        "wrong_audience"
    )
    api = Verifier(issuer.url, client_id=CLIENT, audience="https://api.gg.go.kr", clock=clock)
    assert api.verify_access_token(token).client_id == CLIENT


@pytest.mark.parametrize(
    ("changes", "typ", "options", "reason"),
    [
        ({}, "JWT", {}, "wrong_type"),
        ({}, None, {}, "wrong_type"),
        ({}, "logout+jwt", {}, "wrong_type"),
        ({"iss": "https://evil.example"}, "at+jwt", {}, "wrong_issuer"),
        ({"aud": "other"}, "at+jwt", {}, "wrong_audience"),
        ({"exp": NOW - 30}, "at+jwt", {}, "expired"),
        ({"iat": NOW + 31}, "at+jwt", {}, "not_yet_valid"),
        ({"nbf": NOW + 31}, "at+jwt", {}, "not_yet_valid"),
        ({"client_id": DROP}, "at+jwt", {}, "missing_claim"),
        ({"jti": DROP}, "at+jwt", {}, "missing_claim"),
        ({"sub": DROP}, "at+jwt", {}, "missing_claim"),
        ({"scope": "openid"}, "at+jwt", {"scopes": ("permits",)}, "insufficient_scope"),
        ({"scope": DROP}, "at+jwt", {"scopes": ("openid",)}, "insufficient_scope"),
        ({"scope": ["openid", "permits"]}, "at+jwt", {"scopes": ("openid",)}, "malformed"),
        ({"acr": "http://x/acr/aal1"}, "at+jwt", {"acr_values": ("phr", "phrh")}, "insufficient_acr"),
        ({"auth_time": NOW - 91}, "at+jwt", {"max_age": 60}, "too_old"),
        ({"auth_time": DROP}, "at+jwt", {"max_age": 60}, "too_old"),
    ],
)
def test_access_token_claim_is_refused(
    verifier: Verifier,
    issuer: Issuer,
    keys: dict[str, Any],
    changes: dict[str, Any],
    typ: str | None,
    options: dict[str, Any],
    reason: str,
) -> None:
    token = sign(keys["es"], with_claims(access_claims(issuer), **changes), typ=typ)
    assert reason_of(lambda: verifier.verify_access_token(token, **options)) == reason


def test_access_token_media_type_is_accepted_in_full(verifier: Verifier, issuer: Issuer, keys: dict[str, Any]) -> None:
    token = sign(keys["es"], access_claims(issuer), typ="application/at+jwt")
    assert verifier.verify_access_token(token).jti == "jti-1"


# -- logout tokens ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "typ"),
    [
        ({}, "logout+jwt"),
        ({}, None),
        ({"sub": DROP}, "logout+jwt"),
        ({"sid": DROP}, "logout+jwt"),
        ({"exp": DROP}, "logout+jwt"),
    ],
)
def test_logout_token_is_accepted(
    verifier: Verifier, issuer: Issuer, keys: dict[str, Any], changes: dict[str, Any], typ: str | None
) -> None:
    claims = with_claims(logout_claims(issuer), **changes)
    verified = verifier.verify_logout_token(sign(keys["rs"], claims, typ=typ))
    assert verified == LogoutToken(
        sub=claims.get("sub"), sid=claims.get("sid"), jti="logout-1", iat=int(NOW), claims=verified.claims
    )


@pytest.mark.parametrize(
    ("changes", "typ", "reason"),
    [
        ({}, "JWT", "wrong_type"),
        ({"iss": "https://evil.example"}, "logout+jwt", "wrong_issuer"),
        ({"aud": "other"}, "logout+jwt", "wrong_audience"),
        ({"iat": NOW + 31}, "logout+jwt", "not_yet_valid"),
        ({"iat": DROP}, "logout+jwt", "missing_claim"),
        ({"exp": NOW - 30}, "logout+jwt", "expired"),
        ({"exp": DROP, "iat": NOW - 331}, "logout+jwt", "expired"),
        ({"jti": DROP}, "logout+jwt", "missing_claim"),
        ({"events": DROP}, "logout+jwt", "bad_events"),
        ({"events": {LOGOUT_EVENT: True}}, "logout+jwt", "bad_events"),
        ({"events": {LOGOUT_EVENT: {}, "urn:other": {}}}, "logout+jwt", "bad_events"),
        ({"events": [LOGOUT_EVENT]}, "logout+jwt", "bad_events"),
        ({"nonce": "n"}, "logout+jwt", "nonce_present"),
        ({"sub": DROP, "sid": DROP}, "logout+jwt", "missing_claim"),
    ],
)
def test_logout_token_claim_is_refused(
    verifier: Verifier, issuer: Issuer, keys: dict[str, Any], changes: dict[str, Any], typ: str, reason: str
) -> None:
    token = sign(keys["rs"], with_claims(logout_claims(issuer), **changes), typ=typ)
    assert reason_of(lambda: verifier.verify_logout_token(token)) == reason


def test_replayed_logout_token_is_refused_and_others_pass(
    verifier: Verifier, issuer: Issuer, keys: dict[str, Any]
) -> None:
    token = sign(keys["rs"], logout_claims(issuer), typ="logout+jwt")
    assert verifier.verify_logout_token(token).jti == "logout-1"
    assert reason_of(lambda: verifier.verify_logout_token(token)) == "replayed"
    assert verifier.verify_logout_token(sign(keys["rs"], logout_claims(issuer, "logout-2"), typ=None)).jti == "logout-2"


def test_refused_logout_token_does_not_spend_its_jti(verifier: Verifier, issuer: Issuer, keys: dict[str, Any]) -> None:
    bad = sign(keys["rs"], with_claims(logout_claims(issuer), nonce="n"), typ="logout+jwt")
    assert reason_of(lambda: verifier.verify_logout_token(bad)) == "nonce_present"
    assert verifier.verify_logout_token(sign(keys["rs"], logout_claims(issuer), typ="logout+jwt")).jti == "logout-1"


def test_logout_token_sent_at_once_from_many_threads_is_accepted_once(
    verifier: Verifier, issuer: Issuer, keys: dict[str, Any]
) -> None:
    token = sign(keys["rs"], logout_claims(issuer), typ="logout+jwt")
    verifier.verify_id_token(sign(keys["rs"], id_claims(issuer)))  # warm the keys, so the race is the jti's
    barrier = threading.Barrier(8)

    def send() -> str:
        barrier.wait(timeout=10)
        try:
            verifier.verify_logout_token(token)
        except VerificationError as refused:
            return refused.reason
        return "accepted"

    with ThreadPoolExecutor(8) as pool:
        outcomes = Counter(pool.map(lambda _: send(), range(8)))
    assert outcomes == Counter({"accepted": 1, "replayed": 7})


# -- signatures, keys and algorithms ---------------------------------------------------------------------------------


def test_tampered_claims_fail_the_signature(verifier: Verifier, issuer: Issuer, keys: dict[str, Any]) -> None:
    header, _, signature = sign(keys["es"], access_claims(issuer), typ="at+jwt").split(".")
    forged_claims = with_claims(access_claims(issuer), scope="openid permits admin")
    payload = base64.urlsafe_b64encode(json.dumps(forged_claims).encode()).rstrip(b"=").decode()
    assert reason_of(lambda: verifier.verify_access_token(f"{header}.{payload}.{signature}")) == "bad_signature"


def test_token_signed_by_another_key_under_a_published_kid_is_refused(
    verifier: Verifier, issuer: Issuer, keys: dict[str, Any]
) -> None:
    forged = sign(keys["attacker"], access_claims(issuer), typ="at+jwt")
    assert reason_of(lambda: verifier.verify_access_token(forged)) == "bad_signature"


@pytest.mark.parametrize(
    "header",
    [
        {"alg": "none", "kid": "es-1", "typ": "at+jwt"},
        {"alg": "NONE", "kid": "es-1", "typ": "at+jwt"},
        {"alg": "HS256", "kid": "rs-1", "typ": "at+jwt"},
        {"alg": "ES256", "kid": "rs-1", "typ": "at+jwt"},  # an EC signature, checked by the RSA key
        {"alg": "RS256", "kid": "es-1", "typ": "at+jwt"},  # an RS token with an EC kid
        {"alg": "PS256", "kid": "rs-1", "typ": "at+jwt"},  # the right key type, not the key's alg
        {"alg": None, "kid": "es-1", "typ": "at+jwt"},
    ],
)
def test_alg_not_bound_to_the_key_is_refused(
    verifier: Verifier, issuer: Issuer, keys: dict[str, Any], header: dict[str, Any]
) -> None:
    # Whatever the signature, the alg decides first; the HS256 one is keyed with the RSA public key's PEM.
    claims = access_claims(issuer)
    signing_input = unsigned(header, claims).rsplit(".", 1)[0]
    pem = keys["rs"].as_pem(private=False)
    mac = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    assert reason_of(lambda: verifier.verify_access_token(unsigned(header, claims, mac))) == "alg_not_allowed"


def test_hs256_token_keyed_with_the_public_key_is_refused_even_by_an_rs_kid_jwks(
    issuer: Issuer, clock: Clock, keys: dict[str, Any]
) -> None:
    # The classic confusion: a verifier that lets the header pick the algorithm would check this HMAC with the
    # RSA public key as its secret, and accept it.
    issuer.jwks = {"keys": [public(keys["rs"], alg=DROP)]}
    verifier = Verifier(issuer.url, client_id=CLIENT, clock=clock)
    header = {"alg": "HS256", "kid": "rs-1", "typ": "at+jwt"}
    signing_input = unsigned(header, access_claims(issuer)).rsplit(".", 1)[0]
    mac = hmac.new(keys["rs"].as_pem(private=False), signing_input.encode(), hashlib.sha256).digest()
    assert reason_of(lambda: verifier.verify_access_token(unsigned(header, access_claims(issuer), mac))) == (
        "alg_not_allowed"
    )


@pytest.mark.parametrize(
    "member",
    [
        pytest.param({"alg": DROP}, id="no-alg"),
        pytest.param({"alg": "RS256"}, id="alg-for-another-key-type"),
        pytest.param({"alg": "ES384"}, id="alg-for-another-curve"),
        pytest.param({"use": "enc"}, id="encryption-key"),
        pytest.param({"kid": DROP}, id="no-kid"),
    ],
)
def test_jwks_member_unfit_for_signing_is_ignored(
    issuer: Issuer, clock: Clock, keys: dict[str, Any], member: dict[str, Any]
) -> None:
    issuer.jwks = {"keys": [public(keys["es"], **member)]}
    verifier = Verifier(issuer.url, client_id=CLIENT, clock=clock)
    token = sign(keys["es"], access_claims(issuer), typ="at+jwt")
    assert reason_of(lambda: verifier.verify_access_token(token)) == "unknown_key"


def test_kid_published_twice_is_trusted_for_neither(issuer: Issuer, clock: Clock, keys: dict[str, Any]) -> None:
    issuer.jwks = {"keys": [public(keys["es"]), public(keys["attacker"])]}
    verifier = Verifier(issuer.url, client_id=CLIENT, clock=clock)
    token = sign(keys["es"], access_claims(issuer), typ="at+jwt")
    assert reason_of(lambda: verifier.verify_access_token(token)) == "unknown_key"


@pytest.mark.parametrize(
    "token",
    [
        "",
        "a.b",
        "a.b.c.d",
        "not a token",
        "x" * 20_000,
        "eyJhbGciOiJFUzI1NiJ9.e30.",
        "한국어.토큰.값",
    ],
)
def test_malformed_tokens_are_refused_without_a_fetch(verifier: Verifier, issuer: Issuer, token: str) -> None:
    assert reason_of(lambda: verifier.verify_access_token(token)) in {"malformed", "unknown_key", "alg_not_allowed"}
    assert issuer.jwks_fetches == 0


def test_critical_header_is_refused(verifier: Verifier, issuer: Issuer, keys: dict[str, Any]) -> None:
    # Signed by hand: joserfc refuses to sign a critical header it does not know.
    header = {"alg": "ES256", "kid": "es-1", "typ": "at+jwt", "crit": ["urn:x"], "urn:x": 1}
    signing_input = unsigned(header, access_claims(issuer)).rsplit(".", 1)[0]
    signature = JWSRegistry.algorithms["ES256"].sign(signing_input.encode(), keys["es"])
    token = f"{signing_input}.{b64(signature)}"
    assert reason_of(lambda: verifier.verify_access_token(token)) == "malformed"


# -- the key cache ---------------------------------------------------------------------------------------------------


def test_discovery_is_read_once_and_keys_are_cached(verifier: Verifier, issuer: Issuer, keys: dict[str, Any]) -> None:
    assert issuer.fetches == Counter()  # nothing fetched before the first token
    for _ in range(5):
        verifier.verify_access_token(sign(keys["es"], access_claims(issuer), typ="at+jwt"))
        verifier.verify_id_token(sign(keys["rs"], id_claims(issuer)))
    assert issuer.fetches == Counter({"/.well-known/openid-configuration": 1, "/jwks": 1})


def test_unknown_kid_storm_fetches_at_most_once_per_floor(
    verifier: Verifier, issuer: Issuer, clock: Clock, keys: dict[str, Any]
) -> None:
    verifier.verify_access_token(sign(keys["es"], access_claims(issuer), typ="at+jwt"))
    assert issuer.jwks_fetches == 1
    for round_ in range(1, 4):
        clock.now += 5  # the floor
        for n in range(50):
            forged = sign(keys["es"], access_claims(issuer), typ="at+jwt", kid=f"forged-{round_}-{n}")
            assert reason_of(lambda token=forged: verifier.verify_access_token(token)) == "unknown_key"
        assert issuer.jwks_fetches == 1 + round_
    # and from many threads at once, still one fetch per floor
    clock.now += 5
    forged_tokens = [sign(keys["es"], access_claims(issuer), typ="at+jwt", kid=f"threaded-{n}") for n in range(50)]
    with ThreadPoolExecutor(8) as pool:
        reasons = set(pool.map(lambda token: reason_of(lambda: verifier.verify_access_token(token)), forged_tokens))
    assert reasons == {"unknown_key"}
    assert issuer.jwks_fetches == 5


def test_new_key_is_found_by_one_refetch(
    verifier: Verifier, issuer: Issuer, clock: Clock, keys: dict[str, Any]
) -> None:
    verifier.verify_access_token(sign(keys["es"], access_claims(issuer), typ="at+jwt"))
    issuer.jwks["keys"].append(public(keys["es-2"]))
    token = sign(keys["es-2"], access_claims(issuer), typ="at+jwt")
    # Within the floor of the last fetch the new kid is unknown; past it, one refetch finds it.
    assert reason_of(lambda: verifier.verify_access_token(token)) == "unknown_key"
    clock.now += 5
    assert verifier.verify_access_token(token).jti == "jti-1"
    assert issuer.jwks_fetches == 2


@pytest.mark.parametrize(
    ("cache_control", "fresh_for"),
    [
        ("public, max-age=120", 120),
        (None, 300),
        ("public, max-age=5", 60),  # bounded below: a minute
        ("no-store", 60),
        ("max-age=9999999", 86_400),  # bounded above: a day
    ],
)
def test_jwks_is_cached_for_its_max_age_then_refetched(
    verifier: Verifier,
    issuer: Issuer,
    clock: Clock,
    keys: dict[str, Any],
    cache_control: str | None,
    fresh_for: int,
) -> None:
    issuer.cache_control = cache_control
    start = clock.now
    verifier.verify_id_token(sign(keys["rs"], id_claims(issuer)))
    clock.now = start + fresh_for - 1
    verifier.verify_id_token(sign(keys["rs"], with_claims(id_claims(issuer), iat=clock.now, exp=clock.now + 60)))
    assert issuer.jwks_fetches == 1
    clock.now = start + fresh_for
    verifier.verify_id_token(sign(keys["rs"], with_claims(id_claims(issuer), iat=clock.now, exp=clock.now + 60)))
    assert issuer.jwks_fetches == 2


def test_key_dropped_from_the_jwks_stops_verifying_once_the_cache_expires(
    verifier: Verifier, issuer: Issuer, clock: Clock, keys: dict[str, Any]
) -> None:
    claims = with_claims(access_claims(issuer), exp=NOW + 3600)
    token = sign(keys["es"], claims, typ="at+jwt")
    verifier.verify_access_token(token)
    issuer.jwks = {"keys": [public(keys["rs"])]}
    clock.now += 600
    assert reason_of(lambda: verifier.verify_access_token(token)) == "unknown_key"


def test_cached_keys_verify_while_the_idp_is_unreachable_until_grace_ends(
    verifier: Verifier, issuer: Issuer, clock: Clock, keys: dict[str, Any]
) -> None:
    claims = with_claims(access_claims(issuer), exp=NOW + 7200)
    token = sign(keys["es"], claims, typ="at+jwt")
    verifier.verify_access_token(token)
    issuer.stop()
    clock.now = NOW + 600 + 3600 - 1  # past max-age, within the hour of grace
    assert verifier.verify_access_token(token).jti == "jti-1"
    clock.now = NOW + 600 + 3600
    assert reason_of(lambda: verifier.verify_access_token(token)) == "idp_unreachable"


@pytest.mark.parametrize("status", [500, 503, 404])
def test_idp_answering_errors_is_unreachable_and_cached_keys_still_serve(
    verifier: Verifier, issuer: Issuer, clock: Clock, keys: dict[str, Any], status: int
) -> None:
    token = sign(keys["es"], with_claims(access_claims(issuer), exp=NOW + 7200), typ="at+jwt")
    verifier.verify_access_token(token)
    issuer.status = status
    clock.now += 700
    assert verifier.verify_access_token(token).jti == "jti-1"
    clock.now += 1  # within the floor: no second attempt
    verifier.verify_access_token(token)
    assert issuer.jwks_fetches == 2


def test_nothing_cached_and_idp_unreachable_is_idp_unreachable_and_tried_once_per_floor(
    issuer: Issuer, clock: Clock, keys: dict[str, Any]
) -> None:
    url = issuer.url
    issuer.stop()
    verifier = Verifier(url, client_id=CLIENT, clock=clock)
    token = sign(keys["es"], access_claims(issuer), typ="at+jwt")
    assert reason_of(lambda: verifier.verify_access_token(token)) == "idp_unreachable"
    assert reason_of(lambda: verifier.verify_access_token(token)) == "idp_unreachable"


def test_discovery_of_another_issuer_is_refused(issuer: Issuer, clock: Clock, keys: dict[str, Any]) -> None:
    # The document names issuer.url; a verifier built for another spelling of it must not trust it.
    verifier = Verifier(issuer.url + "/", client_id=CLIENT, clock=clock)
    token = sign(keys["es"], access_claims(issuer), typ="at+jwt")
    assert reason_of(lambda: verifier.verify_access_token(token)) == "bad_discovery"


def test_threads_keep_verifying_while_one_refetches(
    verifier: Verifier, issuer: Issuer, clock: Clock, keys: dict[str, Any]
) -> None:
    token = sign(keys["es"], with_claims(access_claims(issuer), exp=NOW + 7200), typ="at+jwt")
    verifier.verify_access_token(token)
    clock.now += 600  # stale: the next verification refetches, and the IdP holds that answer back
    issuer.gate.clear()
    issuer.entered.clear()
    with ThreadPoolExecutor(5) as pool:
        refetching = pool.submit(verifier.verify_access_token, token)
        assert issuer.entered.wait(timeout=10)
        others = [pool.submit(verifier.verify_access_token, token) for _ in range(200)]
        assert all(future.result(timeout=10).jti == "jti-1" for future in others)
        assert not refetching.done()
        issuer.gate.set()
        assert refetching.result(timeout=10).jti == "jti-1"
    assert issuer.jwks_fetches == 2


def test_verifying_through_rotations_and_retirements_of_the_real_keyring_never_fails(
    tmp_path: Path, clock: Clock
) -> None:
    keyring = Keyring.from_directory(tmp_path / "keys", check_interval=0)
    keyring.ensure_default()
    issuer = Issuer([])
    issuer.body = lambda: keyring.current().jwks_json
    issuer.cache_control = "public, max-age=600"  # what the IdP sends (IDP_JWKS_MAX_AGE)
    try:
        verifier = Verifier(issuer.url, client_id=CLIENT, clock=clock)
        changes: list[Callable[[], object]] = [
            lambda: keyring.rotate("ES256"),
            lambda: keyring.retire(keyring.current().active("ES256").kid),
            lambda: keyring.rotate("RS256"),
            lambda: keyring.rotate(),
            lambda: keyring.retire(keyring.current().active("RS256").kid),
            lambda: keyring.rotate("ES256"),
        ]
        issued: list[tuple[str, str]] = []
        for change in [lambda: None, *changes]:
            change()
            clock.now += 6  # the keyring's own check; rotations are not faster than the refetch floor here
            for n in range(5):
                for alg, typ in (("ES256", "at+jwt"), ("RS256", "JWT")):
                    claims = with_claims(
                        access_claims(issuer), iat=clock.now, exp=clock.now + 3600, jti=f"{len(issued)}-{n}"
                    )
                    if typ == "JWT":
                        claims = with_claims(id_claims(issuer), iat=clock.now, exp=clock.now + 3600)
                    issued.append((typ, keyring.current().active(alg).sign(claims, typ=typ)))
                # Every token issued so far still verifies: new keys are found, retired ones stay published.
                for kind, token in issued:
                    if kind == "at+jwt":
                        verifier.verify_access_token(token)
                    else:
                        verifier.verify_id_token(token)
        assert issuer.jwks_fetches <= 1 + len(changes)
    finally:
        issuer.stop()


# -- generated input -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(keys: dict[str, Any]) -> Iterator[tuple[Verifier, Issuer]]:
    issuer = Issuer([public(keys["es"]), public(keys["rs"])])
    yield Verifier(issuer.url, client_id=CLIENT, clock=Clock()), issuer
    issuer.stop()


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
headers = st.fixed_dictionaries(
    {
        "alg": st.sampled_from(["ES256", "RS256", "none", "HS256", "PS256", "EdDSA", ""]) | json_values,
        "kid": st.sampled_from(["es-1", "rs-1", "nope"]) | json_values,
    },
    optional={"typ": st.sampled_from(["JWT", "at+jwt", "logout+jwt"]) | json_values, "crit": json_values},
)
structured_tokens = st.builds(
    lambda header, claims, signature: ".".join(
        [b64(json.dumps(header).encode()), b64(json.dumps(claims).encode()), b64(signature)]
    ),
    headers,
    st.dictionaries(st.text(max_size=10), json_values, max_size=6) | json_values,
    st.binary(max_size=300),
)
tokens = (
    st.text(max_size=400)
    | st.binary(max_size=300).map(lambda raw: raw.decode("latin-1"))
    | structured_tokens
    | st.lists(st.text(alphabet="abcXYZ-_=.0", max_size=40), min_size=1, max_size=5).map(".".join)
)


@given(token=tokens)
def test_arbitrary_tokens_raise_nothing_but_verification_error(served: tuple[Verifier, Issuer], token: str) -> None:
    verifier, _ = served
    for verify in (verifier.verify_id_token, verifier.verify_access_token, verifier.verify_logout_token):
        with pytest.raises(VerificationError):
            verify(token)


@given(token=st.one_of(st.none(), st.integers(), st.binary(max_size=20)))
def test_non_string_tokens_are_malformed(served: tuple[Verifier, Issuer], token: object) -> None:
    verifier, _ = served
    with pytest.raises(VerificationError) as refused:
        verifier.verify_access_token(token)  # type: ignore[arg-type]  # what an untyped caller may pass
    assert refused.value.reason == "malformed"


# -- step-up ---------------------------------------------------------------------------------------------------------


PERMITS = Requirement(scopes=("permits",), acr_values=("phr", "phrh"), max_age=300)


def test_challenges_name_what_a_new_token_must_carry() -> None:
    assert challenge(PERMITS) == "Bearer"
    assert challenge(PERMITS, "insufficient_user_authentication", "Sign in again.") == (
        'Bearer error="insufficient_user_authentication", error_description="Sign in again.", '
        'acr_values="phr phrh", max_age=300'
    )
    assert challenge(PERMITS, "insufficient_scope", "No.") == (
        'Bearer error="insufficient_scope", error_description="No.", scope="permits"'
    )
    assert challenge(PERMITS, "invalid_token", "Expired.") == (
        'Bearer error="invalid_token", error_description="Expired."'
    )
    assert challenge(Requirement(), "insufficient_user_authentication", "x") == (
        'Bearer error="insufficient_user_authentication", error_description="x"'
    )


def test_challenge_values_are_quoted_safely() -> None:
    need = Requirement(acr_values=('a"b', "c\\d"))
    assert challenge(need, "insufficient_user_authentication", 'say "hi"\r\n한') == (
        'Bearer error="insufficient_user_authentication", error_description="say \\"hi\\"???", '
        'acr_values="a\\"b c\\\\d"'
    )


def protected_app(verifier: Verifier) -> Client:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        access = environ.get("idp.rp.access_token")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [f"reached as {access.sub if access else 'nobody'}".encode()]

    routes = {"/api/permits": PERMITS, "/api/": Requirement(scopes=("openid",))}
    return Client(StepUp(app, verifier, routes))  # type: ignore[arg-type]  # a plain WSGI callable


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_step_up_lets_a_token_that_meets_the_route_through(
    verifier: Verifier, issuer: Issuer, keys: dict[str, Any]
) -> None:
    client = protected_app(verifier)
    response = client.get("/api/permits/12", headers=bearer(sign(keys["es"], access_claims(issuer), typ="at+jwt")))
    assert (response.status_code, response.get_data(as_text=True)) == (200, "reached as pairwise-sub")
    assert client.get("/public").get_data(as_text=True) == "reached as nobody"
    assert client.get("/api/permitsx").status_code == 401  # a prefix matches whole segments: /api/ applies


@pytest.mark.parametrize(
    ("path", "changes", "status", "header"),
    [
        (
            "/api/permits",
            {"acr": "http://x/acr/aal1"},
            401,
            'Bearer error="insufficient_user_authentication", error_description="The resident\'s authentication level'
            ' is not one demanded.", acr_values="phr phrh", max_age=300',
        ),
        (
            "/api/permits",
            {"auth_time": NOW - 400},
            401,
            'Bearer error="insufficient_user_authentication", error_description="The resident authenticated more than'
            ' 300 seconds ago.", acr_values="phr phrh", max_age=300',
        ),
        (
            "/api/permits",
            {"scope": "openid"},
            403,
            'Bearer error="insufficient_scope", error_description="The token lacks the scope permits.", '
            'scope="permits"',
        ),
        (
            "/api/other",
            {"exp": NOW - 60},
            401,
            'Bearer error="invalid_token", error_description="The token has expired."',
        ),
    ],
)
def test_step_up_answers_a_token_that_falls_short_with_its_challenge(
    verifier: Verifier,
    issuer: Issuer,
    keys: dict[str, Any],
    path: str,
    changes: dict[str, Any],
    status: int,
    header: str,
) -> None:
    token = sign(keys["es"], with_claims(access_claims(issuer), **changes), typ="at+jwt")
    response = protected_app(verifier).get(path, headers=bearer(token))
    assert response.status_code == status
    assert response.headers["WWW-Authenticate"] == header
    assert response.headers["Cache-Control"] == "no-store"
    assert response.get_json()["error"] == header.split('"')[1]


@pytest.mark.parametrize("authorization", [None, "Basic dXNlcjpwYXNz", "Bearer"])
def test_step_up_without_a_bearer_token_answers_a_bare_challenge(verifier: Verifier, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    response = protected_app(verifier).get("/api/permits", headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"


def test_step_up_answers_a_garbled_token_as_invalid(verifier: Verifier) -> None:
    response = protected_app(verifier).get("/api/x", headers=bearer("garbage"))
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"')


def test_step_up_answers_503_when_the_keys_cannot_be_had(issuer: Issuer, clock: Clock, keys: dict[str, Any]) -> None:
    url = issuer.url
    issuer.stop()
    response = protected_app(Verifier(url, client_id=CLIENT, clock=clock)).get(
        "/api/x", headers=bearer(sign(keys["es"], access_claims(issuer), typ="at+jwt"))
    )
    assert response.status_code == 503
    assert "WWW-Authenticate" not in response.headers


# -- what importing idp.rp needs ---------------------------------------------------------------------------------------

SERVER_ONLY = [
    "flask",
    "werkzeug",
    "sqlalchemy",
    "authlib",
    "webauthn",
    "pyotp",
    "click",
    "alembic",
    "psycopg",
    "redis",
    "babel",
]


def test_idp_rp_imports_without_the_servers_dependencies() -> None:
    refuse = f"""
import sys
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {SERVER_ONLY!r}:
            raise ImportError("refused: " + name)
        return None
sys.meta_path.insert(0, Refuse())
import idp.rp
from idp.rp import Verifier, VerificationError, IdToken, AccessToken, LogoutToken, Requirement, StepUp, challenge
assert not [name for name in sys.modules if name.split(".")[0] in {SERVER_ONLY!r}]
try:
    import flask
except ImportError:
    pass
else:
    raise AssertionError("the finder let flask through")
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", refuse], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout.strip()) == (0, "ok"), result.stderr
