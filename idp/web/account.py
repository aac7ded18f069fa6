"""The resident's account pages: who they are, their sessions and sign-ins, the services they allowed, and signing
out; with the Korea-time filters and the one-time reports ("the passkey was removed") the account pages share."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from babel.dates import format_datetime
from flask import Blueprint, redirect, render_template, request, session, url_for
from flask_babel import get_locale, ngettext
from flask_babel import gettext as _
from werkzeug.wrappers import Response

from idp.audit import FAILURE, SUCCESS, record_event, sign_in_history
from idp.authn.passkeys import provisional_passkeys
from idp.authn.sessions import live_sessions
from idp.logs import mask_phone
from idp.models import AuditEvent, Client, Consent
from idp.oidc.consent import list_consents, revoke_consent
from idp.oidc.interaction import clear_session_cookie, current_login
from idp.oidc.logout import end_login_session
from idp.runtime import current, db_session, request_time
from idp.web import render_error
from idp.web.devices import device_name
from idp.web.forms import ActionForm

bp = Blueprint("account", __name__)

RECENT_SIGN_INS = 10
# Korea Standard Time, UTC+9 all year: Korea has kept no daylight saving time since 1988.
KST = dt.timezone(dt.timedelta(hours=9), "KST")
# The flow-cookie member holding what the last destructive action did, said once on the page it leads to.
REPORT = "account_report"
CONFIRMED = "yes"


# -- Korea time ------------------------------------------------------------------------------------------------------


def _korean() -> bool:
    locale = get_locale()
    return locale is None or locale.language == "ko"


@bp.app_template_filter("korea_time")
def korea_time(moment: dt.datetime | None) -> str:
    """A moment as residents read it, in Korea time: "2025년 3월 14일 오후 3:05", "14 March 2025, 3:05 PM (Korea
    time)" (stored times are UTC)."""
    if moment is None:
        return ""
    local = moment.astimezone(KST)
    if _korean():
        return format_datetime(local, "y년 M월 d일 a h:mm", locale="ko")
    return str(_("%(time)s (Korea time)", time=format_datetime(local, "d MMMM y, h:mm a", locale="en")))


@bp.app_template_filter("korea_date")
def korea_date(moment: dt.datetime | None) -> str:
    """The day of a moment in Korea: "2025년 3월 14일", "14 March 2025"."""
    if moment is None:
        return ""
    local = moment.astimezone(KST)
    return format_datetime(local, "y년 M월 d일" if _korean() else "d MMMM y", locale="ko" if _korean() else "en")


# -- reports: what a destructive action did, said once --------------------------------------------------------------


def report(kind: str, *, subject: str = "", count: int = 0) -> None:
    """Keep what was just done for the page the answer redirects to."""
    session[REPORT] = {"kind": kind, "subject": subject[:200], "count": count}


def take_report() -> str | None:
    """What the last destructive action did, in the resident's language, once; None when nothing (or a member of
    another shape: the flow cookie is signed, not trusted) is waiting."""
    kept = session.pop(REPORT, None)
    if not isinstance(kept, dict):
        return None
    kind, subject, count = kept.get("kind"), kept.get("subject"), kept.get("count")
    if not isinstance(subject, str) or not isinstance(count, int) or isinstance(count, bool):
        return None
    if kind == "passkey_removed":
        return str(_("The passkey “%(name)s” was removed. It can no longer sign you in.", name=subject))
    if kind == "totp_removed":
        return str(_("The authenticator app was removed. Its codes and your recovery codes no longer sign you in."))
    if kind == "signed_out_everywhere":
        return str(ngettext("You are signed out on %(num)d device.", "You are signed out on %(num)d devices.", count))
    if kind == "service_withdrawn":
        return str(
            _(
                "%(service)s is disconnected. It can no longer receive your information, and it will ask for your "
                "consent again if you use it.",
                service=subject,
            )
        )
    return None


def render_confirmation(
    *,
    title: str,
    explanations: list[str],
    action: str,
    confirm_label: str,
    cancel: str,
    fields: dict[str, str] | None = None,
    items: list[str] | None = None,
) -> str:
    """The page that asks once before a destructive action: a plain form, so it works without JavaScript."""
    return render_template(
        "confirm.html",
        title=title,
        explanations=explanations,
        items=items or [],
        action=action,
        fields=fields or {},
        confirm_label=confirm_label,
        confirm_value=CONFIRMED,
        cancel=cancel,
    )


def confirmed() -> bool:
    return request.form.get("confirm") == CONFIRMED


# -- the overview ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HistoryLine:
    """One line of the sign-in history: when, what happened, from which address, and whether it failed."""

    at: dt.datetime
    text: str
    client_ip: str | None
    failed: bool


def _method_names() -> dict[str, str]:
    passkey = _("a passkey")
    return {
        "carrier_sms": _("mobile-phone verification (SMS)"),
        "carrier_app": _("mobile-phone verification (carrier app)"),
        "passkey": passkey,
        "passkey_hardware": passkey,
        "passkey_provisional": passkey,
        "totp": _("authenticator app"),
        "recovery_code": _("a recovery code"),
    }


def _describe(event: AuditEvent) -> HistoryLine:
    failed = event.result == FAILURE
    details = event.details or {}
    if event.event == "signin" and not failed:
        names = _method_names()
        methods = str(details.get("method") or "").split("+")
        known = [names[method] for method in methods if method in names]
        text = _("Signed in with %(methods)s", methods=" + ".join(known)) if known else _("Signed in")
    elif event.event == "signin.refused":
        text = _("Sign-in refused: this account is locked")
    elif event.event == "passkey.clone_suspected":
        text = _("A copied passkey was refused")
    elif event.event == "totp.verify" and details.get("reason") == "locked":
        text = _("A code was refused: too many wrong codes")
    elif event.event == "totp.verify":
        text = _("Someone tried to sign in with a wrong code")
    elif event.event == "carrier.verify":
        text = _("A mobile-phone verification failed")
    else:
        text = _("Signed in") if not failed else _("A sign-in failed")
    return HistoryLine(at=event.at, text=text, client_ip=event.client_ip, failed=failed)


