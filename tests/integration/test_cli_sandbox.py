"""The real `idp sandbox …` commands in subprocesses, talking to the running sandbox agency."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sandbox_agency import SandboxAgency, free_port
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.test import TestResponse

from idp.authn.carrier import (
    CircuitBreaker,
    HttpCarrierGateway,
    Transaction,
    VerificationMethod,
    VerificationRequest,
    session_binding_for,
)
from idp.models import Carrier, Resident
from idp.runtime import of as runtime_of
from idp.settings import Settings

IDP = Path(sys.executable).with_name("idp")
TIMEOUT = 60
SMS_TEXT = "[경기도 통합 로그인] 인증번호는 [{code}]입니다. 타인에게 알려주지 마세요."
MESSAGE_FIELDS = {"phone", "text", "code", "txn_id", "sent_at"}
KIM = {"carrier": Carrier.SKT, "name": "김경기", "birthdate": dt.date(1985, 3, 14), "rrn_digit7": "1"}
LEE = {"carrier": Carrier.KT, "name": "이수원", "birthdate": dt.date(1992, 11, 2), "rrn_digit7": "2"}
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


# -- helpers -----------------------------------------------------------------------------------------------------


@pytest.fixture
def env(tmp_path: Path, sandbox: SandboxAgency) -> dict[str, str]:
    """A developer's shell pointed at the running sandbox: no other IDP_* from the test runner."""
    clean = {name: value for name, value in os.environ.items() if not name.startswith("IDP_")}
    clean.update(IDP_INSTANCE_DIR=str(tmp_path / "instance"), IDP_CARRIER_AGENCY_URL=sandbox.url)
    return clean


@pytest.fixture
def gateway(sandbox: SandboxAgency) -> Iterator[HttpCarrierGateway]:
    """The IdP's own agency client, to start verifications without a database."""
    gateway = HttpCarrierGateway(
        sandbox.url,
        site_code="GG-IDP-SANDBOX",
        site_secret="sandbox-site-secret",
        production=False,
        timeout=2.0,
        breaker=CircuitBreaker(),
    )
    yield gateway
    gateway.close()


def start(gateway: HttpCarrierGateway, person: dict[str, Any], phone: str) -> Transaction:
    return gateway.start(
        VerificationRequest(
            method=VerificationMethod.SMS,
            session_binding=session_binding_for(secrets.token_urlsafe(8)),
            client_ip=f"198.51.100.{secrets.randbelow(250) + 1}",
            phone=phone,
            **person,
        )
    )


def idp(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(IDP), *args],
        env=env,
        cwd=Path(env["IDP_INSTANCE_DIR"]).parent,
        stdin=subprocess.DEVNULL,
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
    """Independent commands side by side: each `idp` start costs most of a second."""
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


# -- outbox ------------------------------------------------------------------------------------------------------


@pytest.fixture
def two_codes(gateway: HttpCarrierGateway) -> list[Transaction]:
    """Codes sent to Kim, then to Lee."""
    return [start(gateway, KIM, "+821000000001"), start(gateway, LEE, "+821000000002")]


def test_outbox_json_lists_every_code_sent_oldest_first(
    env: dict[str, str], sandbox: SandboxAgency, two_codes: list[Transaction]
) -> None:
    started = dt.datetime.now(dt.UTC).replace(microsecond=0)

    messages = idp_json(env, "sandbox", "outbox")

    assert [set(message) for message in messages] == [MESSAGE_FIELDS, MESSAGE_FIELDS]
    assert [(message["phone"], message["txn_id"]) for message in messages] == [
        ("+821000000001", two_codes[0].txn_id),
        ("+821000000002", two_codes[1].txn_id),
    ]
    for message in messages:
        assert re.fullmatch(r"\d{6}", message["code"])
        assert message["code"] == sandbox.last_code(message["phone"])
        assert message["text"] == SMS_TEXT.format(code=message["code"])
        assert message["sent_at"].endswith("Z")
        assert abs(dt.datetime.fromisoformat(message["sent_at"]) - started) < dt.timedelta(minutes=1)


def test_outbox_phone_filter_takes_the_number_in_any_form(env: dict[str, str], two_codes: list[Transaction]) -> None:
    typed, e164 = idp_all(
        env,
        ["sandbox", "outbox", "--phone", "010-0000-0001", "--json"],
        ["sandbox", "outbox", "--phone", "+821000000001", "--json"],
    )

    assert typed.returncode == e164.returncode == 0
    assert json.loads(typed.stdout) == json.loads(e164.stdout)
    assert [message["txn_id"] for message in json.loads(typed.stdout)] == [two_codes[0].txn_id]


