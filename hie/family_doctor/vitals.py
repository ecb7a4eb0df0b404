"""Recording vitals: one entry (a set of readings taken at one time) checked against what a body can measure,
stored once per client id, written as FHIR Observations in the recording institution's shard, and alerted on when
alarming."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any, NoReturn

from flask import g
from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hie.empi import services as empi
from hie.exchange import store
from hie.exchange.outcome import FhirError
from hie.exchange.resources import local_zone, validate
from hie.family_doctor import observations, rules
from hie.family_doctor.models import Alert, Contract, ContractStatus, Setting, Team, Vitals
from hie.family_doctor.services import DATA, active_contract, contract_ref, require_member, team_identity
from hie.patients.models import Patient
from hie.platform.audit import services as audit
from hie.platform.auth.identity import Identity
from hie.platform.auth.models import Role
from hie.platform.db import platform_session, shard_session, utcnow
from hie.tenants.models import Institution

RESOURCE = "Vitals"
FIELDS = ("systolic", "diastolic", "heart_rate", "fasting_glucose", "random_glucose", "weight", "height", "waist",
          "spo2", "temperature")
MAX_CLIENT_ID = 64
FUTURE_SLACK = timedelta(minutes=5)
EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
NOT_ACTIVE = "is not an active contract of your team"


class EntryRefused(Exception):
    """An entry that cannot be stored: .field and .message name the first problem, .errors all of them."""

    def __init__(self, field: str, message: str, errors: dict[str, list[str]] | None = None) -> None:
        super().__init__(f"{field} {message}")
        self.field, self.message = field, message
        self.errors = errors or {field: [message]}


@dataclasses.dataclass
class Target:
    """Whose reading it is and who writes it: the patient record, its person, the contract and team if any, and the
    identity that writes the Observations (acting for the institution that holds the record)."""

    patient_id: str
    person_id: str
    writer: Identity
    contract: Contract | None
    team_id: int | None


@cache
def limits() -> dict[str, dict[str, Any]]:
    """What a living body can measure, per field (data/vital_limits.json, each bound with why it lies there)."""
    return json.loads((DATA / "vital_limits.json").read_text(encoding="utf-8"))["limits"]


def _audit_refusal(client_id: str, patient: str | None, errors: dict[str, list[str]],
                   outcome: str = "failure") -> None:
    detail = "; ".join(f"{field} {' '.join(messages)}" for field, messages in errors.items())
    audit.record("create", outcome, resource_type=RESOURCE, resource_id=client_id[:80] or None, patient=patient,
                 detail=f"entry refused: {detail}"[:500])


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def check_values(entry: dict[str, Any]) -> tuple[dict[str, float], dict[str, list[str]]]:
    """The entry's readings within what a body can measure, and the errors naming each field that is not."""
    bounds, values, errors = limits(), {}, {}
    for name in FIELDS:
        raw = entry.get(name)
        if raw is None:
            continue
        value = _number(raw)
        low, high, unit = bounds[name]["min"], bounds[name]["max"], bounds[name]["unit"]
        if value is None:
            errors[name] = ["must be a number"]
        elif not low <= value <= high:
            errors[name] = [f"{value:g} {unit} is not a possible reading (must lie within {low:g}..{high:g} {unit})"]
        else:
            values[name] = value
    if not values and not errors:
        errors["readings"] = [f"at least one of {', '.join(FIELDS)} is required"]
    for one, other in (("systolic", "diastolic"), ("diastolic", "systolic")):
        if one in values and entry.get(other) is None:
            errors.setdefault(other, []).append(f"is required with {one}")
    if "systolic" in values and "diastolic" in values and values["diastolic"] >= values["systolic"]:
        errors.setdefault("diastolic", []).append(
            f"{values['diastolic']:g} must be below the systolic {values['systolic']:g} mm[Hg]")
    return values, errors


