"""The oidc blueprint: /authorize /token /userinfo /introspect /revoke, discovery and the JWKS."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import secrets
import uuid
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from authlib.common.urls import add_params_to_uri
from authlib.oauth2.rfc6749 import OAuth2Error
from authlib.oauth2.rfc6749.errors import InvalidRequestError
from flask import Blueprint, Response, redirect, render_template, request, session, url_for
from flask_babel import gettext as _
from sqlalchemy import or_, select
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response as BaseResponse

from idp.authn.assurance import (
    LoginReason,
    Method,
    acr_satisfies,
    available_methods,
    best_acceptable,
    login_reason,
    reachable_acr,
)
from idp.authn.sessions import session_assurance
from idp.authn.totp import has_totp
from idp.keyring import KeyringError
from idp.models import Passkey
from idp.oidc.clients import find_client
from idp.oidc.consent import grant_consent, held_ci, keep_raw_ci, missing_scopes
from idp.oidc.endpoints import UserInfoError, userinfo
from idp.oidc.grants import AuthorizedResident
from idp.oidc.logout import IdTokenHintInvalidError, end_login_session, read_id_token_hint
from idp.oidc.outbound import allows_local_destinations
from idp.oidc.registration import (
    RegistrationError,
    client_for_registration_token,
    delete_registration,
    read_registration,
    register_client,
)
from idp.oidc.server import IdpAuthorizationServer
from idp.oidc.tokens import subject_for
from idp.runtime import current, db_session, request_time
from idp.web.cookies import clear_session_cookie, current_login
from idp.web.forms import ActionForm
from idp.web.login import HELD_CI, PENDING_AUTHORIZATIONS

bp = Blueprint("oidc", __name__)
RESPONSE_MODES = ("query", "form_post")
MAX_NONCE = 512
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")
PENDING = PENDING_AUTHORIZATIONS
MAX_PARAMETER = 2048
PARAMETER_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


def _server() -> IdpAuthorizationServer:
    return current().oidc


def _authorization_params() -> dict[str, str]:
    source = request.form if request.method == "POST" else request.args
    return {key: value for key, value in source.items(multi=False) if key != "csrf_token"}


def _redirect_back(params: dict[str, str], error: OAuth2Error) -> BaseResponse:
    """The error to the client's redirect URI with state and iss (RFC 9207), in the response mode asked for."""
    redirect_uri = error.redirect_uri
    assert redirect_uri
    fields = [("error", error.error)]
    if error.description:
        fields.append(("error_description", error.description))
    if params.get("state"):
        fields.append(("state", params["state"]))
    fields.append(("iss", _server().settings.issuer))
    return _deliver(params, add_params_to_uri(redirect_uri, fields))


def _deliver(params: dict[str, str], location: str) -> BaseResponse:
    """A redirect for response_mode=query; an auto-submitted form for form_post (OAuth 2.0 Form Post)."""
    if params.get("response_mode") != "form_post":
        response = redirect(location, 302)
        response.headers["Cache-Control"] = "no-store"
        return response
    parts = urlsplit(location)
    action = parts._replace(query="").geturl()
    fields = parse_qsl(parts.query, keep_blank_values=True)
    response = Response(render_template("form_post.html", action=action, fields=fields), mimetype="text/html")
    response.headers["Cache-Control"] = "no-store"
    return response


def _protocol_error(code: str, redirect_uri: str | None, description: str | None = None) -> OAuth2Error:
    error = OAuth2Error(description=description, redirect_uri=redirect_uri)
    error.error = code
    return error


def _error_page(error: OAuth2Error) -> tuple[str, int]:
    """An error that cannot go back safely (unknown client, unregistered redirect URI): a page, never a redirect."""
    messages = {
        "invalid_client": _("This service is not registered with Gyeonggi-do sign-in."),
        "invalid_request": _("The service sent an incomplete or invalid sign-in request."),
        "unsupported_response_type": _("The service asked for a sign-in method this provider does not offer."),
    }
    message = messages.get(error.error, _("The service sent an invalid sign-in request."))
    return render_template("error.html", status=400, message=message, detail=error.error), 400


