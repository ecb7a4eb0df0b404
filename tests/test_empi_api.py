"""The EMPI through the API: one master person across tenants, PIX, PDQ, $match, stewardship."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select, text

from hie.empi.models import BlockingKey, MasterPerson, PersonRecord, ReviewItem
from tests.conftest import new_patient, valid_id

ID_WANG = valid_id("14100219580312002")


def _register(client, headers, mrn, **fields):
    return new_patient(client, headers, mrn=mrn, **fields)


def test_same_resident_in_two_tenants_is_one_master_person(client, as_user):
    yaodu = _register(client, as_user("yaodu.doctor"), "Y-1")
    quwo = _register(client, as_user("quwo.doctor"), "Q-77", address="曲沃县史村镇", phone="13935712345")
    assert yaodu["master_person_id"] and yaodu["master_person_id"] == quwo["master_person_id"]
    xref = client.get("/api/v1/empi/xref?local_id=Q-77", headers=as_user("quwo.doctor"))
    assert xref.status_code == 200
    assert xref.get_json()["master_person_id"] == quwo["master_person_id"]
    assert {(i["institution_code"], i["local_id"]) for i in xref.get_json()["identifiers"]} == {("QUWO-CH", "Q-77")}
    assert xref.get_json()["other_records"] == 1, "yaodu's record is counted, never named"
    steward = client.get(f"/api/v1/empi/persons/{quwo['master_person_id']}", headers=as_user("steward")).get_json()
    assert {(i["institution_code"], i["local_id"]) for i in steward["identifiers"]} == {
        ("YAODU-CH", "Y-1"), ("QUWO-CH", "Q-77")}


def test_pinyin_typed_name_with_same_id_links(client, as_user):
    first = _register(client, as_user("yaodu.doctor"), "Y-1")
    typed = _register(client, as_user("quwo.doctor"), "Q-2", name="Wang Xiuying", address=None, phone=None)
    assert typed["master_person_id"] == first["master_person_id"]


def test_twins_are_two_people(client, as_user):
    one = _register(client, as_user("yaodu.doctor"), "T-1", name="李子涵", sex="F", birth_date="2015-06-01",
                    id_number=valid_id("14100220150601002"), phone="13800001111")
    two = _register(client, as_user("yaodu.doctor"), "T-2", name="李子轩", sex="M", birth_date="2015-06-01",
                    id_number=valid_id("14100220150601011"), phone="13800001111")
    assert one["master_person_id"] != two["master_person_id"]


def test_namesakes_with_different_ids_are_two_people(client, as_user):
    one = _register(client, as_user("yaodu.doctor"), "N-1", name="张伟", sex="M", birth_date="1980-01-01",
                    id_number=valid_id("14100219800101003"), phone="13900000001", address="尧都区屯里镇")
    two = _register(client, as_user("quwo.doctor"), "N-2", name="张伟", sex="M", birth_date="1980-01-01",
                    id_number=valid_id("14102119800101005"), phone="13900000002", address="曲沃县史村镇")
    assert one["master_person_id"] != two["master_person_id"]


def test_reregistering_the_same_record_changes_nothing(client, app, as_user, platform_db):
    patient = _register(client, as_user("yaodu.doctor"), "Y-1")
    url = f"/api/v1/patients/{patient['id']}"
    same = client.patch(url, json={"phone": "13935712345"}, headers=as_user("yaodu.doctor")).get_json()
    assert same["master_person_id"] == patient["master_person_id"]
    assert platform_db.scalar(select(func.count()).select_from(PersonRecord)) == 1
    assert platform_db.scalar(select(func.count()).select_from(MasterPerson)) == 1


def test_index_tables_hold_no_plaintext_identifier(client, app, as_user, platform_db):
    _register(client, as_user("yaodu.doctor"), "Y-1")
    with app.extensions["hie.engines"].platform.connect() as conn:
        stored = repr(conn.execute(text("SELECT * FROM empi_blocking_keys")).all())
        stored += repr(conn.execute(text("SELECT * FROM empi_records")).all())
    # The birth date is checked whole: a bare year turns up by chance in hex and base64 (about 1 run in 9).
    for plaintext in (ID_WANG, "13935712345", "王秀英", "wang", "xiuying", "19580312", "1958-03-12"):
        assert plaintext not in stored, plaintext
    assert platform_db.scalar(select(func.count()).select_from(BlockingKey)) >= 3


def test_pdq_finds_the_person_with_a_grade(client, as_user):
    patient = _register(client, as_user("yaodu.doctor"), "Y-1")
    response = client.get(f"/api/v1/empi/persons?name=王秀英&birth_date=1958-03-12&id_number={ID_WANG}",
                          headers=as_user("yaodu.doctor"))
    assert response.status_code == 200
    best = response.get_json()[0]
    assert best["master_person_id"] == patient["master_person_id"] and best["grade"] == "certain"
    assert 0.9 < best["score"] <= 1.0
    weak = client.get("/api/v1/empi/persons?name=王秀英&birth_date=1958-03-12",
                      headers=as_user("yaodu.doctor")).get_json()
    assert weak and all(match["grade"] != "certain" for match in weak), "found, but not certain without an identifier"


def test_pdq_and_xref_refuse_bad_input(client, as_user):
    headers = as_user("yaodu.doctor")
    assert client.get("/api/v1/empi/persons", headers=headers).status_code == 400
    assert client.get("/api/v1/empi/persons?name=x&count=0", headers=headers).status_code == 422
    assert client.get("/api/v1/empi/persons?name=x&sex=Q", headers=headers).status_code == 422
    assert client.get("/api/v1/empi/xref", headers=headers).status_code == 422
    assert client.get("/api/v1/empi/xref?local_id=NOPE", headers=headers).status_code == 404
    assert client.get("/api/v1/empi/persons?name=x", headers=as_user("healthadmin")).status_code == 403


@pytest.mark.parametrize(("query", "field"), [
    ("birth_date=notadate", "birth_date"), ("name=王秀英&birth_date=1958-02-30", "birth_date"),
    ("phone=abcdefgh", "phone"), ("id_number=xxxxxxxx", "id_number"),
])
def test_pdq_bad_field_values_are_422_naming_the_field(client, as_user, query, field):
    _register(client, as_user("yaodu.doctor"), "Y-1")
    response = client.get(f"/api/v1/empi/persons?{query}", headers=as_user("quwo.doctor"))
    assert response.status_code == 422
    assert field in response.get_data(as_text=True)


def test_pdq_name_and_birth_date_alone_is_never_certain(client, as_user):
    _register(client, as_user("yaodu.doctor"), "Y-1")
    response = client.get("/api/v1/empi/persons?name=王秀英&sex=F&birth_date=1958-03-12",
                          headers=as_user("quwo.doctor"))
    assert response.status_code == 200 and response.get_json()
    assert {match["grade"] for match in response.get_json()} <= {"probable", "possible"}


def test_namesake_with_only_name_sex_and_birth_date_is_reviewed_not_linked(client, as_user):
    first = _register(client, as_user("yaodu.doctor"), "N-1", name="张伟", sex="M", birth_date="1980-01-01",
                      id_number=None, phone=None, address=None)
    second = _register(client, as_user("quwo.doctor"), "N-2", name="张伟", sex="M", birth_date="1980-01-01",
                       id_number=None, phone="13912345678", address=None)
    assert first["master_person_id"] != second["master_person_id"]
    review = client.get("/api/v1/empi/reviews", headers=as_user("steward")).get_json()
    assert [r["veto"] for r in review] == ["only name, sex and birth date agree (no ID, phone or house address)"]


def test_xref_of_another_institutions_local_id_is_404(client, as_user):
    _register(client, as_user("yaodu.doctor"), "Y-1")
    assert client.get("/api/v1/empi/xref?local_id=Y-1", headers=as_user("quwo.doctor")).status_code == 404


def _match_body(**extra):
    patient = {"resourceType": "Patient", "name": [{"text": "王秀英"}], "gender": "female",
               "birthDate": "1958-03-12", "identifier": [{"system": "urn:hie:id:CN-RIC", "value": ID_WANG}]}
    parameters = [{"name": "resource", "resource": patient}]
    parameters += [{"name": k, **v} for k, v in extra.items()]
    return {"resourceType": "Parameters", "parameter": parameters}


def test_fhir_patient_match_returns_a_scored_bundle(client, as_user):
    patient = _register(client, as_user("yaodu.doctor"), "Y-1")
    _register(client, as_user("yaodu.doctor"), "Y-2", name="王秀兰", id_number=None, phone="13700000000")
    response = client.post("/fhir/Patient/$match", json=_match_body(count={"valueInteger": 5}),
                           headers=as_user("yaodu.doctor"))
    assert response.status_code == 200 and response.content_type == "application/fhir+json"
    bundle = response.get_json()
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset"
    first = bundle["entry"][0]
    assert first["resource"]["id"] == patient["id"]
    assert first["search"]["extension"][0]["valueCode"] == "certain"
    certain = client.post("/fhir/Patient/$match", json=_match_body(onlyCertainMatches={"valueBoolean": True}),
                          headers=as_user("yaodu.doctor")).get_json()
    assert [e["search"]["extension"][0]["valueCode"] for e in certain["entry"]] == ["certain"]
    one = client.post("/fhir/Patient/$match", json=_match_body(count={"valueInteger": 1}),
                      headers=as_user("yaodu.doctor")).get_json()
    assert one["total"] == 1 and [e["resource"]["id"] for e in one["entry"]] == [patient["id"]]


def test_fhir_match_errors_are_operation_outcomes(client, as_user):
    headers = as_user("quwo.doctor")
    for body in ({"resourceType": "Patient"}, {"resourceType": "Parameters", "parameter": [{"name": "count",
                  "valueInteger": "many"}]}, {"resourceType": "Parameters", "parameter": []}, "nonsense"):
        response = client.post("/fhir/Patient/$match", json=body, headers=headers)
        assert response.status_code == 400
        assert response.get_json()["resourceType"] == "OperationOutcome"
    unauthenticated = client.post("/fhir/Patient/$match", json=_match_body())
    assert unauthenticated.status_code == 401 and unauthenticated.get_json()["resourceType"] == "OperationOutcome"
    assert client.post("/fhir/Patient/$match", json=_match_body(), headers=as_user("auditor")).status_code == 403


def _two_people(client, as_user):
    a = _register(client, as_user("yaodu.doctor"), "A-1", name="赵六", birth_date="1970-01-01",
                  id_number=valid_id("14100219700101001"), phone="13600000001", sex="M")
    b = _register(client, as_user("quwo.doctor"), "B-1", name="钱七", birth_date="1975-05-05",
                  id_number=None, phone="13600000002", sex="F")
    return a, b


def test_merge_then_unmerge_restores_exactly(client, as_user):
    a, b = _two_people(client, as_user)
    steward = as_user("steward")
    before_a = client.get(f"/api/v1/empi/persons/{a['master_person_id']}", headers=steward).get_json()
    before_b = client.get(f"/api/v1/empi/persons/{b['master_person_id']}", headers=steward).get_json()
    merged = client.post(f"/api/v1/empi/persons/{b['master_person_id']}/merge",
                         json={"into": a["master_person_id"]}, headers=steward)
    assert merged.status_code == 200
    after = client.get(f"/api/v1/empi/persons/{a['master_person_id']}", headers=steward).get_json()
    assert len(after["identifiers"]) == 2
    xref = client.get("/api/v1/empi/xref?local_id=B-1", headers=as_user("quwo.doctor")).get_json()
    assert xref["master_person_id"] == a["master_person_id"]
    patient_b = client.get(f"/api/v1/patients/{b['id']}", headers=as_user("quwo.doctor")).get_json()
    assert patient_b["master_person_id"] == a["master_person_id"]
    unmerged = client.post(f"/api/v1/empi/persons/{b['master_person_id']}/unmerge", headers=steward)
    assert unmerged.status_code == 200
    assert client.get(f"/api/v1/empi/persons/{a['master_person_id']}", headers=steward).get_json() == before_a
    assert client.get(f"/api/v1/empi/persons/{b['master_person_id']}", headers=steward).get_json() == before_b
    assert client.get("/api/v1/empi/xref?local_id=B-1", headers=as_user("quwo.doctor")).get_json()[
        "master_person_id"] == b["master_person_id"]
    history = client.get(f"/api/v1/empi/persons/{b['master_person_id']}/history", headers=steward).get_json()
    assert [h["action"] for h in history] == ["create", "merge", "unmerge"]
    assert history[1]["undone_by"] == history[2]["id"]
    audit = client.get("/api/v1/audit?user=steward", headers=as_user("auditor")).get_json()
    assert {"merge", "unmerge"} <= {e["action"] for e in audit}


def test_stewardship_refuses_bad_requests(client, as_user):
    a, b = _two_people(client, as_user)
    steward = as_user("steward")
    pid = a["master_person_id"]
    assert client.post(f"/api/v1/empi/persons/{pid}/merge", json={"into": pid}, headers=steward).status_code == 409
    missing = "00000000-0000-0000-0000-000000000000"
    assert client.post(f"/api/v1/empi/persons/{pid}/merge", json={"into": missing}, headers=steward).status_code \
        == 404
    assert client.post(f"/api/v1/empi/persons/{pid}/merge", json={"into": "short"}, headers=steward).status_code \
        == 422
    assert client.post(f"/api/v1/empi/persons/{pid}/unmerge", headers=steward).status_code == 409
    assert client.post(f"/api/v1/empi/persons/{missing}/unmerge", headers=steward).status_code == 404
    assert client.post(f"/api/v1/empi/persons/{pid}/merge", json={"into": b["master_person_id"]},
                       headers=as_user("yaodu.doctor")).status_code == 403
    assert client.get(f"/api/v1/empi/persons/{pid}", headers=as_user("admin")).status_code == 403


def test_swapped_day_and_month_is_reviewed_and_not_a_match_is_remembered(client, app, as_user, platform_db):
    first = _register(client, as_user("yaodu.doctor"), "P-1", name="刘芳", birth_date="1990-02-03",
                      id_number=None, phone="13500000001", sex="F", address="尧都区屯里镇东关村5号")
    second = _register(client, as_user("quwo.doctor"), "P-2", name="刘芳", birth_date="1990-03-02",
                       id_number=None, phone=None, sex="F", address=None)
    reviews = client.get("/api/v1/empi/reviews", headers=as_user("steward"))
    assert reviews.status_code == 200
    items = reviews.get_json()
    assert first["master_person_id"] != second["master_person_id"]
    assert len(items) == 1
    item = items[0]
    assert item["record"]["demographics"]["name"] == "刘芳" and item["candidate"]["local_id"] == "P-1"
    decided = client.post(f"/api/v1/empi/reviews/{item['id']}", json={"decision": "not_a_match"},
                          headers=as_user("steward"))
    assert decided.status_code == 200 and decided.get_json()["status"] == "not_a_match"
    again = client.post(f"/api/v1/empi/reviews/{item['id']}", json={"decision": "link"}, headers=as_user("steward"))
    assert again.status_code == 409
    assert client.post(f"/api/v1/empi/reviews/{item['id']}", json={"decision": "maybe"},
                       headers=as_user("steward")).status_code == 422
    from hie.empi.normalize import normalize_record
    from hie.empi.services import current_model, decide, find_candidates, key_hashes, thresholds_for

    ring = app.extensions["hie.keyring"]
    record = platform_db.scalar(select(PersonRecord).where(PersonRecord.local_id == "P-2"))
    normalized = normalize_record({"rec_id": "P-2", "name": "刘芳", "birth_date": "1990-03-02", "sex": "F"})
    candidates = find_candidates(platform_db, ring, normalized, key_hashes(ring, normalized),
                                 current_model(platform_db), exclude=record.id)
    first = platform_db.scalar(select(PersonRecord.id).where(PersonRecord.local_id == "P-1"))
    assert candidates and candidates[0].record_id == first
    outcome, best = decide(platform_db, ring, record.person_id, set(), candidates, thresholds_for(platform_db, None))
    assert best is None or best.record_id != first
    assert platform_db.scalar(select(func.count()).select_from(ReviewItem)) == 1


def test_updating_a_record_already_under_review_reports_review(client, as_user, platform_db, monkeypatch):
    from hie.empi import services

    outcomes = []
    register = services.register

    def spy(*args, **kwargs):
        registration = register(*args, **kwargs)
        outcomes.append(registration.outcome)
        return registration

    monkeypatch.setattr(services, "register", spy)
    _register(client, as_user("yaodu.doctor"), "P-1", name="刘芳", birth_date="1990-02-03", id_number=None,
              phone="13500000001", sex="F", address="尧都区屯里镇东关村5号")
    second = _register(client, as_user("quwo.doctor"), "P-2", name="刘芳", birth_date="1990-03-02", id_number=None,
                       phone=None, sex="F", address=None)
    assert outcomes == ["new_person", "review"]
    url = f"/api/v1/patients/{second['id']}"
    for name in ("劉芳", "刘芳"):  # the same name written two ways: a new fingerprint, the same match
        updated = client.patch(url, json={"name": name}, headers=as_user("quwo.doctor"))
        assert updated.status_code == 200
    assert outcomes[2:] == ["updated_review", "updated_review"]
    assert platform_db.scalar(select(func.count()).select_from(ReviewItem)) == 1
