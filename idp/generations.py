"""Per-process caches kept true by generation counters in the database: a change bumps its generation in the same
transaction; the process that commits it forgets at once, every other process when it next reads the counter (at
most `check_interval` later)."""

from __future__ import annotations

import math
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from sqlalchemy import bindparam, event, select, update
from sqlalchemy.orm import Session

from idp.models import CacheGeneration

# The generations there are (CacheGeneration rows, made by the migrations).
CLIENT_GENERATION = "client"  # the clients' registrations (oidc.clients.ClientCache)

READ_GENERATION = select(CacheGeneration.value).where(CacheGeneration.name == bindparam("generation"))
BUMP_GENERATION = (
    update(CacheGeneration)
    .where(CacheGeneration.name == bindparam("generation"))
    .values(value=CacheGeneration.value + 1)
)
BUMPED = "idp.generations.bumped"  # Session.info key: the generations this transaction moved

# ORM classes whose changes move generations: class → (names when one is added, names when one changes or goes).
_WATCHED: dict[type[Any], tuple[tuple[str, ...], tuple[str, ...]]] = {}
_CACHES: weakref.WeakSet[GenerationCache] = weakref.WeakSet()


class GenerationCache:
    """The base of a per-process cache that holds while its generation stays: `check` reads the counter at most once
    per `check_interval` and calls `clear` when it moved; a commit of this process that bumped it clears at once."""

    def __init__(self, generation: str, *, check_interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.generation = generation
        self.check_interval = check_interval
        self._clock = clock
        self._value: int | None = None
        self._checked_at = -math.inf
        self._lock = threading.Lock()
        _CACHES.add(self)

    def clear(self) -> None:
        """Forget every entry (subclasses drop their own, then call this)."""
        self._checked_at = -math.inf

    def check(self, db: Session) -> None:
        """Read the generation if the interval passed since the last read, and forget everything if it moved."""
        now = self._clock()
        if now - self._checked_at < self.check_interval:
            return
        with self._lock:
            if now - self._checked_at < self.check_interval:
                return
            value = db.execute(READ_GENERATION, {"generation": self.generation}).scalar()
            if value != self._value:
                self.clear()
                self._value = value
            self._checked_at = now


def bump(db: Session, *generations: str) -> None:
    """Move `generations` in the session's transaction: every cache of them forgets once it is committed."""
    connection = db.connection()  # not db.execute: this may run inside a flush
    for name in generations:
        connection.execute(BUMP_GENERATION, {"generation": name})
    db.info.setdefault(BUMPED, set()).update(generations)


def watch(model: type[Any], *, on_add: tuple[str, ...] = (), on_change: tuple[str, ...] = ()) -> None:
    """Bump `on_add` when a `model` is added through the ORM, `on_change` when one is changed or deleted."""
    _WATCHED[model] = (on_add, on_change)


@event.listens_for(Session, "before_flush")
def _bump_watched(db: Session, _context: Any, _instances: Any) -> None:
    moved: set[str] = set()
    for instances, which in ((db.new, 0), (db.dirty, 1), (db.deleted, 1)):
        for obj in instances:
            names = _WATCHED.get(type(obj))
            if names is not None:
                moved.update(names[which])
    if moved:
        bump(db, *sorted(moved))


@event.listens_for(Session, "after_commit")
def _forget_in_this_process(db: Session) -> None:
    bumped: set[str] = db.info.pop(BUMPED, set())
    if bumped:
        for cache in list(_CACHES):
            if cache.generation in bumped:
                cache.clear()


@event.listens_for(Session, "after_rollback")
def _nothing_moved(db: Session) -> None:
    db.info.pop(BUMPED, None)
