"""Schemathesis over the whole served OpenAPI document, against a real HTTP server: no input may answer a 5xx."""

from __future__ import annotations

import itertools
import json
import os
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
from apispec import APISpec
from flask import Flask
from flask.testing import FlaskClient
from flask_smorest.spec.plugins import FlaskPlugin
from hypothesis import HealthCheck, Phase
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.generation.hypothesis.builder import HypothesisTestConfig, HypothesisTestMode, create_test
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import select
from sqlalchemy.orm import Session
from werkzeug.serving import make_server

from hie.exchange import openapi
from hie.exchange.outcome import FHIR_JSON
from hie.exchange.resources import WRITABLE
from hie.platform.auth.models import User
from hie.platform.errors import PROBLEM_JSON
from hie.platform.modules import Module, installed
from tests.conftest import PASSWORD, SEEDED_REGIONS, USERS, new_patient, wipe
from tests.fhir_helpers import clinical, patient

CLINICIAN, ADMIN = "yaodu.doctor", "admin"
FUZZERS = (CLINICIAN, ADMIN)
BYSTANDER = "yaodu.nurse"
FUZZ_REGION = "141002199"
# Examples per operation and generation mode, the same ones every run; HIE_FUZZ_EXAMPLES and HIE_FUZZ_SEED
# make a longer or a different hunt.
EXAMPLES = int(os.environ.get("HIE_FUZZ_EXAMPLES", "40"))
SEED = int(os.environ["HIE_FUZZ_SEED"]) if os.environ.get("HIE_FUZZ_SEED") else None
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance]
# Logging out would end the fuzzing account's own login; everything else is fuzzed.
EXCLUDED = ("POST", "/api/v1/auth/logout")


@dataclass
class Target:
    """The running server and what the fuzz may aim at: tokens, and ids of records that exist."""

    base_url: str
    tokens: dict[str, str]
    known: dict[str, list[Any]]
    fhir: list[tuple[str, str]]
    fuzzer_ids: set[int]
    turns: Iterator[int] = field(default_factory=itertools.count)


class _Client:
    """Just enough of Flask's test client over HTTP for the suite's helpers."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    def post(self, path: str, json: Any, headers: dict[str, str]) -> Any:  # noqa: A002 (Flask's name)
        response = requests.post(self.base_url + path, json=json, headers=headers, timeout=30)
        response.get_json = response.json  # type: ignore[attr-defined]
        return response


def _login(base_url: str, username: str) -> str:
    response = requests.post(f"{base_url}/api/v1/auth/token", json={"username": username, "password": PASSWORD},
                             timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


def _seed(app: Flask, base_url: str, tokens: dict[str, str]) -> Target:
    """Patients and FHIR records of the clinician's institution, so generated ids sometimes hit real rows."""
    client = _Client(base_url)
    doctor = {"Authorization": f"Bearer {tokens[CLINICIAN]}"}
    registered = [new_patient(client, doctor, mrn=f"FUZZ-{n}", name=name)["id"]  # type: ignore[arg-type]
                  for n, name in enumerate(("王秀英", "李建国"))]
    fhir: list[tuple[str, str]] = []
    stored = client.post("/fhir/Patient", json=patient(), headers=doctor).json()
    fhir.append(("Patient", stored["id"]))
    for resource_type in ("Observation", "Condition", "Encounter"):
        body = clinical(resource_type, f"Patient/{stored['id']}")
        fhir.append((resource_type, client.post(f"/fhir/{resource_type}", json=body, headers=doctor).json()["id"]))
    admin = {"Authorization": f"Bearer {tokens[ADMIN]}"}
    region = {"code": FUZZ_REGION, "name": "模糊测试村", "parent_code": "141002"}
    assert requests.post(f"{base_url}/api/v1/regions", json=region, headers=admin, timeout=30).status_code == 201
    with Session(app.extensions["hie.engines"].platform) as session:
        ids = dict(session.execute(select(User.username, User.id)).all())
    known = {"patient_id": [*registered, stored["id"]], "user_id": [ids[BYSTANDER]], "version": [1],
             "code": [FUZZ_REGION]}
    return Target(base_url, tokens, known, fhir, {ids[name] for name in FUZZERS})


