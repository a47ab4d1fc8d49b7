"""Session-wide test environment: a private HF_HOME, a dummy token and pdefm's Hub server.

HF_ENDPOINT/HF_HOME/HF_TOKEN are set here, at import time, before anything imports
huggingface_hub or datasets (both read them once on import; see shared notes §3).
The server itself starts lazily, once per session, on the port chosen here.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_SESSION_DIR = Path(tempfile.mkdtemp(prefix="pdefm-tests-"))
HUB_PORT = _free_port()
HUB_TOKEN = "pdefm-test-token"
os.environ["HF_ENDPOINT"] = f"http://127.0.0.1:{HUB_PORT}"
os.environ["HF_HOME"] = str(_SESSION_DIR / "hf_home")
os.environ["HF_TOKEN"] = HUB_TOKEN
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
os.environ.pop("HF_HUB_OFFLINE", None)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "2")

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def hub_server():
    """pdefm's Hub server as a real subprocess on loopback; yields its endpoint URL."""
    root = _SESSION_DIR / "hub_root"
    log = open(_SESSION_DIR / "hub_server.log", "wb")
    cmd = [sys.executable, "-m", "foundation.hub.server", "--root", str(root), "--port", str(HUB_PORT)]
    cmd += ["--token", HUB_TOKEN]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
    endpoint = os.environ["HF_ENDPOINT"]
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"{endpoint}/api/whoami-v2", timeout=1)
            break
        except Exception:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"hub server did not start; see {log.name}") from None
            time.sleep(0.2)
    yield endpoint
    proc.terminate()
    proc.wait(timeout=10)
    log.close()


@pytest.fixture
def tmp_out(tmp_path: Path) -> Path:
    """A fresh output folder for one test."""
    out = tmp_path / "out"
    out.mkdir()
    return out
