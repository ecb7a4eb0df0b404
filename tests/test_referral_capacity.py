"""Referral slots: publishing, booking on accept, no overbooking even under concurrency, release, suggestions, CLI."""

from __future__ import annotations

import threading
from datetime import date

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from hie.platform.audit.models import AuditEvent
from hie.platform.cli import main
from hie.platform.db import session_scope
from hie.referral.models import Referral, ReferralSlot, ReferralStatus, ReferralStep
from hie.tenants import services as tenancy
from hie.tenants.models import Institution, InstitutionLevel, RegionLevel
from tests.conftest import MYSQL_URL, hie_environ, new_patient

DEPT = "心内科"
DAY = "2030-01-15"
APPOINTMENT = "2030-01-15T09:00:00+08:00"


@pytest.fixture
def sender(client, as_user):
    """The township family doctor, one patient of theirs, and the city hospital's specialist."""
    fd, spec = as_user("yaodu.fd"), as_user("lfph.specialist")
    return {"fd": fd, "spec": spec, "patient": new_patient(client, fd, mrn="T1-001")}


def _refer(client, sender, department: str | None = DEPT) -> str:
    body = {"patient_id": sender["patient"]["id"], "direction": "up", "receiving_institution": "LF-PH",
            "department": department, "reason": "胸痛待查", "diagnoses": [{"code": "I20.0", "text": "不稳定型心绞痛"}]}
    response = client.post("/api/v1/referrals", json=body, headers=sender["fd"])
    assert response.status_code == 201, response.get_json()
    return response.get_json()["id"]


def _publish(client, headers, slots: list[dict], department: str = DEPT, **extra: object):
    return client.post("/api/v1/referral-slots", json={"department": department, "slots": slots, **extra},
                       headers=headers)


def _slot(platform_db, day: str = DAY, code: str = "LF-PH") -> tuple[int, int] | None:
    platform_db.rollback()
    row = platform_db.execute(select(ReferralSlot.capacity, ReferralSlot.booked)
                              .join(Institution, Institution.id == ReferralSlot.institution_id)
                              .where(Institution.code == code, ReferralSlot.department == DEPT,
                                     ReferralSlot.day == date.fromisoformat(day))).first()
    return tuple(row) if row else None


def _fields(response) -> set[str]:
    return {error["field"] for error in response.get_json().get("errors", [])}


def test_publishing_sets_slots_and_any_clinician_reads_the_free_counts(client, sender, as_user, platform_db):
    published = _publish(client, sender["spec"], [{"day": DAY, "capacity": 2}, {"day": "2030-01-16", "capacity": 1}])
    assert published.status_code == 200, published.get_json()
    assert [(r["institution"], r["day"], r["capacity"], r["free"]) for r in published.get_json()] == [
        ("LF-PH", DAY, 2, 2), ("LF-PH", "2030-01-16", 1, 1)]
    assert _publish(client, sender["spec"], [{"day": DAY, "capacity": 4}]).status_code == 200  # sets, not adds
    seen = client.get(f"/api/v1/referral-slots?institution=LF-PH&department={DEPT}&from={DAY}&to=2030-01-16",
                      headers=as_user("quwo.doctor"))  # another tenant's clinician: capacity is not patient data
    assert [(r["day"], r["capacity"], r["booked"], r["free"]) for r in seen.get_json()] == [
        (DAY, 4, 0, 4), ("2030-01-16", 1, 0, 1)]
    assert client.get(f"/api/v1/referral-slots?from={DAY}&to={DAY}", headers=sender["fd"]).get_json()[0]["free"] == 4
    assert client.get("/api/v1/referral-slots", headers=as_user("healthadmin")).status_code == 403
    assert _slot(platform_db) == (4, 0)


