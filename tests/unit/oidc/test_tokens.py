"""Tokens without HTTP: ID tokens and RFC 9068 access tokens signed with the keyring, single-use codes, refresh-token
families, revocation and the `sub` each client sees."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from factories import make_client, make_login_session, make_resident
from joserfc import jwt
from joserfc.jwk import ECKey
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from idp.authn.assurance import aal1
from idp.keyring import Keyring, LoadedKeys
from idp.models import AuthorizationCode, Client, Grant, Resident, RevokedAccessToken
from idp.oidc.claims import pairwise_sub
from idp.oidc.tokens import (
    ACCESS_TOKEN_TYPE,
    CLOCK_LEEWAY,
    MAX_TOKEN_LENGTH,
    Authentication,
    CodeRow,
    TokenInvalidError,
    VerifiedAccessTokens,
    access_token_holds,
    digest,
    find_code,
    find_refresh_token,
    grant_of,
    issue_access_token,
    issue_id_token,
    issue_refresh_token,
    new_jti,
    record_grant,
    revoke_access_token,
    revoke_client_grants,
    revoke_grant,
    rotate_refresh_token,
    spend_code,
    subject_for,
    token_holder,
    verify_access_token,
)
from idp.settings import Settings

NOW = dt.datetime(2026, 11, 26, 6, 0, tzinfo=dt.UTC)
SIGNED_IN = NOW - dt.timedelta(minutes=3)
ISSUER = "http://localhost:8000"


@pytest.fixture
def keys(keyring: Keyring) -> LoadedKeys:
    return keyring.current()


@pytest.fixture
def resident(db: Session) -> Resident:
    return make_resident(db, now=NOW)


@pytest.fixture
def client(db: Session) -> Client:
    return make_client(db, now=NOW).client


def authentication(db: Session, resident: Resident, client: Client, settings: Settings) -> Authentication:
    login = make_login_session(db, resident, at=SIGNED_IN, now=SIGNED_IN).session
    return Authentication(
        resident=resident,
        sub=subject_for(client, resident.id, settings),
        sid=login.sid,
        acr=login.acr,
        amr=list(login.amr),
        auth_time=SIGNED_IN,
    )


def epoch(value: dt.datetime) -> int:
    return int(value.timestamp())


def decode(token: str, keys: LoadedKeys) -> jwt.Token:
    return jwt.decode(token, keys.public_keys, registry=keys.verifier)


def left_half(value: str, algorithm: str) -> str:
    full = hashlib.new(algorithm, value.encode()).digest()
    return base64.urlsafe_b64encode(full[: len(full) // 2]).rstrip(b"=").decode()


# -- ID tokens -------------------------------------------------------------------------------------------------------


def test_id_token_carries_the_sign_in_and_the_released_claims(
    db: Session, keys: LoadedKeys, settings: Settings, client: Client, resident: Resident
) -> None:
    signed_in = authentication(db, resident, client, settings)
    token = issue_id_token(
        keys,
        settings,
        client=client,
        authentication=signed_in,
        claims={"name": "김경기"},
        now=NOW,
        nonce="n-0S6_WzA2Mj",
    )
    decoded = decode(token, keys)
    assert decoded.header == {"alg": "RS256", "kid": keys.active("RS256").kid, "typ": "JWT"}
    assert decoded.claims == {
        "iss": ISSUER,
        "sub": pairwise_sub("rp.example.kr", str(resident.id), settings.pairwise_secret),
        "aud": client.id,
        "iat": epoch(NOW),
        "exp": epoch(NOW) + settings.id_token_ttl,
        "auth_time": epoch(SIGNED_IN),
        "acr": aal1(ISSUER),
        "amr": ["sms", "mca"],
        "sid": signed_in.sid,
        "nonce": "n-0S6_WzA2Mj",
        "name": "김경기",
    }


def test_id_token_without_a_session_or_nonce_names_neither(
    db: Session, keys: LoadedKeys, settings: Settings, client: Client, resident: Resident
) -> None:
    signed_in = replace(authentication(db, resident, client, settings), sid=None)
    claims = decode(
        issue_id_token(keys, settings, client=client, authentication=signed_in, claims={}, now=NOW), keys
    ).claims
    assert "sid" not in claims
    assert "nonce" not in claims
    assert "at_hash" not in claims


def test_id_token_is_signed_with_the_algorithm_the_client_registered(
    db: Session, keys: LoadedKeys, settings: Settings, resident: Resident
) -> None:
    client = make_client(db, now=NOW, id_token_alg="ES256").client
    token = issue_id_token(
        keys, settings, client=client, authentication=authentication(db, resident, client, settings), claims={}, now=NOW
    )
    header = decode(token, keys).header
    assert (header["alg"], header["kid"]) == ("ES256", keys.active("ES256").kid)


@pytest.mark.parametrize(("alg", "algorithm"), [("RS256", "sha256"), ("EdDSA", "sha512")])
def test_at_hash_is_the_left_half_of_the_access_tokens_hash_for_the_signing_algorithm(
    db: Session,
    keyring: Keyring,
    settings: Settings,
    resident: Resident,
    alg: str,
    algorithm: str,
) -> None:
    if alg == "EdDSA":
        keyring.generate("EdDSA")
        keyring.rotate("EdDSA")
    keys = keyring.current()
    client = make_client(db, now=NOW, id_token_alg=alg).client
    token = issue_id_token(
        keys,
        settings,
        client=client,
        authentication=authentication(db, resident, client, settings),
        claims={},
        now=NOW,
        access_token="an.access.token",
    )
    decoded = decode(token, keys)
    assert decoded.header["alg"] == alg
    # OIDC Core §3.1.3.6; Ed25519 signs with SHA-512 (OpenID Connect Core errata, as node-oidc-provider does).
    assert decoded.claims["at_hash"] == left_half("an.access.token", algorithm)


# -- access tokens (RFC 9068) ----------------------------------------------------------------------------------------


def test_access_token_is_an_rfc_9068_jwt_whose_jti_names_its_grant(
    db: Session, keys: LoadedKeys, settings: Settings, client: Client, resident: Resident
) -> None:
    signed_in = authentication(db, resident, client, settings)
    grant = uuid.uuid4()
    token, expires_in = issue_access_token(
        keys, settings, client=client, scope="openid phone", now=NOW, authentication=signed_in, grant_id=grant
    )
    assert expires_in == settings.access_token_ttl
    decoded = decode(token, keys)
    # RFC 9068 §2.1: typ at+jwt; signed with the configured access-token algorithm.
    assert decoded.header == {"alg": "ES256", "kid": keys.active("ES256").kid, "typ": ACCESS_TOKEN_TYPE}
    claims = decoded.claims
    assert set(claims) == {"iss", "aud", "client_id", "iat", "exp", "jti", "scope", "sub", "auth_time", "acr", "amr"}
    assert claims["iss"] == ISSUER
    assert claims["aud"] == claims["client_id"] == client.id
    assert claims["exp"] - claims["iat"] == settings.access_token_ttl
    assert claims["iat"] == epoch(NOW)
    assert claims["sub"] == subject_for(client, resident.id, settings)
    assert (claims["scope"], claims["auth_time"], claims["amr"]) == ("openid phone", epoch(SIGNED_IN), ["sms", "mca"])
    assert grant_of(claims["jti"]) == grant
    # Nothing is stored for the token: its grant's row is what UserInfo and introspection read.
    assert token_holder(db, claims) is None
    record_grant(
        db,
        settings,
        grant_id=grant,
        client=client,
        resident_id=resident.id,
        claims={"userinfo": {"phone_number": None}},
        refreshable=False,
        now=NOW,
    )
    holder = token_holder(db, claims)
    assert holder is not None
    assert (holder.resident.id, holder.claims) == (resident.id, {"phone_number": None})
    row = db.get(Grant, grant)
    assert row is not None
    assert (row.client_id, row.resident_id, row.revoked_at) == (client.id, resident.id, None)
    assert row.expires_at == NOW + dt.timedelta(seconds=settings.access_token_ttl)


def test_a_grant_with_refresh_tokens_is_kept_until_the_last_access_token_of_its_family_expires(
    db: Session, settings: Settings, client: Client, resident: Resident
) -> None:
    grant = uuid.uuid4()
    record_grant(
        db, settings, grant_id=grant, client=client, resident_id=resident.id, claims=None, refreshable=True, now=NOW
    )
    row = db.get(Grant, grant)
    assert row is not None
    lifetime = settings.refresh_token_absolute_ttl + settings.access_token_ttl
    assert row.expires_at == NOW + dt.timedelta(seconds=lifetime)


def test_access_token_of_another_client_does_not_find_the_grant(
    db: Session, keys: LoadedKeys, settings: Settings, client: Client, resident: Resident
) -> None:
    other = make_client(db, now=NOW, name="다른 서비스").client
    grant = uuid.uuid4()
    record_grant(
        db, settings, grant_id=grant, client=client, resident_id=resident.id, claims=None, refreshable=False, now=NOW
    )
    forged = {"jti": new_jti(grant), "client_id": other.id}
    assert token_holder(db, forged) is None
    assert not access_token_holds(db, forged)


def test_client_credentials_access_token_has_the_client_as_its_subject(
    db: Session, keys: LoadedKeys, settings: Settings, client: Client
) -> None:
    token, _ = issue_access_token(keys, settings, client=client, scope="profile", now=NOW)
    claims = decode(token, keys).claims
    # RFC 9068 §2.2: with no resident, the service acts for itself.
    assert claims["sub"] == client.id
    assert not {"auth_time", "acr", "amr"} & set(claims)
    assert grant_of(claims["jti"]) is None
    assert token_holder(db, claims) is None
    assert access_token_holds(db, claims)
    revoke_access_token(db, claims, now=NOW)
    revoke_access_token(db, claims, now=NOW)  # twice is harmless
    assert not access_token_holds(db, claims)
    revoked_row = db.get(RevokedAccessToken, claims["jti"])
    assert revoked_row is not None
    assert revoked_row.expires_at == NOW + dt.timedelta(seconds=settings.access_token_ttl + CLOCK_LEEWAY)


@pytest.mark.parametrize("jti", ["", "abc", "x" * 32 + ".y", "0" * 31 + ".y", "not-a-uuid-at-all-32-characters.", "."])
def test_a_jti_without_a_well_formed_grant_names_none(jti: str) -> None:
    assert grant_of(jti) is None


def test_each_access_token_has_its_own_jti(db: Session, keys: LoadedKeys, settings: Settings, client: Client) -> None:
    jtis = {
        decode(issue_access_token(keys, settings, client=client, scope="profile", now=NOW)[0], keys).claims["jti"]
        for _ in range(5)
    }
    assert len(jtis) == 5


def test_access_token_is_accepted_until_its_exp_plus_the_leeway(
    db: Session, keys: LoadedKeys, settings: Settings, client: Client
) -> None:
    token, expires_in = issue_access_token(keys, settings, client=client, scope="profile", now=NOW)
    last_moment = NOW + dt.timedelta(seconds=expires_in + CLOCK_LEEWAY)
    assert verify_access_token(token, keys, settings, now=last_moment)["client_id"] == client.id
    with pytest.raises(TokenInvalidError, match="expired"):
        verify_access_token(token, keys, settings, now=last_moment + dt.timedelta(seconds=1))


def test_eddsa_access_token_verifies_as_quietly_as_it_was_signed(
    db: Session, keyring: Keyring, settings: Settings, client: Client
) -> None:
    keyring.generate("EdDSA")
    keyring.rotate("EdDSA")
    keys = keyring.current()
    eddsa = replace(settings, access_token_alg="EdDSA")
    token, _ = issue_access_token(keys, eddsa, client=client, scope="profile", now=NOW)
    assert verify_access_token(token, keys, eddsa, now=NOW)["client_id"] == client.id


def _segment(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _claims(client_id: str) -> dict[str, object]:
    return {"iss": ISSUER, "aud": client_id, "client_id": client_id, "exp": epoch(NOW) + 600, "jti": "j1", "sub": "s"}


def forged_with_a_foreign_key(keys: LoadedKeys, client_id: str) -> str:
    # The same kid and algorithm as the IdP's key, but another private key: the signature cannot verify.
    foreign = ECKey.generate_key("P-256")
    header = {"alg": "ES256", "kid": keys.active("ES256").kid, "typ": ACCESS_TOKEN_TYPE}
    return jwt.encode(header, _claims(client_id), foreign)


def payload_changed_after_signing(keys: LoadedKeys, client_id: str) -> str:
    header, _, signature = keys.active("ES256").sign(_claims(client_id), typ=ACCESS_TOKEN_TYPE).split(".")
    return ".".join([header, _segment({**_claims(client_id), "client_id": "another"}), signature])


def unsigned(keys: LoadedKeys, client_id: str) -> str:
    return ".".join([_segment({"alg": "none", "typ": ACCESS_TOKEN_TYPE}), _segment(_claims(client_id)), ""])


def an_id_token(keys: LoadedKeys, client_id: str) -> str:
    # Signed by the IdP, but typ JWT: an ID token is not a bearer token for an API (RFC 9068 §4).
    return keys.active("ES256").sign(_claims(client_id), typ="JWT")


def from_another_issuer(keys: LoadedKeys, client_id: str) -> str:
    return keys.active("ES256").sign({**_claims(client_id), "iss": "https://other.example"}, typ=ACCESS_TOKEN_TYPE)


def without_exp(keys: LoadedKeys, client_id: str) -> str:
    claims = {name: value for name, value in _claims(client_id).items() if name != "exp"}
    return keys.active("ES256").sign(claims, typ=ACCESS_TOKEN_TYPE)


def with_a_text_exp(keys: LoadedKeys, client_id: str) -> str:
    return keys.active("ES256").sign({**_claims(client_id), "exp": "2099-01-01"}, typ=ACCESS_TOKEN_TYPE)


def without_jti(keys: LoadedKeys, client_id: str) -> str:
    claims = {name: value for name, value in _claims(client_id).items() if name != "jti"}
    return keys.active("ES256").sign(claims, typ=ACCESS_TOKEN_TYPE)


def oversized(keys: LoadedKeys, client_id: str) -> str:
    return keys.active("ES256").sign({**_claims(client_id), "pad": "x" * MAX_TOKEN_LENGTH}, typ=ACCESS_TOKEN_TYPE)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (forged_with_a_foreign_key, "bad token"),
        (payload_changed_after_signing, "bad token"),
        (unsigned, "bad token"),
        (an_id_token, "not an access token"),
        (from_another_issuer, "issued elsewhere"),
        (without_exp, "expired"),
        (with_a_text_exp, "expired"),
        (without_jti, "no jti"),
        (oversized, "malformed"),
        (lambda keys, client_id: "", "malformed"),
        (lambda keys, client_id: "two.parts", "malformed"),
        (lambda keys, client_id: "not.base64!.at-all", "bad token"),
    ],
    ids=[
        "foreign-key",
        "changed-payload",
        "alg-none",
        "id-token",
        "other-issuer",
        "no-exp",
        "text-exp",
        "no-jti",
        "oversized",
        "empty",
        "two-segments",
        "garbage",
    ],
)
def test_access_tokens_the_idp_did_not_issue_as_such_are_refused(
    keys: LoadedKeys, settings: Settings, make: Callable[[LoadedKeys, str], str], reason: str
) -> None:
    token = make(keys, "client-1")
    with pytest.raises(TokenInvalidError, match=reason):
        verify_access_token(token, keys, settings, now=NOW)


def test_tokens_of_a_withdrawn_key_are_refused_and_of_a_retired_one_accepted(
    keyring: Keyring, settings: Settings
) -> None:
    keys = keyring.current()
    retired, withdrawn = keys.active("ES256"), keys.active("RS256")
    by_retired = retired.sign(_claims("client-1"), typ=ACCESS_TOKEN_TYPE)
    by_withdrawn = withdrawn.sign(_claims("client-1"), typ=ACCESS_TOKEN_TYPE)
    keyring.retire(retired.kid)
    # `idp keys retire --now` (a compromised key): it leaves the JWKS, and what it signed verifies nowhere.
    keyring.retire(withdrawn.kid, now=True)
    after = keyring.current()
    assert verify_access_token(by_retired, after, settings, now=NOW)["jti"] == "j1"
    with pytest.raises(TokenInvalidError, match="bad token"):
        verify_access_token(by_withdrawn, after, settings, now=NOW)


# -- authorization codes ---------------------------------------------------------------------------------------------


def make_code(
    db: Session, client: Client, resident: Resident, *, code: str = "the-code", expires_at: dt.datetime | None = None
) -> AuthorizationCode:
    record = AuthorizationCode(
        digest=digest(code),
        grant_id=uuid.uuid4(),
        client_id=client.id,
        resident_id=resident.id,
        sid="sid-1",
        redirect_uri="https://rp.example.kr/callback",
        scope="openid offline_access",
        acr=aal1(ISSUER),
        amr=["sms", "mca"],
        auth_time=SIGNED_IN,
        created_at=NOW,
        expires_at=expires_at or NOW + dt.timedelta(seconds=60),
    )
    db.add(record)
    db.flush()
    return record


def issue_under(
    db: Session, keys: LoadedKeys, settings: Settings, client: Client, resident: Resident, grant: uuid.UUID
) -> tuple[dict[str, Any], str]:
    """The claims of an access token and a refresh token of the grant."""
    signed_in = authentication(db, resident, client, settings)
    if db.get(Grant, grant) is None:  # the grant is recorded at its code's exchange, once
        record_grant(
            db, settings, grant_id=grant, client=client, resident_id=resident.id, claims=None, refreshable=True, now=NOW
        )
    access, _ = issue_access_token(
        keys, settings, client=client, scope="openid", now=NOW, authentication=signed_in, grant_id=grant
    )
    refresh = issue_refresh_token(
        db,
        settings,
        client=client,
        authentication=signed_in,
        scope="openid offline_access",
        grant_id=grant,
        claims=None,
        now=NOW,
    )
    return decode(access, keys).claims, refresh


def revoked(db: Session, access: dict[str, Any], refresh: str) -> tuple[bool, bool]:
    db.expire_all()
    refresh_row = find_refresh_token(db, refresh)
    assert refresh_row is not None
    return not access_token_holds(db, access), refresh_row.revoked_at is not None


def digest_of(found: CodeRow | None) -> bytes | None:
    return found.digest if found is not None else None


def test_code_is_found_only_for_the_client_it_was_issued_to(db: Session, client: Client, resident: Resident) -> None:
    record = make_code(db, client, resident)
    other = make_client(db, now=NOW, name="다른 서비스").client
    assert digest_of(find_code(db, "the-code", client.id, now=NOW)) == record.digest
    assert find_code(db, "the-code", other.id, now=NOW) is None
    assert find_code(db, "another-code", client.id, now=NOW) is None
    assert find_code(db, "", client.id, now=NOW) is None
    assert find_code(db, "x" * 257, client.id, now=NOW) is None


def test_unused_code_is_not_found_once_expired(db: Session, client: Client, resident: Resident) -> None:
    record = make_code(db, client, resident)
    assert (
        digest_of(find_code(db, "the-code", client.id, now=record.expires_at - dt.timedelta(seconds=1)))
        == record.digest
    )
    assert find_code(db, "the-code", client.id, now=record.expires_at) is None


def test_finding_a_code_does_not_spend_it(db: Session, client: Client, resident: Resident) -> None:
    record = make_code(db, client, resident)
    find_code(db, "the-code", client.id, now=NOW)
    db.expire_all()
    assert db.scalars(select(AuthorizationCode.consumed_at)).one() is None
    assert spend_code(db, record, now=NOW) is True


def test_code_is_spent_once(db: Session, client: Client, resident: Resident) -> None:
    record = make_code(db, client, resident)
    assert spend_code(db, record, now=NOW) is True
    db.expire_all()
    assert db.get(AuthorizationCode, digest("the-code")).consumed_at == NOW  # type: ignore[union-attr]
    assert spend_code(db, record, now=NOW + dt.timedelta(seconds=1)) is False
    db.expire_all()
    # The replay did not move the time it was spent.
    assert db.get(AuthorizationCode, digest("the-code")).consumed_at == NOW  # type: ignore[union-attr]


def test_replayed_code_revokes_what_it_issued_and_nothing_else(
    db: Session, keys: LoadedKeys, settings: Settings, client: Client, resident: Resident
) -> None:
    record = make_code(db, client, resident)
    other_grant = make_code(db, client, resident, code="another-code")
    assert spend_code(db, record, now=NOW)
    issued = issue_under(db, keys, settings, client, resident, record.grant_id)
    untouched = issue_under(db, keys, settings, client, resident, other_grant.grant_id)
    # A used code is still found for its client (after it expired, too): its replay must be seen to revoke.
    later = NOW + dt.timedelta(minutes=5)
    replayed = find_code(db, "the-code", client.id, now=later)
    assert replayed is not None
    assert spend_code(db, replayed, now=later) is False
    assert revoked(db, *issued) == (True, True)
    assert revoked(db, *untouched) == (False, False)


def test_a_code_found_by_two_token_requests_is_spent_by_one(
    fresh_engine: Engine, keys: LoadedKeys, settings: Settings
) -> None:
    with Session(fresh_engine, expire_on_commit=False) as setup:
        client = make_client(setup, now=NOW).client
        make_code(setup, client, make_resident(setup, now=NOW))
        setup.commit()
    # Both requests passed their checks with the code unspent; only the compare-and-set decides.
    with Session(fresh_engine) as first, Session(fresh_engine) as second:
        seen_first = find_code(first, "the-code", client.id, now=NOW)
        seen_second = find_code(second, "the-code", client.id, now=NOW)
        assert seen_first is not None
        assert seen_second is not None
        assert spend_code(first, seen_first, now=NOW) is True
        first.commit()
        assert spend_code(second, seen_second, now=NOW) is False
        second.commit()


def test_a_refresh_token_presented_twice_at_once_rotates_once(
    fresh_engine: Engine, keys: LoadedKeys, settings: Settings
) -> None:
    with Session(fresh_engine, expire_on_commit=False) as setup:
        client = make_client(setup, now=NOW).client
        resident = make_resident(setup, now=NOW)
        token = issue_refresh_token(
            setup,
            settings,
            client=client,
            authentication=Authentication(
                resident=resident,
                sub=subject_for(client, resident.id, settings),
                sid=None,
                acr="aal1",
                amr=["sms"],
                auth_time=NOW,
            ),
            scope="openid offline_access",
            grant_id=uuid.uuid4(),
            claims=None,
            now=NOW,
        )
        setup.commit()
    with Session(fresh_engine) as first, Session(fresh_engine) as second:
        assert rotate_refresh_token(first, token, client.id, now=NOW) is not None
        first.commit()
        assert rotate_refresh_token(second, token, client.id, now=NOW) is None
        second.commit()
    with Session(fresh_engine) as check:
        row = find_refresh_token(check, token)
        assert row is not None
        # The second presentation is a reuse: the family is revoked (RFC 9700 §4.14.2).
        assert (row.rotated_at, row.revoked_at) == (NOW, NOW)


# -- refresh tokens --------------------------------------------------------------------------------------------------


def test_refresh_token_lives_its_idle_time_within_the_familys_absolute_end(
    db: Session, settings: Settings, client: Client, resident: Resident
) -> None:
    signed_in = authentication(db, resident, client, settings)
    options = {"client": client, "authentication": signed_in, "scope": "openid", "claims": None}
    first = issue_refresh_token(db, settings, grant_id=uuid.uuid4(), now=NOW, **options)  # type: ignore[arg-type]
    row = find_refresh_token(db, first)
    assert row is not None
    assert row.family_expires_at == NOW + dt.timedelta(seconds=settings.refresh_token_absolute_ttl)
    assert row.expires_at == NOW + dt.timedelta(seconds=settings.refresh_token_ttl)
    assert (row.sid, row.acr, row.amr, row.auth_time) == (signed_in.sid, signed_in.acr, signed_in.amr, SIGNED_IN)
    assert row.digest == digest(first) != first.encode()

    # Near the family's end, the next token expires with the family, not an idle time later.
    family_end = NOW + dt.timedelta(days=1)
    near_end = issue_refresh_token(
        db,
        settings,
        grant_id=row.grant_id,
        now=NOW,
        family_expires_at=family_end,
        **options,  # type: ignore[arg-type]
    )
    near_row = find_refresh_token(db, near_end)
    assert near_row is not None
    assert (near_row.expires_at, near_row.family_expires_at) == (family_end, family_end)


def test_refresh_token_rotates_once(db: Session, settings: Settings, client: Client, resident: Resident) -> None:
    token = issue_refresh_token(
        db,
        settings,
        client=client,
        authentication=authentication(db, resident, client, settings),
        scope="openid offline_access",
        grant_id=uuid.uuid4(),
        claims={"name": None},
        now=NOW,
    )
    used = rotate_refresh_token(db, token, client.id, now=NOW + dt.timedelta(hours=1))
    assert used is not None
    assert used.rotated_at == NOW + dt.timedelta(hours=1)
    assert (used.scope, used.claims, used.resident_id) == ("openid offline_access", {"name": None}, resident.id)


def test_reused_refresh_token_revokes_its_whole_family(
    db: Session, keys: LoadedKeys, settings: Settings, client: Client, resident: Resident
) -> None:
    grant = uuid.uuid4()
    _, first = issue_under(db, keys, settings, client, resident, grant)
    used = rotate_refresh_token(db, first, client.id, now=NOW)
    assert used is not None
    # The legitimate client got a new pair under the same grant.
    renewed, second = issue_under(db, keys, settings, client, resident, grant)
    other_jti, other = issue_under(db, keys, settings, client, resident, uuid.uuid4())

    # RFC 9700 §4.14.2: the rotated token comes back (stolen, or a replay): the family is revoked.
    assert rotate_refresh_token(db, first, client.id, now=NOW + dt.timedelta(minutes=1)) is None
    assert revoked(db, renewed, second) == (True, True)
    assert rotate_refresh_token(db, second, client.id, now=NOW + dt.timedelta(minutes=2)) is None
    assert revoked(db, other_jti, other) == (False, False)


def test_another_client_can_neither_use_nor_revoke_a_refresh_token(
    db: Session, keys: LoadedKeys, settings: Settings, client: Client, resident: Resident
) -> None:
    other = make_client(db, now=NOW, name="다른 서비스").client
    jti, token = issue_under(db, keys, settings, client, resident, uuid.uuid4())
    assert rotate_refresh_token(db, token, other.id, now=NOW) is None
    assert rotate_refresh_token(db, token, other.id, now=NOW) is None
    assert revoked(db, jti, token) == (False, False)
    assert rotate_refresh_token(db, token, client.id, now=NOW) is not None


def test_expired_refresh_token_is_refused(db: Session, settings: Settings, client: Client, resident: Resident) -> None:
    token = issue_refresh_token(
        db,
        settings,
        client=client,
        authentication=authentication(db, resident, client, settings),
        scope="openid",
        grant_id=uuid.uuid4(),
        claims=None,
        now=NOW,
    )
    row = find_refresh_token(db, token)
    assert row is not None
    assert rotate_refresh_token(db, token, client.id, now=row.expires_at) is None


def test_revoked_refresh_token_is_refused(
    db: Session, keys: LoadedKeys, settings: Settings, client: Client, resident: Resident
) -> None:
    grant = uuid.uuid4()
    _, token = issue_under(db, keys, settings, client, resident, grant)
    revoke_grant(db, grant, now=NOW)
    assert rotate_refresh_token(db, token, client.id, now=NOW) is None


@pytest.mark.parametrize("token", ["", "x" * 257, "never-issued"])
def test_unknown_or_oversized_refresh_token_is_refused(db: Session, client: Client, token: str) -> None:
    assert rotate_refresh_token(db, token, client.id, now=NOW) is None
    assert find_refresh_token(db, token) is None


# -- revocation ------------------------------------------------------------------------------------------------------


def test_revoking_a_grant_leaves_other_grants_alone(
    db: Session, keys: LoadedKeys, settings: Settings, client: Client, resident: Resident
) -> None:
    grant = uuid.uuid4()
    issued = issue_under(db, keys, settings, client, resident, grant)
    other = issue_under(db, keys, settings, client, resident, uuid.uuid4())
    revoke_grant(db, grant, now=NOW)
    assert revoked(db, *issued) == (True, True)
    assert revoked(db, *other) == (False, False)
    # A second revocation keeps the first time.
    revoke_grant(db, grant, now=NOW + dt.timedelta(hours=1))
    db.expire_all()
    assert db.get(Grant, grant).revoked_at == NOW  # type: ignore[union-attr]


def test_withdrawn_consent_revokes_the_clients_tokens_for_that_resident_only(
    db: Session, keys: LoadedKeys, settings: Settings, client: Client, resident: Resident
) -> None:
    other_client = make_client(db, now=NOW, name="다른 서비스").client
    other_resident = make_resident(db, now=NOW, name="이수원", phone="+821000000002")
    mine = [issue_under(db, keys, settings, client, resident, uuid.uuid4()) for _ in range(2)]
    elsewhere = issue_under(db, keys, settings, other_client, resident, uuid.uuid4())
    someone_else = issue_under(db, keys, settings, client, other_resident, uuid.uuid4())
    revoke_client_grants(db, resident_id=resident.id, client_id=client.id, now=NOW)
    assert [revoked(db, *pair) for pair in mine] == [(True, True), (True, True)]
    assert revoked(db, *elsewhere) == (False, False)
    assert revoked(db, *someone_else) == (False, False)


# -- subjects --------------------------------------------------------------------------------------------------------


def test_pairwise_subject_is_shared_within_a_sector_and_differs_across_sectors(
    db: Session, settings: Settings, resident: Resident
) -> None:
    first = make_client(db, now=NOW, redirect_uris=("https://minwon.suwon.example/a",)).client
    same_sector = make_client(db, now=NOW, redirect_uris=("https://minwon.suwon.example/b",)).client
    other_sector = make_client(db, now=NOW, redirect_uris=("https://welfare.gg.example/cb",)).client
    sub = subject_for(first, resident.id, settings)
    assert sub == pairwise_sub("minwon.suwon.example", str(resident.id), settings.pairwise_secret)
    assert subject_for(same_sector, resident.id, settings) == sub
    assert subject_for(other_sector, resident.id, settings) != sub
    assert str(resident.id) not in sub
    other_resident = make_resident(db, now=NOW, phone="+821000000002")
    assert subject_for(first, other_resident.id, settings) != sub


def test_client_without_a_sector_is_its_own_sector(db: Session, settings: Settings, resident: Resident) -> None:
    batch = make_client(db, now=NOW, redirect_uris=()).client
    assert batch.sector_identifier is None
    assert subject_for(batch, resident.id, settings) == pairwise_sub(
        batch.id, str(resident.id), settings.pairwise_secret
    )


def test_public_subject_is_the_resident_id(db: Session, settings: Settings, resident: Resident) -> None:
    client = make_client(db, now=NOW, subject_type="public").client
    assert subject_for(client, resident.id, settings) == str(resident.id)


def test_pairwise_subject_depends_on_the_pairwise_secret(db: Session, settings: Settings, resident: Resident) -> None:
    client = make_client(db, now=NOW).client
    other = replace(settings, pairwise_secret="another-secret")
    assert subject_for(client, resident.id, settings) != subject_for(client, resident.id, other)


# -- access tokens verified once per process ------------------------------------------------------------------------


def test_a_token_presented_again_is_not_verified_again_but_still_expires(
    keys: LoadedKeys, settings: Settings, client: Client
) -> None:
    verified = VerifiedAccessTokens()
    token, expires_in = issue_access_token(keys, settings, client=client, scope="profile", now=NOW)
    first = verified.verify(token, keys, settings, now=NOW)
    assert first["client_id"] == client.id
    assert verified.verify(token, keys, settings, now=NOW + dt.timedelta(seconds=60)) is first  # remembered
    last_moment = NOW + dt.timedelta(seconds=expires_in + CLOCK_LEEWAY)
    assert verified.verify(token, keys, settings, now=last_moment) is first
    with pytest.raises(TokenInvalidError, match="expired"):
        verified.verify(token, keys, settings, now=last_moment + dt.timedelta(seconds=1))


def test_a_refused_token_is_refused_every_time(keys: LoadedKeys, settings: Settings, client: Client) -> None:
    verified = VerifiedAccessTokens()
    token, _ = issue_access_token(keys, settings, client=client, scope="profile", now=NOW)
    header, _claims, signature = token.split(".")
    tampered = f"{header}.{_segment({'iss': ISSUER, 'sub': 'someone else'})}.{signature}"
    for _ in range(2):
        with pytest.raises(TokenInvalidError):
            verified.verify(tampered, keys, settings, now=NOW)
    assert verified.verify(token, keys, settings, now=NOW)["client_id"] == client.id


def test_a_token_of_a_withdrawn_key_is_refused_though_it_was_verified_before(
    keyring: Keyring, settings: Settings, client: Client
) -> None:
    verified = VerifiedAccessTokens()
    before = keyring.current()
    token, _ = issue_access_token(before, settings, client=client, scope="profile", now=NOW)
    verified.verify(token, before, settings, now=NOW)
    keyring.retire(before.active("ES256").kid, now=True)  # a leaked key: dropped from the JWKS at once
    after = keyring.current()
    assert after is not before
    with pytest.raises(TokenInvalidError):
        verified.verify(token, after, settings, now=NOW)


def test_the_memory_of_verified_tokens_is_bounded(keys: LoadedKeys, settings: Settings, client: Client) -> None:
    verified = VerifiedAccessTokens(limit=3)
    issued = [issue_access_token(keys, settings, client=client, scope="profile", now=NOW)[0] for _ in range(7)]
    for token in issued:
        verified.verify(token, keys, settings, now=NOW)
    assert 1 <= len(verified._claims) <= 3
