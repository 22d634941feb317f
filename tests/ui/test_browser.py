"""The review station in a real browser: Debian's chromium driven by Selenium (chromium-driver) against a
live `python -m service` on a loopback port with the bundled demo model and the audit trail in a temporary
BRIDGENET_DATA_DIR. Log in, a freshly posted NG part appears in the list without a reload, open it, review
it with a key, see the stats change, log out. Screenshots of the list and the part view are saved under
the test's temporary folder, and also into $UI_SCREENSHOTS_DIR when set (how docs/img/ is refreshed).

Skipped when chromium or chromedriver is missing, failed instead when CI is set (docker/ci-apt.sh
installs both).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.records.archive import Archive
from service.records.database import create_db_engine, database_url
from service.records.store import Recorder
from tests.deploy.processes import free_port, stop, wait_until
from tests.deploy.tools import require_tool
from tests.ui.parts import REGION, RGB, SAMPLE, XYZ, record

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

# Regions whose labels would print over each other above their boxes: side by side, one right under another,
# one without a point under it, and one recorded before lengths were measured (no length_mm).
_SMALL = {"area_px": 40, "measured_fraction": 1.0, "max_score": 0.9, "mean_score": 0.8}
CROWDED = [
    {**_SMALL, "x": 100, "y": 100, "width": 8, "height": 8, "area_mm2": 3.0, "length_mm": 4.0},
    {**_SMALL, "x": 112, "y": 100, "width": 8, "height": 8, "area_mm2": 2.0, "length_mm": 2.5},
    {**_SMALL, "x": 100, "y": 112, "width": 8, "height": 8, "area_mm2": None, "length_mm": None},
    {**_SMALL, "x": 124, "y": 104, "width": 8, "height": 8, "area_mm2": 1.5},
]
log = logging.getLogger(__name__)

KEY = "browser-test-key-0123456789"  # the line's key: predicts
RESULTS_KEY = "browser-results-key-0123456789"  # reads the records
OPERATOR = "ana.quality"
PASSWORD = "correct horse battery"
READY_TIMEOUT_S = 90.0
WAIT_S = 20.0  # any one thing the page should show
POLL_S = 0.2
WINDOW = (1280, 1000)
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",  # /dev/shm is small in containers
)


@dataclass(frozen=True)
class Live:
    base_url: str
    data_dir: Path
    log_path: Path


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """`python -m service` with the demo model, an API key and the audit trail in a temporary folder."""
    folder = tmp_path_factory.mktemp("ui-service")
    data_dir = folder / "data"
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("BRIDGENET_")}
    users_file = folder / "users.json"
    add_user_by_cli(users_file, OPERATOR, "reviewer", PASSWORD, env)
    env.update(
        BRIDGENET_MODELS_DIR=str(SAMPLE.parents[1]),
        BRIDGENET_MODELS="demo",
        BRIDGENET_DEFAULT_MODEL="demo",
        BRIDGENET_PROVIDERS="cpu",
        BRIDGENET_INTRA_OP_THREADS="2",
        BRIDGENET_API_KEY=KEY,
        BRIDGENET_RESULTS_KEY=RESULTS_KEY,
        BRIDGENET_USERS_FILE=str(users_file),
        BRIDGENET_DATA_DIR=str(data_dir),
        BRIDGENET_ARCHIVE="ng",
    )
    with serve(folder, env, data_dir) as live:
        yield live


def add_user_by_cli(users_file: Path, name: str, role: str, password: str, env: dict[str, str]) -> None:
    """Add a user as a plant would: the users CLI, the password on stdin."""
    added = subprocess.run(
        [sys.executable, "-m", "service", "users", "--file", str(users_file), "add", name, "--role", role],
        input=password + "\n", capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr


@contextmanager
def serve(folder: Path, env: dict[str, str], data_dir: Path) -> Iterator[Live]:
    """`python -m service` (niced) on a free loopback port with `env`, logging to `folder`; ready, then stopped."""
    port = free_port()
    log_path = folder / "service.log"
    log_file = log_path.open("w", encoding="utf-8")
    process = subprocess.Popen(
        ["nice", "-n", "10", sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=log_file, stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: httpx.get(f"{base}/readyz", timeout=2.0).status_code == 200,
            process, log_path, what="/readyz 200", timeout_s=READY_TIMEOUT_S, poll_s=POLL_S,
            not_yet=(httpx.TransportError,),
        )  # fmt: skip
        yield Live(base, data_dir, log_path)
    finally:
        stop(process, log_file)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    chromium = require_tool("chromium")
    chromedriver = require_tool("chromedriver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    options.add_argument(f"--window-size={WINDOW[0]},{WINDOW[1]}")
    driver_log = tmp_path_factory.mktemp("chromedriver") / "chromedriver.log"
    driver = webdriver.Chrome(service=Service(chromedriver, log_output=str(driver_log)), options=options)
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()  # ends chromedriver and the browser it started


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Any, str], Path]:
    folder = tmp_path_factory.mktemp("screenshots")
    extra = os.environ.get("UI_SCREENSHOTS_DIR")

    def save(driver: Any, name: str) -> Path:
        path = folder / f"{name}.png"
        assert driver.save_screenshot(str(path)), f"no screenshot {path}"
        if extra:
            Path(extra).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, Path(extra) / path.name)
        log.warning("screenshot %s", path)
        return path

    return save


def recorder_for(data_dir: Path) -> Recorder:
    """A second writer on the live service's records (SQLite WAL allows it): earlier parts, seeded."""
    db_engine = create_db_engine(database_url(data_dir, None))
    return Recorder(db_engine, archive=Archive(data_dir / "archive", 1 << 30), archive_policy="ng")


