"""Commissioning in a real browser: an admin opens the model page of a live `python -m service` (a copy of the
bundled demo model, its records seeded as a line's with reviews), asks for a proposal, sees the plot and the
figures, saves it as a new version and promotes it; the events table and the service then say so.
Screenshots go where test_browser's do ($UI_SCREENSHOTS_DIR refreshes docs/img/).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from service.lifecycle.thresholds import expit
from service.manifest import read_manifest_json
from service.records.reviews import add_review
from tests.records.conftest import decision
from tests.ui.test_browser import (  # noqa: F401 (browser and shots are fixtures)
    Live,
    add_user_by_cli,
    browser,
    recorder_for,
    serve,
    shots,
    wait_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

DEMO = Path(__file__).resolve().parents[2] / "models" / "demo"
ADMIN_USER = "adam.admin"
PASSWORD = "correct horse battery admin"
ADMIN_KEY = "browser-admin-key-0123456789"


def demo_line_env(folder: Path, **extra: str) -> dict[str, str]:
    """The environment of `python -m service` on a copy of the demo model under `folder` (promotion renames
    its files) with an admin user and the records in `folder / "data"`; `extra` adds BRIDGENET_ settings."""
    models = folder / "models"
    shutil.copytree(DEMO, models / "demo", ignore=shutil.ignore_patterns("sample", "history"))
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("BRIDGENET_")}
    users_file = folder / "users.json"
    add_user_by_cli(users_file, ADMIN_USER, "admin", PASSWORD, env)
    env.update(
        BRIDGENET_MODELS_DIR=str(models), BRIDGENET_DEFAULT_MODEL="demo", BRIDGENET_PROVIDERS="cpu",
        BRIDGENET_INTRA_OP_THREADS="1", BRIDGENET_ADMIN_KEY=ADMIN_KEY, BRIDGENET_USERS_FILE=str(users_file),
        BRIDGENET_DATA_DIR=str(folder / "data"), BRIDGENET_COMMISSION_MIN_PARTS="100",
    )  # fmt: skip
    env.update(extra)
    return env


def log_in_as_admin(driver: Any, live: Live, path: str) -> None:
    """Open `path` of the live service and log in as the admin on the form it redirects to."""
    from selenium.webdriver.common.by import By

    driver.get(f"{live.base_url}{path}")
    wait_for(driver, lambda d: d.find_elements(By.ID, "login-button"), "on the login form", live)
    driver.find_element(By.ID, "username-input").send_keys(ADMIN_USER)
    driver.find_element(By.ID, "password-input").send_keys(PASSWORD)
    driver.find_element(By.ID, "login-button").click()


@pytest.fixture(scope="module")
def live_copy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """`python -m service` on a copy of the demo model with an admin user."""
    folder = tmp_path_factory.mktemp("commission-service")
    with serve(folder, demo_line_env(folder), folder / "data") as live:
        yield live


def seed_line(live: Live, version: str, sha: str, threshold: float) -> None:
    """A shift of the demo's line: 240 good parts (scores spread like the demo's good test parts; those
    above the threshold NG and reviewed as false rejects) and 30 confirmed defects."""
    rng = np.random.default_rng(3)
    now = datetime.now(UTC)
    good = expit(rng.normal(0.38, 0.14, 240))
    defects = np.maximum(expit(rng.normal(1.4, 0.5, 30)), threshold + 0.01)
    recorder = recorder_for(live.data_dir)
    try:
        for i, score in enumerate([*good, *defects]):
            ng = bool(score > threshold)
            row = replace(
                decision(i, ng=ng, model="demo", at=now - timedelta(minutes=300 - i)),
                request_id=f"shift-{i:04d}", model_version=version, model_sha256=sha, score=float(score),
                threshold=threshold,
            )  # fmt: skip
            recorder.record(row)
            if ng:
                add_review(
                    recorder.db_engine, row.request_id, "confirmed" if i >= 240 else "false_reject", operator="ana"
                )
    finally:
        recorder.db_engine.dispose()


def test_an_admin_commissions_saves_and_promotes_from_the_page(
    live_copy: Live,
    browser: Any,  # noqa: F811
    shots: Callable[[Any, str], Path],  # noqa: F811
) -> None:
    from selenium.webdriver.common.by import By

    live, driver = live_copy, browser
    manifest, sha = read_manifest_json(DEMO)
    seed_line(live, manifest.version, sha, manifest.threshold.value)
    new = str(int(manifest.version) + 1)  # what saving writes

    log_in_as_admin(driver, live, "/ui/models/demo")
    wait_for(driver, lambda d: d.find_elements(By.ID, "commission-form"), "on the model page", live)

    driver.find_element(By.ID, "last").send_keys("270")
    driver.find_element(By.ID, "propose").click()
    wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#figures tbody tr"), "showing the proposal", live)
    bars = driver.find_elements(By.CSS_SELECTOR, "#plot rect.good")
    assert len(bars) > 5 and driver.find_elements(By.CSS_SELECTOR, "#plot rect.defect")
    assert driver.find_elements(By.CSS_SELECTOR, "#plot line.active") and driver.find_elements(
        By.CSS_SELECTOR, "#plot line.proposed"
    )
    rows = {
        r.find_elements(By.TAG_NAME, "td")[0].text: r.find_elements(By.TAG_NAME, "td")[2].text
        for r in driver.find_elements(By.CSS_SELECTOR, "#figures tbody tr")
    }
    assert rows["Calibration parts (n)"] == "240"
    driver.execute_script("document.getElementById('proposal').scrollIntoView();")
    shots(driver, "commission-proposal")

    driver.find_element(By.ID, "reason").send_keys("first shift on line 1")
    driver.find_element(By.ID, "save").click()
    wait_for(driver, lambda d: d.find_element(By.ID, "promote").is_displayed(), "offering the promotion", live)
    assert f"Saved as version {new}" in driver.find_element(By.ID, "commission-done").text
    driver.find_element(By.ID, "promote").click()
    wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, '#events tr[data-action="promote"]'), "reloaded", live)
    events = [r.text for r in driver.find_elements(By.CSS_SELECTOR, "#events tbody tr")]
    assert "promote" in events[0] and f"ui:{ADMIN_USER}" in events[0] and f"{manifest.version} {new}" in events[0]
    assert "save" in events[1] and "first shift on line 1" in events[1]
    active = driver.find_element(By.CSS_SELECTOR, "#versions tbody tr")
    assert active.get_attribute("data-version") == new and "active" in active.text
    shots(driver, "commission-events")

    listed = httpx.get(f"{live.base_url}/v1/models", timeout=10.0).json()["models"]
    assert [m["version"] for m in listed if m["name"] == "demo"] == [new]
