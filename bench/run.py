"""Benchmark the idp against node-oidc-provider, per core: HTTP endpoints with wrk and ID-token signing.

Both servers run on CPU 0 (`taskset`), wrk runs on CPU 1, everything on 127.0.0.1. The idp is a fresh instance in a
temporary folder (SQLite, and PostgreSQL when given a server); node-oidc-provider gets the same signing keys. The
token cases spend single-use codes and refresh tokens minted before each run. See bench/README.md for how to read
the figures.

    .venv/bin/python bench/run.py [--quick] [--duration 10] [--connections 32] [--only NAME] [--idp-workers N]
        [--postgres-url postgresql+psycopg://USER@127.0.0.1:PORT/DB]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import math
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal, Protocol

from idp.keyring import Keyring, KeyState, SigningKey

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
NODE_DIR = BENCH_DIR / "node"
RESULTS_FILE = BENCH_DIR / "results" / "latest.json"
VENV_BIN = Path(sys.executable).parent
HOST = "127.0.0.1"  # every server and every request stays on the loopback interface

READY_TIMEOUT = 60.0  # seconds for a server to answer its readiness probe
STOP_TIMEOUT = 10.0  # seconds between SIGTERM and SIGKILL
NPM_TIMEOUT = 600.0
LOAD_WARNING = 1.0  # 1-minute load average above which other work skews a per-core benchmark
SIGN_ALGORITHMS = ("ES256", "RS256")

# The claims of an ID token (docs/integration.md section 7); bench/node/sign.mjs signs the same ones.
CLAIM_SUB = "Qm9iIHRoZSBiZW5jaG1hcmsgcmVzaWRlbnQgc3ViamVjdA"
CLAIM_SID = "9b6a4b8f-3e1c-4d0b-a1f2-6c0d1e2f3a4b"

# The client both servers know for the token cases (bench/node/provider.mjs registers the same): confidential,
# client_secret_basic, code flow with refresh tokens and client credentials, pairwise subjects, RS256 ID tokens.
NODE_CLIENT_ID = "bench"
REDIRECT_URI = "http://localhost/callback"
CODE_SCOPE = "openid profile phone offline_access"
# PKCE (S256): both servers require it for these codes; one verifier serves every minted code.
CODE_VERIFIER = "bench-code-verifier-0123456789-abcdefghijklmnopqrstuvwxyz"
# The resident the codes and tokens are for; node's account has the same claims.
RESIDENT = {"name": "김경기", "birthdate": dt.date(1985, 3, 14), "phone": "+821000000001", "carrier": "SKT"}
# Replaced in a request's body and headers by a value minted before each run (or each request: `single_use`).
FRESH = "__BENCH_FRESH__"

# Single-use values: each run gets rate x seconds x MINT_MARGIN of them (plus MINT_EXTRA and two per connection),
# the rate being the last one measured for that server, or MINT_FIRST_GUESS before any.
MINT_FIRST_GUESS = 3000.0
MINT_MARGIN = 1.5
MINT_EXTRA = 200
MINT_ATTEMPTS = 4
MINT_BATCH = 20_000  # rows per INSERT batch, values per node request

POSTGRES_SKIPPED = "no PostgreSQL server given (--postgres-url or IDP_BENCH_POSTGRES_URL): PostgreSQL rows skipped"


# -- what is measured --------------------------------------------------------------------------------------------


MintKind = Literal["code", "refresh_token", "access_token"]


@dataclass(frozen=True, slots=True)
class Request:
    """One HTTP request for wrk: a fixed path, or a URL the server's discovery document names.

    With `fresh`, a value of that kind is minted before each run and replaces FRESH in the body and headers; with
    `single_use` as well, every request gets its own value (authorization codes, refresh tokens) and none is reused.
    """

    path: str | None = None
    discovery_field: str | None = None
    method: str = "GET"
    body: bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    expect_status: int = 200
    fresh: MintKind | None = None
    single_use: bool = False

    @classmethod
    def get(cls, path: str) -> Request:
        return cls(path=path)

    @classmethod
    def from_discovery(cls, name: str) -> Request:
        """The path of the URL the discovery document gives under `name` (e.g. `jwks_uri`)."""
        return cls(discovery_field=name)

    @property
    def needs_script(self) -> bool:
        return self.method != "GET" or self.body is not None or bool(self.headers)

    def with_value(self, value: str) -> Request:
        """This request with FRESH replaced by `value` (one value for the whole run)."""
        body = self.body.replace(FRESH.encode(), value.encode()) if self.body is not None else None
        headers = {name: text.replace(FRESH, value) for name, text in self.headers.items()}
        return Request(self.path, self.discovery_field, self.method, body, headers, self.expect_status)


@dataclass(frozen=True, slots=True)
class Credentials:
    """The bench client as one server knows it."""

    client_id: str
    client_secret: str

    def basic(self) -> dict[str, str]:
        """client_secret_basic: id and secret form-encoded, then Base64 (RFC 6749 §2.3.1)."""
        pair = f"{urllib.parse.quote(self.client_id, safe='')}:{urllib.parse.quote(self.client_secret, safe='')}"
        return {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}


RequestSpec = Request | Callable[[Credentials], Request]


@dataclass(frozen=True, slots=True)
class Case:
    """An endpoint measured on both servers, by name (`--only NAME`).

    A case that touches the idp's database (`uses_database`) is measured once per database (SQLite, PostgreSQL).
    """

    name: str
    idp: RequestSpec
    node: RequestSpec
    uses_database: bool = False


FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def _form(**fields: str) -> bytes:
    # FRESH is made of characters urlencode leaves alone, so it can still be found and replaced.
    return urllib.parse.urlencode(fields).encode()


def client_credentials_request(client: Credentials) -> Request:
    return Request(
        discovery_field="token_endpoint",
        method="POST",
        body=_form(grant_type="client_credentials"),
        headers={**FORM, **client.basic()},
    )


def authorization_code_request(client: Credentials) -> Request:
    body = _form(grant_type="authorization_code", code=FRESH, redirect_uri=REDIRECT_URI, code_verifier=CODE_VERIFIER)
    return Request(
        discovery_field="token_endpoint",
        method="POST",
        body=body,
        headers={**FORM, **client.basic()},
        fresh="code",
        single_use=True,
    )


def refresh_token_request(client: Credentials) -> Request:
    return Request(
        discovery_field="token_endpoint",
        method="POST",
        body=_form(grant_type="refresh_token", refresh_token=FRESH),
        headers={**FORM, **client.basic()},
        fresh="refresh_token",
        single_use=True,
    )


def userinfo_request(client: Credentials) -> Request:
    return Request(
        discovery_field="userinfo_endpoint", headers={"Authorization": f"Bearer {FRESH}"}, fresh="access_token"
    )


def introspection_request(client: Credentials) -> Request:
    return Request(
        discovery_field="introspection_endpoint",
        method="POST",
        body=_form(token=FRESH, token_type_hint="access_token"),  # noqa: S106  (a token type, not a secret)
        headers={**FORM, **client.basic()},
        fresh="access_token",
    )


# A POST case gives method, body and headers and wrk gets a Lua script for it; a case that needs credentials gives
# a function of them.
CASES: tuple[Case, ...] = (
    Case(
        "discovery", Request.get("/.well-known/openid-configuration"), Request.get("/.well-known/openid-configuration")
    ),
    Case("jwks", Request.get("/jwks"), Request.from_discovery("jwks_uri")),
    Case("client_credentials", client_credentials_request, client_credentials_request, uses_database=True),
    Case("authorization_code", authorization_code_request, authorization_code_request, uses_database=True),
    Case("refresh_token", refresh_token_request, refresh_token_request, uses_database=True),
    Case("userinfo", userinfo_request, userinfo_request, uses_database=True),
    Case("introspection", introspection_request, introspection_request, uses_database=True),
)


# -- results -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WrkResult:
    requests_per_second: float
    latency_p50_ms: float
    latency_p99_ms: float
    requests: int
    non_2xx_3xx: int
    socket_errors: int
    response_bytes: int
    command: str
    single_use_values: int = 0  # minted for the run (codes or refresh tokens), each sent at most once


@dataclass(frozen=True, slots=True)
class SignResult:
    count: int
    seconds: float
    per_second: float


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the table; `ratio` is > 1 when the idp does better, whichever way "better" points."""

    metric: str
    idp: float
    node: float
    better: Literal["higher", "lower"]

    @property
    def ratio_label(self) -> str:
        return "idp/node" if self.better == "higher" else "node/idp"

    @property
    def ratio(self) -> float | None:
        if self.better == "higher":
            return self.idp / self.node if self.node else None
        return self.node / self.idp if self.idp else None


