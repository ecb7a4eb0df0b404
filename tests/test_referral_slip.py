"""The referral slip PDF: readable back, Chinese text intact, nothing cut or off the page, QR scannable."""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, date, datetime

import pypdf
import pypdfium2
import pytest
import zxingcpp
from flask.testing import FlaskClient
from reportlab.pdfbase.pdfmetrics import stringWidth
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from hie.platform.audit.models import AuditEvent
from hie.platform.care import CareRelationship
from hie.referral.slip import FONT, SlipContent, build_slip, qr_payload
from hie.tenants.models import Institution
from tests.conftest import new_patient

SUMMARY_LINE = "患者既往高血压病史十年，规律服用氨氯地平，近一周胸闷加重，活动后明显，休息可缓解。"

SLIP = SlipContent(
    referral_id="3f2a9c1e-5b7d-4e0a-9c61-2d8e4f7a1b35",
    patient_name="欧阳晓燕",
    sex="F",
    birth_date=date(1958, 3, 14),
    sender_institution="尧都区县底镇卫生院",
    sender_clinician="李建国",
    receiver_institution="临汾市中心医院",
    receiver_department="心血管内科",
    direction="up",
    urgency="urgent",
    reason="反复胸闷气短3月，加重1周，基层无法完成冠脉造影。",
    diagnoses=[("I20.0", "不稳定型心绞痛"), ("I10", "原发性高血压"), ("E11.9", "2型糖尿病")],
    clinical_summary="患者女，68岁。",
    appointment_at=datetime(2026, 12, 2, 1, 30, tzinfo=UTC),
    issued_at=datetime(2026, 11, 30, 8, 5, tzinfo=UTC),
)

# Lines every page carries besides the body: the footer, the page number, the header of a continued page.
_PAGE_FURNITURE = re.compile(r"^(开具时间：.*|第 \d+ 页|双向转诊单（续）.*)$", re.MULTILINE)


def _pages(pdf: bytes) -> list[str]:
    return [page.extract_text() for page in pypdf.PdfReader(io.BytesIO(pdf)).pages]


def _body(pdf: bytes) -> str:
    """The body text of all pages run together, without page furniture or line breaks."""
    return "".join(re.sub(r"\s", "", _PAGE_FURNITURE.sub("", text)) for text in _pages(pdf))


def test_slip_is_a_pdf_with_the_patient_the_referral_and_the_receiver() -> None:
    pdf = build_slip(SLIP)

    assert pdf.startswith(b"%PDF-")
    reader = pypdf.PdfReader(io.BytesIO(pdf))
    assert len(reader.pages) == 1
    assert reader.metadata.title == f"双向转诊单 {SLIP.referral_id}"
    text = reader.pages[0].extract_text()
    for expected in ("双向转诊单", "欧阳晓燕", SLIP.referral_id, "临汾市中心医院", "心血管内科", "尧都区县底镇卫生院",
                     "李建国", "I20.0", "I10", "E11.9", "不稳定型心绞痛", "反复胸闷气短3月", "患者女，68岁。"):
        assert expected in text
    assert re.search(r"性别\s*女", text)
    assert re.search(r"转诊方向\s*上转", text)
    assert re.search(r"紧急程度\s*紧急", text)
    assert re.search(r"出生日期\s*1958-03-14", text)


def test_times_are_printed_on_the_regions_clock() -> None:
    text = _pages(build_slip(SLIP))[0]

    assert re.search(r"预约时间\s*2026-12-02 09:30", text)
    assert "开具时间：2026-11-30 16:05" in text


def test_an_unbooked_appointment_and_an_unnamed_department_say_so() -> None:
    text = _pages(build_slip(replace(SLIP, appointment_at=None, receiver_department=None)))[0]

    assert re.search(r"预约时间\s*待预约", text)
    assert re.search(r"转入科室\s*未指定", text)


def test_a_long_summary_continues_on_the_next_page_in_full() -> None:
    summary = "\n".join(f"{n}. {SUMMARY_LINE}" for n in range(1, 81))
    pdf = build_slip(replace(SLIP, clinical_summary=summary))

    pages = _pages(pdf)
    assert len(pages) >= 2
    assert "双向转诊单（续）　患者：欧阳晓燕" in pages[1]
    assert all(f"转诊单号：{SLIP.referral_id}" in page for page in pages)
    assert re.sub(r"\s", "", summary) in _body(pdf)


