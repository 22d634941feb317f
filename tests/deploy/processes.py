"""Real programs under test as loopback subprocesses: free ports, bounded readiness waits, clean stops."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import pytest
import yaml

STOP_TIMEOUT_S = 10.0


def free_port() -> int:
    """A loopback port nothing listened on a moment ago (the OS picks it; released before returning)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def log_tail(path: Path, chars: int = 4000) -> str:
    text = path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
    return text[-chars:]


def stop(process: subprocess.Popen[bytes], log_file: IO[str]) -> None:
    """SIGTERM, then SIGKILL if the process is still there after STOP_TIMEOUT_S; closes its log."""
    try:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=STOP_TIMEOUT_S)
    finally:
        log_file.close()


def wait_until(
    ready: Callable[[], bool],
    process: subprocess.Popen[bytes],
    log_path: Path,
    *,
    what: str,
    timeout_s: float,
    poll_s: float,
    not_yet: tuple[type[BaseException], ...] = (),
) -> float:
    """Poll `ready()` until it returns True; the seconds it took.

    Fails the test, with the tail of `log_path`, when `process` exits first or `timeout_s` passes
    (`what` names the awaited state in that message). Exceptions of the `not_yet` types count as "not
    ready yet" (not listening, API not up).
    """
    started = time.monotonic()
    while True:
        if process.poll() is not None:
            pytest.fail(f"the process exited with {process.returncode} before {what}:\n{log_tail(log_path)}")
        try:
            if ready():
                return time.monotonic() - started
        except not_yet:
            pass
        if time.monotonic() - started > timeout_s:
            pytest.fail(f"not {what} after {timeout_s:.0f} s:\n{log_tail(log_path)}")
        time.sleep(poll_s)


@contextmanager
def running_prometheus(
    binary: str, folder: Path, config: dict[str, Any], port: int
) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    """Prometheus (`binary`) with `config` on 127.0.0.1:`port`, its data and log in `folder`.

    Yields (process, base URL, log path) right after the start, before it is ready; stops it on exit.
    """
    config_path = folder / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    log_path = folder / "prometheus.log"
    log_file = log_path.open("w", encoding="utf-8")
    process = subprocess.Popen(
        [binary, f"--config.file={config_path}", f"--storage.tsdb.path={folder / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log_file, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        yield process, f"http://127.0.0.1:{port}", log_path
    finally:
        stop(process, log_file)
