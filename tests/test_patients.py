"""The local patient register: register, read, search, update; bad input refused, nothing stored."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from hie.patients.models import Patient
from hie.platform.audit.models import AuditEvent
from tests.conftest import new_patient, valid_id


def _count(app):
    from sqlalchemy.orm import Session

    from tests.conftest import shard_engine

    with Session(shard_engine(app, "yaodu")) as session:
        return session.scalar(select(func.count()).select_from(Patient))


def test_register_and_read_back(client, as_user, platform_db):
    patient = new_patient(client, as_user("yaodu.doctor"), id_number="141002580312002")
    assert patient["id_number"] == valid_id("14100219580312002")
    assert patient["version"] == 1 and patient["access_basis"] == "own_institution"
    read = client.get(f"/api/v1/patients/{patient['id']}", headers=as_user("yaodu.doctor")).get_json()
    assert read == patient
    actions = platform_db.scalars(select(AuditEvent.action).where(AuditEvent.patient == f"yaodu/{patient['id']}")
                                  .order_by(AuditEvent.seq)).all()
    assert actions == ["create", "read"]


def test_colleague_at_same_institution_reads_and_nurse_writes(client, as_user):
    patient = new_patient(client, as_user("yaodu.doctor"))
    response = client.patch(f"/api/v1/patients/{patient['id']}", json={"address": "尧都区解放路1号"},
                            headers=as_user("yaodu.nurse"))
    assert response.status_code == 200
    assert response.get_json()["address"] == "尧都区解放路1号" and response.get_json()["version"] == 2


def test_stale_if_match_is_412_and_changes_nothing(client, as_user):
    patient = new_patient(client, as_user("yaodu.doctor"))
    url, headers = f"/api/v1/patients/{patient['id']}", as_user("yaodu.doctor")
    assert client.patch(url, json={"phone": "13800000001"}, headers={**headers, "If-Match": '"1"'}) \
        .status_code == 200
    stale = client.patch(url, json={"phone": "13800000002"}, headers={**headers, "If-Match": '"1"'})
    assert stale.status_code == 412
    assert client.get(url, headers=headers).get_json()["phone"] == "13800000001"
    assert client.patch(url, json={"phone": "13800000003"}, headers={**headers, "If-Match": "abc"}) \
        .status_code == 400


def test_duplicate_mrn_with_different_demographics_is_409(client, app, as_user):
    new_patient(client, as_user("yaodu.doctor"))
    response = client.post("/api/v1/patients", json={"mrn": "MRN-1", "name": "李四"},
                           headers=as_user("yaodu.doctor"))
    assert response.status_code == 409
    assert "different demographics" in response.get_json()["detail"]
    assert _count(app) == 1


def test_reregistering_the_same_record_answers_the_existing_one(client, app, as_user, platform_db):
    from hie.empi.models import PersonRecord

    first = new_patient(client, as_user("yaodu.doctor"), id_number="141002580312002", phone="139-3571-2345")
    again = client.post("/api/v1/patients", json={
        "mrn": "MRN-1", "name": "王秀英", "sex": "F", "birth_date": "1958-03-12",
        "id_number": valid_id("14100219580312002"), "phone": "13935712345",
        "address": "山西省临汾市尧都区屯里镇东关村12号"}, headers=as_user("yaodu.doctor"))
    assert again.status_code == 200
    assert again.get_json() == first
    assert _count(app) == 1
    assert platform_db.scalar(select(func.count()).select_from(PersonRecord)) == 1


@pytest.mark.parametrize(("body", "field"), [
    ({"name": "王五"}, "mrn"),
    ({"mrn": "M-2"}, "name"),
    ({"mrn": "M-2", "name": "王五", "id_number": "141002195803120021"}, "id_number"),
    ({"mrn": "M-2", "name": "王五", "id_number": "14100219581312002X"}, "id_number"),
    ({"mrn": "M-2", "name": "王五", "phone": "12345"}, "phone"),
    ({"mrn": "M-2", "name": "王五", "sex": "Q"}, "sex"),
    ({"mrn": "M-2", "name": "王五", "birth_date": "1958-13-40"}, "birth_date"),
    ({"mrn": "bad mrn with spaces", "name": "王五"}, "mrn"),
    ({"mrn": "M-2", "name": ""}, "name"),
    ({"mrn": "M-2", "name": "王五", "unexpected": 1}, "unexpected"),
])
def test_bad_registration_names_the_field_and_stores_nothing(client, app, as_user, body, field):
    response = client.post("/api/v1/patients", json=body, headers=as_user("yaodu.doctor"))
    assert response.status_code == 422
    assert response.content_type == "application/problem+json"
    assert field in [e["field"] for e in response.get_json()["errors"]]
    assert _count(app) == 0


def test_bad_update_changes_nothing(client, as_user):
    patient = new_patient(client, as_user("yaodu.doctor"))
    url, headers = f"/api/v1/patients/{patient['id']}", as_user("yaodu.doctor")
    assert client.patch(url, json={"id_number": "123"}, headers=headers).status_code == 422
    assert client.patch(url, json={"mrn": "NEW"}, headers=headers).status_code == 422
    assert client.patch(url, json={}, headers=headers).status_code == 400
    assert client.get(url, headers=headers).get_json() == patient


def test_non_json_and_oversize_bodies_are_refused(client, app, as_user):
    headers = as_user("yaodu.doctor")
    assert client.post("/api/v1/patients", data="not json", headers={**headers, "Content-Type": "application/json"}) \
        .status_code in (400, 422)
    huge = json.dumps({"mrn": "M-9", "name": "x" * (app.config["HIE"].max_request_bytes + 10)})
    response = client.post("/api/v1/patients", data=huge, headers={**headers, "Content-Type": "application/json"})
    assert response.status_code == 413
    assert response.content_type == "application/problem+json"
    assert _count(app) == 0


def test_unknown_and_overlong_ids_are_404(client, as_user):
    headers = as_user("yaodu.doctor")
    assert client.get("/api/v1/patients/00000000-0000-0000-0000-000000000000", headers=headers).status_code == 404
    assert client.get("/api/v1/patients/" + "x" * 300, headers=headers).status_code == 404


def test_search_by_blind_index_and_paging(client, as_user):
    headers = as_user("yaodu.doctor")
    for index in range(5):
        new_patient(client, headers, mrn=f"P-{index}", name=f"张 {index}", phone=f"1393571234{index}",
                    id_number=None)
    by_phone = client.get("/api/v1/patients?phone=+86 139-3571-2343", headers=headers).get_json()
    assert [p["mrn"] for p in by_phone] == ["P-3"]
    by_name = client.get("/api/v1/patients?name=张2", headers=headers).get_json()
    assert [p["mrn"] for p in by_name] == ["P-2"]
    page = client.get("/api/v1/patients?page=2&page_size=2", headers=headers)
    assert [p["mrn"] for p in page.get_json()] == ["P-2", "P-3"]
    meta = json.loads(page.headers["X-Pagination"])
    assert meta["total"] == 5 and meta["total_pages"] == 3
    assert client.get("/api/v1/patients?id_number=not-an-id-number", headers=headers).get_json() == []
    assert client.get("/api/v1/patients?page_size=1000", headers=headers).status_code == 422
