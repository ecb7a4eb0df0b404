"""FHIR search parameters: which ones each resource type takes, and parsing them strictly into filters."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from werkzeug.datastructures import MultiDict

from hie.exchange.outcome import FhirError
from hie.exchange.resources import WRITABLE, parse_date
from hie.platform.limits import EARLIEST_QUERY_DATE, LATEST_QUERY_DATE, MAX_INT, ascii_int

DEFAULT_COUNT = 20
MAX_COUNT = 100
MAX_OR_VALUES = 100  # comma-separated alternatives of one parameter
MAX_PARAMETERS = 30  # parameter occurrences in one search
MAX_TOKEN_LENGTH = 200  # a system or code longer than the token index's columns matches nothing
MAX_ID_LENGTH = 64  # FHIR's id
SEARCH_YEARS = (EARLIEST_QUERY_DATE.year, LATEST_QUERY_DATE.year - 1)
OFFSET_PARAM = "_offset"
CONTROL_PARAMS = ("_count", "_sort", "_include", OFFSET_PARAM)
SORTS = {"date": ("date", False), "-date": ("date", True),
         "_lastUpdated": ("last_updated", False), "-_lastUpdated": ("last_updated", True)}
DEFAULT_SORT = "-_lastUpdated"
DATE_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le")
UNSUPPORTED_PREFIXES = ("sa", "eb", "ap")
DATE_RE = re.compile(
    r"^(?P<ymd>\d{4}(-\d{2}(-\d{2})?)?)"
    r"(T(?P<hm>\d{2}:\d{2})(?P<s>:\d{2}(?P<frac>\.\d{1,6})?)?(?P<tz>Z|[+-]\d{2}:\d{2})?)?$", re.ASCII
)

# Subject-linked types (the Patient itself is reached by identifier and _lastUpdated only).
CLINICAL = tuple(t for t in WRITABLE if t != "Patient")
HAS_SUBJECT = tuple(t for t in CLINICAL if t not in ("Immunization", "AllergyIntolerance"))
HAS_CATEGORY = ("Observation", "DiagnosticReport", "Condition", "AllergyIntolerance", "DocumentReference",
                "MedicationRequest", "Procedure")
HAS_STATUS = tuple(t for t in CLINICAL if t != "AllergyIntolerance")
# FHIR's own names for the concept resources.index_entry stores as "code".
CODE_ALIASES = {"Encounter": "type", "Immunization": "vaccine-code", "DocumentReference": "type"}

# (source type, search parameter) -> (JSON element holding the reference, target type)
INCLUDES: dict[tuple[str, str], tuple[str, str]] = {
    ("Observation", "subject"): ("subject", "Patient"),
    ("Observation", "encounter"): ("encounter", "Encounter"),
    ("DiagnosticReport", "subject"): ("subject", "Patient"),
    ("DiagnosticReport", "result"): ("result", "Observation"),
    ("Encounter", "subject"): ("subject", "Patient"),
    ("Condition", "subject"): ("subject", "Patient"),
    ("MedicationRequest", "subject"): ("subject", "Patient"),
    ("Procedure", "subject"): ("subject", "Patient"),
    ("Immunization", "patient"): ("patient", "Patient"),
    ("AllergyIntolerance", "patient"): ("patient", "Patient"),
    ("DocumentReference", "subject"): ("subject", "Patient"),
    ("ImagingStudy", "subject"): ("subject", "Patient"),
}


@dataclass(frozen=True)
class Token:
    """One alternative of a token parameter; any_system means the value carried no '|'."""

    system: str | None
    code: str | None
    any_system: bool = False


@dataclass(frozen=True)
class TokenFilter:
    """One token parameter occurrence: the index param and its comma-separated alternatives (OR)."""

    param: str
    alternatives: tuple[Token, ...]


@dataclass(frozen=True)
class DateFilter:
    """One date parameter occurrence over a column, as a prefix and the half-open range the value names."""

    column: str
    prefix: str
    low: datetime
    high: datetime


@dataclass(frozen=True)
class Include:
    """An _include: the JSON element of the matched resource that references the target type."""

    element: str
    target_type: str


@dataclass(frozen=True)
class SearchParams:
    """A validated search: filters, page, order and includes; echo rebuilds the paging links."""

    patient: str | None
    tokens: tuple[TokenFilter, ...]
    dates: tuple[DateFilter, ...]
    count: int
    offset: int
    sort_column: str
    descending: bool
    includes: tuple[Include, ...]
    echo: tuple[tuple[str, str], ...]


def token_params(resource_type: str) -> dict[str, str]:
    """Search parameter name -> indexed token param for one resource type."""
    names = {"identifier": "identifier"}
    if resource_type in CLINICAL:
        names["code"] = "code"
    if resource_type in CODE_ALIASES:
        names[CODE_ALIASES[resource_type]] = "code"
    if resource_type in HAS_CATEGORY:
        names["category"] = "category"
    if resource_type in HAS_STATUS:
        names["status"] = "status"
    if resource_type == "Condition":
        names["clinical-status"] = "status"
    if resource_type == "ImagingStudy":
        names["modality"] = "modality"
    return names


def date_param(resource_type: str) -> str:
    """The name of the parameter over FhirResource.date (FHIR calls the Patient's one birthdate)."""
    return "birthdate" if resource_type == "Patient" else "date"


def patient_params(resource_type: str) -> tuple[str, ...]:
    """The reference parameters naming the patient (subject too where the resource's element is subject)."""
    if resource_type in HAS_SUBJECT:
        return ("patient", "subject")
    return ("patient",) if resource_type in CLINICAL else ()


def search_param_types(resource_type: str) -> dict[str, str]:
    """Every search parameter a type takes, name -> FHIR type: the parser and the CapabilityStatement share it."""
    types = dict.fromkeys(patient_params(resource_type), "reference")
    types.update(dict.fromkeys(token_params(resource_type), "token"))
    types.update({date_param(resource_type): "date", "_lastUpdated": "date"})
    return types


def _invalid(name: str, message: str, code: str = "invalid") -> FhirError:
    return FhirError(400, code, message, [name])


def _token(name: str, raw: str) -> Token:
    system, bar, code = raw.partition("|")
    if not bar:
        system, code = "", raw
    if max(len(system), len(code)) > MAX_TOKEN_LENGTH:
        raise _invalid(name, f"Parameter {name}: a system or code is at most {MAX_TOKEN_LENGTH} characters.",
                       "too-long")
    if not bar:
        return Token(None, raw, any_system=True)
    if not system and not code:
        raise _invalid(name, f"Parameter {name}: '|' needs a system or a code.")
    return Token(system or None, code or None)


def token_filter(name: str, param: str, value: str) -> TokenFilter:
    """system|code, |code (no system), code (any system), system| (any code); commas separate alternatives."""
    parts = value.split(",")
    if len(parts) > MAX_OR_VALUES:
        raise _invalid(name, f"Parameter {name} takes at most {MAX_OR_VALUES} comma-separated values.", "too-costly")
    if any(not part for part in parts):
        raise _invalid(name, f"Parameter {name} has an empty value.")
    return TokenFilter(param, tuple(_token(name, part) for part in parts))


def _upper_bound(value: str, match: re.Match[str], low: datetime) -> datetime:
    """The end of the moment a value names, at the precision it was given."""
    if match["frac"]:
        return low + timedelta(microseconds=10 ** (7 - len(match["frac"])))
    if match["s"]:
        return low + timedelta(seconds=1)
    if match["hm"]:
        return low + timedelta(minutes=1)
    if len(value) == 4:
        return low.replace(year=low.year + 1)
    if len(value) == 7:
        return low.replace(year=low.year + low.month // 12, month=low.month % 12 + 1)
    return low + timedelta(days=1)


def date_filter(name: str, column: str, raw: str) -> DateFilter:
    """A date value with an optional prefix, as the half-open range [low, high) of its precision."""
    prefix, value = ("eq", raw)
    if raw[:2].isalpha():
        prefix, value = raw[:2], raw[2:]
        if prefix in UNSUPPORTED_PREFIXES:
            raise _invalid(name, f"Date prefix {prefix!r} is not supported here.", "not-supported")
        if prefix not in DATE_PREFIXES:
            raise _invalid(name, f"Unknown date prefix {prefix!r}; use one of {', '.join(DATE_PREFIXES)}.")
    match = DATE_RE.match(value)
    if match is None:
        raise _invalid(name, f"Parameter {name}: {value!r} is not a FHIR date or dateTime.")
    if not SEARCH_YEARS[0] <= int(value[:4]) <= SEARCH_YEARS[1]:
        raise _invalid(name, f"Parameter {name}: a date lies in the years {SEARCH_YEARS[0]} to {SEARCH_YEARS[1]}.")
    try:
        low = parse_date(value)
        high = _upper_bound(value, match, low)
    except ValueError:
        raise _invalid(name, f"Parameter {name}: {value!r} is not a valid date.") from None
    return DateFilter(column, prefix, low, high)


def _integer(name: str, raw: str, low: int, high: int) -> int:
    value = ascii_int(raw, low, high)
    if value is None:
        raise _invalid(name, f"Parameter {name} must be a whole number from {low} to {high}, in digits 0-9.")
    return value


def _include(resource_type: str, raw: str) -> Include:
    parts = raw.split(":")
    if len(parts) not in (2, 3) or parts[0] != resource_type or (parts[0], parts[1]) not in INCLUDES:
        supported = ", ".join(f"{s}:{p}" for s, p in INCLUDES if s == resource_type) or "none"
        raise _invalid("_include", f"_include={raw} is not supported (for {resource_type}: {supported}).",
                       "not-supported")
    element, target = INCLUDES[(parts[0], parts[1])]
    if len(parts) == 3 and parts[2] != target:
        raise _invalid("_include", f"_include={raw}: {parts[1]} references a {target} here.", "not-supported")
    return Include(element, target)


def _single(params: MultiDict[str, str], name: str) -> str | None:
    values = params.getlist(name)
    if len(values) > 1:
        raise _invalid(name, f"Parameter {name} may be given once.")
    return values[0] if values else None


def _patient(resource_type: str, params: MultiDict[str, str]) -> str | None:
    """The Patient id of patient= or subject= (Patient/<id> or a bare id); one patient per search."""
    given = [(name, value) for name in patient_params(resource_type) for value in params.getlist(name)]
    if not given:
        return None
    if len(given) > 1:
        raise _invalid(given[1][0], "A search names at most one patient.", "not-supported")
    name, value = given[0]
    if "/" in value:
        kind, _, value = value.partition("/")
        if kind != "Patient":
            raise _invalid(name, f"Parameter {name} must reference a Patient.", "not-supported")
    if not value or "," in value or "/" in value or len(value) > MAX_ID_LENGTH:
        raise _invalid(name, f"Parameter {name} must be one Patient id.")
    return value


def parse(resource_type: str, params: MultiDict[str, str]) -> SearchParams:
    """Every parameter validated; an unknown one or a malformed value is a 400 naming it."""
    tokens = token_params(resource_type)
    dates = {date_param(resource_type): "date", "_lastUpdated": "last_updated"}
    accepted = search_param_types(resource_type)
    given = list(params.items(multi=True))
    if len(given) > MAX_PARAMETERS:
        raise _invalid(given[MAX_PARAMETERS][0], f"A search takes at most {MAX_PARAMETERS} parameters.", "too-costly")
    for name in params:
        if name not in accepted and name not in CONTROL_PARAMS:
            code = "not-supported" if ":" in name else "invalid"
            raise _invalid(name, f"Unknown search parameter {name!r} for {resource_type}.", code)
    echo = tuple((name, value) for name, value in given if name != OFFSET_PARAM)
    sort = _single(params, "_sort")
    sort = DEFAULT_SORT if sort is None else sort
    if sort not in SORTS:
        raise _invalid("_sort", f"_sort={sort} is not supported; use one of {', '.join(SORTS)}.")
    count, offset = _single(params, "_count"), _single(params, OFFSET_PARAM)
    return SearchParams(
        patient=_patient(resource_type, params),
        tokens=tuple(token_filter(name, param, value) for name, param in tokens.items()
                     for value in params.getlist(name)),
        dates=tuple(date_filter(name, column, value) for name, column in dates.items()
                    for value in params.getlist(name)),
        count=DEFAULT_COUNT if count is None else _integer("_count", count, 0, MAX_COUNT),
        offset=0 if offset is None else _integer(OFFSET_PARAM, offset, 0, MAX_INT),
        sort_column=SORTS[sort][0], descending=SORTS[sort][1],
        includes=tuple(dict.fromkeys(_include(resource_type, value) for value in params.getlist("_include"))),
        echo=echo,
    )
