"""The oidc blueprint: /authorize /token /userinfo /introspect /revoke /logout /register, discovery and the JWKS.
Views parse and answer; the rules live in oidc/authorization.py, the grants and endpoints, and the services."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit

from authlib.common.urls import add_params_to_uri
from authlib.oauth2.rfc6749 import OAuth2Error
from authlib.oauth2.rfc6749.errors import InvalidRequestError, UnsupportedResponseTypeError
from authlib.oauth2.rfc7591 import InvalidClientMetadataError
from flask import Blueprint, Response, redirect, request, url_for
from werkzeug import Request
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response as BaseResponse

from idp.keyring import KeyringError
from idp.oidc import authorization
from idp.oidc.authorization import AskConsent, ReceivedRequest, SignIn, Situation
from idp.oidc.clients import find_client
from idp.oidc.consent import held_ci, keep_raw_ci
from idp.oidc.endpoints import userinfo
from idp.oidc.errors import MethodNotOfferedError, TemporarilyUnavailableError, json_error, json_response
from idp.oidc.grants import AuthorizedResident
from idp.oidc.interaction import (
    LogoutQuestion,
    ask_consent,
    authorize_url,
    carry_over,
    clear_session_cookie,
    current_login,
    drop_held_ci,
    forget_request,
    held_ci_value,
    pending_request,
    remember_request,
)
from idp.oidc.logout import IdTokenHintInvalidError, end_login_session, read_id_token_hint
from idp.oidc.outbound import allows_local_destinations
from idp.oidc.registration import client_for_registration_token, delete_registration, read_registration, register_client
from idp.oidc.server import IdpAuthorizationServer
from idp.runtime import commit_if_used, current, db_session, request_time

bp = Blueprint("oidc", __name__)
CORS_ENDPOINTS = frozenset({"oidc.token", "oidc.userinfo_endpoint", "oidc.revoke"})
KEYRING_RETRY_AFTER = 5


def _server() -> IdpAuthorizationServer:
    return current().oidc


# -- /authorize ------------------------------------------------------------------------------------------------------


@bp.route("/authorize", methods=["GET", "POST"])
def authorize() -> BaseResponse:
    """The authorization endpoint (RFC 6749 §3.1, OIDC Core §3.1.2): the checks of oidc/authorization.py decide;
    an error goes back to the client only once its client and redirect URI are verified, else it is a page."""
    received = ReceivedRequest.of(request.form if request.method == "POST" else request.args)
    try:
        authorization.check_request(received)
    except OAuth2Error as error:
        return _refuse(received, error, redirect_uri=_verified_redirect_uri(received))
    login = current_login()
    try:
        grant = _server().get_consent_grant(end_user=AuthorizedResident(login.resident, login) if login else None)
    except OAuth2Error as error:
        safe = _verified_redirect_uri(received) if isinstance(error, UnsupportedResponseTypeError) else None
        return _refuse(received, error, redirect_uri=error.redirect_uri or safe)
    try:
        situation = _situation(received, grant, login)
        outcome = authorization.decide(situation)
    except OAuth2Error as error:
        return _refuse(received, error, redirect_uri=grant.redirect_uri)
    if isinstance(outcome, SignIn):
        return _send_to_sign_in(received.params, outcome, signed_in=login is not None)
    if isinstance(outcome, AskConsent):
        return _ask_consent(received.params, situation, outcome)
    return _issue(received.params, grant, situation, allowed=outcome.allowed)


def _situation(received: ReceivedRequest, grant: object, login: object) -> Situation:
    oauth_request = grant.request  # type: ignore[attr-defined]  # Authlib's grant
    parsed = authorization.AuthorizationRequest.parse(
        received.params,
        client=oauth_request.client.model,
        redirect_uri=grant.redirect_uri,  # type: ignore[attr-defined]
        scope=oauth_request.scope,
    )
    # The grant stores the parsed claims request with the code: parsed once per request.
    oauth_request.claims_requested = parsed.claims
    return Situation(
        parsed,
        login=login,  # type: ignore[arg-type]  # a LoginSession or None
        pending=pending_request(received.params),
        db=db_session(),
        settings=current().settings,
        keys=current().keyring.current(),
        held=held_ci_value(),
        now=request_time(),
    )


def _verified_redirect_uri(received: ReceivedRequest) -> str | None:
    """The redirect URI if the client exists and registered it exactly: only then may an error go back."""
    if {"client_id", "redirect_uri"} & set(received.repeated):
        return None
    client = _server().query_client(received.params.get("client_id", ""))
    uri = received.params.get("redirect_uri")
    return uri if client is not None and uri and client.check_redirect_uri(uri) else None


def _refuse(received: ReceivedRequest, error: OAuth2Error, *, redirect_uri: str | None) -> BaseResponse:
    """The error at the client's redirect URI with state and iss (RFC 9207), or a page when it cannot go back."""
    if not redirect_uri:
        return current().pages.error(error)
    forget_request(received.params)
    fields = [("error", str(error.error))]
    if error.description:
        fields.append(("error_description", str(error.description)))
    if received.params.get("state"):
        fields.append(("state", received.params["state"]))
    fields.append(("iss", current().settings.issuer))
    return _deliver(received.params, add_params_to_uri(redirect_uri, fields))


