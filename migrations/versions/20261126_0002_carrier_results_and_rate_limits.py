"""carrier results and rate limits

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 06:29:05.309759
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "carrier_result",
        sa.Column("jti", sa.String(length=128), nullable=False),
        sa.Column("agency_txn_digest", sa.String(length=64), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("jti", name=op.f("pk_carrier_result")),
    )
    with op.batch_alter_table("carrier_result", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_carrier_result_expires_at"), ["expires_at"], unique=False)

    op.create_table(
        "rate_limit_counter",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_rate_limit_counter")),
    )
    with op.batch_alter_table("rate_limit_counter", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_rate_limit_counter_expires_at"), ["expires_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("rate_limit_counter", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_rate_limit_counter_expires_at"))

    op.drop_table("rate_limit_counter")
    with op.batch_alter_table("carrier_result", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_carrier_result_expires_at"))

    op.drop_table("carrier_result")