class BenchError(Exception):
    """The benchmark cannot run or a server misbehaved; the message is one line for the person running it."""


# -- processes ---------------------------------------------------------------------------------------------------


@dataclass
class Server:
    """A server we started in its own process group, with its output in a log file."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    discovery: dict[str, Any] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM the process group, then SIGKILL it if it has not exited in time."""
        if self.process.poll() is None:
            _signal_group(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                _signal_group(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=STOP_TIMEOUT)
        # Workers left behind by a parent that died first share its process group.
        _signal_group(self.process.pid, signal.SIGKILL)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def start_server(name: str, argv: Sequence[str], *, env: Mapping[str, str], port: int, log_path: Path) -> Server:
    """Start `argv` in a new session (its own process group), output to `log_path`."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            list(argv),
            cwd=REPO_DIR,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Server(name=name, process=process, port=port, log_path=log_path)


def wait_ready(server: Server, path: str) -> None:
    """Poll GET `path` until it answers 200.

    Raises:
        BenchError: the server exited or did not become ready within READY_TIMEOUT.
    """
    deadline = time.monotonic() + READY_TIMEOUT
    last = "no answer"
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise BenchError(f"{server.name} exited with status {server.process.returncode}:\n{server.log_tail()}")
        try:
            status, _, _ = http_request(server.base_url + path, timeout=2.0)
        except OSError as exc:
            last = str(exc)
        else:
            if status == 200:
                return
            last = f"status {status}"
        time.sleep(0.1)
    raise BenchError(f"{server.name} not ready after {READY_TIMEOUT:.0f} s ({path}: {last}):\n{server.log_tail()}")


def http_request(
    url: str,
    *,
    method: str = "GET",
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 5.0,
) -> tuple[int, dict[str, str], bytes]:
    """One request to a loopback URL: status, headers and body (error statuses are returned, not raised)."""
    if not url.startswith(f"http://{HOST}:"):
        raise BenchError(f"refusing a request off the loopback interface: {url}")
    req = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))  # noqa: S310  (http://127.0.0.1 only, checked above)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:  # noqa: S310
            return response.status, dict(response.headers.items()), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers.items()), exc.read()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def pinned(cpus: str, argv: Sequence[str]) -> list[str]:
    return ["taskset", "-c", cpus, *argv]


# -- the two servers ---------------------------------------------------------------------------------------------


def idp_environment(work: Path, port: int) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("IDP_")}
    env.update(
        IDP_INSTANCE_DIR=str(work / "instance"),
        IDP_KEYS_DIR=str(work / "keys"),
        IDP_ISSUER=f"http://localhost:{port}",
        # Neither server writes a line per request: logging would be measured, not the endpoint.
        IDP_LOG_LEVEL="WARNING",
    )
    return env


def init_idp(env: Mapping[str, str]) -> None:
    result = subprocess.run(
        [str(VENV_BIN / "idp"), "init"],
        cwd=REPO_DIR,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        raise BenchError(f"idp init failed: {(result.stderr or result.stdout).strip()}")


def export_private_jwks(keys_dir: Path) -> dict[str, Any]:
    """The idp keyring's published keys as a private JWKS, each algorithm's active key first.

    node-oidc-provider signs with the first key of an algorithm and publishes the rest, so both servers publish
    the same keys and sign with the same ones.
    """
    keys: Sequence[SigningKey] = Keyring.from_directory(keys_dir).current().keys
    published = [key for key in keys if key.is_published]
    published.sort(key=lambda key: key.state is not KeyState.ACTIVE)  # stable: keyring order otherwise
    document = []
    for key in published:
        jwk = dict(key.jwk.as_dict(private=True))
        jwk.update(kid=key.kid, alg=key.alg, use="sig")
        document.append(jwk)
    return {"keys": document}


def active_keys(keys_dir: Path) -> dict[str, SigningKey]:
    loaded = Keyring.from_directory(keys_dir).current()
    return {alg: loaded.active(alg) for alg in SIGN_ALGORITHMS}


def write_secret_json(path: Path, data: object) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle)


def ensure_node_modules() -> None:
    if (NODE_DIR / "node_modules").is_dir():
        return
    print("installing bench/node dependencies (npm ci) …", flush=True)
    result = subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund"],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=NPM_TIMEOUT,
        check=False,
    )
    if result.returncode != 0:
        raise BenchError(f"npm ci in {NODE_DIR} failed: {(result.stderr or result.stdout).strip()[-2000:]}")


def check_tools() -> None:
    hints = {
        "wrk": "apt-get install wrk",
        "taskset": "apt-get install util-linux",
        "node": "install Node.js 20 or later",
        "npm": "install npm (it comes with Node.js)",
    }
    for tool, hint in hints.items():
        if shutil.which(tool) is None:
            raise BenchError(f"{tool} not found: {hint}")


def node_package_version(name: str) -> str:
    try:
        data = json.loads((NODE_DIR / "node_modules" / name / "package.json").read_text())
    except (OSError, ValueError):
        return "unknown"
    return str(data.get("version", "unknown"))


# -- the token cases: databases, the bench client and resident, single-use values ---------------------------------

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


@dataclass(frozen=True, slots=True)
class IdpDatabase:
    """A database the idp is measured on: the label in the table, the key of its runs in the JSON, the URL."""

    label: str
    key: str
    url: str | None  # None: the instance's SQLite file (`idp init`'s default)


SQLITE = IdpDatabase("SQLite", "idp", None)


def postgres_url_from(raw: str) -> Any:
    """The SQLAlchemy URL of the PostgreSQL server, with the psycopg 3 driver the idp installs.

    Raises:
        BenchError: not a PostgreSQL URL, or a server off the loopback interface.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(raw)
    except ArgumentError:
        raise BenchError(f"not a database URL: {raw!r}") from None
    if url.get_backend_name() != "postgresql":
        raise BenchError(f"not a PostgreSQL URL: {url.render_as_string()}")
    if url.host and not url.host.startswith("/") and url.host not in LOOPBACK:
        raise BenchError(f"the PostgreSQL server must be on 127.0.0.1 like everything measured, not {url.host}")
    return url.set(drivername="postgresql+psycopg")


@contextlib.contextmanager
def postgres_database(raw_url: str, *, keep: bool) -> Iterator[IdpDatabase]:
    """A fresh database on the PostgreSQL server at `raw_url`, dropped afterwards (unless `keep`)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import SQLAlchemyError

    server_url = postgres_url_from(raw_url)
    name = f"idp_bench_{secrets.token_hex(6)}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        try:
            with admin.connect() as connection:
                connection.execute(text(f'CREATE DATABASE "{name}"'))
        except SQLAlchemyError as exc:
            raise BenchError(f"cannot create a database on {server_url.render_as_string()}: {exc}") from None
        print(f"PostgreSQL: database {name} on {server_url.host or 'a local socket'}:{server_url.port or 5432}")
        try:
            yield IdpDatabase("PostgreSQL", "idp-postgresql", server_url.set(database=name).render_as_string(False))
        finally:
            if keep:
                print(f"PostgreSQL database {name} kept", file=sys.stderr)
            else:
                with admin.connect() as connection:
                    connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


class Minter(Protocol):
    def mint(self, kind: MintKind, count: int) -> list[str]:
        """`count` new values of `kind`, each good for one use."""
        ...


@dataclass
class Target:
    """A server as a case sees it: the bench client's credentials there and how to mint single-use values."""

    key: str  # the key of its runs in the JSON: idp, idp-postgresql, node
    label: str
    server: Server
    credentials: Credentials
    minter: Minter


def pkce_challenge(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


class IdpMinter:
    """The bench client and resident in one idp database, and codes and refresh tokens written straight into it,
    row for row as the idp's grants write them (`AuthorizationCodeGrant.save_authorization_code`,
    `tokens.issue_refresh_token`). Access tokens come from the token endpoint itself, for a minted code."""

    def __init__(self, url: str, env: Mapping[str, str]) -> None:
        from idp.db import make_engine, make_session_factory
        from idp.settings import Settings

        self.settings = Settings.from_env(env)
        self.engine = make_engine(url)
        self.sessions = make_session_factory(self.engine)
        self.server: Server | None = None
        self.credentials = self._create_client_and_resident()

    def _create_client_and_resident(self) -> Credentials:
        from idp.authn.assurance import AuthEvent, Method
        from idp.authn.sessions import start_session
        from idp.models import Resident
        from idp.oidc.clients import ClientSpec, create_client, secret_digest_key

        now = dt.datetime.now(dt.UTC)
        spec = ClientSpec(
            name="bench",
            redirect_uris=(REDIRECT_URI,),
            grant_types=("authorization_code", "refresh_token", "client_credentials"),
            scopes=tuple(CODE_SCOPE.split()),
        )
        with self.sessions() as db:
            created = create_client(
                db, spec, secret_key=secret_digest_key(self.settings.secret_key), issuer=self.settings.issuer, now=now
            )
            resident = Resident(id=uuid.uuid4(), verified_at=now, verified_by="bench", created_at=now, **RESIDENT)
            db.add(resident)
            db.flush()
            # Signed in by carrier SMS half a minute ago: the login session a code's sid, acr and amr come from.
            event = AuthEvent.of(Method.CARRIER_SMS, issuer=self.settings.issuer, at=now - dt.timedelta(seconds=30))
            login = start_session(db, resident, event, client_ip=HOST, user_agent="bench/run.py", now=now).session
            self.client_id = created.client.id
            self.resident_id = resident.id
            self.sid, self.acr, self.amr, self.auth_time = login.sid, login.acr, list(login.amr), login.auth_time
            db.commit()
        assert created.secret is not None
        return Credentials(created.client.id, created.secret)

    def mint(self, kind: MintKind, count: int) -> list[str]:
        if kind == "access_token":
            return [self._access_token() for _ in range(count)]
        from sqlalchemy import insert

        from idp.models import AuthorizationCode, RefreshToken
        from idp.oidc import tokens

        now = dt.datetime.now(dt.UTC)
        values: list[str] = []
        rows: list[dict[str, Any]] = []
        common = {"client_id": self.client_id, "resident_id": self.resident_id, "sid": self.sid, "scope": CODE_SCOPE}
        common |= {"claims": None, "acr": self.acr, "amr": self.amr, "auth_time": self.auth_time, "created_at": now}
        if kind == "code":
            from authlib.common.security import generate_token
            from authlib.oauth2.rfc6749.grants import AuthorizationCodeGrant

            model: Any = AuthorizationCode
            challenge = pkce_challenge(CODE_VERIFIER)
            for _ in range(count):
                values.append(generate_token(AuthorizationCodeGrant.AUTHORIZATION_CODE_LENGTH))
                rows.append(
                    {
                        **common,
                        "digest": tokens.digest(values[-1]),
                        "grant_id": uuid.uuid4(),
                        "redirect_uri": REDIRECT_URI,
                        "nonce": secrets.token_urlsafe(12),
                        "code_challenge": challenge,
                        "code_challenge_method": "S256",
                        "expires_at": now + dt.timedelta(seconds=self.settings.code_ttl),
                    }
                )
        else:
            model = RefreshToken
            family_end = now + dt.timedelta(seconds=self.settings.refresh_token_absolute_ttl)
            expires_at = min(family_end, now + dt.timedelta(seconds=self.settings.refresh_token_ttl))
            for _ in range(count):
                values.append(tokens.new_secret())
                rows.append(
                    {
                        **common,
                        "digest": tokens.digest(values[-1]),
                        "grant_id": uuid.uuid4(),  # one family per token, as one resident's sign-in would start
                        "expires_at": expires_at,
                        "family_expires_at": family_end,
                    }
                )
        with self.sessions() as db:
            for start in range(0, len(rows), MINT_BATCH):
                db.execute(insert(model), rows[start : start + MINT_BATCH])
            db.commit()
        return values

    def _access_token(self) -> str:
        """An access token with the code's scope (openid included), from the token endpoint."""
        assert self.server is not None
        request = authorization_code_request(self.credentials).with_value(self.mint("code", 1)[0])
        url = self.server.base_url + resolve_path(self.server, request)
        status, _, body = http_request(url, method=request.method, body=request.body, headers=request.headers)
        if status != 200:
            raise BenchError(f"idp code exchange for an access token: status {status}: {body[:300]!r}")
        token: str = json.loads(body)["access_token"]
        return token

    def close(self) -> None:
        self.engine.dispose()


class NodeMinter:
    """Codes, refresh tokens and opaque access tokens saved by node-oidc-provider's own models (`--mint`)."""

    def __init__(self, server: Server) -> None:
        self.server = server

    def mint(self, kind: MintKind, count: int) -> list[str]:
        values: list[str] = []
        while len(values) < count:
            batch = min(MINT_BATCH, count - len(values))
            query = urllib.parse.urlencode({"kind": kind, "count": batch})
            status, _, body = http_request(f"{self.server.base_url}/bench/mint?{query}", method="POST", timeout=120)
            if status != 200:
                raise BenchError(f"node-oidc-provider /bench/mint: status {status}: {body[:300]!r}")
            values += json.loads(body)["values"]
        return values


# -- wrk ---------------------------------------------------------------------------------------------------------

_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_DURATION = r"([\d.]+)(us|ms|s|m|h)"


def to_ms(value: str, unit: str) -> float:
    return float(value) * _UNIT_MS[unit]


def parse_wrk(output: str, command: str, response_bytes: int) -> WrkResult:
    """Requests/sec, the 50% and 99% latency (in ms) and the error counts of `wrk --latency` output.

    Raises:
        BenchError: the output lacks a figure (wrk failed).
    """
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.MULTILINE)
    p50 = re.search(rf"^\s+50%\s+{_DURATION}", output, re.MULTILINE)
    p99 = re.search(rf"^\s+99%\s+{_DURATION}", output, re.MULTILINE)
    total = re.search(r"^\s+(\d+) requests in", output, re.MULTILINE)
    if not (rps and p50 and p99 and total):
        raise BenchError(f"cannot read wrk's output:\n{output.strip()}")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    return WrkResult(
        requests_per_second=float(rps.group(1)),
        latency_p50_ms=to_ms(*p50.groups()),
        latency_p99_ms=to_ms(*p99.groups()),
        requests=int(total.group(1)),
        non_2xx_3xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(n) for n in sockets.groups()) if sockets else 0,
        response_bytes=response_bytes,
        command=command,
    )


