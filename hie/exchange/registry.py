"""The record registry: which shard holds records of which master person, and the stamp every write moves."""

from __future__ import annotations

from datetime import datetime

from flask import g
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hie.empi.models import MasterPerson
from hie.exchange.models import RecordLocation
from hie.platform.db import platform_session, utcnow

# Imported by hie.patients (a register edit moves the stamp too), so it imports nothing of hie.exchange but models.


def _request_time() -> datetime:
    """One timestamp per request: a second write for the same (person, shard) then changes nothing (no UPDATE)."""
    if "hie_registry_time" not in g:
        g.hie_registry_time = utcnow()
    return g.hie_registry_time


def merged_cluster(platform: Session, person_id: str) -> list[str]:
    """The person and everyone merged into it, directly or through others (one query when nobody was)."""
    found, frontier = {person_id}, [person_id]
    while frontier:
        frontier = [p for p in platform.scalars(select(MasterPerson.id).where(MasterPerson.merged_into.in_(frontier)))
                    if p not in found]
        found.update(frontier)
    return sorted(found)


def locate(tenant_code: str, person_id: str) -> None:
    """Record that the person has records in this shard and move its stamp (in the writer's transaction)."""
    platform = platform_session()
    location = platform.get(RecordLocation, (person_id, tenant_code))
    if location is None:
        location = RecordLocation(master_person_id=person_id, tenant_code=tenant_code, last_updated=_request_time())
        try:
            with platform.begin_nested():  # a concurrent first write for the pair may insert it first
                platform.add(location)
        except IntegrityError:
            location = platform.get_one(RecordLocation, (person_id, tenant_code), populate_existing=True)
            location.last_updated = _request_time()
    else:
        location.last_updated = _request_time()
    # Held for the request, so the identity map keeps it and the next write for the pair needs no SELECT.
    g.setdefault("hie_registry_rows", {})[(person_id, tenant_code)] = location


def touch(tenant_code: str, *person_ids: str | None) -> None:
    """Move the stamp of these persons' existing registry rows in a shard (a register edit or a new local record)."""
    platform = platform_session()
    persons = sorted({member for person_id in person_ids if person_id
                      for member in merged_cluster(platform, person_id)})
    if persons:
        platform.execute(update(RecordLocation).where(
            RecordLocation.tenant_code == tenant_code, RecordLocation.master_person_id.in_(persons))
            .values(last_updated=_request_time()))
