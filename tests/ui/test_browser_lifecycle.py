"""The model's whole loop in a real browser, every part through a live `python -m service` (a copy of the demo
model): parts arrive, an admin commissions and saves a version from them on the model page, the service
restarts with that version as its shadow candidate (BRIDGENET_SHADOW), more parts arrive, the shadow page
shows where the candidate disagrees, the admin promotes it and rolls back, and the events table tells who
did each step and why. Screenshots of the shadow page and the events go where test_browser's do.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest

from service.manifest import read_manifest_json
from tests.ui.parts import GOOD_RGB, GOOD_XYZ
from tests.ui.test_browser import (  # noqa: F401 (browser and shots are fixtures)
    KEY,
    RESULTS_KEY,
    Live,
    browser,
    post_part,
    serve,
    shots,
    wait_for,
)
from tests.ui.test_browser_commission import ADMIN_USER, DEMO, demo_line_env, log_in_as_admin

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

FIRST_SHIFT = 24  # parts before commissioning: the fewest a proposal may rest on here is MIN_PARTS
MIN_PARTS = 20
SECOND_SHIFT = 16  # parts scored by the shadow candidate too
METHOD, RATE = "empirical", "0.2"  # a loose target: the proposed threshold falls among the good parts' scores
SHADOW_WAIT_S = 120.0  # the candidate scores at low priority on one thread, behind the line


def good_part(seed: int) -> bytes:
    """The demo's good image with seeded sensor noise and a small brightness change: a good part whose
    score differs from the next one's, PNG-encoded."""
    rng = np.random.default_rng(seed)
    decoded = cv2.imdecode(np.frombuffer(GOOD_RGB, np.uint8), cv2.IMREAD_COLOR)
    assert decoded is not None
    image = decoded.astype(np.float32) * rng.uniform(0.94, 1.06)
    image += rng.normal(0.0, rng.uniform(1.0, 6.0), image.shape)
    ok, png = cv2.imencode(".png", np.clip(image, 0, 255).astype(np.uint8))
    assert ok
    return png.tobytes()


def run_parts(live: Live, seeds: range) -> list[dict[str, Any]]:
    return [post_part(live, good_part(s), GOOD_XYZ, f"line1-{s:03d}") for s in seeds]