def post_part(live: Live, rgb: bytes, xyz: bytes, part_id: str) -> dict[str, Any]:
    answer = httpx.post(
        f"{live.base_url}/v1/predict",
        headers={"X-API-Key": KEY},
        files={"rgb": ("rgb.png", rgb, "image/png"), "xyz": ("xyz.tiff", xyz, "image/tiff")},
        data={"part_id": part_id, "return_map": "png"},
        timeout=60.0,
    )
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def assert_recorded(live: Live, answer: dict[str, Any]) -> None:
    """The predict route committed its record before answering: the results API has it at once."""
    request_id = str(answer["request_id"])
    found = httpx.get(f"{live.base_url}/v1/results/{request_id}", headers={"X-API-Key": RESULTS_KEY}, timeout=10.0)
    assert found.status_code == 200, found.text


def wait_for(driver: Any, condition: Callable[[Any], Any], what: str, live: Live) -> Any:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, WAIT_S, poll_frequency=POLL_S).until(condition)
    except TimeoutException:
        tail = live.log_path.read_text(encoding="utf-8", errors="replace")[-3000:]
        pytest.fail(f"not {what} after {WAIT_S:.0f} s at {driver.current_url}\n{driver.page_source[:3000]}\n{tail}")


def stats_row(driver: Any, model: str) -> dict[str, str]:
    from selenium.webdriver.common.by import By

    row = driver.find_element(By.CSS_SELECTOR, f'#stats tr[data-model="{model}"]')
    return {
        c: row.find_element(By.CLASS_NAME, c).text for c in ("reviewed-ng", "confirmed", "false-reject", "frr", "cnr")
    }


