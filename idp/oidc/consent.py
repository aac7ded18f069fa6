"""Consent: what a resident allowed a client, asked again only for scopes not yet allowed."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import cast

from cryptography.fernet import InvalidToken
from sqlalchemy import Table, bindparam, delete, select
from sqlalchemy.orm import Session

from idp.audit import SUCCESS, record_event
from idp.models import Client, Consent, Resident
from idp.oidc.claims import encrypt_ci
from idp.oidc.tokens import revoke_client_grants
from idp.settings import Settings, data_fernet

# A raw CI waits in the browser's flow for the resident's consent at most as long as the flow itself lives.
RAW_CI_HOLD = dt.timedelta(minutes=30)


# What a resident allowed a client: every /authorize of a third-party client with a session asks. Built once.
_CONSENTS = cast(Table, Consent.__table__)
GRANTED_SCOPES = select(_CONSENTS.c.scopes).where(
    _CONSENTS.c.resident_id == bindparam("resident_id"), _CONSENTS.c.client_id == bindparam("client_id")
)


def missing_scopes(db: Session, resident_id: uuid.UUID, client: Client, scopes: list[str]) -> list[str]:
    """The scopes of this request the resident has not allowed yet; none for first-party clients."""
    if client.first_party:
        return []
    allowed = db.scalar(GRANTED_SCOPES, {"resident_id": resident_id, "client_id": client.id})
    granted = set(allowed or ())
    return [scope for scope in scopes if scope not in granted]


def grant_consent(db: Session, resident_id: uuid.UUID, client_id: str, scopes: list[str], *, now: dt.datetime) -> None:
    consent = db.scalar(select(Consent).where(Consent.resident_id == resident_id, Consent.client_id == client_id))
    if consent is None:
        db.add(Consent(resident_id=resident_id, client_id=client_id, scopes=sorted(set(scopes)), granted_at=now))
    else:
        consent.scopes = sorted(set(consent.scopes) | set(scopes))
    record_event(db, "consent.granted", result=SUCCESS, resident_id=resident_id, client_id=client_id, scopes=scopes)


def revoke_consent(db: Session, resident_id: uuid.UUID, client_id: str, *, now: dt.datetime) -> None:
    """Withdraw the consent and revoke the client's refresh and access tokens for the resident; the raw CI goes
    too when no other service the resident allowed `kr_ci` is left."""
    db.execute(delete(Consent).where(Consent.resident_id == resident_id, Consent.client_id == client_id))
    revoke_client_grants(db, resident_id=resident_id, client_id=client_id, now=now)
    remaining = db.scalars(select(Consent.scopes).where(Consent.resident_id == resident_id)).all()
    if not any("kr_ci" in scopes for scopes in remaining):
        resident = db.get(Resident, resident_id)
        if resident is not None and resident.ci_encrypted is not None:
            resident.ci_encrypted = None
            record_event(db, "ci.dropped", result=SUCCESS, resident_id=resident_id, client_id=client_id)
    record_event(db, "consent.revoked", result=SUCCESS, resident_id=resident_id, client_id=client_id)


def list_consents(db: Session, resident_id: uuid.UUID) -> list[tuple[Consent, Client]]:
    rows = db.execute(
        select(Consent, Client).join(Client, Client.id == Consent.client_id).where(Consent.resident_id == resident_id)
    )
    return [(row[0], row[1]) for row in rows]


# -- the raw CI (kr_ci) ---------------------------------------------------------------------------------------------


def hold_raw_ci(ci: str, *, resident_id: uuid.UUID, client_id: str, settings: Settings) -> dict[str, str]:
    """What the browser's flow carries of a fresh carrier verification's CI until the resident answers the
    service's consent question: encrypted under IDP_DATA_KEY, for this resident and this service only."""
    return {"resident": str(resident_id), "client": client_id, "ci": encrypt_ci(ci, settings).decode()}


def held_ci(
    held: object, *, resident_id: uuid.UUID, client_id: str, settings: Settings, now: dt.datetime
) -> bytes | None:
    """The encrypted CI held for this resident and service, if it is still fresh; None otherwise."""
    if not isinstance(held, dict) or held.get("resident") != str(resident_id) or held.get("client") != client_id:
        return None
    token = held.get("ci")
    if not isinstance(token, str):
        return None
    try:
        data_fernet(settings).decrypt_at_time(
            token.encode(), ttl=int(RAW_CI_HOLD.total_seconds()), current_time=int(now.timestamp())
        )
    except InvalidToken:
        return None
    return token.encode()


def keep_raw_ci(db: Session, resident: Resident, encrypted_ci: bytes, *, client_id: str) -> None:
    """Keep the raw CI (encrypted) once the resident allowed `kr_ci` to a service an admin allowed it."""
    resident.ci_encrypted = encrypted_ci
    record_event(db, "ci.kept", result=SUCCESS, resident_id=resident.id, client_id=client_id)
