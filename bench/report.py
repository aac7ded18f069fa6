"""What a run reports: the table printed at the end (one row per figure, with the ratio that says which side does
better), and the results written to bench/results/: every figure as JSON (latest.json) and the medians as Markdown
tables (latest.md), one row per case, ready to paste into an issue.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cases import Case
from load import WrkResult
from servers import BENCH_DIR, SQLITE, IdpDatabase

RESULTS_DIR = BENCH_DIR / "results"
JSON_FILE = RESULTS_DIR / "latest.json"
MARKDOWN_FILE = RESULTS_DIR / "latest.md"

TOKEN_NOTES = (
    "Database cases: the idp stores codes, tokens and login sessions in its database (the one in brackets);",
    "node-oidc-provider in memory. Both sign ES256 JWT access tokens and RS256 ID tokens; node's UserInfo and",
    "introspection tokens are opaque (the only kind it accepts there), the idp's are its JWTs.",
)
VERIFY_NOTES = (
    "verify/s rows: the second column is joserfc's raw jwt.decode of the same token with a prebuilt key, in this",
    "process (not node); the bar for idp.rp's warm Verifier is a ratio of 0.8 or more.",
)


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

    def as_json(self) -> dict[str, Any]:
        return {"metric": self.metric, "idp": self.idp, "node": self.node, "better": self.better, "ratio": self.ratio}


def case_rows(case: Case, runs: Mapping[str, Sequence[WrkResult]], databases: Sequence[IdpDatabase]) -> list[Row]:
    """Median req/s and p99 of each idp database against node's; the database in brackets for database cases."""
    node_rps = statistics.median(r.requests_per_second for r in runs["node"])
    node_p99 = statistics.median(r.latency_p99_ms for r in runs["node"])
    measured = [db for db in databases if db.key in runs] if case.uses_database else [SQLITE]
    throughput: list[Row] = []
    latency: list[Row] = []
    cpu: list[Row] = []
    for database in measured:
        suffix = f" [{database.label}]" if case.uses_database else ""
        idp_rps = statistics.median(r.requests_per_second for r in runs[database.key])
        idp_p99 = statistics.median(r.latency_p99_ms for r in runs[database.key])
        throughput.append(Row(f"{case.name} req/s{suffix}", idp_rps, node_rps, "higher"))
        latency.append(Row(f"{case.name} p99 latency ms{suffix} (lower is better)", idp_p99, node_p99, "lower"))
        idp_cpu = _cpu_median(runs[database.key])
        node_cpu = _cpu_median(runs["node"])
        if idp_cpu is not None and node_cpu is not None:
            cpu.append(Row(f"{case.name} CPU ms/request{suffix} (lower is better)", idp_cpu, node_cpu, "lower"))
    return throughput + latency + cpu


def _cpu_median(runs: Sequence[WrkResult]) -> float | None:
    values = [r.server_cpu_ms_per_request for r in runs if r.server_cpu_ms_per_request is not None]
    return statistics.median(values) if values else None


# -- the table printed --------------------------------------------------------------------------------------------


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


# -- the Markdown file ----------------------------------------------------------------------------------------------


def _cell(value: float | None) -> str:
    return "" if value is None else format_number(value)


def _ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}×"


def _median(runs: Sequence[Mapping[str, Any]], figure: str) -> float | None:
    values = [run[figure] for run in runs if run.get(figure) is not None]
    return statistics.median(values) if values else None


