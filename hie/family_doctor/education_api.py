"""REST routes of health education (/api/v1/family-doctor/articles): drafts and publishing by public-health staff,
the tenant's articles with how many residents each reached and how many read it."""

from __future__ import annotations

import http
from typing import Any

from flask.views import MethodView
from marshmallow import Schema, fields, validate

from hie.family_doctor import education
from hie.family_doctor.api import blp
from hie.platform.access import Permission, require
from hie.platform.auth.decorators import login_required
from hie.platform.db import platform_session
from hie.platform.schemas import PathSchema


class ArticleInSchema(PathSchema):
    """A draft: a title, a Markdown body (no raw HTML) and the conditions and priority groups it is for."""

    title = fields.String(required=True, validate=validate.Length(min=1, max=education.MAX_TITLE))
    body = fields.String(required=True, validate=validate.Length(min=1, max=education.MAX_BODY),
                         metadata={"description": "Markdown; raw HTML and links other than http(s), mailto and "
                                                  "tel are refused"})
    tags = fields.List(fields.String(validate=validate.Length(min=1, max=40)), load_default=list,
                       validate=validate.Length(max=education.MAX_TAGS),
                       metadata={"description": "Priority groups and conditions (hypertension, diabetes); none: "
                                                "every contracted resident of the tenant"})


class ArticleQuerySchema(PathSchema):
    """Drafts or published articles only."""

    status = fields.String(validate=validate.OneOf(("draft", "published")))


class ArticleOutSchema(Schema):
    """An article with its reach: residents it was delivered to and how many of them read it."""

    id = fields.Integer()
    title = fields.String()
    body = fields.String()
    tags = fields.List(fields.String())
    author = fields.String(allow_none=True)
    status = fields.String(metadata={"description": "draft or published"})
    created_at = fields.AwareDateTime()
    published_at = fields.AwareDateTime(allow_none=True)
    delivered = fields.Integer()
    read = fields.Integer()


class ArticleSummaryOutSchema(ArticleOutSchema):
    """An article in a list: everything but the body."""

    class Meta:
        exclude = ("body",)


def _shown(article: Any) -> dict[str, Any]:
    return education.views(platform_session(), [article], with_body=True)[0]


@blp.route("/family-doctor/articles")
class Articles(MethodView):
    """The health-education articles of the caller's tenant."""

    decorators = [login_required]

    @blp.arguments(ArticleQuerySchema, location="query")
    @blp.response(200, ArticleSummaryOutSchema(many=True))
    @blp.paginate()
    def get(self, filters: dict[str, Any], pagination_parameters: Any) -> list[dict[str, Any]]:
        """The tenant's articles, newest first, with how many residents each reached and read it"""
        identity = require(Permission.patient_read)
        status = filters.get("status")
        rows, total = education.listed(identity, None if status is None else status == "published",
                                       pagination_parameters.first_item, pagination_parameters.page_size)
        pagination_parameters.item_count = total
        return education.views(platform_session(), rows)

    @blp.arguments(ArticleInSchema)
    @blp.response(201, ArticleOutSchema)
    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        """Draft an article (public-health staff of a family-doctor team)"""
        return _shown(education.create(require(Permission.patient_write), body))


@blp.route("/family-doctor/articles/<int:article_id>")
class ArticleById(MethodView):
    """One article of the caller's tenant."""

    decorators = [login_required]

    @blp.response(200, ArticleOutSchema)
    def get(self, article_id: int) -> dict[str, Any]:
        """An article with its body and reach; another tenant's id is 404"""
        return _shown(education.visible(require(Permission.patient_read), article_id))


@blp.route("/family-doctor/articles/<int:article_id>/publish")
class ArticlePublish(MethodView):
    """draft -> published."""

    decorators = [login_required]

    @blp.response(200, ArticleOutSchema)
    @blp.alt_response(409, response=http.HTTPStatus.CONFLICT.name)
    def post(self, article_id: int) -> dict[str, Any]:
        """Publish a draft: it reaches, after commit, the residents whose active contracts match its tags, and
        residents who sign later"""
        return _shown(education.publish(require(Permission.patient_write), article_id))
