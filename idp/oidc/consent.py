"""Consent: what a resident allowed a client, asked again only for scopes not yet allowed."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from idp.audit import SUCCESS, record_event
from idp.models import Client, Consent
from idp.oidc.tokens import revoke_client_grants


def missing_scopes(db: Session, resident_id: uuid.UUID, client: Client, scopes: list[str]) -> list[str]:
    """The scopes of this request the resident has not allowed yet; none for first-party clients."""
    if client.first_party:
        return []
    consent = db.scalar(select(Consent).where(Consent.resident_id == resident_id, Consent.client_id == client.id))
    granted = set(consent.scopes) if consent else set()
    return [scope for scope in scopes if scope not in granted]


def grant_consent(db: Session, resident_id: uuid.UUID, client_id: str, scopes: list[str], *, now: dt.datetime) -> None:
    consent = db.scalar(select(Consent).where(Consent.resident_id == resident_id, Consent.client_id == client_id))
    if consent is None:
        db.add(Consent(resident_id=resident_id, client_id=client_id, scopes=sorted(set(scopes)), granted_at=now))
    else:
        consent.scopes = sorted(set(consent.scopes) | set(scopes))
    record_event(db, "consent.granted", result=SUCCESS, resident_id=resident_id, client_id=client_id, scopes=scopes)


def revoke_consent(db: Session, resident_id: uuid.UUID, client_id: str, *, now: dt.datetime) -> None:
    """Withdraw the consent and revoke the client's refresh and access tokens for the resident."""
    db.execute(delete(Consent).where(Consent.resident_id == resident_id, Consent.client_id == client_id))
    revoke_client_grants(db, resident_id=resident_id, client_id=client_id, now=now)
    record_event(db, "consent.revoked", result=SUCCESS, resident_id=resident_id, client_id=client_id)


def list_consents(db: Session, resident_id: uuid.UUID) -> list[tuple[Consent, Client]]:
    rows = db.execute(
        select(Consent, Client).join(Client, Client.id == Consent.client_id).where(Consent.resident_id == resident_id)
    )
    return [(row[0], row[1]) for row in rows]