def test_accept_books_a_slot_and_an_overbooked_day_is_409_naming_the_day_changing_nothing(client, sender,
                                                                                          platform_db):
    _publish(client, sender["spec"], [{"day": DAY, "capacity": 1}])
    first, second = _refer(client, sender), _refer(client, sender)
    accepted = client.post(f"/api/v1/referrals/{first}/accept", json={"appointment_at": APPOINTMENT},
                           headers=sender["spec"])
    assert accepted.status_code == 200 and _slot(platform_db) == (1, 1)

    refused = client.post(f"/api/v1/referrals/{second}/accept", json={"appointment_at": APPOINTMENT},
                          headers=sender["spec"])
    assert refused.status_code == 409 and DAY in refused.get_json()["detail"], refused.get_json()
    platform_db.rollback()
    assert platform_db.get(Referral, second).status is ReferralStatus.requested
    assert platform_db.get(Referral, second).appointment_at is None
    assert platform_db.scalar(select(func.count()).select_from(ReferralStep)
                              .where(ReferralStep.referral_id == second)) == 1
    assert _slot(platform_db) == (1, 1)
    assert platform_db.scalar(select(AuditEvent.detail).where(
        AuditEvent.resource_id == second, AuditEvent.outcome == "failure")) == f"accept refused: no free slot on {DAY}"

    # 23:30 UTC on the 15th is the 16th in Asia/Shanghai, a day without slots: accepted without booking
    other_day = client.post(f"/api/v1/referrals/{second}/accept", json={"appointment_at": "2030-01-15T23:30:00Z"},
                            headers=sender["spec"])
    assert other_day.status_code == 200 and _slot(platform_db, "2030-01-16") is None
    assert _slot(platform_db) == (1, 1)


def test_release_on_cancel_and_no_show_but_not_for_an_unanswered_referral(client, sender, platform_db):
    _publish(client, sender["spec"], [{"day": DAY, "capacity": 2}])
    cancelled, no_show, unanswered = _refer(client, sender), _refer(client, sender), _refer(client, sender)
    for referral_id in (cancelled, no_show):
        client.post(f"/api/v1/referrals/{referral_id}/accept", json={"appointment_at": APPOINTMENT},
                    headers=sender["spec"])
    assert _slot(platform_db) == (2, 2)
    assert client.post(f"/api/v1/referrals/{unanswered}/cancel", json={}, headers=sender["fd"]).status_code == 200
    assert _slot(platform_db) == (2, 2), "a referral never accepted held no slot"
    assert client.post(f"/api/v1/referrals/{cancelled}/cancel", json={}, headers=sender["fd"]).status_code == 200
    assert _slot(platform_db) == (2, 1)
    assert client.post(f"/api/v1/referrals/{no_show}/no-show", json={}, headers=sender["spec"]).status_code == 200
    assert _slot(platform_db) == (2, 0)


def test_a_new_day_counts_referrals_already_accepted_for_it(client, sender, platform_db):
    referral_id = _refer(client, sender)
    client.post(f"/api/v1/referrals/{referral_id}/accept", json={"appointment_at": APPOINTMENT},
                headers=sender["spec"])
    assert _publish(client, sender["spec"], [{"day": DAY, "capacity": 3}]).get_json()[0]["booked"] == 1
    below = _publish(client, sender["spec"], [{"day": DAY, "capacity": 0}])
    assert below.status_code == 422 and _fields(below) == {"slots[0].capacity"}
    client.post(f"/api/v1/referrals/{referral_id}/cancel", json={}, headers=sender["fd"])
    assert _slot(platform_db) == (3, 0)


def test_concurrent_accepts_never_overbook(app, client, sender, platform_db):
    _publish(client, sender["spec"], [{"day": DAY, "capacity": 3}])
    referrals = [_refer(client, sender) for _ in range(8)]
    answers: list[int] = []

    def _accept(caller, referral_id: str) -> int:  # noqa: ANN001
        return caller.post(f"/api/v1/referrals/{referral_id}/accept", json={"appointment_at": APPOINTMENT},
                           headers=sender["spec"]).status_code

    def accept(referral_id: str, start: threading.Barrier) -> None:
        with app.test_client() as own:  # a thread of its own: its own request context
            start.wait()
            answers.append(_accept(own, referral_id))

    if MYSQL_URL:  # real concurrency on MariaDB; SQLite serialises writers, so there the accepts run in turn
        start = threading.Barrier(len(referrals))
        threads = [threading.Thread(target=accept, args=(rid, start)) for rid in referrals]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    else:
        answers.extend(_accept(client, referral_id) for referral_id in referrals)
    assert sorted(answers) == [200] * 3 + [409] * 5
    assert _slot(platform_db) == (3, 3)
    assert platform_db.scalar(select(func.count()).select_from(Referral)
                              .where(Referral.status == ReferralStatus.accepted)) == 3


