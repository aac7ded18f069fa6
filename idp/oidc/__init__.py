"""The OpenID Connect provider: init_app lists its grants, extensions and endpoints in one readable place."""

from __future__ import annotations

from authlib.oauth2.rfc9207 import IssuerParameter
from flask import Flask

from idp.oidc import grants, views
from idp.oidc.clients import secret_digest_key
from idp.oidc.discovery import MetadataCache
from idp.oidc.endpoints import Introspection, Revocation
from idp.oidc.logout import DeliveryWorker
from idp.oidc.published import PublishedDocuments, PublishedDocumentsMiddleware
from idp.oidc.server import IdpAuthorizationServer
from idp.settings import Settings


class Issuer(IssuerParameter):
    """RFC 9207: `iss` in every authorization response, so clients can tell providers apart."""

    def __init__(self, server: IdpAuthorizationServer) -> None:
        self.issuer = server.settings.issuer
        super().__call__(server)

    def get_issuer(self) -> str:
        return self.issuer


def init_app(app: Flask, settings: Settings) -> None:
    from idp.web import csrf

    server = IdpAuthorizationServer(settings, app.extensions["idp.keyring"], secret_digest_key(settings.secret_key))
    server.register_grant(grants.AuthorizationCodeGrant, [grants.S256CodeChallenge(), grants.OpenIDCodeFlow()])
    server.register_grant(grants.RefreshTokenGrant)
    server.register_grant(grants.ClientCredentialsGrant)
    server.register_extension(Issuer)
    server.register_endpoint(Introspection)
    server.register_endpoint(Revocation)
    app.extensions["idp.oidc"] = server
    # Back-channel logout: deliveries are tried at once; `idp serve` also starts the retry loop (idp/server.py).
    app.extensions["idp.logout"] = DeliveryWorker(app.extensions["idp.db"][1], app.extensions["idp.keyring"], settings)

    documents = PublishedDocuments(app.extensions["idp.keyring"], MetadataCache(settings), settings)
    app.extensions["idp.published"] = documents
    # Protocol endpoints authenticate clients, not browsers: no CSRF token (the consent form checks its own).
    csrf.exempt(views.bp)
    app.register_blueprint(views.bp)
    # JWKS and discovery are answered before Flask's request handling (see idp.oidc.published).
    app.wsgi_app = PublishedDocumentsMiddleware(app.wsgi_app, documents)  # type: ignore[method-assign]
