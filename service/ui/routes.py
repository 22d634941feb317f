"""The review station at /ui: login, live list, part view, review form, stats (server-rendered Jinja2
pages, a little plain JavaScript from /ui/static; nothing from elsewhere).

`mount_ui(app, settings)` is all the app factory calls. Handlers are plain `def`: FastAPI runs them in its
thread pool, where the database reads and the picture rendering belong.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, FastAPI, Form, Query, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy import Engine

from service.api.deps import ServiceState, State, get_state
from service.api.routes_results import NotArchivedError, ResultNotFoundError, recorder_of
from service.config import Settings
from service.preprocessing import PreprocessConfig
from service.records.reviews import (
    OUTCOMES,
    HourCounts,
    PartFilter,
    ReviewError,
    UnknownDecisionError,
    add_review,
    counts_per_hour,
    list_parts,
    review_history,
    review_stats,
)
from service.ui import auth, images
from service.ui.headers import UiHeadersMiddleware
from service.ui.login_limit import LoginLimiter
from service.ui.models import router as models_router
from service.ui.pages import login_redirect, page, safe_next
from service.ui.shadow import router as shadow_router
from service.ui.users import UserDirectory

HERE = Path(__file__).resolve().parent
router = APIRouter(prefix="/ui", include_in_schema=False)

LIST_ROWS = 100
POLL_MS = 2000  # the list asks for new parts this often; cheap (one indexed query) and fast enough for a line
HOURS_CHOICES = (1, 8, 24, 168, 720)
# The list's window: at most its largest choice (30 days). Its counts per hour are one indexed COUNT per
# hour, and hours that are over come from HOUR_COUNTS, so a poll counts the current hour only.
MAX_LIST_HOURS = max(HOURS_CHOICES)
HOUR_COUNTS = HourCounts()
STATS_HOURS = 720
# Review actions and their keys on the part view (the page shows them; part.js reads the data attributes).
ACTIONS = (
    ("confirmed", "c", "Defect confirmed", True),
    ("false_reject", "f", "False reject (good part)", True),
    ("missed_defect", "m", "Missed defect", False),
)
PICTURES = ("rgb", "depth", "overlay")


def mount_ui(app: FastAPI, settings: Settings) -> None:
    app.state.ui_signer = auth.signer_for(settings)
    app.state.ui_users = UserDirectory(settings.users_path)
    app.state.ui_login_limiter = LoginLimiter(
        settings.login_attempts_per_user, settings.login_attempts_per_address, settings.login_window_s
    )
    app.add_middleware(auth.SessionBeforeBody)  # inside the headers layer: its refusals get them too
    app.add_middleware(UiHeadersMiddleware)
    app.include_router(router)
    app.include_router(models_router)
    app.include_router(shadow_router)
    app.mount("/ui/static", StaticFiles(directory=HERE / "static"), name="ui-static")


def _db_engine(state: ServiceState) -> Engine:
    return recorder_of(state).db_engine


# ---- login


def _loginpage(
    request: Request, target: str | None, error: str | None = None, status: int = 200, user: str = ""
) -> Response:
    token, cookie = auth.new_login_token(request)
    response = page(request, "login.html", None, status, next=safe_next(target), error=error, csrf=token, user=user)
    auth.set_login_cookie(request, response, cookie)
    return response


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str | None = None) -> Response:
    return _loginpage(request, next)


@router.post("/login", response_model=None)
def login(
    request: Request,
    state: State,
    username: Annotated[str, Form(max_length=200)] = "",
    password: Annotated[str, Form(max_length=1024)] = "",
    csrf: Annotated[str, Form(max_length=200)] = "",
    next: Annotated[str, Form(max_length=2000)] = "/ui/",
) -> Response:
    auth.check_login_token(request, csrf)
    name = username.strip()
    address = request.client.host if request.client else "unknown"
    limiter: LoginLimiter = request.app.state.ui_login_limiter
    wait = limiter.retry_after(name, address)
    if wait is not None:  # refused before the (slow) password check
        response = _loginpage(request, next, "Too many failed logins: wait a few minutes.", status=429, user=name)
        response.headers["Retry-After"] = str(max(1, math.ceil(wait)))
        return response
    user = auth.users(request).authenticate(name, password)
    if user is None:
        limiter.failed(name, address)
        return _loginpage(request, next, "Unknown user name or wrong password.", status=401, user=name)
    limiter.succeeded(name)
    response = RedirectResponse(safe_next(next), status_code=303)
    auth.start_session(request, response, user.name, user.role, state.settings.ui_session_hours)
    return response


@router.post("/logout", response_model=None)
def logout(request: Request, csrf: Annotated[str, Form(max_length=200)] = "") -> Response:
    session = auth.require_session(request)
    auth.check_csrf(session.csrf, csrf)
    response = RedirectResponse("/ui/login", status_code=303)
    auth.end_session(response)
    return response


# ---- the live list


_VERDICTS: dict[str, Literal["ok", "review", "ng"]] = {"ok": "ok", "review": "review", "ng": "ng"}
WAITING: tuple[Literal["review", "ng"], ...] = ("review", "ng")  # what a person reviews, in this order


def _part_filter(
    model: str | None, verdict: str | None, reviewed: str | None, hours: float, now: datetime | None = None
) -> PartFilter:
    end = now or datetime.now(UTC)
    return PartFilter(
        model=model or None,
        verdict=_VERDICTS.get(verdict or ""),
        reviewed=True if reviewed == "yes" else False if reviewed == "no" else None,
        since=end - timedelta(hours=hours),
    )


Hours = Annotated[float, Query(gt=0, le=MAX_LIST_HOURS)]
StatsHours = Annotated[float, Query(gt=0, le=24 * 366)]  # aggregated in the database: a year is fine
Verdict = Annotated[Literal["", "review", "ng", "ok"], Query()]
Reviewed = Annotated[Literal["", "yes", "no"], Query()]
ModelName = Annotated[str, Query(max_length=128)]


@router.get("/", response_class=HTMLResponse)
def partspage(
    request: Request,
    state: State,
    model: ModelName = "",
    verdict: Verdict = "",
    reviewed: Reviewed = "",
    hours: Hours = 24,
) -> Response:
    session = auth.current_session(request)
    if session is None:
        return login_redirect(request)
    f = _part_filter(model, verdict, reviewed, hours)
    db_engine = _db_engine(state)
    return page(
        request,
        "list.html",
        session,
        parts=list_parts(db_engine, f, limit=LIST_ROWS),
        counts=counts_per_hour(db_engine, f, cache=HOUR_COUNTS),
        models=sorted(state.engine.models),
        filters={"model": model, "verdict": verdict, "reviewed": reviewed, "hours": hours},
        hours_choices=HOURS_CHOICES,
        poll_ms=POLL_MS,
    )


@router.get("/api/parts")
def parts_data(
    state: State,
    _session: Annotated[auth.UiSession, Depends(auth.require_session)],
    model: ModelName = "",
    verdict: Verdict = "",
    reviewed: Reviewed = "",
    hours: Hours = 24,
) -> JSONResponse:
    """What the list page polls: the rows and the counts per hour for its filters."""
    f = _part_filter(model, verdict, reviewed, hours)
    db_engine = _db_engine(state)
    body = {
        "parts": list_parts(db_engine, f, limit=LIST_ROWS),
        "counts": counts_per_hour(db_engine, f, cache=HOUR_COUNTS),
    }
    return JSONResponse(body, headers={"Cache-Control": "no-store"})


# ---- one part


def _next_unreviewed(db_engine: Engine, request_id: str) -> str | None:
    """The next part waiting for a person: a REVIEW part first, else an NG part."""
    for verdict in WAITING:
        rows = list_parts(db_engine, PartFilter(verdict=verdict, reviewed=False), limit=2)
        found = next((r["request_id"] for r in rows if r["request_id"] != request_id), None)
        if found is not None:
            return found
    return None


@router.get("/parts/{request_id}", response_class=HTMLResponse)
def partpage(request: Request, state: State, request_id: str, saved: int = 0, error: str | None = None) -> Response:
    session = auth.current_session(request)
    if session is None:
        return login_redirect(request)
    recorder = recorder_of(state)
    part = recorder.get(request_id)
    if part is None:
        raise ResultNotFoundError(f"no record of request {request_id!r}")
    history = review_history(recorder.db_engine, request_id)
    threshold = part["threshold"]
    # The bar spans 0 … 2 × threshold (the threshold in the middle); a score beyond that fills it.
    bar_max = 2 * threshold if threshold > 0 else max(part["score"], 1.0)
    return page(
        request,
        "part.html",
        session,
        part=part,
        review=history[-1] if history else None,
        history=history,
        archived=part["evidence"]["status"] == "archived",
        bar={"score": min(part["score"] / bar_max, 1.0), "threshold": threshold / bar_max},
        actions=[a for a in ACTIONS if a[3] == part["is_anomalous"]] if session.can_review else [],
        next_part=_next_unreviewed(recorder.db_engine, request_id),
        saved=bool(saved),
        error=error,
    )


def _config_for(state: ServiceState, model: str) -> PreprocessConfig:
    loaded = state.engine.models.get(model)
    # A record of a model this replica does not serve: the default config (its manifest is not at hand).
    return loaded.manifest.preprocessing if loaded is not None else PreprocessConfig()


@router.get("/parts/{request_id}/{picture}.png")
def part_picture(
    request: Request,
    request_id: str,
    picture: Literal["rgb", "depth", "overlay"],
    _session: Annotated[auth.UiSession, Depends(auth.require_session)],
) -> Response:
    state = get_state(request)
    recorder = recorder_of(state)
    part = recorder.get(request_id)
    if part is None:
        raise ResultNotFoundError(f"no record of request {request_id!r}")
    rgb = recorder.evidence_file(request_id, "rgb")
    other = recorder.evidence_file(request_id, "xyz" if picture == "depth" else "map")
    if rgb is None or other is None:
        raise NotArchivedError(f"request {request_id!r} has no archived evidence ({part['evidence']['status']})")
    limits = state.limits
    if picture == "rgb":
        png = images.rgb_png(rgb[1], limits)
    elif picture == "depth":
        png = images.depth_png(other[1], limits, _config_for(state, part["model"]["name"]))
    else:
        png = images.overlay_png(rgb[1], other[1], limits)
    # Evidence never changes under a request id: the browser may keep the picture for the session.
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})


@router.post("/parts/{request_id}/review", response_model=None)
def review_part(
    request: Request,
    state: State,
    request_id: str,
    outcome: Annotated[str, Form(max_length=32)] = "",
    defect_type: Annotated[str, Form(max_length=200)] = "",
    comment: Annotated[str, Form(max_length=4000)] = "",
    csrf: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    session = auth.require_session(request)
    auth.check_csrf(session.csrf, csrf)
    auth.require_reviewer(session)
    page = f"/ui/parts/{quote(request_id, safe='')}"
    try:
        add_review(
            _db_engine(state), request_id, outcome, operator=session.user, defect_type=defect_type, comment=comment
        )
    except UnknownDecisionError as exc:
        raise ResultNotFoundError(str(exc)) from None
    except ReviewError as exc:
        return RedirectResponse(f"{page}?{urlencode({'error': str(exc)})}", status_code=303)
    return RedirectResponse(f"{page}?saved=1", status_code=303)


# ---- stats


@router.get("/stats", response_class=HTMLResponse)
def statspage(request: Request, state: State, hours: StatsHours = STATS_HOURS) -> Response:
    session = auth.current_session(request)
    if session is None:
        return login_redirect(request)
    since = datetime.now(UTC) - timedelta(hours=hours)
    return page(
        request,
        "stats.html",
        session,
        stats=review_stats(_db_engine(state), since=since),
        hours=hours,
        hours_choices=HOURS_CHOICES,
        outcomes=OUTCOMES,
    )
