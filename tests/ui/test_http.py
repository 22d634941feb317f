"""The review station over HTTP: login and its cookies, CSRF refusals, reviews, the list's data, pictures,
stats, and the review in GET /v1/results. The app is the real one (create_app) with a real SQLite audit
trail in a temporary directory; the models are not loaded (none is needed to review records)."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.cookies import Morsel, SimpleCookie
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.codecs import DecodeLimits
from service.config import Settings
from service.preprocessing import PreprocessConfig
from service.ui import images
from service.ui.auth import LOGIN_COOKIE, SESSION_COOKIE
from service.ui.routes import mount_ui
from service.ui.users import add_user, remove_user
from tests.records.test_api import build_app as records_app
from tests.ui.parts import HW, XYZ, record

KEY = "ui-test-key-0123456789"  # the results reader's key
LINE_KEY = "ui-line-key-0123456789"
PASSWORDS = {"ana": "ana-password-0123", "vic": "vic-password-0123"}
NOW = datetime.now(UTC).replace(microsecond=0)


def build_app(settings: Settings) -> FastAPI:
    """The records' test app (results API, records started by the lifespan as service.main does, engine
    not loaded) with the review station mounted as service.main mounts it."""
    app = records_app(settings)
    mount_ui(app, settings)
    return app


@pytest.fixture(scope="module")
def users_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A reviewer (ana) and a viewer (vic); made once: each password hash takes a deliberate while."""
    path = tmp_path_factory.mktemp("ui-users") / "users.json"
    add_user(path, "ana", "reviewer", PASSWORDS["ana"])
    add_user(path, "vic", "viewer", PASSWORDS["vic"])
    return path


@pytest.fixture
def client(tmp_path: Path, users_file: Path) -> Iterator[TestClient]:
    settings = Settings(
        data_dir=tmp_path / "data",
        api_key=LINE_KEY,  # type: ignore[arg-type]
        results_key=KEY,  # type: ignore[arg-type]
        archive="ng",
        users_file=users_file,
        login_attempts_per_user=3,
        login_attempts_per_address=5,
    )
    with TestClient(build_app(settings), follow_redirects=False) as c:
        recorder = c.app.state.service.records.recorder  # type: ignore[attr-defined]
        for i in range(6):  # ng: 0, 2, 4; newest is 5
            record(recorder, f"req-{i}", ng=i % 2 == 0, received_at=NOW - timedelta(minutes=50 - i))
        record(recorder, "req-old", ng=True, received_at=NOW - timedelta(hours=30))
        yield c


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, html
    return found.group(1)


def set_cookie(answer: httpx.Response, name: str) -> Morsel[str]:
    """The Set-Cookie header of `answer` that sets `name`."""
    for header in answer.headers.get_list("set-cookie"):
        parsed = SimpleCookie(header)
        if name in parsed:
            return parsed[name]
    raise AssertionError(f"no {name} cookie set: {answer.headers}")


def login_form(c: TestClient, user: str, password: str, **extra: str) -> httpx.Response:
    token = csrf_of(c.get("/ui/login").text)
    return c.post("/ui/login", data={"username": user, "password": password, "csrf": token, **extra})


def login(c: TestClient, user: str = "ana") -> str:
    """Log in through the form; return the session's CSRF token (from the next page)."""
    answer = login_form(c, user, PASSWORDS[user], next="/ui/")
    assert answer.status_code == 303, answer.text
    assert answer.headers["location"] == "/ui/"
    return csrf_of(c.get("/ui/").text)


def review(c: TestClient, request_id: str, outcome: str, csrf: str, **fields: str) -> int:
    answer = c.post(f"/ui/parts/{request_id}/review", data={"outcome": outcome, "csrf": csrf, **fields})
    return answer.status_code


# ---- auth


def test_pages_and_data_need_a_login(client: TestClient) -> None:
    page = client.get("/ui/parts/req-0")
    assert page.status_code == 303 and page.headers["location"] == "/ui/login?next=/ui/parts/req-0"
    assert client.get("/ui/stats").headers["location"].startswith("/ui/login")
    for path in ("/ui/api/parts", "/ui/parts/req-0/rgb.png"):
        answer = client.get(path)
        assert answer.status_code == 401, path
        assert answer.json()["error"]["code"] == "login_required"


