"""Helpers for the sandbox agency tests: shipped residents, a fake monotonic clock, a client for the protocol."""

from __future__ import annotations

from typing import Any

from flask.testing import FlaskClient
from joserfc import jwt
from joserfc.jwk import KeySet
from werkzeug.test import TestResponse

SITE_CODE = "GG-IDP-SANDBOX"
SITE_SECRET = "sandbox-site-secret"
ISSUER = "http://127.0.0.1:8100"
AUTH = {"Authorization": f"Bearer {SITE_SECRET}", "X-Site-Code": SITE_CODE}


def resident(carrier: str, name: str, birthdate: str, rrn_digit7: str, phone: str) -> dict[str, str]:
    return {"carrier": carrier, "name": name, "birthdate": birthdate, "rrn_digit7": rrn_digit7, "phone": phone}


# Shipped residents (idp/sandbox/residents.json) the tests lean on.
KIM = resident("SKT", "김경기", "1985-03-14", "1", "+821000000001")
LEE = resident("KT", "이수원", "1992-11-02", "2", "+821000000002")
CHOI_MVNO_NO_APP = resident("SKT_MVNO", "최성남", "1978-01-30", "2", "+821000000004")
JUNG_KT_MVNO = resident("KT_MVNO", "정안양", "1966-05-05", "1", "+821000000005")
HAN_LGU_MVNO = resident("LGU_MVNO", "한고양", "2004-12-25", "4", "+821000000006")
NGUYEN_FOREIGN = resident("SKT", "NGUYEN VAN AN", "1990-08-17", "5", "+821000000007")
OH_CORPORATE = resident("KT", "오법인", "1988-02-29", "1", "+821000000008")
YOON_SKT = resident("SKT", "윤부천", "1995-06-09", "2", "+821000000009")
YOON_LGU_MVNO = resident("LGU_MVNO", "윤부천", "1995-06-09", "2", "+821000000010")
KANG_REISSUED = resident("LGU", "강화성", "1983-10-10", "1", "+821000000011")


class FakeMonotonic:
    """The monotonic clock the poll interval is timed on (with the sandbox clock's offset), moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class AgencyClient:
    """The site's side of the protocol, plus the sandbox-only endpoints, over Flask's test client."""

    def __init__(self, client: FlaskClient, monotonic: FakeMonotonic, sleeps: list[float]) -> None:
        self.http = client
        self.monotonic = monotonic
        self.sleeps = sleeps

    def start(self, resident: dict[str, str] = KIM, **fields: Any) -> TestResponse:
        body = {
            **resident,
            "method": "sms",
            "session_binding": "login-session-1",
            "client_ip": "203.0.113.7",
            "consent": True,
            **fields,
        }
        return self.http.post("/v1/verifications", json=body, headers=AUTH)

    def start_txn(self, resident: dict[str, str] = KIM, **fields: Any) -> str:
        response = self.start(resident, **fields)
        assert response.status_code == 201, response.json
        txn_id: str = response.json["txn_id"]  # type: ignore[index]
        return txn_id

    def confirm(self, txn_id: str, code: object) -> TestResponse:
        return self.http.post(f"/v1/verifications/{txn_id}/confirm", json={"code": code}, headers=AUTH)

    def poll(self, txn_id: str) -> TestResponse:
        response = self.http.get(f"/v1/verifications/{txn_id}", headers=AUTH)
        self.monotonic.advance(1.0)  # the next poll is a polite one unless a test says otherwise
        return response

    def resend(self, txn_id: str) -> TestResponse:
        return self.http.post(f"/v1/verifications/{txn_id}/resend", headers=AUTH)

    def cancel(self, txn_id: str) -> TestResponse:
        return self.http.post(f"/v1/verifications/{txn_id}/cancel", headers=AUTH)

    def outbox(self, phone: str | None = None) -> list[dict[str, Any]]:
        response = self.http.get("/sandbox/outbox", query_string={"phone": phone} if phone else None)
        assert response.status_code == 200, response.json
        messages: list[dict[str, Any]] = response.json  # type: ignore[assignment]
        return messages

    def code_for(self, txn_id: str) -> str:
        """The newest code sent for the transaction."""
        code: str = [message for message in self.outbox() if message["txn_id"] == txn_id][-1]["code"]
        return code

    def verify_by_sms(self, resident: dict[str, str] = KIM, **fields: Any) -> dict[str, Any]:
        """Start, confirm the SMS code, and return the verified result's claims (signature checked)."""
        txn_id = self.start_txn(resident, **fields)
        response = self.confirm(txn_id, self.code_for(txn_id))
        assert response.status_code == 200, response.json
        return self.claims(response.json["result"])  # type: ignore[index]

    def claims(self, result: str) -> dict[str, Any]:
        claims: dict[str, Any] = jwt.decode(result, self.jwks(), algorithms=["ES256"]).claims
        return claims

    def jwks(self) -> KeySet:
        return KeySet.import_key_set(self.http.get("/v1/jwks").json)  # type: ignore[arg-type]

    def advance_clock(self, seconds: float) -> None:
        response = self.http.post("/sandbox/clock", json={"advance": seconds})
        assert response.status_code == 200, response.json

    def fault(self, mode: str, count: int | None = None) -> TestResponse:
        body: dict[str, Any] = {"mode": mode}
        if count is not None:
            body["count"] = count
        return self.http.post("/sandbox/faults", json=body)

    def approval_choices(self, phone: str, txn_id: str) -> list[str]:
        """The numbers the virtual phone offers for the transaction."""
        page = self.http.get(f"/phone/{phone}").get_data(as_text=True)
        if f'/approvals/{txn_id}"' not in page:
            return []
        form = page.split(f'/approvals/{txn_id}"', 1)[1].split("</form>", 1)[0]
        return [part.split('"', 1)[0] for part in form.split('name="number" value="')[1:]]

    def answer(self, phone: str, txn_id: str, **form: str) -> TestResponse:
        return self.http.post(f"/phone/{phone}/approvals/{txn_id}", data=form)
