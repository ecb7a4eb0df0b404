"""Teleteaching: a session from announcement to credit and recording, refusals (audited, nothing changed), the credit
rule at its boundary, and the administrators' figures in their own scope."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from hie.consult import teaching
from hie.consult.models import TeachingInvite, TeachingRegistration, TeachingSession
from hie.platform.audit.models import AuditEvent
from hie.platform.auth import accounts
from hie.platform.auth.models import Role
from hie.platform.db import session_scope
from tests.conftest import PASSWORD, login

T0 = datetime(2030, 3, 10, 1, 0, tzinfo=UTC)  # 09:00 in Shanghai
START = T0 + timedelta(days=1)
END = START + timedelta(hours=2)
URL = "/api/v1/teaching/sessions"
VIDEO = "https://video.example.org/rooms/"
WINDOW = "since=2030-01-01T00:00:00%2B08:00&until=2030-12-01T00:00:00%2B08:00"


class Clock:
    """The teaching services' clock, moved by the test."""

    now = T0


@pytest.fixture
def clock(monkeypatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(teaching, "utcnow", lambda: clock.now)
    return clock


@pytest.fixture
def video(app, monkeypatch) -> None:
    monkeypatch.setitem(app.config["HIE"].extra, "HIE_VIDEO_BASE_URL", VIDEO)


def _body(**changes: object) -> dict:
    body = {"topic": "急性胸痛的早期识别与转诊", "starts_at": START.isoformat(), "ends_at": END.isoformat(),
            "credits": 1.0, "invited_institutions": ["YAODU-CH", "YAODU-T1"],
            "materials": [{"title": "课件", "url": "https://lfph.example.org/slides/chest-pain.pdf"}]}
    body.update(changes)
    return body


def _announce(client, as_user, **changes: object) -> dict:
    response = client.post(URL, json=_body(**changes), headers=as_user("lfph.specialist"))
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def _post(client, headers, path: str, status: int, body: dict | None = None) -> dict:
    response = client.post(path, json=body, headers=headers)
    assert response.status_code == status, response.get_json()
    return response.get_json()


def _events(platform_db, resource_id: str) -> list[tuple[str | None, str, str]]:
    platform_db.rollback()
    rows = platform_db.scalars(select(AuditEvent).where(AuditEvent.resource_id == resource_id)
                               .order_by(AuditEvent.seq))
    return [(e.username, e.action, e.outcome) for e in rows if e.resource_type == "TeachingSession"]


def _fields(response) -> list[str]:
    return [error["field"] for error in response.get_json()["errors"]]


def _registrations(platform_db) -> list[tuple]:
    platform_db.rollback()
    return platform_db.execute(select(TeachingRegistration.user_id, TeachingRegistration.joined_at,
                                      TeachingRegistration.left_at, TeachingRegistration.credits)
                               .order_by(TeachingRegistration.user_id)).all()


def test_a_session_from_announcement_to_credit_and_recording(client, as_user, platform_db, clock, video):
    host, doctor = as_user("lfph.specialist"), as_user("yaodu.doctor")
    shown = _announce(client, as_user)
    sid = shown["id"]
    assert (shown["topic"], shown["lecturer"], shown["host_institution"]["code"], shown["credits"]) == (
        "急性胸痛的早期识别与转诊", "lfph.specialist", "LF-PH", 1.0)
    assert [i["code"] for i in shown["invited_institutions"]] == ["YAODU-CH", "YAODU-T1"]
    assert shown["video_url"].startswith(VIDEO) and len(shown["video_url"]) >= len(VIDEO) + 32
    stored = platform_db.get(TeachingSession, sid)
    assert (stored.starts_at, stored.ends_at, stored.cancelled) == (START, END, False)
    assert shown["video_url"] == VIDEO + stored.video_room
    assert platform_db.scalar(select(func.count()).select_from(TeachingInvite)) == 2

    listed = client.get(f"{URL}?when=upcoming", headers=doctor)
    assert [s["id"] for s in listed.get_json()] == [sid]
    assert listed.get_json()[0]["video_url"] is None, "the room is for registrants"
    assert client.get(f"{URL}?when=past", headers=doctor).get_json() == []

    registered = _post(client, doctor, f"{URL}/{sid}/register", 201)
    assert registered["my_registration"]["username"] == "yaodu.doctor"
    assert registered["video_url"] == shown["video_url"] and registered["registrations"] == 1

    clock.now = START - timedelta(minutes=20)
    _post(client, doctor, f"{URL}/{sid}/attendance/join", 409)
    clock.now = START - timedelta(minutes=5)
    joined = _post(client, doctor, f"{URL}/{sid}/attendance/join", 200)
    assert (joined["joined_at"], joined["credits"]) == ((START - timedelta(minutes=5)).isoformat(), None)
    clock.now = END - timedelta(minutes=1)
    too_soon = client.patch(f"{URL}/{sid}", json={"recording_url": "https://video.example.org/rec/1.mp4"},
                            headers=host)
    assert too_soon.status_code == 409
    clock.now = END + timedelta(minutes=5)
    left = _post(client, doctor, f"{URL}/{sid}/attendance/leave", 200)
    assert (left["left_at"], left["credits"]) == ((END + timedelta(minutes=5)).isoformat(), 1.0)

    recorded = client.patch(f"{URL}/{sid}", json={"recording_url": "https://video.example.org/rec/1.mp4"},
                            headers=host)
    assert recorded.status_code == 200, recorded.get_json()
    assert recorded.get_json()["recording_url"] == "https://video.example.org/rec/1.mp4"
    assert [(r["username"], r["institution"], r["credits"]) for r in recorded.get_json()["registrants"]] == [
        ("yaodu.doctor", "YAODU-CH", 1.0)]
    read = client.get(f"{URL}/{sid}", headers=doctor).get_json()
    assert (read["recording_url"], read["registrants"]) == ("https://video.example.org/rec/1.mp4", [])

    mine = client.get("/api/v1/teaching/me", headers=doctor).get_json()
    assert [s["id"] for s in mine["registrations"]] == [sid]
    assert mine["credits_by_year"] == [{"year": 2030, "sessions": 1, "credited": 1, "credits": 1.0}]
    assert mine["total_credits"] == 1.0
    assert client.get("/api/v1/teaching/me?year=2029", headers=doctor).get_json()["total_credits"] == 0
    assert _events(platform_db, sid) == [
        ("lfph.specialist", "create", "success"), ("yaodu.doctor", "register", "success"),
        ("yaodu.doctor", "join", "failure"), ("yaodu.doctor", "join", "success"),
        ("lfph.specialist", "update", "failure"), ("yaodu.doctor", "leave", "success"),
        ("lfph.specialist", "update", "success"), ("yaodu.doctor", "read", "success")]


def test_without_a_video_service_there_is_no_link(client, as_user, clock):
    assert _announce(client, as_user)["video_url"] is None


def test_an_uninvited_institution_gets_404_everywhere_audited_and_nothing_changes(client, as_user, platform_db,
                                                                                   clock):
    sid = _announce(client, as_user)["id"]
    quwo = as_user("quwo.doctor")
    attempts = [client.get(f"{URL}/{sid}", headers=quwo),
                client.post(f"{URL}/{sid}/register", headers=quwo),
                client.delete(f"{URL}/{sid}/register", headers=quwo),
                client.post(f"{URL}/{sid}/attendance/join", headers=quwo),
                client.post(f"{URL}/{sid}/attendance/leave", headers=quwo),
                client.post(f"{URL}/{sid}/attendance", headers=quwo, json={
                    "username": "quwo.doctor", "joined_at": START.isoformat(), "left_at": END.isoformat()}),
                client.patch(f"{URL}/{sid}", json={"cancelled": True}, headers=quwo)]
    assert [r.status_code for r in attempts] == [404] * 7
    assert attempts[0].get_json()["detail"] == attempts[1].get_json()["detail"] == "No such teaching session."
    assert client.get(f"{URL}/{'0' * 8}-0000-0000-0000-{'0' * 12}", headers=quwo).status_code == 404
    assert client.get(URL, headers=quwo).get_json() == []
    assert _registrations(platform_db) == [] and platform_db.get(TeachingSession, sid).cancelled is False
    denied = [(u, a, o) for u, a, o in _events(platform_db, sid) if u == "quwo.doctor"]
    assert denied == [("quwo.doctor", action, "denied") for action in (
        "read", "register", "unregister", "join", "leave", "attendance", "update")]


def test_registration_once_not_after_the_end_and_withdrawn_only_before_the_start(client, as_user, platform_db,
                                                                                clock):
    sid = _announce(client, as_user)["id"]
    doctor, fd = as_user("yaodu.doctor"), as_user("yaodu.fd")
    _post(client, doctor, f"{URL}/{sid}/register", 201)
    twice = _post(client, doctor, f"{URL}/{sid}/register", 409)
    assert twice["detail"] == "You are already registered for this session."
    assert len(_registrations(platform_db)) == 1
    assert client.delete(f"{URL}/{sid}/register", headers=doctor).status_code == 204
    assert _registrations(platform_db) == []
    _post(client, doctor, f"{URL}/{sid}/register", 201)
    clock.now = START
    assert client.delete(f"{URL}/{sid}/register", headers=doctor).status_code == 409
    clock.now = END - timedelta(seconds=1)
    _post(client, fd, f"{URL}/{sid}/register", 201)  # late, but before the end
    clock.now = END
    assert _post(client, as_user("yaodu.nurse"), f"{URL}/{sid}/register", 409)["detail"] == \
        "The teaching session has ended."
    assert len(_registrations(platform_db)) == 2
    assert ("yaodu.nurse", "register", "failure") in _events(platform_db, sid)


def test_the_host_invites_and_cancels_before_the_start_only(client, as_user, platform_db, clock):
    host, doctor = as_user("lfph.specialist"), as_user("yaodu.doctor")
    sid = _announce(client, as_user)["id"]
    # the host's own staff may not register unless the host invited itself
    assert _post(client, host, f"{URL}/{sid}/register", 403)["detail"].startswith("Only clinicians of invited")
    assert client.patch(f"{URL}/{sid}", json={"cancelled": True}, headers=doctor).status_code == 403
    assert ("yaodu.doctor", "update", "denied") in _events(platform_db, sid)
    undo = client.patch(f"{URL}/{sid}", json={"cancelled": False}, headers=host)
    assert undo.status_code == 422 and _fields(undo) == ["cancelled"]
    clock.now = START
    assert client.patch(f"{URL}/{sid}", json={"cancelled": True}, headers=host).status_code == 409
    clock.now = T0
    cancelled = client.patch(f"{URL}/{sid}", json={"cancelled": True}, headers=host)
    assert (cancelled.status_code, cancelled.get_json()["cancelled"], cancelled.get_json()["video_url"]) == (
        200, True, None)
    assert _post(client, doctor, f"{URL}/{sid}/register", 409)["detail"] == "The teaching session is cancelled."
    assert _registrations(platform_db) == []


def test_a_session_may_be_given_by_another_clinician_of_the_host(client, as_user, clock):
    with_lecturer = _announce(client, as_user, lecturer="lfph.specialist", invited_institutions=["LF-PH"])
    assert with_lecturer["lecturer"] == "lfph.specialist"
    own = _post(client, as_user("lfph.specialist"), f"{URL}/{with_lecturer['id']}/register", 201)
    assert own["my_registration"]["institution"] == "LF-PH"


@pytest.mark.parametrize(("changes", "field"), [
    ({"materials": [{"title": "课件", "url": "ftp://lfph.example.org/slides.pdf"}]}, "materials[0].url"),
    ({"materials": [{"title": "", "url": "https://lfph.example.org/a.pdf"}]}, "materials[0].title"),
    ({"ends_at": START.isoformat()}, "ends_at"),
    ({"ends_at": (START - timedelta(minutes=1)).isoformat()}, "ends_at"),
    ({"ends_at": (START + timedelta(hours=8, seconds=1)).isoformat()}, "ends_at"),
    ({"starts_at": (T0 - timedelta(minutes=1)).isoformat()}, "starts_at"),
    ({"starts_at": "2030-03-11T09:00:00"}, "starts_at"),
    ({"credits": 10.5}, "credits"),
    ({"credits": -1}, "credits"),
    ({"topic": "   "}, "topic"),
    ({"invited_institutions": []}, "invited_institutions"),
    ({"invited_institutions": ["YAODU-CH", "NOWHERE"]}, "invited_institutions[1]"),
    ({"lecturer": "yaodu.doctor"}, "lecturer"),
    ({"lecturer": "healthadmin"}, "lecturer"),
])
def test_bad_bodies_are_refused_naming_the_field_and_nothing_is_stored(client, as_user, platform_db, clock,
                                                                      changes, field):
    response = client.post(URL, json=_body(**changes), headers=as_user("lfph.specialist"))
    assert response.status_code == 422, response.get_json()
    assert _fields(response) == [field]
    assert platform_db.scalar(select(func.count()).select_from(TeachingSession)) == 0
    assert platform_db.scalar(select(func.count()).select_from(TeachingInvite)) == 0


def test_bad_patches_are_refused_naming_the_field_and_change_nothing(client, as_user, platform_db, clock):
    host = as_user("lfph.specialist")
    sid = _announce(client, as_user)["id"]
    for body, field in (({"materials": [{"title": "x", "url": "javascript:alert(1)"}]}, "materials[0].url"),
                        ({"recording_url": "file:///etc/passwd"}, "recording_url"), ({}, "_schema")):
        response = client.patch(f"{URL}/{sid}", json=body, headers=host)
        assert response.status_code == 422 and _fields(response) == [field]
    platform_db.rollback()
    assert platform_db.get(TeachingSession, sid).materials == _body()["materials"]
    attendance = client.post(f"{URL}/{sid}/attendance", headers=host, json={
        "username": "yaodu.doctor", "joined_at": START.isoformat(), "left_at": END.isoformat()})
    assert attendance.status_code == 422 and _fields(attendance) == ["username"]


# The credit rule: attended time inside [start, end] >= 80% of the length (120 minutes: 96 minutes) earns it.
@pytest.mark.parametrize(("joined", "left", "credits"), [
    (timedelta(0), timedelta(minutes=96), 1.5),
    (timedelta(0), timedelta(minutes=96) - timedelta(seconds=1), 0.0),
    (timedelta(minutes=-15), timedelta(minutes=96), 1.5),
    (timedelta(minutes=-15), timedelta(minutes=95, seconds=59), 0.0),
    (timedelta(minutes=24), timedelta(minutes=135), 1.5),
    (timedelta(minutes=24, seconds=1), timedelta(minutes=135), 0.0),
])
def test_the_host_records_attendance_and_credit_is_given_at_80_percent(client, as_user, platform_db, clock,
                                                                      joined, left, credits):
    sid = _announce(client, as_user, credits=1.5)["id"]
    _post(client, as_user("yaodu.doctor"), f"{URL}/{sid}/register", 201)
    clock.now = END + timedelta(hours=1)
    body = {"username": "yaodu.doctor", "joined_at": (START + joined).isoformat(),
            "left_at": (START + left).isoformat()}
    recorded = _post(client, as_user("lfph.specialist"), f"{URL}/{sid}/attendance", 200, body)
    assert (recorded["username"], recorded["credits"]) == ("yaodu.doctor", credits)
    (row,) = _registrations(platform_db)
    assert (row.joined_at, row.left_at, row.credits) == (START + joined, START + left, credits)


@pytest.mark.parametrize(("join_after", "credits"), [(timedelta(minutes=24), 2.0),
                                                     (timedelta(minutes=24, seconds=1), 0.0)])
def test_a_registrant_leaving_computes_the_same_rule(client, as_user, clock, join_after, credits):
    sid = _announce(client, as_user, credits=2.0)["id"]
    doctor = as_user("yaodu.doctor")
    _post(client, doctor, f"{URL}/{sid}/register", 201)
    clock.now = START + join_after
    _post(client, doctor, f"{URL}/{sid}/attendance/join", 200)
    _post(client, doctor, f"{URL}/{sid}/attendance/join", 409)
    clock.now = END + timedelta(minutes=15, seconds=1)
    _post(client, doctor, f"{URL}/{sid}/attendance/leave", 409)
    clock.now = END + timedelta(minutes=15)
    assert _post(client, doctor, f"{URL}/{sid}/attendance/leave", 200)["credits"] == credits
    _post(client, doctor, f"{URL}/{sid}/attendance/leave", 409)


def test_the_host_may_not_record_attendance_outside_the_window_or_in_the_future(client, as_user, platform_db, clock):
    sid = _announce(client, as_user)["id"]
    _post(client, as_user("yaodu.doctor"), f"{URL}/{sid}/register", 201)
    host = as_user("lfph.specialist")
    clock.now = START + timedelta(hours=1)
    for joined, left, field in ((START - timedelta(minutes=16), START + timedelta(minutes=30), "joined_at"),
                                (START + timedelta(minutes=30), START + timedelta(minutes=30), "left_at"),
                                (START, START + timedelta(hours=1, seconds=1), "left_at")):
        response = client.post(f"{URL}/{sid}/attendance", headers=host, json={
            "username": "yaodu.doctor", "joined_at": joined.isoformat(), "left_at": left.isoformat()})
        assert response.status_code == 422 and _fields(response) == [field]
    (row,) = _registrations(platform_db)
    assert (row.joined_at, row.left_at, row.credits) == (None, None, None)


def _clinician(app, username: str, institution: str) -> None:
    with session_scope(app.extensions["hie.engines"].platform) as session, app.app_context():
        accounts.add_user(session, username, [Role.clinician], institution, PASSWORD)


@pytest.fixture
def taught(app, client, as_user, clock) -> dict:
    """Two LF-PH sessions in 2030: five 尧都 clinicians attend the first (four earn credit), two 曲沃 ones register."""
    for n in range(4):
        _clinician(app, f"yaodu.c{n}", "YAODU-CH")
    _clinician(app, "quwo.c0", "QUWO-CH")
    first = _announce(client, as_user, invited_institutions=["YAODU-CH", "QUWO-CH"])["id"]
    second = _announce(client, as_user, invited_institutions=["QUWO-CH"], credits=0.5)["id"]
    cancelled = _announce(client, as_user, invited_institutions=["YAODU-CH"])["id"]
    yaodu = ["yaodu.doctor", *(f"yaodu.c{n}" for n in range(4))]
    headers = {name: login(client, name) for name in [*yaodu, "quwo.doctor", "quwo.c0"]}
    for name in yaodu:
        _post(client, headers[name], f"{URL}/{first}/register", 201)
    _post(client, headers["yaodu.doctor"], f"{URL}/{cancelled}/register", 201)
    assert client.patch(f"{URL}/{cancelled}", json={"cancelled": True}, headers=as_user("lfph.specialist")) \
        .status_code == 200
    _post(client, headers["quwo.doctor"], f"{URL}/{first}/register", 201)
    _post(client, headers["quwo.c0"], f"{URL}/{second}/register", 201)
    clock.now = END + timedelta(hours=1)
    for n, name in enumerate(yaodu):
        left = END if n else START + timedelta(minutes=30)
        _post(client, as_user("lfph.specialist"), f"{URL}/{first}/attendance", 200, {
            "username": name, "joined_at": START.isoformat(), "left_at": left.isoformat()})
    return {"first": first, "second": second}


def _figures(client, headers, group_by: str = "institution") -> dict:
    response = client.get(f"/api/v1/stats/teaching?{WINDOW}&group_by={group_by}", headers=headers)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def _rows(body: dict) -> list[tuple]:
    return [(g.get("institution", g["county"]), g["sessions"], g["registrations"], g["attendances"], g["credited"],
             g["credits"], g["suppressed"]) for g in body["groups"]]


def test_the_city_administrator_sees_totals_by_institution_and_county_without_names(client, as_user, taught,
                                                                                   platform_db):
    body = _figures(client, as_user("healthadmin"))
    assert _rows(body) == [("LF-PH", 2, 0, 0, 0, 0.0, False),  # the cancelled session is not counted
                           ("YAODU-CH", 0, 5, 5, 4, 4.0, False),
                           ("QUWO-CH", 0, None, None, None, None, True)]
    assert {k: body["total"][k] for k in ("sessions", "registrations", "attendances", "credited", "credits")} == {
        "sessions": 2, "registrations": 7, "attendances": 5, "credited": 4, "credits": 4.0}
    assert _rows(_figures(client, as_user("healthadmin"), "county")) == [
        ("141000", 2, 0, 0, 0, 0.0, False), ("141002", 0, 5, 5, 4, 4.0, False),
        ("141021", 0, None, None, None, None, True)]
    text = client.get(f"/api/v1/stats/teaching?{WINDOW}", headers=as_user("healthadmin")).get_data(as_text=True)
    assert "yaodu.doctor" not in text and "急性胸痛" not in text
    platform_db.rollback()
    (event,) = platform_db.scalars(select(AuditEvent).where(AuditEvent.resource_type == "TeachingStatistics")
                                   .order_by(AuditEvent.seq.desc()).limit(1))
    assert (event.username, event.action, event.outcome) == ("healthadmin", "read", "success")


def test_county_and_institution_administrators_see_their_own_scope_only(app, client, as_user, taught):
    with session_scope(app.extensions["hie.engines"].platform) as session, app.app_context():
        accounts.add_user(session, "yaodu.healthadmin", [Role.health_admin], "YAODU-CH", PASSWORD)
    county = _figures(client, login(client, "yaodu.healthadmin"))
    assert _rows(county) == [("YAODU-CH", 0, 5, 5, 4, 4.0, False)]
    assert county["total"]["registrations"] == 5 and county["total"]["sessions"] == 0
    assert _rows(_figures(client, as_user("yaodu.itadmin"))) == [("YAODU-CH", 0, 5, 5, 4, 4.0, False)]
    assert _rows(_figures(client, as_user("quwo.admin"))) == [("QUWO-CH", 0, None, None, None, None, True)]


def test_the_figures_refuse_everyone_else_with_403_audited(client, as_user, platform_db, clock):
    for username in ("auditor", "yaodu.doctor", "steward"):
        response = client.get("/api/v1/stats/teaching?group_by=nonsense", headers=as_user(username))
        assert response.status_code == 403
        platform_db.rollback()
        (event,) = platform_db.scalars(select(AuditEvent).where(
            AuditEvent.request_id == response.headers["X-Request-Id"]))
        assert (event.username, event.action, event.outcome) == (username, "authorize", "denied")
    assert client.get("/api/v1/teaching/me", headers=as_user("healthadmin")).status_code == 403
    assert client.post(URL, json=_body(), headers=as_user("healthadmin")).status_code == 403
