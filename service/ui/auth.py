"""Review station login: a user of the users file (service.ui.users) gives their name and password once
for a signed session cookie that carries the name (recorded with each review), the role and the session's
CSRF token.

- Cookies are HttpOnly (no script reads them), SameSite=Strict (no other site's page sends them) and
  Secure when the page came over HTTPS; scoped to /ui. A session is `base64(json).hmac_sha256` under the
  server secret (BRIDGENET_UI_SECRET, else random per process), so the server keeps no session table.
- Every form that changes something (login, review, logout) carries a CSRF token that must match the one
  signed into a cookie: the session's, or before login a short-lived login cookie's (no login CSRF).
- A session counts only while its user is still in the users file with the same role: removing a user
  ends their sessions at their next request.
- Failed logins are limited per name and per client address (service.ui.login_limit).
- The API keys do not log in: the line's and the results reader's keys are for /v1 only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

from fastapi import Request, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.errors import ApiError, UnauthorizedError, error_response
from service.config import Settings
from service.ui.users import UserDirectory

SESSION_COOKIE = "bridgenet_ui"
LOGIN_COOKIE = "bridgenet_ui_login"
COOKIE_PATH = "/ui"
LOGIN_PATH = "/ui/login"
LOGIN_FORM_TTL_S = 600  # a login form older than this is refused (reload the page)


class CsrfError(ApiError):
    status, code = 403, "csrf_failed"


class LoginRequiredError(UnauthorizedError):
    code = "login_required"


class RoleError(ApiError):
    status, code = 403, "role_not_allowed"


@dataclass(frozen=True)
class UiSession:
    user: str
    role: str
    csrf: str
    expires: float

    @property
    def can_review(self) -> bool:
        return self.role in ("reviewer", "admin")

    @property
    def can_admin(self) -> bool:
        return self.role == "admin"


class Signer:
    """HMAC-SHA256 signed, expiring JSON tokens."""

    def __init__(self, secret: bytes) -> None:
        self._key = hashlib.sha256(b"bridgenet-ui-session\0" + secret).digest()  # never the raw API secret

    def _mac(self, body: bytes) -> str:
        return base64.urlsafe_b64encode(hmac.new(self._key, body, hashlib.sha256).digest()).decode().rstrip("=")

    def sign(self, payload: dict[str, Any]) -> str:
        body = base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode()).rstrip(b"=")
        return f"{body.decode()}.{self._mac(body)}"

    def unsign(self, token: str | None, *, now: float | None = None) -> dict[str, Any] | None:
        """The payload of a token this signer made and that has not expired; None for anything else."""
        if not token or token.count(".") != 1:
            return None
        body, mac = token.split(".")
        if not hmac.compare_digest(mac.encode(), self._mac(body.encode()).encode()):
            return None
        try:
            payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        except (binascii.Error, ValueError):
            return None
        if not isinstance(payload, dict) or float(payload.get("exp", 0)) < (now or time.time()):
            return None
        return payload


def signer_for(settings: Settings) -> Signer:
    secret = settings.ui_secret.get_secret_value().encode() if settings.ui_secret else secrets.token_bytes(32)
    return Signer(secret)


def _signer(request: Request) -> Signer:
    signer: Signer = request.app.state.ui_signer
    return signer


def users(request: Request) -> UserDirectory:
    directory: UserDirectory = request.app.state.ui_users
    return directory


def _set_cookie(request: Request, response: Response, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def current_session(request: Request) -> UiSession | None:
    payload = _signer(request).unsign(request.cookies.get(SESSION_COOKIE))
    if payload is None or "user" not in payload:
        return None
    user = users(request).get(str(payload["user"]))
    if user is None or user.role != payload.get("role"):  # removed, or given another role, since
        return None
    return UiSession(user=user.name, role=user.role, csrf=str(payload["csrf"]), expires=float(payload["exp"]))


def require_session(request: Request) -> UiSession:
    """For the station's data routes (JSON, pictures): the session, or 401 login_required."""
    session = current_session(request)
    if session is None:
        raise LoginRequiredError("log in at /ui/login first (the review station uses a session cookie)")
    return session


def require_reviewer(session: UiSession) -> None:
    if not session.can_review:
        raise RoleError(f"user {session.user!r} has the role {session.role!r}; only reviewers record reviews")


def require_admin(session: UiSession) -> None:
    if not session.can_admin:
        raise RoleError(f"user {session.user!r} has the role {session.role!r}; only admins change model versions")


def check_csrf(expected: str, sent: str | None) -> None:
    if not sent or not hmac.compare_digest(expected.encode(), sent.encode()):
        raise CsrfError("the form's CSRF token is missing or wrong; reload the page and submit it again")


def new_login_token(request: Request) -> tuple[str, str]:
    """A fresh CSRF token for the login form and its signed, short-lived twin for the login cookie."""
    token = secrets.token_urlsafe(24)
    return token, _signer(request).sign({"login": token, "exp": time.time() + LOGIN_FORM_TTL_S})


def set_login_cookie(request: Request, response: Response, cookie: str) -> None:
    _set_cookie(request, response, LOGIN_COOKIE, cookie, LOGIN_FORM_TTL_S)


def check_login_token(request: Request, sent: str | None) -> None:
    payload = _signer(request).unsign(request.cookies.get(LOGIN_COOKIE))
    check_csrf(str(payload["login"]) if payload else secrets.token_urlsafe(24), sent)


def start_session(request: Request, response: Response, user: str, role: str, hours: float) -> UiSession:
    session = UiSession(user=user, role=role, csrf=secrets.token_urlsafe(24), expires=time.time() + hours * 3600)
    payload = {"user": session.user, "role": session.role, "csrf": session.csrf, "exp": session.expires}
    token = _signer(request).sign(payload)
    _set_cookie(request, response, SESSION_COOKIE, token, int(hours * 3600))
    response.delete_cookie(LOGIN_COOKIE, path=COOKIE_PATH)
    return session


def end_session(response: Response) -> None:
    response.delete_cookie(SESSION_COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict")


class SessionBeforeBody:
    """Pure ASGI: a POST to the station other than the login form needs a valid session cookie, checked
    from the headers before one byte of its form is read (FastAPI reads a form before the route runs). A
    request without one is answered 401 login_required and its connection closed, so a client without a
    login cannot hold a connection open by trickling a review or logout form."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"].startswith(COOKIE_PATH + "/")
            and scope["path"] != LOGIN_PATH
            and current_session(Request(scope)) is None
        ):
            refusal = LoginRequiredError("log in at /ui/login first (the review station uses a session cookie)")
            response = error_response(refusal.info())
            response.headers["Connection"] = "close"
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
