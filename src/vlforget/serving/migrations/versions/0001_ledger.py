"""The ledger: tokens, requests, states, append-only events.

Revision ID: 0001
Revises:
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

APPEND_ONLY = "the ledger is append-only"


def upgrade() -> None:
    op.create_table(
        "tokens",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "requests",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(32), nullable=False, unique=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("status", sa.String(20), nullable=False, index=True),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.Column("submitted_by", sa.String(200), nullable=False),
        sa.Column("submitted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("state_version", sa.Integer, nullable=True),
        sa.Column("crr", sa.Float, nullable=True),
        sa.Column("ar", sa.Float, nullable=True),
        sa.Column("s", sa.Float, nullable=True),
        sa.Column("revert_requested", sa.Boolean, nullable=False),
        sa.Column("error", sa.Text, nullable=True),
    )
    op.create_table(
        "states",
        sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("folder", sa.String(64), nullable=False),
        sa.Column("applied", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("request_id", sa.String(32), sa.ForeignKey("requests.id"), nullable=True),
        sa.Column("state_version", sa.Integer, nullable=True),
        sa.Column("actor", sa.String(200), nullable=True),
        sa.Column("detail", sa.JSON, nullable=False),
    )
    # The database itself refuses to rewrite history, whatever code talks to it.
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"""CREATE FUNCTION events_append_only() RETURNS trigger AS $$
                       BEGIN RAISE EXCEPTION '{APPEND_ONLY}'; END; $$ LANGUAGE plpgsql""")
        op.execute("""CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events
                      FOR EACH ROW EXECUTE FUNCTION events_append_only()""")
    else:
        for action in ("UPDATE", "DELETE"):
            op.execute(f"""CREATE TRIGGER events_no_{action.lower()} BEFORE {action} ON events
                           BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY}'); END""")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER events_append_only ON events")
        op.execute("DROP FUNCTION events_append_only()")
    op.drop_table("events")
    op.drop_table("states")
    op.drop_table("requests")
    op.drop_table("tokens")
