"""A savepoint nests inside the request's unit of work on every database: releasing it commits nothing."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from hie.tenants.models import Region, RegionLevel

CODE = "141099"


@pytest.fixture
def platform_engine(app, client):  # client: starts from clean data and wipes the region afterwards
    return app.extensions["hie.engines"].platform


def _stored(engine) -> bool:
    with Session(engine) as fresh:
        return fresh.get(Region, CODE) is not None


def test_a_released_savepoint_after_only_reads_is_undone_by_the_rollback(platform_engine):
    with Session(platform_engine) as session:
        session.scalars(select(Region.code)).all()  # reads only: pysqlite has not opened a transaction yet
        with session.begin_nested():
            session.add(Region(code=CODE, name="测试区", level=RegionLevel.county, parent_code="141000"))
        assert _stored(platform_engine) is False, "the savepoint's release committed outside the transaction"
        session.rollback()
    assert _stored(platform_engine) is False


def test_a_rolled_back_savepoint_keeps_the_writes_before_it(platform_engine):
    with Session(platform_engine) as session:
        session.add(Region(code=CODE, name="测试区", level=RegionLevel.county, parent_code="141000"))
        session.flush()
        with pytest.raises(RuntimeError), session.begin_nested():
            session.add(Region(code="141098", name="另一区", level=RegionLevel.county, parent_code="141000"))
            session.flush()
            raise RuntimeError("entry refused")
        session.commit()
    assert _stored(platform_engine) is True
    with Session(platform_engine) as fresh:
        assert fresh.get(Region, "141098") is None
        fresh.delete(fresh.get(Region, CODE))
        fresh.commit()