def test_log_in_see_a_new_ng_part_live_review_it_and_log_out(
    live: Live, browser: Any, shots: Callable[[Any, str], Path]
) -> None:
    from selenium.webdriver.common.by import By

    driver = browser
    # Earlier parts so that the list and the counts per hour have something: one reviewed-looking day.
    recorder = recorder_for(live.data_dir)
    now = datetime.now(UTC)
    try:
        for i in range(8):
            record(recorder, f"earlier-{i}", ng=i % 4 == 0, received_at=now - timedelta(minutes=40 * i + 5))
        record(recorder, "with-region", ng=True, received_at=now - timedelta(hours=5), part_id="line1-region")
        record(recorder, "crowded", ng=True, received_at=now - timedelta(hours=6), regions=CROWDED)
    finally:
        recorder.db_engine.dispose()

    # Log in (an unauthenticated page sends the browser to the login form).
    driver.get(f"{live.base_url}/ui/")
    wait_for(driver, lambda d: d.find_elements(By.ID, "login-button"), "on the login form", live)
    driver.find_element(By.ID, "username-input").send_keys(OPERATOR)
    driver.find_element(By.ID, "password-input").send_keys(PASSWORD)
    driver.find_element(By.ID, "login-button").click()
    wait_for(driver, lambda d: d.find_elements(By.ID, "parts-body"), "on the list after login", live)
    assert driver.find_element(By.ID, "operator").text == OPERATOR
    session = driver.get_cookie("bridgenet_ui")
    assert session and session["httpOnly"] and session["sameSite"] == "Strict"

    # Stats before any review.
    driver.get(f"{live.base_url}/ui/stats")
    before = stats_row(driver, "demo")
    assert before["reviewed-ng"] == "0" and before["cnr"] == "–"

    # A fresh NG part appears in the list without a reload.
    driver.get(f"{live.base_url}/ui/")
    wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#parts-body tr"), "showing the earlier parts", live)
    driver.execute_script("window.__sameDocument = true;")
    part_id = f"line1-live-{int(now.timestamp())}"
    answer = post_part(live, RGB, XYZ, part_id)
    assert answer["is_anomalous"], answer
    assert_recorded(live, answer)
    row_xpath = f"//tbody[@id='parts-body']/tr[@data-request-id='{answer['request_id']}']"
    wait_for(driver, lambda d: d.find_elements(By.XPATH, row_xpath), "showing the new part", live)
    assert driver.execute_script("return window.__sameDocument === true;"), "the page was reloaded"
    first = driver.find_element(By.CSS_SELECTOR, "#parts-body tr")
    assert first.get_attribute("data-request-id") == answer["request_id"]  # newest NG first
    assert first.find_element(By.CLASS_NAME, "verdict").text == "NG"
    assert len(driver.find_elements(By.CSS_SELECTOR, "#hour-bars .hour")) >= 2
    shots(driver, "ui-list")

    # Open it: three pictures, score bar, model.
    first.find_element(By.TAG_NAME, "a").click()
    wait_for(driver, lambda d: d.find_elements(By.ID, "review-form"), "on the part view", live)
    loaded = "return ['img-rgb','img-depth','img-overlay'].every(i => document.getElementById(i).naturalWidth > 0);"
    wait_for(driver, lambda d: d.execute_script(loaded), "showing its pictures", live)
    assert driver.find_element(By.ID, "verdict").text == "NG"
    assert driver.find_element(By.ID, "score").text == f"{answer['score']:.4f}"
    shots(driver, "ui-part")
    # Its own regions (the service's answer, kept in its record) are drawn over the map with their area.
    assert answer["regions"] and answer["regions"][0]["area_mm2"], answer
    wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#regions rect"), "drawing the part's regions", live)
    assert f"{answer['regions'][0]['area_mm2']:.2f} mm²" in driver.find_element(By.ID, "regions").text

    # Review with the keyboard: type a defect type, leave the field, press "c".
    driver.find_element(By.ID, "defect-type").send_keys("dent")
    driver.find_element(By.TAG_NAME, "body").click()
    driver.find_element(By.TAG_NAME, "body").send_keys("c")
    wait_for(driver, lambda d: d.find_elements(By.ID, "saved"), "showing the saved review", live)
    current = driver.find_element(By.ID, "current-review").text
    assert "confirmed" in current and "dent" in current and OPERATOR in current
    result = httpx.get(f"{live.base_url}/v1/results/{answer['request_id']}", headers={"X-API-Key": RESULTS_KEY}).json()
    assert result["review"]["outcome"] == "confirmed" and result["review"]["operator"] == OPERATOR

    # The region of a part that has one is drawn over the map with its area.
    driver.get(f"{live.base_url}/ui/parts/with-region")
    wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#regions rect"), "drawing the region", live)
    assert "12.50 mm²" in driver.find_element(By.ID, "regions").text
    rect = driver.find_element(By.CSS_SELECTOR, "#regions rect")
    assert [rect.get_attribute(a) for a in ("x", "y", "width", "height")] == [
        str(REGION[k]) for k in ("x", "y", "width", "height")
    ]
    assert "12.50 mm², 5.25 mm" in driver.find_element(By.ID, "regions").text

    # Regions side by side, one right under another and one from before lengths: no label over another.
    driver.get(f"{live.base_url}/ui/parts/crowded")
    wait_for(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#regions text")) == len(CROWDED), "labels", live)
    boxes = driver.execute_script(
        "return Array.from(document.querySelectorAll('#regions text')).map(t => {"
        "const b = t.getBBox(); return [b.x, b.y, b.width, b.height, t.textContent]; });"
    )
    for i, (x, y, w, h, _) in enumerate(boxes):
        for x2, y2, w2, h2, _ in boxes[i + 1 :]:
            assert not (x < x2 + w2 and x2 < x + w and y < y2 + h2 and y2 < y + h), boxes
    texts = [b[4] for b in boxes]
    assert texts[0] == "1: 3.00 mm², 4.00 mm" and texts[2] == "3: ? mm², ? mm" and texts[3] == "4: 1.50 mm²", texts
    shots(driver, "ui-part-labels")

    driver.get(f"{live.base_url}/ui/parts/with-region")
    wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#regions rect"), "drawing the region again", live)
    # "f" on this one: a false reject.
    driver.find_element(By.TAG_NAME, "body").send_keys("f")
    wait_for(driver, lambda d: d.find_elements(By.ID, "saved"), "saving the false reject", live)

    # The stats changed: 2 reviewed NG parts, one confirmed, one false reject.
    driver.find_element(By.ID, "nav-stats").click()
    wait_for(driver, lambda d: d.find_elements(By.ID, "stats"), "on the stats", live)
    after = stats_row(driver, "demo")
    assert after == {"reviewed-ng": "2", "confirmed": "1", "false-reject": "1", "frr": "50.0 %", "cnr": "50.0 %"}

    # A part in the review band: first in the list, marked REVIEW, and counted in the stats' band columns.
    recorder = recorder_for(live.data_dir)
    try:
        record(recorder, "in-band", ng=False, review=True, received_at=now - timedelta(hours=2))
    finally:
        recorder.db_engine.dispose()
    driver.get(f"{live.base_url}/ui/")
    band_first = "return document.querySelector('#parts-body tr').dataset.requestId === 'in-band';"
    wait_for(driver, lambda d: d.execute_script(band_first), "listing the REVIEW part first", live)
    first = driver.find_element(By.CSS_SELECTOR, "#parts-body tr")
    assert first.get_attribute("class") == "review" and first.find_element(By.CLASS_NAME, "verdict").text == "REVIEW"
    driver.get(f"{live.base_url}/ui/stats")
    band = driver.find_element(By.CSS_SELECTOR, '#stats tr[data-model="demo"]')
    assert band.find_element(By.CLASS_NAME, "review").text == "1"
    assert band.find_element(By.CLASS_NAME, "review-reviewed").text == "0"

    # Log out: back at the login form, and the list wants a login again.
    driver.find_element(By.ID, "logout").click()
    wait_for(driver, lambda d: d.find_elements(By.ID, "login-button"), "on the login form after logout", live)
    assert driver.get_cookie("bridgenet_ui") is None
    driver.get(f"{live.base_url}/ui/")
    wait_for(driver, lambda d: "/ui/login" in d.current_url, "sent to the login form", live)
    assert driver.find_element(By.ID, "login-button").is_displayed()


def test_the_list_polls_again_only_after_its_previous_answer(live: Live, browser: Any) -> None:
    """A service slower than the poll interval: the page never has two polls out at once."""
    from selenium.webdriver.common.by import By

    driver = browser
    driver.get(f"{live.base_url}/ui/")
    if driver.find_elements(By.ID, "login-button"):
        driver.find_element(By.ID, "username-input").send_keys(OPERATOR)
        driver.find_element(By.ID, "password-input").send_keys(PASSWORD)
        driver.find_element(By.ID, "login-button").click()
    wait_for(driver, lambda d: d.find_elements(By.ID, "parts-body"), "on the list", live)
    # Each poll's answer now takes 5 s (2.5 poll intervals); count the polls and the most out at once.
    driver.execute_script(
        """
        window.pollStats = {calls: 0, out: 0, most: 0};
        const real = window.fetch;
        window.fetch = function (url, options) {
          const s = window.pollStats;
          s.calls += 1; s.out += 1; s.most = Math.max(s.most, s.out);
          return new Promise(function (resolve) { window.setTimeout(resolve, 5000); })
            .then(function () { return real(url, options); })
            .finally(function () { s.out -= 1; });
        };
        """
    )
    time.sleep(9)
    stats = driver.execute_script("return window.pollStats;")
    assert 1 <= stats["calls"] <= 3 and stats["most"] == 1, stats
