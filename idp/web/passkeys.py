"""Passkey pages: sign-in on /login (button and autofill) and management on /account/passkeys."""

from __future__ import annotations

import datetime as dt
import json

from flask import Blueprint, Response, redirect, render_template, request, session, url_for
from flask_babel import gettext as _
from werkzeug.wrappers import Response as BaseResponse

from idp.audit import FAILURE, record_event
from idp.authn.assurance import AuthEvent
from idp.authn.attestation import AttestationPolicy
from idp.authn.passkeys import (
    PasskeyClonedError,
    PasskeyRejectedError,
    authenticate_passkey,
    authentication_options,
    find_passkey,
    list_passkeys,
    new_binding,
    recovery_wait_until,
    register_passkey,
    registration_options,
    remove_passkey,
    rename_passkey,
    sign_in_method,
)
from idp.authn.sessions import recently_signed_in
from idp.models import Passkey
from idp.oidc.interaction import carry_over, current_login
from idp.runtime import current, db_session, request_time
from idp.settings import Settings
from idp.web import render_error
from idp.web.account import confirmed, render_confirmation, report, take_report
from idp.web.devices import new_passkey_name
from idp.web.forms import ActionForm
from idp.web.login import open_or_step_up, safe_next

bp = Blueprint("passkeys", __name__)
BINDING = "webauthn"


def _settings() -> Settings:
    return current().settings


def _policy() -> AttestationPolicy:
    return current().attestation


def _binding() -> str:
    """The secret that ties this browser's challenges to it (a challenge from another browser is refused)."""
    value = session.get(BINDING)
    if not isinstance(value, str):
        value = new_binding()
        session[BINDING] = value
    return value


def _json(body: object, status: int = 200) -> Response:
    """`body` as JSON; a str is JSON already (py_webauthn's options), sent as it is."""
    text = body if isinstance(body, str) else json.dumps(body, ensure_ascii=False)
    response = Response(text, status=status, mimetype="application/json")
    response.headers["Cache-Control"] = "no-store"
    return response


def _refused(error: PasskeyRejectedError, *, resident_id: object = None) -> Response:
    # Committed with the failure event: the consumed challenge (single use) and a clone mark must stick; the
    # services store nothing else from a failed ceremony.
    record_event(
        db_session(),
        "passkey.signin" if resident_id is None else "passkey.register",
        result=FAILURE,
        resident_id=resident_id,  # type: ignore[arg-type]  # a UUID or None
        client_ip=request.remote_addr,
        reason=error.reason,
    )
    db_session().commit()
    if isinstance(error, PasskeyClonedError):
        message = _("This passkey can no longer be used. Sign in another way and remove it from My account.")
    else:
        message = _("The passkey could not be verified. Try again, or sign in another way.")
    return _json({"error": "passkey_rejected", "message": message}, 400)


def passkey_event(passkey: Passkey, issuer: str, now: dt.datetime) -> AuthEvent:
    return AuthEvent.of(sign_in_method(passkey, now=now), issuer=issuer, at=now)


@bp.post("/login/passkey/options")
def sign_in_options() -> Response:
    options = authentication_options(db_session(), rp_id=_settings().rp_id, binding=_binding(), now=request_time())
    db_session().commit()
    return _json(options)


@bp.post("/login/passkey/verify")
def sign_in_verify() -> Response:
    settings, now = _settings(), request_time()
    try:
        verified = authenticate_passkey(
            db_session(),
            request.get_data(as_text=True),
            rp_id=settings.rp_id,
            origin=settings.origin,
            binding=_binding(),
            now=now,
            client_ip=request.remote_addr,
        )
    except PasskeyRejectedError as error:
        return _refused(error)
    passkey, resident = verified.passkey, verified.resident
    if resident.is_locked:
        db_session().rollback()
        return _json(
            {"error": "locked", "message": _("This account is locked. Contact the help desk to unlock it.")}, 403
        )
    cookie_value = open_or_step_up(resident, [passkey_event(passkey, settings.issuer, now)], now=now)
    db_session().commit()
    response = _json({"redirect": safe_next(session.get("next")) or url_for("account.overview")})
    carry_over(response, cookie_value)
    return response


@bp.get("/account/passkeys")
def manage() -> str | BaseResponse:
    login = current_login()
    if login is None:
        return redirect(url_for("web.login", next=request.path), 303)
    now = request_time()
    passkeys = list_passkeys(db_session(), login.resident_id)
    sign_in_again = not recently_signed_in(login, now=now)
    # Said before the resident adds one: a passkey added now would wait out the recovery period.
    would_wait = not sign_in_again and recovery_wait_until(db_session(), login, wait=_recovery_wait(), now=now)
    db_session().commit()
    return render_template(
        "passkeys.html",
        passkeys=passkeys,
        form=ActionForm(),
        sign_in_again=sign_in_again,
        would_wait=bool(would_wait),
        wait_hours=_settings().passkey_recovery_wait // 3600,
        now=now,
        new_name=new_passkey_name(request.user_agent.string),
        report=take_report(),
    )


def _recovery_wait() -> dt.timedelta:
    return dt.timedelta(seconds=_settings().passkey_recovery_wait)


