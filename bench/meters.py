"""What a whole-sign-in run costs outside the load generator: CPU time of process trees read from /proc, and
PostgreSQL's own counters for one database (pg_stat_database)."""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass
from typing import Any

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# A backend sends its statistics to pg_stat_database at most once a second while busy, and an idle one within
# PGSTAT_IDLE_INTERVAL (10 s, src/backend/utils/activity/pgstat.c): reading the counters sooner misses some.
PG_STATS_SETTLE = 11.0


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            raw = handle.read().decode()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: the fields start after the last ')'.
    return raw[raw.rfind(")") + 2 :].split()


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = _stat_fields(int(name))
        if fields is not None:
            tree.setdefault(int(fields[1]), []).append(int(name))
    return tree


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds (user + system) of `root` and every descendant, with the children they already reaped
    (cutime, cstime), so a process that exits between two readings still counts."""
    tree = _children()
    total = 0
    stack = [root]
    while stack:
        pid = stack.pop()
        fields = _stat_fields(pid)
        if fields is None:
            continue
        # Fields 14-17 of proc(5) (utime, stime, cutime, cstime), counted from 1 with pid and comm before these.
        total += sum(int(value) for value in fields[11:15])
        stack.extend(tree.get(pid, ()))
    return total / CLOCK_TICKS


def parent_of(pid: int) -> int:
    fields = _stat_fields(pid)
    if fields is None:
        raise ProcessLookupError(pid)
    return int(fields[1])


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True, slots=True)
class Counters:
    """One reading of everything a run is charged for."""

    at: float
    idp_cpu: float
    postgres_cpu: float
    sandbox_cpu: float
    generator_cpu: float

    def minus(self, earlier: Counters) -> Counters:
        return Counters(
            self.at - earlier.at,
            self.idp_cpu - earlier.idp_cpu,
            self.postgres_cpu - earlier.postgres_cpu,
            self.sandbox_cpu - earlier.sandbox_cpu,
            self.generator_cpu - earlier.generator_cpu,
        )


@dataclass(frozen=True, slots=True)
class DatabaseCounters:
    """pg_stat_database of the bench database: sessions opened and transactions ended."""

    sessions: int
    transactions: int

    def minus(self, earlier: DatabaseCounters) -> DatabaseCounters:
        return DatabaseCounters(self.sessions - earlier.sessions, self.transactions - earlier.transactions)


class Meters:
    """Reads the CPU of the IdP's, the sandbox's and PostgreSQL's process trees, and this process's own."""

    def __init__(self, *, idp_pid: int, sandbox_pid: int, postgres_pid: int) -> None:
        self.idp_pid = idp_pid
        self.sandbox_pid = sandbox_pid
        self.postgres_pid = postgres_pid

    def read(self, generator_cpu: float | None = None) -> Counters:
        return Counters(
            at=time.monotonic(),
            idp_cpu=tree_cpu_seconds(self.idp_pid),
            postgres_cpu=tree_cpu_seconds(self.postgres_pid),
            sandbox_cpu=tree_cpu_seconds(self.sandbox_pid),
            generator_cpu=own_cpu_seconds() if generator_cpu is None else generator_cpu,
        )


def read_database_counters(admin: Any, database: str) -> DatabaseCounters:
    """The counters as PostgreSQL has them now (read from another database, so reading them adds nothing)."""
    from sqlalchemy import text

    with admin.connect() as connection:
        connection.execute(text("SELECT pg_stat_clear_snapshot()"))
        row = connection.execute(
            text("SELECT sessions, xact_commit + xact_rollback FROM pg_stat_database WHERE datname = :name"),
            {"name": database},
        ).one()
    return DatabaseCounters(int(row[0]), int(row[1]))


def postmaster_pid(admin: Any) -> int:
    """The PostgreSQL server's main process: the parent of a backend (the server runs on this machine)."""
    from sqlalchemy import text

    with admin.connect() as connection:
        backend = int(connection.execute(text("SELECT pg_backend_pid()")).scalar_one())
        return parent_of(backend)