def test_login_cookies_are_httponly_strict_and_scoped(client: TestClient) -> None:
    login_cookie = set_cookie(client.get("/ui/login"), LOGIN_COOKIE)
    assert login_cookie["httponly"] and login_cookie["samesite"].lower() == "strict" and login_cookie["path"] == "/ui"
    answer = login_form(client, "ana", PASSWORDS["ana"])
    assert answer.status_code == 303
    session = set_cookie(answer, SESSION_COOKIE)
    assert session["httponly"] and session["samesite"].lower() == "strict" and session["path"] == "/ui"
    assert not session["secure"]  # plain HTTP here; set over HTTPS
    assert client.get("/ui/").status_code == 200


def test_wrong_password_unknown_user_or_an_api_key_is_refused_without_a_session(client: TestClient) -> None:
    attempts = (("ana", "wrong-password"), ("nobody", PASSWORDS["ana"]), ("   ", ""), ("ana", LINE_KEY), ("ana", KEY))
    for user, password in attempts:
        answer = login_form(client, user, password)
        assert answer.status_code == 401
        assert SESSION_COOKIE not in answer.cookies
        assert 'id="login-error"' in answer.text
    assert client.get("/ui/").status_code == 303


def test_forged_login_form_is_refused(client: TestClient) -> None:
    client.get("/ui/login")  # the browser holds a login cookie, the forged form does not know its token
    for token in ("", "guessed-token"):
        answer = client.post("/ui/login", data={"username": "ana", "password": PASSWORDS["ana"], "csrf": token})
        assert answer.status_code == 403
        assert answer.json()["error"]["code"] == "csrf_failed"
    assert client.get("/ui/").status_code == 303


def test_tampered_session_cookie_is_no_session(client: TestClient) -> None:
    login(client)
    value = client.cookies.get(SESSION_COOKIE)
    assert value
    body, mac = value.split(".")
    client.cookies.clear()
    client.cookies.set(SESSION_COOKIE, f"{body}.{mac}")
    assert client.get("/ui/").status_code == 200  # the cookie as issued works
    client.cookies.clear()
    client.cookies.set(SESSION_COOKIE, f"{body}x.{mac}")
    assert client.get("/ui/").status_code == 303


def test_open_redirect_after_login_is_refused(client: TestClient) -> None:
    answer = login_form(client, "ana", PASSWORDS["ana"], next="//evil.example/")
    assert answer.headers["location"] == "/ui/"


def test_logout_needs_the_csrf_token_and_ends_the_session(client: TestClient) -> None:
    csrf = login(client)
    forged = client.post("/ui/logout", data={"csrf": "nope"})
    assert forged.status_code == 403 and forged.json()["error"]["code"] == "csrf_failed"
    assert client.get("/ui/").status_code == 200
    answer = client.post("/ui/logout", data={"csrf": csrf})
    assert answer.status_code == 303 and answer.headers["location"] == "/ui/login"
    assert client.get("/ui/").status_code == 303


# ---- reviews


def test_forged_review_is_refused_and_stores_nothing(client: TestClient) -> None:
    login(client)
    assert review(client, "req-0", "confirmed", "forged") == 403
    answer = client.post("/ui/parts/req-0/review", data={"outcome": "confirmed"})
    assert answer.status_code == 403 and answer.json()["error"]["code"] == "csrf_failed"
    assert client.get("/v1/results/req-0", headers={"X-API-Key": KEY}).json()["review"] is None


def test_review_is_stored_with_operator_and_shown_by_results_api(client: TestClient) -> None:
    csrf = login(client, "ana")
    answer = client.post(
        "/ui/parts/req-0/review", data={"outcome": "confirmed", "defect_type": "crack", "comment": "edge", "csrf": csrf}
    )
    assert answer.status_code == 303 and answer.headers["location"] == "/ui/parts/req-0?saved=1"
    one = client.get("/v1/results/req-0", headers={"X-API-Key": KEY}).json()["review"]
    assert one["outcome"] == "confirmed" and one["defect_type"] == "crack" and one["comment"] == "edge"
    assert one["operator"] == "ana"  # the authenticated user, not a typed name
    assert abs(datetime.fromisoformat(one["created"]) - datetime.now(UTC)) < timedelta(minutes=1)
    listed = client.get("/v1/results", headers={"X-API-Key": KEY}).json()["results"]
    by_id = {r["request_id"]: r["review"] for r in listed}
    assert by_id["req-0"] == one and by_id["req-2"] is None
    page = client.get("/ui/parts/req-0").text
    assert 'id="current-review"' in page and "by ana" in page and "crack" in page


