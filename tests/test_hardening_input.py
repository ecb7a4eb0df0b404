"""No input makes a 500: bounded integers, dates, strings, JSON depth and OR-lists; refused bodies; one-line logs."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import date, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import text

from hie.platform.limits import MAX_JSON_DEPTH, json_depth, overlong_demographic
from tests.conftest import hie_environ, new_patient, shard_engine
from tests.fhir_helpers import clinical, create, patient

HUGE = "1234567890123456789012345"  # 25 digits: past every 64-bit column


def _rows(app, table: str, tenant: str = "yaodu") -> int:
    with shard_engine(app, tenant).connect() as conn:
        return conn.execute(text(f"SELECT COUNT(*) FROM {table}")).scalar()


def _outcome(response, status: int, expression: str | None = None) -> str:
    """Assert an OperationOutcome of this status (naming the element or parameter); its diagnostics."""
    body = response.get_json()
    assert response.status_code == status, body
    assert body["resourceType"] == "OperationOutcome", body
    issue = body["issue"][0]
    if expression is not None:
        assert issue["expression"] == [expression], issue
    return issue["diagnostics"]


def _problem(response, status: int, field: str | None = None) -> dict:
    """Assert a problem+json of this status (naming the field); its body."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    body = response.get_json()
    if field is not None:
        assert field in {error["field"] for error in body["errors"]}, body
    return body


@pytest.fixture
def wang(client, as_user) -> str:
    """A FHIR patient of 尧都区人民医院 with one Observation, as Patient/<id>."""
    headers = as_user("yaodu.doctor")
    reference = f"Patient/{create(client, headers, patient())['id']}"
    create(client, headers, clinical("Observation", reference))
    return reference


# Integers


def test_ids_past_64_bits_or_in_other_digits_are_not_found(client, as_user, wang):
    admin = as_user("admin")
    _problem(client.get("/api/v1/users/99999999999999999999999", headers=admin), 404)
    _problem(client.get("/api/v1/users/٣", headers=admin), 404)
    observation = client.get("/fhir/Observation", headers=as_user("yaodu.doctor")).get_json()["entry"][0]
    url = f"/fhir/Observation/{observation['resource']['id']}/_history/{HUGE}"
    _outcome(client.get(url, headers=as_user("yaodu.doctor")), 404)
    _outcome(client.get(f"/fhir/AuditEvent/{HUGE}", headers=as_user("auditor")), 404)
    _outcome(client.get("/fhir/AuditEvent/١", headers=as_user("auditor")), 404)
    _outcome(client.get("/fhir/Observation/a%0Ab/_history/-1", headers=as_user("yaodu.doctor")), 404)


@pytest.mark.parametrize("query", [f"page={HUGE}", "page=408330453179201224704", "page=٣", "page_size=٣"])
def test_paging_out_of_range_or_in_other_digits_is_refused_naming_it(client, as_user, query):
    headers = as_user("yaodu.doctor")
    new_patient(client, headers)
    name = query.split("=")[0]
    _problem(client.get(f"/api/v1/patients?{query}", headers=headers), 422, name)
    _problem(client.get(f"/api/v1/audit?{query}", headers=as_user("auditor")), 422, name)


def test_pdq_count_takes_ascii_digits_only(client, as_user):
    headers = as_user("yaodu.doctor")
    _problem(client.get("/api/v1/empi/persons?name=王秀英&count=٣", headers=headers), 422, "count")


@pytest.mark.parametrize(("query", "name"), [
    (f"_offset={HUGE}", "_offset"), ("_offset=²", "_offset"), ("_count=¹⁰", "_count"), ("_count=٣", "_count"),
])
def test_search_numbers_are_ascii_digits_within_range(client, as_user, wang, query, name):
    headers = as_user("yaodu.doctor")
    _outcome(client.get(f"/fhir/Observation?{query}", headers=headers), 400, name)
    _outcome(client.get(f"/fhir/Observation?patient={wang}&{query}", headers=headers), 400, name)


