"""Run pdefm's Hub server as a child process on a free loopback port (the quickstart and the tests).

Imports nothing from huggingface_hub: callers start the server first, then set HF_ENDPOINT, then import
the Hub clients (they read the endpoint once, at import).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free now on `host`."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class LocalHub:
    """`with LocalHub(root, token) as hub:` serves `root` at `hub.endpoint` until the block ends.

    The token reaches the server through its environment ($PDEFM_HUB_TOKEN), never its argv, which any
    user can read in `ps`. `extra_args` are more `python -m foundation.hub.server` options (limits).
    """

    def __init__(
        self,
        root: str | Path,
        token: str,
        port: int | None = None,
        startup_timeout: float = 30.0,
        extra_args: list[str] | None = None,
    ):
        self.root = Path(root)
        self.token = token
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.startup_timeout = startup_timeout
        self.extra_args = list(extra_args or [])
        self.log_path = self.root.parent / f"{self.root.name}.server.log"
        self._proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        """The server process id while it runs."""
        return self._proc.pid if self._proc is not None else None

    def start(self) -> LocalHub:
        self.root.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "foundation.hub.server",
            "--root",
            str(self.root),
            "--port",
            str(self.port),
        ]
        env = {**os.environ, "PDEFM_HUB_TOKEN": self.token}
        with open(self.log_path, "wb") as log:
            self._proc = subprocess.Popen(
                [*cmd, *self.extra_args], stdout=log, stderr=subprocess.STDOUT, env=env
            )
        deadline = time.monotonic() + self.startup_timeout
        while True:
            try:
                urllib.request.urlopen(f"{self.endpoint}/api/whoami-v2", timeout=1).close()
                return self
            except OSError:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    log_text = self.log_path.read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"pdefm hub did not start at {self.endpoint}:\n{log_text}") from None
                time.sleep(0.2)

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
