"""The pages the protocol asks for (consent, logout confirmation, form post, errors it cannot send back), and the
answers to them: POST /consent and POST /logout/confirm, CSRF-protected like every form of the web blueprints."""

from __future__ import annotations

from authlib.oauth2.rfc6749 import OAuth2Error
from authlib.oauth2.rfc6749.errors import InvalidRequestError
from flask import Blueprint, Response, redirect, render_template, request
from flask_babel import gettext as _
from werkzeug.wrappers import Response as BaseResponse

from idp.models import Client
from idp.oidc.clients import find_client
from idp.oidc.interaction import (
    ConsentExpiredError,
    ConsentQuestion,
    LogoutQuestion,
    answer_consent,
    authorize_url,
    current_login,
)
from idp.oidc.views import finish_logout, logout_request
from idp.runtime import current, db_session, request_time
from idp.web import render_error
from idp.web.forms import ActionForm

bp = Blueprint("interaction", __name__)


class WebPages:
    """idp.oidc's InteractionPages, as the resident's pages (their language, CSP and CSRF tokens)."""

    def consent(self, question: ConsentQuestion) -> Response:
        page = render_template(
            "consent.html",
            client=question.client,
            scopes=question.scopes,
            missing=question.shown,
            request_id=question.request_id,
            form=ActionForm(),
        )
        return Response(page, mimetype="text/html")

    def logout_confirmation(self, question: LogoutQuestion) -> Response:
        page = render_template("logout_confirm.html", params=question.params, client=question.client, form=ActionForm())
        return Response(page, mimetype="text/html")

    def signed_out(self) -> Response:
        return Response(render_template("signed_out.html"), mimetype="text/html")

    def form_post(self, action: str, fields: list[tuple[str, str]]) -> Response:
        return Response(render_template("form_post.html", action=action, fields=fields), mimetype="text/html")

    def error(self, error: OAuth2Error) -> Response:
        """A request that cannot go back to its service: a page that says so, sends the resident back to the
        service they came from, and says whom to ask (the service's people: the fault is in its link)."""
        client = _named_client()
        if request.endpoint == "oidc.end_session_endpoint":
            message = _("The service sent an invalid sign-out request.")
        elif client is not None:
            message = _(
                "%(service)s sent a sign-in request that Gyeonggi-do sign-in cannot answer.", service=client.name
            )
        else:
            messages = {
                "invalid_client": _("This service is not registered with Gyeonggi-do sign-in."),
                "invalid_request": _("The service sent an incomplete or invalid sign-in request."),
                "unsupported_response_type": _("The service asked for a sign-in method this provider does not offer."),
            }
            message = messages.get(str(error.error), _("The service sent an invalid sign-in request."))
        if client is not None:
            advice = _(
                "Go back to %(service)s and try again. If it happens again, contact %(service)s: the problem is in "
                "its sign-in link, not in your account. The error code below helps them find it.",
                service=client.name,
            )
        else:
            advice = _(
                "Go back to the service you were using and try again. If it happens again, contact the organisation "
                "that runs that service: the problem is in its sign-in link, not in your account."
            )
        return render_error(400, str(message), detail=str(error.error), advice=str(advice), actions=[])


def _named_client() -> Client | None:
    """The registered service a refused request names, if any (its registered name is what the page shows)."""
    return find_client(db_session(), request.values.get("client_id", ""))


@bp.post("/consent")
def consent() -> BaseResponse:
    """The resident's answer on the consent page: what it listed is allowed (or not), then the request goes on."""
    login = current_login()
    try:
        if login is None:
            raise ConsentExpiredError
        params = answer_consent(
            db_session(),
            request.form.get("request_id", ""),
            login=login,
            allow=request.form.get("decision") == "allow",
            now=request_time(),
        )
    except ConsentExpiredError:
        return render_error(400, _("This sign-in request has expired. Go back to the service and try again."))
    db_session().commit()
    return redirect(authorize_url(params), 303)


@bp.post("/logout/confirm")
def confirm_logout() -> BaseResponse:
    """The resident confirmed "Sign out?": the logout request, checked again, is carried out."""
    params = {key: value for key, value in request.form.items(multi=False) if key not in ("csrf_token", "confirm")}
    try:
        question, _sid = logout_request(params)
    except InvalidRequestError as error:
        return current().pages.error(error)
    return finish_logout(question)
