"""A burst of attempts from several worker processes at once, each through the service functions and the limiter
the server would use, on one database (and one Redis): what a fleet of `idp serve` workers does under a guesser.

Each worker process runs a few threads; every thread waits on one barrier shared by all of them, then makes one
attempt. The outcome of each attempt comes back as a word: `judged` (the code was checked, or the agency was
asked) or `refused` (a lockout or limit turned it away unjudged); anything else comes back as its repr.
"""

from __future__ import annotations

import datetime as dt
import multiprocessing
import queue
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

PROCESSES = 4
LIMITER_SECRET = "burst limiter secret"
# Long enough for the spawned workers to import the app on a busy machine before the barrier gives up.
BARRIER_TIMEOUT = 120.0
AGENCY_ROUND_TRIP = 0.05  # seconds: what a call to a real agency costs at least
PRELOAD = ["idp.authn.totp", "idp.authn.recovery", "idp.authn.verification", "cryptography.fernet", "redis"]


@dataclass(frozen=True)
class Burst:
    """One burst: what each attempt is (`kind`), where it counts, and each attempt's own arguments."""

    kind: str  # "totp", "recovery", "carrier-code", "carrier-start-sms", "carrier-start-app"
    database_url: str
    storage: str  # IDP_RATELIMIT_STORAGE: "database" or a redis:// URL
    now: dt.datetime
    attempts: list[dict[str, str]]
    data_key: str = ""
    recovery_key: bytes = b""
    options: dict[str, str] = field(default_factory=dict)


def run_burst(burst: Burst) -> Counter[str]:
    """Run every attempt of `burst` at once across PROCESSES worker processes; how many ended how."""
    # A fork server that imported the app once forks each worker: quicker than spawning, and unlike a plain fork
    # it shares no connection or thread of the test process.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["parallel_attempts", *PRELOAD])
    barrier = context.Barrier(len(burst.attempts), timeout=BARRIER_TIMEOUT)
    results: multiprocessing.Queue[list[str]] = context.Queue()
    workers = [
        context.Process(target=_worker, args=(burst, burst.attempts[index::PROCESSES], barrier, results))
        for index in range(PROCESSES)
    ]
    for worker in workers:
        worker.start()
    outcomes: list[str] = []
    try:
        for _ in workers:
            outcomes.extend(results.get(timeout=BARRIER_TIMEOUT + 60))
    except queue.Empty:
        outcomes.append("a worker never answered")
    for worker in workers:
        worker.join(timeout=30)
        if worker.is_alive():
            worker.kill()
            worker.join()
    return Counter(outcomes)


def _worker(
    burst: Burst,
    attempts: list[dict[str, str]],
    barrier: threading.Barrier,
    results: multiprocessing.Queue[list[str]],
) -> None:
    from idp.authn.lockout import make_rate_limiter
    from idp.db import make_engine

    engine = make_engine(burst.database_url)
    limiter = make_rate_limiter(burst.storage, engine, secret=LIMITER_SECRET)
    outcomes: list[str] = []
    lock = threading.Lock()

    def attempt(arguments: dict[str, str]) -> None:
        try:
            barrier.wait()
            outcome = _attempt(burst, arguments, engine, limiter)
        except Exception as error:  # sent back to the test, which shows it
            outcome = repr(error)
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=attempt, args=(arguments,)) for arguments in attempts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    results.put(outcomes)
    engine.dispose()


def _attempt(burst: Burst, arguments: dict[str, str], engine: Any, limiter: Any) -> str:
    from sqlalchemy.orm import Session

    with Session(engine) as db:
        if burst.kind in ("totp", "recovery"):
            outcome = _sign_in_with_code(db, burst, arguments, limiter)
        else:
            outcome = _carrier(db, burst, arguments, limiter)
        db.commit()
    return outcome


def _sign_in_with_code(db: Any, burst: Burst, arguments: dict[str, str], limiter: Any) -> str:
    from cryptography.fernet import Fernet

    from idp.authn.lockout import LockedOutError
    from idp.authn.recovery import recovery_check
    from idp.authn.totp import TotpError, authenticate, totp_check
    from idp.models import Resident

    resident = db.get(Resident, uuid.UUID(arguments["resident"])) if arguments.get("resident") else None
    code = arguments["code"]
    if burst.kind == "recovery":
        check = recovery_check(db, code, key=burst.recovery_key, now=burst.now)
    else:
        check = totp_check(db, code, cipher=Fernet(burst.data_key.encode()), now=burst.now)
    try:
        authenticate(
            db,
            limiter,
            resident,
            check,
            code=code,
            subject=arguments["subject"],
            client_ip=arguments["client_ip"],
            now=burst.now,
        )
    except LockedOutError:
        return "refused"
    except TotpError:
        # Raised by the check (for a number with no authenticator, after the same check): judged.
        return "judged"
    return "signed in"


class _WrongCodeAgency:
    """A CarrierGateway whose every code is wrong and whose every start succeeds, each after a network round trip."""

    def start(self, request: Any) -> Any:
        from idp.authn.carrier import Transaction

        time.sleep(AGENCY_ROUND_TRIP)
        expires = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=3)
        return Transaction(uuid.uuid4().hex, request.method, expires, None, None, None)

    def confirm_code(self, txn_id: str, code: str) -> Any:
        from idp.authn.carrier import CarrierErrorCode, CarrierVerificationError

        time.sleep(AGENCY_ROUND_TRIP)
        raise CarrierVerificationError(CarrierErrorCode.WRONG_CODE, attempts_remaining=1)

    def poll(self, txn_id: str) -> Any:
        raise NotImplementedError

    def resend(self, txn_id: str) -> Any:
        raise NotImplementedError

    def cancel(self, txn_id: str) -> None:
        raise NotImplementedError


def _carrier(db: Any, burst: Burst, arguments: dict[str, str], limiter: Any) -> str:
    from idp.authn.carrier import (
        CarrierErrorCode,
        CarrierVerificationError,
        VerificationMethod,
        VerificationRequest,
    )
    from idp.authn.verification import CarrierSignIn, confirm_code, start_verification
    from idp.models import Carrier

    service = CarrierSignIn(gateway=_WrongCodeAgency(), limiter=limiter, issuer="http://localhost", ci_pepper="p")
    refusals = (CarrierErrorCode.RATE_LIMITED, CarrierErrorCode.TOO_MANY_ATTEMPTS)
    try:
        if burst.kind == "carrier-code":
            confirm_code(
                db,
                service,
                arguments["txn"],
                "000000",
                binding_secret="b",
                client_ip=arguments["client_ip"],
                now=burst.now,
            )
        else:
            method = VerificationMethod.APP if burst.kind == "carrier-start-app" else VerificationMethod.SMS
            request = VerificationRequest(
                carrier=Carrier.SKT,
                name="김경기",
                birthdate=dt.date(1985, 3, 14),
                rrn_digit7="1",
                phone=arguments["phone"],
                method=method,
                session_binding="binding",
                client_ip=arguments["client_ip"],
            )
            start_verification(db, service, request, now=burst.now)
            return "judged"
    except CarrierVerificationError as error:
        return "refused" if error.code in refusals else "judged"
    return "verified"