def test_a_second_review_overrides_the_first_and_both_are_kept(client: TestClient) -> None:
    csrf = login(client)
    assert review(client, "req-2", "confirmed", csrf) == 303
    assert review(client, "req-2", "false_reject", csrf) == 303
    assert client.get("/v1/results/req-2", headers={"X-API-Key": KEY}).json()["review"]["outcome"] == "false_reject"
    assert "1 earlier review(s)" in client.get("/ui/parts/req-2").text


@pytest.mark.parametrize(
    ("request_id", "outcome", "fields", "message"),
    [
        ("req-1", "confirmed", {}, "does not apply to an OK part"),
        ("req-0", "missed_defect", {}, "does not apply to an NG part"),
        ("req-0", "maybe", {}, "is not one of"),
        ("req-0", "false_reject", {"defect_type": "crack"}, "defect type goes with"),
        ("req-0", "confirmed", {"defect_type": "../../etc"}, "defect type goes with"),
    ],
)
def test_an_impossible_review_is_refused_with_its_reason(
    client: TestClient, request_id: str, outcome: str, fields: dict[str, str], message: str
) -> None:
    csrf = login(client)
    answer = client.post(f"/ui/parts/{request_id}/review", data={"outcome": outcome, "csrf": csrf, **fields})
    assert answer.status_code == 303 and "error=" in answer.headers["location"]
    page = client.get(answer.headers["location"]).text
    assert message in page.replace("&#39;", "'")
    assert client.get(f"/v1/results/{request_id}", headers={"X-API-Key": KEY}).json()["review"] is None


def test_review_of_an_unknown_part_is_404(client: TestClient) -> None:
    csrf = login(client)
    answer = client.post("/ui/parts/nope/review", data={"outcome": "confirmed", "csrf": csrf})
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "unknown_result"


# ---- list, pictures, stats


def test_list_data_is_ng_first_filtered_and_counted_per_hour(client: TestClient) -> None:
    csrf = login(client)
    assert review(client, "req-4", "confirmed", csrf) == 303
    data = client.get("/ui/api/parts").json()
    assert [p["request_id"] for p in data["parts"]] == ["req-4", "req-2", "req-0", "req-5", "req-3", "req-1"]
    assert sum(c["ok"] for c in data["counts"]) == 3 and sum(c["ng"] for c in data["counts"]) == 3
    unreviewed = client.get("/ui/api/parts", params={"verdict": "ng", "reviewed": "no"}).json()["parts"]
    assert [p["request_id"] for p in unreviewed] == ["req-2", "req-0"]
    week = client.get("/ui/api/parts", params={"verdict": "ng", "hours": 168}).json()["parts"]
    assert [p["request_id"] for p in week][-1] == "req-old"
    assert client.get("/ui/api/parts", params={"model": "other"}).json() == {"parts": [], "counts": []}
    assert client.get("/ui/api/parts", params={"verdict": "maybe"}).status_code == 422
    # The window is capped at the largest choice (30 days): a year of rows is not the list's business.
    assert client.get("/ui/api/parts", params={"hours": 720}).status_code == 200
    too_long = client.get("/ui/api/parts", params={"hours": 24 * 365})
    assert too_long.status_code == 422 and "hours" in too_long.text


def test_pictures_are_pngs_of_the_evidence(client: TestClient) -> None:
    login(client)
    pictures = {}
    for kind in ("rgb", "depth", "overlay"):
        answer = client.get(f"/ui/parts/req-0/{kind}.png")
        assert answer.status_code == 200 and answer.headers["content-type"] == "image/png", kind
        pictures[kind] = cv2.imdecode(np.frombuffer(answer.content, np.uint8), cv2.IMREAD_UNCHANGED)
    assert pictures["rgb"].shape == (*HW, 3) and pictures["overlay"].shape == (*HW, 3)
    expected = images.depth_image(XYZ, DecodeLimits(), PreprocessConfig())
    assert pictures["depth"].shape == expected.shape
    assert np.abs(pictures["depth"].astype(np.float32) / 255.0 - expected).max() <= 0.5 / 255 + 1e-6
    # The overlay is red where the map is hot (the block under REGION), blue elsewhere.
    hot, cold = pictures["overlay"][165, 200].astype(int), pictures["overlay"][20, 20].astype(int)
    rgb = pictures["rgb"]
    assert hot[2] - int(rgb[165, 200, 2]) > 40 and cold[0] - int(rgb[20, 20, 0]) > 20
    ok_part = client.get("/ui/parts/req-1/rgb.png")  # archive=ng: OK parts keep no evidence
    assert ok_part.status_code == 404 and ok_part.json()["error"]["code"] == "not_archived"