def _deliver(params: dict[str, str], location: str) -> BaseResponse:
    """A redirect for response_mode=query; an auto-submitted form for form_post (OAuth 2.0 Form Post)."""
    if params.get("response_mode") == "form_post":
        parts = urlsplit(location)
        response = current().pages.form_post(parts._replace(query="").geturl(), parse_qsl(parts.query, True))
    else:
        response = redirect(location, 302)
    response.headers["Cache-Control"] = "no-store"
    return response


def _send_to_sign_in(params: dict[str, str], outcome: SignIn, *, signed_in: bool) -> BaseResponse:
    remember_request(params)
    query = {"next": authorize_url(params)}
    if signed_in:
        # The sign-in page says why a signed-in resident is asked again (a stronger method, or afresh).
        query["reason"] = outcome.reason.value
    for name in ("ui_locales", "login_hint"):
        if params.get(name):
            query[name] = params[name]
    return redirect(url_for("web.login") + "?" + urlencode(query), 303)


def _ask_consent(params: dict[str, str], situation: Situation, outcome: AskConsent) -> BaseResponse:
    login = situation.login
    assert login is not None
    client = situation.request.client
    question = ask_consent(params, client=client, resident_id=login.resident_id, shown=outcome.shown)
    return current().pages.consent(question)


def _issue(params: dict[str, str], grant: object, situation: Situation, *, allowed: bool) -> BaseResponse:
    forget_request(params)
    held = drop_held_ci()
    login = situation.login
    assert login is not None
    client = situation.request.client
    if allowed and "kr_ci" in situation.request.scopes and login.resident.ci_encrypted is None:
        # The resident allowed kr_ci to this service (now or before): only now is the raw CI kept.
        encrypted = held_ci(
            held, resident_id=login.resident_id, client_id=client.id, settings=situation.settings, now=situation.now
        )
        if encrypted is not None:
            keep_raw_ci(db_session(), login.resident, encrypted, client_id=client.id)
    end_user = AuthorizedResident(login.resident, login) if allowed else None
    response: Response = _server().create_authorization_response(grant=grant, grant_user=end_user)
    db_session().commit()
    location = response.headers.get("Location")
    if location:
        return _deliver(params, location)
    response.headers["Cache-Control"] = "no-store"
    return response


# -- the token and API endpoints ------------------------------------------------------------------------------------


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
    return token_answer(request)


def token_answer(received: Request) -> Response:
    """The token endpoint; what a grant wrote (codes spent, replays revoked, tokens recorded) is committed
    whatever the answer, so a replayed code stays revoked. Reached through idp.oidc.direct, or this blueprint."""
    repeated = next((key for key in received.form if len(received.form.getlist(key)) > 1), None)
    if repeated is not None:
        # RFC 6749 §3.2: parameters must not repeat.
        return json_error(InvalidRequestError(f"{authorization.parameter_named(repeated)} is repeated."))
    if not received.form.get("grant_type"):
        # RFC 6749 §4.1.3: grant_type is required (JSON bodies arrive here too).
        return json_error(InvalidRequestError("Missing 'grant_type'."))
    response: Response = _server().create_token_response(received)
    commit_if_used()
    return response


@bp.route("/userinfo", methods=["GET", "POST"])
def userinfo_endpoint() -> Response:
    return userinfo_answer(request)


def userinfo_answer(received: Request) -> Response:
    """OIDC Core §5.3, with the bearer token in the header or (RFC 6750 §2.2) a form body."""
    bearer = None
    header = received.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        bearer = header[7:].strip()
    elif received.method == "POST" and received.mimetype == "application/x-www-form-urlencoded":
        bearer = received.form.get("access_token")
    try:
        body = userinfo(_server(), bearer)
    except OAuth2Error as error:
        return json_error(error)
    response = json_response(body)
    # Browser-based services call UserInfo from their own origin (OIDC Core §5.3).
    response.headers["Access-Control-Allow-Origin"] = "*"
    return response


@bp.post("/introspect")
def introspect() -> Response:
    return introspection_answer(request)


