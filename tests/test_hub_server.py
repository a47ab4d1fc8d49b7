"""pdefm's Hub server, driven by the real huggingface_hub / transformers / peft / datasets clients."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote, urlsplit

import huggingface_hub.constants
import pytest
import torch
from huggingface_hub import (
    CommitOperationAdd,
    HfApi,
    HfFileSystem,
    hf_hub_download,
    snapshot_download,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel

from foundation.hub.process import LocalHub

# conftest.py has set HF_ENDPOINT/HF_TOKEN for the session server; never import conftest (it would re-run).
HUB_TOKEN = os.environ["HF_TOKEN"]
REPO_ROOT = Path(__file__).resolve().parents[1]


class TinyConfig(PretrainedConfig):
    model_type = "pdefm_hubtest_tiny"

    def __init__(self, width: int = 8, **kwargs):
        self.width = width
        super().__init__(**kwargs)


class TinyModel(PreTrainedModel):
    """A registered custom model, so AutoModel resolves `org/name` exactly as for any Hub model."""

    config_class = TinyConfig

    def __init__(self, config):
        super().__init__(config)
        self.inp = torch.nn.Linear(4, config.width)
        self.out = torch.nn.Linear(config.width, 4)
        self.post_init()

    def forward(self, x):
        return self.out(torch.tanh(self.inp(x)))


AutoConfig.register(TinyConfig.model_type, TinyConfig)
AutoModel.register(TinyConfig, TinyModel)


def _tiny(seed: int) -> TinyModel:
    torch.manual_seed(seed)
    return TinyModel(TinyConfig(width=8))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(url: str, method="GET", body: bytes | None = None, headers: dict | None = None):
    """(status, headers, body) of a raw HTTP request, without raising on 4xx."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def _start_server(root: Path, port: int, via_cli: bool = False, args: tuple = ()) -> subprocess.Popen:
    """A server subprocess; the token travels in its environment, never its argv."""
    entry = ["eval_suite.command_line", "hub", "serve"] if via_cli else ["foundation.hub.server"]
    cmd = [sys.executable, "-m", *entry, "--root", str(root), "--port", str(port), *args]
    env = {**os.environ, "PDEFM_HUB_TOKEN": HUB_TOKEN}
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/whoami-v2", timeout=1)
            return proc
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, "second hub server did not start"
            time.sleep(0.2)


def test_upload_folder_snapshot_and_range_reads(hub_server, tmp_path):
    api = HfApi()
    folder = tmp_path / "up"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_bytes(b"0123456789")
    (folder / "sub" / "b.bin").write_bytes(bytes(range(256)) * 9)
    url = api.create_repo("pdefm-tests/files")
    assert str(url) == f"{hub_server}/pdefm-tests/files"
    assert str(api.create_repo("pdefm-tests/files", exist_ok=True)) == str(url)
    with pytest.raises(HfHubHTTPError) as exc:
        api.create_repo("pdefm-tests/files")
    assert exc.value.response.status_code == 409
    info = api.upload_folder(folder_path=folder, repo_id="pdefm-tests/files")
    assert sorted(api.list_repo_files("pdefm-tests/files")) == ["a.txt", "sub/b.bin"]

    local = Path(snapshot_download("pdefm-tests/files"))
    assert local.name == info.oid  # the snapshot folder is the commit the server reported
    assert (local / "sub" / "b.bin").read_bytes() == (folder / "sub" / "b.bin").read_bytes()
    tree = {e.path: e for e in api.list_repo_tree("pdefm-tests/files", recursive=True)}
    assert tree["sub/b.bin"].size == 256 * 9 and "sub" in tree

    # Range requests: HfFileSystem seeks, and raw byte ranges including the suffix form.
    with HfFileSystem().open("pdefm-tests/files/sub/b.bin", "rb", block_size=64) as f:
        f.seek(300)
        assert f.read(5) == bytes(range(44, 49))
    base = f"{hub_server}/pdefm-tests/files/resolve/main/a.txt"
    status, headers, body = _request(base, headers={"Range": "bytes=2-4"})
    assert (status, body, headers["Content-Range"]) == (206, b"234", "bytes 2-4/10")
    status, _, body = _request(base, headers={"Range": "bytes=-3"})
    assert (status, body) == (206, b"789")
    # ETag is the git blob sha1, the name of the blob in the client cache.
    status, headers, _ = _request(base, method="HEAD")
    git_sha1 = hashlib.sha1(b"blob 10\0" + b"0123456789").hexdigest()
    assert headers["ETag"] == f'"{git_sha1}"' and tree["a.txt"].blob_id == git_sha1


