"""After real sign-ins, neither the database nor the logs hold a raw CI, a code, the registration digit or a
full phone number outside the resident's own record."""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import replace

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sandbox_agency import SandboxAgency
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from idp.authn.carrier import HttpCarrierGateway, VerificationMethod, VerificationRequest, session_binding_for
from idp.db import Base
from idp.logs import STANDARD_ATTRS
from idp.models import Carrier
from idp.runtime import of as runtime_of
from idp.settings import Settings

PHONE = "+821000000001"
NATIONAL = "01000000001"
KIM = {"carrier": "SKT", "name": "김경기", "birthdate": "1985-03-14", "rrn_digit7": "1", "phone": "010-0000-0001"}
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        # What a log line carries: the message and the fields passed with `extra=` (not timings and thread ids,
        # whose digits could look like a code).
        extra = {key: value for key, value in vars(record).items() if key not in STANDARD_ATTRS}
        self.lines.append(f"{record.getMessage()} {extra}")


@pytest.fixture
def logs() -> Iterator[Collect]:
    handler = Collect()
    logger = logging.getLogger("idp")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


@pytest.fixture
def app(
    make_app: Callable[[Settings], Flask], settings: Settings, sandbox: SandboxAgency, fresh_database_url: str
) -> Flask:
    app = make_app(replace(settings, carrier_agency_url=sandbox.url, database_url=fresh_database_url))
    app.config["TESTING"] = True
    return app


def post(client: FlaskClient, page: str, path: str, form: dict[str, str]) -> int:
    token = CSRF.search(client.get(page).get_data(as_text=True))
    assert token
    return client.post(path, data={"csrf_token": token.group(1), **form}).status_code


def raw_ci(sandbox: SandboxAgency) -> str:
    gateway = HttpCarrierGateway(
        sandbox.url, production=False, site_code="GG-IDP-SANDBOX", site_secret="sandbox-site-secret"
    )
    request = VerificationRequest(
        carrier=Carrier.SKT,
        name="김경기",
        birthdate=dt.date(1985, 3, 14),
        rrn_digit7="1",
        phone=PHONE,
        method=VerificationMethod.SMS,
        session_binding=session_binding_for("x"),
        client_ip="192.0.2.1",
    )
    transaction = gateway.start(request)
    ci = gateway.confirm_code(transaction.txn_id, sandbox.last_code(PHONE)).ci
    gateway.close()
    return ci


def dump(session: Session) -> str:
    rows = []
    for table in Base.metadata.sorted_tables:
        for row in session.execute(select(table)):
            rows.append(f"{table.name}: {tuple(row)!r}")
    return "\n".join(rows)


def test_no_ci_code_digit_or_stray_phone_number_is_kept(app: Flask, sandbox: SandboxAgency, logs: Collect) -> None:
    ci = raw_ci(sandbox)
    client = app.test_client()
    # A wrong code, then the right one; a resend; then a second sign-in.
    assert post(client, "/login/carrier", "/login/carrier", {"method": "sms", "consent": "y", **KIM}) == 303
    assert post(client, "/login/carrier/verify", "/login/carrier/verify", {"action": "confirm", "code": "999999"}) in (
        400,
        303,
    )
    sandbox.advance(31)
    assert post(client, "/login/carrier/verify", "/login/carrier/verify", {"action": "resend"}) == 303
    code = sandbox.last_code(PHONE)
    assert post(client, "/login/carrier/verify", "/login/carrier/verify", {"action": "confirm", "code": code}) == 303
    assert post(client, "/login/carrier", "/login/carrier", {"method": "sms", "consent": "y", **KIM}) == 303
    code = sandbox.last_code(PHONE)
    assert post(client, "/login/carrier/verify", "/login/carrier/verify", {"action": "confirm", "code": code}) == 303
    codes = {message["code"] for message in sandbox.outbox(PHONE)}
    txn_ids = {message["txn_id"] for message in sandbox.outbox(PHONE)}

    with runtime_of(app).sessions() as session:
        everything = dump(session)
        outside_resident = "\n".join(line for line in everything.splitlines() if not line.startswith("resident:"))
        assert "resident:" in everything
        assert session.execute(text("SELECT count(*) FROM audit_event")).scalar_one() >= 6
    log_text = "\n".join(logs.lines)
    assert logs.lines

    for place, haystack in (("database", everything), ("logs", log_text)):
        assert ci not in haystack, place
        assert ci.replace("+", "-").replace("/", "_").rstrip("=") not in haystack, place
        for secret in codes | txn_ids:
            # A code counts as found only as a number of its own, not as six digits inside a longer one.
            assert not re.search(rf"(?<![0-9A-Za-z]){re.escape(secret)}(?![0-9A-Za-z])", haystack), (place, secret)
        assert "rrn" not in haystack.lower(), place
    for place, haystack in (("database outside the resident record", outside_resident), ("logs", log_text)):
        assert PHONE not in haystack, place
        assert NATIONAL not in haystack, place
        assert "010-0000-0001" not in haystack, place
