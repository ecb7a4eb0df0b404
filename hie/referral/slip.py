"""The referral slip (双向转诊单): a printable Chinese PDF the patient carries to the receiving institution.

Built with ReportLab: BSD-licensed, maintained since 2000, wheels on PyPI, and it ships the Adobe CID font
STSong-Light (UniGB-UCS2-H), so Chinese needs no font file of our own and its text extracts back out, plus a QR
code encoder. The font is referenced, not embedded: viewers draw it with a system Song/Ming font.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, tzinfo
from io import BytesIO
from xml.sax.saxutils import escape
from zoneinfo import ZoneInfo

from reportlab.graphics.barcode.qr import QrCodeWidget
from reportlab.graphics.shapes import Drawing
from reportlab.lib import colors
from reportlab.lib.enums import TA_CENTER
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.cidfonts import UnicodeCIDFont
from reportlab.pdfgen.canvas import Canvas
from reportlab.platypus import Flowable, Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

FONT = "STSong-Light"
QR_PREFIX = "urn:hie:referral:"
DEFAULT_ZONE = ZoneInfo("Asia/Shanghai")

SEX_LABELS = {"M": "男", "F": "女", "U": "未知"}
DIRECTION_LABELS = {"up": "上转", "down": "下转", "lateral": "平转"}
URGENCY_LABELS = {"routine": "普通", "urgent": "紧急", "emergency": "急诊"}

PAGE_WIDTH, PAGE_HEIGHT = A4
MARGIN = 18 * mm
QR_SIZE = 30 * mm
# C0/C1 controls (tab and newline excepted) would reach the PDF as garbage or break the paragraph parser.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")

pdfmetrics.registerFont(UnicodeCIDFont(FONT))

_BODY = ParagraphStyle("slip-body", fontName=FONT, fontSize=10.5, leading=15, wordWrap="CJK")
_LABEL = ParagraphStyle("slip-label", parent=_BODY, textColor=colors.HexColor("#333333"))
_TITLE = ParagraphStyle("slip-title", fontName=FONT, fontSize=22, leading=28, alignment=TA_CENTER)
_SUBTITLE = ParagraphStyle("slip-subtitle", parent=_BODY, fontSize=11.5, leading=16, alignment=TA_CENTER)
_HEADING = ParagraphStyle("slip-heading", parent=_BODY, fontSize=12, leading=17, spaceBefore=8, spaceAfter=3)
_ITEM = ParagraphStyle("slip-item", parent=_BODY, leftIndent=14, firstLineIndent=-14)
_NOTE = ParagraphStyle("slip-note", parent=_BODY, fontSize=9, leading=13, textColor=colors.HexColor("#444444"))


@dataclass(frozen=True)
class SlipContent:
    """Everything printed on a slip, as plain values, so the PDF is built without a database or request."""

    referral_id: str
    patient_name: str
    sex: str
    birth_date: date | None
    sender_institution: str
    sender_clinician: str
    receiver_institution: str
    receiver_department: str | None
    direction: str
    urgency: str
    reason: str
    diagnoses: list[tuple[str, str]]
    clinical_summary: str
    appointment_at: datetime | None
    issued_at: datetime


def qr_payload(referral_id: str) -> str:
    """What the slip's QR code says: a URN a receiving desk's scanner turns back into the referral id."""
    return f"{QR_PREFIX}{referral_id}"


def build_slip(content: SlipContent, zone: tzinfo = DEFAULT_ZONE) -> bytes:
    """The slip as PDF bytes (A4, wrapped and paginated, never cut); times shown in `zone`, the region's clock."""
    buffer = BytesIO()
    doc = SimpleDocTemplate(
        buffer, pagesize=A4, leftMargin=MARGIN, rightMargin=MARGIN, topMargin=MARGIN, bottomMargin=MARGIN + 6 * mm,
        title=f"双向转诊单 {_clean(content.referral_id)}", author=_clean(content.sender_institution),
        subject="双向转诊单", creator="hie", lang="zh-CN", invariant=True,
    )
    footer = _Footer(content, zone)
    doc.build(_story(content, zone, doc.width), onFirstPage=footer, onLaterPages=footer)
    return buffer.getvalue()


class _Footer:
    """Draws the issue time, referral id and page number on every page, and on later pages who the slip is for."""

    def __init__(self, content: SlipContent, zone: tzinfo) -> None:
        self.line = f"开具时间：{_time(content.issued_at, zone)}　　转诊单号：{_clean(content.referral_id)}"
        self.continued = f"双向转诊单（续）　患者：{_clean(content.patient_name)}"

    def __call__(self, canvas: Canvas, doc: SimpleDocTemplate) -> None:
        canvas.saveState()
        canvas.setFont(FONT, 8.5)
        canvas.setStrokeColor(colors.grey)
        canvas.line(MARGIN, MARGIN, PAGE_WIDTH - MARGIN, MARGIN)
        canvas.drawString(MARGIN, MARGIN - 4 * mm, _fit(self.line, PAGE_WIDTH - 2 * MARGIN - 20 * mm, 8.5))
        canvas.drawRightString(PAGE_WIDTH - MARGIN, MARGIN - 4 * mm, f"第 {doc.page} 页")
        if doc.page > 1:
            canvas.drawString(MARGIN, PAGE_HEIGHT - MARGIN + 4 * mm, _fit(self.continued, PAGE_WIDTH - 2 * MARGIN, 8.5))
        canvas.restoreState()