def test_push_to_hub_model_revisions_and_pr(hub_server):
    repo = "pdefm-tests/tiny-model"
    first = _tiny(0)
    first.push_to_hub(repo, commit_message="first")
    loaded = AutoModel.from_pretrained(repo)
    assert isinstance(loaded, TinyModel)
    torch.testing.assert_close(loaded.state_dict(), first.state_dict(), rtol=0, atol=0)
    first_sha = HfApi().model_info(repo).sha

    second = _tiny(1)
    second.push_to_hub(repo, commit_message="second")
    pr_model = _tiny(2)
    pr = pr_model.push_to_hub(repo, create_pr=True, commit_message="proposal")
    assert pr.pr_num == 1 and pr.pr_revision == "refs/pr/1"
    refs = HfApi().list_repo_refs(repo, include_pull_requests=True)
    assert [r.ref for r in refs.pull_requests] == ["refs/pr/1"]

    x = torch.randn(3, 4)
    for revision, expected in [(None, second), (first_sha, first), ("refs/pr/1", pr_model)]:
        model = AutoModel.from_pretrained(repo, revision=revision)
        torch.testing.assert_close(model(x), expected(x), rtol=0, atol=0)
    assert HfApi().model_info(repo).sha != first_sha  # main moved on; the PR did not touch it
    assert HfApi().list_repo_commits(repo)[0].title == "second"


def test_peft_adapter_push_and_load(hub_server):
    from peft import LoraConfig, PeftModel, get_peft_model

    base_repo, adapter_repo = "pdefm-tests/peft-base", "pdefm-tests/peft-adapter"
    _tiny(3).push_to_hub(base_repo)
    peft_model = get_peft_model(
        AutoModel.from_pretrained(base_repo), LoraConfig(r=2, target_modules=["inp", "out"])
    )
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_()  # LoRA B starts at zero; make the adapter change the output
    peft_model.push_to_hub(adapter_repo)
    assert "adapter_config.json" in HfApi().list_repo_files(adapter_repo)

    reloaded = PeftModel.from_pretrained(AutoModel.from_pretrained(base_repo), adapter_repo)
    x = torch.randn(5, 4)
    torch.testing.assert_close(reloaded(x), peft_model(x), rtol=0, atol=0)
    assert not torch.allclose(reloaded(x), AutoModel.from_pretrained(base_repo)(x))


def test_dataset_repo_streams(hub_server, tmp_path):
    import datasets

    rows = {
        "u": [[float(i), float(i) + 0.5] for i in range(40)],
        "pde": ["ns" if i % 2 else "wave" for i in range(40)],
    }
    ds = datasets.Dataset.from_dict(rows)
    for i in range(2):  # a sharded parquet corpus, as data_pipelines.corpus writes it
        ds.shard(2, i).to_parquet(tmp_path / "data" / f"train-{i:05d}-of-00002.parquet")
    HfApi().create_repo("pdefm-tests/corpus", repo_type="dataset")
    HfApi().upload_folder(folder_path=tmp_path, repo_id="pdefm-tests/corpus", repo_type="dataset")
    stream = datasets.load_dataset("pdefm-tests/corpus", split="train", streaming=True)
    assert stream.num_shards == 2
    got = sorted((r["u"][0], r["pde"]) for r in stream)
    assert got == sorted((float(i), "ns" if i % 2 else "wave") for i in range(40))
    assert len(datasets.load_dataset("pdefm-tests/corpus", split="train")) == 40


