"""Rate limits and lockouts for every guessable secret and costly action, shared by all server processes."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar, cast

from sqlalchemy import Connection, Engine, Executable, Table, bindparam, case, delete, null, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from idp.models import RateLimitCounter

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Limit:
    """At most `count` hits per `window` for one subject of one kind."""

    kind: str
    count: int
    window: dt.timedelta


# docs/carrier.md: 10 starts per IP per minute, 10 sends per phone per day, 5 wrong codes per transaction.
CARRIER_STARTS_PER_IP = Limit("carrier-start-ip", 10, dt.timedelta(minutes=1))
CARRIER_SENDS_PER_PHONE = Limit("carrier-send-phone", 10, dt.timedelta(days=1))
CARRIER_CODES_PER_TXN = Limit("carrier-code-txn", 5, dt.timedelta(minutes=10))


@dataclass(frozen=True, slots=True)
class Backoff:
    """A lockout with exponential back-off: after `free` consecutive failures each further one locks the subject
    for `base` × 2^(n − free − 1), at most `cap`; failures are forgotten `memory` after the last one, or at a success.
    """

    kind: str
    free: int
    base: dt.timedelta
    cap: dt.timedelta
    memory: dt.timedelta = dt.timedelta(days=1)
    # False for subjects shared by many people (an IP address): one success there says nothing about the
    # failures of others, and forgiving them would let a guesser reset the count with an account of their own.
    forgiven_by_success: bool = True

    def delay(self, failures: int) -> dt.timedelta:
        """How long the subject is locked after its `failures`-th consecutive failure."""
        over = failures - self.free
        if over <= 0:
            return dt.timedelta(0)
        # 2**20 × 30 s is past any sensible cap already; a bound keeps the arithmetic small.
        delay: dt.timedelta = self.base * (2 ** min(over - 1, 20))
        return min(self.cap, delay)


# TOTP codes have 10^6 values and three are valid at a time (RFC 6238 with one step either side): 5 free tries,
# then 30 s, 1 min, 2 min … up to an hour keep a guesser under ~30 tries a day per account. The per-IP lock is
# looser because many phones share an address behind carrier-grade NAT; a success there does not forgive it (it
# would let a guesser reset the count with their own account), so its failures are forgotten after an hour.
TOTP_FAILURES_PER_RESIDENT = Backoff("totp-resident", 5, dt.timedelta(seconds=30), dt.timedelta(hours=1))
TOTP_FAILURES_PER_IP = Backoff(
    "totp-ip",
    20,
    dt.timedelta(seconds=30),
    dt.timedelta(hours=1),
    memory=dt.timedelta(hours=1),
    forgiven_by_success=False,
)


class LockedOutError(Exception):
    """Too many failures for this subject: no attempt is judged for `retry_after` seconds."""

    def __init__(self, backoff: Backoff, retry_after: int) -> None:
        super().__init__(f"{backoff.kind}: locked for {retry_after} s")
        self.backoff = backoff
        self.retry_after = retry_after


class RateLimitedError(Exception):
    """Too many hits; `retry_after` seconds until the window ends."""

    def __init__(self, limit: Limit, retry_after: int) -> None:
        super().__init__(f"{limit.kind}: retry after {retry_after} s")
        self.limit = limit
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Slot:
    """One attempt counted as a failure against one subject before it was judged (`RateLimiter.reserve`)."""

    backoff: Backoff
    subject: str
    failures: int  # the subject's failures, this attempt included
    locked_until: dt.datetime | None  # the lock this attempt earned in advance; None within the free failures


class RateLimiter(Protocol):
    """Limits and lockouts, in the database or in Redis.

    Hits (`hit`, `hit_each`, `take_back`) count at once, whatever the caller does next: they are counted before a
    call to the carrier agency, which other requests must not wait for. Lockouts (`reserve`, `release`, `reset`,
    `fail`) count in the caller's transaction when they are given it (`db`; the database limiter, see its class):
    the caller then commits them with its own record of the attempt, a refusal included."""

    def hit(self, limit: Limit, subject: str, *, now: dt.datetime) -> int:
        """Count one hit; the hits in the window so far, this one included.

        Raises:
            RateLimitedError: the hit went over the limit (it is still counted).
        """

    def hit_each(self, hits: Sequence[tuple[Limit, str]], *, now: dt.datetime) -> None:
        """Count one hit of each limit on its subject, in order, in one step, up to the first that goes over its
        limit.

        Raises:
            RateLimitedError: that first one went over (it and those before it stay counted, those after it are not
                counted).
        """

    def take_back(self, limit: Limit, subject: str, *, now: dt.datetime) -> None:
        """Uncount one hit counted at `now` and let through (one that was never judged), in the window it was
        counted in; nothing once that window has ended."""

    def peek(self, limit: Limit, subject: str, *, now: dt.datetime) -> int:
        """The hits in the current window, without counting one."""

    def reset(self, limit: Limit | Backoff, subject: str, *, db: Session | None = None) -> None:
        """Forget the subject's hits or failures (after a success that should reset a lockout)."""

    def reserve(
        self, subjects: Sequence[tuple[Backoff, str]], *, now: dt.datetime, db: Session | None = None
    ) -> tuple[Slot, ...]:
        """Count one attempt as a failure against every subject at once, before it is judged, and lock each subject
        for the back-off that failure earns; a slot per subject, in order.

        One atomic step for all the subjects: of attempts made at the same moment, each sees the failures of those
        before it, so a burst is judged no more often than a sequence.

        Raises:
            LockedOutError: a subject is locked (the first in order is named); nothing was counted.
        """

    def release(self, slot: Slot, *, db: Session | None = None) -> None:
        """Uncount an attempt that did not fail: one failure fewer, and the lock it earned in advance lifted unless
        a later one has replaced it."""

    def fail(self, backoff: Backoff, subject: str, *, now: dt.datetime, db: Session | None = None) -> int:
        """Count one failure and lock the subject for the back-off it earned; the failures so far."""

    def locked_for(self, backoff: Backoff, subject: str, *, now: dt.datetime, db: Session | None = None) -> int:
        """Seconds until the subject may try again; 0 when it is not locked (as `db`'s transaction sees it, when
        given)."""


