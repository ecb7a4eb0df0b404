"""What a module declares to the kernel, and the loader that reads the app's one list of modules (hie/modules.py)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import click
from flask import Blueprint, Flask
from flask_smorest import Api

Echo = Callable[[str], None]


@dataclass(frozen=True)
class Module:
    """One module's parts; the app factory, the CLI, the migrations' metadata and `hie demo` read these."""

    name: str  # the package's dotted path as hie/modules.py lists it, like Django's AppConfig.name
    api_blueprints: Callable[[], list[Blueprint]] = list  # flask-smorest Blueprints (REST, in the OpenAPI document)
    blueprints: Callable[[], list[Blueprint]] = list  # plain Flask Blueprints (FHIR routes)
    commands: Callable[[click.Group], None] | None = None  # adds the module's `hie` commands
    platform_models: tuple[str, ...] = ()  # modules whose import defines platform-database tables
    tenant_models: tuple[str, ...] = ()  # modules whose import defines tenant-shard tables
    registrations: tuple[str, ...] = ()  # modules whose import registers sealed columns and outbox handlers
    demo: Callable[[Flask, Echo], None] | None = None  # adds the module's part of the demo region (runs in list order)
    figures: Callable[..., Any] | None = None  # aggregate figures for administrators, if the module has any
    extras: dict[str, Any] = field(default_factory=dict)
    on_app: Callable[[Flask, Api], None] | None = None  # runs with (app, api) once every module's routes exist
    hooks: dict[str, Callable[..., Any]] = field(default_factory=dict)  # named services the kernel asks for
    demo_logins: Callable[[], list[str]] | None = None  # lines the demo adds to its printed logins


@cache
def installed() -> tuple[Module, ...]:
    """The modules named in hie/modules.py, in order; importing each module's `module.py` declares it."""
    names: tuple[str, ...] = importlib.import_module("hie.modules").INSTALLED_MODULES
    return tuple(importlib.import_module(f"{name}.module").module for name in names)


def import_all(kind: str) -> None:
    """Import every installed module's models or registrations (kind: platform_models, tenant_models, registrations)."""
    for module in installed():
        for path in getattr(module, kind):
            importlib.import_module(path)


def hook(name: str) -> Callable[..., Any] | None:
    """The first installed module's implementation of a service the kernel needs but does not own, or None."""
    for module in installed():
        if name in module.hooks:
            return module.hooks[name]
    return None
