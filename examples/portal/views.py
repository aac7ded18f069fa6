"""The portal's pages: sign-in and its callback, who is signed in and how, the permit application that steps up
through the permit API's RFC 9470 challenge, and RP-initiated logout."""

from __future__ import annotations

import datetime as dt
import logging
import secrets
from typing import Any
from urllib.parse import urlencode

import httpx
import requests
from authlib.integrations.base_client import OAuthError
from flask import Blueprint, redirect, render_template, request, session, url_for
from flask_wtf.csrf import CSRFError
from werkzeug.wrappers import Response

from examples.portal.challenges import parse_bearer_challenge
from examples.portal.registration import redirect_uri
from examples.portal.services import portal
from examples.portal.sessions import USER_KEY, ServerSideSession
from examples.portal.texts import DEFAULT_LANGUAGE, LANGUAGES, PURPOSES, TEXTS
from idp.rp import VerificationError

PENDING_KEY = "pending"  # sign-ins under way, by state: nonce, where to return, what was asked
MAX_PENDING = 5  # sign-ins started in other tabs and never finished do not pile up
DRAFT_KEY = "draft"  # the application waiting for a step-up, so the resident does not type it again
RECEIPT_KEY = "receipt"
MAX_ADDRESS_LENGTH = 200
KST = dt.timezone(dt.timedelta(hours=9), "KST")  # residents read times in Korea's time, which has no DST

bp = Blueprint("pages", __name__)
log = logging.getLogger("portal")


def language() -> str:
    chosen = request.args.get("lang")
    if chosen in LANGUAGES:
        session["lang"] = chosen
        return chosen
    stored = session.get("lang")
    if stored in LANGUAGES:
        return str(stored)
    return request.accept_languages.best_match(LANGUAGES) or DEFAULT_LANGUAGE


def page(template: str, status: int = 200, **context: Any) -> tuple[str, int]:
    lang = language()
    return render_template(template, lang=lang, t=TEXTS[lang], user=session.get(USER_KEY), **context), status


def problem(text_key: str, status: int) -> tuple[str, int]:
    return page("message.html", status, message_key=text_key)


@bp.app_errorhandler(CSRFError)
def csrf_failed(error: CSRFError) -> tuple[str, int]:
    return problem("error_expired", 400)


# -- signing in ----------------------------------------------------------------------------------------------------


@bp.get("/")
def home() -> tuple[str, int]:
    user = session.get(USER_KEY)
    auth_time = None
    if user is not None and user.get("auth_time"):
        auth_time = dt.datetime.fromtimestamp(user["auth_time"], KST).strftime("%Y-%m-%d %H:%M:%S %Z")
    return page("home.html", auth_time=auth_time, account_url=f"{portal().issuer}/account")


@bp.get("/login")
def login() -> Response:
    return send_to_idp(_local_path(request.args.get("next")))


def send_to_idp(next_path: str, *, acr_values: tuple[str, ...] = (), max_age: int | None = None) -> Response:
    """Redirect to the IdP's /authorize (code flow, PKCE S256, state, nonce), asking for `acr_values` and `max_age`
    when the API's challenge named them, and remember what to check in the ID token that comes back."""
    state, nonce = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    pending = dict(session.get(PENDING_KEY, {}))
    while len(pending) >= MAX_PENDING:
        pending.pop(next(iter(pending)))
    pending[state] = {"nonce": nonce, "next": next_path, "acr_values": list(acr_values), "max_age": max_age}
    session[PENDING_KEY] = pending
    extra: dict[str, str] = {"ui_locales": language()}
    if acr_values:
        extra["acr_values"] = " ".join(acr_values)
    if max_age is not None:
        extra["max_age"] = str(max_age)
    try:
        response: Response = portal().oauth_client.authorize_redirect(
            redirect_uri(portal().portal_url), state=state, nonce=nonce, **extra
        )
    except (requests.RequestException, ValueError):
        # Authlib reads the IdP's discovery document here.
        return _response(problem("error_idp", 503))
    response.status_code = 303  # also from a POST, the browser follows with a GET
    return response


