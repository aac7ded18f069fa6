"""The OpenID Connect provider: init_app lists its grants, extensions and endpoints in one readable place."""

from __future__ import annotations

from authlib.oauth2.rfc9207 import IssuerParameter
from flask import Flask

from idp.oidc import grants, views
from idp.oidc.direct import DirectEndpoints
from idp.oidc.endpoints import Introspection, Revocation
from idp.oidc.published import PublishedDocumentsMiddleware
from idp.oidc.server import IdpAuthorizationServer
from idp.runtime import Runtime


class Issuer(IssuerParameter):
    """RFC 9207: `iss` in every authorization response, so clients can tell providers apart."""

    def __init__(self, server: IdpAuthorizationServer) -> None:
        self.issuer = server.settings.issuer
        super().__call__(server)

    def get_issuer(self) -> str:
        return self.issuer


def init_app(app: Flask, runtime: Runtime) -> None:
    server = runtime.oidc
    server.register_grant(grants.AuthorizationCodeGrant, [grants.S256CodeChallenge(), grants.OpenIDCodeFlow(server)])
    server.register_grant(grants.RefreshTokenGrant)
    server.register_grant(grants.ClientCredentialsGrant)
    server.register_extension(Issuer)
    server.register_endpoint(Introspection)
    server.register_endpoint(Revocation)
    app.register_blueprint(views.bp)
    # JWKS and discovery are answered before Flask's request handling (see idp.oidc.published). Back-channel
    # logout deliveries are tried at once; `idp serve` also starts the retry loop (idp/server.py).
    # Token, UserInfo and introspection likewise (idp.oidc.direct), with the same views.
    app.wsgi_app = DirectEndpoints(app, app.wsgi_app)  # type: ignore[method-assign]
    app.wsgi_app = PublishedDocumentsMiddleware(app.wsgi_app, runtime.published)  # type: ignore[method-assign]
