"""The Linfen demo region: city and 17 county tenants, their institutions, a user for every role; then each
installed module's demo step, in the order hie/modules.py lists them."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

from flask import Flask
from sqlalchemy import select
from sqlalchemy.orm import Session

from hie.platform.auth import accounts
from hie.platform.auth.models import Role, User
from hie.platform.db import session_scope
from hie.platform.modules import installed
from hie.tenants import services
from hie.tenants.models import Institution, InstitutionLevel, InstitutionType, RegionLevel, Tenant

DEMO_PASSWORD = "Linfen-Demo-2026"
COUNTIES_CSV = Path(__file__).parent / "data" / "linfen_counties.csv"
CITY_TENANT = "linfen"

TOWNSHIPS = {
    "141002": ("屯里镇", "乔李镇"), "141021": ("史村镇", "北董乡"), "141022": ("唐兴镇", "南梁镇"),
    "141023": ("新城镇", "赵康镇"), "141024": ("大槐树镇", "甘亭镇"), "141025": ("岳阳镇", "北平镇"),
    "141026": ("府城镇", "和川镇"), "141027": ("天坛镇", "响水河镇"), "141028": ("吉昌镇", "屯里镇"),
    "141029": ("昌宁镇", "光华镇"), "141030": ("昕水镇", "曲峨镇"), "141031": ("龙泉镇", "午城镇"),
    "141032": ("芝河镇", "桑壁镇"), "141033": ("蒲城镇", "薛关镇"), "141034": ("永安镇", "对竹镇"),
    "141081": ("上马街道", "新田乡"), "141082": ("鼓楼街道", "白龙镇"),
}
VILLAGES = ("东关村", "南庄村")


def _tenant_code(pinyin: str) -> str:
    return pinyin.split()[0].lower()


def _counties() -> list[dict[str, str]]:
    with COUNTIES_CSV.open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _ensure_tenant(session: Session, app: Flask, code: str, name: str, region: str) -> Tenant:
    tenant = session.scalar(select(Tenant).where(Tenant.code == code))
    if tenant is None:
        tenant = services.add_tenant(session, app.config["HIE"], code, name, region)
    services.provision(app.extensions["hie.engines"], tenant)
    return tenant


def _ensure_institution(session: Session, code: str, name: str, tenant: str, level: InstitutionLevel,
                        region: str, type_: InstitutionType) -> Institution:
    existing = session.scalar(select(Institution).where(Institution.code == code))
    return existing or services.add_institution(session, code, name, tenant, level.value, region, type_.value)


def _build_region(session: Session, app: Flask) -> None:
    services.ensure_region(session, "140000", "山西省", RegionLevel.province, None)
    for row in _counties():
        if row["kind"] == "city":
            services.ensure_region(session, row["code"], row["name"], RegionLevel.city, "140000")
            _ensure_tenant(session, app, CITY_TENANT, row["name"] + "市直", row["code"])
            _ensure_institution(session, "LF-PH", "临汾市人民医院", CITY_TENANT, InstitutionLevel.tertiary_hospital,
                                row["code"], InstitutionType.general_hospital)
            _ensure_institution(session, "LF-HC", "临汾市卫生健康委员会", CITY_TENANT,
                                InstitutionLevel.administration, row["code"], InstitutionType.health_commission)
            continue
        county, code = row["code"], _tenant_code(row["pinyin"])
        services.ensure_region(session, county, row["name"], RegionLevel.county, "141000")
        _ensure_tenant(session, app, code, row["name"], county)
        prefix = code.upper()
        _ensure_institution(session, f"{prefix}-CH", f"{row['name']}人民医院", code,
                            InstitutionLevel.secondary_hospital, county, InstitutionType.general_hospital)
        for t_index, township in enumerate(TOWNSHIPS[county], start=1):
            t_code = f"{county}{99 + t_index:03d}"
            services.ensure_region(session, t_code, township, RegionLevel.township, county)
            _ensure_institution(session, f"{prefix}-T{t_index}", f"{row['name']}{township}卫生院", code,
                                InstitutionLevel.township_health_centre, t_code, InstitutionType.primary_care)
            for v_index, village in enumerate(VILLAGES, start=1):
                v_code = f"{t_code}{200 + v_index:03d}"
                services.ensure_region(session, v_code, village, RegionLevel.village, t_code)
                _ensure_institution(session, f"{prefix}-T{t_index}-V{v_index}", f"{township}{village}卫生室",
                                    code, InstitutionLevel.village_clinic, v_code, InstitutionType.primary_care)


DEMO_USERS: tuple[tuple[str, Role, str, str], ...] = (
    ("admin", Role.platform_admin, "LF-HC", "平台管理员"),
    ("auditor", Role.auditor, "LF-HC", "审计员"),
    ("healthadmin", Role.health_admin, "LF-HC", "卫健委统计科"),
    ("linfen.admin", Role.tenant_admin, "LF-PH", "市直租户管理员"),
    ("specialist", Role.specialist, "LF-PH", "张主任"),
    ("yaodu.admin", Role.tenant_admin, "YAODU-CH", "尧都区租户管理员"),
    ("yaodu.itadmin", Role.institution_admin, "YAODU-CH", "尧都区人民医院信息科"),
    ("yaodu.doctor", Role.clinician, "YAODU-CH", "李医生"),
    ("yaodu.nurse", Role.nurse, "YAODU-CH", "赵护士"),
    ("yaodu.familydoctor", Role.family_doctor, "YAODU-T1", "王医生"),
    ("quwo.doctor", Role.clinician, "QUWO-CH", "陈医生"),
    ("linfen.steward", Role.data_steward, "LF-HC", "主索引管理员"),
)


def build_demo(app: Flask, echo: Callable[[str], None]) -> None:
    """Create whatever of the demo region is missing, run each module's demo step and print the logins."""
    engines = app.extensions["hie.engines"]
    with session_scope(engines.platform) as session:
        _build_region(session, app)
    with session_scope(engines.platform) as session:
        for username, role, institution_code, display in DEMO_USERS:
            if session.scalar(select(User.id).where(User.username == username)) is None:
                accounts.add_user(session, username, [role], institution_code, DEMO_PASSWORD, display)
    for module in installed():
        if module.demo is not None:
            module.demo(app, echo)
    echo(demo_logins())


def demo_present(session: Session) -> bool:
    """Whether an earlier `hie demo` made the region's accounts."""
    names = [username for username, *_ in DEMO_USERS]
    return len(session.scalars(select(User.id).where(User.username.in_(names))).all()) == len(names)


def login_line(username: str, role: Role, institution: str) -> str:
    """One row of the printed table of demo accounts."""
    return f"  {username:<20} {role.value:<18} {institution}"


def demo_logins() -> str:
    """The printed table of demo accounts, with what each module adds to it."""
    rows = [login_line(username, role, institution) for username, role, institution, _display in DEMO_USERS]
    hints: list[str] = []
    for module in installed():
        for line in module.demo_logins() if module.demo_logins is not None else []:
            (rows if line.startswith("  ") else hints).append(line)  # accounts in the table, hints after it
    return "\n".join([f"Demo logins (password for all: {DEMO_PASSWORD}):", *rows, *hints])
