"""Chronic-disease follow-ups: scheduling them from a contract's packages, and dropping them when it ends."""

from __future__ import annotations

from datetime import date, timedelta

from sqlalchemy import update
from sqlalchemy.orm import Session

from hie.family_doctor.models import Condition, Contract, FollowUp, FollowUpStatus
from hie.family_doctor.services import conditions_of
from hie.platform.db import new_id

FIRST_VISIT = timedelta(days=14)


def schedule_contract(session: Session, contract: Contract, today: date) -> list[FollowUp]:
    """The first follow-up of each chronic condition the contract's packages cover, due within two weeks."""
    scheduled = [FollowUp(id=new_id(), contract_id=contract.id, team_id=contract.team_id,
                          institution_id=contract.institution_id, master_person_id=contract.master_person_id,
                          condition=Condition(condition), status=FollowUpStatus.scheduled, due_on=today + FIRST_VISIT)
                 for condition in conditions_of(contract.packages)]
    session.add_all(scheduled)
    return scheduled


def cancel_contract(session: Session, contract: Contract) -> None:
    """A contract that ends drops the follow-ups it still had scheduled."""
    session.execute(update(FollowUp).where(FollowUp.contract_id == contract.id,
                                           FollowUp.status == FollowUpStatus.scheduled)
                    .values(status=FollowUpStatus.cancelled))
