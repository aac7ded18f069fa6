"""The servers a benchmark run measures and everything around them: the tools it needs, the fresh idp instance
(SQLite, and a fresh PostgreSQL database when given a server), node-oidc-provider's keys, starting both servers
pinned to their CPUs in process groups of their own, waiting until they are ready, stopping them whatever happens,
and one HTTP request to them on 127.0.0.1.

Every other bench module imports from this one; it imports none of them.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import Any

from idp.keyring import Keyring, KeyState, SigningKey

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
NODE_DIR = BENCH_DIR / "node"
VENV_BIN = Path(sys.executable).parent
HOST = "127.0.0.1"  # every server and every request stays on the loopback interface
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})

READY_TIMEOUT = 60.0  # seconds for a server to answer its readiness probe
STOP_TIMEOUT = 10.0  # seconds between SIGTERM and SIGKILL
NPM_TIMEOUT = 600.0

POSTGRES_SKIPPED = "no PostgreSQL server given (--postgres-url or IDP_BENCH_POSTGRES_URL): PostgreSQL rows skipped"


class BenchError(Exception):
    """The benchmark cannot run or a server misbehaved; the message is one line for the person running it.

    Raised by every bench module; defined here, in the one module they all import."""


# -- one request on the loopback interface ------------------------------------------------------------------------


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer to check (its status and Location), not a request to follow: /authorize answers
    with one to the client's redirect URI, which is not a server on 127.0.0.1."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


def http_request(
    url: str,
    *,
    method: str = "GET",
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 5.0,
) -> tuple[int, Message, bytes]:
    """One request to a loopback URL: status, headers and body (error statuses and redirects are returned, neither
    raised nor followed)."""
    if not url.startswith(f"http://{HOST}:"):
        raise BenchError(f"refusing a request off the loopback interface: {url}")
    req = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))  # noqa: S310  (http://127.0.0.1 only, checked above)
    try:
        with _OPENER.open(req, timeout=timeout) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def set_cookie_header(set_cookies: Iterable[str], *, path: str = "/") -> str:
    """The Cookie header a browser sends to `path` after an answer with these Set-Cookie lines: each cookie whose
    Path covers `path`, by name and value (cookies the answer deleted left out)."""
    pairs: dict[str, str] = {}
    for line in set_cookies:
        pair, *attributes = line.split(";")
        name, _, value = pair.strip().partition("=")
        options: dict[str, str] = {}
        for attribute in attributes:
            key, _, setting = attribute.strip().partition("=")
            options[key.lower()] = setting
        deleted = options.get("max-age") == "0" or "1970" in options.get("expires", "")
        if name and not deleted and path.startswith(options.get("path") or "/"):
            pairs[name] = value
    return "; ".join(f"{name}={value}" for name, value in pairs.items())


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def pinned(cpus: str, argv: Sequence[str]) -> list[str]:
    return ["taskset", "-c", cpus, *argv]


def cpu_set(spec: str) -> set[int]:
    """A taskset CPU list (`0`, `0,1`, `0-3`) as a set of CPU numbers."""
    cpus: set[int] = set()
    for part in spec.split(","):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


# -- processes ---------------------------------------------------------------------------------------------------


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_group_cpu(pgid: int) -> float:
    """Seconds of CPU used by the live processes of process group `pgid` (utime + stime from /proc/PID/stat)."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue  # gone meanwhile
        # After the command: state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS


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

    def path_of(self, discovery_field: str) -> str:
        """The path of the URL the server's discovery document gives under `discovery_field` (the issuer names
        localhost, the servers listen on 127.0.0.1).

        Raises:
            BenchError: the document has no such URL.
        """
        url = self.discovery.get(discovery_field)
        if not isinstance(url, str):
            raise BenchError(f"{self.name}'s discovery document has no {discovery_field}")
        return urllib.parse.urlsplit(url).path or "/"

    def cpu_seconds(self) -> float:
        """CPU time (user and system) the server's processes have used so far: its whole process group (granian's
        workers, node's process), read from /proc. A measure of work per request that does not depend on how busy
        the rest of the machine is."""
        return process_group_cpu(self.process.pid)

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


# -- tools and versions ------------------------------------------------------------------------------------------


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


def node_package_version(name: str) -> str:
    try:
        data = json.loads((NODE_DIR / "node_modules" / name / "package.json").read_text())
    except (OSError, ValueError):
        return "unknown"
    return str(data.get("version", "unknown"))


def node_version() -> str:
    result = subprocess.run(["node", "--version"], capture_output=True, text=True, check=False)
    return f"node {result.stdout.strip()}"


def git_commit() -> str:
    result = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_DIR, capture_output=True, text=True, check=False
    )
    return result.stdout.strip() or "unknown"


