"""`signins.py --explain`: every SQL statement the IdP runs during one sign-in of each kind and one token,
UserInfo and introspection call, each EXPLAINed (ANALYZE, BUFFERS) on the bench database, to
bench/results/explain.md and explain.json.

How the statements are caught: PostgreSQL's pg_stat_statements needs shared_preload_libraries (a server restart),
and its log is the server's, shared with everyone using it. So the IdP runs here with a `sitecustomize` module on
its PYTHONPATH (this mode only, never while measuring) that listens to SQLAlchemy's engine events in every worker
and writes each statement with its parameters, its request (method and path) and each commit and rollback to a
file per process. The statements are then run again, each inside a transaction that is rolled back, as
`EXPLAIN (ANALYZE, BUFFERS)`; one that cannot run again (an INSERT of a key that now exists) gets a plain
EXPLAIN. A plan with a Seq Scan is flagged, loudest on the tables that grow with residents and sign-ins.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import time
import uuid
from pathlib import Path
from typing import Any

from journeys import Client, Residents, Steps

RESULTS_DIR = Path(__file__).resolve().parent / "results"
CAPTURE_ENV = "BENCH_SQL_CAPTURE"
# Tables that grow with the resident base or with every sign-in: a sequential scan of one is a finding.
GROWING_TABLES = frozenset(
    {
        "resident",
        "passkey",
        "totp_device",
        "recovery_code",
        "consent",
        "login_session",
        "session_client",
        "authorization_code",
        "access_token",
        "refresh_token",
        "webauthn_challenge",
        "carrier_result",
        "rate_limit_counter",
        "audit_event",
        "used_assertion",
    }
)

SITECUSTOMIZE = '''"""Written by bench/explain.py: record every statement the IdP runs (bench only)."""
import datetime as _dt
import json as _json
import os as _os
import threading as _threading
import time as _time
import uuid as _uuid

_PATH = _os.environ.get("BENCH_SQL_CAPTURE")
_lock = _threading.Lock()


def _value(value):
    # psycopg's wrappers, as SQLAlchemy binds LargeBinary and JSON columns.
    if type(value).__name__ == "Binary":
        return {"$bytes": bytes(value.obj).hex()}
    if type(value).__name__ in ("Json", "Jsonb"):
        return {"$json": _value(value.obj)}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$bytes": bytes(value).hex()}
    if isinstance(value, _uuid.UUID):
        return {"$uuid": str(value)}
    if isinstance(value, _dt.datetime):
        return {"$datetime": value.isoformat()}
    if isinstance(value, _dt.date):
        return {"$date": value.isoformat()}
    if isinstance(value, (list, tuple)):
        return [_value(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _value(item) for key, item in value.items()}
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return {"$repr": repr(value)}


def _request():
    try:
        from flask import has_request_context, request
    except ImportError:
        return None
    if not has_request_context():
        return None
    return {"id": id(request._get_current_object()), "method": request.method, "path": request.path}


def _write(record):
    record["pid"] = _os.getpid()
    record["thread"] = _threading.get_ident()
    record["at"] = _time.time()
    record["request"] = _request()
    line = _json.dumps(record) + "\\n"
    with _lock, open(f"{_PATH}.{_os.getpid()}", "a") as handle:
        handle.write(line)


if _PATH:
    from sqlalchemy import event as _event
    from sqlalchemy.engine import Engine as _Engine

    @_event.listens_for(_Engine, "before_cursor_execute")
    def _statement(conn, cursor, statement, parameters, context, executemany):
        first = parameters[0] if executemany and parameters else parameters
        _write({"kind": "statement", "sql": statement, "params": _value(first), "many": bool(executemany)})

    @_event.listens_for(_Engine, "commit")
    def _commit(conn):
        _write({"kind": "commit"})

    @_event.listens_for(_Engine, "rollback")
    def _rollback(conn):
        _write({"kind": "rollback"})
'''


def capture_environment(work: Path) -> dict[str, str]:
    """PYTHONPATH and the capture file for the IdP's processes."""
    folder = work / "sqlcapture"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return {"PYTHONPATH": str(folder), CAPTURE_ENV: str(folder / "statements.jsonl")}


