"""The real `idp residents …` command in subprocesses, on residents who signed in through the running sandbox."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sandbox_agency import SandboxAgency
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.test import TestResponse

from idp.authn.lockout import TOTP_FAILURES_PER_RESIDENT, make_rate_limiter
from idp.authn.residents import lock_resident
from idp.models import AuditEvent, LoginSession, Resident
from idp.runtime import of as runtime_of
from idp.settings import Settings

IDP = Path(sys.executable).with_name("idp")
TIMEOUT = 60
UNREACHABLE_DATABASE = "postgresql+psycopg://nobody@127.0.0.1:1/x"

KIM = {"carrier": "SKT", "name": "김경기", "birthdate": "1985-03-14", "rrn_digit7": "1", "phone": "010-0000-0001"}
LEE = {"carrier": "KT", "name": "이수원", "birthdate": "1992-11-02", "rrn_digit7": "2", "phone": "010-0000-0002"}
PARK = {"carrier": "LGU", "name": "박용인", "birthdate": "2001-07-21", "rrn_digit7": "3", "phone": "010-0000-0003"}
YOON_SKT = {"carrier": "SKT", "name": "윤부천", "birthdate": "1995-06-09", "rrn_digit7": "2", "phone": "01000000009"}
YOON_MVNO = {**YOON_SKT, "carrier": "LGU_MVNO", "phone": "+82 10 0000 0010"}
E164 = {"김경기": "+821000000001", "이수원": "+821000000002", "박용인": "+821000000003"}

LIST_FIELDS = {"id", "name", "phone", "carrier", "created_at", "verified_at", "locked"}
SHOW_FIELDS = LIST_FIELDS | {"birthdate", "verified_by", "locked_at", "totp"}
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
MASKED_PHONE = re.compile(r"\+82|\*\*|010-?\d{4}")


# -- the app, signing in through the sandbox, and the database as the tests read it ------------------------------


@pytest.fixture
def app(
    make_app: Callable[[Settings], Flask], settings: Settings, sandbox: SandboxAgency, fresh_database_url: str
) -> Flask:
    """The app calling the running sandbox, on the database the `idp` command is pointed at."""
    app = make_app(replace(settings, carrier_agency_url=sandbox.url, database_url=fresh_database_url))
    app.config["TESTING"] = True
    return app


@pytest.fixture
def read(app: Flask) -> Callable[[], Session]:
    """A new session per check, so that each sees what the `idp` subprocess committed."""
    factory: sessionmaker[Session] = runtime_of(app).sessions
    return factory


@pytest.fixture
def env(tmp_path: Path, keys_dir: Path, fresh_database_url: str) -> dict[str, str]:
    """An admin's shell: no IDP_* from the test runner, the test's own database and folders."""
    clean = {name: value for name, value in os.environ.items() if not name.startswith("IDP_")}
    clean.update(
        IDP_DATABASE_URL=fresh_database_url,
        IDP_INSTANCE_DIR=str(tmp_path / "instance"),
        IDP_KEYS_DIR=str(keys_dir),
    )
    return clean


def csrf(client: FlaskClient, path: str) -> str:
    page = client.get(path)
    match = CSRF.search(page.get_data(as_text=True))
    assert match, page.get_data(as_text=True)[:500]
    return match.group(1)


def sign_in(client: FlaskClient, sandbox: SandboxAgency, person: dict[str, str], phone: str) -> TestResponse:
    """The carrier form, then the SMS code the sandbox sent; the last response."""
    form = {"csrf_token": csrf(client, "/login/carrier"), "method": "sms", "consent": "y", **person}
    assert client.post("/login/carrier", data=form).status_code == 303
    token = csrf(client, "/login/carrier/verify")
    code = sandbox.last_code(phone)
    return client.post("/login/carrier/verify", data={"csrf_token": token, "action": "confirm", "code": code})


def signed_in_resident(app: Flask, sandbox: SandboxAgency, person: dict[str, str]) -> tuple[FlaskClient, Resident]:
    """A browser signed in as a new resident, and the resident as stored."""
    browser = app.test_client()
    phone = E164[person["name"]]
    done = sign_in(browser, sandbox, person, phone)
    assert done.headers["Location"] == "/login/welcome", done.status_code
    factory: sessionmaker[Session] = runtime_of(app).sessions
    with factory() as db:
        resident = db.scalar(select(Resident).where(Resident.phone == phone).order_by(Resident.created_at.desc()))
    assert resident is not None
    return browser, resident


def resident_events(read: Callable[[], Session], resident_id: uuid.UUID) -> list[AuditEvent]:
    """The resident's account events (their verifications' carrier.* events are linked to them too)."""
    with read() as db:
        query = select(AuditEvent).where(AuditEvent.resident_id == resident_id, ~AuditEvent.event.like("carrier.%"))
        return list(db.scalars(query.order_by(AuditEvent.id)))


def count(read: Callable[[], Session], model: type[Any], *where: Any) -> int:
    with read() as db:
        total: int = db.scalar(select(func.count()).select_from(model).where(*where)) or 0
        return total


def body(response: TestResponse) -> str:
    return response.get_data(as_text=True)


# -- running the command -----------------------------------------------------------------------------------------


def idp(env: dict[str, str], *args: str, answer: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(IDP), *args],
        env=env,
        cwd=Path(env["IDP_INSTANCE_DIR"]).parent,
        input=answer,
        stdin=None if answer is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def idp_json(env: dict[str, str], *args: str) -> Any:
    result = idp(env, *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def idp_all(env: dict[str, str], *commands: Sequence[str]) -> list[subprocess.CompletedProcess[str]]:
    """Read-only commands side by side: each `idp` start costs most of a second."""
    with ThreadPoolExecutor(max_workers=len(commands)) as pool:
        return list(pool.map(lambda args: idp(env, *args), commands))


def assert_one_line_error(result: subprocess.CompletedProcess[str], expected: str) -> None:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("idp: error: ")
    assert expected in lines[0]


def moment(value: str) -> dt.datetime:
    assert value.endswith("Z"), value
    return dt.datetime.fromisoformat(value)


# -- list --------------------------------------------------------------------------------------------------------


@pytest.fixture
def three_residents(app: Flask, sandbox: SandboxAgency) -> list[Resident]:
    """Kim, then Lee, then Park signed in for the first time: oldest first."""
    return [signed_in_resident(app, sandbox, person)[1] for person in (KIM, LEE, PARK)]


def test_list_json_shows_residents_newest_first_with_masked_phones(
    env: dict[str, str], three_residents: list[Resident]
) -> None:
    kim, lee, park = three_residents

    rows = idp_json(env, "residents", "list")

    assert [row["id"] for row in rows] == [str(park.id), str(lee.id), str(kim.id)]
    for row in rows:
        assert set(row) == LIST_FIELDS
    assert [(row["name"], row["phone"], row["carrier"], row["locked"]) for row in rows] == [
        ("박용인", "+8210****0003", "LGU", False),
        ("이수원", "+8210****0002", "KT", False),
        ("김경기", "+8210****0001", "SKT", False),
    ]
    assert moment(rows[2]["created_at"]) == kim.created_at
    assert moment(rows[2]["verified_at"]) == kim.verified_at
    assert "+821000000001" not in json.dumps(rows)


def test_list_locked_shows_only_locked_residents_and_limit_keeps_the_newest(
    env: dict[str, str], three_residents: list[Resident], read: Callable[[], Session]
) -> None:
    _, lee, park = three_residents
    with read() as db:
        lock_resident(db, db.get_one(Resident, lee.id), now=dt.datetime.now(dt.UTC))
        db.commit()

    locked, newest_two = idp_all(
        env, ["residents", "list", "--locked", "--json"], ["residents", "list", "--limit", "2"]
    )

    assert [(row["id"], row["phone"], row["locked"]) for row in json.loads(locked.stdout)] == [
        (str(lee.id), "+8210****0002", True)
    ]
    # The plain list: one line per resident, the phone masked, a lock marked.
    assert newest_two.stdout.splitlines() == [
        f"{park.id}  박용인  +8210****0003  LGU",
        f"{lee.id}  이수원  +8210****0002  KT (locked)",
    ]


def test_list_of_an_empty_database_says_so(env: dict[str, str]) -> None:
    result = idp(env, "residents", "list")

    assert (result.returncode, result.stdout, result.stderr) == (0, "no residents\n", "")


# -- show --------------------------------------------------------------------------------------------------------


def test_show_finds_the_resident_by_id_or_phone_number_in_any_form(
    env: dict[str, str], app: Flask, sandbox: SandboxAgency
) -> None:
    _, kim = signed_in_resident(app, sandbox, KIM)

    by_id, by_e164, by_typed = idp_all(
        env,
        ["residents", "show", str(kim.id), "--json"],
        ["residents", "show", "+821000000001", "--json"],
        ["residents", "show", "010-0000-0001"],
    )

    shown = json.loads(by_id.stdout)
    assert json.loads(by_e164.stdout) == shown
    assert set(shown) == SHOW_FIELDS
    assert {key: shown[key] for key in SHOW_FIELDS - {"created_at", "verified_at"}} == {
        "id": str(kim.id),
        "name": "김경기",
        "phone": "+821000000001",
        "carrier": "SKT",
        "locked": False,
        "birthdate": "1985-03-14",
        "verified_by": "sandbox",
        "locked_at": None,
        "totp": False,
    }
    assert moment(shown["created_at"]) == kim.created_at
    assert moment(shown["verified_at"]) == kim.verified_at
    # For people: every detail on a line of its own, in the JSON's order.
    assert by_typed.stdout.splitlines() == [
        f"id: {kim.id}",
        "name: 김경기",
        "phone: +821000000001",
        "carrier: SKT",
        f"created_at: {shown['created_at']}",
        f"verified_at: {shown['verified_at']}",
        "locked: False",
        "birthdate: 1985-03-14",
        "verified_by: sandbox",
        "locked_at: -",
        "totp: False",
    ]


# -- lock and unlock ---------------------------------------------------------------------------------------------


def test_unlock_also_lifts_a_totp_lockout(
    env: dict[str, str], app: Flask, settings: Settings, sandbox: SandboxAgency
) -> None:
    _, kim = signed_in_resident(app, sandbox, KIM)
    # Someone typed wrong codes for Kim's number until the per-resident lock set in.
    limiter = make_rate_limiter("database", runtime_of(app).engine, secret=settings.secret_key)
    now = dt.datetime.now(dt.UTC)
    for _ in range(TOTP_FAILURES_PER_RESIDENT.free + 1):
        limiter.fail(TOTP_FAILURES_PER_RESIDENT, str(kim.id), now=now)
    assert limiter.locked_for(TOTP_FAILURES_PER_RESIDENT, str(kim.id), now=now) > 0

    unlocked = idp({**env, "IDP_SECRET_KEY": settings.secret_key}, "residents", "unlock", str(kim.id))

    assert unlocked.returncode == 0, unlocked.stderr
    assert limiter.locked_for(TOTP_FAILURES_PER_RESIDENT, str(kim.id), now=now) == 0


def test_lock_ends_sessions_and_refuses_sign_in_until_unlock(
    env: dict[str, str], app: Flask, sandbox: SandboxAgency, read: Callable[[], Session]
) -> None:
    browser, kim = signed_in_resident(app, sandbox, KIM)
    assert browser.get("/account").status_code == 200

    locked = idp_json(env, "residents", "lock", "010-0000-0001")

    assert set(locked) == LIST_FIELDS
    assert (locked["id"], locked["phone"], locked["locked"]) == (str(kim.id), "+8210****0001", True)
    signed_out = browser.get("/account")
    assert signed_out.status_code == 303
    assert signed_out.headers["Location"].startswith("/login")
    assert count(read, LoginSession, LoginSession.resident_id == kim.id, LoginSession.ended_at.is_(None)) == 0
    refused = sign_in(app.test_client(), sandbox, KIM, "+821000000001")
    assert refused.status_code == 403
    assert "잠긴 계정입니다" in body(refused)

    unlocked = idp(env, "residents", "unlock", str(kim.id))

    assert (unlocked.returncode, unlocked.stdout) == (0, f"{kim.id}: unlocked\n")
    again = app.test_client()
    assert sign_in(again, sandbox, KIM, "+821000000001").headers["Location"] == "/account"
    assert again.get("/account").status_code == 200
    assert browser.get("/account").status_code == 303  # unlocking does not revive the sessions the lock ended
    events = resident_events(read, kim.id)
    assert [event.event for event in events] == [
        "resident.created",
        "signin",
        "resident.locked",
        "signin.refused",
        "resident.unlocked",
        "signin",
    ]
    admin = [event for event in events if event.event in ("resident.locked", "resident.unlocked")]
    assert [(event.result, event.details, event.client_ip) for event in admin] == [
        ("success", {"actor": "admin"}, None),
        ("success", {"actor": "admin"}, None),
    ]
    assert events[3].details == {"reason": "locked"}


# -- delete ------------------------------------------------------------------------------------------------------


def test_delete_erases_the_resident_and_sessions_and_keeps_audit_events_without_personal_data(
    env: dict[str, str], app: Flask, sandbox: SandboxAgency, read: Callable[[], Session]
) -> None:
    browser = app.test_client()
    sign_in(browser, sandbox, YOON_SKT, "+821000000009")
    # The same person on their second line: the stored phone changes and the audit log records it, masked.
    sign_in(app.test_client(), sandbox, YOON_MVNO, "+821000000010")
    with read() as db:
        (yoon,) = db.scalars(select(Resident))
    before = resident_events(read, yoon.id)
    assert [event.event for event in before] == ["resident.created", "signin", "resident.phone_changed", "signin"]
    with read() as db:
        verifications = db.scalars(select(AuditEvent).where(AuditEvent.event.like("carrier.%"))).all()
    assert {event.resident_id for event in verifications} == {yoon.id}
    assert before[2].details == {"old_phone": "+8210****0009", "new_phone": "+8210****0010"}
    assert {event.client_ip for event in before} == {"127.0.0.1"}
    assert count(read, LoginSession, LoginSession.resident_id == yoon.id) == 2

    deleted = idp_json(env, "residents", "delete", str(yoon.id), "--yes")

    assert deleted == {"id": str(yoon.id), "deleted": True}
    assert count(read, Resident, Resident.id == yoon.id) == 0
    assert count(read, LoginSession, LoginSession.resident_id == yoon.id) == 0
    after = resident_events(read, yoon.id)
    assert [event.event for event in after] == [*(event.event for event in before), "resident.deleted"]
    for event in after:
        assert event.client_ip is None, event.event
        assert not MASKED_PHONE.search(json.dumps(event.details)), (event.event, event.details)
    assert after[2].details == {}
    assert (after[-1].result, after[-1].details) == ("success", {"actor": "admin"})
    assert browser.get("/account").status_code == 303

    # The same person signing in again is a new resident: nothing links them to the erased one.
    assert sign_in(app.test_client(), sandbox, YOON_SKT, "+821000000009").headers["Location"] == "/login/welcome"
    with read() as db:
        (new,) = db.scalars(select(Resident))
    assert new.id != yoon.id
    assert (new.name, new.phone) == ("윤부천", "+821000000009")


def test_delete_without_yes_asks_and_answering_n_changes_nothing(
    env: dict[str, str], app: Flask, sandbox: SandboxAgency, read: Callable[[], Session]
) -> None:
    browser, kim = signed_in_resident(app, sandbox, KIM)
    events_before = len(resident_events(read, kim.id))

    result = idp(env, "residents", "delete", str(kim.id), answer="n\n")

    assert result.returncode == 1
    assert result.stdout == ""
    assert f"Erase resident {kim.id} and end their sessions? [y/N]" in result.stderr
    assert result.stderr.endswith("idp: aborted\n")
    assert "Traceback" not in result.stderr
    assert count(read, Resident, Resident.id == kim.id) == 1
    assert browser.get("/account").status_code == 200
    assert len(resident_events(read, kim.id)) == events_before


def test_delete_answering_y_erases_the_resident_found_by_phone_number(
    env: dict[str, str], app: Flask, sandbox: SandboxAgency, read: Callable[[], Session]
) -> None:
    browser, kim = signed_in_resident(app, sandbox, KIM)

    result = idp(env, "residents", "delete", "010-0000-0001", answer="y\n")

    assert (result.returncode, result.stdout) == (0, f"{kim.id}: deleted\n")
    assert count(read, Resident) == 0
    assert browser.get("/account").status_code == 303


def test_delete_leaves_no_masked_phone_or_ip_in_the_verifications_of_the_erased_residents_sign_ins(
    env: dict[str, str], app: Flask, sandbox: SandboxAgency, read: Callable[[], Session]
) -> None:
    _, kim = signed_in_resident(app, sandbox, KIM)  # the only person who ever verified on this database

    assert idp(env, "residents", "delete", str(kim.id), "--yes").returncode == 0

    with read() as db:
        leftovers = [(e.event, e.details, e.client_ip) for e in db.scalars(select(AuditEvent).order_by(AuditEvent.id))]
    assert [row for row in leftovers if row[2] is not None or "+8210****0001" in json.dumps(row[1])] == []


def test_phone_number_shared_by_two_residents_is_refused_as_ambiguous(
    env: dict[str, str], app: Flask, sandbox: SandboxAgency, read: Callable[[], Session]
) -> None:
    # Carriers recycle numbers: a former subscriber's account still holds 010-0000-0001 when Kim gets it.
    former = uuid.uuid4()
    with read() as db:
        db.add(
            Resident(
                id=former,
                ci_index=os.urandom(32),
                name="정전임",
                birthdate=dt.date(1950, 1, 1),
                phone="+821000000001",
                carrier="KT",
                verified_at=dt.datetime(2019, 5, 1, tzinfo=dt.UTC),
                verified_by="sandbox",
                created_at=dt.datetime(2019, 5, 1, tzinfo=dt.UTC),
            )
        )
        db.commit()
    _, kim = signed_in_resident(app, sandbox, KIM)

    shown, deleted = idp_all(
        env, ["residents", "show", "010-0000-0001"], ["residents", "delete", "+821000000001", "--yes"]
    )

    assert_one_line_error(shown, "several residents have phone +821000000001: give the resident id")
    assert_one_line_error(deleted, "several residents have phone +821000000001: give the resident id")
    assert kim.id != former
    assert count(read, Resident, Resident.id.in_([former, kim.id])) == 2


# -- bad input ---------------------------------------------------------------------------------------------------


BAD_REFERENCES = [
    (
        "unknown-id",
        ["show", "0b9d3f4e-2c1a-4f6e-9a57-3d8c2e1f0a6b"],
        "no resident '0b9d3f4e-2c1a-4f6e-9a57-3d8c2e1f0a6b'",
    ),
    ("malformed-id", ["lock", "resident-42"], "no resident 'resident-42'"),
    ("unknown-phone", ["delete", "010-9999-9999", "--yes"], "no resident '+821099999999'"),
]


@pytest.mark.parametrize(("case", "args", "message"), BAD_REFERENCES, ids=[case for case, _, _ in BAD_REFERENCES])
def test_unknown_or_malformed_reference_is_a_one_line_error_that_changes_nothing(
    env: dict[str, str],
    app: Flask,
    sandbox: SandboxAgency,
    read: Callable[[], Session],
    case: str,
    args: list[str],
    message: str,
) -> None:
    _, kim = signed_in_resident(app, sandbox, KIM)
    events_before = count(read, AuditEvent)

    result = idp(env, "residents", *args)

    assert_one_line_error(result, message)
    assert result.stderr.rstrip().endswith("give a resident id or phone number")
    assert count(read, AuditEvent) == events_before
    assert count(read, Resident, Resident.id == kim.id, Resident.locked_at.is_(None)) == 1


@pytest.fixture
def unreachable_env(tmp_path: Path, keys_dir: Path) -> dict[str, str]:
    clean = {name: value for name, value in os.environ.items() if not name.startswith("IDP_")}
    clean.update(
        IDP_DATABASE_URL=UNREACHABLE_DATABASE, IDP_INSTANCE_DIR=str(tmp_path / "instance"), IDP_KEYS_DIR=str(keys_dir)
    )
    return clean


def test_unreachable_database_is_a_one_line_error(unreachable_env: dict[str, str]) -> None:
    result = idp(unreachable_env, "residents", "lock", "010-0000-0001")

    assert_one_line_error(result, 'database: connection failed: connection to server at "127.0.0.1", port 1 failed')
