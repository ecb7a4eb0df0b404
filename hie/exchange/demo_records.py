"""FHIR resources of the demo patients: chronic-disease follow-ups, lab panels, imaging, inpatient stays."""

from __future__ import annotations

import base64
import random
import uuid
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from hie.exchange.resources import MRN_SYSTEM_PREFIX, RESIDENT_ID_SYSTEM

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
ATC = "http://www.whocc.no/atc"
CVX = "http://hl7.org/fhir/sid/cvx"
DICOM = "http://dicom.nema.org/resources/ontology/DCM"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
ZONE = ZoneInfo("Asia/Shanghai")

# (LOINC, display, UCUM unit, low, high, normal low, normal high, decimals)
Analyte = tuple[str, str, str, float, float, float, float, int]
PANELS: dict[str, tuple[str, tuple[Analyte, ...]]] = {
    "58410-2": ("CBC panel - Blood by Automated count", (
        ("6690-2", "Leukocytes [#/volume] in Blood by Automated count", "10*9/L", 3.2, 11.5, 3.5, 9.5, 1),
        ("789-8", "Erythrocytes [#/volume] in Blood by Automated count", "10*12/L", 3.6, 5.6, 3.8, 5.1, 2),
        ("718-7", "Hemoglobin [Mass/volume] in Blood", "g/L", 102, 168, 115, 150, 0),
        ("777-3", "Platelets [#/volume] in Blood by Automated count", "10*9/L", 110, 360, 125, 350, 0))),
    "24325-3": ("Hepatic function 2000 panel - Serum or Plasma", (
        ("1742-6", "Alanine aminotransferase [Enzymatic activity/volume] in Serum or Plasma", "U/L",
         8, 72, 7, 40, 0),
        ("1920-8", "Aspartate aminotransferase [Enzymatic activity/volume] in Serum or Plasma", "U/L",
         10, 58, 13, 35, 0),
        ("1751-7", "Albumin [Mass/volume] in Serum or Plasma", "g/L", 34, 50, 40, 55, 1))),
    "24362-6": ("Renal function 2000 panel - Serum or Plasma", (
        ("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", 0.5, 1.6, 0.57, 1.11, 2),
        ("3094-0", "Urea nitrogen [Mass/volume] in Serum or Plasma", "mg/dL", 7, 26, 8, 23, 0),
        ("3084-1", "Urate [Mass/volume] in Serum or Plasma", "mg/dL", 2.8, 8.6, 2.6, 7.0, 1))),
}
HBA1C: Analyte = ("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "%", 5.8, 9.4, 4.0, 6.0, 1)
GLUCOSE: Analyte = ("1558-6", "Fasting glucose [Mass/volume] in Serum or Plasma", "mg/dL", 92, 190, 70, 110, 0)
IMAGING = (  # LOINC, display, DICOM modality, modality display, body part, findings
    ("24627-2", "CT Chest", "CT", "Computed Tomography", "胸部CT平扫",
     ("双肺纹理清晰，未见明显实质性病变。", "右肺下叶见数枚微小结节，考虑良性，建议年度复查。")),
    ("36643-5", "XR Chest 2 Views", "DX", "Digital Radiography", "胸部DR正侧位",
     ("心肺膈未见明显异常。", "主动脉迂曲，心影稍大，请结合临床。")),
    ("24725-4", "CT Head", "CT", "Computed Tomography", "头颅CT平扫",
     ("颅内未见明显出血及占位。", "双侧基底节区腔隙性脑梗死。")),
)
CONDITIONS = {"htn": ("I10", "特发性（原发性）高血压"), "dm": ("E11.9", "2型糖尿病，不伴有并发症")}
MEDICATIONS = {
    "htn": ("C08CA01", "苯磺酸氨氯地平片 5mg", "每日一次，每次5mg，口服", 1),
    "dm": ("A10BA02", "盐酸二甲双胍片 0.5g", "每日两次，每次0.5g，随餐口服", 2),
}
VACCINES = (("141", "流感疫苗（季节性，注射用）"), ("33", "23价肺炎球菌多糖疫苗"), ("213", "新冠病毒疫苗"))
ALLERGIES = ("青霉素", "头孢类抗生素", "磺胺类药物", "海鲜")


@dataclass(frozen=True)
class Demographics:
    """One demo person as every institution registers them."""

    name: str
    sex: str
    birth: date
    id_number: str  # "" for a person registered without an ID card
    phone: str
    address: str
    htn: bool
    dm: bool


class RecordBuilder:
    """Builds one transaction Bundle: a Patient and its records at one institution, deterministically."""

    def __init__(self, rng: random.Random, institution: str, mrn: str, person: Demographics, today: date) -> None:
        self.rng, self.institution, self.person, self.today = rng, institution, person, today
        self.entries: list[dict[str, Any]] = []
        self.patient = self._add(self._patient(mrn))

    def _urn(self) -> str:
        return f"urn:uuid:{uuid.UUID(int=self.rng.getrandbits(128), version=4)}"

    def _add(self, resource: dict[str, Any]) -> str:
        url = self._urn()
        self.entries.append({"fullUrl": url, "resource": resource,
                             "request": {"method": "POST", "url": resource["resourceType"]}})
        return url

    def bundle(self) -> dict[str, Any]:
        """The transaction Bundle of everything added so far."""
        return {"resourceType": "Bundle", "type": "transaction", "entry": self.entries}

    def _patient(self, mrn: str) -> dict[str, Any]:
        p = self.person
        identifiers = [{"system": MRN_SYSTEM_PREFIX + self.institution, "value": mrn}]
        if p.id_number:
            identifiers.append({"system": RESIDENT_ID_SYSTEM, "value": p.id_number})
        return {"resourceType": "Patient", "identifier": identifiers,
                "name": [{"text": p.name, "family": p.name[0], "given": [p.name[1:]]}],
                "gender": "male" if p.sex == "M" else "female", "birthDate": p.birth.isoformat(),
                "telecom": [{"system": "phone", "value": p.phone, "use": "mobile"}],
                "address": [{"text": p.address, "city": "临汾市", "state": "山西省", "country": "CN"}]}

    def _moment(self, day: date, hour: int) -> str:
        at = datetime.combine(day, time(hour, self.rng.randrange(60)), tzinfo=ZONE)
        return at.isoformat()

    def _ref(self, url: str) -> dict[str, str]:
        return {"reference": url}

    def encounter(self, day: date, inpatient_days: int = 0, reason: str = "") -> str:
        """An outpatient visit, or an inpatient stay of inpatient_days."""
        klass = ("IMP", "inpatient encounter") if inpatient_days else ("AMB", "ambulatory")
        period = {"start": self._moment(day, 8 + self.rng.randrange(3))}
        if inpatient_days:
            period["end"] = self._moment(day + timedelta(days=inpatient_days), 10)
        resource = {"resourceType": "Encounter", "status": "finished",
                    "class": {"system": ACT_CODE, "code": klass[0], "display": klass[1]},
                    "type": [{"text": "住院" if inpatient_days else "门诊"}],
                    "subject": self._ref(self.patient), "period": period,
                    "serviceProvider": {"display": self.institution}}
        if reason:
            resource["reasonCode"] = [{"text": reason}]
        return self._add(resource)

    def _quantity(self, analyte: Analyte, value: float) -> dict[str, Any]:
        return {"value": value, "unit": analyte[2], "system": UCUM, "code": analyte[2]}

    def _value(self, analyte: Analyte) -> float:
        value = round(self.rng.uniform(analyte[3], analyte[4]), analyte[7])
        return int(value) if analyte[7] == 0 else value

    def lab(self, analyte: Analyte, encounter: str, when: str, value: float | None = None) -> str:
        """One laboratory Observation with reference range and H/L flag."""
        value = self._value(analyte) if value is None else value
        flag = "H" if value > analyte[6] else "L" if value < analyte[5] else "N"
        return self._add({
            "resourceType": "Observation", "status": "final",
            "category": [{"coding": [{"system": OBS_CATEGORY, "code": "laboratory"}]}],
            "code": {"coding": [{"system": LOINC, "code": analyte[0], "display": analyte[1]}]},
            "subject": self._ref(self.patient), "encounter": self._ref(encounter), "effectiveDateTime": when,
            "valueQuantity": self._quantity(analyte, value),
            "interpretation": [{"coding": [{"system": INTERPRETATION, "code": flag}]}],
            "referenceRange": [{"low": self._quantity(analyte, analyte[5]),
                                "high": self._quantity(analyte, analyte[6])}]})

    def _report(self, code: str, display: str, kind: tuple[str, str], encounter: str, when: str,
                **fields: Any) -> str:
        return self._add({
            "resourceType": "DiagnosticReport", "status": "final",
            "category": [{"coding": [{"system": OBS_CATEGORY, "code": kind[0]},
                                     {"system": V2_0074, "code": kind[1]}]}],
            "code": {"coding": [{"system": LOINC, "code": code, "display": display}]},
            "subject": self._ref(self.patient), "encounter": self._ref(encounter),
            "effectiveDateTime": when, "issued": when, **fields})

    def panel(self, code: str, encounter: str, day: date) -> None:
        """A lab panel: its Observations grouped by one DiagnosticReport."""
        display, analytes = PANELS[code]
        when = self._moment(day, 9)
        results = [self._ref(self.lab(analyte, encounter, when)) for analyte in analytes]
        self._report(code, display, ("laboratory", "LAB"), encounter, when, result=results)

    def blood_pressure(self, encounter: str, day: date) -> None:
        """The 85354-9 panel with systolic and diastolic components."""
        systolic = self.rng.randint(128, 168) if self.person.htn else self.rng.randint(108, 136)
        diastolic = self.rng.randint(max(60, systolic - 80), systolic - 40)
        components = [{"code": {"coding": [{"system": LOINC, "code": code, "display": display}]},
                       "valueQuantity": {"value": value, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"}}
                      for code, display, value in (("8480-6", "Systolic blood pressure", systolic),
                                                   ("8462-4", "Diastolic blood pressure", diastolic))]
        self._add({"resourceType": "Observation", "status": "final",
                   "category": [{"coding": [{"system": OBS_CATEGORY, "code": "vital-signs"}]}],
                   "code": {"coding": [{"system": LOINC, "code": "85354-9",
                                        "display": "Blood pressure panel with all children optional"}]},
                   "subject": self._ref(self.patient), "encounter": self._ref(encounter),
                   "effectiveDateTime": self._moment(day, 9), "component": components})

    def chronic(self, day: date, prescribe: bool) -> None:
        """Hypertension and diabetes diagnoses; the institution managing them also prescribes."""
        for key in ("htn", "dm"):
            if not getattr(self.person, key):
                continue
            code, display = CONDITIONS[key]
            onset = date(self.today.year - self.rng.randint(2, 12), self.rng.randint(1, 12), 1)
            self._add({"resourceType": "Condition", "subject": self._ref(self.patient),
                       "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/"
                                                      "condition-clinical", "code": "active"}]},
                       "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/"
                                                 "condition-category", "code": "problem-list-item"}]}],
                       "code": {"coding": [{"system": ICD10, "code": code, "display": display}], "text": display},
                       "onsetDateTime": onset.isoformat(), "recordedDate": day.isoformat()})
            if not prescribe:
                continue
            atc, text, dosage, per_day = MEDICATIONS[key]
            self._add({"resourceType": "MedicationRequest", "status": "active", "intent": "order",
                       "medicationCodeableConcept": {"coding": [{"system": ATC, "code": atc}], "text": text},
                       "subject": self._ref(self.patient), "authoredOn": day.isoformat(),
                       "dosageInstruction": [{"text": dosage, "timing": {"repeat": {
                           "frequency": per_day, "period": 1, "periodUnit": "d"}}}],
                       "dispenseRequest": {"expectedSupplyDuration": {
                           "value": 30, "unit": "d", "system": UCUM, "code": "d"}}})

    def immunization(self, day: date) -> None:
        """One vaccination recorded by the primary-care clinic."""
        code, text = self.rng.choice(VACCINES)
        self._add({"resourceType": "Immunization", "status": "completed", "patient": self._ref(self.patient),
                   "vaccineCode": {"coding": [{"system": CVX, "code": code}], "text": text},
                   "occurrenceDateTime": day.isoformat(), "primarySource": True})

    def allergy(self, day: date) -> None:
        """A recorded drug or food allergy."""
        substance = self.rng.choice(ALLERGIES)
        self._add({"resourceType": "AllergyIntolerance", "patient": self._ref(self.patient),
                   "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/"
                                                  "allergyintolerance-clinical", "code": "active"}]},
                   "category": ["food" if substance == "海鲜" else "medication"], "criticality": "low",
                   "code": {"text": substance}, "recordedDate": day.isoformat(),
                   "reaction": [{"manifestation": [{"text": self.rng.choice(("皮疹", "瘙痒", "荨麻疹"))}]}]})

    def imaging(self, encounter: str, day: date) -> None:
        """An ImagingStudy and the radiologist's report that points to it."""
        code, display, modality, modality_name, title, findings = self.rng.choice(IMAGING)
        when = self._moment(day, 10)
        uid = f"1.2.156.112605.{self.rng.getrandbits(40)}.{day:%Y%m%d}"
        instances = self.rng.randint(120, 320) if modality == "CT" else 2
        procedure = {"coding": [{"system": LOINC, "code": code, "display": display}], "text": title}
        study = self._add({
            "resourceType": "ImagingStudy", "status": "available", "subject": self._ref(self.patient),
            "encounter": self._ref(encounter), "started": when, "identifier": [{"system": "urn:dicom:uid",
                                                                               "value": f"urn:oid:{uid}"}],
            "modality": [{"system": DICOM, "code": modality, "display": modality_name}],
            "procedureCode": [procedure], "description": title, "numberOfSeries": 1,
            "numberOfInstances": instances,
            "series": [{"uid": f"{uid}.1", "number": 1, "numberOfInstances": instances,
                        "modality": {"system": DICOM, "code": modality, "display": modality_name}}]})
        self._report(code, display, ("imaging", "RAD"), encounter, when, imagingStudy=[self._ref(study)],
                     conclusion=self.rng.choice(findings))

    def discharge_summary(self, encounter: str, admitted: date, discharged: date, diagnoses: list[str]) -> None:
        """The discharge summary as a small PDF, attached as base64."""
        pdf = _pdf((f"Discharge summary - {self.institution}", f"Admitted: {admitted.isoformat()}",
                    f"Discharged: {discharged.isoformat()}", f"ICD-10: {', '.join(diagnoses)}",
                    "Condition at discharge: improved"))
        self._add({"resourceType": "DocumentReference", "status": "current",
                   "type": {"coding": [{"system": LOINC, "code": "18842-5", "display": "Discharge summary"}]},
                   "category": [{"text": "出院记录"}], "subject": self._ref(self.patient),
                   "date": self._moment(discharged, 11), "description": "出院小结",
                   "content": [{"attachment": {"contentType": "application/pdf", "language": "zh-CN",
                                               "data": base64.b64encode(pdf).decode("ascii"),
                                               "size": len(pdf), "title": "出院小结.pdf"}}],
                   "context": {"encounter": [self._ref(encounter)],
                               "period": {"start": admitted.isoformat(), "end": discharged.isoformat()}}})


def _pdf(lines: tuple[str, ...]) -> bytes:
    """A one-page PDF with correct xref offsets, small enough to keep the demo light."""
    text = "".join(f"({line}) Tj 0 -18 Td " for line in lines)
    stream = f"BT /F1 11 Tf 56 780 Td {text}ET".encode("ascii")
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R "
               b"/Resources << /Font << /F1 5 0 R >> >> >>",
               b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream),
               b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)
