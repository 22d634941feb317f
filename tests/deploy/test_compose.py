"""docker-compose.yml, its CPU override and prometheus.yml: structure, referenced files, offline validation."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.tools import DOCKER_DIR, REPO_ROOT, require_tool

COMPOSE = REPO_ROOT / "docker-compose.yml"
COMPOSE_CPU = REPO_ROOT / "docker-compose.cpu.yml"
PROMETHEUS_YML = DOCKER_DIR / "prometheus.yml"
# Folders docker creates on first use; data and runs exist only where training ran, models is filled by
# `python -m training export` (or ships the demo model).
RUNTIME_FOLDERS = {REPO_ROOT / "data", REPO_ROOT / "runs", REPO_ROOT / "models"}
THIRD_PARTY = ("prometheus", "grafana", "dcgm-exporter", "mosquitto")


def load(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


def layers(compose_file: Path, name: str) -> list[tuple[dict[str, Any], Path]]:
    """A service's definition and those it `extends`, nearest first, each with the folder its paths are in."""
    definition = load(compose_file)["services"][name]
    found = [(definition, compose_file.parent)]
    if "extends" in definition:
        ext = definition["extends"]
        found += layers((compose_file.parent / ext["file"]).resolve(), ext["service"])
    return found


def merged(compose_file: Path, name: str, key: str) -> Any:
    """The nearest layer's value of `key` (None when no layer sets it) and that layer's folder."""
    return next(((d[key], base) for d, base in layers(compose_file, name) if key in d), (None, None))


def environment(compose_file: Path, name: str) -> dict[str, Any]:
    env: dict[str, Any] = {}
    for definition, _ in reversed(layers(compose_file, name)):
        env.update(definition.get("environment", {}))
    return env


def bind_mounts(compose_file: Path, name: str) -> list[tuple[Path, str]]:
    """(host path, "container[:mode]") for every bind mount of a service, named volumes left out."""
    mounts = []
    for definition, base in layers(compose_file, name):
        for spec in definition.get("volumes", []):
            source, _, rest = spec.partition(":")
            if source.startswith((".", "/")):
                mounts.append(((base / source).resolve(), rest))
    return mounts


def gpu_devices(definition: dict[str, Any]) -> list[dict[str, Any]]:
    return definition.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])


def test_compose_files_parse_and_name_the_stack() -> None:
    services = load(COMPOSE)["services"]
    assert set(services) == {"service", "prometheus", "grafana", "dcgm-exporter", "train", "mosquitto"}
    assert load(COMPOSE_CPU)["services"]["service-cpu"]["extends"]["service"] == "bridgenet-service"
    assert services["train"]["profiles"] == ["train"]
    assert services["mosquitto"]["profiles"] == ["mqtt"]  # the line's broker, only when asked for


@pytest.mark.parametrize(
    ("compose_file", "name"),
    [(COMPOSE, "service"), (COMPOSE, "train"), (COMPOSE_CPU, "service-cpu"), (COMPOSE_CPU, "train-cpu")],
)
def test_build_context_and_dockerfile_exist(compose_file: Path, name: str) -> None:
    build, base = merged(compose_file, name, "build")
    assert build is not None, f"{name} in {compose_file.name} has no build section"
    context = (base / build["context"]).resolve()
    assert context == REPO_ROOT, f"{name}: build context {context}, expected the repository root"
    assert (context / build["dockerfile"]).is_file()


@pytest.mark.parametrize("name", ["service", "prometheus", "grafana", "train"])
def test_bind_mounted_files_exist(name: str) -> None:
    mounts = bind_mounts(COMPOSE, name)
    assert mounts, f"{name} mounts nothing"
    for source, _ in mounts:
        assert source in RUNTIME_FOLDERS or source.exists(), f"{name} mounts missing {source}"


def test_service_reserves_the_gpu_and_reads_models_read_only() -> None:
    service = load(COMPOSE)["services"]["service"]
    (device,) = gpu_devices(service)
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert ((REPO_ROOT / "models").resolve(), "/models:ro") in bind_mounts(COMPOSE, "service")
    assert merged(COMPOSE, "service", "restart")[0] == "unless-stopped"
    healthcheck, _ = merged(COMPOSE, "service", "healthcheck")
    assert "/readyz" in " ".join(healthcheck["test"])
    env = environment(COMPOSE, "service")
    assert env["BRIDGENET_MODELS_DIR"] == "/models"
    assert env["BRIDGENET_REQUIRE_CUDA"] == "${BRIDGENET_REQUIRE_CUDA:-true}"