def lua_string(data: bytes | str) -> str:
    """A Lua string literal for any bytes (decimal escapes for everything but plain printable ASCII)."""
    raw = data.encode() if isinstance(data, str) else data
    return '"' + "".join(chr(b) if 32 <= b < 127 and chr(b) not in '"\\' else f"\\{b:03d}" for b in raw) + '"'


def wrk_script(request: Request) -> str:
    lines = [f"wrk.method = {lua_string(request.method)}"]
    if request.body is not None:
        lines.append(f"wrk.body = {lua_string(request.body)}")
    for name, value in request.headers.items():
        lines.append(f"wrk.headers[{lua_string(name)}] = {lua_string(value)}")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class LoadOptions:
    duration: int
    warmup: int
    connections: int
    threads: int
    wrk_cpus: str


def resolve_path(server: Server, request: Request) -> str:
    if request.path is not None:
        return request.path
    assert request.discovery_field is not None
    url = server.discovery.get(request.discovery_field)
    if not isinstance(url, str):
        raise BenchError(f"{server.name}'s discovery document has no {request.discovery_field}")
    # Only the path: the issuer names localhost, the servers listen on 127.0.0.1.
    return urllib.parse.urlsplit(url).path or "/"


EXHAUSTED = re.compile(r"^single-use values exhausted: (\d+)$", re.MULTILINE)


