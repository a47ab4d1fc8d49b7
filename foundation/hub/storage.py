"""On-disk repository store behind pdefm's Hub server: content-addressed blobs, JSON commits and refs.

Layout under ``root``::

    blobs/ab/abcdef...            file contents, named by their git-blob sha1 (shared by all repos)
    lfs/ab/<sha256>.json          LFS and Xet uploads: content sha256 -> {oid (git sha1 of the blob), size}
    xet/xorbs/ab/<hash>           Xet xorbs as uploaded (later uploads may reuse their chunks)
    repos/<type>s/<org>/<name>/
        state.json                private flag, branches -> commit, pull requests -> commit
        commits/<sha>.json        immutable commit: parent, title, message, date,
                                  tree {path: {oid, size[, sha256 for LFS files]}}
    tmp/<instance>/               uploads in progress of one running server (flock on its .lock)

Every file is written to a temporary name and moved in place with ``os.replace``; every mutation of a
repo's state holds a thread lock and an ``fcntl`` lock on ``root/.lock``, so concurrent uploads (threads
or several server processes on one root) serialise and a reader never sees a half-written file.
Uploads stream into ``tmp/<instance>/`` in chunks (never held whole in memory); what a killed server
left there is removed by ``clean_orphans`` when the next server starts.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from data_pipelines.atomic import write_bytes_atomic

REPO_TYPES = ("model", "dataset", "space")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_SHA = re.compile(r"^[0-9a-f]{40}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_PR_REF = re.compile(r"^refs/pr/([1-9][0-9]*)$")


class HubError(Exception):
    """A request the store refuses; ``status`` and ``code`` become the HTTP status and X-Error-Code."""

    def __init__(self, status: int, code: str | None, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def repo_not_found(repo_type: str, repo_id: str) -> HubError:
    return HubError(404, "RepoNotFound", f"{repo_type} repository {repo_id!r} not found")


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a file's bytes: sha1(b"blob <size>\\0" + data), what the Hub sends as ETag."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def validate_repo_id(repo_id: str) -> tuple[str, str]:
    """Split ``org/name``; refuse anything else (absolute paths, ``..``, extra segments, odd characters)."""
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(_NAME.match(p) and ".." not in p for p in parts):
        raise HubError(
            400,
            "InvalidRepoId",
            f"invalid repo id {repo_id!r}: expected 'org/name' of letters, digits, '-', '_', '.'",
        )
    return parts[0], parts[1]


def validate_repo_type(repo_type: str) -> str:
    if repo_type not in REPO_TYPES:
        raise HubError(
            400, "InvalidRepoType", f"invalid repo type {repo_type!r}: expected one of {REPO_TYPES}"
        )
    return repo_type


def validate_path(path: str) -> str:
    """A file path inside a repo: relative, '/'-separated, no empty, '.' or '..' segments."""
    parts = path.split("/")
    if not path or path.startswith("/") or "\\" in path or any(p in ("", ".", "..") for p in parts):
        raise HubError(400, "InvalidPath", f"invalid path in repo {path!r}")
    return path


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


def _write_json(path: Path, obj) -> None:
    write_bytes_atomic(path, json.dumps(obj, indent=1, sort_keys=True).encode())


@dataclass
class Commit:
    id: str
    parent: str | None
    title: str
    message: str
    date: str
    tree: dict[str, dict]  # path -> {"oid": git sha1, "size": bytes}


@dataclass
class FileChange:
    """One operation of a commit: ``oid`` (a stored blob) adds/replaces ``path``; None deletes it (a folder if
    ``folder``)."""

    path: str
    oid: str | None = None
    size: int = 0
    folder: bool = False
    sha256: str | None = None  # set for files uploaded through LFS


class BlobWriter:
    """Streams one file of a declared size into the store: chunks go to a temporary file under this
    server's ``tmp/`` folder while the git sha1 and the sha256 are computed; ``finish`` moves it into
    ``blobs/``. Memory stays at one chunk whatever the file size."""

    def __init__(self, store: RepoStore, size: int):
        self.store, self.size, self.written = store, size, 0
        self._sha1 = hashlib.sha1(b"blob %d\0" % size)
        self._sha256 = hashlib.sha256()
        fd, self._tmp = tempfile.mkstemp(dir=store.tmp_dir, suffix=".part")
        self._file = os.fdopen(fd, "wb")

    def write(self, data: bytes) -> None:
        if self.written + len(data) > self.size:
            raise HubError(400, None, f"upload is longer than its declared size of {self.size} bytes")
        self._file.write(data)
        self._sha1.update(data)
        self._sha256.update(data)
        self.written += len(data)

    def digest(self) -> str:
        """sha256 (hex) of the bytes written so far."""
        return self._sha256.hexdigest()

    def finish(self, expected_sha256: str | None = None) -> tuple[str, str]:
        """Publish the blob (idempotent); returns (git sha1, sha256). Refused (400) if the size or the
        expected sha256 does not match, and then nothing is stored."""
        if self.written != self.size:
            raise HubError(400, None, f"upload ended after {self.written} of its declared {self.size} bytes")
        if expected_sha256 is not None and self._sha256.hexdigest() != expected_sha256:
            raise HubError(
                400,
                None,
                f"uploaded bytes have sha256 {self._sha256.hexdigest()}, not the announced {expected_sha256}",
            )
        oid = self._sha1.hexdigest()
        path = self.store.blob_path(oid)
        if path.exists():  # same content already stored: blobs are immutable
            self.abort()
        else:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self._tmp, path)
        return oid, self._sha256.hexdigest()

    def abort(self) -> None:
        self._file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._tmp)

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is not None or not self._file.closed:
            self.abort()


def _lock_is_free(lock_path: Path) -> bool:
    """True when no live process holds ``lock_path`` (the kernel drops a killed server's flock)."""
    try:
        f = open(lock_path, "rb")
    except FileNotFoundError:
        return True
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(f, fcntl.LOCK_UN)
        return True


class RepoStore:
    """All repositories of one server root."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        for sub in ("blobs", "repos", "lfs", "tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        with self._locked():  # a concurrent clean_orphans must not take this folder for a dead server's
            self.tmp_dir = Path(tempfile.mkdtemp(dir=self.root / "tmp", prefix=f"{os.getpid()}-"))
            self._tmp_lock = open(self.tmp_dir / ".lock", "wb")
            fcntl.flock(self._tmp_lock, fcntl.LOCK_EX)

    def close(self) -> None:
        """Release this server's upload folder (removed; a crashed server's is removed by the next start)."""
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
        self._tmp_lock.close()

    def clean_orphans(self) -> list[Path]:
        """Remove what killed servers left behind; returns the removed paths.

        That is: upload folders under ``tmp/`` whose server no longer holds their lock, ``.*.tmp`` files of
        interrupted atomic writes and ``.*.deleted-*`` folders of interrupted repo deletions. Runs under the
        store lock, so it never races a live server's commit on the same root.
        """
        removed: list[Path] = []
        with self._locked():
            for entry in (self.root / "tmp").iterdir():
                if entry == self.tmp_dir:
                    continue
                if entry.is_dir() and _lock_is_free(entry / ".lock"):
                    removed += [p for p in entry.rglob("*") if p.is_file() and p.name != ".lock"]
                    shutil.rmtree(entry, ignore_errors=True)
                elif entry.is_file():
                    entry.unlink()
                    removed.append(entry)
            for sub in ("blobs", "lfs", "repos"):
                for path in list((self.root / sub).rglob(".*")):
                    if path.is_file() and path.name.endswith(".tmp"):
                        path.unlink()
                        removed.append(path)
                    elif path.is_dir() and ".deleted-" in path.name:
                        shutil.rmtree(path, ignore_errors=True)
                        removed.append(path)
        return removed

    # ---- locking and paths -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock, open(self.root / ".lock", "a+b") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _repo_dir(self, repo_type: str, repo_id: str) -> Path:
        org, name = validate_repo_id(repo_id)
        return self.root / "repos" / f"{validate_repo_type(repo_type)}s" / org / name

    def blob_path(self, oid: str) -> Path:
        if not _SHA.match(oid):
            raise HubError(400, None, f"invalid blob id {oid!r}")
        return self.root / "blobs" / oid[:2] / oid

    def put_blob(self, data: bytes) -> str:
        """Store bytes under their git sha1 (idempotent) and return it."""
        with BlobWriter(self, len(data)) as writer:
            writer.write(data)
            return writer.finish()[0]

    def _lfs_path(self, sha256: str) -> Path:
        if not _SHA256.match(sha256):
            raise HubError(400, None, f"invalid LFS object id {sha256!r}: expected 64 lowercase hex digits")
        return self.root / "lfs" / sha256[:2] / f"{sha256}.json"

    def lfs_object(self, sha256: str) -> dict | None:
        """``{"oid": git sha1, "size": bytes}`` of an uploaded LFS object, or None if it never arrived."""
        try:
            return json.loads(self._lfs_path(sha256).read_text())
        except FileNotFoundError:
            return None

    def put_lfs_object(self, sha256: str, oid: str, size: int) -> None:
        """Record that the LFS object ``sha256`` is stored as blob ``oid``."""
        path = self._lfs_path(sha256)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.tmp_dir, suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump({"oid": oid, "size": size}, f)
        os.replace(tmp, path)

    # ---- repo lifecycle ----------------------------------------------------------------------------

    def exists(self, repo_type: str, repo_id: str) -> bool:
        return (self._repo_dir(repo_type, repo_id) / "state.json").exists()

    def list_repos(self, repo_type: str) -> list[tuple[str, dict]]:
        """``(repo_id, state)`` of every repo of one type, sorted by id."""
        base = self.root / "repos" / f"{validate_repo_type(repo_type)}s"
        out = []
        for state_path in sorted(base.glob("*/*/state.json")):
            repo_id = f"{state_path.parent.parent.name}/{state_path.parent.name}"
            with contextlib.suppress(FileNotFoundError):  # deleted while listing
                out.append((repo_id, json.loads(state_path.read_text())))
        return out

    def state(self, repo_type: str, repo_id: str) -> dict:
        path = self._repo_dir(repo_type, repo_id) / "state.json"
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise repo_not_found(repo_type, repo_id) from None

    def create_repo(self, repo_type: str, repo_id: str, private: bool = False) -> None:
        """A new repo whose ``main`` holds one empty commit; 409 if it exists."""
        repo_dir = self._repo_dir(repo_type, repo_id)
        with self._locked():
            if (repo_dir / "state.json").exists():
                raise HubError(409, "RepoExists", f"You already created this {repo_type} repo: {repo_id}")
            first = self._write_commit(repo_dir, None, "initial commit", "", {})
            state = {"createdAt": _now(), "private": bool(private), "branches": {"main": first}, "prs": {}}
            _write_json(repo_dir / "state.json", state)

    def delete_repo(self, repo_type: str, repo_id: str) -> None:
        repo_dir = self._repo_dir(repo_type, repo_id)
        with self._locked():
            if not (repo_dir / "state.json").exists():
                raise repo_not_found(repo_type, repo_id)
            trash = repo_dir.with_name(f".{repo_dir.name}.deleted-{os.getpid()}-{time.monotonic_ns()}")
            os.replace(repo_dir, trash)  # atomic disappearance, then cleanup
            shutil.rmtree(trash)

    # ---- commits and refs --------------------------------------------------------------------------

    def _write_commit(self, repo_dir: Path, parent: str | None, title: str, message: str, tree: dict) -> str:
        body = {"parent": parent, "title": title, "message": message, "date": _now(), "tree": tree}
        sha = hashlib.sha1(json.dumps(body, sort_keys=True).encode()).hexdigest()
        _write_json(repo_dir / "commits" / f"{sha}.json", {"id": sha, **body})
        return sha

    def commit(self, repo_type: str, repo_id: str, sha: str) -> Commit:
        path = self._repo_dir(repo_type, repo_id) / "commits" / f"{sha}.json"
        return Commit(**json.loads(path.read_text()))

    def resolve(self, repo_type: str, repo_id: str, revision: str) -> str:
        """Commit sha of a branch (``main``, ``refs/heads/main``), ``refs/pr/N`` or a full commit sha."""
        state = self.state(repo_type, repo_id)
        branch = revision.removeprefix("refs/heads/")
        if branch in state["branches"]:
            return state["branches"][branch]
        pr = _PR_REF.match(revision)
        if pr and pr.group(1) in state["prs"]:
            return state["prs"][pr.group(1)]["target"]
        if (
            _SHA.match(revision)
            and (self._repo_dir(repo_type, repo_id) / "commits" / f"{revision}.json").exists()
        ):
            return revision
        raise HubError(404, "RevisionNotFound", f"Invalid rev id: {revision} (repo {repo_id})")

    def history(self, repo_type: str, repo_id: str, revision: str) -> list[Commit]:
        sha: str | None = self.resolve(repo_type, repo_id, revision)
        out = []
        while sha is not None:
            out.append(self.commit(repo_type, repo_id, sha))
            sha = out[-1].parent
        return out

    def apply_commit(
        self,
        repo_type: str,
        repo_id: str,
        revision: str,
        title: str,
        message: str,
        changes: list[FileChange],
        parent_commit: str | None = None,
        create_pr: bool = False,
    ) -> tuple[str, int | None]:
        """Commit ``changes`` on top of ``revision``; returns (commit sha, PR number or None).

        A branch advances; ``refs/pr/N`` advances that PR; ``create_pr`` opens a new ``refs/pr/N`` and leaves
        the branch untouched. ``parent_commit`` that is not the current head is refused (412), as on the Hub.
        """
        for change in changes:
            validate_path(change.path.rstrip("/") if change.folder else change.path)
            if change.oid is not None and not self.blob_path(change.oid).exists():
                raise HubError(400, None, f"blob {change.oid} of {change.path!r} was never uploaded")
        repo_dir = self._repo_dir(repo_type, repo_id)
        with self._locked():
            state = self.state(repo_type, repo_id)
            head = self.resolve(repo_type, repo_id, revision)
            if parent_commit is not None and parent_commit != head:
                raise HubError(
                    412,
                    None,
                    f"parentCommit {parent_commit} is not the head {head} of {revision!r}: pull and retry",
                )
            tree = dict(self.commit(repo_type, repo_id, head).tree)
            for change in changes:
                if change.oid is not None:
                    tree[change.path] = {"oid": change.oid, "size": change.size}
                    if change.sha256:
                        tree[change.path]["sha256"] = change.sha256
                elif change.folder:
                    prefix = change.path.rstrip("/") + "/"
                    doomed = [p for p in tree if p.startswith(prefix)]
                    if not doomed:
                        raise HubError(
                            404, "EntryNotFound", f"A folder with this name doesn't exist: {change.path}"
                        )
                    for p in doomed:
                        del tree[p]
                elif tree.pop(change.path, None) is None:
                    raise HubError(
                        404, "EntryNotFound", f"A file with this name doesn't exist: {change.path}"
                    )
            sha = self._write_commit(repo_dir, head, title, message, tree)
            pr_num = None
            branch = revision.removeprefix("refs/heads/")
            pr = _PR_REF.match(revision)
            if create_pr:
                pr_num = self._new_pr(state, sha, title)
            elif branch in state["branches"]:
                state["branches"][branch] = sha
            elif pr and pr.group(1) in state["prs"]:
                state["prs"][pr.group(1)]["target"] = sha
            else:
                raise HubError(
                    400, None, f"cannot commit to {revision!r}: not a branch or a pull request ref"
                )
            _write_json(repo_dir / "state.json", state)
            return sha, pr_num

    @staticmethod
    def _new_pr(state: dict, target: str, title: str) -> int:
        num = 1 + max((int(n) for n in state["prs"]), default=0)
        state["prs"][str(num)] = {"target": target, "title": title, "createdAt": _now(), "status": "open"}
        return num

    def create_pr(self, repo_type: str, repo_id: str, title: str) -> int:
        """Open ``refs/pr/N`` at ``main`` (what ``create_pull_request`` does before committing to it)."""
        with self._locked():
            state = self.state(repo_type, repo_id)
            num = self._new_pr(state, state["branches"]["main"], title)
            _write_json(self._repo_dir(repo_type, repo_id) / "state.json", state)
            return num

    def create_branch(self, repo_type: str, repo_id: str, branch: str, starting_point: str | None) -> None:
        if (
            not re.match(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,99}$", branch)
            or ".." in branch
            or branch.startswith("refs/")
        ):
            raise HubError(400, None, f"invalid branch name {branch!r}")
        with self._locked():
            state = self.state(repo_type, repo_id)
            if branch in state["branches"]:
                raise HubError(409, None, f"Reference already exists: refs/heads/{branch}")
            state["branches"][branch] = self.resolve(repo_type, repo_id, starting_point or "main")
            _write_json(self._repo_dir(repo_type, repo_id) / "state.json", state)

    def delete_branch(self, repo_type: str, repo_id: str, branch: str) -> None:
        with self._locked():
            state = self.state(repo_type, repo_id)
            if branch == "main" or branch not in state["branches"]:
                raise HubError(404 if branch != "main" else 403, None, f"cannot delete branch {branch!r}")
            del state["branches"][branch]
            _write_json(self._repo_dir(repo_type, repo_id) / "state.json", state)
