"""Alembic environment for the platform tree; the engine comes from hie.platform.migrate."""

from alembic import context

import hie.platform.models  # noqa: F401  (the kernel's platform tables)
from hie.platform.db import PlatformBase as Base
from hie.platform.modules import import_all

import_all("platform_models")  # every installed module's platform tables (hie/modules.py)
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