def single_use_script(request: Request, values_path: Path, threads: int) -> str:
    """A wrk script that sends every value of `values_path` (one a line) at most once, in place of FRESH in the
    body; thread i of `threads` takes lines i, i + threads, … Once a thread runs out it sends `exhausted`, which the
    server refuses, and counts it; `done` prints the count (see `_single_use_wrk`)."""
    assert request.body is not None
    assert FRESH.encode() in request.body, "a single-use value goes in the body"
    prefix, _, suffix = request.body.partition(FRESH.encode())
    static = Request(method=request.method, headers=request.headers)
    return wrk_script(static) + "\n".join(
        [
            f"local values_path = {lua_string(str(values_path))}",
            f"local prefix, suffix = {lua_string(prefix)}, {lua_string(suffix)}",
            f"local threads = {threads}",
            "local values, next_value, thread_count, started = {}, 1, 0, {}",
            "exhausted = 0  -- a global, so that done() can read each thread's",
            "function setup(thread)",
            "  thread:set('thread_index', thread_count)",
            "  thread_count = thread_count + 1",
            "  started[#started + 1] = thread",
            "end",
            "function init(args)",
            "  local i = 0",
            "  for line in io.lines(values_path) do",
            "    if i % threads == thread_index then values[#values + 1] = line end",
            "    i = i + 1",
            "  end",
            "end",
            "function request()",
            "  local value = values[next_value]",
            "  if value then",
            "    values[next_value] = nil",
            "    next_value = next_value + 1",
            "  else",
            "    value = 'exhausted'",
            "    exhausted = exhausted + 1",
            "  end",
            "  return wrk.format(nil, nil, nil, prefix .. value .. suffix)",
            "end",
            "function done(summary, latency, requests)",
            "  local total = 0",
            "  for _, thread in ipairs(started) do total = total + thread:get('exhausted') end",
            "  io.write(string.format('single-use values exhausted: %d\\n', total))",
            "end",
            "",
        ]
    )