def _parameter(name: str) -> str:
    """A refused parameter as an error description names it: RFC 6749 §5.2 allows only printable ASCII other than
    `"` and `\\` there (Authlib refuses anything else), and a name of the client's choosing may hold anything."""
    return f"Parameter '{name}'" if PARAMETER_NAME.fullmatch(name) else "A parameter"


def _check_parameters(params: dict[str, str]) -> None:
    """Checks Authlib leaves to us, each one rule, before a grant is looked for.

    Raises:
        InvalidRequestError: without a redirect URI yet; the caller decides whether it may redirect.
    """
    # Duplicated parameters are refused (RFC 6749 §3.1).
    source = request.form if request.method == "POST" else request.args
    for key in source:
        if len(source.getlist(key)) > 1:
            raise InvalidRequestError(f"{_parameter(key)} is repeated.")
    # Oversized values and control characters are refused rather than stored.
    for key, value in params.items():
        if len(value) > MAX_PARAMETER:
            raise InvalidRequestError(f"{_parameter(key)} is too long.")
        if CONTROL_CHARACTERS.search(value) or CONTROL_CHARACTERS.search(key):
            raise InvalidRequestError(f"{_parameter(key)} contains control characters.")
    # response_mode: query or form_post only (OAuth 2.0 Multiple Response Types; Form Post Response Mode).
    mode = params.get("response_mode")
    if mode is not None and mode not in RESPONSE_MODES:
        raise InvalidRequestError("Unsupported 'response_mode'.")
    # max_age must be a non-negative integer (OIDC Core §3.1.2.1).
    max_age = params.get("max_age")
    if max_age is not None and not re.fullmatch(r"[0-9]{1,10}", max_age):
        raise InvalidRequestError("Invalid 'max_age'.")
    # response_type is required (RFC 6749 §4.1.1); Authlib would call its absence "unsupported".
    if not params.get("response_type"):
        raise InvalidRequestError("Missing 'response_type'.")
    # The nonce is stored with the code and returned in the ID token: bounded, like the column.
    if len(params.get("nonce", "")) > MAX_NONCE:
        raise InvalidRequestError("Parameter 'nonce' is too long.")
    # Request objects are not supported (OIDC Core §6): say so instead of ignoring them (§3.1.2.6).
    for name in ("request", "request_uri"):
        if name in params:
            unsupported = InvalidRequestError(f"The '{name}' parameter is not supported.")
            unsupported.error = f"{name}_not_supported"
            raise unsupported


def _safe_redirect_uri(params: dict[str, str]) -> str | None:
    """The redirect URI if the client exists and registered it exactly: only then may an error go back."""
    source = request.form if request.method == "POST" else request.args
    if len(source.getlist("client_id")) > 1 or len(source.getlist("redirect_uri")) > 1:
        return None
    client = _server().query_client(params.get("client_id", ""))
    uri = params.get("redirect_uri")
    return uri if client is not None and uri and client.check_redirect_uri(uri) else None


