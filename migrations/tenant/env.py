"""Alembic environment for the tenant tree; the engine comes from hie.platform.migrate."""

from alembic import context

import hie.platform.tenant_models  # noqa: F401  (the kernel's tenant tables)
from hie.platform.db import TenantBase as Base
from hie.platform.modules import import_all

import_all("tenant_models")  # every installed module's tenant tables (hie/modules.py)
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
