"""ID-token signing and access-token verification, in-process: the idp keyring's `SigningKey.sign` beside jose in
Node (bench/node/sign.mjs, what node-oidc-provider signs with), and idp.rp's warm `Verifier` beside joserfc's raw
`jwt.decode` of the same token. Each runs pinned to the server CPUs while no server runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from servers import HOST, NODE_DIR, BenchError, pinned

from idp.keyring import Keyring, SigningKey

SIGN_ALGORITHMS = ("ES256", "RS256")

# The claims of an ID token (docs/integration.md section 7); bench/node/sign.mjs signs the same ones.
CLAIM_SUB = "Qm9iIHRoZSBiZW5jaG1hcmsgcmVzaWRlbnQgc3ViamVjdA"
CLAIM_SID = "9b6a4b8f-3e1c-4d0b-a1f2-6c0d1e2f3a4b"


@dataclass(frozen=True, slots=True)
class SignResult:
    count: int
    seconds: float
    per_second: float


def active_keys(keys_dir: Path) -> dict[str, SigningKey]:
    loaded = Keyring.from_directory(keys_dir).current()
    return {alg: loaded.active(alg) for alg in SIGN_ALGORITHMS}


# -- signing -----------------------------------------------------------------------------------------------------


def id_token_claims(issuer: str) -> dict[str, Any]:
    now = int(time.time())
    return {
        "iss": issuer,
        "sub": CLAIM_SUB,
        "aud": "bench-client",
        "exp": now + 300,
        "iat": now,
        "auth_time": now - 30,
        "nonce": "n-0S6_WzA2Mj",
        "acr": "phr",
        "amr": ["swk", "user", "mfa"],
        "sid": CLAIM_SID,
    }


def _sign_for(key: SigningKey, seconds: float) -> SignResult:
    batch = 20
    count = 0
    started = time.perf_counter()
    deadline = started + seconds
    now = started
    while now < deadline:
        for _ in range(batch):
            key.sign(id_token_claims("http://localhost:8000"), typ="JWT")
        count += batch
        now = time.perf_counter()
    elapsed = now - started
    return SignResult(count=count, seconds=round(elapsed, 3), per_second=round(count / elapsed, 1))


@contextlib.contextmanager
def cpu_affinity(cpus: set[int]) -> Iterator[None]:
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def measure_idp_signing(keys: Mapping[str, SigningKey], seconds: float, cpus: set[int]) -> dict[str, SignResult]:
    """Signatures per second with SigningKey.sign, in this process, pinned like the servers."""
    results = {}
    with cpu_affinity(cpus):
        for alg, key in keys.items():
            _sign_for(key, min(0.3, seconds / 4))  # warm-up
            results[alg] = _sign_for(key, seconds)
    return results


def measure_node_signing(jwks_path: Path, seconds: float, cpus: str) -> tuple[dict[str, SignResult], str]:
    """Signatures per second with jose (bench/node/sign.mjs), pinned like the servers; and node's version."""
    argv = pinned(cpus, ["node", str(NODE_DIR / "sign.mjs"), "--jwks", str(jwks_path), "--seconds", str(seconds)])
    for alg in SIGN_ALGORITHMS:
        argv += ["--alg", alg]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60 + 4 * seconds, check=False)
    if result.returncode != 0:
        raise BenchError(f"node sign.mjs failed: {result.stderr.strip()}")
    data = json.loads(result.stdout.strip().splitlines()[-1])
    return {alg: SignResult(**data[alg]) for alg in SIGN_ALGORITHMS}, str(data.get("runtime", "node"))


# -- verification (idp.rp) ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VerifyResult:
    verifier: SignResult
    raw_decode: SignResult

    @property
    def ratio(self) -> float:
        return self.verifier.per_second / self.raw_decode.per_second


class _JwksServer:
    """The keyring's discovery and JWKS on 127.0.0.1, as `idp serve` publishes them, for a Verifier to warm from."""

    def __init__(self, keys_dir: Path) -> None:
        jwks = Keyring.from_directory(keys_dir).current().jwks_json
        served = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/jwks":
                    body = jwks
                else:
                    body = json.dumps({"issuer": served.issuer, "jwks_uri": served.issuer + "/jwks"}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Cache-Control", "public, max-age=600")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer((HOST, 0), Handler)
        self.issuer = f"http://{HOST}:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _count_for(call: Callable[[], object], seconds: float) -> SignResult:
    batch = 50
    count = 0
    started = time.perf_counter()
    deadline = started + seconds
    now = started
    while now < deadline:
        for _ in range(batch):
            call()
        count += batch
        now = time.perf_counter()
    elapsed = now - started
    return SignResult(count=count, seconds=round(elapsed, 3), per_second=round(count / elapsed, 1))


def measure_verification(keys_dir: Path, seconds: float, cpus: set[int]) -> dict[str, VerifyResult]:
    """Access-token verifications per second with a warm idp.rp Verifier (every RFC 9068 check and a scope) beside
    joserfc's raw jwt.decode of the same token with a prebuilt key and registry (signature and JSON only), in this
    process, pinned like the servers; the two alternate in four rounds and each keeps its best round."""
    from joserfc import jwt
    from joserfc.jwk import KeySet
    from joserfc.jws import JWSRegistry

    from idp.rp import Verifier

    served = _JwksServer(keys_dir)
    results: dict[str, VerifyResult] = {}
    try:
        verifier = Verifier(served.issuer, client_id="bench-client")
        for alg, key in active_keys(keys_dir).items():
            now = int(time.time())
            claims = {
                "iss": served.issuer,
                "sub": CLAIM_SUB,
                "aud": "bench-client",
                "client_id": "bench-client",
                "iat": now,
                "exp": now + 3600,
                "jti": secrets.token_urlsafe(24),
                "scope": "openid profile",
                "auth_time": now - 30,
                "acr": "phr",
                "amr": ["swk", "user", "mfa"],
            }
            token = key.sign(claims, typ="at+jwt")
            public = KeySet.import_key_set({"keys": [key.public_jwk()]}).keys[0]
            registry = JWSRegistry(algorithms=[alg])
            verifier.verify_access_token(token, scopes=("openid",))  # warm: discovery and JWKS fetched here

            def verify(token: str = token) -> object:
                return verifier.verify_access_token(token, scopes=("openid",))

            def decode(token: str = token, public: Any = public, registry: JWSRegistry = registry) -> object:
                return jwt.decode(token, public, registry=registry)

            rounds: dict[str, list[SignResult]] = {"verifier": [], "raw": []}
            with cpu_affinity(cpus):
                _count_for(decode, min(0.3, seconds / 4))
                _count_for(verify, min(0.3, seconds / 4))
                for _ in range(4):
                    rounds["raw"].append(_count_for(decode, seconds / 4))
                    rounds["verifier"].append(_count_for(verify, seconds / 4))
            best = {name: max(runs, key=lambda run: run.per_second) for name, runs in rounds.items()}
            results[alg] = VerifyResult(verifier=best["verifier"], raw_decode=best["raw"])
    finally:
        served.close()
    return results
