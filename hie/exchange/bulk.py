"""FHIR Bulk Data export (IG v2.0.0): the kick-off's checks, the export record, its status and manifest, and the
sealed NDJSON files the job writes under HIE_HOME/exports/<id>/ and only the API opens."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flask import current_app
from sqlalchemy import func, select
from werkzeug.datastructures import MultiDict

from hie.exchange.models import BulkExport
from hie.exchange.outcome import FhirError
from hie.exchange.resources import WRITABLE
from hie.platform import access
from hie.platform.audit import services as audit
from hie.platform.auth.identity import Identity
from hie.platform.auth.models import Role
from hie.platform.crypto import DecryptionError, KeyRing, keyring
from hie.platform.db import new_id, platform_session, utcnow
from hie.platform.jobs.services import PLATFORM, emit
from hie.platform.limits import EARLIEST_QUERY_DATE, LATEST_QUERY_DATE
from hie.tenants.models import Institution, Tenant

TOPIC = "exchange.bulk_export"
GROUP_PREFIX = "institution-"  # Group/institution-<code>: the patients registered at that institution
OUTPUT_FORMATS = ("application/fhir+ndjson", "application/ndjson", "ndjson")
NDJSON = "application/fhir+ndjson"
SUPPORTED_PARAMS = ("_type", "_since", "_outputFormat")
# Parameters of the IG this server does not implement: refused by name (ignored under Prefer: handling=lenient).
UNSUPPORTED_PARAMS = ("_typeFilter", "_elements", "patient", "includeAssociatedData", "organizeOutputBy",
                      "allowPartialManifests")
MAX_ACTIVE = 2  # exports of one user accepted or running at once; more is a 429
RETRY_AFTER_SECONDS = 5
FRAME_BYTES = 1 << 20  # NDJSON is sealed in frames of about this many bytes
ACTIVE = ("accepted", "running")
_INSTANT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$")


@dataclass(frozen=True)
class Group:
    """The one kind of Group exported here: the patients an institution registered."""

    group_id: str
    institution_id: int
    tenant_code: str


def deidentified_for(identity: Identity) -> bool:
    """Health administrators (the role that stands for the research data centre too) never get identified data."""
    return Role.health_admin in identity.roles


def require_exporter(identity: Identity) -> Identity:
    """Who may export at all: clinical staff, residents (their own record) and health administrators (de-identified);
    anyone else gets the 403 of the policy, audited."""
    return access.require_any(access.Permission.patient_read, access.Permission.own_record_read,
                              access.Permission.stats_read)


def find_group(identity: Identity, group_id: str) -> Group:
    """The Group a caller may export: their own institution's patients (clinical staff), or those of an institution
    in the health administrator's region; anything else is 404, audited like a record nobody may see."""
    platform = platform_session()
    code = group_id.removeprefix(GROUP_PREFIX) if group_id.startswith(GROUP_PREFIX) else None
    found = platform.execute(select(Institution.id, Tenant.code, Tenant.region_code)
                             .join(Tenant, Tenant.id == Institution.tenant_id)
                             .where(Institution.code == code)).first() if code else None
    visible = False
    if found is not None:
        if deidentified_for(identity):
            visible = found.region_code in access.region_subtree(platform, identity.region_code)
        else:
            visible = found.id == identity.institution_id and \
                access.Permission.patient_read in access.permissions_of(identity)
    if found is None or not visible:
        audit.record("export", "not_found" if found is None else "denied", resource_type="Group",
                     resource_id=group_id[:80], detail="Group/$export of a group the caller may not export")
        raise FhirError(404, "not-found", f"Group/{group_id} is not known or not visible to you.")
    return Group(group_id, found.id, found.code)


def _check_headers(accept: str | None, prefer: str | None) -> str:
    """The IG's kick-off headers; returns the handling (strict or lenient) Prefer asks for."""
    if accept is None or "application/fhir+json" not in accept:
        raise FhirError(400, "invalid", "A bulk export kick-off needs Accept: application/fhir+json.", ["Accept"])
    parts = [part.strip().lower() for part in (prefer or "").replace(";", ",").split(",")]
    if "respond-async" not in parts:
        raise FhirError(400, "invalid", "A bulk export runs asynchronously: send Prefer: respond-async.", ["Prefer"])
    return "lenient" if "handling=lenient" in parts else "strict"


