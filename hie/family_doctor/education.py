"""Health education: articles a tenant's public-health staff write and publish, delivered to the contracted residents
whose contracts match their tags (and to residents who sign later), with read receipts.

Bodies are Markdown stored as given. Raw HTML and link targets with a scheme other than http, https, mailto or tel
are refused at input, so a client rendering CommonMark (with raw HTML off, as it should be anyway) shows no script."""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from flask_smorest import abort
from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hie.family_doctor import services
from hie.family_doctor.models import Article, Condition, Contract, ContractStatus, Delivery, Team, TeamRole
from hie.platform.audit import services as audit
from hie.platform.auth.identity import Identity
from hie.platform.auth.models import User
from hie.platform.db import platform_session, utcnow
from hie.platform.jobs.services import PLATFORM, emit, handles
from hie.tenants.models import Institution, Tenant

log = logging.getLogger(__name__)

RESOURCE = "Article"
MAX_TITLE = 200
# Text is 65,535 bytes on MySQL: 20,000 characters fit even when every one is a 3-byte CJK character.
MAX_BODY = 20_000
MAX_TAGS = 20
WRITERS = frozenset({TeamRole.public_health})
PUBLISHED_TOPIC = "family_doctor.article_published"
SIGNED_TOPIC = "family_doctor.contract_signed"
SAFE_SCHEMES = frozenset({"http", "https", "mailto", "tel"})
CHUNK = 1000

# A tag as CommonMark and browsers read one (<b>, </p>, <img/...; not `a < b`), a comment, declaration or CDATA
# (<!...) or processing instruction (<?...).
_HTML = re.compile(r"</?[A-Za-z][A-Za-z0-9-]*(?=[\s/>]|$)|<[!?]")
# Inline link and image targets, autolinks, and link reference definitions.
_TARGETS = re.compile(r"\]\(\s*(<[^>\n]*>|[^\s)]+)|<([A-Za-z][A-Za-z0-9+.\-]{1,31}:[^<>\s]*)>"
                      r"|^ {0,3}\[[^\]\n]+\]:\s*(<[^>\n]*>|\S+)", re.MULTILINE)
_SCHEME = re.compile(r"([^/?#]*?):")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def tag_codes() -> dict[str, str]:
    """The tags an article may carry: the catalogue's priority groups and the chronic conditions followed up."""
    codes = dict(services.catalogue()["priority_groups"])
    codes.update({condition.value: codes.get(condition.value, condition.value) for condition in Condition})
    return codes


def contract_topics(packages: Iterable[str], priority_groups: Iterable[str]) -> set[str]:
    """What a contract is about: its priority groups, and its packages' conditions and groups."""
    known = services.catalogue()["packages"]
    topics = set(priority_groups)
    for code in packages:
        package = known.get(code, {})
        topics.update(package.get("conditions", []), package.get("groups", []))
    return topics


def matches(tags: list[str], packages: Iterable[str], priority_groups: Iterable[str]) -> bool:
    """An untagged article is for every contracted resident; a tagged one for contracts sharing a topic."""
    return not tags or bool(set(tags) & contract_topics(packages, priority_groups))


def _unsafe_target(target: str) -> str | None:
    """The scheme of a link target a browser would run or open as something other than a page, else None."""
    cleaned = re.sub(r"[\s\x00-\x1f]", "", html.unescape(target.strip("<>")))
    found = _SCHEME.match(cleaned)
    if found is None or found.group(1).lower() in SAFE_SCHEMES:
        return None
    return found.group(1).lower() or ":"


def _checked_text(field: str, value: str, limit: int) -> str:
    """Text that is not blank, within its limit, holds no control characters and no raw HTML."""
    if not value.strip():
        services.invalid(field, "must not be blank")
    if len(value) > limit:
        services.invalid(field, f"must be at most {limit} characters (it has {len(value)})")
    if _CONTROL.search(value):
        services.invalid(field, "must not contain control characters")
    tag = _HTML.search(value)
    if tag:
        services.invalid(field, f"must be Markdown without raw HTML (found {tag.group(0).strip()!r}); "
                                "write the text in Markdown instead")
    return value


