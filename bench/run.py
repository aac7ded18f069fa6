"""Benchmark the idp against node-oidc-provider, per core: HTTP endpoints with wrk and ID-token signing.

Both servers run on CPU 0 (`taskset`), wrk runs on CPU 1, everything on 127.0.0.1. The idp is a fresh instance in a
temporary folder; node-oidc-provider gets the same signing keys. See bench/README.md for how to read the figures.

    .venv/bin/python bench/run.py [--quick] [--duration 10] [--connections 32] [--only NAME] [--idp-workers N]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

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

# The claims of an ID token (DESIGN.md section 6); bench/node/sign.mjs signs the same ones.
CLAIM_SUB = "Qm9iIHRoZSBiZW5jaG1hcmsgcmVzaWRlbnQgc3ViamVjdA"
CLAIM_SID = "9b6a4b8f-3e1c-4d0b-a1f2-6c0d1e2f3a4b"


# -- what is measured --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    """One HTTP request for wrk: a fixed path, or a URL the server's discovery document names."""

    path: str | None = None
    discovery_field: str | None = None
    method: str = "GET"
    body: bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    expect_status: int = 200

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


@dataclass(frozen=True, slots=True)
class Case:
    """An endpoint measured on both servers, by name (`--only NAME`)."""

    name: str
    idp: Request
    node: Request


