"""A village doctor in a township's team: signs a villager registered at the village clinic, reads the villager's
records held elsewhere while the contract runs, and not after it ends."""

from __future__ import annotations

from sqlalchemy import select

from hie.platform.auth.models import Role
from hie.platform.care import CareRelationship
from tests.conftest import new_patient
from tests.fhir_helpers import clinical, create
from tests.test_fd_teams import add_institution, add_user, make_team

CONTRACTS = "/api/v1/family-doctor/contracts"


def test_the_village_clinic_reads_its_signed_villager_only_while_the_contract_runs(app, client, as_user,
                                                                                     platform_db):
    add_institution(app, "YAODU-T1-V1", "yaodu", "village_clinic", "东关村卫生室")
    add_user(app, "village.doctor", Role.family_doctor, "YAODU-T1-V1")
    make_team(client, as_user("yaodu.admin"), "YAODU-T1-A", "YAODU-T1",
              {"yaodu.fd": "lead_doctor", "village.doctor": "village_doctor"})
    village = as_user("village.doctor")
    villager = new_patient(client, village, mrn="V1-001")
    hospital_doctor = as_user("quwo.doctor")
    elsewhere = new_patient(client, hospital_doctor, mrn="Q-001", address="山西省临汾市曲沃县乐昌镇")
    assert elsewhere["master_person_id"] == villager["master_person_id"]
    observation = create(client, hospital_doctor, clinical("Observation", f"Patient/{elsewhere['id']}"))
    url = f"/fhir/Observation/{observation['id']}"
    assert client.get(url, headers=village).status_code == 404

    signed = client.post(CONTRACTS, json={"patient_id": villager["id"], "packages": ["basic"]}, headers=village)
    assert signed.status_code == 201, signed.get_json()
    contract = signed.get_json()
    assert client.get(url, headers=village).status_code == 200
    assert client.get(url, headers=as_user("yaodu.fd")).status_code == 200
    platform_db.rollback()
    holders = platform_db.scalars(select(CareRelationship.institution_id).where(
        CareRelationship.source_ref == f"contract/{contract['id']}")).all()
    assert len(holders) == 2  # the township centre and the village clinic

    ended = client.post(f"{CONTRACTS}/{contract['id']}/terminate", json={"reason": "迁出本村"}, headers=village)
    assert ended.status_code == 200, ended.get_json()
    assert client.get(url, headers=village).status_code == 404
    assert client.get(url, headers=as_user("yaodu.fd")).status_code == 404
