"""docker-compose.yml, its CPU override and prometheus.yml: structure, referenced files, offline validation."""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import pwd
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import SecretStr

from service.__main__ import SHUTDOWN_MARGIN_S
from service.config import Settings, env_name
from service.main import max_body_bytes
from tests.deploy.tools import DOCKER_DIR, REPO_ROOT, require_tool

COMPOSE = REPO_ROOT / "docker-compose.yml"
COMPOSE_CPU = REPO_ROOT / "docker-compose.cpu.yml"
PROMETHEUS_YML = DOCKER_DIR / "prometheus.yml"
ENV_EXAMPLE = REPO_ROOT / ".env.example"
_spec = importlib.util.spec_from_file_location("make_env_example", DOCKER_DIR / "make_env_example.py")
assert _spec is not None and _spec.loader is not None
make_env_example = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_env_example)
# Folders docker creates on first use; data and runs exist only where training ran, models is filled by
# `python -m training export` (or ships the demo model).
RUNTIME_FOLDERS = {REPO_ROOT / "data", REPO_ROOT / "runs", REPO_ROOT / "models"}
THIRD_PARTY = ("prometheus", "grafana", "dcgm-exporter", "mosquitto", "opcua")
COMPOSE_METRICS_PORT = 9100


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
    assert set(services) == {
        "service",
        "prometheus",
        "grafana",
        "dcgm-exporter",
        "train",
        "mosquitto",
        "tls-proxy",
        "opcua",
    }
    assert load(COMPOSE_CPU)["services"]["service-cpu"]["extends"]["service"] == "bridgenet-service"
    assert services["train"]["profiles"] == ["train"]
    assert services["mosquitto"]["profiles"] == ["mqtt"]  # the line's broker, only when asked for
    assert services["tls-proxy"]["profiles"] == ["tls"]  # TLS in front, only when asked for
    assert services["opcua"]["profiles"] == ["plc"]  # the OPC UA port published, only when asked for


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


def test_service_reserves_the_gpu_and_can_write_model_versions() -> None:
    service = load(COMPOSE)["services"]["service"]
    (device,) = gpu_devices(service)
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert ((REPO_ROOT / "models").resolve(), "/models") in bind_mounts(COMPOSE, "service")
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
    assert f"{REPO_ROOT / 'models'}:/models:rw" in cpu["volumes"]
    assert cpu["environment"]["BRIDGENET_REQUIRE_CUDA"] == "false"


def test_docker_compose_passes_threshold_overrides_through() -> None:
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
    # Empty = unset for the service (env_ignore_empty), so its own default applies.
    assert unset_env["BRIDGENET_THRESHOLD_OVERRIDES"] == ""
    assert unset_env["BRIDGENET_API_KEY"] == ""


# --- prometheus.yml ----------------------------------------------------------------------------------


def test_prometheus_scrapes_the_service_and_dcgm() -> None:
    jobs = {job["job_name"]: job for job in load(PROMETHEUS_YML)["scrape_configs"]}
    targets = {name: [t for sc in job["static_configs"] for t in sc["targets"]] for name, job in jobs.items()}
    assert targets["bridgenet-service"] == [f"service:{COMPOSE_METRICS_PORT}"]
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


# --- every setting passed through, hardening ----------------------------------------------


# Settings of the Ray Serve deployment alone (service.cluster): compose runs one process without Ray.
RAY_ONLY = {"BRIDGENET_CLUSTER_METRICS_INTERVAL_S"}


def resolved_service(variant: str, env_file: Path | None = None) -> dict[str, Any]:
    """The inspection service as docker-compose resolves it (GPU: `service`, CPU: `service-cpu`)."""
    args = [*(["--env-file", str(env_file)] if env_file else []), *FILES[variant], "config"]
    result = compose(*args, extra_env=GRAFANA_PASSWORD)
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    return services["service" if variant == "gpu" else "service-cpu"]


@pytest.mark.parametrize("variant", sorted(FILES))
def test_every_setting_reaches_the_service_from_an_env_file(variant: str, tmp_path: Path) -> None:
    """Each Settings field set in a .env-style file arrives in the container under its own name."""
    fixed = {"BRIDGENET_MODELS_DIR": "/models", "BRIDGENET_DATA_DIR": "/data"}  # mount points inside the image
    values = {env_name(name): f"value-of-{name}" for name in Settings.model_fields} | GRAFANA_PASSWORD
    env_file = tmp_path / "station.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in values.items()), encoding="utf-8")
    env = resolved_service(variant, env_file)["environment"]
    for name in Settings.model_fields:
        key = env_name(name)
        if key in RAY_ONLY:
            assert key not in env, f"{variant}: {key} means nothing without Ray Serve"
            continue
        expected = fixed.get(key, values[key])
        if key == "BRIDGENET_REQUIRE_CUDA" and variant == "cpu":
            expected = "false"  # the CPU twin never requires CUDA
        assert env.get(key) == expected, f"{variant}: {key} is not passed through ({env.get(key)!r})"


