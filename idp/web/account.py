"""The resident's account pages: who they are, their sessions and sign-ins, and signing out."""

from __future__ import annotations

from flask import Blueprint, redirect, render_template, request, url_for
from flask_babel import gettext as _
from sqlalchemy import select
from werkzeug.wrappers import Response

from idp.audit import SUCCESS, record_event
from idp.authn.passkeys import provisional_passkeys
from idp.authn.sessions import live_sessions
from idp.logs import mask_phone
from idp.models import AuditEvent
from idp.oidc.consent import list_consents, revoke_consent
from idp.oidc.interaction import clear_session_cookie, current_login
from idp.oidc.logout import end_login_session
from idp.runtime import current, db_session, request_time
from idp.web import render_error
from idp.web.forms import ActionForm

bp = Blueprint("account", __name__)

SIGN_IN_EVENTS = ("signin", "signin.refused")
RECENT_SIGN_INS = 10


@bp.get("/account")
def overview() -> str | Response:
    login = current_login()
    if login is None:
        return redirect(url_for("web.login", next=request.path), 303)
    now = request_time()
    resident = login.resident
    recent = db_session().scalars(
        select(AuditEvent)
        .where(AuditEvent.resident_id == resident.id, AuditEvent.event.in_(SIGN_IN_EVENTS))
        .order_by(AuditEvent.at.desc())
        .limit(RECENT_SIGN_INS)
    )
    db_session().commit()  # load_session may have refreshed last_seen_at
    return render_template(
        "account.html",
        resident=resident,
        login=login,
        masked_phone=mask_phone(resident.phone),
        sessions=live_sessions(db_session(), resident.id, now=now),
        recent=list(recent),
        provisional=provisional_passkeys(db_session(), resident.id, now=now),
        form=ActionForm(),
    )


@bp.post("/logout/session")
def sign_out() -> Response:
    """Sign out of this browser."""
    if not ActionForm().validate():
        return render_error(400, _("This form has expired. Please try again."))
    login = current_login()
    if login is not None:
        queued = end_login_session(db_session(), login, now=request_time(), client_ip=request.remote_addr)
        db_session().commit()
        current().logout.deliver_now(queued)
    response = redirect(url_for("web.login"), 303)
    clear_session_cookie(response)
    return response


@bp.post("/account/sessions/end-all")
def sign_out_everywhere() -> Response:
    if not ActionForm().validate():
        return render_error(400, _("This form has expired. Please try again."))
    login = current_login()
    if login is None:
        return redirect(url_for("web.login"), 303)
    now = request_time()
    queued: list[str] = []
    # Each session's services hear of it through back-channel logout, as with a single sign-out.
    sessions = live_sessions(db_session(), login.resident_id, now=now)
    for other in sessions:
        queued += end_login_session(db_session(), other, now=now, client_ip=request.remote_addr)
    record_event(
        db_session(),
        "signout.everywhere",
        result=SUCCESS,
        resident_id=login.resident_id,
        client_ip=request.remote_addr,
        sessions=len(sessions),
    )
    db_session().commit()
    current().logout.deliver_now(queued)
    response = redirect(url_for("web.login"), 303)
    clear_session_cookie(response)
    return response


@bp.get("/account/services")
def services() -> str | Response:
    """The services the resident allowed, each with a button to withdraw it."""
    login = current_login()
    if login is None:
        return redirect(url_for("web.login", next=request.path), 303)
    consents = list_consents(db_session(), login.resident_id)
    db_session().commit()
    return render_template("services.html", consents=consents, form=ActionForm())


@bp.post("/account/services/revoke")
def revoke_service() -> Response:
    """Withdraw consent from a service; its refresh and access tokens for the resident are revoked too."""
    if not ActionForm().validate():
        return render_error(400, _("This form has expired. Please try again."))
    login = current_login()
    if login is None:
        return redirect(url_for("web.login"), 303)
    client_id = request.form.get("client_id", "")[:128]
    revoke_consent(db_session(), login.resident_id, client_id, now=request_time())
    db_session().commit()
    return redirect(url_for("account.services"), 303)
