"""An institution's local patient record, held in its tenant's shard with identifiers sealed."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import Date, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from hie.platform.db import TenantBase, UTCDateTime, utcnow

SEALED_FIELDS = ("name", "id_number", "phone", "address")
INDEXED_FIELDS = ("name", "id_number", "phone")


class Patient(TenantBase):
    """Direct identifiers are stored only as AES-GCM ciphertext plus HMAC blind indexes."""

    __tablename__ = "patients"
    __table_args__ = (UniqueConstraint("institution_id", "mrn", name="uq_patients_institution_mrn"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    institution_id: Mapped[int] = mapped_column(Integer, index=True)
    mrn: Mapped[str] = mapped_column(String(64))
    name_enc: Mapped[str] = mapped_column(Text)
    name_bidx: Mapped[str] = mapped_column(String(32), index=True)
    id_number_enc: Mapped[str | None] = mapped_column(Text)
    id_number_bidx: Mapped[str | None] = mapped_column(String(32), index=True)
    phone_enc: Mapped[str | None] = mapped_column(Text)
    phone_bidx: Mapped[str | None] = mapped_column(String(32), index=True)
    address_enc: Mapped[str | None] = mapped_column(Text)
    sex: Mapped[str] = mapped_column(String(1), default="U")
    birth_date: Mapped[date | None] = mapped_column(Date)
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_by: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    __mapper_args__ = {"version_id_col": version}
