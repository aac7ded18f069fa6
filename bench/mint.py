"""The bench client and resident on each server, and the values the cases spend, minted before each run: codes,
refresh tokens, access tokens and signed-in browsers' cookies.

The idp's are made by the idp's own code, never by rows written here: `IdpMinter` is the one place the bench
reaches into idp internals, so that a change there shows up (or breaks loudly) in one class. node-oidc-provider's
are saved by its own models, through the benchmark-only route of bench/node/provider.mjs.
"""

from __future__ import annotations

import datetime as dt
import json
import urllib.parse
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Protocol

from cases import (
    CODE_SCOPE,
    REDIRECT_URI,
    RESIDENT,
    Credentials,
    MintKind,
    authorization_code_request,
    authorization_query,
)
from flask import Flask, Response
from servers import HOST, BenchError, Server, http_request, set_cookie_header
from sqlalchemy.orm import Session

from idp.app import create_app
from idp.authn.assurance import AuthEvent, Method
from idp.authn.sessions import sign_in_resident
from idp.models import Client, LoginSession, Resident
from idp.oidc import tokens
from idp.oidc.clients import ClientSpec, create_client, secret_digest_key
from idp.oidc.consent import grant_consent
from idp.oidc.grants import AuthorizationCodeGrant, AuthorizedResident
from idp.oidc.interaction import set_session_cookie
from idp.runtime import Runtime, db_session, of
from idp.settings import Settings

MINT_BATCH = 20_000  # values per node request
USER_AGENT = "bench/run.py"  # the browser of the bench resident's login sessions


class Minter(Protocol):
    def mint(self, kind: MintKind, count: int) -> list[str]:
        """`count` new values of `kind`, each good for one use."""
        ...


class StaticMinter:
    """For the cases that mint nothing (discovery, JWKS)."""

    def mint(self, kind: MintKind, count: int) -> list[str]:
        raise BenchError(f"nothing to mint {kind} with")