@bp.get("/account")
def overview() -> str | Response:
    login = current_login()
    if login is None:
        return redirect(url_for("web.login", next=request.path), 303)
    now = request_time()
    resident = login.resident
    history = [_describe(event) for event in sign_in_history(db_session(), resident.id, limit=RECENT_SIGN_INS)]
    db_session().commit()  # load_session may have refreshed last_seen_at
    return render_template(
        "account.html",
        resident=resident,
        login=login,
        masked_phone=mask_phone(resident.phone),
        sessions=live_sessions(db_session(), resident.id, now=now),
        history=history,
        any_failed=any(line.failed for line in history),
        provisional=provisional_passkeys(db_session(), resident.id, now=now),
        device_name=device_name,
        report=take_report(),
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


# -- signing out everywhere ------------------------------------------------------------------------------------------


@bp.get("/account/sessions/end-all")
def confirm_sign_out_everywhere() -> str | Response:
    """Ask before signing out everywhere, naming the devices it signs out."""
    login = current_login()
    if login is None:
        return redirect(url_for("web.login", next=request.path), 303)
    sessions = live_sessions(db_session(), login.resident_id, now=request_time())
    db_session().commit()
    count = len(sessions)
    return render_confirmation(
        title=ngettext("Sign out on %(num)d device?", "Sign out on all %(num)d devices, this one included?", count),
        explanations=[
            _("You will be signed out on these devices:"),
        ],
        items=[device_name(item.user_agent) for item in sessions],
        action=url_for("account.sign_out_everywhere"),
        confirm_label=ngettext("Sign out on %(num)d device", "Sign out on %(num)d devices", count),
        cancel=url_for("account.overview"),
    )


@bp.post("/account/sessions/end-all")
def sign_out_everywhere() -> Response:
    if not ActionForm().validate():
        return render_error(400, _("This form has expired. Please try again."))
    login = current_login()
    if login is None:
        return redirect(url_for("web.login"), 303)
    if not confirmed():
        return redirect(url_for("account.confirm_sign_out_everywhere"), 303)
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
    report("signed_out_everywhere", count=len(sessions))
    response = redirect(url_for("account.signed_out"), 303)
    clear_session_cookie(response)
    return response


@bp.get("/account/signed-out")
def signed_out() -> str:
    """Where signing out everywhere ends: what it did, and a way to sign in again."""
    return render_template("signed_out.html", report=take_report())


# -- connected services ----------------------------------------------------------------------------------------------


def scope_descriptions(scopes: list[str]) -> list[str]:
    """What a service may read, scope by scope, in the resident's words (scopes this IdP does not know are left out)."""
    names = {
        "openid": _("an identifier for you that only this service uses"),
        "profile": _("your name and birth date"),
        "phone": _("your mobile phone number"),
        "kr_ci": _("your connecting information (CI)"),
        "offline_access": _("access while you are not using the service"),
    }
    order = ("profile", "phone", "kr_ci", "openid", "offline_access")
    return [names[scope] for scope in order if scope in scopes]


@bp.get("/account/services")
def services() -> str | Response:
    """The services the resident allowed, each with what it may read and a button to withdraw it."""
    login = current_login()
    if login is None:
        return redirect(url_for("web.login", next=request.path), 303)
    consents = list_consents(db_session(), login.resident_id)
    db_session().commit()
    return render_template(
        "services.html",
        consents=consents,
        describe=scope_descriptions,
        report=take_report(),
        form=ActionForm(),
    )


def _consented(client_id: str) -> tuple[Consent, Client] | None:
    login = current_login()
    assert login is not None
    consents = list_consents(db_session(), login.resident_id)
    return next(((consent, client) for consent, client in consents if client.id == client_id), None)


@bp.get("/account/services/revoke")
def confirm_revoke_service() -> str | Response:
    """Ask before withdrawing a service's access, saying what it loses."""
    login = current_login()
    if login is None:
        return redirect(url_for("web.login", next=url_for("account.services")), 303)
    found = _consented(request.args.get("client_id", "")[:128])
    db_session().commit()
    if found is None:
        return render_error(404, _("This service is not connected to your account."))
    consent, client = found
    return render_confirmation(
        title=_("Disconnect %(service)s?", service=client.name),
        explanations=[
            _("%(service)s can then no longer receive this information about you:", service=client.name),
        ],
        items=scope_descriptions(consent.scopes),
        action=url_for("account.revoke_service"),
        fields={"client_id": client.id},
        confirm_label=_("Withdraw access for %(service)s", service=client.name),
        cancel=url_for("account.services"),
    )


@bp.post("/account/services/revoke")
def revoke_service() -> Response:
    """Withdraw consent from a service; its refresh and access tokens for the resident are revoked too."""
    if not ActionForm().validate():
        return render_error(400, _("This form has expired. Please try again."))
    login = current_login()
    if login is None:
        return redirect(url_for("web.login"), 303)
    client_id = request.form.get("client_id", "")[:128]
    if not confirmed():
        return redirect(url_for("account.confirm_revoke_service", client_id=client_id), 303)
    found = _consented(client_id)
    revoke_consent(db_session(), login.resident_id, client_id, now=request_time())
    db_session().commit()
    if found is not None:
        report("service_withdrawn", subject=found[1].name)
    return redirect(url_for("account.services"), 303)
