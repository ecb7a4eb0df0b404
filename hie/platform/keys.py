"""Key rotation: a new data key becomes active, then every sealed value is re-encrypted under it."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine, Table, select, update

from hie.platform.crypto import KeyRing

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SealedTable:
    """A shard table whose <field>_enc columns hold ciphertext bound by aad(tenant, row id, field)."""

    table: Table
    fields: tuple[str, ...]
    aad: Callable[[str, str, str], str]


SEALED_TABLES: list[SealedTable] = []


def register_sealed_table(sealed: SealedTable) -> None:
    """Modules with sealed columns register them so rotation reaches every ciphertext."""
    SEALED_TABLES.append(sealed)


def reencrypt_shard(engine: Engine, ring: KeyRing, tenant_code: str, batch: int = 500) -> int:
    """Re-encrypt values not under the active key; compare-and-set so concurrent writes are never lost."""
    active = ring.active_kid
    changed = 0
    for sealed in SEALED_TABLES:
        table, id_col = sealed.table, sealed.table.c.id
        columns = [table.c[f"{field}_enc"] for field in sealed.fields]
        last_id = ""
        while True:
            with engine.begin() as conn:
                rows = conn.execute(
                    select(id_col, *columns).where(id_col > last_id).order_by(id_col).limit(batch)
                ).all()
                for row in rows:
                    for field, column in zip(sealed.fields, columns, strict=True):
                        old = row._mapping[column]
                        if old is None or ring.key_id_of(old) == active:
                            continue
                        aad = sealed.aad(tenant_code, row.id, field)
                        new = ring.encrypt(ring.decrypt(old, aad), aad)
                        result = conn.execute(
                            update(table).where(id_col == row.id, column == old).values({column.name: new})
                        )
                        changed += result.rowcount
            if not rows:
                break
            last_id = rows[-1].id
    log.info("re-encrypted %s values in tenant %s", changed, tenant_code)
    return changed
