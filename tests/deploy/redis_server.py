"""A real `redis-server` (Debian's package) for the job store tests, on a free loopback port,
with nothing saved to disk; stopped by its PID."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import redis

from tests.deploy.support import eventually, free_port

REDIS_SERVER = shutil.which("redis-server")


class RedisServer:
    def __init__(self, folder: Path) -> None:
        assert REDIS_SERVER is not None
        self.port = free_port()
        command = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        with (folder / "redis.log").open("w") as out:
            self.process = subprocess.Popen([*command, "--dir", str(folder)], stdout=out, stderr=subprocess.STDOUT)
        if not eventually(self.answers, timeout=15):
            self.stop()
            raise RuntimeError(f"redis-server did not start:\n{(folder / 'redis.log').read_text()}")

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def answers(self) -> bool:
        try:
            return bool(redis.Redis(port=self.port, socket_timeout=1).ping())
        except redis.ConnectionError:
            return False

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