def judge_attempt(
    limiter: RateLimiter,
    subjects: Sequence[tuple[Backoff, str]],
    attempt: Callable[[], T],
    *,
    failures: tuple[type[Exception], ...],
    now: dt.datetime,
    db: Session | None = None,
) -> T:
    """Count → judge → settle: count the attempt as a failure against every subject first (refused while any is
    locked), then judge it; a failure stays counted, a success is forgiven where `Backoff.forgiven_by_success` and
    uncounted elsewhere, and any other outcome is uncounted. With `db`, all of it in the caller's transaction
    (`RateLimiter`): the caller commits it whatever the outcome.

    Raises:
        LockedOutError: a subject is locked; `attempt` was not called and nothing was counted.
        Any of `failures`: what `attempt` raised, counted.
    """
    slots = limiter.reserve(subjects, now=now, db=db)
    try:
        result = attempt()
    except failures:
        raise
    except Exception:
        # Not a wrong guess (the database went away, an admin locked the account): neither counted nor forgiven.
        for slot in slots:
            limiter.release(slot, db=db)
        raise
    for slot in slots:
        if slot.backoff.forgiven_by_success:
            limiter.reset(slot.backoff, slot.subject, db=db)
        else:
            limiter.release(slot, db=db)
    return result


def counter_key(limit: Limit | Backoff, subject: str, secret: bytes) -> str:
    # Subjects are phone numbers and IPs. A keyed digest: a plain hash of a phone number is undone by trying
    # all 10^8 numbers, so without the key a copy of the table says nothing about who tried.
    return hmac.new(secret, f"{limit.kind}\x00{subject}".encode(), hashlib.sha256).hexdigest()


