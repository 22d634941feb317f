"""service.cluster without a running Ray instance: scale and limits, the audit-database refusal, the proxy's
503 for a lost replica, X-Served-By in the single-process app, and the Serve / KubeRay / Prometheus files."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from starlette.types import Receive, Scope, Send

from service.config import Settings, SettingsError, env_name, get_settings
from service.main import create_app
from tests.cluster.ray_head import clean_env, require_ray
from tests.deploy.tools import DOCKER_DIR, REPO_ROOT, require_tool
from tests.service.fake_model import make_part, make_settings, png_bytes, tiff_bytes, write_fake_model

require_ray()

from ray.serve.deployment import Application  # noqa: E402

from service.cluster import app as cluster  # noqa: E402
from service.cluster.proxy import REPLICA_LOST_CODE, ReplicaLossMiddleware  # noqa: E402

SERVE_YAML = DOCKER_DIR / "ray" / "serve.yaml"
RAYSERVICE_YAML = DOCKER_DIR / "k8s" / "rayservice.yaml"
PROMETHEUS_YAML = DOCKER_DIR / "ray" / "prometheus.yml"


# --- scale and Serve options -------------------------------------------------------------------------


def test_autoscale_text_and_scale_limits() -> None:
    assert cluster.parse_autoscale("1:4") == (1, 4)
    for bad in ("4", "a:b", "1-4"):
        with pytest.raises(cluster.ClusterConfigError, match="MIN:MAX"):
            cluster.parse_autoscale(bad)
    with pytest.raises(cluster.ClusterConfigError, match="0 ≤ MIN ≤ MAX"):
        cluster.Scale(autoscale=(3, 2))
    with pytest.raises(cluster.ClusterConfigError, match="at least 1"):
        cluster.Scale(replicas=0)
    assert cluster.Scale(replicas=3).max_replicas == 3
    assert cluster.Scale(replicas=1, autoscale=(1, 6)).max_replicas == 6


def test_serve_limits_sit_above_the_service_admission(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, max_inflight=3, max_queue=5, request_timeout_s=7.0)
    fixed = cluster.deployment_options(settings, cluster.Scale(replicas=2, cpus_per_replica=0.5, gpus_per_replica=0.25))
    assert fixed["num_replicas"] == 2 and "autoscaling_config" not in fixed
    assert fixed["ray_actor_options"] == {"num_cpus": 0.5, "num_gpus": 0.25}
    # The app refuses with 429 at 3 + 5 ongoing predictions; Ray lets probes past that.
    assert fixed["max_ongoing_requests"] == 3 + 5 + cluster.PROBE_HEADROOM
    assert fixed["graceful_shutdown_timeout_s"] == 7.0 + cluster.SHUTDOWN_MARGIN_S
    scaled = cluster.deployment_options(settings, cluster.Scale(autoscale=(1, 4)))
    assert "num_replicas" not in scaled
    assert scaled["autoscaling_config"] == {
        "min_replicas": 1,
        "max_replicas": 4,
        "initial_replicas": 1,
        "target_ongoing_requests": 3,  # a replica whose prediction slots are all busy is full
    }


# --- the audit trail needs the shared database with several replicas ---------------------------------


@pytest.mark.parametrize(
    ("values", "replicas", "refused"),
    [
        ({"database_url": "sqlite:////var/lib/bridgenet/records.db"}, 2, True),
        ({"database_url": "sqlite:////var/lib/bridgenet/records.db"}, 1, False),
        ({"database_url": "postgresql+psycopg://inspect@db/bridgenet"}, 4, False),
        ({"audit": "on"}, 2, True),  # no URL: the default SQLite file in the data directory
        ({"audit": "off", "database_url": "sqlite:////tmp/records.db"}, 2, False),
    ],
)
def test_sqlite_audit_trail_is_refused_for_several_replicas(
    tmp_path: Path, values: dict[str, str], replicas: int, refused: bool
) -> None:
    problem = cluster.shared_database_problem(make_settings(tmp_path, **values), replicas)
    if refused:
        assert problem is not None and "BRIDGENET_DATABASE_URL" in problem and "PostgreSQL" in problem
        assert f"{replicas} replicas" in problem
    else:
        assert problem is None


def test_a_separate_metrics_port_is_refused_for_several_replicas(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, metrics_port=9100)
    assert cluster.shared_port_problem(settings, 1) is None
    problem = cluster.shared_port_problem(settings, 2)
    assert problem is not None and "BRIDGENET_METRICS_PORT" in problem and "unset it" in problem


def test_the_opcua_server_is_refused_for_several_replicas(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, opcua_url="opc.tcp://0.0.0.0:4840")
    assert cluster.shared_opcua_problem(settings, 1) is None
    problem = cluster.shared_opcua_problem(settings, 2)
    assert problem is not None and "BRIDGENET_OPCUA_URL" in problem and "one replica" in problem


def test_the_cli_refuses_sqlite_for_two_replicas_before_starting_ray(tmp_path: Path) -> None:
    write_fake_model(tmp_path)
    env = clean_env(
        BRIDGENET_MODELS_DIR=str(tmp_path),
        BRIDGENET_DEFAULT_MODEL="fake",
        BRIDGENET_DATABASE_URL=f"sqlite:///{tmp_path / 'records.db'}",
    )
    env.pop("RAY_ADDRESS", None)
    result = subprocess.run(
        [sys.executable, "-m", "service.cluster", "--replicas", "2"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "2 replicas cannot share the audit trail" in result.stderr
    assert "Ray runtime" not in result.stderr + result.stdout  # refused before any Ray process started


# --- X-Served-By in the single-process service ------------------------------------------------------


@pytest.fixture
def local_client(tmp_path: Path) -> Iterator[TestClient]:
    write_fake_model(tmp_path)
    with TestClient(create_app(make_settings(tmp_path))) as client:
        yield client


def test_every_single_process_answer_names_host_and_pid(local_client: TestClient) -> None:
    rgb, xyz = make_part()
    files = {"rgb": ("rgb.png", png_bytes(rgb), "image/png"), "xyz": ("xyz.tiff", tiff_bytes(xyz), "image/tiff")}
    answers = [
        local_client.get("/healthz"),
        local_client.get("/readyz"),
        local_client.get("/metrics"),
        local_client.post("/v1/predict", files=files),
        local_client.get("/no/such/route"),
        # Refused from its declared length, before the app reads a byte: the outermost middleware still names it.
        local_client.post("/v1/predict", content=b"x", headers={"Content-Length": str(1 << 40)}),
    ]
    assert [a.status_code for a in answers] == [200, 200, 200, 200, 404, 413]
    assert {a.headers["X-Served-By"] for a in answers} == {f"{socket.gethostname()}:{os.getpid()}"}


# --- the proxy's answer for a replica that died under the request ------------------------------------


def _proxy_client(behaviour: str) -> TestClient:
    """ReplicaLossMiddleware around a stand-in for Ray's proxy that behaves as the proxy does."""

    async def proxy(scope: Scope, receive: Receive, send: Send) -> None:
        if behaviour == "returns without answering":  # what Ray's proxy does when the replica's actor died
            return
        if behaviour == "raises":
            raise RuntimeError("actor died")
        headers = [(b"content-type", b"text/plain"), (b"x-request-id", b"abc"), (b"x-request-id", b"abc")]
        if behaviour == "replica 500":
            headers.append((b"x-served-by", b"r1"))
        status = 200 if behaviour == "replica 200" else 500
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"from the replica" if status == 200 else b"boom"})

    return TestClient(ReplicaLossMiddleware(proxy))