def checked(body: dict[str, Any]) -> tuple[str, str, list[str]]:
    """Title, Markdown body and tags, or 422 naming the field."""
    title = _checked_text("title", body["title"], MAX_TITLE).strip()
    text = _checked_text("body", body["body"], MAX_BODY)
    for found in _TARGETS.finditer(text):
        scheme = _unsafe_target(next(group for group in found.groups() if group is not None))
        if scheme is not None:
            services.invalid("body", f"links may use only {', '.join(sorted(SAFE_SCHEMES))} (found {scheme!r})")
    known = tag_codes()
    tags = list(dict.fromkeys(body.get("tags") or []))
    for index, tag in enumerate(tags):
        if tag not in known:
            services.invalid(f"tags[{index}]", f"{tag!r} is not a condition or priority group ({', '.join(known)})")
    return title, text, tags


def _team_tenant(session: Session, team: Team) -> int:
    return session.get_one(Institution, team.institution_id).tenant_id


def create(identity: Identity, body: dict[str, Any]) -> Article:
    """A draft article of the caller's tenant, written by a public-health member of one of its teams."""
    team, _member = services.require_member(identity, "create", WRITERS)
    title, text, tags = checked(body)
    session = platform_session()
    article = Article(tenant_id=_team_tenant(session, team), title=title, body=text, tags=tags,
                      author_id=identity.user_id, created_at=utcnow())
    session.add(article)
    session.flush()
    audit.record("create", resource_type=RESOURCE, resource_id=str(article.id),
                 detail=f"article drafted, tags: {','.join(tags) or 'none (every contracted resident)'}")
    return article


def visible(identity: Identity, article_id: int, action: str = "read") -> Article:
    """An article of the caller's tenant; any other id answers 404, audited."""
    article = platform_session().get(Article, article_id)
    if article is None or article.tenant_id != identity.tenant_id:
        audit.record(action, "not_found" if article is None else "denied", resource_type=RESOURCE,
                     resource_id=str(article_id))
        abort(404, message="No such article.")
    return article


def publish(identity: Identity, article_id: int, now: datetime | None = None) -> Article:
    """Publish a draft: it is delivered, after commit, to every resident whose active contract matches its tags."""
    article = visible(identity, article_id, "update")
    team, _member = services.require_member(identity, "update", WRITERS)
    session = platform_session()
    if _team_tenant(session, team) != article.tenant_id:
        audit.record("update", "denied", resource_type=RESOURCE, resource_id=str(article.id),
                     detail="publisher's team serves another tenant")
        abort(404, message="No such article.")
    session.refresh(article, with_for_update=True)
    if article.published_at is not None:
        audit.record("update", "failure", resource_type=RESOURCE, resource_id=str(article.id),
                     detail="publish refused: already published")
        abort(409, message=f"The article was already published on {article.published_at.isoformat()}.")
    article.published_at = now or utcnow()
    emit(session, PLATFORM, PUBLISHED_TOPIC, {"article_id": article.id})
    audit.record("update", resource_type=RESOURCE, resource_id=str(article.id), detail="article published")
    session.flush()
    return article


def listed(identity: Identity, published: bool | None, first: int, size: int) -> tuple[list[Article], int]:
    """A page of the caller's tenant's articles, newest first, and how many there are."""
    query = select(Article).where(Article.tenant_id == identity.tenant_id)
    if published is not None:
        query = query.where(Article.published_at.is_not(None) if published else Article.published_at.is_(None))
    session = platform_session()
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(query.order_by(Article.created_at.desc(), Article.id.desc())
                           .offset(first).limit(size)).all()
    return list(rows), total


def views(session: Session, articles: list[Article], with_body: bool = False) -> list[dict[str, Any]]:
    """Articles as shown to staff, with how many residents each reached and how many read it."""
    ids = [article.id for article in articles]
    counts = {row.article_id: (row.delivered, row.read) for row in session.execute(
        select(Delivery.article_id, func.count().label("delivered"), func.count(Delivery.read_at).label("read"))
        .where(Delivery.article_id.in_(ids)).group_by(Delivery.article_id))} if ids else {}
    authors = dict(session.execute(select(User.id, User.display_name).where(
        User.id.in_({article.author_id for article in articles}))).all()) if ids else {}
    shown = []
    for article in articles:
        delivered, read = counts.get(article.id, (0, 0))
        view = {"id": article.id, "title": article.title, "tags": article.tags,
                "author": authors.get(article.author_id), "status": "published" if article.published_at else "draft",
                "created_at": article.created_at,
                "published_at": article.published_at, "delivered": delivered, "read": read}
        if with_body:
            view["body"] = article.body
        shown.append(view)
    return shown


