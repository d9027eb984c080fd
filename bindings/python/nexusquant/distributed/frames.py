"""The transfer format: a 64-byte envelope, then a body (item table + items).

Layout (little-endian; docs/FORMAT.md section 5 is the normative text):

envelope (64 bytes)
  0  u32 magic "NQXF"      4  u16 version 1       6  u8 form (1 archive, 2 resident)
  7  u8  0                 8  u32 count           12 u32 0
  16 u64 body_bytes        24 u64 tag (caller's)  32..48 zero
  48 u64 XXH3-64 of the table                     56 u64 XXH3-64 of bytes [0, 56)
body
  table: count entries of 24 bytes (u64 length, u64 XXH3-64 of the item, u32 layer, u32 0),
         padded with zeros to a multiple of 16
  items: back to back, each padded with zeros to a multiple of 16

The envelope is checked before anything is allocated (so a corrupted length cannot ask
for a huge buffer); every digest is checked before any item is handed out.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import numpy as np

from ._xxh3 import as_u8, xxh3_64

MAGIC = 0x4658514E  # "NQXF"
VERSION = 1
ENVELOPE_BYTES = 64
ENTRY_BYTES = 24
FORM_ARCHIVE, FORM_RESIDENT = 1, 2
FORMS = {"archive": FORM_ARCHIVE, "resident": FORM_RESIDENT}
FORM_NAMES = {v: k for k, v in FORMS.items()}
MAX_COUNT = 1 << 20
_ENV = struct.Struct("<IHBBIIQQ16xQQ")
_ENTRY = struct.Struct("<QQII")


class TransferCorrupt(RuntimeError):
    """A transfer failed its checks; nothing of it was decoded."""


def _pad16(n: int) -> int:
    return (n + 15) & ~15


@dataclass
class Envelope:
    form: int
    count: int
    body_bytes: int
    tag: int
    table_digest: int


def table_bytes(count: int) -> int:
    return _pad16(count * ENTRY_BYTES)


def pack(items: Sequence[Tuple[object, int]], form: str, tag: int = 0,
         digests: Sequence[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """(envelope, body) uint8 arrays for items [(bytes-like, layer)].

    digests: XXH3-64 of each item when the caller already has them (nq_block_digest of
    a host block is the digest of its resident image); computed here otherwise.
    """
    if form not in FORMS:
        raise ValueError(f"form must be one of {sorted(FORMS)}, got {form!r}")
    arrays = [as_u8(data) for data, _ in items]
    count = len(arrays)
    if count > MAX_COUNT:
        raise ValueError(f"count {count} exceeds {MAX_COUNT} items per transfer")
    tb = table_bytes(count)
    body_bytes = tb + sum(_pad16(a.size) for a in arrays)
    body = np.zeros(body_bytes, dtype=np.uint8)
    off = tb
    for i, (a, (_, layer)) in enumerate(zip(arrays, items)):
        d = xxh3_64(a) if digests is None else int(digests[i])
        body[i * ENTRY_BYTES:(i + 1) * ENTRY_BYTES] = np.frombuffer(_ENTRY.pack(a.size, d, int(layer), 0), np.uint8)
        body[off:off + a.size] = a
        off += _pad16(a.size)
    return envelope_for(FORMS[form], count, body_bytes, tag, xxh3_64(body[:tb])), body


def envelope_for(form: int, count: int, body_bytes: int, tag: int, table_digest: int) -> np.ndarray:
    head = _ENV.pack(MAGIC, VERSION, form, 0, count, 0, body_bytes, tag, table_digest, 0)[:56]
    return np.frombuffer(head + struct.pack("<Q", xxh3_64(head)), dtype=np.uint8).copy()


def parse_envelope(env, max_bytes: int) -> Envelope:
    """Checks the envelope alone; raises TransferCorrupt naming the field at fault."""
    e = as_u8(env)
    if e.size != ENVELOPE_BYTES:
        raise TransferCorrupt(f"envelope: {e.size} bytes, expected {ENVELOPE_BYTES}")
    magic, version, form, r0, count, r1, body_bytes, tag, table_digest, digest = _ENV.unpack(e.tobytes())
    if magic != MAGIC:
        raise TransferCorrupt(f"envelope.magic: 0x{magic:08x} is not a nexusquant transfer; "
                              "the channel is out of step")
    if xxh3_64(e[:56]) != digest:
        raise TransferCorrupt("envelope: checksum mismatch (lengths cannot be trusted; the channel is out of step)")
    if version != VERSION:
        raise TransferCorrupt(f"envelope.version: {version}, this reader knows {VERSION}")
    if form not in FORM_NAMES:
        raise TransferCorrupt(f"envelope.form: {form} is neither archive (1) nor resident (2)")
    if count > MAX_COUNT or body_bytes < table_bytes(count):
        raise TransferCorrupt(f"envelope.count: {count} items cannot fit body_bytes {body_bytes}")
    if body_bytes > max_bytes:
        raise TransferCorrupt(f"envelope.body_bytes: {body_bytes} exceeds the receiver's limit {max_bytes}")
    return Envelope(form, count, body_bytes, tag, table_digest)


def unpack(env: Envelope, body) -> List[Tuple[np.ndarray, int, int]]:
    """Verifies the body against its envelope; returns [(item bytes, layer, digest)].

    Raises TransferCorrupt (naming the item and layer) before handing out anything.
    """
    b = as_u8(body)
    if b.size != env.body_bytes:
        raise TransferCorrupt(f"body: {b.size} bytes, the envelope says {env.body_bytes}")
    tb = table_bytes(env.count)
    if xxh3_64(b[:tb]) != env.table_digest:
        raise TransferCorrupt("body.table: checksum mismatch")
    out, off = [], tb
    for i in range(env.count):
        length, digest, layer, r = _ENTRY.unpack(b[i * ENTRY_BYTES:(i + 1) * ENTRY_BYTES].tobytes())
        if r != 0 or length > b.size - off:
            raise TransferCorrupt(f"item {i} (layer {layer}): length {length} runs past the body")
        out.append((b[off:off + length], layer, digest))
        off += _pad16(length)
    if off != b.size:
        raise TransferCorrupt(f"body: items end at {off}, the body has {b.size} bytes")
    for i, (item, layer, digest) in enumerate(out):
        got = xxh3_64(item)
        if got != digest:
            raise TransferCorrupt(f"item {i} (layer {layer}): XXH3-64 0x{got:016x} != sent 0x{digest:016x}; "
                                  "refused, nothing decoded")
    return out
