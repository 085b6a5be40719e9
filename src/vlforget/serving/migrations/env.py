"""Alembic environment: the URL comes from `db.migrate` (config.attributes), never a file."""

from alembic import context
from sqlalchemy import create_engine

url = context.config.attributes["url"]
engine = create_engine(url)
with engine.connect() as connection:
    context.configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
