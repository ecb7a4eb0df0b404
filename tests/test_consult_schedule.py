"""Scheduling consultations: no consultant booked twice at once (also under concurrent accepts), reschedule, and
who sees a session in their list."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import func, select

from hie.consult.models import Consultation, ConsultStatus, Participant
from hie.platform.audit.models import AuditEvent
from hie.platform.auth import accounts
from hie.platform.auth.models import Role
from hie.platform.db import session_scope
from tests.conftest import MYSQL_URL, PASSWORD, add_resident
from tests.test_consult_flow import VIDEO, ask, give_opinion, make_loop, move, snapshot


@pytest.fixture
def loop(client, as_user):
    """The township patient at YAODU-T1 and the city hospital LF-PH."""
    return make_loop(client, as_user)


@pytest.fixture
def video(app, monkeypatch):
    """A configured video service."""
    monkeypatch.setitem(app.config["HIE"].extra, "HIE_VIDEO_BASE_URL", VIDEO)


@pytest.fixture
def cardiologist(app, client):
    """A second specialist at LF-PH."""
    with session_scope(app.extensions["hie.engines"].platform) as session, app.app_context():
        accounts.add_user(session, "lfph.cardio", [Role.specialist], "LF-PH", PASSWORD)
    return "lfph.cardio"


def _accept(client, loop: dict, at: str, minutes: int = 60, consultants: list[str] | None = None):
    consultation = ask(client, loop)
    body = {"scheduled_at": at, "duration_minutes": minutes, "consultants": consultants or ["lfph.specialist"]}
    return consultation["id"], client.post(f"/api/v1/consultations/{consultation['id']}/accept", json=body,
                                           headers=loop["spec"])


def test_a_consultant_booked_in_an_overlapping_session_is_refused_naming_them(client, loop, platform_db,
                                                                             cardiologist):
    first, response = _accept(client, loop, "2030-01-15T09:00:00+08:00", 60)
    assert response.status_code == 200
    second = ask(client, loop)
    before = snapshot(platform_db)
    body = {"scheduled_at": "2030-01-15T09:30:00+08:00", "duration_minutes": 30,
            "consultants": [cardiologist, "lfph.specialist"]}
    refused = client.post(f"/api/v1/consultations/{second['id']}/accept", json=body, headers=loop["spec"])
    assert refused.status_code == 409, refused.get_json()
    detail = refused.get_json()["detail"]
    assert "lfph.specialist (2030-01-15 01:00-02:00 UTC)" in detail and cardiologist not in detail
    assert snapshot(platform_db) == before
    event = platform_db.scalars(select(AuditEvent).where(AuditEvent.request_id == refused.headers["X-Request-Id"])
                                ).one()
    assert (event.outcome, event.detail) == ("failure", "accept refused: double booking")
    # an earlier session that overlaps its start, and one inside it, are refused too
    for at, minutes in (("2030-01-15T08:30:00+08:00", 60), ("2030-01-15T09:10:00+08:00", 10)):
        response = client.post(f"/api/v1/consultations/{second['id']}/accept", headers=loop["spec"],
                               json={"scheduled_at": at, "duration_minutes": minutes})
        assert response.status_code == 409, (at, response.get_json())
    # another consultant at the same time, or the same one right after, is fine
    assert move(client, loop["spec"], second["id"], "accept",
                {**body, "consultants": [cardiologist]})["status"] == "accepted"
    _third, adjacent = _accept(client, loop, "2030-01-15T10:00:00+08:00", 30)
    assert adjacent.status_code == 200, adjacent.get_json()
    _fourth, before_it = _accept(client, loop, "2030-01-15T08:00:00+08:00", 60)
    assert before_it.status_code == 200, before_it.get_json()


def test_a_session_that_ended_or_was_cancelled_frees_the_consultant(client, app, loop, platform_db, video):
    cancelled, response = _accept(client, loop, "2030-01-15T09:00:00+08:00")
    assert response.status_code == 200
    move(client, loop["fd"], cancelled, "cancel")
    done, response = _accept(client, loop, "2030-01-15T09:00:00+08:00")
    assert response.status_code == 200, response.get_json()
    move(client, loop["spec"], done, "start")
    _again, busy = _accept(client, loop, "2030-01-15T09:00:00+08:00")
    assert busy.status_code == 409  # in session: still busy
    give_opinion(app, platform_db, done)
    _later, free = _accept(client, loop, "2030-01-15T09:00:00+08:00")
    assert free.status_code == 200, free.get_json()


@pytest.mark.parametrize("mixed", [False, True])
def test_concurrent_accepts_cannot_double_book(app, client, loop, platform_db, cardiologist, mixed):
    """Six accepts at the same hour: all for one consultant, or for overlapping sets of two consultants."""
    teams = [["lfph.specialist"], [cardiologist], ["lfph.specialist", cardiologist]] * 2 if mixed \
        else [["lfph.specialist"]] * 6
    asked = [(ask(client, loop)["id"], team) for team in teams]
    answers: list[int] = []

    def _send(caller, consultation_id: str, team: list[str]) -> int:  # noqa: ANN001
        return caller.post(f"/api/v1/consultations/{consultation_id}/accept", headers=loop["spec"],
                           json={"scheduled_at": "2030-01-15T09:00:00+08:00", "duration_minutes": 60,
                                 "consultants": team}).status_code

    def accept(consultation_id: str, team: list[str], start: threading.Barrier) -> None:
        with app.test_client() as own:  # a thread of its own: its own request context
            start.wait()
            answers.append(_send(own, consultation_id, team))

    if MYSQL_URL:  # real concurrency on MariaDB; SQLite serialises writers, so there the accepts run in turn
        start = threading.Barrier(len(asked))
        threads = [threading.Thread(target=accept, args=(cid, team, start)) for cid, team in asked]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    else:
        answers.extend(_send(client, cid, team) for cid, team in asked)
    assert len(answers) == len(asked)  # none failed with an error (a deadlock would)
    platform_db.rollback()
    booked = platform_db.execute(select(Participant.user_id, func.count()).join(
        Consultation, Consultation.id == Participant.consultation_id).where(
        Participant.role == "consultant", Consultation.status == ConsultStatus.accepted)
        .group_by(Participant.user_id)).all()
    assert all(count == 1 for _user, count in booked), booked
    if mixed:
        assert set(answers) <= {200, 409} and answers.count(200) in (1, 2)
        assert len(booked) == 2 if answers.count(200) == 2 else len(booked) in (1, 2)
    else:
        assert sorted(answers) == [200] + [409] * 5 and len(booked) == 1


def test_reschedule_moves_the_session_under_the_same_rule(client, loop, platform_db, as_user, cardiologist):
    first, response = _accept(client, loop, "2030-01-15T09:00:00+08:00", 60)
    second, response = _accept(client, loop, "2030-01-15T11:00:00+08:00", 60)
    assert response.status_code == 200
    before = snapshot(platform_db)
    clash = client.post(f"/api/v1/consultations/{second}/reschedule", headers=loop["spec"],
                        json={"scheduled_at": "2030-01-15T09:30:00+08:00"})
    assert clash.status_code == 409 and "lfph.specialist" in clash.get_json()["detail"]
    assert snapshot(platform_db) == before
    moved = move(client, loop["spec"], second, "reschedule",
                 {"scheduled_at": "2030-01-15T09:30:00+08:00", "consultants": [cardiologist], "note": "换人"})
    assert moved["status"] == "accepted" and moved["schedule"]["scheduled_at"] == "2030-01-15T01:30:00+00:00"
    assert moved["schedule"]["duration_minutes"] == 60
    assert {(p["username"], p["role"]) for p in moved["participants"]} == {(cardiologist, "consultant"),
                                                                          ("yaodu.fd", "requester")}
    assert moved["steps"][-1]["note"] == ("rescheduled from 2030-01-15 03:00 to 2030-01-15 01:30 UTC (60 min); 换人")
    assert (moved["steps"][-1]["from_status"], moved["steps"][-1]["to_status"]) == ("accepted", "accepted")
    # its own old time never blocks it
    assert move(client, as_user(cardiologist), second, "reschedule",
                {"scheduled_at": "2030-01-15T10:00:00+08:00", "duration_minutes": 45})["status"] == "accepted"
    assert move(client, loop["fd"], second, "reschedule", {"scheduled_at": "2030-01-16T09:00:00+08:00"},
                status=403)["status"] == 403
    requested = ask(client, loop)
    refused = move(client, loop["spec"], requested["id"], "reschedule",
                   {"scheduled_at": "2030-01-16T09:00:00+08:00"}, status=409)
    assert "The consultation is requested" in refused["detail"]


def test_participants_see_their_sessions_and_nobody_else_does(app, client, loop, as_user, cardiologist):
    add_resident(app, "YAODU-T1", loop["township"]["id"])
    invited, response = _accept(client, loop, "2030-01-15T09:00:00+08:00", consultants=[cardiologist])
    assert response.status_code == 200
    accepted = client.post(f"/api/v1/consultations/{invited}/reschedule", headers=loop["spec"],
                           json={"scheduled_at": "2030-01-15T10:00:00+08:00"})
    assert accepted.status_code == 200
    other = ask(client, loop)
    move(client, loop["spec"], other["id"], "accept", {"scheduled_at": "2030-01-16T09:00:00+08:00",
                                                       "invite_patient": True})
    def mine(user: str) -> list[str]:
        response = client.get("/api/v1/consultations?participant=me", headers=as_user(user))
        assert response.status_code == 200, response.get_json()
        return sorted(c["id"] for c in response.get_json())

    assert mine(cardiologist) == [invited]
    assert mine("lfph.specialist") == [other["id"]]  # the named consultant, by default
    assert mine("yaodu.fd") == sorted([invited, other["id"]])
    assert mine("resident.wang") == [other["id"]]
    assert mine("yaodu.doctor") == [] and mine("quwo.doctor") == []
    resident = as_user("resident.wang")
    assert client.get(f"/api/v1/consultations/{other['id']}", headers=resident).status_code == 200
    assert client.get(f"/api/v1/consultations/{invited}", headers=resident).status_code == 404
    assert client.get("/api/v1/consultations?box=incoming", headers=resident).status_code == 403
    assert client.get("/api/v1/consultations?participant=me&status=accepted&kind=mdt",
                      headers=as_user("yaodu.fd")).get_json() == []