def test_part_page_shows_score_model_timings_regions_and_keys(client: TestClient) -> None:
    login(client)
    page = client.get("/ui/parts/req-0").text
    texts = (
        "0.9000",
        "0.5000",
        "manifest",
        "demo",
        "inference 4.2",
        "12.50 mm²",
        "5.25 mm",
        'data-key="c"',
        'data-key="f"',
    )
    for text in texts:
        assert text in page, text
    assert 'data-key="m"' not in page  # "missed defect" is for OK parts
    assert 'data-key="m"' in client.get("/ui/parts/req-1").text


def test_stats_give_false_reject_and_confirmed_rates_per_model(client: TestClient) -> None:
    csrf = login(client)
    assert review(client, "req-0", "confirmed", csrf) == 303
    assert review(client, "req-2", "false_reject", csrf) == 303
    assert review(client, "req-4", "false_reject", csrf) == 303
    assert review(client, "req-1", "missed_defect", csrf, defect_type="dent") == 303
    page = client.get("/ui/stats").text
    row = re.search(r'<tr data-model="demo">(.*?)</tr>', page, re.S)
    assert row, page
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row.group(1))
    # parts, NG, reviewed NG, confirmed, false rejects, FRR, confirmed-NG rate, missed (req-old is 30 h old: in),
    # then the review band: sent to review, reviewed, found defective, found good
    assert cells[1:] == ["7", "4", "3", "1", "2", "66.7 %", "33.3 %", "1", "0", "0", "0", "0"]  # no review band


def test_review_parts_come_first_and_the_stats_say_how_their_reviews_came_out(client: TestClient) -> None:
    recorder = client.app.state.service.records.recorder  # type: ignore[attr-defined]
    record(recorder, "band-old", ng=False, review=True, received_at=NOW - timedelta(minutes=55))
    record(recorder, "band-new", ng=False, review=True, received_at=NOW - timedelta(minutes=1))
    csrf = login(client)
    parts = client.get("/ui/api/parts").json()["parts"]
    assert [p["request_id"] for p in parts][:5] == ["band-new", "band-old", "req-4", "req-2", "req-0"]
    assert [p["verdict"] for p in parts][:3] == ["review", "review", "ng"]
    only = client.get("/ui/api/parts", params={"verdict": "review"}).json()["parts"]
    assert [p["request_id"] for p in only] == ["band-new", "band-old"]
    page = client.get("/ui/").text
    assert page.index('data-request-id="band-new"') < page.index('data-request-id="req-4"')
    assert '<tr class="review" data-request-id="band-new">' in page
    # A REVIEW part is reviewed as an NG one is (confirmed / false reject); the next part waiting is one too.
    part = client.get("/ui/parts/band-new").text
    assert ">REVIEW</span>" in part and 'data-key="c"' in part and 'data-key="f"' in part
    assert 'id="next-part" href="/ui/parts/band-old"' in part
    assert review(client, "band-new", "confirmed", csrf) == 303
    assert review(client, "band-old", "false_reject", csrf) == 303
    assert review(client, "req-0", "confirmed", csrf) == 303
    row = re.search(r'<tr data-model="demo">(.*?)</tr>', client.get("/ui/stats").text, re.S)
    assert row
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row.group(1))
    # parts 9, not accepted 6 (REVIEW included), reviewed 3: 2 confirmed, 1 false reject; then the band:
    # 2 sent to review, both reviewed, one found defective, one good
    assert cells[1:] == ["9", "6", "3", "2", "1", "33.3 %", "66.7 %", "0", "2", "2", "1", "1"]


