"""Dockerfiles: CUDA base matching the installed onnxruntime-gpu / torch builds, no torch in serving, non-root."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import re
import shutil
import struct
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.deploy.tools import DOCKER_DIR, REPO_ROOT

SERVICE = DOCKER_DIR / "Dockerfile.service"
TRAIN = DOCKER_DIR / "Dockerfile.train"
CONSTRAINTS = DOCKER_DIR / "constraints-service.txt"
CUDA_TAG = re.compile(
    r"^nvidia/cuda:(?P<major>\d+)\.(?P<minor>\d+)\.\d+-(?P<flavour>[a-z-]+)-ubuntu(?P<ubuntu>[\d.]+)$"
)


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    joined: list[str] = []
    pending = ""
    for raw in dockerfile.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        joined.append(pending + line)
        pending = ""
    return [(line.split(maxsplit=1)[0].upper(), line.split(maxsplit=1)[1]) for line in joined]


def values(dockerfile: Path, instruction: str) -> list[str]:
    return [args for name, args in instructions(dockerfile) if name == instruction]


def base_image(dockerfile: Path) -> str:
    """The image of the (single) FROM, with `${ARG}` replaced by the ARG's default."""
    defaults = dict(arg.split("=", 1) for arg in values(dockerfile, "ARG") if "=" in arg)
    (image,) = values(dockerfile, "FROM")
    return re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], image.split()[0])


def cuda_tag(dockerfile: Path) -> re.Match[str]:
    match = CUDA_TAG.match(base_image(dockerfile))
    assert match, f"{dockerfile.name}: base {base_image(dockerfile)!r} is not an nvidia/cuda:X.Y.Z-...-ubuntuV tag"
    return match


def elf_needed(path: Path) -> list[str]:
    """DT_NEEDED entries of a 64-bit little-endian ELF shared object (what `readelf -d` lists as NEEDED)."""
    with path.open("rb") as f:
        header = f.read(64)
        if header[:4] != b"\x7fELF" or header[4] != 2 or header[5] != 1:
            raise ValueError(f"{path}: not a 64-bit little-endian ELF file")
        (shoff,) = struct.unpack_from("<Q", header, 0x28)
        shentsize, shnum = struct.unpack_from("<HH", header, 0x3A)
        f.seek(shoff)
        table = f.read(shentsize * shnum)
        # Section header: name, type, flags, addr, offset, size, link, info, addralign, entsize.
        sections = [struct.unpack_from("<IIQQQQIIQQ", table, i * shentsize) for i in range(shnum)]
        dynamic = next(s for s in sections if s[1] == 6)  # SHT_DYNAMIC
        strtab = sections[dynamic[6]]
        f.seek(strtab[4])
        strings = f.read(strtab[5])
        f.seek(dynamic[4])
        entries = f.read(dynamic[5])
    needed = []
    for offset in range(0, len(entries), 16):
        tag, value = struct.unpack_from("<qQ", entries, offset)
        if tag == 0:  # DT_NULL ends the table
            break
        if tag == 1:  # DT_NEEDED
            needed.append(strings[value : strings.index(b"\0", value)].decode())
    return needed


