"""A clinician of one tenant cannot reach another tenant's data by any route, id or parameter."""

from __future__ import annotations

from sqlalchemy import select, text

from hie.platform.audit.models import AuditEvent
from tests.conftest import new_patient, shard_engine, valid_id


def _events(platform_db, username, action=None):
    query = select(AuditEvent).where(AuditEvent.username == username).order_by(AuditEvent.seq)
    if action:
        query = query.where(AuditEvent.action == action)
    return platform_db.scalars(query).all()


def test_patient_is_stored_only_in_its_tenants_shard(client, app, as_user):
    patient = new_patient(client, as_user("yaodu.doctor"))
    assert patient["tenant_code"] == "yaodu"
    counts = {}
    for tenant in ("linfen", "yaodu", "quwo"):
        with shard_engine(app, tenant).connect() as conn:
            counts[tenant] = conn.execute(text("SELECT COUNT(*) FROM patients")).scalar()
    assert counts == {"linfen": 0, "yaodu": 1, "quwo": 0}


def test_read_by_id_from_another_tenant_is_404_and_audited(client, as_user, platform_db):
    patient = new_patient(client, as_user("yaodu.doctor"))
    response = client.get(f"/api/v1/patients/{patient['id']}", headers=as_user("quwo.doctor"))
    assert response.status_code == 404
    assert response.content_type == "application/problem+json"
    assert "王秀英" not in response.get_data(as_text=True)
    events = _events(platform_db, "quwo.doctor", "read")
    assert [(e.outcome, e.resource_id) for e in events] == [("not_found", patient["id"])]


def test_client_supplied_tenant_is_ignored(client, as_user):
    patient = new_patient(client, as_user("yaodu.doctor"))
    headers = {**as_user("quwo.doctor"), "X-Tenant": "yaodu", "X-Tenant-Id": "yaodu"}
    for url in (f"/api/v1/patients/{patient['id']}?tenant=yaodu&tenant_code=yaodu",
                f"/api/v1/patients/{patient['id']}"):
        assert client.get(url, headers=headers).status_code == 404
    listing = client.get("/api/v1/patients?tenant=yaodu", headers=headers)
    assert listing.status_code == 200
    assert listing.get_json() == []


def test_list_and_search_never_show_another_tenants_patients(client, as_user, platform_db):
    new_patient(client, as_user("yaodu.doctor"))
    quwo = as_user("quwo.doctor")
    for query in ("", "?id_number=" + valid_id("14100219580312002"), "?phone=13935712345",
                  "?name=王秀英", "?mrn=MRN-1"):
        response = client.get(f"/api/v1/patients{query}", headers=quwo)
        assert response.status_code == 200
        assert response.get_json() == []
        assert '"total": 0' in response.headers["X-Pagination"]
    searches = _events(platform_db, "quwo.doctor", "search")
    assert len(searches) == 5


def test_update_of_another_tenants_patient_is_404_and_changes_nothing(client, as_user, platform_db):
    patient = new_patient(client, as_user("yaodu.doctor"))
    response = client.patch(f"/api/v1/patients/{patient['id']}", json={"phone": "13800000000"},
                            headers=as_user("quwo.doctor"))
    assert response.status_code == 404
    mine = client.get(f"/api/v1/patients/{patient['id']}", headers=as_user("yaodu.doctor")).get_json()
    assert mine["phone"] == "13935712345" and mine["version"] == 1
    assert [e.outcome for e in _events(platform_db, "quwo.doctor", "update")] == ["not_found"]


def test_same_mrn_in_two_tenants_are_two_records(client, as_user):
    a = new_patient(client, as_user("yaodu.doctor"), mrn="SHARED-1")
    b = new_patient(client, as_user("quwo.doctor"), mrn="SHARED-1", name="李四")
    assert a["id"] != b["id"]
    assert client.get(f"/api/v1/patients/{b['id']}", headers=as_user("yaodu.doctor")).status_code == 404


def test_break_glass_does_not_cross_tenants(client, as_user):
    patient = new_patient(client, as_user("yaodu.doctor"))
    headers = {**as_user("quwo.doctor"), "X-Break-Glass-Reason": "unconscious patient in emergency room"}
    assert client.get(f"/api/v1/patients/{patient['id']}", headers=headers).status_code == 404


def test_city_specialist_cannot_read_county_record_directly(client, as_user):
    patient = new_patient(client, as_user("yaodu.doctor"))
    assert client.get(f"/api/v1/patients/{patient['id']}", headers=as_user("lfph.specialist")).status_code == 404


def test_tenant_admin_cannot_add_institution_or_users_in_another_tenant(client, as_user):
    body = {"code": "YAODU-X", "name": "别人的诊所", "tenant_code": "yaodu", "level": "village_clinic"}
    response = client.post("/api/v1/institutions", json=body, headers=as_user("quwo.admin"))
    assert response.status_code == 403
    user = {"username": "intruder", "password": "Strong-pass-123", "roles": ["clinician"],
            "institution_code": "YAODU-CH"}
    response = client.post("/api/v1/users", json=user, headers=as_user("quwo.admin"))
    assert response.status_code == 422
    assert client.post("/api/v1/auth/token", json={"username": "intruder", "password": "Strong-pass-123"}) \
        .status_code == 401
