"""The virtual phone: a page per number with its SMS messages and carrier-app approvals, and the index page.

It lets a person trying the demo finish a sign-in without a real phone. Plain HTML forms, no JavaScript.
"""

from __future__ import annotations

import datetime as dt

from flask import Blueprint, Flask, Response, abort, redirect, render_template, request, url_for
from werkzeug.wrappers import Response as BaseResponse

from idp.phones import normalize_phone
from idp.sandbox.agency import BRAND, ApprovalClosedError, TxnState
from idp.sandbox.runtime import current_sandbox

KST = dt.timezone(dt.timedelta(hours=9), "KST")  # what the resident's phone shows
NOTICES = {
    "approved": ("승인했습니다. 로그인 화면으로 돌아가세요.", "Approved. Go back to the sign-in page."),
    "denied": ("요청을 거절했습니다.", "You declined the request."),
    "mismatch": (
        "고른 숫자가 로그인 화면의 숫자와 다릅니다. 안전을 위해 이 요청을 끝냈습니다. 로그인 화면에서 다시 요청하세요.",
        "The number you picked is not the one on the sign-in page. The request was stopped for your safety; "
        "send a new one from the sign-in page.",
    ),
    "closed": ("이미 처리되었거나 만료된 요청입니다.", "That request was already answered or has expired."),
}
# Pages style themselves inline and post only to the sandbox; nothing else may load.
PAGE_POLICY = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"

bp = Blueprint("phone", __name__)


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)


@bp.after_request
def _page_headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = PAGE_POLICY
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/")
def index() -> str:
    lines = current_sandbox().agency.directory.lines()
    return render_template("index.html", lines=lines)


@bp.get("/phone/<phone>")
def phone(phone: str) -> str | BaseResponse:
    e164 = _e164(phone)
    if e164 != phone:
        # One address per phone, whichever form was typed into the address bar.
        return redirect(url_for("phone.phone", phone=e164), 308)
    agency = current_sandbox().agency
    line = agency.directory.find_line(e164)
    messages = [(message, _kst(message.sent_at)) for message in reversed(agency.outbox(e164))]
    approvals = [(approval, _kst(approval.expires_at)) for approval in agency.approvals(e164)]
    notice = NOTICES.get(request.args.get("notice", ""))
    return render_template(
        "phone.html", phone=e164, line=line, messages=messages, approvals=approvals, notice=notice, brand=BRAND
    )


@bp.post("/phone/<phone>/approvals/<txn_id>")
def answer(phone: str, txn_id: str) -> BaseResponse:
    e164 = _e164(phone)
    denied = "deny" in request.form
    number = None if denied else request.form.get("number")
    if number is None and not denied:
        abort(400)
    try:
        state = current_sandbox().agency.answer_approval(e164, txn_id, number=number)
    except ApprovalClosedError:
        notice = "closed"
    else:
        notice = {TxnState.VERIFIED: "approved", TxnState.MISMATCHED: "mismatch"}.get(state, "denied")
    return redirect(url_for("phone.phone", phone=e164, notice=notice), 303)


def _kst(timestamp: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(timestamp, KST).replace(microsecond=0)


def _e164(phone: str) -> str:
    try:
        return normalize_phone(phone)
    except ValueError:
        abort(404)