def test_unset_settings_keep_the_service_defaults() -> None:
    """Without a .env, compose passes empty values (unset for the service) and its own few defaults."""
    env = resolved_service("gpu")["environment"]
    assert env["BRIDGENET_DEFAULT_MODEL"] == "" and env["BRIDGENET_MAX_INFLIGHT"] == ""
    assert env["BRIDGENET_ENVIRONMENT"] == "production"
    assert env["BRIDGENET_METRICS_PORT"] == str(COMPOSE_METRICS_PORT)
    assert env["BRIDGENET_METRICS_HOST"] == "0.0.0.0"
    assert env["BRIDGENET_REQUIRE_CUDA"] == "true"
    passed = {k: v for k, v in env.items() if k.startswith("BRIDGENET_")}
    given = {k.removeprefix("BRIDGENET_").lower(): v for k, v in passed.items() if v}
    settings = Settings(**given, api_key=SecretStr("a-production-key-of-24-chars"))
    assert settings.default_model == Settings.model_fields["default_model"].default


@pytest.mark.parametrize("variant", sorted(FILES))
def test_service_container_is_hardened(variant: str) -> None:
    service = resolved_service(variant)
    assert service["read_only"] is True
    assert service["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in service["security_opt"]
    assert any(t.startswith("/tmp:") and "size=" in t for t in service["tmpfs"])
    assert service["mem_limit"] and int(service["pids_limit"]) > 0
    # Only the API port is published; the metrics port stays on the compose network.
    assert [p["target"] for p in service["ports"]] == [8000]
    # Docker must wait longer than uvicorn drains (request timeout + margin) before it kills.
    grace = service["stop_grace_period"]
    assert grace.endswith("s") and float(grace[:-1]) > Settings().request_timeout_s + SHUTDOWN_MARGIN_S


def test_built_images_are_never_pulled_instead() -> None:
    """`image:` beside `build:` needs `pull_policy: build`, or compose may run a same-named registry image.
    (docker-compose 1.29 drops the key from `config` output, so the files are read directly.)"""
    for compose_file, name in [
        (COMPOSE, "service"),
        (COMPOSE, "train"),
        (COMPOSE_CPU, "service-cpu"),
        (COMPOSE_CPU, "train-cpu"),
    ]:
        assert merged(compose_file, name, "image")[0] is not None
        assert merged(compose_file, name, "build")[0] is not None
        assert merged(compose_file, name, "pull_policy")[0] == "build", f"{name} in {compose_file.name}"


def test_env_example_documents_every_setting_and_is_current() -> None:
    text = ENV_EXAMPLE.read_text(encoding="utf-8")
    listed = set(re.findall(r"^# (BRIDGENET_[A-Z0-9_]+)=", text, flags=re.M))
    assert {env_name(name) for name in Settings.model_fields} <= listed
    assert text == make_env_example.generate(), "stale: run python docker/make_env_example.py"
    # Every variable compose reads is documented there too.
    compose_text = "".join(
        p.read_text(encoding="utf-8") for p in (COMPOSE, COMPOSE_CPU, DOCKER_DIR / "compose.common.yml")
    )
    read = set(re.findall(r"\$\{([A-Z0-9_]+)", compose_text))
    assert read <= listed | set(re.findall(r"^# ([A-Z0-9_]+)=", text, flags=re.M))


def test_the_compose_broker_requires_a_login_and_binds_where_told() -> None:
    mosquitto = load(COMPOSE)["services"]["mosquitto"]
    assert mosquitto["ports"] == ["${MOSQUITTO_BIND:-127.0.0.1}:${MOSQUITTO_PORT:-1883}:1883"]
    env = mosquitto["environment"]
    assert env == {"MQTT_USERNAME": "${BRIDGENET_MQTT_USERNAME:-}", "MQTT_PASSWORD": "${BRIDGENET_MQTT_PASSWORD:-}"}
    start = " ".join(mosquitto["command"])
    assert 'test -n "$$MQTT_USERNAME" -a -n "$$MQTT_PASSWORD" ||' in start  # no start without the service's user
    assert "mosquitto_passwd -b /mosquitto/data/passwd" in start


def test_the_compose_broker_config_refuses_anonymous_clients_live(tmp_path: Path) -> None:
    """docker/mosquitto.conf as shipped (paths and port moved to the test's), run by Debian's mosquitto with
    a password file made as the compose start makes it: anonymous clients are refused, the user gets in."""
    import asyncio

    import aiomqtt

    from tests.records.servers import find_tool, free_port, stop, wait_for_port

    port = free_port()
    passwd = tmp_path / "passwd"
    passwd.touch()
    tool = find_tool("mosquitto_passwd", ("/usr/bin/mosquitto_passwd",))
    subprocess.run([tool, "-b", str(passwd), "bridgenet", "line-pw"], check=True, timeout=30)
    config = (DOCKER_DIR / "mosquitto.conf").read_text(encoding="utf-8")
    assert "allow_anonymous false" in config and "password_file /mosquitto/data/passwd" in config
    config = config.replace("/mosquitto/data/", f"{tmp_path}/").replace("listener 1883", f"listener {port} 127.0.0.1")
    user = pwd.getpwuid(os.geteuid()).pw_name  # as root, mosquitto would switch to a user without tmp_path
    (tmp_path / "mosquitto.conf").write_text(f"user {user}\n{config}", encoding="utf-8")
    log = tmp_path / "mosquitto.log"
    with open(log, "ab") as out:
        binary = find_tool("mosquitto", ("/usr/sbin/mosquitto",))
        proc = subprocess.Popen([binary, "-c", str(tmp_path / "mosquitto.conf")], stdout=out, stderr=out)
    try:
        wait_for_port(port, proc, "mosquitto", log)

        async def connect(**login: str) -> None:
            async with aiomqtt.Client("127.0.0.1", port, timeout=10, **login) as client:  # type: ignore[arg-type]
                await client.publish("bridgenet/probe", b"{}", qos=1)

        with pytest.raises(aiomqtt.MqttError):
            asyncio.run(connect())
        with pytest.raises(aiomqtt.MqttError):
            asyncio.run(connect(username="bridgenet", password="wrong"))
        asyncio.run(connect(username="bridgenet", password="line-pw"))
    finally:
        stop(proc)


# --- the TLS proxy profile --------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", sorted(FILES))
def test_tls_profile_puts_caddy_in_front_at_the_address_the_service_trusts(variant: str) -> None:
    result = compose(*FILES[variant], "--profile", "tls", "config", extra_env=GRAFANA_PASSWORD)
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    proxy = resolved["services"]["tls-proxy"]
    assert proxy["profiles"] == ["tls"] and proxy["image"].startswith("caddy:2.")
    assert [p["target"] for p in proxy["ports"]] == [443]
    address = proxy["networks"]["default"]["ipv4_address"]
    service = resolved["services"]["service" if variant == "gpu" else "service-cpu"]
    assert service["environment"]["BRIDGENET_FORWARDED_ALLOW_IPS"] == address
    # No other container can be given the proxy's address: dynamic ones come from a range without it.
    (pool,) = resolved["networks"]["default"]["ipam"]["config"]
    subnet, dynamic = ipaddress.ip_network(pool["subnet"]), ipaddress.ip_network(pool["ip_range"])
    assert ipaddress.ip_address(address) in subnet and ipaddress.ip_address(address) not in dynamic
    caddyfile = (DOCKER_DIR / "caddy" / "Caddyfile").read_text(encoding="utf-8")
    assert "reverse_proxy service:8000" in caddyfile and "admin off" in caddyfile
    # The proxy's body cap is at least what the service itself accepts for a prediction.
    cap = re.search(r"max_size (\d+)MB", caddyfile)
    assert cap and int(cap.group(1)) * 1_000_000 >= max_body_bytes(Settings())


@pytest.mark.parametrize("variant", sorted(FILES))
def test_plc_profile_publishes_the_opcua_port_where_told(variant: str) -> None:
    env = GRAFANA_PASSWORD | {"OPCUA_BIND": "192.0.2.10", "BRIDGENET_OPCUA_URL": "opc.tcp://0.0.0.0:4840"}
    result = compose(*FILES[variant], "--profile", "plc", "config", extra_env=env)
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)["services"]
    relay = resolved["opcua"]
    assert relay["profiles"] == ["plc"] and "TCP:service:4840" in relay["command"]
    assert relay["ports"] == ["192.0.2.10:4840:4840/tcp"]
    service = resolved["service" if variant == "gpu" else "service-cpu"]
    assert service["environment"]["BRIDGENET_OPCUA_URL"] == "opc.tcp://0.0.0.0:4840"
