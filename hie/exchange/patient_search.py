"""FHIR Patient search over the local patient register: every Patient of the shard, however it was registered;
names and phones are matched through blind indexes, never by reading them."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Date, and_, false, func, not_, or_, select, type_coerce

from hie.exchange import store
from hie.exchange.conditions import Found, date_condition, ids_condition, token_condition
from hie.exchange.models import FhirResource
from hie.exchange.resources import MRN_SYSTEM_PREFIX, RESIDENT_ID_SYSTEM, local_zone
from hie.exchange.search_catalogue import TOKENS
from hie.exchange.search_cursor import Cursor
from hie.exchange.search_order import NO_DATE, after, constant, ordering
from hie.exchange.search_params import DateFilter, SearchParams, StringFilter, Token, TokenFilter
from hie.patients import name_index
from hie.patients.models import Patient
from hie.patients.sealing import search_index
from hie.platform.auth.identity import Identity
from hie.platform.crypto import keyring
from hie.platform.db import UTCDateTime, platform_session, shard_session
from hie.platform.standards import StandardError, normalise_phone, normalise_resident_id
from hie.tenants.models import Institution

GENDERS = {"male": "M", "female": "F", "unknown": "U"}  # the register's sex codes ("other" is kept only in FHIR)
GENDER_SYSTEM = TOKENS["Patient"]["gender"].system
NO_BIRTH_DATE = NO_DATE.date()


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


def _stored_patients() -> Any:
    return select(FhirResource.id).where(FhirResource.resource_type == "Patient")


def _gender(token: Token) -> ColumnElement[bool]:
    """A register-only patient by its sex code (a stored FHIR Patient answers from its own gender token)."""
    sex = GENDERS.get(token.code or "")
    if sex is None or not (token.any_system or token.system == GENDER_SYSTEM):
        return false()
    return and_(Patient.id.not_in(_stored_patients()), Patient.sex == sex)


def _token(token: TokenFilter) -> ColumnElement[bool]:
    """identifier over the register's identifiers and submitted ones; gender over sex codes and FHIR's gender;
    other tokens over the token index of stored FHIR Patients."""
    found: ColumnElement[bool] = token_condition("Patient", TokenFilter(token.param, token.alternatives,
                                                 "text" if token.modifier == "text" else ""), Patient.id)
    if token.modifier != "text" and token.param == "identifier":
        found = or_(found, *(_register_identifier(alternative) for alternative in token.alternatives))
    if token.modifier != "text" and token.param == "gender":
        found = or_(found, *(_gender(alternative) for alternative in token.alternatives))
    return not_(found) if token.modifier == "not" else found


def _phone(values: tuple[str, ...]) -> list[ColumnElement[bool]]:
    """The register's phone blind index, for each value the register would have stored it as."""
    found = []
    for value in values:
        try:
            found.append(Patient.phone_bidx == search_index(keyring(), "phone", normalise_phone(value)))
        except StandardError:
            continue
    return found


def _string(given: StringFilter) -> ColumnElement[bool]:
    """name, family, given (prefix, or :exact) and phone over the blind indexes; no matchable value: nothing."""
    found = name_index.matching(given.param, list(given.values), given.exact, Patient.id)
    alternatives = [found] if found is not None else []
    if given.param == "phone":
        alternatives += _phone(given.values)
    return or_(*alternatives) if alternatives else false()


def _local_date(moment: datetime, ceiling: bool) -> date:
    """A bound as a local calendar date (a bound inside a day rounds outwards, so that day still counts)."""
    local = moment.astimezone(local_zone())
    return local.date() + timedelta(days=1) if ceiling and local.time() != time(0) else local.date()


def last_updated() -> ColumnElement[datetime]:
    """When a Patient last changed, as its meta.lastUpdated says: the stored FHIR version's, else the register's."""
    stored = select(FhirResource.last_updated).where(FhirResource.resource_type == "Patient",
                                                     FhirResource.id == Patient.id).scalar_subquery()
    return type_coerce(func.coalesce(stored, Patient.updated_at), UTCDateTime())


def _date(given: DateFilter) -> ColumnElement[bool]:
    if given.column == "birthdate":
        return date_condition(given, Patient.birth_date, _local_date(given.low, False), _local_date(given.high, True))
    return date_condition(given, last_updated())


def _sort_expression(kind: str, dialect: str) -> Any:
    if kind == "id":
        return Patient.id
    if kind == "last_updated":
        return last_updated()
    if kind == "gender":
        return Patient.sex
    return type_coerce(func.coalesce(Patient.birth_date, constant(NO_BIRTH_DATE, Date(), dialect)), Date())


def register_matches(identity: Identity, params: SearchParams) -> tuple[list[Found], int | None, Cursor | None]:
    """One page of the caller's shard's visible register patients (stored FHIR content when there is one), the
    total (None when _total=none) and the next page's cursor."""
    tenant = identity.tenant_code
    session = shard_session(tenant)
    where: list[Any] = [store.visible_condition(identity, tenant, Patient.institution_id, Patient.id)]
    ids = ids_condition(params.ids, Patient.id)
    where += [ids] if ids is not None else []
    where += [_token(token) for token in params.tokens]
    where += [_date(given) for given in params.dates]
    where += [_string(given) for given in params.strings]
    counted = params.total != "none" or params.summary == "count"
    total = None
    if counted:
        total = session.scalar(select(func.count()).select_from(Patient).where(*where)) or 0
    if not params.count or params.summary == "count" or total == 0:
        return [], total, None
    expression = _sort_expression(params.sort.kind, session.get_bind().dialect.name)
    resume = after(expression, Patient.id, tenant, params.cursor, params.sort.descending)
    found = session.execute(select(Patient, expression).where(*where, *([resume] if resume is not None else []))
                            .order_by(*ordering(expression, Patient.id, params.sort.descending))
                            .limit(params.count + 1)).all()
    patients = [patient for patient, _ in found[:params.count]]
    following = None
    if len(found) > params.count:
        last_patient, last_value = found[params.count - 1]
        following = Cursor(last_value, tenant, last_patient.id)
    stored = {row.id: row for row in session.scalars(select(FhirResource).where(
        FhirResource.resource_type == "Patient", FhirResource.id.in_([p.id for p in patients])))}
    return [(tenant, stored.get(p.id) or store.generated_patient(tenant, p)) for p in patients], total, following
