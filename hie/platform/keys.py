"""Key rotation: a new data key becomes active, then every sealed value is re-encrypted under it."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Engine, Table, and_, or_, select, true, tuple_, update

from hie.platform.crypto import KeyRing

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SealedTable:
    """A shard table whose <field>_enc columns hold ciphertext bound by aad(tenant, row id, field)."""

    table: Table
    fields: tuple[str, ...]
    aad: Callable[[str, str, str], str]


@dataclass(frozen=True)
class SealedColumn:
    """One column of ciphertext: aad(tenant code, row) rebuilds the associated data a row was sealed with."""

    table: Table
    column: str
    aad: Callable[[str, Mapping[str, Any]], str]
    platform: bool = False
    sealed_flag: str | None = None


SEALED_COLUMNS: list[SealedColumn] = []


def register_sealed_column(sealed: SealedColumn) -> None:
    """Modules with ciphertext columns register them so rotation reaches every ciphertext."""
    if sealed not in SEALED_COLUMNS:
        SEALED_COLUMNS.append(sealed)


def register_sealed_table(sealed: SealedTable) -> None:
    """Register every <field>_enc column of a shard table sealed per row id and field."""
    for field in sealed.fields:
        register_sealed_column(SealedColumn(
            sealed.table, f"{field}_enc", lambda tenant, row, field=field: sealed.aad(tenant, row["id"], field)))


def load_registry() -> list[SealedColumn]:
    """Every ciphertext column the platform knows of: importing each installed module's registrations adds its own."""
    from hie.platform.modules import import_all

    import_all("registrations")
    return SEALED_COLUMNS


def _sealed_in(row: Mapping[str, Any], sealed: SealedColumn) -> bool:
    return sealed.sealed_flag is None or bool(row[sealed.sealed_flag])


def _reencrypt_table(engine: Engine, ring: KeyRing, table: Table, columns: list[SealedColumn], tenant_code: str,
                     batch: int) -> int:
    """One keyset pass over a table: each row's stale sealed columns re-encrypted, compare-and-set on all of them."""
    key = list(table.primary_key.columns)
    flags = [table.c[sealed.sealed_flag].is_(True) for sealed in columns if sealed.sealed_flag]
    where: ColumnElement[bool] = or_(*flags) if len(flags) == len(columns) else true()
    active, changed, last = ring.active_kid, 0, None
    while True:
        after = tuple_(*key) > tuple_(*last) if last is not None else true()
        with engine.begin() as conn:
            rows = conn.execute(select(table).where(where, after).order_by(*key).limit(batch)).mappings().all()
            for row in rows:
                new: dict[str, str] = {}
                for sealed in columns:
                    old = row[sealed.column]
                    if old is None or not _sealed_in(row, sealed) or ring.key_id_of(old) == active:
                        continue
                    aad = sealed.aad(tenant_code, row)
                    new[sealed.column] = ring.encrypt(ring.decrypt(old, aad), aad)
                if not new:
                    continue
                match = and_(*(col == row[col.name] for col in key), *(table.c[name] == row[name] for name in new))
                if conn.execute(update(table).where(match).values(new)).rowcount:
                    changed += len(new)
        if not rows:
            return changed
        last = [rows[-1][col.name] for col in key]


def reencrypt(engine: Engine, ring: KeyRing, tenant_code: str | None, batch: int = 500) -> int:
    """Re-encrypt one shard's (tenant_code None: the platform's) values under the active key, compare-and-set."""
    platform = tenant_code is None
    by_table: dict[Table, list[SealedColumn]] = {}
    for sealed in load_registry():
        if sealed.platform == platform:
            by_table.setdefault(sealed.table, []).append(sealed)
    changed = sum(_reencrypt_table(engine, ring, table, columns, tenant_code or "", batch)
                  for table, columns in by_table.items())
    log.info("re-encrypted %s values in %s", changed, tenant_code or "the platform database")
    return changed
