"""Whole sign-ins measured end to end over HTTP: passkey, authenticator app (TOTP) and carrier SMS, each from the
service's `/authorize` to its `/userinfo` call, against `idp serve --workers 2` on PostgreSQL with the sandbox
carrier agency. See bench/SIGNINS.md for what is measured and how to read it.

    .venv/bin/python bench/signins.py --kinds passkey,totp,carrier --seconds 20 --concurrency 8,32 \\
        --postgres-url postgresql+psycopg://postgres@127.0.0.1:55432/postgres [--residents 1000000] \\
        [--database NAME] [--explain]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

from journeys import KINDS, Client, Residents, SignInFailedError, Steps, Target  # noqa: E402
from meters import (  # noqa: E402
    PG_STATS_SETTLE,
    Counters,
    DatabaseCounters,
    Meters,
    own_cpu_seconds,
    postmaster_pid,
    read_database_counters,
)
from seed import BenchClient, Population, SeedError, SeedReport, seed_residents, write_sandbox_state  # noqa: E402

RESULTS_DIR = BENCH_DIR / "results"
VENV_BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
DATABASE_PREFIX = "idp_signins_"
# 198.18.0.0/15 is set aside for benchmarks (RFC 2544 appendix C.2.2, RFC 6890): the addresses residents come
# from, one per sign-in, in X-Forwarded-For. Nothing is sent to them; they only keep per-address limits apart.
CLIENT_ADDRESS_BASE = (198 << 24) | (18 << 16)
CLIENT_ADDRESSES = 1 << 17


class BenchError(Exception):
    """The run cannot go on; the message is one line for the person running it."""


# -- servers -------------------------------------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL it if it lingers."""
        if self.process.poll() is None:
            _signal_group(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                _signal_group(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=STOP_TIMEOUT)
        _signal_group(self.process.pid, signal.SIGKILL)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def start_server(name: str, argv: Sequence[str], *, env: Mapping[str, str], port: int, log_path: Path) -> Server:
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
    return Server(name, process, port, log_path)


def wait_ready(server: Server, path: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    last = "no answer"
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise BenchError(f"{server.name} exited with status {server.process.returncode}:\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(f"http://{HOST}:{server.port}{path}", timeout=2) as response:
                if response.status == 200:
                    return
                last = f"status {response.status}"
        except (OSError, urllib.error.URLError) as exc:
            last = str(exc)
        time.sleep(0.1)
    raise BenchError(f"{server.name} not ready after {READY_TIMEOUT:.0f} s ({path}: {last}):\n{server.log_tail()}")


# -- the database --------------------------------------------------------------------------------------------------


def server_url(raw: str) -> Any:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(raw)
    except ArgumentError:
        raise BenchError(f"not a database URL: {raw!r}") from None
    if url.get_backend_name() != "postgresql":
        raise BenchError(f"not a PostgreSQL URL: {url.render_as_string()}")
    if url.host and not url.host.startswith("/") and url.host not in ("127.0.0.1", "localhost", "::1"):
        raise BenchError(f"the PostgreSQL server must be on this machine (its processes' CPU is measured): {url.host}")
    return url.set(drivername="postgresql+psycopg")


@dataclass
class Database:
    name: str
    url: str
    population: Population
    client: BenchClient
    kept: bool
    seed: SeedReport | None  # None: seeded by an earlier run


def database_comment(admin: Any, name: str) -> str | None:
    from sqlalchemy import text

    with admin.connect() as connection:
        exists = connection.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).scalar()
        if not exists:
            raise LookupError(name)
        comment: str | None = connection.execute(
            text("SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = :n"), {"n": name}
        ).scalar()
        return comment


@contextlib.contextmanager
def bench_database(args: argparse.Namespace, admin: Any, work: Path) -> Iterator[Database]:
    """The seeded database: `--database NAME` (seeded on first use, kept), or a fresh one dropped at the end."""
    from sqlalchemy import text

    base = server_url(args.postgres_url)
    name = args.database or f"{DATABASE_PREFIX}{secrets.token_hex(6)}"
    url = base.set(database=name).render_as_string(hide_password=False)
    try:
        comment = database_comment(admin, name)
    except LookupError:
        comment = None
        exists = False
    else:
        exists = True
    if exists and not args.database:
        raise BenchError(f"database {name} exists")
    try:
        if exists:
            if comment is None:
                raise BenchError(f"database {name} was not seeded by bench/signins.py (no comment): choose another")
            try:
                population, data = Population.from_json(comment)
            except (SeedError, ValueError, KeyError) as exc:
                raise BenchError(f"database {name}: {exc}") from None
            if args.residents_given and population.residents != args.residents:
                raise BenchError(
                    f"database {name} holds {population.residents:,} residents, not {args.residents:,}: "
                    "name another database to seed that many"
                )
            print(f"PostgreSQL: database {name}, {population.residents:,} residents seeded earlier", flush=True)
            init_idp(idp_environment(work, url, population, issuer="http://localhost:1", agency=None))
            client = BenchClient(data["client_id"], data["client_secret"])
            yield Database(name, url, population, client, kept=True, seed=None)
            return
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        print(f"PostgreSQL: database {name} created", flush=True)
        population = Population.new(args.residents, args.carrier_lines)
        env = idp_environment(work, url, population, issuer="http://localhost:1", agency=None)
        init_idp(env)
        from idp.settings import Settings

        print(f"seeding {population.residents:,} residents …", flush=True)
        client, report = seed_residents(url, Settings.from_env(env), population)
        print(f"seeded in {report.seconds:.0f} s (COPY {report.copy_seconds:.0f} s)", flush=True)
        comment = population.to_json(client_id=client.client_id, client_secret=client.client_secret)
        with admin.connect() as connection:
            connection.execute(text(f"COMMENT ON DATABASE \"{name}\" IS '{comment}'"))
        yield Database(name, url, population, client, kept=bool(args.database), seed=report)
    finally:
        if not args.database:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            print(f"PostgreSQL: database {name} dropped", flush=True)


def idp_environment(work: Path, url: str, population: Population, *, issuer: str, agency: str | None) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("IDP_")}
    env.update(population.idp_secrets())
    env.update(
        IDP_INSTANCE_DIR=str(work / "instance"),
        IDP_KEYS_DIR=str(work / "keys"),
        IDP_ISSUER=issuer,
        IDP_DATABASE_URL=url,
        IDP_LOG_LEVEL="WARNING",  # no line per request: logging would be measured, not sign-ins
        # The resident's address comes from X-Forwarded-For, as behind the proxy a deployment has: each sign-in
        # is its own address (198.18.0.0/15), so the per-address limits (10 carrier starts a minute, TOTP
        # failures) are not what is measured.
        IDP_TRUSTED_PROXIES="1",
    )
    if agency:
        env["IDP_CARRIER_AGENCY_URL"] = agency
    return env


def init_idp(env: Mapping[str, str]) -> None:
    result = subprocess.run(
        [str(VENV_BIN / "idp"), "init"], cwd=REPO_DIR, env=dict(env), capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise BenchError(f"idp init failed: {(result.stderr or result.stdout).strip()}")


def forget_limits(url: str) -> None:
    """The per-phone daily limit counts survive in a kept database: a run starts without them."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(text("DELETE FROM rate_limit_counter"))
    finally:
        engine.dispose()


@dataclass
class Running:
    idp: Server
    sandbox: Server
    target: Target


@contextlib.contextmanager
def running_servers(
    args: argparse.Namespace, database: Database, work: Path, *, explain: bool = False
) -> Iterator[Running]:
    """The sandbox agency and `idp serve --workers N` on the bench database, ready; both stopped on exit. With
    `explain`, the IdP records its statements (bench/explain.py)."""
    port, sandbox_port = free_port(), free_port()
    agency = f"http://{HOST}:{sandbox_port}"
    issuer = f"http://localhost:{port}"
    env = idp_environment(work, database.url, database.population, issuer=issuer, agency=agency)
    write_sandbox_state(work / "instance" / "sandbox", database.population)
    if explain:
        from explain import capture_environment

        env.update(capture_environment(work))
    servers: list[Server] = []
    try:
        sandbox = start_server(
            "sandbox agency",
            [str(VENV_BIN / "idp"), "sandbox", "serve", "--port", str(sandbox_port)],
            env=env,
            port=sandbox_port,
            log_path=work / "sandbox.log",
        )
        servers.append(sandbox)
        idp = start_server(
            "idp",
            [str(VENV_BIN / "idp"), "serve", "--host", HOST, "--port", str(port), "--workers", str(args.workers)],
            env=env,
            port=port,
            log_path=work / "idp.log",
        )
        servers.append(idp)
        wait_ready(sandbox, "/v1/jwks")
        wait_ready(idp, "/readyz")
        target = Target(
            host=HOST,
            port=port,
            host_header=f"localhost:{port}",
            origin=issuer,
            rp_id="localhost",
            client_id=database.client.client_id,
            client_secret=database.client.client_secret,
            sandbox_port=sandbox_port,
        )
        yield Running(idp, sandbox, target)
    finally:
        for server in reversed(servers):
            server.stop()


# -- load ----------------------------------------------------------------------------------------------------------


class Addresses:
    """One client address per sign-in, from the benchmarking range, in turn."""

    def __init__(self) -> None:
        self.next = secrets.randbelow(CLIENT_ADDRESSES)

    def __call__(self) -> str:
        value = CLIENT_ADDRESS_BASE + self.next % CLIENT_ADDRESSES
        self.next += 1
        return f"{value >> 24}.{(value >> 16) & 255}.{(value >> 8) & 255}.{value & 255}"


@dataclass
class Load:
    """What one stretch of sign-ins did, seen from the load generator."""

    seconds: float
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    error_samples: list[str] = field(default_factory=list)
    steps: Steps = field(default_factory=Steps)


async def drive(kind: str, target: Target, residents: Residents, *, concurrency: int, seconds: float) -> Load:
    """`concurrency` residents signing in one after another for `seconds`; each finishes the sign-in it started
    (so the server-side counters read afterwards belong to exactly these sign-ins)."""
    load = Load(seconds=0.0)
    addresses = Addresses()
    started = time.monotonic()
    stop_at = started + seconds

    async def user() -> None:
        client = Client(target, residents, load.steps, addresses)
        journey = getattr(client, kind)
        try:
            while time.monotonic() < stop_at:
                began = time.perf_counter()
                try:
                    await journey()
                except SignInFailedError as error:
                    load.errors[error.step] += 1
                    if len(load.error_samples) < 5:
                        load.error_samples.append(str(error)[:300])
                    if error.step == "pick":
                        return
                    continue
                load.latencies.append(time.perf_counter() - began)
        finally:
            client.close()

    await asyncio.gather(*(user() for _ in range(concurrency)))
    load.seconds = time.monotonic() - started
    return load


def event_loop() -> str:
    """uvloop when it is installed (a quarter less CPU per sign-in here), else asyncio's own loop."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def run_on_loop(coroutine: Any) -> Any:
    if event_loop() == "uvloop":
        import uvloop

        return uvloop.run(coroutine)
    return asyncio.run(coroutine)


def percentile(values: Sequence[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


@dataclass
class LevelResult:
    kind: str
    concurrency: int
    load: Load
    cost: Counters
    database: DatabaseCounters

    def as_dict(self) -> dict[str, Any]:
        done = len(self.load.latencies)
        per = 1 / done if done else float("nan")
        steps = self.load.steps
        return {
            "kind": self.kind,
            "concurrency": self.concurrency,
            "seconds": round(self.load.seconds, 2),
            "sign_ins": done,
            "errors": sum(self.load.errors.values()),
            "errors_by_step": dict(self.load.errors),
            "error_samples": self.load.error_samples,
            "sign_ins_per_second": round(done / self.load.seconds, 1) if self.load.seconds else 0.0,
            "p50_ms": round(percentile(self.load.latencies, 0.50) * 1000, 1),
            "p99_ms": round(percentile(self.load.latencies, 0.99) * 1000, 1),
            "per_sign_in": {
                "idp_requests": round(steps.idp_requests * per, 2),
                "sandbox_requests": round(steps.sandbox_requests * per, 2),
                "browser_connections": round(steps.connections * per, 2),
                "idp_cpu_ms": round(self.cost.idp_cpu * 1000 * per, 2),
                "postgres_cpu_ms": round(self.cost.postgres_cpu * 1000 * per, 2),
                "sandbox_cpu_ms": round(self.cost.sandbox_cpu * 1000 * per, 2),
                "generator_cpu_ms": round(self.cost.generator_cpu * 1000 * per, 2),
                "new_database_connections": round(self.database.sessions * per, 3),
                "transactions": round(self.database.transactions * per, 2),
            },
            "totals": {
                "idp_cpu_s": round(self.cost.idp_cpu, 2),
                "postgres_cpu_s": round(self.cost.postgres_cpu, 2),
                "sandbox_cpu_s": round(self.cost.sandbox_cpu, 2),
                "generator_cpu_s": round(self.cost.generator_cpu, 2),
                "new_database_connections": self.database.sessions,
                "transactions": self.database.transactions,
            },
            "steps_ms": {
                name: {
                    "count": len(times),
                    "p50": round(percentile(times, 0.5) * 1000, 2),
                    "p99": round(percentile(times, 0.99) * 1000, 2),
                }
                for name, times in steps.times.items()
            },
        }


def settle_and_read(admin: Any, database: str, settle: float) -> DatabaseCounters:
    time.sleep(settle)
    return read_database_counters(admin, database)


def measure_kind(
    kind: str,
    args: argparse.Namespace,
    running: Running,
    population: Population,
    meters: Meters,
    admin: Any,
    database: str,
) -> list[LevelResult]:
    """A warm-up, then each concurrency level in turn; the database counters are read after they settle."""
    residents = Residents(population)
    target = running.target
    print(f"{kind}: warm-up {args.warmup:g} s at {max(args.concurrency)} …", flush=True)
    warm = run_on_loop(drive(kind, target, residents, concurrency=max(args.concurrency), seconds=args.warmup))
    if not warm.latencies:
        raise BenchError(f"{kind}: no sign-in succeeded in the warm-up: {warm.error_samples[:3]}")
    before = settle_and_read(admin, database, args.settle)
    results = []
    for concurrency in args.concurrency:
        print(f"{kind}: {concurrency} at once for {args.seconds:g} s …", flush=True)
        start = meters.read()
        load = run_on_loop(drive(kind, target, residents, concurrency=concurrency, seconds=args.seconds))
        end = meters.read()
        after = settle_and_read(admin, database, args.settle)
        result = LevelResult(kind, concurrency, load, end.minus(start), after.minus(before))
        before = after
        row = result.as_dict()
        print(
            f"  {row['sign_ins_per_second']}/s, p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms, "
            f"{row['errors']} errors, per sign-in: {json.dumps(row['per_sign_in'])}",
            flush=True,
        )
        for sample in load.error_samples[:3]:
            print(f"  error: {sample}", file=sys.stderr)
        results.append(result)
    return results


# -- report --------------------------------------------------------------------------------------------------------


def render_table(rows: Sequence[Mapping[str, Any]]) -> str:
    header = (
        "| sign-in | at once | sign-ins/s | p50 ms | p99 ms | errors | IdP req | IdP CPU ms | PG CPU ms | "
        "sandbox CPU ms | generator CPU ms | new DB conn | transactions |"
    )
    lines = [header, "|" + "---|" * 13]
    for row in rows:
        per = row["per_sign_in"]
        lines.append(
            f"| {row['kind']} | {row['concurrency']} | {row['sign_ins_per_second']:,} | {row['p50_ms']:,} | "
            f"{row['p99_ms']:,} | {row['errors']} | {per['idp_requests']:g} | {per['idp_cpu_ms']:g} | "
            f"{per['postgres_cpu_ms']:g} | {per['sandbox_cpu_ms']:g} | {per['generator_cpu_ms']:g} | "
            f"{per['new_database_connections']:g} | {per['transactions']:g} |"
        )
    return "\n".join(lines)


def git_commit() -> str:
    result = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_DIR, capture_output=True, text=True, check=False
    )
    return result.stdout.strip() or "unknown"


def postgres_version(admin: Any) -> str:
    from sqlalchemy import text

    with admin.connect() as connection:
        return str(connection.execute(text("SHOW server_version")).scalar())


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from sqlalchemy import create_engine

    admin = create_engine(server_url(args.postgres_url), isolation_level="AUTOCOMMIT")
    load_before = os.getloadavg()[0]
    try:
        with bench_database(args, admin, work) as database:
            forget_limits(database.url)
            if args.explain:
                from explain import run_explain

                with running_servers(args, database, work, explain=True) as running:
                    explained = run_explain(running, database, work, admin)
                return {"explain": explained}
            with running_servers(args, database, work) as running:
                meters = Meters(
                    idp_pid=running.idp.process.pid,
                    sandbox_pid=running.sandbox.process.pid,
                    postgres_pid=postmaster_pid(admin),
                )
                rows: list[dict[str, Any]] = []
                for kind in args.kinds:
                    for result in measure_kind(kind, args, running, database.population, meters, admin, database.name):
                        rows.append(result.as_dict())
            return {
                "meta": {
                    "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                    "commit": git_commit(),
                    "python": platform.python_version(),
                    "cpus": os.cpu_count(),
                    "idp_workers": args.workers,
                    "event_loop": event_loop(),
                    "seconds": args.seconds,
                    "warmup": args.warmup,
                    "postgresql": postgres_version(admin),
                    "database": database.name if database.kept else "(dropped after the run)",
                    "residents": database.population.residents,
                    "totp_residents": database.population.totp_residents,
                    "carrier_lines": database.population.carrier_lines,
                    "seed": database.seed.as_dict() if database.seed else "seeded by an earlier run",
                    "settings": {"IDP_TRUSTED_PROXIES": "1", "IDP_LOG_LEVEL": "WARNING"},
                    "load_average": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
                },
                "rows": rows,
                "table": render_table(rows),
            }
    finally:
        admin.dispose()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Whole sign-ins (passkey, TOTP, carrier) measured end to end.")
    parser.add_argument("--kinds", default="passkey,totp,carrier", help="comma-separated: passkey, totp, carrier")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds per concurrency level (20)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of sign-ins before each kind (3)")
    parser.add_argument("--concurrency", default="8,32", help="residents signing in at once, per level (8,32)")
    parser.add_argument("--workers", type=int, default=2, help="idp serve workers (2)")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("IDP_BENCH_POSTGRES_URL") or None,
        help="the PostgreSQL server, on this machine (default IDP_BENCH_POSTGRES_URL)",
    )
    parser.add_argument("--residents", type=int, default=None, help="residents to seed (10,000)")
    parser.add_argument("--carrier-lines", type=int, default=2000, help="residents the sandbox agency knows (2,000)")
    parser.add_argument(
        "--database",
        "--keep-database",
        metavar="NAME",
        help="seed this database on first use and keep it; later runs reuse it (same --residents)",
    )
    parser.add_argument("--settle", type=float, default=PG_STATS_SETTLE, help="seconds for pg_stat_database (11)")
    parser.add_argument("--explain", action="store_true", help="record each sign-in's SQL and EXPLAIN it")
    parser.add_argument("--output", default=None, help="JSON file (bench/results/signins.json)")
    args = parser.parse_args(argv)
    if not args.postgres_url:
        parser.error("--postgres-url (or IDP_BENCH_POSTGRES_URL) is required")
    args.kinds = [kind.strip() for kind in args.kinds.split(",") if kind.strip()]
    for kind in args.kinds:
        if kind not in KINDS:
            parser.error(f"unknown kind {kind!r}: choose from {', '.join(KINDS)}")
    args.concurrency = [int(level) for level in args.concurrency.split(",")]
    args.residents_given = args.residents is not None
    args.residents = args.residents or 10_000
    if args.database and not args.database.replace("_", "").isalnum():
        parser.error("--database: letters, digits and _ only")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    work = Path(tempfile.mkdtemp(prefix="idp-signins-"))
    started = own_cpu_seconds()
    try:
        results = run(args, work)
    except (BenchError, SeedError) as exc:
        print(f"signins: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("signins: interrupted", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if "explain" in results:
        return 0
    results["meta"]["generator_cpu_total_s"] = round(own_cpu_seconds() - started, 1)
    output = Path(args.output) if args.output else RESULTS_DIR / "signins.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    print()
    print(results["table"])
    print(f"\nwritten to {output}")
    return 0


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
