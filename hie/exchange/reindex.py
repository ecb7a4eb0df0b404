"""`hie fhir reindex`: rebuild every shard's search index from the stored resources and the patient register."""

from __future__ import annotations

import click
from flask import Flask
from sqlalchemy import select
from sqlalchemy.orm import Session

from hie.exchange import store
from hie.exchange.models import FhirResource
from hie.patients import name_index
from hie.patients.models import Patient
from hie.patients.sealing import unseal
from hie.platform.crypto import keyring


def reindex_shard(session: Session, tenant_code: str) -> tuple[int, int]:
    """Token, date and name rows of every stored resource, name rows of register-only patients; counts of each."""
    resources = 0
    stored_patients: set[str] = set()
    for row in session.scalars(select(FhirResource).order_by(FhirResource.resource_type, FhirResource.id)):
        resource = store.to_resource(row, tenant_code)
        store._write_index(session, tenant_code, resource, row)
        if row.resource_type == "Patient":
            stored_patients.add(row.id)
        resources += 1
    registered = 0
    for patient in session.scalars(select(Patient).order_by(Patient.id)):
        if patient.id not in stored_patients:
            name_index.write_register(session, patient.id, unseal(keyring(), tenant_code, patient, "name"))
            registered += 1
    return resources, registered


def reindex_all(app: Flask) -> dict[str, tuple[int, int]]:
    """Every tenant's shard, each in its own transaction."""
    from hie.tenants.models import Tenant
    from hie.tenants.services import resolved_url

    engines = app.extensions["hie.engines"]
    with Session(engines.platform) as platform:
        tenants = platform.scalars(select(Tenant).order_by(Tenant.code)).all()
    counts: dict[str, tuple[int, int]] = {}
    with app.app_context():
        for tenant in tenants:
            with Session(engines.engine(resolved_url(engines.config, tenant))) as session, session.begin():
                counts[tenant.code] = reindex_shard(session, tenant.code)
    return counts


@click.group()
def fhir() -> None:
    """The FHIR exchange."""


@fhir.command("reindex")
def fhir_reindex() -> None:
    """Rebuild the search index (tokens, dates, Patient name blind indexes) of every shard, e.g. after an upgrade
    that indexes new search parameters."""
    from hie.platform.cli import make_app

    for code, (resources, registered) in reindex_all(make_app()).items():
        click.echo(f"{code}: {resources} resources, {registered} register-only patients reindexed")


def register(main: click.Group) -> None:
    """Attach `hie fhir` to the main command."""
    main.add_command(fhir)
