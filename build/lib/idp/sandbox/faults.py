"""Injected faults: the sandbox agency pretends to be down, slow, timing out, or to sign corrupt results."""

from __future__ import annotations

import enum
import threading
from dataclasses import dataclass

TIMEOUT_DELAY = 10.0  # seconds: longer than any sensible client timeout, so the IdP gives up first
SLOW_DELAY = 2.0  # seconds: slow, yet within the IdP client's timeout


class FaultMode(enum.StrEnum):
    NONE = "none"
    DOWN = "down"  # /v1/verifications* answer 503 agency_unavailable
    TIMEOUT = "timeout"  # sleep TIMEOUT_DELAY, then answer normally
    SLOW = "slow"  # sleep SLOW_DELAY, then answer normally
    CORRUPT = "corrupt"  # results carry a signature that does not verify


@dataclass(frozen=True, slots=True)
class FaultState:
    mode: FaultMode
    remaining: int | None  # None: until cleared

    def to_json(self) -> dict[str, object]:
        return {"mode": self.mode.value, "remaining": self.remaining}


class Faults:
    """The current fault and how many more times it applies.

    `down`, `timeout` and `slow` are counted per /v1/verifications* request. `corrupt` is counted per result
    issued, since a request that carries no result (a start, a pending poll) has nothing to corrupt.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = FaultState(FaultMode.NONE, None)

    def set(self, mode: FaultMode, count: int | None = None) -> FaultState:
        with self._lock:
            self._state = FaultState(mode, None if mode is FaultMode.NONE else count)
            return self._state

    def clear(self) -> None:
        self.set(FaultMode.NONE)

    def current(self) -> FaultState:
        with self._lock:
            return self._state

    def take_request_fault(self) -> FaultMode:
        """The fault that applies to this request (down, timeout, slow or none), counting it."""
        return self._take(frozenset({FaultMode.DOWN, FaultMode.TIMEOUT, FaultMode.SLOW}))

    def take_corruption(self) -> bool:
        """Whether the result about to be sent must be corrupted, counting it."""
        return self._take(frozenset({FaultMode.CORRUPT})) is FaultMode.CORRUPT

    def _take(self, modes: frozenset[FaultMode]) -> FaultMode:
        with self._lock:
            state = self._state
            if state.mode not in modes:
                return FaultMode.NONE
            if state.remaining is not None:
                remaining = state.remaining - 1
                self._state = FaultState(FaultMode.NONE, None) if remaining <= 0 else FaultState(state.mode, remaining)
            return state.mode
