"""Real servers for the records tests, started and stopped (by pid) by the tests: Debian's mosquitto and
postgresql on free loopback ports, and a small webhook receiver in a thread."""

from __future__ import annotations

import gc
import glob
import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, NoReturn

import pytest

from tests.deploy.tools import in_ci

START_TIMEOUT_S = 20.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], what: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port} within {START_TIMEOUT_S} s")


def missing(message: str) -> NoReturn:
    """Skip the test, but fail it under CI: there docker/ci-apt.sh must have installed what it needs."""
    if in_ci():
        pytest.fail(f"{message}; CI is set, so this check may not be skipped")
    pytest.skip(message)


def find_tool(name: str, extra_globs: tuple[str, ...] = ()) -> str:
    """The executable `name` (PATH, then `extra_globs`); skip when absent, fail under CI."""
    path = shutil.which(name)
    if path is None:
        hits = sorted(h for g in extra_globs for h in glob.glob(g))
        path = hits[-1] if hits else None
    if path is None:
        missing(f"{name!r} not found (install it with docker/ci-apt.sh)")
    return path


def stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


class Mosquitto:
    """A mosquitto broker on a fixed loopback port that a test can stop and start again. Persistence is
    on, as a line's broker should have it: a PLC's persistent session (clean_session=False) and its queued
    QoS 1 messages survive a broker restart.

    With `users` (name → password) anonymous clients are refused and a password file made by
    mosquitto_passwd is required; with `tls` (certificate and key PEM files) a second listener on
    `tls_port` speaks TLS."""

    def __init__(
        self, workdir: Path, users: dict[str, str] | None = None, tls: tuple[Path, Path] | None = None
    ) -> None:
        self.binary = find_tool("mosquitto", ("/usr/sbin/mosquitto",))
        self.port = free_port()
        self.tls_port = free_port() if tls else None
        self.workdir = workdir
        self.config = workdir / "mosquitto.conf"
        # `user`: mosquitto started as root would switch to the mosquitto user, who cannot write the
        # test's temporary directory; it runs as whoever runs the tests instead.
        lines = [f"user {pwd.getpwuid(os.geteuid()).pw_name}", f"listener {self.port} 127.0.0.1"]
        if tls:
            lines += [f"listener {self.tls_port} 127.0.0.1", f"certfile {tls[0]}", f"keyfile {tls[1]}"]
        if users:
            passwd = find_tool("mosquitto_passwd", ("/usr/bin/mosquitto_passwd",))
            password_file = workdir / "passwd"
            for i, (name, password) in enumerate(users.items()):
                create = ["-c"] if i == 0 else []
                subprocess.run([passwd, *create, "-b", str(password_file), name, password], check=True, timeout=30)
            lines += ["allow_anonymous false", f"password_file {password_file}"]
        else:
            lines.append("allow_anonymous true")
        lines += ["persistence true", f"persistence_location {workdir}/", "autosave_interval 1"]
        self.config.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def tls_url(self) -> str:
        assert self.tls_port is not None
        return f"mqtts://127.0.0.1:{self.tls_port}"

    def start(self) -> None:
        assert self.proc is None
        log = self.workdir / "mosquitto.log"
        with open(log, "ab") as out:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen([self.binary, "-c", str(self.config)], stdout=out, stderr=out)
        for port in (self.port, self.tls_port):
            if port is not None:
                wait_for_port(port, self.proc, "mosquitto", log)

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None


class Postgres:
    """A throw-away PostgreSQL cluster (initdb in a temporary directory, trust auth on loopback), run as
    a non-root user because postgres refuses to run as root."""

    def __init__(self) -> None:
        globs = ("/usr/lib/postgresql/*/bin/initdb",)
        self.initdb = find_tool("initdb", globs)
        self.postgres = find_tool("postgres", (str(Path(self.initdb).parent / "postgres"),))
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="bridgenet-pg-"))
        self.data = self.root / "data"
        self.user: str | None = None
        if os.geteuid() == 0:
            try:
                self.user = pwd.getpwnam("postgres").pw_name
            except KeyError:
                missing("postgres refuses to run as root and there is no 'postgres' user (docker/ci-apt.sh)")
            shutil.chown(self.root, self.user)
        self.proc: subprocess.Popen[bytes] | None = None
        self._databases = 0

    def _run(self, args: list[str], log: IO[bytes] | None = None) -> subprocess.Popen[bytes]:
        return subprocess.Popen(args, stdout=log, stderr=log, user=self.user, cwd=self.root)

    def start(self) -> None:
        log_path = self.root / "postgres.log"
        with open(log_path, "ab") as log:
            init = self._run([self.initdb, "-D", str(self.data), "-A", "trust", "-U", "bridgenet", "-E", "UTF8"], log)
            if init.wait(120) != 0:
                raise RuntimeError(f"initdb failed: {log_path.read_text(errors='replace')[-2000:]}")
            args = [self.postgres, "-D", str(self.data), "-p", str(self.port), "-k", str(self.root)]
            # Tests need no crash safety: without fsync the cluster is much faster on a shared disk.
            args += ["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "max_connections=100"]
            self.proc = self._run(args, log)
        wait_for_port(self.port, self.proc, "postgres", log_path)
        self._wait_accepting(log_path)

    def _wait_accepting(self, log_path: Path) -> None:
        """The port opens before the cluster takes sessions ("the database system is starting up")."""
        import psycopg

        deadline = time.monotonic() + START_TIMEOUT_S
        try:
            while True:
                try:
                    with psycopg.connect(
                        f"host=127.0.0.1 port={self.port} user=bridgenet dbname=postgres", connect_timeout=2
                    ):
                        return
                except psycopg.OperationalError as exc:
                    if time.monotonic() > deadline:
                        tail = log_path.read_text(errors="replace")[-2000:]
                        raise RuntimeError(f"postgres took no session within {START_TIMEOUT_S} s: {tail}") from exc
                    time.sleep(0.05)
        finally:
            # A refused attempt ("the database system is starting up") leaves psycopg's half-made connection
            # to the garbage collector, whose ResourceWarning would then fail whichever later test it lands in.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ResourceWarning)
                gc.collect()

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://bridgenet@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh empty database; its SQLAlchemy URL."""
        import psycopg

        self._databases += 1
        name = f"records_{self._databases}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=bridgenet dbname=postgres", autocommit=True) as c:
            c.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc, 30.0)
            self.proc = None
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes


@dataclass
class WebhookReceiver:
    """Answers POSTs with the statuses in `script` (in turn), then 200; keeps every request."""

    script: list[int] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/results"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver.lock:
                    receiver.received.append(Received(dict(self.headers.items()), body))
                    status = receiver.script.pop(0) if receiver.script else 200
                out = json.dumps({"status": status}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (IP subject alternative name), signed by its own key, and that key:
    the test trusts it as its CA. PEM files under `directory`."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bridgenet-test-broker")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "broker.crt", directory / "broker.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
    )
    return cert_path, key_path