def check_when(entry: dict[str, Any], now: datetime) -> tuple[datetime | None, dict[str, list[str]]]:
    """taken_at: a time with a zone, not in the future (5 minutes' clock slack), not before 1900."""
    raw = entry.get("taken_at")
    if isinstance(raw, str):
        try:
            raw = datetime.fromisoformat(raw)
        except ValueError:
            return None, {"taken_at": ["must be an ISO 8601 date and time"]}
    if not isinstance(raw, datetime):
        return None, {"taken_at": ["is required (an ISO 8601 date and time with its zone)"]}
    if raw.tzinfo is None or raw.utcoffset() is None:
        return None, {"taken_at": ["must carry a time zone"]}
    when = raw.astimezone(UTC)
    if when > now + FUTURE_SLACK:
        return None, {"taken_at": ["must not be in the future"]}
    if when < EARLIEST:
        return None, {"taken_at": ["must not be before 1900"]}
    return when, {}


def _check_client_id(entry: dict[str, Any]) -> str:
    client_id = entry.get("client_id")
    if not isinstance(client_id, str) or not 1 <= len(client_id) <= MAX_CLIENT_ID or not client_id.isprintable() \
            or client_id != client_id.strip():
        message = f"is required: 1 to {MAX_CLIENT_ID} printable characters, no surrounding spaces"
        _audit_refusal(client_id[:80] if isinstance(client_id, str) else "", None, {"client_id": [message]})
        raise EntryRefused("client_id", message)
    return client_id


def _institution_identity(identity: Identity, institution_id: int) -> Identity:
    """The caller acting for the institution holding a resident's record (as team_identity does for a team)."""
    institution = platform_session().get_one(Institution, institution_id)
    return dataclasses.replace(identity, institution_id=institution.id, institution_code=institution.code,
                               tenant_id=institution.tenant_id, tenant_code=institution.tenant.code,
                               roles=frozenset({Role.family_doctor}), patient_id=None)


def _refuse_contract(client_id: str, contract: Contract | None, outcome: str, why: str) -> NoReturn:
    audit.record("create", outcome, resource_type=RESOURCE, resource_id=client_id[:80],
                 patient=contract_ref(contract) if contract else None, detail=f"entry refused: contract_id {why}")
    raise EntryRefused("contract_id", NOT_ACTIVE)


def _staff_target(identity: Identity, entry: dict[str, Any], client_id: str) -> Target:
    """A team member records for an active contract of their own team."""
    # A batch asks once per request, and holds the rows the identity map keeps only weakly.
    teams: dict[int, tuple[Team, Identity]] = g.setdefault("hie_fd_vitals_teams", {})
    contracts: dict[str, Contract | None] = g.setdefault("hie_fd_vitals_contracts", {})
    if identity.user_id not in teams:
        team = require_member(identity, "create")[0]
        teams[identity.user_id] = (team, team_identity(identity, team))
    team, writer = teams[identity.user_id]
    contract_id = entry.get("contract_id")
    if not isinstance(contract_id, str) or not 0 < len(contract_id) <= 36:
        _refuse_contract(client_id, None, "not_found", f"{str(contract_id)[:40]!r} unknown")
    if contract_id not in contracts:
        contracts[contract_id] = platform_session().get(Contract, contract_id)
    contract = contracts[contract_id]
    if contract is None:
        _refuse_contract(client_id, None, "not_found", f"{contract_id!r} unknown")
    if contract.team_id != team.id:
        _refuse_contract(client_id, contract, "denied", "of another team")
    if contract.status is not ContractStatus.active:
        _refuse_contract(client_id, contract, "failure", f"is {contract.status.value}")
    return Target(contract.patient_id, contract.master_person_id, writer, contract, team.id)


