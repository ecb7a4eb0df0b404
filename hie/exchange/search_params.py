"""FHIR search parameters: which ones each resource type takes, and parsing them into filters (strictly, or
leniently when the client asks with Prefer: handling=lenient)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from werkzeug.datastructures import MultiDict

from hie.exchange import search_cursor
from hie.exchange.outcome import FhirError
from hie.exchange.resources import WRITABLE
from hie.exchange.search_catalogue import DATES, REFERENCES, TOKENS
from hie.exchange.search_cursor import CURSOR_PARAM, Cursor
from hie.exchange.search_index import fold, moment_range
from hie.exchange.search_subset import SUMMARY_VALUES, check_elements
from hie.platform.limits import EARLIEST_QUERY_DATE, LATEST_QUERY_DATE, ascii_int

TOTAL_METHOD = "_totalMethod"  # Aidbox's name for _total, sent by fhirpy's count(): accepted so that count() works
TOTAL_METHODS = {"count": "accurate", "estimate": "estimate", "none": "none"}
DEFAULT_COUNT = 20
MAX_COUNT = 100  # a larger _count is capped to this, and the self link says so
MAX_OR_VALUES = 100  # comma-separated alternatives of one parameter
MAX_PARAMETERS = 30  # parameter occurrences in one search
MAX_TOKEN_LENGTH = 200  # a system or code longer than the token index's columns matches nothing
MAX_ID_LENGTH = 64  # FHIR's id
SEARCH_YEARS = (EARLIEST_QUERY_DATE.year, LATEST_QUERY_DATE.year - 1)
CONTROL_PARAMS = ("_count", "_sort", "_include", "_revinclude", "_total", TOTAL_METHOD, "_summary", "_elements",
                  "_format", CURSOR_PARAM)
TOTAL_VALUES = ("none", "estimate", "accurate")
JSON_FORMATS = ("json", "application/json", "application/fhir+json", "fhir+json")
CONTROL_SCHEMAS: dict[str, dict[str, object]] = {  # for the OpenAPI description
    "_count": {"type": "integer", "minimum": 0, "description": f"page size, capped to {MAX_COUNT}"},
    "_sort": {"type": "string", "description": "one sortable parameter, - for descending (default -_lastUpdated)"},
    "_include": {"type": "string", "description": "<Type>:<param>[:<target>], e.g. Observation:subject"},
    "_revinclude": {"type": "string", "description": "<Source>:<param>[:<Type>], e.g. Observation:subject"},
    "_total": {"type": "string", "enum": list(TOTAL_VALUES)},
    TOTAL_METHOD: {"type": "string", "enum": list(TOTAL_METHODS), "description": "fhirpy's and Aidbox's name for "
                   "_total (count = accurate)"},
    "_summary": {"type": "string", "enum": ["true", "text", "data", "count", "false"]},
    "_elements": {"type": "string", "description": "comma-separated top-level elements"},
    "_format": {"type": "string", "enum": list(JSON_FORMATS)},
    CURSOR_PARAM: {"type": "string", "description": "opaque: taken from a next link, never written by hand"},
}
DEFAULT_SORT = "-_lastUpdated"
DEFAULT_HANDLING = "strict"  # unknown parameters are a 400 unless the client sends Prefer: handling=lenient
DATE_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le")
UNSUPPORTED_PREFIXES = ("sa", "eb", "ap")
TOKEN_MODIFIERS = ("not", "text")
PATIENT_STRINGS = ("name", "family", "given")

# Subject-linked types (the Patient itself is searched over the register).
CLINICAL = tuple(t for t in WRITABLE if t != "Patient")
HAS_SUBJECT = tuple(t for t in CLINICAL if t not in ("Immunization", "AllergyIntolerance"))

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
    """One token or reference parameter occurrence: index param, alternatives (OR), modifier ('', not, text)."""

    param: str
    alternatives: tuple[Token, ...]
    modifier: str = ""


@dataclass(frozen=True)
class DateFilter:
    """One date parameter occurrence (a column, or a param of the date index), as a prefix and the half-open
    range the value names."""

    column: str
    prefix: str
    low: datetime
    high: datetime


@dataclass(frozen=True)
class StringFilter:
    """A Patient string parameter (name, family, given) or phone: alternatives (OR); exact or prefix match."""

    param: str
    values: tuple[str, ...]
    exact: bool = False


@dataclass(frozen=True)
class Include:
    """An _include: the JSON element of the matched resource that references the target type."""

    element: str
    target_type: str


@dataclass(frozen=True)
class RevInclude:
    """A _revinclude: resources of source_type whose param references a match."""

    source_type: str
    param: str


@dataclass(frozen=True)
class Sort:
    """The one sort key (ties broken by shard and id): its parameter name, kind and direction."""

    name: str
    kind: str  # id, last_updated, date, token, birthdate, gender
    descending: bool


@dataclass(frozen=True)
class SearchParams:
    """A validated search: filters, page, order, includes and result shape; echo rebuilds the links."""

    patient: str | None
    tokens: tuple[TokenFilter, ...]
    dates: tuple[DateFilter, ...]
    count: int
    sort: Sort
    includes: tuple[Include, ...] = ()
    echo: tuple[tuple[str, str], ...] = ()
    ids: tuple[str, ...] | None = None
    strings: tuple[StringFilter, ...] = ()
    revincludes: tuple[RevInclude, ...] = ()
    cursor: Cursor | None = None
    total: str = "accurate"
    summary: str | None = None
    elements: tuple[str, ...] | None = None
    ignored: tuple[str, ...] = field(default=())
    digest: str = ""


def patient_params(resource_type: str) -> tuple[str, ...]:
    """The reference parameters naming the patient (subject too where the resource's element is subject)."""
    if resource_type in HAS_SUBJECT:
        return ("patient", "subject")
    return ("patient",) if resource_type in CLINICAL else ()


def date_params(resource_type: str) -> tuple[str, ...]:
    """The date parameters of a type (birthdate is the Patient's, over the register)."""
    return ("birthdate",) if resource_type == "Patient" else tuple(DATES.get(resource_type, {}))


def search_param_types(resource_type: str) -> dict[str, str]:
    """Every search parameter a type takes, name -> FHIR type: the parser and the CapabilityStatement share it."""
    types = dict.fromkeys(patient_params(resource_type), "reference")
    types.update(dict.fromkeys(REFERENCES.get(resource_type, {}), "reference"))
    types.update(dict.fromkeys(TOKENS.get(resource_type, {}), "token"))
    if resource_type == "Patient":
        types.update({**dict.fromkeys(PATIENT_STRINGS, "string"), "phone": "token"})
    types.update(dict.fromkeys(date_params(resource_type), "date"))
    types.update({"_id": "token", "_lastUpdated": "date"})
    return types


def sort_kinds(resource_type: str) -> dict[str, str]:
    """The parameters a type sorts by, name -> kind (sealed identifiers and names sort by nothing)."""
    kinds = {"_id": "id", "_lastUpdated": "last_updated"}
    if resource_type == "Patient":
        return {**kinds, "birthdate": "birthdate", "gender": "gender"}
    kinds.update(dict.fromkeys(DATES.get(resource_type, {}), "date"))
    kinds.update(dict.fromkeys(TOKENS.get(resource_type, {}), "token"))
    return kinds


def revinclude_targets(source_type: str, param: str) -> tuple[str, ...]:
    """The types a _revinclude source parameter references (empty: not a reference parameter of that type)."""
    if param in patient_params(source_type):
        return ("Patient",)
    reference = REFERENCES.get(source_type, {}).get(param)
    return reference.targets if reference else ()


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


def _parts(name: str, value: str) -> list[str]:
    parts = value.split(",")
    if len(parts) > MAX_OR_VALUES:
        raise _invalid(name, f"Parameter {name} takes at most {MAX_OR_VALUES} comma-separated values.", "too-costly")
    if any(not part for part in parts):
        raise _invalid(name, f"Parameter {name} has an empty value.")
    return parts


def token_filter(name: str, param: str, value: str, modifier: str = "") -> TokenFilter:
    """system|code, |code (no system), code (any system), system| (any code); commas separate alternatives.
    :text takes words of the concept's text or displays instead."""
    parts = _parts(name, value)
    if modifier == "text":
        return TokenFilter(param, tuple(Token(None, fold(part)[:MAX_TOKEN_LENGTH], True) for part in parts), "text")
    return TokenFilter(param, tuple(_token(name, part) for part in parts), modifier)


def reference_filter(name: str, value: str, targets: tuple[str, ...], typed: str | None) -> TokenFilter:
    """Type/id, or a bare id when the parameter (or its :Type modifier) names one target type."""
    alternatives = []
    for part in _parts(name, value):
        kind, slash, target_id = part.rpartition("/")
        kind = kind.split("/_history")[0] if slash else (typed or (targets[0] if len(targets) == 1 else ""))
        if not slash and not kind:
            raise _invalid(name, f"Parameter {name} needs Type/id here (it may reference {', '.join(targets)}).")
        if kind not in targets or (typed and kind != typed) or not target_id or len(target_id) > MAX_ID_LENGTH:
            raise _invalid(name, f"Parameter {name} references {', '.join(targets)} by Type/id.")
        alternatives.append(Token(None, f"{kind.rsplit('/', 1)[-1]}/{target_id}"))
    return TokenFilter(name, tuple(alternatives))


def date_filter(name: str, column: str, raw: str) -> DateFilter:
    """A date value with an optional prefix, as the half-open range [low, high) of its precision."""
    prefix, value = ("eq", raw)
    if raw[:2].isalpha():
        prefix, value = raw[:2], raw[2:]
        if prefix in UNSUPPORTED_PREFIXES:
            raise _invalid(name, f"Date prefix {prefix!r} is not supported here.", "not-supported")
        if prefix not in DATE_PREFIXES:
            raise _invalid(name, f"Unknown date prefix {prefix!r}; use one of {', '.join(DATE_PREFIXES)}.")
    if not value[:4].isdigit() or not SEARCH_YEARS[0] <= int(value[:4]) <= SEARCH_YEARS[1]:
        if value[:4].isdigit():
            raise _invalid(name, f"Parameter {name}: a date lies in the years {SEARCH_YEARS[0]} to {SEARCH_YEARS[1]}.")
        raise _invalid(name, f"Parameter {name}: {value!r} is not a FHIR date or dateTime.")
    try:
        low, high = moment_range(value)
    except ValueError:
        raise _invalid(name, f"Parameter {name}: {value!r} is not a valid FHIR date or dateTime.") from None
    return DateFilter(column, prefix, low, high)


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


def _revinclude(resource_type: str, raw: str) -> RevInclude:
    parts = raw.split(":")
    targets = revinclude_targets(parts[0], parts[1]) if len(parts) in (2, 3) and parts[0] in CLINICAL else ()
    if resource_type not in targets or (len(parts) == 3 and parts[2] != resource_type):
        raise _invalid("_revinclude", f"_revinclude={raw} is not supported: it takes Source:param[:{resource_type}] "
                       f"where param of Source references a {resource_type}.", "not-supported")
    return RevInclude(parts[0], parts[1])


def _single(params: MultiDict[str, str], name: str) -> str | None:
    values = params.getlist(name)
    if len(values) > 1:
        raise _invalid(name, f"Parameter {name} may be given once.")
    return values[0] if values else None


def _patient(resource_type: str, params: MultiDict[str, str]) -> str | None:
    """The Patient id of patient= or subject= (Patient/<id> or a bare id); one patient per search."""
    given = [(key, value) for key, value in params.items(multi=True)
             if key.partition(":")[0] in patient_params(resource_type) and key.partition(":")[2] in ("", "Patient")]
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


def _sort(resource_type: str, raw: str | None) -> Sort:
    kinds = sort_kinds(resource_type)
    raw = DEFAULT_SORT if raw is None else raw
    if "," in raw:
        raise _invalid("_sort", "_sort takes one parameter here (ties are broken by id).", "not-supported")
    name = raw.removeprefix("-")
    if name not in kinds:
        raise _invalid("_sort", f"_sort={raw} is not supported for {resource_type}; use one of "
                                f"{', '.join(sorted(kinds))} (- for descending).")
    return Sort(name, kinds[name], raw.startswith("-"))


def _known(resource_type: str, name: str) -> str | None:
    """Why a parameter name (with its modifier) is not taken here, or None when it is."""
    types = search_param_types(resource_type)
    base, colon, modifier = name.partition(":")
    if base in CONTROL_PARAMS and not colon:
        return None
    if base not in types:
        return f"Unknown search parameter {name!r} for {resource_type}."
    if not colon:
        return None
    kind = types[base]
    allowed = {"token": TOKEN_MODIFIERS if base not in ("_id", "phone") else (), "string": ("exact",),
               "reference": revinclude_targets(resource_type, base), "date": ()}[kind]
    return None if modifier in allowed else f"Modifier :{modifier} of {base} is not supported for {resource_type}."


def _result_shape(params: MultiDict[str, str], resource_type: str) -> dict[str, object]:
    """_total, _summary, _elements and _format: what the Bundle holds, not which resources match."""
    fmt = _single(params, "_format")
    if fmt is not None and fmt.lower().split(";")[0].strip() not in JSON_FORMATS:
        raise FhirError(406, "not-supported", f"_format={fmt}: this server answers in FHIR JSON only "
                        f"({', '.join(JSON_FORMATS)}).", ["_format"])
    method = _single(params, TOTAL_METHOD)
    if method is not None and method not in TOTAL_METHODS:
        raise _invalid(TOTAL_METHOD, f"{TOTAL_METHOD} takes {', '.join(TOTAL_METHODS)}.")
    total = _single(params, "_total") or TOTAL_METHODS.get(method or "count", "accurate")
    if total not in TOTAL_VALUES:
        raise _invalid("_total", f"_total takes {', '.join(TOTAL_VALUES)}.")
    summary = _single(params, "_summary")
    if summary is not None and summary not in SUMMARY_VALUES:
        raise _invalid("_summary", f"_summary takes {', '.join(SUMMARY_VALUES)}.")
    elements = _single(params, "_elements")
    if elements is not None and summary not in (None, "false"):
        raise _invalid("_elements", "_elements and _summary cannot be combined.")
    return {"total": total, "summary": None if summary == "false" else summary,
            "elements": None if elements is None else check_elements(resource_type, elements)}


def _ids(params: MultiDict[str, str]) -> tuple[str, ...] | None:
    values = params.getlist("_id")
    if not values:
        return None
    sets = [set(_parts("_id", value)) for value in values]
    wanted = set.intersection(*sets)
    if any(len(i) > MAX_ID_LENGTH for i in wanted):
        raise _invalid("_id", f"An _id is at most {MAX_ID_LENGTH} characters.")
    return tuple(sorted(wanted))


def _filters(resource_type: str, given: list[tuple[str, str]]) -> dict[str, tuple]:
    """Token, reference, date and string filters of the understood parameters."""
    types = search_param_types(resource_type)
    tokens, dates, strings = [], [], []
    for name, value in given:
        base, _, modifier = name.partition(":")
        kind = types.get(base)
        if base in patient_params(resource_type) or base in ("_id", *CONTROL_PARAMS) or kind is None:
            continue
        if kind == "date":
            dates.append(date_filter(name, "last_updated" if base == "_lastUpdated" else base, value))
        elif kind == "string" or base == "phone":
            strings.append(StringFilter(base, tuple(_parts(name, value)), modifier == "exact"))
        elif kind == "reference":
            tokens.append(reference_filter(name, value, revinclude_targets(resource_type, base), modifier or None))
        else:
            tokens.append(token_filter(name, base, value, modifier))
    return {"tokens": tuple(tokens), "dates": tuple(dates), "strings": tuple(strings)}


def parse(resource_type: str, params: MultiDict[str, str], handling: str = DEFAULT_HANDLING) -> SearchParams:
    """Every parameter validated; an unknown one is a 400 naming it (strict) or left out and reported (lenient);
    a malformed value of a known one is always a 400 naming it."""
    given = list(params.items(multi=True))
    if len(given) > MAX_PARAMETERS:
        raise _invalid(given[MAX_PARAMETERS][0], f"A search takes at most {MAX_PARAMETERS} parameters.", "too-costly")
    ignored: list[str] = []
    for name in dict.fromkeys(name for name, _ in given):
        problem = _known(resource_type, name)
        if problem and handling != "lenient":
            raise _invalid(name, problem, "not-supported" if ":" in name else "invalid")
        if problem:
            ignored.append(name)
    understood = MultiDict([(name, value) for name, value in given if name not in ignored])
    count = _single(understood, "_count")
    count_value = DEFAULT_COUNT if count is None else ascii_int(count, 0)
    if count_value is None:
        raise _invalid("_count", "Parameter _count must be a whole number from 0, in digits 0-9.")
    count_value = min(count_value, MAX_COUNT)
    echo = tuple((name, str(count_value) if name == "_count" else value)
                 for name, value in given if name not in ignored and name != CURSOR_PARAM)
    digest = search_cursor.query_digest(resource_type, echo)
    cursor = _single(understood, CURSOR_PARAM)
    return SearchParams(
        patient=_patient(resource_type, understood), ids=_ids(understood), **_filters(resource_type, given=[
            (name, value) for name, value in given if name not in ignored]),
        count=count_value, sort=_sort(resource_type, _single(understood, "_sort")),
        includes=tuple(dict.fromkeys(_include(resource_type, value) for value in understood.getlist("_include"))),
        revincludes=tuple(dict.fromkeys(_revinclude(resource_type, value)
                                        for value in understood.getlist("_revinclude"))),
        cursor=None if cursor is None else search_cursor.decode(digest, cursor),
        echo=echo, ignored=tuple(ignored), digest=digest, **_result_shape(understood, resource_type),
    )
