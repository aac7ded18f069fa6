"""Bounded waits for what happens in another process or thread: a server starting, a delivery arriving.

Tests never sleep to let time pass (time is injected); only a wait for another process, which no clock of ours
moves, polls, and always through `wait_until`, which says what it waited for when it gives up.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

POLL_INTERVAL = 0.05


def wait_until(
    check: Callable[[], T],
    *,
    timeout: float,
    waiting_for: str,
    interval: float = POLL_INTERVAL,
    ignoring: tuple[type[BaseException], ...] = (),
    detail: Callable[[], str] | None = None,
) -> T:
    """Call `check` until it returns something true, and return that.

    Exceptions of the `ignoring` types mean "not yet" (a server that does not accept connections yet); any other
    ends the wait (a check may raise to say that waiting longer is useless, such as for a process that exited).

    Raises:
        AssertionError: `timeout` seconds passed, naming `waiting_for` and adding `detail()` (a server's log, say).
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
        except ignoring:
            result = None  # type: ignore[assignment]  # "not yet"; the loop returns only a true result
        if result:
            return result
        if time.monotonic() >= deadline:
            message = f"gave up after {timeout:g} s waiting for {waiting_for}"
            raise AssertionError(f"{message}\n{detail()}" if detail is not None else message)
        time.sleep(interval)
