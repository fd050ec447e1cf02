"""An independent, pure-Python reading of format v1 (docs/format.md), used by the tests to
craft malformed files with valid checksums and to check the native writer's bytes."""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import xxhash

HEADER = struct.Struct("<8sIIQQQQQIIQ")  # up to the reserved bytes; checksum at 120
HEADER_CHECKSUM_AT = 120
PAGE = 4096


@dataclass
class Record:
    name: bytes
    dtype: int
    flags: int
    alias: int
    shape: List[int]
    offset: int
    nbytes: int
    checksum: int


@dataclass
class RawFile:
    magic: bytes
    version: int
    alignment: int
    file_size: int
    index_offset: int
    index_size: int
    data_offset: int
    data_size: int
    tensor_count: int
    metadata_count: int
    index_checksum: int
    records: List[Record] = field(default_factory=list)
    metadata: List[Tuple[bytes, bytes]] = field(default_factory=list)
    data: bytes = b""  # everything from data_offset on
    data_start: int = 0  # where the data really starts in the blob (data_offset may be edited)


def parse(blob: bytes) -> RawFile:
    f = RawFile(*HEADER.unpack_from(blob, 0))
    pos = f.index_offset
    for _ in range(f.tensor_count):
        (n,) = struct.unpack_from("<I", blob, pos); pos += 4
        name = blob[pos:pos + n]; pos += n
        dtype, ndim, flags, alias = struct.unpack_from("<BBHI", blob, pos); pos += 8
        shape = list(struct.unpack_from(f"<{ndim}q", blob, pos)); pos += 8 * ndim
        offset, nbytes, checksum = struct.unpack_from("<QQQ", blob, pos); pos += 24
        f.records.append(Record(name, dtype, flags, alias, shape, offset, nbytes, checksum))
    for _ in range(f.metadata_count):
        (n,) = struct.unpack_from("<I", blob, pos); pos += 4
        k = blob[pos:pos + n]; pos += n
        (n,) = struct.unpack_from("<I", blob, pos); pos += 4
        v = blob[pos:pos + n]; pos += n
        f.metadata.append((k, v))
    f.data = blob[f.data_offset:]
    f.data_start = f.data_offset
    return f


def index_bytes(f: RawFile) -> bytes:
    out = bytearray()
    for r in f.records:
        out += struct.pack("<I", len(r.name)) + r.name
        out += struct.pack("<BBHI", r.dtype, len(r.shape), r.flags, r.alias)
        out += struct.pack(f"<{len(r.shape)}q", *r.shape)
        out += struct.pack("<QQQ", r.offset, r.nbytes, r.checksum)
    for k, v in f.metadata:
        out += struct.pack("<I", len(k)) + k + struct.pack("<I", len(v)) + v
    return bytes(out)


def build(f: RawFile, *, fix_counts: bool = True, fix_checksums: bool = True, index: bytes = None) -> bytes:
    """Serialises `f` with the index right after the header and the data at data_offset.
    Counts and checksums are recomputed unless told not to (to craft corrupt files)."""
    idx = index_bytes(f) if index is None else index
    if fix_counts:
        f.tensor_count, f.metadata_count, f.index_size = len(f.records), len(f.metadata), len(idx)
    if fix_checksums:
        f.index_checksum = xxhash.xxh64_intdigest(idx)
    head = bytearray(HEADER.pack(f.magic, f.version, f.alignment, f.file_size, f.index_offset, f.index_size,
                                 f.data_offset, f.data_size, f.tensor_count, f.metadata_count, f.index_checksum))
    head += bytes(HEADER_CHECKSUM_AT - len(head))
    head += struct.pack("<Q", xxhash.xxh64_intdigest(bytes(head)))
    head += bytes(PAGE - len(head))
    body = bytearray(head) + idx
    body += bytes(max(0, f.data_start - len(body)))
    return bytes(body[:max(f.data_start, PAGE)]) + f.data


def rebuild(blob: bytes, edit) -> bytes:
    """Parses `blob`, lets `edit(rawfile)` change it, and serialises it with valid checksums."""
    f = parse(blob)
    edit(f)
    return build(f)


def checksums(blob: bytes) -> Dict[str, int]:
    f = parse(blob)
    return {r.name.decode(): r.checksum for r in f.records}
