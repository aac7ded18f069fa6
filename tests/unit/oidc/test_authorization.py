"""The /authorize rules, one check at a time and in order, without HTTP (idp/oidc/authorization.py)."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

import pytest
from authlib.oauth2.rfc6749 import OAuth2Error
from authlib.oidc.core.errors import ConsentRequiredError, LoginRequiredError
from sqlalchemy import event
from sqlalchemy.orm import Session

from idp.authn.assurance import PHR, PHRH, AuthEvent, LoginReason, Method, aal1
from idp.authn.sessions import start_session
from idp.keyring import Keyring
from idp.models import Client, Consent, LoginSession, Passkey, Resident
from idp.oidc import authorization
from idp.oidc.authorization import AskConsent, AuthorizationRequest, Issue, ReceivedRequest, SignIn, Situation
from idp.oidc.errors import UnmetAuthenticationRequirementsError
from idp.oidc.interaction import PendingRequest
from idp.oidc.tokens import Authentication, issue_id_token, subject_for
from idp.settings import Settings

ISSUER = "https://login.gg.go.kr"
AAL1 = aal1(ISSUER)
NOW = dt.datetime(2026, 12, 7, 9, 0, tzinfo=dt.UTC)
HALF_AN_HOUR_AGO = NOW - dt.timedelta(minutes=30)
SETTINGS = Settings(issuer=ISSUER, pairwise_secret="pairwise", data_key="data", secret_key="secret", ci_pepper="p")


# -- the world of one request --------------------------------------------------------------------------------------


@pytest.fixture
def resident(db: Session) -> Resident:
    resident = Resident(id=uuid.uuid4(), name="김경기", phone="+821000000001")
    db.add(resident)
    db.flush()
    return resident


@pytest.fixture
def client(db: Session) -> Client:
    client = Client(
        id=f"client-{uuid.uuid4().hex[:8]}",
        name="민원 포털",
        redirect_uris=["https://rp.example.kr/callback"],
        grant_types=["authorization_code"],
        scopes=["openid", "profile", "phone", "kr_ci"],
        sector_identifier="rp.example.kr",
    )
    db.add(client)
    db.flush()
    return client


def signed_in(
    db: Session, resident: Resident, method: Method = Method.CARRIER_SMS, at: dt.datetime = HALF_AN_HOUR_AGO
) -> LoginSession:
    event = AuthEvent.of(method, issuer=ISSUER, at=at)
    return start_session(db, resident, event, client_ip=None, user_agent=None, now=at).session


def consented(db: Session, resident: Resident, client: Client, *scopes: str) -> None:
    db.add(Consent(resident_id=resident.id, client_id=client.id, scopes=list(scopes), granted_at=NOW))
    db.flush()


def with_passkey(db: Session, resident: Resident) -> None:
    db.add(
        Passkey(
            resident_id=resident.id,
            credential_id=uuid.uuid4().bytes,
            public_key=b"k",
            aaguid=str(uuid.UUID(int=0)),
            name="휴대폰",
            backup_eligible=True,
        )
    )
    db.flush()


def situation(
    db: Session,
    client: Client,
    login: LoginSession | None,
    *,
    since: dt.datetime | None = None,
    decision: dict[str, Any] | None = None,
    keys: Any = None,
    **params: str,
) -> Situation:
    sent = {"response_type": "code", "client_id": client.id, "scope": "openid profile", **params}
    request = AuthorizationRequest.parse(sent, client=client, redirect_uri=client.redirect_uris[0], scope=sent["scope"])
    return Situation(
        request,
        login=login,
        pending=PendingRequest(since=since, decision=decision),
        db=db,
        settings=SETTINGS,
        keys=keys,
        held=None,
        now=NOW,
    )


def essential(*values: str) -> str:
    return json.dumps({"id_token": {"acr": {"essential": True, "values": list(values)}}})


# -- request checks ------------------------------------------------------------------------------------------------


def received(**params: str) -> ReceivedRequest:
    return ReceivedRequest({"response_type": "code", "client_id": "c", **params}, ())


@pytest.mark.parametrize(
    ("request_", "error"),
    [
        (ReceivedRequest({"response_type": "code", "scope": "openid"}, ("scope",)), "invalid_request"),
        (received(state="x" * 2049), "invalid_request"),
        (received(state="a\x01b"), "invalid_request"),
        (received(response_mode="fragment"), "invalid_request"),
        (received(max_age="-1"), "invalid_request"),
        (received(max_age="1e3"), "invalid_request"),
        (ReceivedRequest({"client_id": "c"}, ()), "invalid_request"),
        (received(nonce="n" * 513), "invalid_request"),
        (received(request="eyJ..."), "request_not_supported"),
        (received(request_uri="https://rp.example.kr/r"), "request_uri_not_supported"),
    ],
)
def test_each_request_check_names_its_error(request_: ReceivedRequest, error: str) -> None:
    with pytest.raises(OAuth2Error) as refused:
        authorization.check_request(request_)
    assert refused.value.error == error


def test_a_well_formed_request_passes_the_request_checks() -> None:
    authorization.check_request(received(response_mode="form_post", max_age="0", nonce="n" * 512, state="s"))


def test_a_refused_parameter_is_named_only_when_its_name_may_appear_in_an_error_description() -> None:
    assert authorization.parameter_named("scope") == "Parameter 'scope'"
    assert authorization.parameter_named('a"b') == "A parameter"
    assert authorization.parameter_named("\u00e9") == "A parameter"


# -- the request parsed once ----------------------------------------------------------------------------------------


def test_acr_values_and_the_claims_request_combine_in_the_clients_order(db: Session, client: Client) -> None:
    claims = json.dumps({"id_token": {"acr": {"essential": True, "values": [PHRH]}}})
    parsed = situation(db, client, None, acr_values=PHR, claims=claims).request
    assert parsed.acr_values == (PHRH, PHR)
    assert parsed.essential_acr is True
    assert situation(db, client, None).request.acr_values == ()
    client.default_acr = PHR
    assert situation(db, client, None).request.acr_values == (PHR,)


@pytest.mark.parametrize("claims", ["not json", "[]", '{"id_token": []}', '{"userinfo": "x"}', "{" + " " * 5000 + "}"])
def test_a_malformed_claims_request_is_invalid(db: Session, client: Client, claims: str) -> None:
    with pytest.raises(OAuth2Error) as refused:
        situation(db, client, None, claims=claims)
    assert refused.value.error == "invalid_request"


# -- client checks -------------------------------------------------------------------------------------------------


def test_an_essential_acr_of_only_unknown_levels_is_unmet_before_anything_else(db: Session, client: Client) -> None:
    with pytest.raises(UnmetAuthenticationRequirementsError):
        authorization.essential_acr_is_known(situation(db, client, None, claims=essential("urn:unknown")))
    authorization.essential_acr_is_known(situation(db, client, None, acr_values="urn:unknown"))


def test_an_id_token_hint_must_be_one_of_ours(db: Session, client: Client, keyring: Keyring) -> None:
    with pytest.raises(OAuth2Error) as refused:
        authorization.id_token_hint_is_ours(situation(db, client, None, keys=keyring.current(), id_token_hint="a.b.c"))
    assert refused.value.error == "invalid_request"


# -- login checks --------------------------------------------------------------------------------------------------


def reason(found: Situation) -> LoginReason | None:
    for check in authorization.LOGIN_CHECKS:
        why = check(found)
        if why is not None:
            return why
    return None


def test_a_session_that_meets_the_request_needs_no_sign_in(db: Session, client: Client, resident: Resident) -> None:
    login = signed_in(db, resident)
    assert reason(situation(db, client, login)) is None
    assert reason(situation(db, client, login, max_age="3600", acr_values=AAL1)) is None


def test_no_session_needs_a_sign_in(db: Session, client: Client) -> None:
    assert authorization.no_session(situation(db, client, None)) is LoginReason.NO_SESSION


def test_prompt_login_needs_a_new_sign_in_unless_one_happened_since_the_request(
    db: Session, client: Client, resident: Resident
) -> None:
    login = signed_in(db, resident)
    assert authorization.prompt_login(situation(db, client, login, prompt="login")) is LoginReason.PROMPT_LOGIN
    assert authorization.prompt_login(situation(db, client, login, prompt="consent")) is None
    since = HALF_AN_HOUR_AGO
    assert authorization.prompt_login(situation(db, client, login, since=since, prompt="login")) is None
    later = since + dt.timedelta(seconds=1)
    assert (
        authorization.prompt_login(situation(db, client, login, since=later, prompt="login"))
        is LoginReason.PROMPT_LOGIN
    )


def test_max_age_exceeded_needs_a_sign_in(db: Session, client: Client, resident: Resident) -> None:
    login = signed_in(db, resident)
    assert authorization.max_age_exceeded(situation(db, client, login, max_age="1799")) is LoginReason.MAX_AGE
    assert authorization.max_age_exceeded(situation(db, client, login, max_age="1800")) is None
    assert authorization.max_age_exceeded(situation(db, client, login, max_age="0")) is LoginReason.MAX_AGE
    fresh = situation(db, client, login, since=HALF_AN_HOUR_AGO - dt.timedelta(minutes=1), max_age="0")
    assert authorization.max_age_exceeded(fresh) is None


def test_acr_too_low_steps_up_only_to_a_level_the_resident_can_reach(
    db: Session, client: Client, resident: Resident
) -> None:
    login = signed_in(db, resident)
    # Without a passkey, phr cannot be reached: not asked (settled after consent checks).
    assert authorization.acr_too_low(situation(db, client, login, acr_values=PHR)) is None
    with_passkey(db, resident)
    assert authorization.acr_too_low(situation(db, client, login, acr_values=PHR)) is LoginReason.ACR_TOO_LOW
    # Any acceptable level will do, and a higher level meets a lower request.
    assert authorization.acr_too_low(situation(db, client, login, acr_values=f"{PHR} {AAL1}")) is None
    # A sign-in since the request ends the step-up, even below the level: asking again would loop.
    assert authorization.acr_too_low(situation(db, client, login, since=HALF_AN_HOUR_AGO, acr_values=PHR)) is None


def test_the_residents_methods_are_looked_up_only_when_a_level_is_asked_for(
    db: Session, client: Client, resident: Resident
) -> None:
    login = signed_in(db, resident)
    statements: list[str] = []

    def listener(_connection: object, _cursor: object, statement: str, *_rest: object) -> None:
        statements.append(statement)

    event.listen(db.connection(), "before_cursor_execute", listener)
    try:
        assert authorization.acr_too_low(situation(db, client, login)) is None
        assert not [sql for sql in statements if "passkey" in sql or "totp_device" in sql]
        authorization.acr_too_low(situation(db, client, login, acr_values=PHR))
        assert [sql for sql in statements if "passkey" in sql]
    finally:
        event.remove(db.connection(), "before_cursor_execute", listener)


def test_kr_ci_needs_a_carrier_verification_unless_the_ci_is_kept(
    db: Session, client: Client, resident: Resident
) -> None:
    login = signed_in(db, resident, Method.PASSKEY)
    found = situation(db, client, login, scope="openid kr_ci")
    assert authorization.carrier_verification_for_kr_ci(found) is LoginReason.CARRIER_VERIFICATION
    resident.ci_encrypted = b"kept"
    assert authorization.carrier_verification_for_kr_ci(found) is None


def test_a_hint_naming_another_resident_asks_for_a_sign_in_then_refuses(
    db: Session, client: Client, resident: Resident, keyring: Keyring
) -> None:
    other = Resident(id=uuid.uuid4(), name="이수원", phone="+821000000002")
    db.add(other)
    login = signed_in(db, resident)
    hint = issue_id_token(
        keyring.current(),
        SETTINGS,
        client=client,
        authentication=Authentication(
            resident=other, sub=subject_for(client, other.id, SETTINGS), sid=None, acr=AAL1, amr=[], auth_time=NOW
        ),
        claims={},
        now=NOW,
    )
    keys = keyring.current()
    assert authorization.hint_names_another_resident(situation(db, client, login, keys=keys, id_token_hint=hint)) is (
        LoginReason.PROMPT_LOGIN
    )
    # Someone else signed in for this very request: the client is not handed another person.
    with pytest.raises(LoginRequiredError):
        authorization.hint_names_another_resident(
            situation(db, client, login, keys=keys, since=HALF_AN_HOUR_AGO, id_token_hint=hint)
        )


def test_login_reasons_come_in_order(db: Session, client: Client, resident: Resident) -> None:
    with_passkey(db, resident)
    login = signed_in(db, resident)
    asked = {"prompt": "login", "max_age": "60", "acr_values": PHR}
    assert authorization.decide(situation(db, client, None, **asked)) == SignIn(LoginReason.NO_SESSION)
    assert authorization.decide(situation(db, client, login, **asked)) == SignIn(LoginReason.PROMPT_LOGIN)
    assert authorization.decide(situation(db, client, login, max_age="60", acr_values=PHR)) == SignIn(
        LoginReason.MAX_AGE
    )
    assert authorization.decide(situation(db, client, login, acr_values=PHR)) == SignIn(LoginReason.ACR_TOO_LOW)


def test_prompt_none_cannot_send_the_resident_to_sign_in(db: Session, client: Client) -> None:
    with pytest.raises(LoginRequiredError):
        authorization.decide(situation(db, client, None, prompt="none"))


# -- consent checks ------------------------------------------------------------------------------------------------


def test_an_essential_level_the_resident_cannot_reach_is_unmet(db: Session, client: Client, resident: Resident) -> None:
    consented(db, resident, client, "openid", "profile")
    login = signed_in(db, resident)
    with pytest.raises(UnmetAuthenticationRequirementsError):
        authorization.decide(situation(db, client, login, claims=essential(PHR)))
    # A voluntary one returns the level reached.
    assert authorization.decide(situation(db, client, login, acr_values=PHR)) == Issue(allowed=True)


@pytest.mark.parametrize("has_passkey", [True, False])
def test_with_prompt_none_a_service_not_yet_allowed_learns_nothing_of_passkeys(
    db: Session, client: Client, resident: Resident, has_passkey: bool
) -> None:
    if has_passkey:
        with_passkey(db, resident)
    login = signed_in(db, resident)
    with pytest.raises(LoginRequiredError):
        authorization.decide(situation(db, client, login, prompt="none", claims=essential(PHR)))


def test_consent_is_asked_for_the_scopes_not_yet_allowed(db: Session, client: Client, resident: Resident) -> None:
    consented(db, resident, client, "openid")
    login = signed_in(db, resident)
    assert authorization.decide(situation(db, client, login)) == AskConsent(shown=["profile"])
    with pytest.raises(ConsentRequiredError):
        authorization.decide(situation(db, client, login, prompt="none"))
    consented_all = situation(db, client, login, prompt="consent", scope="openid")
    assert authorization.decide(consented_all) == AskConsent(shown=["openid"])


def test_an_answer_counts_only_for_its_resident_and_its_scope_list(
    db: Session, client: Client, resident: Resident
) -> None:
    login = signed_in(db, resident)
    allow = {"decision": "allow", "resident": str(resident.id), "scopes": ["openid", "profile"]}
    consented(db, resident, client, "openid", "profile")
    assert authorization.decide(situation(db, client, login, prompt="consent", decision=allow)) == Issue(allowed=True)
    deny = {**allow, "decision": "deny"}
    assert authorization.decide(situation(db, client, login, decision=deny)) == Issue(allowed=False)
    someone_else = {**allow, "resident": str(uuid.uuid4())}
    assert authorization.decide(situation(db, client, login, prompt="consent", decision=someone_else)) == AskConsent(
        shown=["openid", "profile"]
    )
    other_scopes = {**allow, "scopes": ["openid"]}
    assert authorization.decide(situation(db, client, login, prompt="consent", decision=other_scopes)) == AskConsent(
        shown=["openid", "profile"]
    )


def test_a_first_party_service_is_not_asked(db: Session, client: Client, resident: Resident) -> None:
    client.first_party = True
    assert authorization.decide(situation(db, client, signed_in(db, resident, Method.PASSKEY))) == Issue(allowed=True)
