"""Xet uploads for pdefm's Hub server: xorbs and shards from hf_xet turned back into plain blobs.

huggingface_hub 2.x uploads every "lfs" file through Xet whenever hf_xet is installed, without asking the
server, so the server speaks the upload half of the Xet CAS protocol (the format documented with xet-core):

- the client uploads **xorbs**: a sequence of chunks, each an 8-byte header (version, compressed size u24,
  compression scheme, uncompressed size u24, little-endian) and its bytes, stored as they come;
- then a **shard**: per file, the list of (xorb, chunk range) terms that rebuild it, and its sha256.

On the shard the server rebuilds each file chunk by chunk into a blob (memory: one chunk, at most
128 KiB), checks its sha256, and records it as the LFS object the commit's ``lfsFile`` line names.
Downloads stay plain HTTP (no ``X-Xet-Hash`` header), so readers never need Xet.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import lz4.frame

from foundation.hub.storage import BlobWriter, HubError, RepoStore

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_BOOKEND = b"\xff" * 32
_ENTRY = 48  # every shard record is 48 bytes
_WITH_VERIFICATION = 1 << 31
_WITH_METADATA = 1 << 30
_CHUNK_HEADER = 8
_MAX_CHUNK = 128 * 1024


def hash_hex(raw: bytes) -> str:
    """A Xet hash as it appears in URLs: each 8-byte word is a little-endian u64 printed big-endian."""
    return "".join(raw[i : i + 8][::-1].hex() for i in range(0, 32, 8))


def xorb_path(store: RepoStore, name: str) -> Path:
    if not _HEX64.match(name):
        raise HubError(400, None, f"invalid xorb hash {name!r}: expected 64 lowercase hex digits")
    return store.root / "xet" / "xorbs" / name[:2] / name


def _read_exact(f: BinaryIO, n: int, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise HubError(400, None, f"truncated {what}: expected {n} bytes, got {len(data)}")
    return data


def _decode_chunk(scheme: int, data: bytes, size: int) -> bytes:
    """One chunk's bytes: stored as is (0), LZ4 frame (1), or LZ4 frame over 4-way byte-grouped data (2)."""
    if scheme == 0:
        out = data
    elif scheme in (1, 2):
        try:
            out = lz4.frame.decompress(data)
        except RuntimeError as e:
            raise HubError(400, None, f"xorb chunk does not decompress: {e}") from None
        if scheme == 2:  # bytes were grouped by position in 4-byte words: interleave them back
            grouped, out = out, bytearray(len(out))
            start = 0
            for i in range(4):
                count = len(range(i, len(out), 4))
                out[i::4] = grouped[start : start + count]
                start += count
            out = bytes(out)
    else:
        raise HubError(400, None, f"unknown xorb chunk compression scheme {scheme}")
    if len(out) != size:
        raise HubError(400, None, f"xorb chunk decodes to {len(out)} bytes, its header says {size}")
    return out


def xorb_chunks(path: Path, start: int, end: int) -> Iterator[bytes]:
    """The decoded chunks ``[start, end)`` of a stored xorb, read one at a time."""
    with open(path, "rb") as f:
        for index in range(end):
            header = _read_exact(f, _CHUNK_HEADER, f"chunk header {index} of xorb {path.name}")
            compressed = int.from_bytes(header[1:4], "little")
            scheme, size = header[4], int.from_bytes(header[5:8], "little")
            if header[0] != 0 or size > _MAX_CHUNK or compressed > _MAX_CHUNK + 1024:
                raise HubError(400, None, f"malformed chunk header {index} in xorb {path.name}")
            if index < start:
                f.seek(compressed, 1)
                continue
            yield _decode_chunk(scheme, _read_exact(f, compressed, f"chunk {index}"), size)


def shard_files(f: BinaryIO) -> Iterator[tuple[str, list[tuple[str, int, int, int]], bytes | None]]:
    """The file info section of an uploaded shard: (file hash, [(xorb, first chunk, end chunk, bytes)],
    sha256 or None) per file, read record by record."""
    header = _read_exact(f, _ENTRY, "shard header")
    version = struct.unpack_from("<Q", header, 32)[0]
    if version != 2:
        raise HubError(400, None, f"unsupported shard header version {version}: expected 2")
    while True:
        record = _read_exact(f, _ENTRY, "shard file record")
        if record[:32] == _BOOKEND:
            return
        flags, count = struct.unpack_from("<II", record, 32)
        terms = []
        for _ in range(count):
            entry = _read_exact(f, _ENTRY, "shard file term")
            size, first, end = struct.unpack_from("<III", entry, 36)
            if end <= first:
                raise HubError(400, None, f"empty chunk range [{first}, {end}) in shard")
            terms.append((hash_hex(entry[:32]), first, end, size))
        if flags & _WITH_VERIFICATION:
            _read_exact(f, _ENTRY * count, "shard verification records")
        sha256 = _read_exact(f, _ENTRY, "shard metadata record")[:32] if flags & _WITH_METADATA else None
        yield hash_hex(record[:32]), terms, sha256


def rebuild_files(store: RepoStore, shard: BinaryIO) -> list[tuple[str, int]]:
    """Rebuild every file a shard describes from stored xorbs into a blob; returns [(sha256, size)].

    A file whose bytes do not match the sha256 the client announced is refused (400) and not stored; the
    commit then finds each file by the sha256 of the rebuilt bytes, so it can only name what arrived.
    """
    rebuilt = []
    for file_hash, terms, announced in shard_files(shard):
        missing = sorted({xorb for xorb, *_ in terms if not xorb_path(store, xorb).exists()})
        if missing:
            raise HubError(400, None, f"shard for file {file_hash} names xorbs never uploaded: {missing[:3]}")
        size = sum(term[3] for term in terms)
        with BlobWriter(store, size) as writer:
            for xorb, first, end, term_bytes in terms:
                written = writer.written
                for chunk in xorb_chunks(xorb_path(store, xorb), first, end):
                    writer.write(chunk)
                if writer.written - written != term_bytes:
                    raise HubError(
                        400, None, f"xorb {xorb} chunks [{first}, {end}) are not {term_bytes} bytes"
                    )
            digest = writer.digest()
            if announced is not None and hash_hex(announced) != digest:  # stored as a Xet hash (u64 words)
                raise HubError(
                    400, None, f"file {file_hash} rebuilds to sha256 {digest}, not the one announced"
                )
            oid, sha256 = writer.finish()
        store.put_lfs_object(sha256, oid, size)
        rebuilt.append((sha256, size))
    return rebuilt
