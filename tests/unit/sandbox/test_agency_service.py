"""The agency's parts without HTTP: Agency with an injected clock, Faults counting, keys, the residents files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from joserfc import jwt
from joserfc.errors import BadSignatureError
from joserfc.jwk import KeySet

from idp.sandbox.agency import (
    Agency,
    AgencyError,
    Clock,
    ErrorCode,
    Method,
    Pending,
    StartRequest,
    TxnState,
    Verified,
)
from idp.sandbox.faults import FaultMode, Faults
from idp.sandbox.residents import Carrier, ResidentDirectory, ResidentInvalidError
from idp.sandbox.signing import AgencyKeys, corrupt_signature

T0 = 1_750_000_000.0


class FixedTime:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def make_agency(state_dir: Path, time_source: FixedTime) -> Agency:
    return Agency(
        ResidentDirectory.load(state_dir),
        AgencyKeys.load(state_dir),
        issuer="http://127.0.0.1:8100",
        site_code="SITE",
        clock=Clock(time_source),
        monotonic=time_source,
    )


def kim(method: Method = Method.SMS) -> StartRequest:
    return StartRequest(
        carrier=Carrier.SKT,
        name="김경기",
        birthdate="1985-03-14",
        rrn_digit7="1",
        phone="+821000000001",
        method=method,
        session_binding="binding",
        client_ip="192.0.2.1",
    )


def test_an_sms_verification_without_http(tmp_path: Path) -> None:
    time_source = FixedTime()
    agency = make_agency(tmp_path, time_source)
    started = agency.start(kim())
    assert started.expires_at == T0 + 180
    assert started.resend_after == T0 + 30
    (message,) = agency.outbox()
    verified = agency.confirm(started.txn_id, message.code)
    keys = KeySet.import_key_set(agency.keys.jwks())  # type: ignore[arg-type]
    claims = jwt.decode(verified.result, keys, algorithms=["ES256"]).claims
    assert (claims["iat"], claims["exp"], claims["aud"]) == (int(T0), int(T0) + 600, "SITE")


def test_an_app_verification_without_http(tmp_path: Path) -> None:
    time_source = FixedTime()
    agency = make_agency(tmp_path, time_source)
    started = agency.start(kim(Method.APP))
    assert started.match_number is not None
    assert isinstance(agency.poll(started.txn_id), Pending)
    (approval,) = agency.approvals("+821000000001")
    assert started.match_number in approval.choices
    assert agency.answer_approval("+821000000001", started.txn_id, number=started.match_number) is TxnState.VERIFIED
    time_source.now += 1
    assert isinstance(agency.poll(started.txn_id), Verified)


def test_the_clock_adds_its_offset_to_real_time() -> None:
    time_source = FixedTime()
    clock = Clock(time_source)
    clock.advance(30)
    clock.advance(0.5)
    assert clock.now() == T0 + 30.5
    assert clock.offset == 30.5
    clock.reset()
    assert clock.now() == T0


def test_agency_errors_carry_their_status_and_wire_form() -> None:
    error = AgencyError(ErrorCode.WRONG_CODE, "The code is wrong.", retryable=True, attempts_remaining=2)
    assert error.status == 400
    assert error.to_json() == {
        "error": "wrong_code",
        "message": "The code is wrong.",
        "retryable": True,
        "attempts_remaining": 2,
        "retry_after": None,
    }
    assert AgencyError(ErrorCode.EXPIRED, "x").status == 410
    assert AgencyError(ErrorCode.INVALID_REQUEST, "x", status=404).status == 404


def test_request_faults_count_requests_and_corruption_counts_results() -> None:
    faults = Faults()
    assert faults.take_request_fault() is FaultMode.NONE
    faults.set(FaultMode.SLOW, 2)
    assert faults.take_corruption() is False
    assert faults.take_request_fault() is FaultMode.SLOW
    assert faults.current().remaining == 1
    assert faults.take_request_fault() is FaultMode.SLOW
    assert faults.current().mode is FaultMode.NONE
    faults.set(FaultMode.CORRUPT, 1)
    assert faults.take_request_fault() is FaultMode.NONE
    assert faults.take_corruption() is True
    assert faults.take_corruption() is False


def test_a_corrupted_signature_no_longer_verifies(tmp_path: Path) -> None:
    keys = AgencyKeys.load(tmp_path)
    token = keys.sign({"a": 1})
    corrupted = corrupt_signature(token)
    assert corrupted.rsplit(".", 1)[0] == token.rsplit(".", 1)[0]
    key_set = KeySet.import_key_set(keys.jwks())  # type: ignore[arg-type]
    assert jwt.decode(token, key_set, algorithms=["ES256"]).claims == {"a": 1}
    with pytest.raises(BadSignatureError):
        jwt.decode(corrupted, key_set, algorithms=["ES256"])


def test_keys_are_created_once_per_state_folder(tmp_path: Path) -> None:
    first = AgencyKeys.load(tmp_path)
    second = AgencyKeys.load(tmp_path)
    assert first.kid == second.kid
    assert first.ci("p", 1) == second.ci("p", 1)
    assert first.ci("p", 1) != first.ci("p", 2)
    assert first.di("A", "p") != first.di("B", "p")


def test_a_malformed_residents_file_in_the_state_folder_is_named(tmp_path: Path) -> None:
    (tmp_path / "residents.json").write_text(json.dumps({"residents": [{"name": "x"}]}))
    with pytest.raises(ResidentInvalidError, match=r"residents\.json: resident 0"):
        ResidentDirectory.load(tmp_path)
    (tmp_path / "residents.json").write_text("{not json")
    with pytest.raises(ResidentInvalidError, match="cannot be read"):
        ResidentDirectory.load(tmp_path)
    (tmp_path / "residents.json").write_text(json.dumps({"residents": [], "ci_versions": {"p": 0}}))
    with pytest.raises(ResidentInvalidError, match="ci_versions"):
        ResidentDirectory.load(tmp_path)