def until(check: Callable[[], bool], what: str, live: Live, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            tail = live.log_path.read_text(encoding="utf-8", errors="replace")[-3000:]
            pytest.fail(f"not {what} after {timeout_s:.0f} s\n{tail}")
        time.sleep(0.5)


def shadowed(live: Live) -> dict[str, Any]:
    answer = httpx.get(f"{live.base_url}/v1/models/demo/shadow", headers={"X-API-Key": RESULTS_KEY}, timeout=10.0)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def event_shown(action: str) -> Callable[[Any], Any]:
    """A wait condition: the events table (after the page's reload) has a row of `action`."""
    from selenium.webdriver.common.by import By

    return lambda d: d.find_elements(By.CSS_SELECTOR, f'#events tr[data-action="{action}"]')


def events_table(driver: Any) -> list[list[str]]:
    from selenium.webdriver.common.by import By

    rows = driver.find_elements(By.CSS_SELECTOR, "#events tbody tr")
    return [[td.text for td in r.find_elements(By.TAG_NAME, "td")] for r in rows]


def test_parts_commission_shadow_promote_and_roll_back_in_the_browser(
    tmp_path: Path,
    browser: Any,  # noqa: F811
    shots: Callable[[Any, str], Path],  # noqa: F811
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver = browser
    manifest, _ = read_manifest_json(DEMO)
    old, new = manifest.version, str(int(manifest.version) + 1)
    keys = {"BRIDGENET_API_KEY": KEY, "BRIDGENET_RESULTS_KEY": RESULTS_KEY}
    env = demo_line_env(tmp_path, **keys, BRIDGENET_COMMISSION_MIN_PARTS=str(MIN_PARTS))

    with serve(tmp_path, env, tmp_path / "data") as live:
        first = run_parts(live, range(FIRST_SHIFT))
        assert all(a["model"]["version"] == old and not a["is_anomalous"] for a in first), first
        assert len({round(a["score"], 6) for a in first}) > FIRST_SHIFT // 2  # the parts differ

        log_in_as_admin(driver, live, "/ui/models/demo")
        wait_for(driver, lambda d: d.find_elements(By.ID, "commission-form"), "on the model page", live)
        driver.find_element(By.ID, "last").send_keys(str(FIRST_SHIFT))
        Select(driver.find_element(By.ID, "method")).select_by_value(METHOD)
        driver.find_element(By.ID, "rate").clear()
        driver.find_element(By.ID, "rate").send_keys(RATE)
        driver.find_element(By.ID, "propose").click()
        wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#figures tbody tr"), "showing the proposal", live)
        figures = {
            r.find_elements(By.TAG_NAME, "td")[0].text: r.find_elements(By.TAG_NAME, "td")[2].text
            for r in driver.find_elements(By.CSS_SELECTOR, "#figures tbody tr")
        }
        assert figures["Calibration parts (n)"] == str(FIRST_SHIFT) and figures["Method"] == METHOD
        driver.find_element(By.ID, "reason").send_keys("first shift, 24 parts")
        driver.find_element(By.ID, "save").click()
        wait_for(driver, lambda d: d.find_element(By.ID, "promote").is_displayed(), "saved", live)
        assert f"Saved as version {new}" in driver.find_element(By.ID, "commission-done").text
    candidate_threshold = read_manifest_json(tmp_path / "models" / "demo" / "history" / new)[0].threshold.value

    env["BRIDGENET_SHADOW"] = json.dumps({"demo": new})
    with serve(tmp_path, env, tmp_path / "data") as live:
        second = run_parts(live, range(100, 100 + SECOND_SHIFT))
        assert all(a["model"]["version"] == old for a in second)
        until(lambda: shadowed(live)["shadowed"] == SECOND_SHIFT, "every part shadowed", live, SHADOW_WAIT_S)
        # The candidate is the same graph under a new threshold: it disagrees exactly on the OK parts it rejects.
        expected = sorted(a["request_id"] for a in second if a["score"] > candidate_threshold)
        assert expected, f"no part of the second shift above the candidate's threshold {candidate_threshold}"

        log_in_as_admin(driver, live, "/ui/models/demo/shadow")
        wait_for(driver, lambda d: d.find_elements(By.ID, "shadow-agreement"), "on the shadow page", live)
        assert driver.find_element(By.ID, "candidate").text == new
        cells = driver.find_elements(By.CSS_SELECTOR, "#shadow-agreement tbody td")
        assert [c.text for c in cells[:3]] == [str(SECOND_SHIFT), str(SECOND_SHIFT - len(expected)), str(len(expected))]
        rows = driver.find_elements(By.CSS_SELECTOR, "#disagreements tbody tr")
        assert sorted(str(r.get_attribute("data-request-id")) for r in rows) == expected
        answers = {a["request_id"]: a for a in second}
        for row in rows:
            answer, candidate = row.find_elements(By.TAG_NAME, "td")[2:4]
            score = answers[row.get_attribute("data-request-id")]["score"]
            assert answer.text == f"OK {score:.4f} (v{old})" and candidate.text == f"NG {score:.4f} (v{new})"
        shots(driver, "lifecycle-shadow")

        driver.get(f"{live.base_url}/ui/models/demo")
        wait_for(driver, lambda d: d.find_elements(By.ID, "switch-reason"), "on the model page", live)
        driver.find_element(By.ID, "switch-reason").send_keys(f"shadow agreed on {SECOND_SHIFT - len(expected)}")
        driver.find_element(By.CSS_SELECTOR, f'button.promote-version[data-version="{new}"]').click()
        wait_for(driver, event_shown("promote"), "promoted", live)
        active = driver.find_element(By.CSS_SELECTOR, "#versions tbody tr")
        assert active.get_attribute("data-version") == new and "active" in active.text
        listed = httpx.get(f"{live.base_url}/v1/models", headers={"X-API-Key": KEY}, timeout=10.0)
        assert [m["version"] for m in listed.json()["models"]] == [new], listed.text

        driver.find_element(By.ID, "switch-reason").send_keys("too many false rejects at the packing table")
        assert driver.find_element(By.ID, "rollback").text == f"Roll back to {old}"
        driver.find_element(By.ID, "rollback").click()
        wait_for(driver, event_shown("rollback"), "rolled back", live)
        active = driver.find_element(By.CSS_SELECTOR, "#versions tbody tr")
        assert active.get_attribute("data-version") == old and "active" in active.text
        after = post_part(live, good_part(999), GOOD_XYZ, "line1-999")
        assert after["model"]["version"] == old

        who = f"ui:{ADMIN_USER}"
        # When, action, who, from, to, why; newest first.
        assert [row[1:] for row in events_table(driver)] == [
            ["rollback", who, new, old, "too many false rejects at the packing table"],
            ["promote", who, old, new, f"shadow agreed on {SECOND_SHIFT - len(expected)}"],
            ["save", who, old, new, "first shift, 24 parts"],
        ]
        driver.execute_script("document.getElementById('events').scrollIntoView();")
        shots(driver, "lifecycle-events")