def _decode(value: Any) -> Any:
    if isinstance(value, list):
        return [_decode(item) for item in value]
    if isinstance(value, dict):
        if len(value) == 1:
            ((tag, raw),) = value.items()
            if tag == "$bytes":
                return bytes.fromhex(raw)
            if tag == "$uuid":
                return uuid.UUID(raw)
            if tag == "$datetime":
                return dt.datetime.fromisoformat(raw)
            if tag == "$date":
                return dt.date.fromisoformat(raw)
            if tag == "$json":
                from psycopg.types.json import Json

                return Json(_decode(raw))
        return {key: _decode(item) for key, item in value.items()}
    return value


def read_capture(work: Path) -> list[dict[str, Any]]:
    records = []
    for path in sorted((work / "sqlcapture").glob("statements.jsonl.*")):
        records += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    records.sort(key=lambda record: record["at"])
    return records


# -- one of each ---------------------------------------------------------------------------------------------------


async def _one_of_each(client: Client) -> list[tuple[str, float, float]]:
    """One sign-in of each kind and one introspection; (phase, started, ended) wall-clock times."""
    phases = []
    for kind in ("passkey", "totp", "carrier"):
        started = time.time()
        await getattr(client, kind)()
        phases.append((f"{kind} sign-in", started, time.time()))
        await asyncio.sleep(0.05)
    started = time.time()
    token = client.last_tokens["access_token"]
    form = f"token={token}&token_type_hint=access_token".encode()
    headers = [("Authorization", client.basic), ("Content-Type", "application/x-www-form-urlencoded")]
    response = await client.service.request("POST", "/introspect", headers, form)
    if response.status != 200 or not json.loads(response.body).get("active"):
        raise RuntimeError(f"introspection: status {response.status}: {response.text[:200]}")
    phases.append(("introspection", started, time.time()))
    return phases


def _phase_of(at: float, phases: list[tuple[str, float, float]]) -> str:
    for name, started, ended in phases:
        if started - 0.01 <= at <= ended + 0.01:
            return name
    return "background"


# -- EXPLAIN -------------------------------------------------------------------------------------------------------


TRANSACTION_CONTROL = ("SAVEPOINT", "RELEASE", "ROLLBACK", "COMMIT", "BEGIN")


