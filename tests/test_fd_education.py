"""Health education: drafts and publishing by a tenant's public-health staff only, delivery by tags to contracted
residents (and to residents who sign later), read receipts, Markdown limits, and other tenants' ids."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from hie.family_doctor.models import Article, Delivery, TeamRole
from hie.platform.audit.models import AuditEvent
from hie.platform.auth.models import Role
from tests.conftest import add_resident, new_patient, valid_id
from tests.fhir_helpers import run_jobs
from tests.test_fd_portal import add_staff, add_team, sign

ARTICLES = "/api/v1/family-doctor/articles"
BODY = "# 控制血压\n\n每天测量血压，收缩压 <140 mmHg 为达标。详见 <https://www.nhc.gov.cn/>。\n\n- 少盐\n- 多运动\n"


@pytest.fixture
def county(app, client, as_user):
    """屯里镇's team with a public-health member; 王秀英 (hypertension, 65+) and 李建国 (diabetes) under contract;
    a quwo team whose public-health member is quwo.doctor."""
    add_staff(app, "yaodu.ph", Role.nurse, "YAODU-T1", "赵公卫")
    add_team(app, "YAODU-T1-A", "YAODU-T1", {"yaodu.fd": TeamRole.lead_doctor, "yaodu.ph": TeamRole.public_health})
    add_team(app, "QUWO-A", "QUWO-CH", {"quwo.doctor": TeamRole.public_health})
    fd = as_user("yaodu.fd")
    wang = new_patient(client, fd, mrn="T1-001")
    li = new_patient(client, fd, mrn="T1-002", name="李建国", sex="M", birth_date="1950-06-01",
                     id_number=valid_id("14100219500601003"), phone="13935700002", address="屯里镇西关村3号")
    add_resident(app, "YAODU-T1", wang["id"], "resident.wang")
    add_resident(app, "YAODU-T1", li["id"], "resident.li")
    sign(client, fd, wang["id"], ["basic", "hypertension"], ["elderly_65"])
    sign(client, fd, li["id"], ["basic", "diabetes"], [])
    return {"fd": fd, "ph": as_user("yaodu.ph"), "wang": wang, "li": li}


def _draft(client, headers: dict, title: str, tags: list[str], body: str = BODY) -> dict:
    response = client.post(ARTICLES, json={"title": title, "body": body, "tags": tags}, headers=headers)
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def _publish(client, headers: dict, article_id: int) -> dict:
    response = client.post(f"{ARTICLES}/{article_id}/publish", headers=headers)
    assert response.status_code == 200, response.get_json()
    run_jobs(client.application)
    return response.get_json()


def _reach(client, headers: dict) -> dict[str, tuple[str, int, int]]:
    rows = client.get(ARTICLES, headers=headers).get_json()
    return {row["title"]: (row["status"], row["delivered"], row["read"]) for row in rows}


def _fields(response) -> list[str]:
    return [error["field"] for error in response.get_json()["errors"]]


def _stored(platform_db) -> tuple:
    platform_db.rollback()
    return (platform_db.execute(select(Article.id, Article.published_at).order_by(Article.id)).all(),
            platform_db.scalar(select(func.count()).select_from(Delivery)))


def test_published_articles_reach_the_residents_whose_contracts_match_their_tags(client, county, as_user):
    ph = county["ph"]
    bp = _draft(client, ph, "高血压自我管理", ["hypertension"])
    assert (bp["status"], bp["delivered"], bp["author"], bp["body"]) == ("draft", 0, "赵公卫", BODY)
    sugar = _draft(client, ph, "糖尿病饮食", ["diabetes"])
    everyone = _draft(client, ph, "冬季防流感", [])
    elderly = _draft(client, ph, "老年人防跌倒", ["elderly_65"])
    maternal = _draft(client, ph, "孕期营养", ["pregnant"])
    assert _reach(client, ph)["孕期营养"] == ("draft", 0, 0)
    for article in (bp, sugar, everyone, elderly, maternal):
        assert _publish(client, ph, article["id"])["status"] == "published"
    assert _reach(client, ph) == {"高血压自我管理": ("published", 1, 0), "糖尿病饮食": ("published", 1, 0),
                                  "冬季防流感": ("published", 2, 0), "老年人防跌倒": ("published", 1, 0),
                                  "孕期营养": ("published", 0, 0)}
    mine = client.get("/api/v1/me/education", headers=as_user("resident.wang")).get_json()
    assert sorted(row["title"] for row in mine) == ["冬季防流感", "老年人防跌倒", "高血压自我管理"]
    assert all(row["read"] is False and row["read_at"] is None for row in mine)
    assert mine[0]["delivered_at"] >= mine[-1]["delivered_at"]
    assert sorted(r["title"] for r in client.get("/api/v1/me/education", headers=as_user("resident.li")).get_json()) \
        == ["冬季防流感", "糖尿病饮食"]
    assert client.get(f"{ARTICLES}?status=draft", headers=ph).get_json() == []
    assert client.get(f"{ARTICLES}/{bp['id']}", headers=county["fd"]).get_json()["delivered"] == 1


def test_read_receipts_are_counted_and_someone_elses_delivery_is_404(client, county, as_user, platform_db):
    ph, wang, li = county["ph"], as_user("resident.wang"), as_user("resident.li")
    article = _draft(client, ph, "冬季防流感", [])
    _publish(client, ph, article["id"])
    delivery = client.get("/api/v1/me/education", headers=wang).get_json()[0]
    theirs = client.get("/api/v1/me/education", headers=li).get_json()[0]
    response = client.post(f"/api/v1/me/education/{delivery['id']}/read", headers=wang)
    assert response.status_code == 200, response.get_json()
    first_read = response.get_json()["read_at"]
    assert response.get_json()["read"] is True and first_read is not None
    again = client.post(f"/api/v1/me/education/{delivery['id']}/read", headers=wang).get_json()
    assert again["read_at"] == first_read
    refused = client.post(f"/api/v1/me/education/{theirs['id']}/read", headers=wang)
    assert refused.status_code == 404
    platform_db.rollback()
    assert platform_db.get(Delivery, theirs["id"]).read_at is None
    events = platform_db.scalars(select(AuditEvent).where(AuditEvent.request_id == refused.headers["X-Request-Id"]))
    assert [(e.action, e.outcome, e.purpose, e.patient) for e in events] == [
        ("update", "denied", "self", f"yaodu/{county['wang']['id']}")]
    assert client.post("/api/v1/me/education/999999/read", headers=wang).status_code == 404
    assert client.get(f"{ARTICLES}/{article['id']}", headers=ph).get_json()[("delivered")] == 2
    assert _reach(client, ph)["冬季防流感"] == ("published", 2, 1)


def test_articles_published_earlier_reach_a_resident_who_signs_later(app, client, county, as_user):
    ph = county["ph"]
    for title, tags in (("高血压自我管理", ["hypertension"]), ("糖尿病饮食", ["diabetes"]), ("冬季防流感", [])):
        _publish(client, ph, _draft(client, ph, title, tags)["id"])
    zhao = new_patient(client, county["fd"], mrn="T1-003", name="赵大山", sex="M", birth_date="1948-02-02",
                       id_number=valid_id("14100219480202005"), phone="13935700003", address="屯里镇南街5号")
    add_resident(app, "YAODU-T1", zhao["id"], "resident.zhao")
    assert client.get("/api/v1/me/education", headers=as_user("resident.zhao")).get_json() == []
    sign(client, county["fd"], zhao["id"], ["hypertension"], [])
    shown = client.get("/api/v1/me/education", headers=as_user("resident.zhao")).get_json()
    assert sorted(row["title"] for row in shown) == ["冬季防流感", "高血压自我管理"]
    assert _reach(client, ph)["冬季防流感"] == ("published", 3, 0)


def test_only_public_health_staff_write_and_publish_and_a_refusal_changes_nothing(client, county, as_user,
                                                                                 platform_db):
    article = _draft(client, county["ph"], "高血压自我管理", ["hypertension"])
    before = _stored(platform_db)
    for username in ("yaodu.fd", "yaodu.doctor"):
        response = client.post(f"{ARTICLES}/{article['id']}/publish", headers=as_user(username))
        assert response.status_code == 403, username
        assert client.post(ARTICLES, json={"title": "x", "body": "y"}, headers=as_user(username)).status_code == 403
    assert _stored(platform_db) == before
    platform_db.rollback()
    events = platform_db.scalars(select(AuditEvent).where(AuditEvent.request_id == response.headers["X-Request-Id"]))
    assert [(e.username, e.outcome) for e in events] == [("yaodu.doctor", "denied")]
    for username in ("resident.wang", "healthadmin"):
        assert client.get(ARTICLES, headers=as_user(username)).status_code == 403
        assert client.post(f"{ARTICLES}/{article['id']}/publish", headers=as_user(username)).status_code == 403
    _publish(client, county["ph"], article["id"])
    twice = client.post(f"{ARTICLES}/{article['id']}/publish", headers=county["ph"])
    assert twice.status_code == 409


def test_another_tenants_articles_are_404(client, county, as_user, platform_db):
    article = _draft(client, county["ph"], "高血压自我管理", ["hypertension"])
    quwo = as_user("quwo.doctor")
    own = _draft(client, quwo, "曲沃县健康讲座", [])
    for response in (client.get(f"{ARTICLES}/{article['id']}", headers=quwo),
                     client.post(f"{ARTICLES}/{article['id']}/publish", headers=quwo)):
        assert response.status_code == 404
        platform_db.rollback()
        events = platform_db.scalars(select(AuditEvent).where(
            AuditEvent.request_id == response.headers["X-Request-Id"]))
        assert [(e.username, e.outcome, e.resource_id) for e in events] == [
            ("quwo.doctor", "denied", str(article["id"]))]
    assert [row["title"] for row in client.get(ARTICLES, headers=quwo).get_json()] == ["曲沃县健康讲座"]
    assert [row["title"] for row in client.get(ARTICLES, headers=county["ph"]).get_json()] == ["高血压自我管理"]
    assert client.get(f"{ARTICLES}/{own['id']}", headers=county["ph"]).status_code == 404
    _publish(client, quwo, own["id"])
    assert client.get("/api/v1/me/education", headers=as_user("resident.wang")).get_json() == []
    platform_db.rollback()
    assert platform_db.get(Article, article["id"]).published_at is None


@pytest.mark.parametrize(("change", "field"), [
    ({"body": "x" * 20001}, "body"),
    ({"body": "欢迎\n<script>alert(1)</script>"}, "body"),
    ({"body": "点击 <img src=x onerror=alert(1)>"}, "body"),
    ({"body": "<!-- hidden -->"}, "body"),
    ({"body": "[点我](javascript:alert(1))"}, "body"),
    ({"body": "[点我](&#106;avascript:alert(1))"}, "body"),
    ({"body": "<javascript:alert(1)>"}, "body"),
    ({"body": "[a]: data:text/html;base64,PHNjcmlwdD4="}, "body"),
    ({"body": "   "}, "body"),
    ({"title": "x" * 201}, "title"),
    ({"title": "<b>通知</b>"}, "title"),
    ({"tags": ["hypertension", "cancer"]}, "tags[1]"),
    ({"tags": ["x"] * 21}, "tags"),
])
def test_bad_articles_are_refused_naming_the_field_and_nothing_is_stored(client, county, platform_db, change, field):
    body = {"title": "高血压自我管理", "body": BODY, "tags": ["hypertension"], **change}
    response = client.post(ARTICLES, json=body, headers=county["ph"])
    assert response.status_code == 422, response.get_json()
    assert _fields(response) == [field]
    assert _stored(platform_db) == ([], 0)


def test_markdown_with_safe_links_and_angle_brackets_in_text_is_kept_as_given(client, county):
    body = BODY + "\n[国家卫健委](https://www.nhc.gov.cn/ \"卫健委\") 电话 [12320](tel:12320) ![图](images/bp.png)\n" \
        + "a < b 且 3<5\n" + "字" * 19000
    article = _draft(client, county["ph"], "控制血压 <140/90", ["hypertension", "elderly_65"], body)
    assert client.get(f"{ARTICLES}/{article['id']}", headers=county["ph"]).get_json()["body"] == body
