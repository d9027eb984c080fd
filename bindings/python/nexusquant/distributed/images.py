"""Resident images on the wire: the bytes of a block, and a block again from them.

The C API reads blocks back only from the archive form, so a received resident image is
wrapped in a *stored* archive (every section method 0, no filter: docs/FORMAT.md
section 2) and given to nq_block_deserialize. The library then checks the header, the
geometry and the positions exactly as for any archive, and the block it returns has the
same resident bytes (and digest) as the one that was sent.
"""
from __future__ import annotations

import ctypes
import struct

import numpy as np

from .. import _lib as L
from ..core import Block, Context, MEMORY_CUDA, MEMORY_HOST, _check
from ._xxh3 import as_u8, xxh3_64
from .frames import TransferCorrupt

RESIDENT_MAGIC = 0x424B514E  # "NQKB"
ARCHIVE_MAGIC = 0x414B514E   # "NQKA"
HEADER_BYTES = 128
FLAG_PER_HEAD, FLAG_CONTIGUOUS, FLAG_POS16, FLAG_KEY_MEAN = 1, 2, 4, 8

_copy_declared = False


def _pad16(n: int) -> int:
    return (n + 15) & ~15


def section_lengths(header: bytes) -> list:
    """Lengths of the eight resident sections (positions, k/v scales, k/v codes, k/v fp16,
    key mean: docs/FORMAT.md 1 and 1.8)."""
    flags = struct.unpack_from("<I", header, 8)[0]
    k_bits, v_bits = header[13], header[14]
    head_dim, heads = struct.unpack_from("<HH", header, 16)
    kept, sinks, window = struct.unpack_from("<III", header, 36)
    raw = sinks + window
    if raw > kept:
        raise TransferCorrupt(f"resident header: fp16 sinks + window {raw} exceed tokens_kept {kept}")
    coded = kept - raw
    rows = 0 if flags & FLAG_CONTIGUOUS else (heads if flags & FLAG_PER_HEAD else 1)
    pos_bytes = 2 if flags & FLAG_POS16 else 4
    return [rows * kept * pos_bytes, heads * coded * 2, heads * coded * 2,
            heads * coded * head_dim * k_bits // 8, heads * coded * head_dim * v_bits // 8,
            heads * raw * head_dim * 2, heads * raw * head_dim * 2,
            heads * head_dim * 2 if flags & FLAG_KEY_MEAN else 0]


def _delta_rows(section: np.ndarray, header: bytes) -> np.ndarray:
    """Each row of position offsets as its first value, then consecutive differences."""
    flags = struct.unpack_from("<I", header, 8)[0]
    kept = struct.unpack_from("<I", header, 36)[0]
    rows = section.view(np.uint16 if flags & FLAG_POS16 else np.uint32).reshape(-1, kept)
    d = rows.copy()
    d[:, 1:] = rows[:, 1:] - rows[:, :-1]  # wraps on non-increasing rows; the reader refuses those
    return d.reshape(-1).view(np.uint8)


def stored_archive(image) -> np.ndarray:
    """The archive form (stored sections, XXH3-64 trailer) of a resident image."""
    img = as_u8(image)
    if img.size < HEADER_BYTES:
        raise TransferCorrupt(f"resident image: {img.size} bytes, shorter than its {HEADER_BYTES}-byte header")
    header = img[:HEADER_BYTES].tobytes()
    magic = struct.unpack_from("<I", header, 0)[0]
    if magic != RESIDENT_MAGIC:
        raise TransferCorrupt(f"resident image: magic 0x{magic:08x} is not NQKB")
    total = struct.unpack_from("<Q", header, 120)[0]
    if total != img.size:
        raise TransferCorrupt(f"resident image: header total_bytes {total} != {img.size} bytes received")
    lengths = section_lengths(header)
    sections, off = [], HEADER_BYTES
    for sid, n in enumerate(lengths):
        off = _pad16(off)
        if n:
            if off + n > img.size:
                raise TransferCorrupt(f"resident image: section {sid} runs past the image")
            sections.append((sid, off, n))
        off += n
    if _pad16(off) != img.size:
        raise TransferCorrupt(f"resident image: sections end at {_pad16(off)}, image has {img.size} bytes")
    # Positions are stored delta-coded (filter 1), which the reader requires for them.
    table = b"".join(struct.pack("<BBBBIQQ", sid, 0, 1 if sid == 0 else 0, 0, 0, n, n) for sid, _, n in sections)
    size = 16 + HEADER_BYTES + len(table) + sum(n for _, _, n in sections) + 8
    out = np.empty(size, dtype=np.uint8)
    prefix = struct.pack("<IHHQ", ARCHIVE_MAGIC, 1, len(sections), size) + header + table
    out[:len(prefix)] = np.frombuffer(prefix, np.uint8)
    cur = len(prefix)
    for sid, o, n in sections:
        out[cur:cur + n] = _delta_rows(img[o:o + n], header) if sid == 0 else img[o:o + n]
        cur += n
    out[cur:] = np.frombuffer(struct.pack("<Q", xxh3_64(out[:cur])), np.uint8)
    return out


def block_from_image(ctx: Context, image) -> Block:
    """A new host block holding exactly `image` (validated by the library)."""
    arc = stored_archive(image)
    h = ctypes.c_void_p()
    _check(L.lib().nq_block_deserialize(ctx.handle, arc.ctypes.data, arc.size, ctypes.byref(h)))
    return Block(h.value, ctx)


def image_pointer(block: Block):
    """(address, bytes, memory) of a block's resident image, without copying."""
    p, n = ctypes.c_void_p(), ctypes.c_size_t()
    _check(L.lib().nq_block_data(block.handle, ctypes.byref(p), ctypes.byref(n)))
    return p.value, n.value, block.info()["memory"]


def host_image(block: Block) -> np.ndarray:
    """A host copy of a host block's resident image."""
    addr, n, memory = image_pointer(block)
    if memory != MEMORY_HOST:
        raise ValueError("host_image: the block lives in device memory (use device_image)")
    return np.frombuffer(ctypes.string_at(addr, n), dtype=np.uint8)


class _DeviceBytes:
    """__cuda_array_interface__ over a device image, so torch can view it without a copy."""

    def __init__(self, addr: int, n: int):
        self.__cuda_array_interface__ = {"shape": (n,), "typestr": "|u1", "data": (addr, False),
                                         "version": 3, "strides": None}


def device_image(block: Block):
    """A torch uint8 CUDA tensor viewing a device block's image (valid while the block lives)."""
    import torch

    addr, n, memory = image_pointer(block)
    if memory != MEMORY_CUDA:
        raise ValueError("device_image: the block lives in host memory (use host_image)")
    return torch.as_tensor(_DeviceBytes(addr, n), device=f"cuda:{block.info()['device']}")


def copy_block(ctx: Context, block: Block, memory: int, device: int = 0, stream=None) -> Block:
    """nq_block_copy: the block in host (MEMORY_HOST) or device (MEMORY_CUDA) memory."""
    global _copy_declared
    lib = L.lib()
    fn = lib.nq_block_copy
    if not _copy_declared:
        vp = ctypes.c_void_p
        fn.restype = ctypes.c_int
        fn.argtypes = [vp, vp, ctypes.c_int, ctypes.c_int32, vp, ctypes.c_size_t, vp, ctypes.POINTER(vp)]
        _copy_declared = True
    h = ctypes.c_void_p()
    _check(fn(ctx.handle, block.handle, memory, device, None, 0, stream, ctypes.byref(h)))
    return Block(h.value, ctx)