def test_outbox_prints_one_line_per_message_for_people(
    env: dict[str, str], sandbox: SandboxAgency, two_codes: list[Transaction]
) -> None:
    messages = sandbox.outbox()

    result = idp(env, "sandbox", "outbox")

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"{message['sent_at']} {message['phone']} {message['code']} {SMS_TEXT.format(code=message['code'])}"
        for message in messages
    ]
    assert [message["phone"] for message in messages] == ["+821000000001", "+821000000002"]


def test_empty_outbox_says_so(env: dict[str, str]) -> None:
    plain, as_json = idp_all(env, ["sandbox", "outbox"], ["sandbox", "outbox", "--json"])

    assert (plain.returncode, plain.stdout) == (0, "no messages\n")
    assert (as_json.returncode, json.loads(as_json.stdout)) == (0, [])


def test_outbox_finds_the_sandbox_from_the_url_recorded_in_the_instance_folder(
    env: dict[str, str], sandbox: SandboxAgency, gateway: HttpCarrierGateway
) -> None:
    transaction = start(gateway, KIM, "+821000000001")
    del env["IDP_CARRIER_AGENCY_URL"]
    instance = Path(env["IDP_INSTANCE_DIR"])
    instance.mkdir()
    (instance / "sandbox.url").write_text(sandbox.url + "\n")

    messages = idp_json(env, "sandbox", "outbox")

    assert [message["txn_id"] for message in messages] == [transaction.txn_id]


def test_outbox_without_a_running_sandbox_is_a_one_line_error(env: dict[str, str]) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    env["IDP_CARRIER_AGENCY_URL"] = closed

    result = idp(env, "sandbox", "outbox")

    assert_one_line_error(result, f"the sandbox agency at {closed} is not answering")
    assert result.stderr.rstrip().endswith("start it with `idp sandbox serve`")


def test_outbox_refuses_a_phone_that_is_not_a_mobile_number(env: dict[str, str]) -> None:
    result = idp(env, "sandbox", "outbox", "--phone", "02-123-4567")

    assert_one_line_error(result, "'02-123-4567' is not a Korean mobile number such as 010-1234-5678")


# -- residents add, then a sign-in through the app ---------------------------------------------------------------


@pytest.fixture
def app(
    make_app: Callable[[Settings], Flask], settings: Settings, sandbox: SandboxAgency, fresh_database_url: str
) -> Flask:
    """The app calling the running sandbox, on a database of its own: requests commit for real."""
    app = make_app(replace(settings, carrier_agency_url=sandbox.url, database_url=fresh_database_url))
    app.config["TESTING"] = True
    return app


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


def test_added_synthetic_resident_can_sign_in_through_the_app(
    env: dict[str, str], sandbox: SandboxAgency, app: Flask
) -> None:
    # A number of its own: the sandbox keeps added residents for the whole test session and refuses a taken number.
    middle, last = 9000 + secrets.randbelow(1000), secrets.randbelow(10**4)
    typed, e164 = f"010-{middle}-{last:04d}", f"+8210{middle}{last:04d}"
    person = {"name": "홍길동", "birthdate": "1990-01-31", "rrn_digit7": "1", "phone": typed, "carrier": "KT"}

    added = idp_json(
        env,
        "sandbox",
        "residents",
        "add",
        "--name",
        "홍길동",
        "--birthdate",
        "1990-01-31",
        "--rrn-digit7",
        "1",
        "--phone",
        typed,
        "--carrier",
        "KT",
        "--note",
        "added by test_cli_sandbox",
    )

    assert re.fullmatch(r"p-[0-9a-f]{12}", added.pop("person_id"))
    assert len(added.pop("ci")) == 88
    assert added == {
        "name": "홍길동",
        "birthdate": "1990-01-31",
        "rrn_digit7": "1",
        "phone": e164,
        "carrier": "KT",
        "has_app": True,
        "eligible": True,
        "note": "added by test_cli_sandbox",
        "source": "added",
        "ci_version": 1,
    }
    browser = app.test_client()
    done = sign_in(browser, sandbox, person, e164)
    assert (done.status_code, done.headers["Location"]) == (303, "/login/welcome")
    account = browser.get("/account")
    assert account.status_code == 200
    assert "홍길동" in account.get_data(as_text=True)
    factory: sessionmaker[Session] = runtime_of(app).sessions
    with factory() as db:
        resident = db.scalar(select(Resident).where(Resident.phone == e164))
    assert resident is not None
    assert (resident.name, resident.birthdate, resident.carrier) == ("홍길동", dt.date(1990, 1, 31), "KT")


def test_residents_add_refuses_a_number_the_sandbox_already_has(env: dict[str, str]) -> None:
    result = idp(
        env,
        *("sandbox", "residents", "add", "--name", "김다른", "--birthdate", "1980-02-02", "--rrn-digit7", "1"),
        *("--phone", "010-0000-0001", "--carrier", "SKT"),
    )

    assert_one_line_error(result, "the sandbox agency refused: +821000000001 already belongs to a sandbox resident.")
