"""Peak memory of pdefm's Hub server for a large upload and for a refused large POST.

Starts the real server in a subprocess and measures its peak resident set growth (VmHWM in
/proc/PID/status, reset through /proc/PID/clear_refs once the server is up) while

- huggingface_hub's `upload_file` sends a SIZE MB file through Xet (the default when hf_xet is installed:
  xorbs, then a shard the server rebuilds the file from), and again through git LFS (HF_HUB_DISABLE_XET:
  batch, one PUT, verify),
- a client without a token POSTs SIZE MB to a commit route (refused from its headers).

Goals (issue 13): upload growth <= 100 MB, refused POST growth <= 10 MB. The growth is also printed as
a ratio to the file size (the baseline: a server that holds the body in memory scores >= 1).
Run: `nice -n 10 python benchmarks/bench_hub.py [--size-mb 300]`. Temporary files are deleted at the end.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from foundation.hub.process import LocalHub  # noqa: E402

TOKEN = "bench-hub-token"


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/status has no {field}")


def _reset_peak(pid: int) -> int:
    """Reset the server's peak RSS to its current RSS; returns that RSS in kB."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return _status_kb(pid, "VmRSS")


def _peak_growth_mb(pid: int, baseline_kb: int) -> float:
    return (_status_kb(pid, "VmHWM") - baseline_kb) / 1024


def _write_file(path: Path, size: int) -> None:
    """Random (incompressible) bytes, written 8 MB at a time."""
    block = os.urandom(8 << 20)
    with open(path, "wb") as f:
        left = size
        while left > 0:
            f.write(block[: min(left, len(block))])
            left -= len(block)


def _same(a: Path, b: Path) -> bool:
    """Byte-equal files, compared 8 MB at a time."""
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while (block := fa.read(8 << 20)) == fb.read(8 << 20):
            if not block:
                return True
    return False


def _refused_post(endpoint: str, path: Path) -> str:
    """POST the file to a commit route without a token; returns the status line the server answered."""
    host, port = endpoint.removeprefix("http://").split(":")
    size = path.stat().st_size
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        head = (
            "POST /api/models/bench/refused/commit/main HTTP/1.1\r\nHost: bench\r\n"
            f"Content-Type: application/x-ndjson\r\nContent-Length: {size}\r\n\r\n"
        )
        sock.sendall(head.encode())
        try:
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server closed after answering; the answer is still readable
        try:
            return sock.recv(4096).split(b"\r\n", 1)[0].decode()
        except ConnectionResetError:
            return "connection reset"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=300)
    size_mb = parser.parse_args().size_mb
    work = Path(tempfile.mkdtemp(prefix="bench-hub-"))
    try:
        big = work / "checkpoint.bin"
        _write_file(big, size_mb << 20)
        with LocalHub(work / "hub", TOKEN) as hub:
            os.environ.update(
                HF_ENDPOINT=hub.endpoint,
                HF_TOKEN=TOKEN,
                HF_HOME=str(work / "hf-home"),
                HF_HUB_DISABLE_PROGRESS_BARS="1",
            )
            import huggingface_hub.constants
            from huggingface_hub import HfApi, hf_hub_download

            api = HfApi()
            api.create_repo("bench/upload")
            print(f"server rss after start {_status_kb(hub.pid, 'VmRSS') / 1024:.1f} MB", flush=True)

            growth, seconds = {}, {}
            # LFS first: the Xet upload of the same bytes then still sends and rebuilds everything.
            for path in ("lfs", "xet"):
                huggingface_hub.constants.HF_HUB_DISABLE_XET = path == "lfs"  # read at call time
                baseline = _reset_peak(hub.pid)
                t0 = time.perf_counter()
                api.upload_file(path_or_fileobj=str(big), path_in_repo=f"{path}.bin", repo_id="bench/upload")
                seconds[path] = time.perf_counter() - t0
                growth[path] = _peak_growth_mb(hub.pid, baseline)
                got = Path(hf_hub_download("bench/upload", f"{path}.bin", cache_dir=work / "cache"))
                assert _same(got, big), f"the {path} upload does not download as the file sent"
                got.unlink()

            baseline = _reset_peak(hub.pid)
            answer = _refused_post(hub.endpoint, big)
            refused = _peak_growth_mb(hub.pid, baseline)

        print(f"file {size_mb} MB; Xet upload {seconds['xet']:.1f} s, LFS upload {seconds['lfs']:.1f} s")
        print(f"refused POST answer: {answer}")
        for name, key in (("upload", "xet"), ("upload_lfs", "lfs")):
            print(
                f"peak_rss_growth_mb {name} {growth[key]:.1f}  "
                f"(ratio to file size {growth[key] / size_mb:.3f}; goal <= 100 MB)"
            )
        print(
            f"peak_rss_growth_mb refused_post {refused:.1f}  "
            f"(ratio to file size {refused / size_mb:.3f}; goal <= 10 MB)"
        )
        print(
            f"machine: {platform.platform()}, python {platform.python_version()}, {os.cpu_count()} CPUs, "
            f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