def window_start(limit: Limit, now: dt.datetime) -> dt.datetime:
    seconds = limit.window.total_seconds()
    start = math.floor(now.timestamp() / seconds) * seconds
    return dt.datetime.fromtimestamp(start, dt.UTC)


def retry_after(limit: Limit, now: dt.datetime) -> int:
    end = window_start(limit, now) + limit.window
    return max(1, math.ceil((end - now).total_seconds()))


COUNTER = cast(Table, RateLimitCounter.__table__)
READ_COUNTER = select(COUNTER.c.count, COUNTER.c.window_start, COUNTER.c.locked_until).where(
    COUNTER.c.key == bindparam("counter")
)
FORGET = delete(COUNTER).where(COUNTER.c.key == bindparam("counter"))
LOCK = update(COUNTER).where(COUNTER.c.key == bindparam("counter")).values(locked_until=bindparam("until"))
# A hit given back only within the window it was counted in; never below nothing.
TAKE_BACK = (
    update(COUNTER)
    .where(COUNTER.c.key == bindparam("counter"), COUNTER.c.window_start == bindparam("start"), COUNTER.c.count > 0)
    .values(count=COUNTER.c.count - 1)
)
UNCOUNT = (
    update(COUNTER).where(COUNTER.c.key == bindparam("counter"), COUNTER.c.count > 0).values(count=COUNTER.c.count - 1)
)
# The lock an attempt earned in advance is lifted only while it is still that lock (a later attempt's stays).
UNCOUNT_AND_UNLOCK = (
    update(COUNTER)
    .where(COUNTER.c.key == bindparam("counter"), COUNTER.c.count > 0)
    .values(
        count=COUNTER.c.count - 1,
        locked_until=case((COUNTER.c.locked_until == bindparam("until"), null()), else_=COUNTER.c.locked_until),
    )
)


