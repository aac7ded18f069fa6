"""audit events name their carrier verification in a column of their own, indexed: the sign-in that ends a
verification finds its events by it instead of reading every event without a resident

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-08

Events recorded before this upgrade that still wait for their resident (a verification in progress, or one that was
abandoned) get the column from their details, so a verification that spans the upgrade keeps its events.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("audit_event", schema=None) as batch_op:
        batch_op.add_column(sa.Column("txn", sa.String(length=16), nullable=True))
    bind = op.get_bind()
    extracted = "details ->> 'txn'" if bind.dialect.name == "postgresql" else "json_extract(details, '$.txn')"
    op.execute(
        f"UPDATE audit_event SET txn = {extracted} "  # noqa: S608  (a constant per dialect, no input)
        "WHERE resident_id IS NULL AND event LIKE 'carrier.%'"
    )
    with op.batch_alter_table("audit_event", schema=None) as batch_op:
        batch_op.create_index(
            "ix_audit_event_txn",
            ["txn"],
            unique=False,
            postgresql_where=sa.text("txn IS NOT NULL"),
            sqlite_where=sa.text("txn IS NOT NULL"),
        )


def downgrade() -> None:
    with op.batch_alter_table("audit_event", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_event_txn", postgresql_where=sa.text("txn IS NOT NULL"))
        batch_op.drop_column("txn")
