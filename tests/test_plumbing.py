"""Probes, metrics, OpenAPI, problem+json, request ids, the outbox and its idempotent handlers."""

from __future__ import annotations

from sqlalchemy import select

from hie.patients.stats import InstitutionPatientCount
from hie.platform.jobs.models import HandledEvent, TenantOutboxEvent
from hie.platform.jobs.services import deliver, sweep
from hie.tenants.models import Tenant
from tests.conftest import MYSQL_URL, new_patient, shard_engine
from tests.test_access import run_jobs


def test_healthz_and_readyz(client, app):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    checks = ready.get_json()["checks"]
    assert {"platform", "tenant:linfen", "tenant:yaodu", "tenant:quwo"} <= set(checks)
    assert ("redis" in checks) == (app.extensions["hie.redis"] is not None)


def test_readyz_names_a_broken_tenant_while_others_keep_serving(client, platform_db, as_user, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    url = "mysql+pymysql://root@127.0.0.1:1/hie_down" if MYSQL_URL else f"sqlite:///{blocker}/t.db"
    platform_db.add(Tenant(code="downtown", name="宕机县", db_url=url))
    platform_db.commit()
    ready = client.get("/readyz")
    assert ready.status_code == 503
    body = ready.get_json()
    assert list(body["failed"]) == ["tenant:downtown"]
    assert body["checks"]["tenant:yaodu"] == "ok"
    assert new_patient(client, as_user("yaodu.doctor"))["tenant_code"] == "yaodu"


def test_metrics_count_requests(client):
    client.get("/healthz")
    text = client.get("/metrics").get_data(as_text=True)
    assert 'hie_http_requests_total{endpoint="/healthz",method="GET",status="200"}' in text
    assert "hie_http_request_seconds_bucket" in text


def test_openapi_and_swagger_ui(client):
    spec = client.get("/openapi.json").get_json()
    assert spec["openapi"].startswith("3.")
    assert "/api/v1/auth/token" in spec["paths"] and "/api/v1/patients/{patient_id}" in spec["paths"]
    assert spec["paths"]["/api/v1/patients"]["post"]["summary"].startswith("Register a local patient record")
    assert "bearerAuth" in spec["components"]["securitySchemes"]
    page = client.get("/docs")
    assert page.status_code == 200 and b"/docs/static/swagger-ui-bundle.js" in page.data
    assert client.get("/docs/static/swagger-ui-bundle.js").status_code == 200


def test_unknown_route_and_method_are_problem_json(client, as_user):
    response = client.get("/api/v1/nothing-here")
    assert response.status_code == 404 and response.content_type == "application/problem+json"
    assert response.get_json()["instance"] == "/api/v1/nothing-here"
    wrong = client.delete("/api/v1/patients", headers=as_user("yaodu.doctor"))
    assert wrong.status_code == 405 and wrong.content_type == "application/problem+json"


def test_request_id_is_echoed_or_made(client):
    assert client.get("/healthz", headers={"X-Request-Id": "abc-123"}).headers["X-Request-Id"] == "abc-123"
    made = client.get("/healthz", headers={"X-Request-Id": "bad id with spaces;"}).headers["X-Request-Id"]
    assert len(made) == 32 and " " not in made


def _count(platform_db, institution_id):
    platform_db.rollback()
    return platform_db.scalar(select(InstitutionPatientCount.patients).where(
        InstitutionPatientCount.institution_id == institution_id))


def test_outbox_event_is_committed_with_the_change_and_delivered_once(client, app, as_user, platform_db):
    patient = new_patient(client, as_user("yaodu.doctor"))
    run_jobs(app)
    with shard_engine(app, "yaodu").connect() as conn:
        event = conn.execute(select(TenantOutboxEvent)).one()
    assert event.topic == "patient.registered" and event.payload["patient_id"] == patient["id"]
    assert event.delivered_at is not None
    institution_id = event.payload["institution_id"]
    assert _count(platform_db, institution_id) == 1
    with app.app_context():
        assert deliver("yaodu", event.id) is True
        from sqlalchemy import update

        with shard_engine(app, "yaodu").begin() as conn:
            conn.execute(update(TenantOutboxEvent).values(delivered_at=None))
        deliver("yaodu", event.id)
    assert _count(platform_db, institution_id) == 1
    handled = platform_db.scalars(select(HandledEvent.handler)).all()
    assert handled == ["hie.patients.stats.count_registration"]


def test_rolled_back_request_leaves_no_event(client, app, as_user):
    new_patient(client, as_user("yaodu.doctor"))
    duplicate = client.post("/api/v1/patients", json={"mrn": "MRN-1", "name": "李四"},
                            headers=as_user("yaodu.doctor"))
    assert duplicate.status_code == 409
    with shard_engine(app, "yaodu").connect() as conn:
        assert len(conn.execute(select(TenantOutboxEvent)).all()) == 1


def test_sweep_delivers_events_left_undelivered(client, app, as_user, platform_db):
    from datetime import timedelta

    new_patient(client, as_user("yaodu.doctor"))
    from sqlalchemy import update

    with shard_engine(app, "yaodu").begin() as conn:
        conn.execute(update(TenantOutboxEvent).values(delivered_at=None))
    platform_db.query(HandledEvent).delete()
    platform_db.query(InstitutionPatientCount).delete()
    platform_db.commit()
    with app.app_context():
        assert sweep(["yaodu"], older_than=timedelta(0)) == 1
    run_jobs(app)
    assert platform_db.scalar(select(InstitutionPatientCount.patients)) == 1


def test_metrics_content_type_has_one_charset(client):
    response = client.get("/metrics")
    assert response.headers["Content-Type"].count("charset") == 1
    assert response.headers["Content-Type"].startswith("text/plain; version=")


def test_access_log_line_has_path_and_request_id_but_no_query_string():
    from datetime import timedelta
    from types import SimpleNamespace

    from gunicorn.config import Config
    from gunicorn.glogging import Logger, SafeAtoms

    from hie.platform.serve import ACCESS_LOG_FORMAT

    environ = {"REQUEST_METHOD": "GET", "RAW_URI": "/api/v1/patients?id_number=141002195803120029",
               "PATH_INFO": "/api/v1/patients", "QUERY_STRING": "id_number=141002195803120029",
               "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "10.0.0.1", "HTTP_REFERER": "/x?phone=13935712345"}
    response = SimpleNamespace(status="200 OK", sent=12, headers=[("X-Request-Id", "req-42")])
    atoms = Logger(Config()).atoms(response, SimpleNamespace(headers=[]), environ, timedelta(microseconds=1500))
    line = ACCESS_LOG_FORMAT % SafeAtoms(atoms)
    assert '"GET /api/v1/patients HTTP/1.1" 200' in line and "rid=req-42" in line
    assert "141002195803120029" not in line and "13935712345" not in line