def _deliver(session: Session, article_id: int, persons: set[str], now: datetime) -> int:
    """Deliver to the persons who do not have it yet; a concurrent delivery of the same pair is skipped, not lost."""
    have = set(session.scalars(select(Delivery.master_person_id).where(Delivery.article_id == article_id)))
    todo = sorted(persons - have)
    for start in range(0, len(todo), CHUNK):
        rows = [{"article_id": article_id, "master_person_id": person, "delivered_at": now}
                for person in todo[start:start + CHUNK]]
        try:
            with session.begin_nested():
                session.execute(insert(Delivery), rows)
        except IntegrityError:
            for row in rows:
                try:
                    with session.begin_nested():
                        session.execute(insert(Delivery), [row])
                except IntegrityError:
                    log.info("article %s already delivered to %s", article_id, row["master_person_id"])
    return len(todo)


@handles(PUBLISHED_TOPIC)
def deliver_published(session: Session, payload: dict[str, Any]) -> None:
    """A published article reaches every resident of its tenant whose active contract matches its tags."""
    article = session.get(Article, payload["article_id"])
    if article is None or article.published_at is None:
        return
    tenant_code = session.get_one(Tenant, article.tenant_id).code
    persons = {row.master_person_id for row in session.execute(
        select(Contract.master_person_id, Contract.packages, Contract.priority_groups)
        .where(Contract.status == ContractStatus.active, Contract.tenant_code == tenant_code)
        .execution_options(yield_per=CHUNK))
        if matches(article.tags, row.packages, row.priority_groups)}
    count = _deliver(session, article.id, persons, utcnow())
    log.info("article %s delivered to %s residents of %s", article.id, count, tenant_code)


@handles(SIGNED_TOPIC)
def deliver_to_new_contract(session: Session, payload: dict[str, Any]) -> None:
    """A resident who signs later receives the tenant's published articles that match their contract."""
    contract = session.get(Contract, payload["contract_id"])
    if contract is None or contract.status is not ContractStatus.active:
        return
    tenant_id = session.scalar(select(Tenant.id).where(Tenant.code == contract.tenant_code))
    now = utcnow()
    for article in session.scalars(select(Article).where(Article.tenant_id == tenant_id,
                                                         Article.published_at.is_not(None))):
        if matches(article.tags, contract.packages, contract.priority_groups):
            _deliver(session, article.id, {contract.master_person_id}, now)


def delivered_to(session: Session, persons: list[str], first: int, size: int) -> tuple[list[dict[str, Any]], int]:
    """A page of what was delivered to these persons (a resident and anyone merged into them), newest first."""
    where = Delivery.master_person_id.in_(persons)
    total = session.scalar(select(func.count()).select_from(Delivery).where(where)) or 0
    rows = session.execute(select(Delivery, Article).join(Article, Article.id == Delivery.article_id).where(where)
                           .order_by(Delivery.delivered_at.desc(), Delivery.id.desc()).offset(first).limit(size))
    return [delivery_view(delivery, article) for delivery, article in rows], total


def delivery_view(delivery: Delivery, article: Article) -> dict[str, Any]:
    """One delivered article as the resident sees it."""
    return {"id": delivery.id, "article_id": article.id, "title": article.title, "body": article.body,
            "tags": article.tags, "published_at": article.published_at, "delivered_at": delivery.delivered_at,
            "read_at": delivery.read_at, "read": delivery.read_at is not None}


def mark_read(session: Session, persons: list[str], delivery_id: int, now: datetime) -> dict[str, Any] | None:
    """The read receipt of one of these persons' deliveries (the first reading counts); None if it is not theirs."""
    delivery = session.get(Delivery, delivery_id, with_for_update=True)
    if delivery is None or delivery.master_person_id not in persons:
        return None
    if delivery.read_at is None:
        delivery.read_at = now
        session.flush()
    return delivery_view(delivery, session.get_one(Article, delivery.article_id))