def test_with_audit_off_the_station_and_the_results_api_say_so_alike(tmp_path: Path, users_file: Path) -> None:
    settings = Settings(
        data_dir=tmp_path / "data",
        api_key=LINE_KEY,  # type: ignore[arg-type]
        results_key=KEY,  # type: ignore[arg-type]
        users_file=users_file,
        audit="off",
    )
    with TestClient(build_app(settings), follow_redirects=False) as c:
        assert login_form(c, "ana", PASSWORDS["ana"]).status_code == 303
        station = c.get("/ui/api/parts")
        results = c.get("/v1/results", headers={"X-API-Key": KEY})
    assert station.status_code == results.status_code == 404
    assert station.json()["error"]["code"] == results.json()["error"]["code"] == "audit_off"
    assert station.json()["error"]["message"] == results.json()["error"]["message"]


# ---- users, roles, login limits, browser protections


def test_the_api_keys_do_not_open_the_station(client: TestClient) -> None:
    for key in (LINE_KEY, KEY):
        assert client.get("/ui/api/parts", headers={"X-API-Key": key}).status_code == 401
        assert login_form(client, "line", key).status_code == 401


def test_a_viewer_sees_parts_but_cannot_review(client: TestClient) -> None:
    csrf = login(client, "vic")
    page = client.get("/ui/parts/req-0").text
    assert 'id="view-only"' in page and 'id="review-form"' not in page
    answer = client.post("/ui/parts/req-0/review", data={"outcome": "confirmed", "csrf": csrf})
    assert answer.status_code == 403 and answer.json()["error"]["code"] == "role_not_allowed"
    assert client.get("/v1/results/req-0", headers={"X-API-Key": KEY}).json()["review"] is None


def test_removing_a_user_ends_their_session(client: TestClient, tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    add_user(path, "tmp", "reviewer", "tmp-password-0123")
    client.app.state.ui_users.path = path  # type: ignore[attr-defined]
    token = csrf_of(client.get("/ui/login").text)
    client.post("/ui/login", data={"username": "tmp", "password": "tmp-password-0123", "csrf": token})
    assert client.get("/ui/").status_code == 200
    remove_user(path, "tmp")
    assert client.get("/ui/").status_code == 303
    assert client.get("/ui/api/parts").status_code == 401


def test_repeated_bad_logins_get_429_per_user_and_per_address(client: TestClient) -> None:
    for _ in range(3):  # login_attempts_per_user=3
        assert login_form(client, "ana", "wrong-password").status_code == 401
    blocked = login_form(client, "ana", PASSWORDS["ana"])  # even the right password, until the window ends
    assert blocked.status_code == 429 and int(blocked.headers["Retry-After"]) > 0
    assert SESSION_COOKIE not in blocked.cookies and "Too many failed logins" in blocked.text
    # Other names from the same address: two more failures reach login_attempts_per_address=5.
    assert login_form(client, "nobody", "x").status_code == 401
    assert login_form(client, "someone", "x").status_code == 401
    assert login_form(client, "vic", PASSWORDS["vic"]).status_code == 429


def test_station_answers_carry_browser_protections(client: TestClient) -> None:
    csrf = login(client)
    assert csrf
    for path in ("/ui/login", "/ui/", "/ui/parts/req-0", "/ui/static/ui.css", "/ui/api/parts", "/ui/nope"):
        headers = client.get(path).headers
        csp = headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp and "'unsafe-inline'" not in csp, path
        assert headers["x-content-type-options"] == "nosniff", path
        assert headers["referrer-policy"] == "same-origin", path
        assert headers["x-frame-options"] == "DENY", path
    # CSP without 'unsafe-inline' refuses style attributes: the pages must carry none.
    for path in ("/ui/", "/ui/parts/req-0", "/ui/stats", "/ui/login"):
        assert "style=" not in client.get(path).text, path
    assert "content-security-policy" not in client.get("/v1/status", headers={"X-API-Key": KEY}).headers


def test_a_broken_users_file_keeps_the_users_read_before(
    client: TestClient, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "users.json"
    add_user(path, "tmp", "reviewer", "tmp-password-0123")
    client.app.state.ui_users.path = path  # type: ignore[attr-defined]
    assert login_form(client, "tmp", "tmp-password-0123").status_code == 303
    path.write_text("{not json", encoding="utf-8")  # a hand edit gone wrong
    with caplog.at_level(logging.ERROR, logger="service.ui.users"):
        assert client.get("/ui/").status_code == 200
    assert "the users file cannot be read" in caplog.text
