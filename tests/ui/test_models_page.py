"""The review station's model page: versions and the audit trail for every user; commissioning (propose,
save, promote) for admins only, through the page's JSON routes with the session's CSRF token."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.main import create_app
from service.manifest import MODEL_FILE, sha256_file
from service.ui.users import add_user
from tests.service.test_commission import line, models, recorder_of  # noqa: F401 (models is a fixture)
from tests.service.test_lifecycle import settings

PASSWORDS = {"adam": "adam-password-0123", "ana": "ana-password-0123"}
PAGE = "/ui/models/fake"
API = "/ui/api/models/fake"


@pytest.fixture(scope="module")
def users_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model-page-users") / "users.json"
    add_user(path, "adam", "admin", PASSWORDS["adam"])
    add_user(path, "ana", "reviewer", PASSWORDS["ana"])
    return path


@pytest.fixture
def client(models: Path, users_file: Path) -> Iterator[TestClient]:  # noqa: F811
    app = create_app(settings(models, users_file=users_file, commission_min_parts=20))
    with TestClient(app, follow_redirects=False) as c:
        line(recorder_of(c), sha256_file(models / "fake" / MODEL_FILE))
        yield c


def login(c: TestClient, user: str) -> str:
    """Log in; return the session's CSRF token as the page hands it to its script."""
    form = c.get("/ui/login").text
    token = re.search(r'name="csrf" value="([^"]+)"', form)
    assert token
    c.post("/ui/login", data={"username": user, "password": PASSWORDS[user], "csrf": token.group(1)})
    found = re.search(r'name="csrf" value="([^"]+)"', c.get(PAGE).text)
    assert found
    return found.group(1)


def test_a_reviewer_sees_versions_and_events_but_cannot_commission(client: TestClient) -> None:
    assert client.get(PAGE).status_code == 303  # login first
    csrf = login(client, "ana")
    page = client.get(PAGE)
    assert page.status_code == 200
    assert 'id="versions"' in page.text and 'data-version="1"' in page.text and 'id="events"' in page.text
    assert 'id="commission"' not in page.text
    answer = client.post(f"{API}/calibrations", json={}, headers={"X-CSRF-Token": csrf})
    assert answer.status_code == 403 and answer.json()["error"]["code"] == "role_not_allowed"
    assert 'class="promote-version"' not in page.text and 'id="rollback"' not in page.text
    rollback = client.post(f"{API}/rollback", json={}, headers={"X-CSRF-Token": csrf})
    assert rollback.status_code == 403 and rollback.json()["error"]["code"] == "role_not_allowed"


def test_an_admin_proposes_saves_and_promotes_and_the_events_say_who(client: TestClient) -> None:
    csrf = login(client, "adam")
    page = client.get(PAGE).text
    assert 'id="commission"' in page and 'src="/ui/static/model.js"' in page
    assert client.post(f"{API}/calibrations", json={}).status_code == 403  # no CSRF token
    assert client.post(f"{API}/calibrations", json={}, headers={"X-CSRF-Token": "forged"}).status_code == 403
    headers = {"X-CSRF-Token": csrf}
    proposal = client.post(f"{API}/calibrations", json={"false_reject_rate": 0.05}, headers=headers)
    assert proposal.status_code == 200, proposal.text
    assert proposal.json()["good_sample"]["n"] == 60
    saved = client.post(f"{API}/calibrations/{proposal.json()['id']}/save", json={"reason": "r1"}, headers=headers)
    assert saved.status_code == 200 and saved.json()["version"] == "2"
    promoted = client.post(f"{API}/promote", json={"version": "2", "reason": "r2"}, headers=headers)
    assert promoted.status_code == 200, promoted.text
    events = client.get(f"{API}/events").json()["events"]
    assert [(e["action"], e["actor"], e["reason"]) for e in events] == [
        ("promote", "ui:adam", "r2"),
        ("save", "ui:adam", "r1"),
    ]
    page = client.get(PAGE).text
    assert page.count('data-action="') == 2 and "ui:adam" in page
    active = re.search(r'<tr data-version="([^"]+)">\s*<td>[^<]*</td>\s*<td><strong>active', page)
    assert active and active.group(1) == "2"
    assert 'class="promote-version" data-version="1"' in page and 'id="rollback">Roll back to 1<' in page

    assert client.post(f"{API}/rollback", json={"reason": "r3"}).status_code == 403  # no CSRF token
    rolled = client.post(f"{API}/rollback", json={"reason": "r3"}, headers=headers)
    assert rolled.status_code == 200, rolled.text
    assert (rolled.json()["from_version"], rolled.json()["to_version"]) == ("2", "1")
    events = client.get(f"{API}/events").json()["events"]
    assert (events[0]["action"], events[0]["actor"], events[0]["reason"]) == ("rollback", "ui:adam", "r3")
    active = re.search(r'<tr data-version="([^"]+)">\s*<td>[^<]*</td>\s*<td><strong>active', client.get(PAGE).text)
    assert active and active.group(1) == "1"