@bp.route("/authorize", methods=["GET", "POST"])
def authorize() -> BaseResponse | tuple[str, int]:
    """The authorization endpoint: validate, make sure the resident is signed in well enough, ask consent,
    then redirect back with a code (or an error, when it is safe to)."""
    server = _server()
    params = _authorization_params()
    try:
        _check_parameters(params)
    except OAuth2Error as error:
        error.redirect_uri = _safe_redirect_uri(params)
        return _redirect_back(params, error) if error.redirect_uri else _error_page(error)
    login = current_login()
    end_user = AuthorizedResident(login.resident, login) if login else None
    try:
        grant = server.get_consent_grant(end_user=end_user)
    except OAuth2Error as error:
        if error.error == "unsupported_response_type":
            error.redirect_uri = _safe_redirect_uri(params)
        if error.redirect_uri:
            return _redirect_back(params, error)
        return _error_page(error)
    try:
        server.requested_claims(grant.request)
    except OAuth2Error as error:
        # The client and its redirect URI are verified by now, so the error may go back to it.
        error.redirect_uri = grant.redirect_uri
        return _redirect_back(params, error)

    client = grant.request.client.model
    scopes = grant.request.scope.split()
    prompt = set(params.get("prompt", "").split())
    requested_acr = _requested_acr(params, client.default_acr)
    wanted_acr = best_acceptable(requested_acr, server.settings.issuer)
    if requested_acr and not wanted_acr and _essential_acr(params):
        # An essential acr of only levels this provider does not know can never be met (OIDC Core §5.5.1.1).
        _forget_pending(params)
        return _redirect_back(
            params,
            _protocol_error("unmet_authentication_requirements", grant.redirect_uri, "Unknown acr requested."),
        )
    max_age = int(params["max_age"]) if params.get("max_age") else None
    now = request_time()
    # The level the session vouches for is the best reached within max_age (DESIGN section 10).
    session_acr = (
        session_assurance(login, max_age=max_age, issuer=server.settings.issuer, now=now)[0] if login else None
    )
    # Step up only to a level the resident's methods can reach; the rest is settled after sign-in.
    methods = _methods_of(login.resident_id, now) if login else available_methods()
    reachable = reachable_acr(methods, server.settings.issuer)
    step_up_to = [acr for acr in wanted_acr if acr_satisfies(reachable, acr, server.settings.issuer)]
    pending = _pending(params)
    reason = login_reason(
        has_session=login is not None,
        auth_time=login.auth_time if login else None,
        session_acr=session_acr,
        prompt=prompt,
        max_age=max_age,
        wanted_acr=step_up_to,
        authenticated_since=pending.get("since_dt"),
        issuer=server.settings.issuer,
        now=now,
    )
    if (
        reason is None
        and login is not None
        and "kr_ci" in scopes
        and login.resident.ci_encrypted is None
        and held_ci(
            session.get(HELD_CI), resident_id=login.resident_id, client_id=client.id, settings=server.settings, now=now
        )
        is None
    ):
        # The raw CI is kept only for services allowed it, so it comes from a fresh carrier verification.
        reason = LoginReason.CARRIER_VERIFICATION
    hint = params.get("id_token_hint")
    if hint:
        # OIDC Core §3.1.2.1: the hint names the resident the client expects; it must be one of our ID tokens.
        try:
            hinted = read_id_token_hint(hint, server.keyring.current(), server.settings)
        except IdTokenHintInvalidError:
            return _redirect_back(
                params, _protocol_error("invalid_request", grant.redirect_uri, "Invalid 'id_token_hint'.")
            )
        if (
            reason is None
            and login is not None
            and hinted.get("sub") != subject_for(client, login.resident_id, server.settings)
        ):
            since = pending.get("since_dt")
            if since is not None and login.auth_time >= since:
                # Someone other than the hinted resident signed in for this request: OIDC Core §3.1.2.1 says
                # to answer with an error rather than hand the client another person.
                _forget_pending(params)
                return _redirect_back(params, _protocol_error("login_required", grant.redirect_uri))
            # Someone else is signed in here: that resident must not be handed to the client unasked.
            reason = LoginReason.PROMPT_LOGIN
    if reason is None and login is not None and wanted_acr:
        reached = any(acr_satisfies(session_acr or "", acr, server.settings.issuer) for acr in wanted_acr)
        if not reached and "none" in prompt and missing_scopes(db_session(), login.resident_id, client, scopes):
            # A service the resident has not allowed learns nothing of their ways to sign in: the same answer
            # whether or not a passkey could meet the level (OIDC Core §3.1.2.6).
            return _redirect_back(params, _protocol_error("login_required", grant.redirect_uri))
        if not reached and _essential_acr(params):
            # An essential acr this resident cannot reach fails the request (OIDC Core §5.5.1.1); a voluntary
            # one returns the level reached.
            unmet = _protocol_error(
                "unmet_authentication_requirements",
                grant.redirect_uri,
                "The requested authentication level cannot be met.",
            )
            _forget_pending(params)
            return _redirect_back(params, unmet)
    if reason is not None:
        if "none" in prompt:
            return _redirect_back(params, _protocol_error("login_required", grant.redirect_uri))
        _remember_pending(params)
        query = {"next": url_for("oidc.authorize") + "?" + urlencode(params)}
        if login is not None:
            # The sign-in page says why a signed-in resident is asked again (a stronger method, or afresh).
            query["reason"] = reason.value
        for name in ("ui_locales", "login_hint"):
            if params.get(name):
                query[name] = params[name]
        return redirect(url_for("web.login") + "?" + urlencode(query), 303)

    assert login is not None
    missing = missing_scopes(db_session(), login.resident_id, client, scopes)
    decision = _decision(pending, resident_id=login.resident_id, scopes=scopes)
    if decision != "deny" and (missing or ("consent" in prompt and decision is None)):
        if "none" in prompt:
            return _redirect_back(params, _protocol_error("consent_required", grant.redirect_uri))
        shown = missing or scopes
        request_id = _ask_consent(params, resident_id=login.resident_id, shown=shown)
        return render_template(
            "consent.html", client=client, scopes=scopes, missing=shown, request_id=request_id, form=ActionForm()
        ), 200
    _forget_pending(params)
    held = session.pop(HELD_CI, None)
    if decision != "deny" and "kr_ci" in scopes and login.resident.ci_encrypted is None:
        # The resident allowed kr_ci to this service (now or before): only now is the raw CI kept.
        encrypted = held_ci(held, resident_id=login.resident_id, client_id=client.id, settings=server.settings, now=now)
        if encrypted is not None:
            keep_raw_ci(db_session(), login.resident, encrypted, client_id=client.id)
    grant_user = end_user if decision != "deny" else None
    response: Response = server.create_authorization_response(grant=grant, grant_user=grant_user)
    db_session().commit()
    location = response.headers.get("Location")
    if location and params.get("response_mode") == "form_post":
        return _deliver(params, location)
    response.headers["Cache-Control"] = "no-store"
    return response


