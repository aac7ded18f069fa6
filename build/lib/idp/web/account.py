"""The resident's account pages: who they are, their sessions and sign-ins, and signing out."""

from __future__ import annotations

import datetime as dt

from flask import Blueprint, redirect, render_template, request, url_for
from flask_babel import gettext as _
from sqlalchemy import select
from werkzeug.wrappers import Response

from idp import db
from idp.audit import SUCCESS, record_event
from idp.authn.sessions import end_all_sessions, end_session, live_sessions
from idp.logs import mask_phone
from idp.models import AuditEvent
from idp.web import render_error
from idp.web.cookies import clear_session_cookie, current_login
from idp.web.forms import ActionForm

bp = Blueprint("account", __name__)

SIGN_IN_EVENTS = ("signin", "signin.refused")
RECENT_SIGN_INS = 10


@bp.get("/account")
def overview() -> str | Response:
    login = current_login()
    if login is None:
        return redirect(url_for("web.login", next=request.path), 303)
    now = dt.datetime.now(dt.UTC)
    resident = login.resident
    recent = db.session().scalars(
        select(AuditEvent)
        .where(AuditEvent.resident_id == resident.id, AuditEvent.event.in_(SIGN_IN_EVENTS))
        .order_by(AuditEvent.at.desc())
        .limit(RECENT_SIGN_INS)
    )
    db.session().commit()  # load_session may have refreshed last_seen_at
    return render_template(
        "account.html",
        resident=resident,
        login=login,
        masked_phone=mask_phone(resident.phone),
        sessions=live_sessions(db.session(), resident.id, now=now),
        recent=list(recent),
        form=ActionForm(),
    )


@bp.post("/logout/session")
def sign_out() -> Response:
    """Sign out of this browser."""
    if not ActionForm().validate():
        return render_error(400, _("This form has expired. Please try again."))
    login = current_login()
    if login is not None:
        end_session(db.session(), login, now=dt.datetime.now(dt.UTC))
        record_event(
            db.session(), "signout", result=SUCCESS, resident_id=login.resident_id, client_ip=request.remote_addr
        )
        db.session().commit()
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
    ended = end_all_sessions(db.session(), login.resident_id, now=dt.datetime.now(dt.UTC))
    record_event(
        db.session(),
        "signout.everywhere",
        result=SUCCESS,
        resident_id=login.resident_id,
        client_ip=request.remote_addr,
        sessions=ended,
    )
    db.session().commit()
    response = redirect(url_for("web.login"), 303)
    clear_session_cookie(response)
    return response