def run_wrk(
    target: Target,
    request: Request,
    options: LoadOptions,
    work: Path,
    label: str,
    *,
    warmup: bool = True,
    rate: float = MINT_FIRST_GUESS,
) -> WrkResult:
    """Check the endpoint answers as expected once, warm it up (unless told not to), then measure it with wrk.

    A request with a fresh value gets one minted for the run; a single-use one gets a value per request, as many as
    `rate` (requests per second expected) says the run needs, and more if they ran out.

    Raises:
        BenchError: a wrong status, or wrk failed.
    """
    server = target.server
    url = server.base_url + resolve_path(server, request)
    if request.fresh is not None and not request.single_use:
        request = request.with_value(target.minter.mint(request.fresh, 1)[0])
    checked = request
    if request.single_use:
        assert request.fresh is not None
        checked = request.with_value(target.minter.mint(request.fresh, 1)[0])
    status, _, body = http_request(url, method=checked.method, body=checked.body, headers=checked.headers)
    if status != request.expect_status:
        raise BenchError(
            f"{server.name} {request.method} {url}: status {status}, expected {request.expect_status}: "
            f"{body[:300].decode(errors='replace')}"
        )
    argv = ["wrk", f"-t{options.threads}", f"-c{options.connections}", "--latency", "--timeout", "5s"]
    if request.single_use:
        if warmup and options.warmup > 0:
            rate = _single_use_wrk(target, request, options, argv, url, work, label, options.warmup, rate)[1]
        result, _ = _single_use_wrk(target, request, options, argv, url, work, label, options.duration, rate)
        return dataclasses.replace(result, response_bytes=len(body))
    if request.needs_script:
        script = work / f"{label}.lua"
        script.write_text(wrk_script(request))
        argv += ["-s", str(script)]
    if warmup and options.warmup > 0:
        _wrk(pinned(options.wrk_cpus, [*argv, f"-d{options.warmup}s", url]), options.warmup)
    command = pinned(options.wrk_cpus, [*argv, f"-d{options.duration}s", url])
    output = _wrk(command, options.duration)
    return parse_wrk(output, " ".join(command), len(body))


def _single_use_wrk(
    target: Target,
    request: Request,
    options: LoadOptions,
    argv: list[str],
    url: str,
    work: Path,
    label: str,
    seconds: int,
    rate: float,
) -> tuple[WrkResult, float]:
    """One wrk run of `seconds` spending single-use values; again with more if they ran out. The result, and the
    rate to size the next run by.

    Raises:
        BenchError: they still ran out after MINT_ATTEMPTS runs, or wrk failed.
    """
    assert request.fresh is not None
    for _ in range(MINT_ATTEMPTS):
        # As many for each wrk thread as the whole run should need: a server may serve one thread's connections
        # more than another's, and a thread cannot take values from another.
        count = math.ceil(rate * seconds * MINT_MARGIN) + 2 * options.connections + MINT_EXTRA
        values = target.minter.mint(request.fresh, count * options.threads)
        values_path = work / f"{label}.values"
        values_path.write_text("".join(urllib.parse.quote(value, safe="") + "\n" for value in values))
        script = work / f"{label}.lua"
        script.write_text(single_use_script(request, values_path, options.threads))
        command = pinned(options.wrk_cpus, [*argv, "-s", str(script), f"-d{seconds}s", url])
        output = _wrk(command, seconds)
        result = parse_wrk(output, " ".join(command), 0)
        measured = result.requests_per_second
        exhausted = EXHAUSTED.search(output)
        if exhausted is None:
            raise BenchError(f"the single-use wrk script did not report:\n{output.strip()}")
        if int(exhausted.group(1)) == 0:
            return dataclasses.replace(result, single_use_values=len(values)), max(measured, 1.0)
        print(f"  {len(values)} single-use values ran out after {result.requests} requests; again with more")
        rate = max(rate, measured) * 2
    raise BenchError(f"{target.label} {request.fresh}: single-use values kept running out")