def test_no_text_runs_off_the_page_even_for_unbroken_long_values() -> None:
    long_slip = replace(
        SLIP, referral_id="r" * 300, patient_name="欧阳" * 200, receiver_institution="临汾市" * 400,
        receiver_department="K" * 900, diagnoses=[("I10", "x" * 3000)], clinical_summary="A" * 4000,
    )
    pdf = build_slip(long_slip)

    reader = pypdf.PdfReader(io.BytesIO(pdf))
    outside: list[str] = []
    for page in reader.pages:
        width, height = float(page.mediabox.width), float(page.mediabox.height)

        def check(text: str, cm: list[float], tm: list[float], _font: object, size: float,
                  width: float = width, height: float = height) -> None:
            matrix = pypdf.mult(tm, cm)
            x, y, run = matrix[4], matrix[5], text.rstrip("\n")
            if run.strip() and (x < 0 or y < 0 or y > height or x + stringWidth(run, FONT, size * matrix[0]) > width):
                outside.append(run[:20])

        page.extract_text(visitor_text=check)
    assert outside == []
    body = _body(pdf)  # a table row split over two pages interleaves its cells, so count rather than find
    counts = {"r": 300, "欧阳": 200, "临汾市": 800, "K": 900, "x": 3000, "A": 4000}  # the receiver shows twice
    assert {value: body.count(value) for value in counts} == counts


def test_markup_and_control_characters_in_fields_print_as_text() -> None:
    text = _pages(build_slip(replace(SLIP, patient_name="张<b>伟</b>&amp;\x00\x07", reason="<para>急</para>")))[0]

    assert "张<b>伟</b>&amp;" in text
    assert "<para>急</para>" in text


def test_the_qr_code_scans_to_the_referral() -> None:
    pdf = build_slip(SLIP)

    image = pypdfium2.PdfDocument(pdf)[0].render(scale=2).to_pil()
    codes = zxingcpp.read_barcodes(image)
    assert [(code.format, code.text) for code in codes] == [
        (zxingcpp.BarcodeFormat.QRCode, "urn:hie:referral:3f2a9c1e-5b7d-4e0a-9c61-2d8e4f7a1b35")
    ]
    assert qr_payload(SLIP.referral_id) == codes[0].text


@pytest.mark.parametrize("referral_id", ["1", "b7e2c0d4-9a61-4f3e-8d25-6c1a0e9f7b42", "yaodu.0123456789abcdef"])
def test_each_referral_gets_its_own_qr_code(referral_id: str) -> None:
    image = pypdfium2.PdfDocument(build_slip(replace(SLIP, referral_id=referral_id)))[0].render(scale=2).to_pil()

    assert [code.text for code in zxingcpp.read_barcodes(image)] == [f"urn:hie:referral:{referral_id}"]


def test_the_same_content_gives_the_same_bytes() -> None:
    assert build_slip(SLIP) == build_slip(replace(SLIP))
    assert build_slip(SLIP) != build_slip(replace(SLIP, patient_name="欧阳晓"))


# --- GET /api/v1/referrals/<id>/slip ---

def _refer(client: FlaskClient, as_user: Callable[[str], dict[str, str]]) -> tuple[dict, dict]:
    """A patient of 尧都区人民医院 referred up to 临汾市人民医院, and the referral as created."""
    patient = new_patient(client, as_user("yaodu.doctor"))
    response = client.post("/api/v1/referrals", headers=as_user("yaodu.doctor"), json={
        "patient_id": patient["id"], "direction": "up", "urgency": "urgent", "receiving_institution": "LF-PH",
        "department": "心血管内科", "reason": "胸痛待查，需冠脉造影", "clinical_summary": SUMMARY_LINE,
        "diagnoses": [{"code": "I20.0", "text": "不稳定型心绞痛"}, {"code": "E11.9", "text": "2型糖尿病"}]})
    assert response.status_code == 201, response.get_json()
    return patient, response.get_json()


def _print_events(platform_db: Session, referral_id: str) -> list[tuple[str, str, str | None, str | None]]:
    platform_db.rollback()
    return [(e.username, e.outcome, e.patient, e.purpose) for e in platform_db.scalars(
        select(AuditEvent).where(AuditEvent.action == "print", AuditEvent.resource_id == referral_id)
        .order_by(AuditEvent.seq))]


