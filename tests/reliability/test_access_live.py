"""Roles, reviewers' logins and a trusted proxy against a real `python -m service` on loopback: the line
key predicts and does nothing else, the results key reads and does nothing else, a reviewer created with
`python -m service users add` logs in and their review carries their name, bad logins hit 429, and
X-Forwarded-* count only from the configured proxy addresses."""

from __future__ import annotations

import re
import subprocess
import sys
from http.cookies import SimpleCookie
from pathlib import Path

import httpx
import pytest

from tests.reliability.conftest import REPO, ModelsUnderTest, StartService, part_files, run_until_exit, service_env

pytestmark = pytest.mark.timeout(180)

LINE_KEY = "live-line-key-0123456789"
RESULTS_KEY = "live-results-key-0123456789"
ADMIN_KEY = "live-admin-key-0123456789"
PASSWORD = "a reviewer's passphrase"


def users_cli(users_file: Path, *args: str, password: str | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m service users ...` with the password on stdin, as a script would give it."""
    return subprocess.run(
        [sys.executable, "-m", "service", "users", "--file", str(users_file), *args],
        input=password, capture_output=True, text=True, timeout=60, cwd=REPO,
        env=service_env(users_file.parent),
    )  # fmt: skip


def login(client: httpx.Client, user: str, password: str, **headers: str) -> httpx.Response:
    page = client.get("/ui/login", headers=headers)
    token = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert token, page.text
    form = {"username": user, "password": password, "csrf": token.group(1), "next": "/ui/"}
    return client.post("/ui/login", data=form, headers=headers)


def predict(url: str, key: str, request_id: str, **headers: str) -> httpx.Response:
    headers = {"X-API-Key": key, "X-Request-ID": request_id, **headers}
    return httpx.post(f"{url}/v1/predict", files=part_files(), headers=headers, timeout=30)


def test_each_key_does_its_own_job_and_reviews_carry_the_user(
    start_service: StartService, models_under_test: ModelsUnderTest, tmp_path: Path
) -> None:
    users_file = tmp_path / "users.json"
    added = users_cli(users_file, "add", "ana", "--role", "reviewer", password=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    assert PASSWORD not in users_file.read_text()  # a salted hash, never the password
    listed = users_cli(users_file, "list")
    assert '"name": "ana"' in listed.stdout and '"role": "reviewer"' in listed.stdout and "argon2" not in listed.stdout
    service = start_service(
        models_under_test.models_dir,
        models_under_test.default_model,
        api_key=LINE_KEY,
        results_key=RESULTS_KEY,
        admin_key=ADMIN_KEY,
        users_file=str(users_file),
        archive="all",
        workers="1",  # the login attempts below are counted per worker process
    )
    url = service.url
    # The line key predicts; it reads no result and does not log in.
    assert predict(url, LINE_KEY, "live-1").status_code == 200
    line = {"X-API-Key": LINE_KEY}
    for path in ("/v1/results", "/v1/results.csv", "/v1/results/live-1", "/v1/results/live-1/files/rgb"):
        answer = httpx.get(f"{url}{path}", headers=line, timeout=10)
        assert answer.status_code == 403 and answer.json()["error"]["code"] == "key_not_allowed", path
    with httpx.Client(base_url=url, timeout=30) as browser:
        assert login(browser, "ana", LINE_KEY).status_code == 401
        assert browser.get("/ui/api/parts", headers=line).status_code == 401
    # The results key reads; it does not predict, reload or review.
    reader = {"X-API-Key": RESULTS_KEY}
    assert predict(url, RESULTS_KEY, "live-2").status_code == 403
    assert httpx.post(f"{url}/v1/admin/reload", headers={"X-Admin-Key": RESULTS_KEY}, timeout=10).status_code == 401
    record = httpx.get(f"{url}/v1/results/live-1", headers=reader, timeout=10)
    assert record.status_code == 200 and record.json()["review"] is None
    assert httpx.get(f"{url}/v1/results/live-2", headers=reader, timeout=10).status_code == 404  # never predicted
    with httpx.Client(base_url=url, timeout=30) as browser:
        assert login(browser, "ana", RESULTS_KEY).status_code == 401
    # The reviewer logs in with their own password; the review records who they are.
    with httpx.Client(base_url=url, timeout=30) as browser:
        assert login(browser, "ana", PASSWORD).status_code == 303
        page = browser.get("/ui/parts/live-1").text
        csrf = re.search(r'name="csrf" value="([^"]+)"', page)
        assert csrf and 'id="operator"' in page
        outcome = "confirmed" if record.json()["is_anomalous"] else "missed_defect"
        reviewed = browser.post("/ui/parts/live-1/review", data={"outcome": outcome, "csrf": csrf.group(1)})
        assert reviewed.status_code == 303 and "saved=1" in reviewed.headers["location"]
    review = httpx.get(f"{url}/v1/results/live-1", headers=reader, timeout=10).json()["review"]
    assert review["operator"] == "ana" and review["outcome"] == outcome
    # Guessing: five failures for a name (the default), then 429 before any password check.
    with httpx.Client(base_url=url, timeout=30) as guesser:
        codes = [login(guesser, "ana", f"guess-{i}").status_code for i in range(6)]
    assert codes == [401] * 5 + [429]
    # Removing the user ends that name's logins.
    assert users_cli(users_file, "remove", "ana").returncode == 0
    assert '"ana"' not in users_cli(users_file, "list").stdout


def test_the_users_cli_refuses_a_short_password_and_a_duplicate(tmp_path: Path) -> None:
    users_file = tmp_path / "users.json"
    short = users_cli(users_file, "add", "ben", password="short\n")
    assert short.returncode == 2 and "expected 10 to 1024" in short.stderr and not users_file.exists()
    assert users_cli(users_file, "add", "ben", "--role", "viewer", password=PASSWORD + "\n").returncode == 0
    again = users_cli(users_file, "add", "ben", password=PASSWORD + "\n")
    assert again.returncode == 2 and "exists" in again.stderr
    bad = users_cli(users_file, "add", "../etc", password=PASSWORD + "\n")
    assert bad.returncode == 2 and "user name" in bad.stderr


def _cookie(answer: httpx.Response, name: str) -> SimpleCookie:
    for header in answer.headers.get_list("set-cookie"):
        parsed = SimpleCookie(header)
        if name in parsed:
            return parsed
    raise AssertionError(f"no {name} cookie: {answer.headers}")


@pytest.mark.parametrize("trusted", [True, False], ids=["trusted-proxy", "untrusted-peer"])
def test_forwarded_headers_count_only_from_the_configured_proxy(
    start_service: StartService, models_under_test: ModelsUnderTest, trusted: bool
) -> None:
    # The test talks from 127.0.0.1: trusted, that is the proxy; otherwise the proxy is elsewhere.
    service = start_service(
        models_under_test.models_dir,
        models_under_test.default_model,
        api_key=LINE_KEY,
        results_key=RESULTS_KEY,
        forwarded_allow_ips="127.0.0.1" if trusted else "10.255.0.1",
    )
    forwarded = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"}
    assert predict(service.url, LINE_KEY, "fwd-1", **forwarded).status_code == 200
    record = httpx.get(f"{service.url}/v1/results/fwd-1", headers={"X-API-Key": RESULTS_KEY}, timeout=10).json()
    assert record["client"] == ("203.0.113.7" if trusted else "127.0.0.1")
    login_page = httpx.get(f"{service.url}/ui/login", headers=forwarded, timeout=10)
    cookie = _cookie(login_page, "bridgenet_ui_login")["bridgenet_ui_login"]
    assert bool(cookie["secure"]) is trusted


def test_production_refuses_a_short_or_shared_admin_key(models_under_test: ModelsUnderTest, tmp_path: Path) -> None:
    for admin_key, expected in (
        ("short-admin", "BRIDGENET_ADMIN_KEY has 11 characters"),
        (LINE_KEY, "BRIDGENET_API_KEY and BRIDGENET_ADMIN_KEY are the same value"),
    ):
        code, log = run_until_exit(
            models_under_test.models_dir, tmp_path, environment="production", api_key=LINE_KEY, admin_key=admin_key
        )
        assert code == 2 and expected in log, log[-2000:]
        assert admin_key not in log