# -- the idp instance and its databases ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IdpDatabase:
    """A database the idp is measured on: the label in the table, the key of its runs in the JSON, the URL."""

    label: str
    key: str
    url: str | None  # None: the instance's SQLite file (`idp init`'s default)


SQLITE = IdpDatabase("SQLite", "idp", None)


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


def write_secret_json(path: Path, data: object) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle)


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

    def database_url(self, database: IdpDatabase) -> str:
        """The SQLAlchemy URL of `database` (the instance's SQLite file for SQLITE)."""
        from idp.settings import Settings

        return database.url or Settings.from_env(self.env).sqlalchemy_url


def create_instance(work: Path) -> Instance:
    """`idp init` in `work`, and the keyring exported as a private JWKS for node."""
    idp_port, node_port = free_port(), free_port()
    instance = Instance(work=work, env=idp_environment(work, idp_port), idp_port=idp_port, node_port=node_port)
    init_idp(instance.env)
    write_secret_json(instance.node_jwks, export_private_jwks(instance.keys_dir))
    return instance


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


def postgres_settings(database: IdpDatabase) -> dict[str, str]:
    """The server's version and what a commit waits for there (fsync, synchronous_commit): a server run with
    fsync off commits without a disk flush, and its figures say so."""
    from sqlalchemy import create_engine, text

    assert database.url is not None
    engine = create_engine(database.url)
    try:
        with engine.connect() as connection:
            return {
                name: str(connection.execute(text(f"SHOW {name}")).scalar())
                for name in ("server_version", "fsync", "synchronous_commit")
            }
    finally:
        engine.dispose()


SQLITE_SYNCHRONOUS = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}  # PRAGMA synchronous's numbers


def sqlite_settings(url: str) -> dict[str, str]:
    """The journal mode and synchronous setting the idp's engine gives its SQLite connections (idp.db)."""
    from sqlalchemy import text

    from idp.db import make_engine

    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            journal = str(connection.execute(text("PRAGMA journal_mode")).scalar())
            synchronous = connection.execute(text("PRAGMA synchronous")).scalar()
        return {"journal_mode": journal, "synchronous": SQLITE_SYNCHRONOUS.get(int(synchronous or 0), "?")}
    finally:
        engine.dispose()


# -- both servers running -----------------------------------------------------------------------------------------


@dataclass
class Servers:
    """The running servers: the idp once per database (SQLite first), and node-oidc-provider."""

    idp: list[tuple[IdpDatabase, Server]]
    node: Server
    node_client_secret: str


@contextlib.contextmanager
def running_servers(
    instance: Instance,
    databases: Sequence[IdpDatabase],
    *,
    server_cpus: str,
    idp_workers: int,
    code_verifier: str,
) -> Iterator[Servers]:
    """The idp on each database and node-oidc-provider, pinned to `server_cpus` and ready; all stopped on exit,
    whatever happens. The idp listens on the issuer's port on SQLite, on another port on any other database (the
    issuer stays the same: the tokens name the issuer, not the port they came from). node's minted codes carry
    `code_verifier`'s challenge."""
    node_argv = ["node", str(NODE_DIR / "provider.mjs"), "--port", str(instance.node_port)]
    node_argv += ["--issuer", f"http://localhost:{instance.node_port}", "--jwks", str(instance.node_jwks), "--mint"]
    node_client_secret = secrets.token_urlsafe(32)
    node_env = {key: value for key, value in os.environ.items() if not key.startswith("IDP_")}
    node_env.update(NODE_ENV="production", BENCH_CLIENT_SECRET=node_client_secret, BENCH_CODE_VERIFIER=code_verifier)

    servers: list[Server] = []
    try:
        idp_servers: list[tuple[IdpDatabase, Server]] = []
        for database in databases:
            port = instance.idp_port if database.url is None else free_port()
            idp_argv = [str(VENV_BIN / "idp"), "serve", "--host", HOST, "--port", str(port)]
            idp_argv += ["--workers", str(idp_workers)]
            idp = start_server(
                "idp" if database.url is None else f"idp ({database.label})",
                pinned(server_cpus, idp_argv),
                env=instance.env_for(database),
                port=port,
                log_path=instance.work / f"{database.key}.log",
            )
            servers.append(idp)
            idp_servers.append((database, idp))
        node = start_server(
            "node-oidc-provider",
            pinned(server_cpus, node_argv),
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


def check_same_keys(idp: Server, node: Server) -> None:
    """Both JWKS documents must publish the same kids, or the JWKS comparison compares different work."""
    kids: list[set[str]] = []
    for server in (idp, node):
        _, _, body = http_request(server.base_url + server.path_of("jwks_uri"))
        kids.append({key["kid"] for key in json.loads(body)["keys"]})
    if kids[0] != kids[1]:
        raise BenchError(f"the two JWKS differ: {idp.name} {sorted(kids[0])}, node {sorted(kids[1])}")