def test_if_match_takes_ascii_digits_only(client, as_user, wang):
    headers = as_user("yaodu.doctor")
    stored = client.get("/fhir/Observation", headers=headers).get_json()["entry"][0]["resource"]
    for value in (f'W/"{HUGE}"', 'W/"١"'):
        response = client.put(f"/fhir/Observation/{stored['id']}", json=stored, headers={**headers, "If-Match": value})
        _outcome(response, 400)
    assert client.get(f"/fhir/Observation/{stored['id']}", headers=headers).get_json()["meta"]["versionId"] == "1"


# Dates


@pytest.mark.parametrize("when", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-12:00", "1799-12-31"])
def test_dates_at_the_edge_of_the_range_are_refused_on_create(client, app, as_user, wang, when):
    response = client.post("/fhir/Observation", json=clinical("Observation", wang, when=when),
                           headers=as_user("yaodu.doctor"))
    _outcome(response, 422, "Observation.effectiveDateTime")
    assert _rows(app, "fhir_resources") == 2


@pytest.mark.parametrize(("query", "name"), [
    ("Observation?date=9999-12-31T23:59:59.999999", "date"), ("Observation?date=gt9999-12-31", "date"),
    ("Observation?date=lt0001-01-01T00:00:00%2B14:00", "date"), ("Patient?birthdate=9999-12-31", "birthdate"),
    ("Observation?_lastUpdated=le9999", "_lastUpdated"), ("Observation?date=٢٠٢٦", "date"),
])
def test_dates_at_the_edge_of_the_range_are_refused_in_search(client, as_user, wang, query, name):
    _outcome(client.get(f"/fhir/{query}", headers=as_user("yaodu.doctor")), 400, name)


@pytest.mark.parametrize("query", ["since=0001-01-01T00:00:00%2B14:00", "until=9999-12-31T23:59:59-12:00"])
def test_audit_window_at_the_edge_of_the_range_is_refused(client, as_user, query):
    _problem(client.get(f"/api/v1/audit?{query}", headers=as_user("auditor")), 422, query.split("=")[0])


def test_dates_inside_the_range_still_search(client, as_user, wang):
    headers = as_user("yaodu.doctor")
    assert client.get("/fhir/Observation?date=lt9998-12-31T23:59:59%2B14:00", headers=headers).get_json()["total"] == 1
    assert client.get("/fhir/Observation?date=gt1000-01-01T00:00:00%2B14:00", headers=headers).get_json()["total"] == 1
    assert client.get("/fhir/Patient?birthdate=lt9998", headers=headers).get_json()["total"] == 1
    assert client.get("/api/v1/audit?since=9998-12-31T00:00:00Z", headers=as_user("auditor")).get_json() == []


# JSON depth


def _deep(levels: int) -> str:
    return '{"resourceType":"Observation","note":' + "[" * levels + "]" * levels + "}"


@pytest.mark.parametrize("url", ["/fhir/Observation", "/fhir", "/fhir/Patient/$match"])
def test_deep_json_is_refused_on_fhir(client, app, as_user, url):
    response = client.post(url, data=_deep(1000), headers={**as_user("yaodu.doctor"),
                                                            "Content-Type": "application/fhir+json"})
    assert str(MAX_JSON_DEPTH) in _outcome(response, 400)
    assert _rows(app, "fhir_resources") == 0


def test_deep_json_is_refused_on_the_rest_api(client, app, as_user):
    body = '{"mrn": "M1", "name": "王秀英", "address": ' + "[" * 1000 + "]" * 1000 + "}"
    response = client.post("/api/v1/patients", data=body, headers={**as_user("yaodu.doctor"),
                                                                    "Content-Type": "application/json"})
    assert str(MAX_JSON_DEPTH) in _problem(response, 400)["detail"]
    assert _rows(app, "patients") == 0


def test_json_depth_counts_containers_not_brackets_in_strings():
    assert json_depth(b'{"a": "[[[[{{{{", "b": [1, {"c": "\\"]]"}]}') == 3
    assert json_depth(b"[]") == 1 and json_depth(b'"x"') == 0
    assert json_depth(b'[["unterminated [[[') == 2 and json_depth(b'["\\"\\') == 1


# OR-lists and parameter counts


def test_or_lists_and_parameter_counts_are_capped(client, as_user, wang):
    headers = as_user("yaodu.doctor")
    codes = ",".join(f"http://loinc.org|{n}" for n in range(700))
    assert "100" in _outcome(client.get(f"/fhir/Observation?code={codes}", headers=headers), 400, "code")
    hundred = ",".join(["8480-6", *(str(n) for n in range(99))])
    assert client.get(f"/fhir/Observation?code={hundred}", headers=headers).get_json()["total"] == 1
    identifiers = ",".join(f"urn:x|{n}" for n in range(100))
    assert client.get(f"/fhir/Patient?identifier={identifiers}", headers=headers).status_code == 200
    many = "&".join(["status=final"] * 31)
    _outcome(client.get(f"/fhir/Observation?{many}", headers=headers), 400, "status")
    _outcome(client.get(f"/fhir/Observation?code={'x' * 201}", headers=headers), 400, "code")


# Strings


def test_a_huge_name_is_refused_before_the_empi_and_nothing_is_stored(client, app, as_user, platform_db):
    response = client.post("/fhir/Patient", json=patient(name="王" * 300_000), headers=as_user("yaodu.doctor"))
    assert "100" in _outcome(response, 422, "Patient.name[0].text")
    assert _rows(app, "patients") == 0 and _rows(app, "fhir_resources") == 0
    assert platform_db.execute(text("SELECT COUNT(*) FROM empi_records")).scalar() == 0


@pytest.mark.parametrize(("change", "expression"), [
    ({"name": [{"family": "欧阳" * 30, "given": ["娜" * 50]}]}, "Patient.name[0]"),
    ({"address": [{"line": ["东关村" * 101]}]}, "Patient.address[0].line[0]"),
    ({"identifier": [{"system": "urn:hie:mrn:YAODU-CH", "value": "M" * 65}]}, "Patient.identifier[0].value"),
    ({"gender": "female", "maritalStatus": {"text": "x" * 4097}}, "Patient.maritalStatus.text"),
])
def test_patient_strings_are_bounded_by_element(client, app, as_user, change, expression):
    response = client.post("/fhir/Patient", json={**patient(), **change}, headers=as_user("yaodu.doctor"))
    _outcome(response, 422, expression)
    assert _rows(app, "patients") == 0


def test_overlong_demographics_are_named_for_matching():
    assert overlong_demographic({"name": "王" * 101, "sex": "F", "address": None}) == "name"
    assert overlong_demographic({"name": "王" * 100, "address": "村" * 300, "phone": "1" * 20}) is None


def test_clinical_strings_are_bounded_and_long_text_has_room(client, app, as_user, wang):
    headers = as_user("yaodu.doctor")
    noted = {**clinical("Observation", wang), "note": [{"text": "血压" * 10_000}]}
    assert client.post("/fhir/Observation", json=noted, headers=headers).status_code == 201
    coded = clinical("Observation", wang)
    coded["code"]["text"] = "x" * 4097
    _outcome(client.post("/fhir/Observation", json=coded, headers=headers), 422, "Observation.code.text")
    condition = clinical("Condition", wang)
    condition["clinicalStatus"]["coding"][0]["code"] = "a" * 33
    _outcome(client.post("/fhir/Condition", json=condition, headers=headers), 422,
             "Condition.clinicalStatus.coding[0].code")
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": coded, "request": {"method": "POST", "url": "Observation"}}]}
    _outcome(client.post("/fhir", json=bundle, headers=headers), 422, "Bundle.entry[0].resource.code.text")
    assert _rows(app, "fhir_resources") == 3


def test_capability_statement_documents_the_limits(client):
    documentation = client.get("/fhir/metadata").get_json()["rest"][0]["documentation"]
    for fact in ("4096 characters", "div 65536", "data only the body size", "name.text 100", "415",
                 f"{MAX_JSON_DEPTH} levels", "100 comma-separated values", "1800 to 2199", "1000 to 9998"):
        assert fact in documentation, fact


# Accepted but wrong


@pytest.mark.parametrize("body", [{"resourceType": "Patient"},
                                  {"resourceType": "Patient", "name": [{"use": "official"}], "gender": "male"},
                                  {"resourceType": "Patient", "identifier": [{"system": "urn:x"}]}])
def test_a_patient_names_someone(client, app, as_user, body):
    _outcome(client.post("/fhir/Patient", json=body, headers=as_user("yaodu.doctor")), 422, "Patient.name")
    assert _rows(app, "patients") == 0 and _rows(app, "fhir_resources") == 0


@pytest.mark.parametrize("birth", ["2999-01-01", (date.today() + timedelta(days=40)).isoformat()])
def test_future_birth_dates_are_refused(client, app, as_user, birth):
    body = {**patient(), "birthDate": birth}
    _outcome(client.post("/fhir/Patient", json=body, headers=as_user("yaodu.doctor")), 422, "Patient.birthDate")
    rest = client.post("/api/v1/patients", json={"mrn": "M1", "name": "王秀英", "birth_date": birth},
                       headers=as_user("yaodu.doctor"))
    _problem(rest, 422, "birth_date")
    assert _rows(app, "patients") == 0


@pytest.mark.parametrize("content_type", ["text/plain", None, "application/x-www-form-urlencoded"])
def test_bodies_must_be_declared_json(client, app, as_user, content_type):
    headers = {**as_user("yaodu.doctor"), **({"Content-Type": content_type} if content_type else {})}
    _outcome(client.post("/fhir/Patient", data=json.dumps(patient()), headers=headers), 415)
    _outcome(client.post("/fhir", data=json.dumps({"resourceType": "Bundle", "type": "batch"}), headers=headers), 415)
    rest = client.post("/api/v1/patients", data=json.dumps({"mrn": "M1", "name": "王秀英"}), headers=headers)
    _problem(rest, 415)
    assert _rows(app, "patients") == 0 and _rows(app, "fhir_resources") == 0
    fhir_json = {**headers, "Content-Type": "application/fhir+json"}
    assert client.post("/fhir/Patient", data=json.dumps(patient()), headers=fhir_json).status_code == 201


def test_register_identifiers_take_ascii_digits_only(client, app, as_user):
    body = {"mrn": "M1", "name": "王秀英", "id_number": "١٤١٠٠٢١٩٥٨٠٣١٢٠٠٢" + "0"}
    _problem(client.post("/api/v1/patients", json=body, headers=as_user("yaodu.doctor")), 422, "id_number")
    fhir = client.post("/fhir/Patient", json=patient(id_number=body["id_number"]), headers=as_user("yaodu.doctor"))
    _outcome(fhir, 422, "Patient.identifier[0].value")
    assert _rows(app, "patients") == 0


# Logs


def test_log_records_stay_on_one_line():
    from hie.platform.logs import OneLineFormatter

    formatter = OneLineFormatter("%(levelname)s %(message)s")
    record = logging.LogRecord("hie", logging.WARNING, __file__, 1, "path %s", ("abc\n127.0.0.1 FAKE\r\x00\u2028",),
                               None)
    assert formatter.format(record) == "WARNING path abc\\x0a127.0.0.1 FAKE\\x0d\\x00\\u2028"
    try:
        raise ValueError("bad\n2026-11-30 INFO forged\x1b[2J")
    except ValueError:
        record = logging.LogRecord("hie", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    lines = formatter.format(record).split("\n")
    assert lines[0] == "ERROR failed" and all(line.startswith("  ") for line in lines[1:])
    assert "  2026-11-30 INFO forged\\x1b[2J" in lines


def test_access_log_lines_escape_control_characters(tmp_path: Path):
    from gunicorn.config import Config

    from hie.platform.serve import ACCESS_LOG_FORMAT, OneLineLogger

    config = Config()
    config.set("accesslog", str(tmp_path / "access.log"))
    config.set("access_log_format", ACCESS_LOG_FORMAT)
    config.set("errorlog", str(tmp_path / "error.log"))
    logger = OneLineLogger(config)
    environ = {"REQUEST_METHOD": "GET", "RAW_URI": "/fhir/Observation/abc%0a1", "SERVER_PROTOCOL": "HTTP/1.1",
               "PATH_INFO": "/fhir/Observation/abc\n127.0.0.1 FAKE LOG LINE\x00", "REMOTE_ADDR": "10.0.0.1"}
    response = SimpleNamespace(status="401 UNAUTHORIZED", sent=12, headers=[("X-Request-Id", "req-42")])
    logger.access(response, SimpleNamespace(headers=[]), environ, timedelta(0))
    logger.error("Invalid request line %r\n%s", "x", "127.0.0.1 FORGED\r")
    for handler in (*logger.access_log.handlers, *logger.error_log.handlers):
        handler.flush()
    lines = (tmp_path / "access.log").read_text().splitlines()
    assert len(lines) == 1 and "/fhir/Observation/abc\\x0a127.0.0.1 FAKE LOG LINE\\x00" in lines[0]
    assert "rid=req-42" in lines[0]
    errors = (tmp_path / "error.log").read_text().splitlines()
    assert len(errors) == 1 and errors[0].endswith("Invalid request line 'x'\\x0a127.0.0.1 FORGED\\x0d")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_served_access_log_cannot_be_forged(app, home: Path, tmp_path: Path):
    port = _free_port()
    env = {**os.environ, **hie_environ(home), "XDG_RUNTIME_DIR": str(tmp_path), "HOME": str(tmp_path)}
    log = (tmp_path / "serve.log").open("wb")
    server = subprocess.Popen([sys.executable, "-m", "hie.platform.cli", "serve", "--bind", f"127.0.0.1:{port}",
                               "--workers", "1"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).close()
                break
            except OSError:
                assert server.poll() is None, (tmp_path / "serve.log").read_text()
                time.sleep(0.1)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(b"GET /fhir/Observation/abc%0a127.0.0.1%20FAKE%20LOG%20LINE%00 HTTP/1.1\r\n"
                         b"Host: x\r\nConnection: close\r\n\r\n")
            while conn.recv(65536):
                pass
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    output = (tmp_path / "serve.log").read_text(errors="replace")
    assert "\x00" not in output
    assert not any(line.startswith("127.0.0.1 FAKE") for line in output.splitlines()), output
    assert "/fhir/Observation/abc\\x0a127.0.0.1 FAKE LOG LINE\\x00" in output, output


# Numbers parsed outside the search parser, and $match's demographics


def test_match_with_a_huge_name_is_refused_before_matching(client, as_user, platform_db):
    headers = {**as_user("yaodu.doctor"), "Content-Type": "application/fhir+json"}
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "resource", "resource": {"resourceType": "Patient", "name": [{"text": "王" * 200_000}]}}]}
    response = client.post("/fhir/Patient/$match", data=json.dumps(body), headers=headers)
    assert "name" in _outcome(response, 400, "Patient")
    events = platform_db.execute(text("SELECT COUNT(*) FROM audit_events WHERE action = 'match'")).scalar()
    assert events == 0