def _resident_target(identity: Identity, entry: dict[str, Any], client_id: str) -> Target:
    """A resident records on their own record; the reading joins their own active contract, if any."""
    platform = platform_session()
    patient = shard_session(identity.tenant_code).get(Patient, identity.patient_id) if identity.patient_id else None
    person = empi.person_of_patient(platform, identity.tenant_code, patient.id) if patient is not None else None
    if patient is None or person is None:
        _audit_refusal(client_id, None, {"patient": ["the account names no EMPI-linked patient record"]})
        raise EntryRefused("patient", "your account names no patient record to record readings on")
    contract_id = entry.get("contract_id")
    contract = active_contract(platform, person)
    if contract_id is not None and (contract is None or contract.id != contract_id):
        _audit_refusal(client_id, audit.patient_ref(identity.tenant_code, patient.id),
                       {"contract_id": ["is not the resident's own active contract"]}, "denied")
        raise EntryRefused("contract_id", "is not your active contract")
    writer = _institution_identity(identity, patient.institution_id)
    return Target(patient.id, person, writer, contract, contract.team_id if contract else None)


def _bmi(session: Session, values: dict[str, float], person_id: str, when: datetime) -> tuple[float | None, str]:
    """BMI from this entry's weight and its height, else the person's latest height taken up to then."""
    if "weight" not in values:
        return None, ""
    height, note = values.get("height"), "computed from the weight and height of this reading"
    if height is None:
        found = session.execute(select(Vitals.height, Vitals.taken_at).where(
            Vitals.master_person_id == person_id, Vitals.height.is_not(None), Vitals.taken_at <= when)
            .order_by(Vitals.taken_at.desc()).limit(1)).first()
        if found is None:
            return None, ""
        height = found[0]
        note = f"computed from this weight and the height measured {found[1].astimezone(local_zone()):%Y-%m-%d}"
    return round(values["weight"] / (height / 100) ** 2, 1), note


@contextmanager
def savepoint(tenant_code: str) -> Iterator[None]:
    """One entry's writes, undone together if anything in it fails: the platform's in a SAVEPOINT; the shard's are
    only added to its Session (flushed with the whole batch's at the end, a few multi-row INSERTs), so undoing them
    is leaving them out. The audit events the entry queued then say it failed."""
    pending = g.setdefault("audit_pending", [])
    mark = len(pending)
    shard = shard_session(tenant_code)
    before = set(shard.new)
    point = platform_session().begin_nested()
    try:
        yield
    except BaseException:
        point.rollback()
        for row in set(shard.new) - before:
            shard.expunge(row)
        for event in pending[mark:]:
            if event.outcome == "success":
                event.outcome = "error"
        raise
    point.commit()


def stored_entries(identity: Identity, client_ids: list[Any]) -> dict[str, Vitals]:
    """The entries of this batch the caller stored before, by client id: one query for the whole batch."""
    wanted = sorted({c for c in client_ids if isinstance(c, str) and 0 < len(c) <= MAX_CLIENT_ID})
    found: dict[str, Vitals] = {}
    for start in range(0, len(wanted), 500):
        found.update((row.client_id, row) for row in platform_session().scalars(select(Vitals).where(
            Vitals.user_id == identity.user_id, Vitals.client_id.in_(wanted[start:start + 500]))))
    return found


def _stored(session: Session, user_id: int, client_id: str) -> Vitals | None:
    return session.scalar(select(Vitals).where(Vitals.user_id == user_id, Vitals.client_id == client_id))


def _duplicate(row: Vitals) -> tuple[Vitals, bool]:
    audit.record("create", resource_type=RESOURCE, resource_id=str(row.id),
                 patient=audit.patient_ref(row.tenant_code, row.patient_id),
                 detail=f"client_id {row.client_id[:64]} stored before; nothing written")
    return row, False


def _checked(kind: str, resource: dict[str, Any]) -> dict[str, Any]:
    """An Observation as the exchange's validator (fhir.resources) accepts it. Each kind is built from one fixed
    template (observations.build), so the first of each shape in a process is validated and the rest, differing only
    in values of the same types, are taken as built; tests/test_fd_vitals.py holds that validation changes none of
    them. This keeps a 200-entry batch from spending most of its time in pydantic."""
    shape = (kind, "meta" in resource, "note" in resource)
    if shape in _VALIDATED:
        return resource
    checked = validate(resource, "Observation")
    _VALIDATED.add(shape)
    return checked


