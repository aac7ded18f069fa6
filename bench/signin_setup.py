"""The servers and the database of the whole-sign-in bench (bench/signins.py): the seeded PostgreSQL database
(fresh, or kept between runs with `--database NAME`), the sandbox carrier agency and `idp serve`."""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from journeys import Target
from seed import BenchClient, Population, SeedError, SeedReport, seed_residents, write_sandbox_state
from servers import BenchError, Server, free_port, postgres_url_from, start_server, wait_ready

REPO_DIR = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
DATABASE_PREFIX = "idp_signins_"


# -- the database --------------------------------------------------------------------------------------------------


# The server's URL checked as the per-endpoint bench checks it (PostgreSQL, on this machine, psycopg).
server_url = postgres_url_from


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
