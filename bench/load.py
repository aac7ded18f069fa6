"""The load: one case on one server with wrk, after a request that checks the server answers as expected. A request
that is not a plain GET gets a generated Lua script; one that spends single-use values gets a script that sends
each at most once, and as many values as the run needs.
"""

from __future__ import annotations

import dataclasses
import math
import re
import subprocess
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from cases import FRESH, Credentials, Request
from mint import Minter
from servers import BenchError, Server, http_request, pinned, set_cookie_header

# Single-use values: each run gets rate x seconds x MINT_MARGIN of them (plus MINT_EXTRA and two per connection),
# the rate being the last one measured for that server, or MINT_FIRST_GUESS before any.
MINT_FIRST_GUESS = 3000.0
MINT_MARGIN = 1.5
MINT_EXTRA = 200
MINT_ATTEMPTS = 4
REDIRECTS = (302, 303)  # RFC 6749 §4.1.2 leaves the status to the server: Authlib's 302, node-oidc-provider's 303


@dataclass
class Target:
    """A server as a case sees it: the bench client's credentials there and how to mint single-use values."""

    key: str  # the key of its runs in the JSON: idp, idp-postgresql, node
    label: str
    server: Server
    credentials: Credentials
    minter: Minter


@dataclass(frozen=True, slots=True)
class LoadOptions:
    duration: int
    warmup: int
    connections: int
    threads: int
    wrk_cpus: str


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
    # CPU the server's processes used during the measured run, per request it answered (ms): what a request costs,
    # whatever else the machine was doing at the time.
    server_cpu_ms_per_request: float | None = None


# -- wrk's output ---------------------------------------------------------------------------------------------------

_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_DURATION = r"([\d.]+)(us|ms|s|m|h)"
EXHAUSTED = re.compile(r"^single-use values exhausted: (\d+)$", re.MULTILINE)


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


# -- wrk's Lua scripts ----------------------------------------------------------------------------------------------


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


# -- one case on one server ------------------------------------------------------------------------------------------


def arrive(server: Server, request: Request) -> Request:
    """Where `request.via` sends a browser that has no cookies for `server`: its Location, with the cookies it set.

    Raises:
        BenchError: `via` did not answer with a redirect.
    """
    assert request.via is not None
    url = server.base_url + request.via.path_on(server)
    status, headers, body = http_request(url)
    location = headers.get("Location")
    if status not in REDIRECTS or not location:
        raise BenchError(
            f"{server.name} GET {url}: status {status}, expected a redirect: {body[:300].decode(errors='replace')}"
        )
    target = urllib.parse.urlsplit(urllib.parse.urljoin(url, location))
    if f"{target.scheme}://{target.netloc}" not in (server.base_url, server.discovery.get("issuer")):
        raise BenchError(f"{server.name} GET {url} sends the browser to another server: {location}")
    path = target.path + (f"?{target.query}" if target.query else "")
    cookies = set_cookie_header(headers.get_all("Set-Cookie") or [], path=target.path)
    return dataclasses.replace(
        request, path=path, discovery_field=None, query="", via=None, headers={**request.headers, "Cookie": cookies}
    )


def check_answer(server: Server, request: Request, url: str, status: int, location: str | None, body: bytes) -> None:
    """The probe before a run: the expected status, or a redirect carrying `expect_redirect_with`.

    Raises:
        BenchError: another answer.
    """
    if request.expect_redirect_with is not None:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(location or "").query)
        if status in REDIRECTS and query.get(request.expect_redirect_with):
            return
        expected = f"a redirect with {request.expect_redirect_with}"
        got = f"status {status}" + (f" to {location}" if location else "")
    else:
        if status == request.expect_status:
            return
        expected, got = f"{request.expect_status}", f"status {status}"
    raise BenchError(
        f"{server.name} {request.method} {url}: {got}, expected {expected}: {body[:300].decode(errors='replace')}"
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
    `rate` (requests per second expected) says the run needs, and more if they ran out. A request a browser is sent
    to (`via`) is arrived at once for the run.

    Raises:
        BenchError: a wrong answer, or wrk failed.
    """
    server = target.server
    if request.via is not None:
        request = arrive(server, request)
    url = server.base_url + request.path_on(server)
    if request.fresh is not None and not request.single_use:
        request = request.with_value(target.minter.mint(request.fresh, 1)[0])
    checked = request
    if request.single_use:
        assert request.fresh is not None
        checked = request.with_value(target.minter.mint(request.fresh, 1)[0])
    status, headers, body = http_request(url, method=checked.method, body=checked.body, headers=checked.headers)
    check_answer(server, request, url, status, headers.get("Location"), body)
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
    cpu_before = server.cpu_seconds()
    output = _wrk(command, options.duration)
    return with_cpu(parse_wrk(output, " ".join(command), len(body)), server.cpu_seconds() - cpu_before)


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
        cpu_before = target.server.cpu_seconds()
        output = _wrk(command, seconds)
        result = with_cpu(parse_wrk(output, " ".join(command), 0), target.server.cpu_seconds() - cpu_before)
        measured = result.requests_per_second
        exhausted = EXHAUSTED.search(output)
        if exhausted is None:
            raise BenchError(f"the single-use wrk script did not report:\n{output.strip()}")
        if int(exhausted.group(1)) == 0:
            return dataclasses.replace(result, single_use_values=len(values)), max(measured, 1.0)
        print(f"  {len(values)} single-use values ran out after {result.requests} requests; again with more")
        rate = max(rate, measured) * 2
    raise BenchError(f"{target.label} {request.fresh}: single-use values kept running out")


def with_cpu(result: WrkResult, cpu_seconds: float) -> WrkResult:
    """The result with the server's CPU per request it answered."""
    if result.requests <= 0:
        return result
    return dataclasses.replace(result, server_cpu_ms_per_request=round(cpu_seconds * 1000 / result.requests, 4))


def _wrk(argv: list[str], duration: int) -> str:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30, check=False)
    except subprocess.TimeoutExpired:
        raise BenchError(f"wrk did not finish: {' '.join(argv)}") from None
    if result.returncode != 0:
        raise BenchError(f"wrk failed ({result.returncode}): {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout
