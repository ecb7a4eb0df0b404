"""Alembic environment for the platform tree; the engine comes from hie.platform.migrate."""

from alembic import context

import hie.platform.models  # noqa: F401  (registers every platform table)
from hie.platform.db import PlatformBase as Base

target_metadata = Base.metadata
engine = context.config.attributes["engine"]

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