@pytest.fixture(scope="module")
def target(app: Flask) -> Iterator[Target]:
    """The suite's app behind a real HTTP server on a free port; everything the fuzz wrote is wiped after."""
    wipe(app)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base_url = f"http://127.0.0.1:{server.server_port}"
    try:
        tokens = {name: _login(base_url, name) for name in FUZZERS}
        yield _seed(app, base_url, tokens)
    finally:
        server.shutdown()
        thread.join()
        wipe(app)


def _aimed(case: Any, target: Target) -> None:
    """Every other case with a path parameter aims at a record that exists; none at the fuzzing accounts."""
    params = case.path_parameters or {}
    if params and next(target.turns) % 2:
        for name in params:
            if target.known.get(name):
                params[name] = target.known[name][next(target.turns) % len(target.known[name])]
        if "resource_id" in params:
            params["resource_type"], params["resource_id"] = target.fhir[next(target.turns) % len(target.fhir)]
        elif "resource_type" in params:  # Hypothesis favours the enum's first type; search and create them all
            params["resource_type"] = WRITABLE[next(target.turns) % len(WRITABLE)]
    if params.get("user_id") in target.fuzzer_ids:
        params["user_id"] = target.known["user_id"][0]
    if params.get("code") in SEEDED_REGIONS:
        params["code"] = FUZZ_REGION  # the suite's region tree stays as seeded
    body = case.body
    if case.operation.path == "/api/v1/auth/token" and isinstance(body, dict) and body.get("username") in FUZZERS:
        body["username"] = BYSTANDER  # wrong passwords must not lock or slow down a fuzzing account


def _operation_test(schema: Any, operation: Any, target: Target, username: str) -> Callable[[], None]:
    """One Hypothesis test: the operation's explicit examples, boundary values (coverage), then random input."""
    headers = {"Authorization": f"Bearer {target.tokens[username]}"}

    def call(case: Any) -> None:
        _aimed(case, target)
        response = case.call(base_url=target.base_url, headers=headers, timeout=60)
        case.validate_response(response, checks=CHECKS, headers=headers)

    settings = hypothesis.settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=SEED is None,
                                   phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    return create_test(operation=operation, test_func=call, config=HypothesisTestConfig(
        settings=settings, seed=SEED, project=schema.config,
        modes=[HypothesisTestMode.EXAMPLES, HypothesisTestMode.COVERAGE, HypothesisTestMode.FUZZING]))


@pytest.mark.parametrize("username", FUZZERS)
def test_no_input_answers_a_server_error(target: Target, username: str) -> None:
    """Every documented operation, positive and negative input; after it, the fuzzing login is alive and unchanged."""
    config = schemathesis.Config.from_dict({"generation": {"mode": "all"}})
    schema = schemathesis.openapi.from_url(f"{target.base_url}/openapi.json", config=config)
    failures = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if (operation.method.upper(), operation.path) == EXCLUDED:
            continue
        try:
            _operation_test(schema, operation, target, username)()
        except (Exception, FailureGroup) as exc:  # every operation runs; the failures are reported together
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}")
    assert not failures, "\n\n".join(failures)
    headers = {"Authorization": f"Bearer {target.tokens[username]}"}
    me = requests.get(f"{target.base_url}/api/v1/auth/me", headers=headers, timeout=30)
    assert me.status_code == 200 and me.json()["roles"] == [USERS[username][0].value], "the fuzz ended its own login"


def _resolved(spec: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """Follow a local $ref of the document."""
    while "$ref" in node:
        section, kind, name = node["$ref"].removeprefix("#/").split("/")
        node = spec[section][kind][name]
    return node


def _openapi_path(rule: str) -> str:
    return re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule)


def test_errors_are_documented_as_the_problem_json_they_are(client: FlaskClient, as_user: Any) -> None:
    spec = client.get("/openapi.json").get_json()
    response = client.get("/api/v1/users/999999", headers=as_user(ADMIN))
    assert response.status_code == 404 and response.mimetype == PROBLEM_JSON
    problem = _resolved(spec, spec["components"]["schemas"]["Problem"])
    assert set(response.get_json()) <= set(problem["properties"])
    assert {"type", "title", "status", "detail", "instance", "request_id", "errors"} <= set(problem["properties"])
    assert set(_resolved(spec, problem["properties"]["errors"]["items"])["properties"]) == {"field", "location",
                                                                                              "message"}
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if not path.startswith("/api/") or method == "parameters":
                continue
            errors = {code: _resolved(spec, answer) for code, answer in operation["responses"].items()
                      if code == "default" or int(code) >= 400}
            assert {"default", "401", "403"} <= set(errors) or "security" in operation, (method, path)
            for code, answer in errors.items():
                assert list(answer["content"]) == [PROBLEM_JSON], (method, path, code)
                assert answer["content"][PROBLEM_JSON]["schema"] == {"$ref": "#/components/schemas/Problem"}