def _types(args: MultiDict[str, str]) -> list[str] | None:
    values = [value.strip() for raw in args.getlist("_type") for value in raw.split(",")]
    if not values:
        return None
    unknown = [value for value in values if value not in WRITABLE]
    if unknown:
        raise FhirError(400, "invalid", f"_type names {', '.join(repr(v[:64]) for v in unknown)}, not a resource "
                        f"type held here ({', '.join(WRITABLE)}).", ["_type"])
    return sorted(set(values))


def _since(args: MultiDict[str, str]) -> datetime | None:
    values = args.getlist("_since")
    if not values:
        return None
    if len(values) > 1:
        raise FhirError(400, "invalid", "_since may be given once.", ["_since"])
    value = values[0].strip()
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00")) if _INSTANT.match(value) else None
    except ValueError:
        when = None
    if when is None or not EARLIEST_QUERY_DATE.year <= when.year < LATEST_QUERY_DATE.year:
        raise FhirError(400, "invalid", "_since must be a FHIR instant with a time zone (2026-11-01T00:00:00Z), in "
                        f"the years {EARLIEST_QUERY_DATE.year} to {LATEST_QUERY_DATE.year - 1}.", ["_since"])
    return when.astimezone(UTC)


def _check_format(args: MultiDict[str, str]) -> None:
    for value in args.getlist("_outputFormat"):
        if value.strip() not in OUTPUT_FORMATS:
            raise FhirError(400, "not-supported", f"_outputFormat {value[:64]!r} is not supported; this server writes "
                            f"{', '.join(OUTPUT_FORMATS)}.", ["_outputFormat"])


def _check_unknown(args: MultiDict[str, str], handling: str) -> None:
    for name in args:
        if name in SUPPORTED_PARAMS or handling == "lenient":
            continue
        why = "is not supported by this server" if name in UNSUPPORTED_PARAMS else "is not a parameter of $export"
        raise FhirError(400, "not-supported", f"Parameter {name[:64]!r} {why} (send Prefer: handling=lenient to "
                        "have unknown parameters ignored).", [name[:64]])


def kick_off(identity: Identity, level: str, group: Group | None, args: MultiDict[str, str], accept: str | None,
             prefer: str | None, url: str) -> BulkExport:
    """Check the request, store the export as accepted and announce it (the job starts after commit)."""
    handling = _check_headers(accept, prefer)
    _check_unknown(args, handling)
    _check_format(args)
    types, since = _types(args), _since(args)
    platform = platform_session()
    active = platform.scalar(select(func.count()).select_from(BulkExport).where(
        BulkExport.user_id == identity.user_id, BulkExport.status.in_(ACTIVE))) or 0
    if active >= MAX_ACTIVE:
        raise FhirError(429, "throttled", f"You have {active} exports in progress; wait for one to finish "
                        "(or DELETE it) before starting another.")
    export = BulkExport(id=new_id(), user_id=identity.user_id, level=level,
                        group_id=group.group_id if group else None, types=types, since=since, request_url=url[:4000],
                        deidentified=deidentified_for(identity), status="accepted", transaction_time=utcnow())
    platform.add(export)
    emit(platform, PLATFORM, TOPIC, {"export_id": export.id})
    audit.record("export", resource_type="Group" if group else "Patient" if level == "patient" else None,
                 resource_id=group.group_id if group else None,
                 purpose="deidentified" if export.deidentified else "treatment",
                 detail=f"kick-off {export.id}: level={level} types={','.join(types or ['*'])} "
                        f"since={since.isoformat() if since else '-'} deidentified={export.deidentified}")
    return export


def owned(identity: Identity, export_id: str, action: str) -> BulkExport:
    """The caller's own export (not deleted); another's or an unknown id is 404, audited."""
    export = platform_session().get(BulkExport, export_id) if len(export_id) <= 36 else None
    if export is None or export.user_id != identity.user_id or export.status == "deleted":
        audit.record("export", "denied" if export is not None else "not_found", resource_type="Binary",
                     resource_id=export_id[:80], detail=f"{action} of an export the caller does not own")
        raise FhirError(404, "not-found", f"Export {export_id[:64]} is not known or not yours.")
    return export