def test_errors_are_the_hub_exceptions(hub_server):
    api = HfApi()
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("pdefm-tests/does-not-exist")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("pdefm-tests/does-not-exist", "config.json")
    api.create_repo("pdefm-tests/errors", exist_ok=True)
    api.upload_file(path_or_fileobj=b"{}", path_in_repo="config.json", repo_id="pdefm-tests/errors")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download("pdefm-tests/errors", "config.json", revision="no-such-branch")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("pdefm-tests/errors", "missing.json")
    with pytest.raises(RepositoryNotFoundError):
        api.dataset_info("pdefm-tests/errors")  # right id, wrong type

    wrong = HfApi(token="not-the-token")
    with pytest.raises(HfHubHTTPError, match="Invalid credentials"):
        wrong.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="pdefm-tests/errors")
    status, headers, _ = _request(
        f"{hub_server}/api/repos/create", "POST", json.dumps({"organization": "o", "name": "n"}).encode()
    )
    assert status == 403 and "token" in headers["X-Error-Message"]
    assert HfApi().list_repo_files("pdefm-tests/errors") == ["config.json"]  # nothing was written


@pytest.mark.parametrize(
    "org,name", [("..", "x"), ("a", ".."), ("a/../b", "c"), ("a", "b/../../etc"), ("", "x")]
)
def test_path_traversal_ids_are_refused(hub_server, org, name):
    auth = {"Authorization": f"Bearer {HUB_TOKEN}", "Content-Type": "application/json"}
    body = json.dumps({"organization": org, "name": name}).encode()
    status, headers, _ = _request(f"{hub_server}/api/repos/create", "POST", body, auth)
    assert status == 400 and "invalid repo id" in headers["X-Error-Message"]


def test_path_traversal_file_paths_are_refused(hub_server):
    HfApi().create_repo("pdefm-tests/paths", exist_ok=True)
    line = {"key": "file", "value": {"path": "../../escape.txt", "content": "eA==", "encoding": "base64"}}
    body = b"\n".join(json.dumps(x).encode() for x in [{"key": "header", "value": {"summary": "x"}}, line])
    headers = {"Authorization": f"Bearer {HUB_TOKEN}", "Content-Type": "application/x-ndjson"}
    status, headers, _ = _request(
        f"{hub_server}/api/models/pdefm-tests/paths/commit/main", "POST", body, headers
    )
    assert status == 400 and "invalid path" in headers["X-Error-Message"]
    status, _, _ = _request(f"{hub_server}/api/models/..%2F../x")
    assert status in (400, 404)


def test_concurrent_commits_all_land(hub_server):
    api = HfApi()
    repo = "pdefm-tests/concurrent"
    api.create_repo(repo, exist_ok=True)
    errors = []

    def upload(i):
        try:
            op = CommitOperationAdd(path_in_repo=f"part-{i}.txt", path_or_fileobj=str(i).encode() * 1000)
            api.create_commit(repo, [op], commit_message=f"part {i}")
        except Exception as e:  # collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=upload, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(api.list_repo_files(repo)) == sorted(f"part-{i}.txt" for i in range(8))
    assert len(api.list_repo_commits(repo)) == 9  # initial commit + one per upload, none lost
    assert Path(hf_hub_download(repo, "part-5.txt")).read_bytes() == b"5" * 1000