def _sign_in_again() -> Response:
    # A passkey added from a session left open on a lost phone would let its finder in for good.
    return _json(
        {
            "error": "login_required",
            "message": _("For your safety, sign in again before you add a passkey."),
            "redirect": url_for("web.login", next=url_for("passkeys.manage")),
        },
        401,
    )


@bp.post("/account/passkeys/options")
def register_options() -> Response:
    login = current_login()
    if login is None:
        return _json({"error": "login_required"}, 401)
    if not recently_signed_in(login, now=request_time()):
        return _sign_in_again()
    settings = _settings()
    options = registration_options(
        db_session(),
        login.resident,
        rp_id=settings.rp_id,
        rp_name=_("Gyeonggi-do sign-in"),
        binding=_binding(),
        policy=_policy(),
        now=request_time(),
    )
    db_session().commit()
    return _json(options)


@bp.post("/account/passkeys/verify")
def register_verify() -> Response:
    login = current_login()
    if login is None:
        return _json({"error": "login_required"}, 401)
    if not recently_signed_in(login, now=request_time()):
        return _sign_in_again()
    settings, now = _settings(), request_time()
    name = request.args.get("name") or _("Passkey")
    try:
        register_passkey(
            db_session(),
            login.resident,
            request.get_data(as_text=True),
            rp_id=settings.rp_id,
            origin=settings.origin,
            binding=_binding(),
            policy=_policy(),
            name=name,
            now=now,
            provisional_until=recovery_wait_until(db_session(), login, wait=_recovery_wait(), now=now),
        )
    except PasskeyRejectedError as error:
        return _refused(error, resident_id=login.resident_id)
    db_session().commit()
    return _json({"redirect": url_for("passkeys.manage")})


def _own_passkey(passkey_id: str, *, recent_sign_in: bool, form: bool = True) -> Passkey | BaseResponse | Response:
    """The signed-in resident's passkey named in a management form (or its confirmation page), or the answer to
    give instead.

    A passkey still in its recovery waiting period can be removed from any of the resident's sessions: it may be
    someone else's, and taking it away gives nobody more access."""
    if form and not ActionForm().validate():
        return render_error(400, _("This form has expired. Please try again."))
    login = current_login()
    if login is None:
        # A confirmation page comes back after signing in; a form's answer does not (it is sent again by hand).
        return redirect(url_for("web.login", next=None if form else request.path), 303)
    passkey = find_passkey(db_session(), login.resident_id, passkey_id)
    if passkey is None:
        return render_error(404)
    now = request_time()
    if recent_sign_in and not passkey.is_provisional(now) and not recently_signed_in(login, now=now):
        return redirect(url_for("web.login", next=url_for("passkeys.manage")), 303)
    return passkey


def _back() -> str:
    """Where a removal returns: My account for the warning about a passkey added after a carrier sign-in."""
    asked = request.form.get("back") if request.method == "POST" else request.args.get("back")
    return "account" if asked == "account" else "passkeys"


@bp.post("/account/passkeys/<passkey_id>/rename")
def rename(passkey_id: str) -> BaseResponse | Response:
    passkey = _own_passkey(passkey_id, recent_sign_in=False)
    if not isinstance(passkey, Passkey):
        return passkey
    rename_passkey(db_session(), passkey, request.form.get("name", ""))
    db_session().commit()
    return redirect(url_for("passkeys.manage"), 303)


@bp.get("/account/passkeys/<passkey_id>/remove")
def confirm_remove(passkey_id: str) -> str | BaseResponse | Response:
    """Ask once before a passkey is removed, saying what the resident signs in with afterwards."""
    passkey = _own_passkey(passkey_id, recent_sign_in=True, form=False)
    if not isinstance(passkey, Passkey):
        return passkey
    now = request_time()
    others = [p for p in list_passkeys(db_session(), passkey.resident_id) if p.id != passkey.id]
    db_session().commit()
    explanations = [
        _("You can no longer sign in with this passkey. It stays on the device until you delete it there too.")
    ]
    if not others and not passkey.is_provisional(now):
        explanations.append(
            _(
                "This is your last passkey: from now on you sign in with a mobile-phone verification, or with your "
                "authenticator app if you set one up."
            )
        )
    back = _back()
    return render_confirmation(
        title=_("Remove the passkey “%(name)s”?", name=passkey.name),
        explanations=explanations,
        action=url_for("passkeys.remove", passkey_id=passkey.id),
        fields={"back": back} if back == "account" else {},
        confirm_label=_("Remove the passkey “%(name)s”", name=passkey.name),
        cancel=url_for("account.overview" if back == "account" else "passkeys.manage"),
    )


@bp.post("/account/passkeys/<passkey_id>/remove")
def remove(passkey_id: str) -> BaseResponse | Response:
    passkey = _own_passkey(passkey_id, recent_sign_in=True)
    if not isinstance(passkey, Passkey):
        return passkey
    back = _back()
    if not confirmed():
        again = url_for("passkeys.confirm_remove", passkey_id=passkey.id, back="account" if back == "account" else None)
        return redirect(again, 303)
    name = passkey.name
    remove_passkey(db_session(), passkey, now=request_time())
    db_session().commit()
    report("passkey_removed", subject=name)
    return redirect(url_for("account.overview" if back == "account" else "passkeys.manage"), 303)