def _wrk(argv: list[str], duration: int) -> str:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30, check=False)
    except subprocess.TimeoutExpired:
        raise BenchError(f"wrk did not finish: {' '.join(argv)}") from None
    if result.returncode != 0:
        raise BenchError(f"wrk failed ({result.returncode}): {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout


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


# -- output ------------------------------------------------------------------------------------------------------


def format_number(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def render_table(rows: Sequence[Row], notes: Sequence[str] = ()) -> str:
    header = ("metric", "idp", "node-oidc-provider", "ratio (>1: idp better)")
    body = [
        (
            row.metric,
            format_number(row.idp),
            format_number(row.node),
            "-" if row.ratio is None else f"{row.ratio:.2f}x {row.ratio_label}",
        )
        for row in rows
    ]
    widths = [max(len(header[i]), *(len(line[i]) for line in body)) for i in range(4)]
    out = [
        " | ".join(cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(line)).rstrip()
        for line in [header, *body]
    ]
    out.insert(1, "-+-".join("-" * width for width in widths))
    out.append("")
    out.append("Both servers pinned to one core, wrk on another. ratio > 1 means the idp does better:")
    out.append("idp/node for req/s and signatures/s (higher is better), node/idp for p99 latency (lower is better).")
    out.extend(notes)
    return "\n".join(out)


# -- the run -----------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark the idp against node-oidc-provider, both pinned to one core.",
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds of wrk per endpoint and server (10)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (32)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (1)")
    parser.add_argument("--warmup", type=int, default=None, help="seconds of wrk before each measurement (2)")
    parser.add_argument("--sign-seconds", type=float, default=None, help="seconds of signing per algorithm (2.5)")
    parser.add_argument("--quick", action="store_true", help="3 s per endpoint, 1 s warm-up, 1 s signing")
    parser.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        help=f"run only this case (repeatable): {', '.join(c.name for c in CASES)}, signing, verification",
    )
    parser.add_argument("--repeat", type=int, default=1, help="wrk runs per endpoint and server, alternating (1)")
    parser.add_argument("--idp-workers", type=int, default=1, help="idp worker processes (1: per-core comparison)")
    parser.add_argument("--server-cpus", default="0", help="CPU list both servers are pinned to (0)")
    parser.add_argument("--wrk-cpus", default="1", help="CPU list wrk is pinned to (1)")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("IDP_BENCH_POSTGRES_URL") or None,
        metavar="URL",
        help="a PostgreSQL server on 127.0.0.1 (postgresql+psycopg://USER@127.0.0.1:PORT/DB) to create a fresh "
        "database in and measure the idp's database cases on too (default: IDP_BENCH_POSTGRES_URL; none: skipped)",
    )
    parser.add_argument(
        "--keep-temp", action="store_true", help="keep the temporary instance folder, logs and PostgreSQL database"
    )
    args = parser.parse_args(argv)
    if args.warmup is None:
        args.warmup = 1 if args.quick else 2
    if args.sign_seconds is None:
        args.sign_seconds = 1.0 if args.quick else 2.5
    if args.quick:
        args.duration = min(args.duration, 3)
    known = {case.name for case in CASES} | {"signing", "verification"}
    for name in args.only or []:
        if name not in known:
            parser.error(f"unknown case {name!r}: choose from {', '.join(sorted(known))}")
    return args


def cpu_set(spec: str) -> set[int]:
    cpus: set[int] = set()
    for part in spec.split(","):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def git_commit() -> str:
    result = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_DIR, capture_output=True, text=True, check=False
    )
    return result.stdout.strip() or "unknown"


@dataclass(frozen=True, slots=True)
class Instance:
    """The fresh idp instance both servers share keys with."""

    work: Path
    env: dict[str, str]
    idp_port: int
    node_port: int

    @property
    def keys_dir(self) -> Path:
        return self.work / "keys"

    @property
    def node_jwks(self) -> Path:
        return self.work / "node-jwks.json"

    def env_for(self, database: IdpDatabase) -> dict[str, str]:
        """The idp's environment on `database`: the same instance folder, secrets and keys, another database."""
        return self.env if database.url is None else {**self.env, "IDP_DATABASE_URL": database.url}


def create_instance(work: Path) -> Instance:
    """`idp init` in `work`, and the keyring exported as a private JWKS for node."""
    idp_port, node_port = free_port(), free_port()
    instance = Instance(work=work, env=idp_environment(work, idp_port), idp_port=idp_port, node_port=node_port)
    init_idp(instance.env)
    write_secret_json(instance.node_jwks, export_private_jwks(instance.keys_dir))
    return instance


@dataclass
class Servers:
    """The running servers: the idp once per database (SQLite first), and node-oidc-provider."""

    idp: list[tuple[IdpDatabase, Server]]
    node: Server
    node_client_secret: str


@contextlib.contextmanager
def running_servers(
    instance: Instance, args: argparse.Namespace, databases: Sequence[IdpDatabase]
) -> Iterator[Servers]:
    """The idp on each database and node-oidc-provider, pinned to the server CPUs and ready; all stopped on exit,
    whatever happens. The idp listens on the issuer's port on SQLite, on another port on any other database (the
    issuer stays the same: the tokens name the issuer, not the port they came from)."""
    node_argv = ["node", str(NODE_DIR / "provider.mjs"), "--port", str(instance.node_port)]
    node_argv += ["--issuer", f"http://localhost:{instance.node_port}", "--jwks", str(instance.node_jwks), "--mint"]
    node_client_secret = secrets.token_urlsafe(32)
    node_env = {key: value for key, value in os.environ.items() if not key.startswith("IDP_")}
    node_env.update(NODE_ENV="production", BENCH_CLIENT_SECRET=node_client_secret, BENCH_CODE_VERIFIER=CODE_VERIFIER)

    servers: list[Server] = []
    try:
        idp_servers: list[tuple[IdpDatabase, Server]] = []
        for database in databases:
            port = instance.idp_port if database.url is None else free_port()
            idp_argv = [str(VENV_BIN / "idp"), "serve", "--host", HOST, "--port", str(port)]
            idp_argv += ["--workers", str(args.idp_workers)]
            idp = start_server(
                "idp" if database.url is None else f"idp ({database.label})",
                pinned(args.server_cpus, idp_argv),
                env=instance.env_for(database),
                port=port,
                log_path=instance.work / f"{database.key}.log",
            )
            servers.append(idp)
            idp_servers.append((database, idp))
        node = start_server(
            "node-oidc-provider",
            pinned(args.server_cpus, node_argv),
            env=node_env,
            port=instance.node_port,
            log_path=instance.work / "node.log",
        )
        servers.append(node)
        for _, idp in idp_servers:
            wait_ready(idp, "/readyz")
        wait_ready(node, "/.well-known/openid-configuration")
        for server in servers:
            _, _, body = http_request(server.base_url + "/.well-known/openid-configuration")
            server.discovery = json.loads(body)
        for _, idp in idp_servers:
            check_same_keys(idp, node)
        yield Servers(idp=idp_servers, node=node, node_client_secret=node_client_secret)
    finally:
        for server in servers:
            server.stop()