def test_restart_persistence(tmp_path):
    root, port = tmp_path / "hub", _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    proc = _start_server(root, port)
    try:
        api = HfApi(endpoint=endpoint, token=HUB_TOKEN)
        api.create_repo("pdefm-tests/persist", repo_type="dataset")
        api.upload_file(
            path_or_fileobj=b"kept",
            path_in_repo="data/x.txt",
            repo_id="pdefm-tests/persist",
            repo_type="dataset",
        )
        api.create_branch("pdefm-tests/persist", branch="dev", repo_type="dataset")
        sha = api.dataset_info("pdefm-tests/persist").sha
    finally:
        proc.kill()
        proc.wait()
    proc = _start_server(root, port, via_cli=True)  # `pdefm hub serve` on the same root
    try:
        api = HfApi(endpoint=endpoint, token=HUB_TOKEN)
        assert api.dataset_info("pdefm-tests/persist").sha == sha
        assert {b.name for b in api.list_repo_refs("pdefm-tests/persist", repo_type="dataset").branches} == {
            "main",
            "dev",
        }
        path = hf_hub_download(
            "pdefm-tests/persist",
            "data/x.txt",
            repo_type="dataset",
            endpoint=endpoint,
            cache_dir=tmp_path / "c",
        )
        assert Path(path).read_bytes() == b"kept"
    finally:
        proc.terminate()
        proc.wait()


def test_offline_reuse_after_download(hub_server, tmp_path):
    repo = "pdefm-tests/offline"
    model = _tiny(4)
    model.push_to_hub(repo)
    snapshot_download(repo)
    script = f"""
import torch
from huggingface_hub import snapshot_download, hf_hub_download
from safetensors.torch import load_file
path = snapshot_download({repo!r})
print(sorted(load_file(hf_hub_download({repo!r}, "model.safetensors")).keys()))
try:
    snapshot_download("pdefm-tests/never-downloaded")
except Exception as e:
    print("MISSING", type(e).__name__)
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": f"http://127.0.0.1:{_free_port()}"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert sorted(model.state_dict().keys()) == json.loads(out.stdout.splitlines()[0].replace("'", '"'))
    assert "MISSING" in out.stdout
    cached = load_file(hf_hub_download(repo, "model.safetensors"))
    torch.testing.assert_close(cached, model.state_dict(), rtol=0, atol=0)


# ---- bounded memory, LFS, limits, names, orphans, listing, token (issue 13) --------------------------


@pytest.fixture(scope="module")
def limited_hub(tmp_path_factory):
    """A second server with tiny limits: 1 MB request cap, files of 10 kB or more through LFS."""
    root = tmp_path_factory.mktemp("limited") / "hub"
    args = ["--max-upload-mb", "1", "--lfs-threshold-mb", "0.01"]
    with LocalHub(root, HUB_TOKEN, extra_args=args) as hub:
        yield hub


@pytest.fixture(params=["xet", "lfs"])
def transfer(request, monkeypatch):
    """Run a test with each upload path of huggingface_hub: Xet (hf_xet installed, the default) and git LFS
    (HF_HUB_DISABLE_XET=1, or no hf_xet). The flag is read at call time, so patching it switches paths."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", request.param == "lfs")
    return request.param


def _raw(endpoint: str, head: str, body: bytes = b"", timeout: float = 10):
    """(status, headers, body) of a request written by hand on a fresh socket: headers can promise a body
    that is never sent, which shows whether the server waits for it."""
    url = urlsplit(endpoint)
    with socket.create_connection((url.hostname, url.port), timeout=timeout) as sock:
        sock.sendall(head.encode("ascii") + body)
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, response.headers, response.read()


def _lfs_log(hub: LocalHub) -> str:
    return hub.log_path.read_text(errors="replace")


def test_unauthenticated_huge_post_is_refused_without_reading_the_body(hub_server):
    """Content-Length 10^11 and no body sent: the answer comes from the headers alone (waiting for the
    body would time out), and the connection is closed instead of read to its end."""
    for auth, status in [("", 403), ("Authorization: Bearer wrong-token\r\n", 401)]:
        head = (
            "POST /api/models/pdefm-tests/huge/commit/main HTTP/1.1\r\nHost: x\r\n"
            f"{auth}Content-Type: application/x-ndjson\r\nContent-Length: {10**11}\r\n\r\n"
        )
        got, headers, _ = _raw(hub_server, head)
        assert got == status and headers["Connection"] == "close"
    assert _request(f"{hub_server}/api/whoami-v2")[0] == 200  # the server is fine


