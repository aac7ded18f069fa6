"""The sandbox-only endpoints (/sandbox): outbox, residents, CI re-issue, faults, clock and reset.

They have no site authentication: the sandbox holds synthetic people only and listens on 127.0.0.1. Bodies must
be sent as application/json, which a cross-site form cannot do, so another web page open in the developer's
browser cannot reset the sandbox or add residents to it.
"""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, Flask, Response, jsonify, request

from idp.phones import normalize_phone
from idp.sandbox.agency import AgencyError, ErrorCode, SentMessage
from idp.sandbox.faults import FaultMode
from idp.sandbox.residents import Line, ResidentInvalidError, UnknownPersonError
from idp.sandbox.runtime import Sandbox, current_sandbox, rfc3339

MAX_CLOCK_ADVANCE = 10 * 365 * 86400  # seconds; enough for any expiry, small enough to stay a valid date

bp = Blueprint("console", __name__, url_prefix="/sandbox")


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)


@bp.after_request
def _no_store(response: Response) -> Response:
    response.headers.setdefault("Cache-Control", "no-store")
    return response


@bp.get("/outbox")
def outbox() -> Response:
    phone = request.args.get("phone")
    e164 = None
    if phone is not None:
        try:
            e164 = normalize_phone(phone)
        except ValueError:
            raise _invalid("phone must be a Korean mobile number such as 010-1234-5678.") from None
    return jsonify([message_json(message) for message in current_sandbox().agency.outbox(e164)])


def message_json(message: SentMessage) -> dict[str, Any]:
    return {
        "phone": message.phone,
        "text": message.text,
        "code": message.code,
        "txn_id": message.txn_id,
        "sent_at": rfc3339(message.sent_at),
    }


@bp.get("/residents")
def residents() -> Response:
    sandbox = current_sandbox()
    return jsonify([_resident_json(sandbox, line) for line in sandbox.agency.directory.lines()])


@bp.post("/residents")
def add_resident() -> tuple[Response, int]:
    sandbox = current_sandbox()
    try:
        line = sandbox.agency.directory.add(_json_body())
    except ResidentInvalidError as exc:
        raise _invalid(str(exc)) from None
    return jsonify(_resident_json(sandbox, line)), 201


@bp.post("/residents/<person_id>/reissue-ci")
def reissue_ci(person_id: str) -> Response:
    agency = current_sandbox().agency
    try:
        version = agency.directory.reissue_ci(person_id)
    except UnknownPersonError:
        raise AgencyError(ErrorCode.INVALID_REQUEST, "No sandbox resident has this person_id.", status=404) from None
    return jsonify(
        {
            "person_id": person_id,
            "ci_version": version,
            "ci": agency.keys.ci(person_id, version),
            "ci_previous": agency.keys.ci(person_id, version - 1),
        }
    )


@bp.get("/faults")
def faults() -> Response:
    return jsonify(current_sandbox().faults.current().to_json())


@bp.post("/faults")
def set_fault() -> Response:
    body = _json_body()
    try:
        mode = FaultMode(str(body.get("mode")))
    except ValueError:
        raise _invalid(f"mode must be one of {', '.join(FaultMode)}.") from None
    count = body.get("count")
    if count is not None and (type(count) is not int or count < 1):
        raise _invalid("count must be a positive integer, or absent for until cleared.")
    return jsonify(current_sandbox().faults.set(mode, count).to_json())


@bp.get("/clock")
def clock() -> Response:
    return _clock_json(current_sandbox())


@bp.post("/clock")
def set_clock() -> Response:
    sandbox = current_sandbox()
    body = _json_body()
    if body.get("reset") is True:
        sandbox.agency.clock.reset()
        return _clock_json(sandbox)
    seconds: Any = body.get("advance")
    # type(), not isinstance(): JSON true is a bool, and a bool is an int to isinstance().
    if type(seconds) not in (int, float) or not 0 <= seconds <= MAX_CLOCK_ADVANCE:
        raise _invalid(f'Send {{"advance": seconds}} (0 to {MAX_CLOCK_ADVANCE}) or {{"reset": true}}.')
    sandbox.agency.clock.advance(float(seconds))
    return _clock_json(sandbox)


@bp.post("/reset")
def reset() -> Response:
    sandbox = current_sandbox()
    sandbox.agency.reset()
    sandbox.faults.clear()
    sandbox.agency.clock.reset()
    return jsonify({"status": "reset"})


def _clock_json(sandbox: Sandbox) -> Response:
    clock = sandbox.agency.clock
    return jsonify({"now": rfc3339(clock.now()), "offset": clock.offset})


def _resident_json(sandbox: Sandbox, line: Line) -> dict[str, Any]:
    agency = sandbox.agency
    version = agency.directory.ci_version(line.person_id)
    return {
        **line.to_json(),
        "source": "added" if line.added else "shipped",
        "ci_version": version,
        "ci": agency.keys.ci(line.person_id, version),
    }


def _json_body() -> dict[str, Any]:
    if request.mimetype != "application/json":
        raise _invalid("Send the body as application/json.")
    try:
        data = json.loads(request.get_data(cache=False).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _invalid("The body must be a JSON object in UTF-8.") from None
    if not isinstance(data, dict):
        raise _invalid("The body must be a JSON object.")
    return data


def _invalid(message: str) -> AgencyError:
    return AgencyError(ErrorCode.INVALID_REQUEST, message)
