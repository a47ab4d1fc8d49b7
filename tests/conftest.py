"""Session-wide test environment: a private HF_HOME, a dummy token and pdefm's Hub server.

HF_ENDPOINT/HF_HOME/HF_TOKEN are set here, at import time, before anything imports
huggingface_hub or datasets (both read them once on import).
The server itself starts lazily, once per session, on the port chosen here.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from foundation.hub.process import LocalHub, free_port

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="pdefm-tests-"))
HUB_PORT = free_port()
HUB_TOKEN = "pdefm-test-token"
os.environ["HF_ENDPOINT"] = f"http://127.0.0.1:{HUB_PORT}"
os.environ["HF_HOME"] = str(_SESSION_DIR / "hf_home")
os.environ["HF_TOKEN"] = HUB_TOKEN
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
os.environ.pop("HF_HUB_OFFLINE", None)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models are overhead-bound: one thread per process avoids oversubscribing the 2 CI cores
# when tests start subprocesses (accelerate ranks, the Hub server, CLI runs).
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"


@pytest.fixture(scope="session")
def hub_server():
    """pdefm's Hub server as a real subprocess on loopback; yields its endpoint URL."""
    with LocalHub(_SESSION_DIR / "hub_root", HUB_TOKEN, port=HUB_PORT) as hub:
        yield hub.endpoint


@pytest.fixture
def tmp_out(tmp_path: Path) -> Path:
    """A fresh output folder for one test."""
    out = tmp_path / "out"
    out.mkdir()
    return out