def installed_package_dir(name: str) -> Path:
    """Folder of an installed top-level package, found without importing it (torch takes seconds)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"{name} is not installed here: nothing to compare the image with")
    return Path(next(iter(spec.submodule_search_locations)))


@pytest.fixture(scope="module")
def ort_cuda_provider() -> Path:
    library = installed_package_dir("onnxruntime") / "capi" / "libonnxruntime_providers_cuda.so"
    if not library.is_file():
        pytest.skip(f"{library} missing: the installed onnxruntime is not the GPU build")
    return library


def test_elf_reader_agrees_with_readelf(ort_cuda_provider: Path) -> None:
    readelf = shutil.which("readelf")
    if readelf is None:
        pytest.skip("readelf (binutils) not installed: cannot cross-check the ELF reader")
    out = subprocess.run([readelf, "-d", str(ort_cuda_provider)], capture_output=True, text=True, check=True)
    assert elf_needed(ort_cuda_provider) == re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", out.stdout)


def test_service_cuda_major_matches_onnxruntime_wheel(ort_cuda_provider: Path) -> None:
    cudart = [lib for lib in elf_needed(ort_cuda_provider) if lib.startswith("libcudart.so.")]
    assert len(cudart) == 1, f"no single libcudart among {elf_needed(ort_cuda_provider)}"
    wheel_major = cudart[0].rsplit(".", 1)[1]
    tag = cuda_tag(SERVICE)
    assert tag["major"] == wheel_major, f"base CUDA {tag['major']}, onnxruntime-gpu needs {cudart[0]}"
    # The wheel also records the toolkit it was built with; the base should not be older than that.
    info = (ort_cuda_provider.parent / "build_and_package_info.py").read_text(encoding="utf-8")
    built = re.search(r"cuda_version = '(\d+)\.(\d+)'", info)
    if built:
        assert (int(tag["major"]), int(tag["minor"])) >= (int(built[1]), int(built[2]))
    # cuDNN is loaded at run time (not NEEDED): the base must be a cuDNN runtime image.
    assert tag["flavour"] == "cudnn-runtime"


def test_onnxruntime_pin_matches_installed_wheel() -> None:
    pins = dict(line.split("==") for line in CONSTRAINTS.read_text().splitlines() if "==" in line)
    try:
        installed = importlib.metadata.version("onnxruntime-gpu")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("onnxruntime-gpu is not installed here: nothing to compare the pin with")
    assert pins["onnxruntime-gpu"] == installed, (
        f"docker/constraints-service.txt pins onnxruntime-gpu=={pins['onnxruntime-gpu']} but {installed} is "
        "installed: the image would run a different build than the tests (check its CUDA major)"
    )
    assert not any(name.startswith("torch") for name in pins), "torch pinned for the serving image"


def pip_installs(dockerfile: Path) -> list[str]:
    """Arguments of every `pip install` in RUN instructions."""
    found = []
    for run in values(dockerfile, "RUN"):
        for command in re.split(r"&&|;", run):
            words = command.split()
            if "pip" in " ".join(words[:1]) and words[1:2] == ["install"]:
                found += [w.strip("'\"") for w in words[2:]]
    return found


def test_service_image_installs_serve_extra_and_no_torch() -> None:
    args = pip_installs(SERVICE)
    assert "/src[serve]" in args
    assert "--constraint" in args
    assert not any("torch" in a or "[train" in a or ",train" in a for a in args), args
    copied = " ".join(values(SERVICE, "COPY"))
    assert "training" not in copied, "training/ copied into the serving image"
    # The build itself refuses an image where torch got in as a dependency.
    assert any("pip show torch" in run and "exit 1" in run for run in values(SERVICE, "RUN"))


@pytest.mark.parametrize("dockerfile", [SERVICE, TRAIN], ids=lambda p: p.name)
def test_runs_as_non_root(dockerfile: Path) -> None:
    users = values(dockerfile, "USER")
    assert users, f"{dockerfile.name} has no USER"
    assert users[-1].split(":")[0] not in ("root", "0")
    last_run = max(i for i, (name, _) in enumerate(instructions(dockerfile)) if name == "RUN")
    last_user = max(i for i, (name, _) in enumerate(instructions(dockerfile)) if name == "USER")
    assert last_user > last_run, "a RUN after USER would need root: keep USER after the last RUN"


def test_service_healthcheck_port_and_environment() -> None:
    (healthcheck,) = values(SERVICE, "HEALTHCHECK")
    assert "http://127.0.0.1:8000/readyz" in healthcheck
    assert values(SERVICE, "EXPOSE") == ["8000"]
    env = " ".join(values(SERVICE, "ENV"))
    assert "PYTHONUNBUFFERED=1" in env
    assert "BRIDGENET_MODELS_DIR=/models" in env
    (entrypoint,) = values(SERVICE, "ENTRYPOINT")
    (cmd,) = values(SERVICE, "CMD")
    assert json.loads(entrypoint) + json.loads(cmd) == [
        "python",
        "-m",
        "service",
        "--host",
        "0.0.0.0",
        "--port",
        "8000",
    ]


def test_train_image_entrypoint_and_torch_pins() -> None:
    (entrypoint,) = values(TRAIN, "ENTRYPOINT")
    assert json.loads(entrypoint) == ["python", "-m", "training"]
    args = dict(arg.split("=", 1) for arg in values(TRAIN, "ARG") if "=" in arg)
    train_deps = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["train"]
    assert f"torch=={args['TORCH_VERSION']}" in train_deps
    assert f"torchvision=={args['TORCHVISION_VERSION']}" in train_deps
    # The PyTorch index (cuXY0) must serve the base image's CUDA major.
    index_cuda = re.search(r"/cu(\d+?)(\d)$", args["TORCH_INDEX_URL"])
    assert index_cuda and index_cuda[1] == cuda_tag(TRAIN)["major"], args["TORCH_INDEX_URL"]
    assert "/src[train]" in pip_installs(TRAIN)


def test_train_cuda_major_matches_installed_torch() -> None:
    version_py = installed_package_dir("torch") / "version.py"
    cuda = re.search(r"^cuda[^=]*=\s*'(\d+)\.\d+'", version_py.read_text(encoding="utf-8"), re.MULTILINE)
    if cuda is None:
        pytest.skip("the installed torch is a CPU-only build: no CUDA version to compare")
    assert cuda[1] == cuda_tag(TRAIN)["major"]


def test_service_and_train_share_the_base_image() -> None:
    # One CUDA/cuDNN base pulled once per host; also keeps torch and onnxruntime on one CUDA major.
    assert base_image(SERVICE) == base_image(TRAIN)


def test_dockerignore_keeps_bulk_out_and_copied_sources_in() -> None:
    ignored = {line.strip() for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()}
    assert {".venv", "runs", "data", "out", ".git", ".env"} <= ignored
    for dockerfile in (SERVICE, TRAIN):
        for copy in values(dockerfile, "COPY"):
            for source in copy.split()[:-1]:
                assert source.split("/")[0] not in ignored, f"{dockerfile.name} copies ignored {source}"
                assert (REPO_ROOT / source).exists(), f"{dockerfile.name} copies missing {source}"