def test_the_pagination_header_is_documented_as_the_json_string_it_is(client: FlaskClient, as_user: Any) -> None:
    spec = client.get("/openapi.json").get_json()
    response = client.get("/api/v1/institutions?page_size=2", headers=as_user(ADMIN))
    assert json.loads(response.headers["X-Pagination"])["total_pages"] == 3
    documented = _resolved(spec, spec["paths"]["/api/v1/institutions"]["get"]["responses"]["200"]["headers"]
                           ["X-Pagination"])
    assert documented["schema"] == {"type": "string"}
    assert "total_pages" in documented["description"]


def test_a_pdq_search_without_criteria_is_a_documented_400(client: FlaskClient, as_user: Any) -> None:
    spec = client.get("/openapi.json").get_json()
    response = client.get("/api/v1/empi/persons", headers=as_user(CLINICIAN))
    assert response.status_code == 400 and response.mimetype == PROBLEM_JSON
    documented = _resolved(spec, spec["paths"]["/api/v1/empi/persons"]["get"]["responses"]["400"])
    assert "none of its criteria" in documented["description"]
    assert list(documented["content"]) == [PROBLEM_JSON]


def test_only_login_and_refresh_are_documented_without_a_token(client: FlaskClient) -> None:
    spec = client.get("/openapi.json").get_json()
    open_operations = {(method, path) for path, item in spec["paths"].items() for method, operation in item.items()
                       if method != "parameters" and operation.get("security") == []}
    assert open_operations == {("post", "/api/v1/auth/token"), ("post", "/api/v1/auth/refresh"),
                               ("get", "/fhir/metadata")}
    assert client.post("/api/v1/auth/refresh", json={"refresh_token": "x"}).status_code == 401
    assert client.get("/fhir/metadata").status_code == 200


def test_every_fhir_route_is_documented_with_operation_outcome_errors(app: Flask, client: FlaskClient,
                                                                      as_user: Any) -> None:
    spec = client.get("/openapi.json").get_json()
    routes = {(method.lower(), _openapi_path(rule.rule)) for rule in app.url_map.iter_rules()
              if rule.rule.startswith("/fhir") and "unmatched" not in rule.endpoint
              for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}}
    documented = {(method, path) for path, item in spec["paths"].items() if path.startswith("/fhir")
                  for method in item if method != "parameters"}
    assert routes == documented
    outcome = {FHIR_JSON: {"schema": {"$ref": "#/components/schemas/OperationOutcome"}}}
    for method, path in documented:
        operation = spec["paths"][path][method]
        assert all(answer["content"] == outcome for code, answer in operation["responses"].items()
                   if code == "default" or int(code) >= 400), (method, path)
    search = spec["paths"]["/fhir/{resource_type}"]["get"]
    assert next(p for p in search["parameters"] if p["in"] == "path")["schema"]["enum"] == list(WRITABLE)
    assert {"patient", "code", "date", "birthdate", "_count", "_cursor"} <= {p["name"] for p in search["parameters"]}
    refused = client.get("/fhir/Observation?_count=many", headers=as_user(CLINICIAN))
    assert refused.status_code == 400 and refused.mimetype == FHIR_JSON
    assert refused.get_json()["resourceType"] == "OperationOutcome"


def test_a_module_describes_its_own_fhir_routes(app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    describing = Module(name="tests.describing", extras={"fhir_openapi": lambda: {"fhir.metadata": ("get", {
        "summary": "What this module says", "responses": openapi.fhir_responses(200, "FhirResource", "It", ("404",))},
        [])}})
    monkeypatch.setattr(openapi, "installed", lambda: (*installed(), describing))
    spec = APISpec("t", "1", "3.0.3", plugins=[FlaskPlugin()])
    openapi.register(app, spec)
    operation = spec.to_dict()["paths"]["/fhir/metadata"]["get"]
    assert operation["summary"] == "What this module says"
    assert set(operation["responses"]) == {"200", "404", "default"}