class DatabaseRateLimiter:
    """Fixed-window counters and back-off locks in the database, in statements built once.

    Hits are committed at once, in a transaction of their own: they are counted before the carrier agency is called,
    and other requests must see them while it answers (a request never holds a transaction open across that call).

    Lockouts run in the caller's transaction when `db` is given, so an attempt's counting, its settling and the
    request's own writes (the sign-in, the audit event) are one transaction. The counter rows an attempt counts
    against stay locked until that transaction ends (a row lock on PostgreSQL; SQLite has one writer), so an attempt
    on the same subject at the same moment waits for it and then sees its count: still counted first, judged after.
    The caller commits on every outcome, a refusal included; a request that rolls back (a crash, the database gone)
    counted nothing, as `judge_attempt` uncounts any outcome other than a failure. Without `db`, each call is a
    transaction of its own.
    """

    def __init__(self, engine: Engine, secret: bytes) -> None:
        self.engine = engine
        self.secret = secret
        self._insert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert
        self._hit = self._hit_statement()
        self._fail = self._fail_statement()
        # By the number of subjects an attempt counts against (two for a TOTP sign-in): built on first use.
        self._take_rows: dict[int, Executable] = {}
        self._count_rows: dict[int, Executable] = {}

    def _run(self, db: Session | None, work: Callable[[Connection], T]) -> T:
        """`work` in the caller's transaction, or in one of its own that commits."""
        if db is not None:
            return work(db.connection())
        with self.engine.begin() as connection:
            return work(connection)

    # -- hits ----------------------------------------------------------------------------------------------------

    def _hit_statement(self) -> Executable:
        values = self._insert(COUNTER).values(
            key=bindparam("counter"), window_start=bindparam("start"), count=1, expires_at=bindparam("end")
        )
        # One statement, so concurrent processes never lose a hit: a new window restarts the count at 1.
        same_window = COUNTER.c.window_start == values.excluded.window_start
        return values.on_conflict_do_update(
            index_elements=[COUNTER.c.key],
            set_={
                "count": case((same_window, COUNTER.c.count + 1), else_=1),
                "window_start": values.excluded.window_start,
                "expires_at": values.excluded.expires_at,
            },
        ).returning(COUNTER.c.count)

    def _count_hit(self, connection: Connection, limit: Limit, subject: str, now: dt.datetime) -> int:
        start = window_start(limit, now)
        parameters = {"counter": counter_key(limit, subject, self.secret), "start": start, "end": start + limit.window}
        return int(connection.execute(self._hit, parameters).scalar_one())

    def hit(self, limit: Limit, subject: str, *, now: dt.datetime) -> int:
        with self.engine.begin() as connection:
            count = self._count_hit(connection, limit, subject, now)
        if count > limit.count:
            raise RateLimitedError(limit, retry_after(limit, now))
        return count

    def hit_each(self, hits: Sequence[tuple[Limit, str]], *, now: dt.datetime) -> None:
        over: Limit | None = None
        with self.engine.begin() as connection:
            for limit, subject in hits:
                if self._count_hit(connection, limit, subject, now) > limit.count:
                    over = limit
                    break
        if over is not None:
            raise RateLimitedError(over, retry_after(over, now))

    def take_back(self, limit: Limit, subject: str, *, now: dt.datetime) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                TAKE_BACK,
                {"counter": counter_key(limit, subject, self.secret), "start": window_start(limit, now)},
            )

    def peek(self, limit: Limit, subject: str, *, now: dt.datetime) -> int:
        with self.engine.connect() as connection:
            row = connection.execute(READ_COUNTER, {"counter": counter_key(limit, subject, self.secret)}).first()
        if row is None or _aware(row[1]) != window_start(limit, now):
            return 0
        return int(row[0])

    def reset(self, limit: Limit | Backoff, subject: str, *, db: Session | None = None) -> None:
        key = counter_key(limit, subject, self.secret)
        self._run(db, lambda connection: connection.execute(FORGET, {"counter": key}))

    # -- lockouts ------------------------------------------------------------------------------------------------

    def _rows(self, subjects: int, *, count: bool) -> Executable:
        """The counters of `subjects` subjects (parameters key_N and memory_N, and now), in one statement: taken
        (inserted when missing, locked either way) with their locks read back, or `count`ed.

        Written out as SQL (the same for PostgreSQL and SQLite): SQLAlchemy compiles an INSERT of several rows
        again for every execution, which cost more than the rest of a TOTP sign-in's counting."""
        built = (self._count_rows if count else self._take_rows).get(subjects)
        if built is not None:
            return built
        rows = ", ".join(f"(:key_{n}, :now, 0, :memory_{n})" for n in range(subjects))
        if count:
            # The rows are taken already, none of them locked: an expired memory starts again at 1.
            change = (
                "count = CASE WHEN rate_limit_counter.expires_at > :now THEN rate_limit_counter.count + 1 ELSE 1 END, "
                "expires_at = excluded.expires_at"
            )
            read = COUNTER.c.count
        else:
            # Changes nothing in a row that exists, but takes it (the row lock, or SQLite's write lock) before any
            # count is read or written.
            change = "count = rate_limit_counter.count"
            read = COUNTER.c.locked_until
        statement = (
            text(
                f'INSERT INTO rate_limit_counter ("key", window_start, count, expires_at) VALUES {rows} '  # noqa: S608  (constants and parameter names, no input)
                f'ON CONFLICT ("key") DO UPDATE SET {change} RETURNING "key", {read.name}'
            )
            .bindparams(
                bindparam("now", type_=COUNTER.c.window_start.type),
                *(bindparam(f"key_{n}", type_=COUNTER.c.key.type) for n in range(subjects)),
                *(bindparam(f"memory_{n}", type_=COUNTER.c.expires_at.type) for n in range(subjects)),
            )
            .columns(COUNTER.c.key, read)
        )
        (self._count_rows if count else self._take_rows)[subjects] = statement
        return statement

    def reserve(
        self, subjects: Sequence[tuple[Backoff, str]], *, now: dt.datetime, db: Session | None = None
    ) -> tuple[Slot, ...]:
        keys = [counter_key(backoff, subject, self.secret) for backoff, subject in subjects]
        # Rows in key order, so two attempts over the same subjects cannot deadlock.
        order = sorted(range(len(keys)), key=keys.__getitem__)
        parameters: dict[str, object] = {"now": now}
        for position, index in enumerate(order):
            parameters[f"key_{position}"] = keys[index]
            parameters[f"memory_{position}"] = now + subjects[index][0].memory

        def count(connection: Connection) -> tuple[Slot, ...]:
            # First every row taken and its lock read: a locked subject refuses the attempt before anything is
            # counted against any subject. Then the count, which no other attempt can read in between.
            locks: dict[str, dt.datetime | None] = {
                key: until for key, until in connection.execute(self._rows(len(keys), count=False), parameters)
            }
            for index, (backoff, _) in enumerate(subjects):
                until = locks[keys[index]]
                if until is not None and _aware(until) > now:
                    raise LockedOutError(backoff, _seconds_until(_aware(until), now))
            counts: dict[str, int] = {
                key: count for key, count in connection.execute(self._rows(len(keys), count=True), parameters)
            }
            slots = []
            for index, (backoff, subject) in enumerate(subjects):
                failures = int(counts[keys[index]])
                delay = backoff.delay(failures)
                lock = now + delay if delay else None
                if lock is not None:
                    connection.execute(LOCK, {"counter": keys[index], "until": lock})
                slots.append(Slot(backoff, subject, failures, lock))
            return tuple(slots)

        return self._run(db, count)

    def release(self, slot: Slot, *, db: Session | None = None) -> None:
        key = counter_key(slot.backoff, slot.subject, self.secret)
        if slot.locked_until is None:
            self._run(db, lambda connection: connection.execute(UNCOUNT, {"counter": key}))
        else:
            parameters = {"counter": key, "until": slot.locked_until}
            self._run(db, lambda connection: connection.execute(UNCOUNT_AND_UNLOCK, parameters))

    def _fail_statement(self) -> Executable:
        values = self._insert(COUNTER).values(
            key=bindparam("counter"), window_start=bindparam("now"), count=1, expires_at=bindparam("memory")
        )
        # One statement for the count, so concurrent failures are never lost; an expired memory starts again at 1.
        return values.on_conflict_do_update(
            index_elements=[COUNTER.c.key],
            set_={
                "count": case((COUNTER.c.expires_at > bindparam("now"), COUNTER.c.count + 1), else_=1),
                "expires_at": values.excluded.expires_at,
            },
        ).returning(COUNTER.c.count)

    def fail(self, backoff: Backoff, subject: str, *, now: dt.datetime, db: Session | None = None) -> int:
        key = counter_key(backoff, subject, self.secret)

        def count(connection: Connection) -> int:
            failures = int(
                connection.execute(
                    self._fail, {"counter": key, "now": now, "memory": now + backoff.memory}
                ).scalar_one()
            )
            delay = backoff.delay(failures)
            if delay:
                connection.execute(LOCK, {"counter": key, "until": now + delay})
            return failures

        return self._run(db, count)

    def locked_for(self, backoff: Backoff, subject: str, *, now: dt.datetime, db: Session | None = None) -> int:
        key = counter_key(backoff, subject, self.secret)
        row = self._run(db, lambda connection: connection.execute(READ_COUNTER, {"counter": key}).first())
        until = row[2] if row is not None else None
        if until is None or _aware(until) <= now:
            return 0
        return _seconds_until(_aware(until), now)

    def purge(self, *, now: dt.datetime) -> int:
        """Drop counters whose window has ended."""
        with self.engine.begin() as connection:
            result = connection.execute(delete(COUNTER).where(COUNTER.c.expires_at < now))
        return int(result.rowcount)


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _seconds_until(until: dt.datetime, now: dt.datetime) -> int:
    # Rounded up, never "retry in 0 seconds" while still locked.
    return max(1, math.ceil((until - now).total_seconds()))