@pytest.fixture
def far_hospital(app):
    """A tertiary hospital in another city, and a second township centre in the sender's county."""
    with session_scope(app.extensions["hie.engines"].platform) as session:
        tenancy.ensure_region(session, "140100", "太原市", RegionLevel.city, None)
        linfen = session.scalar(select(Institution.tenant_id).where(Institution.code == "LF-PH"))
        session.add(Institution(code="TY-H", name="太原市人民医院", tenant_id=linfen, region_code="140100",
                                level=InstitutionLevel.tertiary_hospital))  # a region outside any tenant's, as-is
        session.flush()
        tenancy.add_institution(session, "YAODU-T2", "县底镇卫生院", "yaodu", "township_health_centre")
        ids = dict(session.execute(select(Institution.code, Institution.id)).all())
        for code, department, capacity, booked in (("YAODU-CH", DEPT, 2, 1), ("LF-PH", DEPT, 5, 0),
                                                   ("QUWO-CH", DEPT, 9, 0), ("TY-H", DEPT, 20, 0),
                                                   ("YAODU-T2", DEPT, 30, 0), ("LF-PH", "骨科", 40, 0)):
            session.add(ReferralSlot(institution_id=ids[code], department=department, day=date(2030, 1, 15),
                                     capacity=capacity, booked=booked))


def test_suggestions_same_county_first_then_city_then_free_slots(client, sender, far_hospital, as_user):
    window = "from=2030-01-14&to=2030-01-20"
    up = client.get(f"/api/v1/referrals/suggestions?direction=up&department={DEPT}&{window}"
                    f"&patient_id={sender['patient']['id']}", headers=sender["fd"])
    assert up.status_code == 200, up.get_json()
    assert [(s["institution"], s["same_county"], s["same_city"], s["free"]) for s in up.get_json()] == [
        ("YAODU-CH", True, True, 1), ("QUWO-CH", False, True, 9), ("LF-PH", False, True, 5),
        ("TY-H", False, False, 20)]
    down = client.get(f"/api/v1/referrals/suggestions?direction=down&department={DEPT}&{window}",
                      headers=sender["spec"])
    assert [s["institution"] for s in down.get_json()] == ["YAODU-T2", "QUWO-CH", "YAODU-CH"]
    outside = client.get(f"/api/v1/referrals/suggestions?direction=up&department={DEPT}&from=2030-02-01",
                         headers=sender["fd"])
    assert outside.get_json() == []


def test_another_institutions_slots_are_refused_and_nothing_changes(client, sender, as_user, platform_db):
    for headers, code in ((sender["spec"], "YAODU-CH"), (as_user("quwo.doctor"), "LF-PH")):
        response = _publish(client, headers, [{"day": DAY, "capacity": 5}], institution=code)
        assert response.status_code == 404, response.get_json()
    assert client.post("/api/v1/referral-slots", json={"department": DEPT, "slots": [{"day": DAY, "capacity": 1}]},
                       headers=as_user("healthadmin")).status_code == 403
    platform_db.rollback()
    assert platform_db.scalar(select(func.count()).select_from(ReferralSlot)) == 0


@pytest.mark.parametrize(("body", "field"), [
    ({"slots": [{"day": DAY, "capacity": 1}]}, "department"),
    ({"department": " ", "slots": [{"day": DAY, "capacity": 1}]}, "department"),
    ({"department": DEPT, "slots": []}, "slots"),
    ({"department": DEPT, "slots": [{"day": DAY, "capacity": -1}]}, "slots[0].capacity"),
    ({"department": DEPT, "slots": [{"day": DAY, "capacity": "2"}]}, "slots[0].capacity"),
    ({"department": DEPT, "slots": [{"day": "2030-13-01", "capacity": 1}]}, "slots[0].day"),
    ({"department": DEPT, "slots": [{"day": "0001-01-01", "capacity": 1}]}, "slots[0].day"),  # overflowed: 500
    ({"department": DEPT, "slots": [{"day": "9999-12-31", "capacity": 1}]}, "slots[0].day"),
    ({"department": DEPT, "slots": [{"day": DAY, "capacity": 1}, {"day": DAY, "capacity": 2}]}, "slots[1].day"),
])
def test_malformed_slots_are_422_naming_the_field_and_change_nothing(client, sender, platform_db, body, field):
    response = client.post("/api/v1/referral-slots", json=body, headers=sender["spec"])
    assert response.status_code == 422 and field in _fields(response), response.get_json()
    platform_db.rollback()
    assert platform_db.scalar(select(func.count()).select_from(ReferralSlot)) == 0