def test_request_cap_gives_413(limited_hub):
    """--max-upload-mb: a declared size over the cap is refused before a byte is read, a chunked body when
    it crosses the cap, and the client learns it at preupload for a file that cannot fit."""
    api = HfApi(endpoint=limited_hub.endpoint)
    api.create_repo("pdefm-tests/capped")
    auth = f"Authorization: Bearer {HUB_TOKEN}\r\n"
    head = (
        f"POST /api/models/pdefm-tests/capped/commit/main HTTP/1.1\r\nHost: x\r\n{auth}"
        f"Content-Length: {2 * 2**20}\r\n\r\n"
    )
    status, headers, body = _raw(limited_hub.endpoint, head)
    assert status == 413 and headers["X-Error-Code"] == "PayloadTooLarge"
    assert "--max-upload-mb" in json.loads(body)["error"]

    chunked = (
        f"POST /api/models/pdefm-tests/capped/commit/main HTTP/1.1\r\nHost: x\r\n{auth}"
        "Transfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"%x\r\n%s\r\n" % (2**18, b"x" * 2**18)
    status, _, _ = _raw(limited_hub.endpoint, chunked, chunk * 8 + b"0\r\n\r\n")
    assert status == 413

    with pytest.raises(HfHubHTTPError) as exc:
        api.upload_file(
            path_or_fileobj=b"y" * (2 * 2**20), path_in_repo="big.bin", repo_id="pdefm-tests/capped"
        )
    assert exc.value.response.status_code == 413 and "big.bin" in str(exc.value)
    assert api.list_repo_files("pdefm-tests/capped") == []


def test_lfs_upload_above_the_inline_threshold(limited_hub, tmp_path, monkeypatch):
    """Without Xet, files over the threshold (and binary ones) go through batch -> signed PUT -> verify ->
    lfsFile; an object the server already holds is not sent again."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)
    api = HfApi(endpoint=limited_hub.endpoint)
    repo = "pdefm-tests/lfs"
    api.create_repo(repo)
    text = ("line of text\n" * 4000).encode()  # 52 kB, above the 10 kB threshold
    api.upload_file(path_or_fileobj=text, path_in_repo="notes.txt", repo_id=repo)
    puts = _lfs_log(limited_hub).count("PUT /pdefm-tests/lfs.git/info/lfs/objects/")
    assert puts == 1 and "POST /pdefm-tests/lfs.git/info/lfs/objects/verify" in _lfs_log(limited_hub)

    entry = next(iter(api.get_paths_info(repo, ["notes.txt"])))
    assert entry.lfs is not None and entry.lfs.sha256 == hashlib.sha256(text).hexdigest()
    path = hf_hub_download(repo, "notes.txt", endpoint=limited_hub.endpoint, cache_dir=tmp_path / "c")
    assert Path(path).read_bytes() == text

    api.upload_file(path_or_fileobj=text, path_in_repo="copy.txt", repo_id=repo)  # same bytes: no new PUT
    assert _lfs_log(limited_hub).count("PUT /pdefm-tests/lfs.git/info/lfs/objects/") == puts
    binary = bytes(range(256)) * 4  # 1 kB with NUL bytes: LFS too, as on the Hub
    api.upload_file(path_or_fileobj=binary, path_in_repo="w.bin", repo_id=repo)
    assert _lfs_log(limited_hub).count("PUT /pdefm-tests/lfs.git/info/lfs/objects/") == puts + 1
    assert sorted(api.list_repo_files(repo)) == ["copy.txt", "notes.txt", "w.bin"]


def test_lfs_put_needs_a_signed_url_and_the_announced_bytes(limited_hub):
    """The PUT carries no credentials (as to a presigned URL): a bad signature is refused, and bytes whose
    sha256 differs from the announced object are not stored."""
    HfApi(endpoint=limited_hub.endpoint).create_repo("pdefm-tests/lfs-signed", exist_ok=True)
    data = b"z" * 20_000
    oid = hashlib.sha256(data).hexdigest()
    batch = {"operation": "upload", "transfers": ["basic"], "objects": [{"oid": oid, "size": len(data)}]}
    status, _, body = _request(
        f"{limited_hub.endpoint}/pdefm-tests/lfs-signed.git/info/lfs/objects/batch",
        "POST",
        json.dumps(batch).encode(),
        {"Authorization": f"Bearer {HUB_TOKEN}", "Content-Type": "application/vnd.git-lfs+json"},
    )
    assert status == 200
    href = json.loads(body)["objects"][0]["actions"]["upload"]["href"]
    assert _request(href.replace("signature=", "signature=0"), "PUT", data)[0] == 403
    status, headers, _ = _request(href, "PUT", b"w" * len(data))
    assert status == 400 and "sha256" in headers["X-Error-Message"]
    assert _request(href, "PUT", data)[0] == 200


def test_dataset_push_to_hub_round_trip(hub_server, transfer):
    """datasets.Dataset.push_to_hub uploads its parquet shards as "lfs" files (through Xet or LFS) and
    deletes each local shard right after; load_dataset reads the rows back."""
    import datasets

    repo = f"pdefm-tests/pushed-ds-{transfer}"
    rows = {"idx": list(range(30)), "pde": ["ns", "wave", "burgers"] * 10, "u": [[i, -i] for i in range(30)]}
    datasets.Dataset.from_dict(rows).push_to_hub(repo, max_shard_size="1KB")
    files = HfApi().list_repo_files(repo, repo_type="dataset")
    assert sum(f.endswith(".parquet") for f in files) > 1 and "README.md" in files
    back = datasets.load_dataset(repo, split="train").sort("idx")
    assert back.to_dict() == rows


def test_xet_upload_is_rebuilt_into_plain_files(limited_hub, tmp_path, monkeypatch):
    """With hf_xet, an "lfs" file travels as xorbs + a shard; the server rebuilds it, checks its sha256 and
    serves it over plain HTTP."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", False)
    api = HfApi(endpoint=limited_hub.endpoint)
    repo = "pdefm-tests/xet"
    api.create_repo(repo)
    weights = torch.linspace(-1, 1, 100_000).numpy().tobytes()  # 400 kB of float32: compressible
    api.upload_file(path_or_fileobj=weights, path_in_repo="model.bin", repo_id=repo)
    log = _lfs_log(limited_hub)
    assert "xet-write-token" in log and "POST /xet/v1/xorbs/default/" in log and "POST /xet/v1/shards" in log
    entry = next(iter(api.get_paths_info(repo, ["model.bin"])))
    assert entry.lfs.sha256 == hashlib.sha256(weights).hexdigest() and entry.size == len(weights)
    path = hf_hub_download(repo, "model.bin", endpoint=limited_hub.endpoint, cache_dir=tmp_path / "c")
    assert Path(path).read_bytes() == weights

    status, _, _ = _request(
        f"{limited_hub.endpoint}/xet/v1/shards", "POST", b"x", {"Authorization": "Bearer 1.x"}
    )
    assert status == 401  # CAS routes need the short-lived token that xet-write-token signs