# Lua runs atomically in Redis: no other client's command comes between its reads and writes.
# KEYS: each subject's failure count, then its lock. ARGV: now in milliseconds, then each subject's free failures,
# back-off base and cap (milliseconds) and memory (seconds). Answers {"locked", subject number, lock} when a subject
# is locked (nothing counted), else {"counted", failures, lock or "", …} per subject, locks in seconds as
# locked_for reads them.
_RESERVE = """
local now = tonumber(ARGV[1])
local subjects = #KEYS / 2
for i = 1, subjects do
  local lock = redis.call('GET', KEYS[2 * i])
  if lock and tonumber(lock) * 1000 > now then
    return {'locked', i, lock}
  end
end
local answer = {'counted'}
for i = 1, subjects do
  local free, base = tonumber(ARGV[4 * i - 2]), tonumber(ARGV[4 * i - 1])
  local cap, memory = tonumber(ARGV[4 * i]), tonumber(ARGV[4 * i + 1])
  local failures = redis.call('INCR', KEYS[2 * i - 1])
  redis.call('EXPIRE', KEYS[2 * i - 1], memory)
  local lock = ''
  if failures > free then
    local delay = math.min(cap, base * 2 ^ math.min(failures - free - 1, 20))
    lock = string.format('%.3f', (now + delay) / 1000)
    redis.call('SET', KEYS[2 * i], lock, 'PX', math.max(1, math.ceil(delay)))
  end
  table.insert(answer, failures)
  table.insert(answer, lock)
end
return answer
"""
# KEYS: the failure count and the lock of one subject. ARGV: the lock the attempt earned, or "".
_RELEASE = """
local failures = redis.call('GET', KEYS[1])
if failures and tonumber(failures) > 0 then
  redis.call('DECR', KEYS[1])
end
if ARGV[1] ~= '' and redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('DEL', KEYS[2])
end
return 0
"""
# KEYS: one window's hit count. A window that has ended (its key expired) is not brought back at -1.
_TAKE_BACK = """
local hits = redis.call('GET', KEYS[1])
if hits and tonumber(hits) > 0 then
  redis.call('DECR', KEYS[1])
end
return 0
"""


