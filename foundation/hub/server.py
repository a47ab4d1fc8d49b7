"""pdefm's Hub-compatible HTTP server: the routes huggingface_hub, transformers, peft and datasets use.

Run ``pdefm hub serve --root DIR --port P`` (or ``python -m foundation.hub.server``), then point clients at
it with ``HF_ENDPOINT=http://HOST:P HF_TOKEN=<token>``. Reads of public repos need no token; every write
needs the server's token, which comes from ``--token-file``, ``$PDEFM_HUB_TOKEN``, ``$HF_TOKEN`` or
``ROOT/.token`` (never the command line, where ``ps`` shows it to every user).

Memory stays bounded whatever clients send: authorisation is decided from the headers before a body byte
is read, bodies are streamed in 1 MiB chunks (uploads straight to a temporary file on disk) and capped
by ``--max-upload-mb`` (413). Small text files are inlined base64 in the ndjson commit; binary files and
files of ``--lfs-threshold-mb`` or more are "lfs" files, which huggingface_hub uploads through Xet when
hf_xet is installed (``xet.py``) and otherwise through the git LFS batch API (basic transfer: one signed
PUT per object, then verify). State lives in ``DIR`` (see ``storage.py``) and survives restarts.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import hmac
import io
import json
import os
import re
import secrets
import socket
import stat
import sys
import tempfile
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

from foundation.hub import xet
from foundation.hub.storage import (
    REPO_TYPES,
    BlobWriter,
    FileChange,
    HubError,
    RepoStore,
    repo_not_found,
    validate_path,
    validate_repo_id,
)

_CHUNK = 1 << 20
_MB = 1 << 20
_SMALL_BODY = 16 * _MB  # JSON and form bodies (preupload, batch, paths-info, ...) are read whole up to this
_DRAIN_LIMIT = 64 * 1024  # an unread body up to this size is drained to keep the connection alive
_LINGER_SECONDS = 5.0  # after refusing an unread body, discard what the client still sends for this long
_LFS_URL_SECONDS = 24 * 3600
_XET_TOKEN_SECONDS = 3600
_TYPE_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_PLURAL = {f"{t}s": t for t in REPO_TYPES}
_LIST_PARAMS = {"author", "search", "sort", "direction", "limit", "full", "expand", "config", "cardData"}
_HEADER_SAFE = "".join(chr(c) for c in range(0x20, 0x7F))
TOKEN_ENV = "PDEFM_HUB_TOKEN"


def header_value(value) -> str:
    """An HTTP header value http.server can send: one line, non-ASCII characters percent-encoded (UTF-8).

    http.server encodes headers as Latin-1 and raises on anything else, which dropped the connection on
    an error message naming a non-Latin-1 repo or file; the JSON body still carries the message as is.
    """
    text = re.sub(r"[\x00-\x1f\x7f]+", " ", str(value))
    return text if text.isascii() else quote(text, safe=_HEADER_SAFE)


def _directory_entries(tree: dict[str, dict], base: str, recursive: bool) -> list[dict]:
    """Hub tree entries under folder ``base`` ("" = root): files, and folders derived from file paths."""
    prefix = f"{base}/" if base else ""
    files, dirs = [], {}
    for path, meta in sorted(tree.items()):
        if not path.startswith(prefix):
            continue
        rest = path[len(prefix) :].split("/")
        for depth in range(1, len(rest)):
            if depth > 1 and not recursive:
                break
            d = prefix + "/".join(rest[:depth])
            dirs.setdefault(d, hashlib.sha1()).update(f"{path}:{meta['oid']}".encode())
        if len(rest) == 1 or recursive:
            files.append(_file_entry(path, meta))
    folders = [
        {"type": "directory", "path": d, "oid": h.hexdigest(), "size": 0} for d, h in sorted(dirs.items())
    ]
    return folders + files


def _file_entry(path: str, meta: dict) -> dict:
    entry = {"type": "file", "path": path, "size": meta["size"], "oid": meta["oid"]}
    if meta.get("sha256"):  # uploaded through LFS: what list_repo_tree reports as RepoFile.lfs
        entry["lfs"] = {"oid": meta["sha256"], "size": meta["size"], "pointerSize": 134}
    return entry


def _path_entry(tree: dict[str, dict], path: str) -> dict | None:
    if path in tree:
        return _file_entry(path, tree[path])
    prefix = path.rstrip("/") + "/"
    inside = sorted(p for p in tree if p.startswith(prefix))
    if not inside and path not in ("", "/"):
        return None
    oid = hashlib.sha1("".join(f"{p}:{tree[p]['oid']}" for p in inside).encode()).hexdigest()
    return {"type": "directory", "path": path.rstrip("/"), "oid": oid, "size": 0}


class RequestBody(io.RawIOBase):
    """A request body as a file: yields exactly the Content-Length or chunked bytes, never more than ``cap``.

    Nothing is read from the socket until the first ``readinto``, so a route can refuse a request (bad
    token, too large) on its headers alone; ``Expect: 100-continue`` is answered only at that point.
    """

    def __init__(self, handler: HubHandler, length: int | None, cap: int):
        self._handler, self._cap = handler, cap
        self.chunked = length is None
        self.remaining = length or 0  # bytes left (Content-Length), or left in the current chunk
        self.total = 0
        self.started = False
        self.done = not self.chunked and not length

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        if self.done:
            return 0
        rfile = self._handler.rfile
        if not self.started:
            self.started = True
            if not self.chunked and self.remaining > self._cap:
                raise _too_large(self.remaining, self._cap)
            self._handler.send_continue()
        if self.chunked and self.remaining == 0:
            line = rfile.readline(1024)
            try:
                size = int(line.split(b";")[0].strip(), 16)
            except ValueError:
                raise HubError(400, None, f"malformed chunk size line {line[:40]!r}") from None
            if size == 0:
                while rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                self.done = True
                return 0
            self.total += size
            if self.total > self._cap:
                raise _too_large(self.total, self._cap)
            self.remaining = size
        n = rfile.readinto1(memoryview(buf)[: min(len(buf), self.remaining)])
        if not n:
            raise HubError(400, None, "request body ended before its declared length")
        self.remaining -= n
        if self.remaining == 0:
            if self.chunked:
                rfile.readline(16)  # the CRLF that ends a chunk
            else:
                self.done = True
        return n


def _too_large(size: int, cap: int) -> HubError:
    return HubError(
        413,
        "PayloadTooLarge",
        f"request body of {size} bytes is larger than this hub's limit of {cap} bytes "
        "(pdefm hub serve --max-upload-mb)",
    )


class HubHandler(BaseHTTPRequestHandler):
    """One request. ``self.server`` (HubServer) carries the store, the token and the limits."""

    protocol_version = "HTTP/1.1"
    server_version = "pdefm-hub/1"

    # ---- plumbing ----------------------------------------------------------------------------------

    def log_message(self, fmt, *args):  # one line per request on stderr, as http.server does
        sys.stderr.write(f"{self.address_string()} {fmt % args}\n")

    def handle_expect_100(self) -> bool:
        """Defer "100 Continue" until a route reads the body: a refused request never invites it."""
        self._expect_continue = True
        return True

    def send_continue(self) -> None:
        if getattr(self, "_expect_continue", False):
            self._expect_continue = False
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.wfile.flush()

    def _open_body(self) -> None:
        """Set up this request's body from its headers; reads nothing."""
        length = None
        if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
            raw = self.headers.get("Content-Length") or "0"
            if not raw.isdigit():
                self.close_connection = True
                raise HubError(400, None, f"invalid Content-Length {raw!r}")
            length = int(raw)
        self._request_body = RequestBody(self, length, self.server.max_upload)
        self._reader = io.BufferedReader(self._request_body, _CHUNK)
        self._linger = False

    def _read_small(self) -> bytes:
        """The whole body of a JSON/form route, refused (413) past ``_SMALL_BODY`` before it is read."""
        body = self._request_body
        if not body.chunked and body.remaining > _SMALL_BODY:
            raise _too_large(body.remaining, _SMALL_BODY)
        data = self._reader.read(_SMALL_BODY + 1)
        if len(data) > _SMALL_BODY:
            raise _too_large(len(data), _SMALL_BODY)
        return data

    def _json_body(self) -> dict:
        try:
            body = json.loads(self._read_small() or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise HubError(400, None, f"request body is not valid JSON: {e}") from None
        if not isinstance(body, dict):
            raise HubError(400, None, f"request body must be a JSON object, got {type(body).__name__}")
        return body

    def _settle_body(self) -> None:
        """Before answering: drain a small unread body (keep-alive stays in sync), else close after replying."""
        body = self._request_body
        if body.done or self.close_connection:
            return
        if (
            not body.chunked
            and body.remaining <= _DRAIN_LIMIT
            and not getattr(self, "_expect_continue", False)
        ):
            try:
                while self._reader.read(_DRAIN_LIMIT):
                    pass
                return
            except HubError:
                pass
        # Never read a large or refused body: answer, then close the connection (see _linger_close).
        self.close_connection = True
        self._linger = True

    def _start_response(self, status: int, headers: dict) -> None:
        self._settle_body()
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, header_value(v))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()

    def _linger_close(self) -> None:
        """Half-close, then discard (never store) what the client still sends for a few seconds.

        Closing a socket with unread input makes the kernel send a reset, which can destroy the error
        response before the client reads it; discarding in a fixed buffer costs no memory.
        """
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + _LINGER_SECONDS
            buf = bytearray(_DRAIN_LIMIT)
            while (left := deadline - time.monotonic()) > 0:
                self.connection.settimeout(left)
                if not self.connection.recv_into(buf):
                    break
        except OSError:
            pass

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, ctype="application/json"):
        self._start_response(
            status, {"Content-Type": ctype, "Content-Length": str(len(body)), **(headers or {})}
        )
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj, status: int = 200, headers: dict | None = None):
        self._send(status, json.dumps(obj).encode(), headers)

    def _error(self, err: HubError, headers: dict | None = None):
        extra = {"X-Error-Message": err.message, **(headers or {})}
        if err.code:
            extra["X-Error-Code"] = err.code
        self._json({"error": err.message}, err.status, extra)

    def _endpoint(self) -> str:
        host = self.headers.get("Host") or f"{self.server.server_address[0]}:{self.server.server_address[1]}"
        return f"http://{host}"

    def _authorized(self) -> bool:
        """True with the configured token; a wrong token is refused outright (401), as on the Hub."""
        auth = self.headers.get("Authorization", "")
        if not auth:
            return False
        token = auth.removeprefix("Bearer ").strip()
        if not secrets.compare_digest(token.encode(), self.server.token.encode()):
            raise HubError(401, None, "Invalid credentials in Authorization header")
        return True

    def _require_write(self):
        if not self._authorized():
            raise HubError(
                403, None, "writing to this hub needs its token: set HF_TOKEN to the server's token"
            )

    def _readable(self, repo_type: str, repo_id: str) -> dict:
        """The repo's state if the caller may read it; private repos look absent without the token."""
        state = self.server.store.state(repo_type, repo_id)
        if state["private"] and not self._authorized():
            raise repo_not_found(repo_type, repo_id)
        return state

    # ---- dispatch ----------------------------------------------------------------------------------

    def do_GET(self):
        self._dispatch()

    def do_HEAD(self):
        self._dispatch()

    def do_POST(self):
        self._dispatch()

    def do_PUT(self):
        self._dispatch()

    def do_DELETE(self):
        self._dispatch()

    def _dispatch(self):
        url = urlsplit(self.path)
        self.query = parse_qs(url.query)
        seg = url.path.strip("/").split("/")
        method = self.command
        self._request_body = RequestBody(self, 0, 0)  # replaced by _open_body; keeps _settle_body safe
        try:
            self._open_body()
            if seg[:1] == ["xet"]:  # Xet CAS routes carry their own short-lived token (see _xet_token)
                return self._xet(method, seg[1:])
            if seg[:2] == ["v1", "telemetry"]:  # hf_xet reports here with its CAS token
                raise HubError(404, None, "this hub collects no telemetry")
            self._authorized()  # a wrong token fails every request, even reads, before any body byte
            lfs = next((i for i, part in enumerate(seg) if part.endswith(".git")), None)
            if seg[:1] == ["api"]:
                self._api(method, seg[1:])
            elif lfs is not None and seg[lfs + 1 : lfs + 4] == ["info", "lfs", "objects"]:
                repo_type = "model" if lfs == 1 else seg[0][:-1] if seg[0] in ("datasets", "spaces") else ""
                if lfs not in (1, 2) or not repo_type:
                    raise HubError(404, None, f"no route for {method} {url.path}")
                repo_id = unquote("/".join(seg[lfs - 1 : lfs + 1]).removesuffix(".git"))
                self._lfs(method, repo_type, repo_id, seg[lfs + 4 :])
            elif len(seg) >= 5 and seg[0] in ("datasets", "spaces") and seg[3] == "resolve":
                self._resolve(seg[0][:-1], unquote(f"{seg[1]}/{seg[2]}"), seg[4:])
            elif len(seg) >= 4 and seg[2] == "resolve":
                self._resolve("model", unquote(f"{seg[0]}/{seg[1]}"), seg[3:])
            else:
                raise HubError(404, None, f"no route for {method} {url.path}")
        except HubError as e:
            self._error(e)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as e:  # a bug or malformed input must still get an answer, never a dropped socket
            self.log_error("internal error on %s %s: %r", method, url.path, e)
            self._error(HubError(500, None, f"internal server error: {type(e).__name__}: {e}"))
        finally:
            if self._linger:
                self._linger_close()

    def _api(self, method: str, seg: list[str]):
        store: RepoStore = self.server.store
        if seg == ["whoami-v2"] and method == "GET":
            # Anonymous probes (health checks) get 200 too; only a wrong token is an error (see _dispatch).
            name = "pdefm" if self._authorized() else "anonymous"
            role = "write" if name == "pdefm" else "read"
            auth = {"type": "access_token", "accessToken": {"displayName": name, "role": role}}
            return self._json({"type": "user", "name": name, "fullname": name, "orgs": [], "auth": auth})
        if seg == ["validate-yaml"] and method == "POST":
            self._read_small()
            return self._json({"errors": [], "warnings": []})
        if len(seg) == 1 and seg[0] in _PLURAL and method in ("GET", "HEAD"):
            return self._json(self._list_repos(_PLURAL[seg[0]]))
        if seg == ["repos", "create"] and method == "POST":
            self._require_write()
            body = self._json_body()
            repo_type = body.get("type") or "model"
            repo_id = f"{body.get('organization') or ''}/{body.get('name') or ''}"
            if repo_type not in REPO_TYPES:
                raise HubError(400, None, f"invalid repo type {repo_type!r}")
            private = bool(body.get("private")) or body.get("visibility") == "private"
            url = f"{self._endpoint()}/{_TYPE_PREFIX[repo_type]}{repo_id}"
            try:
                store.create_repo(repo_type, repo_id, private)
            except HubError as e:
                if e.status != 409:
                    raise
                # create_repo(exist_ok=True) reads "url" from the 409 body
                return self._json({"error": e.message, "url": url}, 409, {"X-Error-Message": e.message})
            return self._json({"url": url, "name": repo_id, "id": repo_id})
        if seg == ["repos", "delete"] and method == "DELETE":
            self._require_write()
            body = self._json_body()
            store.delete_repo(
                body.get("type") or "model", f"{body.get('organization') or ''}/{body.get('name')}"
            )
            return self._json({})
        if len(seg) >= 3 and seg[0] in _PLURAL:
            return self._repo_api(method, _PLURAL[seg[0]], unquote(f"{seg[1]}/{seg[2]}"), seg[3:])
        raise HubError(404, None, f"no route for {method} /api/{'/'.join(seg)}")

    def _repo_api(self, method: str, repo_type: str, repo_id: str, rest: list[str]):
        store: RepoStore = self.server.store
        validate_repo_id(repo_id)
        route = rest[0] if rest else ""
        rev = unquote(rest[1]) if len(rest) > 1 else "main"
        if method in ("GET", "HEAD") and route in ("", "revision"):
            rev = unquote("/".join(rest[1:])) if route else "main"
            state = self._readable(repo_type, repo_id)
            commit = store.commit(repo_type, repo_id, store.resolve(repo_type, repo_id, rev))
            return self._json(self._repo_info(repo_type, repo_id, state, commit, siblings=True))
        if method == "GET" and route == "tree":
            self._readable(repo_type, repo_id)
            tree = store.commit(repo_type, repo_id, store.resolve(repo_type, repo_id, rev)).tree
            base = unquote("/".join(rest[2:])).strip("/")
            if base and _path_entry(tree, base) is None:
                raise HubError(404, "EntryNotFound", f"{base!r} does not exist at {rev!r}")
            recursive = self.query.get("recursive", ["false"])[0].lower() in ("1", "true")
            return self._json(_directory_entries(tree, base, recursive))
        if method == "POST" and route == "paths-info":
            self._readable(repo_type, repo_id)
            tree = store.commit(repo_type, repo_id, store.resolve(repo_type, repo_id, rev)).tree
            body = self._read_small()
            try:
                if self.headers.get("Content-Type", "").startswith("application/json"):
                    paths = json.loads(body or b"{}").get("paths", [])
                else:
                    paths = parse_qs(body.decode()).get("paths", [])
            except (ValueError, AttributeError) as e:
                raise HubError(400, None, f"malformed paths-info body: {e}") from None
            entries = [_path_entry(tree, p) for p in paths]
            return self._json([e for e in entries if e is not None])
        if method == "GET" and route == "refs":
            state = self._readable(repo_type, repo_id)
            branches = [
                {"name": b, "ref": f"refs/heads/{b}", "targetCommit": sha}
                for b, sha in state["branches"].items()
            ]
            prs = [
                {"name": f"refs/pr/{n}", "ref": f"refs/pr/{n}", "targetCommit": pr["target"]}
                for n, pr in state["prs"].items()
            ]
            return self._json({"branches": branches, "tags": [], "converts": [], "pullRequests": prs})
        if method == "GET" and route == "commits":
            self._readable(repo_type, repo_id)
            commits = store.history(repo_type, repo_id, rev)
            return self._json(
                [
                    {
                        "id": c.id,
                        "title": c.title,
                        "message": c.message,
                        "authors": [{"user": "pdefm"}],
                        "date": c.date,
                    }
                    for c in commits
                ]
            )
        if route == "branch" and method in ("POST", "DELETE"):
            self._require_write()
            branch = unquote("/".join(rest[1:]))
            if method == "DELETE":
                store.delete_branch(repo_type, repo_id, branch)
            else:
                store.create_branch(repo_type, repo_id, branch, self._json_body().get("startingPoint"))
            return self._json({})
        if method == "POST" and route == "preupload":
            self._require_write()
            return self._preupload(repo_type, repo_id, rev)
        if method == "POST" and route == "commit":
            self._require_write()
            return self._commit(repo_type, repo_id, rev)
        if method == "GET" and route == "xet-write-token":
            self._require_write()
            self._readable(repo_type, repo_id)
            return self._xet_token()
        if method == "GET" and route == "xet-read-token":
            raise HubError(404, None, "this hub serves downloads over plain HTTP: no Xet read token")
        if route == "discussions":
            return self._discussions(method, repo_type, repo_id, rest[1:])
        raise HubError(404, None, f"no route for {method} /api/{repo_type}s/{repo_id}/{'/'.join(rest)}")

    # ---- routes ------------------------------------------------------------------------------------

    def _repo_info(self, repo_type: str, repo_id: str, state: dict, commit, siblings: bool) -> dict:
        info = {
            "_id": hashlib.sha1(f"{repo_type}/{repo_id}".encode()).hexdigest()[:24],
            "id": repo_id,
            "sha": commit.id,
            "private": state["private"],
            "gated": False,
            "disabled": False,
            "author": repo_id.split("/")[0],
            "lastModified": commit.date,
            "createdAt": state["createdAt"],
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "usedStorage": sum(m["size"] for m in commit.tree.values()),
        }
        if siblings:
            info["siblings"] = []
            for path, meta in sorted(commit.tree.items()):
                sibling = {"rfilename": path, "size": meta["size"], "blobId": meta["oid"]}
                if meta.get("sha256"):
                    sibling["lfs"] = {"sha256": meta["sha256"], "size": meta["size"], "pointerSize": 134}
                info["siblings"].append(sibling)
        if repo_type == "model":
            info["modelId"] = repo_id
        return info

    def _list_repos(self, repo_type: str) -> list[dict]:
        """``GET /api/models|datasets|spaces``: what list_models/list_datasets read, filtered by ``author``
        (exact org) and ``search`` (substring of the id, any case); one page, no Link header."""
        q = {k: v[-1] for k, v in self.query.items()}
        unsupported = sorted(set(self.query) - _LIST_PARAMS)
        if unsupported:
            raise HubError(
                400,
                None,
                f"unsupported listing parameter(s) {unsupported}: this hub filters by author and search "
                "and sorts by id, lastModified or createdAt",
            )
        try:
            limit = int(q["limit"]) if "limit" in q else None
        except ValueError:
            raise HubError(400, None, f"limit must be an integer, got {q['limit']!r}") from None
        sort = q.get("sort", "id")
        if sort not in ("id", "lastModified", "createdAt"):
            raise HubError(400, None, f"cannot sort by {sort!r}: expected id, lastModified or createdAt")
        siblings = q.get("full", "").lower() in ("1", "true") or "siblings" in self.query.get("expand", [])
        store: RepoStore = self.server.store
        authorized = self._authorized()
        search = q.get("search", "").lower()
        out = []
        for repo_id, state in store.list_repos(repo_type):
            if state["private"] and not authorized:
                continue
            if "author" in q and repo_id.split("/")[0] != q["author"]:
                continue
            if search not in repo_id.lower():
                continue
            commit = store.commit(repo_type, repo_id, state["branches"]["main"])
            out.append(self._repo_info(repo_type, repo_id, state, commit, siblings))
        descending = q.get("direction", "-1" if sort != "id" else "1") == "-1"
        out.sort(key=lambda info: info[sort], reverse=descending)
        return out if limit is None else out[: max(limit, 0)]

    def _preupload(self, repo_type: str, repo_id: str, rev: str):
        """Binary files (a NUL byte in the sample, git's test) and files of ``--lfs-threshold-mb`` or more are
        "lfs" files (Xet or LFS upload), as on the Hub; small text files are inlined in the commit ("regular").

        ``oid`` is what the client compares with its own to skip unchanged files: the sha256 for LFS
        files, the git sha1 for inline ones.
        """
        store: RepoStore = self.server.store
        self._readable(repo_type, repo_id)
        tree = store.commit(repo_type, repo_id, store.resolve(repo_type, repo_id, rev)).tree
        answer = []
        for f in self._json_body().get("files", []):
            path, size = f.get("path"), f.get("size")
            if not isinstance(path, str) or not isinstance(size, int):
                raise HubError(400, None, f"preupload entries need a string path and an integer size: {f!r}")
            if size > self.server.max_upload:
                raise HubError(
                    413,
                    "PayloadTooLarge",
                    f"{path!r} is {size} bytes, larger than this hub's limit of {self.server.max_upload} "
                    "bytes (pdefm hub serve --max-upload-mb)",
                )
            try:
                sample = base64.b64decode(f.get("sample") or "")
            except (binascii.Error, TypeError):
                raise HubError(400, None, f"preupload sample of {path!r} is not base64") from None
            lfs = size > 0 and (size >= self.server.lfs_threshold or b"\0" in sample)
            meta = tree.get(path, {})
            oid = meta.get("sha256") if lfs else meta.get("oid")
            answer.append(
                {"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid}
            )
        return self._json({"files": answer})

    def _commit(self, repo_type: str, repo_id: str, rev: str):
        """The ndjson commit, read line by line from the socket: inline files are decoded one at a time
        (each under the LFS threshold), LFS files are references to objects already uploaded."""
        store: RepoStore = self.server.store
        self._readable(repo_type, repo_id)
        threshold = self.server.lfs_threshold
        line_limit = 4 * (threshold // 3 + 1) + 64 * 1024  # base64 of a file below the threshold + JSON
        header, changes = None, []
        while line := self._reader.readline(line_limit + 1):
            if len(line) > line_limit:
                raise HubError(
                    413,
                    "PayloadTooLarge",
                    f"a commit line is over {line_limit} bytes: files of {threshold} bytes or more must be "
                    "uploaded through LFS (preupload answers lfs for them), not inlined",
                )
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                key, value = item["key"], item["value"]
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
                raise HubError(400, None, f"malformed ndjson commit line: {e}") from None
            if key == "header":
                header = value
            elif key == "file":
                path = validate_path(value["path"])
                if value.get("encoding", "base64") != "base64":
                    raise HubError(400, None, f"unsupported encoding {value.get('encoding')!r} for {path!r}")
                try:
                    data = base64.b64decode(value["content"], validate=True)
                except (binascii.Error, KeyError) as e:
                    raise HubError(400, None, f"bad base64 content for {path!r}: {e}") from None
                del item, value, line
                changes.append(FileChange(path, store.put_blob(data), len(data)))
                del data
            elif key == "lfsFile":
                path, sha256 = validate_path(value["path"]), value.get("oid", "")
                obj = store.lfs_object(sha256)
                if obj is None:
                    raise HubError(400, None, f"LFS object {sha256} of {path!r} was never uploaded")
                if value.get("size") not in (None, obj["size"]):
                    raise HubError(
                        400,
                        None,
                        f"LFS object {sha256} of {path!r} has {obj['size']} bytes, not {value['size']}",
                    )
                changes.append(FileChange(path, obj["oid"], obj["size"], sha256=sha256))
            elif key in ("deletedFile", "deletedFolder"):
                changes.append(FileChange(value["path"], folder=key == "deletedFolder"))
            elif key == "copyFile":
                raise HubError(400, None, "copyFile is not supported by this hub")
            else:
                raise HubError(400, None, f"unknown commit operation {key!r}")
        if header is None:
            raise HubError(400, None, "commit has no header line")
        create_pr = self.query.get("create_pr", ["0"])[0].lower() in ("1", "true")
        sha, pr = store.apply_commit(
            repo_type,
            repo_id,
            rev,
            header.get("summary") or "update",
            header.get("description") or "",
            changes,
            parent_commit=header.get("parentCommit"),
            create_pr=create_pr,
        )
        base = f"{self._endpoint()}/{_TYPE_PREFIX[repo_type]}{repo_id}"
        pr_url = f"{base}/discussions/{pr}" if pr is not None else None
        return self._json({"commitUrl": f"{base}/commit/{sha}", "commitOid": sha, "pullRequestUrl": pr_url})

    # ---- Xet CAS (upload half; see xet.py) ---------------------------------------------------------

    def _xet_signature(self, expires: int) -> str:
        return hmac.new(
            self.server.token.encode(), f"xet-write/{expires}".encode(), hashlib.sha256
        ).hexdigest()

    def _xet_token(self):
        """``xet-write-token``: a CAS token signed with the server's token, valid for an hour, and the CAS URL
        (``<endpoint>/xet``), in the JSON body and in the headers huggingface_hub reads."""
        expires = int(time.time()) + _XET_TOKEN_SECONDS
        token, cas = f"{expires}.{self._xet_signature(expires)}", f"{self._endpoint()}/xet"
        headers = {"X-Xet-Cas-Url": cas, "X-Xet-Access-Token": token, "X-Xet-Token-Expiration": str(expires)}
        return self._json({"accessToken": token, "exp": expires, "casUrl": cas}, headers=headers)

    def _xet(self, method: str, seg: list[str]):
        """``/xet/v1/...``: no global deduplication (404), xorbs stored as sent, shards rebuilt into blobs."""
        expires, _, sig = self.headers.get("Authorization", "").removeprefix("Bearer ").partition(".")
        good = expires.isdigit() and hmac.compare_digest(sig, self._xet_signature(int(expires)))
        if not good or int(expires) < time.time():
            raise HubError(
                401, None, "missing, invalid or expired Xet token: ask xet-write-token for a new one"
            )
        store: RepoStore = self.server.store
        if method == "GET" and seg[:2] == ["v1", "chunks"]:
            raise HubError(404, None, "this hub does no global deduplication")
        if method == "POST" and seg[:3] == ["v1", "xorbs", "default"] and len(seg) == 4:
            path = xet.xorb_path(store, seg[3])
            tmp = self._spool()
            inserted = not path.exists()
            if inserted:
                path.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, path)
            else:
                tmp.unlink()
            return self._json({"was_inserted": inserted})
        if method == "POST" and seg == ["v1", "shards"]:
            tmp = self._spool()
            try:
                with open(tmp, "rb") as f:
                    xet.rebuild_files(store, f)
            finally:
                tmp.unlink()
            return self._json({"result": 1})
        raise HubError(404, None, f"no Xet route for {method} /xet/{'/'.join(seg)}")

    def _spool(self) -> Path:
        """Stream the request body into a temporary file of this server (capped by --max-upload-mb)."""
        fd, tmp = tempfile.mkstemp(dir=self.server.store.tmp_dir, suffix=".part")
        try:
            with os.fdopen(fd, "wb") as f:
                while chunk := self._reader.read1(_CHUNK):
                    f.write(chunk)
        except BaseException:
            os.unlink(tmp)
            raise
        return Path(tmp)

    # ---- git LFS (basic transfer) ------------------------------------------------------------------

    def _lfs_signature(self, repo_type: str, repo_id: str, oid: str, size: int, expires: int) -> str:
        msg = f"{repo_type}/{repo_id}/{oid}/{size}/{expires}".encode()
        return hmac.new(self.server.token.encode(), msg, hashlib.sha256).hexdigest()

    def _lfs(self, method: str, repo_type: str, repo_id: str, rest: list[str]):
        """``{repo}.git/info/lfs/objects/batch|verify|<sha256>``: the git LFS batch API, basic transfer.

        The batch answers each missing object with a PUT URL signed for that object and size (huggingface_hub
        sends the PUT without credentials, as to a presigned S3 URL), plus a verify URL; objects already
        stored get no actions, so the client skips them.
        """
        validate_repo_id(repo_id)
        if method == "POST" and rest == ["batch"]:
            self._require_write()
            self._readable(repo_type, repo_id)
            return self._lfs_batch(repo_type, repo_id, self._json_body())
        if method == "POST" and rest == ["verify"]:
            self._require_write()
            body = self._json_body()
            obj = self.server.store.lfs_object(str(body.get("oid", "")))
            if obj is None or obj["size"] != body.get("size"):
                raise HubError(
                    404, None, f"LFS object {body.get('oid')} of {body.get('size')} bytes is not stored"
                )
            return self._json({"oid": body["oid"], "size": obj["size"]})
        if method == "PUT" and len(rest) == 1:
            return self._lfs_put(repo_type, repo_id, rest[0])
        raise HubError(404, None, f"no LFS route for {method} {'/'.join(rest)}")

    def _lfs_batch(self, repo_type: str, repo_id: str, body: dict):
        if body.get("operation") != "upload":
            raise HubError(
                422, None, f"LFS operation {body.get('operation')!r} is not supported: only upload"
            )
        if "basic" not in body.get("transfers", ["basic"]):
            raise HubError(
                422, None, f"LFS transfers {body.get('transfers')} not supported: this hub speaks basic"
            )
        store: RepoStore = self.server.store
        base = f"{self._endpoint()}/{_TYPE_PREFIX[repo_type]}{repo_id}.git/info/lfs/objects"
        objects = []
        for obj in body.get("objects", []):
            oid, size = obj.get("oid"), obj.get("size")
            entry = {"oid": str(oid), "size": size if isinstance(size, int) else -1}
            if (
                not isinstance(oid, str)
                or not re.fullmatch(r"[0-9a-f]{64}", oid)
                or not isinstance(size, int)
            ):
                entry["error"] = {"code": 422, "message": f"invalid LFS object {obj!r}"}
            elif size > self.server.max_upload:
                entry["error"] = {"code": 413, "message": str(_too_large(size, self.server.max_upload))}
            elif (stored := store.lfs_object(oid)) is not None and stored["size"] == size:
                pass  # already here: no actions, the client skips the upload
            else:
                expires = int(time.time()) + _LFS_URL_SECONDS
                sig = self._lfs_signature(repo_type, repo_id, oid, size, expires)
                entry["authenticated"] = True
                entry["actions"] = {
                    "upload": {
                        "href": f"{base}/{oid}?size={size}&expires={expires}&signature={sig}",
                        "expires_in": _LFS_URL_SECONDS,
                    },
                    "verify": {"href": f"{base}/verify"},
                }
            objects.append(entry)
        return self._json({"transfer": "basic", "objects": objects, "hash_algo": "sha256"})

    def _lfs_put(self, repo_type: str, repo_id: str, oid: str):
        """Stream one LFS object to disk in chunks, check its sha256, then store it as a blob."""
        q = {k: v[-1] for k, v in self.query.items()}
        try:
            size, expires = int(q.get("size", "")), int(q.get("expires", ""))
        except ValueError:
            raise HubError(
                403, None, "LFS upload URL is not signed: ask the batch endpoint for one"
            ) from None
        good = self._lfs_signature(repo_type, repo_id, oid, size, expires)
        if not (self._authorized() or hmac.compare_digest(good, q.get("signature", ""))):
            raise HubError(403, None, "LFS upload URL signature does not match")
        if expires < time.time():
            raise HubError(403, None, "LFS upload URL has expired: run the upload again")
        body = self._request_body
        if not body.chunked and body.remaining != size:
            raise HubError(
                400, None, f"LFS object {oid} is {size} bytes but the request has {body.remaining}"
            )
        if size > self.server.max_upload:
            raise _too_large(size, self.server.max_upload)
        store: RepoStore = self.server.store
        with BlobWriter(store, size) as writer:
            while chunk := self._reader.read1(_CHUNK):
                writer.write(chunk)
            blob, _ = writer.finish(expected_sha256=oid)
        store.put_lfs_object(oid, blob, size)
        return self._json({})

    def _discussion(self, repo_type: str, repo_id: str, num: str, pr: dict) -> dict:
        return {
            "num": int(num),
            "title": pr["title"],
            "status": pr["status"],
            "isPullRequest": True,
            "pullRequest": True,
            "createdAt": pr["createdAt"],
            "author": {"name": "pdefm"},
            "repo": {"name": repo_id, "type": repo_type},
            "events": [],
            "filesWithConflicts": [],
            "changes": {"base": "refs/heads/main"},
            "url": f"{self._endpoint()}/{_TYPE_PREFIX[repo_type]}{repo_id}/discussions/{num}",
        }

    def _discussions(self, method: str, repo_type: str, repo_id: str, rest: list[str]):
        store: RepoStore = self.server.store
        if method == "POST" and not rest:
            self._require_write()
            self._readable(repo_type, repo_id)
            body = self._json_body()
            num = store.create_pr(repo_type, repo_id, body.get("title") or "pull request")
            url = f"{self._endpoint()}/{_TYPE_PREFIX[repo_type]}{repo_id}/discussions/{num}"
            return self._json({"num": num, "pullRequest": True, "url": url})
        state = self._readable(repo_type, repo_id)
        if method == "GET" and not rest:
            items = [self._discussion(repo_type, repo_id, n, pr) for n, pr in sorted(state["prs"].items())]
            return self._json(
                {"discussions": items, "count": len(items), "start": 0, "numClosedDiscussions": 0}
            )
        if method == "GET" and len(rest) == 1:
            if rest[0] not in state["prs"]:
                raise HubError(404, None, f"discussion {rest[0]} not found in {repo_id}")
            return self._json(self._discussion(repo_type, repo_id, rest[0], state["prs"][rest[0]]))
        raise HubError(404, None, f"no route for {method} discussions/{'/'.join(rest)}")

    def _resolve(self, repo_type: str, repo_id: str, rest: list[str]):
        """HEAD/GET a file at a revision, with the headers the download cache relies on and Range support."""
        if self.command not in ("GET", "HEAD"):
            raise HubError(405, None, f"{self.command} not allowed on resolve")
        store: RepoStore = self.server.store
        validate_repo_id(repo_id)
        self._readable(repo_type, repo_id)
        rev, path = unquote(rest[0]), unquote("/".join(rest[1:]))
        sha = store.resolve(repo_type, repo_id, rev)
        meta = store.commit(repo_type, repo_id, sha).tree.get(path)
        if meta is None:
            err = HubError(404, "EntryNotFound", f"{path!r} does not exist at revision {rev!r} of {repo_id}")
            return self._error(err, {"X-Repo-Commit": sha})
        size, start, end = meta["size"], 0, meta["size"] - 1
        status = 200
        headers = {"X-Repo-Commit": sha, "ETag": f'"{meta["oid"]}"', "Accept-Ranges": "bytes"}
        rng = self.headers.get("Range")
        if rng:
            m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip())
            if not m or m.groups() == ("", ""):
                raise HubError(416, None, f"unsupported Range {rng!r}")
            a, b = m.groups()
            if a == "":
                start, end = max(size - int(b), 0), size - 1
            else:
                start, end = int(a), min(int(b) if b else size - 1, size - 1)
            if start >= size or start > end:
                return self._error(
                    HubError(416, None, f"Range {rng!r} outside 0-{size}"), {"Content-Range": f"*/{size}"}
                )
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        length = end - start + 1
        headers.update({"Content-Type": "application/octet-stream", "Content-Length": str(length)})
        self._start_response(status, headers)
        if self.command == "HEAD":
            return
        with open(store.blob_path(meta["oid"]), "rb") as f:
            f.seek(start)
            while length > 0:
                chunk = f.read(min(_CHUNK, length))
                if not chunk:
                    break
                self.wfile.write(chunk)
                length -= len(chunk)