def _story(content: SlipContent, zone: tzinfo, width: float) -> list[Flowable]:
    """The flowables top to bottom: header with QR, the field table, then reason, diagnoses and summary."""
    header = Table(
        [[[Paragraph("双向转诊单", _TITLE),
           Paragraph(f"{_text(content.sender_institution)} → {_text(content.receiver_institution)}", _SUBTITLE)],
          qr_drawing(content.referral_id)]],
        colWidths=[width - QR_SIZE, QR_SIZE], splitInRow=1,
        style=TableStyle([("VALIGN", (0, 0), (-1, -1), "MIDDLE"), ("LEFTPADDING", (0, 0), (-1, -1), 0),
                          ("RIGHTPADDING", (0, 0), (-1, -1), 0)]),
    )
    story: list[Flowable] = [header, Spacer(1, 4 * mm), _fields(content, zone, width)]
    story.append(Paragraph("转诊原因", _HEADING))
    story.extend(_paragraphs(content.reason))
    story.append(Paragraph("诊断", _HEADING))
    if content.diagnoses:
        story.extend(Paragraph(f"{n}. {_text(code)}　{_text(text)}", _ITEM)
                     for n, (code, text) in enumerate(content.diagnoses, 1))
    else:
        story.append(Paragraph("无", _BODY))
    story.append(Paragraph("病情摘要", _HEADING))
    story.extend(_paragraphs(content.clinical_summary))
    story.append(Spacer(1, 6 * mm))
    story.append(Paragraph("请患者携带本转诊单及有效身份证件，按预约时间到转入机构就诊；"
                           "转入机构可扫描二维码核对转诊单号。", _NOTE))
    return story


def _fields(content: SlipContent, zone: tzinfo, width: float) -> Table:
    """The grid of short fields, label beside value; a long value wraps inside its cell and may split pages."""
    def cell(value: str) -> Paragraph:
        return Paragraph(_text(value), _BODY)

    def label(value: str) -> Paragraph:
        return Paragraph(value, _LABEL)

    appointment = _time(content.appointment_at, zone) if content.appointment_at else "待预约"
    rows = [
        [label("转诊单号"), cell(content.referral_id), "", ""],
        [label("患者姓名"), cell(content.patient_name), label("性别"), cell(SEX_LABELS.get(content.sex, content.sex))],
        [label("出生日期"), cell(content.birth_date.isoformat() if content.birth_date else "不详"),
         label("转诊方向"), cell(DIRECTION_LABELS.get(content.direction, content.direction))],
        [label("紧急程度"), cell(URGENCY_LABELS.get(content.urgency, content.urgency)),
         label("预约时间"), cell(appointment)],
        [label("转出机构"), cell(content.sender_institution), "", ""],
        [label("转出医生"), cell(content.sender_clinician), "", ""],
        [label("转入机构"), cell(content.receiver_institution), "", ""],
        [label("转入科室"), cell(content.receiver_department or "未指定"), "", ""],
    ]
    spans = [("SPAN", (1, r), (3, r)) for r in (0, 4, 5, 6, 7)]
    label_width = 22 * mm
    return Table(
        rows, colWidths=[label_width, width / 2 - label_width, label_width, width / 2 - label_width],
        splitInRow=1,
        style=TableStyle([
            ("GRID", (0, 0), (-1, -1), 0.5, colors.grey),
            ("BACKGROUND", (0, 0), (0, -1), colors.HexColor("#f0f0f0")),
            ("BACKGROUND", (2, 1), (2, 3), colors.HexColor("#f0f0f0")),
            ("VALIGN", (0, 0), (-1, -1), "TOP"),
            *spans,
        ]),
    )


def qr_drawing(referral_id: str, size: float = QR_SIZE) -> Drawing:
    """The QR code of the referral's URN as vector squares (sharp at any print resolution), with its quiet zone."""
    widget = QrCodeWidget(qr_payload(referral_id), barLevel="M")
    x0, y0, x1, y1 = widget.getBounds()
    drawing = Drawing(size, size, transform=[size / (x1 - x0), 0, 0, size / (y1 - y0), 0, 0])
    drawing.add(widget)
    return drawing


def _paragraphs(value: str) -> list[Paragraph]:
    """A free-text field as one paragraph per line the author wrote; blank text prints as 无."""
    lines = [line for line in _clean(value).splitlines() if line.strip()]
    return [Paragraph(escape(line), _BODY) for line in lines] or [Paragraph("无", _BODY)]


def _text(value: str) -> str:
    """Field text made safe for ReportLab's paragraph markup."""
    return escape(_clean(value))


def _clean(value: str) -> str:
    """Drops control characters, which no printed slip can show."""
    return _CONTROL.sub("", value)


def _time(value: datetime, zone: tzinfo) -> str:
    """A stored time (UTC, naive means UTC) on the region's clock, to the minute."""
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return aware.astimezone(zone).strftime("%Y-%m-%d %H:%M")


def _fit(line: str, width: float, size: float) -> str:
    """Cuts a one-line canvas string that would run past `width`, ending it with an ellipsis."""
    if pdfmetrics.stringWidth(line, FONT, size) <= width:
        return line
    line = line[: int(width / (size * 0.25))]  # no glyph is narrower than a quarter em, so the rest cannot fit
    while line and pdfmetrics.stringWidth(line + "…", FONT, size) > width:
        line = line[:-1]
    return line + "…"
