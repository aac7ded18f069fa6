"""Passkey ceremonies at the service level: options, registration, sign-in, single-use challenges, clones."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session
from webauthn.helpers.decode_credential_public_key import DecodedEC2PublicKey, decode_credential_public_key
from webauthn_authenticator import BS, UP, UV, ExcludedCredentialError, SoftAuthenticator, b64url, from_b64url

from idp.authn.assurance import AuthEvent, Method
from idp.authn.attestation import AttestationPolicy
from idp.authn.passkeys import (
    MAX_RESPONSE_BYTES,
    PasskeyClonedError,
    PasskeyRejectedError,
    authenticate_passkey,
    authentication_options,
    clean_name,
    find_passkey,
    list_passkeys,
    recovery_wait_until,
    register_passkey,
    registration_options,
    remove_passkey,
    rename_passkey,
    sign_in_method,
)
from idp.models import AuditEvent, LoginSession, Passkey, Resident, TotpDevice

RP_ID = "login.gg.go.kr"
ORIGIN = "https://login.gg.go.kr"
BINDING = "binding-of-this-browser"
NOW = dt.datetime(2026, 11, 26, 6, 0, tzinfo=dt.UTC)
LATER = NOW + dt.timedelta(hours=1)
JUST_EXPIRED = dt.timedelta(minutes=5, seconds=1)
NO_ATTESTATION = AttestationPolicy()
CHALLENGE_REFUSED = "challenge_unknown_expired_or_used"
GOOGLE_PASSWORD_MANAGER = bytes.fromhex("ea9b8d664d011d213ce4b6b48cb575d4")

Body = Mapping[str, Any] | str

# -- helpers ---------------------------------------------------------------------------------------------------------


def text_of(body: Body) -> str:
    return body if isinstance(body, str) else json.dumps(body)


def creation_options(
    db: Session,
    resident: Resident,
    *,
    binding: str = BINDING,
    now: dt.datetime = NOW,
    policy: AttestationPolicy = NO_ATTESTATION,
) -> dict[str, Any]:
    options: dict[str, Any] = json.loads(
        registration_options(
            db, resident, rp_id=RP_ID, rp_name="경기도 통합로그인", binding=binding, policy=policy, now=now
        )
    )
    return options


def register(
    db: Session,
    resident: Resident,
    body: Body,
    *,
    binding: str = BINDING,
    now: dt.datetime = NOW,
    policy: AttestationPolicy = NO_ATTESTATION,
    name: str = "내 휴대폰",
) -> Passkey:
    return register_passkey(
        db, resident, text_of(body), rp_id=RP_ID, origin=ORIGIN, binding=binding, policy=policy, name=name, now=now
    )


def request_options(db: Session, *, binding: str = BINDING, now: dt.datetime = NOW) -> dict[str, Any]:
    options: dict[str, Any] = json.loads(authentication_options(db, rp_id=RP_ID, binding=binding, now=now))
    return options


def sign_in(db: Session, body: Body, *, binding: str = BINDING, now: dt.datetime = NOW) -> Passkey:
    verified = authenticate_passkey(
        db, text_of(body), rp_id=RP_ID, origin=ORIGIN, binding=binding, now=now, client_ip="203.0.113.7"
    )
    assert verified.resident.id == verified.passkey.resident_id
    return verified.passkey


def passkeys_of(db: Session, resident: Resident) -> list[Passkey]:
    return list(db.scalars(select(Passkey).where(Passkey.resident_id == resident.id)))


def stored_sign_count(db: Session, passkey: Passkey) -> int | None:
    return db.scalar(select(Passkey.sign_count).where(Passkey.id == passkey.id))


def audit_events(db: Session, event: str, resident: Resident) -> list[AuditEvent]:
    return list(db.scalars(select(AuditEvent).where(AuditEvent.event == event, AuditEvent.resident_id == resident.id)))


def new_resident(db: Session, name: str, phone: str) -> Resident:
    resident = Resident(id=uuid.uuid4(), name=name, phone=phone)
    db.add(resident)
    db.flush()
    return resident


def pad(body: Mapping[str, Any], filler: str, size: int) -> str:
    """The response with an unknown member long enough to make the body `size` characters."""
    text = json.dumps({**body, "padding": ""}, ensure_ascii=False)
    return json.dumps({**body, "padding": filler * (size - len(text))}, ensure_ascii=False)


def with_response(body: Mapping[str, Any], **fields: str) -> dict[str, Any]:
    """The credential with some members of its `response` replaced."""
    return {**body, "response": {**body["response"], **fields}}


@pytest.fixture
def resident(db: Session) -> Resident:
    return new_resident(db, "김민준", "+821012345678")


@pytest.fixture
def authenticator() -> SoftAuthenticator:
    return SoftAuthenticator(RP_ID, ORIGIN)


@pytest.fixture
def passkey(db: Session, resident: Resident, authenticator: SoftAuthenticator) -> Passkey:
    """A passkey registered and used once (its counter is 1)."""
    passkey = register(db, resident, authenticator.create(creation_options(db, resident)))
    assert sign_in(db, authenticator.get(request_options(db))) is passkey
    assert passkey.sign_count == 1
    return passkey


# -- registration options --------------------------------------------------------------------------------------------


def test_registration_options_ask_for_a_discoverable_user_verifying_passkey(db: Session, resident: Resident) -> None:
    options = creation_options(db, resident)
    assert options["rp"] == {"id": RP_ID, "name": "경기도 통합로그인"}
    assert from_b64url(options["user"]["id"]) == resident.id.bytes
    assert options["user"]["name"] == "+821012345678"
    assert options["user"]["displayName"] == "김민준"
    assert options["authenticatorSelection"] == {
        "residentKey": "required",
        "requireResidentKey": True,
        "userVerification": "required",
    }
    assert options["attestation"] == "none"
    assert {"type": "public-key", "alg": -7} in options["pubKeyCredParams"]
    assert options["excludeCredentials"] == []
    assert options["timeout"] == 120_000
    assert len(from_b64url(options["challenge"])) >= 32


def test_registration_options_ask_for_attestation_when_the_policy_requires_it(db: Session, resident: Resident) -> None:
    options = creation_options(db, resident, policy=AttestationPolicy(require_attestation=True))
    assert options["attestation"] == "direct"


def test_registration_options_exclude_the_residents_existing_passkeys(db: Session, resident: Resident) -> None:
    phone, laptop = SoftAuthenticator(RP_ID, ORIGIN), SoftAuthenticator(RP_ID, ORIGIN)
    register(db, resident, phone.create(creation_options(db, resident)))
    register(db, resident, laptop.create(creation_options(db, resident)))
    neighbour = new_resident(db, "이서연", "+821087654321")
    register(db, neighbour, SoftAuthenticator(RP_ID, ORIGIN).create(creation_options(db, neighbour)))

    options = creation_options(db, resident)

    excluded = {from_b64url(item["id"]) for item in options["excludeCredentials"]}
    assert excluded == {phone.last_credential_id, laptop.last_credential_id}
    assert {item["type"] for item in options["excludeCredentials"]} == {"public-key"}
    with pytest.raises(ExcludedCredentialError):
        phone.create(options)


def test_every_options_request_gets_a_new_challenge(db: Session, resident: Resident) -> None:
    challenges = {creation_options(db, resident)["challenge"] for _ in range(3)}
    challenges |= {request_options(db)["challenge"] for _ in range(3)}
    assert len(challenges) == 6


# -- registration ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("backup_eligible", "backed_up"),
    [pytest.param(False, False, id="device-bound"), pytest.param(True, True, id="synced")],
)
def test_registration_stores_the_credential_and_its_backup_flags(
    db: Session, resident: Resident, backup_eligible: bool, backed_up: bool
) -> None:
    authenticator = SoftAuthenticator(RP_ID, ORIGIN, backup_eligible=backup_eligible, aaguid=GOOGLE_PASSWORD_MANAGER)
    response = authenticator.create(creation_options(db, resident), transports=("internal", "hybrid", "carrier-pigeon"))

    passkey = register(db, resident, response, name="  내\t휴대폰\n ")

    credential = authenticator.credentials[authenticator.last_credential_id]
    assert passkeys_of(db, resident) == [passkey]
    assert passkey.resident_id == resident.id
    assert passkey.credential_id == credential.credential_id
    public_key = decode_credential_public_key(passkey.public_key)
    numbers = credential.private_key.public_key().public_numbers()
    assert isinstance(public_key, DecodedEC2PublicKey)
    assert (public_key.alg, public_key.x, public_key.y) == (-7, numbers.x.to_bytes(32), numbers.y.to_bytes(32))
    assert passkey.sign_count == 0
    assert passkey.backup_eligible is backup_eligible
    assert passkey.backed_up is backed_up
    assert passkey.is_synced is backup_eligible
    assert passkey.attested is False
    assert passkey.is_hardware_bound is False
    assert passkey.aaguid == "ea9b8d66-4d01-1d21-3ce4-b6b48cb575d4"
    assert passkey.transports == ["internal", "hybrid"]
    assert passkey.name == "내 휴대폰"
    assert passkey.created_at == NOW
    assert passkey.last_used_at is None
    assert passkey.suspected_clone_at is None
    [event] = audit_events(db, "passkey.registered", resident)
    assert event.result == "success"
    assert event.details == {"synced": backup_eligible}


def test_registration_keeps_the_authenticators_starting_counter(
    db: Session, resident: Resident, authenticator: SoftAuthenticator
) -> None:
    passkey = register(db, resident, authenticator.create(creation_options(db, resident), sign_count=41))
    assert passkey.sign_count == 41


def test_registration_stores_a_counter_beyond_the_signed_32_bit_range(
    db: Session,
    resident: Resident,
    authenticator: SoftAuthenticator,
) -> None:
    passkey = register(db, resident, authenticator.create(creation_options(db, resident), sign_count=2**32 - 1))
    db.flush()
    assert stored_sign_count(db, passkey) == 2**32 - 1


@pytest.mark.parametrize(
    "policy",
    [
        pytest.param(AttestationPolicy(require_attestation=True), id="required"),
        pytest.param(
            AttestationPolicy(require_attestation=True, allowed_aaguids=frozenset({str(uuid.UUID(bytes=bytes(16)))})),
            id="required-model-allowed",
        ),
    ],
)
def test_required_attestation_refuses_a_none_attestation(
    db: Session, resident: Resident, authenticator: SoftAuthenticator, policy: AttestationPolicy
) -> None:
    response = authenticator.create(creation_options(db, resident, policy=policy))
    with pytest.raises(PasskeyRejectedError) as refused:
        register(db, resident, response, policy=policy)
    assert refused.value.reason == "attestation_required"
    assert passkeys_of(db, resident) == []


def test_none_attestation_from_an_allowed_model_is_not_attested(
    db: Session, resident: Resident, authenticator: SoftAuthenticator
) -> None:
    policy = AttestationPolicy(allowed_aaguids=frozenset({str(uuid.UUID(bytes=bytes(16)))}))
    passkey = register(db, resident, authenticator.create(creation_options(db, resident, policy=policy)), policy=policy)
    assert passkey.attested is False


Spoil = Callable[[SoftAuthenticator, dict[str, Any]], Body]

REGISTRATION_REFUSALS: list[Any] = [
    pytest.param(
        lambda a, o: a.create(o, client_data={"type": "webauthn.get"}),
        "registration_invalid",
        id="client-data-of-a-sign-in",
    ),
    pytest.param(
        lambda a, o: a.create(o, client_data={"challenge": b64url(b"x" * 64)}),
        CHALLENGE_REFUSED,
        id="client-data-with-another-challenge",
    ),
    pytest.param(
        lambda a, o: a.create(o, origin="https://login.gg.go.kr.example"), "registration_invalid", id="origin"
    ),
    pytest.param(lambda a, o: a.create(o, origin="http://login.gg.go.kr"), "registration_invalid", id="origin-http"),
    pytest.param(lambda a, o: a.create(o, rp_id="gg.go.kr.example"), "registration_invalid", id="rp-id"),
    pytest.param(lambda a, o: a.create(o, user_verified=False), "registration_invalid", id="no-user-verification"),
    pytest.param(lambda a, o: a.create(o, flags=UV), "registration_invalid", id="no-user-presence"),
    pytest.param(lambda a, o: a.create(o, malformed_attestation=True), "registration_invalid", id="malformed-cbor"),
    pytest.param(lambda a, o: pad(a.create(o), "x", MAX_RESPONSE_BYTES + 1), "oversized_response", id="oversized-body"),
    pytest.param(lambda a, o: json.dumps(a.create(o))[:-1], "malformed_json", id="truncated-json"),
    pytest.param(lambda a, o: "[]", "malformed_json", id="json-array"),
    pytest.param(lambda a, o: "{}", "malformed_client_data", id="empty-object"),
    pytest.param(
        lambda a, o: with_response(a.create(o), clientDataJSON=b64url(b"{nope")),
        "malformed_client_data",
        id="client-data-not-json",
    ),
    pytest.param(
        lambda a, o: {**a.create(o), "rawId": b64url(b"another id")},
        "registration_invalid",
        id="raw-id-differs-from-id",
    ),
]


@pytest.mark.parametrize(("spoil", "reason"), REGISTRATION_REFUSALS)
def test_refused_registration_stores_nothing(
    db: Session, resident: Resident, authenticator: SoftAuthenticator, spoil: Spoil, reason: str
) -> None:
    body = spoil(authenticator, creation_options(db, resident))
    with pytest.raises(PasskeyRejectedError) as refused:
        register(db, resident, body)
    assert type(refused.value) is PasskeyRejectedError
    assert refused.value.reason.startswith(reason)
    assert passkeys_of(db, resident) == []
    assert audit_events(db, "passkey.registered", resident) == []


def test_registration_response_cannot_be_replayed(
    db: Session, resident: Resident, authenticator: SoftAuthenticator
) -> None:
    response = authenticator.create(creation_options(db, resident))
    register(db, resident, response)
    with pytest.raises(PasskeyRejectedError) as refused:
        register(db, resident, response)
    assert refused.value.reason == CHALLENGE_REFUSED
    assert len(passkeys_of(db, resident)) == 1


def test_registration_challenge_lasts_five_minutes(
    db: Session, resident: Resident, authenticator: SoftAuthenticator
) -> None:
    late = authenticator.create(creation_options(db, resident))
    with pytest.raises(PasskeyRejectedError) as refused:
        register(db, resident, late, now=NOW + JUST_EXPIRED)
    assert refused.value.reason == CHALLENGE_REFUSED
    assert passkeys_of(db, resident) == []
    in_time = SoftAuthenticator(RP_ID, ORIGIN).create(creation_options(db, resident))
    register(db, resident, in_time, now=NOW + dt.timedelta(minutes=4, seconds=59))
    assert len(passkeys_of(db, resident)) == 1


def test_registration_challenge_of_another_browser_is_refused(
    db: Session, resident: Resident, authenticator: SoftAuthenticator
) -> None:
    response = authenticator.create(creation_options(db, resident, binding="binding-of-another-browser"))
    with pytest.raises(PasskeyRejectedError) as refused:
        register(db, resident, response)
    assert refused.value.reason == CHALLENGE_REFUSED
    assert passkeys_of(db, resident) == []


def test_registration_challenge_of_another_resident_is_refused(
    db: Session, resident: Resident, authenticator: SoftAuthenticator
) -> None:
    neighbour = new_resident(db, "이서연", "+821087654321")
    response = authenticator.create(creation_options(db, neighbour))
    with pytest.raises(PasskeyRejectedError) as refused:
        register(db, resident, response)
    assert refused.value.reason == CHALLENGE_REFUSED
    assert passkeys_of(db, resident) == []


def test_registration_answering_a_sign_in_challenge_is_refused(
    db: Session, resident: Resident, authenticator: SoftAuthenticator
) -> None:
    options = {**creation_options(db, resident), "challenge": request_options(db)["challenge"]}
    with pytest.raises(PasskeyRejectedError) as refused:
        register(db, resident, authenticator.create(options))
    assert refused.value.reason == CHALLENGE_REFUSED
    assert passkeys_of(db, resident) == []


def test_registration_with_a_challenge_never_issued_is_refused(
    db: Session, resident: Resident, authenticator: SoftAuthenticator
) -> None:
    options = {**creation_options(db, resident), "challenge": b64url(b"not issued by the server" * 2)}
    with pytest.raises(PasskeyRejectedError) as refused:
        register(db, resident, authenticator.create(options))
    assert refused.value.reason == CHALLENGE_REFUSED


def test_a_credential_id_is_registered_once(db: Session, resident: Resident, authenticator: SoftAuthenticator) -> None:
    first = register(db, resident, authenticator.create(creation_options(db, resident)))
    neighbour = new_resident(db, "이서연", "+821087654321")
    impostor = SoftAuthenticator(RP_ID, ORIGIN)
    response = impostor.create(creation_options(db, neighbour), credential_id=first.credential_id)
    with pytest.raises(PasskeyRejectedError) as refused:
        register(db, neighbour, response)
    assert refused.value.reason == "credential_already_registered"
    assert passkeys_of(db, neighbour) == []
    assert passkeys_of(db, resident) == [first]


def test_registration_backed_up_but_not_backup_eligible_is_refused(
    db: Session, resident: Resident, authenticator: SoftAuthenticator
) -> None:
    response = authenticator.create(creation_options(db, resident), flags=UP | UV | BS)
    with pytest.raises(PasskeyRejectedError):
        register(db, resident, response)
    assert passkeys_of(db, resident) == []


def test_registration_with_a_credential_id_over_1023_bytes_is_refused(
    db: Session, resident: Resident, authenticator: SoftAuthenticator
) -> None:
    response = authenticator.create(creation_options(db, resident), credential_id=b"\x01" * 1024)
    with pytest.raises(PasskeyRejectedError):
        register(db, resident, response)
    assert passkeys_of(db, resident) == []


def test_oversized_body_is_measured_in_bytes(db: Session, resident: Resident, authenticator: SoftAuthenticator) -> None:
    body = pad(authenticator.create(creation_options(db, resident)), "가", MAX_RESPONSE_BYTES // 2)
    assert len(body.encode()) > MAX_RESPONSE_BYTES
    with pytest.raises(PasskeyRejectedError) as refused:
        register(db, resident, body)
    assert refused.value.reason == "oversized_response"


# -- sign-in ---------------------------------------------------------------------------------------------------------


def test_sign_in_options_ask_for_user_verification_and_name_no_credential(db: Session) -> None:
    options = request_options(db)
    assert options["rpId"] == RP_ID
    assert options["userVerification"] == "required"
    assert options["allowCredentials"] == []
    assert options["timeout"] == 120_000
    assert len(from_b64url(options["challenge"])) >= 32


def test_sign_in_returns_the_passkey_and_updates_counter_use_and_backup_state(db: Session, resident: Resident) -> None:
    authenticator = SoftAuthenticator(RP_ID, ORIGIN, backup_eligible=True, backed_up=False)
    registered = register(db, resident, authenticator.create(creation_options(db, resident)))
    assert (registered.backup_eligible, registered.backed_up) == (True, False)
    authenticator.backed_up = True

    passkey = sign_in(db, authenticator.get(request_options(db, now=LATER)), now=LATER)

    assert passkey is registered
    assert passkey.sign_count == 1
    assert passkey.last_used_at == LATER
    assert passkey.backed_up is True
    assert stored_sign_count(db, passkey) == 1
    again = LATER + dt.timedelta(minutes=1)
    sign_in(db, authenticator.get(request_options(db, now=again)), now=again)
    assert (passkey.sign_count, passkey.last_used_at) == (2, again)


def test_sign_in_accepts_an_authenticator_that_does_not_count(
    db: Session, resident: Resident, authenticator: SoftAuthenticator
) -> None:
    passkey = register(db, resident, authenticator.create(creation_options(db, resident)))
    for _ in range(2):
        assert sign_in(db, authenticator.get(request_options(db), sign_count=0)) is passkey
    assert passkey.sign_count == 0
    assert passkey.suspected_clone_at is None


def test_sign_in_picks_the_passkey_by_credential_id(db: Session, resident: Resident) -> None:
    phone, laptop = SoftAuthenticator(RP_ID, ORIGIN), SoftAuthenticator(RP_ID, ORIGIN)
    on_phone = register(db, resident, phone.create(creation_options(db, resident)))
    on_laptop = register(db, resident, laptop.create(creation_options(db, resident)))
    assert sign_in(db, laptop.get(request_options(db))) is on_laptop
    assert sign_in(db, phone.get(request_options(db))) is on_phone
    assert (on_phone.sign_count, on_laptop.sign_count) == (1, 1)


SIGN_IN_REFUSALS: list[Any] = [
    pytest.param(
        lambda a, o: a.get(o, client_data={"crossOrigin": True}), "assertion_invalid", id="client-data-tampered"
    ),
    pytest.param(
        lambda a, o: a.get(o, client_data={"challenge": b64url(b"y" * 64)}),
        CHALLENGE_REFUSED,
        id="client-data-with-another-challenge",
    ),
    pytest.param(lambda a, o: a.get(o, origin="https://login.gg.go.kr.example"), "assertion_invalid", id="origin"),
    pytest.param(lambda a, o: a.get(o, rp_id="gg.go.kr.example"), "assertion_invalid", id="rp-id"),
    pytest.param(lambda a, o: a.get(o, user_verified=False), "assertion_invalid", id="no-user-verification"),
    pytest.param(lambda a, o: a.get(o, flags=UV), "assertion_invalid", id="no-user-presence"),
    pytest.param(
        lambda a, o: with_response(a.get(o), signature=b64url(b"\x30\x00")), "assertion_invalid", id="signature-garbage"
    ),
    pytest.param(
        lambda a, o: with_response(a.get(o), authenticatorData=b64url(bytes(10))),
        "assertion_invalid",
        id="authenticator-data-truncated",
    ),
    pytest.param(lambda a, o: pad(a.get(o), "x", MAX_RESPONSE_BYTES + 1), "oversized_response", id="oversized-body"),
    pytest.param(lambda a, o: json.dumps(a.get(o))[:-1], "malformed_json", id="truncated-json"),
    pytest.param(lambda a, o: '"public-key"', "malformed_json", id="json-string"),
    pytest.param(lambda a, o: {**a.get(o), "response": None}, "malformed_credential", id="no-response"),
    pytest.param(lambda a, o: {**a.get(o), "type": "password"}, "malformed_credential", id="credential-type"),
]


@pytest.mark.parametrize(("spoil", "reason"), SIGN_IN_REFUSALS)
def test_refused_sign_in_changes_nothing(
    db: Session, passkey: Passkey, authenticator: SoftAuthenticator, spoil: Spoil, reason: str
) -> None:
    body = spoil(authenticator, request_options(db, now=LATER))
    with pytest.raises(PasskeyRejectedError) as refused:
        sign_in(db, body, now=LATER)
    assert type(refused.value) is PasskeyRejectedError
    assert refused.value.reason.startswith(reason)
    assert stored_sign_count(db, passkey) == 1
    assert passkey.last_used_at == NOW
    assert passkey.suspected_clone_at is None


def test_sign_in_response_cannot_be_replayed(db: Session, passkey: Passkey, authenticator: SoftAuthenticator) -> None:
    response = authenticator.get(request_options(db))
    sign_in(db, response)
    with pytest.raises(PasskeyRejectedError) as refused:
        sign_in(db, response)
    assert refused.value.reason == CHALLENGE_REFUSED
    assert stored_sign_count(db, passkey) == 2
    assert passkey.suspected_clone_at is None


def test_sign_in_challenge_lasts_five_minutes(db: Session, passkey: Passkey, authenticator: SoftAuthenticator) -> None:
    with pytest.raises(PasskeyRejectedError) as refused:
        sign_in(db, authenticator.get(request_options(db)), now=NOW + JUST_EXPIRED)
    assert refused.value.reason == CHALLENGE_REFUSED
    assert stored_sign_count(db, passkey) == 1
    sign_in(db, authenticator.get(request_options(db)), now=NOW + dt.timedelta(minutes=4, seconds=59))
    assert stored_sign_count(db, passkey) == 3


def test_sign_in_challenge_of_another_browser_is_refused(
    db: Session, passkey: Passkey, authenticator: SoftAuthenticator
) -> None:
    response = authenticator.get(request_options(db, binding="binding-of-another-browser"))
    with pytest.raises(PasskeyRejectedError) as refused:
        sign_in(db, response)
    assert refused.value.reason == CHALLENGE_REFUSED
    assert stored_sign_count(db, passkey) == 1


def test_sign_in_answering_a_registration_challenge_is_refused(
    db: Session, resident: Resident, passkey: Passkey, authenticator: SoftAuthenticator
) -> None:
    response = authenticator.get({"challenge": creation_options(db, resident)["challenge"], "rpId": RP_ID})
    with pytest.raises(PasskeyRejectedError) as refused:
        sign_in(db, response)
    assert refused.value.reason == CHALLENGE_REFUSED
    assert stored_sign_count(db, passkey) == 1


def test_sign_in_with_an_unknown_credential_is_refused(db: Session, resident: Resident, passkey: Passkey) -> None:
    stranger = SoftAuthenticator(RP_ID, ORIGIN)
    stranger.create(creation_options(db, resident))  # made on the device, never sent to the server
    with pytest.raises(PasskeyRejectedError) as refused:
        sign_in(db, stranger.get(request_options(db)))
    assert refused.value.reason == "unknown_credential"
    assert stored_sign_count(db, passkey) == 1


@pytest.mark.parametrize("cloned_at", [0, 1], ids=["counter-went-back", "counter-did-not-grow"])
def test_counter_going_backwards_marks_the_passkey_cloned_and_refuses_it_from_then_on(
    db: Session, resident: Resident, authenticator: SoftAuthenticator, cloned_at: int
) -> None:
    passkey = register(db, resident, authenticator.create(creation_options(db, resident)))
    copies = authenticator.clone()
    for _ in range(2):
        sign_in(db, authenticator.get(request_options(db)))
    for _ in range(cloned_at):
        copies.get(request_options(db))  # the copy is used elsewhere; its counter moves on its own
    assert passkey.sign_count == 2

    with pytest.raises(PasskeyClonedError) as refused:
        sign_in(db, copies.get(request_options(db, now=LATER)), now=LATER)

    assert refused.value.reason == "sign_count_went_backwards"
    assert passkey.suspected_clone_at == LATER
    assert stored_sign_count(db, passkey) == 2
    [event] = audit_events(db, "passkey.clone_suspected", resident)
    assert event.result == "failure"
    assert event.client_ip == "203.0.113.7"
    with pytest.raises(PasskeyClonedError) as still_refused:
        sign_in(db, authenticator.get(request_options(db, now=LATER), sign_count=1000), now=LATER)
    assert still_refused.value.reason == "credential_marked_cloned"
    assert stored_sign_count(db, passkey) == 2
    assert passkey.last_used_at == NOW


def test_a_forged_assertion_with_a_low_counter_does_not_block_the_passkey(
    db: Session, resident: Resident, passkey: Passkey
) -> None:
    impostor = SoftAuthenticator(RP_ID, ORIGIN)
    impostor.add_credential(passkey.credential_id, resident.id.bytes)
    with pytest.raises(PasskeyRejectedError) as refused:
        sign_in(db, impostor.get(request_options(db), sign_count=0))
    assert type(refused.value) is PasskeyRejectedError
    assert passkey.suspected_clone_at is None
    assert audit_events(db, "passkey.clone_suspected", resident) == []


def test_a_forged_assertion_with_a_higher_counter_is_refused(db: Session, resident: Resident, passkey: Passkey) -> None:
    impostor = SoftAuthenticator(RP_ID, ORIGIN)
    impostor.add_credential(passkey.credential_id, resident.id.bytes, sign_count=10)
    with pytest.raises(PasskeyRejectedError) as refused:
        sign_in(db, impostor.get(request_options(db)))
    assert type(refused.value) is PasskeyRejectedError
    assert refused.value.reason.startswith("assertion_invalid")
    assert stored_sign_count(db, passkey) == 1


def test_sign_in_with_the_user_handle_of_another_account_is_refused(
    db: Session, passkey: Passkey, authenticator: SoftAuthenticator
) -> None:
    with pytest.raises(PasskeyRejectedError):
        sign_in(db, authenticator.get(request_options(db), user_handle=uuid.uuid4().bytes))
    assert stored_sign_count(db, passkey) == 1


def test_sign_in_with_an_undecodable_raw_id_is_refused(
    db: Session, passkey: Passkey, authenticator: SoftAuthenticator
) -> None:
    with pytest.raises(PasskeyRejectedError):
        sign_in(db, {**authenticator.get(request_options(db)), "rawId": "a"})


def test_sign_in_backed_up_but_not_backup_eligible_is_refused(
    db: Session, passkey: Passkey, authenticator: SoftAuthenticator
) -> None:
    with pytest.raises(PasskeyRejectedError):
        sign_in(db, authenticator.get(request_options(db), flags=UP | UV | BS))


# -- management ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "cleaned"),
    [
        ("  회사\t노트북 \n", "회사 노트북"),
        ("키\x00\u200b보드", "키보드"),
        ("", "패스키"),
        ("\x07", "패스키"),
        ("가" * 150, "가" * 100),
    ],
)
def test_passkey_names_are_cleaned(name: str, cleaned: str) -> None:
    assert clean_name(name) == cleaned


def test_rename_list_find_and_remove(db: Session, resident: Resident, passkey: Passkey) -> None:
    rename_passkey(db, passkey, "  거실 태블릿 ")
    assert passkey.name == "거실 태블릿"
    assert list_passkeys(db, resident.id) == [passkey]
    assert find_passkey(db, resident.id, str(passkey.id)) is passkey
    assert find_passkey(db, uuid.uuid4(), str(passkey.id)) is None
    assert find_passkey(db, resident.id, "not-a-uuid") is None

    remove_passkey(db, passkey, now=NOW)

    assert list_passkeys(db, resident.id) == []
    assert len(audit_events(db, "passkey.removed", resident)) == 1


# -- the recovery path: when a new passkey counts in full ------------------------------------------------------------

WAIT = dt.timedelta(hours=72)


def session_after(resident: Resident, *methods: tuple[Method, dt.timedelta]) -> LoginSession:
    """A login session (not stored) whose events are `methods`, each that long before NOW."""
    events = [AuthEvent.of(method, issuer="https://login.gg.go.kr", at=NOW - ago) for method, ago in methods]
    return LoginSession(resident_id=resident.id, events=[event.to_json() for event in events])


def with_totp(db: Session, resident: Resident) -> None:
    db.add(TotpDevice(resident_id=resident.id, secret_encrypted=b"x", confirmed_at=NOW, created_at=NOW))
    db.flush()


RECENT = dt.timedelta(minutes=5)
STALE = dt.timedelta(minutes=16)


def test_a_first_passkey_counts_at_once_whatever_the_sign_in(db: Session, resident: Resident) -> None:
    login = session_after(resident, (Method.CARRIER_SMS, RECENT))
    assert recovery_wait_until(db, login, wait=WAIT, now=NOW) is None


@pytest.mark.parametrize(
    ("methods", "waits"),
    [
        pytest.param([(Method.CARRIER_SMS, RECENT)], True, id="carrier-alone"),
        pytest.param([(Method.CARRIER_APP, RECENT)], True, id="carrier-app-alone"),
        pytest.param([(Method.CARRIER_SMS, RECENT), (Method.RECOVERY_CODE, RECENT)], True, id="carrier-and-recovery"),
        pytest.param([(Method.PASSKEY, STALE), (Method.CARRIER_SMS, RECENT)], True, id="passkey-too-long-ago"),
        pytest.param([(Method.PASSKEY_PROVISIONAL, RECENT)], True, id="a-waiting-passkey"),
        pytest.param([(Method.CARRIER_SMS, RECENT), (Method.TOTP, RECENT)], False, id="carrier-and-totp"),
        pytest.param([(Method.PASSKEY, RECENT)], False, id="passkey"),
        pytest.param([(Method.PASSKEY_HARDWARE, RECENT)], False, id="hardware-passkey"),
    ],
)
def test_with_an_authenticator_app_a_new_passkey_waits_unless_it_vouched(
    db: Session, resident: Resident, methods: list[tuple[Method, dt.timedelta]], waits: bool
) -> None:
    with_totp(db, resident)
    expected = NOW + WAIT if waits else None
    assert recovery_wait_until(db, session_after(resident, *methods), wait=WAIT, now=NOW) == expected


def test_only_a_passkey_past_its_wait_makes_the_next_one_wait(
    db: Session, resident: Resident, authenticator: SoftAuthenticator
) -> None:
    login = session_after(resident, (Method.CARRIER_SMS, RECENT))
    first = register_passkey(
        db,
        resident,
        text_of(authenticator.create(creation_options(db, resident))),
        rp_id=RP_ID,
        origin=ORIGIN,
        binding=BINDING,
        policy=NO_ATTESTATION,
        name="새 휴대폰",
        now=NOW,
        provisional_until=NOW + WAIT,
    )
    assert first.is_provisional(NOW)
    assert sign_in_method(first, now=NOW) is Method.PASSKEY_PROVISIONAL
    # A waiting passkey vouches for nothing: the resident has no passkey that counts yet.
    assert recovery_wait_until(db, login, wait=WAIT, now=NOW) is None
    later = NOW + WAIT + dt.timedelta(seconds=1)
    assert sign_in_method(first, now=later) is Method.PASSKEY
    assert recovery_wait_until(db, login, wait=WAIT, now=later) == later + WAIT
    first.suspected_clone_at = later
    db.flush()
    assert recovery_wait_until(db, login, wait=WAIT, now=later) is None