class IdpMinter:
    """The bench client and resident in one idp database, and values made by the idp's own functions, in the app
    `idp serve` runs (`create_app` on the same settings), without HTTP:

    - the client by `clients.create_client`; the resident's sign-in (carrier SMS, 30 s ago) by
      `sessions.sign_in_resident`, and their consent to the client's scopes by `consent.grant_consent`;
    - codes by the authorization-code grant of a real /authorize request, parsed once by the app's authorization
      server (`get_consent_grant`, in a request context) and asked `count` times for a code
      (`generate_authorization_code`, `save_authorization_code`): every row as /authorize saves it, one commit,
      the INSERTs batched by SQLAlchemy's unit of work;
    - refresh tokens by `tokens.issue_refresh_token`, a grant each (as after `count` sign-ins), one commit;
    - login cookies: a sign-in each (`sign_in_resident`), the cookie as `interaction.set_session_cookie` sets it;
    - access tokens from the token endpoint itself, for a minted code (what a service holds).
    """

    def __init__(self, env: Mapping[str, str]) -> None:
        self.app: Flask = create_app(Settings.from_env(env))
        self.runtime: Runtime = of(self.app)
        self.server: Server | None = None
        self.credentials = self._create_client_and_resident()

    def _create_client_and_resident(self) -> Credentials:
        settings = self.runtime.settings
        now = dt.datetime.now(dt.UTC)
        spec = ClientSpec(
            name="bench",
            redirect_uris=(REDIRECT_URI,),
            grant_types=("authorization_code", "refresh_token", "client_credentials"),
            scopes=tuple(CODE_SCOPE.split()),
        )
        with self.runtime.sessions() as db:
            created = create_client(
                db, spec, secret_key=secret_digest_key(settings.secret_key), issuer=settings.issuer, now=now
            )
            # The resident as a carrier verification left them (the one row written here: creating a resident
            # takes an agency's signed result).
            resident = Resident(id=uuid.uuid4(), verified_at=now, verified_by="bench", created_at=now, **RESIDENT)
            db.add(resident)
            db.flush()
            login, _ = self._sign_in(db, resident, now=now)
            grant_consent(db, resident.id, created.client.id, CODE_SCOPE.split(), now=now)
            self.client_id, self.resident_id, self.login_id = created.client.id, resident.id, login.id
            db.commit()
        assert created.secret is not None
        return Credentials(created.client.id, created.secret)

    def _sign_in(self, db: Session, resident: Resident, *, now: dt.datetime) -> tuple[LoginSession, str]:
        """The resident signed in by carrier SMS half a minute ago, on a browser of their own: its login session
        (what codes take their sid, acr, amr and auth_time from) and cookie value."""
        issuer = self.runtime.settings.issuer
        event = AuthEvent.of(Method.CARRIER_SMS, issuer=issuer, at=now - dt.timedelta(seconds=30))
        return sign_in_resident(
            db, resident, [event], current=None, client_ip=HOST, user_agent=USER_AGENT, issuer=issuer, now=now
        )

    def mint(self, kind: MintKind, count: int) -> list[str]:
        if kind == "code":
            return self._codes(count)
        if kind == "refresh_token":
            return self._refresh_tokens(count)
        if kind == "login_cookie":
            return [self._login_cookie() for _ in range(count)]
        return [self._access_token() for _ in range(count)]

    @contextmanager
    def _authorize_request(self) -> Iterator[AuthorizationCodeGrant]:
        """The grant of /authorize?… for the bench resident's login session (the bench client's code request with
        PKCE, a nonce and CODE_SCOPE), as the app's authorization server validated it, in that request's context."""
        query = authorization_query(self.credentials, scope=CODE_SCOPE)
        with self.app.test_request_context(f"/authorize?{query}"):
            login = db_session().get(LoginSession, self.login_id)
            assert login is not None
            grant: AuthorizationCodeGrant = self.runtime.oidc.get_consent_grant(
                end_user=AuthorizedResident(login.resident, login)
            )
            # Set by the /authorize view from the request's `claims` parameter (oidc/views.py); this one has none.
            grant.request.claims_requested = None
            yield grant

    def _codes(self, count: int) -> list[str]:
        codes: list[str] = []
        with self._authorize_request() as grant:
            for _ in range(count):
                codes.append(grant.generate_authorization_code())
                grant.save_authorization_code(codes[-1], grant.request)
            db_session().commit()
        return codes

    def _refresh_tokens(self, count: int) -> list[str]:
        settings = self.runtime.settings
        now = dt.datetime.now(dt.UTC)
        values: list[str] = []
        with self.runtime.sessions() as db:
            client, login = db.get(Client, self.client_id), db.get(LoginSession, self.login_id)
            assert client is not None
            assert login is not None
            authentication = tokens.Authentication(
                resident=login.resident,
                sub=tokens.subject_for(client, login.resident_id, settings),
                sid=login.sid,
                acr=login.acr,
                amr=list(login.amr),
                auth_time=login.auth_time,
            )
            for _ in range(count):
                values.append(
                    tokens.issue_refresh_token(
                        db,
                        settings,
                        client=client,
                        authentication=authentication,
                        scope=CODE_SCOPE,
                        grant_id=uuid.uuid4(),  # one family per token, as one resident's sign-in would start
                        claims=None,
                        now=now,
                    )
                )
            db.commit()
        return values

    def _login_cookie(self) -> str:
        """The Cookie header of a browser the bench resident just signed in on (carrier SMS)."""
        now = dt.datetime.now(dt.UTC)
        with self.runtime.sessions() as db:
            resident = db.get(Resident, self.resident_id)
            assert resident is not None
            _, cookie_value = self._sign_in(db, resident, now=now)
            db.commit()
        with self.app.test_request_context("/"):
            response = Response()
            set_session_cookie(response, cookie_value)
            return set_cookie_header(response.headers.getlist("Set-Cookie"))

    def _access_token(self) -> str:
        """An access token with the code's scope (openid included), from the token endpoint."""
        assert self.server is not None
        request = authorization_code_request(self.credentials).with_value(self.mint("code", 1)[0])
        url = self.server.base_url + request.path_on(self.server)
        status, _, body = http_request(url, method=request.method, body=request.body, headers=request.headers)
        if status != 200:
            raise BenchError(f"idp code exchange for an access token: status {status}: {body[:300]!r}")
        token: str = json.loads(body)["access_token"]
        return token

    def close(self) -> None:
        self.runtime.engine.dispose()


class NodeMinter:
    """Codes, refresh tokens, opaque access tokens and login sessions saved by node-oidc-provider's own models
    (`--mint`)."""

    def __init__(self, server: Server) -> None:
        self.server = server

    def mint(self, kind: MintKind, count: int) -> list[str]:
        values: list[str] = []
        while len(values) < count:
            batch = min(MINT_BATCH, count - len(values))
            query = urllib.parse.urlencode({"kind": kind, "count": batch})
            status, _, body = http_request(f"{self.server.base_url}/bench/mint?{query}", method="POST", timeout=120)
            if status != 200:
                raise BenchError(f"node-oidc-provider /bench/mint: status {status}: {body[:300]!r}")
            values += json.loads(body)["values"]
        return values
