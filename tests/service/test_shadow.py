"""Shadow scoring (service.lifecycle.shadow): a stored version scores every part after the answer; its score
and verdict reach the record, /v1/results and the agreement view; a full queue skips and counts, never waits."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.api.deps import ServiceState
from service.config import SettingsError, get_settings
from service.lifecycle.shadow import ShadowConfigError, ShadowJob, ShadowScorer
from service.main import create_app
from service.metrics import Metrics
from service.records.reviews import add_review
from service.ui.users import add_user
from tests.service.fake_model import write_fake_model
from tests.service.test_api_admission import wait_until
from tests.service.test_lifecycle import FILES, settings, two_versions
from tests.ui.test_http import PASSWORDS, login


def sample(client: TestClient, name: str, **labels: str) -> float:
    """The value of one series on /metrics (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(f"{name}{{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no series {name}{{{wanted}}}")


def test_the_candidate_scores_every_part_and_the_disagreements_are_listed_with_their_reviews(tmp_path: Path) -> None:
    models = two_versions(tmp_path)  # "2" active (threshold 0.9), "1" stored (threshold 0.2)
    app = create_app(settings(models, shadow={"fake": "1"}))
    with TestClient(app) as client:
        state: ServiceState = app.state.service
        assert state.shadow is not None
        answers = [client.post("/v1/predict", files=FILES).json() for _ in range(3)]
        wait_until(lambda: state.shadow is not None and state.shadow.outcomes == 3)
        answer = answers[0]
        assert answer["is_anomalous"] is False and answer["model"]["version"] == "2"
        record = client.get(f"/v1/results/{answer['request_id']}").json()
        # Same graph, so the same score; its own threshold 0.2 makes it NG where the answer said OK.
        assert record["shadow"] == {
            "version": "1",
            "score": pytest.approx(answer["score"]),
            "threshold": 0.2,
            "is_anomalous": True,
        }
        listed = client.get("/v1/results").json()["results"]
        assert all(r["shadow"]["version"] == "1" for r in listed)
        csv_text = client.get("/v1/results.csv").text.splitlines()
        assert csv_text[0].endswith("shadow_version,shadow_score,shadow_verdict,recipe,recipe_version")
        assert csv_text[1].split(",")[-5:-2:2] == ["1", "ng"]

        assert state.records is not None and state.records.recorder is not None
        add_review(state.records.recorder.db_engine, answer["request_id"], "missed_defect", operator="ana")
        view = client.get("/v1/models/fake/shadow").json()
        assert view["candidate"] == "1" and view["candidate_versions"] == ["1"]
        assert (view["shadowed"], view["agree"], view["disagree"], view["agreement"]) == (3, 0, 3, 0.0)
        assert view["by_verdict"] == {"ok_ok": 0, "ok_ng": 3, "ng_ok": 0, "ng_ng": 0}
        assert [d["request_id"] for d in view["disagreements"]] == [a["request_id"] for a in reversed(answers)]
        reviewed = next(d for d in view["disagreements"] if d["request_id"] == answer["request_id"])
        assert (reviewed["verdict"], reviewed["shadow_verdict"]) == ("ok", "ng")
        assert reviewed["review"]["outcome"] == "missed_defect" and reviewed["review"]["operator"] == "ana"
        assert client.get("/v1/models/fake/shadow", params={"version": "9"}).json()["shadowed"] == 0
        assert sample(client, "bridgenet_shadow_scored_total", model="fake", agreement="disagree") == 3
        assert sample(client, "bridgenet_shadow_skipped_total", model="fake", reason="queue_full") == 0


def test_a_part_page_and_the_agreement_page_show_the_candidate(tmp_path: Path) -> None:
    users = tmp_path / "users.json"
    add_user(users, "ana", "reviewer", PASSWORDS["ana"])
    models = two_versions(tmp_path)
    app = create_app(settings(models, shadow={"fake": "1"}, users_file=users))
    with TestClient(app, follow_redirects=False) as client:
        state: ServiceState = app.state.service
        answer = client.post("/v1/predict", files=FILES).json()
        wait_until(lambda: state.shadow is not None and state.shadow.outcomes == 1)
        login(client)
        page = client.get(f"/ui/parts/{answer['request_id']}").text
        assert 'id="shadow"' in page and "version 1" in page and 'id="shadow-disagrees"' in page
        assert client.get("/ui/shadow").headers["location"] == "/ui/models/fake/shadow"
        agreement = client.get("/ui/models/fake/shadow").text
        assert 'id="shadow-agreement"' in agreement and f'data-request-id="{answer["request_id"]}"' in agreement


def test_a_full_queue_skips_the_part_counts_it_and_never_delays_the_answer(tmp_path: Path) -> None:
    models = two_versions(tmp_path)
    app = create_app(settings(models, shadow={"fake": "1"}, shadow_queue=1))
    release = threading.Event()
    with TestClient(app) as client:
        state: ServiceState = app.state.service
        scorer = state.shadow
        assert scorer is not None
        original = scorer.score
        scorer.score = lambda job: (release.wait(10), original(job))[1]  # type: ignore[method-assign]
        try:
            started = time.perf_counter()
            answers = [client.post("/v1/predict", files=FILES) for _ in range(4)]
            elapsed = time.perf_counter() - started
            assert all(a.status_code == 200 for a in answers)
            # One part in the worker (held), one in the queue, two skipped: and nobody waited for the worker.
            assert elapsed < 5.0
            assert sample(client, "bridgenet_shadow_skipped_total", model="fake", reason="queue_full") == 2
        finally:
            release.set()
        wait_until(lambda: scorer.outcomes == 2)
        shadowed = [client.get(f"/v1/results/{a.json()['request_id']}").json()["shadow"] for a in answers]
        assert [s is not None for s in shadowed] == [True, True, False, False]


def test_submit_returns_at_once_when_the_queue_is_full() -> None:
    metrics = Metrics()
    scorer = ShadowScorer({"fake": object()}, metrics.lifecycle, limits=None, max_queue=2)  # type: ignore[dict-item,arg-type]
    job = ShadowJob("r", "fake", b"", b"", False)
    assert scorer.submit(job) and scorer.submit(job)
    started = time.perf_counter()
    assert scorer.submit(job) is False
    assert time.perf_counter() - started < 0.05
    assert metrics.lifecycle.shadow_skipped.labels(model="fake", reason="queue_full")._value.get() == 1
    assert scorer.submit(ShadowJob("r", "other", b"", b"", False)) is False  # no candidate: nothing queued


@pytest.mark.parametrize(
    ("shadow", "message"),
    [
        ({"fake": "7"}, "'7' for model 'fake' is neither a version stored in"),
        ({"fake": "2"}, "'2' is the active version of 'fake'"),
        ({"nut": "1"}, "names model 'nut', which is not served"),
    ],
)
def test_a_candidate_that_cannot_shadow_stops_the_start_with_a_clear_error(
    tmp_path: Path, shadow: dict[str, str], message: str
) -> None:
    models = two_versions(tmp_path)
    with (
        pytest.raises(ShadowConfigError, match=message.replace("(", r"\(")),
        TestClient(create_app(settings(models, shadow=shadow))),
    ):
        pass


def test_a_model_folder_can_be_the_candidate(tmp_path: Path) -> None:
    models = two_versions(tmp_path)
    write_fake_model(tmp_path / "candidates", "fake", version="7", threshold=0.95)
    app = create_app(settings(models, shadow={"fake": str(tmp_path / "candidates" / "fake")}))
    with TestClient(app) as client:
        state: ServiceState = app.state.service
        answer = client.post("/v1/predict", files=FILES).json()
        wait_until(lambda: state.shadow is not None and state.shadow.outcomes == 1)
        shadow = client.get(f"/v1/results/{answer['request_id']}").json()["shadow"]
        assert shadow["version"] == "7" and shadow["is_anomalous"] is False
        assert client.get("/v1/models/fake/shadow").json()["agree"] == 1


def test_the_setting_must_be_a_json_object_of_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGENET_SHADOW", "fake=1")
    with pytest.raises(SettingsError, match="BRIDGENET_SHADOW"):
        get_settings()
    monkeypatch.setenv("BRIDGENET_SHADOW", '{"fake": ""}')
    with pytest.raises(SettingsError, match="a version or a model folder"):
        get_settings()