_VALIDATED: set[tuple[str, bool, bool]] = set()


def _write(identity: Identity, target: Target, row: Vitals, bmi_note: str) -> list[tuple[str, dict[str, Any]]]:
    """The reading's Observations, validated and given their ids (not yet stored)."""
    writer = target.writer
    reading = {name: getattr(row, name) for name in (*FIELDS, "bmi")}
    reading.update(entry_key=f"{row.user_id}/{row.client_id}", patient_id=row.patient_id, taken_at=row.taken_at,
                   setting=row.setting.value, self_reported=row.self_reported, performer=identity.username,
                   institution_code=writer.institution_code, bmi_note=bmi_note)
    built = []
    for kind, resource in observations.build(reading):
        checked = _checked(kind, resource)
        checked["id"] = store.new_resource_id("Observation", writer.tenant_code)
        built.append((kind, checked))
    row.observations = [resource["id"] for _kind, resource in built]
    return built


def _alert(target: Target, row: Vitals) -> None:
    """An alert for the team per alarming value."""
    for _field, why in rules.reading_alarms({name: getattr(row, name) for name in FIELDS}):
        platform_session().add(Alert(
            team_id=target.team_id, contract_id=target.contract.id if target.contract else None,
            master_person_id=target.person_id, kind="reading", vitals_id=row.id,
            message=(f"{why} ({'self-reported, ' if row.self_reported else ''}"
                     f"{row.taken_at.astimezone(local_zone()):%Y-%m-%d %H:%M})")[:500]))


def record_entry(identity: Identity, entry: dict[str, Any], *, self_reported: bool = False,
                 now: datetime | None = None) -> tuple[Vitals, bool]:
    """Store one entry; (row, created) - created False when this user already stored this client_id."""
    return _record(identity, entry, self_reported, now or utcnow(), None)


def _record(identity: Identity, entry: dict[str, Any], self_reported: bool, now: datetime,
            known: dict[str, Vitals] | None) -> tuple[Vitals, bool]:
    """record_entry; known: the batch's entries stored before (stored_entries), updated with each new one."""
    platform = platform_session()
    client_id = _check_client_id(entry)
    existing = known.get(client_id) if known is not None else _stored(platform, identity.user_id, client_id)
    if existing is not None:
        return _duplicate(existing)
    target = _resident_target(identity, entry, client_id) if self_reported \
        else _staff_target(identity, entry, client_id)
    patient = audit.patient_ref(target.writer.tenant_code, target.patient_id)
    values, errors = check_values(entry)
    when, when_errors = check_when(entry, now)
    errors.update(when_errors)
    setting = Setting.self_device.value if self_reported else entry.get("setting") or Setting.clinic.value
    if setting not in [s.value for s in Setting]:
        errors["setting"] = [f"must be one of {', '.join(s.value for s in Setting)}"]
    bmi, bmi_note = _bmi(platform, values, target.person_id, when) if when is not None else (None, "")
    bmi_limits = limits()["bmi"]
    if bmi is not None and not bmi_limits["min"] <= bmi <= bmi_limits["max"] and "weight" not in errors:
        errors["weight"] = [f"with height {values.get('height', 'on record')} cm gives a BMI of {bmi:g}, "
                            f"not a possible one ({bmi_limits['min']:g}..{bmi_limits['max']:g} kg/m2)"]
    if errors or when is None:
        _audit_refusal(client_id, patient, errors)
        field = next(iter(errors))
        raise EntryRefused(field, errors[field][0], errors)
    row = Vitals(user_id=identity.user_id, client_id=client_id, master_person_id=target.person_id,
                 tenant_code=target.writer.tenant_code, patient_id=target.patient_id,
                 institution_id=target.writer.institution_id, team_id=target.team_id,
                 contract_id=target.contract.id if target.contract else None, taken_at=when,
                 setting=Setting(setting), self_reported=self_reported, bmi=bmi, **values)
    built = _write(identity, target, row, bmi_note)
    try:
        with savepoint(target.writer.tenant_code):
            platform.add(row)
            platform.flush()
            for _kind, resource in built:
                store.create(target.writer, resource)
            _alert(target, row)
    except IntegrityError:
        raced = _stored(platform, identity.user_id, client_id)  # the same entry, uploaded twice at once
        if raced is None:
            raise
        return _duplicate(raced)
    if known is not None:
        known[client_id] = row
    audit.record("create", resource_type=RESOURCE, resource_id=str(row.id), patient=patient, purpose="treatment",
                 detail=f"{'self-reported ' if self_reported else ''}vitals: {', '.join(values)}")
    return row, True