def _methods_of(resident_id: Any, now: dt.datetime) -> set[Method]:
    """The ways the resident could sign in now (for step-up): usable passkeys past any recovery waiting period,
    and TOTP once confirmed."""
    rows = (
        db_session()
        .execute(
            select(Passkey.attested, Passkey.backup_eligible).where(
                Passkey.resident_id == resident_id,
                Passkey.suspected_clone_at.is_(None),
                or_(Passkey.provisional_until.is_(None), Passkey.provisional_until <= now),
            )
        )
        .all()
    )
    return available_methods(
        passkey=bool(rows),
        hardware_passkey=any(attested and not synced for attested, synced in rows),
        totp=has_totp(db_session(), resident_id),
    )


def _requested_acr(params: dict[str, str], default_acr: str | None) -> list[str]:
    values = params.get("acr_values", "").split()
    claims = params.get("claims")
    if claims:
        try:
            acr = json.loads(claims).get("id_token", {}).get("acr", {})
        except (ValueError, AttributeError):
            acr = {}
        if isinstance(acr, dict):
            if isinstance(acr.get("values"), list):
                values = [str(v) for v in acr["values"]] + values
            elif isinstance(acr.get("value"), str):
                values = [acr["value"], *values]
    return values or ([default_acr] if default_acr else [])


def _essential_acr(params: dict[str, str]) -> bool:
    claims = params.get("claims")
    if not claims:
        return False
    try:
        acr = json.loads(claims).get("id_token", {}).get("acr", {})
    except (ValueError, AttributeError):
        return False
    return isinstance(acr, dict) and acr.get("essential") is True