class RedisRateLimiter:
    """Fixed-window counters in Redis (`IDP_RATELIMIT_STORAGE=redis://…`), for a fleet. Every call counts at once,
    atomically in Redis; a caller's database transaction (`db`) plays no part."""

    def __init__(self, url: str, secret: bytes) -> None:
        import redis

        self.client = redis.Redis.from_url(url)
        self.secret = secret
        self._reserve = self.client.register_script(_RESERVE)
        self._release = self.client.register_script(_RELEASE)
        self._take_back = self.client.register_script(_TAKE_BACK)

    def _key(self, limit: Limit, subject: str, now: dt.datetime) -> str:
        return f"idp:rl:{counter_key(limit, subject, self.secret)}:{int(window_start(limit, now).timestamp())}"

    def hit(self, limit: Limit, subject: str, *, now: dt.datetime) -> int:
        key = self._key(limit, subject, now)
        pipe = self.client.pipeline()
        pipe.incr(key)
        pipe.expire(key, int(limit.window.total_seconds()) + 1)
        count = int(pipe.execute()[0])
        if count > limit.count:
            raise RateLimitedError(limit, retry_after(limit, now))
        return count

    def hit_each(self, hits: Sequence[tuple[Limit, str]], *, now: dt.datetime) -> None:
        for limit, subject in hits:
            self.hit(limit, subject, now=now)

    def take_back(self, limit: Limit, subject: str, *, now: dt.datetime) -> None:
        self._take_back(keys=[self._key(limit, subject, now)])

    def peek(self, limit: Limit, subject: str, *, now: dt.datetime) -> int:
        value = self.client.get(self._key(limit, subject, now))
        return int(value) if value is not None else 0

    def reset(self, limit: Limit | Backoff, subject: str, *, db: Session | None = None) -> None:
        if isinstance(limit, Backoff):
            base = self._backoff_key(limit, subject)
            self.client.delete(f"{base}:n", f"{base}:until")
            return
        # Only the current window matters; older keys expire on their own.
        self.client.delete(self._key(limit, subject, dt.datetime.now(dt.UTC)))

    def _backoff_key(self, backoff: Backoff, subject: str) -> str:
        return f"idp:lock:{counter_key(backoff, subject, self.secret)}"

    def reserve(
        self, subjects: Sequence[tuple[Backoff, str]], *, now: dt.datetime, db: Session | None = None
    ) -> tuple[Slot, ...]:
        keys: list[str] = []
        arguments: list[str | int] = [_milliseconds(now)]
        for backoff, subject in subjects:
            base = self._backoff_key(backoff, subject)
            keys += [f"{base}:n", f"{base}:until"]
            arguments += [
                backoff.free,
                _milliseconds(backoff.base),
                _milliseconds(backoff.cap),
                math.ceil(backoff.memory.total_seconds()),
            ]
        answer = self._reserve(keys=keys, args=arguments)
        if answer[0] == b"locked":
            backoff = subjects[int(answer[1]) - 1][0]
            raise LockedOutError(backoff, self._wait(float(answer[2]), now))
        slots = []
        for index, (backoff, subject) in enumerate(subjects):
            failures, lock = int(answer[1 + 2 * index]), answer[2 + 2 * index].decode()
            until = dt.datetime.fromtimestamp(float(lock), dt.UTC) if lock else None
            slots.append(Slot(backoff, subject, failures, until))
        return tuple(slots)

    def release(self, slot: Slot, *, db: Session | None = None) -> None:
        base = self._backoff_key(slot.backoff, slot.subject)
        # The lock as the script wrote it: it is lifted only while it is still the one this attempt earned.
        lock = f"{slot.locked_until.timestamp():.3f}" if slot.locked_until is not None else ""
        self._release(keys=[f"{base}:n", f"{base}:until"], args=[lock])

    def fail(self, backoff: Backoff, subject: str, *, now: dt.datetime, db: Session | None = None) -> int:
        base = self._backoff_key(backoff, subject)
        memory = int(backoff.memory.total_seconds())
        pipe = self.client.pipeline()
        pipe.incr(f"{base}:n")
        pipe.expire(f"{base}:n", memory)
        count = int(pipe.execute()[0])
        delay = backoff.delay(count)
        if delay:
            until = now + delay
            self.client.set(f"{base}:until", until.timestamp(), ex=max(1, math.ceil(delay.total_seconds())))
        return count

    def locked_for(self, backoff: Backoff, subject: str, *, now: dt.datetime, db: Session | None = None) -> int:
        value = self.client.get(f"{self._backoff_key(backoff, subject)}:until")
        if value is None:
            return 0
        return self._wait(float(value), now)

    @staticmethod
    def _wait(until: float, now: dt.datetime) -> int:
        remaining = until - now.timestamp()
        return max(1, math.ceil(remaining)) if remaining > 0 else 0


def _milliseconds(value: dt.datetime | dt.timedelta) -> int:
    seconds = value.timestamp() if isinstance(value, dt.datetime) else value.total_seconds()
    return round(seconds * 1000)


def make_rate_limiter(storage: str, engine: Engine, *, secret: str) -> RateLimiter:
    """The limiter IDP_RATELIMIT_STORAGE names: `database` (default) or a `redis://` URL; `secret` keys its keys."""
    key = hashlib.sha256(b"idp rate limits\x00" + secret.encode()).digest()
    if storage.startswith(("redis://", "rediss://", "unix://")):
        return RedisRateLimiter(storage, key)
    return DatabaseRateLimiter(engine, key)