@pytest.mark.parametrize("days", ["٣", "³", "0", "366", HUGE])
def test_prior_results_days_take_ascii_digits_within_range(client, as_user, wang, days):
    url = f"/fhir/{wang}/$prior-results?code=http://loinc.org|8480-6&days={days}"
    _outcome(client.get(url, headers=as_user("yaodu.doctor")), 400, "days")


def test_bundle_if_match_takes_ascii_digits_only(client, as_user, wang):
    headers = as_user("yaodu.doctor")
    stored = client.get("/fhir/Observation", headers=headers).get_json()["entry"][0]["resource"]
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [{
        "resource": {**stored, "status": "amended"},
        "request": {"method": "PUT", "url": f"Observation/{stored['id']}", "ifMatch": 'W/"١"'}}]}
    _outcome(client.post("/fhir", json=bundle, headers=headers), 400, "Bundle.entry[0].request.ifMatch")
    assert client.get(f"/fhir/Observation/{stored['id']}", headers=headers).get_json()["status"] == stored["status"]


def test_register_if_match_takes_ascii_digits_only(client, as_user):
    headers = as_user("yaodu.doctor")
    registered = new_patient(client, headers)
    response = client.patch(f"/api/v1/patients/{registered['id']}", json={"phone": "13800000000"},
                            headers={**headers, "If-Match": "١"})
    _problem(response, 400)
    assert client.get(f"/api/v1/patients/{registered['id']}", headers=headers).get_json()["version"] == 1
