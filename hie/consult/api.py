"""The consultation REST blueprint; the module's *_api files add their routes to it."""

from __future__ import annotations

from flask_smorest import Blueprint

blp = Blueprint("consult", __name__, url_prefix="/api/v1",
                description="Remote consultation, remote reading of images and ECGs, and teleteaching")
