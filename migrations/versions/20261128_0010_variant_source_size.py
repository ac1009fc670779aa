"""image_variants.source_width and source_height: whether a variant shows the whole image

Reading is enough for a thumbnail (a view-only share shows them); the picture itself needs the
download right. A thumbnail of an image no bigger than the thumbnail is the picture, pixel for
pixel: an icon, a signature, a QR code. Each variant now keeps the size of its source, so that
such a thumbnail is refused to whoever may only read (``VariantService.get``). Variants made
before have none (NULL): the first reader without the download right has them made again.

Both engines add the columns in place (no table is copied).

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-28 09:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("image_variants", sa.Column("source_width", sa.Integer(), nullable=True))
    op.add_column("image_variants", sa.Column("source_height", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("image_variants") as batch:
        batch.drop_column("source_height")
        batch.drop_column("source_width")