@pytest.mark.parametrize("behaviour", ["returns without answering", "raises", "proxy 500"])
def test_no_answer_from_a_replica_becomes_503_with_retry_after(behaviour: str) -> None:
    response = _proxy_client(behaviour).post("/v1/predict", headers={"X-Request-ID": "line-7.part-42"})
    assert response.status_code == 503
    assert int(response.headers["Retry-After"]) >= 1
    assert response.headers["X-Served-By"].startswith("proxy@")
    assert response.json() == {
        "error": {
            "code": REPLICA_LOST_CODE,
            "message": response.json()["error"]["message"],
            "request_id": "line-7.part-42",
        }
    }


def test_replica_answers_pass_the_proxy_unchanged() -> None:
    failed = _proxy_client("replica 500").get("/")
    assert failed.status_code == 500 and failed.text == "boom" and failed.headers["X-Served-By"] == "r1"
    ok = _proxy_client("replica 200").get("/")
    assert ok.status_code == 200 and ok.text == "from the replica"
    assert ok.headers.get_list("X-Request-ID") == ["abc"]  # the request id once, not once per layer


# --- Serve config, KubeRay manifest, Prometheus config, images ----------------------------------------


def _serve_config() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(SERVE_YAML.read_text(encoding="utf-8"))
    return config


