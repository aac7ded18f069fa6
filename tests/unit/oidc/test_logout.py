"""Logout without HTTP: ending a login session queues logout tokens for the services that took part, the tokens'
claims (Back-Channel Logout 1.0 §2.4), and delivery from the table with a fake sender: retries with back-off,
giving up, and claims that keep two workers from sending one delivery twice."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import uuid
from collections.abc import Callable

import httpx
import pytest
from factories import make_client, make_login_session, make_resident
from joserfc import jwt
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from idp.authn.sessions import StartedSession
from idp.keyring import Keyring
from idp.models import AuditEvent, Client, LoginSession, LogoutDelivery, Resident, SessionClient
from idp.oidc.logout import (
    CLAIM_LEASE,
    FIRST_RETRY,
    LOGOUT_EVENT,
    LOGOUT_TOKEN_TTL,
    LOGOUT_TOKEN_TYPE,
    MAX_ATTEMPTS,
    IdTokenHintInvalidError,
    deliver_due,
    end_login_session,
    logout_token,
    read_id_token_hint,
)
from idp.settings import Settings

NOW = dt.datetime(2026, 11, 26, 6, 0, tzinfo=dt.UTC)
BACKCHANNEL = "https://rp.example.kr/backchannel-logout"


class FakeSender:
    """Stands in for the HTTP POST of a logout token: records (uri, token) and answers with the next status, or
    raises the next exception, in turn; 200 once the script is used up."""

    def __init__(self, *answers: int | Exception) -> None:
        self.answers = list(answers)
        self.sent: list[tuple[str, str]] = []

    def __call__(self, uri: str, token: str) -> int:
        self.sent.append((uri, token))
        answer = self.answers.pop(0) if self.answers else 200
        if isinstance(answer, Exception):
            raise answer
        return answer


@pytest.fixture
def factory(db: Session) -> sessionmaker[Session]:
    """Sessions for deliver_due on the test's own connection: what they commit is a savepoint of the test's
    transaction, rolled back with it."""
    return sessionmaker(bind=db.connection(), join_transaction_mode="create_savepoint", expire_on_commit=False)


@pytest.fixture
def resident(db: Session) -> Resident:
    return make_resident(db, now=NOW)


@pytest.fixture
def login(db: Session, resident: Resident) -> StartedSession:
    return make_login_session(db, resident, now=NOW)


def took_part(db: Session, login: LoginSession, client: Client, sub: str = "sub-of-kim") -> None:
    db.add(SessionClient(session_id=login.id, client_id=client.id, sub=sub, created_at=NOW))
    db.flush()


def queue(db: Session, client: Client, *, sid: str = "sid-1", sub: str = "sub-1") -> LogoutDelivery:
    delivery = LogoutDelivery(client_id=client.id, sid=sid, sub=sub, next_attempt_at=NOW)
    db.add(delivery)
    db.flush()
    return delivery


def reread(db: Session, delivery: LogoutDelivery) -> LogoutDelivery:
    db.expire_all()
    found = db.get(LogoutDelivery, delivery.id)
    assert found is not None
    return found


def outcomes(db: Session) -> list[tuple[str, dict[str, object]]]:
    rows = db.scalars(select(AuditEvent).where(AuditEvent.event == "logout.backchannel").order_by(AuditEvent.id))
    return [(row.result, row.details) for row in rows]


# -- ending a session ------------------------------------------------------------------------------------------------


def test_ending_a_session_queues_a_delivery_for_each_service_that_took_part_and_listens(
    db: Session, login: StartedSession
) -> None:
    listening = make_client(db, now=NOW, backchannel_logout_uri=BACKCHANNEL).client
    deaf = make_client(db, now=NOW, name="back-channel 없음").client
    absent = make_client(db, now=NOW, name="참여 안 함", backchannel_logout_uri=BACKCHANNEL).client
    took_part(db, login.session, listening, sub="pairwise-sub")
    took_part(db, login.session, deaf)
    other_login = make_login_session(db, login.session.resident, now=NOW).session
    took_part(db, other_login, absent)

    queued = end_login_session(db, login.session, now=NOW, client_ip="203.0.113.7")

    deliveries = db.scalars(select(LogoutDelivery)).all()
    assert queued == [str(delivery.id) for delivery in deliveries]
    assert [(d.client_id, d.sid, d.sub, d.next_attempt_at, d.attempts) for d in deliveries] == [
        (listening.id, login.session.sid, "pairwise-sub", NOW, 0)
    ]
    assert login.session.ended_at == NOW
    assert other_login.ended_at is None
    signout = db.scalars(select(AuditEvent).where(AuditEvent.event == "signout")).one()
    assert (signout.resident_id, signout.client_ip) == (login.session.resident_id, "203.0.113.7")


def test_ending_a_session_no_service_took_part_in_queues_nothing(db: Session, login: StartedSession) -> None:
    make_client(db, now=NOW, backchannel_logout_uri=BACKCHANNEL)
    assert end_login_session(db, login.session, now=NOW, client_ip=None) == []
    assert db.scalars(select(LogoutDelivery)).all() == []
    assert login.session.ended_at == NOW


# -- the logout token ------------------------------------------------------------------------------------------------


def test_logout_token_names_the_session_and_the_event_and_never_a_nonce(
    db: Session, keyring: Keyring, settings: Settings
) -> None:
    client = make_client(db, now=NOW, backchannel_logout_uri=BACKCHANNEL, id_token_alg="ES256").client
    delivery = queue(db, client, sid="the-sid", sub="the-sub")
    keys = keyring.current()
    token = logout_token(client, delivery, keys, settings, NOW)
    decoded = jwt.decode(token, keys.public_keys, algorithms=["ES256", "RS256"])
    # §2.4: typ logout+jwt, signed like the client's ID tokens.
    assert decoded.header == {"alg": "ES256", "kid": keys.active("ES256").kid, "typ": LOGOUT_TOKEN_TYPE}
    claims = decoded.claims
    assert set(claims) == {"iss", "aud", "iat", "exp", "jti", "sub", "sid", "events"}
    assert (claims["iss"], claims["aud"], claims["sub"], claims["sid"]) == (
        "http://localhost:8000",
        client.id,
        "the-sub",
        "the-sid",
    )
    assert claims["events"] == {LOGOUT_EVENT: {}}
    assert claims["exp"] - claims["iat"] == LOGOUT_TOKEN_TTL
    assert claims["iat"] == int(NOW.timestamp())
    again = jwt.decode(logout_token(client, delivery, keys, settings, NOW), keys.public_keys).claims
    assert again["jti"] != claims["jti"]


def test_a_logout_token_is_no_id_token_hint(db: Session, keyring: Keyring, settings: Settings) -> None:
    client = make_client(db, now=NOW).client
    keys = keyring.current()
    token = logout_token(client, queue(db, client), keys, settings, NOW)
    with pytest.raises(IdTokenHintInvalidError):
        read_id_token_hint(token, keys, settings)


# -- id_token_hint (RP-Initiated Logout §2) --------------------------------------------------------------------------


def test_an_expired_id_token_of_ours_is_a_good_hint(keyring: Keyring, settings: Settings) -> None:
    keys = keyring.current()
    long_ago = int((NOW - dt.timedelta(days=300)).timestamp())
    claims = {"iss": settings.issuer, "aud": "c1", "sub": "s1", "sid": "sid-1", "iat": long_ago, "exp": long_ago + 300}
    assert read_id_token_hint(keys.active("RS256").sign(claims), keys, settings)["sid"] == "sid-1"


@pytest.mark.parametrize(
    "make",
    [
        lambda keys, issuer: "",
        lambda keys, issuer: "one.two",
        lambda keys, issuer: "x." * 5000 + "x",
        lambda keys, issuer: keys.active("RS256").sign({"iss": "https://other.example", "sub": "s"}),
        lambda keys, issuer: keys.active("ES256").sign({"iss": issuer, "sub": "s"}, typ="at+jwt"),
        lambda keys, issuer: keys.active("ES256").sign({"iss": issuer})[:-6] + "AAAAAA",
        lambda keys, issuer: "a.b.c",
    ],
    ids=["empty", "two-segments", "oversized", "other-issuer", "access-token", "bad-signature", "garbage"],
)
def test_a_hint_the_idp_did_not_sign_as_an_id_token_is_refused(
    keyring: Keyring, settings: Settings, make: Callable[..., str]
) -> None:
    keys = keyring.current()
    with pytest.raises(IdTokenHintInvalidError):
        read_id_token_hint(make(keys, settings.issuer), keys, settings)


# -- delivery --------------------------------------------------------------------------------------------------------


def test_due_delivery_is_sent_once_and_recorded(
    db: Session, factory: sessionmaker[Session], keyring: Keyring, settings: Settings
) -> None:
    client = make_client(db, now=NOW, backchannel_logout_uri=BACKCHANNEL).client
    delivery = queue(db, client, sid="the-sid", sub="the-sub")
    send = FakeSender(200)

    assert deliver_due(factory, keyring, settings, now=NOW, send=send) == 1

    [(uri, token)] = send.sent
    assert uri == BACKCHANNEL
    assert jwt.decode(token, keyring.current().public_keys).claims["sid"] == "the-sid"
    done = reread(db, delivery)
    assert (done.attempts, done.delivered_at, done.last_error) == (1, NOW, None)
    assert outcomes(db) == [("success", {"attempts": 1})]
    # Delivered is done: later rounds send nothing.
    assert deliver_due(factory, keyring, settings, now=NOW + dt.timedelta(hours=1), send=send) == 0
    assert len(send.sent) == 1


def test_delivery_not_yet_due_waits(
    db: Session, factory: sessionmaker[Session], keyring: Keyring, settings: Settings
) -> None:
    client = make_client(db, now=NOW, backchannel_logout_uri=BACKCHANNEL).client
    queue(db, client)
    send = FakeSender()
    assert deliver_due(factory, keyring, settings, now=NOW - dt.timedelta(seconds=1), send=send) == 0
    assert send.sent == []


@pytest.mark.parametrize(
    ("answer", "error"),
    [(503, "HTTP 503"), (302, "HTTP 302"), (httpx.ConnectError("refused"), "ConnectError")],
    ids=["503", "redirect", "no-connection"],
)
def test_failed_delivery_is_retried_after_a_growing_wait(
    db: Session,
    factory: sessionmaker[Session],
    keyring: Keyring,
    settings: Settings,
    answer: int | Exception,
    error: str,
) -> None:
    client = make_client(db, now=NOW, backchannel_logout_uri=BACKCHANNEL).client
    delivery = queue(db, client)
    send = FakeSender(answer, answer)

    assert deliver_due(factory, keyring, settings, now=NOW, send=send) == 0
    failed = reread(db, delivery)
    assert (failed.attempts, failed.last_error, failed.delivered_at) == (1, error, None)
    assert failed.next_attempt_at == NOW + FIRST_RETRY

    # Not before the first retry time; then again, and the next wait is twice as long.
    assert deliver_due(factory, keyring, settings, now=NOW + FIRST_RETRY - dt.timedelta(seconds=1), send=send) == 0
    assert len(send.sent) == 1
    retried_at = NOW + FIRST_RETRY
    assert deliver_due(factory, keyring, settings, now=retried_at, send=send) == 0
    again = reread(db, delivery)
    assert again.attempts == 2
    assert again.next_attempt_at == retried_at + 2 * FIRST_RETRY

    third = again.next_attempt_at
    assert deliver_due(factory, keyring, settings, now=third, send=send) == 1
    assert reread(db, delivery).delivered_at == third
    assert [result for result, _ in outcomes(db)] == ["failure", "failure", "success"]
    assert outcomes(db)[0][1] == {"error": error, "retry": True}


def test_delivery_is_given_up_after_the_last_attempt(
    db: Session,
    factory: sessionmaker[Session],
    keyring: Keyring,
    settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = make_client(db, now=NOW, backchannel_logout_uri=BACKCHANNEL).client
    delivery = queue(db, client)
    send = FakeSender(*[500] * MAX_ATTEMPTS)
    now = NOW
    with caplog.at_level(logging.WARNING, logger="idp.logout"):
        for attempt in range(1, MAX_ATTEMPTS + 1):
            assert deliver_due(factory, keyring, settings, now=now, send=send) == 0
            current = reread(db, delivery)
            assert current.attempts == attempt
            now = current.next_attempt_at

    given_up = reread(db, delivery)
    assert given_up.given_up_at is not None
    assert given_up.delivered_at is None
    assert len(send.sent) == MAX_ATTEMPTS
    # The waits doubled from FIRST_RETRY up to the last one.
    assert given_up.given_up_at - NOW == FIRST_RETRY * (2 ** (MAX_ATTEMPTS - 1) - 1)
    assert outcomes(db)[-1] == ("failure", {"error": "HTTP 500", "given_up": True})
    warnings = [r for r in caplog.records if r.name == "idp.logout" and r.levelno >= logging.WARNING]
    assert [record.getMessage() for record in warnings] == [
        f"back-channel logout to {client.id} given up after {MAX_ATTEMPTS} attempts: HTTP 500"
    ]
    # Nothing of the token reaches the log.
    assert not any(token in caplog.text for _, token in send.sent)
    assert deliver_due(factory, keyring, settings, now=now + dt.timedelta(days=30), send=send) == 0
    assert len(send.sent) == MAX_ATTEMPTS


def test_only_the_named_deliveries_are_attempted(
    db: Session, factory: sessionmaker[Session], keyring: Keyring, settings: Settings
) -> None:
    client = make_client(db, now=NOW, backchannel_logout_uri=BACKCHANNEL).client
    wanted, other = queue(db, client, sid="wanted"), queue(db, client, sid="other")
    send = FakeSender()
    assert deliver_due(factory, keyring, settings, now=NOW, send=send, only=[str(wanted.id)]) == 1
    assert len(send.sent) == 1
    assert (reread(db, wanted).attempts, reread(db, other).attempts) == (1, 0)


def test_delivery_of_a_service_that_no_longer_listens_is_not_sent(
    db: Session, factory: sessionmaker[Session], keyring: Keyring, settings: Settings
) -> None:
    client = make_client(db, now=NOW, backchannel_logout_uri=BACKCHANNEL).client
    queue(db, client)
    client.backchannel_logout_uri = None
    db.flush()
    send = FakeSender()
    assert deliver_due(factory, keyring, settings, now=NOW, send=send) == 0
    assert send.sent == []


def test_a_round_that_fails_while_sending_leaves_the_delivery_to_a_round_after_the_lease(
    db: Session, factory: sessionmaker[Session], keyring: Keyring, settings: Settings
) -> None:
    client = make_client(db, now=NOW, backchannel_logout_uri=BACKCHANNEL).client
    delivery = queue(db, client)

    class WorkerDied(BaseException):
        """The process is killed mid-send: nothing of the round's own error handling runs (an ordinary exception
        is a failed attempt, counted: test_a_sender_that_breaks_unexpectedly_fails_that_delivery_alone)."""

    def fails(uri: str, token: str) -> int:
        raise WorkerDied

    with pytest.raises(WorkerDied):
        deliver_due(factory, keyring, settings, now=NOW, send=fails)
    # The claim was committed before sending: within the lease nobody else sends it ...
    claimed = reread(db, delivery)
    assert (claimed.attempts, claimed.next_attempt_at) == (0, NOW + CLAIM_LEASE)
    send = FakeSender()
    assert deliver_due(factory, keyring, settings, now=NOW + CLAIM_LEASE - dt.timedelta(seconds=1), send=send) == 0
    # ... and once it has run out, the next round does.
    assert deliver_due(factory, keyring, settings, now=NOW + CLAIM_LEASE, send=send) == 1
    assert len(send.sent) == 1


def test_a_delivery_claimed_by_one_worker_is_not_sent_by_another(
    db: Session, factory: sessionmaker[Session], keyring: Keyring, settings: Settings
) -> None:
    client = make_client(db, now=NOW, backchannel_logout_uri=BACKCHANNEL).client
    queue(db, client)
    second_round: list[int] = []
    also_sent = FakeSender()

    def send_while_another_worker_runs(uri: str, token: str) -> int:
        # The first worker has claimed the delivery and is sending it: a second worker's round at the same moment.
        second_round.append(deliver_due(factory, keyring, settings, now=NOW, send=also_sent))
        return 200

    assert deliver_due(factory, keyring, settings, now=NOW, send=send_while_another_worker_runs) == 1
    assert second_round == [0]
    assert also_sent.sent == []


# -- two workers on their own connections ----------------------------------------------------------------------------


class PausingFactory:
    """A session factory for one worker that runs `before(n)` as the worker asks for its n-th session: the first
    session lists the due deliveries, the second claims one."""

    def __init__(self, engine: Engine, before: Callable[[int], None]) -> None:
        self.sessions = sessionmaker(engine, expire_on_commit=False)
        self.before = before
        self.calls = 0

    def __call__(self) -> Session:
        self.calls += 1
        self.before(self.calls)
        return self.sessions()


def test_two_workers_that_both_saw_a_delivery_due_send_it_once(
    fresh_engine: Engine, keyring: Keyring, settings: Settings
) -> None:
    with Session(fresh_engine) as setup:
        resident = make_resident(setup, now=NOW)
        client = make_client(setup, now=NOW, backchannel_logout_uri=BACKCHANNEL).client
        login = make_login_session(setup, resident, now=NOW).session
        took_part(setup, login, client)
        end_login_session(setup, login, now=NOW, client_ip=None)
        setup.commit()

    # The first worker lists the delivery, waits until the second has listed it too, claims it and, while it is
    # sending, the second tries to claim it: only the compare-and-set of the claim keeps it from a second send.
    second_listed = threading.Event()
    first_sending = threading.Event()
    second_done = threading.Event()

    def first_worker(call: int) -> None:
        if call == 2:  # listed, about to claim
            assert second_listed.wait(10), "the second worker never listed the due deliveries"

    def second_worker(call: int) -> None:
        if call == 2:  # listed, about to claim: only once the first is sending
            second_listed.set()
            assert first_sending.wait(10), "the first worker never sent"

    send = FakeSender()

    def sending(uri: str, token: str) -> int:
        answer = send(uri, token)
        if threading.current_thread().name == "first":
            first_sending.set()
            assert second_done.wait(10), "the second worker never finished its round"
        return answer

    results: dict[str, int] = {}
    errors: list[BaseException] = []

    def run(name: str, before: Callable[[int], None]) -> None:
        try:
            made = PausingFactory(fresh_engine, before)
            results[name] = deliver_due(made, keyring, settings, now=NOW, send=sending)  # type: ignore[arg-type]
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            if name == "second":
                second_done.set()

    threads = [
        threading.Thread(target=run, args=(name, before), name=name)
        for name, before in (("first", first_worker), ("second", second_worker))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert len(send.sent) == 1
    assert results == {"first": 1, "second": 0}
    with Session(fresh_engine) as check:
        delivery = check.scalars(select(LogoutDelivery)).one()
        assert (delivery.attempts, delivery.delivered_at) == (1, NOW)


def test_unknown_delivery_ids_in_only_are_ignored(
    db: Session, factory: sessionmaker[Session], keyring: Keyring, settings: Settings
) -> None:
    client = make_client(db, now=NOW, backchannel_logout_uri=BACKCHANNEL).client
    queue(db, client)
    send = FakeSender()
    assert deliver_due(factory, keyring, settings, now=NOW, send=send, only=[str(uuid.uuid4())]) == 0
    assert send.sent == []


def test_a_delivery_that_cannot_be_signed_does_not_stop_the_round(
    db: Session, factory: sessionmaker[Session], keyring: Keyring, settings: Settings
) -> None:
    # The service's ID-token algorithm has no active key any more (an admin retired every EdDSA key).
    unsignable = make_client(db, now=NOW, backchannel_logout_uri=BACKCHANNEL, id_token_alg="EdDSA").client
    ordinary = make_client(db, now=NOW, backchannel_logout_uri=BACKCHANNEL + "/2").client
    stuck = queue(db, unsignable, sid="first")
    later = queue(db, ordinary, sid="second")
    send = FakeSender()
    delivered = deliver_due(factory, keyring, settings, now=NOW, send=send)
    assert [uri for uri, _ in send.sent] == [BACKCHANNEL + "/2"]
    assert delivered == 1
    assert reread(db, later).delivered_at == NOW
    failed = reread(db, stuck)
    assert failed.attempts == 1
    assert failed.last_error is not None


def test_a_sender_that_breaks_unexpectedly_fails_that_delivery_alone(
    db: Session, factory: sessionmaker[Session], keyring: Keyring, settings: Settings
) -> None:
    first = make_client(db, now=NOW, backchannel_logout_uri=BACKCHANNEL).client
    second = make_client(db, now=NOW, backchannel_logout_uri=BACKCHANNEL + "/2").client
    broken = queue(db, first, sid="first")
    later = queue(db, second, sid="second")
    send = FakeSender(RuntimeError("a bug in the sender"))
    assert deliver_due(factory, keyring, settings, now=NOW, send=send) == 1
    assert reread(db, later).delivered_at == NOW
    failed = reread(db, broken)
    assert (failed.attempts, failed.last_error, failed.delivered_at) == (1, "RuntimeError", None)
    assert failed.next_attempt_at > NOW
