"""grants without access-token rows: a JWT access token names its grant in its jti; revocation is kept per grant
and per revoked token; a generation counter lets every process cache clients

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-08

Every refresh-token family gets its grant row, so the access tokens its refreshes issue hold. Access tokens issued
before this upgrade carry a jti without a grant: UserInfo and introspection answer them as invalid (they live
`IDP_ACCESS_TOKEN_TTL`, ten minutes by default); services refresh or sign the resident in again.
"""

import datetime as dt
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "token_grant",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("client_id", sa.String(length=64), nullable=False),
        sa.Column("resident_id", sa.Uuid(), nullable=False),
        sa.Column("claims", sa.JSON(), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.text("(CURRENT_TIMESTAMP)"), nullable=False
        ),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["client_id"], ["client.id"], name=op.f("fk_token_grant_client_id_client"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["resident_id"], ["resident.id"], name=op.f("fk_token_grant_resident_id_resident"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_token_grant")),
    )
    op.create_index(op.f("ix_token_grant_client_id"), "token_grant", ["client_id"], unique=False)
    op.create_index(op.f("ix_token_grant_expires_at"), "token_grant", ["expires_at"], unique=False)
    op.create_index(op.f("ix_token_grant_resident_id"), "token_grant", ["resident_id"], unique=False)
    op.create_table(
        "revoked_access_token",
        sa.Column("jti", sa.String(length=64), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("jti", name=op.f("pk_revoked_access_token")),
    )
    op.create_index(op.f("ix_revoked_access_token_expires_at"), "revoked_access_token", ["expires_at"], unique=False)
    generation = op.create_table(
        "cache_generation",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_cache_generation")),
    )
    op.bulk_insert(generation, [{"name": "client", "value": 0}])
    _grants_of_refresh_families()
    op.drop_index("ix_access_token_client_id", table_name="access_token")
    op.drop_index("ix_access_token_expires_at", table_name="access_token")
    op.drop_index("ix_access_token_grant_id", table_name="access_token")
    op.drop_index("ix_access_token_resident_id", table_name="access_token")
    op.drop_table("access_token")


# An access token issued at a family's last moment lives this much longer (the default IDP_ACCESS_TOKEN_TTL; a grant
# kept a little too long costs a row, one purged too early would refuse a live token).
ACCESS_TOKEN_MARGIN = dt.timedelta(hours=1)
BATCH = 5000


def _grants_of_refresh_families() -> None:
    """A `token_grant` row for each refresh-token family, as the code's exchange now records it."""
    bind = op.get_bind()
    refresh = sa.table(
        "refresh_token",
        sa.column("grant_id", sa.Uuid()),
        sa.column("client_id", sa.String()),
        sa.column("resident_id", sa.Uuid()),
        sa.column("claims", sa.JSON()),
        sa.column("created_at", sa.DateTime(timezone=True)),
        sa.column("family_expires_at", sa.DateTime(timezone=True)),
        sa.column("revoked_at", sa.DateTime(timezone=True)),
    )
    grant = sa.table(
        "token_grant",
        sa.column("id", sa.Uuid()),
        sa.column("client_id", sa.String()),
        sa.column("resident_id", sa.Uuid()),
        sa.column("claims", sa.JSON()),
        sa.column("created_at", sa.DateTime(timezone=True)),
        sa.column("expires_at", sa.DateTime(timezone=True)),
        sa.column("revoked_at", sa.DateTime(timezone=True)),
    )
    families: dict[Any, dict[str, Any]] = {}
    rows = bind.execute(sa.select(refresh).order_by(refresh.c.grant_id, refresh.c.created_at))
    for row in rows:
        family = families.get(row.grant_id)
        if family is None:
            claims = row.claims if isinstance(row.claims, dict) else None
            families[row.grant_id] = {
                "id": row.grant_id,
                "client_id": row.client_id,
                "resident_id": row.resident_id,
                "claims": claims.get("userinfo") if claims else None,
                "created_at": row.created_at,
                "expires_at": row.family_expires_at + ACCESS_TOKEN_MARGIN,
                "revoked_at": row.revoked_at,
            }
        elif row.revoked_at is not None and family["revoked_at"] is None:
            family["revoked_at"] = row.revoked_at
    values = list(families.values())
    for start in range(0, len(values), BATCH):
        bind.execute(sa.insert(grant), values[start : start + BATCH])


def downgrade() -> None:
    op.create_table(
        "access_token",
        sa.Column("jti", sa.String(length=64), nullable=False),
        sa.Column("grant_id", sa.Uuid(), nullable=True),
        sa.Column("client_id", sa.String(length=64), nullable=False),
        sa.Column("resident_id", sa.Uuid(), nullable=True),
        sa.Column("scope", sa.String(length=1000), nullable=False),
        sa.Column("claims", sa.JSON(), nullable=True),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["client_id"], ["client.id"], name=op.f("fk_access_token_client_id_client"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["resident_id"], ["resident.id"], name=op.f("fk_access_token_resident_id_resident"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("jti", name=op.f("pk_access_token")),
    )
    op.create_index("ix_access_token_resident_id", "access_token", ["resident_id"], unique=False)
    op.create_index("ix_access_token_grant_id", "access_token", ["grant_id"], unique=False)
    op.create_index("ix_access_token_expires_at", "access_token", ["expires_at"], unique=False)
    op.create_index("ix_access_token_client_id", "access_token", ["client_id"], unique=False)
    op.drop_table("cache_generation")
    op.drop_index(op.f("ix_revoked_access_token_expires_at"), table_name="revoked_access_token")
    op.drop_table("revoked_access_token")
    op.drop_index(op.f("ix_token_grant_resident_id"), table_name="token_grant")
    op.drop_index(op.f("ix_token_grant_expires_at"), table_name="token_grant")
    op.drop_index(op.f("ix_token_grant_client_id"), table_name="token_grant")
    op.drop_table("token_grant")