# Later issues add endpoints here; a POST case gives method, body and headers and wrk gets a Lua script for it.
CASES: tuple[Case, ...] = (
    Case(
        "discovery", Request.get("/.well-known/openid-configuration"), Request.get("/.well-known/openid-configuration")
    ),
    Case("jwks", Request.get("/jwks"), Request.from_discovery("jwks_uri")),
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


def run_wrk(
    server: Server, request: Request, options: LoadOptions, work: Path, label: str, *, warmup: bool = True
) -> WrkResult:
    """Check the endpoint answers as expected once, warm it up (unless told not to), then measure it with wrk.

    Raises:
        BenchError: a wrong status, or wrk failed.
    """
    url = server.base_url + resolve_path(server, request)
    status, _, body = http_request(url, method=request.method, body=request.body, headers=request.headers)
    if status != request.expect_status:
        raise BenchError(f"{server.name} {request.method} {url}: status {status}, expected {request.expect_status}")
    argv = ["wrk", f"-t{options.threads}", f"-c{options.connections}", "--latency", "--timeout", "5s"]
    if request.needs_script:
        script = work / f"{label}.lua"
        script.write_text(wrk_script(request))
        argv += ["-s", str(script)]
    if warmup and options.warmup > 0:
        _wrk(pinned(options.wrk_cpus, [*argv, f"-d{options.warmup}s", url]), options.warmup)
    command = pinned(options.wrk_cpus, [*argv, f"-d{options.duration}s", url])
    output = _wrk(command, options.duration)
    return parse_wrk(output, " ".join(command), len(body))


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


# -- output ------------------------------------------------------------------------------------------------------


def format_number(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def render_table(rows: Sequence[Row]) -> str:
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
        help=f"run only this case (repeatable): {', '.join(c.name for c in CASES)}, signing",
    )
    parser.add_argument("--repeat", type=int, default=1, help="wrk runs per endpoint and server, alternating (1)")
    parser.add_argument("--idp-workers", type=int, default=1, help="idp worker processes (1: per-core comparison)")
    parser.add_argument("--server-cpus", default="0", help="CPU list both servers are pinned to (0)")
    parser.add_argument("--wrk-cpus", default="1", help="CPU list wrk is pinned to (1)")
    parser.add_argument("--keep-temp", action="store_true", help="keep the temporary instance folder and logs")
    args = parser.parse_args(argv)
    if args.warmup is None:
        args.warmup = 1 if args.quick else 2
    if args.sign_seconds is None:
        args.sign_seconds = 1.0 if args.quick else 2.5
    if args.quick:
        args.duration = min(args.duration, 3)
    known = {case.name for case in CASES} | {"signing"}
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


def create_instance(work: Path) -> Instance:
    """`idp init` in `work`, and the keyring exported as a private JWKS for node."""
    idp_port, node_port = free_port(), free_port()
    instance = Instance(work=work, env=idp_environment(work, idp_port), idp_port=idp_port, node_port=node_port)
    init_idp(instance.env)
    write_secret_json(instance.node_jwks, export_private_jwks(instance.keys_dir))
    return instance


@contextlib.contextmanager
def running_servers(instance: Instance, args: argparse.Namespace) -> Iterator[tuple[Server, Server]]:
    """The idp and node-oidc-provider, pinned to the server CPUs and ready; both stopped on exit, whatever happens."""
    idp_argv = [str(VENV_BIN / "idp"), "serve", "--host", HOST, "--port", str(instance.idp_port)]
    idp_argv += ["--workers", str(args.idp_workers)]
    node_argv = ["node", str(NODE_DIR / "provider.mjs"), "--port", str(instance.node_port)]
    node_argv += ["--issuer", f"http://localhost:{instance.node_port}", "--jwks", str(instance.node_jwks)]
    node_env = {key: value for key, value in os.environ.items() if not key.startswith("IDP_")}
    node_env["NODE_ENV"] = "production"

    servers: list[Server] = []
    try:
        idp = start_server(
            "idp",
            pinned(args.server_cpus, idp_argv),
            env=instance.env,
            port=instance.idp_port,
            log_path=instance.work / "idp.log",
        )
        servers.append(idp)
        node = start_server(
            "node-oidc-provider",
            pinned(args.server_cpus, node_argv),
            env=node_env,
            port=instance.node_port,
            log_path=instance.work / "node.log",
        )
        servers.append(node)
        wait_ready(idp, "/readyz")
        wait_ready(node, "/.well-known/openid-configuration")
        for server in servers:
            _, _, body = http_request(server.base_url + "/.well-known/openid-configuration")
            server.discovery = json.loads(body)
        check_same_keys(idp, node)
        yield idp, node
    finally:
        for server in servers:
            server.stop()


def measure_http(
    instance: Instance, args: argparse.Namespace, cases: Sequence[Case], load: LoadOptions
) -> tuple[dict[str, dict[str, list[WrkResult]]], list[Row]]:
    """wrk against each case on both servers, alternating between them `--repeat` times; the medians as rows."""
    http: dict[str, dict[str, list[WrkResult]]] = {}
    rows: list[Row] = []
    with running_servers(instance, args) as (idp, node):
        for case in cases:
            runs: dict[str, list[WrkResult]] = {"idp": [], "node": []}
            targets = (("idp", idp, case.idp), ("node", node, case.node))
            for round_ in range(args.repeat):
                for side, server, request in targets:
                    counter = f" ({round_ + 1}/{args.repeat})" if args.repeat > 1 else ""
                    print(f"wrk {case.name}: {server.name}{counter} …", flush=True)
                    result = run_wrk(server, request, load, instance.work, f"{case.name}-{side}", warmup=round_ == 0)
                    # wrk counts 4xx as errors, so a case that expects one (a refused token request) is not warned.
                    wrong_status = result.non_2xx_3xx if request.expect_status < 400 else 0
                    if wrong_status or result.socket_errors:
                        print(
                            f"warning: {server.name} {case.name}: {wrong_status} non-2xx/3xx responses, "
                            f"{result.socket_errors} socket errors",
                            file=sys.stderr,
                        )
                    runs[side].append(result)
            http[case.name] = runs
            idp_rps, node_rps = (statistics.median(r.requests_per_second for r in runs[s]) for s in ("idp", "node"))
            idp_p99, node_p99 = (statistics.median(r.latency_p99_ms for r in runs[s]) for s in ("idp", "node"))
            rows.append(Row(f"{case.name} req/s", idp_rps, node_rps, "higher"))
            rows.append(Row(f"{case.name} p99 latency ms (lower is better)", idp_p99, node_p99, "lower"))
    return http, rows


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


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Every selected measurement; the figures as a JSON-ready dict (with the rendered table)."""
    selected = set(args.only or [*(case.name for case in CASES), "signing"])
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
    runtime = node_version()
    if cases:
        http, rows = measure_http(instance, args, cases, load)
    if "signing" in selected:
        signing, sign_rows, runtime = measure_signing(instance, args)
        rows += sign_rows

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
            "ratio": "> 1 means the idp does better: idp/node for throughput, node/idp for latency",
        },
        "http": {
            name: {side: [asdict(run) for run in runs] for side, runs in sides.items()} for name, sides in http.items()
        },
        "signing": {alg: {side: asdict(result) for side, result in sides.items()} for alg, sides in signing.items()},
        "rows": [
            {"metric": r.metric, "idp": r.idp, "node": r.node, "better": r.better, "ratio": r.ratio} for r in rows
        ],
        "table": render_table(rows),
    }


def check_same_keys(idp: Server, node: Server) -> None:
    """Both JWKS documents must publish the same kids, or the JWKS comparison compares different work."""
    kids: list[set[str]] = []
    for server in (idp, node):
        _, _, body = http_request(server.base_url + resolve_path(server, Request.from_discovery("jwks_uri")))
        kids.append({key["kid"] for key in json.loads(body)["keys"]})
    if kids[0] != kids[1]:
        raise BenchError(f"the two JWKS differ: idp {sorted(kids[0])}, node {sorted(kids[1])}")


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