def test_no_secret_is_written_in_compose_files() -> None:
    for compose_file, name in [(COMPOSE, "service"), (COMPOSE, "grafana"), (COMPOSE_CPU, "service-cpu")]:
        for key, value in environment(compose_file, name).items():
            if any(word in key for word in ("KEY", "PASSWORD", "SECRET", "TOKEN")):
                assert isinstance(value, str) and value.startswith("${"), f"{name}: {key} is a literal"
    env = environment(COMPOSE, "service")
    assert env["BRIDGENET_API_KEY"] == "${BRIDGENET_API_KEY:-}"
    grafana = environment(COMPOSE, "grafana")
    assert grafana["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert grafana["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"


def test_third_party_images_are_pinned_and_restart() -> None:
    services = load(COMPOSE)["services"]
    for name in THIRD_PARTY:
        image = services[name]["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and tag and tag != "latest" and "/" not in tag, f"{name}: unpinned image {image!r}"
        assert services[name]["restart"] == "unless-stopped"
    assert services["dcgm-exporter"]["image"].startswith("nvcr.io/nvidia/k8s/dcgm-exporter:")
    assert gpu_devices(services["dcgm-exporter"])[0]["driver"] == "nvidia"
    assert "prometheus-data:/prometheus" in services["prometheus"]["volumes"]
    assert "prometheus-data" in load(COMPOSE)["volumes"]


def test_cpu_override_parks_gpu_services_and_adds_a_cpu_twin() -> None:
    override = load(COMPOSE_CPU)["services"]
    assert override["service"] == {"profiles": ["gpu"]}
    assert override["dcgm-exporter"] == {"profiles": ["gpu"]}
    for name in ("service-cpu", "train-cpu"):
        assert all(not gpu_devices(d) for d, _ in layers(COMPOSE_CPU, name)), f"{name} reserves a GPU"
    # Prometheus scrapes "service:8000" whichever variant runs.
    assert override["service-cpu"]["networks"]["default"]["aliases"] == ["service"]
    assert environment(COMPOSE_CPU, "service-cpu")["BRIDGENET_REQUIRE_CUDA"] == "false"


# --- validation with Debian's docker-compose 1.29 (no engine needed for `config`) -----------------------


def compose(*args: str, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run docker-compose in the repository root with a clean environment (no stray BRIDGENET_* values)."""
    binary = require_tool("docker-compose")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp")}
    env.update(extra_env or {})
    return subprocess.run(
        [binary, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )


GRAFANA_PASSWORD = {"GRAFANA_ADMIN_PASSWORD": "test-only"}
FILES = {"gpu": ["-f", str(COMPOSE)], "cpu": ["-f", str(COMPOSE), "-f", str(COMPOSE_CPU)]}


@pytest.mark.parametrize("variant", sorted(FILES))
def test_docker_compose_config_is_valid(variant: str) -> None:
    result = compose(*FILES[variant], "config", "-q", extra_env=GRAFANA_PASSWORD)
    assert result.returncode == 0, result.stderr
    # An unset variable without a default is a warning, not an error: treat it as one.
    assert "WARNING" not in result.stderr, result.stderr


def test_docker_compose_requires_the_grafana_password() -> None:
    result = compose(*FILES["gpu"], "config", "-q")
    assert result.returncode != 0
    assert "GRAFANA_ADMIN_PASSWORD" in result.stderr


def test_docker_compose_resolves_the_cpu_stack() -> None:
    result = compose(*FILES["cpu"], "config", extra_env=GRAFANA_PASSWORD)
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert services["service"]["profiles"] == ["gpu"]
    cpu = services["service-cpu"]
    assert "deploy" not in cpu
    assert cpu["build"]["context"] == str(REPO_ROOT)
    assert f"{REPO_ROOT / 'models'}:/models:ro" in cpu["volumes"]
    assert cpu["environment"]["BRIDGENET_REQUIRE_CUDA"] == "false"


def test_docker_compose_passes_threshold_overrides_through_only_when_set() -> None:
    overrides = '{"bolt": 0.73}'
    env = {**GRAFANA_PASSWORD, "BRIDGENET_THRESHOLD_OVERRIDES": overrides, "BRIDGENET_API_KEY": "k"}
    with_value = compose(*FILES["gpu"], "config", extra_env=env)
    without = compose(*FILES["gpu"], "config", extra_env=GRAFANA_PASSWORD)
    assert with_value.returncode == 0 and without.returncode == 0, with_value.stderr + without.stderr
    set_env = yaml.safe_load(with_value.stdout)["services"]["service"]["environment"]
    unset_env = yaml.safe_load(without.stdout)["services"]["service"]["environment"]
    assert set_env["BRIDGENET_THRESHOLD_OVERRIDES"] == overrides
    assert set_env["BRIDGENET_API_KEY"] == "k"
    # null = not set in the container, so the service's own default applies.
    assert unset_env["BRIDGENET_THRESHOLD_OVERRIDES"] is None
    assert unset_env["BRIDGENET_API_KEY"] == ""


# --- prometheus.yml ----------------------------------------------------------------------------------


def test_prometheus_scrapes_the_service_and_dcgm() -> None:
    jobs = {job["job_name"]: job for job in load(PROMETHEUS_YML)["scrape_configs"]}
    targets = {name: [t for sc in job["static_configs"] for t in sc["targets"]] for name, job in jobs.items()}
    assert targets["bridgenet-service"] == ["service:8000"]
    assert jobs["bridgenet-service"].get("metrics_path", "/metrics") == "/metrics"
    assert targets["dcgm-exporter"] == ["dcgm-exporter:9400"]
    # The targets are compose service names on the default network.
    assert {"service", "dcgm-exporter"} <= set(load(COMPOSE)["services"])
    assert (
        "prometheus:9090"
        in load(DOCKER_DIR / "grafana/provisioning/datasources/prometheus.yml")["datasources"][0]["url"]
    )


def test_promtool_accepts_prometheus_config() -> None:
    promtool = require_tool("promtool")
    result = subprocess.run(
        [promtool, "check", "config", str(PROMETHEUS_YML)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
