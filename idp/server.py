"""The production WSGI server: granian (measured about 3x gunicorn's gthread worker on the JWKS, one core each).

granian's `backpressure` limits the connections a worker holds, not the requests it runs, and an idle keep-alive
connection keeps its place until it closes. With backpressure at the thread count (8), 16 clients that had each
loaded one page and kept the connection open, as browsers do, left every new request of a 2-worker server
unanswered for the 30 s of the keep-alive timeout. So here the threads alone bound how much Python runs at once, the
connection limit is set by file descriptors and memory rather than by the threads, and idle connections close
after a short keep-alive timeout.
"""

from __future__ import annotations

import resource

from flask import Flask
from granian import Granian
from granian.constants import HTTPModes, Interfaces
from granian.http import HTTP1Settings
from granian.log import LogLevels

# Threads per worker that run the app: enough to wait on the database and the carrier agency (seconds at
# worst) without queueing, few enough that the GIL is not fought over (granian would allow 512). Requests beyond
# them wait inside the worker for a free thread; 2, 8 or 32 threads served the JWKS equally fast. A thread also reads
# its request's body as the client sends it, with no time limit (granian has none), so the proxy in front must
# buffer bodies: 24 clients stalled halfway through a POST held every thread of 2 workers for as long as they stayed.
THREADS_PER_WORKER = 8

# Connections one worker holds at once, idle keep-alive ones included. An idle connection costs a file descriptor
# and about 15 kB (1,500 idle connections added 22 MB to two workers), so thousands are cheap; past the limit, new
# connections wait in the kernel's listen backlog until one closes.
MAX_CONNECTIONS_PER_WORKER = 4096

# File descriptors a worker keeps for other things than client connections (the database pool, Redis, logs, the
# keyring, calls to the carrier agency). A worker out of descriptors stops accepting, as at its connection limit.
RESERVED_FILE_DESCRIPTORS = 256

# Seconds a connection may wait for its next request's headers (its first one's too) before the server closes it.
# Enough for a page and its assets to share one connection; short, so that a crowd of browsers leaves few idle
# connections behind, and a client that sends nothing soon gives its place back. A load balancer that keeps
# connections to the IdP open must close them sooner than this (docs/admin.md, "Workers, threads and keep-alive").
KEEP_ALIVE_TIMEOUT = 5


def run(
    *,
    host: str,
    port: int,
    workers: int,
    threads: int = THREADS_PER_WORKER,
    keep_alive_timeout: int = KEEP_ALIVE_TIMEOUT,
) -> None:
    """Serve until stopped. Each worker builds its own app from the same IDP_* environment."""
    Granian(
        "idp.server:create_served_app",
        factory=True,
        address=host,
        port=port,
        interface=Interfaces.WSGI,
        workers=workers,
        blocking_threads=threads,
        backpressure=connection_limit(),
        # HTTP/1 only: the keep-alive timeout does not apply to HTTP/2, whose idle connections (cleartext, from any
        # client that asks) stayed open past 60 s, each holding a place. Browsers and proxies speak HTTP/1.1 here.
        http=HTTPModes.http1,
        http1_settings=HTTP1Settings(header_read_timeout=keep_alive_timeout * 1000),
        respawn_failed_workers=True,
        # The IdP logs each request itself, without query strings (they carry hints and states).
        log_access=False,
        log_level=LogLevels.warning,
    ).serve()


def connection_limit() -> int:
    """MAX_CONNECTIONS_PER_WORKER, after raising this process's file descriptor limit to fit it (the workers
    inherit it); fewer if the hard limit is lower. systemd starts services with a soft limit of 1024 (granian
    2.8.9 itself raises it to the hard limit on import; this does not count on that)."""
    wanted = MAX_CONNECTIONS_PER_WORKER + RESERVED_FILE_DESCRIPTORS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        raised = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
        except (OSError, ValueError):
            pass
    available = wanted if soft == resource.RLIM_INFINITY else soft
    return max(THREADS_PER_WORKER, min(MAX_CONNECTIONS_PER_WORKER, available - RESERVED_FILE_DESCRIPTORS))


def create_served_app() -> Flask:
    """The app as `idp serve` runs it: with the background work a long-running process owns (the retries of
    back-channel logout tokens, the purge of expired records), which tests and one-off scripts do not start."""
    from idp import create_app, runtime
    from idp.retention import PurgeWorker

    app = create_app()
    built = runtime.of(app)
    built.logout.start()
    PurgeWorker(built.sessions).start()
    return app