def test_the_sender_and_the_receiver_print_the_slip_and_each_print_is_audited(
        client: FlaskClient, as_user: Callable[[str], dict[str, str]], platform_db: Session) -> None:
    patient, referral = _refer(client, as_user)

    response = client.get(f"/api/v1/referrals/{referral['id']}/slip", headers=as_user("yaodu.doctor"))

    assert response.status_code == 200
    assert response.mimetype == "application/pdf"
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Content-Disposition"] == f'inline; filename="referral-{referral["id"]}.pdf"'
    assert response.data.startswith(b"%PDF-")
    text = "".join(_pages(response.data))
    for expected in ("王秀英", referral["id"], "尧都区人民医院", "临汾市人民医院", "心血管内科", "I20.0", "E11.9",
                     "胸痛待查", "待预约"):
        assert expected in text
    image = pypdfium2.PdfDocument(response.data)[0].render(scale=2).to_pil()
    assert [code.text for code in zxingcpp.read_barcodes(image)] == [f"urn:hie:referral:{referral['id']}"]

    received = client.get(f"/api/v1/referrals/{referral['id']}/slip", headers=as_user("lfph.specialist"))

    assert received.status_code == 200
    assert "王秀英" in "".join(_pages(received.data))
    assert _print_events(platform_db, referral["id"]) == [
        ("yaodu.doctor", "success", f"yaodu/{patient['id']}", "own_institution"),
        ("lfph.specialist", "success", f"yaodu/{patient['id']}", "care_relationship"),
    ]


def test_an_accepted_referral_prints_its_appointment(
        client: FlaskClient, as_user: Callable[[str], dict[str, str]]) -> None:
    _, referral = _refer(client, as_user)
    accepted = client.post(f"/api/v1/referrals/{referral['id']}/accept", headers=as_user("lfph.specialist"),
                           json={"appointment_at": "2099-12-02T01:30:00Z"})
    assert accepted.status_code == 200, accepted.get_json()

    response = client.get(f"/api/v1/referrals/{referral['id']}/slip", headers=as_user("yaodu.doctor"))

    assert re.search(r"预约时间\s*2099-12-02 09:30", _pages(response.data)[0])


@pytest.mark.parametrize("outsider", ["quwo.doctor", "yaodu.fd"])
def test_an_institution_neither_sending_nor_receiving_gets_404_and_no_slip(
        client: FlaskClient, as_user: Callable[[str], dict[str, str]], platform_db: Session, outsider: str) -> None:
    _, referral = _refer(client, as_user)

    response = client.get(f"/api/v1/referrals/{referral['id']}/slip", headers=as_user(outsider))

    assert response.status_code == 404
    assert response.mimetype == "application/problem+json"
    assert "王秀英" not in response.get_data(as_text=True)
    assert _print_events(platform_db, referral["id"]) == []
    platform_db.rollback()
    refused = platform_db.scalars(select(AuditEvent.outcome).where(
        AuditEvent.username == outsider, AuditEvent.resource_id == referral["id"])).all()
    assert refused == ["denied"]


def test_an_unknown_referral_id_is_404(client: FlaskClient, as_user: Callable[[str], dict[str, str]]) -> None:
    response = client.get("/api/v1/referrals/5d0c3b7e-0000-4000-8000-000000000000/slip",
                          headers=as_user("yaodu.doctor"))

    assert response.status_code == 404
    assert response.mimetype == "application/problem+json"


def test_a_cancelled_referral_prints_no_slip(
        client: FlaskClient, as_user: Callable[[str], dict[str, str]], platform_db: Session) -> None:
    patient, referral = _refer(client, as_user)
    cancelled = client.post(f"/api/v1/referrals/{referral['id']}/cancel", headers=as_user("yaodu.doctor"), json={})
    assert cancelled.status_code == 200, cancelled.get_json()

    response = client.get(f"/api/v1/referrals/{referral['id']}/slip", headers=as_user("yaodu.doctor"))

    assert response.status_code == 409
    assert "cancelled" in response.get_json()["detail"]
    assert _print_events(platform_db, referral["id"]) == [
        ("yaodu.doctor", "failure", f"yaodu/{patient['id']}", None)]


def test_a_receiver_whose_care_has_ended_cannot_print_the_patients_name(
        client: FlaskClient, as_user: Callable[[str], dict[str, str]], platform_db: Session) -> None:
    patient, referral = _refer(client, as_user)
    receiver = platform_db.scalar(select(Institution.id).where(Institution.code == "LF-PH"))
    platform_db.execute(update(CareRelationship).where(CareRelationship.institution_id == receiver)
                        .values(ends_at=datetime.now(UTC)))
    platform_db.commit()

    response = client.get(f"/api/v1/referrals/{referral['id']}/slip", headers=as_user("lfph.specialist"))

    assert response.status_code == 403
    assert "王秀英" not in response.get_data(as_text=True)
    assert _print_events(platform_db, referral["id"]) == [
        ("lfph.specialist", "denied", f"yaodu/{patient['id']}", None)]


def test_the_slip_is_documented_as_a_pdf(client: FlaskClient) -> None:
    operation = client.get("/openapi.json").get_json()["paths"]["/api/v1/referrals/{referral_id}/slip"]["get"]

    assert operation["responses"]["200"]["content"] == {
        "application/pdf": {"schema": {"type": "string", "format": "binary"}}}
    assert {"401", "403", "404", "409"} <= operation["responses"].keys()
