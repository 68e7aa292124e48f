"""Alembic environment for the store. `storage.migrate` runs it with an open connection (no alembic.ini);
the schema's logging stays with the application, so no fileConfig here."""

from alembic import context

from storage.models import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata,
                  render_as_batch=connection.dialect.name == "sqlite", compare_type=True)
with context.begin_transaction():
    context.run_migrations()