def _markdown_table(header: Sequence[str], lines: Sequence[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(line) + " |" for line in lines]
    return out


def _http_table(results: Mapping[str, Any], figure: str, *, higher_is_better: bool) -> list[str]:
    """One line per case: the median of `figure` on each idp database and on node, and each idp/node ratio
    (node/idp when lower is better), so that above 1 the idp does better."""
    databases: list[Mapping[str, str]] = results["meta"]["databases"]
    header = ["case", *(f"idp {db['label']}" for db in databases), "node"]
    header += [f"ratio {db['label']}" for db in databases]
    lines: list[list[str]] = []
    for case, sides in results["http"].items():
        node = _median(sides.get("node", []), figure)
        idp = [_median(sides.get(db["key"], []), figure) for db in databases]
        ratios: list[float | None] = []
        for value in idp:
            if value is None or node is None or not (node if higher_is_better else value):
                ratios.append(None)
            else:
                ratios.append(value / node if higher_is_better else node / value)
        lines.append([f"`{case}`", *map(_cell, idp), _cell(node), *map(_ratio, ratios)])
    return _markdown_table(header, lines)


def _in_process_line(
    figure: str, idp: Mapping[str, float], reference: Mapping[str, float], reference_name: str
) -> list[str]:
    ratio = idp["per_second"] / reference["per_second"] if reference["per_second"] else None
    return [figure, _cell(idp["per_second"]), f"{_cell(reference['per_second'])} ({reference_name})", _ratio(ratio)]


def render_markdown(results: Mapping[str, Any]) -> str:
    """The medians of a run (its JSON document) as Markdown: requests per second and p99 per case, then the
    in-process figures (signing, verification), then how the run was made."""
    meta = results["meta"]
    wrk = meta["wrk"]
    out = ["# idp and node-oidc-provider, per core", ""]
    if results["http"]:
        out += ["## Requests per second (higher is better; ratio idp/node)", ""]
        out += _http_table(results, "requests_per_second", higher_is_better=True)
        out += ["", "## p99 latency in ms (lower is better; ratio node/idp)", ""]
        out += _http_table(results, "latency_p99_ms", higher_is_better=False)
        out += ["", "## Server CPU per request in ms (lower is better; ratio node/idp)", ""]
        out += [
            "What each server's processes spent on the CPU during a run, divided by the requests it answered: per",
            "core, and steadier than requests per second on a shared machine.",
            "",
        ]
        out += _http_table(results, "server_cpu_ms_per_request", higher_is_better=False)
        out.append("")
    in_process = [
        _in_process_line(f"{alg} ID token sign/s", sides["idp"], sides["node"], "jose in node")
        for alg, sides in results["signing"].items()
    ]
    in_process += [
        _in_process_line(f"{alg} access token verify/s", figures["verifier"], figures["raw_decode"], "jwt.decode")
        for alg, figures in results["verification"].items()
    ]
    if in_process:
        out += ["## In-process figures (higher is better; ratio idp/reference)", ""]
        out += _markdown_table(["figure", "idp", "reference", "ratio"], in_process)
        out.append("")
    postgres, sqlite = meta["postgresql"], meta["sqlite"]
    out += [
        "## How",
        "",
        f"- commit {meta['commit']}, {meta['time']}; Python {meta['python']}, {meta['node']}, "
        f"oidc-provider {meta['oidc_provider']}, jose {meta['jose']}",
        f"- servers pinned to CPU {meta['server_cpus']} (idp workers: {meta['idp_workers']}), wrk to CPU "
        f"{meta['wrk_cpus']}: {wrk['threads']} thread(s), {wrk['connections']} connections, {wrk['duration']} s "
        f"after a {wrk['warmup']} s warm-up; medians of {meta['repeat']} alternating run(s)",
        f"- SQLite: journal {sqlite['journal_mode']}, synchronous={sqlite['synchronous']}",
        "- PostgreSQL: "
        + (
            postgres.get("skipped")
            or f"{postgres['server_version']} at {postgres['server']}, fsync={postgres['fsync']}, "
            f"synchronous_commit={postgres['synchronous_commit']}"
        ),
        f"- load average {meta.get('load_average', {}).get('before', '?')} before, "
        f"{meta.get('load_average', {}).get('after', '?')} after, on {meta['cpus']} CPUs",
        "- the idp writes codes, tokens and sessions to its database; node-oidc-provider keeps them in memory "
        "(bench/README.md)",
        "",
    ]
    return "\n".join(out)


def write_results(results: Mapping[str, Any]) -> tuple[Path, Path]:
    """latest.json (every figure) and latest.md (the medians), in bench/results/."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    JSON_FILE.write_text(json.dumps(results, indent=2) + "\n")
    MARKDOWN_FILE.write_text(render_markdown(results))
    return JSON_FILE, MARKDOWN_FILE
