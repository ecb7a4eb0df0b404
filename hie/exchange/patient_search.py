"""FHIR Patient search over the local patient register: every Patient of the shard, however it was registered."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, false, func, or_, select

from hie.exchange import store
from hie.exchange.conditions import Found, date_condition, token_condition
from hie.exchange.models import FhirResource
from hie.exchange.resources import MRN_SYSTEM_PREFIX, RESIDENT_ID_SYSTEM, local_zone
from hie.exchange.search_params import DateFilter, SearchParams, Token, TokenFilter
from hie.patients.models import Patient
from hie.patients.sealing import search_index
from hie.platform.auth.identity import Identity
from hie.platform.crypto import keyring
from hie.platform.db import platform_session, shard_session
from hie.platform.standards import normalise_resident_id
from hie.tenants.models import Institution


def _resident_id(code: str | None) -> ColumnElement[bool]:
    if code is None:
        return Patient.id_number_bidx.is_not(None)
    try:
        return Patient.id_number_bidx == search_index(keyring(), "id_number", normalise_resident_id(code))
    except ValueError:
        return false()


def _mrn(system: str | None, code: str | None) -> ColumnElement[bool]:
    parts = [] if code is None else [Patient.mrn == code]
    if system is not None:
        institution = platform_session().scalar(select(Institution.id).where(
            Institution.code == system.removeprefix(MRN_SYSTEM_PREFIX)))
        parts.append(Patient.institution_id == institution if institution is not None else false())
    return and_(*parts)


def _register_identifier(token: Token) -> ColumnElement[bool]:
    """The register's own identifiers: the resident ID number and each institution's medical record number."""
    if token.any_system:
        return or_(_resident_id(token.code), _mrn(None, token.code))
    if token.system == RESIDENT_ID_SYSTEM:
        return _resident_id(token.code)
    if token.system is not None and token.system.startswith(MRN_SYSTEM_PREFIX):
        return _mrn(token.system, token.code)
    return false()


def _identifier(token: TokenFilter) -> ColumnElement[bool]:
    """The register's identifiers, or any other identifier a FHIR-submitted Patient carried (token index)."""
    return or_(*(or_(_register_identifier(alternative),
                     token_condition("Patient", TokenFilter(token.param, (alternative,)), Patient.id))
                 for alternative in token.alternatives))


def _local_date(moment: datetime, ceiling: bool) -> date:
    """A bound as a local calendar date (a bound inside a day rounds outwards, so that day still counts)."""
    local = moment.astimezone(local_zone())
    return local.date() + timedelta(days=1) if ceiling and local.time() != time(0) else local.date()


def _date(given: DateFilter) -> ColumnElement[bool]:
    if given.column == "date":
        return date_condition(given, Patient.birth_date, _local_date(given.low, False), _local_date(given.high, True))
    return date_condition(given, Patient.updated_at)


def register_matches(identity: Identity, params: SearchParams) -> tuple[list[Found], int]:
    """One page of the caller's shard's visible register patients (stored FHIR content when there is one), total."""
    tenant = identity.tenant_code
    session = shard_session(tenant)
    where: list[Any] = [store.visible_condition(identity, tenant, Patient.institution_id, Patient.id)]
    where += [_identifier(token) for token in params.tokens]
    where += [_date(given) for given in params.dates]
    total = session.scalar(select(func.count()).select_from(Patient).where(*where)) or 0
    if not total or not params.count:
        return [], total
    column = Patient.birth_date if params.sort_column == "date" else Patient.updated_at
    order = [column.desc(), Patient.id.desc()] if params.descending else [column, Patient.id]
    patients = session.scalars(select(Patient).where(*where).order_by(*order)
                               .offset(params.offset).limit(params.count)).all()
    stored = {row.id: row for row in session.scalars(select(FhirResource).where(
        FhirResource.resource_type == "Patient", FhirResource.id.in_([p.id for p in patients])))}
    return [(tenant, stored.get(p.id) or store.generated_patient(tenant, p)) for p in patients], total