def test_xorb_chunks_decode_every_compression_scheme(tmp_path):
    """Xorb chunks stored as is, as LZ4 frames, and as LZ4 frames of 4-way byte-grouped data (the float
    layout) decode back to their bytes; a range skips the chunks before it."""
    import lz4.frame

    from foundation.hub import xet

    chunks = [
        bytes(range(256)) * 3,
        b"pde" * 1000,
        torch.arange(1001, dtype=torch.float32).numpy().tobytes()[:-1],
    ]
    grouped = b"".join(chunks[2][i::4] for i in range(4))
    stored = [(0, chunks[0]), (1, lz4.frame.compress(chunks[1])), (2, lz4.frame.compress(grouped))]
    path = tmp_path / "xorb"
    with open(path, "wb") as f:
        for (scheme, data), raw in zip(stored, chunks, strict=True):
            f.write(
                bytes([0])
                + len(data).to_bytes(3, "little")
                + bytes([scheme])
                + len(raw).to_bytes(3, "little")
            )
            f.write(data)
    assert list(xet.xorb_chunks(path, 0, 3)) == chunks
    assert list(xet.xorb_chunks(path, 1, 3)) == chunks[1:]
    words = ["0706050403020100", "0f0e0d0c0b0a0908", "1716151413121110", "1f1e1d1c1b1a1918"]
    assert xet.hash_hex(bytes(range(32))) == "".join(words)  # each 8-byte word printed as a LE u64