def readings(identity: Identity, contract: Contract, since: datetime | None, until: datetime | None,
             first: int, size: int) -> tuple[list[Vitals], int]:
    """A contract's view of the person's readings, newest first: all of them while the contract is active (it holds
    a care relationship), afterwards only those the team recorded or that were recorded under this contract."""
    session = platform_session()
    if contract.status is ContractStatus.active:
        where = [Vitals.master_person_id == contract.master_person_id]
    else:
        where = [Vitals.master_person_id == contract.master_person_id,
                 or_(Vitals.team_id == contract.team_id, Vitals.contract_id == contract.id)]
    if since is not None:
        where.append(Vitals.taken_at >= since)
    if until is not None:
        where.append(Vitals.taken_at < until)
    total = session.scalar(select(func.count()).select_from(Vitals).where(*where)) or 0
    rows = session.scalars(select(Vitals).where(*where).order_by(Vitals.taken_at.desc(), Vitals.id.desc())
                           .offset(first).limit(size)).all()
    audit.record("read", resource_type=RESOURCE, resource_id=contract.id, patient=contract_ref(contract),
                 purpose="treatment", detail=f"vitals of contract: {len(rows)} of {total}")
    return list(rows), total


def refused(client_id: Any, errors: dict[str, list[str]]) -> dict[str, Any]:
    """The result of an entry refused before record_entry saw it (a malformed entry of a batch), audited."""
    shown = client_id if isinstance(client_id, str) and len(client_id) <= MAX_CLIENT_ID else None
    _audit_refusal(shown or "", None, errors)
    return {"client_id": shown, "status": "refused", "vitals_id": None, "observations": [], "errors": errors}


def outcome(identity: Identity, entry: dict[str, Any], known: dict[str, Vitals] | None = None) -> dict[str, Any]:
    """One entry of a batch or an import as its result: created, duplicate, or refused with every reason; known: the
    batch's entries stored before (stored_entries)."""
    try:
        row, created = _record(identity, entry, False, utcnow(), known)
    except EntryRefused as exc:
        return {"client_id": entry.get("client_id") if isinstance(entry.get("client_id"), str) else None,
                "status": "refused", "vitals_id": None, "observations": [], "errors": exc.errors}
    except FhirError as exc:  # the exchange refused an Observation: the entry's writes were undone
        return {"client_id": entry.get("client_id"), "status": "refused", "vitals_id": None, "observations": [],
                "errors": {(exc.expression or ["entry"])[0]: [exc.diagnostics]}}
    return {"client_id": row.client_id, "status": "created" if created else "duplicate", "vitals_id": row.id,
            "observations": list(row.observations), "errors": {}}


def audit_import_refused(why: str) -> None:
    """A CSV import refused whole (no header, too many rows): nothing was read from it."""
    audit.record("create", "failure", resource_type=RESOURCE, detail=f"CSV import refused: {why}"[:500])
