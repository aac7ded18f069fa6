"""Benchmark the idp against node-oidc-provider, per core: HTTP endpoints with wrk, ID-token signing and
access-token verification. This module reads the options and runs the measurements in order; the parts are
servers.py (the instance, databases and processes), cases.py (what is measured), mint.py (the bench client and the
values the cases spend), load.py (wrk), signing.py (in-process figures) and report.py (the table and the files).

Both servers run on CPU 0 (`taskset`), wrk runs on CPU 1, everything on 127.0.0.1. The idp is a fresh instance in a
temporary folder (SQLite, and PostgreSQL when given a server); node-oidc-provider gets the same signing keys. See
bench/README.md for how to read the figures.

    .venv/bin/python bench/run.py [--quick] [--duration 10] [--connections 32] [--only NAME] [--repeat N]
        [--idp-workers N] [--postgres-url postgresql+psycopg://USER@127.0.0.1:PORT/DB]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from cases import CASES, CODE_VERIFIER, NODE_CLIENT_ID, Case, Credentials, Request
from load import MINT_FIRST_GUESS, LoadOptions, Target, WrkResult, run_wrk
from mint import IdpMinter, NodeMinter, StaticMinter
from report import TOKEN_NOTES, VERIFY_NOTES, Row, case_rows, render_table, write_results
from servers import (
    POSTGRES_SKIPPED,
    REPO_DIR,
    SQLITE,
    BenchError,
    IdpDatabase,
    Instance,
    Servers,
    check_tools,
    cpu_set,
    create_instance,
    ensure_node_modules,
    git_commit,
    init_idp,
    node_package_version,
    node_version,
    postgres_database,
    postgres_settings,
    postgres_url_from,
    running_servers,
    sqlite_settings,
)
from signing import (
    SIGN_ALGORITHMS,
    SignResult,
    VerifyResult,
    active_keys,
    measure_idp_signing,
    measure_node_signing,
    measure_verification,
)

LOAD_WARNING = 1.0  # 1-minute load average above which other work skews a per-core benchmark
IN_PROCESS = ("signing", "verification")  # what --only names beside the HTTP cases


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
        help=f"run only this case (repeatable): {', '.join(c.name for c in CASES)}, {', '.join(IN_PROCESS)}",
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
    known = {case.name for case in CASES} | set(IN_PROCESS)
    for name in args.only or []:
        if name not in known:
            parser.error(f"unknown case {name!r}: choose from {', '.join(sorted(known))}")
    return args


# -- HTTP cases ------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def targets_of(servers: Servers, instance: Instance, *, with_client: bool) -> Iterator[list[Target]]:
    """Each server as the cases see it; with the bench client and resident set up when a case needs them."""
    minters: list[IdpMinter] = []
    try:
        targets: list[Target] = []
        for database, server in servers.idp:
            label = "idp" if database.url is None else f"idp ({database.label})"
            if with_client:
                minter = IdpMinter(instance.env_for(database))
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
        running_servers(
            instance,
            databases,
            server_cpus=args.server_cpus,
            idp_workers=args.idp_workers,
            code_verifier=CODE_VERIFIER,
        ) as servers,
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


# -- in-process figures ------------------------------------------------------------------------------------------


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


def measure_verifying(instance: Instance, args: argparse.Namespace) -> tuple[dict[str, VerifyResult], list[Row]]:
    """Access-token verifications per second with idp.rp's Verifier beside a raw decode, pinned like the servers."""
    print("verification: idp.rp Verifier and joserfc jwt.decode …", flush=True)
    verification = measure_verification(instance.keys_dir, args.sign_seconds, cpu_set(args.server_cpus))
    rows = [
        Row(
            f"{alg} access token verify/s (idp.rp ÷ raw jwt.decode)",
            result.verifier.per_second,
            result.raw_decode.per_second,
            "higher",
        )
        for alg, result in verification.items()
    ]
    return verification, rows


# -- the run -----------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Every selected measurement; the figures as a JSON-ready dict (with the rendered table)."""
    selected = set(args.only or [*(case.name for case in CASES), *IN_PROCESS])
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
    databases = [SQLITE]
    if cases:
        uses_database = any(case.uses_database for case in cases)
        with contextlib.ExitStack() as stack:
            if uses_database and args.postgres_url:
                database = stack.enter_context(postgres_database(args.postgres_url, keep=args.keep_temp))
                init_idp(instance.env_for(database))
                databases.append(database)
                postgres = {"server": postgres_url_from(args.postgres_url).render_as_string()}
                postgres.update(postgres_settings(database))
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
        verification, verify_rows = measure_verifying(instance, args)
        rows += verify_rows
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
            "repeat": args.repeat,
            "sign_seconds": args.sign_seconds,
            "sqlite": sqlite_settings(instance.database_url(SQLITE)),
            "postgresql": postgres,
            # The idp's columns: its runs in `http` are keyed by `key`.
            "databases": [{"key": db.key, "label": db.label} for db in databases],
            "ratio": "> 1 means the idp does better: idp/node for throughput, node/idp for latency",
        },
        "http": {
            name: {side: [asdict(run) for run in runs] for side, runs in sides.items()} for name, sides in http.items()
        },
        "signing": {alg: {side: asdict(result) for side, result in sides.items()} for alg, sides in signing.items()},
        "verification": {
            alg: {**asdict(result), "ratio": round(result.ratio, 3)} for alg, result in verification.items()
        },
        "rows": [row.as_json() for row in rows],
        "table": render_table(rows, notes),
    }


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
    written = write_results(results)
    print()
    print(results["table"])
    print(f"\nwritten to {', '.join(str(path.relative_to(REPO_DIR)) for path in written)}")
    return 0


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