def explain_statement(engine: Any, sql: str, params: Any) -> tuple[str, bool, str | None]:
    """The plan of `sql` with `params`, analysed (run, then rolled back) when it can run again."""
    if sql.lstrip().upper().startswith(TRANSACTION_CONTROL):
        return "(transaction control: no plan)", False, "not a query"
    with engine.connect() as connection:
        transaction = connection.begin()
        try:
            rows = connection.exec_driver_sql(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", params).all()
            return "\n".join(str(row[0]) for row in rows), True, None
        except Exception as error:  # any refusal: fall back to a plain EXPLAIN
            reason = str(getattr(error, "orig", error)).splitlines()[0][:200]
        finally:
            transaction.rollback()
        transaction = connection.begin()
        try:
            rows = connection.exec_driver_sql(f"EXPLAIN {sql}", params).all()
            return "\n".join(str(row[0]) for row in rows), False, reason
        except Exception as error:
            return f"(no plan: {str(getattr(error, 'orig', error)).splitlines()[0][:200]})", False, reason
        finally:
            transaction.rollback()


def without_seq_scans(engine: Any, sql: str, params: Any) -> str:
    """The plan PostgreSQL falls back to when sequential scans are (nearly) ruled out: an index plan shows the
    table has an index for this query and the planner chose the scan for its size."""
    with engine.connect() as connection:
        transaction = connection.begin()
        try:
            connection.exec_driver_sql("SET LOCAL enable_seqscan = off")
            rows = connection.exec_driver_sql(f"EXPLAIN {sql}", params).all()
            return "\n".join(str(row[0]) for row in rows)
        except Exception as error:
            return f"(no plan: {str(getattr(error, 'orig', error)).splitlines()[0][:200]})"
        finally:
            transaction.rollback()


def table_rows(engine: Any, table: str) -> int:
    from sqlalchemy import text

    with engine.connect() as connection:
        # `table` is one of GROWING_TABLES, read from a plan.
        return int(connection.execute(text(f'SELECT count(*) FROM "{table}"')).scalar_one())  # noqa: S608


SCAN = re.compile(
    r"(?P<kind>Seq Scan|Index Scan|Index Only Scan|Bitmap Heap Scan)(?: Backward)?(?: using \w+)? on (?P<table>\w+)"
)


def tables_read(plan: str) -> dict[str, bool]:
    """Each table a plan reads, and whether every read of it is an index lookup by equality (`Index Cond: (x =
    …)` under the scan): a sequential scan, or an index condition that is only `IS NULL` or a range, reads a part
    of the table that grows with it."""
    lines = plan.splitlines()
    read: dict[str, bool] = {}
    for number, line in enumerate(lines):
        match = SCAN.search(line)
        if match is None:
            continue
        table = match.group("table")
        lookup = False
        if match.group("kind") != "Seq Scan":
            depth = len(line) - len(line.lstrip())
            for later in lines[number + 1 : number + 10]:
                if later.strip().startswith("->") and len(later) - len(later.lstrip()) <= depth:
                    break
                if "Index Cond:" in later and " = " in later:
                    lookup = True
                    break
        read[table] = read.get(table, True) and lookup
    return read


def findings(plan: str) -> tuple[list[str], list[str]]:
    """Tables not read by an index lookup: (growing ones, others)."""
    missed = [table for table, lookup in tables_read(plan).items() if not lookup]
    return sorted(t for t in missed if t in GROWING_TABLES), sorted(t for t in missed if t not in GROWING_TABLES)


def run_explain(running: Any, database: Any, work: Path, admin: Any) -> dict[str, Any]:
    """One of each with the capture on; every distinct statement EXPLAINed; explain.md and explain.json."""
    from signins import Addresses, run_on_loop
    from sqlalchemy import create_engine

    residents = Residents(database.population)
    client = Client(running.target, residents, Steps(), Addresses())
    try:
        phases = run_on_loop(_one_of_each(client))
    finally:
        client.close()
    time.sleep(0.5)
    records = read_capture(work)
    statements: dict[str, dict[str, Any]] = {}
    per_request: dict[tuple[str, str], dict[str, Any]] = {}
    order: list[tuple[str, str]] = []
    last: dict[tuple[int, int], tuple[str, str]] = {}
    for record in records:
        phase = _phase_of(record["at"], phases)
        request = record.get("request")
        thread = (record["pid"], record["thread"])
        if request is None and thread in last and last[thread][0] == phase:
            # The session's end after the response (Flask's teardown): the request's own transaction.
            key = last[thread]
            label = per_request[key]["request"]
        else:
            request = request or {}
            label = f"{request.get('method', '')} {request.get('path', '(outside a request)')}".strip()
            key = (phase, f"{record['pid']}:{request.get('id', record['thread'])}:{label}")
            last[thread] = key
        if key not in per_request:
            per_request[key] = {"phase": phase, "request": label, "statements": 0, "commits": 0, "rollbacks": 0}
            order.append(key)
        entry = per_request[key]
        if record["kind"] == "statement":
            entry["statements"] += 1
            found = statements.setdefault(
                record["sql"], {"sql": record["sql"], "params": record["params"], "calls": 0, "where": []}
            )
            found["calls"] += 1
            if (phase, label) not in [tuple(w) for w in found["where"]]:
                found["where"].append((phase, label))
        elif record["kind"] == "commit":
            entry["commits"] += 1
        else:
            entry["rollbacks"] += 1
    engine = create_engine(database.url)
    try:
        for found in statements.values():
            plan, analysed, refused = explain_statement(engine, found["sql"], _decode(found["params"]))
            growing, other = findings(plan)
            found.update(plan=plan, analysed=analysed, refused=refused, seq_scans=growing, other_seq_scans=other)
            if growing:
                fallback = without_seq_scans(engine, found["sql"], _decode(found["params"]))
                found["rows"] = {table: table_rows(engine, table) for table in growing}
                found["plan_without_seq_scans"] = fallback
                found["index_exists"] = all(tables_read(fallback).get(table, False) for table in growing)
    finally:
        engine.dispose()
    result = {
        "database": database.name,
        "residents": database.population.residents,
        "requests": [per_request[key] for key in order],
        "statements": list(statements.values()),
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "explain.json").write_text(json.dumps(result, indent=2, ensure_ascii=False, default=str) + "\n")
    (RESULTS_DIR / "explain.md").write_text(render(result))
    print(f"written to {RESULTS_DIR / 'explain.md'}")
    flagged = [s for s in statements.values() if s["seq_scans"]]
    print(f"{len(statements)} distinct statements, {len(flagged)} not read by an index lookup on a growing table")
    return result


def _short(sql: str) -> str:
    return " ".join(sql.split())


def render(result: dict[str, Any]) -> str:
    lines = [
        "# EXPLAIN of every statement on the sign-in and token paths",
        "",
        f"Database with {result['residents']:,} residents (bench/signins.py --explain). Each statement was caught",
        "as the IdP ran one passkey, one TOTP and one carrier sign-in (each with its code exchange and UserInfo",
        "call) and one introspection, then run again as EXPLAIN (ANALYZE, BUFFERS) inside a rolled-back",
        "transaction. A table that grows with residents or sign-ins, read other than by an index lookup by",
        "equality, is flagged.",
        "",
        "## Requests",
        "",
        "Rollbacks are SQLAlchemy's (a session's end calls one even when no statement began a transaction, and",
        "PostgreSQL then counts none); a request with statements and no commit ends its transaction so.",
        "",
        "| phase | request | statements | commits | rollbacks |",
        "|---|---|---|---|---|",
    ]
    for request in result["requests"]:
        lines.append(
            f"| {request['phase']} | `{request['request']}` | {request['statements']} | {request['commits']} | "
            f"{request['rollbacks']} |"
        )
    flagged = [s for s in result["statements"] if s["seq_scans"]]
    lines += ["", "## Findings", ""]
    if not flagged:
        lines.append("Every table that grows is read by an index lookup.")
    for statement in flagged:
        where = ", ".join(f"{phase}: `{request}`" for phase, request in statement["where"])
        scans = ", ".join(f"{table} ({rows:,} rows)" for table, rows in statement["rows"].items())
        verdict = (
            "with sequential scans ruled out an index lookup serves it: the planner's choice for a table this "
            "small, not a missing index"
            if statement["index_exists"]
            else "**no index lookup serves it (see the plan with enable_seqscan off): a finding**"
        )
        lines.append(f"- Not an index lookup: {scans} in `{_short(statement['sql'])[:160]}` ({where}): {verdict}")
    others = [s for s in result["statements"] if s["other_seq_scans"] and not s["seq_scans"]]
    for statement in others:
        lines.append(
            f"- (a small table, outside the sign-ins) Seq Scan on {', '.join(statement['other_seq_scans'])} in "
            f"`{_short(statement['sql'])[:160]}`"
        )
    lines += ["", "## Statements", ""]
    for number, statement in enumerate(result["statements"], 1):
        where = "; ".join(f"{phase}: `{request}`" for phase, request in statement["where"])
        mark = " — **not an index lookup: " + ", ".join(statement["seq_scans"]) + "**" if statement["seq_scans"] else ""
        lines += [
            f"### {number}. {statement['calls']} call{'s' if statement['calls'] != 1 else ''}{mark}",
            "",
            f"Where: {where}",
            "",
            "```sql",
            _short(statement["sql"]),
            "```",
            "",
            "EXPLAIN (ANALYZE, BUFFERS):"
            if statement["analysed"]
            else f"EXPLAIN (not run again: {statement['refused']}):",
            "",
            "```",
            statement["plan"],
            "```",
            "",
        ]
        if statement.get("plan_without_seq_scans"):
            lines += ["With enable_seqscan off:", "", "```", statement["plan_without_seq_scans"], "```", ""]
    return "\n".join(lines)