def test_non_latin1_repo_and_file_names(hub_server):
    """Error headers naming a non-Latin-1 repo or file are percent-encoded: the client gets the proper
    exception (and the exact name in the JSON body) and the keep-alive connection stays usable."""
    api = HfApi()
    repo = "pdefm-tests/unicode"
    api.create_repo(repo, exist_ok=True)
    api.upload_file(path_or_fileobj=b"ok", path_in_repo="données/模型.txt", repo_id=repo)
    assert Path(hf_hub_download(repo, "données/模型.txt")).read_bytes() == b"ok"
    with pytest.raises(EntryNotFoundError, match=quote("ファイル")):  # a HEAD: the header is all there is
        hf_hub_download(repo, "缺失/ファイル.bin")

    url = urlsplit(hub_server)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    conn.request("GET", "/api/models/org/" + quote("模型"))
    response = conn.getresponse()
    body = json.loads(response.read())
    assert response.status == 400 and "模型" in body["error"]
    assert (
        response.headers["X-Error-Message"].isascii() and quote("模型") in response.headers["X-Error-Message"]
    )
    conn.request("GET", "/api/whoami-v2")  # same connection: nothing was dropped
    assert conn.getresponse().status == 200
    conn.close()


def test_orphan_upload_of_a_killed_server_is_removed_at_start(tmp_path):
    """A server killed in the middle of an LFS PUT leaves a partial file; the next start removes it."""
    root = tmp_path / "hub"
    hub = LocalHub(root, HUB_TOKEN).start()
    try:
        api = HfApi(endpoint=hub.endpoint)
        api.create_repo("pdefm-tests/orphans")
        api.upload_file(path_or_fileobj=b"kept", path_in_repo="a.txt", repo_id="pdefm-tests/orphans")
        data = b"q" * 2**20
        oid = hashlib.sha256(data).hexdigest()
        batch = {"operation": "upload", "transfers": ["basic"], "objects": [{"oid": oid, "size": len(data)}]}
        _, _, body = _request(
            f"{hub.endpoint}/pdefm-tests/orphans.git/info/lfs/objects/batch",
            "POST",
            json.dumps(batch).encode(),
            {"Authorization": f"Bearer {HUB_TOKEN}", "Content-Type": "application/json"},
        )
        href = urlsplit(json.loads(body)["objects"][0]["actions"]["upload"]["href"])
        sock = socket.create_connection((href.hostname, href.port), timeout=10)
        head = f"PUT {href.path}?{href.query} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n\r\n"
        sock.sendall(head.encode() + data[: len(data) // 2])
        deadline = time.monotonic() + 20
        while not (parts := list((root / "tmp").glob("*/*.part"))):
            assert time.monotonic() < deadline, "the upload never reached the disk"
            time.sleep(0.05)
        while parts[0].stat().st_size < len(data) // 4:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        hub._proc.kill()  # SIGKILL: no cleanup runs
        hub._proc.wait()
        sock.close()
        assert parts[0].exists()
    finally:
        hub.stop()
    with LocalHub(root, HUB_TOKEN, port=hub.port) as restarted:
        assert not parts[0].exists() and not parts[0].parent.exists()
        assert "removed 1 temporary file" in restarted.log_path.read_text()
        assert HfApi(endpoint=restarted.endpoint).list_repo_files("pdefm-tests/orphans") == ["a.txt"]


def test_list_models_and_datasets_with_filters(hub_server):
    """list_models/list_datasets see what the hub holds: author and search filters, limit, and private
    repos only with the token."""
    api = HfApi()
    for repo, kind, private in [
        ("pdefm-list-a/alpha-model", "model", False),
        ("pdefm-list-a/beta-model", "model", False),
        ("pdefm-list-a/secret-model", "model", True),
        ("pdefm-list-b/alpha-other", "model", False),
        ("pdefm-list-a/alpha-corpus", "dataset", False),
    ]:
        api.create_repo(repo, repo_type=kind, private=private, exist_ok=True)
    assert [m.id for m in api.list_models(author="pdefm-list-a")] == [
        "pdefm-list-a/alpha-model",
        "pdefm-list-a/beta-model",
        "pdefm-list-a/secret-model",
    ]
    anonymous = HfApi(token=False)
    assert [m.id for m in anonymous.list_models(author="pdefm-list-a")] == [
        "pdefm-list-a/alpha-model",
        "pdefm-list-a/beta-model",
    ]
    assert {m.id for m in api.list_models(search="ALPHA")} >= {
        "pdefm-list-a/alpha-model",
        "pdefm-list-b/alpha-other",
    }
    assert "pdefm-list-a/alpha-corpus" not in {m.id for m in api.list_models(search="alpha")}
    assert len(list(api.list_models(author="pdefm-list-a", limit=1))) == 1
    assert [d.id for d in api.list_datasets(author="pdefm-list-a", search="corpus")] == [
        "pdefm-list-a/alpha-corpus"
    ]
    full = next(iter(api.list_models(author="pdefm-list-a", search="beta", full=True)))
    assert full.siblings == [] and full.sha
    with pytest.raises(HfHubHTTPError, match="unsupported listing parameter"):
        list(api.list_models(filter="text-classification"))


def test_token_never_on_the_server_command_line(tmp_path):
    """LocalHub passes the token in the environment; `pdefm hub serve --token-file` reads it from a file;
    `--token VALUE` is refused with a pointer to --token-file."""
    with LocalHub(tmp_path / "a", "argv-secret-1") as hub:
        cmdline = Path(f"/proc/{hub.pid}/cmdline").read_bytes()
        assert b"argv-secret-1" not in cmdline and b"foundation.hub.server" in cmdline
        assert HfApi(endpoint=hub.endpoint, token="argv-secret-1").whoami()["name"] == "pdefm"

    token_file = tmp_path / "token"
    token_file.write_text("file-secret-2\n")
    token_file.chmod(0o600)
    port = _free_port()
    cmd = [sys.executable, "-m", "eval_suite.command_line", "hub", "serve", "--root", str(tmp_path / "b")]
    proc = subprocess.Popen(
        [*cmd, "--port", str(port), "--token-file", str(token_file)], cwd=REPO_ROOT, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 30
        while _request_ok(f"http://127.0.0.1:{port}/api/whoami-v2") is False:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        assert b"file-secret-2" not in Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        api = HfApi(endpoint=f"http://127.0.0.1:{port}", token="file-secret-2")
        assert api.whoami()["name"] == "pdefm"
        with pytest.raises(HfHubHTTPError, match="Invalid credentials"):
            HfApi(endpoint=f"http://127.0.0.1:{port}", token=HUB_TOKEN).create_repo("pdefm-tests/no")
    finally:
        proc.terminate()
        proc.wait()

    out = subprocess.run([*cmd, "--token", "x"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--token-file" in out.stderr and "Traceback" not in out.stderr


def _request_ok(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=1).close()
        return True
    except OSError:
        return False