class StaticMinter:
    """For the cases that mint nothing (discovery, JWKS)."""

    def mint(self, kind: MintKind, count: int) -> list[str]:
        raise BenchError(f"nothing to mint {kind} with")


@contextlib.contextmanager
def targets_of(servers: Servers, instance: Instance, *, with_client: bool) -> Iterator[list[Target]]:
    """Each server as the cases see it; with the bench client and resident set up when a case needs them."""
    minters: list[IdpMinter] = []
    try:
        targets: list[Target] = []
        for database, server in servers.idp:
            label = "idp" if database.url is None else f"idp ({database.label})"
            if with_client:
                minter = IdpMinter(database.url or _sqlite_url(instance), instance.env_for(database))
                minter.server = server
                minters.append(minter)
                targets.append(Target(database.key, label, server, minter.credentials, minter))
            else:
                targets.append(Target(database.key, label, server, Credentials("", ""), StaticMinter()))
        node = servers.node
        credentials = Credentials(NODE_CLIENT_ID, servers.node_client_secret)
        targets.append(Target("node", "node-oidc-provider", node, credentials, NodeMinter(node)))
        yield targets
    finally:
        for minter in minters:
            minter.close()


def _sqlite_url(instance: Instance) -> str:
    from idp.settings import Settings

    return Settings.from_env(instance.env).sqlalchemy_url


def request_for(case: Case, target: Target) -> Request:
    spec = case.node if target.key == "node" else case.idp
    return spec if isinstance(spec, Request) else spec(target.credentials)


def measure_http(
    instance: Instance,
    args: argparse.Namespace,
    cases: Sequence[Case],
    load: LoadOptions,
    databases: Sequence[IdpDatabase],
) -> tuple[dict[str, dict[str, list[WrkResult]]], list[Row]]:
    """wrk against each case on every server, alternating between them `--repeat` times; the medians as rows.

    A case that uses the database runs on the idp once per database; the others on SQLite only."""
    http: dict[str, dict[str, list[WrkResult]]] = {}
    rows: list[Row] = []
    with_client = any(case.uses_database for case in cases)
    with (
        running_servers(instance, args, databases) as servers,
        targets_of(servers, instance, with_client=with_client) as all_targets,
    ):
        for case in cases:
            targets = [t for t in all_targets if case.uses_database or t.key in (SQLITE.key, "node")]
            runs: dict[str, list[WrkResult]] = {target.key: [] for target in targets}
            rates: dict[str, float] = {}
            for round_ in range(args.repeat):
                for target in targets:
                    counter = f" ({round_ + 1}/{args.repeat})" if args.repeat > 1 else ""
                    print(f"wrk {case.name}: {target.label}{counter} …", flush=True)
                    request = request_for(case, target)
                    result = run_wrk(
                        target,
                        request,
                        load,
                        instance.work,
                        f"{case.name}-{target.key}",
                        warmup=round_ == 0,
                        rate=rates.get(target.key, MINT_FIRST_GUESS),
                    )
                    rates[target.key] = max(result.requests_per_second, 1.0)
                    # wrk counts 4xx as errors, so a case that expects one (a refused token request) is not warned.
                    wrong_status = result.non_2xx_3xx if request.expect_status < 400 else 0
                    if wrong_status or result.socket_errors:
                        print(
                            f"warning: {target.label} {case.name}: {wrong_status} non-2xx/3xx responses, "
                            f"{result.socket_errors} socket errors",
                            file=sys.stderr,
                        )
                    runs[target.key].append(result)
            http[case.name] = runs
            rows += case_rows(case, runs, databases)
    return http, rows


def case_rows(case: Case, runs: Mapping[str, Sequence[WrkResult]], databases: Sequence[IdpDatabase]) -> list[Row]:
    """Median req/s and p99 of each idp database against node's; the database in brackets for database cases."""
    node_rps = statistics.median(r.requests_per_second for r in runs["node"])
    node_p99 = statistics.median(r.latency_p99_ms for r in runs["node"])
    measured = [db for db in databases if db.key in runs] if case.uses_database else [SQLITE]
    throughput: list[Row] = []
    latency: list[Row] = []
    for database in measured:
        suffix = f" [{database.label}]" if case.uses_database else ""
        idp_rps = statistics.median(r.requests_per_second for r in runs[database.key])
        idp_p99 = statistics.median(r.latency_p99_ms for r in runs[database.key])
        throughput.append(Row(f"{case.name} req/s{suffix}", idp_rps, node_rps, "higher"))
        latency.append(Row(f"{case.name} p99 latency ms{suffix} (lower is better)", idp_p99, node_p99, "lower"))
    return throughput + latency


def measure_signing(
    instance: Instance, args: argparse.Namespace
) -> tuple[dict[str, dict[str, SignResult]], list[Row], str]:
    """ID-token signatures per second on each side, pinned to the server CPUs while no server runs."""
    print("signing: idp …", flush=True)
    idp_signing = measure_idp_signing(active_keys(instance.keys_dir), args.sign_seconds, cpu_set(args.server_cpus))
    print("signing: node (jose) …", flush=True)
    node_signing, runtime = measure_node_signing(instance.node_jwks, args.sign_seconds, args.server_cpus)
    signing: dict[str, dict[str, SignResult]] = {}
    rows: list[Row] = []
    for alg in SIGN_ALGORITHMS:
        signing[alg] = {"idp": idp_signing[alg], "node": node_signing[alg]}
        rows.append(Row(f"{alg} ID token sign/s", idp_signing[alg].per_second, node_signing[alg].per_second, "higher"))
    return signing, rows, runtime


