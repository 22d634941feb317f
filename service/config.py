"""Service settings: the one object that reads the `BRIDGENET_*` environment variables."""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import math
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings import SettingsError as _SourceError

from service.codecs import DecodeLimits

log = logging.getLogger(__name__)

ENV_PREFIX = "BRIDGENET_"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
MIN_PRODUCTION_KEY_LENGTH = 16
# Multipart framing and the small text fields on top of the two files of a prediction.
FORM_OVERHEAD_BYTES = 1024 * 1024
# Values never echoed in error messages (keys, passwords inside URLs).
_SECRET_FIELDS = (
    "api_key",
    "results_key",
    "admin_key",
    "database_url",
    "webhook_secret",
    "mqtt_url",
    "webhook_url",
    "ui_secret",
    "mqtt_password",
    "mqtt_secret",
)
_URL_SCHEMES = {"mqtt_url": ("mqtt", "mqtts"), "webhook_url": ("http", "https"), "opcua_url": ("opc.tcp",)}


class SettingsError(ValueError):
    """The environment holds a value the service cannot start with; the message names the variable."""


def env_name(field: str) -> str:
    return f"{ENV_PREFIX}{field.upper()}"


class Settings(BaseSettings):
    """Every knob of the service. Each field `x` is read from `BRIDGENET_X` (case-insensitive); empty
    variables count as unset. Lists and maps are JSON; `models` also takes a comma-separated list."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_ignore_empty=True, extra="forbid", frozen=True, allow_inf_nan=False
    )

    # Models: `models_dir/<name>/model.onnx + manifest.json`.
    models_dir: Path = Field(default=Path("models"), description="folder holding <name>/model.onnx + manifest.json")
    default_model: str = Field(default="demo", min_length=1, description="model for requests without a model field")
    models: Annotated[list[str] | None, NoDecode] = Field(  # None: every model folder in models_dir
        default=None, description="models to load, comma-separated or a JSON list; unset: every model folder"
    )
    # Execution providers: "auto" asks for CUDA when the machine has it and falls back to the CPU;
    # "cpu" never tries CUDA. `require_cuda` refuses to start unless the sessions really run on CUDA.
    providers: Literal["auto", "cpu"] = Field(default="auto", description="auto: CUDA where usable, else CPU; cpu")
    require_cuda: bool = Field(default=False, description="refuse to start unless the sessions run on CUDA")
    # TensorRT ahead of CUDA where both its provider and its library are present; otherwise CUDA, logged.
    tensorrt: bool = Field(default=False, description="ask for the TensorRT provider ahead of CUDA where present")
    # IO binding: outputs allocated once on the session's device; "auto" uses it on CUDA only.
    io_binding: Literal["auto", "on", "off"] = Field(default="auto", description="auto: on CUDA only; on; off")
    intra_op_threads: int | None = Field(  # None: ONNX Runtime's default (all cores)
        default=None, ge=1, description="ONNX Runtime threads per session; unset: its default (all cores)"
    )
    # ONNX Runtime's intra-op threads busy-wait after each run (its default). Spinning threads compete
    # with the event loop and the other requests' decoding for the same cores (docs/BENCHMARKS.md).
    ort_spin_wait: bool = Field(default=True, description="ONNX Runtime threads busy-wait between runs")
    # Recipes (service.recipes): `<recipes_dir>/<id>.json`; unset: `models_dir/recipes`. `recipe`: the one
    # requests without a `recipe` field get at start (the PLC may switch it); unset: the models' own rules.
    recipes_dir: Path | None = Field(default=None, description="folder of recipe files; unset: models_dir/recipes")
    recipe: str | None = Field(
        default=None, min_length=1, max_length=64, description="active recipe at start; unset: none"
    )
    # Model name → threshold used instead of the manifest's (logged at start, reported in every answer).
    threshold_overrides: Annotated[dict[str, float], NoDecode] = Field(
        default_factory=dict, description='JSON model → threshold instead of the manifest\'s, e.g. {"bagel": 0.73}'
    )
    # Model name → area rule (mm²) instead of the manifest's min_defect_area_mm2 (postprocessing.verdict.decide).
    min_defect_area_mm2: Annotated[dict[str, float], NoDecode] = Field(
        default_factory=dict,
        description='JSON model → smallest defect region in mm² that makes a part NG (area rule), e.g. {"bagel": 2.5}',
    )
    # Model name → length rule (mm) instead of the manifest's min_defect_length_mm; with an area rule as well,
    # a region meeting either minimum makes a part NG.
    min_defect_length_mm: Annotated[dict[str, float], NoDecode] = Field(
        default_factory=dict,
        description='JSON model → shortest defect region in mm that makes a part NG (length rule), e.g. {"bagel": 2}',
    )

    # Model name → a candidate (a stored version of that model, or a model folder) scored beside it on every
    # part, after the answer and off the line's capacity (service.lifecycle.shadow); checked at start.
    shadow: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description='JSON model → candidate version or model folder scored in the shadow, e.g. {"bagel": "3"}',
    )
    shadow_queue: int = Field(
        default=64, ge=1, le=100_000, description="parts waiting for the shadow scorer at most; more are skipped"
    )
    # The drift watch (service.lifecycle.drift): the last drift_window parts of each model version against
    # the good-score distribution its calibration recorded; judged from drift_min_parts on.
    drift_window: int = Field(default=200, ge=10, le=10_000, description="parts in each model's drift window")
    drift_min_parts: int = Field(default=50, ge=10, description="parts a drift window needs before it is judged")

    # Threads decoding the RGB image while the request's thread turns the point cloud into depth; 0: in turn.
    decode_threads: int = Field(default=2, ge=0, le=64, description="RGB decode threads beside the cloud's; 0: off")

    # Input limits, per uploaded file; image sizes are checked from the file header before decoding.
    max_upload_bytes: int = Field(default=64 * 1024 * 1024, gt=0, description="largest uploaded file, bytes")
    max_image_side: int = Field(default=4096, gt=0, description="largest image height or width, pixels")
    max_image_pixels: int = Field(default=4096 * 4096, gt=0, description="largest image height × width, pixels")
    # Bytes one upload may take once decoded, computed from its header (rows × columns × channels × bytes per
    # sample) before decoding; the default fits a float32 point cloud of max_image_pixels.
    max_decoded_bytes: int = Field(
        default=DecodeLimits.max_decoded_bytes, gt=0, description="largest decoded upload, bytes (from its header)"
    )

    # Admission: requests processed at once, requests waiting beyond those (more get 429), time limit.
    max_inflight: int = Field(default=2, ge=1, description="predictions running at once")
    max_queue: int = Field(default=16, ge=0, description="predictions waiting beyond those; more get 429")
    request_timeout_s: float = Field(default=10.0, gt=0, description="time limit of a prediction, seconds; then 503")
    # Connections and deadlines (docs/DEPLOYMENT.md "Memory under load"): beyond `max_connections` open
    # connections new requests are answered 503 by uvicorn; a request's headers must arrive within
    # `header_timeout_s` of the connection (or of the previous answer) and its body within `body_timeout_s`
    # of its headers, or the connection is closed (408 when the body is late).
    max_connections: int = Field(default=100, ge=1, description="open connections at most; more are answered 503")
    header_timeout_s: float = Field(default=10.0, gt=0, description="time to send a request's headers, seconds")
    # The line first (service.api.capacity): the review station (/ui) and the results API (/v1/results,
    # /v1/status) hold at most this share of max_connections at once (more are answered 503 side_busy), and
    # their small bodies (login, logout, review forms) must arrive within form_body_timeout_s.
    side_share: float = Field(
        default=0.25, gt=0, le=1, description="share of max_connections the review station and results API may hold"
    )
    form_body_timeout_s: float = Field(
        default=5.0, gt=0, description="time to send a body on paths other than predict, seconds; then 408"
    )
    body_timeout_s: float = Field(
        default=60.0, gt=0, description="time to send a request's body after its headers, seconds; then 408"
    )
    # Worker processes on one port (service.supervisor): each loads its own sessions, so memory (and GPU memory
    # on CUDA) grows by one model set per worker; more than the host's cores only adds contention.
    workers: int = Field(default=1, ge=1, le=64, description="processes serving the port; 1: this process alone")
    # Micro-batching, off by default on the CPU (size 1): there a batch costs about its size in time, so
    # waiting for company only adds latency; on a GPU a batch of 16 costs about what one part does, so unset
    # means 16 there (raise BRIDGENET_MAX_INFLIGHT to match: admission caps a batch at that many parts).
    batch_max_size: int | None = Field(  # None: 1 on the CPU, 16 when the sessions run on CUDA
        default=None,
        ge=1,
        le=256,
        description="parts per session run; 1: no micro-batching; unset: 1 on CPU, 16 on CUDA",
    )
    batch_wait_ms: float = Field(default=2.0, ge=0, le=1000, description="longest wait for company in a batch, ms")

    # Access: production refuses to start without an API key unless anonymous access is chosen explicitly.
    environment: Literal["development", "production"] = Field(
        default="development", description="development or production (production requires an API key)"
    )
    api_key: SecretStr | None = Field(default=None, description="the X-API-Key clients must send on /v1 routes")
    admin_key: SecretStr | None = Field(
        default=None, description="the X-Admin-Key of POST /v1/admin/reload; unset: reload by SIGHUP only"
    )
    # Roles: the line key predicts; the results key reads /v1/results*; the admin key runs /v1/admin/*;
    # reviewers log into /ui with their own user (service.ui.users). One value never serves two roles in
    # production (Settings refuses to start).
    results_key: SecretStr | None = Field(
        default=None, description="the X-API-Key of read-only /v1/results* clients (MES, import-reviews)"
    )
    allow_anonymous: bool = Field(default=False, description="production without an API key, on purpose")
    # Behind a TLS proxy: the proxy's addresses (or CIDR ranges) whose X-Forwarded-For / X-Forwarded-Proto
    # are believed; unset, those headers are ignored and the peer's own address and scheme are used.
    forwarded_allow_ips: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="comma-separated proxy addresses/CIDRs whose X-Forwarded-For/-Proto are trusted; unset: none",
    )
    log_level: str = Field(default="INFO", description=f"one of {', '.join(LOG_LEVELS)}")

    # Exposure. /metrics: on its own port when `metrics_port` is set (compose scrapes it on the internal
    # network and publishes only the API port; the API port then has no /metrics); unset, /metrics stays on
    # the API port behind the API key. /docs (Swagger UI from bundled assets, no CDN) only when `docs` is
    # on; /openapi.json, the API contract, is always served, behind the API key.
    metrics_port: int | None = Field(
        default=None, ge=1, le=65535, description="port of its own for /metrics; unset: API port, behind the key"
    )
    metrics_host: str = Field(default="127.0.0.1", description="interface the metrics port binds")
    docs: bool = Field(default=False, description="serve /docs (Swagger UI from bundled assets)")
    # Records and push (service.records, service.push; docs/DEPLOYMENT.md "Traceability").
    audit: Literal["on", "off"] = Field(
        default="on", description="on: every answered prediction is one database record, committed before the answer."
    )
    data_dir: Path = Field(
        default=Path("data"), description="Home of the SQLite database and the evidence archive (archive/)."
    )
    database_url: SecretStr | None = Field(
        default=None,
        description="SQLAlchemy URL, e.g. postgresql+psycopg://user:pw@host/db (several replicas); "
        "unset: SQLite in data_dir/records.db.",
    )
    archive: Literal["none", "ng", "all"] = Field(
        default="ng", description="Which parts keep their uploads and anomaly map (16-bit PNG) as evidence."
    )
    retention_days: float = Field(default=90.0, gt=0, description="Evidence older than this is pruned.")
    archive_max_gb: float = Field(
        default=20.0, gt=0, description="Evidence beyond this total size is pruned, oldest OK parts first, NG last."
    )
    push_on: Literal["all", "ng"] = Field(default="all", description="Which results are pushed to MQTT/webhook.")
    mqtt_url: str | None = Field(
        default=None,
        description="mqtt://[user:password@]host:port of the line's broker (mqtts:// for TLS); unset: no MQTT.",
    )
    mqtt_username: str | None = Field(default=None, description="MQTT user; unset: the URL's, else none.")
    mqtt_password: SecretStr | None = Field(default=None, description="MQTT password; unset: the URL's, else none.")
    mqtt_ca_file: Path | None = Field(
        default=None, description="CA certificate (PEM) that signed the broker's, for mqtts://; unset: the system's."
    )
    mqtt_secret: SecretStr | None = Field(
        default=None,
        description="Key of the payload's `signature` field (HMAC-SHA256, as the webhook's header); unset: none.",
    )
    mqtt_topic: str = Field(
        default="bridgenet/{model}/results", description="MQTT topic; {model} is replaced by the model name."
    )
    webhook_url: str | None = Field(default=None, description="HTTP(S) URL that receives each result as a JSON POST.")
    webhook_secret: SecretStr | None = Field(
        default=None, description="Key of the X-BridgeNet-Signature header (HMAC-SHA256 of the body); unset: none."
    )
    # Bounds of the push outbox (service.push.dispatcher): what a destination that stays away leaves behind.
    push_max_age_hours: float = Field(
        default=24.0, gt=0, description="Undelivered results older than this go to the dead letters."
    )
    push_max_backlog: int = Field(
        default=100_000,
        ge=1,
        description="Undelivered results kept per destination; the oldest beyond go to the dead letters.",
    )
    push_max_dead_letters: int = Field(
        default=100_000, ge=1, description="Dead letters kept per destination; the oldest beyond are deleted."
    )

    # PLC interface (service.plc; docs/DEPLOYMENT.md "Connecting a PLC"): an OPC UA server with one
    # Machine Vision `VisionSystem` per model. Signed and encrypted (Basic256Sha256) with user names and
    # passwords when a key pair is set; anonymous and unencrypted only in development.
    opcua_url: str | None = Field(
        default=None,
        description="opc.tcp://host:port the OPC UA server listens on, e.g. opc.tcp://0.0.0.0:4840; unset: off",
    )
    opcua_cert_file: Path | None = Field(
        default=None, description="The OPC UA server's certificate (DER or PEM); with the key: Basic256Sha256 only."
    )
    opcua_key_file: Path | None = Field(default=None, description="The OPC UA server's private key (PEM).")
    opcua_users_file: Path | None = Field(
        default=None,
        description="Users allowed on the OPC UA server (python -m service users add --file ...); unset: the "
        "review station's users file.",
    )
    opcua_buffer_size: int = Field(
        default=16, ge=1, le=10_000, description="Unacknowledged results kept ready per model; more wait (overrun)."
    )
    opcua_result_ttl_s: float = Field(
        default=3600.0, gt=0, description="An unacknowledged result leaves the buffer (dead letter) after this long."
    )

    # Ray Serve (service.cluster): how often each replica copies its metrics into Ray's, which every node
    # exports (Ray's agents export every few seconds too, so a shorter interval mostly costs CPU).
    cluster_metrics_interval_s: float = Field(
        default=5.0, gt=0, le=3600, description="Ray Serve only: seconds between two copies of a replica's metrics"
    )

    # Review station (service.ui, /ui): its login exchanges the API key for a signed session cookie.
    ui_secret: SecretStr | None = Field(
        default=None,
        description="Key that signs the review station's session cookies; unset: a random key per start, shared by "
        "the workers (sessions end at a restart, and replicas behind one address need one shared key).",
    )
    ui_session_hours: float = Field(
        default=12.0, gt=0, le=24 * 30, description="A review station login lasts this long."
    )
    users_file: Path | None = Field(
        default=None,
        description="The review station's users (python -m service users add|remove|list); unset: data_dir/users.json.",
    )
    login_attempts_per_user: int = Field(
        default=5, ge=1, description="Failed /ui logins per user name within login_window_s; more get 429."
    )
    login_attempts_per_address: int = Field(
        default=20, ge=1, description="Failed /ui logins per client address within login_window_s; more get 429."
    )
    login_window_s: float = Field(default=300.0, gt=0, description="The window of the login limits, seconds.")
    # Commissioning from recorded parts (service.lifecycle.commission; docs/DEPLOYMENT.md "Commissioning a line").
    commission_min_parts: int = Field(
        default=100, ge=3, description="Fewest good parts a calibration from the line's records may rest on."
    )

    @property
    def users_path(self) -> Path:
        """Where the review station's users are kept."""
        return self.users_file if self.users_file is not None else self.data_dir / "users.json"

    @field_validator("models", mode="before")
    @classmethod
    def _parse_models(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return _json(text, "models", "a JSON list of model names")
            return [name.strip() for name in text.split(",")] if text else None
        return value

    @field_validator("models")
    @classmethod
    def _distinct_names(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            if not value or any(not name for name in value):
                raise ValueError(f"expected one or more non-empty model names, got {value}")
            if len(set(value)) != len(value):
                raise ValueError(f"model names must be distinct, got {value}")
        return value

    @field_validator("forwarded_allow_ips", mode="before")
    @classmethod
    def _parse_proxies(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _proxy_addresses(cls, value: list[str]) -> list[str]:
        bad = []
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                bad.append(item)
        if bad:  # "*" too: trusting every peer would let any client choose its recorded address
            raise ValueError(f"expected IP addresses or CIDR ranges such as 10.0.0.5 or 172.28.0.0/24, got {bad}")
        return value

    @field_validator("threshold_overrides", "min_defect_area_mm2", "min_defect_length_mm", mode="before")
    @classmethod
    def _parse_model_maps(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, str):
            examples = {"threshold_overrides": 0.73, "min_defect_area_mm2": 2.5, "min_defect_length_mm": 2}
            example = examples[info.field_name or ""]
            return _json(value, info.field_name or "", f'a JSON object such as {{"bagel": {example}}}')
        return value

    @field_validator("shadow", mode="before")
    @classmethod
    def _parse_shadow(cls, value: Any) -> Any:
        if isinstance(value, str):
            return _json(value, "shadow", 'a JSON object such as {"bagel": "3"} (model → version or model folder)')
        return value

    @field_validator("shadow")
    @classmethod
    def _shadow_names(cls, value: dict[str, str]) -> dict[str, str]:
        bad = {name: v for name, v in value.items() if not name.strip() or not v.strip()}
        if bad:
            raise ValueError(f"expected model names mapped to a version or a model folder, got {bad}")
        return value

    @field_validator("min_defect_area_mm2", "min_defect_length_mm")
    @classmethod
    def _positive_min_sizes(cls, value: dict[str, float], info: ValidationInfo) -> dict[str, float]:
        bad = {name: v for name, v in value.items() if not name or not (math.isfinite(v) and v > 0)}
        if bad:
            what = "lengths > 0 in mm" if info.field_name == "min_defect_length_mm" else "areas > 0 in mm²"
            raise ValueError(f"expected model names mapped to {what}, got {bad}")
        return value

    @field_validator("threshold_overrides")
    @classmethod
    def _finite_overrides(cls, value: dict[str, float]) -> dict[str, float]:
        bad = {name: v for name, v in value.items() if not name or not math.isfinite(v)}
        if bad:
            raise ValueError(f"expected model names mapped to finite thresholds, got {bad}")
        return value

    @field_validator(
        *_SECRET_FIELDS,
        "mqtt_username",
        "mqtt_ca_file",
        "opcua_url",
        "opcua_cert_file",
        "opcua_key_file",
        mode="before",
    )
    @classmethod
    def _empty_key_is_none(cls, value: Any) -> Any:
        # Compose passes `${BRIDGENET_API_KEY:-}`: an empty key means "no key", never "the empty key".
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("mqtt_ca_file", "opcua_cert_file", "opcua_key_file", "opcua_users_file")
    @classmethod
    def _readable_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{value} is not a file")
        return value

    @field_validator("mqtt_url", "webhook_url", "opcua_url")
    @classmethod
    def _url_scheme(cls, value: str | None, info: ValidationInfo) -> str | None:
        schemes = _URL_SCHEMES[info.field_name or ""]
        if value is not None and not value.startswith(tuple(f"{s}://" for s in schemes)):
            # Only the scheme is echoed: a URL may carry a password.
            wanted = " or ".join(f"{s}://host:port" for s in schemes)
            raise ValueError(f"expected {wanted}, got a {value.split(':', 1)[0]}: URL")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _known_level(cls, value: Any) -> Any:
        level = str(value).strip().upper()
        if level not in LOG_LEVELS:
            raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}, got {value!r}")
        return level

    @model_validator(mode="after")
    def _coherent(self) -> Settings:
        problems = []
        if self.models is not None:
            if self.default_model not in self.models:
                problems.append(f"{env_name('default_model')}={self.default_model!r} is not in {env_name('models')}")
            unknown = sorted(set(self.threshold_overrides) - set(self.models))
            if unknown:
                problems.append(f"{env_name('threshold_overrides')} names models that are not loaded: {unknown}")
            unknown = sorted(set(self.shadow) - set(self.models))
            if unknown:
                problems.append(f"{env_name('shadow')} names models that are not loaded: {unknown}")
            for rule in ("min_defect_area_mm2", "min_defect_length_mm"):
                unknown = sorted(set(getattr(self, rule)) - set(self.models))
                if unknown:
                    problems.append(f"{env_name(rule)} names models that are not loaded: {unknown}")
        if self.drift_min_parts > self.drift_window:
            problems.append(f"{env_name('drift_min_parts')} must not exceed {env_name('drift_window')}")
        if self.require_cuda and self.providers == "cpu":
            problems.append(f"{env_name('require_cuda')} contradicts {env_name('providers')}=cpu")
        if self.batch_wait_ms / 1000.0 >= self.request_timeout_s:
            problems.append(f"{env_name('batch_wait_ms')} must be shorter than {env_name('request_timeout_s')}")
        problems.extend(self._opcua_problems())
        if self.environment == "production":
            key = self.api_key.get_secret_value() if self.api_key else ""
            if not key and not self.allow_anonymous:
                problems.append(
                    f"{env_name('environment')}=production needs {env_name('api_key')}; set "
                    f"{env_name('allow_anonymous')}=1 to serve without authentication on purpose"
                )
            problems.extend(self._production_key_problems())
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _opcua_problems(self) -> list[str]:
        """A key pair comes whole, and outside development the OPC UA server never runs without one."""
        if (self.opcua_cert_file is None) != (self.opcua_key_file is None):
            return [f"{env_name('opcua_cert_file')} and {env_name('opcua_key_file')} go together; set both or neither"]
        if self.opcua_url and self.audit == "off":
            return [f"{env_name('opcua_url')} needs {env_name('audit')}=on: the PLC's results come from the outbox"]
        if self.opcua_url and self.workers > 1:
            # Each worker would bind the same OPC UA port and hand the same results out twice.
            return [
                f"{env_name('opcua_url')} is set, but the PLC interface runs in one process only "
                f"({env_name('workers')}={self.workers}); serve it with {env_name('workers')}=1"
            ]
        if self.opcua_url and self.opcua_cert_file is None and self.environment != "development":
            return [
                f"{env_name('opcua_url')} in {env_name('environment')}={self.environment} needs "
                f"{env_name('opcua_cert_file')} and {env_name('opcua_key_file')}: anonymous, unencrypted OPC UA is "
                "for development only"
            ]
        return []

    def _production_key_problems(self) -> list[str]:
        """Each configured key long enough, and no value shared by two roles (one key, one role)."""
        keys = {
            name: secret.get_secret_value()
            for name in ("api_key", "results_key", "admin_key")
            if (secret := getattr(self, name)) is not None
        }
        problems = [
            f"{env_name(name)} has {len(key)} characters; production needs at least {MIN_PRODUCTION_KEY_LENGTH} "
            "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe())'`)"
            for name, key in keys.items()
            if len(key) < MIN_PRODUCTION_KEY_LENGTH
        ]
        names = list(keys)
        for i, first in enumerate(names):
            for second in names[i + 1 :]:
                if hmac.compare_digest(keys[first].encode(), keys[second].encode()):
                    problems.append(
                        f"{env_name(first)} and {env_name(second)} are the same value; production needs a "
                        "different key per role"
                    )
        return problems


def settings_help() -> str:
    """One line per setting: its variable, what it does and its default, for `python -m service --help`."""
    lines = []
    for name, info in Settings.model_fields.items():
        default = info.get_default(call_default_factory=True)
        shown = "unset" if default is None else json.dumps(default) if isinstance(default, dict) else str(default)
        lines.append(f"  {env_name(name):<32} {info.description} (default: {shown})")
    return "\n".join(lines)


def _json(text: str, field: str, expected: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"expected {expected}, got {text!r} ({exc.msg})") from exc


def _describe(exc: ValidationError) -> str:
    """One clause per bad value, named by its environment variable; secrets are never echoed."""
    clauses = []
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else ""
        message = error["msg"].removeprefix("Value error, ")
        got = repr(error.get("input"))
        shown = "" if field in _SECRET_FIELDS or not field or got in message else f" (got {got})"
        clauses.append(f"{env_name(field)}: {message}{shown}" if field else message)
    return "; ".join(clauses)


def get_settings() -> Settings:
    """Read and check the settings from the environment; raise SettingsError naming each bad variable.

    Not cached: the app factory reads them once at start and hands the object to whoever needs it.
    """
    known = {env_name(name) for name in Settings.model_fields}
    stray = sorted(k for k in os.environ if k.upper().startswith(ENV_PREFIX) and k.upper() not in known)
    if stray:  # a typo must not pass silently; compose-level variables (e.g. BRIDGENET_PORT) land here too
        log.warning("ignoring unknown environment variable(s) %s; known: %s", stray, sorted(known))
    # `from None`: pydantic's own error text would carry the raw inputs, the API key among them, into logs.
    try:
        return Settings()
    except ValidationError as exc:
        raise SettingsError(f"invalid settings: {_describe(exc)}") from None
    except _SourceError as exc:  # pydantic-settings could not parse a value from the environment
        raise SettingsError(f"invalid settings: {exc}") from None


def decode_limits(settings: Settings) -> DecodeLimits:
    """The per-file upload limits for service.codecs."""
    return DecodeLimits(
        max_bytes=settings.max_upload_bytes,
        max_side=settings.max_image_side,
        max_pixels=settings.max_image_pixels,
        max_decoded_bytes=settings.max_decoded_bytes,
    )


def max_body_bytes(settings: Settings) -> int:
    """Largest prediction body accepted: two uploads at the per-file limit plus form overhead."""
    return 2 * settings.max_upload_bytes + FORM_OVERHEAD_BYTES
