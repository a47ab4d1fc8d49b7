"""pdefm's Hub server, driven by the real huggingface_hub / transformers / peft / datasets clients."""

from __future__ import annotations

import hashlib
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


def _start_server(root: Path, port: int, via_cli: bool = False) -> subprocess.Popen:
    entry = ["eval_suite.command_line", "hub", "serve"] if via_cli else ["foundation.hub.server"]
    cmd = [sys.executable, "-m", *entry, "--root", str(root), "--port", str(port)]
    proc = subprocess.Popen([*cmd, "--token", HUB_TOKEN], cwd=REPO_ROOT, stderr=subprocess.DEVNULL)
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
