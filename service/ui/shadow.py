"""The review station's shadow page: how often a model's shadow candidate agreed with the answers, and the
parts where it did not, with their reviews (`service.lifecycle.shadow.agreement`)."""

from __future__ import annotations

from urllib.parse import quote

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse

from service.api.deps import State
from service.api.routes_results import recorder_of
from service.lifecycle.shadow import agreement
from service.ui import auth
from service.ui.pages import login_redirect, page

router = APIRouter(prefix="/ui", include_in_schema=False)


@router.get("/models/{name}/shadow", response_class=HTMLResponse)
def shadow_page(request: Request, state: State, name: str) -> Response:
    session = auth.current_session(request)
    if session is None:
        return login_redirect(request)
    view = agreement(recorder_of(state).db_engine, name)
    candidate = state.shadow.version(name) if state.shadow is not None else None
    return page(request, "shadow.html", session, view={**view, "candidate": candidate})


@router.get("/shadow", response_model=None)
def shadow_default(request: Request, state: State) -> Response:
    """The agreement page of the first shadowed model (else of the default model)."""
    names = sorted(state.shadow.candidates) if state.shadow is not None else []
    name = names[0] if names else state.settings.default_model
    return RedirectResponse(f"/ui/models/{quote(name, safe='')}/shadow", status_code=303)