@pytest.mark.parametrize(("url", "field"), [
    ("/api/v1/referral-slots?from=2030-01-20&to=2030-01-10", "to"),
    ("/api/v1/referral-slots?from=2030-01-01&to=2030-12-31", "to"),
    ("/api/v1/referral-slots?from=yesterday", "from"),
    ("/api/v1/referral-slots?from=0001-01-01&to=0001-01-02", "from"),
    ("/api/v1/referral-slots?from=9999-12-30&to=9999-12-31", "to"),
    ("/api/v1/referral-slots?institution=NOPE", "institution"),
    ("/api/v1/referrals/suggestions?direction=sideways&department=x", "direction"),
    ("/api/v1/referrals/suggestions?direction=up", "department"),
])
def test_malformed_queries_are_422_naming_the_field(client, sender, url, field):
    response = client.get(url, headers=sender["fd"])
    assert response.status_code == 422 and field in _fields(response), response.get_json()


def test_suggestions_for_a_patient_of_another_institution_are_refused(client, sender, as_user):
    other = new_patient(client, as_user("quwo.doctor"), mrn="Q-1", name="赵六")
    response = client.get(f"/api/v1/referrals/suggestions?direction=up&department={DEPT}&patient_id={other['id']}",
                          headers=sender["fd"])
    assert response.status_code == 422 and _fields(response) == {"patient_id"}


def _cli(home, tmp_path, text: str):
    path = tmp_path / "slots.csv"
    path.write_text(text, encoding="utf-8")
    return CliRunner().invoke(main, ["referrals", "slots", str(path)], env=hie_environ(home))


def test_cli_sets_slots_from_a_csv(home, client, tmp_path, platform_db):
    result = _cli(home, tmp_path, f"institution_code,department,day,capacity\nLF-PH,{DEPT},{DAY},6\n"
                                  f"LF-PH,{DEPT},2030-01-16,0\nYAODU-CH,{DEPT},{DAY},2\n")
    assert result.exit_code == 0, result.output
    assert "3 referral slot day(s) set" in result.output
    assert _slot(platform_db) == (6, 0) and _slot(platform_db, "2030-01-16") == (0, 0)
    assert _slot(platform_db, code="YAODU-CH") == (2, 0)
    assert _cli(home, tmp_path, f"institution_code,department,day,capacity\nLF-PH,{DEPT},{DAY},8\n").exit_code == 0
    assert _slot(platform_db) == (8, 0)


def test_cli_refuses_a_bad_file_naming_each_line_and_imports_nothing(home, client, tmp_path, platform_db):
    result = _cli(home, tmp_path, f"institution_code,department,day,capacity\nLF-PH,{DEPT},{DAY},6\n"
                                  f"NOPE,{DEPT},{DAY},1\nLF-PH,{DEPT},2030-02-30,1\nLF-PH,{DEPT},2030-01-17,many\n"
                                  f"LF-HC,{DEPT},{DAY},1\nLF-PH,{DEPT}\n")
    assert result.exit_code != 0
    for line, words in ((3, "'NOPE'"), (4, "'2030-02-30'"), (5, "'many'"), (6, "'LF-HC'"), (7, "columns")):
        assert f"line {line}: " in result.output and words in result.output, result.output
    assert "line 2" not in result.output and "nothing imported" in result.output
    platform_db.rollback()
    assert platform_db.scalar(select(func.count()).select_from(ReferralSlot)) == 0
    header = _cli(home, tmp_path, "code,dept,day,capacity\n")
    assert header.exit_code != 0 and "line 1: the header must be" in header.output