TOKEN_NOTES = (
    "Token cases: the idp stores codes and tokens in its database (the one in brackets); node-oidc-provider in",
    "memory. Both sign ES256 JWT access tokens and RS256 ID tokens; node's UserInfo and introspection tokens are",
    "opaque (the only kind it accepts there), the idp's are its JWTs.",
)


VERIFY_NOTES = (
    "verify/s rows: the second column is joserfc's raw jwt.decode of the same token with a prebuilt key, in this",
    "process (not node); the bar for idp.rp's warm Verifier is a ratio of 0.8 or more.",
)


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Every selected measurement; the figures as a JSON-ready dict (with the rendered table)."""
    selected = set(args.only or [*(case.name for case in CASES), "signing", "verification"])
    cases = [case for case in CASES if case.name in selected]
    load = LoadOptions(
        duration=args.duration,
        warmup=args.warmup,
        connections=args.connections,
        threads=args.threads,
        wrk_cpus=args.wrk_cpus,
    )
    instance = create_instance(work)
    http: dict[str, dict[str, list[WrkResult]]] = {}
    signing: dict[str, dict[str, SignResult]] = {}
    rows: list[Row] = []
    notes: list[str] = []
    runtime = node_version() if selected - {"verification"} else "not run"
    postgres: dict[str, Any] = {"skipped": POSTGRES_SKIPPED}
    if cases:
        uses_database = any(case.uses_database for case in cases)
        with contextlib.ExitStack() as stack:
            databases = [SQLITE]
            if uses_database and args.postgres_url:
                database = stack.enter_context(postgres_database(args.postgres_url, keep=args.keep_temp))
                init_idp(instance.env_for(database))
                databases.append(database)
                postgres = {"server": postgres_url_from(args.postgres_url).render_as_string(), "version": None}
                postgres["version"] = postgres_version(database)
            http, rows = measure_http(instance, args, cases, load, databases)
        if uses_database:
            notes += ["", *TOKEN_NOTES]
            if not args.postgres_url:
                notes.append(POSTGRES_SKIPPED + ".")
    if "signing" in selected:
        signing, sign_rows, runtime = measure_signing(instance, args)
        rows += sign_rows
    verification: dict[str, VerifyResult] = {}
    if "verification" in selected:
        print("verification: idp.rp Verifier and joserfc jwt.decode …", flush=True)
        verification = measure_verification(instance.keys_dir, args.sign_seconds, cpu_set(args.server_cpus))
        for alg, result in verification.items():
            rows.append(
                Row(
                    f"{alg} access token verify/s (idp.rp ÷ raw jwt.decode)",
                    result.verifier.per_second,
                    result.raw_decode.per_second,
                    "higher",
                )
            )
        notes += ["", *VERIFY_NOTES]

    return {
        "meta": {
            "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "commit": git_commit(),
            "python": platform.python_version(),
            "node": runtime,
            "oidc_provider": node_package_version("oidc-provider"),
            "jose": node_package_version("jose"),
            "cpus": os.cpu_count(),
            "server_cpus": args.server_cpus,
            "wrk_cpus": args.wrk_cpus,
            "idp_workers": args.idp_workers,
            "wrk": asdict(load),
            "sign_seconds": args.sign_seconds,
            "postgresql": postgres,
            "ratio": "> 1 means the idp does better: idp/node for throughput, node/idp for latency",
        },
        "http": {
            name: {side: [asdict(run) for run in runs] for side, runs in sides.items()} for name, sides in http.items()
        },
        "signing": {alg: {side: asdict(result) for side, result in sides.items()} for alg, sides in signing.items()},
        "verification": {
            alg: {**asdict(result), "ratio": round(result.ratio, 3)} for alg, result in verification.items()
        },
        "rows": [
            {"metric": r.metric, "idp": r.idp, "node": r.node, "better": r.better, "ratio": r.ratio} for r in rows
        ],
        "table": render_table(rows, notes),
    }


def postgres_version(database: IdpDatabase) -> str:
    from sqlalchemy import create_engine, text

    assert database.url is not None
    engine = create_engine(database.url)
    try:
        with engine.connect() as connection:
            return str(connection.execute(text("SHOW server_version")).scalar())
    finally:
        engine.dispose()


def check_same_keys(idp: Server, node: Server) -> None:
    """Both JWKS documents must publish the same kids, or the JWKS comparison compares different work."""
    kids: list[set[str]] = []
    for server in (idp, node):
        _, _, body = http_request(server.base_url + resolve_path(server, Request.from_discovery("jwks_uri")))
        kids.append({key["kid"] for key in json.loads(body)["keys"]})
    if kids[0] != kids[1]:
        raise BenchError(f"the two JWKS differ: {idp.name} {sorted(kids[0])}, node {sorted(kids[1])}")


def node_version() -> str:
    result = subprocess.run(["node", "--version"], capture_output=True, text=True, check=False)
    return f"node {result.stdout.strip()}"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # A SIGTERM unwinds like Ctrl-C, so the finally blocks stop both servers.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    load_before = os.getloadavg()[0]
    if load_before > LOAD_WARNING:
        print(
            f"warning: load average {load_before:.1f}: other processes compete for the CPUs, so the figures will be"
            " noisy (--repeat 3 takes medians)",
            file=sys.stderr,
        )
    work = Path(tempfile.mkdtemp(prefix="idp-bench-"))
    try:
        if set(args.only or ["all"]) - {"verification"}:
            check_tools()
            ensure_node_modules()
        results = run(args, work)
        results["meta"]["load_average"] = {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)}
    except BenchError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    finally:
        if args.keep_temp:
            print(f"temporary files kept in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    RESULTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_FILE.write_text(json.dumps(results, indent=2) + "\n")
    print()
    print(results["table"])
    print(f"\nwritten to {RESULTS_FILE.relative_to(REPO_DIR)}")
    return 0


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
