"""The family-doctor REST blueprint; the module's *_api files add their routes to it."""

from __future__ import annotations

from flask_smorest import Blueprint

blp = Blueprint("family_doctor", __name__, url_prefix="/api/v1",
                description="Family doctor: teams, contracts, vitals, follow-ups, the resident's portal")
