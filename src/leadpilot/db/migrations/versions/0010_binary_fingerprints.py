"""imported rows: fingerprints as 32 raw bytes instead of 64 hex characters

The fingerprint (the SHA-256 of a row's normalised values) is the key of the import's largest random-order
index; stored raw it takes half the space, so each import batch rewrites half as many index pages. The
same digest either way: values convert both ways without loss, and a re-run still recognises rows imported
before this revision.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-22
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

# Rows converted per UPDATE batch on SQLite (3.40 has no unhex(), so the conversion runs here).
SQLITE_BATCH = 10_000


def as_digest(value: Any) -> bytes:
    """A stored fingerprint as raw bytes: from hex text (or hex text that a type change made bytes)."""
    if isinstance(value, str):
        return bytes.fromhex(value)
    value = bytes(value)
    return bytes.fromhex(value.decode("ascii")) if len(value) == 64 else value


def _sqlite_to_binary(conn: sa.Connection) -> None:
    last = 0
    while True:
        rows = conn.exec_driver_sql(
            "SELECT id, fingerprint FROM imported_rows WHERE id > ? ORDER BY id LIMIT ?", (last, SQLITE_BATCH)
        ).fetchall()
        if not rows:
            return
        conn.exec_driver_sql(
            "UPDATE imported_rows SET fingerprint = ? WHERE id = ?", [(as_digest(fp), row_id) for row_id, fp in rows]
        )
        last = rows[-1][0]


def upgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name == "postgresql":
        op.execute("ALTER TABLE imported_rows ALTER COLUMN fingerprint TYPE bytea USING decode(fingerprint, 'hex')")
        return
    _sqlite_to_binary(conn)
    with op.batch_alter_table("imported_rows") as batch:
        batch.alter_column("fingerprint", type_=sa.LargeBinary(), existing_nullable=False)


def downgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name == "postgresql":
        op.execute(
            "ALTER TABLE imported_rows ALTER COLUMN fingerprint TYPE varchar(64) USING encode(fingerprint, 'hex')"
        )
        return
    # Hex first: the table copy below casts the column to text, which would keep the raw bytes as they are.
    op.execute("UPDATE imported_rows SET fingerprint = lower(hex(fingerprint)) WHERE typeof(fingerprint) = 'blob'")
    with op.batch_alter_table("imported_rows") as batch:
        batch.alter_column("fingerprint", type_=sa.String(length=64), existing_nullable=False)
