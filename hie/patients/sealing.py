"""Sealing a patient's direct identifiers: ciphertext bound to table, field, tenant and row."""

from __future__ import annotations

import unicodedata

from hie.patients.models import INDEXED_FIELDS, SEALED_FIELDS, Patient
from hie.platform.crypto import KeyRing
from hie.platform.keys import SealedTable, register_sealed_table


def associated_data(tenant_code: str, patient_id: str, field: str) -> str:
    """A ciphertext copied to another row, field or tenant fails to open there."""
    return f"patients.{field}|{tenant_code}|{patient_id}"


def index_form(field: str, value: str) -> str:
    """What equality means for a field: width- and space-insensitive names, canonical numbers."""
    value = unicodedata.normalize("NFKC", value).strip()
    return "".join(value.split()).lower() if field == "name" else value


def seal(ring: KeyRing, tenant_code: str, patient: Patient, field: str, value: str | None) -> None:
    """Set <field>_enc (and <field>_bidx for searchable fields) from a plaintext value."""
    sealed = None if value is None else ring.encrypt(value, associated_data(tenant_code, patient.id, field))
    setattr(patient, f"{field}_enc", sealed)
    if field in INDEXED_FIELDS:
        index = None if value is None else ring.blind_index(f"patients.{field}", index_form(field, value))
        setattr(patient, f"{field}_bidx", index)


def unseal(ring: KeyRing, tenant_code: str, patient: Patient, field: str) -> str | None:
    """The plaintext of one sealed field."""
    sealed = getattr(patient, f"{field}_enc")
    if sealed is None:
        return None
    return ring.decrypt(sealed, associated_data(tenant_code, patient.id, field))


def search_index(ring: KeyRing, field: str, value: str) -> str:
    """The blind index to look a plaintext value up by."""
    return ring.blind_index(f"patients.{field}", index_form(field, value))


register_sealed_table(SealedTable(Patient.__table__, SEALED_FIELDS, associated_data))  # type: ignore[arg-type]