def _request_key(params: dict[str, str]) -> str:
    # One pending entry per authorization request of this browser, identified by all its parameters: a request
    # that differs in anything (its scope, say) is another request with a consent question of its own.
    canonical = json.dumps(sorted(params.items()), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def _pending(params: dict[str, str]) -> dict[str, Any]:
    entry = dict(session.get(PENDING, {}).get(_request_key(params), {}))
    if "since" in entry:
        entry["since_dt"] = dt.datetime.fromisoformat(entry["since"])
    return entry


def _remember_pending(params: dict[str, str], **fields: Any) -> None:
    pending = dict(session.get(PENDING, {}))
    key = _request_key(params)
    entry = dict(pending.pop(key, {}))
    entry.setdefault("since", request_time().isoformat())
    entry["params"] = params
    entry.update(fields)
    # Keep only a few pending requests per browser: the cookie must stay small.
    pending = {k: v for k, v in list(pending.items())[-4:]}
    pending[key] = entry
    session[PENDING] = pending


def _ask_consent(params: dict[str, str], *, resident_id: uuid.UUID, shown: list[str]) -> str:
    """Remember the consent question put to the resident: a new id each time the page is shown, with the exact
    scopes it lists; an answer is taken only for the latest page, from the same resident, for those scopes."""
    request_id = secrets.token_urlsafe(16)
    _remember_pending(params, ask={"id": request_id, "resident": str(resident_id), "scopes": shown}, consent=None)
    return request_id


def _decision(pending: dict[str, Any], *, resident_id: uuid.UUID, scopes: list[str]) -> str | None:
    """The resident's answer on this request's consent page ("allow" or "deny"), if it was this resident's and
    about exactly these scopes; a sign-in by someone else, or another scope list, is asked afresh."""
    decision = pending.get("consent")
    if not isinstance(decision, dict) or decision.get("resident") != str(resident_id):
        return None
    if decision.get("scopes") != sorted(scopes):
        return None
    answer = decision.get("decision")
    return answer if answer in ("allow", "deny") else None


def _forget_pending(params: dict[str, str]) -> None:
    pending = dict(session.get(PENDING, {}))
    if pending.pop(_request_key(params), None) is not None:
        session[PENDING] = pending


@bp.post("/consent")
def consent() -> BaseResponse | Response:
    """The resident's answer on the consent page: allowed scopes are stored, then the request continues."""
    from idp.web import render_error

    form = ActionForm()
    request_id = request.form.get("request_id", "")
    pending = dict(session.get(PENDING, {}))
    entry_key = next(
        (k for k, v in pending.items() if request_id and (v.get("ask") or {}).get("id") == request_id), None
    )
    login = current_login()
    if not form.validate() or entry_key is None or login is None:
        return render_error(400, _("This sign-in request has expired. Go back to the service and try again."))
    entry = dict(pending[entry_key])
    asked = entry.pop("ask")
    if asked.get("resident") != str(login.resident_id):
        # Someone else signed in since the page was shown: their answer is asked on a page of their own.
        return render_error(400, _("This sign-in request has expired. Go back to the service and try again."))
    params: dict[str, str] = entry["params"]
    allow = request.form.get("decision") == "allow"
    if allow:
        # Exactly what the page listed; the rest of the request was allowed before (or it is asked again).
        grant_consent(db_session(), login.resident_id, params.get("client_id", ""), asked["scopes"], now=request_time())
        db_session().commit()
    requested = sorted(s for s in params.get("scope", "").split() if s)
    entry["consent"] = {
        "decision": "allow" if allow else "deny",
        "resident": str(login.resident_id),
        "scopes": requested,
    }
    pending[entry_key] = entry
    session[PENDING] = pending
    return redirect(url_for("oidc.authorize") + "?" + urlencode(params), 303)


CORS_ENDPOINTS = frozenset({"oidc.token", "oidc.userinfo_endpoint", "oidc.revoke"})


@bp.after_request
def _cors(response: Response) -> Response:
    """Browser-based public clients (PKCE) call these from their own origin; no cookies are involved."""
    if request.endpoint in CORS_ENDPOINTS:
        response.headers["Access-Control-Allow-Origin"] = "*"
        if request.method == "OPTIONS":
            response.headers["Access-Control-Allow-Methods"] = "GET, POST"
            response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type, DPoP"
            response.headers["Access-Control-Max-Age"] = "600"
    return response


@bp.post("/token")
def token() -> Response:
    """The token endpoint; what a grant wrote (codes consumed, replays revoked, tokens recorded) is committed
    whatever the answer, so a replayed code stays revoked."""
    server = _server()
    repeated = next((key for key in request.form if len(request.form.getlist(key)) > 1), None)
    if repeated is not None or not request.form.get("grant_type"):
        # RFC 6749 §3.2: parameters must not repeat; grant_type is required (JSON bodies arrive here too).
        description = f"{_parameter(repeated)} is repeated." if repeated else "Missing 'grant_type'."
        refused: Response = server.handle_error_response(None, InvalidRequestError(description))
        return refused
    response: Response = server.create_token_response()
    db_session().commit()
    return response


@bp.route("/userinfo", methods=["GET", "POST"])
def userinfo_endpoint() -> Response:
    bearer = None
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        bearer = header[7:].strip()
    elif request.method == "POST" and request.mimetype == "application/x-www-form-urlencoded":
        bearer = request.form.get("access_token")  # RFC 6750 §2.2
    try:
        body = userinfo(_server(), bearer)
    except UserInfoError as error:
        response = Response(
            json.dumps({"error": error.error, "error_description": error.description}),
            status=error.status,
            mimetype="application/json",
        )
        challenge = (
            f'Bearer realm="idp", error="{error.error}"' if error.error != "invalid_request" else 'Bearer realm="idp"'
        )
        response.headers["WWW-Authenticate"] = challenge
        response.headers["Cache-Control"] = "no-store"
        return response
    response = Response(json.dumps(body, ensure_ascii=False), mimetype="application/json")
    response.headers["Cache-Control"] = "no-store"
    # Browser-based services call UserInfo from their own origin (OIDC Core §5.3).
    response.headers["Access-Control-Allow-Origin"] = "*"
    return response


@bp.post("/introspect")
def introspect() -> Response:
    response: Response = _server().create_endpoint_response("introspection")
    return response


@bp.post("/revoke")
def revoke() -> Response:
    response: Response = _server().create_endpoint_response("revocation")
    db_session().commit()
    return response


@bp.get("/.well-known/openid-configuration")
@bp.get("/.well-known/oauth-authorization-server")
@bp.get("/jwks")
def published() -> Response:
    """Reached only when the WSGI layer in front of Flask passed the request on (the keyring did not load)."""
    document = current().published.document(request.path)
    response = Response(document.body)
    for name, value in document.headers:
        response.headers[name] = value
    return response


@bp.errorhandler(KeyringError)
def keyring_unavailable(error: KeyringError) -> Response:
    """No keys to publish or sign with: a temporary condition for clients, and a reason on /readyz for admins."""
    return temporarily_unavailable(5)


def temporarily_unavailable(retry_after: int) -> Response:
    """503 for API clients: the IdP cannot answer now (no keys, no database), and says when to try again."""
    response = Response('{"error":"temporarily_unavailable"}', status=503, mimetype="application/json")
    response.headers["Cache-Control"] = "no-store"
    response.headers["Retry-After"] = str(retry_after)
    return response


def json_http_error(error: HTTPException) -> Response:
    """An HTTP error as `{"error": …}` for API clients (resident-facing pages get HTML instead)."""
    # OAuth's own word for a failure on our side (RFC 6749 §4.1.2.1); otherwise the HTTP status name.
    code = "server_error" if (error.code or 500) >= 500 else (error.name or "error").lower().replace(" ", "_")
    response = Response(f'{{"error":"{code}"}}', status=error.code or 500, mimetype="application/json")
    for name, value in error.get_headers():
        if name.lower() not in ("content-type", "content-length"):
            response.headers[name] = value
    response.headers["Cache-Control"] = "no-store"
    return response


def _logout_refused() -> tuple[str, int]:
    message = _("The service sent an invalid sign-out request.")
    return render_template("error.html", status=400, message=message, detail="invalid_request"), 400


@bp.route("/logout", methods=["GET", "POST"])
def end_session_endpoint() -> BaseResponse | tuple[str, int]:
    """RP-Initiated Logout 1.0: end the session (asking the resident unless the hint proves the request is
    about their session), tell the session's clients through back-channel logout, and return to the client."""
    server = _server()
    params = _authorization_params()
    login = current_login()
    client = None
    hint_sid = None
    hint = params.get("id_token_hint")
    if hint:
        try:
            claims = read_id_token_hint(hint, server.keyring.current(), server.settings)
        except IdTokenHintInvalidError:
            return _logout_refused()
        audience = claims.get("aud")
        client_id = audience[0] if isinstance(audience, list) and audience else audience
        if params.get("client_id") and params["client_id"] != client_id:
            return _logout_refused()
        client = find_client(db_session(), client_id) if isinstance(client_id, str) else None
        hint_sid = claims.get("sid")
    elif params.get("client_id"):
        client = find_client(db_session(), params["client_id"])
    target = params.get("post_logout_redirect_uri")
    if target and (client is None or target not in client.post_logout_redirect_uris):
        # Exact match against the client's registered URIs, or no redirect at all (§3).
        return _logout_refused()
    confirmed = request.method == "POST" and ActionForm().validate() and request.form.get("confirm") == "yes"
    same_session = login is not None and hint_sid is not None and hint_sid == login.sid
    if login is not None and not (same_session or confirmed):
        return render_template("logout_confirm.html", params=params, client=client, form=ActionForm()), 200
    if login is not None:
        queued = end_login_session(db_session(), login, now=request_time(), client_ip=request.remote_addr)
        db_session().commit()
        current().logout.deliver_now(queued)
    if target:
        response = redirect(add_params_to_uri(target, [("state", params["state"])] if params.get("state") else []), 303)
    else:
        response = Response(render_template("signed_out.html"), mimetype="text/html")
    clear_session_cookie(response)
    return response


def _json(body: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    response = Response(json.dumps(body, ensure_ascii=False), status=status, mimetype="application/json")
    response.headers["Cache-Control"] = "no-store"
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def _registration_error(error: RegistrationError) -> Response:
    headers = {"WWW-Authenticate": f'Bearer realm="idp", error="{error.error}"'} if error.status == 401 else None
    return _json({"error": error.error, "error_description": error.description}, error.status, headers)


def _bearer() -> str | None:
    header = request.headers.get("Authorization", "")
    return header[7:].strip() if header[:7].lower() == "bearer " else None


@bp.post("/register")
def register() -> Response:
    """RFC 7591: register with an initial access token; closed to everyone without one."""
    server = _server()
    metadata = request.get_json(silent=True)
    try:
        if not isinstance(metadata, dict):
            raise RegistrationError("invalid_client_metadata", "The body must be a JSON object.")
        body = register_client(
            db_session(),
            _bearer(),
            metadata,
            secret_key=server.secret_key,
            issuer=server.settings.issuer,
            now=request_time(),
            signing_algorithms=server.keyring.current().signing_algorithms,
            allow_local_server_uris=allows_local_destinations(server.settings),
        )
    except RegistrationError as error:
        db_session().rollback()
        return _registration_error(error)
    db_session().commit()
    return _json(body, 201)


@bp.route("/register/<client_id>", methods=["GET", "DELETE", "PUT"])
def registration(client_id: str) -> Response:
    """RFC 7592: read or delete a registration with its registration access token (updates: not offered)."""
    server = _server()
    try:
        client = client_for_registration_token(db_session(), client_id, _bearer())
    except RegistrationError as error:
        return _registration_error(error)
    if request.method == "GET":
        return _json(read_registration(client, issuer=server.settings.issuer))
    if request.method == "DELETE":
        delete_registration(db_session(), client)
        db_session().commit()
        return Response(status=204)
    return _json(
        {"error": "invalid_request", "error_description": "Updates are not offered: register again, then delete."},
        405,
        {"Allow": "GET, DELETE"},
    )
