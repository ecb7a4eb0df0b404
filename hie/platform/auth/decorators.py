"""Bearer-token authentication for views."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from flask import g, request
from flask_smorest import abort

from hie.platform.auth import services
from hie.platform.auth.tokens import TokenError
from hie.platform.db import platform_session

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="hie"'}


def authenticate_request() -> None:
    """Resolve the Authorization header into g.identity, or refuse with 401."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        abort(401, message="Log in first: send Authorization: Bearer <access token>.", headers=_CHALLENGE)
    try:
        g.identity = services.resolve(platform_session(), token.strip())
    except TokenError as exc:
        headers = {"WWW-Authenticate": f'Bearer realm="hie", error="invalid_token", error_description="{exc}"'}
        abort(401, message=f"The access token was refused: {exc}.", headers=headers)


def login_required(view: Callable[..., Any]) -> Callable[..., Any]:
    """MethodView decorator: the caller must present a live access token."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if g.get("identity") is None:
            authenticate_request()
        return view(*args, **kwargs)

    return wrapper