def _manifests() -> dict[str, dict[str, Any]]:
    """The documents of the KubeRay manifest by kind."""
    documents = list(yaml.safe_load_all(RAYSERVICE_YAML.read_text(encoding="utf-8")))
    by_kind = {d["kind"]: d for d in documents}
    assert len(by_kind) == len(documents)
    return by_kind


def _rayservice() -> dict[str, Any]:
    return _manifests()["RayService"]


def test_the_metrics_copy_interval_is_a_setting(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for name in [k for k in os.environ if k.upper().startswith("BRIDGENET_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("BRIDGENET_CLUSTER_METRICS_INTERVAL_S", "1.5")
    with caplog.at_level(logging.WARNING, logger="service.config"):
        settings = get_settings()
    assert settings.cluster_metrics_interval_s == 1.5
    assert "ignoring unknown" not in caplog.text  # the replica's knob is the settings' own, not a stray variable
    assert Settings().cluster_metrics_interval_s == 1.5
    monkeypatch.setenv("BRIDGENET_CLUSTER_METRICS_INTERVAL_S", "0")
    with pytest.raises(SettingsError, match="BRIDGENET_CLUSTER_METRICS_INTERVAL_S"):
        get_settings()


def test_the_serve_config_builds_the_application(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (app,) = _serve_config()["applications"]
    assert app["import_path"] == "service.cluster.app:app_builder"
    assert set(app["args"]) <= set(cluster.APP_ARGS)
    env_vars = app["runtime_env"]["env_vars"]
    known = {env_name(field) for field in Settings.model_fields}
    assert set(env_vars) <= known, set(env_vars) - known
    for name in [k for k in os.environ if k.upper().startswith("BRIDGENET_")]:
        monkeypatch.delenv(name)
    for name, value in env_vars.items():
        monkeypatch.setenv(name, str(value))
    monkeypatch.setenv("BRIDGENET_MODELS_DIR", str(tmp_path))  # the models are not read at build time
    monkeypatch.setenv("BRIDGENET_API_KEY", "k" * 24)  # production: from the machines' environment
    monkeypatch.setenv("BRIDGENET_DATABASE_URL", "postgresql+psycopg://inspect@db/bridgenet")
    application = cluster.app_builder(app["args"])
    assert isinstance(application, Application)
    # Without the shared database, the same config is refused (it asks for up to 8 replicas).
    monkeypatch.setenv("BRIDGENET_DATABASE_URL", "sqlite:////data/records.db")
    with pytest.raises(cluster.ClusterConfigError, match="8 replicas cannot share the audit trail"):
        cluster.app_builder(app["args"])


def test_the_kuberay_manifest_runs_the_same_application_on_gpus() -> None:
    import ray

    manifest = _rayservice()
    assert (manifest["apiVersion"], manifest["kind"]) == ("ray.io/v1", "RayService")
    serve_config = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    assert serve_config["applications"] == _serve_config()["applications"]
    (app,) = serve_config["applications"]
    cluster_spec = manifest["spec"]["rayClusterConfig"]
    assert cluster_spec["rayVersion"] == ray.__version__
    head = cluster_spec["headGroupSpec"]
    (workers,) = cluster_spec["workerGroupSpecs"]
    containers = [*head["template"]["spec"]["containers"], *workers["template"]["spec"]["containers"]]
    for container in containers:
        assert container["image"].startswith("bridgenet/cluster:")
        env = {e["name"]: e for e in container["env"]}
        assert env[cluster.PROXY_CALLBACK_ENV]["value"] == cluster.PROXY_CALLBACK
        # Secrets come from a Secret, never from this file.
        for secret in ("BRIDGENET_API_KEY", "BRIDGENET_DATABASE_URL"):
            assert "secretKeyRef" in env[secret]["valueFrom"]
        assert container["readinessProbe"]["httpGet"]["path"]
    (worker,) = workers["template"]["spec"]["containers"]
    gpus = int(worker["resources"]["limits"]["nvidia.com/gpu"])
    assert gpus >= 1 and int(workers["rayStartParams"]["num-gpus"]) == gpus
    assert float(app["args"]["gpus_per_replica"]) <= gpus
    assert worker["readinessProbe"]["httpGet"] == {"path": "/-/healthz", "port": 8000}
    assert app["runtime_env"]["env_vars"]["BRIDGENET_REQUIRE_CUDA"] == "true"
    low, high = cluster.parse_autoscale(app["args"]["autoscale"])
    assert workers["minReplicas"] * gpus >= low and workers["maxReplicas"] * gpus >= high


def test_only_the_cluster_image_carries_ray() -> None:
    service_image = (DOCKER_DIR / "Dockerfile.service").read_text(encoding="utf-8")
    cluster_image = (DOCKER_DIR / "Dockerfile.cluster").read_text(encoding="utf-8")
    assert "'/src[serve]'" in service_image and "cluster" not in service_image and "ray" not in service_image
    assert "'/src[serve,cluster]'" in cluster_image
    assert f"ENV {cluster.PROXY_CALLBACK_ENV}={cluster.PROXY_CALLBACK}" in cluster_image


def test_the_cluster_extra_pins_the_installed_ray_and_make_install_has_it() -> None:
    import ray

    extras = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "optional-dependencies"
    ]
    assert extras["cluster"] == [f"ray[serve]=={ray.__version__}"]
    assert re.search(r"pip install .*-e '\.\[[a-z,]*cluster[a-z,]*\]'", (REPO_ROOT / "Makefile").read_text())


def test_the_prometheus_config_gives_ray_exported_series_the_service_names(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    config = yaml.safe_load(PROMETHEUS_YAML.read_text(encoding="utf-8"))
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "bridgenet-service"]
    (rule,) = job["metric_relabel_configs"]
    assert rule["source_labels"] == ["__name__"] and rule["target_label"] == "__name__"
    # Prometheus anchors the regex at both ends; "$1" is its group reference.
    renamed = {
        name: (
            match.expand(rule["replacement"].replace("$1", r"\1"))
            if (match := re.fullmatch(rule["regex"], name))
            else name
        )
        for name in (
            "ray_bridgenet_predictions_total",
            "ray_bridgenet_request_duration_seconds_bucket",
            "ray_process_resident_memory_bytes",
            "ray_serve_num_http_requests_total",
        )
    }
    assert renamed == {
        "ray_bridgenet_predictions_total": "bridgenet_predictions_total",
        "ray_bridgenet_request_duration_seconds_bucket": "bridgenet_request_duration_seconds_bucket",
        "ray_process_resident_memory_bytes": "process_resident_memory_bytes",
        "ray_serve_num_http_requests_total": "ray_serve_num_http_requests_total",  # Ray's own keep theirs
    }
    # The job name is the single-host one: the dashboard's job="bridgenet-service" panels read both.
    compose_jobs = [
        j["job_name"] for j in yaml.safe_load((DOCKER_DIR / "prometheus.yml").read_text())["scrape_configs"]
    ]
    assert job["job_name"] in compose_jobs
    # promtool wants the discovery file to exist; check the rest of the config as Prometheus would.
    sd_file = tmp_path / "sd.json"
    sd_file.write_text(json.dumps([{"targets": ["127.0.0.1:8080"]}]))
    job["file_sd_configs"] = [{"files": [str(sd_file)]}]
    checked = tmp_path / "prometheus.yml"
    checked.write_text(yaml.safe_dump(config))
    result = subprocess.run([promtool, "check", "config", str(checked)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# --- Ray's health check reads the same readiness as /readyz --------------------------------------------


def test_the_replica_health_check_follows_readyz(tmp_path: Path) -> None:
    write_fake_model(tmp_path)
    replica = cluster._Replica.__new__(cluster._Replica)  # the class Serve wraps, without its Ray constructor
    replica._app = create_app(make_settings(tmp_path))
    with pytest.raises(RuntimeError, match="not ready"):  # models not loaded yet
        replica.check_health()
    with TestClient(replica._app) as client:
        assert client.get("/readyz").status_code == 200
        replica.check_health()
    assert replica._app.state.service.ready is False  # stopped: Ray would replace this replica
    with pytest.raises(RuntimeError, match="not ready"):
        replica.check_health()


# --- the proxy refuses predictions from their headers -----------------------------------------------


def _gated_app(settings: Settings, reached: list[int]) -> Any:
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from service.cluster.proxy import ProxyGateMiddleware

    async def predict(request: Request) -> JSONResponse:
        reached.append(len(await request.body()))
        return JSONResponse({"ok": True}, headers={"X-Served-By": "replica"})

    return Starlette(
        routes=[Route("/v1/predict", predict, methods=["POST"]), Route("/v1/results", predict, methods=["POST"])],
        middleware=[Middleware(ProxyGateMiddleware, settings=settings)],
    )


def test_the_ray_proxy_refuses_predictions_before_their_body(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, api_key="line-key-0123456789", results_key="results-key-0123456789")
    limit = settings.max_upload_bytes * 2 + 1024 * 1024
    reached: list[int] = []
    with TestClient(_gated_app(settings, reached)) as client:
        for headers, status, code in (
            ({}, 401, "unauthorized"),
            ({"X-API-Key": "results-key-0123456789"}, 403, "key_not_allowed"),
            ({"X-API-Key": "line-key-0123456789", "Content-Length": str(limit + 1)}, 413, "too_large"),
        ):
            answer = client.post("/v1/predict", content=b"x" * 10, headers={**headers, "X-Request-ID": "p-1"})
            assert answer.status_code == status and answer.json()["error"]["code"] == code, answer.text
            assert answer.json()["error"]["request_id"] == "p-1"
            assert answer.headers["connection"] == "close"
        assert reached == []  # nothing got past the proxy's gate
        ok = client.post("/v1/predict", content=b"x" * 10, headers={"X-API-Key": "line-key-0123456789"})
        assert ok.status_code == 200 and reached == [10]
        # Without Content-Length the body is counted and cut at the limit.
        chunk = b"x" * (1024 * 1024)
        streamed = client.post(
            "/v1/predict",
            content=iter([chunk] * (limit // len(chunk) + 2)),
            headers={"X-API-Key": "line-key-0123456789"},
        )
        assert streamed.status_code == 413 and streamed.json()["error"]["code"] == "too_large"
        assert reached == [10]
        # Other routes: no key check here (each replica's own answers them), small bodies only.
        assert client.post("/v1/results", content=b"abc").status_code == 200
        big = client.post("/v1/results", content=b"x" * (1024 * 1024 + 1))
        assert big.status_code == 413 and reached == [10, 3]


def test_the_kuberay_manifest_locks_ray_down_and_shares_the_station_secrets() -> None:
    manifests = _manifests()
    cluster_spec = manifests["RayService"]["spec"]["rayClusterConfig"]
    # Ray's dashboard and jobs API need Ray's token (the operator makes and uses it).
    assert cluster_spec["authOptions"] == {"mode": "token"}
    head = cluster_spec["headGroupSpec"]
    (workers,) = cluster_spec["workerGroupSpecs"]
    for group in (head, workers):
        assert group["template"]["metadata"]["labels"]["app.kubernetes.io/name"] == "bridgenet"
        for container in group["template"]["spec"]["containers"]:
            env = {e["name"]: e for e in container["env"]}
            # Every key and the shared session key from the Secret; the admin key may be left out of it.
            for name, key in (
                ("BRIDGENET_API_KEY", "api-key"),
                ("BRIDGENET_RESULTS_KEY", "results-key"),
                ("BRIDGENET_UI_SECRET", "ui-secret"),
                ("BRIDGENET_ADMIN_KEY", "admin-key"),
            ):
                ref = env[name]["valueFrom"]["secretKeyRef"]
                assert (ref["name"], ref["key"]) == ("bridgenet", key), name
                assert ref.get("optional", False) is (name == "BRIDGENET_ADMIN_KEY"), name
            assert all("value" not in env[n] for n in ("BRIDGENET_API_KEY", "BRIDGENET_UI_SECRET"))
    # The replicas (on the workers) read the reviewers from the Secret bridgenet-users.
    (worker,) = workers["template"]["spec"]["containers"]
    users_file = Path({e["name"]: e for e in worker["env"]}["BRIDGENET_USERS_FILE"]["value"])
    mounts = {m["name"]: m for m in worker["volumeMounts"]}
    assert mounts["users"]["mountPath"] == str(users_file.parent) and mounts["users"]["readOnly"]
    volumes = {v["name"]: v for v in workers["template"]["spec"]["volumes"]}
    assert volumes["users"]["secret"]["secretName"] == "bridgenet-users"
    # The dashboard (8265) is reached only by the operator and the cluster's pods; Serve and metrics by all.
    policy = manifests["NetworkPolicy"]["spec"]
    assert policy["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "bridgenet"}
    assert policy["policyTypes"] == ["Ingress"]
    open_ports = set()
    for rule in policy["ingress"]:
        ports = {p["port"] for p in rule.get("ports", [])}
        sources = rule.get("from")
        if sources is None:
            open_ports |= ports
        elif 8265 in ports:
            (source,) = sources
            assert source["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "kuberay-operator"}
        else:
            assert not ports and sources == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "bridgenet"}}}]
    assert open_ports == {8000, 8080}
    head_ports = {p["name"]: p["containerPort"] for p in head["template"]["spec"]["containers"][0]["ports"]}
    assert head_ports["dashboard"] == 8265 and 8265 not in open_ports