def manifest(export: BulkExport, base_url: str) -> dict[str, Any]:
    """The completion manifest: one NDJSON file per type with resources, each opened with the access token."""
    base = f"{base_url}fhir/$export/{export.id}"
    return {
        "transactionTime": export.transaction_time.astimezone(UTC).isoformat(timespec="milliseconds"),
        "request": export.request_url,
        "requiresAccessToken": True,
        "output": [{"type": item["type"], "url": f"{base}/{item['type']}.ndjson", "count": item["count"]}
                   for item in export.output or []],
        "error": [],
    }


def delete(export: BulkExport) -> None:
    """Cancel a running export or remove a finished one: its files go at once, the record stays as deleted."""
    export.status, export.finished_at = "deleted", export.finished_at or utcnow()
    audit.record("export", resource_type="Binary", resource_id=export.id, detail="export deleted")
    remove_files(export.id)


def export_dir(export_id: str) -> Path:
    """Where one export's files live; HIE_HOME/exports is readable by the service account only."""
    return Path(current_app.config["HIE"].home) / "exports" / export_id


def remove_files(export_id: str) -> None:
    """Delete an export's directory (gone already is fine)."""
    shutil.rmtree(export_dir(export_id), ignore_errors=True)


def _aad(export_id: str, resource_type: str, frame: int) -> str:
    return f"fhir.bulk_export|{export_id}|{resource_type}|{frame}"


class SealedWriter:
    """An NDJSON file written as length-prefixed AES-GCM frames, each bound to its export, type and position."""

    def __init__(self, export_id: str, resource_type: str, ring: KeyRing) -> None:
        directory = export_dir(export_id)
        directory.parent.mkdir(mode=0o700, exist_ok=True)
        directory.mkdir(mode=0o700, exist_ok=True)
        descriptor = os.open(directory / f"{resource_type}.ndjson", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self.file = os.fdopen(descriptor, "wb")
        self.export_id, self.resource_type, self.ring = export_id, resource_type, ring
        self.pending: list[bytes] = []
        self.size = self.frames = self.count = 0

    def add(self, line: bytes) -> None:
        """One resource as one line."""
        self.pending.append(line + b"\n")
        self.size += len(line) + 1
        self.count += 1
        if self.size >= FRAME_BYTES:
            self._seal()

    def _seal(self) -> None:
        if not self.pending:
            return
        sealed = self.ring.encrypt_bytes(b"".join(self.pending), _aad(self.export_id, self.resource_type,
                                                                       self.frames))
        self.file.write(len(sealed).to_bytes(4, "big") + sealed)
        self.file.flush()
        self.pending, self.size, self.frames = [], 0, self.frames + 1

    def close(self) -> dict[str, Any]:
        """Seal what is left; the manifest entry (type, count, frames)."""
        self._seal()
        self.file.close()
        return {"type": self.resource_type, "count": self.count, "frames": self.frames}


def open_file(export: BulkExport, file_name: str) -> Iterator[bytes] | None:
    """The NDJSON of one output file, opened frame by frame (the first one before answering), or None."""
    entry = next((item for item in export.output or [] if f"{item['type']}.ndjson" == file_name), None)
    if export.status != "completed" or entry is None:
        return None
    ring = keyring()
    try:
        handle = (export_dir(export.id) / file_name).open("rb")
    except OSError:
        raise FhirError(500, "exception", "The export's file is missing on the server; start a new export.") from None

    def frame(number: int) -> bytes:
        size = int.from_bytes(handle.read(4), "big")
        return ring.decrypt_bytes(handle.read(size), _aad(export.id, entry["type"], number))

    try:
        first = frame(0)
    except DecryptionError:
        handle.close()
        raise FhirError(500, "exception", "The export's file does not open; start a new export.") from None

    def frames() -> Iterator[bytes]:
        try:
            yield first
            for number in range(1, entry["frames"]):
                yield frame(number)
        finally:
            handle.close()

    return frames()