class HubServer(ThreadingHTTPServer):
    """The server: one RepoStore on ``root``, the write token and the limits (bytes)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        root: str | os.PathLike,
        host: str,
        port: int,
        token: str,
        max_upload_mb: float = 50_000,
        lfs_threshold_mb: float = 10,
    ):
        if max_upload_mb <= 0 or lfs_threshold_mb < 0:
            raise ValueError(
                f"--max-upload-mb must be > 0 and --lfs-threshold-mb >= 0, got {max_upload_mb}, {lfs_threshold_mb}"
            )
        self.store = RepoStore(root)
        self.orphans = self.store.clean_orphans()
        self.token = token
        self.max_upload = int(max_upload_mb * _MB)
        self.lfs_threshold = int(lfs_threshold_mb * _MB)
        super().__init__((host, port), HubHandler)

    def server_close(self) -> None:
        super().server_close()
        self.store.close()


def resolve_token(root: Path, token_file: str | os.PathLike | None = None) -> str:
    """The write token: ``token_file``, else $PDEFM_HUB_TOKEN, else $HF_TOKEN, else one generated once
    and kept in ``root/.token`` (mode 600). Never a command-line value: ``ps`` shows argv to every user."""
    if token_file is not None:
        path = Path(token_file)
        if not path.is_file():
            raise FileNotFoundError(f"--token-file {path}: no such file")
        token = path.read_text().strip()
        if not token:
            raise ValueError(f"--token-file {path}: the file is empty, expected the token on one line")
        if path.stat().st_mode & (stat.S_IRGRP | stat.S_IROTH):
            print(f"warning: {path} is readable by other users; chmod 600 it", file=sys.stderr, flush=True)
        return token
    for name in (TOKEN_ENV, "HF_TOKEN"):
        if os.environ.get(name, "").strip():
            return os.environ[name].strip()
    path = root / ".token"
    if not path.exists():
        root.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(24))
    return path.read_text().strip()


TOKEN_ARGV_REFUSED = (
    "--token is refused: a token on the command line is visible to every user in `ps`; "
    f"put it in a file (mode 600) and pass --token-file FILE, or set ${TOKEN_ENV}"
)


def serve(
    root: str | os.PathLike,
    port: int,
    host: str = "127.0.0.1",
    token_file: str | os.PathLike | None = None,
    max_upload_mb: float = 50_000,
    lfs_threshold_mb: float = 10,
) -> None:
    """Serve ``root`` until interrupted (see the module docstring for the token and the limits)."""
    root = Path(root)
    token = resolve_token(root, token_file)
    server = HubServer(root, host, port, token, max_upload_mb, lfs_threshold_mb)
    endpoint = f"http://{host}:{server.server_address[1]}"
    if server.orphans:
        print(f"removed {len(server.orphans)} temporary file(s) left by an interrupted server", flush=True)
    print(f"pdefm hub serving {root} at {endpoint}", flush=True)
    print(
        f"uploads: up to {max_upload_mb:g} MB per request; files of {lfs_threshold_mb:g} MB or more through LFS",
        flush=True,
    )
    print(f"clients: export HF_ENDPOINT={endpoint} HF_TOKEN=<the server token>", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m foundation.hub.server", description=__doc__.splitlines()[0])
    p.add_argument("--root", required=True, help="folder holding the repositories (created if missing)")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument(
        "--token-file",
        default=None,
        help=f"file holding the write token (default: ${TOKEN_ENV}, $HF_TOKEN, else ROOT/.token)",
    )
    p.add_argument("--token", default=None, help=argparse.SUPPRESS)
    p.add_argument("--max-upload-mb", type=float, default=50_000, help="largest request body, MB (413 above)")
    p.add_argument(
        "--lfs-threshold-mb",
        type=float,
        default=10,
        help="files this large (MB) or larger, and binary files, go through Xet or LFS instead of inline",
    )
    args = p.parse_args(argv)
    if args.token is not None:
        p.error(TOKEN_ARGV_REFUSED)
    try:
        serve(args.root, args.port, args.host, args.token_file, args.max_upload_mb, args.lfs_threshold_mb)
    except (ValueError, FileNotFoundError) as e:
        p.exit(2, f"{p.prog}: error: {e}\n")


if __name__ == "__main__":
    main()
