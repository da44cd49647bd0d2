"""The embedded default: a private redis-server on a unix socket in a temporary folder.

Started before the workers, stopped after them; it dies with its parent even on SIGKILL
(PR_SET_PDEATHSIG), so Ctrl-C never leaves a redis-server behind.
"""

from __future__ import annotations

import ctypes
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

REDIS_MISSING = (
    "redis-server is not on PATH and REDIS_URL is not set: install Redis "
    "(Debian/Ubuntu: 'apt-get install redis-server', macOS: 'brew install redis') "
    "or point REDIS_URL at a running Redis"
)

_PR_SET_PDEATHSIG = 1


class EmbeddedRedisError(RuntimeError):
    pass


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:  # not Linux: the context manager still stops it on a normal exit
        pass


class EmbeddedRedis:
    """`with EmbeddedRedis() as redis:` ... `redis.url` is a unix:// URL."""

    def __init__(
        self, *, tcp_port: int = 0, startup_timeout_s: float = 10.0, debug_command: bool = False
    ) -> None:
        self.tcp_port = tcp_port
        # DEBUG SLEEP is how the failure tests make the store slow; off for everyone else.
        self.debug_command = debug_command
        self.startup_timeout_s = startup_timeout_s
        self._dir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def socket_path(self) -> Path:
        assert self._dir is not None
        return self._dir / "redis.sock"

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise EmbeddedRedisError(REDIS_MISSING)
        self._dir = Path(tempfile.mkdtemp(prefix="geoservice-redis-"))
        args = [
            binary,
            "--port", str(self.tcp_port),
            "--bind", "127.0.0.1",
            "--unixsocket", str(self.socket_path),
            "--unixsocketperm", "700",
            "--dir", str(self._dir),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--loglevel", "warning",
            "--logfile", str(self._dir / "redis.log"),
        ]  # fmt: skip
        if self.debug_command:
            args += ["--enable-debug-command", "local"]
        self._process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
            start_new_session=True,  # Ctrl-C goes to us; we stop Redis after the workers drain
        )
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                log = self._dir / "redis.log" if self._dir else None
                tail = log.read_text()[-500:] if log and log.exists() else ""
                self.stop()
                raise EmbeddedRedisError(f"redis-server exited at start-up: {tail.strip()}")
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                    sock.settimeout(0.5)
                    sock.connect(str(self.socket_path))
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.02)
        self.stop()
        raise EmbeddedRedisError(f"redis-server did not answer within {self.startup_timeout_s} s")

    def stop(self) -> None:
        if self._process is not None:
            if self._process.poll() is None:
                self._process.terminate()
                try:
                    self._process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self._process.kill()
                    self._process.wait()
            self._process = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