def introspection_answer(received: Request) -> Response:
    response: Response = _server().create_endpoint_response("introspection", received)
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
    return json_error(TemporarilyUnavailableError(KEYRING_RETRY_AFTER))


def json_http_error(error: HTTPException) -> Response:
    """An HTTP error as `{"error": …}` for API clients (resident-facing pages get HTML instead)."""
    # OAuth's own word for a failure on our side (RFC 6749 §4.1.2.1); otherwise the HTTP status name.
    code = "server_error" if (error.code or 500) >= 500 else (error.name or "error").lower().replace(" ", "_")
    as_oauth = OAuth2Error(error=code, status_code=error.code or 500)
    response = json_error(as_oauth)
    for name, value in error.get_headers():
        if name.lower() not in ("content-type", "content-length"):
            response.headers[name] = value
    return response


# -- RP-Initiated Logout 1.0 ---------------------------------------------------------------------------------------


@bp.route("/logout", methods=["GET", "POST"])
def end_session_endpoint() -> BaseResponse:
    """RP-Initiated Logout 1.0: end the session when the id_token_hint proves the request is about it, else ask
    the resident (a page of idp.web, whose confirmation comes back through `finish_logout`)."""
    params = ReceivedRequest.of(request.form if request.method == "POST" else request.args).params
    try:
        question, hint_sid = logout_request(params)
    except InvalidRequestError as error:
        return current().pages.error(error)
    login = current_login()
    if login is not None and (hint_sid is None or hint_sid != login.sid):
        return current().pages.logout_confirmation(question)
    return finish_logout(question)


def logout_request(params: dict[str, str]) -> tuple[LogoutQuestion, str | None]:
    """The logout request checked (RP-Initiated Logout 1.0 §2, §3), and the `sid` its id_token_hint names.

    Raises:
        InvalidRequestError: a hint this provider did not sign, a client_id that is not the hint's audience, or a
            post_logout_redirect_uri the client did not register (exact match, or no redirect at all).
    """
    client = None
    hint_sid = None
    if params.get("id_token_hint"):
        server = _server()
        try:
            claims = read_id_token_hint(params["id_token_hint"], server.keyring.current(), server.settings)
        except IdTokenHintInvalidError:
            raise InvalidRequestError("Invalid 'id_token_hint'.") from None
        audience = claims.get("aud")
        client_id = audience[0] if isinstance(audience, list) and audience else audience
        if params.get("client_id") and params["client_id"] != client_id:
            raise InvalidRequestError("'client_id' is not the audience of 'id_token_hint'.")
        client = find_client(db_session(), client_id) if isinstance(client_id, str) else None
        hint_sid = claims.get("sid")
    elif params.get("client_id"):
        client = find_client(db_session(), params["client_id"])
    target = params.get("post_logout_redirect_uri")
    if target and (client is None or target not in client.post_logout_redirect_uris):
        raise InvalidRequestError("Unregistered 'post_logout_redirect_uri'.")
    return LogoutQuestion(params, client), hint_sid


def finish_logout(question: LogoutQuestion) -> BaseResponse:
    """End this browser's session, tell its services through back-channel logout, and return to the client."""
    login = current_login()
    if login is not None:
        queued = end_login_session(db_session(), login, now=request_time(), client_ip=request.remote_addr)
        db_session().commit()
        current().logout.deliver_now(queued)
    params = question.params
    target = params.get("post_logout_redirect_uri")
    if target:
        state = [("state", params["state"])] if params.get("state") else []
        response: BaseResponse = redirect(add_params_to_uri(target, state), 303)
    else:
        response = current().pages.signed_out()
    clear_session_cookie(response)
    return response


# -- dynamic registration (RFC 7591, RFC 7592) ---------------------------------------------------------------------


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
            raise InvalidClientMetadataError("The body must be a JSON object.")
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
    except OAuth2Error as error:
        db_session().rollback()
        return json_error(error)
    db_session().commit()
    return json_response(body, 201)


@bp.route("/register/<client_id>", methods=["GET", "DELETE", "PUT"])
def registration(client_id: str) -> Response:
    """RFC 7592: read or delete a registration with its registration access token (updates: not offered)."""
    try:
        client = client_for_registration_token(db_session(), client_id, _bearer())
    except OAuth2Error as error:
        return json_error(error)
    if request.method == "GET":
        return json_response(read_registration(client, issuer=_server().settings.issuer))
    if request.method == "DELETE":
        delete_registration(db_session(), client)
        db_session().commit()
        return Response(status=204)
    return json_error(
        MethodNotOfferedError("Updates are not offered: register again, then delete.", allow="GET, DELETE")
    )


__all__ = ["bp", "carry_over", "finish_logout", "json_http_error", "logout_request"]
