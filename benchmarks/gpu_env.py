"""What the GPU check runs on and how it keeps to its budget: driver/provider probe, targets, ORT profiles.

Imports nothing heavy: torch is imported only when a driver is present, so a machine without a GPU gets
its answer in under a second.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import logging
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import harness

log = logging.getLogger("gpu_check")
CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"


class Budget:
    """Seconds left of --budget-s; a step that needs more than is left is skipped and recorded."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds
        self.skipped: list[str] = []

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def allow(self, step: str, need_s: float) -> bool:
        if self.left() >= need_s:
            return True
        self.skipped.append(f"{step} (needs ~{need_s:.0f} s, {max(self.left(), 0):.0f} s left)")
        log.warning("skipping %s: not enough budget left", step)
        return False


@dataclass(frozen=True)
class Target:
    """What the checks expect to run on: CUDA, or the CPU in a --cpu-dry-run (which exercises every code
    path of this script on a machine without a GPU, so that it does not rot; it proves nothing about GPUs)."""

    provider: str
    ort_providers: list[Any]
    service: dict[str, str]
    torch_device: str


CUDA_TARGET = Target(CUDA, [CUDA, CPU], {"providers": "auto", "require_cuda": "true"}, "cuda")
CPU_DRY_RUN = Target(CPU, [CPU], {"providers": "cpu"}, "cpu")


def nvidia_smi(*query: str) -> list[str] | None:
    """Lines of `nvidia-smi --query-...=... --format=csv,noheader,nounits`, None without nvidia-smi."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, *query, "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else None


def gpu_memory_used_mb() -> float | None:
    lines = nvidia_smi("--query-gpu=memory.used")
    return float(lines[0]) if lines else None


def probe() -> dict[str, Any]:
    """What this machine has: driver, GPUs, onnxruntime providers, torch CUDA (torch only imported if a
    driver is present: without one, torch.cuda cannot work and importing torch costs seconds)."""
    env: dict[str, Any] = {"nvidia_smi": nvidia_smi("--query-gpu=name,memory.total,driver_version")}
    try:
        ctypes.CDLL("libcuda.so.1")
        env["libcuda"] = True
    except OSError:
        env["libcuda"] = False
    env["gpu_present"] = bool(env["libcuda"] or env["nvidia_smi"])
    try:
        import onnxruntime as ort

        env["onnxruntime"] = ort.__version__
        env["ort_available_providers"] = ort.get_available_providers()
    except ImportError as exc:
        env["onnxruntime"] = None
        env["ort_available_providers"] = []
        env["onnxruntime_error"] = str(exc)
    env["ort_cuda_ep"] = CUDA in env["ort_available_providers"]
    env["torch"] = env["torch_cuda"] = None
    if env["gpu_present"] and importlib.util.find_spec("torch") is not None:
        import torch

        env["torch"] = torch.__version__
        env["torch_cuda"] = torch.cuda.is_available()
        if env["torch_cuda"]:
            env["torch_device"] = torch.cuda.get_device_name(0)
            env["torch_cuda_version"] = torch.version.cuda
    env["service_stack"] = all(importlib.util.find_spec(m) for m in ("fastapi", "uvicorn", "httpx", "multipart"))
    return env


def package_version(name: str) -> str | None:
    return None if importlib.util.find_spec(name) is None else harness.machine().get(name)


def profile_providers(profile_path: str) -> dict[str, Any]:
    """Which provider ran each node in an ONNX Runtime profile, and where the convolutions ran."""
    events = json.loads(Path(profile_path).read_text())
    nodes: dict[str, dict[str, str]] = {}
    for e in events:
        args = e.get("args", {})
        if e.get("cat") == "Node" and "provider" in args:
            node = e["name"].removesuffix("_kernel_time")
            nodes[node] = {"provider": args["provider"], "op": args.get("op_name", "")}
    by_provider: dict[str, int] = {}
    conv: dict[str, int] = {}
    for node in nodes.values():
        by_provider[node["provider"]] = by_provider.get(node["provider"], 0) + 1
        if node["op"].startswith("Conv"):
            conv[node["provider"]] = conv.get(node["provider"], 0) + 1
    return {"nodes_by_provider": by_provider, "conv_by_provider": conv}