@bp.get("/callback")
def callback() -> Response | tuple[str, int]:
    pending = dict(session.get(PENDING_KEY, {}))
    asked = pending.pop(request.args.get("state", ""), None)
    session[PENDING_KEY] = pending
    if asked is None:
        return problem("error_sign_in", 400)
    acr_values = tuple(asked["acr_values"]) or None
    try:
        # Authlib checks state, exchanges the code with the PKCE verifier and checks the ID token and its nonce…
        token = portal().oauth_client.authorize_access_token()
        # …and idp.rp checks it again, with what this sign-in asked for: the acr and max_age of a step-up.
        id_token = portal().verifier.verify_id_token(
            token["id_token"], nonce=asked["nonce"], max_age=asked["max_age"], acr_values=acr_values
        )
    except OAuthError as error:
        log.info("sign-in refused: %s", error.error)
        return problem("error_sign_in", 400)
    except requests.RequestException:
        return problem("error_idp", 503)
    except VerificationError as error:
        log.info("ID token refused: %s", error.reason)
        if error.reason in ("insufficient_acr", "too_old"):
            return problem("error_weak", 403)
        return problem("error_idp" if error.reason == "idp_unreachable" else "error_sign_in", 400)
    name = id_token.claims.get("name") or _userinfo_name(token)
    ended = session.get(USER_KEY)
    if ended is not None and ended.get("sub") != id_token.sub:
        session.pop(DRAFT_KEY, None)  # another resident's application is not this one's
    assert isinstance(session, ServerSideSession)
    session.renew()
    session[USER_KEY] = {
        "sub": id_token.sub,
        "sid": id_token.sid,
        "name": name,
        "acr": id_token.acr,
        "amr": list(id_token.amr),
        "auth_time": id_token.auth_time,
    }
    session["tokens"] = {"access_token": token["access_token"], "id_token": token["id_token"]}
    log.info("signed in: acr=%s amr=%s", id_token.acr, " ".join(id_token.amr))
    return redirect(asked["next"], 303)


def _userinfo_name(token: dict[str, Any]) -> str | None:
    """The name from /userinfo (OIDC Core §5.4: with an access token, profile claims come from there)."""
    try:
        claims = portal().oauth_client.userinfo(token=token)
    except (requests.RequestException, OAuthError, ValueError):
        return None
    name = claims.get("name")
    return name if isinstance(name, str) else None


@bp.post("/logout")
def logout() -> Response:
    """Sign out here, then at the IdP (RP-Initiated Logout 1.0 §2), which returns the resident to the home page."""
    tokens = session.get("tokens") or {}
    lang = language()
    session.clear()
    assert isinstance(session, ServerSideSession)
    session.renew()  # the signed-in session's id is worth nothing from now on
    session["lang"] = lang
    if not tokens.get("id_token"):
        return redirect(url_for("pages.home"), 303)
    try:
        end_session = portal().oauth_client.load_server_metadata()["end_session_endpoint"]
    except (requests.RequestException, ValueError, KeyError):
        return redirect(url_for("pages.home"), 303)
    query = {
        "id_token_hint": tokens["id_token"],
        "post_logout_redirect_uri": f"{portal().portal_url}/",
        "client_id": portal().client_id,
        "ui_locales": lang,
    }
    return redirect(f"{end_session}?{urlencode(query)}", 303)


# -- the permit application ----------------------------------------------------------------------------------------


@bp.get("/permits/new")
def permit_form() -> Response | tuple[str, int]:
    if session.get(USER_KEY) is None:
        return send_to_idp(url_for("pages.permit_form"))
    draft = session.get(DRAFT_KEY)
    return page("permit.html", draft=draft or {}, resumed=draft is not None, purposes=PURPOSES)


@bp.post("/permits/new")
def permit_submit() -> Response | tuple[str, int]:
    if session.get(USER_KEY) is None:
        return send_to_idp(url_for("pages.permit_form"))
    draft = {"address": request.form.get("address", "").strip(), "purpose": request.form.get("purpose", "")}
    if not draft["address"] or len(draft["address"]) > MAX_ADDRESS_LENGTH or draft["purpose"] not in PURPOSES:
        return page("permit.html", 400, draft=draft, resumed=False, purposes=PURPOSES, invalid=True)
    access_token = (session.get("tokens") or {}).get("access_token", "")
    try:
        answer = portal().api.post("/api/permits", json=draft, headers={"Authorization": f"Bearer {access_token}"})
    except httpx.HTTPError:
        return problem("error_api", 502)
    if answer.status_code == 201:
        session.pop(DRAFT_KEY, None)
        session[RECEIPT_KEY] = answer.json()
        return redirect(url_for("pages.permit_done"), 303)
    challenge = parse_bearer_challenge(answer.headers.get("WWW-Authenticate"))
    if answer.status_code == 401 and challenge is not None:
        # The API wants a stronger or fresher sign-in (RFC 9470 §3), or a new token: sign in again, asking for
        # exactly what it named, and come back here with the application kept.
        session[DRAFT_KEY] = draft
        log.info("permit API asks for a new sign-in: %s", challenge.error)
        return send_to_idp(url_for("pages.permit_form"), acr_values=challenge.acr_values, max_age=challenge.max_age)
    return problem("error_api", 502)


@bp.get("/permits/done")
def permit_done() -> Response | tuple[str, int]:
    receipt = session.get(RECEIPT_KEY)
    if receipt is None:
        return redirect(url_for("pages.home"), 303)
    return page("permit_done.html", receipt=receipt)


def _local_path(target: str | None) -> str:
    """Only a path on this portal: `next` must not send the resident to another site after sign-in."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"


def _response(rendered: tuple[str, int]) -> Response:
    body, status = rendered
    return Response(body, status, content_type="text/html; charset=utf-8")
