"""Rendering the review station's pages: the templates, the login redirect, and where a login may lead."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import Request, Response
from fastapi.responses import RedirectResponse
from fastapi.templating import Jinja2Templates

from service.ui import auth

templates = Jinja2Templates(directory=Path(__file__).resolve().parent / "templates")


def login_redirect(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/ui/login?next={quote(target)}", status_code=303)


def safe_next(target: str | None) -> str:
    # Only back into the station: an open redirect would make the login page a phishing helper.
    if target and target.startswith("/ui") and not target.startswith("//") and "\\" not in target:
        return target
    return "/ui/"


def page(request: Request, name: str, session: auth.UiSession | None, status: int = 200, **context: Any) -> Response:
    response = templates.TemplateResponse(
        request, name, {"session": session, **context}, status_code=status, headers={"Cache-Control": "no-store"}
    )
    return response
