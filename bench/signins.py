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
import datetime as dt
import json
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
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
from seed import Population, SeedError  # noqa: E402
from servers import BenchError  # noqa: E402
from signin_setup import (  # noqa: E402
    Running,
    bench_database,
    forget_limits,
    running_servers,
    server_url,
)

RESULTS_DIR = BENCH_DIR / "results"
# 198.18.0.0/15 is set aside for benchmarks (RFC 2544 appendix C.2.2, RFC 6890): the addresses residents come
# from, one per sign-in, in X-Forwarded-For. Nothing is sent to them; they only keep per-address limits apart.
CLIENT_ADDRESS_BASE = (198 << 24) | (18 << 16)
CLIENT_ADDRESSES = 1 << 17


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
