"""pdefm's Hub-compatible HTTP server: the routes huggingface_hub, transformers, peft and datasets use.

Run ``python -m foundation.hub.server --root DIR --port P --token T`` (or ``pdefm hub serve``), then point
clients at it with ``HF_ENDPOINT=http://HOST:P HF_TOKEN=T``. Reads of public repos need no token; every
write needs the configured token. State lives in ``DIR`` (see ``storage.py``) and survives restarts.
Uploads are always "regular" (files inlined base64 in the ndjson commit), so no LFS/Xet storage is needed.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import json
import os
import re
import secrets
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from foundation.hub.storage import (
    REPO_TYPES,
    FileChange,
    HubError,
    RepoStore,
    repo_not_found,
    validate_path,
    validate_repo_id,
)

_CHUNK = 1 << 20
_TYPE_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_PLURAL = {f"{t}s": t for t in REPO_TYPES}


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
            files.append({"type": "file", "path": path, "size": meta["size"], "oid": meta["oid"]})
    folders = [
        {"type": "directory", "path": d, "oid": h.hexdigest(), "size": 0} for d, h in sorted(dirs.items())
    ]
    return folders + files


def _path_entry(tree: dict[str, dict], path: str) -> dict | None:
    if path in tree:
        return {"type": "file", "path": path, "size": tree[path]["size"], "oid": tree[path]["oid"]}
    prefix = path.rstrip("/") + "/"
    inside = sorted(p for p in tree if p.startswith(prefix))
    if not inside and path not in ("", "/"):
        return None
    oid = hashlib.sha1("".join(f"{p}:{tree[p]['oid']}" for p in inside).encode()).hexdigest()
    return {"type": "directory", "path": path.rstrip("/"), "oid": oid, "size": 0}


class HubHandler(BaseHTTPRequestHandler):
    """One request. ``self.server`` carries ``store`` (RepoStore) and ``token`` (the write token)."""

    protocol_version = "HTTP/1.1"
    server_version = "pdefm-hub/1"

    # ---- plumbing ----------------------------------------------------------------------------------

    def log_message(self, fmt, *args):  # one line per request on stderr, as http.server does
        sys.stderr.write(f"{self.address_string()} {fmt % args}\n")

    def _body(self) -> bytes:
        """The whole request body (Content-Length or chunked); always consumed, so keep-alive stays in sync."""
        if getattr(self, "_body_cache", None) is not None:
            return self._body_cache
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                parts.append(self.rfile.read(size))
                self.rfile.readline()
            data = b"".join(parts)
        else:
            data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._body_cache = data
        return data

    def _json_body(self) -> dict:
        try:
            return json.loads(self._body() or b"{}")
        except json.JSONDecodeError as e:
            raise HubError(400, None, f"request body is not valid JSON: {e}") from None

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, ctype="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj, status: int = 200, headers: dict | None = None):
        self._send(status, json.dumps(obj).encode(), headers)

    def _error(self, err: HubError, headers: dict | None = None):
        extra = {"X-Error-Message": err.message.replace("\n", " "), **(headers or {})}
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
                403, None, "writing to this hub needs its token: set HF_TOKEN to the server's --token"
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
        self._body_cache = None
        url = urlsplit(self.path)
        self.query = parse_qs(url.query)
        seg = url.path.strip("/").split("/")
        method = self.command
        try:
            self._authorized()  # a wrong token fails every request, even reads
            if seg[:1] == ["api"]:
                self._api(method, seg[1:])
            elif len(seg) >= 5 and seg[0] in ("datasets", "spaces") and seg[3] == "resolve":
                self._resolve(seg[0][:-1], f"{seg[1]}/{seg[2]}", seg[4:])
            elif len(seg) >= 4 and seg[2] == "resolve":
                self._resolve("model", f"{seg[0]}/{seg[1]}", seg[3:])
            else:
                raise HubError(404, None, f"no route for {method} {url.path}")
        except HubError as e:
            self._body()
            self._error(e)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as e:  # a bug or malformed input must still get an answer, never a dropped socket
            self.log_error("internal error on %s %s: %r", method, url.path, e)
            self._body()
            self._error(HubError(500, None, f"internal server error: {type(e).__name__}: {e}"))
        finally:
            self._body()  # an unread body would be parsed as the next request on this connection

    def _api(self, method: str, seg: list[str]):
        store: RepoStore = self.server.store
        if seg == ["whoami-v2"] and method == "GET":
            # Anonymous probes (health checks) get 200 too; only a wrong token is an error (see _dispatch).
            name = "pdefm" if self._authorized() else "anonymous"
            role = "write" if name == "pdefm" else "read"
            auth = {"type": "access_token", "accessToken": {"displayName": name, "role": role}}
            return self._json({"type": "user", "name": name, "fullname": name, "orgs": [], "auth": auth})
        if seg == ["validate-yaml"] and method == "POST":
            self._body()
            return self._json({"errors": [], "warnings": []})
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
            return self._repo_api(method, _PLURAL[seg[0]], f"{seg[1]}/{seg[2]}", seg[3:])
        raise HubError(404, None, f"no route for {method} /api/{'/'.join(seg)}")

    def _repo_api(self, method: str, repo_type: str, repo_id: str, rest: list[str]):
        store: RepoStore = self.server.store
        validate_repo_id(repo_id)
        route = rest[0] if rest else ""
        rev = unquote(rest[1]) if len(rest) > 1 else "main"
        if method in ("GET", "HEAD") and route in ("", "revision"):
            rev = unquote("/".join(rest[1:])) if route else "main"
            return self._json(self._repo_info(repo_type, repo_id, rev))
        if method == "GET" and route == "tree":
            state = self._readable(repo_type, repo_id)
            del state
            tree = store.commit(repo_type, repo_id, store.resolve(repo_type, repo_id, rev)).tree
            base = unquote("/".join(rest[2:])).strip("/")
            if base and _path_entry(tree, base) is None:
                raise HubError(404, "EntryNotFound", f"{base!r} does not exist at {rev!r}")
            recursive = self.query.get("recursive", ["false"])[0].lower() in ("1", "true")
            return self._json(_directory_entries(tree, base, recursive))
        if method == "POST" and route == "paths-info":
            self._readable(repo_type, repo_id)
            tree = store.commit(repo_type, repo_id, store.resolve(repo_type, repo_id, rev)).tree
            body = self._body()
            if self.headers.get("Content-Type", "").startswith("application/json"):
                paths = json.loads(body or b"{}").get("paths", [])
            else:
                paths = parse_qs(body.decode()).get("paths", [])
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
            self._readable(repo_type, repo_id)
            tree = store.commit(repo_type, repo_id, store.resolve(repo_type, repo_id, rev)).tree
            files = self._json_body().get("files", [])
            # "regular" for every file: the client inlines it in the commit. The current oid lets it skip no-ops.
            return self._json(
                {
                    "files": [
                        {
                            "path": f["path"],
                            "uploadMode": "regular",
                            "shouldIgnore": False,
                            "oid": tree.get(f["path"], {}).get("oid"),
                        }
                        for f in files
                    ]
                }
            )
        if method == "POST" and route == "commit":
            self._require_write()
            return self._commit(repo_type, repo_id, rev)
        if route == "discussions":
            return self._discussions(method, repo_type, repo_id, rest[1:])
        raise HubError(404, None, f"no route for {method} /api/{repo_type}s/{repo_id}/{'/'.join(rest)}")

    # ---- routes ------------------------------------------------------------------------------------

    def _repo_info(self, repo_type: str, repo_id: str, rev: str) -> dict:
        store: RepoStore = self.server.store
        state = self._readable(repo_type, repo_id)
        commit = store.commit(repo_type, repo_id, store.resolve(repo_type, repo_id, rev))
        siblings = [
            {"rfilename": p, "size": m["size"], "blobId": m["oid"]} for p, m in sorted(commit.tree.items())
        ]
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
            "siblings": siblings,
            "usedStorage": sum(m["size"] for m in commit.tree.values()),
        }
        if repo_type == "model":
            info["modelId"] = repo_id
        return info

    def _commit(self, repo_type: str, repo_id: str, rev: str):
        store: RepoStore = self.server.store
        self._readable(repo_type, repo_id)
        header, changes = None, []
        for line in self._body().splitlines():
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                key, value = item["key"], item["value"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
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
                changes.append(FileChange(path, store.put_blob(data), len(data)))
            elif key in ("deletedFile", "deletedFolder"):
                changes.append(FileChange(value["path"], folder=key == "deletedFolder"))
            elif key in ("lfsFile", "copyFile"):
                raise HubError(
                    400,
                    None,
                    f"{key} is not supported: this hub stores every file inline (preupload says regular)",
                )
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
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
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
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, root: str | os.PathLike, host: str, port: int, token: str):
        self.store = RepoStore(root)
        self.token = token
        super().__init__((host, port), HubHandler)


def resolve_token(root: Path, token: str | None) -> str:
    """The write token: the given one, else $HF_TOKEN, else one generated once and kept in ``root/.token``."""
    if token:
        return token
    if os.environ.get("HF_TOKEN"):
        return os.environ["HF_TOKEN"]
    path = root / ".token"
    if not path.exists():
        root.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(24))
        path.chmod(0o600)
    return path.read_text().strip()


def serve(root: str | os.PathLike, port: int, token: str | None = None, host: str = "127.0.0.1") -> None:
    """Serve ``root`` until interrupted."""
    root = Path(root)
    token = resolve_token(root, token)
    server = HubServer(root, host, port, token)
    print(f"pdefm hub serving {root} at http://{host}:{server.server_address[1]}", flush=True)
    print(
        f"clients: export HF_ENDPOINT=http://{host}:{server.server_address[1]} HF_TOKEN=<the server token>",
        flush=True,
    )
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
    p.add_argument(
        "--token", default=None, help="write token (default: $HF_TOKEN, else generated in ROOT/.token)"
    )
    p.add_argument("--host", default="127.0.0.1")
    args = p.parse_args(argv)
    serve(args.root, args.port, args.token, args.host)


if __name__ == "__main__":
    main()
